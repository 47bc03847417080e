"""User-data layouts of the CLIP OOD protocols: ImageNet-1k OOD, ImageNet variants, CRoFT Setup-I and II.

Class names and prompt templates come from open_clip (``open_clip.IMAGENET_CLASSNAMES``,
``open_clip.OPENAI_IMAGENET_TEMPLATES``). Folder names are WordNet ids (wnids). Their order is the
standard ImageNet-1k label order. It comes from a user file (one wnid a line) if given, else from timm's
``ImageNetInfo("imagenet-1k")`` (timm is a dependency of open_clip), else from the sorted folder names
of a complete val root.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dsenergy.data.folders import (
    ImageFileDataset,
    _require_dir,
    check_class_names,
    class_folder_samples,
    subfolder_names,
)

__all__ = [
    "IMAGENET_VARIANTS",
    "DomainSplit",
    "croft_setup1_classes",
    "croft_setup2",
    "imagenet_class_names",
    "imagenet_dataset",
    "imagenet_open_set",
    "imagenet_templates",
    "imagenet_variant",
    "imagenet_wnids",
]

logger = logging.getLogger(__name__)

_IMAGENET_LAYOUT = "root/<wnid>/*.JPEG (e.g. val/n01440764/ILSVRC2012_val_00000293.JPEG)"

#: Variant name -> how its class folders are named: by wnid, or by the integer ImageNet label (ImageNet-V2).
IMAGENET_VARIANTS: dict[str, str] = {"v2": "index", "sketch": "wnid", "a": "wnid", "r": "wnid"}


def imagenet_class_names() -> list[str]:
    """Return open_clip's 1000 ImageNet class names, in label order."""
    import open_clip

    return list(open_clip.IMAGENET_CLASSNAMES)


def imagenet_templates() -> list[Callable[[str], str]]:
    """Return open_clip's 80 OpenAI ImageNet prompt templates (callables: class name -> prompt)."""
    import open_clip

    return list(open_clip.OPENAI_IMAGENET_TEMPLATES)


def imagenet_wnids(wnids_file: str | Path | None = None, val_root: str | Path | None = None) -> list[str]:
    """Return the 1000 ImageNet-1k wnids in label order (from ``wnids_file``, timm, or ``val_root``)."""
    if wnids_file is not None:
        wnids = [line.strip() for line in Path(wnids_file).read_text(encoding="utf-8").splitlines() if line.strip()]
        source = str(wnids_file)
    else:
        try:
            from timm.data import ImageNetInfo

            wnids = list(ImageNetInfo("imagenet-1k").label_names())
            source = "timm ImageNetInfo('imagenet-1k')"
        except ImportError:
            if val_root is None:
                raise ValueError(
                    "timm is not installed, so the ImageNet wnid order is unknown; pass wnids_file "
                    "(1000 wnids, one a line, in label order) or val_root (the val folder with 1000 wnid folders)"
                ) from None
            root = _require_dir(Path(val_root), _IMAGENET_LAYOUT)
            wnids = subfolder_names(root)
            source = f"sorted folder names of {root}"

    if len(wnids) != 1000 or len(set(wnids)) != 1000:
        raise ValueError(
            f"expected 1000 distinct ImageNet wnids from {source}, got {len(wnids)} ({len(set(wnids))} distinct)"
        )
    logger.info("ImageNet wnid order from %s", source)
    return wnids


def _validate_indices(class_indices: Sequence[int] | None, num_classes: int) -> list[int]:
    if class_indices is None:
        return list(range(num_classes))
    indices = [int(i) for i in class_indices]
    bad = [i for i in indices if not 0 <= i < num_classes]
    if bad or len(set(indices)) != len(indices):
        raise ValueError(f"class indices must be distinct and in 0..{num_classes - 1}; invalid: {bad[:20]}")
    return indices


