"""Small random-weight CLIP fixtures for the prompt-tuning tests, and a torchrun training worker.

Run under torchrun, the worker trains on synthetic features and rank 0 writes the context vectors
and the history to ``--out``::

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py --out result.pt
"""

from __future__ import annotations

import argparse
import functools
import os

import torch
import torch.nn.functional as F

TINY_MODEL_NAME = "dsenergy-tiny-test"
TINY_MODEL_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
CLASS_NAMES = ["t-shirt", "trouser", "dress", "sandal", "sneaker", "bag"]


@functools.lru_cache(maxsize=4)
def tiny_bundle(seed: int = 0):
    """Load a two-layer random-weight CLIP (32-px images, 32-token context) as a ClipBundle, once per seed.

    The model is shared between callers; prompt tuning leaves its weights unchanged.
    """
    import open_clip

    from dsenergy.models import load_clip, register_model_config

    if open_clip.get_model_config(TINY_MODEL_NAME) != TINY_MODEL_CONFIG:
        register_model_config(TINY_MODEL_NAME, TINY_MODEL_CONFIG)
    return load_clip(TINY_MODEL_NAME, None, seed=seed)


def synthetic_features(samples: int, dim: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Return normalised features clustered around one random direction per class, with labels."""
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=generator), dim=-1)
    labels = torch.arange(samples) % classes
    noise = 0.5 * torch.randn(samples, dim, generator=generator) / dim**0.5
    return F.normalize(centres[labels] + noise, dim=-1), labels


def _main() -> None:
    parser = argparse.ArgumentParser(description="Train CoOp+EBM on synthetic features (one torchrun process).")
    parser.add_argument("--out", required=True, help="file that rank 0 writes the result to")
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n-ctx", type=int, default=4)
    args = parser.parse_args()

    from dsenergy.train import TrainConfig, train_prompts

    torch.set_num_threads(1)
    bundle = tiny_bundle()
    features, labels = synthetic_features(args.samples, TINY_MODEL_CONFIG["embed_dim"], len(CLASS_NAMES))
    config = TrainConfig(
        method="coop_ebm",
        epochs=args.epochs,
        batch_size=args.batch_size,
        n_ctx=args.n_ctx,
        ebm_weight=1.0,
        warmup_epochs=0,
        progress=False,
    )
    result = train_prompts(bundle, CLASS_NAMES, (features, labels), config)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(
            {"context_vectors": result.prompt_learner.context_vectors.detach(), "history": result.history},
            args.out,
        )


if __name__ == "__main__":
    _main()
