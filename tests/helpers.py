"""Synthetic inputs shared by several test modules."""

from __future__ import annotations

import torch


def clustered_features(seed: int = 0, n: int = 60, classes: int = 5, dim: int = 16):
    """Return class text features and ID / OOD image features: ID images lie near one class, OOD images point anywhere."""
    generator = torch.Generator().manual_seed(seed)
    text = torch.nn.functional.normalize(torch.randn(classes, dim, generator=generator), dim=1)
    labels = torch.randint(0, classes, (n,), generator=generator)
    id_features = torch.nn.functional.normalize(text[labels] + 0.3 * torch.randn(n, dim, generator=generator), dim=1)
    ood_features = torch.nn.functional.normalize(torch.randn(n, dim, generator=generator), dim=1)
    return text, {"id_test": id_features, "ood_far": ood_features}, labels
