"""Covariate shifts for 28×28 grayscale images: seeded, deterministic, three severities."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

import numpy as np
from scipy import ndimage

__all__ = ["COVARIATE_SHIFTS", "SEVERITIES", "apply_covariate_shift"]

logger = logging.getLogger(__name__)

#: Severity levels accepted by every shift; higher is further from the clean images.
SEVERITIES: tuple[int, ...] = (1, 2, 3)

# Per-shift parameter for severities 1, 2, 3.
_STYLE_EDGE_WEIGHT = (0.4, 0.7, 1.0)  # weight of the edge map in the blend with the image
_SOLARIZE_THRESHOLD = (0.66, 0.33, 0.0)  # intensities at or above the threshold are inverted
_NOISE_STD = (0.08, 0.16, 0.32)  # Gaussian noise std on the [0, 1] intensity scale
_BLUR_SIGMA = (0.6, 1.0, 1.6)  # Gaussian blur std in pixels
_CONTRAST_FACTOR = (0.5, 0.3, 0.15)  # deviation from the image mean is scaled by this factor
_ROTATE_DEGREES = (20.0, 40.0, 70.0)  # rotation magnitude; the sign is drawn per image


def _style(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blend each image with its Sobel edge magnitude (a line drawing of the outline)."""
    gx = ndimage.sobel(images, axis=2, mode="constant")
    gy = ndimage.sobel(images, axis=1, mode="constant")
    edges = np.hypot(gx, gy)
    peak = edges.reshape(len(edges), -1).max(axis=1).reshape(-1, 1, 1)
    edges = edges / np.maximum(peak, 1e-8)
    weight = _STYLE_EDGE_WEIGHT[severity - 1]
    return (1.0 - weight) * images + weight * edges


def _invert(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Solarize: invert the intensities at or above a threshold. Severity 3 inverts the whole image."""
    threshold = _SOLARIZE_THRESHOLD[severity - 1]
    return np.where(images >= threshold, 1.0 - images, images)


def _noise(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add i.i.d. Gaussian noise drawn from the shift's generator."""
    return images + rng.normal(0.0, _NOISE_STD[severity - 1], size=images.shape)


def _blur(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur each image with a Gaussian kernel (no blur across the batch axis)."""
    sigma = _BLUR_SIGMA[severity - 1]
    return ndimage.gaussian_filter(images, sigma=(0.0, sigma, sigma), mode="constant")


def _contrast(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Lower the contrast: x' = mean + c·(x − mean) per image."""
    mean = images.mean(axis=(1, 2), keepdims=True)
    return mean + _CONTRAST_FACTOR[severity - 1] * (images - mean)


def _rotate(images: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Rotate each image about its centre by ±angle (sign drawn per image), black fill."""
    signs = rng.choice(np.array([-1.0, 1.0]), size=len(images))
    angle = _ROTATE_DEGREES[severity - 1]
    out = np.empty_like(images)
    for i, sign in enumerate(signs):
        out[i] = ndimage.rotate(images[i], sign * angle, reshape=False, order=1, mode="constant", cval=0.0)
    return out


#: Shift name -> function ``(images in [0, 1] float64 N×H×W, severity, rng) -> shifted images``.
COVARIATE_SHIFTS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "style": _style,
    "invert": _invert,
    "noise": _noise,
    "blur": _blur,
    "contrast": _contrast,
    "rotate": _rotate,
}


def _shift_seed(shift: str, severity: int, seed: int) -> list[int]:
    """Derive the generator seed from (seed, shift name, severity), stable across Python runs."""
    name_code = int.from_bytes(hashlib.sha256(shift.encode()).digest()[:4], "big")
    return [seed, name_code, severity]


def apply_covariate_shift(images: np.ndarray, shift: str, severity: int, seed: int = 0) -> np.ndarray:
    """Apply one covariate shift to uint8 grayscale images (N×H×W) and return uint8 images.

    The output depends only on the input, the shift, the severity and ``seed``.
    """
    if shift not in COVARIATE_SHIFTS:
        raise ValueError(f"unknown covariate shift {shift!r}; expected one of {sorted(COVARIATE_SHIFTS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r} is out of range; expected one of {list(SEVERITIES)}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected uint8 images of shape N×H×W, got {images.dtype} {images.shape}")

    rng = np.random.default_rng(_shift_seed(shift, severity, seed))
    shifted = COVARIATE_SHIFTS[shift](images.astype(np.float64) / 255.0, severity, rng)
    return np.clip(np.rint(shifted * 255.0), 0, 255).astype(np.uint8)
