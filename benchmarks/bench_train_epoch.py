"""Benchmark one CoOp+EBM epoch on cached image features against the same epoch re-encoding images.

Both variants run ``dsenergy.train.train_prompts`` for one epoch on the same K-shot fashion-open
``id_train`` subset with the same settings. The image variant (``input_mode="images"``) loads,
augments and encodes every image through the frozen image tower at each step. The feature variant
reads features extracted once beforehand, and the extraction time is reported separately. The model is the
demo model when its checkpoint exists, else the demo architecture with random weights (timing does
not depend on the weights). Each variant runs once to warm up, then ``--repeats`` times; the
median is reported. Target: images / features ≥ 10.

Run: ``python benchmarks/bench_train_epoch.py [--model ViT-B-32] [--shots 64] [--repeats 3] [--device cpu]
[--out FILE]``; writes ``benchmarks/results/train_epoch.json`` by default.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dsenergy.data import kshot_indices, load_fashion_open
from dsenergy.demo import DEMO_MODEL_CONFIG, DEMO_MODEL_NAME, demo_checkpoint_path
from dsenergy.features import extract_features
from dsenergy.models import load_clip, register_model_config
from dsenergy.train import TrainConfig, steps_per_epoch, train_prompts

RESULTS_PATH = Path(__file__).resolve().parent / "results" / "train_epoch.json"
TARGET_RATIO = 10.0
RANDOM_DEMO_NAME = "dsenergy-demo-random-weights"


def _load_model(device: torch.device, model_name: str):
    if model_name != DEMO_MODEL_NAME:
        return load_clip(model_name, None, device=device, seed=0), "random weights"
    if demo_checkpoint_path().is_file():
        return load_clip(DEMO_MODEL_NAME, device=device), "demo checkpoint"
    register_model_config(RANDOM_DEMO_NAME, DEMO_MODEL_CONFIG)
    return load_clip(RANDOM_DEMO_NAME, None, device=device, seed=0), "demo architecture, random weights"


def _time_epoch(bundle, class_names, data, config: TrainConfig, device: torch.device) -> float:
    start = time.perf_counter()
    train_prompts(bundle, class_names, data, config)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> dict:
    """Time both variants, print the ratio, write the JSON record and return it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=64, help="training images per class (default: %(default)s)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed repeats per variant, after one warm-up (default: %(default)s)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument(
        "--model",
        default=DEMO_MODEL_NAME,
        help="open_clip model name; any name other than the demo model runs with random weights (default: %(default)s)",
    )
    parser.add_argument(
        "--out", default=str(RESULTS_PATH),
        help="JSON result file (default: benchmarks/results/train_epoch.json, the committed record)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    device = torch.device(args.device)
    bundle, weights = _load_model(device, args.model)
    train_set = load_fashion_open("id_train")
    labels = torch.tensor(np.array(train_set.labels), dtype=torch.long)
    indices = kshot_indices(labels.numpy(), args.shots, 1, train_set.identity).tolist()
    subset = torch.utils.data.Subset(train_set, indices)
    class_names = list(train_set.class_names)

    start = time.perf_counter()
    features = extract_features(bundle, subset, progress=False)
    extraction_s = time.perf_counter() - start

    common = dict(method="coop_ebm", epochs=1, warmup_epochs=0, n_ctx=16, batch_size=32, progress=False)
    variants = {
        "features": (TrainConfig(input_mode="features", **common), (features, labels[indices])),
        "images": (TrainConfig(input_mode="images", **common), subset),
    }
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for name, (config, data) in variants.items():
        _time_epoch(bundle, class_names, data, config, device)
    for _ in range(args.repeats):
        for name, (config, data) in variants.items():
            timings[name].append(_time_epoch(bundle, class_names, data, config, device))

    features_s = statistics.median(timings["features"])
    images_s = statistics.median(timings["images"])
    ratio = images_s / features_s
    result = {
        "benchmark": "one CoOp+EBM epoch: cached features vs re-encoding augmented images",
        "model": bundle.name,
        "weights": weights,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "samples": len(indices),
        "steps": steps_per_epoch(len(indices), common["batch_size"]),
        "batch_size": common["batch_size"],
        "n_ctx": common["n_ctx"],
        "feature_extraction_s": extraction_s,
        "epoch_features_s": features_s,
        "epoch_images_s": images_s,
        "timings_s": timings,
        "ratio_images_over_features": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"{bundle.name} ({weights}), {len(indices)} images, device {device}: epoch on features {features_s:.3f} s, "
        f"re-encoding images {images_s:.3f} s, ratio {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x); "
        f"one-off extraction {extraction_s:.3f} s; wrote {out}"
    )
    return result


if __name__ == "__main__":
    main()
