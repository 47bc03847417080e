"""Write the notebook sequence as .ipynb files without outputs.

The notebooks are generated so that their ``parameters`` cells always match the schema in
``dsenergy.params`` and the committed files stay free of outputs. Edit the cells here and run

    python notebooks/build_notebooks.py

to rewrite ``notebooks/*.ipynb``; ``--check`` exits non-zero when a committed notebook differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

from dsenergy.params import NOTEBOOKS, parameters_cell_source

HERE = Path(__file__).resolve().parent

PARAMETERS = object()  # marks the cell written from the parameter schema


def setup(notebook: str, extra_imports: str = "") -> str:
    """Return the setup cell: imports, parameter validation, records file and the model."""
    return f"""%matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display
{extra_imports}
from dsenergy import evaluate, metrics, records, scores, viz
from dsenergy.params import validate_notebook
from dsenergy.workbench import Workbench

params = validate_notebook("{notebook}", globals())
records.start("{notebook}", output_dir, params)
bench = Workbench(model, pretrained, benchmark, data_root, device=device, batch_size=batch_size)
tau = temperature if temperature is not None else bench.temperature
print(f"model {{model}} ({{bench.bundle.weights_id}}), classes {{bench.class_names}}, τ = {{tau:.4g}}")"""


# Each notebook is a list of cells: PARAMETERS, or a source string. A string whose first
# non-blank character is "#" (a heading) is a markdown cell; any other string is a code cell.
NOTEBOOK_CELLS: dict[str, list] = {}

NOTEBOOK_CELLS["01_energy_change"] = [
    r"""# 01 · What cropping the top similarities does to the energy

A CLIP classifier scores an image by its cosine similarities $s_k = z \cdot w_k$ to $K$ class prompts.
The energy $E_\tau(s) = -\tau \log \sum_k e^{s_k/\tau}$ condenses them into one number.
**ΔEnergy** (our reading of Zhu et al., *ΔEnergy*, NeurIPS 2025, arXiv 2510.11296) redoes the
alignment with the $c$ largest similarities pushed down to a crop value $a$ and measures how much
the energy rises:

$$\Delta E(s) = E_\tau(\tilde s) - E_\tau(s) = \tau \log \sum_k e^{s_k/\tau} - \tau \log\Big(\sum_{k \notin T_c} e^{s_k/\tau} + c\, e^{a/\tau}\Big).$$

An in-distribution (ID) image leans on one class, so removing that class changes the energy a lot;
an out-of-distribution (OOD) image has no such class, so the change is small. This notebook shows
the effect on single images, on whole distributions (ID, near OOD, far OOD, covariate-shifted ID),
its exact relation to the maximum softmax probability (MSP) at small τ, and the feature-mask
variant. The last section has sliders for τ, c, a and ρ.""",
    PARAMETERS,
    """## Setup

The next cell checks the parameters (a bad value stops here with its name), starts the records file
that `dsenergy run` and the tests read back, and loads the model with its zero-shot classifier. The
class prompts are encoded once; $\\tau$ is the model's own temperature $1/\\text{logit\\_scale}$ unless
the `temperature` parameter sets it.""",
    setup("01_energy_change"),
    """## Image features of each distribution

We draw `n_per_split` images from the ID test split, from each OOD split and from the first
covariate split, encode them once (features are cached on disk) and compute their similarities to the
ID class prompts. The table shows how many images each distribution has and how high its largest
cosine similarity is on average.""",
    """splits = ["id_test", *ood_splits, covariate_splits[0]]
features = {split: bench.features(split, n_per_split, seed)[0] for split in splits}
similarities = {split: bench.similarities(values) for split, values in features.items()}
pd.DataFrame({
    "images": {viz.split_label(split): len(values) for split, values in features.items()},
    "mean max cosine": {viz.split_label(split): float(s.max(dim=1).values.mean()) for split, s in similarities.items()},
})""",
    r"""## Cropping one image

For a typical ID image and a typical far-OOD image (the ones with the median ΔE of their split), the
bars show the softmax over the ID classes before and after the top-$c$ similarities are set to $a$.
ΔE grows with the share of probability held by the cropped classes: for $c = 1$, $a = 0$ and a small
τ it is close to $-\tau \log(1 - p_{max})$ (derived in the section on MSP below), so what counts is how
close that share is to 1, which bar heights near 1 barely show; compare the ΔE values in the two
titles. A far-OOD image may also put most of its probability on one ID class. Whether ID images move the energy
more than OOD images as a rule is what the median ΔE per split in the table of the next section shows.""",
    """delta = {split: scores.delta_energy(s, tau, top_c=top_c, crop_value=crop_value) for split, s in similarities.items()}
