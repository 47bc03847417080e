"""ImageNet OOD, ImageNet variants and CRoFT Setup-I / II layouts on fixture folders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dsenergy.data import (
    croft_setup1_classes,
    croft_setup2,
    imagenet_class_names,
    imagenet_dataset,
    imagenet_open_set,
    imagenet_templates,
    imagenet_variant,
    imagenet_wnids,
    ood_folder_dataset,
)

TINY = Image.fromarray(np.full((4, 4, 3), 90, dtype=np.uint8))


def _touch_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    TINY.save(path, format="PNG")


@pytest.fixture(scope="module")
def imagenet_val(tmp_path_factory):
    """A val folder with the 1000 wnid folders and one image each (two for class 0)."""
    root = tmp_path_factory.mktemp("imagenet") / "val"
    for i, wnid in enumerate(imagenet_wnids()):
        _touch_image(root / wnid / f"ILSVRC2012_val_{i:08d}.JPEG")
    _touch_image(root / imagenet_wnids()[0] / "ILSVRC2012_val_extra.JPEG")
    return root


def test_wnids_and_names_come_from_libraries():
    wnids = imagenet_wnids()
    names = imagenet_class_names()

    assert len(wnids) == len(set(wnids)) == 1000
    assert wnids[0] == "n01440764"
    assert wnids == sorted(wnids)
    assert len(names) == 1000
    assert names[0] == "tench"
    assert "{}" not in imagenet_templates()[0]("tench")
    assert "tench" in imagenet_templates()[0]("tench")


def test_wnids_from_user_file(tmp_path):
    custom = [f"n{i:08d}" for i in range(1000)]
    (tmp_path / "wnids.txt").write_text("\n".join(custom) + "\n")
    (tmp_path / "short.txt").write_text("n01440764\n")

    assert imagenet_wnids(tmp_path / "wnids.txt") == custom
    with pytest.raises(ValueError, match="expected 1000"):
        imagenet_wnids(tmp_path / "short.txt")


def test_imagenet_val_all_and_subset(imagenet_val):
    full = imagenet_dataset(imagenet_val, verify=False)
    subset = imagenet_dataset(imagenet_val, class_indices=[999, 0, 1], verify=False)

    assert len(full) == 1001
    assert full.class_names[:2] == ["tench", "goldfish"]
    assert subset.class_names == [imagenet_class_names()[999], "tench", "goldfish"]
    assert np.bincount(subset.labels).tolist() == [1, 2, 1]


def test_imagenet_val_class_mismatch(imagenet_val, tmp_path):
    root = tmp_path / "val"
    wnids = imagenet_wnids()
    for wnid in wnids[:-1]:
        (root / wnid).mkdir(parents=True)
    (root / "n99999999").mkdir()

    with pytest.raises(ValueError, match=rf"missing \['{wnids[-1]}'\].*extra \['n99999999'\]"):
        imagenet_dataset(root)


def test_imagenet_partial_wnids_rejected(tmp_path):
    wnids = imagenet_wnids()[:3]
    for wnid in wnids:
        _touch_image(tmp_path / "val" / wnid / "a.JPEG")
    with pytest.raises(ValueError, match="wnids lists 3 wnids, but ImageNet-1k has 1000"):
        imagenet_dataset(tmp_path / "val", wnids=wnids)


def test_imagenet_val_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"val.*<wnid>"):
        imagenet_dataset(tmp_path / "val")


def test_imagenet_ood_sets(tmp_path):
    for name in ("iNaturalist", "SUN", "Places"):
        _touch_image(tmp_path / name / "images" / "a.jpg")
    _touch_image(tmp_path / "dtd" / "images" / "banded" / "b.jpg")

    for name in ("iNaturalist", "SUN", "Places", "dtd"):
        dataset = ood_folder_dataset(tmp_path / name)
        assert len(dataset) == 1
        assert dataset.labels.tolist() == [-1]


def test_croft_setup1_split_is_seeded():
    id_classes, ood_classes = croft_setup1_classes(seed=1)
    again, _ = croft_setup1_classes(seed=1)
    other, _ = croft_setup1_classes(seed=2)

    assert len(id_classes) == 400
    assert len(ood_classes) == 600
    assert sorted(np.concatenate([id_classes, ood_classes]).tolist()) == list(range(1000))
    assert np.array_equal(id_classes, again)
    assert not np.array_equal(id_classes, other)


def test_croft_setup1_datasets(imagenet_val):
    id_classes, ood_classes = croft_setup1_classes(seed=1)
    id_set = imagenet_dataset(imagenet_val, class_indices=id_classes, verify=False)
    open_set = imagenet_open_set(imagenet_val, ood_classes, verify=False)

    assert len(id_set.class_names) == 400
    assert len(open_set) == 600 + (0 in ood_classes)
    assert (open_set.labels == -1).all()
    assert len(open_set.ood_class_names) == 600
    assert {path.parent.name for path, _ in id_set.samples}.isdisjoint(
        {path.parent.name for path, _ in open_set.samples}
    )


@pytest.mark.parametrize("variant", ["a", "r", "sketch"])
def test_variant_with_wnid_folders(tmp_path, variant):
    wnids = imagenet_wnids()
    for index in (1, 5, 7):
        _touch_image(tmp_path / variant / wnids[index] / "x.png")

    dataset = imagenet_variant(tmp_path / variant, variant, class_indices=[7, 1, 2], verify=False)

    assert dataset.class_names == [imagenet_class_names()[i] for i in (7, 1, 2)]
    assert sorted(dataset.labels.tolist()) == [0, 1]
    assert {path.parent.name for path, _ in dataset.samples} == {wnids[1], wnids[7]}


def test_variant_v2_uses_label_folders(tmp_path):
    for index in (0, 3, 999):
        _touch_image(tmp_path / "v2" / str(index) / "x.jpeg")

    dataset = imagenet_variant(tmp_path / "v2", "v2", class_indices=[999, 3], verify=False)

    assert sorted(dataset.labels.tolist()) == [0, 1]
    assert dataset.class_names[0] == imagenet_class_names()[999]


def test_variant_bad_inputs(tmp_path):
    _touch_image(tmp_path / "a" / "n99999999" / "x.png")
    with pytest.raises(ValueError, match="n99999999"):
        imagenet_variant(tmp_path / "a", "a", verify=False)
    with pytest.raises(ValueError, match="imagenet-c"):
        imagenet_variant(tmp_path / "a", "imagenet-c")
    with pytest.raises(FileNotFoundError, match="missing-r"):
        imagenet_variant(tmp_path / "missing-r", "r")


@pytest.fixture
def pacs(tmp_path):
    root = tmp_path / "PACS"
    for domain in ("art_painting", "cartoon", "photo"):
        for name in ("dog", "giraffe", "guitar_acoustic"):
            for i in range(2):
                _touch_image(root / domain / name / f"{i}.png")
    return root


def test_croft_setup2_leaves_one_domain_out(pacs):
    split = croft_setup2(pacs, "photo", verify=False)

    assert split.source_domains == ["art_painting", "cartoon"]
    assert split.class_names == ["dog", "giraffe", "guitar acoustic"]
    assert len(split.source) == 12
    assert len(split.target) == 6
    assert all(path.parts[-3] == "photo" for path, _ in split.target.samples)
    assert all("photo" not in path.parts for path, _ in split.source.samples)
    assert np.bincount(split.source_domain_labels).tolist() == [6, 6]


def test_croft_setup2_bad_inputs(pacs):
    (pacs / "cartoon" / "horse").mkdir()
    with pytest.raises(ValueError, match=r"extra \['horse'\]"):
        croft_setup2(pacs, "photo", verify=False)
    with pytest.raises(ValueError, match="sketch"):
        croft_setup2(pacs, "sketch", domains=["art_painting", "photo"], verify=False)
    with pytest.raises(FileNotFoundError, match="sketch"):
        croft_setup2(pacs, "photo", domains=["photo", "sketch"], verify=False)


def test_croft_setup2_empty_class_folder(pacs):
    for image_path in (pacs / "cartoon" / "giraffe").iterdir():
        image_path.unlink()
    with pytest.raises(ValueError, match=r"giraffe contains no image files.*remove this class folder from every"):
        croft_setup2(pacs, "photo", verify=False)


def test_croft_setup2_mismatch_remedy(pacs):
    (pacs / "cartoon" / "horse").mkdir()
    with pytest.raises(ValueError, match=r"same class folders as .*art_painting"):
        croft_setup2(pacs, "photo", verify=False)


def test_imagenet_open_set_keeps_verified_flag(imagenet_val):
    open_set = imagenet_open_set(imagenet_val, [1, 2], progress=False)
    assert open_set.verified


def test_protocol_loaders_progress_switch(pacs, capsys):
    croft_setup2(pacs, "photo", progress=False)
    quiet_output = capsys.readouterr().err
    croft_setup2(pacs, "photo", progress=True)
    bar_output = capsys.readouterr().err

    assert "verify" not in quiet_output
    assert "verify" in bar_output
