"""Benchmark ``dsenergy.features.extract_features`` against a bare ``model.encode_image`` loop.

Both run over the same pre-built image tensors with random-weight models (ViT-B-32 and a small
ViT), after one warm-up run each. Each repeat runs every variant back to back. The ratio
kit throughput / bare throughput is computed within each repeat, and the script reports its
median over the repeats together with the median throughputs. The kit is measured on an image tensor (sliced directly) and on a
map-style dataset of the same tensors (through a ``DataLoader``). Target: kit / bare ≥ 0.95.

Run: ``python benchmarks/bench_extraction.py [--device cuda]``; writes
``benchmarks/results/extraction.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from dsenergy.features import extract_features
from dsenergy.models import load_clip

from _common import SMALL_MODEL_NAME, machine_description, register_small_model  # benchmarks/ is on sys.path

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "extraction.json"
TARGET_RATIO = 0.95


class TensorListDataset(Dataset):
    """Map-style dataset over an image tensor, so the kit goes through its DataLoader path."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def bare_loop(model: torch.nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> None:
    """Encode the images batch by batch with nothing but ``model.encode_image``."""
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            model.encode_image(images[start:start + batch_size].to(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, count: int, batch_size: int, repeats: int, device: torch.device) -> dict:
    """Time the bare loop and both kit paths on ``count`` images and return throughputs and ratios."""
    bundle = load_clip(name, seed=0, device=device)
    size = bundle.model.visual.image_size
    images = torch.randn(count, 3, *size, generator=torch.Generator().manual_seed(0))
    dataset = TensorListDataset(images)

    variants = {
        "bare": lambda: bare_loop(bundle.model, images, batch_size, device),
        "kit_tensor": lambda: extract_features(bundle, images, batch_size=batch_size, progress=False),
        "kit_dataset": lambda: extract_features(bundle, dataset, batch_size=batch_size, progress=False),
    }
    for run in variants.values():
        run()  # warm-up

    # Each repeat times every variant back to back, starting from a rotating position, and the ratio
    # is taken within the repeat, so load from other processes affects both sides of a ratio alike.
    names = list(variants)
    timings: dict[str, list[float]] = {variant: [] for variant in variants}
    for repeat in range(repeats):
        for variant in names[repeat % len(names):] + names[:repeat % len(names)]:
            start = time.perf_counter()
            variants[variant]()
            timings[variant].append(time.perf_counter() - start)

    throughput = {variant: count / statistics.median(values) for variant, values in timings.items()}
    paired = {
        variant: statistics.median(bare / kit for bare, kit in zip(timings["bare"], timings[variant]))
        for variant in ("kit_tensor", "kit_dataset")
    }
    result = {
        "model": name,
        "images": count,
        "image_size": list(size),
        "batch_size": batch_size,
        "repeats": repeats,
        "seconds": timings,
        "median_images_per_second": throughput,
        "ratio_kit_tensor_vs_bare": paired["kit_tensor"],
        "ratio_kit_dataset_vs_bare": paired["kit_dataset"],
    }
    print(
        f"{name:24s} bare {throughput['bare']:8.1f} img/s | kit (tensor) {throughput['kit_tensor']:8.1f} img/s "
        f"ratio {result['ratio_kit_tensor_vs_bare']:.3f} | kit (dataset) {throughput['kit_dataset']:8.1f} img/s "
        f"ratio {result['ratio_kit_dataset_vs_bare']:.3f}"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="device to run on (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--vit-images", type=int, default=16, help="images encoded per run with ViT-B-32")
    parser.add_argument("--small-images", type=int, default=64, help="images encoded per run with the small ViT")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per variant")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    register_small_model()
    device = torch.device(args.device)

    results = [
        measure("ViT-B-32", args.vit_images, args.batch_size, args.repeats, device),
        measure(SMALL_MODEL_NAME, args.small_images, args.batch_size, args.repeats, device),
    ]
    passed = all(
        result[key] >= TARGET_RATIO
        for result in results
        for key in ("ratio_kit_tensor_vs_bare", "ratio_kit_dataset_vs_bare")
    )
    payload = {
        "benchmark": "extract_features vs bare encode_image loop",
        "metric": "median over repeats of (bare seconds / kit seconds) within the same repeat",
        "target_ratio": TARGET_RATIO,
        "passed": passed,
        "device": str(device),
        "machine": machine_description(device),
        "models": results,
    }
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"target ratio ≥ {TARGET_RATIO}: {'met' if passed else 'MISSED'}; results in {RESULTS_PATH}")


if __name__ == "__main__":
    main()
