"""CLIP model loading over open_clip and zero-shot text classifiers.

``load_clip`` builds an open_clip model with its tokenizer and transforms and records where the
weights came from in ``ClipBundle.weights_id``, a string that identifies the weights and is used in
cache keys. ``build_zero_shot_classifier`` encodes every class prompt once and averages the
normalised prompt embeddings per class.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import pickle
import os
import re
import string
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import open_clip
import torch
import torch.nn.functional as F

__all__ = [
    "PRECISIONS",
    "ClipBundle",
    "WeightsUnavailableError",
    "ZeroShotClassifier",
    "build_zero_shot_classifier",
    "autocast_context",
    "file_sha256",
    "image_input_dtype",
    "load_clip",
    "register_model_config",
    "resolve_device",
    "weights_problem",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16", "amp")

#: Seconds to wait for the model hub before giving up on a download.
HUB_TIMEOUT_S = 5.0

_HUB_PREFIX = "hf-hub:"
_HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_HUB_CONFIG_FILE = "open_clip_config.json"
_LOCAL_HINT = 'pass a local checkpoint with pretrained="/path/to/file.pt"'

Template = Union[str, Callable[[str], str]]


class WeightsUnavailableError(RuntimeError):
    """Raised when the requested model weights cannot be found, downloaded or read."""


# --------------------------------------------------------------------------------------------
# Loading


@dataclass
class ClipBundle:
    """An open_clip model with its transforms, tokenizer and the identity of its weights.

    ``weights_id`` identifies the weights: ``sha256:<hex>`` for a local file, ``tag:<tag>`` for an
    open_clip pretrained tag, ``hf-hub:<repo>@<revision>`` for hub weights and
    ``random-init-seed<N>-open_clip<version>-torch<version>`` for random weights.
    """

    model: torch.nn.Module
    preprocess_train: Callable[[Any], torch.Tensor]
    preprocess_val: Callable[[Any], torch.Tensor]
    tokenizer: Callable[..., torch.Tensor]
    name: str
    pretrained: str | None
    weights_id: str
    precision: str = "fp32"
    device: torch.device = torch.device("cpu")
    source: str = ""

    @property
    def logit_scale(self) -> float:
        """CLIP's learned inverse temperature ``exp(model.logit_scale)`` (about 100 for trained CLIP)."""
        return float(self.model.logit_scale.detach().float().exp().item())

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point dtype of the image tower's weights, which image inputs are cast to."""
        return image_input_dtype(self.model)

    @property
    def autocast(self) -> bool:
        """Whether encoding runs under CUDA autocast (precision ``"amp"``)."""
        return self.precision == "amp"

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Tokenize one text or a list of texts into a ``len(texts) × context_length`` tensor."""
        if isinstance(texts, str):
            texts = [texts]
        return self.tokenizer(list(texts))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Encode preprocessed images (B×C×H×W) into L2-normalised float32 features (B×D)."""
        images = images.to(self.device, dtype=self.dtype)
        with torch.inference_mode(), autocast_context(self.device, self.autocast):
            features = self.model.encode_image(images)
            features = F.normalize(features.float(), dim=-1)
        # A clone made outside inference mode can be saved for backward by later trainable layers.
        return features.clone()

    def encode_text(self, texts: str | Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Encode texts (strings or token ids) into L2-normalised float32 features (B×D)."""
        tokens = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        tokens = tokens.to(self.device)
        with torch.inference_mode(), autocast_context(self.device, self.autocast):
            features = self.model.encode_text(tokens)
            features = F.normalize(features.float(), dim=-1)
        return features.clone()


def load_clip(
    name: str,
    pretrained: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    seed: int = 0,
) -> ClipBundle:
    """Load an open_clip model, its transforms and tokenizer.

    Args:
        name: open_clip architecture (``"ViT-B-32"``), ``"hf-hub:<org>/<repo>"`` (config and weights
            from the hub) or ``dsenergy.demo.DEMO_MODEL_NAME``.
        pretrained: an open_clip tag (``"openai"``, ``"laion2b_s34b_b79k"``), a local checkpoint file,
            ``"hf-hub:<org>/<repo>[/<file>]"`` (weights for ``name`` from the hub), or ``None`` for
            random weights. The demo model with ``None`` loads its committed checkpoint.
        device: device to put the model on.
        precision: ``"fp32"``, ``"fp16"``, ``"bf16"`` (weights cast by open_clip) or ``"amp"``
            (fp32 weights, encoding under autocast; CUDA only).
        seed: seed of the random initialisation; it is part of ``weights_id`` for random weights.

    Raises:
        WeightsUnavailableError: the model name is unknown or the weights cannot be found,
            downloaded or read.
    """
    device = torch.device(device)
    _check_precision(precision, device)
    pretrained = os.fspath(pretrained) if pretrained is not None else None

    if name == _demo_model_name():
        name, pretrained = _prepare_demo(name, pretrained)

    if name.startswith(_HUB_PREFIX):
        return _load_hub_model(name, pretrained, device, precision)

    _check_model_name(name, pretrained)

    if pretrained is None:
        weights_id = f"random-init-seed{seed}-open_clip{open_clip.__version__}-torch{torch.__version__}"
        bundle = _create(name, None, device, precision, seed, source="random initialisation")
        logger.warning(
            "Model %s has random weights (seed %d); its features carry no meaning. %s to use trained weights.",
            name, seed, _LOCAL_HINT.capitalize(),
        )
        return _finish(bundle, pretrained, weights_id)

    if pretrained.startswith(_HUB_PREFIX):
        checkpoint, revision = _resolve_hub_weights(name, pretrained)
        bundle = _create(name, None, device, precision, seed, source=str(checkpoint))
        _load_checkpoint_file(bundle.model, checkpoint, name, pretrained)
        return _finish(bundle, pretrained, f"{pretrained}@{revision}")

    if open_clip.get_pretrained_cfg(name, pretrained):
        checkpoint = _resolve_tag(name, pretrained)
        bundle = _create(name, pretrained, device, precision, seed, source=str(checkpoint))
        return _finish(bundle, pretrained, f"tag:{pretrained}")

    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"Weights {pretrained!r} for model {name!r} not found: it is neither an existing file nor an "
            f"open_clip tag for this model (known tags: {_known_tags(name) or 'none'}). {_LOCAL_HINT.capitalize()}."
        )
    bundle = _create(name, None, device, precision, seed, source=str(path))
    _load_checkpoint_file(bundle.model, path, name, pretrained)
    return _finish(bundle, pretrained, f"sha256:{file_sha256(path)}")


def register_model_config(name: str, config: dict[str, Any]) -> None:
    """Add an architecture config (``embed_dim``, ``vision_cfg``, ``text_cfg``) to open_clip's registry.

    The config is written to a JSON file in a fresh temporary folder, because
    ``open_clip.add_model_config`` reads configs from files named after the model.
    """
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in config]
    if missing:
        raise ValueError(f"Model config {name!r} lacks the keys {missing}; open_clip needs all three.")

    folder = Path(tempfile.mkdtemp(prefix="dsenergy-model-config-"))
    config_path = folder / f"{name}.json"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    open_clip.add_model_config(config_path)
    logger.debug("Registered open_clip model config %s from %s", name, config_path)


def file_sha256(path: str | os.PathLike) -> str:
    """Return the hex SHA-256 of a file, memoised per (path, size, modification time)."""
    path = Path(path).resolve()
    stat = path.stat()
    memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _SHA256_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _SHA256_MEMO[memo_key] = digest.hexdigest()
    return _SHA256_MEMO[memo_key]


_SHA256_MEMO: dict[tuple[str, int, int], str] = {}


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """Return a CUDA fp16 autocast context when enabled on a CUDA device, else a no-op context."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"Invalid precision {precision!r}; use one of {PRECISIONS}.")
    if precision == "amp" and device.type != "cuda":
        raise ValueError(
            f"Precision 'amp' needs a CUDA device, but device is {device}; use 'fp32' (or 'bf16') on the CPU."
        )


def _check_model_name(name: str, pretrained: str | None) -> None:
    if name in open_clip.list_models():
        return
    close = _close_model_names(name)
    raise WeightsUnavailableError(
        f"Unknown model {name!r} (pretrained={pretrained!r}): open_clip has no such architecture config. "
        f"Close names: {', '.join(close) or 'none'}. Register a config with dsenergy.models.register_model_config or "
        f"open_clip.add_model_config, then {_LOCAL_HINT}."
    )


def _close_model_names(name: str, count: int = 5) -> list[str]:
    """Return up to ``count`` known model names that resemble ``name``, the most similar first.

    Names are compared case-insensitively with ``-`` and ``_`` treated alike, so ``dsenergy_demo``
    finds ``dsenergy-demo`` and ``vit-b-32`` finds ``ViT-B-32``. The demo model is a candidate even
    before its config is registered with open_clip.
    """
    candidates = list(open_clip.list_models())
    demo_name = _demo_model_name()
    if demo_name is not None and demo_name not in candidates:
        candidates.append(demo_name)

    def normalise(text: str) -> str:
        return text.lower().replace("_", "-")

    by_normalised: dict[str, list[str]] = {}
    for candidate in candidates:
        by_normalised.setdefault(normalise(candidate), []).append(candidate)

    close: list[str] = []
    for match in difflib.get_close_matches(normalise(name), list(by_normalised), n=count):
        close.extend(by_normalised[match])
    return close[:count]


def weights_problem(name: str, pretrained: str | None) -> tuple[str, str] | None:
    """Check a (model, pretrained) pair before anything is loaded: ``None``, or (parameter, message) of the problem.

    The parameter is ``"model"`` or ``"pretrained"``. Checks what can be checked offline: the
    architecture name against open_clip's registry (plus the demo model), and ``pretrained`` as an
    existing file or one of the model's open_clip tags. ``hf-hub:`` names are left to
    :func:`load_clip`, which needs the hub or its cache to resolve them.
    """
    is_demo = name == _demo_model_name()
    if is_demo:
        from dsenergy import demo

        demo.register_demo_config()
    if name.startswith(_HUB_PREFIX):
        return None
    if name not in open_clip.list_models():
        close = _close_model_names(name)
        return "model", (
            f"model {name!r} is not an open_clip architecture (close names: {', '.join(close) or 'none'}); "
            "use a name from open_clip.list_models() or register a config with dsenergy.models.register_model_config"
        )

    tags = _known_tags(name)
    if pretrained is None:
        if is_demo:
            return None
        return "pretrained", (
            f"pretrained is null, which would give model {name!r} random weights; set it to a checkpoint file "
            f"or one of the model's tags ({', '.join(tags) or 'none'}). Random weights are only for tests: "
            "dsenergy.models.load_clip(name) gives them"
        )
    if pretrained.startswith(_HUB_PREFIX) or pretrained in tags or Path(pretrained).expanduser().is_file():
        return None
    return "pretrained", (
        f"pretrained {pretrained!r} is neither an existing checkpoint file nor an open_clip tag of model {name!r} "
        f"(its tags: {', '.join(tags) or 'none'}); give the path of a local checkpoint file, one of those tags, or null"
    )


class _MessageFilter(logging.Filter):
    """Drop log records whose message starts with a given prefix."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def _create(
    name: str,
    tag: str | None,
    device: torch.device,
    precision: str,
    seed: int,
    source: str,
) -> ClipBundle:
    """Build the model through open_clip without disturbing the caller's random state."""
    open_clip_precision = "fp32" if precision == "amp" else precision
    # open_clip warns on the root logger that the model is randomly initialised whenever no tag is
    # given. A checkpoint file is loaded right after in that case, so the warning is filtered out.
    weights_follow = tag is None and source != "random initialisation"
    random_init_filter = _MessageFilter("No pretrained weights loaded")
    root_logger = logging.getLogger()
    if weights_follow:
        root_logger.addFilter(random_init_filter)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
                name, pretrained=tag, device=device, precision=open_clip_precision
            )
        except (RuntimeError, OSError) as error:
            raise WeightsUnavailableError(
                f"open_clip could not build model {name!r} with pretrained={tag!r}: {error}. {_LOCAL_HINT.capitalize()}."
            ) from None
        finally:
            root_logger.removeFilter(random_init_filter)
    model.eval()

    return ClipBundle(
        model=model,
        preprocess_train=preprocess_train,
        preprocess_val=preprocess_val,
        tokenizer=open_clip.get_tokenizer(name),
        name=name,
        pretrained=tag,
        weights_id="",
        precision=precision,
        device=device,
        source=source,
    )


