"""Image feature extraction and its disk cache.

``extract_features`` runs a CLIP image tower over a dataset and returns L2-normalised float32
features on the CPU. ``cached_features`` stores them under ``cache_dir()/features/<key>.pt``, keyed
by the SHA-256 of the model name, weights, precision, dataset identity, a fingerprint of the sample
list and the transform. Files are written atomically and validated (format version, key fields,
shape, dtype and a SHA-256 of the tensor bytes) before they are returned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from tqdm.auto import tqdm

from dsenergy._atomic import write_atomically
from dsenergy._paths import cache_dir as default_cache_dir
from dsenergy.models import ClipBundle, autocast_context, image_input_dtype

__all__ = [
    "CACHE_FORMAT_VERSION",
    "FeatureSet",
    "cached_feature_set",
    "cached_features",
    "dataset_fingerprint",
    "extract_features",
    "extract_features_and_labels",
    "feature_cache_fields",
    "transform_fingerprint",
]

logger = logging.getLogger(__name__)

#: Version of the cache file layout; files with another version are rebuilt.
CACHE_FORMAT_VERSION = 1

_SAMPLE_LIST_ATTRIBUTES = ("samples", "imgs", "files", "file_list", "paths", "image_paths")
_LABEL_ATTRIBUTES = ("labels", "targets")
_MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


# --------------------------------------------------------------------------------------------
# Extraction


def extract_features(
    model_or_bundle: ClipBundle | torch.nn.Module,
    dataset: Dataset | torch.Tensor,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    amp: bool | None = None,
    transform: Callable[[Any], torch.Tensor] | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Encode every image of ``dataset`` into an L2-normalised float32 feature matrix (N×D) on the CPU.

    See ``extract_features_and_labels`` for the arguments.
    """
    features, _ = extract_features_and_labels(
        model_or_bundle, dataset, batch_size, device, num_workers, amp, transform, progress
    )
    return features


