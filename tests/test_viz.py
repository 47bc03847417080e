"""Figures, report helpers, the ΔEnergy explorer widget and the notebook workbench."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dsenergy import metrics, scores, viz  # noqa: E402


def synthetic_features(seed: int = 0, n: int = 60, classes: int = 5, dim: int = 16):
    """Return class text features and ID / OOD image features: ID images lie near one class, OOD between classes."""
    generator = torch.Generator().manual_seed(seed)
    text = torch.nn.functional.normalize(torch.randn(classes, dim, generator=generator), dim=1)
    labels = torch.randint(0, classes, (n,), generator=generator)
    id_features = torch.nn.functional.normalize(text[labels] + 0.3 * torch.randn(n, dim, generator=generator), dim=1)
    ood_features = torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=1)
    return text, {"id_test": id_features, "ood_far": ood_features}, labels


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# --- report helpers --------------------------------------------------------------------------


def test_rank_agreement_of_monotone_transform_is_one():
    values = np.random.default_rng(0).normal(size=300)
    assert viz.rank_agreement(values, np.exp(3 * values)) == 1.0
    assert viz.rank_agreement(values, -values) == 0.0


def test_rank_agreement_ignores_ties():
    first = np.array([0.1, 0.2, 0.3, 0.4])
    second = np.array([1.0, 1.0, 2.0, 3.0])  # one tied pair, every other pair concordant
    assert viz.rank_agreement(first, second) == 1.0
    with pytest.raises(ValueError, match="equal length"):
        viz.rank_agreement(first, second[:3])


def test_compute_scores_match_score_functions():
    text, features, _ = synthetic_features()
    values, taus = viz.compute_scores(["msp", "mcm", "delta_energy", "max_cosine", "delta_energy_feature_mask"],
                                      features["id_test"], text, 0.01, top_c=2, crop_value=-0.5, mask_fraction=0.25)
    similarities = features["id_test"] @ text.T
    assert taus == {"msp": 0.01, "mcm": 1.0, "delta_energy": 0.01, "max_cosine": None, "delta_energy_feature_mask": 0.01}
    torch.testing.assert_close(values["mcm"], scores.msp(similarities, 1.0))
    torch.testing.assert_close(values["delta_energy"], scores.delta_energy(similarities, 0.01, top_c=2, crop_value=-0.5))
    torch.testing.assert_close(values["delta_energy_feature_mask"],
                               scores.delta_energy_feature_mask(features["id_test"], text, 0.01, mask_fraction=0.25))


def test_detection_table_and_caption():
    text, features, _ = synthetic_features()
    id_values, taus = viz.compute_scores(["msp", "energy"], features["id_test"], text, 0.05)
    ood_values, _ = viz.compute_scores(["msp", "energy"], features["ood_far"], text, 0.05)
    table = viz.detection_table(id_values, {"ood_far": ood_values}, taus, positive="ood")
    assert list(table["score"]) == ["msp", "energy"]
    row = table.set_index("score").loc["energy"]
    assert row["auroc"] == pytest.approx(metrics.auroc(id_values["energy"], ood_values["energy"]))
    assert row["fpr95"] == pytest.approx(metrics.fpr_at_tpr(id_values["energy"], ood_values["energy"], positive="ood"))
    assert row["positive"] == "ood"
    caption = viz.table_caption("ood", {**taus, "max_cosine": None})
    assert "OOD is the positive class" in caption
    assert "msp: τ = 0.05" in caption
    assert "max_cosine: no τ" in caption


def test_paired_bootstrap_of_a_mean():
    values = np.random.default_rng(1).normal(loc=2.0, size=400)
    interval = viz.paired_bootstrap(lambda index: values[index].mean(), [values.size], n_bootstrap=300, seed=0)
    assert interval["value"] == pytest.approx(values.mean())
    assert interval["low"] < interval["value"] < interval["high"]
    # The percentile interval of a mean is close to ± 1.96 standard errors.
    assert interval["high"] - interval["low"] == pytest.approx(2 * 1.96 * values.std() / math.sqrt(values.size), rel=0.25)


@pytest.mark.parametrize(
    ("low", "high", "threshold", "verdict"),
    [(0.01, 0.2, 0.0, "held"), (-0.2, -0.01, 0.0, "contradicted"), (-0.1, 0.1, 0.0, "not supported"),
     (0.05, 0.2, 0.1, "not supported"), (0.11, 0.2, 0.1, "held")],
)
def test_claim_verdict(low, high, threshold, verdict):
    assert viz.claim_verdict(low, high, threshold) == verdict


def test_auroc_ci_of_a_gain_over_itself_is_zero():
    text, features, labels = synthetic_features()
    test = {"id_test": (features["id_test"], labels), "ood_far": features["ood_far"]}
    runs = [viz.per_image_scores(text, test, ["msp", "delta_energy"], 0.05)]
    single = viz.auroc_ci(runs, "delta_energy", "ood_far", n_bootstrap=50)
    assert single["value"] == pytest.approx(metrics.auroc(runs[0]["scores"]["id_test"]["delta_energy"],
                                                          runs[0]["scores"]["ood_far"]["delta_energy"]))
    gain = viz.auroc_ci(runs, "delta_energy", "ood_far", runs, "delta_energy", n_bootstrap=50)
    assert (gain["value"], gain["low"], gain["high"]) == (0.0, 0.0, 0.0)
    accuracy = viz.accuracy_ci(runs, ["id_test"], n_bootstrap=50)
    assert accuracy["value"] == pytest.approx(float(((features["id_test"] @ text.T).argmax(1) == labels).float().mean()))


def test_consistency_gain_uses_standard_errors():
    def table(cosines, errors):
        return pd.DataFrame({"domain": ["id", "a", "b"], "reference": "id",
                             "hessian_cosine": [np.nan, *cosines], "hessian_cosine_se": [np.nan, *errors]})

    gain = viz.consistency_gain(table([0.9, 0.8], [0.01, 0.01]), table([0.5, 0.6], [0.01, 0.01]))
    assert gain["value"] == pytest.approx(0.3)
    assert gain["high"] - gain["value"] == pytest.approx(1.959964 * math.sqrt(4 * 0.01**2) / 2, rel=1e-4)


def test_mean_std_format():
    assert viz.mean_std([0.5, 0.7]) == "0.600 ± 0.141"
    assert viz.mean_std([0.5]) == "0.500 ± 0.000"


# --- figures ---------------------------------------------------------------------------------


def test_static_figures_have_labels():
    text, features, _ = synthetic_features()
    similarities = {name: values @ text.T for name, values in features.items()}
    delta = {name: scores.delta_energy(values, 0.05) for name, values in similarities.items()}

    ax = viz.plot_crop_example(similarities["id_test"][0], 0.05, [f"class {k}" for k in range(5)], top_c=1)
    assert "ΔE =" in ax.get_title()
    ax = viz.plot_score_distributions(delta, "ΔE", "ΔE (higher = more ID)")
    assert ax.get_xlabel() == "ΔE (higher = more ID)"
    assert {text.get_text() for text in ax.get_legend().get_texts()} == {"ID", "far OOD (textures)"}
    ax = viz.plot_roc_curves({"delta_energy": delta["id_test"]}, {"delta_energy": delta["ood_far"]}, "ROC")
    assert "AUROC" in ax.get_legend().get_texts()[0].get_text()
    ax = viz.plot_msp_relation(scores.msp(similarities["id_test"], 0.05), delta["id_test"], 0.05)
    assert ax.get_ylabel().startswith("ΔE")
    figure = viz.plot_training_curves({"CoOp": {"ce": [1.0, 0.5]}}, ["ce"])
    assert figure.axes[0].get_title() == "ce"
    figure = viz.plot_hessian_spectra({"CoOp": {"ID": [3.0, 1.0]}})
    assert figure.axes[0].get_xlabel() == "eigenvalue rank"


# --- explorer widget -------------------------------------------------------------------------


def test_explorer_readout_matches_scores():
    text, features, _ = synthetic_features()
    explorer = viz.DeltaEnergyExplorer(features, text, temperature=0.05, id_name="id_test")
    similarities = {name: values @ text.T for name, values in features.items()}
    expected = metrics.auroc(scores.delta_energy(similarities["id_test"], 0.05),
                             scores.delta_energy(similarities["ood_far"], 0.05))
    assert explorer.aurocs["ood_far"]["delta_energy"] == pytest.approx(expected)
    assert "far OOD" in explorer.readout.value
    assert len(explorer.figure.data) == 4  # two distributions × two panels


def test_explorer_sliders_redraw_figure():
    text, features, _ = synthetic_features()
    explorer = viz.DeltaEnergyExplorer(features, text, temperature=0.05, id_name="id_test")
    before = np.array(explorer.figure.data[0].x)
    readout = explorer.readout.value

    explorer.top_c_slider.value = 3  # what a user's slider move does
    similarities = features["id_test"] @ text.T
    np.testing.assert_allclose(explorer.figure.data[0].x, scores.delta_energy(similarities, 0.05, top_c=3).numpy(), rtol=1e-6)
    assert not np.allclose(explorer.figure.data[0].x, before)
    assert explorer.readout.value != readout

    explorer.mask_fraction_slider.value = 0.5
    np.testing.assert_allclose(explorer.figure.data[2].x, scores.delta_energy_feature_mask(
        features["id_test"], text, 0.05, mask_fraction=0.5).numpy(), rtol=1e-5)


def test_explorer_sweep_restores_sliders():
    text, features, _ = synthetic_features()
    explorer = viz.DeltaEnergyExplorer(features, text, temperature=0.05, id_name="id_test", crop_value=0.1)
    table = explorer.sweep(temperature=[0.01, 0.1], top_c=[1, 2])
    assert len(table) == 4
    assert set(table.columns) >= {"temperature", "top_c", "split", "delta_energy", "msp"}
    assert explorer.temperature_slider.value == pytest.approx(0.05)
    assert explorer.crop_value_slider.value == pytest.approx(0.1)
    with pytest.raises(KeyError, match="unknown explorer setting"):
        explorer.update(tau=0.1)


def test_explorer_widget_tree():
    import ipywidgets

    text, features, _ = synthetic_features()
    explorer = viz.DeltaEnergyExplorer(features, text, temperature=0.05, id_name="id_test")
    assert isinstance(explorer.widget, ipywidgets.VBox)
    state = explorer.widget.get_state()  # what a frontend receives when the widget is displayed
    assert state["children"]
    assert [slider.description for slider in explorer.sliders.values()] == [
        "τ (temperature)", "c (cropped top similarities)", "a (crop value)", "ρ (masked feature fraction)"]


# --- workbench on the bundled demo model -----------------------------------------------------


def test_workbench_on_fashion_open_with_demo_model():
    bench = viz.Workbench("dsenergy-demo", device="cpu", batch_size=64)
    assert bench.class_names == ["t-shirt/top", "trouser", "dress", "sandal", "sneaker", "bag"]
    assert bench.temperature == pytest.approx(1 / bench.bundle.logit_scale)

    features, labels = bench.features("id_test", 60, seed=0)
    assert features.shape == (60, bench.classifier.text_features.shape[1])
    torch.testing.assert_close(features.norm(dim=1), torch.ones(60))
    again, _ = bench.features("id_test", 60, seed=0)
    torch.testing.assert_close(features, again)  # same draw for the same seed
    # The demo model card reports 0.915 zero-shot accuracy on id_test; 60 images leave a wide margin.
    assert metrics.accuracy(bench.similarities(features), labels) > 0.7

    test = bench.test_splits(["id_test", "ood_near"], 20)
    assert isinstance(test["ood_near"], torch.Tensor)
    assert isinstance(test["id_test"], tuple)
    kshot_features, kshot_labels = bench.kshot_features(2, seed=1)
    assert torch.bincount(kshot_labels).tolist() == [2] * 6


def test_explorer_close_releases_widgets():
    text, features, _ = synthetic_features()
    explorer = viz.DeltaEnergyExplorer(features, text, temperature=0.05, id_name="id_test")
    explorer.close()
    assert explorer.widget.comm is None
    assert explorer.temperature_slider.comm is None


def test_workbench_reads_user_folders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, count in (("id_train/sandal", 3), ("id_train/bag", 3), ("id_test/sandal", 2), ("id_test/bag", 2),
                          ("ood/textures/stone", 4), ("covariate/noisy/sandal", 2), ("covariate/noisy/bag", 2)):
        (tmp_path / folder).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(tmp_path / folder / f"{index}.png")

    bench = viz.Workbench("dsenergy-demo", benchmark="folders", data_root=str(tmp_path), device="cpu")
    assert bench.class_names == ["bag", "sandal"]
    test = bench.test_splits(["id_test", "ood/textures", "covariate/noisy"], None)
    assert test["ood/textures"].shape[0] == 4
    features, labels = test["covariate/noisy"]
    assert sorted(labels.tolist()) == [0, 0, 1, 1]
    assert bench.similarities(features).shape == (4, 2)
    with pytest.raises(FileNotFoundError, match="ood/missing"):
        bench.dataset("ood/missing")


def test_explorer_without_widgets_computes_the_same():
    text, features, _ = synthetic_features()
    headless = viz.DeltaEnergyExplorer(features, text, temperature=0.05, id_name="id_test", widgets=False)
    live = viz.DeltaEnergyExplorer(features, text, temperature=0.05, id_name="id_test")
    assert headless.widget is None
    assert headless.update(top_c=2) == live.update(top_c=2)
    assert live.top_c_slider.value == 2
    assert len(headless.sweep(temperature=[0.01, 0.1])) == 2
    assert headless.settings["temperature"] == pytest.approx(0.05)
    with pytest.raises(RuntimeError, match="widgets=False"):
        headless._ipython_display_()


def test_headline_row_flattens_aurocs():
    table = pd.DataFrame({
        "split": ["id_test", "covariate/noise/1", "ood_near", "ood_far"],
        "split_role": ["id", "covariate", "ood", "ood"],
        "score": [None, None, "delta_energy", "delta_energy"],
        "metric": ["accuracy", "accuracy", "auroc", "auroc"],
        "value": [0.9, 0.6, 0.8, 0.7],
    })
    row = viz.headline_row(viz.headline_metrics(table))
    assert row == {"id_accuracy": 0.9, "covariate_accuracy": 0.6, "auroc_ood_near": 0.8, "auroc_ood_far": 0.7}