def _finish(bundle: ClipBundle, pretrained: str | None, weights_id: str) -> ClipBundle:
    bundle.pretrained = pretrained
    bundle.weights_id = weights_id
    logger.info(
        "Loaded model %s (pretrained=%s) from %s on %s, precision %s, weights_id %s, logit_scale %.2f",
        bundle.name, pretrained, bundle.source, bundle.device, bundle.precision, weights_id, bundle.logit_scale,
    )
    return bundle


def _load_checkpoint_file(model: torch.nn.Module, path: Path, name: str, pretrained: str) -> None:
    """Load a state_dict file (plain, or under a ``state_dict``/``model`` key) into ``model``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            checkpoint = load_file(str(path), device="cpu")
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types for unreadable or unsafe files
        # torch's own unpickling message advises weights_only=False, which this kit never does.
        reason = "it is not a PyTorch file, is corrupt, or pickles objects other than tensors"
        if not isinstance(error, pickle.UnpicklingError):
            reason += f" (torch.load raised {type(error).__name__}: {_first_line(error)})"
        raise WeightsUnavailableError(
            f"Checkpoint {str(path)!r} for model {name!r} (pretrained={pretrained!r}) could not be read "
            f"with weights_only=True: {reason}. Save it as a plain state_dict "
            f"(torch.save(model.state_dict(), path)) and {_LOCAL_HINT}."
        ) from None

    state_dict = _unwrap_state_dict(checkpoint, path)
    expected = model.state_dict()
    for key in ("logit_scale", "logit_bias"):
        if key in state_dict and key in expected and state_dict[key].shape != expected[key].shape:
            state_dict[key] = state_dict[key].reshape(expected[key].shape)

    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"Checkpoint {str(path)!r} does not match model {name!r} (pretrained={pretrained!r}): "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}. "
            f"Check the architecture name, or {_LOCAL_HINT} saved from this architecture."
        )
    mismatched = [
        f"{key} {tuple(state_dict[key].shape)} (model {tuple(expected[key].shape)})"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    if mismatched:
        raise WeightsUnavailableError(
            f"Checkpoint {str(path)!r} does not fit model {name!r} (pretrained={pretrained!r}): "
            f"{len(mismatched)} tensors have other shapes, e.g. {'; '.join(mismatched[:3])}. The file was saved "
            f"from another size of this architecture; check the model name, or {_LOCAL_HINT} saved from it."
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise WeightsUnavailableError(f"Checkpoint {str(path)!r} does not fit model {name!r}: {error}") from None


def _unwrap_state_dict(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise WeightsUnavailableError(
            f"Checkpoint {str(path)!r} is not a state_dict of tensors (plain, or under a 'state_dict' or "
            f"'model' key); got {type(checkpoint).__name__}. {_LOCAL_HINT.capitalize()} holding model.state_dict()."
        )
    if checkpoint and all(key.startswith("module.") for key in checkpoint):
        checkpoint = {key[len("module."):]: value for key, value in checkpoint.items()}
    return dict(checkpoint)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --------------------------------------------------------------------------------------------
# Demo model and hub downloads


def _demo_model_name() -> str | None:
    try:
        from dsenergy import demo
    except ImportError:
        return None
    return demo.DEMO_MODEL_NAME


def _prepare_demo(name: str, pretrained: str | None) -> tuple[str, str | None]:
    from dsenergy import demo

    demo.register_demo_config()
    if pretrained is not None:
        return name, pretrained

    path = demo.demo_checkpoint_path()
    if not Path(path).is_file():
        raise WeightsUnavailableError(
            f"Checkpoint of model {name!r} (pretrained=None) not found at {path}. Train it with "
            f"`python -m dsenergy.demo train`, or {_LOCAL_HINT}."
        )
    _warn_if_unrecorded(Path(path))
    return name, str(path)


def _warn_if_unrecorded(path: Path) -> None:
    """Warn when the demo checkpoint is not the one its training record (and so its model card) describes."""
    record_path = path.with_name(path.stem + ".training.json")
    if not record_path.is_file():
        return
    try:
        recorded = json.loads(record_path.read_text(encoding="utf-8")).get("sha256")
    except (OSError, ValueError, AttributeError) as error:
        logger.warning("Could not read the demo training record %s (%s); the checkpoint is not checked against it.",
                       record_path, error)
        return
    actual = file_sha256(path)
    if recorded and recorded != actual:
        logger.warning(
            "The demo checkpoint %s (sha256 %s…) is not the one its training record and model card describe "
            "(sha256 %s…); the notebooks' reference numbers will not match. Restore the committed file with "
            "`git checkout -- data/models/`.",
            path, actual[:12], recorded[:12],
        )


def _hub_offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    with contextlib.suppress(ImportError):
        from huggingface_hub import constants

        flag = flag or bool(constants.HF_HUB_OFFLINE)
    return flag


def _hub_download(repo_id: str, filenames: Sequence[str], name: str, pretrained: str | None) -> Path:
    """Return the local path of the first of ``filenames`` in ``repo_id``: cached copy first, then the hub.

    The hub is not contacted when ``HF_HUB_OFFLINE`` is set, and each request waits at most
    ``HUB_TIMEOUT_S`` seconds, so a machine without network fails within seconds.
    """
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise WeightsUnavailableError(
            f"Weights of model {name!r} (pretrained={pretrained!r}) are on the Hugging Face hub, but "
            f"huggingface_hub is not installed. Install it with `pip install huggingface_hub`, or {_LOCAL_HINT}."
        ) from None

    for filename in filenames:
        with contextlib.suppress(Exception):  # any failure here only means "not in the local cache"
            return Path(hf_hub_download(repo_id, filename, local_files_only=True))

    if _hub_offline():
        raise WeightsUnavailableError(
            f"Weights of model {name!r} (pretrained={pretrained!r}) are not in the local hub cache and "
            f"HF_HUB_OFFLINE is set, so hub repository {repo_id!r} was not contacted. Unset HF_HUB_OFFLINE "
            f"on a machine with network access, or {_LOCAL_HINT}."
        )

    endpoint = os.environ.get("HF_ENDPOINT") or None
    _probe_hub(endpoint or "https://huggingface.co", repo_id, name, pretrained)

    last_error: Exception | None = None
    for filename in filenames:
        try:
            path = hf_hub_download(repo_id, filename, etag_timeout=HUB_TIMEOUT_S, endpoint=endpoint)
        except Exception as error:  # network, HTTP and missing-file errors all mean "try the next name"
            last_error = error
            logger.debug("Hub download of %s/%s failed: %r", repo_id, filename, error)
            continue
        logger.info("Downloaded %s from hub repository %s to %s", filename, repo_id, path)
        return Path(path)

    raise WeightsUnavailableError(
        f"Weights of model {name!r} (pretrained={pretrained!r}) could not be downloaded from hub repository "
        f"{repo_id!r} (tried {list(filenames)}; last error: {type(last_error).__name__}: "
        f"{_first_line(last_error) if last_error else 'none'}). Check the network, or {_LOCAL_HINT}."
    )


def _probe_hub(endpoint: str, repo_id: str, name: str, pretrained: str | None) -> None:
    """Send one request with a short timeout and raise if the hub cannot be reached at all.

    huggingface_hub retries failed connections with backoff for about 20 seconds per file, so an
    unreachable hub is detected here first.
    """
    url = f"{endpoint.rstrip('/')}/api/models/{repo_id}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=HUB_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return  # the hub is reachable, and hf_hub_download reports missing or gated repositories itself
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise WeightsUnavailableError(
            f"Weights of model {name!r} (pretrained={pretrained!r}) are not in the local hub cache and the hub "
            f"at {endpoint} cannot be reached ({reason}). Check the network or set HF_HUB_OFFLINE=1 to skip "
            f"the hub, and {_LOCAL_HINT}."
        ) from None


def _hub_revision(path: Path) -> str:
    """Return the hub commit from a cached ``.../snapshots/<commit>/<file>`` path, else the file hash."""
    parts = path.parts
    if "snapshots" in parts:
        index = parts.index("snapshots")
        if index + 1 < len(parts) and re.fullmatch(r"[0-9a-f]{40}", parts[index + 1]):
            return parts[index + 1]
    return f"sha256:{file_sha256(path)}"


def _split_hub_reference(reference: str) -> tuple[str, list[str]]:
    """Split ``org/repo[/file]`` into the repository id and the file names to try."""
    parts = reference.strip("/").split("/")
    if len(parts) < 2:
        raise ValueError(f"Invalid hub reference {reference!r}; expected 'hf-hub:<org>/<repo>[/<file>]'.")
    repo_id = "/".join(parts[:2])
    if len(parts) > 2:
        return repo_id, ["/".join(parts[2:])]
    return repo_id, list(_HUB_WEIGHT_FILES)


def _resolve_hub_weights(name: str, pretrained: str) -> tuple[Path, str]:
    repo_id, filenames = _split_hub_reference(pretrained[len(_HUB_PREFIX):])
    path = _hub_download(repo_id, filenames, name, pretrained)
    return path, _hub_revision(path)


def _resolve_tag(name: str, tag: str) -> str:
    """Make sure the weights of an open_clip tag are available locally, failing fast when they are not."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if cfg.get("file"):
        return cfg["file"]

    hub = cfg.get("hf_hub", "")
    if hub.endswith("/"):
        return str(_hub_download(hub.rstrip("/"), list(_HUB_WEIGHT_FILES), name, tag))
    if hub:
        repo_id, filename = os.path.split(hub)
        filenames = [filename]
        if filename.endswith((".bin", ".pth")):
            filenames.insert(0, filename[:-4] + ".safetensors")
        return str(_hub_download(repo_id, filenames, name, tag))

    url = cfg.get("url", "")
    cached = Path("~/.cache/clip").expanduser() / os.path.basename(url)
    if cached.is_file():
        return str(cached)
    if _hub_offline():
        raise WeightsUnavailableError(
            f"Weights of model {name!r} (pretrained={tag!r}) are not cached at {cached} and HF_HUB_OFFLINE "
            f"is set, so {url} was not contacted. {_LOCAL_HINT.capitalize()}."
        )
    # NOTE: open_clip downloads URL-only tags with urllib and no timeout, so a stalled network can block
    # here for as long as the operating system's connection timeout.
    return url


