"""The notebooks' workbench on the bundled demo model and on user folders."""

from __future__ import annotations

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
