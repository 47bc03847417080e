"""fashion-open: the embedded open-set benchmark built from Fashion-MNIST, CC0 textures and clip art.

Six Fashion-MNIST classes are in-distribution (ID) and the other four are near OOD. Far OOD comes in two
splits: texture crops (``ood_far``) and public-domain clip art of animals, food, vehicles and other
objects rendered like Fashion-MNIST images (``ood_clipart``). Covariate-shifted copies of a fixed subset
of the ID test images test generalisation. The arrays live in ``data/fashion-open/`` (written by
``python -m dsenergy.data.build_fashion_open``). The covariate splits are computed from ``id_test`` at
load time.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dsenergy._paths import data_dir
from dsenergy.data._arrays import ArrayImageDataset, array_sha256, read_npz
from dsenergy.data.clipart import CLIPART_CATEGORIES
from dsenergy.data.shifts import COVARIATE_SHIFTS, SEVERITIES, apply_covariate_shift
from dsenergy.data.textures import TEXTURE_SOURCES

__all__ = [
    "FASHION_CLIPART_CLASSES",
    "FASHION_CLIPART_COUNTS",
    "FASHION_FAR_OOD_CLASSES",
    "FASHION_ID_CLASSES",
    "FASHION_NEAR_OOD_CLASSES",
    "FASHION_OPEN_SPEC",
    "MANIFEST_NAME",
    "FashionOpenSpec",
    "covariate_subset_mask",
    "fashion_open_counts",
    "fashion_open_root",
    "fashion_open_splits",
    "load_fashion_open",
    "spec_as_dict",
]

logger = logging.getLogger(__name__)

#: In-distribution classes, in label order (label i of an ID split names ``FASHION_ID_CLASSES[i]``).
FASHION_ID_CLASSES: tuple[str, ...] = ("t-shirt/top", "trouser", "dress", "sandal", "sneaker", "bag")
#: Near-OOD classes: the Fashion-MNIST classes left out of the ID set.
FASHION_NEAR_OOD_CLASSES: tuple[str, ...] = ("pullover", "coat", "shirt", "ankle boot")
#: Far-OOD classes: the textures the crops come from.
FASHION_FAR_OOD_CLASSES: tuple[str, ...] = tuple(TEXTURE_SOURCES)
#: Semantic far-OOD classes: the openclipart categories of ``ood_clipart``, in label order.
FASHION_CLIPART_CLASSES: tuple[str, ...] = CLIPART_CATEGORIES
#: Images per category in the committed ``ood_clipart``: the spec's cap, or all usable files of the
#: category in Debian openclipart-png 1:0.18+dfsg-19 where there are fewer.
FASHION_CLIPART_COUNTS: dict[str, int] = {
    "animals": 200,
    "food": 200,
    "plants": 66,
    "transportation": 166,
    "buildings": 68,
    "tools": 122,
    "electronics": 36,
    "geography": 129,
}

_STORED_SPLITS = ("id_train", "id_test", "ood_near", "ood_far", "ood_clipart")
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class FashionOpenSpec:
    """Sizes and seed of fashion-open, the one source that the builder, the loader and the tests read."""

    version: int = 1
    seed: int = 0
    id_train_per_class: int = 600  # drawn from the Fashion-MNIST train split
    id_test_per_class: int = 500  # drawn from the Fashion-MNIST test split
    ood_near_per_class: int = 500  # drawn from the Fashion-MNIST test split
    ood_far_per_texture: int = 500
    ood_clipart_per_category: int = 200  # at most this many clip-art images per category
    covariate_per_class: int = 200  # the first this many of each class in id_test get shifted


FASHION_OPEN_SPEC = FashionOpenSpec()


def fashion_open_splits() -> list[str]:
    """List every split name: the five stored splits, then ``covariate/<shift>/<severity>``."""
    covariate = [f"covariate/{shift}/{severity}" for shift in COVARIATE_SHIFTS for severity in SEVERITIES]
    return [*_STORED_SPLITS, *covariate]


def fashion_open_counts(spec: FashionOpenSpec = FASHION_OPEN_SPEC) -> dict[str, int]:
    """Return the number of images in each split.

    The ``ood_clipart`` count comes from :data:`FASHION_CLIPART_COUNTS`, capped by the spec.
    """
    # NOTE: a cap above the committed one (200) would draw more images than this sum counts.
    clipart = sum(min(count, spec.ood_clipart_per_category) for count in FASHION_CLIPART_COUNTS.values())
    counts = {
        "id_train": spec.id_train_per_class * len(FASHION_ID_CLASSES),
        "id_test": spec.id_test_per_class * len(FASHION_ID_CLASSES),
        "ood_near": spec.ood_near_per_class * len(FASHION_NEAR_OOD_CLASSES),
        "ood_far": spec.ood_far_per_texture * len(FASHION_FAR_OOD_CLASSES),
        "ood_clipart": clipart,
    }
    for split in fashion_open_splits()[len(_STORED_SPLITS) :]:
        counts[split] = spec.covariate_per_class * len(FASHION_ID_CLASSES)
    return counts


def fashion_open_root(root: str | Path | None = None) -> Path:
    """Return the fashion-open folder: ``root`` if given, else ``data_dir()/fashion-open``."""
    path = Path(root) if root is not None else data_dir() / "fashion-open"
    if not (path / MANIFEST_NAME).is_file():
        raise FileNotFoundError(
            f"{path / MANIFEST_NAME} not found; expected the fashion-open folder with manifest.json and "
            "id_train.npz, id_test.npz, ood_near.npz, ood_far.npz, ood_clipart.npz. Rebuild it with "
            "`python -m dsenergy.data.build_fashion_open --out <folder>`"
        )
    return path


def covariate_subset_mask(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Select the first ``per_class`` images of each label, in array order (the covariate base set)."""
    mask = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        positions = np.flatnonzero(labels == label)
        if len(positions) < per_class:
            raise ValueError(f"class {label} has {len(positions)} images, fewer than {per_class}")
        mask[positions[:per_class]] = True
    return mask


