"""Cross-domain Hessian consistency of zero-shot, CoOp and CoOp+EBM prompts on fashion-open.

θ is a prompt learner's context vectors (n_ctx × text width) and L_e(θ) the mean cross-entropy
of its cosine classifier (τ = 1 / the model's logit scale) on the cached image features of domain
e: ``id_test`` (the reference) and the ``covariate/<shift>/<severity>`` splits of ``--severities``
(default: every shift at severities 1, 2 and 3). The text features
are recomputed from θ through the frozen text tower, so every Hessian-vector product (HVP) runs
through the real open_clip text transformer.

* CoOp and CoOp+EBM: the learned context vectors saved by ``scripts/finetune_table.py`` under
  ``results/finetune/prompts/<method>-seed<s>.pt``.
* Zero-shot: the context vectors initialised from the phrase "a photo of a" (``TrainConfig`` with
  ``method="zeroshot"``). They enter the same text-tower map as the CoOp context, so the Hessians
  of all three methods are taken with respect to the same kind of parameter. The zero-shot
  text-feature matrix of the finetune table (18 templates averaged) would be a K×D matrix that
  bypasses the text tower, a different parameter space. Zero-shot accuracies here therefore belong
  to that single phrase. Its θ does not depend on the training seed, so it runs once, for the first seed.

Per domain, :func:`dsenergy.hessian.hessian_consistency` reports the top eigenvalues (Lanczos; none with ``--k 0``),
the Hutchinson trace, and against ``id_test``: the normalised Frobenius and spectral norms of
H_e − H_id, the Hessian cosine and the gradient gap. The accuracy drop acc(id_test) − acc(e)
of the same prompts is listed beside them. HVPs use ``mode="reverse-over-reverse"``. The Hessian operator runs
them on the math attention backend (:func:`dsenergy.hessian.math_attention`), because PyTorch's fused
CPU attention kernel has neither forward-mode derivatives nor a double backward.

Each finished (method, seed) table is kept under ``--out``/parts and reused by a later run with the
same model, domains, estimator settings and context vectors. Outputs under ``--out`` (default ``results/hessian/``): ``hessian_runs.csv`` / ``.json`` (one row per
method, seed and domain), ``hessian_summary.csv`` / ``.json`` (mean and std over seeds),
``hessian_summary.md`` and ``hessian_consistency.png``.

The defaults (18 shifted domains, k = 3, 12 Lanczos steps, 12 probes) are sized to finish within
about 15 minutes on two shared CPU cores, where one HVP through the demo text tower took 0.1–2 s
depending on the load. Fewer severities, steps or probes shorten the run.

Run: ``python scripts/hessian_table.py [--seeds 1 2 3] [--severities 1 2 3] [--iters 12] [--probes 12]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_table import METHOD_LABELS, load_split, size_note, split_features  # noqa: E402

from dsenergy import hessian  # noqa: E402
from dsenergy._atomic import write_text_atomically  # noqa: E402
from dsenergy.data import fashion_open_splits  # noqa: E402
from dsenergy.demo import DEMO_MODEL_NAME  # noqa: E402
from dsenergy.evaluate import save_results  # noqa: E402
from dsenergy.models import load_clip  # noqa: E402
from dsenergy.train import TrainConfig, load_prompt_learner, train_prompts  # noqa: E402

logger = logging.getLogger("hessian_table")

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE = "id_test"
METHODS = ("zeroshot", "coop", "coop_ebm")
INCONSISTENCY = "frobenius_diff_normalized"
PROMPTS_SOURCE = (
    "scripts/finetune_table.py writes them to the prompts folder under its --out "
    "(default results/finetune/prompts)"
)


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of the Hessian table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEMO_MODEL_NAME, help="open_clip model name (default: %(default)s)")
    parser.add_argument(
        "--pretrained", default=None,
        help="open_clip tag or checkpoint file (default: the model's own; the demo model loads its committed checkpoint)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[1, 2, 3], help="training seeds of the saved prompts (default: %(default)s)"
    )
    parser.add_argument(
        "--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods to compare (default: all three)"
    )
    parser.add_argument(
        "--prompts", default=str(REPO_ROOT / "results" / "finetune" / "prompts"),
        help="folder with a <method>-seed<s>.pt prompt file for every trained method in --methods and every seed "
        "in --seeds, as scripts/finetune_table.py writes them (default: results/finetune/prompts in the repository)",
    )
    parser.add_argument(
        "--domains", nargs="*", default=None,
        help="covariate splits compared with id_test (default: every shift at --severities)",
    )
    parser.add_argument(
        "--severities", type=int, nargs="+", default=[1, 2, 3],
        help="covariate severities of the default domains (default: %(default)s)",
    )
    parser.add_argument(
        "--k", type=int, default=3,
        help="top Hessian eigenvalues per domain, by Lanczos; 0 skips them, because the summary does not use them "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--iters", type=int, default=12,
        help="Lanczos steps for the eigenvalues and the spectral difference (default: %(default)s)",
    )
    parser.add_argument(
        "--probes", type=int, default=12,
        help="Rademacher probes for trace, Frobenius norms and cosine (default: %(default)s)",
    )
    parser.add_argument(
        "--max-images", type=int, default=None,
        help="keep at most this many images per split, evenly strided, for smoke runs (default: all images)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op CPU threads (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument(
        "--out", default=str(REPO_ROOT / "results" / "hessian"),
        help="output folder (default: results/hessian in the repository, the committed tables, which a run overwrites)",
    )
    return parser


def prompt_file_name(method: str, seed: int) -> str:
    """Return the name scripts/finetune_table.py gives the prompt file of one method and seed."""
    return f"{method}-seed{seed}.pt"


def check_prompt_files(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Report a --prompts folder without the prompt file of every trained method and seed as a parser error."""
    trained = [method for method in args.methods if method != "zeroshot"]
    if not trained:
        return
    prompts = Path(args.prompts)
    expected = [prompt_file_name(method, seed) for seed in args.seeds for method in trained]
    contents = (
        f"it must contain {', '.join(expected)} (<method>-seed<s>.pt for each of --methods {' '.join(trained)} "
        f"and --seeds {' '.join(map(str, args.seeds))}); {PROMPTS_SOURCE}"
    )
    if not prompts.is_dir():
        parser.error(f"--prompts {prompts} is not a folder; {contents}")
    missing = [name for name in expected if not (prompts / name).is_file()]
    if missing:
        parser.error(f"--prompts {prompts} lacks {', '.join(missing)}; {contents}")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject out-of-range options before any model is loaded, naming the option and the allowed range."""
    if args.k < 0:
        parser.error(f"--k must be at least 0 (0 skips the eigenvalues), got {args.k}")
    at_least_one = {"--iters": args.iters, "--probes": args.probes, "--threads": args.threads}
    if args.max_images is not None:
        at_least_one["--max-images"] = args.max_images
    for option, value in at_least_one.items():
        if value < 1:
            parser.error(f"{option} must be at least 1, got {value}")
    check_prompt_files(parser, args)


def prompt_learner(method: str, seed: int, bundle: Any, class_names: Sequence[str], prompts: Path) -> torch.nn.Module:
    """Return the prompt learner whose context vectors are θ for one method and seed.

    Raises:
        FileNotFoundError: the prompt file is missing from ``prompts``.
        ValueError: the prompt file was trained for other model weights or is no saved prompt learner.
    """
    if method == "zeroshot":
        return train_prompts(bundle, class_names, None, TrainConfig(method="zeroshot", seed=seed)).prompt_learner
    path = prompts / prompt_file_name(method, seed)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; the prompts folder must contain <method>-seed<s>.pt files, and {PROMPTS_SOURCE}")
    return load_prompt_learner(path, bundle)


def domain_accuracy(learner: torch.nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the top-1 accuracy of the learner's cosine classifier on cached features."""
    with torch.no_grad():
        text_features = learner()
    return float(((features @ text_features.T).argmax(dim=1) == labels).float().mean())


