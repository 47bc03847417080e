"""Zero-shot vs CoOp vs CoOp+EBM on fashion-open, 16-shot, seeds 1, 2, 3: accuracy and OOD detection.

For every seed the script draws the K-shot training split and trains CoOp (CE only) and CoOp+EBM
(CE + λ·EBM) on cached image features. It evaluates both, and the zero-shot classifier (the demo
caption templates, averaged), on ``id_test``, every ``covariate/<shift>/<severity>`` split and the
near and far OOD splits.

λ is chosen before the main table unless ``--ebm-weight`` fixes it. For ``--sweep-seed`` the script
trains CoOp+EBM for every λ in ``--sweep-weights`` (and CoOp as the λ = 0 reference) and scores each
by ID accuracy on a validation set of ``id_train`` images outside that seed's K-shot split. The λ with
the highest validation accuracy wins, and ties go to the smaller λ. No test, covariate or OOD split
takes part in the choice.

Outputs under ``--out`` (default ``results/finetune/``):

* ``lambda_sweep.csv`` / ``.json`` / ``.md``: the sweep and the chosen λ;
* ``prompts/<method>-seed<s>.pt``: every trained prompt learner (``dsenergy.train.save_prompt_learner``);
* ``config.json``: every setting of the run, the chosen λ and the temperatures;
* ``finetune_runs.csv`` / ``.json``: the tidy per-seed table of :func:`dsenergy.evaluate.evaluate_model`;
* ``finetune_summary.csv`` / ``.json``: mean, standard deviation and seed count of every row;
* ``finetune_summary.md``: ID and mean covariate accuracy, near/far AUROC and FPR95 for MSP,
  Energy, MCM and ΔEnergy, as mean ± std over seeds, and the paired CoOp+EBM − CoOp differences.

Run: ``python scripts/finetune_table.py [--epochs 50] [--lr 0.002] [--ebm-weight 1.0] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from dsenergy._atomic import write_text_atomically
from dsenergy.data import fashion_open_splits, kshot_indices, load_fashion_open
from dsenergy.data._arrays import ArrayImageDataset
from dsenergy.demo import DEMO_MODEL_NAME, DEMO_TEMPLATES
from dsenergy.evaluate import evaluate_model, save_results, summarize_over_seeds
from dsenergy.features import cached_features
from dsenergy.models import build_zero_shot_classifier, load_clip
from dsenergy.train import TrainConfig, save_prompt_learner, train_prompts

logger = logging.getLogger("finetune_table")

REPO_ROOT = Path(__file__).resolve().parent.parent
SUMMARY_SCORES = ("msp", "energy", "mcm", "delta_energy")
SCORE_LABELS = {"msp": "MSP", "energy": "Energy", "mcm": "MCM", "delta_energy": "ΔEnergy"}
METHOD_LABELS = {"zeroshot": "zero-shot", "coop": "CoOp", "coop_ebm": "CoOp+EBM"}
SWEEP_WEIGHTS = (0.1, 1.0, 10.0, 100.0)
#: Largest AUROC gap, in percentage points, at which the summary calls ΔEnergy and MSP matching.
MSP_MATCH_TOLERANCE_PP = 1.0


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of the fine-tuning table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEMO_MODEL_NAME, help="open_clip model name (default: %(default)s)")
    parser.add_argument(
        "--pretrained", default=None,
        help="open_clip tag or checkpoint file (default: the model's own; the demo model loads its committed checkpoint)",
    )
    parser.add_argument("--shots", type=int, default=16, help="training images per class (default: %(default)s)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[1, 2, 3],
        help="seeds of the K-shot split and training (default: %(default)s)",
    )
    parser.add_argument("--epochs", type=int, default=50, help="training epochs per run (default: %(default)s)")
    parser.add_argument("--n-ctx", type=int, default=16, help="number of context vectors (default: %(default)s)")
    parser.add_argument(
        "--lr", type=float, default=TrainConfig.lr,
        help="SGD learning rate after the warm-up epoch (default: %(default)s)",
    )
    parser.add_argument(
        "--ebm-weight", type=float, default=None,
        help="λ of CoOp+EBM (default: chosen by the validation sweep over --sweep-weights)",
    )
    parser.add_argument(
        "--sweep-weights", type=float, nargs="+", default=list(SWEEP_WEIGHTS),
        help="λ values of the sweep (default: %(default)s)",
    )
    parser.add_argument("--sweep-seed", type=int, default=1, help="seed of the λ sweep (default: %(default)s)")
    parser.add_argument(
        "--val-per-class", type=int, default=100,
        help="validation images per class, drawn from id_train outside the sweep seed's K-shot split "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--top-c", type=int, default=1,
        help="cropped classes c of the EBM loss and the ΔEnergy score (default: %(default)s)",
    )
    parser.add_argument(
        "--crop-value", type=float, default=0.0,
        help="crop value a of the EBM loss and the ΔEnergy score (default: %(default)s)",
    )
    parser.add_argument(
        "--bound", default="lower", choices=["lower", "exact"], help="EBM training target (default: %(default)s)"
    )
    parser.add_argument(
        "--max-images", type=int, default=None,
        help="keep at most this many images per split, evenly strided, for smoke runs (default: all images)",
    )
    parser.add_argument(
        "--splits", nargs="*", default=None, help="evaluation splits (default: every fashion-open split but id_train)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument(
        "--out", default=str(REPO_ROOT / "results" / "finetune"),
        help="output folder (default: results/finetune in the repository, the committed tables, which a run overwrites)",
    )
    return parser


def load_split(name: str, max_images: int | None = None) -> ArrayImageDataset:
    """Load a fashion-open split, keeping every n-th image when ``max_images`` caps its size."""
    dataset = load_fashion_open(name)
    if max_images is None or len(dataset) <= max_images:
        return dataset
    stride = math.ceil(len(dataset) / max_images)
    keep = np.arange(0, len(dataset), stride)
    return ArrayImageDataset(
        dataset.images[keep], dataset.labels[keep], dataset.class_names, f"{dataset.identity}/every{stride}",
        ood_labels=None if dataset.ood_labels is None else dataset.ood_labels[keep],
        ood_class_names=dataset.ood_class_names,
    )


def split_features(bundle: Any, name: str, max_images: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the cached image features and labels of one split."""
    dataset = load_split(name, max_images)
    features = cached_features(bundle, dataset, dataset_id=dataset.identity, progress=False)
    return features, torch.tensor(dataset.labels, dtype=torch.long)


