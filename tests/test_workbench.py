"""The notebooks' workbench on the bundled demo model and on user folders."""

from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dsenergy import metrics
from dsenergy.workbench import Workbench


def test_workbench_on_fashion_open_with_demo_model():
    bench = Workbench("dsenergy-demo", device="cpu", batch_size=64)
    assert bench.class_names == ["t-shirt/top", "trouser", "dress", "sandal", "sneaker", "bag"]
    assert bench.temperature == pytest.approx(1 / bench.bundle.logit_scale)

    features, labels = bench.features("id_test", 60, seed=0)
    assert features.shape == (60, bench.classifier.text_features.shape[1])
    torch.testing.assert_close(features.norm(dim=1), torch.ones(60))
    again, _ = bench.features("id_test", 60, seed=0)
    torch.testing.assert_close(features, again)  # same draw for the same seed
    # The demo model card reports 0.968 zero-shot accuracy on id_test; 60 images leave a wide margin.
    assert metrics.accuracy(bench.similarities(features), labels) > 0.7

    test = bench.test_splits(["id_test", "ood_near"], 20)
    assert isinstance(test["ood_near"], torch.Tensor)
    assert isinstance(test["id_test"], tuple)
    kshot_features, kshot_labels = bench.kshot_features(2, seed=1)
    assert torch.bincount(kshot_labels).tolist() == [2] * 6

def test_workbench_reads_user_folders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, count in (("id_train/sandal", 3), ("id_train/bag", 3), ("id_test/sandal", 2), ("id_test/bag", 2),
                          ("ood/textures/stone", 4), ("covariate/noisy/sandal", 2), ("covariate/noisy/bag", 2)):
        (tmp_path / folder).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(tmp_path / folder / f"{index}.png")

    bench = Workbench("dsenergy-demo", benchmark="folders", data_root=str(tmp_path), device="cpu")
    assert bench.class_names == ["bag", "sandal"]
    test = bench.test_splits(["id_test", "ood/textures", "covariate/noisy"], None)
    assert test["ood/textures"].shape[0] == 4
    features, labels = test["covariate/noisy"]
    assert sorted(labels.tolist()) == [0, 0, 1, 1]
    assert bench.similarities(features).shape == (4, 2)
    with pytest.raises(FileNotFoundError, match="ood/missing"):
        bench.dataset("ood/missing")


def write_images(root, counts):
    """Write ``count`` random 28×28 PNG images into each folder of ``counts`` (relative to ``root``)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, count in counts.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(root / folder / f"{index}.png")


def test_covariate_split_with_class_subset(tmp_path, caplog):
    write_images(tmp_path, {"id_train/sandal": 2, "id_train/bag": 2, "id_train/dress": 2, "id_test/sandal": 1,
                            "id_test/bag": 1, "id_test/dress": 1, "covariate/sketch/sandal": 3})
    bench = Workbench("dsenergy-demo", benchmark="folders", data_root=str(tmp_path), device="cpu")
    with caplog.at_level("WARNING", logger="dsenergy.data.folders"):
        features, labels = bench.features("covariate/sketch")

    assert bench.class_names == ["bag", "dress", "sandal"]
    assert labels.tolist() == [2, 2, 2]
    assert bench.similarities(features).shape == (3, 3)
    assert "has folders for 1 of 3 classes; missing ['bag', 'dress'] (2)" in caplog.text


def test_wnid_folders_get_imagenet_names(tmp_path):
    write_images(tmp_path, {"id_train/n01443537": 1, "id_train/n01440764": 1, "id_test/n01443537": 1,
                            "id_test/n01440764": 1, "covariate/sketch/n01440764": 1})
    bench = Workbench("dsenergy-demo", benchmark="folders", data_root=str(tmp_path), device="cpu")

    assert bench.folder_names == ["n01440764", "n01443537"]
    assert bench.class_names == ["tench", "goldfish"]
    assert bench.classifier.class_names == ["tench", "goldfish"]
    assert bench.features("covariate/sketch")[1].tolist() == [0]


def test_unknown_wnids_keep_folder_names(tmp_path):
    write_images(tmp_path, {"id_train/n00000001": 1, "id_train/n01440764": 1, "id_test/n00000001": 1,
                            "id_test/n01440764": 1})
    bench = Workbench("dsenergy-demo", benchmark="folders", data_root=str(tmp_path), device="cpu")
    assert bench.class_names == ["n00000001", "n01440764"]


def test_id_test_needs_every_class(tmp_path):
    write_images(tmp_path, {"id_train/sandal": 2, "id_train/bag": 2, "id_test/sandal": 1})
    bench = Workbench("dsenergy-demo", benchmark="folders", data_root=str(tmp_path), device="cpu")

    with pytest.raises(ValueError, match=r"id_test do not match the expected classes: missing \['bag'\]"):
        bench.dataset("id_test")


def read_terminal_output(script, timeout=120.0):
    """Run ``script`` in a Python subprocess whose stdout and stderr are a pseudo-terminal; return what it wrote."""
    import fcntl
    import termios

    leader, follower = os.openpty()
    # A new pseudo-terminal is 0 columns wide, and tqdm draws nothing on a terminal that narrow.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL, stdout=follower,
                               stderr=follower)
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the subprocess has exited and closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
    assert process.wait(timeout=10) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")
def test_folder_datasets_show_no_progress_bar(tmp_path):
    write_images(tmp_path, {"id_train/sandal": 2, "id_train/bag": 2, "id_test/sandal": 1, "id_test/bag": 1,
                            "ood/textures": 2, "covariate/sketch/bag": 1})
    script = (
        "from dsenergy.data.folders import image_folder_dataset\n"
        "from dsenergy.workbench import Workbench\n"
        f"image_folder_dataset({str(tmp_path / 'id_train')!r}, name='control')\n"
        f"bench = Workbench('dsenergy-demo', benchmark='folders', data_root={str(tmp_path)!r}, device='cpu')\n"
        "for split in ('id_test', 'ood/textures', 'covariate/sketch'):\n"
        "    bench.dataset(split)\n"
        "print('datasets built')\n"
    )
    output = read_terminal_output(script)

    assert "datasets built" in output
    assert "verify control" in output  # tqdm draws the bar on a terminal unless progress=False
    assert "verify folders:" not in output

