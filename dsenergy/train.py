r"""CoOp prompt tuning with the EBM loss, on cached image features or on augmented images.

Objective per batch (see :mod:`dsenergy.losses`):

.. math::

    L = \mathrm{CE}(s/\tau, y) + \lambda \, L_{EBM}, \qquad s_{ik} = z_i \cdot w_k,

with ``z`` the frozen, normalised image features and ``w`` the prompt learner's normalised text
features. ``method="coop"`` trains the cross-entropy alone (``λ = 0``); ``method="coop_ebm"`` adds
``λ · L_EBM``; ``method="zeroshot"`` trains nothing and returns the learner initialised from the
``ctx_init`` phrase. The text features of all classes are computed once per optimisation step.

Defaults follow CoOp: SGD (lr 0.002, momentum 0.9, weight decay 5e-4), batch 32, one warm-up epoch
at a constant lr of 1e-5, then a cosine schedule, stepped once per epoch:

.. math::

    \mathrm{lr}(e) = \mathrm{lr}_0 \cdot \tfrac12\Big(1 + \cos\frac{\pi (e - W)}{E - W}\Big), \quad e \ge W.

Multi-process training runs under ``torchrun``: with ``WORLD_SIZE > 1`` in the environment the
process group is initialised (gloo on CPU, nccl on CUDA), the data are sharded with
``DistributedSampler`` and the learner is wrapped in ``DistributedDataParallel``. Each process takes
``batch_size / world_size`` samples of the same global batch that a single process would take, so
the averaged gradient equals the single-process gradient up to float rounding.

Command line::

    torchrun --nproc_per_node=2 -m dsenergy.train --method coop_ebm --epochs 10 --output-dir runs/ebm
    python -m dsenergy.train --help
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import math
import numbers
import os
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset
from tqdm.auto import tqdm

from dsenergy._atomic import write_atomically, write_text_atomically
from dsenergy.losses import combined_loss
from dsenergy.prompts import PromptLearner, text_tower_parts

__all__ = [
    "METHODS",
    "TrainConfig",
    "TrainResult",
    "ResumeError",
    "train_prompts",
    "learning_rate_factor",
    "steps_per_epoch",
    "save_prompt_learner",
    "load_prompt_learner",
    "CHECKPOINT_NAME",
    "main",
]

logger = logging.getLogger(__name__)

METHODS = ("zeroshot", "coop", "coop_ebm")
INPUT_MODES = ("features", "images")
CHECKPOINT_NAME = "checkpoint.pt"
PROMPT_LEARNER_NAME = "prompt_learner.pt"
HISTORY_NAME = "history.json"
_CHECKPOINT_FORMAT = 1
_CHECKPOINT_KEYS = ("epoch", "context_vectors", "optimizer", "scheduler", "scaler", "rng", "history", "config", "class_names")
_PROMPT_LEARNER_KEYS = ("context_vectors", "class_names", "n_ctx", "ctx_init", "class_specific")
_ZEROSHOT_PHRASE = "a photo of a"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Config fields that do not change the trained weights, so resuming may change them.
_RESUME_FREE_FIELDS = {"resume", "output_dir", "num_workers", "progress"}


@dataclass
class TrainConfig:
    """Settings of one prompt-tuning run (CoOp defaults where CoOp has one).

    Allowed values, checked by :meth:`validate`:

    - ``method`` in :data:`METHODS`, ``input_mode`` ``"features"`` or ``"images"``, ``bound``
      ``"lower"`` or ``"exact"``, ``ctx_init`` ``None`` or a phrase that is not blank.
    - Whole numbers: ``epochs ≥ 0`` (0 returns the initial context), ``batch_size ≥ 1``,
      ``warmup_epochs ≥ 0``, ``top_c ≥ 1``, ``n_ctx ≥ 1`` (any value when ``ctx_init`` sets the
      context), ``num_workers ≥ 0`` and any ``seed``.
    - Real numbers: ``lr > 0``, ``warmup_lr > 0``, ``ebm_weight ≥ 0``, ``momentum ≥ 0``,
      ``weight_decay ≥ 0``, a finite ``crop_value``, and ``temperature > 0`` or ``None`` for the
      model's own.

    :func:`train_prompts` also checks that ``top_c`` does not exceed the number of class names.
    """

    method: str = "coop_ebm"
    n_ctx: int = 16
    ctx_init: str | None = None
    class_specific: bool = False
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    ebm_weight: float = 1.0
    top_c: int = 1
    crop_value: float = 0.0
    bound: str = "lower"
    temperature: float | None = None
    seed: int = 1
    input_mode: str = "features"
    amp: bool = False
    num_workers: int = 0
    output_dir: str | None = None
    resume: bool = False
    progress: bool = True

    def invalid_fields(self) -> list[tuple[str, Any, str]]:
        """Return ``(field, value, expected)`` for every field outside its allowed values, without logging."""
        problems: list[tuple[str, Any, str]] = []
        choices = {"method": METHODS, "input_mode": INPUT_MODES, "bound": ("lower", "exact")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                problems.append((name, getattr(self, name), f"one of {', '.join(map(repr, allowed))}"))

        ctx_init = self.ctx_init
        if ctx_init is not None and (not isinstance(ctx_init, str) or not ctx_init.strip()):
            problems.append(("ctx_init", ctx_init, "a non-empty phrase such as 'a photo of a', or no phrase for random initialisation"))

        whole_numbers = {
            "epochs": (0, "a whole number ≥ 0"),
            "batch_size": (1, "a whole number ≥ 1"),
            "warmup_epochs": (0, "a whole number ≥ 0"),
            "top_c": (1, "a whole number ≥ 1"),
            "n_ctx": (0 if self.ctx_init else 1, "a whole number ≥ 1, or any with ctx_init"),
            "num_workers": (0, "a whole number ≥ 0"),
            "seed": (None, "a whole number"),
        }
        real_numbers = {
            "lr": (lambda value: value > 0, "a number > 0"),
            "warmup_lr": (lambda value: value > 0, "a number > 0"),
            "ebm_weight": (lambda value: value >= 0, "a number ≥ 0"),
            "momentum": (lambda value: value >= 0, "a number ≥ 0"),
            "weight_decay": (lambda value: value >= 0, "a number ≥ 0"),
            "crop_value": (math.isfinite, "a finite number"),
        }
        for name, (minimum, rule) in whole_numbers.items():
            value = getattr(self, name)
            is_whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            if not is_whole or (minimum is not None and value < minimum):
                problems.append((name, value, rule))
        for name, (accept, rule) in real_numbers.items():
            value = getattr(self, name)
            is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not is_number or not math.isfinite(value) or not accept(value):
                problems.append((name, value, rule))
        temperature = self.temperature
        if temperature is not None and (
            isinstance(temperature, bool)
            or not isinstance(temperature, numbers.Real)
            or not math.isfinite(temperature)
            or temperature <= 0
        ):
            problems.append(("temperature", temperature, "a number > 0, or no value for the model's own"))
        return problems

    def validate(self) -> "TrainConfig":
        """Check every field and return a copy with ``method`` applied (``coop`` forces ``λ = 0``)."""
        problems = self.invalid_fields()
        if problems:
            raise ValueError(
                "invalid training settings: "
                + "; ".join(f"{name}={value!r} (expected {rule})" for name, value, rule in problems)
            )

        config = dataclasses.replace(self)
        if config.method == "coop" and config.ebm_weight != 0:
            logger.info("method 'coop' trains cross-entropy only; ebm_weight %s is set to 0", config.ebm_weight)
            config.ebm_weight = 0.0
        if config.method == "zeroshot" and not config.ctx_init:
            config.ctx_init = _ZEROSHOT_PHRASE
        if config.method != "zeroshot" and 0 < config.epochs <= config.warmup_epochs:
            logger.warning(
                "epochs (%d) <= warmup_epochs (%d): every epoch runs at the warm-up lr %g",
                config.epochs, config.warmup_epochs, config.warmup_lr,
            )
        return config


@dataclass
class TrainResult:
    """A trained prompt learner with its per-epoch history (``ce``, ``ebm``, ``total``, ``lr``, ``acc``)."""

    prompt_learner: PromptLearner
    history: list[dict[str, float]] = field(default_factory=list)
    config: TrainConfig | None = None
    checkpoint_path: Path | None = None


class ResumeError(ValueError):
    """Raised when ``output_dir/checkpoint.pt`` cannot be resumed.

    The file is unreadable, or it was written for other settings, class names, training data or model weights.
    """


def steps_per_epoch(samples: int, batch_size: int) -> int:
    """Return the optimisation steps of one epoch over ``samples`` items.

    Only full global batches run, except that fewer samples than one batch run as one partial step.
    """
    if samples <= 0:
        return 0
    if samples < batch_size:
        return 1
    return samples // batch_size


def learning_rate_factor(epoch: int, config: TrainConfig) -> float:
    """Return ``lr(epoch) / lr_0``: constant warm-up, then half a cosine over the remaining epochs."""
    if epoch < config.warmup_epochs:
        return config.warmup_lr / config.lr
    cosine_epochs = max(config.epochs - config.warmup_epochs, 1)
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - config.warmup_epochs) / cosine_epochs))


# --------------------------------------------------------------------------------------------
# Distributed setup


@dataclass
class _Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device: torch.device) -> _Distributed:
    """Initialise the process group when launched by torchrun with more than one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return _Distributed()
    initialised_here = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        initialised_here = True
        logger.info("initialised process group: backend %s, world size %d", backend, world_size)
    return _Distributed(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        initialised_here=initialised_here,
    )


