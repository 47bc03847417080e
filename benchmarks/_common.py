"""Pieces shared by the benchmark scripts: the small test model and the machine description."""

from __future__ import annotations

import os
import platform

import open_clip
import torch

from dsenergy.models import register_model_config

SMALL_MODEL_NAME = "dsenergy-bench-small"
SMALL_MODEL_CONFIG = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 256, "layers": 4, "head_width": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 2},
}


def register_small_model() -> None:
    """Register the small random-weight ViT that the benchmarks time next to ViT-B-32."""
    if open_clip.get_model_config(SMALL_MODEL_NAME) != SMALL_MODEL_CONFIG:
        register_model_config(SMALL_MODEL_NAME, SMALL_MODEL_CONFIG)


def machine_description(device: torch.device) -> dict[str, object]:
    """Return platform, CPU count, torch threads, library versions and the CUDA device name."""
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