def compare_domains(learner, domains: dict[str, tuple[torch.Tensor, torch.Tensor]], temperature: float, args, seed: int) -> pd.DataFrame:
    """Run the Hessian consistency of one prompt learner and add each domain's accuracy drop."""
    loss_fn = hessian.make_classifier_loss(temperature, hessian.module_text_features(learner))
    _, theta = hessian.trainable_parameter(learner)
    batches = {name: [(features, labels)] for name, (features, labels) in domains.items()}
    table = hessian.hessian_consistency(
        loss_fn, theta, batches, reference=REFERENCE, k=args.k, iters=args.iters, num_probes=args.probes,
        seed=seed, mode="reverse-over-reverse", progress=False,
    )
    accuracy = {name: domain_accuracy(learner, *domains[name]) for name in domains}
    table["accuracy"] = table.domain.map(accuracy)
    table["accuracy_drop"] = accuracy[REFERENCE] - table["accuracy"]
    table["dim"] = theta.numel()
    return table


def spearman(frame: pd.DataFrame, column: str = INCONSISTENCY) -> dict[str, float]:
    """Return Spearman's ρ, its p-value and n between a Hessian column and the accuracy drop."""
    rows = frame[frame.domain != REFERENCE].dropna(subset=[column, "accuracy_drop"])
    if len(rows) < 3:
        return {"rho": float("nan"), "p_value": float("nan"), "n": len(rows)}
    result = spearmanr(rows[column], rows["accuracy_drop"])
    return {"rho": float(result.statistic), "p_value": float(result.pvalue), "n": len(rows)}