def _all_reduce_sums(values: list[float], device: torch.device, distributed: _Distributed) -> list[float]:
    if not distributed.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# --------------------------------------------------------------------------------------------
# Inputs


class _TransformedDataset(Dataset):
    """Apply a transform to the image of each ``(image, label)`` item."""

    def __init__(self, dataset: Dataset, transform: Callable[[Any], torch.Tensor]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index]
        if not isinstance(image, torch.Tensor):
            image = self.transform(image)
        return image, int(label)


def _training_dataset(train_data: Any, config: TrainConfig, bundle: Any) -> Dataset:
    """Return a dataset of (features or image tensor, label) for the configured input mode."""
    if config.input_mode == "features":
        if isinstance(train_data, tuple) and len(train_data) == 2:
            features, labels = (torch.as_tensor(part) for part in train_data)
        elif isinstance(train_data, TensorDataset) and len(train_data.tensors) == 2:
            features, labels = train_data.tensors
        else:
            raise TypeError(
                f"input_mode 'features' expects (features N×D, labels N) or a TensorDataset, got "
                f"{type(train_data).__name__}; extract features with dsenergy.features.cached_features "
                "or set input_mode='images'"
            )
        if features.dim() != 2 or labels.dim() != 1 or len(features) != len(labels):
            raise ValueError(
                f"features must be N×D and labels N, got shapes {tuple(features.shape)} and {tuple(labels.shape)}"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise TypeError(
                f"labels must be an integer tensor of class indices, got dtype {labels.dtype}; "
                "convert exact class indices with labels.long()"
            )
        embed_dim = getattr(bundle.model.visual, "output_dim", None)
        if embed_dim is not None and features.shape[1] != embed_dim:
            raise ValueError(
                f"features have dimension {features.shape[1]}, but the model's image embeddings have {embed_dim}; "
                "extract them with dsenergy.features.cached_features from the same model"
            )
        features = F.normalize(features.detach().float().cpu(), dim=-1)
        return TensorDataset(features, labels.detach().long().cpu())

    if isinstance(train_data, tuple):
        raise TypeError("input_mode 'images' expects a dataset of (image, label) items, got a tuple of tensors")
    return _TransformedDataset(train_data, bundle.preprocess_train)


def _check_labels(dataset: Dataset, num_classes: int) -> None:
    if isinstance(dataset, TensorDataset):
        labels = dataset.tensors[1]
        if len(labels) == 0:
            raise ValueError("train_data is empty")
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise ValueError(
                f"labels must lie in [0, {num_classes}) for {num_classes} class names, "
                f"got range [{int(labels.min())}, {int(labels.max())}]"
            )


def _stored_labels(data: Any) -> list[int] | None:
    """Return the labels a dataset (or a Subset of one) stores as ``labels`` or ``targets``, or None."""
    if isinstance(data, Subset):
        parent = _stored_labels(data.dataset)
        return None if parent is None else [parent[index] for index in data.indices]
    for name in ("labels", "targets"):
        labels = getattr(data, name, None)
        if labels is not None and len(labels) == len(data):
            return [int(label) for label in labels]
    return None


def _data_fingerprint(train_data: Any, dataset: Dataset) -> str:
    """Return a sha256 of the training data, which a checkpoint stores so that resume can detect changed data.

    Features mode hashes the normalised feature and label tensors. Images mode hashes the sample
    count, the labels, the Subset indices and the underlying dataset's ``identity`` when it has one
    (the pixels themselves are not read).
    """
    digest = hashlib.sha256()
    if isinstance(dataset, TensorDataset):
        features, labels = dataset.tensors
        digest.update(f"features {tuple(features.shape)} {features.dtype}\n".encode())
        digest.update(features.contiguous().numpy().tobytes())
        digest.update(f"labels {tuple(labels.shape)} {labels.dtype}\n".encode())
        digest.update(labels.contiguous().numpy().tobytes())
        return f"features-sha256:{digest.hexdigest()}"

    digest.update(f"samples {len(train_data)}\n".encode())
    source = train_data
    while isinstance(source, Subset):
        digest.update(("indices " + ",".join(str(int(index)) for index in source.indices) + "\n").encode())
        source = source.dataset
    identity = getattr(source, "identity", None)
    if identity is not None:
        digest.update(f"identity {identity}\n".encode())
    labels = _stored_labels(train_data)
    if labels is None:
        # NOTE: without a labels attribute every item is loaded once, images included.
        labels = [int(train_data[index][1]) for index in range(len(train_data))]
    digest.update(("labels " + ",".join(map(str, labels)) + "\n").encode())
    return f"images-sha256:{digest.hexdigest()}"


# --------------------------------------------------------------------------------------------
# Checkpoints


def _rng_state(device: torch.device) -> dict[str, Any]:
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    return state


def _restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _save_torch_atomically(payload: dict[str, Any], path: Path, sync: bool = False) -> None:
    write_atomically(path, lambda stream: torch.save(payload, stream), sync=sync)


def _load_torch_file(path: Path) -> Any:
    """Load a file written by ``torch.save`` (tensors and plain containers only), or raise ``ValueError`` naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except EOFError:
        raise ValueError(f"{path} is empty") from None
    except (RuntimeError, pickle.UnpicklingError, ValueError) as error:
        # Only the exception type is shown: torch's message advises weights_only=False, which would
        # run arbitrary code from the file.
        raise ValueError(
            f"{path} cannot be read: it is truncated or was not written by torch.save ({type(error).__name__})"
        ) from None


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """Load ``checkpoint.pt`` and check that it is a complete checkpoint of this format, or raise ``ResumeError``."""
    advice = "delete it to train from epoch 0, or resume in the folder of the run that wrote it"
    try:
        saved = _load_torch_file(path)
    except ValueError as error:
        raise ResumeError(f"checkpoint {error}; {advice}") from None
    if not isinstance(saved, dict):
        raise ResumeError(f"checkpoint {path} contains a {type(saved).__name__}, not a training checkpoint; {advice}")
    if saved.get("format") != _CHECKPOINT_FORMAT:
        raise ResumeError(
            f"checkpoint {path} has format {saved.get('format')!r}, but this version reads format {_CHECKPOINT_FORMAT}; "
            f"{advice}"
        )
    missing = [key for key in _CHECKPOINT_KEYS if key not in saved]
    if missing:
        raise ResumeError(f"checkpoint {path} lacks the entries {missing}; {advice}")
    return saved


def _config_for_record(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _check_resumable(
    saved: dict[str, Any],
    config: TrainConfig,
    class_names: Sequence[str],
    path: Path,
    data_fingerprint: str,
    weights_id: str | None,
) -> None:
    current = _config_for_record(config)
    changed = {
        key: (saved["config"].get(key), value)
        for key, value in current.items()
        if key not in _RESUME_FREE_FIELDS and saved["config"].get(key) != value
    }
    if changed:
        raise ResumeError(
            f"checkpoint {path} was written with other settings {changed} (saved, requested); "
            "resume with the same settings or choose another output_dir"
        )
    if list(saved["class_names"]) != list(class_names):
        raise ResumeError(f"checkpoint {path} was trained on other class names; choose another output_dir")
    if "weights_id" in saved and saved["weights_id"] != weights_id:
        raise ResumeError(
            f"checkpoint {path} was trained with model weights {saved['weights_id']!r}, but the current model has "
            f"{weights_id!r}; resume with the same model weights or choose another output_dir"
        )
    if "data_fingerprint" in saved and saved["data_fingerprint"] != data_fingerprint:
        raise ResumeError(
            f"checkpoint {path} was trained on other training data (saved fingerprint {saved['data_fingerprint']}, "
            f"current {data_fingerprint}); resume with the same data (dataset, K-shot count and seed) or choose "
            "another output_dir"
        )
    recorded = {"weights_id": "model weights", "data_fingerprint": "training data"}
    unchecked = [description for key, description in recorded.items() if key not in saved]
    if unchecked:
        logger.warning(
            "checkpoint %s was written by an older version that did not record the %s, so they could not be checked "
            "against the current run",
            path, " and ".join(unchecked),
        )


def save_prompt_learner(
    learner: PromptLearner,
    path: str | os.PathLike,
    extra: dict[str, Any] | None = None,
    weights_id: str | None = None,
) -> Path:
    """Write the context vectors and the settings needed to rebuild the learner, atomically.

    ``weights_id`` (``ClipBundle.weights_id``) names the model weights the prompts were trained for.
    :func:`load_prompt_learner` compares it, and the width of the context vectors, with the model it loads onto.
    """
    path = Path(path)
    payload = {
        "context_vectors": learner.context_vectors.detach().cpu(),
        "class_names": list(learner.class_names),
        "n_ctx": learner.n_ctx,
        "ctx_init": learner.ctx_init,
        "class_specific": learner.class_specific,
        "weights_id": weights_id,
        "extra": extra or {},
    }
    _save_torch_atomically(payload, path)
    return path


def _saved_weights_id(payload: dict[str, Any]) -> str | None:
    """Return the weights id a prompt file records: its own entry, or ``extra["weights_id"]`` of older files."""
    extra = payload.get("extra")
    older = extra.get("weights_id") if isinstance(extra, dict) else None
    return payload.get("weights_id") or older


def load_prompt_learner(path: str | os.PathLike, bundle: Any) -> PromptLearner:
    """Rebuild a prompt learner written by :func:`save_prompt_learner` on ``bundle``'s model.

    Raises:
        ValueError: the file is no saved prompt learner (for example the resume state
            ``checkpoint.pt``), or the prompts were trained for other model weights or another
            text-tower width.
    """
    path = Path(path)
    writers = "train_prompts and python -m dsenergy.train write it when a run finishes"
    payload = _load_torch_file(path)
    missing = [key for key in _PROMPT_LEARNER_KEYS if not isinstance(payload, dict) or key not in payload]
    if missing:
        if isinstance(payload, dict) and "optimizer" in payload and "epoch" in payload:
            raise ValueError(
                f"{path} is a training checkpoint, the state that resume continues from, not a saved prompt learner; "
                f"load {path.parent / PROMPT_LEARNER_NAME} instead ({writers})"
            )
        raise ValueError(f"{path} is not a saved prompt learner (it lacks {missing}); load a {PROMPT_LEARNER_NAME} ({writers})")

    trained_for = _saved_weights_id(payload)
    current = getattr(bundle, "weights_id", None)
    saved_width = int(payload["context_vectors"].shape[-1])
    model_width = text_tower_parts(bundle.model).token_embedding.embedding_dim
    if saved_width != model_width:
        raise ValueError(
            f"{path} contains context vectors of width {saved_width}, trained for model weights "
            f"{trained_for or '(not recorded)'}, but this model's text tower has width {model_width} "
            f"(weights {current}); load the model the prompts were trained for"
        )
    if trained_for is None:
        logger.warning(
            "%s does not record the model weights it was trained for (written by an older version); "
            "it could not be checked against the loaded weights %s", path, current,
        )
    elif current is not None and trained_for != current:
        raise ValueError(
            f"{path} was trained on model weights {trained_for}, but the loaded model has {current}; load the model "
            "with those weights, or load prompts trained on this model"
        )

    try:
        learner = PromptLearner(
            bundle.model,
            bundle.tokenizer,
            payload["class_names"],
            n_ctx=payload["n_ctx"],
            ctx_init=payload["ctx_init"],
            class_specific=payload["class_specific"],
            context_vectors=payload["context_vectors"],
        )
    except ValueError as error:
        raise ValueError(f"{path} does not fit this model ({current}): {error}") from None
    logger.info("loaded prompt learner %s (trained for model weights %s)", path, trained_for or "not recorded")
    return learner


def _write_run_outputs(learner: PromptLearner, history: list[dict[str, float]], config: TrainConfig,
                       output_dir: Path, weights_id: str | None) -> None:
    """Write ``prompt_learner.pt`` and ``history.json`` of a finished run."""
    save_prompt_learner(
        learner, output_dir / PROMPT_LEARNER_NAME, extra={"config": _config_for_record(config)}, weights_id=weights_id
    )
    write_text_atomically(output_dir / HISTORY_NAME, json.dumps(history, indent=2))
    logger.info("wrote %s and %s", output_dir / PROMPT_LEARNER_NAME, output_dir / HISTORY_NAME)


def _output_dir_problem(output_dir: str | os.PathLike) -> str | None:
    """Return why ``output_dir`` cannot be used as a folder (it or a parent is an existing file), or None."""
    path = Path(output_dir)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if candidate.is_dir():
                return None
            if candidate == path:
                return f"{path} is an existing file, not a folder"
            return f"{path} lies under {candidate}, which is an existing file, not a folder"
    return None


def _is_main_process() -> bool:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return True


# --------------------------------------------------------------------------------------------
# Training


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    # NOTE: the float16 autocast + GradScaler path is not covered by the CPU test suite.
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _encode_images(model: nn.Module, images: torch.Tensor, amp: bool) -> torch.Tensor:
    device = _model_device(model)
    dtype = next(model.visual.parameters()).dtype
    with torch.no_grad(), _autocast(device, amp):
        features = model.encode_image(images.to(device, dtype=dtype))
    return F.normalize(features.float(), dim=-1)


def train_prompts(
    bundle: Any,
    class_names: Sequence[str],
    train_data: Any,
    config: TrainConfig | None = None,
    epoch_callback: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train CoOp context vectors with CE (+ λ·EBM) on frozen CLIP towers.

    Args:
        bundle: a :class:`dsenergy.models.ClipBundle` (``model``, ``tokenizer``, ``preprocess_train``,
            ``logit_scale``).
        class_names: one name per class; labels index this list.
        train_data: ``(features N×D, labels N)`` or a ``TensorDataset`` for ``input_mode="features"``;
            a dataset of ``(PIL image, label)`` for ``input_mode="images"``.
            Unused, and may be ``None``, for ``method="zeroshot"`` or ``epochs=0``.
        config: training settings; ``TrainConfig()`` when ``None``.
        epoch_callback: called after each epoch's checkpoint as ``callback(epoch, record)``.

    With ``config.output_dir`` set, the main process writes ``prompt_learner.pt`` and ``history.json``
    there when the run ends, also for ``zeroshot`` and ``epochs=0`` (with an empty history).
    Training runs also write ``checkpoint.pt`` and ``history.json`` after every epoch.

    Returns:
        The learner (its context vectors on the model's device) and the per-epoch history.

    Raises:
        ResumeError: ``config.resume`` is set and ``checkpoint.pt`` is unreadable or was written
            for other settings, class names, training data or model weights.
    """
    config = (config or TrainConfig()).validate()
    if config.method != "zeroshot" and config.top_c > len(class_names):
        raise ValueError(
            f"top_c {config.top_c} exceeds the number of classes ({len(class_names)}); "
            f"choose top_c between 1 and {len(class_names)}"
        )
    if config.resume and not config.output_dir:
        raise ValueError("resume=True needs output_dir, the folder that contains checkpoint.pt")
    if config.output_dir:
        problem = _output_dir_problem(config.output_dir)
        if problem:
            raise ValueError(f"output_dir {problem}; choose a folder for {CHECKPOINT_NAME}, {PROMPT_LEARNER_NAME} and {HISTORY_NAME}")
    model = bundle.model
    device = _model_device(model)
    amp = config.amp and device.type == "cuda"
    if config.amp and not amp:
        logger.warning("amp is only used on CUDA; training on %s runs in the model's precision", device)

    learner = PromptLearner(
        model,
        bundle.tokenizer,
        class_names,
        n_ctx=config.n_ctx,
        ctx_init=config.ctx_init,
        class_specific=config.class_specific,
        seed=config.seed,
    )
    if config.method == "zeroshot" or config.epochs == 0:
        logger.info("method %s with %d epochs: returning the initial context", config.method, config.epochs)
        if config.output_dir and _is_main_process():
            learner.eval()
            _write_run_outputs(learner, [], config, Path(config.output_dir), getattr(bundle, "weights_id", None))
        return TrainResult(prompt_learner=learner, history=[], config=config)

    distributed = _setup_distributed(device)
    try:
        return _train(bundle, learner, train_data, config, distributed, device, amp, epoch_callback)
    finally:
        if distributed.initialised_here:
            dist.destroy_process_group()


def _restore_training_state(
    saved: dict[str, Any],
    learner: PromptLearner,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    distributed: _Distributed,
    device: torch.device,
) -> None:
    """Load the context vectors, optimiser, schedule, scaler and this process's RNG state from a checkpoint."""
    with torch.no_grad():
        learner.context_vectors.copy_(saved["context_vectors"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    _restore_rng_state(saved["rng"][min(distributed.rank, len(saved["rng"]) - 1)], device)


def _train(
    bundle: Any,
    learner: PromptLearner,
    train_data: Any,
    config: TrainConfig,
    distributed: _Distributed,
    device: torch.device,
    amp: bool,
    epoch_callback: Callable[[int, dict[str, float]], None] | None,
) -> TrainResult:
    if config.batch_size % distributed.world_size:
        raise ValueError(
            f"batch_size {config.batch_size} is not divisible by the world size {distributed.world_size}; "
            "the global batch is split evenly across processes"
        )
    local_batch_size = config.batch_size // distributed.world_size
    temperature = config.temperature if config.temperature is not None else 1.0 / bundle.logit_scale

    dataset = _training_dataset(train_data, config, bundle)
    _check_labels(dataset, len(learner.class_names))
    # drop_last on both sampler and loader makes every global batch full and identical to the
    # single-process batch, whatever the world size.
    drop_last = len(dataset) >= config.batch_size
    sampler = DistributedSampler(
        dataset,
        num_replicas=distributed.world_size,
        rank=distributed.rank,
        shuffle=True,
        seed=config.seed,
        drop_last=drop_last,
    )
    loader = DataLoader(
        dataset,
        batch_size=local_batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
    )
    if len(loader) == 0:
        raise ValueError(f"train_data has {len(dataset)} samples, too few for one batch of {config.batch_size}")

    trained: nn.Module = learner
    if distributed.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        # The prompt buffers are identical on every rank, so they are never re-broadcast per step.
        parallel_options = inspect.signature(nn.parallel.DistributedDataParallel).parameters
        no_buffer_sync = (
            {"forward_sync_buffers": False} if "forward_sync_buffers" in parallel_options else {"broadcast_buffers": False}
        )
        trained = nn.parallel.DistributedDataParallel(learner, device_ids=device_ids, **no_buffer_sync)

    optimizer = torch.optim.SGD(
        [learner.context_vectors], lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: learning_rate_factor(epoch, config))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    torch.manual_seed(config.seed + distributed.rank)
    history: list[dict[str, float]] = []
    start_epoch = 0
    output_dir = Path(config.output_dir) if config.output_dir else None
    checkpoint_path = output_dir / CHECKPOINT_NAME if output_dir else None
    weights_id = getattr(bundle, "weights_id", None)
    data_fingerprint = _data_fingerprint(train_data, dataset) if checkpoint_path is not None else None
    if config.resume and checkpoint_path is not None:
        if checkpoint_path.is_file():
            saved = _read_checkpoint(checkpoint_path)
            _check_resumable(saved, config, learner.class_names, checkpoint_path, data_fingerprint, weights_id)
            _restore_training_state(saved, learner, optimizer, scheduler, scaler, distributed, device)
            history = list(saved["history"])
            start_epoch = int(saved["epoch"])
            logger.info("resumed from %s after epoch %d of %d", checkpoint_path, start_epoch, config.epochs)
        else:
            logger.warning("resume requested but %s does not exist; starting from epoch 0", checkpoint_path)

    logger.info(
        "training %s: %d samples, %d classes, %d epochs, global batch %d (%d per process × %d), τ=%.4g, λ=%g",
        config.method, len(dataset), len(learner.class_names), config.epochs, config.batch_size,
        local_batch_size, distributed.world_size, temperature, config.ebm_weight,
    )

    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        learner.train()
        lr = optimizer.param_groups[0]["lr"]
        sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # ce, ebm, total (each × samples), correct, samples
        steps = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            leave=False,
            disable=not (config.progress and distributed.is_main),
        )
        for inputs, labels in steps:
            labels = labels.to(device)
            if config.input_mode == "images":
                image_features = _encode_images(bundle.model, inputs, amp)
            else:
                image_features = inputs.to(device)

            with _autocast(device, amp):
                text_features = trained()
            similarities = image_features @ text_features.float().t()
            parts = combined_loss(
                similarities,
                labels,
                temperature,
                config.ebm_weight,
                top_c=config.top_c,
                crop_value=config.crop_value,
                bound=config.bound,
            )

            optimizer.zero_grad(set_to_none=True)
            scaler.scale(parts.total).backward()
            scaler.step(optimizer)
            scaler.update()

            count = len(labels)
            ce_value, ebm_value = float(parts.ce.detach()), float(parts.ebm.detach())
            sums[0] += ce_value * count
            sums[1] += ebm_value * count
            sums[2] += float(parts.total.detach()) * count
            sums[3] += float((similarities.detach().argmax(dim=1) == labels).sum())
            sums[4] += count
            steps.set_postfix(ce=f"{ce_value:.4f}", ebm=f"{ebm_value:.4f}")

        scheduler.step()
        ce, ebm, total, correct, samples = _all_reduce_sums(sums, device, distributed)
        record = {
            "epoch": epoch + 1,
            "ce": ce / samples,
            "ebm": ebm / samples,
            "total": total / samples,
            "lr": lr,
            "acc": correct / samples,
        }
        history.append(record)
        logger.info(
            "epoch %d/%d: ce %.4f, ebm %.4f, total %.4f, lr %.3g, train acc %.4f",
            epoch + 1, config.epochs, record["ce"], record["ebm"], record["total"], lr, record["acc"],
        )

        if checkpoint_path is not None:
            rng_states = [_rng_state(device)]
            if distributed.enabled:
                gathered: list[Any] = [None] * distributed.world_size
                dist.all_gather_object(gathered, rng_states[0])
                rng_states = gathered
            if distributed.is_main:
                checkpoint = {
                    "format": _CHECKPOINT_FORMAT,
                    "epoch": epoch + 1,
                    "context_vectors": learner.context_vectors.detach().cpu(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "rng": rng_states,
                    "history": history,
                    "config": _config_for_record(config),
                    "class_names": list(learner.class_names),
                    "weights_id": weights_id,
                    "data_fingerprint": data_fingerprint,
                }
                # Synced to disk, because a resume after a crash depends on this file.
                _save_torch_atomically(checkpoint, checkpoint_path, sync=True)
                write_text_atomically(output_dir / HISTORY_NAME, json.dumps(history, indent=2))
            if distributed.enabled:
                dist.barrier()
        if epoch_callback is not None:
            epoch_callback(epoch + 1, record)

    learner.eval()
    if output_dir is not None and distributed.is_main:
        _write_run_outputs(learner, history, config, output_dir, weights_id)
    return TrainResult(prompt_learner=learner, history=history, config=config, checkpoint_path=checkpoint_path)


# --------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dsenergy.train",
        description="Train CoOp context vectors (optionally with the EBM loss) on a K-shot fashion-open split.",
    )
    parser.add_argument("--model", default=None, help="open_clip model name (default: the demo model dsenergy-demo)")
    parser.add_argument("--pretrained", default=None, help="open_clip tag or checkpoint file (default: the model's own)")
    parser.add_argument(
        "--shots", type=int, default=16,
        help="training images per class (K-shot), drawn with --seed; 0 uses all id_train images (default: %(default)s)",
    )
    parser.add_argument(
        "--device", default="auto",
        help="cpu, cuda, cuda:<index>, mps or auto: CUDA, then MPS, then the CPU (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
        help="logging level of torchrun rank 0; other ranks log warnings and errors only (default: %(default)s)",
    )
    defaults = TrainConfig()
    helps = {
        "method": (
            "zeroshot (no training: the context is the phrase 'a photo of a' unless --ctx-init is given), "
            "coop (cross-entropy) or coop_ebm (cross-entropy + λ·EBM)"
        ),
        "n_ctx": "number of context vectors (ignored with --ctx-init)",
        "ctx_init": (
            "non-empty phrase that initialises the context, e.g. 'a photo of a' (default: none, so the context "
            "is drawn from N(0, 0.02²) with --seed; --method zeroshot uses 'a photo of a')"
        ),
        "class_specific": "learn one context per class instead of one shared context",
        "epochs": "training epochs; 0 writes the initial context",
        "batch_size": "global batch size, split across torchrun processes",
        "lr": "peak SGD learning rate",
        "momentum": "SGD momentum",
        "weight_decay": "SGD weight decay",
        "warmup_epochs": "epochs at the constant warm-up learning rate",
        "warmup_lr": "warm-up learning rate",
        "ebm_weight": "λ, weight of the EBM loss (method coop_ebm)",
        "top_c": "number of cropped classes c in the EBM loss",
        "crop_value": "crop value a that cropped similarities are set to",
        "bound": "'lower' (lower bound) or 'exact' ΔEnergy target",
        "temperature": "τ of the loss (default: 1 / the model's logit scale)",
        "seed": "random seed (context initialisation, data order, K-shot split)",
        "input_mode": "'features' (cached image features) or 'images' (augmented images)",
        "amp": "mixed precision on CUDA",
        "num_workers": "data loader worker processes",
        "output_dir": (
            f"folder for {CHECKPOINT_NAME}, {PROMPT_LEARNER_NAME} and {HISTORY_NAME} (default: none, nothing is written)"
        ),
        "resume": f"continue from --output-dir/{CHECKPOINT_NAME}",
        "progress": "show progress bars",
    }
    choices = {"method": METHODS, "bound": ("lower", "exact"), "input_mode": INPUT_MODES}
    for item in dataclasses.fields(TrainConfig):
        flag = "--" + item.name.replace("_", "-")
        default = getattr(defaults, item.name)
        if item.name in ("ctx_init", "output_dir", "temperature"):
            # Their help texts state the None default in words.
            value_type = float if item.name == "temperature" else str
            parser.add_argument(flag, type=value_type, default=default, help=helps[item.name])
        elif isinstance(default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default,
                help=f"{helps[item.name]} (default: {'on' if default else 'off'})",
            )
        else:
            parser.add_argument(
                flag, type=type(default), default=default, choices=choices.get(item.name),
                help=f"{helps[item.name]} (default: %(default)s)",
            )
    return parser


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _config_from_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TrainConfig:
    """Build the TrainConfig from parsed arguments and report every invalid value as a parser error (exit 2)."""
    from dsenergy.data import FASHION_ID_CLASSES

    config = TrainConfig(**{item.name: getattr(args, item.name) for item in dataclasses.fields(TrainConfig)})
    problems = [f"{_flag(name)} {value!r} is invalid (expected {rule})" for name, value, rule in config.invalid_fields()]
    if args.shots < 0:
        problems.append(f"--shots {args.shots} is invalid (expected a whole number ≥ 1, or 0 for all images)")
    if problems:
        parser.error("; ".join(problems))

    class_count = len(FASHION_ID_CLASSES)
    if config.method != "zeroshot" and config.top_c > class_count:
        parser.error(
            f"--top-c {config.top_c} exceeds the {class_count} fashion-open ID classes; choose --top-c between 1 and "
            f"{class_count}"
        )
    if config.resume and not config.output_dir:
        parser.error(f"--resume needs --output-dir, the folder that contains {CHECKPOINT_NAME}")
    if config.output_dir:
        problem = _output_dir_problem(config.output_dir)
        if problem:
            parser.error(f"--output-dir {problem}; choose a folder")
        checkpoint_path = Path(config.output_dir) / CHECKPOINT_NAME
        if config.resume and checkpoint_path.is_file():
            try:
                _read_checkpoint(checkpoint_path)
            except ResumeError as error:
                parser.error(f"--resume: {error}")
    return config


def _device_from_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    from dsenergy.models import resolve_device

    try:
        return resolve_device(args.device)
    except ValueError as error:
        parser.error(f"--device: {error}")
    except RuntimeError:
        # torch.device rejects unknown device strings with a RuntimeError that lists every backend.
        parser.error(f"--device {args.device!r} is invalid; use cpu, cuda, cuda:<index>, mps or auto")


def _check_shots(parser: argparse.ArgumentParser, shots: int, labels: np.ndarray, class_names: Sequence[str]) -> None:
    """Report ``--shots`` above the image count of the smallest class as a parser error."""
    classes, counts = np.unique(labels[labels >= 0], return_counts=True)
    smallest = int(np.argmin(counts))
    if shots > counts[smallest]:
        name = class_names[int(classes[smallest])]
        parser.error(
            f"--shots {shots} exceeds the smallest id_train class: {name!r} has {counts[smallest]} images; "
            f"choose --shots between 1 and {counts[smallest]}, or 0 for all images"
        )


def _configure_logging(level: str, rank: int, world_size: int) -> None:
    """Log at ``level`` on rank 0 and at WARNING or above on the other torchrun ranks, which repeat rank 0's messages."""
    numeric_level = logging.getLevelName(level)
    prefix = ""
    if world_size > 1:
        prefix = f"rank {rank} "
        if rank != 0:
            numeric_level = max(numeric_level, logging.WARNING)
    logging.basicConfig(level=numeric_level, format=f"%(asctime)s {prefix}%(name)s %(levelname)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> TrainResult:
    """Train on the fashion-open ``id_train`` split (K-shot) with the demo model by default."""
    from dsenergy import demo
    from dsenergy.data import load_fashion_open
    from dsenergy.models import load_clip

    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging(args.log_level, int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
    config = _config_from_arguments(parser, args)
    device = _device_from_arguments(parser, args)
    trains = config.method != "zeroshot" and config.epochs > 0

    train_set = load_fashion_open("id_train")
    labels = torch.tensor(np.array(train_set.labels), dtype=torch.long)
    if trains and args.shots > 0:
        _check_shots(parser, args.shots, labels.numpy(), train_set.class_names)

    distributed = _setup_distributed(device)
    try:
        bundle = load_clip(args.model or demo.DEMO_MODEL_NAME, args.pretrained, device=device)
        train_data: Any = None
        if trains:
            train_data = _cli_training_data(bundle, train_set, labels, args.shots, config, distributed)
        try:
            return train_prompts(bundle, list(train_set.class_names), train_data, config)
        except ResumeError as error:
            parser.error(f"--resume: {error}")
    finally:
        if distributed.initialised_here:
            dist.destroy_process_group()


def _cli_training_data(
    bundle: Any, train_set: Any, labels: torch.Tensor, shots: int, config: TrainConfig, distributed: _Distributed
) -> Any:
    """Return the K-shot training data: cached features and labels, or a Subset of the images."""
    from dsenergy.data import kshot_indices
    from dsenergy.features import cached_features

    if shots > 0:
        indices = torch.as_tensor(kshot_indices(labels.numpy(), shots, config.seed, train_set.identity))
    else:
        indices = torch.arange(len(labels))
    if config.input_mode == "images":
        return torch.utils.data.Subset(train_set, indices.tolist())

    # Rank 0 fills the feature cache first so the other processes read it instead of racing.
    if distributed.enabled and not distributed.is_main:
        dist.barrier()
    features = cached_features(bundle, train_set, dataset_id=train_set.identity, progress=distributed.is_main)
    if distributed.enabled and distributed.is_main:
        dist.barrier()
    return features[indices], labels[indices]


if __name__ == "__main__":
    main()
