r"""The EBM loss: lower-bound maximisation of ΔEnergy on the ground-truth class during prompt tuning.

Our reading of Zhu et al., arXiv 2510.11296, whose abstract names the loss without defining it.
Training crops the ground-truth class ``y`` and, for ``c > 1``, the ``c − 1`` largest other
classes. Call that set ``T``. The exact energy change is

.. math::

    \Delta E_y = \tau \log \sum_k e^{s_k/\tau} - \tau \log\Big(\sum_{k \notin T} e^{s_k/\tau} + c\, e^{a/\tau}\Big),

and since :math:`\tau \log \sum_k e^{s_k/\tau} \ge \max_k s_k \ge s_y`,

.. math::

    \Delta E_y \ge LB_y = s_y - \tau \log\Big(\sum_{k \notin T} e^{s_k/\tau} + c\, e^{a/\tau}\Big),

with equality in the limit where class ``y`` dominates the softmax. The objective is

.. math::

    L = \mathrm{CE}(s/\tau, y) + \lambda \, L_{EBM}, \qquad L_{EBM} = -\operatorname{mean}_i LB_{y_i}.

``LB_y`` is in cosine-similarity units: its gradient with respect to ``s_y`` is 1, while the
cross-entropy's is up to ``1/τ``. A weight ``λ`` of order ``1/τ`` (about 100 for CLIP) therefore
puts the two terms on an equal footing.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from dsenergy.scores import _check_similarities, _check_temperature, _check_top_c, _cropped_log_partition

__all__ = ["LossParts", "ebm_lower_bound", "exact_delta_energy_target", "ebm_loss", "combined_loss"]

Bound = Literal["lower", "exact"]


class LossParts(NamedTuple):
    """The combined objective and its two parts (``total = ce + ebm_weight * ebm``)."""

    total: torch.Tensor
    ce: torch.Tensor
    ebm: torch.Tensor


def _check_targets(similarities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if targets.ndim != 1 or targets.shape[0] != similarities.shape[0]:
        raise ValueError(
            f"targets must have shape (N,) = ({similarities.shape[0]},) to match similarities, "
            f"got {tuple(targets.shape)}"
        )
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(
            f"targets must be an integer tensor of class indices, got dtype {targets.dtype}; "
            "convert exact class indices with targets.long()"
        )
    targets = targets.long()
    num_classes = similarities.shape[1]
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        raise ValueError(
            f"targets must be class indices in [0, {num_classes - 1}], "
            f"got values in [{int(targets.min())}, {int(targets.max())}]"
        )
    return targets


def _training_crop_mask(similarities: torch.Tensor, targets: torch.Tensor, top_c: int) -> torch.Tensor:
    """Mark the ground-truth class and the ``top_c − 1`` largest other classes of each row."""
    top_c = _check_top_c(top_c, similarities.shape[1])
    cropped = torch.zeros_like(similarities, dtype=torch.bool)
    cropped.scatter_(1, targets[:, None], True)
    if top_c > 1:
        others = similarities.detach().masked_fill(cropped, float("-inf"))
        cropped.scatter_(1, others.topk(top_c - 1, dim=1).indices, True)
    return cropped


def _cropped_training_partition(
    similarities: torch.Tensor, targets: torch.Tensor, temperature: float, top_c: int, crop_value: float
) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    r"""Validate the inputs and return them with :math:`\tau \log(\sum_{k \notin T} e^{s_k/\tau} + c e^{a/\tau})`."""
    similarities = _check_similarities(similarities)
    temperature = _check_temperature(temperature)
    targets = _check_targets(similarities, targets)
    cropped = _training_crop_mask(similarities, targets, top_c)
    return similarities, targets, temperature, _cropped_log_partition(similarities, cropped, temperature, crop_value)


def ebm_lower_bound(
    similarities: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    top_c: int = 1,
    crop_value: float = 0.0,
) -> torch.Tensor:
    r"""Return the per-sample lower bound :math:`LB_y = s_y - \tau \log(\sum_{k \notin T} e^{s_k/\tau} + c e^{a/\tau})`."""
    similarities, targets, temperature, cropped_partition = _cropped_training_partition(
        similarities, targets, temperature, top_c, crop_value
    )
    target_similarity = similarities.gather(1, targets[:, None]).squeeze(1)
    return target_similarity - cropped_partition


def exact_delta_energy_target(
    similarities: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    top_c: int = 1,
    crop_value: float = 0.0,
) -> torch.Tensor:
    r"""Return the per-sample exact :math:`\Delta E_y` with the ground-truth class cropped."""
    similarities, targets, temperature, cropped_partition = _cropped_training_partition(
        similarities, targets, temperature, top_c, crop_value
    )
    full = temperature * torch.logsumexp(similarities / temperature, dim=1)
    return full - cropped_partition


def ebm_loss(
    similarities: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    top_c: int = 1,
    crop_value: float = 0.0,
    bound: Bound = "lower",
) -> torch.Tensor:
    """Return :math:`L_{EBM} = -\\operatorname{mean} LB_y` (``bound="lower"``) or ``-mean ΔE_y`` (``"exact"``)."""
    if bound == "lower":
        target = ebm_lower_bound(similarities, targets, temperature, top_c, crop_value)
    elif bound == "exact":
        target = exact_delta_energy_target(similarities, targets, temperature, top_c, crop_value)
    else:
        raise ValueError(f"bound must be 'lower' or 'exact', got {bound!r}")
    return -target.mean()


def combined_loss(
    similarities: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    ebm_weight: float,
    top_c: int = 1,
    crop_value: float = 0.0,
    bound: Bound = "lower",
) -> LossParts:
    r"""Return :math:`\mathrm{CE}(s/\tau, y) + \lambda L_{EBM}` with its parts.

    With ``ebm_weight = 0`` the EBM part is still computed and reported, but it does not enter
    ``total``, so the objective is exactly CoOp's cross-entropy.
    """
    similarities = _check_similarities(similarities)
    temperature = _check_temperature(temperature)
    targets = _check_targets(similarities, targets)
    if ebm_weight < 0:
        raise ValueError(f"ebm_weight (λ) must be non-negative, got {ebm_weight}")

    ce = F.cross_entropy(similarities / temperature, targets)
    ebm = ebm_loss(similarities, targets, temperature, top_c, crop_value, bound)
    total = ce + ebm_weight * ebm if ebm_weight else ce
    return LossParts(total=total, ce=ce, ebm=ebm)
