"""Time ΔEnergy against the energy score on cached similarities (N = 100 000, K = 1 000).

Both scores run on the same float32 tensor in the same process, alternating, after a warm-up.
The ratio is the median ΔEnergy time over the median energy time; the target is at most 1.5.
Writes ``benchmarks/results/scores.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from dsenergy import scores

RESULTS = Path(__file__).resolve().parent / "results"


def time_call(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-samples", type=int, default=100_000)
    parser.add_argument("--num-classes", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
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

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scores.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
