"""K-shot split files: seeded draws, reuse, validation and the too-few-samples error."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from dsenergy._paths import cache_dir
from dsenergy.data import array_sha256, kshot_indices, kshot_path, load_fashion_open


@pytest.fixture
def labels():
    return np.repeat(np.arange(5), 30)[np.random.default_rng(7).permutation(150)]


def test_kshot_draws_k_per_class(labels, tmp_path):
    indices = kshot_indices(labels, 4, seed=1, dataset_id="toy", cache_dir=tmp_path)

    assert np.bincount(labels[indices]).tolist() == [4] * 5
    assert len(np.unique(indices)) == len(indices)


def test_same_seed_gives_identical_files(labels, tmp_path):
    first = kshot_indices(labels, 4, seed=1, dataset_id="toy", cache_dir=tmp_path / "a")
    second = kshot_indices(labels, 4, seed=1, dataset_id="toy", cache_dir=tmp_path / "b")

    assert np.array_equal(first, second)
    assert kshot_path("toy", 4, 1, tmp_path / "a").read_bytes() == kshot_path("toy", 4, 1, tmp_path / "b").read_bytes()


def test_other_seed_gives_other_split(labels, tmp_path):
    first = kshot_indices(labels, 4, seed=1, dataset_id="toy", cache_dir=tmp_path)
    second = kshot_indices(labels, 4, seed=2, dataset_id="toy", cache_dir=tmp_path)

    assert not np.array_equal(first, second)
    assert kshot_path("toy", 4, 1, tmp_path) != kshot_path("toy", 4, 2, tmp_path)


def test_stored_split_is_reused(labels, tmp_path):
    path = kshot_path("toy", 2, 3, tmp_path)
    kshot_indices(labels, 2, seed=3, dataset_id="toy", cache_dir=tmp_path)
    record = json.loads(path.read_text())
    # A different valid split planted in the file must come back unchanged, proving the file is read.
    planted = sorted(int(np.flatnonzero(labels == c)[-1]) for c in range(5)) + sorted(
        int(np.flatnonzero(labels == c)[-2]) for c in range(5)
    )
    record["indices"] = sorted(planted)
    path.write_text(json.dumps(record))

    assert kshot_indices(labels, 2, seed=3, dataset_id="toy", cache_dir=tmp_path).tolist() == sorted(planted)


def test_stale_or_broken_file_is_redrawn(labels, tmp_path):
    fresh = kshot_indices(labels, 2, seed=3, dataset_id="toy", cache_dir=tmp_path)
    path = kshot_path("toy", 2, 3, tmp_path)

    path.write_text("{not json")
    assert np.array_equal(kshot_indices(labels, 2, seed=3, dataset_id="toy", cache_dir=tmp_path), fresh)

    changed = labels.copy()
    changed[:10] = (changed[:10] + 1) % 5
    redrawn = kshot_indices(changed, 2, seed=3, dataset_id="toy", cache_dir=tmp_path)
    assert np.bincount(changed[redrawn]).tolist() == [2] * 5
    assert json.loads(path.read_text())["labels_sha256"] == array_sha256(changed)


def test_too_few_samples_names_class(tmp_path):
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    with pytest.raises(ValueError, match=r"fewer than k=3.*1: 2"):
        kshot_indices(labels, 3, seed=0, dataset_id="small", cache_dir=tmp_path)


def test_negative_labels_are_ignored(tmp_path):
    labels = np.array([0, 0, 1, 1, -1, -1, -1])
    indices = kshot_indices(labels, 2, seed=0, dataset_id="mixed", cache_dir=tmp_path)
    assert sorted(indices.tolist()) == [0, 1, 2, 3]


def test_default_cache_dir_and_fashion_open():
    labels = load_fashion_open("id_train").labels
    indices = kshot_indices(labels, 16, seed=1, dataset_id="fashion-open/id_train")

    assert np.bincount(labels[indices]).tolist() == [16] * 6
    assert kshot_path("fashion-open/id_train", 16, 1).parent == cache_dir() / "splits"
    assert kshot_path("fashion-open/id_train", 16, 1).is_file()


def test_kshot_file_name_pattern(tmp_path):
    dataset_id = "fashion-open-v1/id_train/3c8bda013253fc0d"
    id_hash = hashlib.sha256(dataset_id.encode()).hexdigest()[:12]
    path = kshot_path(dataset_id, 4, 1, tmp_path)

    assert path.parent == tmp_path / "splits"
    assert path.name == f"fashion-open-v1_id_train_3c8bda013253fc0d-{id_hash}-k4-seed1.json"
    assert path.name == "fashion-open-v1_id_train_3c8bda013253fc0d-79b83193988c-k4-seed1.json"


def test_kshot_distinct_ids_distinct_files(tmp_path):
    slash = kshot_path("pets/train", 4, 1, tmp_path)
    colon = kshot_path("pets:train", 4, 1, tmp_path)
    long_a = kshot_path("x" * 80 + "a", 4, 1, tmp_path)
    long_b = kshot_path("x" * 80 + "b", 4, 1, tmp_path)

    assert slash.name.startswith("pets_train-")
    assert colon.name.startswith("pets_train-")
    assert slash != colon
    assert long_a != long_b
