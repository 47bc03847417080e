import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from dsenergy import metrics


def sklearn_fpr_at_tpr(positives, negatives, tpr):
    labels = np.r_[np.ones(positives.size), np.zeros(negatives.size)]
    fpr_curve, tpr_curve, _ = roc_curve(labels, np.r_[positives, negatives], drop_intermediate=False)
    return fpr_curve[np.searchsorted(tpr_curve, tpr - 1e-12)]


def score_sets(seed, tied):
    rng = np.random.default_rng(seed)
    id_scores = rng.normal(1.0, 1.0, 300)
    ood_scores = rng.normal(0.0, 1.0, 200)
    if tied:
        id_scores, ood_scores = np.round(id_scores, 1), np.round(ood_scores, 1)
    return id_scores, ood_scores


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_sklearn(seed, tied):
    id_scores, ood_scores = score_sets(seed, tied)
    labels = np.r_[np.ones(id_scores.size), np.zeros(ood_scores.size)]
    joined = np.r_[id_scores, ood_scores]

    assert metrics.auroc(id_scores, ood_scores) == pytest.approx(roc_auc_score(labels, joined), abs=1e-12)
    assert metrics.auroc(id_scores, ood_scores, positive="ood") == pytest.approx(
        roc_auc_score(1 - labels, -joined), abs=1e-12
    )
    assert metrics.aupr_in(id_scores, ood_scores) == pytest.approx(
        average_precision_score(labels, joined), abs=1e-12
    )
    assert metrics.aupr_out(id_scores, ood_scores) == pytest.approx(
        average_precision_score(1 - labels, -joined), abs=1e-12
    )
    assert metrics.fpr_at_tpr(id_scores, ood_scores) == pytest.approx(
        sklearn_fpr_at_tpr(id_scores, ood_scores, 0.95), abs=1e-12
    )
    assert metrics.fpr_at_tpr(id_scores, ood_scores, positive="ood") == pytest.approx(
        sklearn_fpr_at_tpr(-ood_scores, -id_scores, 0.95), abs=1e-12
    )


def test_fpr95_hand_case_id_positive():
    # 20 ID scores 1..20: keeping 95 % (19 of 20) needs the threshold at 2.
    id_scores = np.arange(1, 21, dtype=float)
    # OOD scores at or above 2 are accepted: 2.5, 3 and 10 → 3 of 5.
    ood_scores = np.array([0.5, 1.5, 2.5, 3.0, 10.0])
    assert metrics.fpr_at_tpr(id_scores, ood_scores) == pytest.approx(3 / 5)


def test_fpr95_hand_case_ood_positive():
    # OOD positive: 20 OOD scores −1..−20 (low = OOD). Catching 95 % of them (19) sets the threshold
    # at −19 on the OOD side, i.e. samples with score ≤ −2 are flagged as OOD.
    ood_scores = -np.arange(1, 21, dtype=float)
    # ID scores at or below −2 are rejected: −2.5, −3 → 2 of 4.
    id_scores = np.array([5.0, -1.5, -2.5, -3.0])
    assert metrics.fpr_at_tpr(id_scores, ood_scores, positive="ood") == pytest.approx(2 / 4)


def test_perfect_and_inverted_separation():
    id_scores = np.array([2.0, 3.0, 4.0])
    ood_scores = np.array([-1.0, 0.0, 1.0])
    result = metrics.evaluate_ood(id_scores, ood_scores)
    assert result["auroc"] == 1.0
    assert result["fpr95"] == 0.0
    assert result["aupr_in"] == 1.0
    assert result["aupr_out"] == 1.0
    inverted = metrics.evaluate_ood(ood_scores, id_scores)
    assert inverted["auroc"] == 0.0
    assert inverted["fpr95"] == 1.0


def test_all_tied_scores():
    result = metrics.evaluate_ood(np.zeros(10), np.zeros(5))
    assert result["auroc"] == 0.5
    assert result["fpr95"] == 1.0


