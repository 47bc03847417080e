r"""Out-of-distribution scores on image–text cosine similarities.

Every score takes an ``N × K`` tensor of cosine similarities ``s`` between ``N`` normalised image
features and ``K`` normalised class text features, and returns one value per image.
Higher always means more in-distribution (ID). Temperatures are explicit: CLIP's learned logit
scale is ``1 / τ`` (about 100, so ``τ ≈ 0.01``); MCM and several CLIP OOD papers use ``τ = 1``.

Notation:

.. math::

    E_\tau(s) = -\tau \log \sum_k e^{s_k / \tau}, \qquad p = \mathrm{softmax}(s / \tau).

ΔEnergy (our reading of Zhu et al., "ΔEnergy: Optimizing Energy Change During Vision-Language
Alignment Improves both OOD Detection and OOD Generalization", NeurIPS 2025, arXiv 2510.11296):
the alignment is redone with the ``c`` largest similarities (the set ``T_c``) pushed down to a crop
value ``a``, giving ``s̃``, and the score is the energy change

.. math::

    \Delta E(s) = E_\tau(\tilde s) - E_\tau(s)
        = \tau \log \sum_k e^{s_k/\tau} - \tau \log\Big(\sum_{k \notin T_c} e^{s_k/\tau} + c\, e^{a/\tau}\Big)
        = -\tau \log\Big(1 - \sum_{k \in T_c} p_k \big(1 - e^{(a - s_k)/\tau}\big)\Big).

``ΔE ≥ 0`` whenever every cropped ``s_k ≥ a``. With ``c = 1`` and small ``τ`` the factor
``e^{(a - s_max)/τ}`` vanishes and ``ΔE ≈ -τ log(1 - p_max)``, a monotone function of the maximum
softmax probability, so it ranks like MSP. It differs from MSP/MCM through ``τ``, ``c`` and ``a``.
Because ΔE is computed from two log-sum-exps rather than from ``p``, it keeps its order in float32
where MSP saturates at exactly 1.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Mapping

import torch

__all__ = [
    "free_energy",
    "energy",
    "msp",
    "max_logit",
    "max_cosine",
    "mcm",
    "delta_energy",
    "delta_energy_feature_mask",
    "SCORES",
    "SCORE_DEFAULT_TEMPERATURES",
    "TEMPERATURE_FREE_SCORES",
    "score_temperature",
    "reported_temperature",
    "compute_score",
]

ScoreFn = Callable[[torch.Tensor, float], torch.Tensor]


def _check_similarities(similarities: torch.Tensor, name: str = "similarities") -> torch.Tensor:
    """Validate an N × K similarity tensor and upcast half precision for stable reductions."""
    if not isinstance(similarities, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, K), got {type(similarities).__name__}")
    if similarities.ndim != 2:
        raise ValueError(f"{name} must have shape (N, K), got shape {tuple(similarities.shape)}")
    if similarities.shape[1] == 0:
        raise ValueError(f"{name} has K = 0 classes; a score needs at least one class column")
    if not similarities.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {similarities.dtype}")
    if similarities.dtype in (torch.float16, torch.bfloat16):
        similarities = similarities.float()
    return similarities


def _check_top_c(top_c: int, num_classes: int) -> int:
    """Return ``top_c`` as an ``int`` after checking that it is a whole number in ``[1, K]``.

    A fractional ``c`` would crop ``int(c)`` entries but add ``c · e^{a/τ}`` back, which is neither
    setting, so it is rejected rather than truncated.
    """
    if isinstance(top_c, bool) or not isinstance(top_c, numbers.Integral):
        raise TypeError(
            f"top_c must be an integer number of cropped classes, got {top_c!r} ({type(top_c).__name__})"
        )
    if not 1 <= top_c <= num_classes:
        raise ValueError(f"top_c must be between 1 and the number of classes K = {num_classes}, got {top_c}")
    return int(top_c)


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a positive finite number (CLIP uses about 0.01), got {temperature}")
    return temperature


def free_energy(similarities: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Return the free energy :math:`E_\tau(s) = -\tau \log \sum_k e^{s_k/\tau}` (lower = more ID)."""
    similarities = _check_similarities(similarities)
    temperature = _check_temperature(temperature)
    return -temperature * torch.logsumexp(similarities / temperature, dim=1)


