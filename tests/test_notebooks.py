"""The notebook sequence: committed form, and real papermill executions checked against recorded numbers.

Reference values come from the demo model's own evaluation record (``dsenergy-demo.evaluation.json``
beside the checkpoint, summarised in data/models/MODEL_CARD.md): AUROC of ΔEnergy (c = 1, a = 0),
MSP and energy on the full fashion-open splits, zero-shot accuracy and τ. The notebooks score a
sample of ``n_per_split`` images, so a recorded AUROC may differ from the reference by sampling
noise. The bands are 4 standard errors (Hanley and McNeil's formula for an AUROC, the binomial one
for an accuracy). A sign error or a wrong crop in ΔE moves the AUROC far outside them, and the exact
identities below (closed form, rank agreement with MSP) catch smaller formula errors.
"""

from __future__ import annotations

import ast
import math

import nbformat
import numpy as np
import papermill
import pytest

from dsenergy import metrics, params
from dsenergy.demo import demo_checkpoint_path
from dsenergy.runner import notebooks_dir, run_notebooks

NOTEBOOK_DIR = notebooks_dir()


def demo_reference() -> dict:
    """Return the demo model's evaluation record, written when its checkpoint was made."""
    import json

    path = demo_checkpoint_path().with_name("dsenergy-demo.evaluation.json")
    return json.loads(path.read_text(encoding="utf-8"))


def auroc_band(reference: float, n_id: int, n_ood: int, width: float = 4.0) -> tuple[float, float]:
    """Return reference ± width standard errors of an AUROC (Hanley and McNeil, 1982)."""
    q1 = reference / (2 - reference)
    q2 = 2 * reference**2 / (1 + reference)
    variance = (reference * (1 - reference) + (n_id - 1) * (q1 - reference**2)
                + (n_ood - 1) * (q2 - reference**2)) / (n_id * n_ood)
    return reference - width * math.sqrt(variance), reference + width * math.sqrt(variance)


def accuracy_band(reference: float, n: int, width: float = 4.0) -> tuple[float, float]:
    """Return reference ± width binomial standard errors of an accuracy."""
    error = math.sqrt(reference * (1 - reference) / n)
    return reference - width * error, reference + width * error


