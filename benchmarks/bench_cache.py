"""Benchmark a feature-cache hit against the first extraction that fills the cache.

For each model (random-weight ViT-B-32 and a small ViT), ``cached_feature_set`` runs once on an
empty cache folder (a miss: preprocessing, encoding and the atomic write), then several times on
the filled cache (hits: fingerprint, read and checksum validation). The ratio is the miss time over
the median hit time. Target: ≥ 50×.

Run: ``python benchmarks/bench_cache.py [--device cuda]``; writes ``benchmarks/results/cache.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dsenergy.features import cached_feature_set
from dsenergy.models import load_clip

from _common import SMALL_MODEL_NAME, machine_description, register_small_model  # benchmarks/ is on sys.path

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "cache.json"
TARGET_RATIO = 50.0


class RandomImageDataset(Dataset):
    """Seeded random RGB PIL images with labels and a file-like ``samples`` list."""

    def __init__(self, count: int, size: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.pixels = rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)
        self.labels = np.arange(count) % 10
        self.samples = [(f"images/{index:06d}.png", int(label)) for index, label in enumerate(self.labels)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.pixels[index]), int(self.labels[index])


def measure(name: str, count: int, image_size: int, hits: int, device: torch.device, folder: Path) -> dict:
    """Time one cache miss and ``hits`` cache hits on ``count`` images and return the ratio."""
    bundle = load_clip(name, seed=0, device=device)
    dataset = RandomImageDataset(count, image_size)
    dataset_id = f"bench/random-{count}"

    start = time.perf_counter()
    first = cached_feature_set(bundle, dataset, dataset_id, cache_dir=folder, batch_size=32, progress=False)
    miss_seconds = time.perf_counter() - start
    if first.cache_hit:
        raise RuntimeError(f"the cache folder {folder} already held {first.path}; use an empty folder")

    hit_seconds = []
    for _ in range(hits):
        start = time.perf_counter()
        again = cached_feature_set(bundle, dataset, dataset_id, cache_dir=folder, progress=False)
        hit_seconds.append(time.perf_counter() - start)
        if not again.cache_hit or not torch.equal(again.features, first.features):
            raise RuntimeError("a repeated call did not return the cached features")

    ratio = miss_seconds / statistics.median(hit_seconds)
    result = {
        "model": name,
        "images": count,
        "source_image_size": image_size,
        "feature_shape": list(first.features.shape),
        "file_bytes": first.path.stat().st_size,
        "miss_seconds": miss_seconds,
        "hit_seconds": hit_seconds,
        "median_hit_seconds": statistics.median(hit_seconds),
        "ratio_miss_vs_hit": ratio,
    }
    print(
        f"{name:24s} first extraction {miss_seconds:8.3f} s | hit (median of {hits}) "
        f"{result['median_hit_seconds'] * 1000:8.2f} ms | ratio {ratio:9.1f}×"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="device to run on (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--vit-images", type=int, default=32, help="images in the ViT-B-32 dataset")
    parser.add_argument("--small-images", type=int, default=256, help="images in the small-ViT dataset")
    parser.add_argument("--hits", type=int, default=5, help="timed cache hits per model")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    register_small_model()
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory(prefix="dsenergy-bench-cache-") as folder:
        results = [
            measure("ViT-B-32", args.vit_images, 256, args.hits, device, Path(folder)),
            measure(SMALL_MODEL_NAME, args.small_images, 80, args.hits, device, Path(folder)),
        ]

    passed = all(result["ratio_miss_vs_hit"] >= TARGET_RATIO for result in results)
    payload = {
        "benchmark": "feature cache hit vs first extraction",
        "metric": "first extraction seconds / median cache-hit seconds",
        "target_ratio": TARGET_RATIO,
        "passed": passed,
        "device": str(device),
        "machine": machine_description(device),
        "models": results,
    }
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"target ratio ≥ {TARGET_RATIO:g}×: {'met' if passed else 'MISSED'}; results in {RESULTS_PATH}")


if __name__ == "__main__":
    main()