def energy(similarities: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Return the energy score :math:`-E_\tau(s) = \tau \log \sum_k e^{s_k/\tau}` (higher = more ID).

    Liu et al., "Energy-based Out-of-distribution Detection", NeurIPS 2020, applied to ``s / τ``.
    """
    return -free_energy(similarities, temperature)


def msp(similarities: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Return the maximum softmax probability :math:`\max_k \mathrm{softmax}(s/\tau)_k`."""
    similarities = _check_similarities(similarities)
    temperature = _check_temperature(temperature)
    return torch.softmax(similarities / temperature, dim=1).amax(dim=1)


def max_logit(similarities: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Return the maximum logit :math:`\max_k s_k / \tau`."""
    similarities = _check_similarities(similarities)
    temperature = _check_temperature(temperature)
    return similarities.amax(dim=1) / temperature


def max_cosine(similarities: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
    r"""Return the maximum cosine similarity :math:`\max_k s_k`; ``temperature`` is ignored."""
    similarities = _check_similarities(similarities)
    return similarities.amax(dim=1)


def mcm(similarities: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    r"""Return the maximum concept matching score :math:`\max_k \mathrm{softmax}(s/\tau)_k`.

    Ming et al., "Delving into Out-of-Distribution Detection with Vision-Language Representations",
    NeurIPS 2022. MCM is MSP on raw cosines; the paper's default is ``τ = 1``, which is why it has a
    temperature default of its own here.
    """
    return msp(similarities, temperature)


def _cropped_log_partition(
    similarities: torch.Tensor, cropped: torch.Tensor, temperature: float, crop_value: float
) -> torch.Tensor:
    r"""Return :math:`\tau \log(\sum_{k \notin T} e^{s_k/\tau} + |T| e^{a/\tau})` for a boolean mask ``T``."""
    kept = similarities.masked_fill(cropped, float("-inf")) / temperature
    num_cropped = cropped.sum(dim=1, keepdim=True).to(similarities.dtype)
    crop_term = crop_value / temperature + torch.log(num_cropped)
    return temperature * torch.logsumexp(torch.cat([kept, crop_term], dim=1), dim=1)


def delta_energy(
    similarities: torch.Tensor,
    temperature: float,
    top_c: int = 1,
    crop_value: float = 0.0,
) -> torch.Tensor:
    r"""Return ΔEnergy, the energy change when the ``top_c`` largest similarities are cropped to ``crop_value``.

    .. math::

        \Delta E(s) = \tau \log \sum_k e^{s_k/\tau}
            - \tau \log\Big(\sum_{k \notin T_c} e^{s_k/\tau} + c\, e^{a/\tau}\Big)

    Args:
        similarities: ``N × K`` cosine similarities.
        temperature: ``τ > 0``.
        top_c: number ``c`` of largest similarities to crop, ``1 ≤ c ≤ K``.
        crop_value: value ``a`` the cropped similarities are replaced with.
    """
    similarities = _check_similarities(similarities)
    temperature = _check_temperature(temperature)
    top_c = _check_top_c(top_c, similarities.shape[1])
    if not math.isfinite(crop_value):
        raise ValueError(f"crop_value must be finite, got {crop_value}")

    # One pass of exp over the shifted logits serves both partition functions. The cropped entries are
    # zeroed before the sum instead of subtracted after it, so the kept mass keeps full precision even
    # when the top class has almost all of it (where MSP saturates).
    if top_c == 1:
        top_values, top_indices = similarities.max(dim=1, keepdim=True)
    else:
        top_values, top_indices = similarities.topk(top_c, dim=1)
    shift = top_values[:, :1]
    weights = (similarities - shift).div_(temperature).exp_()
    weights.scatter_(1, top_indices, 0.0)
    kept_mass = weights.sum(dim=1)
    top_mass = ((top_values - shift) / temperature).exp().sum(dim=1)

    log_full = torch.log(top_mass + kept_mass)
    crop_log_mass = math.log(top_c) + (crop_value - shift.squeeze(1)) / temperature
    log_cropped = torch.logaddexp(torch.log(kept_mass), crop_log_mass)
    return temperature * (log_full - log_cropped)


def delta_energy_feature_mask(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    temperature: float,
    mask_fraction: float = 0.1,
    renormalize: bool = True,
) -> torch.Tensor:
    r"""Return the feature-mask ΔEnergy: the energy change when the image feature loses its top dimensions.

    Our reading of the paper's "re-alignment", which its abstract names without defining. For the predicted class
    ``ŷ = argmax_k z·w_k`` the dimensions with the largest contributions ``z_d w_{ŷ,d}`` (a fraction
    ``ρ = mask_fraction`` of the ``D`` dimensions, rounded to the nearest count, at least one) are set to
    zero, giving ``z'`` (renormalised to unit length when ``renormalize``), and

    .. math::

        \Delta E = E_\tau(z' W^\top) - E_\tau(z W^\top).

    Args:
        image_features: ``N × D`` image features (normalised inside).
        text_features: ``K × D`` class text features (normalised inside).
        temperature: ``τ > 0``.
        mask_fraction: ``ρ`` in ``(0, 1)``.
        renormalize: rescale the masked feature to unit norm before recomputing similarities.
    """
    temperature = _check_temperature(temperature)
    if image_features.ndim != 2 or text_features.ndim != 2:
        raise ValueError(
            "image_features must be (N, D) and text_features (K, D), got shapes "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"feature dimensions differ: image_features has D = {image_features.shape[1]}, "
            f"text_features has D = {text_features.shape[1]}"
        )
    if not 0.0 < mask_fraction < 1.0:
        raise ValueError(f"mask_fraction must be in (0, 1), got {mask_fraction}")

    compute_dtype = torch.promote_types(image_features.dtype, torch.float32)
    image = torch.nn.functional.normalize(image_features.to(compute_dtype), dim=1)
    text = torch.nn.functional.normalize(text_features.to(compute_dtype), dim=1)
    similarities = image @ text.T

    predicted = similarities.argmax(dim=1)
    contributions = image * text[predicted]
    num_masked = max(1, round(mask_fraction * image.shape[1]))
    masked_dims = contributions.topk(num_masked, dim=1).indices
    masked = image.scatter(1, masked_dims, 0.0)
    if renormalize:
        masked = torch.nn.functional.normalize(masked, dim=1)

    return free_energy(masked @ text.T, temperature) - free_energy(similarities, temperature)


SCORES: Mapping[str, ScoreFn] = {
    "msp": msp,
    "energy": energy,
    "max_logit": max_logit,
    "max_cosine": max_cosine,
    "mcm": mcm,
    "delta_energy": delta_energy,
}

# Default temperatures of scores that do not use the model's own τ (a caller may override them).
SCORE_DEFAULT_TEMPERATURES: Mapping[str, float] = {"mcm": 1.0}


# Scores that ignore the temperature; tables report no τ for them.
TEMPERATURE_FREE_SCORES: frozenset[str] = frozenset({"max_cosine"})


def score_temperature(name: str, model_temperature: float, override: float | None = None) -> float:
    """Return the τ that score ``name`` uses: ``override``, else its own default, else the model's τ."""
    if name not in SCORES:
        raise KeyError(f"unknown score {name!r}; choose one of {sorted(SCORES)}")
    if override is not None:
        return _check_temperature(override)
    return float(SCORE_DEFAULT_TEMPERATURES.get(name, model_temperature))


def reported_temperature(name: str, model_temperature: float, override: float | None = None) -> float | None:
    """Return the τ a result table names for score ``name``: ``None`` for scores that use no τ."""
    if name in TEMPERATURE_FREE_SCORES:
        return None
    return score_temperature(name, model_temperature, override)


def compute_score(
    name: str,
    similarities: torch.Tensor,
    model_temperature: float,
    temperature: float | None = None,
    **kwargs: float,
) -> torch.Tensor:
    """Compute score ``name`` with the temperature chosen by :func:`score_temperature`.

    Extra keyword arguments (``top_c``, ``crop_value``) go to ``delta_energy``.
    """
    tau = score_temperature(name, model_temperature, temperature)
    if kwargs and name != "delta_energy":
        raise TypeError(f"score {name!r} takes no extra arguments, got {sorted(kwargs)}")
    return SCORES[name](similarities, tau, **kwargs)
