r"""Figures, display names and the interactive ΔEnergy explorer of the notebooks.

Static figures are matplotlib (seaborn for densities), so they render in HTML exports and headless
runs. :class:`DeltaEnergyExplorer` is the live version for JupyterLab: ipywidgets sliders for
τ, c, a and ρ drive a plotly ``FigureWidget`` and an AUROC readout. The tables and intervals the
notebooks report come from :mod:`dsenergy.evaluate`, :mod:`dsenergy.metrics` and
:mod:`dsenergy.hessian`; the model and data they share from :class:`dsenergy.workbench.Workbench`.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from dsenergy import metrics, scores

__all__ = [
    "DeltaEnergyExplorer",
    "SPLIT_LABELS",
    "as_numpy",
    "mean_std",
    "plot_crop_example",
    "plot_hessian_spectra",
    "plot_msp_relation",
    "plot_roc_curves",
    "plot_score_distributions",
    "plot_sweep",
    "plot_training_curves",
    "split_label",
    "table_caption",
]

logger = logging.getLogger(__name__)


def as_numpy(values: Any) -> np.ndarray:
    """Return ``values`` (tensor, list or array) as a float64 numpy array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64)


def _axes(ax: Any = None, figsize: tuple[float, float] = (6.0, 4.0)) -> Any:
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax
    _, ax = plt.subplots(figsize=figsize)
    return ax


def table_caption(positive: str, temperatures: Mapping[str, float], tpr: float = 0.95) -> str:
    """Return the caption every detection table carries: metric convention and each score's τ."""
    if positive == "id":
        convention = (f"ID is the positive class; FPR{round(tpr * 100)} = fraction of OOD images accepted "
                      f"when {tpr:.0%} of ID images are kept")
    else:
        convention = (f"OOD is the positive class; FPR{round(tpr * 100)} = fraction of ID images rejected "
                      f"when {tpr:.0%} of OOD images are caught")
    taus = ", ".join(f"{name}: τ = {value:.4g}" if value is not None else f"{name}: no τ"
                     for name, value in temperatures.items())
    return f"{convention}. Temperatures: {taus}. AUROC is the same under both conventions."


def plot_crop_example(
    similarities: torch.Tensor,
    temperature: float,
    class_names: Sequence[str],
    top_c: int = 1,
    crop_value: float = 0.0,
    title: str = "",
    ax: Any = None,
) -> Any:
    r"""Plot one image's softmax over classes before and after cropping its top-c similarities.

    The title states :math:`E_\tau(s)`, :math:`E_\tau(\tilde s)` and ΔE for that image.
    """
    row = similarities.reshape(1, -1).float()
    cropped = row.clone()
    cropped[0, row[0].topk(top_c).indices] = crop_value
    before = torch.softmax(row / temperature, dim=1)[0].numpy()
    after = torch.softmax(cropped / temperature, dim=1)[0].numpy()
    energy_before = float(scores.free_energy(row, temperature))
    energy_after = float(scores.free_energy(cropped, temperature))
    delta = float(scores.delta_energy(row, temperature, top_c=top_c, crop_value=crop_value))

    ax = _axes(ax, (7.0, 3.5))
    positions = np.arange(len(class_names))
    ax.bar(positions - 0.2, before, width=0.4, label="original s")
    ax.bar(positions + 0.2, after, width=0.4, label=f"top-{top_c} cropped to a = {crop_value:g}")
    ax.set_xticks(positions, class_names, rotation=30, ha="right")
    ax.set_ylabel("softmax probability")
    # The y range leaves room above the tallest possible bar (1.0) for the legend, so it does not cover the bars.
    ax.set_ylim(0, 1.3)
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.legend(loc="upper center", ncol=2, fontsize="small")
    ax.set_title(f"{title}\nE = {energy_before:.4f}, cropped E = {energy_after:.4f}, ΔE = {delta:.4f} (τ = {temperature:.3g})")
    return ax


def plot_score_distributions(
    values: Mapping[str, Any],
    title: str,
    xlabel: str,
    ax: Any = None,
    kind: str = "kde",
    log_x: bool = False,
) -> Any:
    """Plot one density (``kind="kde"``) or histogram (``"hist"``) per named set of score values."""
    import pandas as pd
    import seaborn as sns

    frame = pd.concat(
        [pd.DataFrame({"value": as_numpy(array), "distribution": split_label(name)}) for name, array in values.items()],
        ignore_index=True,
    )
    if log_x:
        frame = frame[frame["value"] > 0]
    ax = _axes(ax)
    if kind == "kde":
        sns.kdeplot(data=frame, x="value", hue="distribution", common_norm=False, fill=True, alpha=0.25,
                    log_scale=log_x, ax=ax, warn_singular=False)
    elif kind == "hist":
        sns.histplot(data=frame, x="value", hue="distribution", stat="density", common_norm=False,
                     element="step", log_scale=log_x, ax=ax)
    else:
        raise ValueError(f"kind must be 'kde' or 'hist', got {kind!r}")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    return ax


