"""In-memory image datasets over uint8 arrays, content hashes and reproducible ``.npz`` files."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["ArrayImageDataset", "array_sha256", "read_npz", "write_npz"]

# Fixed zip entry timestamp (the earliest a zip file can store) so rebuilt files have the same bytes.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def array_sha256(*arrays: np.ndarray) -> str:
    """Return the sha256 of the arrays' dtypes, shapes and C-order bytes, in argument order."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to a deflate-compressed ``.npz`` whose bytes depend only on the arrays (and zlib)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w") as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compresslevel=9)
    tmp.replace(path)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file (no pickled objects)."""
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


class ArrayImageDataset(Dataset):
    """Grayscale uint8 images (N×H×W) served as PIL images with integer labels.

    Attributes:
        class_names: label set that ``labels`` index; for OOD data ``labels`` are -1 and the
            data's own classes are in ``ood_class_names`` / ``ood_labels``.
        identity: string naming the data and its content hash, for cache keys.
        sha256: content hash of images and labels.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: Sequence[str],
        identity: str,
        transform: Callable[[Image.Image], Any] | None = None,
        mode: str = "RGB",
        ood_labels: np.ndarray | None = None,
        ood_class_names: Sequence[str] | None = None,
    ) -> None:
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(f"expected uint8 images of shape N×H×W, got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if mode not in ("RGB", "L"):
            raise ValueError(f"image mode {mode!r} is not supported; use 'RGB' or 'L'")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = list(class_names)
        self.identity = identity
        self.sha256 = array_sha256(images, self.labels)
        self.transform = transform
        self.mode = mode
        self.ood_labels = None if ood_labels is None else np.asarray(ood_labels, dtype=np.int64)
        self.ood_class_names = None if ood_class_names is None else list(ood_class_names)

    @property
    def fingerprint(self) -> str:
        """Content hash of images and labels, which the feature cache adds to its key."""
        return f"{self.sha256}:{self.mode}"

    @property
    def targets(self) -> list[int]:
        """Labels as a list of ints, the torchvision ``ImageFolder`` attribute name."""
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index])  # 2-D uint8 -> mode "L"
        if self.mode == "RGB":
            image = image.convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity!r}, n={len(self)}, classes={len(self.class_names)})"
