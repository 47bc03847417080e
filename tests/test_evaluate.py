"""Tests of the evaluation table: accuracy, OOD metrics per score, temperatures and saved files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from dsenergy import evaluate, metrics, scores
from dsenergy.evaluate import (
    DEFAULT_SCORES,
    OOD_METRICS,
    RESULT_COLUMNS,
    EvalSplit,
    evaluate_model,
    save_results,
    summarize_over_seeds,
)
from dsenergy.metrics import auroc, fpr_at_tpr
from dsenergy.prompts import PromptLearner
from dsenergy.scores import compute_score
from tests.ddp_worker import CLASS_NAMES, synthetic_features, tiny_bundle
from tests.helpers import clustered_features

TAU = 0.01


@pytest.fixture()
def text_features() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return F.normalize(torch.randn(4, 16, generator=generator), dim=-1)


def _splits(text_features: torch.Tensor) -> dict:
    generator = torch.Generator().manual_seed(1)
    labels = torch.arange(40) % 4
    id_features = F.normalize(text_features[labels] + 0.3 * torch.randn(40, 16, generator=generator), dim=-1)
    shifted = F.normalize(text_features[labels] + 1.0 * torch.randn(40, 16, generator=generator), dim=-1)
    ood = F.normalize(torch.randn(30, 16, generator=generator), dim=-1)
    return {"id_test": (id_features, labels), "covariate/noise/3": (shifted, labels), "ood_near": ood}


def test_table_is_tidy_with_all_rows(text_features):
    table = evaluate_model(text_features, _splits(text_features), model_temperature=TAU, method="coop", seed=2)

    assert list(table.columns) == list(RESULT_COLUMNS)
    accuracy = table[table.metric == "accuracy"]
    detection = table[table.metric != "accuracy"]
    assert sorted(accuracy.split) == ["covariate/noise/3", "id_test"]
    assert len(detection) == len(DEFAULT_SCORES) * len(OOD_METRICS)
    assert set(detection.score) == set(DEFAULT_SCORES)
    assert (table.method == "coop").all()
    assert (table.seed == 2).all()
    assert (table.positive == "id").all()
    assert not table.duplicated(["split", "score", "metric"]).any()


def test_accuracy_matches_manual_count(text_features):
    splits = _splits(text_features)

    table = evaluate_model(text_features, splits, model_temperature=TAU)

    for name in ("id_test", "covariate/noise/3"):
        features, labels = splits[name]
        expected = float(((features @ text_features.t()).argmax(dim=1) == labels).float().mean())
        value = table[(table.split == name) & (table.metric == "accuracy")].value.item()
        assert value == pytest.approx(expected)


def test_detection_metrics_match_score_functions(text_features):
    splits = _splits(text_features)

    table = evaluate_model(text_features, splits, model_temperature=TAU)

    id_scores = compute_score("energy", splits["id_test"][0] @ text_features.t(), TAU).numpy()
    ood_scores = compute_score("energy", splits["ood_near"] @ text_features.t(), TAU).numpy()
    rows = table[(table.score == "energy") & (table.split == "ood_near")].set_index("metric").value
    assert rows["auroc"] == pytest.approx(auroc(id_scores, ood_scores))
    assert rows["fpr95"] == pytest.approx(fpr_at_tpr(id_scores, ood_scores, 0.95))


def test_separable_splits_give_perfect_detection(text_features):
    labels = torch.arange(8) % 4
    ood = F.normalize(torch.ones(6, 16) - 4 * text_features.sum(dim=0), dim=-1)
    splits = {"id_test": (text_features[labels], labels), "ood_far": ood}

    table = evaluate_model(text_features, splits, model_temperature=TAU, scores=("max_logit",))

    rows = table[table.split == "ood_far"].set_index("metric").value
    assert rows["auroc"] == pytest.approx(1.0)
    assert rows["fpr95"] == pytest.approx(0.0)
    assert table[table.metric == "accuracy"].value.item() == 1.0


def test_temperatures_are_recorded(text_features):
    default = evaluate_model(text_features, _splits(text_features), model_temperature=TAU)
    overridden = evaluate_model(text_features, _splits(text_features), model_temperature=TAU, temperatures={"energy": 0.5})
    single = evaluate_model(text_features, _splits(text_features), model_temperature=TAU, temperatures=0.2)

    assert set(default[default.score == "mcm"].temperature) == {1.0}
    assert set(default[default.score == "energy"].temperature) == {TAU}
    assert set(overridden[overridden.score == "energy"].temperature) == {0.5}
    assert set(single[single.metric != "accuracy"].temperature) == {0.2}
    assert default[default.metric == "accuracy"].temperature.isna().all()


def test_max_cosine_reports_no_temperature(text_features):
    table = evaluate_model(text_features, _splits(text_features), model_temperature=TAU, scores=("max_cosine", "msp"))

    assert table[table.score == "max_cosine"].temperature.isna().all()
    assert set(table[table.score == "msp"].temperature) == {TAU}


def test_prompt_learner_equals_its_text_features():
    bundle = tiny_bundle()
    learner = PromptLearner(bundle.model, bundle.tokenizer, CLASS_NAMES, n_ctx=4, seed=0)
    features, labels = synthetic_features(24, 32, len(CLASS_NAMES))
    splits = {"id_test": (features, labels), "ood_near": synthetic_features(12, 32, 3, seed=9)[0]}

    from_learner = evaluate_model(learner, splits, bundle=bundle)
    with torch.no_grad():
        from_tensor = evaluate_model(learner(), splits, bundle=bundle)

    pd.testing.assert_frame_equal(from_learner, from_tensor)
    assert (from_learner.model == bundle.name).all()
    assert (from_learner.weights_id == bundle.weights_id).all()
    energy_temperatures = from_learner[from_learner.score == "energy"].temperature
    assert energy_temperatures.tolist() == pytest.approx([1.0 / bundle.logit_scale] * len(energy_temperatures))


def test_explicit_roles_override_names(text_features):
    splits = _splits(text_features)
    renamed = {
        "clean": EvalSplit(*splits["id_test"], role="id"),
        "textures": EvalSplit(splits["ood_near"], role="ood"),
    }

    table = evaluate_model(text_features, renamed, model_temperature=TAU, scores=("msp",))

    assert set(table.split) == {"clean", "textures"}


@pytest.mark.parametrize(
    "splits, error, message",
    [
        ({"validation": torch.zeros(2, 16)}, ValueError, "role"),
        ({"id_test": torch.zeros(2, 16)}, ValueError, "labels"),
        ({"id_a": (torch.zeros(2, 16), torch.zeros(2)), "id_b": (torch.zeros(2, 16), torch.zeros(2)), "ood": torch.zeros(2, 16)}, ValueError, "exactly one ID"),
        ({"id_test": "features.npy"}, TypeError, "expected"),
    ],
)
def test_invalid_splits_raise(text_features, splits, error, message):
    with pytest.raises(error, match=message):
        evaluate_model(text_features, splits, model_temperature=TAU)


def test_missing_temperature_raises(text_features):
    with pytest.raises(ValueError, match="temperature"):
        evaluate_model(text_features, _splits(text_features))


def test_save_results_round_trip(tmp_path, text_features):
    table = evaluate_model(text_features, _splits(text_features), model_temperature=TAU, method="coop_ebm", seed=1)

    csv_path, json_path = save_results(table, tmp_path / "nested" / "results")

    assert csv_path.name == "results.csv"
    assert json_path.name == "results.json"
    from_csv = pd.read_csv(csv_path)
    assert list(from_csv.columns) == list(RESULT_COLUMNS)
    assert from_csv.value.tolist() == pytest.approx(table.value.tolist())
    records = json.loads(json_path.read_text())
    assert len(records) == len(table)
    assert records[0]["method"] == "coop_ebm"


def test_summarize_over_seeds(text_features):
    tables = [
        evaluate_model(text_features * (1 + 0.1 * seed), _splits(text_features), model_temperature=TAU, seed=seed)
        for seed in (1, 2, 3)
    ]
    table = pd.concat(tables, ignore_index=True)

    summary = summarize_over_seeds(table)

    assert len(summary) == len(tables[0])
    assert (summary.n_seeds == 3).all()
    row = summary[(summary.score == "energy") & (summary.metric == "auroc")]
    values = table[(table.score == "energy") & (table.metric == "auroc")].value
    assert row["mean"].item() == pytest.approx(values.mean())
    assert row["std"].item() == pytest.approx(values.std())


def test_compute_scores_match_score_functions():
    text, features, _ = clustered_features()
    values, taus = evaluate.compute_scores(["msp", "mcm", "delta_energy", "max_cosine", "delta_energy_feature_mask"],
                                      features["id_test"], text, 0.01, top_c=2, crop_value=-0.5, mask_fraction=0.25)
    similarities = features["id_test"] @ text.T
    assert taus == {"msp": 0.01, "mcm": 1.0, "delta_energy": 0.01, "max_cosine": None, "delta_energy_feature_mask": 0.01}
    torch.testing.assert_close(values["mcm"], scores.msp(similarities, 1.0))
    torch.testing.assert_close(values["delta_energy"], scores.delta_energy(similarities, 0.01, top_c=2, crop_value=-0.5))
    torch.testing.assert_close(values["delta_energy_feature_mask"],
                               scores.delta_energy_feature_mask(features["id_test"], text, 0.01, mask_fraction=0.25))

def test_detection_table_rows_match_metrics():
    text, features, _ = clustered_features()
    id_values, taus = evaluate.compute_scores(["msp", "energy"], features["id_test"], text, 0.05)
    ood_values, _ = evaluate.compute_scores(["msp", "energy"], features["ood_far"], text, 0.05)
    table = evaluate.detection_table(id_values, {"ood_far": ood_values}, taus, positive="ood")
    assert list(table["score"]) == ["msp", "energy"]
    row = table.set_index("score").loc["energy"]
    assert row["auroc"] == pytest.approx(metrics.auroc(id_values["energy"], ood_values["energy"]))
    assert row["fpr95"] == pytest.approx(metrics.fpr_at_tpr(id_values["energy"], ood_values["energy"], positive="ood"))
    assert row["positive"] == "ood"

def test_auroc_ci_self_gain_is_zero():
    text, features, labels = clustered_features()
    test = {"id_test": (features["id_test"], labels), "ood_far": features["ood_far"]}
    runs = [evaluate.per_image_scores(text, test, ["msp", "delta_energy"], 0.05)]
    single = evaluate.auroc_ci(runs, "delta_energy", "ood_far", n_bootstrap=50)
    assert single["value"] == pytest.approx(metrics.auroc(runs[0]["scores"]["id_test"]["delta_energy"],
                                                          runs[0]["scores"]["ood_far"]["delta_energy"]))
    gain = evaluate.auroc_ci(runs, "delta_energy", "ood_far", runs, "delta_energy", n_bootstrap=50)
    assert (gain["value"], gain["low"], gain["high"]) == (0.0, 0.0, 0.0)
    accuracy = evaluate.accuracy_ci(runs, ["id_test"], n_bootstrap=50)
    assert accuracy["value"] == pytest.approx(float(((features["id_test"] @ text.T).argmax(1) == labels).float().mean()))

def _synthetic_run(id_shift, rng, n=300):
    """Return a per_image_scores-shaped run whose ID scores sit ``id_shift`` above the OOD scores."""
    return {"scores": {"id_test": {"msp": rng.normal(id_shift, 1.0, n)}, "ood_far": {"msp": rng.normal(0.0, 1.0, n)}},
            "correct": {"id_test": (rng.random(n) < 0.5 + id_shift / 10).astype(float)}}


def test_auroc_ci_covers_seed_disagreement():
    rng = np.random.default_rng(0)
    # One seed gains clearly over the baseline and the other loses clearly, so the seed-mean gain is
    # negative with a tight image-only interval but not across resampled seeds.
    runs = [_synthetic_run(3.0, rng), _synthetic_run(0.0, rng)]
    baseline = [_synthetic_run(1.5, rng), _synthetic_run(1.5, rng)]
    images_only = evaluate.auroc_ci(runs, "msp", "ood_far", baseline, n_bootstrap=200, resample_seeds=False)
    with_seeds = evaluate.auroc_ci(runs, "msp", "ood_far", baseline, n_bootstrap=200)
    assert metrics.claim_verdict(images_only["low"], images_only["high"]) == "contradicted"
    assert with_seeds["value"] == pytest.approx(images_only["value"])
    assert with_seeds["high"] > 0.0
    assert with_seeds["low"] < images_only["low"]


def test_accuracy_ci_resamples_seeds():
    rng = np.random.default_rng(1)
    runs = [_synthetic_run(3.0, rng), _synthetic_run(0.0, rng)]
    images_only = evaluate.accuracy_ci(runs, ["id_test"], n_bootstrap=200, resample_seeds=False)
    with_seeds = evaluate.accuracy_ci(runs, ["id_test"], n_bootstrap=200)
    assert with_seeds["high"] - with_seeds["low"] > 2 * (images_only["high"] - images_only["low"])


def test_ci_rejects_unpaired_seed_counts():
    rng = np.random.default_rng(2)
    runs = [_synthetic_run(1.0, rng), _synthetic_run(1.0, rng)]
    with pytest.raises(ValueError, match="runs has 2 seeds but baseline_runs has 1"):
        evaluate.auroc_ci(runs, "msp", "ood_far", runs[:1], n_bootstrap=10)
    with pytest.raises(ValueError, match="runs has 2 seeds but baseline_runs has 1"):
        evaluate.accuracy_ci(runs, ["id_test"], runs[:1], n_bootstrap=10)


def test_headline_row_flattens_aurocs():
    table = pd.DataFrame({
        "split": ["id_test", "covariate/noise/1", "ood_near", "ood_far"],
        "split_role": ["id", "covariate", "ood", "ood"],
        "score": [None, None, "delta_energy", "delta_energy"],
        "metric": ["accuracy", "accuracy", "auroc", "auroc"],
        "value": [0.9, 0.6, 0.8, 0.7],
    })
    row = evaluate.headline_row(evaluate.headline_metrics(table))
    assert row == {"id_accuracy": 0.9, "covariate_accuracy": 0.6, "auroc_ood_near": 0.8, "auroc_ood_far": 0.7}


def test_detection_table_names_missing_inputs():
    text, features, _ = clustered_features()
    values, taus = evaluate.compute_scores(["msp", "energy"], features["id_test"], text, 0.05)

    with pytest.raises(ValueError, match="no temperature for score 'energy'"):
        evaluate.detection_table(values, {"ood_far": values}, {"msp": taus["msp"]})
    with pytest.raises(ValueError, match="'mcm' of OOD split 'ood_far' has no ID scores"):
        evaluate.detection_table(values, {"ood_far": {"mcm": values["msp"]}}, {**taus, "mcm": 1.0})


def test_bootstrap_helpers_name_bad_inputs():
    text, features, labels = clustered_features()
    test = {"id_test": (features["id_test"], labels), "ood_far": features["ood_far"]}
    runs = [evaluate.per_image_scores(text, test, ["msp"], 0.05)]

    with pytest.raises(ValueError, match="scores \\['energy'\\] are not in the runs"):
        evaluate.auroc_ci(runs, "energy", "ood_far", n_bootstrap=10)
    with pytest.raises(ValueError, match="split 'ood_near' is not in the runs"):
        evaluate.auroc_ci(runs, "msp", "ood_near", n_bootstrap=10)
    with pytest.raises(ValueError, match="n_bootstrap must be at least 1"):
        evaluate.auroc_ci(runs, "msp", "ood_far", n_bootstrap=0)
    with pytest.raises(ValueError, match="delta_energy_feature_mask"):
        evaluate.compute_scores(["nope"], features["id_test"], text, 0.05)
