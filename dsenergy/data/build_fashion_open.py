"""Build the fashion-open arrays from the Fashion-MNIST IDX files, scikit-image textures and openclipart PNGs.

Usage: ``python -m dsenergy.data.build_fashion_open --source /usr/share/datasets/fashion-mnist
--clipart-source /usr/share/openclipart/png --out data/fashion-open``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import scipy

from dsenergy._paths import data_dir
from dsenergy.data._arrays import array_sha256, write_npz
from dsenergy.data.clipart import (
    DEBIAN_OPENCLIPART_DIR,
    OPENCLIPART_PACKAGE,
    check_clipart_source,
    draw_clipart,
)
from dsenergy.data.fashion_mnist import (
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    read_fashion_mnist,
)
from dsenergy.data.fashion_open import (
    FASHION_CLIPART_CLASSES,
    FASHION_CLIPART_COUNTS,
    FASHION_FAR_OOD_CLASSES,
    FASHION_ID_CLASSES,
    FASHION_NEAR_OOD_CLASSES,
    FASHION_OPEN_SPEC,
    MANIFEST_NAME,
    FashionOpenSpec,
    covariate_subset_mask,
    fashion_open_splits,
    spec_as_dict,
)
from dsenergy.data.shifts import apply_covariate_shift
from dsenergy.data.textures import TEXTURE_SOURCES, load_texture, texture_crops

__all__ = ["build_clipart_split", "build_fashion_open", "main"]

logger = logging.getLogger(__name__)

# Stream ids that keep the generators of the different draws independent of each other.
_STREAM_ID_TRAIN, _STREAM_ID_TEST, _STREAM_NEAR, _STREAM_FAR, _STREAM_CLIPART = 0, 1, 2, 3, 4

_CLIPART_SOURCE_TEXT = (
    "openclipart.org clip art, public-domain dedication, from the PNG files of the Debian package "
    f"{OPENCLIPART_PACKAGE}"
)


def _draw_classes(
    labels: np.ndarray, class_names: tuple[str, ...], per_class: int, seed: int, stream: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``per_class`` indices of each named class without replacement; return sorted indices and new labels."""
    chosen = []
    for new_label, name in enumerate(class_names):
        fashion_label = FASHION_MNIST_CLASSES.index(name)
        candidates = np.flatnonzero(labels == fashion_label)
        rng = np.random.default_rng([seed, stream, fashion_label])
        chosen.append(np.sort(rng.choice(candidates, size=per_class, replace=False)))

    indices = np.sort(np.concatenate(chosen))
    mapping = {FASHION_MNIST_CLASSES.index(name): i for i, name in enumerate(class_names)}
    new_labels = np.array([mapping[int(label)] for label in labels[indices]], dtype=np.int64)
    return indices, new_labels


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_clipart_split(
    clipart_source: str | Path = DEBIAN_OPENCLIPART_DIR,
    spec: FashionOpenSpec = FASHION_OPEN_SPEC,
    subset: tuple[str, ...] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Draw and render the ``ood_clipart`` split; return its arrays and its manifest record.

    The arrays are ``images`` (uint8 N×28×28), ``labels`` (index into ``FASHION_CLIPART_CLASSES``) and
    ``source_path`` (path of each file relative to ``clipart_source``). ``subset`` builds only the named
    categories, with the labels and draws they have in the full split.
    """
    root = Path(clipart_source)
    draw = draw_clipart(
        root, spec.ood_clipart_per_category, spec.seed, _STREAM_CLIPART, FASHION_CLIPART_CLASSES, subset=subset
    )
    if subset is None and draw.counts != FASHION_CLIPART_COUNTS:
        logger.warning(
            "ood_clipart has per-category counts %s, but fashion_open.FASHION_CLIPART_COUNTS records %s; "
            "the clip-art source differs from Debian openclipart-png 1:0.18+dfsg-19. Update the constant "
            "and data/README.md if you mean to commit this build",
            draw.counts, FASHION_CLIPART_COUNTS,
        )

    file_list = "".join(f"{path}\t{_file_sha256(root / path)}\n" for path in draw.paths.tolist())
    record = {
        "source": _CLIPART_SOURCE_TEXT,
        "categories": list(FASHION_CLIPART_CLASSES),
        "per_category": draw.counts,
        "excluded_as_clothing": draw.excluded,
        "skipped_unusable": draw.skipped,
        "files_sha256": hashlib.sha256(file_list.encode()).hexdigest(),
    }
    arrays = {"images": draw.images, "labels": draw.labels, "source_path": draw.paths}
    return arrays, record


def build_fashion_open(
    source: str | Path = DEBIAN_FASHION_MNIST_DIR,
    out: str | Path = "data/fashion-open",
    spec: FashionOpenSpec = FASHION_OPEN_SPEC,
    clipart_source: str | Path = DEBIAN_OPENCLIPART_DIR,
) -> dict[str, Any]:
    """Write the fashion-open ``.npz`` files and ``manifest.json`` to ``out``; return the manifest."""
    source, out = Path(source), Path(out)
    check_clipart_source(clipart_source, FASHION_CLIPART_CLASSES)  # fail before the slower steps
    train_images, train_labels = read_fashion_mnist("train", source)
    test_images, test_labels = read_fashion_mnist("test", source)

    splits: dict[str, dict[str, np.ndarray]] = {}
    for split, images, labels, names, per_class, stream in (
        ("id_train", train_images, train_labels, FASHION_ID_CLASSES, spec.id_train_per_class, _STREAM_ID_TRAIN),
        ("id_test", test_images, test_labels, FASHION_ID_CLASSES, spec.id_test_per_class, _STREAM_ID_TEST),
        ("ood_near", test_images, test_labels, FASHION_NEAR_OOD_CLASSES, spec.ood_near_per_class, _STREAM_NEAR),
    ):
        indices, new_labels = _draw_classes(labels, names, per_class, spec.seed, stream)
        splits[split] = {"images": images[indices], "labels": new_labels, "source_index": indices.astype(np.int32)}

    crops, crop_labels = [], []
    for label, name in enumerate(FASHION_FAR_OOD_CLASSES):
        rng = np.random.default_rng([spec.seed, _STREAM_FAR, label])
        crops.append(texture_crops(load_texture(name), spec.ood_far_per_texture, 28, rng))
        crop_labels.append(np.full(spec.ood_far_per_texture, label, dtype=np.int64))
    splits["ood_far"] = {"images": np.concatenate(crops), "labels": np.concatenate(crop_labels)}
    splits["ood_clipart"], clipart_record = build_clipart_split(clipart_source, spec)

    manifest: dict[str, Any] = {
        "name": "fashion-open",
        "spec": spec_as_dict(spec),
        "sources": {
            file_name: _file_sha256(source / file_name) for pair in FASHION_MNIST_FILES.values() for file_name in pair
        },
        "textures": dict(TEXTURE_SOURCES),
        "clipart": clipart_record,
        "versions": {"numpy": np.__version__, "scipy": scipy.__version__, "pillow": PIL.__version__},
        "splits": {},
        "covariate": {},
    }

    for split, arrays in splits.items():
        file_name = f"{split}.npz"
        write_npz(out / file_name, arrays)
        manifest["splits"][split] = {
            "file": file_name,
            "count": int(len(arrays["images"])),
            "sha256": array_sha256(arrays["images"], arrays["labels"]),
            "file_sha256": _file_sha256(out / file_name),
        }
        logger.info("Wrote %s: %d images", out / file_name, len(arrays["images"]))

    id_test = splits["id_test"]
    mask = covariate_subset_mask(id_test["labels"], spec.covariate_per_class)
    for split in fashion_open_splits():
        if not split.startswith("covariate/"):
            continue
        _, shift, severity = split.split("/")
        shifted = apply_covariate_shift(id_test["images"][mask], shift, int(severity), seed=spec.seed)
        manifest["covariate"][split] = array_sha256(shifted, id_test["labels"][mask])

    with open(out / MANIFEST_NAME, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
        handle.write("\n")
    logger.info("Wrote %s", out / MANIFEST_NAME)
    _copy_licences(out)
    return manifest


def _copy_licences(out: Path) -> None:
    """Copy the source licence files of the committed fashion-open folder into ``out``, so it is complete."""
    committed = data_dir() / "fashion-open"
    if committed.resolve() == out.resolve():
        return
    licences = sorted(committed.glob("LICENSE-*.txt"))
    if not licences:
        logger.warning("No LICENSE-*.txt files found in %s; add the source licences to %s by hand", committed, out)
        return
    for path in licences:
        shutil.copyfile(path, out / path.name)
    logger.info("Copied %d licence files to %s", len(licences), out)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=DEBIAN_FASHION_MNIST_DIR,
        help="folder containing the four Fashion-MNIST .gz IDX files",
    )
    parser.add_argument(
        "--clipart-source", type=Path, default=DEBIAN_OPENCLIPART_DIR,
        help=f"folder containing the <category>/ folders of PNG clip art (Debian package {OPENCLIPART_PACKAGE})",
    )
    parser.add_argument("--out", type=Path, default=Path("data/fashion-open"), help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        build_fashion_open(args.source, args.out, clipart_source=args.clipart_source)
    except FileNotFoundError as error:
        # A missing source folder is a usage error: show the message, not a traceback.
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