def _load_hub_model(name: str, pretrained: str | None, device: torch.device, precision: str) -> ClipBundle:
    """Load config and weights of ``hf-hub:<org>/<repo>`` through open_clip after checking they are reachable."""
    if pretrained is not None:
        raise ValueError(
            f"Model {name!r} takes its weights from the hub, so pretrained must be None (got {pretrained!r})."
        )
    repo_id, _ = _split_hub_reference(name[len(_HUB_PREFIX):])
    _hub_download(repo_id, [_HUB_CONFIG_FILE], name, pretrained)
    weights = _hub_download(repo_id, list(_HUB_WEIGHT_FILES), name, pretrained)
    bundle = _create(name, None, device, precision, seed=0, source=str(weights))
    return _finish(bundle, pretrained, f"{name}@{_hub_revision(weights)}")


def _known_tags(name: str) -> list[str]:
    try:
        return open_clip.list_pretrained_tags_by_model(name)
    except (KeyError, RuntimeError):
        return []


def image_input_dtype(model: torch.nn.Module) -> torch.dtype:
    """Return the dtype that image inputs need: that of the first convolution or linear layer of the image tower.

    open_clip's fp16/bf16 modes cast only those layers and keep embeddings in float32.
    """
    tower = getattr(model, "visual", model)
    for module in tower.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            return module.weight.dtype
    for parameter in tower.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


