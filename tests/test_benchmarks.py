"""Small runs of the benchmark scripts: their options, their records and the committed records they must not touch."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load_benchmark(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_scores_writes_out(tmp_path):
    module = _load_benchmark("bench_scores")
    committed = (BENCHMARKS / "results" / "scores.json").read_bytes()

    report = module.main(["--num-samples", "64", "--num-classes", "10", "--repeats", "1", "--out", str(tmp_path / "s.json")])

    assert json.loads((tmp_path / "s.json").read_text(encoding="utf-8")) == report
    assert report["num_samples"] == 64
    assert (BENCHMARKS / "results" / "scores.json").read_bytes() == committed


def test_bench_scores_help_lists_defaults(capsys):
    module = _load_benchmark("bench_scores")

    try:
        module.main(["--help"])
    except SystemExit:
        pass
    text = " ".join(capsys.readouterr().out.split())

    assert "rows N of the similarity matrix (default: 100000)" in text
    assert "(default: benchmarks/results/scores.json, the committed record)" in text


def test_bench_train_epoch_counts_partial_step(tmp_path):
    module = _load_benchmark("bench_train_epoch")

    # 4 shots × 6 classes = 24 samples, fewer than one batch of 32: one partial step per epoch.
    result = module.main(["--shots", "4", "--repeats", "1", "--out", str(tmp_path / "epoch.json")])

    assert result["samples"] == 24
    assert result["steps"] == 1
