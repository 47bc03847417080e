"""Texture crops for the far-OOD split: CC0 textures from scikit-image cut into 28×28 patches."""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["TEXTURE_SOURCES", "load_texture", "texture_crops"]

logger = logging.getLogger(__name__)

#: Texture name -> origin and licence, as given in the scikit-image 0.26 docstrings of ``skimage.data``.
TEXTURE_SOURCES: dict[str, str] = {
    "brick": "skimage.data.brick (from CC0Textures Bricks25), CC0-1.0",
    "grass": "skimage.data.grass (from DeviantArt linolafett Grass-01), CC0-1.0",
    "gravel": "skimage.data.gravel (from CC0Textures Gravel04), CC0-1.0",
}

# Crop side lengths before the area-average reduction to 28 px; multiples of 28 keep it an exact block mean.
_CROP_SCALES = (1, 2, 3, 4, 5)


def load_texture(name: str) -> np.ndarray:
    """Return one of the scikit-image textures as a uint8 grayscale array."""
    if name not in TEXTURE_SOURCES:
        raise ValueError(f"unknown texture {name!r}; expected one of {sorted(TEXTURE_SOURCES)}")
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 3:
        image = np.rint(image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    return image.astype(np.uint8)


def texture_crops(texture: np.ndarray, count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Cut ``count`` random square crops from ``texture`` and reduce each to ``size``×``size`` uint8.

    Each crop has side ``size·m`` for a random m in 1..5, a random position, a random rotation by a
    multiple of 90° and a random flip, then is reduced by the mean over m×m blocks.
    """
    height, width = texture.shape
    out = np.empty((count, size, size), dtype=np.uint8)
    for i in range(count):
        scale = int(rng.choice(_CROP_SCALES))
        side = size * scale
        if side > min(height, width):
            raise ValueError(f"texture of shape {texture.shape} is smaller than the crop side {side}")
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        crop = texture[top : top + side, left : left + side].astype(np.float64)
        crop = crop.reshape(size, scale, size, scale).mean(axis=(1, 3))
        crop = np.rot90(crop, k=int(rng.integers(0, 4)))
        if rng.integers(0, 2):
            crop = crop[:, ::-1]
        out[i] = np.clip(np.rint(crop), 0, 255).astype(np.uint8)
    return out
