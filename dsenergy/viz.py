r"""Figures, report tables, the interactive ΔEnergy explorer and the model/data workbench of the notebooks.

Static figures are matplotlib (seaborn for densities), so they render in HTML exports and headless
runs. :class:`DeltaEnergyExplorer` is the live version for JupyterLab: ipywidgets sliders for
τ, c, a and ρ drive a plotly ``FigureWidget`` and an AUROC readout. :class:`Workbench` loads the
model, its zero-shot classifier and the benchmark splits the way every notebook needs them.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from dsenergy import metrics, scores

__all__ = [
    "DeltaEnergyExplorer",
    "SPLIT_LABELS",
    "Workbench",
    "accuracy_ci",
    "as_numpy",
    "auroc_ci",
    "claim_verdict",
    "compute_scores",
    "consistency_gain",
    "detection_table",
    "headline_metrics",
    "headline_row",
    "mean_std",
    "paired_bootstrap",
    "per_image_scores",
    "plot_crop_example",
    "plot_hessian_spectra",
    "plot_msp_relation",
    "plot_roc_curves",
    "plot_score_distributions",
    "plot_sweep",
    "plot_training_curves",
    "rank_agreement",
    "resolve_device",
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
# Report tables


def rank_agreement(first: Any, second: Any, chunk: int = 512) -> float:
    """Return the fraction of sample pairs that two scores order the same way, among pairs both order strictly.

    1.0 means every pair that both scores separate is ordered identically (the scores are monotone
    functions of each other up to ties); pairs tied under either score are left out.
    """
    a, b = as_numpy(first), as_numpy(second)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"scores must be one-dimensional and of equal length, got shapes {a.shape} and {b.shape}")
    concordant = discordant = 0
    for start in range(0, a.size, chunk):
        sign_a = np.sign(a[start:start + chunk, None] - a[None, :])
        sign_b = np.sign(b[start:start + chunk, None] - b[None, :])
        product = sign_a * sign_b
        concordant += int((product > 0).sum())
        discordant += int((product < 0).sum())
    if concordant + discordant == 0:
        raise ValueError("no pair of samples is ordered strictly by both scores")
    return concordant / (concordant + discordant)


def compute_scores(
    names: Sequence[str],
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    model_temperature: float,
    temperature: float | None = None,
    top_c: int = 1,
    crop_value: float = 0.0,
    mask_fraction: float = 0.1,
) -> tuple[dict[str, torch.Tensor], dict[str, float | None]]:
    """Compute each named score on normalised image features; returns (scores, τ used per score, None for max cosine).

    Names come from :data:`dsenergy.scores.SCORES`, plus ``delta_energy_feature_mask``. Each score
    uses ``temperature`` when given, else its own default τ, else the model's τ.
    """
    text = torch.nn.functional.normalize(text_features.float(), dim=1)
    similarities = torch.nn.functional.normalize(image_features.float(), dim=1) @ text.T
    values: dict[str, torch.Tensor] = {}
    taus: dict[str, float | None] = {}
    for name in names:
        if name == "delta_energy_feature_mask":
            tau = float(temperature) if temperature is not None else float(model_temperature)
            values[name] = scores.delta_energy_feature_mask(image_features, text, tau, mask_fraction=mask_fraction)
        elif name == "delta_energy":
            tau = scores.score_temperature(name, model_temperature, temperature)
            values[name] = scores.delta_energy(similarities, tau, top_c=top_c, crop_value=crop_value)
        else:
            tau = scores.score_temperature(name, model_temperature, temperature)
            values[name] = scores.SCORES[name](similarities, tau)
        taus[name] = None if name in scores.TEMPERATURE_FREE_SCORES else tau
    return values, taus


def detection_table(
    id_scores: Mapping[str, Any],
    ood_scores: Mapping[str, Mapping[str, Any]],
    temperatures: Mapping[str, float],
    positive: str = "id",
) -> Any:
    """Return a DataFrame with one row per (OOD split, score): AUROC, FPR95, AUPR-In, AUPR-Out, τ, convention.

    ``ood_scores`` maps split name -> score name -> values; ``id_scores`` maps score name -> values.
    """
    import pandas as pd

    rows = []
    for split, per_score in ood_scores.items():
        for name, values in per_score.items():
            result = metrics.evaluate_ood(id_scores[name], values, positive=positive)
            rows.append({
                "ood_split": split, "score": name, "temperature": temperatures[name],
                "auroc": result["auroc"], "fpr95": result["fpr95"],
                "aupr_in": result["aupr_in"], "aupr_out": result["aupr_out"],
                "positive": positive, "n_id": result["n_id"], "n_ood": result["n_ood"],
            })
    return pd.DataFrame(rows)


def paired_bootstrap(
    statistic: Any,
    sizes: Sequence[int],
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Return ``statistic`` and a percentile bootstrap interval, resampling each index set with replacement.

    ``statistic(*indices)`` receives one index array per entry of ``sizes`` (e.g. ID and OOD test
    images) and returns a float; the same resampled indices go to every method compared inside it,
    so a difference between methods is bootstrapped as a paired quantity.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    value = float(statistic(*[np.arange(size) for size in sizes]))
    draws = np.empty(n_bootstrap)
    for index in range(n_bootstrap):
        draws[index] = statistic(*[rng.integers(0, size, size) for size in sizes])
    tail = (1.0 - confidence) / 2.0
    return {"value": value, "low": float(np.quantile(draws, tail)), "high": float(np.quantile(draws, 1.0 - tail)),
            "confidence": confidence, "n_bootstrap": n_bootstrap}


def claim_verdict(low: float, high: float, threshold: float = 0.0) -> str:
    """Judge a claim "the gain exceeds ``threshold``" from the confidence interval [low, high] of the gain.

    Returns ``"held"`` when the whole interval lies above the threshold, ``"contradicted"`` when it
    lies below, and ``"not supported"`` when it contains the threshold.
    """
    if low > threshold:
        return "held"
    if high < threshold:
        return "contradicted"
    return "not supported"


# --------------------------------------------------------------------------------------------
# Model and benchmark data shared by the notebooks

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


def resolve_device(device: str) -> torch.device:
    """Return the torch device for ``device``; ``"auto"`` picks CUDA, then MPS, then the CPU."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class Workbench:
    """The model, its zero-shot classifier and the benchmark splits, as the notebooks use them.

    ``benchmark="fashion-open"`` reads the embedded benchmark (splits ``id_train``, ``id_test``,
    ``ood_near``, ``ood_far``, ``ood_clipart``, ``covariate/<shift>/<severity>``). ``benchmark="folders"`` reads your
    images under ``data_root``: ``id_train/<class>/``, ``id_test/<class>/`` and any other split as a
    path relative to ``data_root``; a split whose path starts with ``ood`` is read as OOD images
    (label -1, any depth), any other as class folders with the ID class names.
    """

    def __init__(
        self,
        model: str,
        pretrained: str | None = None,
        benchmark: str = "fashion-open",
        data_root: str | None = None,
        device: str = "auto",
        batch_size: int = 128,
    ) -> None:
        from dsenergy.models import build_zero_shot_classifier, load_clip

        if benchmark not in ("fashion-open", "folders"):
            raise ValueError(f"benchmark must be 'fashion-open' or 'folders', got {benchmark!r}")
        if benchmark == "folders" and data_root is None:
            raise ValueError("benchmark 'folders' needs data_root, the folder holding id_train/ and id_test/")
        self.benchmark = benchmark
        self.data_root = data_root
        self.batch_size = batch_size
        self._datasets: dict[str, Any] = {}
        self.device = resolve_device(device)
        self.bundle = load_clip(model, pretrained, device=self.device)
        self.class_names = self._class_names()
        self.classifier = build_zero_shot_classifier(self.bundle, self.class_names, self._templates())
        logger.info("workbench: model %s (%s), %d classes, τ = %.4g, device %s", model, self.bundle.weights_id,
                    len(self.class_names), self.temperature, self.device)

    @property
    def temperature(self) -> float:
        """The model's own temperature τ = 1 / logit_scale."""
        return self.classifier.temperature

    def _class_names(self) -> list[str]:
        if self.benchmark == "fashion-open":
            from dsenergy.data.fashion_open import FASHION_ID_CLASSES

            return list(FASHION_ID_CLASSES)
        return list(self.dataset("id_train").class_names)

    def _templates(self) -> list[Any]:
        from dsenergy.demo import DEMO_MODEL_NAME, DEMO_TEMPLATES

        if self.bundle.name == DEMO_MODEL_NAME:
            return list(DEMO_TEMPLATES)
        from dsenergy.data.protocols import imagenet_templates

        return imagenet_templates()

    def dataset(self, split: str) -> Any:
        """Return the dataset of ``split`` (PIL images and labels; -1 for OOD images)."""
        if split in self._datasets:
            return self._datasets[split]
        if self.benchmark == "fashion-open":
            from dsenergy.data.fashion_open import load_fashion_open

            dataset = load_fashion_open(split)
        else:
            from pathlib import Path

            from dsenergy.data.folders import image_folder_dataset, ood_folder_dataset

            root = Path(self.data_root) / split
            if not root.is_dir():
                raise FileNotFoundError(f"split folder {root} not found; with benchmark 'folders' every split is a "
                                        f"folder under data_root {self.data_root}")
            name = f"folders:{Path(self.data_root).name}/{split}"
            if split.startswith("ood"):
                dataset = ood_folder_dataset(root, name=name)
            elif split == "id_train":
                dataset = image_folder_dataset(root, name=name)
            else:
                dataset = image_folder_dataset(root, class_names=self.class_names, name=name)
        self._datasets[split] = dataset
        return dataset

    def features(self, split: str, n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (N×D normalised image features, N labels) of ``split``, at most ``n`` images drawn with ``seed``.

        Features come from the disk cache (:func:`dsenergy.features.cached_features`) when present.
        """
        from torch.utils.data import Subset

        from dsenergy.features import cached_features

        dataset = self.dataset(split)
        subset: Any = dataset
        dataset_id = f"{dataset.identity}"
        if n is not None and n < len(dataset):
            indices = np.sort(np.random.default_rng(seed).choice(len(dataset), size=n, replace=False))
            subset = Subset(dataset, indices.tolist())
            dataset_id += f"/sample-{n}-seed{seed}"
        features, labels = cached_features(self.bundle, subset, dataset_id=dataset_id, return_labels=True,
                                           batch_size=self.batch_size, progress=False)
        if labels is None:
            labels = torch.full((len(subset),), -1)
        return features, labels.long()

    def kshot_features(self, shots: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the features and labels of a K-shot draw from ``id_train`` (the split is file-cached per seed)."""
        from torch.utils.data import Subset

        from dsenergy.data.kshot import kshot_indices
        from dsenergy.features import cached_features

        dataset = self.dataset("id_train")
        indices = kshot_indices(np.asarray(dataset.labels), shots, seed, dataset.identity)
        subset = Subset(dataset, [int(index) for index in indices])
        features, labels = cached_features(self.bundle, subset, dataset_id=f"{dataset.identity}/kshot-{shots}-seed{seed}",
                                           return_labels=True, batch_size=self.batch_size, progress=False)
        return features, labels.long()

    def similarities(self, features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """Return N×K cosine similarities to the zero-shot class features (or to ``text_features``)."""
        text = self.classifier.text_features if text_features is None else text_features
        text = torch.nn.functional.normalize(text.detach().float().cpu(), dim=1)
        return torch.nn.functional.normalize(features.float().cpu(), dim=1) @ text.T

    def test_splits(self, splits: Sequence[str], n: int | None, seed: int = 0) -> dict[str, Any]:
        """Return split -> ``(features, labels)`` (ID and covariate) or features (OOD), for ``evaluate.evaluate_model``."""
        result: dict[str, Any] = {}
        for split in splits:
            features, labels = self.features(split, n, seed)
            result[split] = features if split.startswith("ood") else (features, labels)
        return result

    def train(self, method: str, shots: int, seed: int, **config: Any) -> Any:
        """Train CoOp (``"coop"``) or CoOp+EBM (``"coop_ebm"``) on a K-shot draw of ``id_train`` features.

        ``config`` contains further :class:`dsenergy.train.TrainConfig` fields (``epochs``, ``n_ctx``,
        ``lr``, ``ebm_weight``, ``top_c``, ``crop_value``, ``bound``, ``temperature``). Returns the
        :class:`dsenergy.train.TrainResult`.
        """
        from dsenergy.train import TrainConfig, train_prompts

        features, labels = self.kshot_features(shots, seed)
        settings = TrainConfig(method=method, seed=seed, progress=False, **config)
        return train_prompts(self.bundle, self.class_names, (features, labels), settings)


def headline_metrics(table: Any, score: str = "delta_energy") -> dict[str, Any]:
    """Condense an ``evaluate.evaluate_model`` table: ID accuracy, mean covariate accuracy, AUROC/FPR95 of ``score``."""
    accuracy = table[table.metric == "accuracy"]
    detection = table[(table.score == score) & (table.split_role == "ood")]
    covariate = accuracy[accuracy.split_role == "covariate"]["value"]
    return {
        "id_accuracy": float(accuracy[accuracy.split_role == "id"]["value"].mean()),
        "covariate_accuracy": float(covariate.mean()) if len(covariate) else float("nan"),
        "auroc": detection[detection.metric == "auroc"].set_index("split")["value"].to_dict(),
        "fpr95": detection[detection.metric == "fpr95"].set_index("split")["value"].to_dict(),
    }


def headline_row(headline: Mapping[str, Any]) -> dict[str, float]:
    """Flatten :func:`headline_metrics` into one table row: both accuracies and an ``auroc_<split>`` column per split."""
    row = {"id_accuracy": headline["id_accuracy"], "covariate_accuracy": headline["covariate_accuracy"]}
    row.update({f"auroc_{split}": auroc for split, auroc in headline["auroc"].items()})
    return row


def per_image_scores(
    model: Any,
    test: Mapping[str, Any],
    score_names: Sequence[str],
    model_temperature: float,
    temperature: float | None = None,
    top_c: int = 1,
    crop_value: float = 0.0,
) -> dict[str, dict[str, np.ndarray]]:
    """Return ``{"scores": {split: {score: values}}, "correct": {split: 0/1 per image}}`` for one model.

    ``model`` and ``test`` are as for ``evaluate.evaluate_model``; OOD splits get scores only,
    labelled splits get scores and per-image correctness of the top-1 prediction.
    """
    from dsenergy.evaluate import similarity_function

    similarity = similarity_function(model)
    result: dict[str, dict[str, Any]] = {"scores": {}, "correct": {}}
    for split, value in test.items():
        features, labels = (value, None) if isinstance(value, torch.Tensor) else value
        with torch.no_grad():
            sims = similarity(features).float().cpu()
        result["scores"][split] = {}
        for name in score_names:
            options = {"top_c": top_c, "crop_value": crop_value} if name == "delta_energy" else {}
            values = scores.compute_score(name, sims, model_temperature, temperature, **options)
            result["scores"][split][name] = as_numpy(values)
        if labels is not None and not split.startswith("ood"):
            result["correct"][split] = (sims.argmax(dim=1) == labels).numpy().astype(np.float64)
    return result


def auroc_ci(
    runs: Sequence[Mapping[str, Any]],
    score: str,
    ood_split: str,
    baseline_runs: Sequence[Mapping[str, Any]] | None = None,
    baseline_score: str | None = None,
    id_split: str = "id_test",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Bootstrap interval of the seed-mean AUROC (ID positive), or of its gain over a baseline.

    ``runs`` contains one :func:`per_image_scores` result per seed, all on the same test images. ID and
    OOD images are resampled with replacement; every seed and the baseline see the same resample,
    so the gain is a paired difference.
    """
    def seed_mean(selected_runs: Sequence[Mapping[str, Any]], name: str, id_index: np.ndarray, ood_index: np.ndarray) -> float:
        return float(np.mean([metrics.auroc(run["scores"][id_split][name][id_index],
                                            run["scores"][ood_split][name][ood_index]) for run in selected_runs]))

    def statistic(id_index: np.ndarray, ood_index: np.ndarray) -> float:
        value = seed_mean(runs, score, id_index, ood_index)
        if baseline_runs is not None:
            value -= seed_mean(baseline_runs, baseline_score or score, id_index, ood_index)
        return value

    sizes = (runs[0]["scores"][id_split][score].size, runs[0]["scores"][ood_split][score].size)
    return paired_bootstrap(statistic, sizes, n_bootstrap, confidence, seed)


def accuracy_ci(
    runs: Sequence[Mapping[str, Any]],
    splits: Sequence[str],
    baseline_runs: Sequence[Mapping[str, Any]] | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Bootstrap interval of the seed-mean accuracy averaged over ``splits``, or of its gain over a baseline."""
    def seed_mean(selected_runs: Sequence[Mapping[str, Any]], indices: Sequence[np.ndarray]) -> float:
        return float(np.mean([np.mean([run["correct"][split][index] for split, index in zip(splits, indices)])
                              for run in selected_runs]))

    def statistic(*indices: np.ndarray) -> float:
        value = seed_mean(runs, indices)
        if baseline_runs is not None:
            value -= seed_mean(baseline_runs, indices)
        return value

    sizes = [runs[0]["correct"][split].size for split in splits]
    return paired_bootstrap(statistic, sizes, n_bootstrap, confidence, seed)


def mean_std(values: Any) -> str:
    """Format values over seeds as ``mean ± std`` (sample standard deviation; ``± 0`` for one seed)."""
    array = as_numpy(values)
    spread = array.std(ddof=1) if array.size > 1 else 0.0
    return f"{array.mean():.3f} ± {spread:.3f}"


def consistency_gain(
    table: Any, baseline: Any, metric: str = "hessian_cosine", confidence: float = 0.95
) -> dict[str, float]:
    """Return the gain in a ``hessian.hessian_consistency`` column, averaged over the non-reference domains.

    ``value`` = mean over domains of (table − baseline); the interval is normal with the
    jackknife standard errors of both tables (``<metric>_se``), treated as independent. For
    ``hessian_cosine`` a positive gain means ``table``'s Hessians agree more across domains.
    """
    from scipy.stats import norm

    first = table[table.domain != table.reference].set_index("domain")
    second = baseline[baseline.domain != baseline.reference].set_index("domain")
    domains = [domain for domain in first.index if domain in second.index]
    if not domains:
        raise ValueError("the two tables share no non-reference domain")
    differences = first.loc[domains, metric] - second.loc[domains, metric]
    variance = (first.loc[domains, f"{metric}_se"] ** 2 + second.loc[domains, f"{metric}_se"] ** 2).sum() / len(domains) ** 2
    half_width = float(norm.ppf(0.5 + confidence / 2.0) * math.sqrt(variance))
    value = float(differences.mean())
    return {"value": value, "low": value - half_width, "high": value + half_width, "confidence": confidence}
