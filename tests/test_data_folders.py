"""Folder, CSV-manifest and OOD-folder datasets on fixture images written to tmp_path."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from dsenergy.data import csv_manifest_dataset, image_folder_dataset, ood_folder_dataset
from dsenergy.data.folders import count_image_files


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
    (folder / "owl" / "readme.txt").write_text("no images here")

    for verify in (True, False):
        with pytest.raises(ValueError) as error:
            image_folder_dataset(folder, verify=verify)
        message = str(error.value)
        assert "owl contains no image files" in message
        assert "with or without verify" in message
        assert "Add images to it, or move it out of" in message


def test_empty_class_listed_in_class_names(folder):
    (folder / "owl").mkdir()
    with pytest.raises(ValueError, match=r"owl contains no image files.*drop the class from class_names"):
        image_folder_dataset(folder, class_names=["cat", "dog", "fox", "owl"])


def test_class_names_cannot_select_subset(folder):
    with pytest.raises(ValueError) as error:
        image_folder_dataset(folder, class_names=["cat", "dog"])
    message = str(error.value)

    assert "extra ['fox'] (1)" in message
    assert "missing [" not in message
    assert "does not select a subset" in message
    assert "move them out of" in message
    assert "allow_missing_classes=True" in message


def test_missing_classes_allowed(folder, caplog):
    class_names = ["ant", "cat", "dog", "eel", "fox"]
    with caplog.at_level(logging.WARNING, logger="dsenergy.data.folders"):
        dataset = image_folder_dataset(folder, class_names=class_names, allow_missing_classes=True)

    assert dataset.class_names == class_names
    assert np.bincount(dataset.labels, minlength=5).tolist() == [0, 2, 3, 0, 4]
    assert all(path.parent.name == class_names[label] for path, label in dataset.samples)
    assert "has folders for 3 of 5 classes; missing ['ant', 'eel'] (2)" in caplog.text


def test_missing_classes_log_is_shortened(folder, caplog):
    class_names = [f"class{i:02d}" for i in range(30)] + ["cat", "dog", "fox"]
    with caplog.at_level(logging.WARNING, logger="dsenergy.data.folders"):
        image_folder_dataset(folder, class_names=class_names, allow_missing_classes=True)

    assert "missing ['class00', 'class01'," in caplog.text
    assert "'class19'] ... (30)" in caplog.text
    assert "class20" not in caplog.text


def test_missing_classes_none_missing_is_quiet(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="dsenergy.data.folders"):
        dataset = image_folder_dataset(folder, class_names=["fox", "cat", "dog"], allow_missing_classes=True)

    assert np.bincount(dataset.labels).tolist() == [4, 2, 3]
    assert "missing" not in caplog.text


def test_missing_classes_rejects_extra(folder):
    with pytest.raises(ValueError) as error:
        image_folder_dataset(folder, class_names=["cat", "dog", "owl"], allow_missing_classes=True)
    message = str(error.value)

    assert "are not in class_names: ['fox'] (1)" in message
    assert "any subset of class_names but no others" in message


def test_missing_classes_needs_class_names(folder):
    with pytest.raises(ValueError, match="allow_missing_classes=True needs class_names"):
        image_folder_dataset(folder, allow_missing_classes=True)


def test_missing_classes_without_any_folder(tmp_path):
    (tmp_path / "sketch").mkdir()
    with pytest.raises(ValueError, match="sketch contains no class folders"):
        image_folder_dataset(tmp_path / "sketch", class_names=["cat"], allow_missing_classes=True)


def test_missing_classes_empty_folder_is_an_error(folder):
    (folder / "owl").mkdir()
    with pytest.raises(ValueError, match="owl contains no image files"):
        image_folder_dataset(folder, class_names=["cat", "dog", "fox", "owl", "yak"], allow_missing_classes=True)


def test_count_image_files(folder):
    (folder / "dog" / ".hidden.png").write_bytes(b"hidden")
    (folder / "dog" / "UPPER.PNG").write_bytes(b"counted by suffix, never opened")
    _write_image(folder / "dog" / "nested" / "deep", 1)

    assert count_image_files(folder / "dog") == 4
    assert count_image_files(folder / "dog", limit=2) == 2
    assert count_image_files(folder / "dog", limit=9) == 4
    assert len(image_folder_dataset(folder, verify=False).samples) == 2 + 4 + 4


def test_duplicate_class_names_rejected(folder):
    with pytest.raises(ValueError, match=r"\['cat'\] more than once"):
        image_folder_dataset(folder, class_names=["cat", "dog", "fox", "cat"])


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
    assert dataset.placeholder_paths == {truncated}
    assert "zz_truncated.jpg" in caplog.text
    assert "with the file's label 2" in caplog.text
    assert "enters extracted features and scores" in caplog.text
    assert "Build the dataset with verify=True" in caplog.text


def _noise_jpeg(path, seed=0):
    """Write a 64×64 noise JPEG, large enough that cutting it in half leaves the header intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")
    return path


