"""Detection and classification metrics with an explicit positive class.

Scores follow the kit's convention: higher = more in-distribution (ID). The positive class of the
detection metrics is a parameter:

- ``positive="id"`` (default, the MCM / LoCoOp / CRoFT lineage): ID samples are positives scored by
  ``s``. FPR95 is the fraction of OOD samples accepted when the threshold keeps 95 % of ID samples.
- ``positive="ood"`` (OpenOOD, pytorch-ood): OOD samples are positives scored by ``-s``. FPR95 is
  the fraction of ID samples rejected when the threshold catches 95 % of OOD samples.

AUROC is the same number under both conventions. AUPR-In is the average precision with ID as the
positive class and AUPR-Out with OOD as the positive class, whichever convention the table uses.
Ties are grouped as in scikit-learn: tied scores share one threshold.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Sequence

import numpy as np
import torch

__all__ = [
    "auroc",
    "fpr_at_tpr",
    "aupr_in",
    "aupr_out",
    "accuracy",
    "evaluate_ood",
    "bootstrap_ci",
    "paired_bootstrap",
    "claim_verdict",
    "rank_agreement",
    "METRICS",
]

Positive = Literal["id", "ood"]
ArrayLike = np.ndarray | torch.Tensor | Sequence[float]


def _as_scores(values: ArrayLike, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty; pass at least one score")
    num_nan = int(np.isnan(array).sum())
    if num_nan:
        raise ValueError(f"{name} contains {num_nan} NaN value(s) of {array.size}; fix or drop them before scoring")
    return array


def _positives_and_negatives(
    id_scores: ArrayLike, ood_scores: ArrayLike, positive: Positive
) -> tuple[np.ndarray, np.ndarray]:
    """Return (positive scores, negative scores), both oriented so that higher = more positive."""
    id_array = _as_scores(id_scores, "id_scores")
    ood_array = _as_scores(ood_scores, "ood_scores")
    if positive == "id":
        return id_array, ood_array
    if positive == "ood":
        return -ood_array, -id_array
    raise ValueError(f"positive must be 'id' or 'ood', got {positive!r}")


def _roc_points(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (fpr, tpr) at every distinct threshold, from the highest score down, starting at (0, 0)."""
    scores = np.concatenate([positives, negatives])
    is_positive = np.concatenate([np.ones(positives.size), np.zeros(negatives.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, is_positive = scores[order], is_positive[order]

    # The last index of each run of tied scores is where that threshold's counts are complete.
    run_ends = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    true_positives = np.cumsum(is_positive)[run_ends]
    false_positives = (run_ends + 1) - true_positives
    tpr = np.r_[0.0, true_positives / positives.size]
    fpr = np.r_[0.0, false_positives / negatives.size]
    return fpr, tpr


def auroc(id_scores: ArrayLike, ood_scores: ArrayLike, positive: Positive = "id") -> float:
    """Return the area under the ROC curve (trapezoidal; ties count one half)."""
    fpr, tpr = _roc_points(*_positives_and_negatives(id_scores, ood_scores, positive))
    return float(np.trapezoid(tpr, fpr))


def fpr_at_tpr(
    id_scores: ArrayLike, ood_scores: ArrayLike, tpr: float = 0.95, positive: Positive = "id"
) -> float:
    """Return the false-positive rate at the first threshold whose true-positive rate reaches ``tpr``."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    fpr_curve, tpr_curve = _roc_points(*_positives_and_negatives(id_scores, ood_scores, positive))
    # A tiny slack keeps 0.95 reachable when 0.95 · n is an integer that floating point rounds down.
    index = int(np.searchsorted(tpr_curve, tpr - 1e-12, side="left"))
    return float(fpr_curve[index])


def _average_precision(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Return the average precision Σ_n (R_n − R_{n−1}) P_n over distinct thresholds."""
    fpr, tpr = _roc_points(positives, negatives)
    true_positives = tpr[1:] * positives.size
    predicted_positives = true_positives + fpr[1:] * negatives.size
    precision = true_positives / predicted_positives
    return float(np.sum(np.diff(tpr) * precision))


def aupr_in(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Return the area under the precision–recall curve with ID samples as positives."""
    return _average_precision(*_positives_and_negatives(id_scores, ood_scores, "id"))


def aupr_out(id_scores: ArrayLike, ood_scores: ArrayLike) -> float:
    """Return the area under the precision–recall curve with OOD samples as positives."""
    return _average_precision(*_positives_and_negatives(id_scores, ood_scores, "ood"))


def accuracy(predictions_or_logits: ArrayLike, labels: ArrayLike) -> float:
    """Return top-1 accuracy from class predictions (N,) or logits/similarities (N, K)."""
    predictions = np.asarray(
        predictions_or_logits.detach().cpu().numpy()
        if isinstance(predictions_or_logits, torch.Tensor)
        else predictions_or_logits
    )
    targets = np.asarray(labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels)
    num_classes = predictions.shape[1] if predictions.ndim == 2 else None
    if predictions.ndim == 2:
        predictions = predictions.argmax(axis=1)
    if predictions.shape != targets.shape or targets.ndim != 1:
        raise ValueError(
            f"predictions of shape {predictions.shape} do not match labels of shape {targets.shape}; "
            "pass (N,) predictions or (N, K) logits with (N,) labels"
        )
    if targets.size == 0:
        raise ValueError("labels is empty; accuracy needs at least one sample")
    if not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(f"labels must be integer class indices, got dtype {targets.dtype}")
    # A label outside [0, K) can never match and would silently count as an error. OOD samples
    # (label -1 in the kit's datasets) belong in the detection metrics, not here.
    upper = num_classes if num_classes is not None else np.inf
    if targets.min() < 0 or targets.max() >= upper:
        bound = f"[0, {num_classes - 1}]" if num_classes is not None else "the non-negative integers"
        raise ValueError(
            f"labels must be class indices in {bound}, got values in [{targets.min()}, {targets.max()}]; "
            "drop OOD samples (label -1) before computing accuracy"
        )
    return float(np.mean(predictions == targets))


def evaluate_ood(
    id_scores: ArrayLike,
    ood_scores: ArrayLike,
    positive: Positive = "id",
    tpr: float = 0.95,
) -> dict[str, float | int | str]:
    """Return AUROC, FPR at ``tpr``, AUPR-In and AUPR-Out, with the convention and sample counts.

    Keys: ``auroc``, ``fpr95`` (FPR at ``tpr``, named for the default), ``aupr_in``, ``aupr_out``,
    ``positive``, ``tpr``, ``n_id``, ``n_ood``.
    """
    id_array = _as_scores(id_scores, "id_scores")
    ood_array = _as_scores(ood_scores, "ood_scores")
    return {
        "auroc": auroc(id_array, ood_array, positive),
        "fpr95": fpr_at_tpr(id_array, ood_array, tpr, positive),
        "aupr_in": aupr_in(id_array, ood_array),
        "aupr_out": aupr_out(id_array, ood_array),
        "positive": positive,
        "tpr": tpr,
        "n_id": int(id_array.size),
        "n_ood": int(ood_array.size),
    }


METRICS: dict[str, Callable[..., float]] = {
    "auroc": auroc,
    "fpr95": fpr_at_tpr,
    "aupr_in": lambda id_scores, ood_scores, positive="id": aupr_in(id_scores, ood_scores),
    "aupr_out": lambda id_scores, ood_scores, positive="id": aupr_out(id_scores, ood_scores),
}


def bootstrap_ci(
    id_scores: ArrayLike,
    ood_scores: ArrayLike,
    metric: str = "auroc",
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    positive: Positive = "id",
) -> dict[str, float]:
    """Return a percentile bootstrap confidence interval for a detection metric.

    ID and OOD scores are resampled with replacement separately, so each resample keeps both
    sample counts. Returns ``{"value", "low", "high", "confidence", "num_resamples"}``.
    """
    if metric not in METRICS:
        raise KeyError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be at least 1, got {num_resamples}")

    id_array = _as_scores(id_scores, "id_scores")
    ood_array = _as_scores(ood_scores, "ood_scores")
    metric_fn = METRICS[metric]
    interval = paired_bootstrap(
        lambda id_index, ood_index: metric_fn(id_array[id_index], ood_array[ood_index], positive=positive),
        (id_array.size, ood_array.size), num_resamples, confidence, seed,
    )
    return {key: interval[key] for key in ("value", "low", "high", "confidence")} | {"num_resamples": num_resamples}


def rank_agreement(first: ArrayLike, second: ArrayLike, chunk: int = 512) -> float:
    """Return the fraction of sample pairs that two scores order the same way, among pairs both order strictly.

    1.0 means every pair that both scores separate is ordered identically (the scores are monotone
    functions of each other up to ties); pairs tied under either score are left out.
    """
    a, b = _as_scores(first, "first"), _as_scores(second, "second")
    if a.shape != b.shape:
        raise ValueError(f"scores must be of equal length, got shapes {a.shape} and {b.shape}")
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


def paired_bootstrap(
    statistic: Callable[..., float],
    sizes: Sequence[int],
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Return ``statistic`` and a percentile bootstrap interval, resampling each index set with replacement.

    ``statistic(*indices)`` receives one index array per entry of ``sizes`` (e.g. ID and OOD test
    images) and returns a float. Every method compared inside it sees the same resampled indices, so
    a difference between methods is bootstrapped as a paired quantity.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be at least 1, got {n_bootstrap}")
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
    if math.isnan(low) or math.isnan(high) or low > high:
        raise ValueError(f"the interval must satisfy low <= high without NaN, got [{low}, {high}]")
    if low > threshold:
        return "held"
    if high < threshold:
        return "contradicted"
    return "not supported"
