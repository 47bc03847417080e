"""Time ΔEnergy against the energy score on cached similarities (N = 100 000, K = 1 000).

Both scores run on the same float32 tensor in the same process, alternating, after a warm-up.
The ratio is the median ΔEnergy time over the median energy time; the target is at most 1.5.

Run: ``python benchmarks/bench_scores.py [--num-samples 100000] [--num-classes 1000] [--repeats 7] [--out FILE]``;
writes ``benchmarks/results/scores.json`` by default.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Sequence

import torch

from dsenergy import scores

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "scores.json"


def time_call(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> dict:
    """Time the scores, print the ratios, write the JSON record and return it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--num-samples", type=int, default=100_000, help="rows N of the similarity matrix (default: %(default)s)"
    )
    parser.add_argument(
        "--num-classes", type=int, default=1_000, help="classes K, the columns of the matrix (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=7, help="timed calls per score after one warm-up call (default: %(default)s)"
    )
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(),
        help="torch intra-op CPU threads (default: torch's current setting, %(default)s here)",
    )
    parser.add_argument(
        "--out", default=str(RESULTS_PATH),
        help="JSON result file (default: benchmarks/results/scores.json, the committed record)",
    )
    args = parser.parse_args(argv)
    for option in ("num_samples", "num_classes", "repeats", "threads"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(0)
    similarities = 0.1 + 0.25 * torch.rand(args.num_samples, args.num_classes, generator=generator)
    tau = 0.01

    cases = {
        "energy": lambda: scores.energy(similarities, tau),
        "delta_energy_c1": lambda: scores.delta_energy(similarities, tau, top_c=1),
        "delta_energy_c5": lambda: scores.delta_energy(similarities, tau, top_c=5),
        "msp": lambda: scores.msp(similarities, tau),
    }
    for fn in cases.values():
        fn()

    timings: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            timings[name].append(time_call(fn))

    medians = {name: statistics.median(values) for name, values in timings.items()}
    report = {
        "benchmark": "delta_energy vs energy on cached similarities",
        "num_samples": args.num_samples,
        "num_classes": args.num_classes,
        "dtype": "float32",
        "threads": args.threads,
        "repeats": args.repeats,
        "platform": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "median_seconds": medians,
        "ratio_delta_energy_c1_to_energy": medians["delta_energy_c1"] / medians["energy"],
        "ratio_delta_energy_c5_to_energy": medians["delta_energy_c5"] / medians["energy"],
        "target_ratio_max": 1.5,
    }
    for name, value in medians.items():
        print(f"{name:>18}: {value * 1e3:8.1f} ms (median of {args.repeats})")
    print(f"ratio ΔEnergy(c=1) / energy: {report['ratio_delta_energy_c1_to_energy']:.2f} (target ≤ 1.5)")
    print(f"ratio ΔEnergy(c=5) / energy: {report['ratio_delta_energy_c5_to_energy']:.2f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
