"""Image datasets read from user folders: class folders, CSV manifests and flat OOD folders.

Bad input is handled the same way by every loader here:

- a missing root, class folder or manifest file raises ``FileNotFoundError`` naming the path and the
  expected layout;
- an empty class folder raises ``ValueError`` naming it, with or without ``verify``, because every class
  needs at least one image;
- a class set that differs from the expected one raises ``ValueError`` listing the missing and extra
  classes. A class list sets the label order and must match the folders exactly, so it cannot select a
  subset of them. ``image_folder_dataset(..., allow_missing_classes=True)`` accepts folders for only
  some of the listed classes (as in ImageNet-R or -A), and still rejects extra folders;
- unreadable images are dropped, with a logged count, when the index is built (``verify=True``, the
  default; :class:`ImageFileDataset` describes the check). An image that fails to decode in
  ``__getitem__`` is replaced by a mid-gray 224×224 placeholder with the original label, so an epoch
  does not stop on a bad file and features stay aligned with ``labels``, but the placeholder's features
  and scores enter the results. The first files are logged by name, then only counts.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from tqdm.auto import tqdm

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFileDataset",
    "check_class_names",
    "class_folder_samples",
    "count_image_files",
    "csv_manifest_dataset",
    "image_folder_dataset",
    "ood_folder_dataset",
    "subfolder_names",
]

logger = logging.getLogger(__name__)

#: File suffixes (lower case) read as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")

# Image substituted for a file that fails to decode in __getitem__.
_FALLBACK_SIZE = (224, 224)
_FALLBACK_GRAY = (128, 128, 128)
_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)
# Files replaced by a placeholder that are logged by name; after these, only counts are logged.
_NAMED_PLACEHOLDER_FILES = 5
_JPEG_END_OF_IMAGE = b"\xff\xd9"
# PIL format names of JPEG files. Pillow opens camera JPEGs with extra pictures as "MPO".
_JPEG_FORMATS = ("JPEG", "MPO")


class ImageFileDataset(Dataset):
    """Images on disk with integer labels, served as RGB PIL images (after ``transform``).

    With ``verify=True`` (the default) every file is checked once, while the index is built. PIL opens
    it and runs ``Image.verify``, which reads the header and structure (and PNG chunk checksums) without
    decoding pixels. ``Image.verify`` does not read JPEG scan data, so a JPEG that does not end with the
    end-of-image marker is also decoded in full. Files that fail are dropped from the index, and a
    warning gives their count and the first paths. With ``verify=False`` no file is opened until
    ``__getitem__``.

    A file that fails to decode in ``__getitem__`` (with ``verify=False``, or when the check above missed
    a defect) is served as a mid-gray 224×224 placeholder with the file's own label. The placeholder
    enters extracted features and scores like a real image. The first 5 such files are logged by name,
    then counts at 10, 100, 1000, ... failures, and ``placeholder_paths`` lists them all.

    Attributes:
        samples: list of (path, label); label -1 marks OOD images.
        labels: int64 array of the labels.
        class_names: names that the labels index.
        identity: name plus a hash of the relative paths, labels, file sizes and modification times,
            for cache keys.
        ood_labels / ood_class_names: the OOD data's own classes, when known.
        verified: whether the files were checked when the index was built.
        decode_failures: number of ``__getitem__`` calls that served a placeholder.
        placeholder_paths: files that failed to decode in ``__getitem__``.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, int]],
        class_names: Sequence[str],
        name: str,
        root: Path,
        transform: Callable[[Image.Image], Any] | None = None,
        verify: bool = True,
        ood_labels: Sequence[int] | None = None,
        ood_class_names: Sequence[str] | None = None,
        progress: bool | None = None,
    ) -> None:
        samples = [(Path(path), int(label)) for path, label in samples]
        keep = np.ones(len(samples), dtype=bool)
        if verify:
            bar = tqdm(samples, desc=f"verify {name}", leave=False, disable=None if progress is None else not progress)
            keep = np.array([_is_readable(path) for path, _ in bar], dtype=bool)
            dropped = [str(samples[i][0]) for i in np.flatnonzero(~keep)]
            if dropped:
                logger.warning(
                    "%s: skipped %d unreadable image(s) of %d, first: %s", name, len(dropped), len(samples), dropped[:5]
                )
        self.samples = [sample for sample, kept in zip(samples, keep) if kept]
        if not self.samples:
            raise ValueError(f"{name}: no readable images under {root}")

        self.name = name
        self.labels = np.array([label for _, label in self.samples], dtype=np.int64)
        self.class_names = list(class_names)
        self.root = root
        self.transform = transform
        self.ood_class_names = None if ood_class_names is None else list(ood_class_names)
        self.ood_labels = None
        if ood_labels is not None:
            self.ood_labels = np.asarray(ood_labels, dtype=np.int64)[keep]
        self.identity = f"{name}/{_samples_sha256(self.samples, root)[:16]}"
        self.verified = verify
        # NOTE: DataLoader workers each hold a copy of the dataset, so with num_workers > 0 these two
        # stay empty in the main process and each worker logs its own first files.
        self.decode_failures = 0
        self.placeholder_paths: set[Path] = set()
        if self.ood_class_names is not None:
            logger.info(
                "Indexed %s under %s: %d images from %d OOD classes",
                name, root, len(self.samples), len(self.ood_class_names),
            )
        else:
            logger.info(
                "Indexed %s under %s: %d images, %d classes", name, root, len(self.samples), len(self.class_names)
            )

    @property
    def targets(self) -> list[int]:
        """Labels as a list of ints, the torchvision ``ImageFolder`` attribute name."""
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as handle:
                image = handle.convert("RGB")
        except _DECODE_ERRORS as error:
            self._log_placeholder(path, label, error)
            image = Image.new("RGB", _FALLBACK_SIZE, _FALLBACK_GRAY)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def _log_placeholder(self, path: Path, label: int, error: Exception) -> None:
        """Count a decode failure and log it: the first files by name, then counts at powers of ten."""
        self.decode_failures += 1
        new_file = path not in self.placeholder_paths
        self.placeholder_paths.add(path)

        if new_file and len(self.placeholder_paths) <= _NAMED_PLACEHOLDER_FILES:
            if self.verified:
                advice = "The file passed the index-time check, so remove or replace it"
            else:
                advice = "Build the dataset with verify=True to drop unreadable files when it is indexed"
            logger.warning(
                "%s: failed to decode %s (%s). Serving a mid-gray %d×%d placeholder with the file's label %d "
                "instead, so the placeholder enters extracted features and scores as this image. %s.",
                self.name, path, error, *_FALLBACK_SIZE, label, advice,
            )
            return

        first_unnamed = new_file and len(self.placeholder_paths) == _NAMED_PLACEHOLDER_FILES + 1
        if first_unnamed or _is_power_of_ten(self.decode_failures):
            logger.warning(
                "%s: %d decode failure(s) so far in %d file(s), each served as a gray placeholder with its "
                "label. Only the first %d files are logged by name, placeholder_paths lists all of them, and "
                "further counts are logged at 10, 100, 1000, ... failures.",
                self.name, self.decode_failures, len(self.placeholder_paths), _NAMED_PLACEHOLDER_FILES,
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity!r}, n={len(self)}, classes={len(self.class_names)})"