def test_evaluate_ood_names_convention_and_counts():
    result = metrics.evaluate_ood(torch.tensor([1.0, 2.0]), torch.tensor([0.0]), positive="ood")
    assert result["positive"] == "ood"
    assert result["n_id"] == 2
    assert result["n_ood"] == 1


@pytest.mark.parametrize(
    "id_scores, ood_scores, message",
    [
        ([], [1.0], "id_scores is empty"),
        ([1.0], [], "ood_scores is empty"),
        ([1.0, float("nan")], [0.0], "id_scores contains 1 NaN"),
        ([1.0], [float("nan"), 0.0, float("nan")], "ood_scores contains 2 NaN"),
        ([[1.0]], [0.0], "id_scores must be one-dimensional"),
    ],
)
def test_bad_scores_name_the_input(id_scores, ood_scores, message):
    with pytest.raises(ValueError, match=message):
        metrics.evaluate_ood(id_scores, ood_scores)


def test_unknown_convention():
    with pytest.raises(ValueError, match="positive must be 'id' or 'ood'"):
        metrics.auroc([1.0], [0.0], positive="in")


def test_accuracy_from_logits_and_predictions():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    labels = torch.tensor([1, 1, 1])
    assert metrics.accuracy(logits, labels) == pytest.approx(2 / 3)
    assert metrics.accuracy(np.array([1, 0, 1]), np.array([1, 0, 0])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="do not match labels"):
        metrics.accuracy(np.array([1, 0]), np.array([1, 0, 0]))
    with pytest.raises(ValueError, match="labels is empty"):
        metrics.accuracy(np.array([]), np.array([]))


def test_accuracy_rejects_labels_outside_classes():
    logits = torch.rand(10, 3)
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\]"):
        metrics.accuracy(logits, torch.arange(10))


def test_accuracy_rejects_ood_labels():
    with pytest.raises(ValueError, match="drop OOD samples"):
        metrics.accuracy(torch.rand(4, 3), torch.full((4,), -1))


def test_accuracy_rejects_float_labels():
    with pytest.raises(TypeError, match="integer class indices"):
        metrics.accuracy(np.array([0, 1]), np.array([0.0, 1.0]))


def test_bootstrap_ci_is_seeded_and_brackets_value():
    id_scores, ood_scores = score_sets(0, tied=False)
    first = metrics.bootstrap_ci(id_scores, ood_scores, num_resamples=200, seed=7)
    second = metrics.bootstrap_ci(id_scores, ood_scores, num_resamples=200, seed=7)
    other = metrics.bootstrap_ci(id_scores, ood_scores, num_resamples=200, seed=8)
    assert first == second
    assert first != other
    assert first["low"] < first["value"] < first["high"]
    with pytest.raises(KeyError, match="unknown metric"):
        metrics.bootstrap_ci(id_scores, ood_scores, metric="accuracy")


def test_rank_agreement_of_monotone_transform_is_one():
    values = np.random.default_rng(0).normal(size=300)
    assert metrics.rank_agreement(values, np.exp(3 * values)) == 1.0
    assert metrics.rank_agreement(values, -values) == 0.0

def test_rank_agreement_ignores_ties():
    first = np.array([0.1, 0.2, 0.3, 0.4])
    second = np.array([1.0, 1.0, 2.0, 3.0])  # one tied pair, every other pair concordant
    assert metrics.rank_agreement(first, second) == 1.0
    with pytest.raises(ValueError, match="equal length"):
        metrics.rank_agreement(first, second[:3])

def test_paired_bootstrap_of_a_mean():
    values = np.random.default_rng(1).normal(loc=2.0, size=400)
    interval = metrics.paired_bootstrap(lambda index: values[index].mean(), [values.size], n_bootstrap=300, seed=0)
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
    assert metrics.claim_verdict(low, high, threshold) == verdict


@pytest.mark.parametrize(("low", "high"), [(0.2, 0.1), (float("nan"), 0.1)])
def test_claim_verdict_rejects_bad_intervals(low, high):
    with pytest.raises(ValueError, match="low <= high"):
        metrics.claim_verdict(low, high)
