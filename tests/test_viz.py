"""Figures, display names and the ΔEnergy explorer widget."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dsenergy import metrics, scores, viz  # noqa: E402
from tests.helpers import clustered_features  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_table_caption_names_convention_and_temperatures():
    caption = viz.table_caption("ood", {"msp": 0.05, "energy": 0.05, "max_cosine": None})
    assert "OOD is the positive class" in caption
    assert "msp: τ = 0.05" in caption
    assert "max_cosine: no τ" in caption


def test_mean_std_format():
    assert viz.mean_std([0.5, 0.7]) == "0.600 ± 0.141"
    assert viz.mean_std([0.5]) == "0.500 ± 0.000"


# --- figures ---------------------------------------------------------------------------------


def test_static_figures_have_labels():
    text, features, _ = clustered_features()
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
    text, features, _ = clustered_features()
    explorer = viz.DeltaEnergyExplorer(features, text, temperature=0.05, id_name="id_test")
    similarities = {name: values @ text.T for name, values in features.items()}
    expected = metrics.auroc(scores.delta_energy(similarities["id_test"], 0.05),
                             scores.delta_energy(similarities["ood_far"], 0.05))
    assert explorer.aurocs["ood_far"]["delta_energy"] == pytest.approx(expected)
    assert "far OOD" in explorer.readout.value
    assert len(explorer.figure.data) == 4  # two distributions × two panels


def test_explorer_sliders_redraw_figure():
    text, features, _ = clustered_features()
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
    text, features, _ = clustered_features()
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

    text, features, _ = clustered_features()
    explorer = viz.DeltaEnergyExplorer(features, text, temperature=0.05, id_name="id_test")
    assert isinstance(explorer.widget, ipywidgets.VBox)
    state = explorer.widget.get_state()  # what a frontend receives when the widget is displayed
    assert state["children"]
    assert [slider.description for slider in explorer.sliders.values()] == [
        "τ (temperature)", "c (cropped top similarities)", "a (crop value)", "ρ (masked feature fraction)"]


def test_explorer_close_releases_widgets():
    text, features, _ = clustered_features()
    explorer = viz.DeltaEnergyExplorer(features, text, temperature=0.05, id_name="id_test")
    explorer.close()
    assert explorer.widget.comm is None
    assert explorer.temperature_slider.comm is None


def test_explorer_without_widgets_computes_the_same():
    text, features, _ = clustered_features()
    headless = viz.DeltaEnergyExplorer(features, text, temperature=0.05, id_name="id_test", widgets=False)
    live = viz.DeltaEnergyExplorer(features, text, temperature=0.05, id_name="id_test")
    assert headless.widget is None
    assert headless.update(top_c=2) == live.update(top_c=2)
    assert live.top_c_slider.value == 2
    assert len(headless.sweep(temperature=[0.01, 0.1])) == 2
    assert headless.settings["temperature"] == pytest.approx(0.05)
    with pytest.raises(RuntimeError, match="widgets=False"):
        headless._ipython_display_()


