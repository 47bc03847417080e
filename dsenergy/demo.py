"""The demo model: a small CLIP trained on Fashion-MNIST so every part of the kit runs offline.

``dsenergy-demo`` is an open_clip ``CLIP`` with a 28-pixel ViT image tower (patch 4, so 7 × 7 patches)
and a small text transformer over open_clip's standard BPE tokenizer. It is trained from scratch on
the Fashion-MNIST training images of all ten classes, each paired with captions from
:data:`DEMO_TEMPLATES`, so it has seen every concept that the fashion-open benchmark later treats as
near OOD. The committed weights live at :func:`demo_checkpoint_path`; ``MODEL_CARD.md`` beside them
records how they were made and what they score.

Command line::

    python -m dsenergy.demo train [--epochs N] [--seed S] [--out PATH] [--source DIR] [--threads T] [--classes all|id]
    python -m dsenergy.demo evaluate [--checkpoint PATH] [--card PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from dsenergy._paths import data_dir

__all__ = [
    "DEMO_MODEL_NAME",
    "DEMO_MODEL_CONFIG",
    "DEMO_TEMPLATES",
    "DemoTrainConfig",
    "register_demo_config",
    "demo_checkpoint_path",
    "create_demo_model",
    "preprocess_to_uint8",
    "class_caption_contrastive_loss",
    "train_demo_model",
    "save_demo_checkpoint",
    "evaluate_demo_model",
    "write_model_card",
    "main",
]

logger = logging.getLogger(__name__)

#: Name under which the demo architecture is registered with open_clip.
DEMO_MODEL_NAME = "dsenergy-demo"

#: open_clip model config of the demo model (the same schema as open_clip's ``model_configs/*.json``).
#: Preprocessing is open_clip's default (bicubic resize to 28 px, which leaves Fashion-MNIST images unchanged, centre crop, OpenAI CLIP mean/std),
#: so ``open_clip.create_model_and_transforms(DEMO_MODEL_NAME)`` returns the transform the
#: weights were trained with, without extra arguments.
DEMO_MODEL_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": 28,
        "patch_size": 4,
        "width": 96,
        "layers": 4,
        "head_width": 32,
        "mlp_ratio": 2.0,
    },
    "text_cfg": {
        "context_length": 32,
        "vocab_size": 49408,
        "width": 128,
        "heads": 4,
        "layers": 4,
    },
}

#: Caption templates used to train the demo model and, by default, to build its zero-shot classifiers.
DEMO_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a grayscale photo of a {}.",
    "a black and white photo of a {}.",
    "a low-resolution photo of a {}.",
    "a blurry photo of a {}.",
    "a small photo of a {}.",
    "a close-up photo of a {}.",
    "a centered photo of a {}.",
    "a product photo of a {}.",
    "a catalogue picture of a {}.",
    "a thumbnail of a {}.",
    "an image of a {}.",
    "a picture of the {}.",
    "this is a {}.",
    "a {}.",
    "{}",
    "a fashion item: a {}.",
)

_CHECKPOINT_FILE = "dsenergy-demo.pt"


def register_demo_config() -> None:
    """Register :data:`DEMO_MODEL_CONFIG` with open_clip under :data:`DEMO_MODEL_NAME` (idempotent).

    ``open_clip.add_model_config`` only accepts files, so the config is written to a temporary JSON
    file for the call. open_clip keeps registered configs in memory when it rescans, so the file
    is not needed afterwards.
    """
    if open_clip.get_model_config(DEMO_MODEL_NAME) == DEMO_MODEL_CONFIG:
        return

    with tempfile.TemporaryDirectory(prefix="dsenergy-open-clip-") as folder:
        config_file = Path(folder) / f"{DEMO_MODEL_NAME}.json"
        config_file.write_text(json.dumps(DEMO_MODEL_CONFIG, indent=2), encoding="utf-8")
        open_clip.add_model_config(config_file)

    if open_clip.get_model_config(DEMO_MODEL_NAME) != DEMO_MODEL_CONFIG:
        raise RuntimeError(
            f"open_clip {open_clip.__version__} did not register the {DEMO_MODEL_NAME} config; "
            "check that open_clip.add_model_config accepts a JSON file path in this version"
        )
    logger.debug("Registered open_clip model config %s", DEMO_MODEL_NAME)


def demo_checkpoint_path() -> Path:
    """Return the path of the committed demo checkpoint, ``data_dir()/models/dsenergy-demo.pt``."""
    return data_dir() / "models" / _CHECKPOINT_FILE


def create_demo_model(seed: int | None = None) -> torch.nn.Module:
    """Create the demo architecture with random weights (seeded when ``seed`` is given), in fp32 on CPU."""
    register_demo_config()
    if seed is not None:
        torch.manual_seed(seed)
    return open_clip.create_model(DEMO_MODEL_NAME, pretrained=None)


# --------------------------------------------------------------------------------------------------
# Training


@dataclass
class DemoTrainConfig:
    """Hyperparameters of a demo-model training run."""

    epochs: int = 15
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    captions_per_class: int = 2
    max_shift: int = 2
    seed: int = 0
    threads: int = 2
    device: str = "cpu"
    templates: tuple[str, ...] = field(default_factory=lambda: DEMO_TEMPLATES)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and ask torch for deterministic kernels where it has them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def preprocess_to_uint8(
    images: np.ndarray, preprocess: Callable[[Image.Image], torch.Tensor], mean: float, std: float
) -> torch.Tensor:
    """Run grayscale images (N×H×W uint8) through an open_clip ``preprocess`` once and return N×S×S uint8.

    The preprocess converts to RGB, so its three channels carry the same grey level. Channel 0 is
    un-normalised with its ``mean`` and ``std`` and rounded back to the 8-bit grid that ``ToTensor``
    produced; :func:`_normalize_batch` then rebuilds the exact preprocess output for any batch.
    """
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be a uint8 array of shape (N, H, W), got {images.dtype} {images.shape}")

    resized = []
    for image in tqdm(images, desc="preprocess", unit="img", leave=False, mininterval=2.0, disable=None):
        tensor = preprocess(Image.fromarray(image, mode="L"))
        resized.append(torch.round((tensor[0] * std + mean) * 255.0).clamp_(0, 255).to(torch.uint8))
    return torch.stack(resized)


def _normalize_batch(gray: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Turn B×S×S uint8 grey levels into the B×3×S×S normalised RGB tensor the preprocess returns."""
    pixels = gray.to(torch.float32).div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    mean_tensor = torch.tensor(mean, dtype=torch.float32, device=gray.device).view(1, 3, 1, 1)
    std_tensor = torch.tensor(std, dtype=torch.float32, device=gray.device).view(1, 3, 1, 1)
    return (pixels - mean_tensor) / std_tensor