def _parse_split(split: str) -> tuple[str, int] | None:
    """Return (shift, severity) for a covariate split name, None for a stored split."""
    if split in _STORED_SPLITS:
        return None
    if split not in fashion_open_splits():
        raise ValueError(f"unknown fashion-open split {split!r}; expected one of {fashion_open_splits()}")
    _, shift, severity = split.split("/")
    return shift, int(severity)


@functools.lru_cache(maxsize=4)
def _read_manifest(root: Path) -> dict[str, Any]:
    with open(root / MANIFEST_NAME, encoding="utf-8") as handle:
        manifest = json.load(handle)
    stored_spec = FashionOpenSpec(**manifest["spec"])
    if stored_spec != FASHION_OPEN_SPEC:
        raise ValueError(
            f"{root} was built with {stored_spec}, but this version of dsenergy expects {FASHION_OPEN_SPEC}; "
            "rebuild it with `python -m dsenergy.data.build_fashion_open`"
        )
    return manifest


@functools.lru_cache(maxsize=8)
def _read_stored_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a stored split and check it against the manifest's content hash."""
    manifest = _read_manifest(root)
    entry = manifest["splits"][split]
    arrays = read_npz(root / entry["file"])
    images, labels = arrays["images"], arrays["labels"].astype(np.int64)
    digest = array_sha256(images, labels)
    if digest != entry["sha256"]:
        raise ValueError(
            f"{root / entry['file']} has content sha256 {digest}, but manifest.json records "
            f"{entry['sha256']}; the file is corrupt or stale, rebuild it with "
            "`python -m dsenergy.data.build_fashion_open`"
        )
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


@functools.lru_cache(maxsize=4)
def _covariate_arrays(root: Path, shift: str, severity: int) -> tuple[np.ndarray, np.ndarray]:
    """Shift the covariate base subset of id_test; warn when the result differs from the recorded hash."""
    manifest = _read_manifest(root)
    images, labels = _read_stored_split(root, "id_test")
    mask = covariate_subset_mask(labels, FASHION_OPEN_SPEC.covariate_per_class)
    shifted = apply_covariate_shift(images[mask], shift, severity, seed=FASHION_OPEN_SPEC.seed)
    base_labels = labels[mask]

    split = f"covariate/{shift}/{severity}"
    expected = manifest["covariate"].get(split)
    digest = array_sha256(shifted, base_labels)
    if digest != expected:
        # NOTE: numpy or scipy versions other than the builder's could change a rounding, but the data stay usable.
        logger.warning(
            "fashion-open %s has content sha256 %s, manifest.json records %s; numpy/scipy versions may "
            "differ from the build (numpy %s, scipy %s)",
            split, digest, expected, manifest["versions"].get("numpy"), manifest["versions"].get("scipy"),
        )
    shifted.flags.writeable = False
    return shifted, base_labels


def load_fashion_open(
    split: str,
    root: str | Path | None = None,
    transform: Callable[[Image.Image], Any] | None = None,
    mode: str = "RGB",
) -> ArrayImageDataset:
    """Load one fashion-open split as a dataset of (PIL image, label).

    ID and covariate splits label images by ``FASHION_ID_CLASSES``. OOD splits label every image
    -1 and keep their own classes in ``ood_labels`` / ``ood_class_names``. ``mode`` is "RGB" (the
    gray value copied to three channels) or "L".
    """
    path = fashion_open_root(root).resolve()
    covariate = _parse_split(split)
    manifest = _read_manifest(path)

    if covariate is None:
        images, labels = _read_stored_split(path, split)
    else:
        images, labels = _covariate_arrays(path, *covariate)

    ood_labels = ood_class_names = None
    if split == "ood_near":
        ood_labels, ood_class_names = labels, FASHION_NEAR_OOD_CLASSES
    elif split == "ood_far":
        ood_labels, ood_class_names = labels, FASHION_FAR_OOD_CLASSES
    elif split == "ood_clipart":
        ood_labels, ood_class_names = labels, FASHION_CLIPART_CLASSES
    if ood_labels is not None:
        labels = np.full(len(ood_labels), -1, dtype=np.int64)

    identity = f"fashion-open-v{manifest['spec']['version']}/{split}/{array_sha256(images, labels)[:16]}"
    dataset = ArrayImageDataset(
        images,
        labels,
        FASHION_ID_CLASSES,
        identity,
        transform=transform,
        mode=mode,
        ood_labels=ood_labels,
        ood_class_names=ood_class_names,
    )
    logger.info("Loaded fashion-open %s from %s: %d images", split, path, len(dataset))
    return dataset


def spec_as_dict(spec: FashionOpenSpec = FASHION_OPEN_SPEC) -> dict[str, int]:
    """Return the spec as a JSON-ready dict (the form stored in manifest.json)."""
    return asdict(spec)