def extract_features_and_labels(
    model_or_bundle: ClipBundle | torch.nn.Module,
    dataset: Dataset | torch.Tensor,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    amp: bool | None = None,
    transform: Callable[[Any], torch.Tensor] | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode every image of ``dataset``; also return its labels (int64, N) when the items carry them.

    Image tensors must already be preprocessed: floating point, C×H×W per image, with the channel
    count and image size that the model expects (3×28×28 for the demo model). Integer tensors
    such as uint8 pixels are rejected rather than cast, because the model needs the normalised
    values that the bundle's ``preprocess_val`` produces.

    Args:
        model_or_bundle: a ``ClipBundle`` or a module with ``encode_image`` (or a plain image encoder).
        dataset: one of
            - a float tensor N×C×H×W of preprocessed images;
            - a ``TensorDataset`` whose first tensor is such images, optionally followed by labels;
            - a map-style dataset, or a list, whose items are images, ``(image, label, ...)``
              tuples or dicts with ``"image"`` and ``"label"``. An image is a PIL image, which
              ``transform`` preprocesses, or a preprocessed float tensor C×H×W.
        batch_size: images per forward pass.
        device: device to run on; defaults to the model's device. The model must already be there.
        num_workers: ``DataLoader`` worker processes for map-style datasets.
        amp: run under fp16 autocast; ``None`` uses it when the bundle's precision is ``"amp"``.
            Autocast only runs on CUDA.
        transform: applied to items that are not yet tensors. It defaults to the bundle's
            ``preprocess_val``, which takes PIL images only. A caller's transform may take any item
            type but must return a preprocessed float tensor C×H×W.
        progress: show a tqdm progress bar.

    Raises:
        TypeError: ``dataset`` or one of its images has an unsupported type, or an image tensor has
            an integer dtype.
        ValueError: the dataset is empty, or an image tensor does not have the expected shape.
    """
    if batch_size < 1:
        raise ValueError(f"Invalid batch_size {batch_size}; it must be at least 1.")

    model, encode, model_device, default_transform, default_amp = _resolve_encoder(model_or_bundle)
    expected = _ExpectedImages.of(model)
    run_device = torch.device(device) if device is not None else model_device
    if run_device != model_device:
        raise ValueError(
            f"The model is on {model_device} but device={run_device}; move it first "
            f"(load_clip(..., device={str(run_device)!r}) or model.to({str(run_device)!r}))."
        )
    use_amp = _resolve_amp(amp if amp is not None else default_amp, run_device)
    input_dtype = image_input_dtype(model)
    transform = transform if transform is not None else default_transform

    _check_dataset_type(dataset)
    num_samples = len(dataset)
    if num_samples == 0:
        raise ValueError("The dataset is empty; there are no images to encode.")
    if isinstance(dataset, torch.Tensor):
        expected.check_batch(dataset, "images")
    elif isinstance(dataset, TensorDataset):
        expected.check_batch(dataset.tensors[0], "the first tensor of the TensorDataset")
    pil_only = transform is not None and transform is default_transform

    feature_chunks: list[torch.Tensor] = []
    label_chunks: list[torch.Tensor | None] = []
    was_training = model.training
    model.eval()
    try:
        batches = _iter_batches(dataset, batch_size, num_workers, transform, pil_only, expected, run_device)
        with torch.inference_mode(), autocast_context(run_device, use_amp):
            for images, labels in tqdm(batches, total=-(-num_samples // batch_size), desc="Extracting features",
                                       unit="batch", disable=not progress):
                images = images.to(run_device, dtype=input_dtype, non_blocking=True)
                features = encode(images)
                if features.ndim != 2:
                    raise ValueError(
                        f"The image encoder returned shape {tuple(features.shape)}; expected batch × dimension."
                    )
                feature_chunks.append(F.normalize(features.float(), dim=-1).cpu())
                label_chunks.append(labels)
    finally:
        model.train(was_training)

    # Concatenating outside inference mode gives ordinary tensors that autograd may save for backward.
    features = torch.cat(feature_chunks)
    labels = _concat_labels(label_chunks)
    logger.debug("Extracted %d features of dimension %d on %s (autocast %s)", *features.shape, run_device, use_amp)
    return features, labels


def _resolve_encoder(
    model_or_bundle: ClipBundle | torch.nn.Module,
) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor], torch.device, Callable | None, bool]:
    if isinstance(model_or_bundle, ClipBundle):
        bundle = model_or_bundle
        model = bundle.model
        return model, model.encode_image, _module_device(model), bundle.preprocess_val, bundle.autocast
    if isinstance(model_or_bundle, torch.nn.Module):
        model = model_or_bundle
        encode = model.encode_image if hasattr(model, "encode_image") else model
        return model, encode, _module_device(model), None, False
    raise TypeError(
        f"Expected a ClipBundle or a torch.nn.Module, got {type(model_or_bundle).__name__}; "
        "load one with dsenergy.models.load_clip."
    )


def _resolve_amp(amp: bool, device: torch.device) -> bool:
    if amp and device.type != "cuda":
        logger.warning("Autocast was requested on %s; it only runs on CUDA, so features are computed without it.",
                       device)
        return False
    return bool(amp)


def _module_device(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _check_dataset_type(dataset: Any) -> None:
    if isinstance(dataset, (torch.Tensor, Dataset)):
        return
    if isinstance(dataset, (str, bytes)) or not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(
            f"Cannot encode images from {type(dataset).__name__} {_short_repr(dataset)}; pass a float tensor "
            "N×C×H×W of preprocessed images, a TensorDataset, or a dataset or list of PIL images (optionally as "
            "(image, label) pairs)."
        )


@dataclass(frozen=True)
class _ExpectedImages:
    """Channel count and image size (height, width) that an image tower takes, each None where unknown."""

    channels: int | None
    size: tuple[int, int] | None

    @classmethod
    def of(cls, model: torch.nn.Module) -> _ExpectedImages:
        """Read the input shape from the tower's first convolution and its ``image_size`` or preprocess config.

        open_clip towers (ViT, ModifiedResNet, timm) store ``image_size``, and open_clip's factory adds
        ``preprocess_cfg["size"]``. ViT and ModifiedResNet size their positional embeddings for that
        input, so other sizes fail inside the model.

        NOTE: some timm trunks, such as CNNs with global pooling, would accept other sizes, but the
        check still requires ``image_size``, the size that open_clip's preprocess produces.
        """
        tower = getattr(model, "visual", model)
        channels = None
        for module in tower.modules():
            if isinstance(module, torch.nn.Conv2d):
                channels = module.in_channels
                break

        size = getattr(tower, "image_size", None)
        if size is None:
            size = (getattr(tower, "preprocess_cfg", None) or {}).get("size")
        if isinstance(size, int):
            size = (size, size)
        elif size is not None:
            size = (int(size[0]), int(size[1]))
        return cls(channels, size)

    def describe(self, batched: bool) -> str:
        """Return the expected shape, as in ``N×3×28×28``, with letters for unknown sizes."""
        parts = [str(self.channels) if self.channels is not None else "C"]
        parts += [str(side) for side in self.size] if self.size is not None else ["H", "W"]
        return "×".join((["N"] if batched else []) + parts)

    def check_batch(self, images: torch.Tensor, name: str) -> None:
        """Raise when ``images`` is not a float tensor N×C×H×W of the expected shape, naming it ``name``."""
        self._check_dtype(images, name)
        shape = tuple(images.shape)
        if images.ndim == 3 and self._fits(shape):
            raise ValueError(
                f"Expected {self.describe(batched=True)} preprocessed images, got {name} of shape {shape}; "
                "add the batch dimension of a single image with images.unsqueeze(0)."
            )
        if images.ndim != 4 or not self._fits(shape[1:]):
            raise ValueError(
                f"Expected {self.describe(batched=True)} preprocessed images, got {name} of shape {shape}. "
                f"{_PREPROCESS_HINT}"
            )

    def check_image(self, image: torch.Tensor, name: str) -> None:
        """Raise when ``image`` is not a float tensor C×H×W of the expected shape."""
        self._check_dtype(image, name)
        shape = tuple(image.shape)
        if image.ndim != 3 or not self._fits(shape):
            raise ValueError(
                f"Expected a {self.describe(batched=False)} preprocessed image, got {name} of shape {shape}. "
                f"{_PREPROCESS_HINT}"
            )

    def _fits(self, image_shape: tuple[int, ...]) -> bool:
        if len(image_shape) != 3:
            return False
        if self.channels is not None and image_shape[0] != self.channels:
            return False
        return self.size is None or tuple(image_shape[1:]) == self.size

    def _check_dtype(self, images: torch.Tensor, name: str) -> None:
        if images.is_floating_point():
            return
        raise TypeError(
            f"Expected preprocessed float images ({self.describe(batched=images.ndim == 4)}), got {name} of dtype "
            f"{images.dtype}. Integer pixel values are not cast, because the model needs the normalised values "
            f"that preprocessing produces. {_PREPROCESS_HINT}"
        )


_PREPROCESS_HINT = (
    "Pass PIL images (or a dataset of them) so that the bundle's preprocess_val is applied, "
    "or apply bundle.preprocess_val to each image first."
)


def _iter_batches(
    dataset: Dataset | torch.Tensor,
    batch_size: int,
    num_workers: int,
    transform: Callable | None,
    pil_only: bool,
    expected: _ExpectedImages,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield (images, labels or None) batches; in-memory tensors are sliced without a DataLoader."""
    if isinstance(dataset, torch.Tensor):
        for start in range(0, len(dataset), batch_size):
            yield dataset[start:start + batch_size], None
        return

    if isinstance(dataset, TensorDataset):
        images = dataset.tensors[0]
        labels = dataset.tensors[1] if len(dataset.tensors) > 1 else None
        for start in range(0, len(images), batch_size):
            batch_labels = labels[start:start + batch_size].long() if labels is not None else None
            yield images[start:start + batch_size], batch_labels
        return

    loader = DataLoader(
        _PreparedDataset(dataset, transform, pil_only, expected),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        collate_fn=_collate,
    )
    yield from loader


class _PreparedDataset(Dataset):
    """Split items into (image tensor, label or None), apply the transform to non-tensor images and check the result.

    With ``pil_only`` the transform is the bundle's ``preprocess_val``, so non-tensor images other
    than PIL images are rejected before the transform is called.
    """

    def __init__(self, dataset: Dataset, transform: Callable | None, pil_only: bool, expected: _ExpectedImages) -> None:
        self.dataset = dataset
        self.transform = transform
        self.pil_only = pil_only
        self.expected = expected

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | None]:
        item = self.dataset[index]
        if isinstance(item, dict):
            image, label = item["image"], item.get("label")
        elif isinstance(item, (tuple, list)):
            image, label = item[0], (item[1] if len(item) > 1 else None)
        else:
            image, label = item, None

        if not isinstance(image, torch.Tensor):
            if self.transform is None:
                raise TypeError(
                    f"Item {index} is a {type(image).__name__} rather than a tensor, and the transform is missing; "
                    "pass transform=bundle.preprocess_val or a ClipBundle."
                )
            if self.pil_only and not isinstance(image, Image.Image):
                raise TypeError(
                    f"Item {index} has type {type(image).__name__} ({_short_repr(image)}), which is not an image. "
                    "Dataset items must be PIL images or preprocessed float tensors "
                    f"{self.expected.describe(batched=False)}, alone, as (image, label) pairs or as dicts with "
                    "'image' and 'label'; pass transform= to convert other item types."
                )
            image = self.transform(image)
            if not isinstance(image, torch.Tensor):
                raise TypeError(
                    f"The transform returned a {type(image).__name__} for item {index}; it must return a "
                    f"preprocessed float tensor {self.expected.describe(batched=False)}."
                )
        self.expected.check_image(image, f"item {index}")
        if isinstance(label, torch.Tensor):
            label = int(label.item())
        elif label is not None:
            label = int(label)
        return image, label