def test_verify_drops_truncated_jpeg(folder):
    whole = _noise_jpeg(folder / "cat" / "whole.jpg").read_bytes()
    (folder / "cat" / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    unchecked = image_folder_dataset(folder, verify=False)
    checked = image_folder_dataset(folder)

    assert len(unchecked) == 11
    assert len(checked) == 10
    assert all(path.name != "cut.jpg" for path, _ in checked.samples)


def test_verify_keeps_jpeg_with_trailing_bytes(folder):
    path = _noise_jpeg(folder / "cat" / "tail.jpg")
    path.write_bytes(path.read_bytes() + b"camera metadata")
    dataset = image_folder_dataset(folder)

    assert len(dataset) == 10
    assert dataset[[p for p, _ in dataset.samples].index(path)][0].size == (64, 64)


def test_placeholder_after_verify_advises_replacing(folder, caplog):
    dataset = image_folder_dataset(folder)
    (folder / "dog" / "img0.jpg").write_bytes(b"overwritten after indexing")

    with caplog.at_level(logging.WARNING, logger="dsenergy.data.folders"):
        dataset[2]

    assert dataset.verified
    assert "passed the index-time check, so remove or replace it" in caplog.text


def test_placeholder_logs_are_rate_limited(tmp_path, caplog):
    root = tmp_path / "broken"
    for i in range(8):
        (root / "junk").mkdir(parents=True, exist_ok=True)
        (root / "junk" / f"bad{i}.png").write_bytes(b"not a png")
    dataset = image_folder_dataset(root, verify=False)

    with caplog.at_level(logging.WARNING, logger="dsenergy.data.folders"):
        for index in [*range(8), 0, 1]:
            dataset[index]
    named = [r for r in caplog.records if "failed to decode" in r.getMessage()]
    counts = [r.getMessage() for r in caplog.records if "decode failure(s) so far" in r.getMessage()]

    assert dataset.decode_failures == 10
    assert len(dataset.placeholder_paths) == 8
    assert len(named) == 5
    assert len(counts) == 2
    assert "6 decode failure(s) so far in 6 file(s)" in counts[0]
    assert "10 decode failure(s) so far in 8 file(s)" in counts[1]


def test_identity_tracks_file_list(folder):
    first = image_folder_dataset(folder).identity
    second = image_folder_dataset(folder).identity
    _write_image(folder / "cat" / "img9", 7)
    third = image_folder_dataset(folder).identity

    assert first == second
    assert first != third


def test_identity_tracks_rewritten_image(folder):
    first = image_folder_dataset(folder).identity
    image = next((folder / "cat").iterdir())
    status = image.stat()
    # Same size, new modification time: the image was rewritten in place.
    os.utime(image, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))
    assert image_folder_dataset(folder).identity != first


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


def test_ood_folder_log_counts_ood_classes(tmp_path, caplog):
    for name, count in (("cat", 3), ("dog", 4)):
        for i in range(count):
            _write_image(tmp_path / "ood" / name / f"{i}", i)
    with caplog.at_level(logging.INFO, logger="dsenergy.data.folders"):
        ood_folder_dataset(tmp_path / "ood")

    assert "7 images from 2 OOD classes" in caplog.text
    assert "0 classes" not in caplog.text


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

    with pytest.raises(ValueError, match=r"Labels \['hat'\] are not in the class list \['bag', 'shoe'\]"):
        csv_manifest_dataset(unknown, class_names=["bag", "shoe"])
    with pytest.raises(FileNotFoundError, match="gone.png"):
        csv_manifest_dataset(missing)
    with pytest.raises(ValueError, match="'path' and 'label'"):
        csv_manifest_dataset(columns)
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        csv_manifest_dataset(tmp_path / "absent.csv")


def test_csv_manifest_index_out_of_range(tmp_path):
    _write_image(tmp_path / "a", 10)
    single = _write_csv(tmp_path / "single.csv", [("a.png", 7)])
    mixed = _write_csv(tmp_path / "mixed.csv", [("a.png", 7), ("a.png", -1), ("a.png", "hat")])

    with pytest.raises(ValueError) as error:
        csv_manifest_dataset(single, class_names=["cat", "dog"])
    assert "Label index 7 is out of range 0..1" in str(error.value)
    assert "not in the class list" not in str(error.value)

    with pytest.raises(ValueError) as error:
        csv_manifest_dataset(mixed, class_names=["cat", "dog"])
    assert "Label indices -1, 7 are out of range 0..1" in str(error.value)
    assert "Labels ['hat'] are not in the class list" in str(error.value)


def test_csv_manifest_rejects_empty_class_names(tmp_path):
    _write_image(tmp_path / "a", 10)
    manifest = _write_csv(tmp_path / "m.csv", [("a.png", 0)])
    with pytest.raises(ValueError, match="class_names for .* is empty"):
        csv_manifest_dataset(manifest, class_names=[])


@pytest.fixture
def loaders(folder, tmp_path):
    """Each loader that verifies images, as a function of keyword arguments."""
    manifest = _write_csv(tmp_path / "m.csv", [(folder / "cat" / "img0.jpg", "cat")])
    return {
        "folder": lambda **kwargs: image_folder_dataset(folder, **kwargs),
        "ood": lambda **kwargs: ood_folder_dataset(folder, **kwargs),
        "csv": lambda **kwargs: csv_manifest_dataset(manifest, **kwargs),
    }


@pytest.mark.parametrize("loader", ["folder", "ood", "csv"])
def test_progress_bar_switch(loaders, loader, capsys):
    loaders[loader](progress=False)
    quiet_output = capsys.readouterr().err
    loaders[loader](progress=True)
    bar_output = capsys.readouterr().err

    assert "verify" not in quiet_output
    assert "verify" in bar_output