def _is_power_of_ten(count: int) -> bool:
    while count >= 10 and count % 10 == 0:
        count //= 10
    return count == 1


def _is_readable(path: Path) -> bool:
    """Check a file with PIL's ``Image.verify``, and decode a JPEG that lacks its end-of-image marker."""
    try:
        with Image.open(path) as handle:
            image_format = handle.format
            handle.verify()
        # Image.verify (Pillow 13) does not read JPEG scan data, so a JPEG cut short passes it. An
        # intact JPEG ends with the end-of-image marker. Files without it, including intact ones with
        # trailing bytes, are decoded in full to decide.
        if image_format in _JPEG_FORMATS and not _ends_with(path, _JPEG_END_OF_IMAGE):
            with Image.open(path) as handle:
                handle.load()
    except _DECODE_ERRORS:
        return False
    return True


def _ends_with(path: Path, suffix: bytes) -> bool:
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        size = handle.tell()
        if size < len(suffix):
            return False
        handle.seek(size - len(suffix))
        return handle.read() == suffix


def _samples_sha256(samples: Iterable[tuple[Path, int]], root: Path) -> str:
    """Hash relative paths, labels, sizes and modification times, so that an edited image changes the hash.

    Hashing the pixels would cost as much as decoding every image. The modification time catches an
    image rewritten with the same size, at the price of a new hash after a copy that does not keep times.
    """
    digest = hashlib.sha256()
    for path, label in samples:
        try:
            relative = path.relative_to(root).as_posix()
        except ValueError:
            relative = path.as_posix()
        status = path.stat()
        digest.update(f"{relative}\t{label}\t{status.st_size}\t{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _require_dir(path: Path, layout: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"folder {path} not found; expected the layout {layout}")
    return path


def _is_hidden(path: Path, root: Path) -> bool:
    """Tell whether any part of ``path`` below ``root`` starts with a dot (``.ipynb_checkpoints``, ``._x.jpg``)."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    """List the image files in ``folder`` (and its subfolders if ``recursive``), skipping hidden names."""
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in pattern if p.suffix.lower() in IMAGE_EXTENSIONS and not _is_hidden(p, folder) and p.is_file()
    )


def count_image_files(folder: Path, limit: int | None = None) -> int:
    """Count the image files directly in ``folder`` by suffix, skipping hidden names, without opening them.

    The count matches the files that :func:`class_folder_samples` lists (not recursive). Counting stops
    at ``limit`` when it is given, so ``limit=1`` is enough to find out whether the folder has any image.
    """
    count = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") or Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if entry.is_file():
                count += 1
                if limit is not None and count >= limit:
                    break
    return count


def subfolder_names(root: Path) -> list[str]:
    """List the sorted names of the subfolders of ``root``, skipping hidden ones."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _format_names(names: Sequence[str], limit: int = 20) -> str:
    """Format a list of names, cut to ``limit`` entries, with its length."""
    more = " ..." if len(names) > limit else ""
    return f"{list(names[:limit])}{more} ({len(names)})"


def check_class_names(found: Iterable[str], expected: Iterable[str], where: str, remedy: str | None = None) -> None:
    """Raise ``ValueError`` listing the missing and extra classes when ``found`` differs from ``expected``.

    ``remedy`` ends the message with what the caller should do. The default remedy is to create the
    missing folders and move the extra ones out.
    """
    found_set, expected_set = set(found), set(expected)
    missing = sorted(expected_set - found_set)
    extra = sorted(found_set - expected_set)
    if not (missing or extra):
        return
    differences = []
    if missing:
        differences.append(f"missing {_format_names(missing)}")
    if extra:
        differences.append(f"extra {_format_names(extra)}")
    if remedy is None:
        remedy = f"Create the missing class folders and move the extra ones out of {where}."
    raise ValueError(
        f"class folders in {where} do not match the expected classes: {', '.join(differences)}. {remedy}"
    )


def class_folder_samples(
    root: Path, folders: Sequence[str], layout: str, recursive: bool = False, remedy: str | None = None
) -> list[tuple[Path, int]]:
    """List (image path, folder position) for each named class folder; raise on a missing or empty folder.

    ``remedy`` ends the empty-folder message with what the caller should do. The default remedy is to
    add images or remove the folder.
    """
    samples: list[tuple[Path, int]] = []
    for label, folder in enumerate(folders):
        class_dir = _require_dir(root / folder, layout)
        files = _image_files(class_dir, recursive)
        if not files:
            raise ValueError(
                f"class folder {class_dir} contains no image files (suffixes {' '.join(IMAGE_EXTENSIONS)}), "
                "but every class needs at least one image, with or without verify. "
                + (remedy or "Add images to the folder or remove it.")
            )
        samples.extend((path, label) for path in files)
    return samples


def image_folder_dataset(
    root: str | Path,
    class_names: Sequence[str] | None = None,
    transform: Callable[[Image.Image], Any] | None = None,
    verify: bool = True,
    name: str | None = None,
    progress: bool | None = None,
    allow_missing_classes: bool = False,
) -> ImageFileDataset:
    """Read ``root/<class>/<image>``; classes are the sorted folder names unless ``class_names`` fixes them.

    Args:
        root: folder with one subfolder per class. Names starting with a dot are ignored.
        class_names: the class folders in label order. It must name every class folder exactly, because
            it sets the label order and does not select a subset. A missing or extra folder raises
            ``ValueError``, unless ``allow_missing_classes`` accepts the missing ones. To leave a class
            out, move its folder out of ``root``.
        transform: applied to each RGB PIL image.
        verify: check every file with PIL when the index is built and drop the unreadable ones, with a
            logged count (see :class:`ImageFileDataset` for what the check covers). With False, no file
            is opened until ``__getitem__``, and a file that fails to decode then is served as a gray
            placeholder with its label, whose features enter the results.
        name: dataset name for logs and ``identity``; default ``folder:<root name>``.
        progress: show the verify progress bar. None leaves it to tqdm (shown on a terminal only).
        allow_missing_classes: accept class folders for only some of ``class_names``, as in test sets
            such as ImageNet-R or -A that cover a subset of the classes. Labels still index the full
            ``class_names``, a folder that is not in ``class_names`` still raises ``ValueError``, and
            the missing classes are logged as a warning. Requires ``class_names``.

    Every class folder must contain at least one image, also with ``verify=False``. An empty one raises
    ``ValueError``.
    """
    root = Path(root)
    layout = "root/<class>/<image files>"
    _require_dir(root, layout)
    folders = subfolder_names(root)
    if class_names is None:
        if allow_missing_classes:
            raise ValueError(
                "allow_missing_classes=True needs class_names, the full class list that the labels index; "
                f"pass class_names for {root}, or drop allow_missing_classes to use its folder names"
            )
        if not folders:
            raise ValueError(f"{root} contains no class folders; expected the layout {layout}")
        class_names = folders
        present = folders
        empty_remedy = f"Add images to it, or move it out of {root} to leave the class out."
    else:
        class_names = list(class_names)
        duplicates = sorted({c for c in class_names if class_names.count(c) > 1})
        if duplicates:
            raise ValueError(f"class_names lists {duplicates} more than once; name each class folder once")
        if allow_missing_classes:
            present = _present_classes(root, folders, class_names, layout)
        else:
            check_class_names(
                folders, class_names, str(root),
                remedy=(
                    "class_names must name every class folder exactly, because it sets the label order and "
                    f"does not select a subset. Add the extra folders to class_names or move them out of {root}, "
                    "and create a folder for each missing class, or pass allow_missing_classes=True when the "
                    "split covers only some of the classes."
                ),
            )
            present = class_names
        empty_remedy = f"Add images to it, or move it out of {root} and drop the class from class_names."

    label_of = {class_name: label for label, class_name in enumerate(class_names)}
    samples = [
        (path, label_of[present[position]])
        for path, position in class_folder_samples(root, present, layout, remedy=empty_remedy)
    ]
    return ImageFileDataset(
        samples, class_names, name or f"folder:{root.name}", root, transform, verify, progress=progress
    )


def _present_classes(root: Path, folders: Sequence[str], class_names: Sequence[str], layout: str) -> list[str]:
    """Return the classes of ``class_names`` that have a folder, in label order; raise on extra or no folders.

    The missing classes are logged as a warning with their count and the first names.
    """
    extra = sorted(set(folders) - set(class_names))
    if extra:
        raise ValueError(
            f"class folders in {root} are not in class_names: {_format_names(extra)}. With "
            "allow_missing_classes=True the class folders may be any subset of class_names but no others; "
            f"rename or move the extra folders out of {root}, or add them to class_names."
        )
    if not folders:
        raise ValueError(f"{root} contains no class folders; expected the layout {layout}")
    folder_set = set(folders)
    present = [class_name for class_name in class_names if class_name in folder_set]
    missing = [class_name for class_name in class_names if class_name not in folder_set]
    if missing:
        logger.warning(
            "%s has folders for %d of %d classes; missing %s. Labels still index all %d classes.",
            root, len(present), len(class_names), _format_names(missing), len(class_names),
        )
    return present


def ood_folder_dataset(
    root: str | Path,
    transform: Callable[[Image.Image], Any] | None = None,
    verify: bool = True,
    name: str | None = None,
    progress: bool | None = None,
) -> ImageFileDataset:
    """Read every image under ``root`` (recursively) as OOD data with label -1.

    Images in subfolders keep the subfolder name as their own class (``ood_labels``, ``ood_class_names``);
    images directly under ``root`` get the class ``"."``. Empty subfolders are ignored.

    Args:
        verify: check every file with PIL when the index is built and drop the unreadable ones, with a
            logged count (see :class:`ImageFileDataset` for what the check covers). With False, no file
            is opened until ``__getitem__``, and a file that fails to decode then is served as a gray
            placeholder with label -1, whose features enter the OOD scores.
        name: dataset name for logs and ``identity``; default ``ood-folder:<root name>``.
        progress: show the verify progress bar. None leaves it to tqdm (shown on a terminal only).
    """
    root = Path(root)
    _require_dir(root, "root/**/<image files> (any depth)")
    files = _image_files(root, recursive=True)
    if not files:
        raise ValueError(f"OOD folder {root} contains no images with suffix in {IMAGE_EXTENSIONS}")
    groups = [path.parent.relative_to(root).parts[0] if path.parent != root else "." for path in files]
    group_names = sorted(set(groups))
    ood_labels = [group_names.index(group) for group in groups]
    return ImageFileDataset(
        [(path, -1) for path in files], [], name or f"ood-folder:{root.name}", root, transform, verify,
        ood_labels=ood_labels, ood_class_names=group_names, progress=progress,
    )


def csv_manifest_dataset(
    csv_path: str | Path,
    class_names: Sequence[str] | None = None,
    transform: Callable[[Image.Image], Any] | None = None,
    verify: bool = True,
    name: str | None = None,
    progress: bool | None = None,
) -> ImageFileDataset:
    """Read a CSV with columns ``path,label``; relative paths are resolved against the CSV's folder.

    A label is a class name, or an integer index into ``class_names``. A label that equals a class
    name is read as that name, even if it is a number. Without ``class_names`` the classes are the
    sorted distinct label strings, so numbers are class names too.

    Args:
        verify: check every file with PIL when the index is built and drop the unreadable ones, with a
            logged count (see :class:`ImageFileDataset` for what the check covers). With False, no file
            is opened until ``__getitem__``, and a file that fails to decode then is served as a gray
            placeholder with its label, whose features enter the results.
        name: dataset name for logs and ``identity``; default ``csv:<file stem>``.
        progress: show the verify progress bar. None leaves it to tqdm (shown on a terminal only).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"CSV manifest {csv_path} not found; expected a file with header 'path,label'")
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{csv_path} must have the columns 'path' and 'label', found {reader.fieldnames}")
        rows = [(row["path"].strip(), row["label"].strip()) for row in reader]
    if not rows:
        raise ValueError(f"CSV manifest {csv_path} has no rows")

    raw_labels = [label for _, label in rows]
    if class_names is None:
        class_names = sorted(set(raw_labels))
    class_names = list(class_names)
    if not class_names:
        raise ValueError(f"class_names for {csv_path} is empty; pass the class list, or None to use the labels")
    labels = _manifest_labels(raw_labels, class_names, csv_path)

    base = csv_path.parent
    paths = [Path(p) if Path(p).is_absolute() else base / p for p, _ in rows]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{csv_path} lists {len(missing)} file(s) that do not exist (relative paths are resolved against "
            f"{base}); first: {missing[:5]}"
        )
    return ImageFileDataset(
        list(zip(paths, labels)), class_names, name or f"csv:{csv_path.stem}", base, transform, verify,
        progress=progress,
    )


def _manifest_labels(raw_labels: Sequence[str], class_names: list[str], csv_path: Path) -> list[int]:
    """Map manifest labels (class names or indices into ``class_names``) to indices; raise on bad ones."""
    index = {name: i for i, name in enumerate(class_names)}
    last = len(class_names) - 1
    labels: list[int] = []
    unknown_names: set[str] = set()
    bad_indices: set[int] = set()
    for label in raw_labels:
        if label in index:
            labels.append(index[label])
        elif re.fullmatch(r"-?[0-9]+", label):
            position = int(label)
            if 0 <= position <= last:
                labels.append(position)
            else:
                bad_indices.add(position)
        else:
            unknown_names.add(label)

    problems = []
    if bad_indices:
        listed_indices = ", ".join(str(i) for i in sorted(bad_indices)[:20])
        noun = "index" if len(bad_indices) == 1 else "indices"
        verb = "is" if len(bad_indices) == 1 else "are"
        problems.append(
            f"Label {noun} {listed_indices} {verb} out of range 0..{last} for the class list {class_names[:20]}. "
            f"Integer labels index class_names, so use 0..{last} or the class names."
        )
    if unknown_names:
        problems.append(
            f"Labels {sorted(unknown_names)[:20]} are not in the class list {class_names[:20]}. "
            "Use names from the class list, or pass class_names that include these labels."
        )
    if problems:
        raise ValueError(f"invalid labels in {csv_path}. " + " ".join(problems))
    return labels