def plot_msp_relation(msp_values: Any, delta_values: Any, temperature: float, ax: Any = None) -> Any:
    r"""Scatter ΔE (c = 1, a = 0) against MSP with the small-τ limit :math:`-\tau\log(1 - p_{max})`."""
    msp_array = as_numpy(msp_values)
    delta_array = as_numpy(delta_values)
    ax = _axes(ax)
    ax.scatter(msp_array, delta_array, s=6, alpha=0.5, label="images")
    grid = np.linspace(msp_array.min(), min(msp_array.max(), 1 - 1e-12), 200)
    ax.plot(grid, -temperature * np.log1p(-grid), color="black", lw=1, label=r"$-\tau\,\log(1-p_{max})$")
    ax.set_xlabel("maximum softmax probability (MSP)")
    ax.set_ylabel("ΔE, c = 1, a = 0")
    ax.set_title(f"ΔE against MSP at τ = {temperature:.3g}")
    ax.legend(fontsize="small")
    return ax


def plot_roc_curves(
    id_scores: Mapping[str, Any], ood_scores: Mapping[str, Any], title: str, ax: Any = None
) -> Any:
    """Plot one ROC curve per score (ID positive), with its AUROC in the legend."""
    from sklearn.metrics import roc_curve

    ax = _axes(ax, (5.0, 5.0))
    for name in id_scores:
        id_array, ood_array = as_numpy(id_scores[name]), as_numpy(ood_scores[name])
        labels = np.r_[np.ones(id_array.size), np.zeros(ood_array.size)]
        fpr, tpr, _ = roc_curve(labels, np.r_[id_array, ood_array])
        area = metrics.auroc(id_array, ood_array)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {area:.3f})")
    ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
    ax.set_xlabel("false-positive rate (OOD accepted)")
    ax.set_ylabel("true-positive rate (ID kept)")
    ax.set_title(title)
    ax.legend(fontsize="x-small", loc="lower right")
    return ax


def plot_sweep(
    frame: Any, x: str, y: str, hue: str | None = None, title: str = "", ax: Any = None, log_x: bool = False,
    ylabel: str | None = None,
) -> Any:
    """Plot ``y`` against ``x`` from a long-format DataFrame, one line per ``hue`` value."""
    ax = _axes(ax)
    groups = [(None, frame)] if hue is None else list(frame.groupby(hue, sort=True))
    for key, group in groups:
        group = group.sort_values(x)
        ax.plot(group[x], group[y], marker="o", label=None if key is None else f"{hue} = {key}")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    ax.set_title(title)
    if hue is not None:
        ax.legend(fontsize="small")
    return ax


def plot_training_curves(
    histories: Mapping[str, Mapping[str, Sequence[float]]], keys: Sequence[str], xlabel: str = "epoch"
) -> Any:
    """Plot each history key (one panel per key) for every named run; returns the figure."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, history in histories.items():
            if key in history and len(history[key]):
                values = as_numpy(history[key])
                ax.plot(np.arange(1, values.size + 1), values, marker=".", label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot_hessian_spectra(eigenvalues: Mapping[str, Mapping[str, Sequence[float]]]) -> Any:
    """Plot the top Hessian eigenvalues per domain, one panel per model; returns the figure."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(eigenvalues), figsize=(4.5 * len(eigenvalues), 3.5), squeeze=False,
                                sharey=True)
    for ax, (model_name, per_domain) in zip(axes[0], eigenvalues.items()):
        for domain, values in per_domain.items():
            values = np.sort(as_numpy(values))[::-1]
            ax.plot(np.arange(1, values.size + 1), values, marker="o", label=domain)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("eigenvalue rank")
        ax.set_ylabel("Hessian eigenvalue of the mean CE")
        ax.set_title(model_name)
        ax.legend(fontsize="x-small")
    figure.tight_layout()
    return figure