def _augment(gray: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Flip each image horizontally with probability 1/2 and shift it by up to ``max_shift`` pixels."""
    flip = torch.rand(len(gray), generator=generator) < 0.5
    gray = torch.where(flip.view(-1, 1, 1), gray.flip(-1), gray)
    if max_shift <= 0:
        return gray

    size = gray.shape[-1]
    padded = F.pad(gray, (max_shift, max_shift, max_shift, max_shift))
    offsets = torch.randint(0, 2 * max_shift + 1, (len(gray), 2), generator=generator)
    shifted = torch.empty_like(gray)
    for index, (dy, dx) in enumerate(offsets.tolist()):
        shifted[index] = padded[index, dy : dy + size, dx : dx + size]
    return shifted


def class_caption_contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    image_labels: torch.Tensor,
    text_labels: torch.Tensor,
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    r"""Compute the symmetric CLIP loss with label-aware targets over a batch of images and class captions.

    With logits :math:`l_{ij} = \lambda\, z_i \cdot w_j` (``λ`` = ``logit_scale``, features
    normalised), image ``i`` takes the uniform distribution over the captions of its class as target,
    and caption ``j`` the uniform distribution over the batch images of its class:

    .. math::

        L = \tfrac12 \Big( -\tfrac1B \sum_i \sum_{j \in P_i} \tfrac{1}{|P_i|} \log \mathrm{softmax}_j(l_{i\cdot})
            - \tfrac{1}{|J|} \sum_{j \in J} \sum_{i \in Q_j} \tfrac{1}{|Q_j|} \log \mathrm{softmax}_i(l_{\cdot j}) \Big)

    where :math:`P_i` are the captions of image ``i``'s class, :math:`Q_j` the images of caption
    ``j``'s class and :math:`J` the captions whose class occurs in the batch.
    """
    logits = logit_scale * image_features @ text_features.T
    positives = (image_labels.view(-1, 1) == text_labels.view(1, -1)).to(logits.dtype)

    image_counts = positives.sum(dim=1)
    if bool((image_counts == 0).any()):
        missing = sorted(set(image_labels[image_counts == 0].tolist()))
        raise ValueError(f"image labels {missing} have no caption in text_labels; add captions for every batch class")
    image_targets = positives / image_counts.view(-1, 1)
    image_loss = -(image_targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()

    text_counts = positives.sum(dim=0)
    present = text_counts > 0
    text_targets = positives[:, present] / text_counts[present].view(1, -1)
    text_loss = -(text_targets * F.log_softmax(logits[:, present], dim=0)).sum(dim=0).mean()

    return 0.5 * (image_loss + text_loss)


def _learning_rate_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Return the learning-rate factor: linear warm-up, then cosine decay to zero."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split parameters so that weight decay applies to matrices only, not to biases, norms, embeddings or the logit scale."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_matrix = parameter.ndim >= 2 and "embedding" not in name and "logit_scale" not in name
        (decay if is_matrix else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_demo_model(
    gray_images: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    config: DemoTrainConfig | None = None,
    max_steps: int | None = None,
) -> tuple[torch.nn.Module, list[float]]:
    """Train the demo CLIP from scratch and return the model (eval mode, CPU) and the mean loss per epoch.

    Args:
        gray_images: N×S×S uint8 grey levels already through the model's preprocess
            (see :func:`preprocess_to_uint8`), with S the model's image size.
        labels: N integer labels indexing ``class_names``.
        class_names: the name of every class, used in the captions.
        config: hyperparameters; the defaults of :class:`DemoTrainConfig` when ``None``.
        max_steps: stop after this many optimiser steps (for smoke tests).
    """
    config = config or DemoTrainConfig()
    labels = torch.as_tensor(labels, dtype=torch.int64)
    if gray_images.dtype != torch.uint8 or gray_images.ndim != 3:
        raise ValueError(f"gray_images must be uint8 of shape (N, S, S), got {gray_images.dtype} {tuple(gray_images.shape)}")
    if len(gray_images) != len(labels):
        raise ValueError(f"got {len(gray_images)} images but {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise ValueError(f"labels must lie in [0, {len(class_names)}), got range [{labels.min()}, {labels.max()}]")
    if not 1 <= config.captions_per_class <= len(config.templates):
        raise ValueError(
            f"captions_per_class must lie in [1, {len(config.templates)}] (the number of templates), "
            f"got {config.captions_per_class}"
        )

    # Thread count and deterministic mode are process-wide, so they are put back afterwards.
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(config.threads)
    try:
        return _train(gray_images, labels, class_names, config, max_steps)
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic, warn_only=previous_warn_only)


def _train(
    gray_images: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    config: DemoTrainConfig,
    max_steps: int | None,
) -> tuple[torch.nn.Module, list[float]]:
    seed_everything(config.seed)
    device = torch.device(config.device)
    model = create_demo_model(seed=config.seed).to(device)
    image_size = DEMO_MODEL_CONFIG["vision_cfg"]["image_size"]
    if gray_images.shape[-1] != image_size or gray_images.shape[-2] != image_size:
        raise ValueError(
            f"gray_images must be {image_size}×{image_size} (the model's image size), got {tuple(gray_images.shape[1:])}; "
            "run them through preprocess_to_uint8 first"
        )
    mean, std = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]

    # Every (template, class) caption is tokenised once, indexed [template, class].
    tokenizer = open_clip.get_tokenizer(DEMO_MODEL_NAME)
    captions = [template.format(name) for template in config.templates for name in class_names]
    tokens = tokenizer(captions).view(len(config.templates), len(class_names), -1).to(device)

    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = math.ceil(len(labels) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch if max_steps is None else min(max_steps, config.epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(
        _parameter_groups(model, config.weight_decay), lr=config.learning_rate, betas=(0.9, 0.98), eps=1e-6
    )
    warmup_steps = min(config.warmup_steps, max(1, total_steps // 10))
    max_log_scale = math.log(100.0)
    class_ids = torch.arange(len(class_names))

    logger.info(
        "Training %s on %d images of %d classes: %d epochs, batch %d, %d steps, seed %d, %d threads, device %s",
        DEMO_MODEL_NAME, len(labels), len(class_names), config.epochs, config.batch_size, total_steps,
        config.seed, config.threads, device,
    )
    epoch_losses: list[float] = []
    step = 0
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(labels), generator=generator)
        running, batches = 0.0, 0
        progress = tqdm(
            range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", unit="step", mininterval=2.0, disable=None
        )
        for batch_index in progress:
            if step >= total_steps:
                break
            index = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
            gray = _augment(gray_images[index], config.max_shift, generator)
            images = _normalize_batch(gray, mean, std).to(device)
            batch_labels = labels[index].to(device)

            # Class captions with label-aware targets, because per-image captions would treat two
            # same-class images in a batch as negatives of each other (false negatives).
            template_ids = torch.stack(
                [torch.randperm(len(config.templates), generator=generator)[: config.captions_per_class] for _ in class_names],
                dim=1,
            )
            text_tokens = tokens[template_ids.to(device), class_ids.to(device).view(1, -1)].reshape(-1, tokens.shape[-1])
            text_labels = class_ids.repeat(config.captions_per_class).to(device)

            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * _learning_rate_factor(step, warmup_steps, total_steps)
            image_features = F.normalize(model.encode_image(images), dim=-1)
            text_features = F.normalize(model.encode_text(text_tokens), dim=-1)
            loss = class_caption_contrastive_loss(
                image_features, text_features, batch_labels, text_labels, model.logit_scale.exp()
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, max_log_scale)

            running += loss.item()
            batches += 1
            step += 1
            progress.set_postfix(loss=f"{running / batches:.4f}", scale=f"{model.logit_scale.exp().item():.1f}")
        progress.close()

        epoch_losses.append(running / max(1, batches))
        logger.info(
            "Epoch %d/%d: mean loss %.4f, logit scale %.2f",
            epoch + 1, config.epochs, epoch_losses[-1], model.logit_scale.exp().item(),
        )
        if step >= total_steps:
            break

    return model.eval().cpu(), epoch_losses


def save_demo_checkpoint(model: torch.nn.Module, path: str | Path) -> str:
    """Save the model's state dict in fp16 (atomically) and return the file's sha256.

    open_clip copies the fp16 tensors into the fp32 parameters when it loads the file, so a loaded
    model is fp32 again.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {
        key: value.detach().cpu().to(torch.float16) if value.is_floating_point() else value.detach().cpu()
        for key, value in model.state_dict().items()
    }
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state_dict, temporary)
    os.replace(temporary, path)
    return _sha256(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _zero_shot_accuracy_tensor_path(
    model: torch.nn.Module,
    gray_images: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 1000,
) -> float:
    """Compute zero-shot top-1 accuracy on preprocessed uint8 images, with template-averaged class prompts."""
    tokenizer = open_clip.get_tokenizer(DEMO_MODEL_NAME)
    mean, std = model.visual.preprocess_cfg["mean"], model.visual.preprocess_cfg["std"]
    with torch.no_grad():
        class_features = []
        for name in class_names:
            features = F.normalize(model.encode_text(tokenizer([t.format(name) for t in templates])), dim=-1)
            class_features.append(F.normalize(features.mean(dim=0), dim=-1))
        text_features = torch.stack(class_features)

        correct = 0
        for start in range(0, len(labels), batch_size):
            images = _normalize_batch(gray_images[start : start + batch_size], mean, std)
            image_features = F.normalize(model.encode_image(images), dim=-1)
            predictions = (image_features @ text_features.T).argmax(dim=1)
            correct += int((predictions == labels[start : start + batch_size]).sum())
    return correct / len(labels)


def _select_classes(
    images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], keep_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the images of the classes in ``keep_names`` and relabel them by position in ``keep_names``."""
    unknown = [name for name in keep_names if name not in class_names]
    if unknown:
        raise ValueError(f"classes {unknown} are not among {list(class_names)}")
    keep_labels = [list(class_names).index(name) for name in keep_names]
    mask = np.isin(labels, keep_labels)
    remap = np.full(len(class_names), -1, dtype=np.int64)
    remap[keep_labels] = np.arange(len(keep_labels))
    return images[mask], remap[labels[mask]]


def _run_training(args: argparse.Namespace) -> None:
    """Train the demo model from the Fashion-MNIST files and write the checkpoint and its training record."""
    from dsenergy.data.fashion_mnist import FASHION_MNIST_CLASSES, read_fashion_mnist
    from dsenergy.data.fashion_open import FASHION_ID_CLASSES, FASHION_OPEN_SPEC

    config = DemoTrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, threads=args.threads, device=args.device
    )
    out = Path(args.out) if args.out else demo_checkpoint_path()
    if args.classes != "all" and not args.out:
        raise _UsageError(
            f"--classes {args.classes} trains a model for comparison, not the demo model; "
            "pass --out PATH so that the committed checkpoint is not overwritten"
        )
    if out.suffix != ".pt" or out.is_dir():
        raise _UsageError(f"--out {out} must name a .pt file (not a folder); its training record is written beside it")
    committed = demo_checkpoint_path().resolve()
    target = out.resolve()
    if target != committed and target.parent == committed.parent:
        raise _UsageError(
            f"--out {out} is in {committed.parent}, the folder of the committed demo model and its records; "
            "train other checkpoints elsewhere"
        )
    if target == committed and committed.is_file() and not args.replace_committed:
        raise _UsageError(
            f"{committed} is the committed demo model, which the model card, the notebooks' test bands and the "
            "results tables describe; pass --out PATH to train a new checkpoint elsewhere, or --replace-committed "
            "to retrain it in place (then run `python -m dsenergy.demo evaluate --card data/models/MODEL_CARD.md`)"
        )
    source = Path(args.source)
    if not source.is_dir():
        raise _UsageError(
            f"Fashion-MNIST folder {source} not found; install the Debian package dataset-fashion-mnist "
            "or pass --source DIR holding the four .gz files"
        )
    load_average_start = os.getloadavg()[0]
    started = time.perf_counter()

    # Images go through the model's own PIL preprocess once and are kept as uint8 grey levels.
    register_demo_config()
    reference_model, _, preprocess = open_clip.create_model_and_transforms(DEMO_MODEL_NAME)
    mean, std = reference_model.visual.preprocess_cfg["mean"][0], reference_model.visual.preprocess_cfg["std"][0]
    del reference_model
    train_images, train_labels = read_fashion_mnist("train", args.source)
    train_class_names = FASHION_ID_CLASSES if args.classes == "id" else FASHION_MNIST_CLASSES
    train_images, train_labels = _select_classes(train_images, train_labels, FASHION_MNIST_CLASSES, train_class_names)
    gray_train = preprocess_to_uint8(train_images, preprocess, mean, std)
    logger.info("Preprocessed %d training images in %.1f s", len(gray_train), time.perf_counter() - started)

    model, epoch_losses = train_demo_model(gray_train, torch.from_numpy(train_labels), train_class_names, config)
    train_seconds = time.perf_counter() - started
    sha256 = save_demo_checkpoint(model, out)

    # Quick check on the test split's ID classes through the same tensor path as training.
    test_images, test_labels = read_fashion_mnist("test", args.source)
    id_labels = [FASHION_MNIST_CLASSES.index(name) for name in FASHION_ID_CLASSES]
    keep = np.isin(test_labels, id_labels)
    remap = {label: position for position, label in enumerate(id_labels)}
    gray_test = preprocess_to_uint8(test_images[keep], preprocess, mean, std)
    test_targets = torch.tensor([remap[int(label)] for label in test_labels[keep]])
    accuracy = _zero_shot_accuracy_tensor_path(model, gray_test, test_targets, FASHION_ID_CLASSES, config.templates)

    record = {
        "command": "python -m dsenergy.demo " + shlex.join(sys.argv[1:] if args.argv is None else args.argv),
        "seed": config.seed,
        "config": {key: value for key, value in vars(config).items() if key != "templates"},
        "templates": list(config.templates),
        "model_config": DEMO_MODEL_CONFIG,
        "train_images": int(len(train_labels)),
        "train_classes": list(train_class_names),
        "epoch_losses": epoch_losses,
        "logit_scale": model.logit_scale.exp().item(),
        "wall_time_s": round(train_seconds, 1),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "file": out.name,
        "file_bytes": out.stat().st_size,
        "sha256": sha256,
        "id_test_accuracy_tensor_path": accuracy,
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_start": load_average_start,
            "load_average_end": os.getloadavg()[0],
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch_threads": config.threads,
            "device": config.device,
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "open_clip": open_clip.__version__},
    }
    record_path = out.with_name(out.stem + ".training.json")
    record_path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    logger.info(
        "Saved %s (%d bytes, sha256 %s) after %.0f s; zero-shot accuracy on all %d Fashion-MNIST test images "
        "of the ID classes: %.4f (the model card reports fashion-open id_test, %d of these images per class)",
        out, record["file_bytes"], sha256, train_seconds, len(test_targets), accuracy, FASHION_OPEN_SPEC.id_test_per_class,
    )


# --------------------------------------------------------------------------------------------------
# Evaluation and model card


def evaluate_demo_model(
    checkpoint: str | Path | None = None,
    templates: Sequence[str] = DEMO_TEMPLATES,
    batch_size: int = 500,
) -> dict[str, Any]:
    """Compute the model-card numbers of a demo checkpoint on the fashion-open splits.

    Zero-shot accuracy on ``id_test`` (six ID classes, prompts averaged over ``templates``), and AUROC /
    FPR95 (ID positive) of MSP, Energy and ΔEnergy (``c = 1``, ``a = 0``) at the model's own
    temperature ``τ = 1 / logit_scale`` against ``ood_near``, ``ood_far`` and ``ood_clipart``
    (a split whose file is missing is skipped with a warning).
    The ID images are also encoded through the tensor path used in training, to check that it
    matches the PIL preprocess.
    """
    from dsenergy import scores
    from dsenergy.data.fashion_open import FASHION_ID_CLASSES, load_fashion_open
    from dsenergy.features import extract_features_and_labels
    from dsenergy.metrics import accuracy, evaluate_ood
    from dsenergy.models import build_zero_shot_classifier, load_clip

    started = time.perf_counter()
    bundle = load_clip(DEMO_MODEL_NAME, pretrained=None if checkpoint is None else str(checkpoint))
    load_seconds = time.perf_counter() - started
    classifier = build_zero_shot_classifier(bundle, FASHION_ID_CLASSES, list(templates))
    temperature = classifier.temperature

    id_dataset = load_fashion_open("id_test")
    id_features, id_labels = extract_features_and_labels(bundle, id_dataset, batch_size=batch_size, progress=False)
    id_similarities = classifier.similarities(id_features)
    results: dict[str, Any] = {
        "weights_id": bundle.weights_id,
        "load_seconds": round(load_seconds, 2),
        "logit_scale": bundle.logit_scale,
        "temperature": temperature,
        "templates": len(templates),
        "id_test_images": len(id_dataset),
        "id_test_accuracy": accuracy(id_similarities, id_labels),
        "positive": "id",
        "ood": {},
        # How close each split's images come to their nearest ID class prompt; the energy reads this level.
        "mean_max_cosine": {"id_test": float(id_similarities.max(dim=1).values.mean())},
    }

    # The same images through the training path: preprocess once to uint8, normalise as a batch.
    gray = preprocess_to_uint8(
        np.stack([np.asarray(id_dataset[i][0].convert("L")) for i in range(len(id_dataset))]),
        bundle.preprocess_val,
        bundle.model.visual.preprocess_cfg["mean"][0],
        bundle.model.visual.preprocess_cfg["std"][0],
    )
    with torch.no_grad():
        tensor_features = torch.cat(
            [
                F.normalize(bundle.model.encode_image(_normalize_batch(gray[i : i + batch_size], **_mean_std(bundle))), dim=-1)
                for i in range(0, len(gray), batch_size)
            ]
        )
    results["id_test_accuracy_tensor_path"] = accuracy(classifier.similarities(tensor_features), id_labels)
    results["template_cosine"] = _template_cosine(bundle, FASHION_ID_CLASSES, templates)
    results["max_feature_difference_tensor_vs_pil"] = float((tensor_features - id_features).abs().max())

    score_functions = {
        "MSP": scores.msp,
        "Energy": scores.energy,
        "ΔEnergy (c=1, a=0)": lambda s, t: scores.delta_energy(s, t, top_c=1, crop_value=0.0),
    }
    for split in ("ood_near", "ood_far", "ood_clipart"):
        try:
            ood_dataset = load_fashion_open(split)
        except FileNotFoundError as error:
            logger.warning("Skipping %s: %s", split, error)
            continue
        ood_features = extract_features_and_labels(bundle, ood_dataset, batch_size=batch_size, progress=False)[0]
        ood_similarities = classifier.similarities(ood_features)
        results["ood"][split] = {"images": len(ood_dataset)}
        results["mean_max_cosine"][split] = float(ood_similarities.max(dim=1).values.mean())
        for name, score in score_functions.items():
            metrics = evaluate_ood(
                score(id_similarities, temperature).numpy(), score(ood_similarities, temperature).numpy(), positive="id"
            )
            results["ood"][split][name] = {"auroc": metrics["auroc"], "fpr95": metrics["fpr95"]}

    logger.info(
        "Evaluated %s: ID accuracy %.4f (tensor path %.4f), τ = %.5f",
        bundle.weights_id, results["id_test_accuracy"], results["id_test_accuracy_tensor_path"], temperature,
    )
    return results


def _template_cosine(bundle: Any, class_names: Sequence[str], templates: Sequence[str]) -> dict[str, float]:
    """Return the mean and smallest cosine between the text features of one class under two different templates.

    Values near 1 mean the text tower ignores the words around the class name, which leaves prompt
    tuning little to change.
    """
    with torch.no_grad():
        features = torch.stack([
            F.normalize(bundle.model.encode_text(bundle.tokenizer([template.format(name) for name in class_names])), dim=-1)
            for template in templates
        ])  # templates × classes × dim
    cosines = torch.einsum("tkd,ukd->ktu", features, features)
    pairs = torch.triu_indices(len(templates), len(templates), offset=1)
    values = cosines[:, pairs[0], pairs[1]]
    return {"mean": float(values.mean()), "min": float(values.min())}


def _describe_machine(machine: dict[str, Any]) -> str:
    """Describe the training machine; load averages are missing from records written before they were added."""
    text = (
        f"{machine['processor']} ({machine.get('cpu_count', '?')} cores), "
        f"{_plural(machine['torch_threads'], 'torch thread')}, device {machine['device']}"
    )
    if "load_average_start" in machine:
        start, end = machine["load_average_start"], machine["load_average_end"]
        text += f"; 1-minute load average {start:.1f} at the start and {end:.1f} at the end"
        # The training's own threads add about torch_threads to the load at the end. The start value
        # lags by a minute and may still count a job that had just finished, so only the end is checked.
        if end > machine["torch_threads"] + 0.5:
            text += ", so other jobs shared the CPU"
    return text


def _command_note(command: str, file_name: str) -> str:
    """Return the model card's note on what running the training command again writes."""
    if file_name != _CHECKPOINT_FILE:
        return "It writes the checkpoint and its training record to the `--out` path."
    if "--replace-committed" in command:
        return "It overwrote the committed files in place."
    return (
        "Running it again needs `--replace-committed`, which overwrites the\n"
        "  committed `dsenergy-demo.pt` and `dsenergy-demo.training.json` in `data/models/`; "
        "`--out PATH` trains a copy elsewhere."
    )


def _describe_classes(class_names: Sequence[str]) -> str:
    from dsenergy.data.fashion_mnist import FASHION_MNIST_CLASSES

    if list(class_names) == list(FASHION_MNIST_CLASSES):
        return "all ten classes"
    return f"{len(class_names)} classes ({', '.join(class_names)})"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _mean_std(bundle: Any) -> dict[str, Sequence[float]]:
    config = bundle.model.visual.preprocess_cfg
    return {"mean": config["mean"], "std": config["std"]}


def write_model_card(training: dict[str, Any], evaluation: dict[str, Any], path: str | Path) -> bool:
    """Write ``MODEL_CARD.md`` from a training record and the output of :func:`evaluate_demo_model`.

    Returns whether the file was written: a file that already has this content is left untouched.
    """
    from dsenergy.data.fashion_mnist import FASHION_MNIST_CLASSES
    from dsenergy.data.fashion_open import FASHION_NEAR_OOD_CLASSES

    vision, text = DEMO_MODEL_CONFIG["vision_cfg"], DEMO_MODEL_CONFIG["text_cfg"]
    # Records written before the class choice existed come from runs on all ten classes.
    train_classes = training.get("train_classes", list(FASHION_MNIST_CLASSES))
    file_name = training.get("file", _CHECKPOINT_FILE)
    load_call = f'load_clip("{DEMO_MODEL_NAME}"' + ("" if file_name == _CHECKPOINT_FILE else f', pretrained="{file_name}"') + ")"
    seen_near_ood = all(name in train_classes for name in FASHION_NEAR_OOD_CLASSES)
    losses = ", ".join(f"{loss:.4f}" for loss in training["epoch_losses"])
    lines = [
        f"# Model card: {DEMO_MODEL_NAME}" + ("" if file_name == _CHECKPOINT_FILE else f" variant `{Path(file_name).stem}`"),
        "",
        (
            "A small CLIP (open_clip `CLIP` class) trained from scratch on Fashion-MNIST so that the kit's\n"
            "notebooks, tests and CI run offline."
            if file_name == _CHECKPOINT_FILE
            else "A variant of the kit's demo CLIP (open_clip `CLIP` class, trained from scratch on Fashion-MNIST),\n"
            "trained for comparison with it."
        )
        + " It is a teaching and testing model, not a general",
        f"image–text model: it knows the {len(train_classes)} Fashion-MNIST classes it was trained on and little else.",
        "",
        "## Architecture",
        "",
        f"- Image tower: ViT, {vision['image_size']} × {vision['image_size']} px input, patch {vision['patch_size']}, "
        f"width {vision['width']}, {vision['layers']} layers, head width {vision['head_width']}, MLP ratio {vision['mlp_ratio']}.",
        f"- Text tower: transformer, width {text['width']}, {text['layers']} layers, {text['heads']} heads, "
        f"context length {text['context_length']}, open_clip's BPE tokenizer (vocabulary {text['vocab_size']}).",
        f"- Embedding dimension {DEMO_MODEL_CONFIG['embed_dim']}; {training['parameters']:,} parameters.",
        "- Preprocessing: open_clip's default (bicubic resize, centre crop, OpenAI CLIP mean/std); grayscale",
        "  images are copied to three channels.",
        "",
        "## Training",
        "",
        f"- Command: `{training['command']}`. {_command_note(training['command'], file_name)}",
        f"- Seed: {training['seed']}; {_plural(training['config']['epochs'], 'epoch')}, batch {training['config']['batch_size']}, "
        f"AdamW (lr {training['config']['learning_rate']}, weight decay {training['config']['weight_decay']}), "
        f"{training['config']['warmup_steps']} warm-up steps then cosine decay.",
        f"- Data: the {training['train_images']:,} Fashion-MNIST training images of {_describe_classes(train_classes)} (Zalando Research,",
        "  MIT licence, read from the Debian package `dataset-fashion-mnist`), random horizontal flips and shifts of up to "
        f"{training['config']['max_shift']} px.",
        f"- Captions: {len(training['templates'])} templates × class name; each step draws "
        f"{training['config']['captions_per_class']} templates per class.",
        "- Loss: symmetric contrastive loss between the batch images and the class captions, with every",
        "  caption of an image's class as its target, so two same-class images are never negatives of each other.",
        f"- Epoch losses: {losses}. Final logit scale {training['logit_scale']:.2f} in fp32, "
        f"{evaluation['logit_scale']:.2f} after storage in fp16.",
        f"- Wall time: {training['wall_time_s']:.0f} s including preprocessing, on {_describe_machine(training['machine'])}.",
        f"- Versions: Python {training['versions']['python']}, torch {training['versions']['torch']}, "
        f"open_clip {training['versions']['open_clip']}.",
        "",
        "## File",
        "",
        f"- `{file_name}`: state dict in fp16 ({training['file_bytes']:,} bytes), loaded into fp32 by open_clip",
        "  with `weights_only=True`.",
        f"- sha256: `{training['sha256']}`. torch.save stores the file name inside the archive, so a retrained",
        "  copy saved under another name has other bytes. Compare tensors instead: two CPU runs of one command",
        "  (the six-class variant with seed 0, `results/demo-variants/id-seed0/`), saved under different names,",
        "  gave identical tensors.",
        "",
        "## Evaluation",
        "",
        "Produced by `python -m dsenergy.demo evaluate"
        + ("`" if file_name == _CHECKPOINT_FILE else f" --checkpoint {file_name}`")
        + ", which writes these numbers to",
        f"`{Path(file_name).stem}.evaluation.json` beside the checkpoint. Zero-shot classification over the six ID classes",
        f"with the {evaluation['templates']} training templates averaged per class; temperature",
        f"τ = 1 / logit_scale = {evaluation['temperature']:.5f}. OOD metrics treat ID as positive",
        "(FPR95 = fraction of OOD images accepted when 95 % of ID images are kept).",
        "",
        f"- `{load_call}` took {evaluation['load_seconds']:.2f} s.",
        f"- Zero-shot accuracy on fashion-open `id_test` ({evaluation['id_test_images']:,} images of t-shirt/top, trouser,",
        f"  dress, sandal, sneaker, bag from the Fashion-MNIST test split): **{evaluation['id_test_accuracy']:.4f}**",
        f"  (tensor path used in training: {evaluation['id_test_accuracy_tensor_path']:.4f}, largest feature difference",
        f"  to the PIL path {evaluation['max_feature_difference_tensor_vs_pil']:.1e}).",
        "",
        "| OOD split | images | score | AUROC | FPR95 |",
        "|---|---|---|---|---|",
    ]
    split_descriptions = {
        "ood_near": "near (pullover, coat, shirt, ankle boot)",
        "ood_far": "far (textures)",
        "ood_clipart": "far (clip art)",
    }
    for split, numbers in evaluation["ood"].items():
        for name, metrics in numbers.items():
            if name == "images":
                continue
            lines.append(
                f"| {split_descriptions.get(split, split)} | {numbers['images']:,} | {name} | "
                f"{metrics['auroc']:.4f} | {metrics['fpr95']:.4f} |"
            )
    lines += ["", "ΔEnergy against Energy, AUROC difference (positive: ΔEnergy ranks ID above OOD more often):", ""]
    for split, numbers in evaluation["ood"].items():
        delta = numbers["ΔEnergy (c=1, a=0)"]["auroc"] - numbers["Energy"]["auroc"]
        lines.append(f"- {split_descriptions.get(split, split)}: {delta:+.4f}")
    if "mean_max_cosine" in evaluation:
        levels = "; ".join(
            f"{'ID' if split == 'id_test' else split_descriptions.get(split, split)} {value:.3f}"
            for split, value in evaluation["mean_max_cosine"].items()
        )
        lines += ["", f"Mean top cosine similarity to the six ID class prompts: {levels}."]
    lines += [
        "",
        "With c = 1 and a = 0, ΔE = −τ log(1 − p_max (1 − e^{−s_max/τ})). Where e^{−s_max/τ} is negligible,",
        "ΔEnergy is a monotone function of MSP and ranks images like it. Where p_max is close to 1, ΔE",
        "approaches s_max, the top cosine similarity.",
        "",
        "## Limits",
        "",
        *(
            [
                "- The near-OOD classes were in the training data with captions of their own, so the model has seen",
                "  every concept that the benchmark treats as near OOD. The zero-shot classifier lists only the six ID classes.",
            ]
            if seen_near_ood
            else [
                "- The near-OOD classes were not in the training data: the model has never seen an image or a caption",
                "  of them.",
            ]
        ),
        "- Textures and clip art were not in the training data.",
        *(
            [
                "- The text tower gives a class name nearly the same feature whatever template surrounds it: the cosine",
                f"  between two training templates of one ID class is {evaluation['template_cosine']['mean']:.4f} on average",
                f"  (smallest {evaluation['template_cosine']['min']:.4f}). Prompt tuning (CoOp) therefore has little to change.",
            ]
            if "template_cosine" in evaluation
            else []
        ),
        "- 28 × 28 grayscale input only; photographs or colour images are far outside what it has seen.",
        "",
    ]
    return _write_if_changed(Path(path), "\n".join(lines))


def _write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless the file already contains exactly that text. Return whether it wrote."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True


#: Fields of an evaluation record that measure time, so they differ between runs of the same weights.
_TIMING_FIELDS = ("load_seconds",)

#: Relative tolerance for numbers of two evaluations, about 8 float32 rounding steps. A rerun of the
#: committed checkpoint (torch 2.14.1, CPU, 2 threads) gave a smallest template cosine 6e-8 away from
#: the committed record, and such float32 rounding must not count as a change.
_EVALUATION_RELATIVE_TOLERANCE = 1e-6


def _same_values(stored: Any, new: Any) -> bool:
    """Compare two JSON values for equality, floats to :data:`_EVALUATION_RELATIVE_TOLERANCE`."""
    if isinstance(stored, dict) and isinstance(new, dict):
        return stored.keys() == new.keys() and all(_same_values(stored[key], new[key]) for key in stored)
    if isinstance(stored, list) and isinstance(new, list):
        return len(stored) == len(new) and all(_same_values(a, b) for a, b in zip(stored, new))
    numbers = all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in (stored, new))
    if numbers and (isinstance(stored, float) or isinstance(new, float)):
        return math.isclose(stored, new, rel_tol=_EVALUATION_RELATIVE_TOLERANCE, abs_tol=1e-12)
    return type(stored) is type(new) and stored == new


