"""Folder, CSV-manifest and OOD-folder datasets on fixture images written to tmp_path."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from dsenergy.data import csv_manifest_dataset, image_folder_dataset, ood_folder_dataset


def _write_image(path, value, suffix=".png"):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((8, 10, 3), value, dtype=np.uint8)
    Image.fromarray(array).save(path.with_suffix(suffix))
    return path.with_suffix(suffix)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "pets"
    for label, name in enumerate(["cat", "dog", "fox"]):
        for i in range(label + 2):
            _write_image(root / name / f"img{i}", 40 * label + i, suffix=".png" if i % 2 else ".jpg")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_reads_sorted_classes(folder):
    dataset = image_folder_dataset(folder)

    assert dataset.class_names == ["cat", "dog", "fox"]
    assert len(dataset) == 2 + 3 + 4
    assert np.bincount(dataset.labels).tolist() == [2, 3, 4]
    image, label = dataset[0]
    assert image.mode == "RGB"
    assert image.size == (10, 8)
    assert label == 0


def test_image_folder_follows_given_class_order(folder):
    dataset = image_folder_dataset(folder, class_names=["fox", "cat", "dog"])

    assert dataset.class_names == ["fox", "cat", "dog"]
    assert np.bincount(dataset.labels).tolist() == [4, 2, 3]
    assert all(path.parent.name == dataset.class_names[label] for path, label in dataset.samples)


def test_class_mismatch_lists_missing_and_extra(folder):
    with pytest.raises(ValueError, match=r"missing \['wolf'\].*extra \['fox'\]"):
        image_folder_dataset(folder, class_names=["cat", "dog", "wolf"])


def test_missing_root_names_path_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent.*root/<class>/<image files>"):
        image_folder_dataset(tmp_path / "absent")


def test_empty_class_folder_is_an_error(folder):
    (folder / "owl").mkdir()
    with pytest.raises(ValueError, match=r"owl contains no images"):
        image_folder_dataset(folder)


def test_corrupt_image_skipped_at_index_time(folder, caplog):
    (folder / "cat" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with caplog.at_level(logging.WARNING, logger="dsenergy.data.folders"):
        dataset = image_folder_dataset(folder)

    assert len(dataset) == 9
    assert all(path.name != "broken.jpg" for path, _ in dataset.samples)
    assert "skipped 1 unreadable image(s) of 10" in caplog.text


def test_undecodable_image_gets_placeholder(folder, caplog):
    good = folder / "fox" / "img0.jpg"
    truncated = folder / "fox" / "zz_truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:40])
    dataset = image_folder_dataset(folder, verify=False)
    index = next(i for i, (path, _) in enumerate(dataset.samples) if path == truncated)

    with caplog.at_level(logging.WARNING, logger="dsenergy.data.folders"):
        image, label = dataset[index]

    assert label == 2
    assert image.size == (224, 224)
    assert image.getpixel((0, 0)) == (128, 128, 128)
    assert dataset.decode_failures == 1
    assert "zz_truncated.jpg" in caplog.text


def test_identity_tracks_file_list(folder):
    first = image_folder_dataset(folder).identity
    second = image_folder_dataset(folder).identity
    _write_image(folder / "cat" / "img9", 7)
    third = image_folder_dataset(folder).identity

    assert first == second
    assert first != third


def test_hidden_files_and_folders_ignored(folder):
    _write_image(folder / ".ipynb_checkpoints" / "img0", 1)
    (folder / "cat" / "._img0.jpg").write_bytes(b"resource fork")
    dataset = image_folder_dataset(folder, class_names=["cat", "dog", "fox"])

    assert len(dataset) == 9
    assert all(not path.name.startswith(".") for path, _ in dataset.samples)


def test_transform_is_applied(folder):
    dataset = image_folder_dataset(folder, transform=lambda image: np.asarray(image).shape)
    assert dataset[0][0] == (8, 10, 3)


def test_ood_folder_labels_minus_one(tmp_path):
    root = tmp_path / "Textures"
    _write_image(root / "images" / "banded" / "a", 1)
    _write_image(root / "images" / "dotted" / "b", 2)
    _write_image(root / "loose", 3)
    dataset = ood_folder_dataset(root)

    assert len(dataset) == 3
    assert (dataset.labels == -1).all()
    assert dataset.ood_class_names == [".", "images"]
    assert sorted(dataset.ood_labels.tolist()) == [0, 1, 1]


def test_ood_folder_rejects_empty_and_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no images"):
        ood_folder_dataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ood_folder_dataset(tmp_path / "nowhere")


def _write_csv(path, rows):
    path.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    return path


def test_csv_manifest_resolves_relative_paths(tmp_path, monkeypatch):
    first = _write_image(tmp_path / "sets" / "images" / "a", 10)
    second = _write_image(tmp_path / "sets" / "images" / "b", 20)
    absolute = _write_image(tmp_path / "elsewhere" / "c", 30)
    manifest = _write_csv(
        tmp_path / "sets" / "train.csv", [("images/a.png", "shoe"), ("images/b.png", "bag"), (absolute, "shoe")]
    )
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on the working directory
    dataset = csv_manifest_dataset(manifest)

    assert dataset.class_names == ["bag", "shoe"]
    assert [path for path, _ in dataset.samples] == [first, second, absolute]
    assert dataset.labels.tolist() == [1, 0, 1]


def test_csv_manifest_integer_labels(tmp_path):
    _write_image(tmp_path / "a", 10)
    _write_image(tmp_path / "b", 20)
    manifest = _write_csv(tmp_path / "m.csv", [("a.png", 1), ("b.png", 0)])
    dataset = csv_manifest_dataset(manifest, class_names=["bag", "shoe"])

    assert dataset.labels.tolist() == [1, 0]


def test_csv_manifest_bad_inputs(tmp_path):
    _write_image(tmp_path / "a", 10)
    unknown = _write_csv(tmp_path / "unknown.csv", [("a.png", "hat")])
    missing = _write_csv(tmp_path / "missing.csv", [("a.png", "bag"), ("gone.png", "bag")])
    columns = tmp_path / "columns.csv"
    columns.write_text("file,class\na.png,bag\n")

    with pytest.raises(ValueError, match=r"not in the class list.*hat"):
        csv_manifest_dataset(unknown, class_names=["bag", "shoe"])
    with pytest.raises(FileNotFoundError, match="gone.png"):
        csv_manifest_dataset(missing)
    with pytest.raises(ValueError, match="'path' and 'label'"):
        csv_manifest_dataset(columns)
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        csv_manifest_dataset(tmp_path / "absent.csv")