def validation_indices(labels: np.ndarray, exclude: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Draw ``per_class`` indices per class from the positions not in ``exclude`` (seeded, sorted)."""
    available = np.ones(len(labels), dtype=bool)
    available[exclude] = False
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        pool = np.flatnonzero(available & (labels == label))
        if len(pool) == 0:
            raise ValueError(f"class {label} has no id_train image outside the K-shot split; lower --shots")
        chosen.append(rng.choice(pool, size=min(per_class, len(pool)), replace=False))
    return np.sort(np.concatenate(chosen))


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject out-of-range options before any model is loaded, naming the option and the allowed range."""
    at_least_one = {"--shots": args.shots, "--epochs": args.epochs, "--n-ctx": args.n_ctx,
                    "--val-per-class": args.val_per_class, "--top-c": args.top_c}
    if args.max_images is not None:
        at_least_one["--max-images"] = args.max_images
    for option, value in at_least_one.items():
        if value < 1:
            parser.error(f"{option} must be at least 1, got {value}")
    if not args.lr > 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    if args.ebm_weight is not None and args.ebm_weight < 0:
        parser.error(f"--ebm-weight must be at least 0, got {args.ebm_weight}")
    if any(weight < 0 for weight in args.sweep_weights):
        parser.error(f"--sweep-weights must all be at least 0, got {args.sweep_weights}")


def train_config(args: argparse.Namespace, method: str, seed: int, ebm_weight: float) -> TrainConfig:
    """Return the training settings of one run."""
    return TrainConfig(
        method=method, n_ctx=args.n_ctx, epochs=args.epochs, lr=args.lr, ebm_weight=ebm_weight, top_c=args.top_c,
        crop_value=args.crop_value, bound=args.bound, seed=seed, progress=False,
    )


def _accuracy(learner: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        text_features = learner()
    return float(((features @ text_features.T).argmax(dim=1) == labels).float().mean())


def run_sweep(args, bundle, class_names, train_features, train_labels, train_identity) -> tuple[float, pd.DataFrame, dict]:
    """Train CoOp and CoOp+EBM for each λ on the sweep seed; choose λ by validation ID accuracy."""
    seed = args.sweep_seed
    kshot = kshot_indices(train_labels.numpy(), args.shots, seed, train_identity)
    validation = validation_indices(train_labels.numpy(), kshot, args.val_per_class, seed)
    data = (train_features[kshot], train_labels[kshot])
    val_features, val_labels = train_features[validation], train_labels[validation]

    rows, learners = [], {}
    for method, weight in [("coop", 0.0)] + [("coop_ebm", float(w)) for w in args.sweep_weights]:
        result = train_prompts(bundle, class_names, data, train_config(args, method, seed, weight))
        learners[(method, weight)] = result
        rows.append({
            "method": method, "ebm_weight": weight, "seed": seed,
            "val_accuracy": _accuracy(result.prompt_learner, val_features, val_labels),
            "train_accuracy": result.history[-1]["acc"], "train_ce": result.history[-1]["ce"],
            "train_ebm": result.history[-1]["ebm"], "n_val": len(validation), "n_train": len(kshot),
        })
        logger.info("sweep %s λ=%g: validation accuracy %.4f", method, weight, rows[-1]["val_accuracy"])

    sweep = pd.DataFrame(rows)
    candidates = sweep[sweep.method == "coop_ebm"].sort_values(["val_accuracy", "ebm_weight"], ascending=[False, True])
    chosen = float(candidates.iloc[0].ebm_weight)
    return chosen, sweep, learners


def sweep_markdown(sweep: pd.DataFrame, chosen: float, args: argparse.Namespace) -> str:
    """Render the λ sweep as a markdown table with the rule that chose λ."""
    lines = [
        f"# λ sweep for CoOp+EBM (seed {args.sweep_seed}, {args.shots}-shot, {args.epochs} epochs)",
        "",
        f"Validation set: {int(sweep.n_val.iloc[0])} id_train images ({args.val_per_class} per class at most) "
        f"outside the K-shot training split of seed {args.sweep_seed}. λ is chosen by the highest validation "
        "ID accuracy, ties to the smaller λ. No test, covariate or OOD split is used. CoOp (λ = 0) is listed "
        f"for reference only. EBM settings: c = {args.top_c}, a = {args.crop_value}, bound {args.bound!r}.",
        "",
        "| method | λ | validation acc (%) | final train acc (%) | final train CE | final train EBM |",
        "|---|---|---|---|---|---|",
    ]
    for row in sweep.itertuples():
        lines.append(
            f"| {METHOD_LABELS[row.method]} | {row.ebm_weight:g} | {100 * row.val_accuracy:.2f} | "
            f"{100 * row.train_accuracy:.1f} | {row.train_ce:.4f} | {row.train_ebm:.4f} |"
        )
    lines += ["", f"Chosen λ = {chosen:g}."]
    return "\n".join(lines) + "\n"


def per_seed_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Collapse the tidy table to one row per (method, seed) with the headline metrics."""
    per_seed = []
    for (method, seed), table in runs.groupby(["method", "seed"], sort=False):
        accuracy = table[table.metric == "accuracy"]
        record = {
            "method": method,
            "seed": seed,
            "ID acc": accuracy[accuracy.split_role == "id"].value.mean(),
            "covariate acc": accuracy[accuracy.split_role == "covariate"].value.mean(),
        }
        for score in SUMMARY_SCORES:
            for split in ("ood_near", "ood_far", "ood_clipart"):
                for metric, label in (("auroc", "AUROC"), ("fpr95", "FPR95")):
                    rows = table[(table.score == score) & (table.split == split) & (table.metric == metric)]
                    record[f"{SCORE_LABELS[score]} {split.removeprefix('ood_')} {label}"] = rows.value.mean()
        per_seed.append(record)
    return pd.DataFrame(per_seed)


def _mean_std(values: pd.Series) -> str:
    # One seed has no spread, so only the value is shown.
    if len(values) < 2:
        return f"{values.mean():.1f}"
    return f"{values.mean():.1f} ± {values.std():.1f}"


def size_note(config: dict[str, Any]) -> list[str]:
    """Return a warning paragraph for a reduced run (--max-images), or nothing for a full one."""
    if not config.get("max_images"):
        return []
    return [
        f"**Reduced run:** at most {config['max_images']} images per split (`--max-images`), so these numbers "
        "are a smoke check and not comparable with full-size tables.",
        "",
    ]


def summary_markdown(runs: pd.DataFrame, config: dict[str, Any]) -> str:
    """Render the main table and the paired CoOp+EBM − CoOp differences as markdown."""
    frame = per_seed_summary(runs)
    # Columns of splits that were not evaluated (--splits) are NaN for every run and are left out.
    columns = [column for column in frame.columns if column not in ("method", "seed") and frame[column].notna().any()]
    methods = list(frame.method.unique())
    taus = config["score_temperatures"]
    seed_count = frame.seed.nunique()
    if seed_count < 2:
        spread = "Values are from one seed, so no spread is shown, in percent."
    else:
        spread = f"Values are mean ± sample standard deviation over the {seed_count} seeds, in percent."
    lines = [
        f"# Fine-tuning on fashion-open ({config['shots']}-shot), seeds {', '.join(map(str, config['seeds']))}",
        "",
        f"Model {config['model']} (weights {config['weights_id']}). CoOp: {config['n_ctx']} generic context "
        f"vectors, {config['epochs']} epochs, SGD lr {config['train_settings']['lr']:g}, batch 32, one warm-up epoch, trained on cached "
        f"features. CoOp+EBM: λ = {config['ebm_weight']:g} ({config['ebm_weight_source']}), c = {config['top_c']}, "
        f"a = {config['crop_value']:g}, bound {config['bound']!r}, loss τ = {config['loss_temperature']:.4g} "
        f"(1 / the model's logit scale). Zero-shot averages {len(DEMO_TEMPLATES)} caption templates. {spread}",
        "",
        *size_note(config),
        "Metric convention: ID is the positive class; FPR95 is the fraction of OOD images accepted when 95 % "
        "of ID images are kept. Covariate accuracy is the mean over all covariate splits. Score temperatures "
        "τ: " + ", ".join(f"{SCORE_LABELS[s]} {taus[s]:.4g}" for s in SUMMARY_SCORES)
        + f"; ΔEnergy uses c = {config['top_c']}, a = {config['crop_value']:g}.",
        "",
        "| metric | " + " | ".join(METHOD_LABELS[m] for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for column in columns:
        cells = [_mean_std(100 * frame[frame.method == method][column]) for method in methods]
        lines.append(f"| {column} | " + " | ".join(cells) + " |")

    if {"coop", "coop_ebm"} <= set(methods):
        lines += ["", *difference_lines(frame, columns)]
    same_temperature = taus.get("msp") == taus.get("delta_energy")
    lines += ["", *finding_lines(frame, columns, top_c=config["top_c"], same_temperature=same_temperature)]
    if config.get("training"):
        lines += ["", *training_lines(config["training"])]
    return "\n".join(lines) + "\n"


def training_record(method: str, seed: int, ebm_weight: float, history: Sequence[dict[str, float]]) -> dict[str, Any]:
    """Summarise one run's training curve: epochs, first-epoch, highest and final CE, and final training accuracy."""
    ce = [epoch["ce"] for epoch in history]
    return {
        "method": method, "seed": seed, "ebm_weight": ebm_weight, "epochs": len(history), "first_ce": ce[0],
        "max_ce": max(ce), "final_ce": ce[-1], "final_acc": history[-1]["acc"],
    }


def _run_names(runs: Sequence[dict[str, Any]]) -> str:
    return ", ".join(f"{METHOD_LABELS[run['method']]} seed {run['seed']}" for run in runs)


def training_lines(training: Sequence[dict[str, Any]]) -> list[str]:
    """Render the training curves of the main runs and state, per run, whether the training CE went down.

    A run whose first and final CE agree at the three decimals shown counts as unchanged, and a
    one-epoch run (``epochs`` 1) has no curve to judge.
    """
    lines = [
        "## Training",
        "",
        "Training cross-entropy on the K-shot set: mean over the first epoch (warm-up learning rate), highest "
        "epoch mean, and last epoch mean.",
        "",
        "| method | seed | first CE | highest CE | final CE | final train acc (%) |",
        "|---|---|---|---|---|---|",
    ]
    for run in training:
        lines.append(
            f"| {METHOD_LABELS[run['method']]} | {run['seed']} | {run['first_ce']:.3f} | {run['max_ce']:.3f} | "
            f"{run['final_ce']:.3f} | {100 * run['final_acc']:.1f} |"
        )

    single_epoch = [run for run in training if run.get("epochs") == 1]
    curves = [run for run in training if run.get("epochs") != 1]
    unchanged = [run for run in curves if f"{run['final_ce']:.3f}" == f"{run['first_ce']:.3f}"]
    higher = [run for run in curves if run not in unchanged and run["final_ce"] > run["first_ce"]]
    lower = [run for run in curves if run not in unchanged and run["final_ce"] < run["first_ce"]]
    lines.append("")
    if single_epoch:
        lines.append(
            f"{_run_names(single_epoch)} trained for one epoch, so the first and final CE come from the same epoch "
            "and do not show whether training converged."
        )
    if higher:
        subject = "this run weighs" if len(higher) == 1 else "these runs weigh"
        lines.append(
            f"Training did not converge for {_run_names(higher)}: the final training CE is above the first epoch's, "
            f"so {subject} on every mean and paired difference above."
        )
    if unchanged:
        lines.append(f"The training CE of {_run_names(unchanged)} did not change from the first epoch at the precision shown.")
    if lower and len(lower) == len(training):
        lines.append("Every run ended with a lower training CE than its first epoch.")
    elif lower:
        lines.append(f"{len(lower)} of {len(training)} runs ended with a lower training CE than their first epoch.")
    return lines


def _change_clauses(change: pd.Series, columns: Sequence[str]) -> str:
    """Describe one method's change against zero-shot in the accuracy and mean AUROC columns that were evaluated."""
    clauses = []
    if "ID acc" in columns:
        clauses.append(f"ID accuracy {change['ID acc']:+.1f} pp")
    if "covariate acc" in columns:
        clauses.append(f"covariate accuracy {change['covariate acc']:+.1f} pp")
    auroc_columns = [column for column in columns if column.endswith("AUROC")]
    if auroc_columns:
        clauses.append(
            f"AUROC {change[auroc_columns].mean():+.1f} pp on average over the {len(auroc_columns)} score × OOD-set pairs"
        )
    return ", ".join(clauses)


def _paired_difference_line(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    """State which CoOp+EBM − CoOp differences are consistent over seeds, or that one seed cannot tell."""
    coop = frame[frame.method == "coop"].set_index("seed")[list(columns)]
    ebm = frame[frame.method == "coop_ebm"].set_index("seed")[list(columns)]
    seeds = coop.index.intersection(ebm.index)
    difference = 100 * (ebm.loc[seeds] - coop.loc[seeds])
    mean_sizes = difference.mean().abs().dropna()
    if mean_sizes.empty:
        return "- CoOp+EBM vs CoOp: no metric was computed for both methods on a shared seed."
    largest = mean_sizes.idxmax()
    if mean_sizes[largest] < 0.05:
        largest_text = "below 0.05 pp in size"
    else:
        largest_text = f"{difference[largest].mean():+.1f} pp ({largest})"

    if len(seeds) < 2:
        return (
            f"- CoOp+EBM vs CoOp: one seed, so no difference can be compared with a spread over seeds. "
            f"The largest difference is {largest_text}."
        )

    consistent = [
        column for column in columns
        if ((difference[column] > 0).all() or (difference[column] < 0).all())
        and abs(difference[column].mean()) > difference[column].std()
    ]
    # FPR95 is better when lower, every other column when higher.
    better = [column for column in consistent if (difference[column].mean() < 0) == column.endswith("FPR95")]
    worse = [column for column in consistent if column not in better]
    line = (
        f"- CoOp+EBM vs CoOp: {len(consistent)} of {len(columns)} metrics differ with the same sign on all "
        f"{len(seeds)} seeds and a mean larger than their standard deviation over seeds. Better with CoOp+EBM: "
        f"{', '.join(better) or 'none'}. Worse: {', '.join(worse) or 'none'}. The largest mean difference is "
        f"{largest_text}."
    )
    others = len(columns) - len(consistent)
    if others:
        subject = f"All {others}" if not consistent else f"The other {others}"
        line += (
            f" {subject} differences change sign between seeds or have a mean no larger than their "
            "standard deviation."
        )
    return line


def _msp_delta_energy_line(means: pd.DataFrame, columns: Sequence[str], top_c: int, same_temperature: bool) -> str | None:
    """Compare ΔEnergy with MSP AUROC; call them matching only when every gap is within the tolerance.

    The identity ΔEnergy = −τ log(1 − MSP + e^(a/τ) / Z) for c = 1 is cited only when both scores use the same τ.
    """
    gaps: dict[tuple[str, str], float] = {}
    for column in columns:
        delta_column = column.replace("MSP", "ΔEnergy", 1)
        if not (column.startswith("MSP ") and column.endswith("AUROC") and delta_column in columns):
            continue
        for method, gap in (means[delta_column] - means[column]).abs().items():
            if not math.isnan(gap):
                gaps[(method, column.removeprefix("MSP ").removesuffix(" AUROC"))] = float(gap)
    if not gaps:
        return None
    (method, split), largest = max(gaps.items(), key=lambda item: item[1])
    where = f"{METHOD_LABELS.get(method, method)} on the {split} OOD set"
    if top_c != 1:
        return f"- ΔEnergy (c = {top_c}) and MSP differ by up to {largest:.1f} pp AUROC ({where})."
    if largest <= MSP_MATCH_TOLERANCE_PP:
        line = (
            f"- ΔEnergy (c = 1) and MSP match within {MSP_MATCH_TOLERANCE_PP:g} pp AUROC for every method and OOD set "
            f"(largest gap {largest:.1f} pp, {where})."
        )
        if same_temperature:
            line += (
                " This is expected: with c = 1 and the same τ, ΔEnergy = −τ log(1 − MSP + e^(a/τ) / Z), a monotone "
                "function of MSP while the e^(a/τ) / Z term is small."
            )
        return line
    return (
        f"- ΔEnergy (c = 1) and MSP differ by up to {largest:.1f} pp AUROC ({where}), more than the "
        f"{MSP_MATCH_TOLERANCE_PP:g} pp within which this summary calls them matching, so here the two scores do not "
        "rank images alike."
    )


def finding_lines(frame: pd.DataFrame, columns: Sequence[str], top_c: int = 1, same_temperature: bool = True) -> list[str]:
    """State in sentences what the table shows, computed from the same per-seed numbers.

    Every sentence depends on the numbers: a claim is made only when they support it.
    """
    means = 100 * frame.groupby("method")[list(columns)].mean()
    lines = ["## What the table shows", ""]
    for method in ("coop", "coop_ebm"):
        if method in means.index and "zeroshot" in means.index:
            change = means.loc[method] - means.loc["zeroshot"]
            lines.append(f"- {METHOD_LABELS[method]} vs zero-shot: {_change_clauses(change, columns)}.")
    if {"coop", "coop_ebm"} <= set(means.index):
        lines.append(_paired_difference_line(frame, columns))
    msp_line = _msp_delta_energy_line(means, columns, top_c, same_temperature)
    if msp_line:
        lines.append(msp_line)
    return lines


def difference_lines(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Describe the paired per-seed differences CoOp+EBM − CoOp in percentage points."""
    coop = frame[frame.method == "coop"].set_index("seed")
    ebm = frame[frame.method == "coop_ebm"].set_index("seed")
    seeds = coop.index.intersection(ebm.index)
    lines = [
        f"## CoOp+EBM − CoOp, paired by seed (n = {len(seeds)})",
        "",
        "Mean ± std of the per-seed difference in percentage points. For FPR95 lower is better; for "
        "every other column higher is better. 'same sign' marks a difference whose sign agrees on every seed.",
        "",
        "| metric | difference (pp) | per seed | same sign |",
        "|---|---|---|---|",
    ]
    for column in columns:
        difference = 100 * (ebm.loc[seeds, column] - coop.loc[seeds, column])
        same_sign = bool((difference > 0).all() or (difference < 0).all())
        if len(seeds) < 2:
            agreement = "n/a (one seed)"
        else:
            agreement = "yes" if same_sign else "no"
        per_seed = ", ".join(f"{value:+.2f}" for value in difference)
        lines.append(f"| {column} | {_mean_std(difference)} | {per_seed} | {agreement} |")
    return lines


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the sweep and the main table; return the recorded configuration."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    bundle = load_clip(args.model, args.pretrained, device=args.device)
    train_set = load_split("id_train", args.max_images)
    class_names = list(train_set.class_names)
    train_features, train_labels = split_features(bundle, "id_train", args.max_images)
    split_names = args.splits or [name for name in fashion_open_splits() if name != "id_train"]
    splits = {}
    for name in split_names:
        features, labels = split_features(bundle, name, args.max_images)
        splits[name] = features if name.startswith("ood") else (features, labels)

    finished: dict[tuple[str, float, int], Any] = {}
    if args.ebm_weight is None:
        ebm_weight, sweep, sweep_runs = run_sweep(args, bundle, class_names, train_features, train_labels, train_set.identity)
        finished.update({(method, weight, args.sweep_seed): run for (method, weight), run in sweep_runs.items()})
        save_results(sweep, out / "lambda_sweep")
        write_text_atomically(out / "lambda_sweep.md", sweep_markdown(sweep, ebm_weight, args))
        source = f"chosen by validation ID accuracy from {sorted(args.sweep_weights)}, seed {args.sweep_seed}"
    else:
        ebm_weight, source = args.ebm_weight, "set with --ebm-weight"

    zero_shot = build_zero_shot_classifier(bundle, class_names, DEMO_TEMPLATES)
    delta_options = {"top_c": args.top_c, "crop_value": args.crop_value}
    tables, training = [], []
    for seed in args.seeds:
        tables.append(
            evaluate_model(zero_shot, splits, bundle=bundle, method="zeroshot", seed=seed, delta_energy_options=delta_options)
        )
        indices = torch.as_tensor(kshot_indices(train_labels.numpy(), args.shots, seed, train_set.identity))
        data = (train_features[indices], train_labels[indices])
        for method, weight in (("coop", 0.0), ("coop_ebm", ebm_weight)):
            config = train_config(args, method, seed, weight)
            result = finished.get((method, weight, seed)) or train_prompts(bundle, class_names, data, config)
            save_prompt_learner(
                result.prompt_learner, out / "prompts" / f"{method}-seed{seed}.pt",
                extra={"config": vars(config), "history": result.history}, weights_id=bundle.weights_id,
            )
            tables.append(
                evaluate_model(result.prompt_learner, splits, bundle=bundle, method=method, seed=seed,
                               delta_energy_options=delta_options)
            )
            training.append(training_record(method, seed, weight, result.history))
            logger.info("%s seed %d: final train ce %.4f, acc %.3f", method, seed, result.history[-1]["ce"], result.history[-1]["acc"])

    runs = pd.concat(tables, ignore_index=True)
    temperatures = runs[runs.metric == "auroc"].groupby("score").temperature.first().to_dict()
    config = {
        "model": bundle.name, "pretrained": args.pretrained, "weights_id": bundle.weights_id,
        "shots": args.shots, "seeds": args.seeds, "epochs": args.epochs, "n_ctx": args.n_ctx,
        "ebm_weight": ebm_weight, "ebm_weight_source": source, "sweep_weights": args.sweep_weights,
        "sweep_seed": args.sweep_seed, "val_per_class": args.val_per_class,
        "top_c": args.top_c, "crop_value": args.crop_value, "bound": args.bound,
        "loss_temperature": 1.0 / bundle.logit_scale, "score_temperatures": temperatures,
        "max_images": args.max_images, "splits": split_names, "metric_positive": "id",
        "train_settings": vars(train_config(args, "coop_ebm", 0, ebm_weight)),
        "training": training,
    }
    write_text_atomically(out / "config.json", json.dumps(config, indent=2) + "\n")
    save_results(runs, out / "finetune_runs")
    save_results(summarize_over_seeds(runs), out / "finetune_summary")
    write_text_atomically(out / "finetune_summary.md", summary_markdown(runs, config))
    logger.info("wrote %s in %.0f s", out, time.perf_counter() - started)
    return config


if __name__ == "__main__":
    main()