class DeltaEnergyExplorer:
    r"""Sliders for τ, c, a and ρ that redraw ΔE distributions and report AUROC against the ID split.

    The top panel shows the crop ΔE (top-c similarities set to a), the bottom panel the feature-mask
    ΔE (fraction ρ of image-feature dimensions zeroed). The readout lists, per OOD split, the AUROC
    (ID positive) of both ΔE variants and of MSP at the same τ. Display it in a notebook with
    ``display(explorer)``; :meth:`update` recomputes for given values (the sliders call it).

    Args:
        image_features: split name -> N×D normalised image features; must contain ``id_name``.
        text_features: K×D class text features.
        temperature: initial τ.
        id_name: key of the in-distribution split.
        widgets: build the sliders and the plotly ``FigureWidget``. Pass False in runs without a
            widget frontend: the computation and :meth:`sweep` still work, and the executed notebook
            does not store the widget state (the plotly widget alone carries several MB of JavaScript).
    """

    def __init__(
        self,
        image_features: Mapping[str, torch.Tensor],
        text_features: torch.Tensor,
        temperature: float,
        id_name: str = "ID",
        top_c: int = 1,
        crop_value: float = 0.0,
        mask_fraction: float = 0.1,
        widgets: bool = True,
    ) -> None:
        if id_name not in image_features:
            raise KeyError(f"image_features has no split {id_name!r}; it has {sorted(image_features)}")
        self.id_name = id_name
        self.image_features = {name: value.float().cpu() for name, value in image_features.items()}
        self.text_features = torch.nn.functional.normalize(text_features.float().cpu(), dim=1)
        self.similarities = {name: value @ self.text_features.T for name, value in self.image_features.items()}
        self.settings: dict[str, float] = {"temperature": float(temperature), "top_c": int(top_c),
                                           "crop_value": float(crop_value), "mask_fraction": float(mask_fraction)}
        self.aurocs: dict[str, dict[str, float]] = {}
        self.widget: Any = None
        if widgets:
            self._build_widgets()
        self.update()

    def _build_widgets(self) -> None:
        import ipywidgets as widgets
        import plotly.graph_objects as go
        import plotly.colors
        from plotly.subplots import make_subplots

        style = {"description_width": "initial"}
        layout = widgets.Layout(width="420px")
        self.temperature_slider = widgets.FloatLogSlider(
            value=self.settings["temperature"], base=10, min=-3, max=0, step=0.05, description="τ (temperature)",
            readout_format=".3g", style=style, layout=layout, continuous_update=False)
        self.top_c_slider = widgets.IntSlider(
            value=self.settings["top_c"], min=1, max=self.text_features.shape[0], description="c (cropped top similarities)",
            style=style, layout=layout, continuous_update=False)
        self.crop_value_slider = widgets.FloatSlider(
            value=self.settings["crop_value"], min=-1.0, max=1.0, step=0.05, description="a (crop value)",
            style=style, layout=layout, continuous_update=False)
        self.mask_fraction_slider = widgets.FloatSlider(
            value=self.settings["mask_fraction"], min=0.01, max=0.9, step=0.01, description="ρ (masked feature fraction)",
            style=style, layout=layout, continuous_update=False)
        self.readout = widgets.HTML()

        figure = make_subplots(rows=2, cols=1, subplot_titles=("ΔE, top-c crop", "ΔE, feature mask"),
                               vertical_spacing=0.15)
        palette = plotly.colors.qualitative.Plotly
        colors = {name: palette[index % len(palette)] for index, name in enumerate(self.similarities)}
        for row in (1, 2):
            for name in self.similarities:
                figure.add_trace(go.Histogram(name=split_label(name), legendgroup=name, showlegend=row == 1, opacity=0.55,
                                              marker_color=colors[name], histnorm="probability density", nbinsx=60),
                                 row=row, col=1)
        figure.update_layout(barmode="overlay", height=560, margin={"t": 40, "b": 40},
                             legend={"title": "distribution"})
        figure.update_xaxes(title_text="ΔE", row=1, col=1)
        figure.update_xaxes(title_text="ΔE", row=2, col=1)
        figure.update_yaxes(title_text="density")
        self.figure = go.FigureWidget(figure)

        self.sliders = {"temperature": self.temperature_slider, "top_c": self.top_c_slider,
                        "crop_value": self.crop_value_slider, "mask_fraction": self.mask_fraction_slider}
        for slider in self.sliders.values():
            slider.observe(self._on_change, names="value")
        self.widget = widgets.VBox([widgets.HBox([widgets.VBox(list(self.sliders.values())), self.readout]),
                                    self.figure])

    def _on_change(self, _change: Any) -> None:
        self.update(**{name: slider.value for name, slider in self.sliders.items()})

    def compute(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, dict[str, float]]]:
        """Return crop ΔE and mask ΔE per split and the AUROC table for the current settings."""
        tau = self.settings["temperature"]
        top_c = int(self.settings["top_c"])
        crop = self.settings["crop_value"]
        rho = self.settings["mask_fraction"]

        crop_delta = {name: scores.delta_energy(sims, tau, top_c=top_c, crop_value=crop)
                      for name, sims in self.similarities.items()}
        mask_delta = {name: scores.delta_energy_feature_mask(feats, self.text_features, tau, mask_fraction=rho)
                      for name, feats in self.image_features.items()}
        msp_values = {name: scores.msp(sims, tau) for name, sims in self.similarities.items()}

        table: dict[str, dict[str, float]] = {}
        for name in self.similarities:
            if name == self.id_name:
                continue
            table[name] = {
                "delta_energy": metrics.auroc(crop_delta[self.id_name], crop_delta[name]),
                "delta_energy_feature_mask": metrics.auroc(mask_delta[self.id_name], mask_delta[name]),
                "msp": metrics.auroc(msp_values[self.id_name], msp_values[name]),
            }
        return crop_delta, mask_delta, table

    def update(self, **values: float) -> dict[str, dict[str, float]]:
        """Set any of ``temperature``, ``top_c``, ``crop_value``, ``mask_fraction``, recompute, return the AUROCs."""
        unknown = sorted(set(values) - set(self.settings))
        if unknown:
            raise KeyError(f"unknown explorer setting {unknown[0]!r}; use {sorted(self.settings)}")
        self.settings.update({name: float(value) for name, value in values.items()})
        self.settings["top_c"] = int(self.settings["top_c"])

        crop_delta, mask_delta, table = self.compute()
        self.aurocs = table
        if self.widget is not None:
            self._redraw(values, crop_delta, mask_delta)
        return table

    def _redraw(self, values: Mapping[str, float], crop_delta: Mapping[str, torch.Tensor],
                mask_delta: Mapping[str, torch.Tensor]) -> None:
        for slider in self.sliders.values():
            slider.unobserve(self._on_change, names="value")
        try:
            for name, value in values.items():
                self.sliders[name].value = value
        finally:
            for slider in self.sliders.values():
                slider.observe(self._on_change, names="value")

        names = list(self.similarities)
        with self.figure.batch_update():
            for index, name in enumerate(names):
                self.figure.data[index].x = as_numpy(crop_delta[name])
                self.figure.data[len(names) + index].x = as_numpy(mask_delta[name])
        self.readout.value = self._readout_html(self.aurocs)

    def sweep(self, **grids: Sequence[float]) -> Any:
        """Return the AUROC table for every combination of the given setting values, in long format.

        Example: ``explorer.sweep(temperature=[0.01, 0.1, 1.0], top_c=[1, 2])``. The settings (and
        sliders) are restored afterwards.
        """
        import itertools

        import pandas as pd

        saved = dict(self.settings)
        rows = []
        try:
            names = list(grids)
            for combination in itertools.product(*(grids[name] for name in names)):
                setting = dict(zip(names, combination))
                for split, values in self.update(**setting).items():
                    rows.append({**setting, "split": split, **values})
        finally:
            self.update(**saved)
        return pd.DataFrame(rows)

    def _readout_html(self, table: Mapping[str, Mapping[str, float]]) -> str:
        rows = "".join(
            f"<tr><td>{split_label(name)}</td><td>{values['delta_energy']:.3f}</td>"
            f"<td>{values['delta_energy_feature_mask']:.3f}</td><td>{values['msp']:.3f}</td></tr>"
            for name, values in table.items()
        )
        tau = self.settings["temperature"]
        return (f"<b>AUROC against {split_label(self.id_name)}</b> (ID positive, τ = {tau:.3g})"
                "<table><tr><th>OOD split</th><th>ΔE crop</th><th>ΔE mask</th><th>MSP</th></tr>"
                f"{rows}</table>")

    def close(self) -> None:
        """Close every widget of the explorer (the frontend removes them)."""
        if self.widget is None:
            return
        for child in (*self.sliders.values(), self.readout, self.figure, *self.widget.children, self.widget):
            child.close()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        if self.widget is None:
            raise RuntimeError("this explorer was built with widgets=False; build it with widgets=True to display it")
        display(self.widget)


# --------------------------------------------------------------------------------------------
# Display names and formatting

#: Display names of the fashion-open splits.
SPLIT_LABELS: dict[str, str] = {"id_train": "ID train", "id_test": "ID", "ood_near": "near OOD",
                               "ood_far": "far OOD (textures)", "ood_clipart": "far OOD (clip art)"}


def split_label(split: str) -> str:
    """Return the display name of a split: 'ID', 'near OOD', 'far OOD (textures)', 'covariate noise/2', or the split itself."""
    if split in SPLIT_LABELS:
        return SPLIT_LABELS[split]
    if split.startswith("covariate/"):
        return "covariate " + split.split("/", 1)[1]
    return split


def mean_std(values: Any) -> str:
    """Format values over seeds as ``mean ± std`` (sample standard deviation; ``± 0`` for one seed)."""
    array = as_numpy(values)
    spread = array.std(ddof=1) if array.size > 1 else 0.0
    return f"{array.mean():.3f} ± {spread:.3f}"


