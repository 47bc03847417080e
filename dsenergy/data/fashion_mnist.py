"""Fashion-MNIST class names and a reader for the IDX files it ships in."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "read_fashion_mnist",
    "read_idx",
]

logger = logging.getLogger(__name__)

#: Folder of the Debian package ``dataset-fashion-mnist``.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: The ten Fashion-MNIST classes, indexed by their label.
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)

#: Image and label file names per split, as published by Zalando Research.
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# IDX type codes (third byte of the magic number) mapped to big-endian numpy dtypes.
_IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed) into a numpy array in native byte order.

    The header is two zero bytes, one type code byte, one byte with the number of dimensions,
    then one big-endian uint32 per dimension. The data follow in C order.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} not found")

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()

    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file: the magic number must start with two zero bytes")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path} has unknown IDX type code 0x{type_code:02x}")

    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path} is truncated: header needs {header_size} bytes, file has {len(raw)}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))

    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_size != expected:
        raise ValueError(
            f"{path} contains {len(raw) - header_size} data bytes but its header shape {shape} "
            f"needs {expected}; the file is truncated or corrupt"
        )

    array = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_fashion_mnist(
    split: str, source: str | Path = DEBIAN_FASHION_MNIST_DIR
) -> tuple[np.ndarray, np.ndarray]:
    """Read one Fashion-MNIST split: uint8 images (N×28×28) and int64 labels (N)."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; expected one of {sorted(FASHION_MNIST_FILES)}")
    source = Path(source)
    image_name, label_name = FASHION_MNIST_FILES[split]
    if not (source / image_name).is_file():
        raise FileNotFoundError(
            f"{source / image_name} not found; install the Debian package dataset-fashion-mnist "
            "or pass the folder holding the four Fashion-MNIST .gz files"
        )

    images = read_idx(source / image_name)
    labels = read_idx(source / label_name).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"Fashion-MNIST {split} files in {source} do not match: images {images.shape}, labels {labels.shape}"
        )
    logger.info("Read Fashion-MNIST %s from %s: %d images", split, source, len(images))
    return images, labels