# --------------------------------------------------------------------------------------------
# Zero-shot classifier


@dataclass
class ZeroShotClassifier:
    """Class text embeddings for zero-shot CLIP classification.

    ``text_features`` (K×D) holds, per class, the renormalised mean of the normalised embeddings of
    its prompts. Cosine similarities are ``s = ẑ · wᵀ`` with ``ẑ = z / ‖z‖``; logits are
    ``logit_scale · s``, i.e. ``s / τ`` with temperature ``τ = 1 / logit_scale``.
    """

    text_features: torch.Tensor
    logit_scale: float
    class_names: list[str]
    templates: list[Template]

    def __post_init__(self) -> None:
        self.class_names = _as_name_list(self.class_names, "class_names", _CLASS_NAMES_EXAMPLE)
        self.templates = _as_name_list(self.templates, "templates", _TEMPLATES_EXAMPLE, allow_callables=True)
        if self.text_features.ndim != 2 or self.text_features.shape[0] != len(self.class_names):
            raise ValueError(
                f"text_features of shape {tuple(self.text_features.shape)} does not fit {len(self.class_names)} "
                f"class names; expected a {len(self.class_names)}×D tensor with one row per class."
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(text_features={_describe_tensor(self.text_features)}, "
            f"logit_scale={self.logit_scale:.4g}, class_names={_abbreviate(self.class_names)}, "
            f"templates={_abbreviate(self.templates)})"
        )

    @property
    def temperature(self) -> float:
        """Temperature ``τ = 1 / logit_scale``."""
        return 1.0 / self.logit_scale

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return self.text_features.shape[0]

    def similarities(self, image_features: torch.Tensor) -> torch.Tensor:
        """Return cosine similarities N×K between the (re)normalised image features (N×D) and the classes."""
        dimension = self.text_features.shape[1]
        if not isinstance(image_features, torch.Tensor):
            raise TypeError(
                f"Image features must be an N×{dimension} torch.Tensor, got {type(image_features).__name__}; "
                "encode images with dsenergy.features.extract_features or ClipBundle.encode_image."
            )
        if image_features.ndim != 2:
            message = (
                f"Image features of shape {tuple(image_features.shape)} are not a 2-D tensor; expected N×{dimension}, "
                "one row per image"
            )
            if image_features.ndim == 1:
                message += ". For a single feature vector, add the batch dimension with features.unsqueeze(0)"
            raise ValueError(message + ".")
        if image_features.shape[1] != dimension:
            raise ValueError(
                f"Image features of shape {tuple(image_features.shape)} do not match text features of dimension "
                f"{dimension}; pass an N×{dimension} tensor from the same model."
            )
        image_features = F.normalize(image_features.to(self.text_features.device, torch.float32), dim=-1)
        return image_features @ self.text_features.T

    def logits(self, image_features: torch.Tensor, logit_scale: float | None = None) -> torch.Tensor:
        """Return logits ``logit_scale · cos`` (N×K); the scale defaults to the model's."""
        scale = self.logit_scale if logit_scale is None else logit_scale
        return scale * self.similarities(image_features)

    def to(self, device: str | torch.device) -> ZeroShotClassifier:
        """Return a copy whose text features are on ``device``."""
        return ZeroShotClassifier(
            self.text_features.to(device), self.logit_scale, list(self.class_names), list(self.templates)
        )


def build_zero_shot_classifier(
    bundle: ClipBundle,
    class_names: Sequence[str],
    templates: Sequence[Template],
    device: str | torch.device | None = None,
    batch_size: int = 256,
) -> ZeroShotClassifier:
    """Encode every class × template prompt once and average the normalised embeddings per class.

    ``w_k = normalize(mean_t normalize(f(template_t(class_k))))``. ``class_names`` is a list or tuple
    of strings. ``templates`` is a list or tuple of format strings with one ``{}`` or ``{c}``
    placeholder for the class name, or of callables taking the class name. A bare string is
    rejected for either, because iterating it would give one class or template per character.
    """
    class_names = _as_name_list(class_names, "class_names", _CLASS_NAMES_EXAMPLE)
    templates = _as_name_list(templates, "templates", _TEMPLATES_EXAMPLE, allow_callables=True)
    if not class_names:
        raise ValueError("class_names is empty; pass at least one class name.")
    if not templates:
        raise ValueError("templates is empty; pass at least one template such as 'a photo of a {}.'.")
    if batch_size < 1:
        raise ValueError(f"Invalid batch_size {batch_size}; it must be at least 1.")
    for template in templates:
        _check_template(template)

    prompts = [_fill_template(template, class_name) for class_name in class_names for template in templates]
    target_device = torch.device(device) if device is not None else bundle.device

    chunks = [bundle.encode_text(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size)]
    prompt_features = torch.cat(chunks).reshape(len(class_names), len(templates), -1)
    text_features = F.normalize(prompt_features.mean(dim=1), dim=-1).to(target_device)

    logger.info(
        "Built zero-shot classifier for %s: %d classes × %d templates, dimension %d",
        bundle.name, len(class_names), len(templates), text_features.shape[1],
    )
    return ZeroShotClassifier(text_features, bundle.logit_scale, class_names, templates)


_CLASS_NAMES_EXAMPLE = "['t-shirt', 'trouser']"
_TEMPLATES_EXAMPLE = "['a photo of a {}.']"


def _as_name_list(values: Any, parameter: str, example: str, allow_callables: bool = False) -> list:
    """Return ``values`` as a list after rejecting a bare string and entries of the wrong type."""
    kind = "strings or callables" if allow_callables else "strings"
    if isinstance(values, (str, bytes)):
        raise TypeError(
            f"{parameter} must be a sequence of {kind} such as {example}, got the string {values!r}; "
            f"wrap a single entry in a list: [{values!r}]."
        )
    try:
        items = list(values)
    except TypeError:
        raise TypeError(
            f"{parameter} must be a sequence of {kind} such as {example}, got {type(values).__name__} {values!r}."
        ) from None

    for index, item in enumerate(items):
        if isinstance(item, str) or (allow_callables and callable(item)):
            continue
        raise TypeError(
            f"{parameter}[{index}] is {type(item).__name__} {item!r}; {parameter} must contain only {kind}, "
            f"such as {example}."
        )
    return items


def _describe_tensor(tensor: torch.Tensor) -> str:
    """Describe a tensor by dtype, shape and device, as in ``float32[10, 128] cpu``."""
    return f"{str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)} {tensor.device}"


def _abbreviate(values: Sequence[Any], max_items: int = 3) -> str:
    """Return the reprs of the first ``max_items`` values and the count of the rest."""
    head = ", ".join(repr(value) for value in values[:max_items])
    if len(values) > max_items:
        head += f", … {len(values) - max_items} more"
    return f"[{head}]"


def _check_template(template: Template) -> None:
    if callable(template):
        return
    if not isinstance(template, str):
        raise TypeError(f"Invalid template {template!r}: expected a format string or a callable.")
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as error:
        raise ValueError(f"Invalid template {template!r}: {error}.") from None
    if not fields:
        raise ValueError(f"Invalid template {template!r}: it has no '{{}}' or '{{c}}' placeholder for the class name.")
    unknown = [field for field in fields if field not in ("", "c")]
    if unknown or fields.count("") > 1:
        raise ValueError(
            f"Invalid template {template!r}: placeholders {fields} are not allowed; use one '{{}}' or any number of '{{c}}' for the class name."
        )


def _fill_template(template: Template, class_name: str) -> str:
    if callable(template):
        return template(class_name)
    return template.format(class_name, c=class_name)


def resolve_device(device: str) -> torch.device:
    """Return the torch device for ``device``; ``"auto"`` picks CUDA, then MPS, then the CPU.

    Under torchrun, ``"auto"`` picks the GPU of the process's ``LOCAL_RANK``.
    """
    if device != "auto":
        resolved = torch.device(device)
        if resolved.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asks for CUDA, but torch sees no CUDA device here; use 'cpu' or 'auto'")
        return resolved
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
