"""Clip art for the semantic far-OOD split: openclipart.org PNGs rendered like Fashion-MNIST images.

Source: the Debian package ``openclipart-png`` (public-domain dedication, files under
``/usr/share/openclipart/png/<category>/...``). Only categories far from clothing are used, and files
whose path names a garment or accessory are excluded.

Rendering recipe (:func:`render_clipart`), chosen to match the Fashion-MNIST look of a bright object on
black:

1. Composite the image over white using its alpha. Modes RGBA, LA and PA have alpha, and so do P, L
   and RGB images with a transparency entry. Images without alpha are used as they are.
2. Convert to grey with Pillow's ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B) and invert, so
   the white background becomes 0 and dark strokes become bright.
3. Crop to the bounding box of the pixels brighter than :data:`BACKGROUND_LEVEL`.
4. Pad the crop with black to a square, centred.
5. Resize to 28×28 with Pillow's Lanczos filter; the result is uint8.

An image that cannot be decoded, has more than :data:`MAX_SOURCE_PIXELS` pixels, or has no pixel above
the background level is skipped, and the skipped files are counted and logged.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

__all__ = [
    "BACKGROUND_LEVEL",
    "CLIPART_CATEGORIES",
    "CLOTHING_WORDS",
    "DEBIAN_OPENCLIPART_DIR",
    "MAX_SOURCE_PIXELS",
    "OPENCLIPART_PACKAGE",
    "ClipartDraw",
    "check_clipart_source",
    "draw_clipart",
    "is_clothing_path",
    "list_clipart",
    "render_clipart",
]

logger = logging.getLogger(__name__)

#: Debian package that installs the PNG clip art.
OPENCLIPART_PACKAGE = "openclipart-png"
#: Folder where ``openclipart-png`` installs its PNG files.
DEBIAN_OPENCLIPART_DIR = Path("/usr/share/openclipart/png")

#: Top-level folders of ``openclipart-png`` used as far-OOD classes, in label order. Left out: people,
#: recreation and special (they show or contain clothing and costumes), and the abstract categories
#: (shapes, signs_and_symbols, computer icons, buttons, logos).
CLIPART_CATEGORIES: tuple[str, ...] = (
    "animals",
    "food",
    "plants",
    "transportation",
    "buildings",
    "tools",
    "electronics",
    "geography",
)

#: Garment and accessory words. A file is excluded when its lower-cased path relative to the source
#: folder contains any of them as a substring, so plurals and compounds (``tshirt``, ``boots``,
#: ``handbag``) match too, at the cost of a few unrelated names (``baguette`` contains ``bag``).
CLOTHING_WORDS: tuple[str, ...] = (
    "apron", "backpack", "bag", "belt", "blouse", "boot", "bracelet", "cloth", "coat", "costume",
    "dress", "fashion", "garment", "glasses", "glove", "hat", "heels", "helmet", "hoodie", "jacket",
    "jeans", "jersey", "jewel", "kimono", "luggage", "mitten", "necklace", "necktie", "pants", "purse",
    "pullover", "sandal", "scarf", "shawl", "shirt", "shoe", "shorts", "skirt", "slipper", "sneaker",
    "sock", "suit", "sweater", "trouser", "tuxedo", "umbrella", "uniform", "wallet",
)

#: Grey level (after inversion, 0..255) above which a pixel counts as part of the drawing for the crop.
BACKGROUND_LEVEL = 8
#: Larger source images are skipped, because decoding one (up to 16000×10562 px in openclipart-png)
#: takes hundreds of MB for a 28-px result.
MAX_SOURCE_PIXELS = 16_000_000

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def is_clothing_path(path: str | Path) -> bool:
    """Return whether the lower-cased path contains one of :data:`CLOTHING_WORDS`."""
    text = str(path).lower()
    return any(word in text for word in CLOTHING_WORDS)


def check_clipart_source(root: str | Path, categories: tuple[str, ...] = CLIPART_CATEGORIES) -> Path:
    """Return ``root`` as a Path after checking that every category folder exists in it."""
    root = Path(root)
    missing = [category for category in categories if not (root / category).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"openclipart PNG folders {missing} not found under {root}; install the Debian package "
            f"{OPENCLIPART_PACKAGE} (`apt-get install --no-install-recommends {OPENCLIPART_PACKAGE}`) "
            "or pass the folder that contains its <category>/ folders"
        )
    return root


def list_clipart(root: str | Path, category: str) -> tuple[list[str], int]:
    """List the PNG files of one category without clothing; return (sorted relative paths, number excluded).

    Paths are POSIX strings relative to ``root`` (for example ``"animals/bugs/spider.png"``). Symbolic
    links are left out: the Debian package replaces duplicate files by links, so following them would
    draw the same picture twice or from another category.
    """
    root = Path(root)
    paths = sorted(
        path.relative_to(root).as_posix()
        for path in (root / category).rglob("*.png")
        if path.is_file() and not path.is_symlink()
    )
    allowed = [path for path in paths if not is_clothing_path(path)]
    return allowed, len(paths) - len(allowed)


def _to_grey_on_white(image: Image.Image) -> Image.Image:
    """Composite ``image`` over white by its alpha (if any) and convert it to mode "L"."""
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("L")
    return image.convert("L")


def render_clipart(path: str | Path, size: int = 28) -> np.ndarray | None:
    """Render one clip-art file as a ``size``×``size`` uint8 image of a bright object on black.

    Returns None (and logs the reason at debug level) when the file cannot be decoded, has more than
    :data:`MAX_SOURCE_PIXELS` pixels, or is blank after compositing over white.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns on open above its own pixel limit; the size check below skips those files.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            width, height = image.size
            if width * height > MAX_SOURCE_PIXELS:
                logger.debug("Skipped %s: %d×%d pixels is above %d", path, width, height, MAX_SOURCE_PIXELS)
                return None
            image.load()
            grey = _to_grey_on_white(image)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        logger.debug("Skipped %s: %s", path, error)
        return None

    inverted = Image.eval(grey, lambda value: 255 - value)
    box = inverted.point(lambda value: 255 if value > BACKGROUND_LEVEL else 0).getbbox()
    if box is None:
        logger.debug("Skipped %s: no pixel above the background level", path)
        return None

    cropped = inverted.crop(box)
    side = max(cropped.size)
    square = Image.new("L", (side, side), 0)
    square.paste(cropped, ((side - cropped.width) // 2, (side - cropped.height) // 2))
    resized = square.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(resized, dtype=np.uint8).copy()


@dataclass
class ClipartDraw:
    """Rendered clip-art images with their class labels, source paths and per-category bookkeeping."""

    images: np.ndarray  # uint8 N×size×size
    labels: np.ndarray  # int64 index into the categories
    paths: np.ndarray  # unicode, relative to the source folder
    counts: dict[str, int] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)  # files dropped by the clothing filter
    skipped: dict[str, int] = field(default_factory=dict)  # drawn files that could not be rendered


def draw_clipart(
    root: str | Path,
    per_category: int,
    seed: int,
    stream: int,
    categories: tuple[str, ...] = CLIPART_CATEGORIES,
    size: int = 28,
    subset: Collection[str] | None = None,
) -> ClipartDraw:
    """Draw and render up to ``per_category`` clip-art images from each category folder of ``root``.

    For category index c, a generator seeded with ``[seed, stream, c]`` permutes the sorted file list.
    Files are rendered in that order until ``per_category`` of them render, so a skipped file is
    replaced by the next one. The result is sorted by (category, path). ``subset`` draws only the named
    categories, with the same labels and generators as in the full draw.
    """
    unknown = sorted(set(subset or ()) - set(categories))
    if unknown:
        raise ValueError(f"unknown clip-art categories {unknown}; expected names from {list(categories)}")
    root = check_clipart_source(root, categories if subset is None else tuple(subset))
    draw = ClipartDraw(
        images=np.empty((0, size, size), dtype=np.uint8),
        labels=np.empty(0, dtype=np.int64),
        paths=np.empty(0, dtype=str),
    )
    images, labels, paths = [], [], []

    for label, category in enumerate(categories):
        if subset is not None and category not in subset:
            continue
        candidates, excluded = list_clipart(root, category)
        order = np.random.default_rng([seed, stream, label]).permutation(len(candidates))
        chosen: dict[str, np.ndarray] = {}
        skipped = 0
        for position in tqdm(order, desc=f"clip art {category}", leave=False):
            if len(chosen) == per_category:
                break
            rendered = render_clipart(root / candidates[position], size)
            if rendered is None:
                skipped += 1
            else:
                chosen[candidates[position]] = rendered

        for path in sorted(chosen):
            images.append(chosen[path])
            labels.append(label)
            paths.append(path)
        draw.counts[category] = len(chosen)
        draw.excluded[category] = excluded
        draw.skipped[category] = skipped
        logger.info(
            "Clip art %s: %d images drawn from %d files (%d excluded as clothing, %d skipped as unreadable, "
            "too large or blank)", category, len(chosen), len(candidates), excluded, skipped,
        )
        if len(chosen) < per_category:
            logger.info("Clip art %s has only %d usable files, fewer than %d", category, len(chosen), per_category)

    if images:
        draw.images = np.stack(images)
        draw.labels = np.array(labels, dtype=np.int64)
        draw.paths = np.array(paths, dtype=str)
    logger.info(
        "Clip art: %d images in all, %d files excluded as clothing, %d files skipped",
        len(draw.images), sum(draw.excluded.values()), sum(draw.skipped.values()),
    )
    return draw
