"""The machine description that benchmark records carry next to their numbers."""

from __future__ import annotations

import os
import platform

import open_clip
import torch


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
