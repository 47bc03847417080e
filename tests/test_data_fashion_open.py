"""fashion-open: committed splits, builder reproducibility, covariate shifts and the IDX reader.

The clip-art renderer and the ``ood_clipart`` rebuild on its own are tested in test_data_clipart.py.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dsenergy._paths import data_dir
from dsenergy.data import (
    COVARIATE_SHIFTS,
    FASHION_FAR_OOD_CLASSES,
    FASHION_ID_CLASSES,
    FASHION_MNIST_CLASSES,
    FASHION_NEAR_OOD_CLASSES,
    FASHION_OPEN_SPEC,
    SEVERITIES,
    apply_covariate_shift,
    array_sha256,
    fashion_open_counts,
    fashion_open_splits,
    load_fashion_open,
    read_idx,
)
from dsenergy.data._arrays import read_npz, write_npz
from dsenergy.data.build_fashion_open import build_fashion_open
from dsenergy.data.clipart import DEBIAN_OPENCLIPART_DIR
from dsenergy.data.fashion_mnist import DEBIAN_FASHION_MNIST_DIR, read_fashion_mnist
from dsenergy.data.fashion_open import FASHION_CLIPART_CLASSES, FASHION_CLIPART_COUNTS

COMMITTED = data_dir() / "fashion-open"
needs_debian = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST IDX files not in {DEBIAN_FASHION_MNIST_DIR} (Debian package dataset-fashion-mnist)",
)
needs_openclipart = pytest.mark.skipif(
    not all((DEBIAN_OPENCLIPART_DIR / category).is_dir() for category in FASHION_CLIPART_CLASSES),
    reason=f"openclipart PNG folders not in {DEBIAN_OPENCLIPART_DIR} (Debian package openclipart-png)",
)


def _manifest() -> dict:
    return json.loads((COMMITTED / "manifest.json").read_text())


def test_class_lists_partition_fashion_mnist():
    assert len(FASHION_MNIST_CLASSES) == 10
    assert set(FASHION_ID_CLASSES) | set(FASHION_NEAR_OOD_CLASSES) == set(FASHION_MNIST_CLASSES)
    assert not set(FASHION_ID_CLASSES) & set(FASHION_NEAR_OOD_CLASSES)


@pytest.mark.parametrize("split", fashion_open_splits())
def test_every_split_loads_with_stated_count(split):
    dataset = load_fashion_open(split)
    counts = fashion_open_counts()

    assert len(dataset) == counts[split]
    assert dataset.class_names == list(FASHION_ID_CLASSES)
    image, label = dataset[len(dataset) - 1]
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    assert image.size == (28, 28)
    assert isinstance(label, int)
    assert split in dataset.identity
    assert dataset.sha256 == array_sha256(dataset.images, dataset.labels)


@pytest.mark.parametrize("split", ["id_train", "id_test", "covariate/noise/1"])
def test_id_splits_are_class_balanced(split):
    dataset = load_fashion_open(split)
    per_class = np.bincount(dataset.labels, minlength=len(FASHION_ID_CLASSES))

    assert per_class.min() == per_class.max()
    assert per_class.sum() == fashion_open_counts()[split]
    assert dataset.ood_labels is None


@pytest.mark.parametrize(
    ("split", "names", "per_class"),
    [
        ("ood_near", FASHION_NEAR_OOD_CLASSES, [FASHION_OPEN_SPEC.ood_near_per_class] * 4),
        ("ood_far", FASHION_FAR_OOD_CLASSES, [FASHION_OPEN_SPEC.ood_far_per_texture] * 3),
        ("ood_clipart", FASHION_CLIPART_CLASSES, list(FASHION_CLIPART_COUNTS.values())),
    ],
)
def test_ood_splits_label_minus_one(split, names, per_class):
    dataset = load_fashion_open(split)

    assert (dataset.labels == -1).all()
    assert dataset.ood_class_names == list(names)
    assert np.bincount(dataset.ood_labels, minlength=len(names)).tolist() == per_class


def test_readme_counts_match_spec():
    readme = (data_dir() / "README.md").read_text()
    stated = dict(re.findall(r"^\| `([a-z_/0-9<>]+)` \| (\d+) \|", readme, flags=re.M))
    counts = fashion_open_counts()

    for split in ("id_train", "id_test", "ood_near", "ood_far", "ood_clipart"):
        assert int(stated[split]) == counts[split], split
    assert int(stated["covariate/<shift>/<severity>"]) == counts["covariate/blur/1"]


def test_manifest_counts_match_spec():
    manifest = _manifest()
    counts = fashion_open_counts()

    for split, entry in manifest["splits"].items():
        assert entry["count"] == counts[split], split
    assert sorted(manifest["covariate"]) == sorted(s for s in fashion_open_splits() if s.startswith("covariate/"))


def test_transform_and_gray_mode():
    dataset = load_fashion_open("id_test", transform=lambda image: torch.tensor(np.asarray(image)), mode="L")
    tensor, _ = dataset[0]

    assert tensor.shape == (28, 28)
    assert torch.equal(tensor, torch.from_numpy(dataset.images[0].copy()))


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="covariate/blur/9"):
        load_fashion_open("covariate/blur/9")


def test_missing_root_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_fashion_open("id_test", root=tmp_path)


def test_corrupt_array_file_is_detected(tmp_path):
    root = tmp_path / "fashion-open"
    shutil.copytree(COMMITTED, root)
    arrays = read_npz(root / "id_test.npz")
    arrays["images"][0, 0, 0] ^= 0xFF
    write_npz(root / "id_test.npz", arrays)

    with pytest.raises(ValueError, match="sha256"):
        load_fashion_open("id_test", root=root)


def test_covariate_splits_match_recorded_hashes():
    recorded = _manifest()["covariate"]
    for split, digest in recorded.items():
        dataset = load_fashion_open(split)
        assert array_sha256(dataset.images, dataset.labels) == digest, split


@pytest.mark.parametrize("shift", sorted(COVARIATE_SHIFTS))
def test_covariate_shift_deterministic_and_graded(shift):
    clean = load_fashion_open("id_test").images[:64]
    outputs = [apply_covariate_shift(clean, shift, severity, seed=0) for severity in SEVERITIES]

    assert np.array_equal(outputs[0], apply_covariate_shift(clean, shift, SEVERITIES[0], seed=0))
    for severity, shifted in zip(SEVERITIES, outputs):
        assert shifted.dtype == np.uint8
        assert shifted.shape == clean.shape
        assert not np.array_equal(shifted, clean), severity
    for low, high in zip(outputs, outputs[1:]):
        assert not np.array_equal(low, high)

    distance = [np.abs(o.astype(int) - clean.astype(int)).mean() for o in outputs]
    assert distance == sorted(distance), f"{shift}: mean change per severity {distance}"


def test_random_shifts_depend_on_seed():
    clean = load_fashion_open("id_test").images[:32]
    for shift in ("noise", "rotate"):
        seed_zero = apply_covariate_shift(clean, shift, 2, seed=0)
        seed_one = apply_covariate_shift(clean, shift, 2, seed=1)
        assert not np.array_equal(seed_zero, seed_one), shift


def test_covariate_shift_rejects_bad_input():
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    with pytest.raises(ValueError, match="severity"):
        apply_covariate_shift(images, "blur", 0)
    with pytest.raises(ValueError, match="fog"):
        apply_covariate_shift(images, "fog", 1)
    with pytest.raises(ValueError, match="uint8"):
        apply_covariate_shift(images.astype(np.float32), "blur", 1)


@needs_debian
@needs_openclipart
def test_builder_reproduces_committed_subset(tmp_path):
    manifest = build_fashion_open(DEBIAN_FASHION_MNIST_DIR, tmp_path / "fashion-open")
    committed = _manifest()

    assert manifest["sources"] == committed["sources"]
    assert manifest["clipart"] == committed["clipart"]
    assert sorted(manifest["splits"]) == sorted(committed["splits"])
    for split, entry in committed["splits"].items():
        assert manifest["splits"][split]["sha256"] == entry["sha256"], split
        # Byte equality also needs the same zlib; the content hash above is the contract.
        assert manifest["splits"][split]["file_sha256"] == entry["file_sha256"], split
    assert manifest["covariate"] == committed["covariate"]
    licences = sorted(COMMITTED.glob("LICENSE-*.txt"))
    assert licences
    for licence in licences:
        assert (tmp_path / "fashion-open" / licence.name).read_bytes() == licence.read_bytes()


@needs_debian
def test_stored_images_match_source_indices():
    train_images, train_labels = read_fashion_mnist("train")
    arrays = read_npz(COMMITTED / "id_train.npz")
    index = arrays["source_index"]

    assert len(np.unique(index)) == len(index)
    assert np.array_equal(arrays["images"], train_images[index])
    names = [FASHION_MNIST_CLASSES[label] for label in train_labels[index]]
    assert names == [FASHION_ID_CLASSES[label] for label in arrays["labels"]]


def _write_idx(path, array, type_code):
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.mark.parametrize(
    ("name", "dtype", "code"),
    [("a.idx", np.uint8, 0x08), ("b.idx.gz", np.int32, 0x0C), ("c.idx", np.float32, 0x0D)],
)
def test_read_idx_roundtrip(tmp_path, name, dtype, code):
    offset = 0 if dtype == np.uint8 else 5  # negative values for the signed types
    array = (np.arange(24) - offset).reshape(2, 3, 4).astype(dtype)
    _write_idx(tmp_path / name, array, code)
    result = read_idx(tmp_path / name)

    assert result.dtype == np.dtype(dtype)
    assert np.array_equal(result, array)


def test_read_idx_rejects_bad_files(tmp_path):
    _write_idx(tmp_path / "ok.idx", np.zeros((4, 5), dtype=np.uint8), 0x08)
    (tmp_path / "short.idx").write_bytes((tmp_path / "ok.idx").read_bytes()[:-3])
    (tmp_path / "magic.idx").write_bytes(b"\x01\x02\x08\x01" + (3).to_bytes(4, "big") + b"abc")

    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short.idx")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "magic.idx")
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent.idx")
