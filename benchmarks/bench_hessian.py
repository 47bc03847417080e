"""Benchmark the HVP-based top Hessian eigenvalue against the dense Hessian at d = K·D ≥ 2048.

The loss is the mean cross-entropy of a zero-shot cosine classifier whose K×D text-feature matrix
is θ (renormalised rows, τ = 0.01) on N random unit image features. Both paths run in this process
for the timings. Peak memory comes from separate child processes, one per path: a thread samples
the resident set size with psutil every 2 ms, and the result is the peak minus the resident size
just before the path starts (tracemalloc does not see torch's CPU allocations, and ``ru_maxrss`` is
dominated by the import of torch). Sampling can miss a spike shorter than 2 ms. On CUDA the
child also records ``torch.cuda.max_memory_allocated``.

Run: ``python benchmarks/bench_hessian.py [--classes 8 --width 256 --samples 2048 --device cpu]``.
Writes ``benchmarks/results/hessian.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F

from dsenergy import hessian

RESULTS = Path(__file__).resolve().parent / "results" / "hessian.json"


def build_problem(args: argparse.Namespace):
    generator = torch.Generator().manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    features = F.normalize(torch.randn(args.samples, args.width, generator=generator), dim=1)
    labels = torch.randint(0, args.classes, (args.samples,), generator=generator)
    text_features = F.normalize(torch.randn(args.classes, args.width, generator=generator), dim=1)
    # Pull the text features towards their class means so the loss is not at a random point.
    for label in range(args.classes):
        text_features[label] += features[labels == label].mean(dim=0)
    theta = text_features.to(device=args.device, dtype=dtype)
    batches = hessian.feature_batches(features.to(dtype), labels, args.batch_size)
    loss_fn = hessian.make_classifier_loss(args.temperature)
    return loss_fn, theta, batches


def run_hvp(args, loss_fn, theta, batches) -> float:
    result = hessian.top_eigenvalues(loss_fn, theta, batches, k=1, iters=args.iters, tol=args.tol, progress=False)
    return float(result.eigenvalues[0]), result.num_matvecs


def run_dense(args, loss_fn, theta, batches) -> float:
    matrix = hessian.dense_hessian(loss_fn, theta, batches, max_dim=theta.numel())
    return float(torch.linalg.eigvalsh(matrix.double())[-1])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure_child(args: argparse.Namespace) -> None:
    """Run one path and print its peak memory as JSON (called in a fresh process)."""
    loss_fn, theta, batches = build_problem(args)
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    (run_hvp if args.measure == "hvp" else run_dense)(args, loss_fn, theta, batches)
    done.set()
    sampler.join()
    peak = max(peak, process.memory_info().rss)
    record = {
        "rss_before_path_mib": baseline / 2**20,
        "peak_rss_mib": peak / 2**20,
        "peak_rss_increase_mib": (peak - baseline) / 2**20,
    }
    if args.device.startswith("cuda"):
        record["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=8, help="number of classes K")
    parser.add_argument("--width", type=int, default=256, help="feature width D (d = K·D)")
    parser.add_argument("--samples", type=int, default=2048, help="number of image features N")
    parser.add_argument("--batch-size", type=int, default=2048, help="samples per batch of cached features")
    parser.add_argument("--temperature", type=float, default=0.01)
    parser.add_argument("--iters", type=int, default=100, help="maximum Lanczos steps")
    parser.add_argument("--tol", type=float, default=1e-5, help="Lanczos relative residual tolerance")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op CPU threads; 1 avoids thread contention on a shared machine",
    )
    parser.add_argument("--measure", choices=["hvp", "dense"], help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.measure:
        measure_child(args)
        return

    loss_fn, theta, batches = build_problem(args)
    dim = theta.numel()

    _sync(args.device)
    started = time.perf_counter()
    hvp_value, num_hvps = run_hvp(args, loss_fn, theta, batches)
    _sync(args.device)
    hvp_seconds = time.perf_counter() - started

    started = time.perf_counter()
    dense_value = run_dense(args, loss_fn, theta, batches)
    _sync(args.device)
    dense_seconds = time.perf_counter() - started

    forwarded = [
        f"--{name.replace('_', '-')}={value}"
        for name, value in vars(args).items()
        if name not in ("measure", "output")
    ]
    memory = {}
    for path in ("hvp", "dense"):
        child = subprocess.run(
            [sys.executable, __file__, *forwarded, "--measure", path], capture_output=True, text=True, check=True
        )
        memory[path] = json.loads(child.stdout.strip().splitlines()[-1])

    result = {
        "problem": {
            "loss": "mean CE of a cosine classifier, θ = K×D text features (rows renormalised)",
            "classes": args.classes, "width": args.width, "dim": dim, "samples": args.samples,
            "batch_size": args.batch_size, "temperature": args.temperature, "dtype": args.dtype,
            "device": args.device, "seed": args.seed, "threads": args.threads,
        },
        "hvp": {"method": "lanczos", "top_eigenvalue": hvp_value, "num_hvps": num_hvps,
                "seconds": hvp_seconds, **memory["hvp"]},
        "dense": {"method": "torch.func.hessian + torch.linalg.eigvalsh", "top_eigenvalue": dense_value,
                  "seconds": dense_seconds, **memory["dense"]},
        "time_ratio_dense_over_hvp": dense_seconds / hvp_seconds,
        "relative_eigenvalue_error": abs(hvp_value - dense_value) / abs(dense_value),
        "memory_measure": "peak RSS sampled with psutil every 2 ms in a fresh process per path, minus RSS just before the path",
        "environment": {
            "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor(), "threads": torch.get_num_threads(),
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")

    print(f"d = {dim} ({args.classes}×{args.width}), N = {args.samples}, {args.dtype} on {args.device}")
    print(f"HVP Lanczos : λ_max = {hvp_value:.6g} in {hvp_seconds:.2f} s ({num_hvps} HVPs), "
          f"peak RSS +{memory['hvp']['peak_rss_increase_mib']:.0f} MiB")
    print(f"dense       : λ_max = {dense_value:.6g} in {dense_seconds:.2f} s, "
          f"peak RSS +{memory['dense']['peak_rss_increase_mib']:.0f} MiB")
    print(f"time ratio dense/HVP = {result['time_ratio_dense_over_hvp']:.1f}×, "
          f"relative eigenvalue error = {result['relative_eigenvalue_error']:.2e}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