def _short_repr(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _collate(items: list[tuple[torch.Tensor, int | None]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    images = torch.stack([image for image, _ in items])
    labels = [label for _, label in items]
    if all(label is None for label in labels):
        return images, None
    if any(label is None for label in labels):
        raise ValueError("Some dataset items have labels and others do not; every item needs the same layout.")
    return images, torch.tensor(labels, dtype=torch.int64)


def _concat_labels(chunks: list[torch.Tensor | None]) -> torch.Tensor | None:
    if all(chunk is None for chunk in chunks):
        return None
    if any(chunk is None for chunk in chunks):
        raise ValueError("Some batches have labels and others do not; every item needs the same layout.")
    return torch.cat(chunks).to(torch.int64)


# --------------------------------------------------------------------------------------------
# Cache


@dataclass
class FeatureSet:
    """Features from the disk cache with their labels, cache key, file path and whether the file was reused."""

    features: torch.Tensor
    labels: torch.Tensor | None
    key: str
    path: Path
    cache_hit: bool

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(features={_describe_tensor(self.features)}, "
            f"labels={_describe_tensor(self.labels)}, key={self.key[:12] + '…'!r}, path={str(self.path)!r}, "
            f"cache_hit={self.cache_hit})"
        )


def _describe_tensor(tensor: torch.Tensor | None) -> str:
    """Describe a tensor by dtype and shape, as in ``float32[10, 128]``."""
    if tensor is None:
        return "None"
    return f"{str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)}"


def dataset_fingerprint(dataset: Dataset | torch.Tensor) -> str:
    """Return a SHA-256 over the dataset's type, length, sample list and labels.

    A dataset may define ``fingerprint()`` (or a ``fingerprint`` string) to supply its own.
    The sample list is the first existing attribute of ``samples``, ``imgs``, ``files``, ``file_list``,
    ``paths`` and ``image_paths``. Labels come from ``labels`` or ``targets``, or from the second
    tensor of a ``TensorDataset``. Image pixels are not hashed: ``dataset_id`` is the
    identity of the images, and the fingerprint catches a changed sample list or length.
    """
    digest = hashlib.sha256()
    _update_fingerprint(digest, dataset)
    return digest.hexdigest()


def _update_fingerprint(digest: Any, dataset: Any) -> None:
    custom = getattr(dataset, "fingerprint", None)
    if custom is not None:
        value = custom() if callable(custom) else custom
        digest.update(f"custom:{value}".encode())
        return

    digest.update(f"{type(dataset).__module__}.{type(dataset).__qualname__}:{len(dataset)}".encode())

    if isinstance(dataset, Subset):
        _update_hash(digest, "indices", list(dataset.indices))
        _update_fingerprint(digest, dataset.dataset)
        return
    if isinstance(dataset, TensorDataset):
        for position, tensor in enumerate(dataset.tensors[1:], start=1):
            _update_hash(digest, f"tensor{position}", tensor)
        return

    for attribute in _SAMPLE_LIST_ATTRIBUTES:
        if hasattr(dataset, attribute):
            _update_hash(digest, attribute, getattr(dataset, attribute))
            break
    for attribute in _LABEL_ATTRIBUTES:
        if hasattr(dataset, attribute):
            _update_hash(digest, attribute, getattr(dataset, attribute))
            break


def _update_hash(digest: Any, name: str, value: Any) -> None:
    digest.update(f"|{name}:".encode())
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    else:
        digest.update(repr(_as_plain(value)).encode())


def _as_plain(value: Any) -> Any:
    """Turn paths and nested sequences into plain Python values whose repr is stable."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_as_plain(item) for item in value]
    return value


def transform_fingerprint(transform: Any) -> str:
    """Return ``repr(transform)`` without memory addresses, so it is stable across processes.

    NOTE: two different lambdas or functions of the same name give the same text; pass an explicit
    ``transform_id`` to ``cached_features`` when a transform contains such callables.
    """
    return _MEMORY_ADDRESS.sub("", repr(transform))


def feature_cache_fields(
    bundle: ClipBundle,
    dataset: Dataset | torch.Tensor,
    dataset_id: str,
    transform_id: str | None = None,
    amp: bool | None = None,
    transform: Callable | None = None,
) -> dict[str, Any]:
    """Return the fields that identify a feature file; the cache key is the SHA-256 of their JSON."""
    if not isinstance(bundle, ClipBundle):
        raise TypeError(
            f"cached_features needs a ClipBundle (for the model name and weights_id), got {type(bundle).__name__}."
        )
    if not dataset_id:
        raise ValueError("dataset_id is empty; name the dataset and split, e.g. 'fashion_open/id_test'.")

    if transform_id is None:
        applied = transform if transform is not None else bundle.preprocess_val
        transform_id = transform_fingerprint(applied)
        dataset_transform = getattr(dataset, "transform", None)
        if dataset_transform is not None:
            transform_id += " | dataset transform: " + transform_fingerprint(dataset_transform)

    return {
        "model": bundle.name,
        "weights_id": bundle.weights_id,
        "precision": bundle.precision,
        "autocast": _resolve_amp(amp if amp is not None else bundle.autocast, bundle.device),
        "dataset_id": dataset_id,
        "dataset_fingerprint": dataset_fingerprint(dataset),
        "transform_id": transform_id,
    }


def cached_features(
    bundle: ClipBundle,
    dataset: Dataset | torch.Tensor,
    dataset_id: str,
    transform_id: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    return_labels: bool = False,
    **options: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """Return the normalised image features (N×D) of ``dataset``, from the disk cache when a valid file exists.

    With ``return_labels=True`` return ``(features, labels)``, where labels are None when the items
    carry none. ``options`` go to ``cached_feature_set``, which documents every argument.
    """
    feature_set = cached_feature_set(bundle, dataset, dataset_id, transform_id, cache_dir, **options)
    if return_labels:
        return feature_set.features, feature_set.labels
    return feature_set.features


def cached_feature_set(
    bundle: ClipBundle,
    dataset: Dataset | torch.Tensor,
    dataset_id: str,
    transform_id: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    amp: bool | None = None,
    transform: Callable[[Any], torch.Tensor] | None = None,
    rebuild: bool = False,
    progress: bool = True,
) -> FeatureSet:
    """Read the image features and labels of ``dataset`` from the disk cache, or extract and store them.

    Args:
        bundle: the model; its name, ``weights_id`` and precision are part of the key.
        dataset: as for ``extract_features``.
        dataset_id: the identity of the images, e.g. ``"fashion_open/id_test"``. Image pixels are not
            hashed, so two datasets with the same id, length, sample list and labels share a file.
        transform_id: identity of the preprocessing; defaults to the address-free ``repr`` of the
            applied transform (plus the dataset's own ``transform`` attribute, if any).
        cache_dir: cache root; defaults to ``dsenergy._paths.cache_dir()``. Files go to ``<root>/features``.
        rebuild: extract and overwrite even when a valid file exists.
    """
    fields = feature_cache_fields(bundle, dataset, dataset_id, transform_id, amp, transform)
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / "features" / f"{key}.pt"

    if path.exists() and not rebuild:
        stored = _read_cache_file(path, key, fields)
        if stored is not None:
            features, labels = stored
            logger.info("Feature cache hit %s: %d × %d, %s", path.name, *features.shape, _describe(fields))
            return FeatureSet(features, labels, key, path, cache_hit=True)

    logger.info("Feature cache miss %s: extracting %s", path.name, _describe(fields))
    features, labels = extract_features_and_labels(
        bundle, dataset, batch_size=batch_size, num_workers=num_workers, amp=fields["autocast"],
        transform=transform, progress=progress,
    )
    _write_cache_file(path, key, fields, features, labels)
    return FeatureSet(features, labels, key, path, cache_hit=False)


def _describe(fields: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in fields.items() if name != "dataset_fingerprint") + (
        f", dataset_fingerprint={fields['dataset_fingerprint'][:12]}"
    )


def _tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def _write_cache_file(
    path: Path, key: str, fields: dict[str, Any], features: torch.Tensor, labels: torch.Tensor | None
) -> None:
    """Write the features to a temporary file in the cache folder, then rename it over ``path``."""
    header = {
        "format_version": CACHE_FORMAT_VERSION,
        "key": key,
        "key_fields": fields,
        "shape": list(features.shape),
        "dtype": str(features.dtype),
        "sha256": _tensor_sha256(features),
        "labels_sha256": _tensor_sha256(labels) if labels is not None else None,
    }
    write_atomically(
        path, lambda stream: torch.save({"header": header, "features": features, "labels": labels}, stream), sync=True
    )
    logger.info("Stored features %d × %d in %s", *features.shape, path)


def _read_cache_file(
    path: Path, key: str, fields: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Return the stored (features, labels), or None after logging why the file is not usable."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated or corrupt files raise many types from torch.load and pickle
        # torch's message for unpicklable content advises weights_only=False, which is unsafe and
        # not needed here, so only the exception type is logged.
        logger.warning("Feature cache file %s is corrupt or unreadable (torch.load raised %s); rebuilding it.",
                       path, type(error).__name__)
        return None

    problem = _validate_cache_content(content, key, fields)
    if problem is not None:
        logger.warning("Feature cache file %s is invalid (%s); rebuilding it.", path, problem)
        return None
    return content["features"], content["labels"]


def _validate_cache_content(content: Any, key: str, fields: dict[str, Any]) -> str | None:
    """Return what is wrong with a loaded cache file, or None when it is valid."""
    if not isinstance(content, dict) or not isinstance(content.get("header"), dict):
        return "no header"
    header = content["header"]
    if header.get("format_version") != CACHE_FORMAT_VERSION:
        return f"format version {header.get('format_version')!r}, expected {CACHE_FORMAT_VERSION}"
    if header.get("key") != key or header.get("key_fields") != fields:
        return "its key fields differ from the requested ones"

    features = content.get("features")
    if not isinstance(features, torch.Tensor):
        return "no feature tensor"
    if list(features.shape) != header.get("shape") or str(features.dtype) != header.get("dtype"):
        return f"tensor {tuple(features.shape)} {features.dtype} differs from header {header.get('shape')} {header.get('dtype')}"
    if _tensor_sha256(features) != header.get("sha256"):
        return "feature checksum mismatch"

    labels = content.get("labels")
    expected_labels_sha = header.get("labels_sha256")
    if (labels is None) != (expected_labels_sha is None):
        return "labels present in only one of header and data"
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.shape[0] != features.shape[0]:
            return "labels do not match the features"
        if _tensor_sha256(labels) != expected_labels_sha:
            return "label checksum mismatch"
    return None
