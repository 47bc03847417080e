"""Clip art for ood_clipart: clothing filter, rendering, deterministic draw, committed split and its rebuild."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
from PIL import Image

from dsenergy._paths import data_dir
from dsenergy.data import array_sha256, fashion_open_counts, load_fashion_open
from dsenergy.data import clipart
from dsenergy.data._arrays import read_npz, write_npz
from dsenergy.data.build_fashion_open import build_clipart_split, build_fashion_open, main
from dsenergy.data.clipart import (
    DEBIAN_OPENCLIPART_DIR,
    check_clipart_source,
    draw_clipart,
    is_clothing_path,
    list_clipart,
    render_clipart,
)
from dsenergy.data.fashion_open import FASHION_CLIPART_CLASSES, FASHION_CLIPART_COUNTS, FASHION_OPEN_SPEC

COMMITTED = data_dir() / "fashion-open"
needs_openclipart = pytest.mark.skipif(
    not all((DEBIAN_OPENCLIPART_DIR / category).is_dir() for category in FASHION_CLIPART_CLASSES),
    reason=f"openclipart PNG folders not in {DEBIAN_OPENCLIPART_DIR} (Debian package openclipart-png)",
)


def _manifest() -> dict:
    return json.loads((COMMITTED / "manifest.json").read_text())


def _drawing(mode: str, size: tuple[int, int] = (64, 48), box: tuple[int, int, int, int] = (10, 5, 30, 40)):
    """Draw a dark rectangle on a background that is transparent where the mode has alpha, else white.

    Transparent pixels carry black colour values, as many clip-art files do, so a renderer that drops
    the alpha channel instead of compositing over white would show a bright background.
    """
    if mode == "RGBA":
        image = Image.new("RGBA", size, (0, 0, 0, 0))
        image.paste((20, 20, 20, 255), box)
    elif mode == "LA":
        image = Image.new("LA", size, (0, 0))
        image.paste((20, 255), box)
    elif mode == "P":
        image = Image.new("P", size, 0)
        image.putpalette([0, 0, 0, 20, 20, 20] + [0, 0, 0] * 254)
        image.paste(1, box)
        image.info["transparency"] = 0  # palette entry 0 is black but transparent
    elif mode == "RGB":
        image = Image.new("RGB", size, (255, 255, 255))
        image.paste((20, 20, 20), box)
    elif mode == "L":
        image = Image.new("L", size, 255)
        image.paste(20, box)
    else:
        raise ValueError(mode)
    return image


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "RGB", "L"])
def test_render_gives_bright_object_on_black(tmp_path, mode):
    path = tmp_path / f"drawing_{mode}.png"
    _drawing(mode).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == mode
    rendered = render_clipart(path)

    assert rendered.dtype == np.uint8
    assert rendered.shape == (28, 28)
    assert rendered[:, 0].max() == 0  # the 20×35 rectangle is padded left and right with black
    assert rendered[:, -1].max() == 0
    assert int(rendered[14, 14]) == pytest.approx(255 - 20, abs=1)
    # The crop to the bounding box makes the taller side fill the frame.
    assert rendered[0].max() > 200
    assert rendered[-1].max() > 200


def test_render_centres_object_in_square(tmp_path):
    path = tmp_path / "wide.png"
    _drawing("RGBA", size=(100, 100), box=(5, 70, 85, 90)).save(path)  # 80 wide, 20 tall, near the bottom
    rendered = render_clipart(path).astype(np.float64)

    rows = np.flatnonzero(rendered.max(axis=1) > 128)
    centre_row = (rendered.sum(axis=1) * np.arange(28)).sum() / rendered.sum()
    assert rendered[:, 0].max() > 200
    assert rendered[:, -1].max() > 200
    assert rows.min() >= 9
    assert rows.max() <= 18
    assert centre_row == pytest.approx(13.5, abs=0.5)


def test_render_uses_luma_and_alpha(tmp_path):
    red = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    red.paste((255, 0, 0, 255), (0, 0, 40, 20))
    red.paste((0, 0, 0, 128), (0, 20, 40, 40))  # half-transparent black over white is mid grey
    red.save(tmp_path / "red.png")
    rendered = render_clipart(tmp_path / "red.png")

    # Pillow's luma of pure red is 76, so the inverted value is 179; the lower half
    # composites to 127 and inverts to 128.
    assert int(rendered[5, 14]) == pytest.approx(255 - 76, abs=1)
    assert int(rendered[22, 14]) == pytest.approx(128, abs=1)


def test_render_skips_blank_corrupt_and_large(tmp_path, monkeypatch):
    Image.new("RGBA", (30, 30), (0, 0, 0, 0)).save(tmp_path / "transparent.png")
    Image.new("RGB", (30, 30), (255, 255, 255)).save(tmp_path / "white.png")
    (tmp_path / "corrupt.png").write_bytes(b"this is not a PNG file")
    _drawing("L").save(tmp_path / "whole.png")
    whole = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(whole[:60])
    damaged = bytearray(whole)
    damaged[whole.find(b"IDAT") + 6] ^= 0xFF  # a flipped byte inside the compressed pixel data
    (tmp_path / "damaged.png").write_bytes(bytes(damaged))

    for name in ("transparent.png", "white.png", "corrupt.png", "truncated.png", "damaged.png", "absent.png"):
        assert render_clipart(tmp_path / name) is None, name

    monkeypatch.setattr(clipart, "MAX_SOURCE_PIXELS", 64 * 48 - 1)
    assert render_clipart(tmp_path / "whole.png") is None


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("animals/red_shirt_01.png", True),
        ("food/Cowboy_BOOTS.png", True),
        ("transportation/little_tan_suitcase.png", True),
        ("tools/handbag_leather.png", True),
        ("animals/mammals/cat_01.png", False),
        ("transportation/boating/sailboat.png", False),
    ],
)
def test_clothing_filter(path, excluded):
    assert is_clothing_path(path) is excluded


def _write_source(root):
    """Write a small openclipart-like tree: two categories with drawings, clothing, junk and a link."""
    for index in range(5):
        (root / "cats" / "big").mkdir(parents=True, exist_ok=True)
        _drawing("RGBA", box=(2 + index, 3, 20 + 3 * index, 30)).save(root / "cats" / "big" / f"cat_{index}.png")
    _drawing("RGB").save(root / "cats" / "red_shirt_01.png")
    (root / "cats" / "broken.png").write_bytes(b"broken")
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(root / "cats" / "empty.png")
    (root / "cats" / "notes.txt").write_text("not an image")
    (root / "cars").mkdir()
    for index in range(3):
        _drawing("L", box=(1, 1, 10 + 5 * index, 12)).save(root / "cars" / f"car_{index}.png")
    (root / "cars" / "linked_cat.png").symlink_to(root / "cats" / "big" / "cat_0.png")


def test_list_skips_clothing_links_and_other_files(tmp_path):
    _write_source(tmp_path)

    cats, cats_excluded = list_clipart(tmp_path, "cats")
    cars, cars_excluded = list_clipart(tmp_path, "cars")

    assert cats == ["cats/big/cat_0.png", "cats/big/cat_1.png", "cats/big/cat_2.png", "cats/big/cat_3.png",
                    "cats/big/cat_4.png", "cats/broken.png", "cats/empty.png"]
    assert cats_excluded == 1
    assert cars == ["cars/car_0.png", "cars/car_1.png", "cars/car_2.png"]
    assert cars_excluded == 0


def test_draw_counts_skips_and_is_deterministic(tmp_path, caplog):
    _write_source(tmp_path)
    categories = ("cats", "cars")

    with caplog.at_level(logging.INFO, logger="dsenergy.data.clipart"):
        draw = draw_clipart(tmp_path, per_category=10, seed=0, stream=4, categories=categories)
    again = draw_clipart(tmp_path, per_category=10, seed=0, stream=4, categories=categories)

    assert draw.counts == {"cats": 5, "cars": 3}
    assert draw.excluded == {"cats": 1, "cars": 0}
    assert draw.skipped == {"cats": 2, "cars": 0}
    assert "1 excluded as clothing, 2 skipped" in caplog.text
    assert draw.images.shape == (8, 28, 28)
    assert draw.labels.tolist() == [0] * 5 + [1] * 3
    for label in (0, 1):
        paths = draw.paths[draw.labels == label].tolist()
        assert paths == sorted(paths)
        assert all(path.startswith(categories[label] + "/") for path in paths)
    assert np.array_equal(draw.images, again.images)
    assert np.array_equal(draw.paths, again.paths)


def test_draw_cap_replaces_skipped_files(tmp_path):
    _write_source(tmp_path)
    categories = ("cats", "cars")

    draws = [draw_clipart(tmp_path, per_category=4, seed=seed, stream=4, categories=categories) for seed in range(6)]

    for draw in draws:
        assert draw.counts == {"cats": 4, "cars": 3}
        assert all("broken" not in path and "empty" not in path for path in draw.paths.tolist())
    assert len({tuple(draw.paths.tolist()) for draw in draws}) > 1, "the seed never changed the draw"


def test_draw_subset_matches_full_draw(tmp_path):
    _write_source(tmp_path)
    categories = ("cats", "cars")

    full = draw_clipart(tmp_path, per_category=3, seed=1, stream=4, categories=categories)
    cars = draw_clipart(tmp_path, per_category=3, seed=1, stream=4, categories=categories, subset=("cars",))

    assert np.array_equal(cars.images, full.images[full.labels == 1])
    assert cars.labels.tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="dogs"):
        draw_clipart(tmp_path, per_category=3, seed=1, stream=4, categories=categories, subset=("dogs",))


def test_missing_source_names_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="openclipart-png"):
        check_clipart_source(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="openclipart-png"):
        build_fashion_open(tmp_path / "no-fashion-mnist", tmp_path / "out", clipart_source=tmp_path)
    assert not (tmp_path / "out").exists()


def test_builder_command_reports_missing_source(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        main(["--source", str(tmp_path), "--clipart-source", str(tmp_path / "absent"), "--out", str(tmp_path / "o")])
    assert raised.value.code == 2
    assert "openclipart-png" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_committed_split_counts_per_category():
    dataset = load_fashion_open("ood_clipart")
    stored = read_npz(COMMITTED / "ood_clipart.npz")

    assert len(dataset) == fashion_open_counts()["ood_clipart"]
    assert len(dataset) == sum(FASHION_CLIPART_COUNTS.values())
    assert (dataset.labels == -1).all()
    assert dataset.ood_class_names == list(FASHION_CLIPART_CLASSES)
    assert list(FASHION_CLIPART_COUNTS) == list(FASHION_CLIPART_CLASSES)
    per_category = np.bincount(dataset.ood_labels, minlength=len(FASHION_CLIPART_CLASSES)).tolist()
    assert per_category == list(FASHION_CLIPART_COUNTS.values())
    assert max(per_category) <= FASHION_OPEN_SPEC.ood_clipart_per_category
    assert len(np.unique(stored["source_path"])) == len(dataset)
    for label, path in zip(dataset.ood_labels.tolist(), stored["source_path"].tolist()):
        assert path.split("/")[0] == FASHION_CLIPART_CLASSES[label], path
        assert not is_clothing_path(path), path


def test_committed_images_look_like_fashion_mnist():
    images = load_fashion_open("ood_clipart").images
    border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1)

    assert np.median(border) == 0
    # The crop makes the longer side fill the frame, so nearly every image touches two opposite edges.
    rows_touch = (images[:, 0].max(axis=1) > 0) & (images[:, -1].max(axis=1) > 0)
    cols_touch = (images[:, :, 0].max(axis=1) > 0) & (images[:, :, -1].max(axis=1) > 0)
    assert (rows_touch | cols_touch).mean() > 0.95


def test_manifest_and_readme_record_counts():
    record = _manifest()["clipart"]
    readme = (data_dir() / "README.md").read_text()
    table = dict(re.findall(r"^\| ([a-z]+) \| \d+ \| \d+ \| (\d+) \|$", readme, flags=re.M))

    assert record["categories"] == list(FASHION_CLIPART_CLASSES)
    assert record["per_category"] == FASHION_CLIPART_COUNTS
    assert {name: int(count) for name, count in table.items()} == FASHION_CLIPART_COUNTS
    assert _manifest()["splits"]["ood_clipart"]["count"] == sum(FASHION_CLIPART_COUNTS.values())


@needs_openclipart
def test_rebuild_small_categories_matches_committed():
    subset = ("plants", "electronics")
    arrays, record = build_clipart_split(DEBIAN_OPENCLIPART_DIR, subset=subset)
    committed = read_npz(COMMITTED / "ood_clipart.npz")
    rows = np.isin(committed["labels"], [FASHION_CLIPART_CLASSES.index(name) for name in subset])

    assert np.array_equal(arrays["images"], committed["images"][rows])
    assert np.array_equal(arrays["labels"], committed["labels"][rows])
    assert arrays["source_path"].tolist() == committed["source_path"][rows].tolist()
    assert record["per_category"] == {name: FASHION_CLIPART_COUNTS[name] for name in subset}


@pytest.mark.slow
@needs_openclipart
def test_rebuild_reproduces_committed_split(tmp_path):
    arrays, record = build_clipart_split(DEBIAN_OPENCLIPART_DIR)
    write_npz(tmp_path / "ood_clipart.npz", arrays)
    committed = _manifest()

    assert array_sha256(arrays["images"], arrays["labels"]) == committed["splits"]["ood_clipart"]["sha256"]
    # Byte equality also needs the same zlib and Pillow; the content hash above is the contract.
    assert (tmp_path / "ood_clipart.npz").read_bytes() == (COMMITTED / "ood_clipart.npz").read_bytes()
    assert record == committed["clipart"]