def _same_evaluation(stored: dict[str, Any], new: dict[str, Any]) -> bool:
    """Compare two evaluation records in every field except the timing fields."""
    def without_timing(record: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in record.items() if key not in _TIMING_FIELDS}

    return _same_values(without_timing(stored), without_timing(new))


def _read_stored_evaluation(path: Path) -> dict[str, Any] | None:
    """Return the evaluation record at ``path``, or ``None`` when it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("Replacing the evaluation record %s, which could not be read: %s", path, error)
        return None
    if not isinstance(stored, dict):
        logger.warning("Replacing the evaluation record %s, which contains a %s instead of a JSON object",
                       path, type(stored).__name__)
        return None
    return stored


def _store_evaluation(checkpoint: Path, results: dict[str, Any], card: str | Path | None) -> dict[str, Any]:
    """Write the evaluation record beside ``checkpoint`` and, if ``card`` is given, the model card.

    A stored record that differs from ``results`` only in timing fields is kept byte for byte, so a
    rerun leaves the committed files unmodified. The card is then written from the stored record.
    Returns the record that the files now contain.
    """
    record_path = checkpoint.with_name(checkpoint.stem + ".evaluation.json")
    stored = _read_stored_evaluation(record_path)
    if stored is not None and _same_evaluation(stored, results):
        logger.info("Left %s unchanged: the new evaluation differs from it only in timing "
                    "(load_seconds %.2f now, %.2f stored)", record_path, results["load_seconds"],
                    stored.get("load_seconds", math.nan))
        results = stored
    else:
        record_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        logger.info("Wrote %s", record_path)

    if card:
        training_path = checkpoint.with_name(checkpoint.stem + ".training.json")
        if not training_path.is_file():
            raise FileNotFoundError(f"training record {training_path} not found; it is written by `python -m dsenergy.demo train`")
        training = json.loads(training_path.read_text(encoding="utf-8"))
        if write_model_card(training, results, card):
            logger.info("Wrote %s", card)
        else:
            logger.info("Left %s unchanged: the model card has the same content", card)
    return results


def _run_evaluation(args: argparse.Namespace) -> None:
    """Evaluate a checkpoint, write its evaluation record beside it and, if asked, the model card."""
    torch.set_num_threads(args.threads)
    checkpoint = Path(args.checkpoint) if args.checkpoint else demo_checkpoint_path()
    if not checkpoint.is_file():
        raise _UsageError(
            f"checkpoint {checkpoint} not found; pass --checkpoint PATH to a file written by `python -m dsenergy.demo train`"
        )
    results = evaluate_demo_model(checkpoint)
    for split, numbers in results["ood"].items():
        logger.info(
            "%s (%d images): AUROC %s", split, numbers["images"],
            ", ".join(f"{name} {metrics['auroc']:.4f}" for name, metrics in numbers.items() if name != "images"),
        )
    _store_evaluation(checkpoint, results, args.card)


class _UsageError(Exception):
    """Error for an invalid command-line value, reported in one line with exit status 2."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults in the help, except where there is none to show (None or an off switch)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # Identity checks, because 0 == False would hide a default of 0.
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``train`` or ``evaluate`` command of the demo model."""
    parser = argparse.ArgumentParser(prog="python -m dsenergy.demo", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train_parser = commands.add_parser(
        "train", help="train the demo model on the Fashion-MNIST training split", formatter_class=_HelpFormatter
    )
    train_parser.add_argument("--epochs", type=_positive_int, default=DemoTrainConfig.epochs, help="number of passes over the training images")
    train_parser.add_argument("--seed", type=int, default=DemoTrainConfig.seed, help="seed of initialisation, batch order, augmentation and captions")
    train_parser.add_argument(
        "--out", default=None,
        help="checkpoint path; without it the committed data/models/dsenergy-demo.pt, which needs --replace-committed",
    )
    train_parser.add_argument(
        "--replace-committed", action="store_true",
        help="allow overwriting the committed checkpoint and training record (then re-run evaluate --card)",
    )
    train_parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist", help="folder holding the four Fashion-MNIST .gz files")
    train_parser.add_argument("--batch-size", type=_positive_int, default=DemoTrainConfig.batch_size, help="images per optimiser step")
    train_parser.add_argument("--threads", type=_positive_int, default=DemoTrainConfig.threads, help="torch CPU threads")
    train_parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    train_parser.add_argument(
        "--classes", choices=("all", "id"), default="all",
        help="train on all ten classes (the demo model) or only on the six ID classes, "
        "for a model that has never seen the near-OOD concepts (needs --out)",
    )

    evaluate_parser = commands.add_parser(
        "evaluate", help="compute the model-card numbers on the fashion-open splits", formatter_class=_HelpFormatter
    )
    evaluate_parser.add_argument(
        "--checkpoint", default=None,
        help="checkpoint to evaluate; its evaluation record is written beside it (default: the committed one)",
    )
    evaluate_parser.add_argument("--card", default=None, help="also write the model card to this path (e.g. data/models/MODEL_CARD.md)")
    evaluate_parser.add_argument("--threads", type=_positive_int, default=2, help="torch CPU threads")

    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else None
    if args.command == "train":
        from dsenergy.models import resolve_device

        try:
            resolve_device(args.device)
        except (RuntimeError, ValueError) as error:
            train_parser.error(f"--device {args.device!r} is invalid here: {error}")
    # The kit's own progress at INFO; other libraries (open_clip logs every model creation) only from WARNING.
    # Run as ``python -m``, this module's logger is ``__main__``, outside the ``dsenergy`` tree.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("dsenergy").setLevel(logging.INFO)
    logger.setLevel(logging.INFO)

    from dsenergy.models import WeightsUnavailableError

    try:
        if args.command == "train":
            _run_training(args)
        else:
            _run_evaluation(args)
    except _UsageError as error:
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")
    except (FileNotFoundError, ValueError, WeightsUnavailableError) as error:
        parser.exit(1, f"{parser.prog} {args.command}: error: {error}\n")


if __name__ == "__main__":
    main()