def load(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


# --- committed form --------------------------------------------------------------------------


@pytest.mark.parametrize("name", params.NOTEBOOKS)
def test_committed_notebook_has_no_outputs(name):
    notebook = load(name)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a code cell has outputs"
            assert cell.execution_count is None, f"{name}: a code cell has an execution count"


@pytest.mark.parametrize("name", params.NOTEBOOKS)
def test_parameters_cell_matches_schema(name):
    notebook = load(name)
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert tagged[0].source == params.parameters_cell_source(name)
    declared = papermill.inspect_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"))
    assert list(declared) == [parameter.name for parameter in params.notebook_parameters(name)]


@pytest.mark.parametrize("name", params.NOTEBOOKS)
def test_notebook_teaches_and_parses(name):
    notebook = load(name)
    assert notebook.cells[0].cell_type == "markdown"
    assert notebook.cells[0].source.startswith("# ")
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    for previous, cell in zip(notebook.cells, notebook.cells[1:]):
        if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
            assert previous.cell_type in ("markdown", "code")
    assert sum(cell.cell_type == "markdown" for cell in notebook.cells) >= 4
    for cell in notebook.cells:
        if cell.cell_type == "code":
            source = "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))
            ast.parse(source)


def test_committed_notebooks_match_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOK_DIR / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0


# --- a fast real execution -------------------------------------------------------------------


def test_detection_notebook_runs_at_tiny_size(tmp_path):
    run = run_notebooks({"n_per_split": 60, "covariate_splits": ["covariate/noise/2"]}, only="02", out_dir=tmp_path,
                        progress=False, html=False)
    recorded = run.records("02_delta_energy_detection")
    table = recorded["detection"]
    assert len(table) == len(params.SCHEMA["score_names"].default) * len(params.SCHEMA["ood_splits"].default)
    assert all(0.0 <= row["auroc"] <= 1.0 for row in table)
    assert recorded["temperatures"]["mcm"] == 1.0
    reference = demo_reference()["ood"]["ood_near"]["ΔEnergy (c=1, a=0)"]["auroc"]
    low, high = auroc_band(reference, 60, 60)
    assert low <= recorded["auroc_delta_energy"]["ood_near"] <= high


# --- the whole sequence at smoke size --------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Run all five notebooks once through the runner at smoke size (the CI size, a few minutes)."""
    out = tmp_path_factory.mktemp("smoke")
    return run_notebooks(smoke=True, out_dir=out, progress=False)


def test_smoke_run_completes_with_outputs(smoke_run):
    assert smoke_run.ok
    for name in params.NOTEBOOKS:
        assert (smoke_run.out_dir / f"{name}.ipynb").is_file()
        assert (smoke_run.out_dir / f"{name}.html").is_file()
        assert (smoke_run.out_dir / f"{name}.json").is_file()
    assert (smoke_run.out_dir / "results.json").is_file()
    assert "| 05_evaluation | ok |" in (smoke_run.out_dir / "results.md").read_text(encoding="utf-8")
    # The CI budget is 10 minutes for all five notebooks on two cores.
    assert smoke_run.duration_s < 600


def test_energy_change_identities(smoke_run):
    recorded = smoke_run.records("01_energy_change")
    # ΔE ranks like MSP at small τ, c = 1. The residual factor e^(-s_max/τ) ≤ e^(-24) at τ = 0.01 on the
    # demo model can only flip pairs whose MSPs are closer than that: 200 images per split give exactly
    # 1.0, and 1,000 per split gave 0.9999992 (about 6 of 8 million pairs).
    assert recorded["rank_agreement_msp_c1_small_tau"] == pytest.approx(1.0, abs=1e-5)
    assert recorded["rank_agreement_msp_c2_small_tau"] < 0.95  # cropping two classes gives another ranking
    assert recorded["closed_form_max_abs_error"] < 1e-9
    assert recorded["min_delta_energy"] >= 0.0
    # ΔE and MSP differ by about 0.001 AUROC in the demo evaluation record, energy by about 0.06.
    assert recorded["auroc_gap_delta_energy_msp_near"] < 0.01


def test_energy_change_aurocs_match_model_card(smoke_run):
    recorded = smoke_run.records("01_energy_change")
    reference = demo_reference()
    assert recorded["weights_id"] == reference["weights_id"], "the demo evaluation record is out of date"
    assert recorded["temperature"] == pytest.approx(reference["temperature"], rel=1e-6)
    n = params.smoke_overrides()["n_per_split"]
    ood_splits = params.defaults()["ood_splits"]
    for split in ood_splits:
        low, high = auroc_band(reference["ood"][split]["ΔEnergy (c=1, a=0)"]["auroc"], n, n)
        assert low <= recorded["auroc_delta_energy"][split] <= high, split
        low, high = auroc_band(reference["ood"][split]["Energy"]["auroc"], n, n)
        assert low <= recorded["auroc_energy"][split] <= high, split
    sweep = recorded["auroc_vs_temperature"]
    assert len(sweep) == 10 * 3 * (len(ood_splits) + 1)  # τ grid × c values × (OOD splits + one covariate split)


def test_detection_agrees_with_energy_change(smoke_run):
    first = smoke_run.records("01_energy_change")
    second = smoke_run.records("02_delta_energy_detection")
    for split in params.defaults()["ood_splits"]:
        # Same images, same τ: two code paths must give the same number.
        assert second["auroc_delta_energy"][split] == pytest.approx(first["auroc_delta_energy"][split], abs=1e-12)
    low, high = accuracy_band(demo_reference()["id_test_accuracy"], params.smoke_overrides()["n_per_split"])
    assert low <= second["id_accuracy"] <= high
    table = second["detection"]
    assert {row["positive"] for row in table} == {"id"}
    assert all(0.0 <= row[metric] <= 1.0 for row in table for metric in ("auroc", "fpr95", "aupr_in", "aupr_out"))


def test_hessian_consistency_records(smoke_run):
    recorded = smoke_run.records("03_hessian_consistency")
    rows = recorded["consistency"]
    assert {row["model"] for row in rows} == {"zero-shot", "CoOp", "CoOp+EBM"}
    for row in rows:
        assert row["eigenvalue_1"] >= row["eigenvalue_2"]
        assert row["frobenius"] > 0
        if row["domain"] == row["reference"]:
            assert row["hessian_cosine"] is None  # NaN in the table, null in JSON
        else:
            assert -1.0 - 4 * row["hessian_cosine_se"] <= row["hessian_cosine"] <= 1.0 + 4 * row["hessian_cosine_se"]
    verdicts = []
    for name in ("consistency_gain", "consistency_gain_frobenius"):
        gain = recorded[name]
        assert gain["low"] <= gain["value"] <= gain["high"], name
        assert gain["paired"], name  # CoOp and CoOp+EBM share their probes
        verdicts.append(metrics.claim_verdict(gain["low"], gain["high"]))
    if verdicts[0] == verdicts[1]:
        assert recorded["consistency_verdict"] == verdicts[0]
    else:
        assert recorded["consistency_verdict"] in {"metrics disagree", "not supported"}


def test_finetune_records(smoke_run):
    recorded = smoke_run.records("04_finetune")
    smoke = params.smoke_overrides()
    for history in recorded["history"].values():
        assert len(history["ce"]) == smoke["epochs"]
        assert all(math.isfinite(value) for value in history["ce"])
    lambda_sweep = recorded["sweep_ebm_weight"]
    assert [row["ebm_weight"] for row in lambda_sweep] == smoke["ebm_weights"]
    c_sweep = recorded["sweep_top_c"]
    assert [row["top_c"] for row in c_sweep if row["model"] == "CoOp+EBM"] == smoke["top_c_values"]
    assert [row["top_c"] for row in c_sweep if row["model"] == "zero-shot"] == smoke["top_c_values"]
    # λ = 0 is plain CoOp: same seed, same data, same result.
    coop = recorded["headline"]["CoOp"]
    zero = next(row for row in lambda_sweep if row["ebm_weight"] == 0.0)
    assert zero["id_accuracy"] == pytest.approx(coop["id_accuracy"], abs=1e-6)
    assert zero["auroc_ood_near"] == pytest.approx(coop["auroc"]["ood_near"], abs=1e-6)
    # The zero-shot row scores the same images as notebook 01.
    first = smoke_run.records("01_energy_change")
    assert recorded["headline"]["zero-shot"]["auroc"]["ood_near"] == pytest.approx(
        first["auroc_delta_energy"]["ood_near"], abs=1e-9)
    # The sweep's zero-shot row at the notebook's own c repeats the headline's zero-shot row.
    zero_shot = next(row for row in c_sweep if row["model"] == "zero-shot" and row["top_c"] == params.defaults()["top_c"])
    assert zero_shot["auroc_ood_near"] == pytest.approx(recorded["headline"]["zero-shot"]["auroc"]["ood_near"], abs=1e-9)


def test_evaluation_table_and_claims(smoke_run):
    recorded = smoke_run.records("05_evaluation")
    seeds = params.smoke_overrides()["seeds"]
    summary = recorded["summary"]
    assert {row["n_seeds"] for row in summary} == {len(seeds)}
    for row in summary:
        if row["method"] == "zero-shot":
            assert row["std"] == pytest.approx(0.0, abs=1e-12)  # nothing in zero-shot depends on the seed

    detection = recorded["detection"]
    for row in detection:
        assert row["auroc_ci_low"] <= row["auroc_seed_mean"]
        assert row["auroc_seed_mean"] <= row["auroc_ci_high"]

    claims = recorded["claims"]
    evaluated = [claim for claim in claims if claim["ci_low"] is not None]
    assert len(evaluated) == len(claims)  # two smoke seeds, so the Hessian claims are evaluated too
    for claim in evaluated:
        assert claim["ci_low"] <= claim["gain"] <= claim["ci_high"]
        assert claim["verdict"] == metrics.claim_verdict(claim["ci_low"], claim["ci_high"], claim["margin"])
    # Each Hessian gain is the seed mean of CoOp+EBM against CoOp in the recorded per-run consistency.
    consistency = {(row["method"], row["seed"]): row for row in recorded["hessian_consistency"]}
    cosine_gain = np.mean([consistency["CoOp+EBM", seed]["mean Hessian cosine"] - consistency["CoOp", seed]["mean Hessian cosine"]
                           for seed in seeds])
    frobenius_gain = np.mean([consistency["CoOp", seed]["mean normalised Frobenius difference"]
                              - consistency["CoOp+EBM", seed]["mean normalised Frobenius difference"] for seed in seeds])
    hessian_claims = [claim for claim in claims if "Hessian" in claim["claim"]]
    assert [claim["gain"] for claim in hessian_claims] == pytest.approx([cosine_gain, frobenius_gain])
    id_accuracy = {(row["method"], row["seed"]): row["value"] for row in recorded["results"]
                   if row["metric"] == "accuracy" and row["split"] == "id_test"}
    zero_shot_accuracy = id_accuracy["zero-shot", seeds[0]]
    expected_lagging = sorted((method, seed) for (method, seed), value in id_accuracy.items()
                              if method != "zero-shot" and value < zero_shot_accuracy - 0.10)
    assert sorted((run["method"], run["seed"]) for run in recorded["lagging_runs"]) == expected_lagging
