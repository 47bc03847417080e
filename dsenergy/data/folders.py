"""Image datasets read from user folders: class folders, CSV manifests and flat OOD folders.

Bad input is handled the same way by every loader here:

- a missing root, class folder or manifest file raises ``FileNotFoundError`` naming the path and the
  expected layout;
- an empty class folder raises ``ValueError`` naming it;
- a class set that differs from the expected one raises ``ValueError`` listing the missing and extra classes;
- unreadable images are dropped, with a logged count, when the index is built (``verify=True``, the
  default). An image that passes that check but fails to decode in ``__getitem__`` is replaced by a
  mid-gray 224×224 image with the original label, and a warning names the file. So an epoch does not
  stop on a bad file, and features stay aligned with ``labels``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
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


class ImageFileDataset(Dataset):
    """Images on disk with integer labels, served as RGB PIL images (after ``transform``).

    Attributes:
        samples: list of (path, label); label -1 marks OOD images.
        labels: int64 array of the labels.
        class_names: names that the labels index.
        identity: name plus a hash of the relative paths, labels and file sizes, for cache keys.
        ood_labels / ood_class_names: the OOD data's own classes, when known.
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
    ) -> None:
        samples = [(Path(path), int(label)) for path, label in samples]
        keep = np.ones(len(samples), dtype=bool)
        if verify:
            progress = tqdm(samples, desc=f"verify {name}", leave=False)
            keep = np.array([_is_readable(path) for path, _ in progress], dtype=bool)
            dropped = [str(samples[i][0]) for i in np.flatnonzero(~keep)]
            if dropped:
                logger.warning(
                    "%s: skipped %d unreadable image(s) of %d, first: %s", name, len(dropped), len(samples), dropped[:5]
                )
        self.samples = [sample for sample, kept in zip(samples, keep) if kept]
        if not self.samples:
            raise ValueError(f"{name}: no readable images under {root}")

        self.labels = np.array([label for _, label in self.samples], dtype=np.int64)
        self.class_names = list(class_names)
        self.root = root
        self.transform = transform
        self.ood_class_names = None if ood_class_names is None else list(ood_class_names)
        self.ood_labels = None
        if ood_labels is not None:
            self.ood_labels = np.asarray(ood_labels, dtype=np.int64)[keep]
        self.identity = f"{name}/{_samples_sha256(self.samples, root)[:16]}"
        self.decode_failures = 0
        logger.info("Indexed %s under %s: %d images, %d classes", name, root, len(self.samples), len(self.class_names))

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
            self.decode_failures += 1
            logger.warning(
                "Failed to decode %s (%s); using a gray placeholder with label %d (%d failure(s) so far)",
                path, error, label, self.decode_failures,
            )
            image = Image.new("RGB", _FALLBACK_SIZE, _FALLBACK_GRAY)
        if self.transform is not None:
            image = self.transform(image)
        return image, label

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity!r}, n={len(self)}, classes={len(self.class_names)})"


def _is_readable(path: Path) -> bool:
    """Check the file's header and structure with PIL, without decoding all pixels."""
    try:
        with Image.open(path) as handle:
            handle.verify()
    except _DECODE_ERRORS:
        return False
    return True


def _samples_sha256(samples: Iterable[tuple[Path, int]], root: Path) -> str:
    digest = hashlib.sha256()
    for path, label in samples:
        try:
            relative = path.relative_to(root).as_posix()
        except ValueError:
            relative = path.as_posix()
        digest.update(f"{relative}\t{label}\t{path.stat().st_size}\n".encode())
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


def subfolder_names(root: Path) -> list[str]:
    """List the sorted names of the subfolders of ``root``, skipping hidden ones."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_class_names(found: Iterable[str], expected: Iterable[str], where: str) -> None:
    """Raise ``ValueError`` listing the missing and extra classes when ``found`` differs from ``expected``."""
    found_set, expected_set = set(found), set(expected)
    missing = sorted(expected_set - found_set)
    extra = sorted(found_set - expected_set)
    if missing or extra:
        raise ValueError(
            f"class folders in {where} do not match the expected classes: "
            f"missing {missing[:20]}{' ...' if len(missing) > 20 else ''} ({len(missing)}), "
            f"extra {extra[:20]}{' ...' if len(extra) > 20 else ''} ({len(extra)})"
        )


def class_folder_samples(
    root: Path, folders: Sequence[str], layout: str, recursive: bool = False
) -> list[tuple[Path, int]]:
    """List (image path, folder position) for each named class folder; raise on a missing or empty folder."""
    samples: list[tuple[Path, int]] = []
    for label, folder in enumerate(folders):
        class_dir = _require_dir(root / folder, layout)
        files = _image_files(class_dir, recursive)
        if not files:
            raise ValueError(f"class folder {class_dir} contains no images with suffix in {IMAGE_EXTENSIONS}")
        samples.extend((path, label) for path in files)
    return samples


def image_folder_dataset(
    root: str | Path,
    class_names: Sequence[str] | None = None,
    transform: Callable[[Image.Image], Any] | None = None,
    verify: bool = True,
    name: str | None = None,
) -> ImageFileDataset:
    """Read ``root/<class>/<image>``; classes are the sorted folder names unless ``class_names`` fixes them.

    With ``class_names`` given, the folders must match it exactly and labels follow its order.
    """
    root = Path(root)
    layout = "root/<class>/<image files>"
    _require_dir(root, layout)
    folders = subfolder_names(root)
    if class_names is None:
        if not folders:
            raise ValueError(f"{root} contains no class folders; expected the layout {layout}")
        class_names = folders
    else:
        check_class_names(folders, class_names, str(root))
    samples = class_folder_samples(root, class_names, layout)
    return ImageFileDataset(samples, class_names, name or f"folder:{root.name}", root, transform, verify)


def ood_folder_dataset(
    root: str | Path,
    transform: Callable[[Image.Image], Any] | None = None,
    verify: bool = True,
    name: str | None = None,
) -> ImageFileDataset:
    """Read every image under ``root`` (recursively) as OOD data with label -1.

    Images in subfolders keep the subfolder name as their own class (``ood_labels``, ``ood_class_names``);
    images directly under ``root`` get the class ``"."``.
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
        ood_labels=ood_labels, ood_class_names=group_names,
    )


def csv_manifest_dataset(
    csv_path: str | Path,
    class_names: Sequence[str] | None = None,
    transform: Callable[[Image.Image], Any] | None = None,
    verify: bool = True,
    name: str | None = None,
) -> ImageFileDataset:
    """Read a CSV with columns ``path,label``; relative paths are resolved against the CSV's folder.

    A label is a class name, or an integer index into ``class_names``. Without ``class_names`` the
    classes are the sorted distinct label strings.
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
    index = {name: i for i, name in enumerate(class_names)}

    labels = []
    for label in raw_labels:
        if label in index:
            labels.append(index[label])
        elif label.lstrip("-").isdigit() and 0 <= int(label) < len(class_names):
            labels.append(int(label))
        else:
            labels.append(None)
    unknown = sorted({raw for raw, label in zip(raw_labels, labels) if label is None})
    if unknown:
        raise ValueError(f"{csv_path} has labels that are not in the class list {class_names[:20]}: {unknown[:20]}")

    base = csv_path.parent
    paths = [Path(p) if Path(p).is_absolute() else base / p for p, _ in rows]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{csv_path} lists {len(missing)} file(s) that do not exist (relative paths are resolved against "
            f"{base}); first: {missing[:5]}"
        )
    return ImageFileDataset(
        list(zip(paths, labels)), class_names, name or f"csv:{csv_path.stem}", base, transform, verify
    )
