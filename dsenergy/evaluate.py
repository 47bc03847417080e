"""Evaluation of a CLIP classifier: accuracy on ID and covariate-shifted splits, OOD detection per score.

:func:`evaluate_model` returns a tidy (long) table with one row per (split, score, metric):

* ``metric="accuracy"`` rows for every labelled split (role ``id`` or ``covariate``), with an
  empty ``score``;
* ``auroc``, ``fpr95``, ``aupr_in`` and ``aupr_out`` rows for every OOD split and every score,
  computed against the ID split's scores with :func:`dsenergy.metrics.evaluate_ood`.

Every row names the model, its weights, the training method and seed, the temperature ``τ`` the
score used and the metric convention (``positive="id"``: FPR95 is the fraction of OOD images
accepted when 95 % of ID images are kept).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from dsenergy._atomic import write_text_atomically
from dsenergy.metrics import auroc, evaluate_ood, paired_bootstrap
from dsenergy.prompts import PromptLearner
from dsenergy.scores import (
    SCORES,
    compute_score,
    delta_energy_feature_mask,
    reported_temperature,
    score_temperature,
)

__all__ = [
    "DEFAULT_SCORES",
    "OOD_METRICS",
    "RESULT_COLUMNS",
    "EvalSplit",
    "split_role",
    "similarity_function",
    "evaluate_model",
    "save_results",
    "summarize_over_seeds",
    "compute_scores",
    "detection_table",
    "headline_metrics",
    "headline_row",
    "per_image_scores",
    "auroc_ci",
    "accuracy_ci",
]

logger = logging.getLogger(__name__)

DEFAULT_SCORES: tuple[str, ...] = ("msp", "energy", "max_logit", "mcm", "delta_energy")
OOD_METRICS: tuple[str, ...] = ("auroc", "fpr95", "aupr_in", "aupr_out")
RESULT_COLUMNS: tuple[str, ...] = (
    "model", "pretrained", "weights_id", "method", "seed", "split", "split_role", "score",
    "temperature", "metric", "value", "positive", "n_id", "n_split",
)
_ROLES = ("id", "covariate", "ood")

SimilarityFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EvalSplit:
    """Image features of one split, with labels for ID and covariate splits, and the split's role."""

    features: torch.Tensor
    labels: torch.Tensor | None = None
    role: str = "id"


def split_role(name: str) -> str:
    """Infer a split's role from its name: ``id*`` → id, ``covariate*`` → covariate, ``ood*`` → ood."""
    for role in _ROLES:
        if name.startswith(role):
            return role
    raise ValueError(
        f"cannot infer the role of split {name!r} from its name; pass EvalSplit(features, labels, role=...) "
        f"with role one of {_ROLES}"
    )


def _as_split(name: str, value: Any) -> EvalSplit:
    if isinstance(value, EvalSplit):
        split = value
    elif isinstance(value, torch.Tensor):
        split = EvalSplit(value, None, split_role(name))
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        features, labels = value
        split = EvalSplit(torch.as_tensor(features), None if labels is None else torch.as_tensor(labels), split_role(name))
    else:
        raise TypeError(f"split {name!r}: expected EvalSplit, features or (features, labels), got {type(value).__name__}")
    if split.role not in _ROLES:
        raise ValueError(f"split {name!r} has role {split.role!r}; choose one of {_ROLES}")
    if split.role != "ood" and split.labels is None:
        raise ValueError(f"split {name!r} has role {split.role!r} but no labels; accuracy needs labels")
    return split