def per_seed_means(runs: pd.DataFrame) -> pd.DataFrame:
    """Average the shifted domains per method and seed (the reference row excluded)."""
    shifted = runs[runs.domain != REFERENCE]
    columns = [INCONSISTENCY, "spectral_diff_normalized", "hessian_cosine", "gradient_gap", "accuracy_drop", "accuracy"]
    return shifted.groupby(["method", "seed"], sort=False)[columns].mean().reset_index()


def summary_markdown(runs: pd.DataFrame, settings: dict[str, Any]) -> str:
    """Render the per-method comparison, the paired CoOp+EBM − CoOp differences and the correlations."""
    means = per_seed_means(runs)
    methods = list(means.method.unique())
    columns = {
        INCONSISTENCY: "‖H_e − H_id‖_F / (‖H_e‖_F + ‖H_id‖_F)",
        "spectral_diff_normalized": "‖H_e − H_id‖_2 / (‖H_e‖_F + ‖H_id‖_F)",
        "hessian_cosine": "Hessian cosine",
        "gradient_gap": "gradient gap ‖∇L_e − ∇L_id‖",
        "accuracy_drop": "accuracy drop acc(id) − acc(e) (fraction)",
    }
    if settings["k"] > 0:
        lanczos = f"top-{settings['k']} eigenvalues and spectral difference by Lanczos"
    else:
        lanczos = "no eigenvalues (--k 0); spectral difference by Lanczos"
    lines = [
        "# Hessian consistency across covariate shifts, fashion-open",
        "",
        f"Model {settings['model']} (weights {settings['weights_id']}). θ = context vectors, d = {settings['dim']} "
        f"({settings['n_ctx_by_method']}); zero-shot θ = the context initialised from \"a photo of a\". Loss: mean CE "
        f"with τ = {settings['temperature']:.4g}. Reference domain id_test; {settings['num_domains']} shifted domains. "
        f"Estimators: {lanczos} with at most "
        f"{settings['iters']} HVPs each, {settings['probes']} Rademacher probes for trace, Frobenius norms and "
        f"cosine, HVPs reverse-over-reverse under the math attention backend. Seeds {settings['seeds']}. "
        f"Run time {settings['seconds']:.0f} s{_reuse_note(settings)}.",
        "",
        *size_note(settings),
        "## Mean over shifted domains, mean ± std over seeds (the value alone for one seed)",
        "",
        "| quantity | " + " | ".join(METHOD_LABELS[m] for m in methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for column, label in columns.items():
        cells = [_mean_std(means[means.method == method][column], ".4g") for method in methods]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    if {"coop", "coop_ebm"} <= set(methods):
        coop = means[means.method == "coop"].set_index("seed")
        ebm = means[means.method == "coop_ebm"].set_index("seed")
        seeds = coop.index.intersection(ebm.index)
        lines += [
            "",
            f"## CoOp+EBM − CoOp, paired by seed (n = {len(seeds)})",
            "",
            "| quantity | difference mean ± std | per seed |",
            "|---|---|---|",
        ]
        for column, label in columns.items():
            difference = ebm.loc[seeds, column] - coop.loc[seeds, column]
            per_seed = ", ".join(f"{value:+.3g}" for value in difference)
            lines.append(f"| {label} | {_mean_std(difference, '+.3g')} | {per_seed} |")

    lines += [
        "",
        "## Spearman correlation between Hessian inconsistency and accuracy drop across shifted domains",
        "",
        "| rows | quantity | ρ | p | n |",
        "|---|---|---|---|---|",
    ]
    for column in (INCONSISTENCY, "hessian_cosine", "gradient_gap"):
        groups = [("all methods", runs)] + [(METHOD_LABELS[m], runs[runs.method == m]) for m in methods]
        for name, frame in groups:
            stats = spearman(frame, column)
            lines.append(f"| {name} | {column} | {stats['rho']:+.3f} | {stats['p_value']:.3g} | {stats['n']} |")
    lines += [
        "",
        "Rows of one method share its prompts across domains, so the n points are not independent samples. "
        "Read p as descriptive.",
        "",
        *finding_lines(runs, means),
    ]
    return "\n".join(lines) + "\n"


def _mean_std(values: pd.Series, mean_format: str) -> str:
    """Format a mean ± sample std over seeds, or the value alone for one seed, which has no spread."""
    if len(values) < 2:
        return format(values.mean(), mean_format)
    return f"{format(values.mean(), mean_format)} ± {values.std():.2g}"


def finding_lines(runs: pd.DataFrame, means: pd.DataFrame) -> list[str]:
    """State in sentences whether CoOp+EBM was more consistent than CoOp, from the per-seed means."""
    lines = ["## What the table shows", ""]
    if {"coop", "coop_ebm"} <= set(means.method):
        coop = means[means.method == "coop"].set_index("seed")
        ebm = means[means.method == "coop_ebm"].set_index("seed")
        seeds = coop.index.intersection(ebm.index)
        # Lower is more consistent for the differences and the drop; higher for the cosine.
        checks = (
            (INCONSISTENCY, "a smaller normalised Frobenius difference", -1),
            ("hessian_cosine", "a larger Hessian cosine", 1),
            ("accuracy_drop", "a smaller accuracy drop", -1),
        )
        for column, wording, better_sign in checks:
            difference = ebm.loc[seeds, column] - coop.loc[seeds, column]
            wins = int((np.sign(difference) == better_sign).sum())
            lines.append(
                f"- CoOp+EBM had {wording} than CoOp on {wins} of {len(seeds)} seeds "
                f"(paired difference {_mean_std(difference, '+.3g')})."
            )
    shifted = runs[runs.domain != REFERENCE]
    lines.append(
        f"- Probe noise: the median jackknife standard error of one normalised Frobenius difference is "
        f"{shifted[INCONSISTENCY + '_se'].median():.2g} and of one Hessian cosine "
        f"{shifted['hessian_cosine_se'].median():.2g}, next to medians of {shifted[INCONSISTENCY].median():.2g} "
        f"and {shifted['hessian_cosine'].median():.2g}."
    )
    pooled = spearman(runs)
    lines.append(
        f"- Across all shifted domains, methods and seeds, Spearman ρ between the normalised Frobenius difference "
        f"and the accuracy drop is {pooled['rho']:+.2f} (n = {pooled['n']})."
    )
    return lines


def plot(runs: pd.DataFrame, path: Path) -> None:
    """Scatter the normalised Frobenius difference and the Hessian cosine against the accuracy drop."""
    shifted = runs[runs.domain != REFERENCE]
    grouped = shifted.groupby(["method", "domain"], sort=False)
    means, stds = grouped.mean(numeric_only=True), grouped.std(numeric_only=True)
    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    panels = (
        (INCONSISTENCY, "‖H_e − H_id‖_F / (‖H_e‖_F + ‖H_id‖_F)"),
        ("hessian_cosine", "Hessian cosine tr(H_e H_id) / (‖H_e‖_F ‖H_id‖_F)"),
    )
    for axis, (column, label) in zip(axes, panels):
        for method in shifted.method.unique():
            x = means.loc[method, column]
            y = 100 * means.loc[method, "accuracy_drop"]
            axis.errorbar(
                x, y, xerr=stds.loc[method, column].fillna(0), yerr=100 * stds.loc[method, "accuracy_drop"].fillna(0),
                fmt="o", capsize=2, alpha=0.8, label=METHOD_LABELS[method],
            )
        axis.set_xlabel(f"{label} (dimensionless)")
        axis.set_ylabel("accuracy drop vs id_test (percentage points)")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle("Hessian inconsistency vs accuracy drop per covariate domain (mean ± std over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _settings_key(args: argparse.Namespace, names: Sequence[str], learner: torch.nn.Module, bundle: Any) -> str:
    """Hash everything a per-method table depends on, so a finished table is reused only for the same run."""
    content = json.dumps(
        [bundle.weights_id, list(names), args.k, args.iters, args.probes, args.max_images,
         learner.context_vectors.detach().flatten().tolist()]
    )
    return hashlib.sha256(content.encode()).hexdigest()[:12]


def _reuse_note(settings: dict[str, Any]) -> str:
    """Return the run-time remark on (method, seed) parts taken from an earlier run, or an empty string."""
    reused = settings.get("reused_parts", 0)
    if not reused:
        return ""
    return (
        f", with {reused} of {settings['parts']} (method, seed) parts reused from an earlier run with the same "
        "settings, whose compute time is not included"
    )


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    """Compute the Hessian table for every method and seed; write tables, summary and plot."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    bundle = load_clip(args.model, args.pretrained, device=args.device)
    temperature = 1.0 / bundle.logit_scale
    class_names = list(load_split(REFERENCE, args.max_images).class_names)

    # Every prompt file is loaded, and checked against the model, before any feature or Hessian is computed.
    learners = {}
    for seed in args.seeds:
        for method in args.methods:
            if method == "zeroshot" and seed != args.seeds[0]:
                continue
            try:
                learners[(method, seed)] = prompt_learner(method, seed, bundle, class_names, Path(args.prompts))
            except ValueError as error:
                parser.error(f"--prompts: {error}")

    shifted = [s for s in fashion_open_splits() if s.startswith("covariate/") and int(s.rsplit("/", 1)[1]) in args.severities]
    names = [REFERENCE] + (args.domains or shifted)
    domains = {name: split_features(bundle, name, args.max_images) for name in names}

    tables, n_ctx, reused = [], {}, 0
    for (method, seed), learner in learners.items():
        n_ctx[METHOD_LABELS[method]] = f"{learner.n_ctx}×{learner.context_vectors.shape[-1]}"
        part = out / "parts" / f"{method}-seed{seed}-{_settings_key(args, names, learner, bundle)}.csv"
        if part.is_file():
            logger.info("reusing %s", part)
            tables.append(pd.read_csv(part))
            reused += 1
            continue
        step = time.perf_counter()
        table = compare_domains(learner, domains, temperature, args, seed)
        table.insert(0, "seed", seed)
        table.insert(0, "method", method)
        write_text_atomically(part, table.to_csv(index=False))
        tables.append(table)
        logger.info("%s seed %d: %d domains in %.0f s", method, seed, len(domains), time.perf_counter() - step)

    runs = pd.concat(tables, ignore_index=True)
    numeric = [column for column in runs.select_dtypes("number").columns if column != "seed"]
    summary = runs.groupby(["method", "domain"], sort=False)[numeric].agg(["mean", "std"])
    summary.columns = [f"{column}_{stat}" for column, stat in summary.columns]
    settings = {
        "model": bundle.name, "weights_id": bundle.weights_id, "temperature": temperature,
        "dim": sorted(set(runs.dim.tolist())), "n_ctx_by_method": n_ctx, "num_domains": len(names) - 1,
        "k": args.k, "iters": args.iters, "probes": args.probes, "seeds": args.seeds,
        "hvp_mode": "reverse-over-reverse", "attention_backend": "math", "max_images": args.max_images,
        "seconds": time.perf_counter() - started, "parts": len(tables), "reused_parts": reused,
        "spearman": {
            method: spearman(runs if method == "all" else runs[runs.method == method])
            for method in ["all", *args.methods]
        },
    }
    save_results(runs, out / "hessian_runs")
    save_results(summary.reset_index(), out / "hessian_summary")
    write_text_atomically(out / "settings.json", json.dumps(settings, indent=2) + "\n")
    write_text_atomically(out / "hessian_summary.md", summary_markdown(runs, settings))
    plot(runs, out / "hessian_consistency.png")
    logger.info("wrote %s in %.0f s", out, settings["seconds"])
    return runs


if __name__ == "__main__":
    main()
