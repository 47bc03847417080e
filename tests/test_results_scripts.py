"""Smoke-size runs of scripts/finetune_table.py and scripts/hessian_table.py on the demo architecture.

The model has random weights (the scripts' output is meaningless but every code path runs) and every
split is cut to a few dozen images with ``--max-images``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dsenergy.demo import DEMO_MODEL_CONFIG
from dsenergy.models import load_clip, register_model_config
from dsenergy.train import load_prompt_learner

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
RANDOM_MODEL = "dsenergy-demo-random-weights"
SWEEP = [1.0, 10.0]


def _load_script(name: str):
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory):
    """Run the fine-tuning table once at smoke size and return (module, output folder, config)."""
    register_model_config(RANDOM_MODEL, DEMO_MODEL_CONFIG)
    module = _load_script("finetune_table")
    out = tmp_path_factory.mktemp("finetune")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DSENERGY_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        config = module.main([
            "--model", RANDOM_MODEL, "--max-images", "60", "--shots", "2", "--val-per-class", "3",
            "--epochs", "1", "--seeds", "1", "2", "--sweep-weights", *map(str, SWEEP),
            "--splits", "id_test", "ood_near", "ood_far", "covariate/noise/1", "--out", str(out),
        ])
    return module, out, config


def test_validation_indices_avoid_kshot():
    module = _load_script("finetune_table")
    labels = np.repeat(np.arange(3), 10)
    kshot = np.array([0, 1, 10, 11, 20, 21])
    chosen = module.validation_indices(labels, kshot, per_class=4, seed=0)
    assert not set(chosen) & set(kshot)
    assert np.bincount(labels[chosen]).tolist() == [4, 4, 4]


def test_finetune_sweep_choice_rule(finetune_run):
    _, out, config = finetune_run
    sweep = pd.read_csv(out / "lambda_sweep.csv")
    candidates = sweep[sweep.method == "coop_ebm"]
    best = candidates.val_accuracy.max()
    assert sorted(candidates.ebm_weight) == SWEEP
    assert config["ebm_weight"] == candidates[candidates.val_accuracy == best].ebm_weight.min()
    assert f"Chosen λ = {config['ebm_weight']:g}" in (out / "lambda_sweep.md").read_text(encoding="utf-8")


def test_finetune_saves_prompts_and_config(finetune_run):
    _, out, config = finetune_run
    recorded = json.loads((out / "config.json").read_text(encoding="utf-8"))
    for key in ("ebm_weight", "top_c", "crop_value", "bound", "epochs", "shots", "loss_temperature", "score_temperatures"):
        assert key in recorded
    bundle = load_clip(RANDOM_MODEL, None, seed=0)
    for method in ("coop", "coop_ebm"):
        for seed in (1, 2):
            payload = torch.load(out / "prompts" / f"{method}-seed{seed}.pt", weights_only=True)
            learner = load_prompt_learner(out / "prompts" / f"{method}-seed{seed}.pt", bundle)
            assert torch.equal(learner.context_vectors.detach(), payload["context_vectors"])
            assert payload["extra"]["config"]["ebm_weight"] == (0.0 if method == "coop" else config["ebm_weight"])
            assert payload["weights_id"] == bundle.weights_id


def test_finetune_tables_follow_umask(finetune_run):
    _, out, _ = finetune_run
    umask = os.umask(0)
    os.umask(umask)
    for name in ("finetune_summary.md", "config.json", "lambda_sweep.md"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name


def test_finetune_summary_tables(finetune_run):
    _, out, config = finetune_run
    runs = pd.read_csv(out / "finetune_runs.csv")
    assert set(runs.method) == {"zeroshot", "coop", "coop_ebm"}
    assert set(runs.seed) == {1, 2}
    markdown = (out / "finetune_summary.md").read_text(encoding="utf-8")
    assert "ID is the positive class" in markdown
    assert f"λ = {config['ebm_weight']:g}" in markdown
    assert "CoOp+EBM − CoOp, paired by seed (n = 2)" in markdown
    assert "## Training" in markdown


def test_finetune_records_training_curves(finetune_run):
    _, _, config = finetune_run
    runs = {(run["method"], run["seed"]) for run in config["training"]}
    assert runs == {(method, seed) for method in ("coop", "coop_ebm") for seed in (1, 2)}
    for run in config["training"]:
        assert run["max_ce"] >= max(run["first_ce"], run["final_ce"])
        assert 0.0 <= run["final_acc"] <= 1.0


def test_training_lines_name_diverged_runs():
    module = _load_script("finetune_table")
    history_ok = [{"ce": 0.9, "acc": 0.5}, {"ce": 0.1, "acc": 1.0}]
    history_bad = [{"ce": 0.8, "acc": 0.7}, {"ce": 1.7, "acc": 0.4}, {"ce": 1.2, "acc": 0.4}]
    training = [module.training_record("coop", 3, 0.0, history_bad), module.training_record("coop_ebm", 3, 1.0, history_ok)]
    text = "\n".join(module.training_lines(training))
    assert "did not converge for CoOp seed 3:" in text
    assert "CoOp+EBM seed 3" not in text
    assert "| CoOp | 3 | 0.800 | 1.700 | 1.200 | 40.0 |" in text


def test_hessian_table_smoke(finetune_run, tmp_path, monkeypatch):
    _, finetune_out, _ = finetune_run
    module = _load_script("hessian_table")
    out = tmp_path / "hessian"
    runs = module.main([
        "--model", RANDOM_MODEL, "--max-images", "60", "--seeds", "1", "--domains", "covariate/noise/1",
        "--k", "0", "--iters", "2", "--probes", "2", "--prompts", str(finetune_out / "prompts"), "--out", str(out),
    ])
    markdown = (out / "hessian_summary.md").read_text(encoding="utf-8")
    assert len(runs) == 3 * 2
    reference = runs[runs.domain == "id_test"]
    shifted = runs[runs.domain != "id_test"]
    assert (reference.accuracy_drop == 0).all()
    assert reference.hessian_cosine.isna().all()
    assert shifted.frobenius_diff_normalized.notna().all()
    assert np.allclose(shifted.accuracy_drop, reference.accuracy.to_numpy() - shifted.accuracy.to_numpy())
    assert (out / "hessian_consistency.png").stat().st_size > 1000
    assert "Spearman" in markdown
    assert "no eigenvalues (--k 0)" in markdown
    assert "**Reduced run:** at most 60 images per split" in markdown
    assert "± 0 |" not in markdown


def test_hessian_table_missing_prompts(tmp_path, capsys):
    module = _load_script("hessian_table")
    (tmp_path / "coop-seed1.pt").write_bytes(b"")

    # The model name does not exist: the prompt files are checked before any model is loaded.
    with pytest.raises(SystemExit) as raised:
        module.main([
            "--model", "no-such-model", "--methods", "coop", "coop_ebm", "--seeds", "1", "2",
            "--prompts", str(tmp_path), "--out", str(tmp_path / "out"),
        ])

    error = capsys.readouterr().err
    assert raised.value.code == 2
    assert f"--prompts {tmp_path} lacks coop_ebm-seed1.pt, coop-seed2.pt, coop_ebm-seed2.pt;" in error
    assert "scripts/finetune_table.py writes them" in error


def test_hessian_table_prompts_not_folder(tmp_path, capsys):
    module = _load_script("hessian_table")

    with pytest.raises(SystemExit):
        module.main(["--methods", "coop", "--prompts", str(tmp_path / "absent"), "--out", str(tmp_path / "out")])

    assert f"--prompts {tmp_path / 'absent'} is not a folder; it must contain coop-seed1.pt" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [("--k", "-1"), ("--iters", "0"), ("--probes", "0"), ("--max-images", "0")])
def test_hessian_rejects_bad_option(option, value, tmp_path, capsys):
    module = _load_script("hessian_table")
    with pytest.raises(SystemExit) as raised:
        module.main([option, value, "--out", str(tmp_path)])
    assert raised.value.code == 2
    assert option in capsys.readouterr().err


def test_hessian_rejects_other_weights(finetune_run):
    _, finetune_out, _ = finetune_run
    module = _load_script("hessian_table")
    other = load_clip(RANDOM_MODEL, None, seed=1)
    class_names = ["a", "b", "c", "d", "e", "f"]
    with pytest.raises(ValueError, match="trained on model weights"):
        module.prompt_learner("coop", 1, other, class_names, finetune_out / "prompts")


@pytest.mark.parametrize("option, value", [("--epochs", "0"), ("--lr", "-1"), ("--shots", "0"), ("--max-images", "0")])
def test_finetune_rejects_bad_option(option, value, capsys):
    module = _load_script("finetune_table")
    with pytest.raises(SystemExit) as raised:
        module.main([option, value])
    assert raised.value.code == 2
    assert option in capsys.readouterr().err


def test_finetune_help_shows_defaults():
    module = _load_script("finetune_table")

    text = " ".join(module.build_parser().format_help().split())

    assert "(default: results/finetune in the repository, the committed tables, which a run overwrites)" in text
    assert "training images per class (default: 16)" in text
    assert "training epochs per run (default: 50)" in text


def test_training_lines_single_epoch():
    module = _load_script("finetune_table")
    training = [module.training_record("coop", 1, 0.0, [{"ce": 0.732, "acc": 0.5}])]

    text = "\n".join(module.training_lines(training))

    assert "CoOp seed 1 trained for one epoch" in text
    assert "Every run ended with a lower training CE" not in text


def test_training_lines_unchanged_ce():
    module = _load_script("finetune_table")
    flat = [{"ce": 0.7321, "acc": 0.5}, {"ce": 0.7318, "acc": 0.5}]
    falling = [{"ce": 0.9, "acc": 0.5}, {"ce": 0.2, "acc": 0.9}]
    training = [module.training_record("coop", 1, 0.0, flat), module.training_record("coop_ebm", 1, 1.0, falling)]

    text = "\n".join(module.training_lines(training))

    assert "The training CE of CoOp seed 1 did not change from the first epoch" in text
    assert "1 of 2 runs ended with a lower training CE" in text
    assert "Every run ended" not in text


def test_training_lines_all_lower():
    module = _load_script("finetune_table")
    falling = [{"ce": 0.9, "acc": 0.5}, {"ce": 0.2, "acc": 0.9}]
    training = [module.training_record(method, 1, 0.0, falling) for method in ("coop", "coop_ebm")]

    assert module.training_lines(training)[-1] == "Every run ended with a lower training CE than its first epoch."


def _synthetic_runs(values: dict[tuple[str, int], dict[str, float]]) -> pd.DataFrame:
    """Build a tidy runs table with ID accuracy and near-OOD AUROC / FPR95 per (method, seed)."""
    rows = []
    for (method, seed), metrics in values.items():
        rows.append({"method": method, "seed": seed, "split": "id_test", "split_role": "id", "score": "",
                     "metric": "accuracy", "value": metrics["acc"]})
        for score in ("msp", "energy", "mcm", "delta_energy"):
            for metric in ("auroc", "fpr95"):
                rows.append({"method": method, "seed": seed, "split": "ood_near", "split_role": "ood", "score": score,
                             "metric": metric, "value": metrics.get(f"{score} {metric}", 0.5)})
    return pd.DataFrame(rows)


def _summary_config(seeds, top_c: int = 1) -> dict:
    return {
        "shots": 2, "seeds": seeds, "model": RANDOM_MODEL, "weights_id": "random", "n_ctx": 4, "epochs": 1,
        "train_settings": {"lr": 0.002}, "ebm_weight": 1.0, "ebm_weight_source": "set with --ebm-weight",
        "top_c": top_c, "crop_value": 0.0, "bound": "lower", "loss_temperature": 0.07, "max_images": 60,
        "score_temperatures": {"msp": 0.07, "energy": 0.07, "mcm": 1.0, "delta_energy": 0.07},
    }


def test_summary_one_seed_claims_no_spread():
    module = _load_script("finetune_table")
    runs = _synthetic_runs({
        ("zeroshot", 1): {"acc": 0.8}, ("coop", 1): {"acc": 0.85}, ("coop_ebm", 1): {"acc": 0.9},
    })

    markdown = module.summary_markdown(runs, _summary_config([1]))

    assert "Values are from one seed, so no spread is shown" in markdown
    assert "CoOp+EBM vs CoOp: one seed, so no difference can be compared with a spread over seeds" in markdown
    assert "The largest difference is +5.0 pp (ID acc)." in markdown
    assert "within the spread" not in markdown
    assert "clipart" not in markdown
    assert "covariate" not in markdown.split("## What the table shows")[1]


def test_summary_identical_runs_no_signed_zero():
    module = _load_script("finetune_table")
    runs = _synthetic_runs({(method, seed): {"acc": 0.8} for method in ("zeroshot", "coop", "coop_ebm") for seed in (1, 2)})

    markdown = module.summary_markdown(runs, _summary_config([1, 2]))

    assert "The largest mean difference is below 0.05 pp in size." in markdown
    assert "-0.0 pp" not in markdown


def test_summary_msp_gap_beyond_tolerance():
    module = _load_script("finetune_table")
    runs = _synthetic_runs({
        (method, seed): {"acc": 0.8, "msp auroc": 0.80, "delta_energy auroc": 0.843 if method == "coop" else 0.80}
        for method in ("zeroshot", "coop", "coop_ebm") for seed in (1, 2)
    })

    markdown = module.summary_markdown(runs, _summary_config([1, 2]))

    assert "ΔEnergy (c = 1) and MSP differ by up to 4.3 pp AUROC (CoOp on the near OOD set)" in markdown
    assert "monotone" not in markdown
    assert "match within" not in markdown


def test_summary_msp_match_within_tolerance():
    module = _load_script("finetune_table")
    runs = _synthetic_runs({
        (method, seed): {"acc": 0.8, "msp auroc": 0.80, "delta_energy auroc": 0.805}
        for method in ("zeroshot", "coop", "coop_ebm") for seed in (1, 2)
    })

    markdown = module.summary_markdown(runs, _summary_config([1, 2]))

    assert "ΔEnergy (c = 1) and MSP match within 1 pp AUROC for every method and OOD set (largest gap 0.5 pp" in markdown
    assert "a monotone function of MSP" in markdown


def test_summary_msp_other_top_c_not_explained():
    module = _load_script("finetune_table")
    runs = _synthetic_runs({
        (method, seed): {"acc": 0.8, "msp auroc": 0.80, "delta_energy auroc": 0.805}
        for method in ("zeroshot", "coop", "coop_ebm") for seed in (1, 2)
    })

    markdown = module.summary_markdown(runs, _summary_config([1, 2], top_c=2))

    assert "ΔEnergy (c = 2) and MSP differ by up to 0.5 pp AUROC" in markdown
    assert "monotone" not in markdown


def test_summary_paired_difference_sentence():
    module = _load_script("finetune_table")
    accuracy = {("zeroshot", 1): 0.8, ("zeroshot", 2): 0.8, ("coop", 1): 0.80, ("coop", 2): 0.82,
                ("coop_ebm", 1): 0.90, ("coop_ebm", 2): 0.93}
    runs = _synthetic_runs({key: {"acc": value} for key, value in accuracy.items()})

    markdown = module.summary_markdown(runs, _summary_config([1, 2]))

    assert "1 of 9 metrics differ with the same sign on all 2 seeds" in markdown
    assert "Better with CoOp+EBM: ID acc. Worse: none." in markdown
    assert "The other 8 differences change sign between seeds or have a mean no larger than their standard deviation." in markdown


def test_summary_no_consistent_difference_sentence():
    module = _load_script("finetune_table")
    accuracy = {("zeroshot", 1): 0.8, ("zeroshot", 2): 0.8, ("coop", 1): 0.80, ("coop", 2): 0.82,
                ("coop_ebm", 1): 0.81, ("coop_ebm", 2): 0.81}
    runs = _synthetic_runs({key: {"acc": value} for key, value in accuracy.items()})

    markdown = module.summary_markdown(runs, _summary_config([1, 2]))

    assert "0 of 9 metrics differ with the same sign on all 2 seeds" in markdown
    assert "All 9 differences change sign between seeds or have a mean no larger than their standard deviation." in markdown


def test_single_seed_summary_shows_no_spread():
    module = _load_script("finetune_table")
    frame = pd.DataFrame({"method": ["coop", "coop_ebm"], "seed": [1, 1], "ID acc": [0.9, 0.95]})
    lines = module.difference_lines(frame, ["ID acc"])
    assert lines[-1] == "| ID acc | 5.0 | +5.00 | n/a (one seed) |"


def test_demo_variants_table_reads_committed_records(tmp_path):
    from dsenergy.demo import demo_checkpoint_path

    module = _load_script("demo_variants_table")
    models = demo_checkpoint_path().parent
    evaluation = json.loads((models / "dsenergy-demo.evaluation.json").read_text(encoding="utf-8"))

    table = module.main(["--models", str(models), "--out", str(tmp_path)])

    row = table.set_index("model").loc["dsenergy-demo"]
    assert row["train_classes"] == "all 10"
    assert row["near ΔE"] == evaluation["ood"]["ood_near"]["ΔEnergy (c=1, a=0)"]["auroc"]
    assert row["near ΔE − Energy"] == pytest.approx(row["near ΔE"] - row["near Energy"])
    assert "`dsenergy-demo` | all 10 | 0 |" in (tmp_path / "demo_variants.md").read_text(encoding="utf-8")
    assert len(pd.read_csv(tmp_path / "demo_variants.csv")) == 1


def test_demo_variants_table_rejects_mismatched_records(tmp_path):
    from dsenergy.demo import demo_checkpoint_path

    module = _load_script("demo_variants_table")
    models = demo_checkpoint_path().parent
    training = json.loads((models / "dsenergy-demo.training.json").read_text(encoding="utf-8"))
    evaluation = json.loads((models / "dsenergy-demo.evaluation.json").read_text(encoding="utf-8"))
    (tmp_path / "other.training.json").write_text(json.dumps({**training, "sha256": "0" * 64}), encoding="utf-8")
    (tmp_path / "other.evaluation.json").write_text(json.dumps(evaluation), encoding="utf-8")

    with pytest.raises(ValueError, match="evaluate the checkpoint again"):
        module.main(["--models", str(tmp_path), "--out", str(tmp_path / "out")])
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        module.main(["--models", str(tmp_path / "no-such-folder"), "--out", str(tmp_path / "out")])


def test_variants_table_prefixes_duplicate_names(tmp_path):
    from dsenergy.demo import demo_checkpoint_path

    module = _load_script("demo_variants_table")
    models = demo_checkpoint_path().parent
    for folder in ("first", "second"):
        (tmp_path / folder).mkdir()
        for kind in ("training", "evaluation"):
            (tmp_path / folder / f"dsenergy-demo.{kind}.json").write_bytes((models / f"dsenergy-demo.{kind}.json").read_bytes())

    table = module.main(["--models", str(tmp_path / "first"), str(tmp_path / "second"), "--out", str(tmp_path / "out")])

    assert list(table["model"]) == ["first/dsenergy-demo", "second/dsenergy-demo"]
    with pytest.raises(ValueError, match="named more than once"):
        module.main(["--models", str(tmp_path / "first"), str(tmp_path / "first"), "--out", str(tmp_path / "out")])


def test_committed_demo_variants_table_matches_its_records(tmp_path):
    module = _load_script("demo_variants_table")
    committed = module.REPO_ROOT / "results" / "demo-variants" / "demo_variants.md"

    module.main(["--out", str(tmp_path)])

    assert (tmp_path / "demo_variants.md").read_text(encoding="utf-8") == committed.read_text(encoding="utf-8")


def test_prompt_drift_zero_for_phrase_init(tmp_path):
    from dsenergy.data.fashion_open import FASHION_ID_CLASSES
    from dsenergy.prompts import PromptLearner
    from dsenergy.train import save_prompt_learner

    module = _load_script("prompt_drift")
    bundle = load_clip("dsenergy-demo")
    learner = PromptLearner(bundle.model, bundle.tokenizer, FASHION_ID_CLASSES, n_ctx=4, ctx_init="a photo of a")
    moved = PromptLearner(bundle.model, bundle.tokenizer, FASHION_ID_CLASSES, n_ctx=4, seed=3)
    with torch.no_grad():
        moved.context_vectors.mul_(100.0)
    files = [save_prompt_learner(learner, tmp_path / "coop-seed1.pt"), save_prompt_learner(moved, tmp_path / "coop-seed2.pt")]

    table = module.drift_table(files, bundle, FASHION_ID_CLASSES, ["a photo of a {}."]).set_index("seed")

    assert table.loc[1, "min_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert table.loc[2, "min_cosine"] < table.loc[1, "min_cosine"]
    assert list(table["method"]) == ["coop", "coop"]


def test_prompt_drift_command_writes_tables(finetune_run, tmp_path):
    module = _load_script("prompt_drift")
    _, out, _ = finetune_run

    table = module.main(["--prompts", str(out / "prompts"), "--model", RANDOM_MODEL, "--out", str(tmp_path)])

    assert len(table) == len(list((out / "prompts").glob("*-seed*.pt")))
    assert table["min_cosine"].between(-1.0 - 1e-6, 1.0 + 1e-6).all()
    assert (tmp_path / "prompt_drift.md").read_text(encoding="utf-8").startswith("| prompts | min cosine |")


@pytest.mark.parametrize("kind, message", [("absent", "does not exist"), ("file", "is a file"), ("empty", "contains no")])
def test_prompt_drift_rejects_bad_prompts(kind, message, tmp_path, capsys):
    module = _load_script("prompt_drift")
    prompts = tmp_path / "prompts"
    if kind == "file":
        prompts.write_text("not a folder")
    elif kind == "empty":
        prompts.mkdir()

    with pytest.raises(SystemExit) as raised:
        module.main(["--prompts", str(prompts), "--out", str(tmp_path)])

    error = capsys.readouterr().err
    assert raised.value.code == 2
    assert f"--prompts {prompts} {message}" in error
    assert "scripts/finetune_table.py writes <method>-seed<s>.pt files" in error


def test_prompt_drift_rejects_other_weights(finetune_run, tmp_path, capsys):
    module = _load_script("prompt_drift")
    _, out, _ = finetune_run

    with pytest.raises(SystemExit) as raised:
        module.main(["--prompts", str(out / "prompts"), "--model", "dsenergy-demo", "--out", str(tmp_path)])

    assert raised.value.code == 2
    assert "was trained on model weights random-init-seed0" in capsys.readouterr().err