def similarity_function(model: Any) -> SimilarityFn:
    """Turn a prompt learner, a zero-shot classifier, a ``K × D`` text-feature matrix or a callable into ``z ↦ s``."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    if isinstance(model, PromptLearner):
        # The learner's text features are computed once here and reused for every batch.
        with torch.no_grad():
            model = model()
    if hasattr(model, "similarities"):
        return model.similarities
    if isinstance(model, torch.Tensor):
        text_features = F.normalize(model.detach().float(), dim=-1)
        return lambda image_features: F.normalize(image_features.float(), dim=-1).to(text_features.device) @ text_features.t()
    if callable(model):
        return model
    raise TypeError(
        f"cannot compute similarities with {type(model).__name__}; pass a PromptLearner, a ZeroShotClassifier, "
        "a K×D text-feature tensor or a callable image_features -> similarities"
    )


def _score_temperatures(
    scores: Sequence[str], model_temperature: float, temperatures: float | Mapping[str, float] | None
) -> dict[str, float]:
    if temperatures is None or isinstance(temperatures, Mapping):
        overrides = dict(temperatures or {})
        unknown = sorted(set(overrides) - set(scores))
        if unknown:
            raise ValueError(f"temperatures given for scores {unknown} that are not evaluated; scores are {list(scores)}")
        return {name: score_temperature(name, model_temperature, overrides.get(name)) for name in scores}
    return {name: score_temperature(name, model_temperature, float(temperatures)) for name in scores}


def evaluate_model(
    model: Any,
    splits: Mapping[str, Any],
    bundle: Any = None,
    scores: Sequence[str] = DEFAULT_SCORES,
    temperatures: float | Mapping[str, float] | None = None,
    model_temperature: float | None = None,
    method: str = "",
    seed: int | None = None,
    positive: str = "id",
    delta_energy_options: Mapping[str, float] | None = None,
    batch_size: int = 4096,
) -> pd.DataFrame:
    """Evaluate accuracy and OOD detection of ``model`` on feature splits; return a tidy table.

    Args:
        model: a :class:`~dsenergy.prompts.PromptLearner`, a zero-shot classifier (``similarities``
            method), a ``K × D`` text-feature tensor or a callable from image features to cosines.
        splits: split name → :class:`EvalSplit`, ``(features, labels)`` or OOD features. Roles come
            from the names (``id_test``, ``covariate/<shift>/<severity>``, ``ood_near``) unless given.
            OOD metrics need exactly one ``id`` split.
        bundle: the :class:`~dsenergy.models.ClipBundle`; names the model and gives ``τ = 1/logit_scale``.
        scores: names from :data:`dsenergy.scores.SCORES`.
        temperatures: one τ for every score, or score name → τ; other scores use their default
            (:func:`dsenergy.scores.score_temperature`).
        model_temperature: the model's τ when ``bundle`` is ``None``.
        method, seed: recorded in the table.
        positive: metric convention, ``"id"`` or ``"ood"``.
        delta_energy_options: ``top_c`` and ``crop_value`` for the ``delta_energy`` score.
    """
    if model_temperature is None:
        if bundle is None:
            raise ValueError("pass bundle or model_temperature; the scores need the model's temperature τ")
        model_temperature = 1.0 / bundle.logit_scale
    similarity = similarity_function(model)
    taus = _score_temperatures(scores, model_temperature, temperatures)
    parsed = {name: _as_split(name, value) for name, value in splits.items()}
    id_names = [name for name, split in parsed.items() if split.role == "id"]
    ood_names = [name for name, split in parsed.items() if split.role == "ood"]
    if ood_names and len(id_names) != 1:
        raise ValueError(f"OOD metrics need exactly one ID split, got {id_names}; name it id_* or set role='id'")

    identity = {
        "model": getattr(bundle, "name", ""),
        "pretrained": getattr(bundle, "pretrained", None),
        "weights_id": getattr(bundle, "weights_id", ""),
        "method": method,
        "seed": seed,
    }
    rows: list[dict[str, Any]] = []
    similarities = {name: _similarities(similarity, split.features, batch_size) for name, split in parsed.items()}
    n_id = len(parsed[id_names[0]].features) if len(id_names) == 1 else None

    for name, split in parsed.items():
        if split.labels is None:
            continue
        labels = split.labels.to(similarities[name].device).long()
        accuracy = float((similarities[name].argmax(dim=1) == labels).float().mean())
        rows.append(_row(identity, name, split.role, "", None, "accuracy", accuracy, positive, n_id, len(labels)))

    if ood_names:
        id_name = id_names[0]
        options = dict(delta_energy_options or {})
        for score in scores:
            extra = options if score == "delta_energy" else {}
            id_scores = compute_score(score, similarities[id_name], model_temperature, taus[score], **extra)
            shown_temperature = reported_temperature(score, model_temperature, taus[score])
            for ood_name in ood_names:
                ood_scores = compute_score(score, similarities[ood_name], model_temperature, taus[score], **extra)
                metrics = evaluate_ood(id_scores.cpu().numpy(), ood_scores.cpu().numpy(), positive=positive)
                for metric in OOD_METRICS:
                    rows.append(
                        _row(identity, ood_name, "ood", score, shown_temperature, metric, float(metrics[metric]),
                             positive, n_id, len(ood_scores))
                    )

    table = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    logger.info(
        "evaluated %s (%s, seed %s) on %d splits with scores %s: %d rows",
        identity["model"], method or "-", seed, len(parsed), list(scores), len(table),
    )
    return table


def _similarities(similarity: SimilarityFn, features: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        parts = [similarity(features[start : start + batch_size]).float() for start in range(0, len(features), batch_size)]
    return torch.cat(parts) if parts else torch.empty(0, 0)


def _row(identity, split, role, score, temperature, metric, value, positive, n_id, n_split) -> dict[str, Any]:
    return {
        **identity,
        "split": split,
        "split_role": role,
        "score": score,
        "temperature": temperature,
        "metric": metric,
        "value": value,
        "positive": positive,
        "n_id": n_id,
        "n_split": n_split,
    }


def summarize_over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """Return the mean, sample standard deviation and count of ``value`` over seeds for every other key."""
    keys = ["model", "weights_id", "method", "split", "split_role", "score", "temperature", "metric", "positive"]
    keys = [key for key in keys if key in table.columns]
    grouped = table.fillna({"temperature": -1.0}).groupby(keys, sort=False, dropna=False)["value"]
    summary = grouped.agg(mean="mean", std="std", n_seeds="count").reset_index()
    summary["temperature"] = summary["temperature"].where(summary["temperature"] >= 0)
    return summary


def save_results(table: pd.DataFrame, path_stem: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``table`` to ``<path_stem>.csv`` and ``<path_stem>.json`` (a list of records), atomically."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path = stem.with_name(stem.name + ".csv")
    json_path = stem.with_name(stem.name + ".json")
    records = json.loads(table.to_json(orient="records"))
    write_text_atomically(csv_path, table.to_csv(index=False))
    write_text_atomically(json_path, json.dumps(records, indent=2))
    logger.info("wrote %d rows to %s and %s", len(table), csv_path, json_path)
    return csv_path, json_path


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
    unknown = [name for name in names if name not in SCORES and name != "delta_energy_feature_mask"]
    if unknown:
        raise ValueError(f"unknown scores {unknown}; choose from {sorted(SCORES) + ['delta_energy_feature_mask']}")
    text = torch.nn.functional.normalize(text_features.float(), dim=1)
    similarities = torch.nn.functional.normalize(image_features.float(), dim=1) @ text.T
    values: dict[str, torch.Tensor] = {}
    taus: dict[str, float | None] = {}
    for name in names:
        if name == "delta_energy_feature_mask":
            # Not a similarity score, so it is not in SCORES; it uses the given τ or the model's.
            taus[name] = float(temperature) if temperature is not None else float(model_temperature)
            values[name] = delta_energy_feature_mask(image_features, text, taus[name], mask_fraction=mask_fraction)
        else:
            options = {"top_c": top_c, "crop_value": crop_value} if name == "delta_energy" else {}
            values[name] = compute_score(name, similarities, model_temperature, temperature, **options)
            taus[name] = reported_temperature(name, model_temperature, temperature)
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
    for split, per_score in ood_scores.items():
        for name in per_score:
            if name not in id_scores:
                raise ValueError(f"score {name!r} of OOD split {split!r} has no ID scores; id_scores has only {sorted(id_scores)}")
            if name not in temperatures:
                raise ValueError(
                    f"no temperature for score {name!r}; pass the τ of every score, as compute_scores returns them "
                    "(None for a score without τ)"
                )
    rows = []
    for split, per_score in ood_scores.items():
        for name, values in per_score.items():
            result = evaluate_ood(id_scores[name], values, positive=positive)
            rows.append({
                "ood_split": split, "score": name, "temperature": temperatures[name],
                "auroc": result["auroc"], "fpr95": result["fpr95"],
                "aupr_in": result["aupr_in"], "aupr_out": result["aupr_out"],
                "positive": positive, "n_id": result["n_id"], "n_ood": result["n_ood"],
            })
    return pd.DataFrame(rows)


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
    similarity = similarity_function(model)
    result: dict[str, dict[str, Any]] = {"scores": {}, "correct": {}}
    for split, value in test.items():
        features, labels = (value, None) if isinstance(value, torch.Tensor) else value
        with torch.no_grad():
            sims = similarity(features).float().cpu()
        result["scores"][split] = {}
        for name in score_names:
            options = {"top_c": top_c, "crop_value": crop_value} if name == "delta_energy" else {}
            values = compute_score(name, sims, model_temperature, temperature, **options)
            result["scores"][split][name] = values.detach().to("cpu", torch.float64).numpy()
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
    resample_seeds: bool = True,
) -> dict[str, float]:
    """Bootstrap interval of the seed-mean AUROC (ID positive), or of its gain over a baseline.

    ``runs`` contains one :func:`per_image_scores` result per seed, all on the same test images. ID and
    OOD images are resampled with replacement; every seed and the baseline see the same resample,
    so the gain is a paired difference. With ``resample_seeds`` (the default) each draw also
    resamples the seeds, so the interval covers the spread over training runs as well as over test
    images. ``baseline_runs`` then pairs with ``runs`` by position (the same seed at each position).
    With three seeds or fewer this interval is wide by construction: a gain is only "held" when it
    holds for nearly every seed.
    """
    def seed_mean(selected_runs: Sequence[Mapping[str, Any]], name: str, seed_index: np.ndarray,
                  id_index: np.ndarray, ood_index: np.ndarray) -> float:
        return float(np.mean([
            auroc(selected_runs[i]["scores"][id_split][name][id_index], selected_runs[i]["scores"][ood_split][name][ood_index])
            for i in seed_index
        ]))

    def statistic(seed_index: np.ndarray, id_index: np.ndarray, ood_index: np.ndarray) -> float:
        value = seed_mean(runs, score, seed_index, id_index, ood_index)
        if baseline_runs is not None:
            value -= seed_mean(baseline_runs, baseline_score or score, seed_index, id_index, ood_index)
        return value

    _check_run_keys(runs, (id_split, ood_split), [score])
    if baseline_runs is not None:
        _check_run_keys(baseline_runs, (id_split, ood_split), [baseline_score or score])
    _check_seed_pairing(runs, baseline_runs)
    sizes = (runs[0]["scores"][id_split][score].size, runs[0]["scores"][ood_split][score].size)
    return _seed_and_image_bootstrap(statistic, len(runs), sizes, n_bootstrap, confidence, seed, resample_seeds)


def _check_run_keys(runs: Sequence[Mapping[str, Any]], splits: Sequence[str], score_names: Sequence[str]) -> None:
    """Check that every run of :func:`per_image_scores` has the named splits and scores."""
    if not runs:
        raise ValueError("runs is empty; pass one per_image_scores result per seed")
    for run in runs:
        for split in splits:
            if split not in run["scores"]:
                raise ValueError(f"split {split!r} is not in the runs; they contain {sorted(run['scores'])}")
            missing = [name for name in score_names if name not in run["scores"][split]]
            if missing:
                raise ValueError(f"scores {missing} are not in the runs; they contain {sorted(run['scores'][split])}")


def accuracy_ci(
    runs: Sequence[Mapping[str, Any]],
    splits: Sequence[str],
    baseline_runs: Sequence[Mapping[str, Any]] | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    resample_seeds: bool = True,
) -> dict[str, float]:
    """Bootstrap interval of the seed-mean accuracy averaged over ``splits``, or of its gain over a baseline.

    Images of every split are resampled, and with ``resample_seeds`` the seeds too, as in :func:`auroc_ci`.
    """
    def seed_mean(selected_runs: Sequence[Mapping[str, Any]], seed_index: np.ndarray,
                  indices: Sequence[np.ndarray]) -> float:
        return float(np.mean([
            np.mean([selected_runs[i]["correct"][split][index] for split, index in zip(splits, indices)])
            for i in seed_index
        ]))

    def statistic(seed_index: np.ndarray, *indices: np.ndarray) -> float:
        value = seed_mean(runs, seed_index, indices)
        if baseline_runs is not None:
            value -= seed_mean(baseline_runs, seed_index, indices)
        return value

    if not runs:
        raise ValueError("runs is empty; pass one per_image_scores result per seed")
    _check_seed_pairing(runs, baseline_runs)
    sizes = [runs[0]["correct"][split].size for split in splits]
    return _seed_and_image_bootstrap(statistic, len(runs), sizes, n_bootstrap, confidence, seed, resample_seeds)


def _check_seed_pairing(
    runs: Sequence[Mapping[str, Any]], baseline_runs: Sequence[Mapping[str, Any]] | None
) -> None:
    if baseline_runs is not None and len(baseline_runs) != len(runs):
        raise ValueError(
            f"runs has {len(runs)} seeds but baseline_runs has {len(baseline_runs)}; pass one run per seed "
            "for both, in the same seed order, so that each seed is compared with itself"
        )


def _seed_and_image_bootstrap(
    statistic: Callable[..., float],
    n_seeds: int,
    image_sizes: Sequence[int],
    n_bootstrap: int,
    confidence: float,
    seed: int,
    resample_seeds: bool,
) -> dict[str, float]:
    """Run :func:`paired_bootstrap` with the seed positions as one more index set, resampled or fixed."""
    if resample_seeds:
        return paired_bootstrap(statistic, [n_seeds, *image_sizes], n_bootstrap, confidence, seed)
    all_seeds = np.arange(n_seeds)
    return paired_bootstrap(
        lambda *indices: statistic(all_seeds, *indices), list(image_sizes), n_bootstrap, confidence, seed
    )