def imagenet_dataset(
    root: str | Path,
    class_indices: Sequence[int] | None = None,
    wnids: Sequence[str] | None = None,
    transform: Callable[[Image.Image], Any] | None = None,
    verify: bool = True,
    name: str = "imagenet",
    progress: bool | None = None,
) -> ImageFileDataset:
    """Read an ImageNet-1k split folder (``root/<wnid>/*``) restricted to ``class_indices`` (default all).

    The folders must be exactly the 1000 wnids. Label i names ``class_names[i]``, the ImageNet class
    ``class_indices[i]``. The folder of each selected class must contain at least one image, also with
    ``verify=False``.

    Args:
        verify: check every file with PIL when the index is built and drop the unreadable ones, with a
            logged count (see :class:`~dsenergy.data.folders.ImageFileDataset` for what the check
            covers). With False, no file is opened until ``__getitem__``, and a file that fails to decode
            then is served as a gray placeholder with its label, whose features enter the results.
        progress: show the verify progress bar. None leaves it to tqdm (shown on a terminal only).
    """
    root = _require_dir(Path(root), _IMAGENET_LAYOUT)
    wnids = list(wnids) if wnids is not None else imagenet_wnids(val_root=root)
    names = imagenet_class_names()
    if len(wnids) != len(names):
        # Class names come from open_clip's list in ImageNet label order, so wnid i must be class i.
        raise ValueError(
            f"wnids lists {len(wnids)} wnids, but ImageNet-1k has {len(names)} and label i names class i of "
            "open_clip's list; pass all 1000 wnids in label order and select classes with class_indices, or "
            "read a subset with dsenergy.data.image_folder_dataset and your own class_names"
        )
    check_class_names(
        subfolder_names(root), wnids, str(root),
        remedy=f"Restore the missing wnid folders and move the extra ones out of {root}.",
    )

    indices = _validate_indices(class_indices, len(wnids))
    samples = class_folder_samples(
        root, [wnids[i] for i in indices], _IMAGENET_LAYOUT,
        remedy="Add the class's images, or leave its index out of class_indices.",
    )
    return ImageFileDataset(samples, [names[i] for i in indices], name, root, transform, verify, progress=progress)


def imagenet_open_set(
    root: str | Path,
    ood_class_indices: Sequence[int],
    wnids: Sequence[str] | None = None,
    transform: Callable[[Image.Image], Any] | None = None,
    verify: bool = True,
    name: str = "imagenet-open-set",
    progress: bool | None = None,
) -> ImageFileDataset:
    """Read the ImageNet classes ``ood_class_indices`` as open-set OOD data (label -1, own class in ``ood_labels``).

    Args:
        verify: check every file with PIL when the index is built and drop the unreadable ones, with a
            logged count (see :class:`~dsenergy.data.folders.ImageFileDataset` for what the check
            covers). With False, no file is opened until ``__getitem__``, and a file that fails to decode
            then is served as a gray placeholder with its label, whose features enter the results.
        progress: show the verify progress bar. None leaves it to tqdm (shown on a terminal only).
    """
    inner = imagenet_dataset(root, ood_class_indices, wnids, None, verify, name, progress=progress)
    # The inner dataset has already checked the files, so the outer one skips the check.
    dataset = ImageFileDataset(
        [(path, -1) for path, _ in inner.samples], [], name, inner.root, transform, verify=False,
        ood_labels=inner.labels, ood_class_names=inner.class_names,
    )
    dataset.verified = inner.verified
    return dataset


def imagenet_variant(
    root: str | Path,
    variant: str,
    class_indices: Sequence[int] | None = None,
    wnids: Sequence[str] | None = None,
    transform: Callable[[Image.Image], Any] | None = None,
    verify: bool = True,
    progress: bool | None = None,
) -> ImageFileDataset:
    """Read ImageNet-V2 / -Sketch / -A / -R restricted to the ImageNet classes ``class_indices``.

    Folders are wnids (Sketch, A, R) or integer labels 0..999 (V2). A and R cover 200 classes, so
    ID classes without a folder contribute no images, but ``class_names`` still lists every ID class
    and labels index it. A folder that names no ImageNet-1k class raises ``ValueError``, and so does an
    empty folder of a requested class, also with ``verify=False``.

    Args:
        verify: check every file with PIL when the index is built and drop the unreadable ones, with a
            logged count (see :class:`~dsenergy.data.folders.ImageFileDataset` for what the check
            covers). With False, no file is opened until ``__getitem__``, and a file that fails to decode
            then is served as a gray placeholder with its label, whose features enter the results.
        progress: show the verify progress bar. None leaves it to tqdm (shown on a terminal only).
    """
    if variant not in IMAGENET_VARIANTS:
        raise ValueError(f"unknown ImageNet variant {variant!r}; expected one of {sorted(IMAGENET_VARIANTS)}")
    layout = "root/<label 0..999>/*" if IMAGENET_VARIANTS[variant] == "index" else _IMAGENET_LAYOUT
    root = _require_dir(Path(root), layout)
    wnids = list(wnids) if wnids is not None else imagenet_wnids()
    indices = _validate_indices(class_indices, len(wnids))

    folder_of = {wnid: wnid for wnid in wnids}
    if IMAGENET_VARIANTS[variant] == "index":
        folder_of = {wnid: str(i) for i, wnid in enumerate(wnids)}
    folders = set(subfolder_names(root))
    unknown = sorted(folders - set(folder_of.values()))
    if unknown:
        raise ValueError(f"class folders in {root} are not ImageNet-1k classes ({layout}): {unknown[:20]}")
    if not folders:
        raise ValueError(f"{root} contains no class folders; expected the layout {layout}")

    present = [(label, wnids[i]) for label, i in enumerate(indices) if folder_of[wnids[i]] in folders]
    samples = []
    for label, wnid in present:
        folder_samples = class_folder_samples(
            root, [folder_of[wnid]], layout,
            remedy="Add the class's images, or remove the folder so that the class contributes no images.",
        )
        samples.extend((path, label) for path, _ in folder_samples)
    if not samples:
        raise ValueError(f"{root} has no folder for any of the {len(indices)} requested classes")

    names = imagenet_class_names()
    logger.info("ImageNet-%s: %d of %d requested classes present", variant, len(present), len(indices))
    return ImageFileDataset(
        samples, [names[i] for i in indices], f"imagenet-{variant}", root, transform, verify, progress=progress
    )