figure, axes = plt.subplots(1, 2, figsize=(14, 4))
for ax, split in zip(axes, ["id_test", ood_splits[-1]]):
    median_image = int(delta[split].argsort()[len(delta[split]) // 2])
    viz.plot_crop_example(similarities[split][median_image], tau, bench.class_names, top_c, crop_value,
                          title=f"median-ΔE image of {viz.split_label(split)}", ax=ax)
figure.tight_layout()
plt.show()""",
    """## E and ΔE across distributions

The left panel shows the energy of each distribution, the right panel ΔE. Both separate ID from OOD
images to some degree; the table gives the AUROC of each score against the ID split (ID is the
positive class, higher score = more ID; for the energy we use $-E$). The covariate split contains ID
classes under an image shift, so a detector should *not* reject it: an AUROC near 0.5 there is the
wanted behaviour.""",
    """energy = {split: scores.free_energy(s, tau) for split, s in similarities.items()}
figure, axes = plt.subplots(1, 2, figsize=(14, 4))
viz.plot_score_distributions(energy, f"Energy E_τ(s), τ = {tau:.3g}", "E (lower = more ID)", ax=axes[0])
viz.plot_score_distributions(delta, f"ΔE, c = {top_c}, a = {crop_value:g}, τ = {tau:.3g}", "ΔE (higher = more ID)", ax=axes[1])
figure.tight_layout()
plt.show()

others = [split for split in splits if split != "id_test"]
summary = pd.DataFrame({
    "median E": {split: float(energy[split].median()) for split in splits},
    "median ΔE": {split: float(delta[split].median()) for split in splits},
    "AUROC of -E vs ID": {split: metrics.auroc(-energy["id_test"], -energy[split]) for split in others},
    "AUROC of ΔE vs ID": {split: metrics.auroc(delta["id_test"], delta[split]) for split in others},
})
records.record("temperature", tau, description="τ used by every score in this notebook")
records.record("weights_id", bench.bundle.weights_id, description="identity of the model weights")
records.record("median_delta_energy", summary["median ΔE"].to_dict(), unit="ΔE", description=f"c = {top_c}, a = {crop_value}")
records.record("auroc_energy", summary["AUROC of -E vs ID"].dropna().to_dict(), unit="AUROC, ID positive")
records.record("auroc_delta_energy", summary["AUROC of ΔE vs ID"].dropna().to_dict(), unit="AUROC, ID positive",
               description=f"ΔE with c = {top_c}, a = {crop_value}, τ = {tau:.4g}")
display(Markdown(f"E and ΔE at τ = {tau:.4g}; ΔE with c = {top_c}, a = {crop_value:g}; AUROC with ID as the positive class."))
summary.rename(index=viz.split_label)""",
    r"""## ΔE and MSP at small τ

With $c = 1$ the closed form is $\Delta E = -\tau \log\big(1 - p_{max}(1 - e^{(a - s_{max})/\tau})\big)$. At
a small τ (CLIP's is about 0.01) and $a = 0$ the factor $e^{-s_{max}/\tau}$ is tiny whenever the top
similarity is well above zero ($e^{-30}$ for $s_{max} = 0.3$), so $\Delta E \approx -\tau \log(1 - p_{max})$,
a monotone function of MSP: **the two scores rank the images identically**, except for pairs whose MSPs
differ by less than that residual factor. The identity needs $s_{max} > a$: an image whose top
similarity is at or below the crop value gains similarity from the crop, and its ΔE is zero or negative.
The cell reports how many images that concerns; a model with random weights, whose cosines hover
around zero, breaks the identity for many. We check this on all images pooled, in float64, as the fraction of image pairs that
both scores order the same way (pairs that either score ties are left out, because MSP saturates at
exactly 1 for the most confident images). At the model's own τ the factor is small but not zero, so
the agreement may fall slightly below 1. Cropping two classes ($c = 2$) or raising τ to 1 (the MCM
setting) breaks the identity; that is where ΔE can differ from MSP. The last check compares the closed
form above with the two log-sum-exps that `scores.delta_energy` computes.""",
    """pooled = torch.cat(list(similarities.values())).double()
small_tau = min(tau, 0.01)
msp_small = scores.msp(pooled, small_tau)
agreement = {
    f"c = 1, a = 0, τ = {small_tau:.3g} (small)": metrics.rank_agreement(scores.delta_energy(pooled, small_tau, top_c=1), msp_small),
    f"c = 1, a = 0, τ = {tau:.3g} ({'model' if temperature is None else 'temperature parameter'})": metrics.rank_agreement(scores.delta_energy(pooled, tau, top_c=1), scores.msp(pooled, tau)),
    f"c = 2, a = 0, τ = {small_tau:.3g}": metrics.rank_agreement(scores.delta_energy(pooled, small_tau, top_c=2), msp_small),
    "c = 1, a = 0, τ = 1": metrics.rank_agreement(scores.delta_energy(pooled, 1.0, top_c=1), scores.msp(pooled, 1.0)),
}
for key, value in zip(["c1_small_tau", "c1_model_tau", "c2_small_tau", "c1_tau1"], agreement.values()):
    records.record(f"rank_agreement_msp_{key}", value, unit="fraction of pairs", description="ΔE vs MSP; 1.0 = identical ranking")
records.record("small_tau", small_tau, description="τ of the small-τ identity check")

near = ood_splits[0]
near_auroc = {name: metrics.auroc(function(similarities["id_test"].double(), tau), function(similarities[near].double(), tau))
              for name, function in {"delta_energy": scores.delta_energy, "msp": scores.msp}.items()}
records.record("auroc_gap_delta_energy_msp_near", abs(near_auroc["delta_energy"] - near_auroc["msp"]), unit="AUROC",
               description=f"|AUROC(ΔE) - AUROC(MSP)| on {near} at τ = {tau:.4g}, c = 1")

probabilities = torch.softmax(pooled / tau, dim=1)
top = pooled.topk(top_c, dim=1)
closed_form = -tau * torch.log1p(-(probabilities.gather(1, top.indices) * (1 - torch.exp((crop_value - top.values) / tau))).sum(dim=1))
closed_form_error = float((closed_form - scores.delta_energy(pooled, tau, top_c=top_c, crop_value=crop_value)).abs().max())
records.record("closed_form_max_abs_error", closed_form_error, unit="ΔE")
records.record("min_delta_energy", float(scores.delta_energy(pooled, tau, top_c=1, crop_value=0.0).min()), unit="ΔE",
               description="smallest ΔE (c = 1, a = 0) over all images; ≥ 0 when every top similarity is ≥ 0")

figure, ax = plt.subplots(figsize=(6, 4))
viz.plot_msp_relation(msp_small, scores.delta_energy(pooled, small_tau, top_c=1), small_tau, ax=ax)
plt.show()
below_crop = float((pooled.max(dim=1).values <= 0.0).double().mean())
records.record("fraction_top_similarity_below_crop", below_crop, unit="fraction of images",
               description="images whose largest cosine is ≤ 0, where the c = 1, a = 0 identity with MSP fails")
display(Markdown(f"Largest difference between the closed form and `scores.delta_energy` (c = {top_c}, a = {crop_value:g}, "
                 f"τ = {tau:.4g}, float64): {closed_form_error:.2e}. Images whose top cosine is at or below a = 0: "
                 f"{below_crop:.1%}."))
pd.Series(agreement, name="rank agreement with MSP").to_frame()""",
    r"""## The feature-mask variant

The abstract also speaks of re-aligning the two modalities. Our second reading zeroes the fraction ρ
of image-feature dimensions that contribute most to the top similarity $z_d\,w_{\hat y, d}$, renormalises
the feature, recomputes every similarity and takes the energy change. The densities and AUROCs below
use the `mask_fraction` parameter.""",
    """mask_delta = {split: scores.delta_energy_feature_mask(values, bench.classifier.text_features, tau, mask_fraction=mask_fraction)
              for split, values in features.items()}
viz.plot_score_distributions(mask_delta, f"Feature-mask ΔE, ρ = {mask_fraction:g}, τ = {tau:.3g}", "ΔE (higher = more ID)")
plt.show()
mask_auroc = {split: metrics.auroc(mask_delta["id_test"], mask_delta[split]) for split in others}
records.record("auroc_delta_energy_feature_mask", mask_auroc, unit="AUROC, ID positive", description=f"ρ = {mask_fraction}")
pd.Series(mask_auroc, name="AUROC of feature-mask ΔE vs ID").rename(index=viz.split_label).to_frame()""",
    """## Explore τ, c, a and ρ

In JupyterLab the sliders below redraw both ΔE variants for every distribution and update the AUROC
readout (ID positive, against the ID split). In a run without a widget frontend (`dsenergy run` and
papermill set `interactive = False`) the same computation is shown as static curves: AUROC on each OOD
split against τ for c = 1, 2, 3, and against ρ. The recorded table `auroc_vs_temperature` also contains
the AUROC of MSP, computed in float32: at the smallest τ the softmax of many images rounds to exactly
1.0, and the resulting ties, not a weaker detector, pull its AUROC toward 0.5 there.""",
    """explorer = viz.DeltaEnergyExplorer(features, bench.classifier.text_features, tau, id_name="id_test", top_c=top_c,
                                    crop_value=crop_value, mask_fraction=mask_fraction, widgets=interactive)
if interactive:
    display(explorer)

temperature_sweep = explorer.sweep(temperature=np.logspace(-3, 0, 10).tolist(), top_c=[1, 2, 3])
mask_sweep = explorer.sweep(mask_fraction=[0.02, 0.05, 0.1, 0.2, 0.4, 0.6])
figure, axes = plt.subplots(1, len(ood_splits) + 1, figsize=(5 * (len(ood_splits) + 1), 3.8))
for ax, split in zip(axes, ood_splits):
    viz.plot_sweep(temperature_sweep[temperature_sweep.split == split], "temperature", "delta_energy", hue="top_c",
                   log_x=True, ax=ax, title=f"ΔE crop on {viz.split_label(split)}", ylabel="AUROC")
viz.plot_sweep(mask_sweep, "mask_fraction", "delta_energy_feature_mask", hue="split", ax=axes[-1],
               title="feature-mask ΔE", ylabel="AUROC")
figure.tight_layout()
plt.show()
records.record("auroc_vs_temperature", temperature_sweep, unit="AUROC, ID positive", description=f"ΔE crop and MSP (float32; MSP ties at 1.0 for small τ), a = {crop_value:g}")
records.record("auroc_vs_mask_fraction", mask_sweep, unit="AUROC, ID positive")""",
    """## Recorded numbers

Every number above is also in the records file, which `dsenergy run` gathers into `results.json`.""",
    """print(records.current_path())
recorded = pd.Series({name: entry["value"] for name, entry in records.load_records(records.current_path())["records"].items()
                     if not isinstance(entry["value"], (list, dict))}, name="value", dtype=object).to_frame()
recorded.style.format(lambda value: f"{value:.4g}" if isinstance(value, float) else str(value))""",
]


NOTEBOOK_CELLS["02_delta_energy_detection"] = [
    r"""# 02 · ΔEnergy as an OOD detector, against the usual scores

This notebook scores every image with every selected score and measures how well each separates the
ID test split from each OOD split. The scores, all *higher = more ID*:

| score | formula | τ |
|---|---|---|
| MSP | $\max_k \mathrm{softmax}(s/\tau)_k$ | model's |
| MCM | MSP on raw cosines | 1 (its paper's default) |
| MaxLogit | $\max_k s_k/\tau$ | model's |
| max cosine | $\max_k s_k$ | none |
| energy | $\tau \log \sum_k e^{s_k/\tau}$ | model's |
| ΔE | energy change after cropping the top-c similarities to a | model's |
| ΔE feature mask | energy change after zeroing the top-ρ feature dimensions | model's |

The `temperature` parameter replaces the model's τ in every score that uses it; MCM keeps τ = 1.
Every table states the metric convention and the τ of each score, because both change the numbers.""",
    PARAMETERS,
    """## Setup

Check the parameters, start the records file and load the model and its zero-shot classifier.""",
    setup("02_delta_energy_detection"),
    """## Scores on every split

Features of the ID test split and of each OOD split (`n_per_split` images each) give one score vector
per (split, score).""",
    """test_splits = ["id_test", *ood_splits]
features = {split: bench.features(split, n_per_split, seed)[0] for split in test_splits}
text_features = bench.classifier.text_features
values, taus = {}, {}
for split in test_splits:
    values[split], taus = evaluate.compute_scores(score_names, features[split], text_features, tau,
                                             top_c=top_c, crop_value=crop_value, mask_fraction=mask_fraction)
pd.Series(taus, name="τ").to_frame()""",
    """## Detection table

AUROC, FPR at 95 % TPR, AUPR-In and AUPR-Out for every score on every OOD split. The caption names the
convention (the `positive` parameter) and each score's τ. The best AUROC per split is in bold.""",
    """table = evaluate.detection_table(values["id_test"], {split: values[split] for split in ood_splits}, taus, positive=positive)
caption = viz.table_caption(positive, taus)
display(Markdown(caption))
wide = table.pivot(index="score", columns="ood_split", values=["auroc", "fpr95"]).loc[list(score_names)]
display(wide.style.format("{:.3f}").highlight_max(subset=[c for c in wide.columns if c[0] == "auroc"], props="font-weight: bold"))

best = table.loc[table.groupby("ood_split")["auroc"].idxmax()].set_index("ood_split")["score"].to_dict()
records.record("detection", table, unit=caption, description="every score against every OOD split")
records.record("temperatures", taus, unit="τ per score")
for metric_name in ("auroc", "fpr95"):
    records.record(f"{metric_name}_delta_energy",
                   table[table.score == "delta_energy"].set_index("ood_split")[metric_name].to_dict(),
                   unit=f"{metric_name}, positive = {positive}", description=f"ΔE, c = {top_c}, a = {crop_value}")
records.record("best_score", best, description="score with the highest AUROC per OOD split")""",
    """### Reading the table on the demo model

The next cell states, from the table above, how ΔE and Energy compare on each OOD split in this run.
With the bundled `dsenergy-demo` at its own τ and c = 1, Energy beats ΔE on near OOD, ΔE beats Energy
on the far-OOD splits, and MCM (τ = 1) does best on far OOD. The demo model saw the four near-OOD
classes in training, with captions of their own, so their images sit far from every ID prompt
(notebook 01 lists the mean top cosine per split), and the energy reads that level directly. The same
recipe trained on the six ID classes alone puts near-OOD images as close to the ID prompts as ID images
are, and there ΔE beats Energy on near OOD too: see the README's results and `results/demo-variants/`.
Other models, τ or c can change every one of these comparisons.""",
    """if {"energy", "delta_energy"} <= set(score_names):
    auroc = table.pivot(index="ood_split", columns="score", values="auroc")
    lines = []
    for split in ood_splits:
        gap = auroc.loc[split, "delta_energy"] - auroc.loc[split, "energy"]
        leader = "ΔE beats Energy" if gap > 0 else "Energy beats ΔE" if gap < 0 else "ΔE and Energy tie"
        lines.append(f"- {viz.split_label(split)}: {leader} (AUROC of ΔE {auroc.loc[split, 'delta_energy']:.3f}, "
                     f"of Energy {auroc.loc[split, 'energy']:.3f}); best score {best[split]}")
    display(Markdown("In this run:\\n\\n" + "\\n".join(lines)))""",
    """## ROC curves

One panel per OOD split, one curve per score (ID positive: the y axis is the fraction of ID images
kept, the x axis the fraction of OOD images wrongly accepted).""",
    """figure, axes = plt.subplots(1, len(ood_splits), figsize=(5.5 * len(ood_splits), 5), squeeze=False)
for ax, split in zip(axes[0], ood_splits):
    viz.plot_roc_curves(values["id_test"], values[split], f"ID vs {viz.split_label(split)}", ax=ax)
figure.tight_layout()
plt.show()""",
    """## Score densities

Kernel density estimates of a few scores per distribution. A good detector puts the ID density to the
right of every OOD density with little overlap; where MSP saturates near 1, ΔE still spreads the
confident images out.""",
    """shown = [name for name in ("msp", "energy", "delta_energy", "delta_energy_feature_mask") if name in score_names]
figure, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.8), squeeze=False)
for ax, name in zip(axes[0], shown):
    viz.plot_score_distributions({split: values[split][name] for split in test_splits}, f"{name} (τ = {taus[name]:.3g})",
                                 name, ax=ax)
figure.tight_layout()
plt.show()""",
    """## Covariate shift is not OOD

The covariate splits contain ID classes under image shifts. A detector that rejects them throws away
images the classifier should still label. AUROC near 0.5 against the ID split means the score treats
them as ID; the last row gives the zero-shot classifier's top-1 accuracy on each split, which shows how much
it loses under each shift (its accuracy on the ID split is recorded as `id_accuracy`).""",
    """covariate = {split: bench.features(split, n_per_split, seed) for split in covariate_splits}
id_labels = bench.features("id_test", n_per_split, seed)[1]
rows = []
for split, (split_features, split_labels) in covariate.items():
    split_values, _ = evaluate.compute_scores(score_names, split_features, text_features, tau,
                                         top_c=top_c, crop_value=crop_value, mask_fraction=mask_fraction)
    accuracy = metrics.accuracy(bench.similarities(split_features), split_labels)
    rows += [{"split": split, "score": name, "auroc_vs_id": metrics.auroc(values["id_test"][name], split_values[name]),
              "accuracy": accuracy} for name in score_names]
covariate_table = pd.DataFrame(rows)
records.record("covariate_auroc", covariate_table, unit="AUROC, ID positive; accuracy of the zero-shot classifier")
records.record("id_accuracy", metrics.accuracy(bench.similarities(features["id_test"]), id_labels), unit="top-1 accuracy")
display(Markdown(viz.table_caption("id", taus) + " Rows: AUROC of each score against the ID split; last row: top-1 accuracy."))
mean_auroc = covariate_table.groupby("score")["auroc_vs_id"].mean()
display(Markdown(f"Averaged over these shifts, {mean_auroc.idxmax()} rejects shifted ID images most (mean AUROC "
                 f"{mean_auroc.max():.3f}) and {mean_auroc.idxmin()} least ({mean_auroc.min():.3f}). A score that "
                 "detects far OOD well can pay for it here."))
covariate_summary = covariate_table.pivot(index="score", columns="split", values="auroc_vs_id").loc[list(score_names)]
covariate_summary.loc["zero-shot accuracy"] = covariate_table.groupby("split")["accuracy"].first()
covariate_summary.rename(columns=viz.split_label).style.format("{:.3f}")""",
]


NOTEBOOK_CELLS["03_hessian_consistency"] = [
    r"""# 03 · Hessian consistency across domains

The ΔEnergy paper argues that EBM training leaves a loss surface that looks alike in every domain, and
that this predicts better accuracy under covariate shift. Our reading: take θ, the learned CoOp context
vectors (for the zero-shot classifier, the normalised K×D text-feature matrix), and for each domain
$e$ (the ID test split and each covariate split) the mean cross-entropy $L_e(\theta)$ with Hessian
$H_e$. We report per domain the top eigenvalues (Lanczos on Hessian-vector products), the trace
(Hutchinson) and $\lVert H_e \rVert_F$, and against the ID domain the Hessian cosine
$\mathrm{tr}(H_e H_{ID}) / (\lVert H_e \rVert_F \lVert H_{ID} \rVert_F)$, the normalised differences
$\lVert H_e - H_{ID} \rVert / (\lVert H_e \rVert_F + \lVert H_{ID} \rVert_F)$ and the gradient gap. No Hessian is
ever formed; every number comes from Hessian-vector products computed with `torch.func`.""",
    PARAMETERS,
    """## Setup

Check the parameters, start the records file, load the model, draw the K-shot training set and
encode `n_per_split` images of the ID test split and of each covariate split.""",
    setup("03_hessian_consistency", "from dsenergy import hessian"),
    """domains = {split: bench.features(split, n_per_split, seed) for split in ["id_test", *covariate_splits]}
batches = {split: hessian.feature_batches(features, labels, batch_size=256) for split, (features, labels) in domains.items()}
training = dict(epochs=epochs, n_ctx=n_context, lr=learning_rate, top_c=top_c, crop_value=crop_value, bound=bound,
                temperature=temperature)
runs = {"CoOp": bench.train("coop", shots, seed, **training),
        "CoOp+EBM": bench.train("coop_ebm", shots, seed, ebm_weight=ebm_weight, **training)}
print({split: len(labels) for split, (_, labels) in domains.items()})""",
    """## Spectra and consistency per model

For the zero-shot classifier θ is the text-feature matrix; for CoOp and CoOp+EBM θ is the context
tensor and the text features are recomputed from it by the frozen text tower in every
Hessian-vector product. Probes and starting vectors use the same seed for every model. Smoke runs
skip the spectral norm of the difference, which costs the most products. They also give Lanczos only
`hessian_iterations` = 6 steps, so the log may warn that the eigenvalues did not reach the tolerance:
Lanczos approximates the extreme eigenvalues first, so the top one is the most accurate and the
smaller ones are rough. Raise `hessian_iterations` for tight values.

The cross-entropy is convex in the logits, but θ reaches them through a nonlinear map: the
normalisation of each class's text feature, and for CoOp the text tower before it. That map adds a
curvature term that can be negative. A Hessian can then have negative eigenvalues and a negative trace,
and two domains can have a negative Hessian cosine, which means their curvatures point in opposite
directions.""",
    """settings = dict(reference="id_test", k=hessian_top_k, iters=hessian_iterations, num_probes=hutchinson_samples, seed=seed,
                spectral_diff=not smoke, progress=False)
tables = {"zero-shot": hessian.hessian_consistency(hessian.make_classifier_loss(tau), bench.classifier.text_features.clone(),
                                                   batches, **settings)}
for name, run in runs.items():
    learner = run.prompt_learner
    _, theta = hessian.trainable_parameter(learner)
    loss_fn = hessian.make_classifier_loss(tau, hessian.module_text_features(learner))
    # Double backward was about 3x faster than forward-over-reverse through the demo model's text tower.
    tables[name] = hessian.hessian_consistency(loss_fn, theta, batches, mode="reverse-over-reverse", **settings)
consistency = pd.concat([table.assign(model=name) for name, table in tables.items()], ignore_index=True)
records.record("consistency", consistency, description="hessian_consistency rows per model and domain")

eigenvalue_columns = [f"eigenvalue_{index}" for index in range(1, hessian_top_k + 1)]
spectra = {name: {viz.split_label(row.domain): [getattr(row, column) for column in eigenvalue_columns] for row in table.itertuples()}
           for name, table in tables.items()}
viz.plot_hessian_spectra(spectra)
plt.show()
consistency.set_index(["model", "domain"])[["loss", "trace", "frobenius", "hessian_cosine", "frobenius_diff_normalized",
                                            "spectral_diff_normalized", "gradient_gap"]].style.format("{:.4g}", na_rep="–")""",
    """## Consistency against covariate accuracy

The claim to test is that the model with the more consistent Hessians (higher cosine, smaller
normalised difference) also keeps more accuracy under covariate shift. The gain of CoOp+EBM over
CoOp is measured on both metrics, each with a normal interval from the jackknife over probes. Both
models see the same probes, so the jackknife leaves each probe out of both at once and the noise
they share cancels. The claim is *held* only when both metrics agree. When one shows more consistency
and the other less, the verdict is *metrics disagree*. The intervals cover probe noise only, not the
spread over training seeds (this notebook trains one seed; notebook 05 trains several).""",
    """summary_rows = []
for name, table in tables.items():
    model = bench.classifier if name == "zero-shot" else runs[name].prompt_learner
    accuracy = evaluate.evaluate_model(model, dict(domains), bundle=bench.bundle, scores=())
    shifted = table[table.domain != "id_test"]
    summary_rows.append({"model": name,
                         "mean Hessian cosine": shifted["hessian_cosine"].mean(),
                         "mean normalised Frobenius difference": shifted["frobenius_diff_normalized"].mean(),
                         "ID accuracy": accuracy[accuracy.split == "id_test"]["value"].mean(),
                         "covariate accuracy": accuracy[accuracy.split_role == "covariate"]["value"].mean()})
summary = pd.DataFrame(summary_rows).set_index("model")
hessian_claim = hessian.consistency_verdict(tables["CoOp+EBM"], tables["CoOp"])
records.record("summary", summary.reset_index(), description="mean over covariate domains against id_test")
records.record("consistency_gain", hessian_claim["hessian_cosine"], unit="Hessian cosine, CoOp+EBM minus CoOp",
               description="mean over covariate domains with a 95% normal interval")
records.record("consistency_gain_frobenius", hessian_claim["frobenius_diff_normalized"],
               unit="normalised Frobenius difference, CoOp minus CoOp+EBM",
               description="mean over covariate domains with a 95% normal interval; positive = CoOp+EBM more consistent")
records.record("consistency_verdict", hessian_claim["verdict"], description="combined verdict of both metrics")
lines = [f"- {label}: {hessian_claim[metric]['value']:+.3g} [{hessian_claim[metric]['low']:+.3g}, "
         f"{hessian_claim[metric]['high']:+.3g}] → {hessian_claim['verdicts'][metric]}"
         for metric, label in [("hessian_cosine", "Hessian cosine, CoOp+EBM minus CoOp"),
                               ("frobenius_diff_normalized", "normalised Frobenius difference, CoOp minus CoOp+EBM")]]
display(Markdown("Gain in consistency of CoOp+EBM over CoOp (positive = more consistent):\\n\\n" + "\\n".join(lines)
                 + f"\\n\\nVerdict: **{hessian_claim['verdict']}**"))
summary.style.format("{:.4f}")""",
]


NOTEBOOK_CELLS["04_finetune"] = [
    r"""# 04 · Prompt tuning: CoOp against CoOp+EBM

CoOp learns `n_context` context vectors in front of each class name while both CLIP towers stay
frozen. CoOp+EBM adds the EBM term (our reading of the ΔEnergy paper): with the ground-truth class
(and, for $c > 1$, the $c - 1$ largest other classes) cropped to $a$, it maximises the lower bound

$$\Delta E_y \ge LB_y = s_y - \tau \log\Big(\sum_{k \notin T} e^{s_k/\tau} + c\, e^{a/\tau}\Big), \qquad L = \mathrm{CE}(s/\tau, y) - \lambda\, \overline{LB_y}.$$

This notebook trains both on the same K-shot draw, plots their training curves, compares them with
the zero-shot classifier, then sweeps the EBM weight λ and the crop count c.""",
    PARAMETERS,
    """## Setup

Check the parameters, start the records file, load the model and encode the test splits once.""",
    setup("04_finetune"),
    """test = bench.test_splits(["id_test", *ood_splits, *covariate_splits], n_per_split, seed)
training = dict(epochs=epochs, n_ctx=n_context, lr=learning_rate, top_c=top_c, crop_value=crop_value, bound=bound,
                temperature=temperature)
evaluation = dict(bundle=bench.bundle, scores=("msp", "mcm", "energy", "delta_energy"), model_temperature=tau,
                  positive="id", delta_energy_options={"top_c": top_c, "crop_value": crop_value})
delta_caption = f"AUROC with ID as the positive class; ΔE with c = {top_c}, a = {crop_value:g}, τ = {tau:.4g}."
print(f"{shots}-shot training on {len(bench.class_names)} classes; test splits: {list(test)}")""",
    """## Training curves

Both runs start from the same random context (same seed) and see the same K-shot images in the same
order. The EBM term is logged for CoOp too, although CoOp does not optimise it, so the panels show
what the extra term changes. The `ebm` panel plots $L_{EBM} = -\\overline{LB_y}$: lower means a larger
bound. If the two curves of a panel coincide, the EBM term changed nothing that this panel measures. On
the demo model they nearly do, and the next section explains why.""",
    """runs = {
    "CoOp": bench.train("coop", shots, seed, **training),
    f"CoOp+EBM (λ = {ebm_weight:g})": bench.train("coop_ebm", shots, seed, ebm_weight=ebm_weight, **training),
}
histories = {name: pd.DataFrame(run.history).to_dict(orient="list") for name, run in runs.items()}
viz.plot_training_curves(histories, ["ce", "ebm", "acc"])
plt.show()
records.record("history", {name: history for name, history in histories.items()}, description="per-epoch training records")
records.record("final_train_ce", {name: history["ce"][-1] for name, history in histories.items()}, unit="cross-entropy")""",
    """## Zero-shot, CoOp and CoOp+EBM on the test splits

Accuracy on the ID test split and on each covariate split, and OOD detection (AUROC, ID positive) of
ΔE on each OOD split. The zero-shot row uses the hand-written prompt templates.""",
    """tables = [evaluate.evaluate_model(bench.classifier, test, method="zero-shot", seed=seed, **evaluation)]
tables += [evaluate.evaluate_model(run.prompt_learner, test, method=name, seed=seed, **evaluation) for name, run in runs.items()]
comparison = pd.concat(tables, ignore_index=True)
headline = {table["method"].iloc[0]: evaluate.headline_metrics(table) for table in tables}
records.record("methods", comparison, unit="accuracy; AUROC/FPR95 with ID positive", description="evaluate_model rows")
records.record("headline", headline, description="ID accuracy, mean covariate accuracy and ΔE AUROC/FPR95 per method")
display(Markdown(delta_caption))
pd.DataFrame({method: {"ID accuracy": values["id_accuracy"], "covariate accuracy": values["covariate_accuracy"],
                       **{f"AUROC ΔE {viz.split_label(split)}": auroc for split, auroc in values["auroc"].items()}}
              for method, values in headline.items()}).T.style.format("{:.3f}")""",
    """### Why the rows are close on the demo model

With the bundled `dsenergy-demo`, expect the three rows to differ by less than a point. Its text tower
gives a class name nearly the same feature whatever words surround it (the model card reports a cosine
above 0.999 between any two training templates of one class). Its zero-shot prompts are the captions it
was trained with, on images of these same classes, so they already fit, and trained context vectors end
close to the zero-shot classifier. A CLIP whose prompts were not fitted to your images
(`-p model ... -p pretrained ...`) leaves the context more to learn.""",
    """## Sweep of the EBM weight λ

λ = 0 is plain CoOp. Each point is one training run with the settings above; at smoke size the
curves are noisy, so read the trend, not single points.""",
    """rows = []
for weight in ebm_weights:
    run = bench.train("coop_ebm", shots, seed, ebm_weight=weight, **training)
    values = evaluate.headline_metrics(evaluate.evaluate_model(run.prompt_learner, test, method="coop_ebm", seed=seed, **evaluation))
    rows.append({"ebm_weight": weight, **evaluate.headline_row(values)})
lambda_sweep = pd.DataFrame(rows)
records.record("sweep_ebm_weight", lambda_sweep, unit=f"accuracy; {delta_caption}")
long = lambda_sweep.melt(id_vars="ebm_weight", var_name="metric", value_name="value")
viz.plot_sweep(long, "ebm_weight", "value", hue="metric", title=f"CoOp+EBM against λ (c = {top_c})", ylabel="accuracy or AUROC")
plt.show()
display(Markdown(delta_caption))
lambda_sweep.set_index("ebm_weight").style.format("{:.3f}")""",
    """## Sweep of the crop count c

For each c, CoOp+EBM is trained with that c and its ΔE is scored with the same c. Larger c crops more
of the distribution, so the bound rewards images whose top classes together dominate. The zero-shot
rows score the untrained classifier with the same c: the difference between the two rows of one c
is what training with that c added, and the change of the zero-shot rows across c is what scoring
with that c does alone.""",
    """rows = []
for count in top_c_values:
    settings = {**training, "top_c": count}
    run = bench.train("coop_ebm", shots, seed, ebm_weight=ebm_weight, **settings)
    options = {**evaluation, "delta_energy_options": {"top_c": count, "crop_value": crop_value}}
    values = evaluate.headline_metrics(evaluate.evaluate_model(run.prompt_learner, test, method="coop_ebm", seed=seed, **options))
    rows.append({"top_c": count, "model": "CoOp+EBM", **evaluate.headline_row(values)})
    values = evaluate.headline_metrics(evaluate.evaluate_model(bench.classifier, test, method="zero-shot", seed=seed, **options))
    rows.append({"top_c": count, "model": "zero-shot", **evaluate.headline_row(values)})
c_sweep = pd.DataFrame(rows)
records.record("sweep_top_c", c_sweep, unit=f"accuracy; AUROC of ΔE with the row's c, ID positive, a = {crop_value:g}, τ = {tau:.4g}")
long = c_sweep[c_sweep.model == "CoOp+EBM"].drop(columns="model").melt(id_vars="top_c", var_name="metric", value_name="value")
viz.plot_sweep(long, "top_c", "value", hue="metric", title=f"CoOp+EBM against c (λ = {ebm_weight:g})", ylabel="accuracy or AUROC")
plt.show()
display(Markdown(f"AUROC with ID as the positive class; ΔE with the row's c, a = {crop_value:g}, τ = {tau:.4g}."))
c_sweep.set_index(["top_c", "model"]).style.format("{:.3f}")""",
]


NOTEBOOK_CELLS["05_evaluation"] = [
    r"""# 05 · Final evaluation and the paper's claims

The final table: zero-shot, CoOp and CoOp+EBM, each trained with every seed in `seeds`, evaluated on
the same test images. Detection uses every score in `score_names` (the feature-mask ΔE is covered in
notebook 02 only); accuracy is measured on the ID test split and on each covariate split. Values are
mean ± sample standard deviation over seeds. Intervals are percentile bootstrap intervals of the seed
mean: each resample draws the seeds and the test images with replacement, and a gain between two
methods pairs them by seed and image, so the interval covers the spread over training runs as well as
over test images.

The last section checks each claim of the ΔEnergy paper on these data. A verdict is computed from
the interval of the relevant gain: *held* when the whole interval is above the claimed margin,
*contradicted* when it is below, *not supported* otherwise.""",
    PARAMETERS,
    """## Setup

Check the parameters, start the records file, load the model and encode one sample of every test
split, drawn with the first of `seeds` and shared by all training seeds. With the default seeds it is
the sample that notebooks 01–04 draw with their default `seed`, so their ID accuracies agree.""",
    setup("05_evaluation", "from dsenergy import hessian"),
    """test = bench.test_splits(["id_test", *ood_splits, *covariate_splits], n_per_split, seed=seeds[0])
detection_scores = [name for name in score_names if name in scores.SCORES]
training = dict(epochs=epochs, n_ctx=n_context, lr=learning_rate, top_c=top_c, crop_value=crop_value, bound=bound,
                temperature=temperature)
evaluation = dict(bundle=bench.bundle, scores=detection_scores, model_temperature=tau, positive=positive,
                  delta_energy_options={"top_c": top_c, "crop_value": crop_value})
print(f"seeds {seeds}, {shots}-shot training, scores {detection_scores}")""",
    """## Train and evaluate every method with every seed

The zero-shot classifier has no training, so its rows repeat across seeds with zero spread.""",
    """models = {}
for run_seed in seeds:
    models["zero-shot", run_seed] = bench.classifier
    models["CoOp", run_seed] = bench.train("coop", shots, run_seed, **training).prompt_learner
    models["CoOp+EBM", run_seed] = bench.train("coop_ebm", shots, run_seed, ebm_weight=ebm_weight, **training).prompt_learner

results = pd.concat([evaluate.evaluate_model(model, test, method=method, seed=run_seed, **evaluation)
                     for (method, run_seed), model in models.items()], ignore_index=True)
summary = evaluate.summarize_over_seeds(results)
runs = {}
for (method, run_seed), model in models.items():
    runs.setdefault(method, []).append(evaluate.per_image_scores(model, test, detection_scores, tau,
                                                            top_c=top_c, crop_value=crop_value))
records.record("results", results.drop(columns=["model", "pretrained", "weights_id"]), unit=f"positive = {positive}",
               description="one row per method, seed, split, score and metric")
records.record("summary", summary.drop(columns=["model", "weights_id"]), description="mean, std and count over seeds")""",
    """### Runs that failed to train

A training run whose ID accuracy ends far below the zero-shot classifier's, which it starts from, has
most likely diverged (a learning rate too high for this model and seed). Such a run stays in every
mean, standard deviation and interval below, as it would in a paper's table, so it is listed here.""",
    """id_accuracy = results[(results.metric == "accuracy") & (results.split == "id_test")].set_index(["method", "seed"])["value"]
zero_shot_accuracy = float(id_accuracy.xs("zero-shot", level="method").iloc[0])
lagging = id_accuracy[id_accuracy < zero_shot_accuracy - 0.10].drop("zero-shot", level="method", errors="ignore")
records.record("lagging_runs", [{"method": method, "seed": run_seed, "id_accuracy": value}
                                for (method, run_seed), value in lagging.items()],
               description="training runs with ID accuracy more than 0.10 below zero-shot")
if len(lagging):
    display(Markdown(f"**{len(lagging)} of {len(id_accuracy) - len(seeds)} training runs** end more than 10 points below "
                     f"the zero-shot ID accuracy ({zero_shot_accuracy:.3f}); a lower `learning_rate` may avoid this."))
    display(lagging.rename("ID accuracy").to_frame())
else:
    display(Markdown(f"Every training run ends within 10 points of the zero-shot ID accuracy ({zero_shot_accuracy:.3f})."))""",
    """## Detection

AUROC and FPR95 per method, score and OOD split, as mean ± std over seeds, with the bootstrap interval
of the seed-mean AUROC.""",
    """rows = []
for method, method_runs in runs.items():
    for name in detection_scores:
        for split in ood_splits:
            selected = results[(results.method == method) & (results.score == name) & (results.split == split)]
            interval = evaluate.auroc_ci(method_runs, name, split, n_bootstrap=n_bootstrap, confidence=confidence)
            rows.append({"method": method, "score": name, "ood_split": split,
                         "AUROC (mean ± std over seeds)": viz.mean_std(selected[selected.metric == "auroc"]["value"]),
                         "AUROC interval": f"[{interval['low']:.3f}, {interval['high']:.3f}]",
                         "FPR95 (mean ± std over seeds)": viz.mean_std(selected[selected.metric == "fpr95"]["value"]),
                         "auroc_seed_mean": interval["value"], "auroc_ci_low": interval["low"],
                         "auroc_ci_high": interval["high"]})
detection = pd.DataFrame(rows)
taus = {name: scores.reported_temperature(name, tau) for name in detection_scores}
caption = viz.table_caption(positive, taus) + f" Intervals: {confidence:.0%} bootstrap over test images, {n_bootstrap} resamples."
records.record("detection", detection, unit=caption)
display(Markdown(caption))
detection.pivot(index=["method", "score"], columns="ood_split", values=["AUROC (mean ± std over seeds)", "AUROC interval", "FPR95 (mean ± std over seeds)"])""",
    """## Classification accuracy under covariate shift

Top-1 accuracy on the ID test split and on each covariate split, mean ± std over seeds, and the
bootstrap interval of the seed-mean accuracy averaged over the covariate splits.""",
    """rows = []
for method, method_runs in runs.items():
    selected = results[(results.method == method) & (results.metric == "accuracy")]
    row = {"method": method}
    for split in ["id_test", *covariate_splits]:
        row[split] = viz.mean_std(selected[selected.split == split]["value"])
    interval = evaluate.accuracy_ci(method_runs, covariate_splits, n_bootstrap=n_bootstrap, confidence=confidence)
    row.update({"covariate mean [interval]": f"{interval['value']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]",
                "covariate_seed_mean": interval["value"], "covariate_ci_low": interval["low"],
                "covariate_ci_high": interval["high"]})
    rows.append(row)
accuracy = pd.DataFrame(rows)
records.record("accuracy", accuracy, unit="top-1 accuracy; mean ± std over seeds")
accuracy.drop(columns=["covariate_seed_mean", "covariate_ci_low", "covariate_ci_high"])""",
    """## Hessian consistency of every trained run

Notebook 03 explains the measure on one seed. Here every CoOp and CoOp+EBM run gets the same
measurement: the mean cross-entropy on the ID test images and on each covariate split, and against
the ID split the Hessian cosine and the normalised Frobenius difference, from `hutchinson_samples`
shared probes. The claim below compares the two methods seed by seed.""",
    """domains = {split: hessian.feature_batches(*test[split], batch_size=256) for split in ["id_test", *covariate_splits]}
hessian_settings = dict(reference="id_test", k=0, num_probes=hutchinson_samples, seed=seeds[0],
                        spectral_diff=False, progress=False, mode="reverse-over-reverse")
hessian_tables = {}
for (method, run_seed), model in models.items():
    if method == "zero-shot":
        continue
    _, theta = hessian.trainable_parameter(model)
    loss_fn = hessian.make_classifier_loss(tau, hessian.module_text_features(model))
    hessian_tables[method, run_seed] = hessian.hessian_consistency(loss_fn, theta, domains, **hessian_settings)
hessian_rows = [{"method": method, "seed": run_seed,
                 "mean Hessian cosine": table.loc[table.domain != "id_test", "hessian_cosine"].mean(),
                 "mean normalised Frobenius difference": table.loc[table.domain != "id_test", "frobenius_diff_normalized"].mean()}
                for (method, run_seed), table in hessian_tables.items()]
hessian_summary = pd.DataFrame(hessian_rows)
records.record("hessian_consistency", hessian_summary, description="mean over covariate splits against id_test, per run")
hessian_summary.set_index(["method", "seed"]).style.format("{:.4f}")""",
    """## Did the paper's claims hold here?

Each row names a claim, the gain it implies, the gain measured here with its interval, and the verdict
computed from the interval. The Hessian claims have one row per consistency metric. Each interval
resamples the seeds and carries the probe noise of every seed, so with a single seed there is no
interval and the claim is not evaluated.""",
    """claims = []

def add_claim(claim, split, interval, margin=0.0):
    claims.append({"claim": claim, "split": split, "margin": margin, "gain": interval["value"],
                   "ci_low": interval["low"], "ci_high": interval["high"],
                   "verdict": metrics.claim_verdict(interval["low"], interval["high"], margin)})

ci = dict(n_bootstrap=n_bootstrap, confidence=confidence)
baselines = [name for name in ("mcm", "msp", "energy", "max_logit") if name in detection_scores]
for split in ood_splits:
    if "delta_energy" in detection_scores and "mcm" in detection_scores:
        add_claim("zero-shot ΔE detects OOD better than zero-shot MCM (AUROC)", split,
                  evaluate.auroc_ci(runs["zero-shot"], "delta_energy", split, runs["zero-shot"], "mcm", **ci))
    if "delta_energy" in detection_scores:
        add_claim("CoOp+EBM raises the ΔE AUROC over CoOp", split,
                  evaluate.auroc_ci(runs["CoOp+EBM"], "delta_energy", split, runs["CoOp"], "delta_energy", **ci))
    if "delta_energy" in detection_scores and baselines:
        best = max(baselines, key=lambda name: evaluate.auroc_ci(runs["CoOp"], name, split, n_bootstrap=1)["value"])
        add_claim(f"CoOp+EBM with ΔE beats the best CoOp baseline ({best}) by at least 10 AUROC points", split,
                  evaluate.auroc_ci(runs["CoOp+EBM"], "delta_energy", split, runs["CoOp"], best, **ci), margin=0.10)
add_claim("CoOp+EBM raises covariate-shift accuracy over CoOp", "mean of covariate splits",
          evaluate.accuracy_ci(runs["CoOp+EBM"], covariate_splits, runs["CoOp"], **ci))

hessian_claims = {"hessian_cosine": ("CoOp+EBM gives more domain-consistent Hessians than CoOp (Hessian cosine)", False),
                  "frobenius_diff_normalized": ("CoOp+EBM gives more domain-consistent Hessians than CoOp "
                                                "(normalised Frobenius difference, CoOp minus CoOp+EBM)", True)}
for metric, (claim, baseline_first) in hessian_claims.items():
    ebm = [hessian_tables["CoOp+EBM", run_seed] for run_seed in seeds]
    coop = [hessian_tables["CoOp", run_seed] for run_seed in seeds]
    gain = hessian.seed_consistency_gain(*((coop, ebm) if baseline_first else (ebm, coop)), metric,
                                         n_bootstrap=n_bootstrap, confidence=confidence)
    if gain["n_seeds"] < 2:
        claims.append({"claim": claim, "split": "covariate splits vs id_test", "margin": 0.0, "gain": gain["value"],
                       "ci_low": None, "ci_high": None, "verdict": "not evaluated (needs two or more seeds)"})
    else:
        add_claim(claim, "covariate splits vs id_test", gain)

claims = pd.DataFrame(claims)
records.record("claims", claims, description=f"verdicts from {confidence:.0%} bootstrap intervals; smoke = {smoke}")
records.record("verdicts", claims["verdict"].value_counts().to_dict(), description="number of claims per verdict")
claims.style.format({"gain": "{:+.3f}", "ci_low": "{:+.3f}", "ci_high": "{:+.3f}", "margin": "{:.2f}"}, na_rep="–")""",
    """### Reading the verdicts

The intervals resample seeds (and test images or Hessian probes). With two or three seeds a gain is
*held* only when nearly every seed shows it, and a diverged run (listed above) widens the interval of
every comparison it enters. At smoke size (few shots, three epochs, two seeds, 200 images per split) the
verdicts carry little evidence. Run with the default sizes, or with a real CLIP on your own data,
before reading them as evidence.""",
]


def build_notebook(name: str) -> nbformat.NotebookNode:
    """Return the notebook ``name`` with empty outputs and stable cell ids."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for index, cell in enumerate(NOTEBOOK_CELLS[name]):
        cell_id = f"{name[:2]}-{index:02d}"
        if cell is PARAMETERS:
            node = nbformat.v4.new_code_cell(parameters_cell_source(name), id=cell_id)
            node.metadata["tags"] = ["parameters"]
        elif cell.lstrip().startswith("#"):
            node = nbformat.v4.new_markdown_cell(cell, id=cell_id)
        else:
            node = nbformat.v4.new_code_cell(cell, id=cell_id)
        notebook.cells.append(node)
    nbformat.validate(notebook)
    return notebook


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check``, compare) every notebook of the sequence."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed notebook differs from the generator")
    args = parser.parse_args(argv)

    stale = []
    for name in NOTEBOOKS:
        if name not in NOTEBOOK_CELLS:
            continue
        path = HERE / f"{name}.ipynb"
        text = nbformat.writes(build_notebook(name)) + "\n"
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        sys.stderr.write(f"notebooks differ from build_notebooks.py: {', '.join(stale)}; run it to rewrite them\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