def croft_setup1_classes(seed: int, num_classes: int = 1000, id_fraction: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """Split the class indices with a seeded permutation: the first ``id_fraction`` are ID, the rest open-set OOD.

    Both returned arrays are sorted. With 1000 classes and 0.4 this gives 400 ID and 600 OOD classes.
    """
    if not 0.0 < id_fraction < 1.0:
        raise ValueError(f"id_fraction must be in (0, 1), got {id_fraction}")
    permutation = np.random.default_rng(seed).permutation(num_classes)
    num_id = int(round(id_fraction * num_classes))
    return np.sort(permutation[:num_id]), np.sort(permutation[num_id:])


@dataclass
class DomainSplit:
    """Leave-one-domain-out split: source domains for training, the held-out target for testing."""

    source: ImageFileDataset
    target: ImageFileDataset
    source_domains: list[str]
    target_domain: str
    class_names: list[str]
    #: Domain index (into ``source_domains``) of each source sample.
    source_domain_labels: np.ndarray


def croft_setup2(
    root: str | Path,
    target_domain: str,
    domains: Sequence[str] | None = None,
    transform: Callable[[Image.Image], Any] | None = None,
    verify: bool = True,
    progress: bool | None = None,
) -> DomainSplit:
    """Read a multi-domain dataset (PACS, VLCS: ``root/<domain>/<class>/*``) and hold out ``target_domain``.

    Every domain must have the same class folders, each with at least one image (also with
    ``verify=False``). Class names are the folder names with ``_`` read as a space. Pair it with
    ``ood_folder_dataset`` for the open-set OOD data (DTD, Food101, Caltech101).

    Args:
        verify: check every file with PIL when the index is built and drop the unreadable ones, with a
            logged count (see :class:`~dsenergy.data.folders.ImageFileDataset` for what the check
            covers). With False, no file is opened until ``__getitem__``, and a file that fails to decode
            then is served as a gray placeholder with its label, whose features enter the results.
        progress: show the verify progress bar. None leaves it to tqdm (shown on a terminal only).
    """
    layout = "root/<domain>/<class>/<image files>"
    root = _require_dir(Path(root), layout)
    found = subfolder_names(root)
    domains = list(domains) if domains is not None else found
    missing_domains = sorted(set(domains) - set(found))
    if missing_domains:
        raise FileNotFoundError(f"domain folders {missing_domains} not found in {root}; expected the layout {layout}")
    if target_domain not in domains:
        raise ValueError(f"target domain {target_domain!r} is not one of the domains {domains}")

    folders = subfolder_names(root / domains[0])
    if not folders:
        raise ValueError(f"{root / domains[0]} contains no class folders; expected the layout {layout}")
    for domain in domains[1:]:
        check_class_names(
            subfolder_names(root / domain), folders, str(root / domain),
            remedy=(
                f"Every domain must have the same class folders as {root / domains[0]}, so add or remove "
                "folders until they match, or leave the domain out of domains."
            ),
        )
    class_names = [folder.replace("_", " ") for folder in folders]

    source_domains = [d for d in domains if d != target_domain]
    empty_remedy = "Add images to it, or remove this class folder from every domain."
    source_samples, domain_labels = [], []
    for index, domain in enumerate(source_domains):
        samples = class_folder_samples(root / domain, folders, layout, recursive=True, remedy=empty_remedy)
        source_samples.extend(samples)
        domain_labels.extend([index] * len(samples))
    target_samples = class_folder_samples(root / target_domain, folders, layout, recursive=True, remedy=empty_remedy)

    source = ImageFileDataset(
        source_samples, class_names, f"{root.name}-minus-{target_domain}", root, transform, verify, progress=progress
    )
    kept = {path for path, _ in source.samples}
    domain_labels = np.array(
        [d for (path, _), d in zip(source_samples, domain_labels) if path in kept], dtype=np.int64
    )
    target = ImageFileDataset(
        target_samples, class_names, f"{root.name}-{target_domain}", root, transform, verify, progress=progress
    )
    return DomainSplit(source, target, source_domains, target_domain, class_names, domain_labels)
