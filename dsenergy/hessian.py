"""Hessian spectra and cross-domain Hessian consistency from Hessian-vector products.

The loss is a function of one parameter tensor θ (CoOp context vectors, or the K×D text-feature
matrix of a zero-shot classifier) and of a dataset given as batches. ``loss_fn(theta, batch)``
returns the mean loss over the batch, and the dataset loss is the sample-weighted mean

    L(θ) = Σ_b n_b L_b(θ) / Σ_b n_b,

so batches of unequal size give the same value as a single batch. Its Hessian H = ∇²L(θ) is never
formed. Every estimate uses Hessian-vector products (HVPs) Hv = Σ_b n_b ∇²L_b(θ) v / N, computed
with ``torch.func`` as forward-over-reverse differentiation, ``jvp(grad(L_b))``, at about the cost
of two gradient evaluations. ``dense_hessian`` forms H for small d as a reference.

Cross-domain consistency (*reading*, ΔEnergy paper by Zhu et al., arXiv 2510.11296): for domains e, e′
with Hessians H_e, H_e′ of the mean cross-entropy, report ‖H_e − H_e′‖_F, the spectral norm
‖H_e − H_e′‖_2, both divided by ‖H_e‖_F + ‖H_e′‖_F, the Hessian cosine
tr(H_e H_e′) / (‖H_e‖_F ‖H_e′‖_F) and the gradient gap ‖∇L_e − ∇L_e′‖.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

__all__ = [
    "LossFn",
    "HvpMode",
    "HessianOperator",
    "EigenResult",
    "ProbeEstimate",
    "classifier_ce_loss",
    "make_classifier_loss",
    "module_text_features",
    "trainable_parameter",
    "feature_batches",
    "infer_batch_size",
    "gradient",
    "hvp",
    "dense_hessian",
    "operator_eigenvalues",
    "top_eigenvalues",
    "hutchinson_trace",
    "frobenius_norm",
    "hessian_consistency",
    "consistency_gain",
    "consistency_verdict",
    "seed_consistency_gain",
    "math_attention",
]

logger = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Any], Tensor]
"""``loss_fn(theta, batch) -> scalar``: the mean loss over one batch as a function of θ."""

HvpMode = Literal["forward-over-reverse", "reverse-over-reverse"]
Which = Literal["LA", "LM"]


# ----------------------------------------------------------------------------------------------
# Ready losses
# ----------------------------------------------------------------------------------------------


def classifier_ce_loss(
    theta: Tensor,
    batch: Sequence[Tensor],
    *,
    temperature: float,
    text_features_fn: Callable[[Tensor], Tensor] | None = None,
    renormalize: bool = True,
) -> Tensor:
    """Compute the mean cross-entropy of a cosine classifier whose text features depend on θ.

    With W = ``text_features_fn(θ)`` (K×D; W = θ when the function is None), rows optionally
    renormalised to unit length, and a batch ``(image_features N×D, labels N)``:

        L(θ) = mean_i CE(z_i Wᵀ / τ, y_i).

    Image features are used as given, so pass normalised ones for cosine similarities.
    """
    image_features, labels = batch
    text_features = theta if text_features_fn is None else text_features_fn(theta)
    if text_features.ndim != 2 or text_features.shape[-1] != image_features.shape[-1]:
        raise ValueError(
            f"text features must be K×D with D = {image_features.shape[-1]} (the image-feature width), "
            f"got shape {tuple(text_features.shape)}; check theta or text_features_fn"
        )
    if renormalize:
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    logits = image_features @ text_features.T / temperature
    return F.cross_entropy(logits, labels)


def make_classifier_loss(
    temperature: float,
    text_features_fn: Callable[[Tensor], Tensor] | None = None,
    *,
    renormalize: bool = True,
) -> LossFn:
    """Build a ``loss_fn(theta, batch)`` for :func:`classifier_ce_loss` with fixed τ and text map.

    Zero-shot: θ is the K×D text-feature matrix and ``text_features_fn`` is None. CoOp: θ is the
    context-vector tensor and ``text_features_fn = module_text_features(prompt_learner)``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive (CLIP uses 0.01), got {temperature}")

    def loss_fn(theta: Tensor, batch: Sequence[Tensor]) -> Tensor:
        return classifier_ce_loss(
            theta,
            batch,
            temperature=temperature,
            text_features_fn=text_features_fn,
            renormalize=renormalize,
        )

    return loss_fn


def math_attention() -> contextlib.AbstractContextManager:
    """Return a context that runs ``scaled_dot_product_attention`` on its math backend.

    HVPs through a text tower need second derivatives of attention. On CPU, PyTorch's fused kernel
    ``_scaled_dot_product_flash_attention_for_cpu`` has neither forward-mode derivatives nor a double
    backward (checked with torch 2.14), so both HVP modes fail inside it. The math backend is built
    from ordinary differentiable operations and supports both.
    """
    return sdpa_kernel([SDPBackend.MATH])


def trainable_parameter(module: nn.Module, name: str | None = None) -> tuple[str, Tensor]:
    """Return ``(name, detached copy)`` of the module's parameter θ.

    With ``name`` None the module must have exactly one parameter with ``requires_grad``
    (a CoOp prompt learner trains only its context vectors).
    """
    if name is not None:
        params = dict(module.named_parameters())
        if name not in params:
            raise KeyError(f"module has no parameter {name!r}; its parameters are {sorted(params)}")
        return name, params[name].detach().clone()

    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if len(trainable) != 1:
        names = [n for n, _ in trainable]
        raise ValueError(
            f"expected exactly one trainable parameter, found {len(trainable)}: {names}; "
            "pass name= to choose θ or freeze the others with requires_grad_(False)"
        )
    param_name, param = trainable[0]
    return param_name, param.detach().clone()


def module_text_features(module: nn.Module, name: str | None = None) -> Callable[[Tensor], Tensor]:
    """Return θ ↦ ``module()`` with parameter ``name`` replaced by θ (``torch.func.functional_call``).

    The module's ``forward()`` must take no arguments and return the K×D text features. All
    other parameters and buffers stay as they are in the module and are treated as constants.
    """
    param_name, _ = trainable_parameter(module, name)

    def text_features(theta: Tensor) -> Tensor:
        return functional_call(module, {param_name: theta}, ())

    return text_features


def feature_batches(
    image_features: Tensor, labels: Tensor, batch_size: int
) -> list[tuple[Tensor, Tensor]]:
    """Split cached features and labels into ``(features, labels)`` batches of at most ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if image_features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"image_features has {image_features.shape[0]} rows but labels has {labels.shape[0]}"
        )
    return [
        (image_features[start : start + batch_size], labels[start : start + batch_size])
        for start in range(0, image_features.shape[0], batch_size)
    ]


def infer_batch_size(batch: Any) -> int:
    """Return the number of samples in a batch: the leading size of its first tensor."""
    if isinstance(batch, Tensor):
        if batch.ndim == 0:
            raise ValueError("a batch tensor must have a leading sample dimension, got a scalar")
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        items: Iterable[Any] = batch.values()
    elif isinstance(batch, (tuple, list)):
        items = batch
    else:
        items = ()
    for item in items:
        if isinstance(item, Tensor) and item.ndim > 0:
            return int(item.shape[0])
    raise TypeError(
        f"cannot infer the number of samples of a batch of type {type(batch).__name__}; "
        "pass batch_size_fn=lambda batch: <count>"
    )


def _move_batch(batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move tensors to θ's device and floating tensors to θ's dtype, keeping the container."""
    if isinstance(batch, Tensor):
        if batch.is_floating_point():
            return batch.to(device=device, dtype=dtype)
        return batch.to(device=device)
    if isinstance(batch, Mapping):
        return {key: _move_batch(value, device, dtype) for key, value in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_move_batch(item, device, dtype) for item in batch)
    if isinstance(batch, list):
        return [_move_batch(item, device, dtype) for item in batch]
    return batch


# ----------------------------------------------------------------------------------------------
# The Hessian as a linear operator
# ----------------------------------------------------------------------------------------------


class HessianOperator:
    """The Hessian of a sample-weighted dataset loss at θ, applied through HVPs.

    ``matvec`` takes and returns flat vectors of length d = θ.numel() in θ's dtype and device.
    Each call makes one pass over ``batches``, which must therefore be re-iterable
    (a list, a tuple or a DataLoader, not a generator).
    """

    def __init__(
        self,
        loss_fn: LossFn,
        theta: Tensor,
        batches: Iterable[Any],
        *,
        batch_size_fn: Callable[[Any], int] = infer_batch_size,
        mode: HvpMode = "forward-over-reverse",
    ) -> None:
        if not isinstance(theta, Tensor) or not theta.is_floating_point():
            raise TypeError(f"theta must be a floating-point tensor, got {type(theta).__name__}")
        if iter(batches) is batches:
            raise TypeError(
                "batches is a one-shot iterator (e.g. a generator); pass a list, tuple or DataLoader "
                "because every Hessian-vector product needs a fresh pass over the data"
            )
        if mode not in ("forward-over-reverse", "reverse-over-reverse"):
            raise ValueError(
                f"mode must be 'forward-over-reverse' or 'reverse-over-reverse', got {mode!r}"
            )
        self.loss_fn = loss_fn
        self.theta = theta.detach()
        self.batches = batches
        self.batch_size_fn = batch_size_fn
        self.mode = mode
        self.num_matvecs = 0
        self.num_samples: int | None = None

    @property
    def dim(self) -> int:
        """Number of entries d of θ."""
        return self.theta.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.theta.dtype

    @property
    def device(self) -> torch.device:
        return self.theta.device

    def _batch_loss(self, batch: Any) -> Callable[[Tensor], Tensor]:
        shape = self.theta.shape

        def flat_loss(flat_theta: Tensor) -> Tensor:
            value = self.loss_fn(flat_theta.view(shape), batch)
            if value.ndim != 0:
                raise ValueError(
                    f"loss_fn must return a scalar mean loss, got shape {tuple(value.shape)}; "
                    "reduce it with .mean()"
                )
            return value

        return flat_loss

    def _accumulate(self, per_batch: Callable[[Any], tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
        """Return Σ_b n_b out_b / Σ_b n_b for each output of ``per_batch`` over all batches."""
        totals: list[Tensor] | None = None
        num_samples = 0
        for raw_batch in self.batches:
            batch = _move_batch(raw_batch, self.device, self.dtype)
            size = int(self.batch_size_fn(batch))
            if size <= 0:
                continue
            # Second derivatives through attention exist only on the math backend (see math_attention).
            with math_attention():
                outputs = per_batch(batch)
            if totals is None:
                totals = [size * out.detach() for out in outputs]
            else:
                totals = [total + size * out.detach() for total, out in zip(totals, outputs)]
            num_samples += size
        if totals is None:
            raise ValueError("batches contains no samples; pass at least one non-empty batch")
        self.num_samples = num_samples
        return tuple(total / num_samples for total in totals)

    def _as_flat(self, vector: Tensor) -> Tensor:
        if vector.numel() != self.dim or vector.shape not in (self.theta.shape, (self.dim,)):
            raise ValueError(
                f"vector must have θ's shape {tuple(self.theta.shape)} or ({self.dim},), "
                f"got {tuple(vector.shape)}"
            )
        return vector.detach().reshape(-1).to(device=self.device, dtype=self.dtype)

    def loss_and_gradient(self) -> tuple[float, Tensor]:
        """Return the dataset loss L(θ) and its flat gradient ∇L(θ)."""
        flat_theta = self.theta.reshape(-1)

        def per_batch(batch: Any) -> tuple[Tensor, Tensor]:
            batch_grad, batch_loss = grad_and_value(self._batch_loss(batch))(flat_theta)
            return batch_loss, batch_grad

        loss, flat_grad = self._accumulate(per_batch)
        return float(loss), flat_grad

    def matvec(self, vector: Tensor) -> Tensor:
        """Return the flat Hessian-vector product Hv."""
        flat_theta = self.theta.reshape(-1)
        flat_vector = self._as_flat(vector)

        def per_batch(batch: Any) -> tuple[Tensor]:
            flat_loss = self._batch_loss(batch)
            if self.mode == "forward-over-reverse":
                _, product = jvp(grad(flat_loss), (flat_theta,), (flat_vector,))
            else:
                _, pullback = vjp(grad(flat_loss), flat_theta)
                (product,) = pullback(flat_vector)
            return (product,)

        (product,) = self._accumulate(per_batch)
        self.num_matvecs += 1
        return product

    def matmat(self, vectors: Tensor) -> Tensor:
        """Return the products Hv for the rows of ``vectors`` (p×d), vectorised with ``torch.func.vmap``.

        One pass over the data serves all p vectors, which removes most per-call overhead but holds
        p copies of each batch's intermediate values in memory.
        """
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must be p×{self.dim}, got shape {tuple(vectors.shape)}")
        flat_theta = self.theta.reshape(-1)
        vectors = vectors.detach().to(device=self.device, dtype=self.dtype)

        def per_batch(batch: Any) -> tuple[Tensor]:
            flat_loss = self._batch_loss(batch)
            if self.mode == "forward-over-reverse":

                def single(vector: Tensor) -> Tensor:
                    return jvp(grad(flat_loss), (flat_theta,), (vector,))[1]

            else:
                _, pullback = vjp(grad(flat_loss), flat_theta)

                def single(vector: Tensor) -> Tensor:
                    return pullback(vector)[0]

            return (vmap(single)(vectors),)

        (products,) = self._accumulate(per_batch)
        self.num_matvecs += vectors.shape[0]
        return products


class _DifferenceOperator:
    """v ↦ H_a v − H_b v for two Hessian operators over the same θ."""

    def __init__(self, first: HessianOperator, second: HessianOperator) -> None:
        if first.dim != second.dim:
            raise ValueError(f"operators differ in size: {first.dim} vs {second.dim}")
        self.first = first
        self.second = second
        self.dim = first.dim
        self.dtype = first.dtype
        self.device = first.device

    def matvec(self, vector: Tensor) -> Tensor:
        return self.first.matvec(vector) - self.second.matvec(vector)


def gradient(
    loss_fn: LossFn,
    theta: Tensor,
    batches: Iterable[Any],
    *,
    batch_size_fn: Callable[[Any], int] = infer_batch_size,
) -> Tensor:
    """Return ∇L(θ) of the sample-weighted dataset loss, shaped like θ."""
    operator = HessianOperator(loss_fn, theta, batches, batch_size_fn=batch_size_fn)
    _, flat_grad = operator.loss_and_gradient()
    return flat_grad.view(theta.shape)


def hvp(
    loss_fn: LossFn,
    theta: Tensor,
    batches: Iterable[Any],
    vector: Tensor,
    *,
    batch_size_fn: Callable[[Any], int] = infer_batch_size,
    mode: HvpMode = "forward-over-reverse",
) -> Tensor:
    """Return the Hessian-vector product ∇²L(θ) v, shaped like θ.

    ``mode="reverse-over-reverse"`` uses ``vjp(grad)`` for models whose operations lack
    forward-mode derivatives. Both give the same product because H is symmetric.
    """
    operator = HessianOperator(loss_fn, theta, batches, batch_size_fn=batch_size_fn, mode=mode)
    return operator.matvec(vector).view(theta.shape)


def dense_hessian(
    loss_fn: LossFn,
    theta: Tensor,
    batches: Iterable[Any],
    *,
    batch_size_fn: Callable[[Any], int] = infer_batch_size,
    max_dim: int = 4096,
) -> Tensor:
    """Return the full d×d Hessian of the dataset loss over flattened θ (small-d reference).

    Uses ``torch.func.hessian`` (``jacfwd(jacrev)``) per batch, so memory grows as d² times the
    per-sample activations. ``max_dim`` guards against forming it by accident.
    """
    operator = HessianOperator(loss_fn, theta, batches, batch_size_fn=batch_size_fn)
    if operator.dim > max_dim:
        raise ValueError(
            f"θ has {operator.dim} entries, above max_dim={max_dim}; a dense Hessian needs "
            f"{operator.dim}² entries, so use the HVP-based estimators or raise max_dim"
        )
    flat_theta = operator.theta.reshape(-1)

    def per_batch(batch: Any) -> tuple[Tensor]:
        return (torch.func.hessian(operator._batch_loss(batch))(flat_theta),)

    (matrix,) = operator._accumulate(per_batch)
    return matrix


# ----------------------------------------------------------------------------------------------
# Eigenvalues
# ----------------------------------------------------------------------------------------------


@dataclass
class EigenResult:
    """Extreme eigenpairs of a symmetric operator.

    ``eigenvalues`` (k, float64, CPU) are ordered by ``which``: largest algebraic value ("LA") or
    largest magnitude ("LM") first. ``eigenvectors`` (k×d) are unit vectors in θ's dtype and device.
    ``residuals`` are ‖Au − λu‖ for each pair.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    converged: bool
    num_matvecs: int
    method: str
    which: str


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    return generator


def _random_unit(dim: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Tensor:
    # Drawn on the CPU so that a seed gives the same vectors on every device.
    vector = torch.randn(dim, generator=generator, dtype=torch.float64)
    return (vector / vector.norm()).to(device=device, dtype=dtype)


def _rademacher(dim: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Tensor:
    signs = torch.randint(0, 2, (dim,), generator=generator, dtype=torch.int64)
    return (2 * signs - 1).to(device=device, dtype=dtype)


def _select(values: Tensor, k: int, which: Which) -> Tensor:
    key = values if which == "LA" else values.abs()
    return torch.argsort(key, descending=True)[:k]


def _lanczos(
    operator: Any,
    k: int,
    which: Which,
    iters: int,
    tol: float,
    generator: torch.Generator,
    progress: bool | None,
) -> EigenResult:
    """Lanczos with full reorthogonalisation (classical Gram–Schmidt applied twice per step).

    After j steps, Q_j (orthonormal) and the tridiagonal T_j = Q_jᵀ A Q_j give Ritz pairs
    (θ_i, Q_j s_i). The residual of a Ritz pair is exactly |β_j s_{j,i}|, and the loop stops once
    it is at most ``tol``·max(|θ_i|, ε) for the k wanted pairs. On an invariant subspace (β ≈ 0)
    it restarts with a random vector orthogonal to Q, so T stays block tridiagonal.
    """
    dim, dtype, device = operator.dim, operator.dtype, operator.device
    max_steps = min(iters, dim)
    basis = torch.zeros(max_steps, dim, dtype=dtype, device=device)
    alphas: list[float] = []
    betas: list[float] = []
    basis[0] = _random_unit(dim, generator, dtype, device)
    converged = False
    values = vectors_t = chosen = residuals = None
    scale = 0.0

    bar = tqdm(total=max_steps, desc="lanczos", leave=False, disable=None if progress is None else not progress)
    for step in range(max_steps):
        current = basis[step]
        product = operator.matvec(current)
        alpha = float(torch.dot(product, current))
        product = product - alpha * current
        if step > 0:
            product = product - betas[-1] * basis[step - 1]
        span = basis[: step + 1]
        for _ in range(2):
            product = product - span.T @ (span @ product)
        beta = float(product.norm())
        alphas.append(alpha)
        bar.update(1)

        tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
        values, vectors_t = torch.linalg.eigh(tridiagonal)
        scale = max(scale, float(values.abs().max()))
        chosen = _select(values, k, which)
        residuals = beta * vectors_t[-1, chosen].abs()
        threshold = tol * torch.clamp(values[chosen].abs(), min=1e-12 * max(scale, 1e-300))
        if step + 1 >= k and bool((residuals <= threshold).all()):
            converged = True
            break
        if step + 1 == max_steps:
            break

        if beta <= 1e-10 * max(scale, 1e-300):
            # Invariant subspace found: continue in its orthogonal complement.
            restart = _random_unit(dim, generator, dtype, device)
            for _ in range(2):
                restart = restart - span.T @ (span @ restart)
            basis[step + 1] = restart / restart.norm()
            betas.append(0.0)
        else:
            basis[step + 1] = product / beta
            betas.append(beta)
    bar.close()

    steps = len(alphas)
    if steps < k:
        raise ValueError(f"Lanczos ran {steps} steps but k={k} eigenvalues need at least k; raise iters")
    ritz_coefficients = vectors_t[:, chosen].to(device=device, dtype=dtype)
    eigenvectors = (basis[:steps].T @ ritz_coefficients).T
    if not converged:
        logger.warning(
            "Lanczos did not reach tol=%g in %d steps (max residual %.3g); raise iters for tighter eigenvalues",
            tol, steps, float(residuals.max()),
        )
    return EigenResult(
        eigenvalues=values[chosen].clone(),
        eigenvectors=eigenvectors,
        residuals=residuals.clone(),
        converged=converged,
        num_matvecs=steps,
        method="lanczos",
        which=which,
    )


def _power(
    operator: Any,
    k: int,
    which: Which,
    iters: int,
    tol: float,
    generator: torch.Generator,
    progress: bool | None,
) -> EigenResult:
    """Power iteration with deflation by projection onto the complement of the found eigenvectors.

    Power iteration converges to the largest-magnitude eigenvalue at rate |λ_2/λ_1| per step. For
    "LA" it first estimates ρ = |λ_max| and iterates on A + ρI, whose eigenvalues λ + ρ ≥ 0 keep
    the algebraic order. Each pair stops once ‖Au − λu‖ ≤ ``tol``·|λ|.
    """
    dim, dtype, device = operator.dim, operator.dtype, operator.device
    num_matvecs = 0
    shift = 0.0
    if which == "LA":
        spectral = _power(operator, 1, "LM", iters, tol, generator, progress)
        num_matvecs += spectral.num_matvecs
        shift = abs(float(spectral.eigenvalues[0]))

    found: list[Tensor] = []
    values: list[float] = []
    residuals: list[float] = []
    all_converged = True
    bar = tqdm(total=k * iters, desc="power iteration", leave=False, disable=None if progress is None else not progress)
    for _ in range(k):
        basis = torch.stack(found) if found else None

        def project(vector: Tensor) -> Tensor:
            if basis is None:
                return vector
            return vector - basis.T @ (basis @ vector)

        vector = project(_random_unit(dim, generator, dtype, device))
        vector = vector / vector.norm()
        value, residual, converged = 0.0, math.inf, False
        for _ in range(iters):
            product = project(operator.matvec(vector) + shift * vector)
            num_matvecs += 1
            bar.update(1)
            value = float(torch.dot(vector, product))
            residual = float((product - value * vector).norm())
            norm = float(product.norm())
            if norm == 0.0:
                converged = True
                break
            if residual <= tol * max(abs(value), 1e-300):
                converged = True
                break
            vector = project(product / norm)
            vector = vector / vector.norm()
        all_converged &= converged
        found.append(vector)
        values.append(value - shift)
        residuals.append(residual)
    bar.close()

    if not all_converged:
        logger.warning("power iteration did not reach tol=%g in %d iterations; raise iters", tol, iters)
    eigenvalues = torch.tensor(values, dtype=torch.float64)
    order = _select(eigenvalues, k, which)
    return EigenResult(
        eigenvalues=eigenvalues[order],
        eigenvectors=torch.stack(found)[order.to(device)],
        residuals=torch.tensor(residuals, dtype=torch.float64)[order],
        converged=all_converged,
        num_matvecs=num_matvecs,
        method="power",
        which=which,
    )


def operator_eigenvalues(
    operator: Any,
    k: int = 1,
    *,
    method: Literal["lanczos", "power"] = "lanczos",
    which: Which = "LA",
    iters: int | None = None,
    tol: float = 1e-5,
    seed: int = 0,
    progress: bool | None = None,
) -> EigenResult:
    """Return the k extreme eigenpairs of a symmetric operator with ``matvec``, ``dim``, ``dtype``, ``device``.

    ``iters`` is the maximum Krylov dimension for Lanczos (default 100) or the maximum number of
    iterations per eigenpair for power iteration (default 200).
    """
    if method not in ("lanczos", "power"):
        raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
    if which not in ("LA", "LM"):
        raise ValueError(f"which must be 'LA' (largest algebraic) or 'LM' (largest magnitude), got {which!r}")
    if not 1 <= k <= operator.dim:
        raise ValueError(f"k must be between 1 and d={operator.dim}, got {k}")
    generator = _generator(seed)
    if method == "lanczos":
        return _lanczos(operator, k, which, iters or 100, tol, generator, progress)
    return _power(operator, k, which, iters or 200, tol, generator, progress)


def top_eigenvalues(
    loss_fn: LossFn,
    theta: Tensor,
    batches: Iterable[Any],
    k: int = 1,
    *,
    method: Literal["lanczos", "power"] = "lanczos",
    which: Which = "LA",
    iters: int | None = None,
    tol: float = 1e-5,
    seed: int = 0,
    batch_size_fn: Callable[[Any], int] = infer_batch_size,
    mode: HvpMode = "forward-over-reverse",
    progress: bool | None = None,
) -> EigenResult:
    """Return the top-k Hessian eigenpairs of the dataset loss from HVPs (Lanczos or power iteration)."""
    operator = HessianOperator(loss_fn, theta, batches, batch_size_fn=batch_size_fn, mode=mode)
    started = time.perf_counter()
    result = operator_eigenvalues(
        operator, k, method=method, which=which, iters=iters, tol=tol, seed=seed, progress=progress
    )
    logger.info(
        "top-%d Hessian eigenvalues (%s, d=%d): %s in %d HVPs, %.2f s",
        k, method, operator.dim, [round(float(v), 6) for v in result.eigenvalues],
        result.num_matvecs, time.perf_counter() - started,
    )
    return result


# ----------------------------------------------------------------------------------------------
# Stochastic trace estimators
# ----------------------------------------------------------------------------------------------


@dataclass
class ProbeEstimate:
    """A Monte-Carlo estimate over random probes with its standard error.

    ``samples`` contains the per-probe values whose mean is ``estimate`` when the estimate is linear
    (trace, squared norms). ``std_error`` is the sample standard deviation divided by √m for those, and
    the jackknife standard error for the nonlinear quantities (norms, ratios).
    """

    estimate: float
    std_error: float
    num_probes: int
    samples: Tensor = field(repr=False)


def _mean_estimate(samples: Tensor) -> ProbeEstimate:
    count = samples.numel()
    std_error = float(samples.std(correction=1) / math.sqrt(count)) if count > 1 else math.nan
    return ProbeEstimate(float(samples.mean()), std_error, count, samples)


def _jackknife(function: Callable[[Tensor], Tensor], samples: Tensor) -> tuple[float, float]:
    """Return f(mean) and its jackknife standard error over the rows of ``samples`` (m×p).

    With leave-one-out means x̄_(i) and f_(i) = f(x̄_(i)), SE² = (m−1)/m Σ_i (f_(i) − mean f_(·))².
    ``function`` maps a (…, p) tensor of means to (…) values.
    """
    estimate = float(function(samples.mean(dim=0)))
    replicates = _leave_one_out(function, samples)
    return estimate, _jackknife_error(replicates)


def _leave_one_out(function: Callable[[Tensor], Tensor], samples: Tensor) -> Tensor:
    """Return f(x̄_(i)) for every leave-one-out mean of the rows of ``samples``; empty with fewer than 2 rows."""
    count = samples.shape[0]
    if count < 2:
        return samples.new_empty(0)
    leave_one_out = (samples.sum(dim=0, keepdim=True) - samples) / (count - 1)
    return function(leave_one_out)


def _jackknife_error(replicates: Tensor) -> float:
    """Return the jackknife standard error from leave-one-out replicates, NaN with fewer than 2."""
    count = replicates.shape[0]
    if count < 2:
        return math.nan
    spread = ((replicates - replicates.mean()) ** 2).sum()
    return float(torch.sqrt((count - 1) / count * spread))


def _probe_loop(
    operators: Sequence[HessianOperator],
    num_probes: int,
    seed: int,
    on_products: Callable[[Tensor, list[Tensor]], None],
    progress: bool | None,
    desc: str,
    probe_chunk: int,
) -> None:
    """Draw ``num_probes`` Rademacher probes and pass each with its products H v to ``on_products``."""
    if num_probes < 1:
        raise ValueError(f"num_probes must be at least 1, got {num_probes}")
    if probe_chunk < 1:
        raise ValueError(f"probe_chunk must be at least 1, got {probe_chunk}")
    generator = _generator(seed)
    first = operators[0]
    bar = tqdm(total=num_probes, desc=desc, leave=False, disable=None if progress is None else not progress)
    for start in range(0, num_probes, probe_chunk):
        count = min(probe_chunk, num_probes - start)
        probes = torch.stack([_rademacher(first.dim, generator, first.dtype, first.device) for _ in range(count)])
        if count == 1:
            products = [operator.matvec(probes[0])[None] for operator in operators]
        else:
            products = [operator.matmat(probes) for operator in operators]
        for row in range(count):
            on_products(probes[row], [product[row] for product in products])
        bar.update(count)
    bar.close()


def hutchinson_trace(
    loss_fn: LossFn,
    theta: Tensor,
    batches: Iterable[Any],
    *,
    num_probes: int = 100,
    seed: int = 0,
    probe_chunk: int = 16,
    batch_size_fn: Callable[[Any], int] = infer_batch_size,
    mode: HvpMode = "forward-over-reverse",
    progress: bool | None = None,
) -> ProbeEstimate:
    """Estimate tr(H) with Hutchinson's estimator over Rademacher probes v (E vvᵀ = I).

        tr(H) ≈ (1/m) Σ_i v_iᵀ H v_i,   Var(v_iᵀ H v_i) = 2 (‖H‖_F² − Σ_j H_jj²)

    so the estimator's standard error is √(2 (‖H‖_F² − Σ_j H_jj²) / m). The returned ``std_error``
    is its sample estimate. It is zero for a diagonal H, where every probe gives the exact trace.
    ``probe_chunk`` probes share one vectorised pass (:meth:`HessianOperator.matmat`); 1 turns that off.
    """
    operator = HessianOperator(loss_fn, theta, batches, batch_size_fn=batch_size_fn, mode=mode)
    samples: list[float] = []
    _probe_loop(
        [operator], num_probes, seed,
        lambda probe, products: samples.append(float(torch.dot(probe, products[0]))),
        progress, "hutchinson trace", probe_chunk,
    )
    return _mean_estimate(torch.tensor(samples, dtype=torch.float64))


def frobenius_norm(
    loss_fn: LossFn,
    theta: Tensor,
    batches: Iterable[Any],
    *,
    num_probes: int = 100,
    seed: int = 0,
    probe_chunk: int = 16,
    batch_size_fn: Callable[[Any], int] = infer_batch_size,
    mode: HvpMode = "forward-over-reverse",
    progress: bool | None = None,
) -> ProbeEstimate:
    """Estimate ‖H‖_F from ‖H‖_F² = tr(H²) = E‖Hv‖² over Rademacher probes v.

    ‖Hv‖² = vᵀH²v, so Var(‖Hv‖²) = 2 (‖H²‖_F² − Σ_j (H²)_jj²). The norm √(mean ‖Hv_i‖²) is biased
    low by O(1/m) (Jensen), and its ``std_error`` is the jackknife estimate. ``samples`` are ‖Hv_i‖².
    """
    operator = HessianOperator(loss_fn, theta, batches, batch_size_fn=batch_size_fn, mode=mode)
    samples: list[float] = []
    _probe_loop(
        [operator], num_probes, seed,
        lambda probe, products: samples.append(float(products[0].square().sum())),
        progress, "hessian frobenius", probe_chunk,
    )
    squared = torch.tensor(samples, dtype=torch.float64)
    estimate, std_error = _jackknife(lambda means: means[..., 0].sqrt(), squared[:, None])
    return ProbeEstimate(estimate, std_error, squared.numel(), squared)


# ----------------------------------------------------------------------------------------------
# Cross-domain consistency
# ----------------------------------------------------------------------------------------------


def hessian_consistency(
    loss_fn: LossFn,
    theta: Tensor,
    domains: Mapping[str, Iterable[Any]],
    reference: str = "id",
    *,
    k: int = 3,
    method: Literal["lanczos", "power"] = "lanczos",
    iters: int | None = None,
    tol: float = 1e-4,
    num_probes: int = 50,
    spectral_diff: bool = True,
    seed: int = 0,
    probe_chunk: int = 16,
    batch_size_fn: Callable[[Any], int] = infer_batch_size,
    mode: HvpMode = "forward-over-reverse",
    progress: bool | None = None,
) -> pd.DataFrame:
    """Compare the Hessian of each domain's loss with the reference domain's, from HVPs only.

    One row per domain. Per-domain columns: ``num_samples``, ``loss``, ``grad_norm``,
    ``eigenvalue_1..k`` (largest algebraic, from ``method``; none with ``k = 0``), ``trace`` and ``frobenius`` with
    standard errors. Columns comparing the domain e with the reference r (NaN on the reference
    row), with D = H_e − H_r and the same m Rademacher probes v_i for every domain:

    - ``gradient_gap`` = ‖∇L_e − ∇L_r‖ (exact).
    - ``frobenius_diff`` = √((1/m) Σ ‖D v_i‖²), since E‖Dv‖² = tr(DᵀD) = ‖D‖_F². Per probe,
      Var(‖Dv‖²) = 2 (‖D²‖_F² − Σ_j (D²)_jj²).
    - ``spectral_diff`` = ‖D‖_2 = max |λ(D)|, by ``method`` on v ↦ H_e v − H_r v ("LM").
    - ``*_normalized`` = the above divided by ‖H_e‖_F + ‖H_r‖_F (both estimated as in
      :func:`frobenius_norm`).
    - ``hessian_cosine`` = tr(H_e H_r) / (‖H_e‖_F ‖H_r‖_F) with tr(H_e H_r) ≈ (1/m) Σ (H_e v_i)·(H_r v_i),
      because E vᵀH_e H_r v = tr(H_e H_r).

    Norms and ratios of the probe means are consistent but biased by O(1/m). Their ``*_se``
    columns are jackknife standard errors over probes. ``df.attrs`` records the settings and, under
    ``probe_replicates``, the leave-one-out values of ``hessian_cosine`` and
    ``frobenius_diff_normalized`` per domain, which :func:`consistency_gain` pairs. Probes
    go through the data ``probe_chunk`` at a time, as in :func:`hutchinson_trace`.
    """
    if reference not in domains:
        raise KeyError(f"reference domain {reference!r} is not among the domains {list(domains)}")
    if k < 0:
        raise ValueError(f"k must be 0 (no eigenvalues) or a positive number of eigenvalues, got {k}")
    names = list(domains)
    operators = {
        name: HessianOperator(loss_fn, theta, batches, batch_size_fn=batch_size_fn, mode=mode)
        for name, batches in domains.items()
    }
    started = time.perf_counter()

    # Exact loss and gradient per domain.
    losses: dict[str, float] = {}
    gradients: dict[str, Tensor] = {}
    for name in names:
        losses[name], gradients[name] = operators[name].loss_and_gradient()
        logger.info(
            "domain %s: %d samples, loss %.6g, |grad| %.6g",
            name, operators[name].num_samples, losses[name], float(gradients[name].norm()),
        )

    # Top eigenvalues per domain; k = 0 skips them when only the consistency columns are needed.
    spectra: dict[str, EigenResult] = {}
    if k > 0:
        for name in names:
            spectra[name] = operator_eigenvalues(
                operators[name], k, method=method, which="LA", iters=iters, tol=tol, seed=seed, progress=progress
            )

    # Shared Rademacher probes: per domain vᵀHv and ‖Hv‖², per pair (H_e v)·(H_r v) and ‖(H_e − H_r)v‖².
    others = [name for name in names if name != reference]
    index = {name: position for position, name in enumerate(names)}
    domain_samples: list[list[float]] = []
    pair_samples: list[list[float]] = []

    def on_products(probe: Tensor, products: list[Tensor]) -> None:
        row: list[float] = []
        for product in products:
            row += [float(torch.dot(probe, product)), float(product.square().sum())]
        domain_samples.append(row)
        reference_product = products[index[reference]]
        pair_row: list[float] = []
        for name in others:
            product = products[index[name]]
            pair_row += [
                float(torch.dot(product, reference_product)),
                float((product - reference_product).square().sum()),
            ]
        pair_samples.append(pair_row)

    _probe_loop(
        [operators[name] for name in names], num_probes, seed, on_products, progress, "hessian probes", probe_chunk
    )
    per_domain = torch.tensor(domain_samples, dtype=torch.float64)
    per_pair = torch.tensor(pair_samples, dtype=torch.float64).reshape(num_probes, 2 * len(others))

    rows = []
    replicates: dict[str, dict[str, list[float]]] = {metric: {} for metric in _PAIRED_METRICS}
    reference_column = 2 * index[reference]
    for name in names:
        column = 2 * index[name]
        trace = _mean_estimate(per_domain[:, column])
        frobenius, frobenius_se = _jackknife(lambda m: m[..., 0].sqrt(), per_domain[:, column + 1 : column + 2])
        row: dict[str, Any] = {
            "domain": name,
            "reference": reference,
            "num_samples": operators[name].num_samples,
            "loss": losses[name],
            "grad_norm": float(gradients[name].norm()),
        }
        eigenvalues = spectra[name].eigenvalues.tolist() if name in spectra else []
        for position, value in enumerate(eigenvalues, start=1):
            row[f"eigenvalue_{position}"] = value
        row.update(
            trace=trace.estimate, trace_se=trace.std_error, frobenius=frobenius, frobenius_se=frobenius_se
        )
        row.update(dict.fromkeys(_PAIR_COLUMNS, math.nan))

        if name != reference:
            pair_column = 2 * others.index(name)
            # Columns: ‖H_e v‖², ‖H_r v‖², (H_e v)·(H_r v), ‖D v‖².
            stacked = torch.stack(
                [
                    per_domain[:, column + 1],
                    per_domain[:, reference_column + 1],
                    per_pair[:, pair_column],
                    per_pair[:, pair_column + 1],
                ],
                dim=1,
            )
            diff, diff_se = _jackknife(lambda m: m[..., 3].sqrt(), stacked)
            diff_normalized, diff_normalized_se = _jackknife(lambda m: m[..., 3].sqrt() / _norm_sum(m), stacked)
            cosine, cosine_se = _jackknife(lambda m: m[..., 2] / (m[..., 0] * m[..., 1]).sqrt(), stacked)
            replicates["frobenius_diff_normalized"][name] = _leave_one_out(
                lambda m: m[..., 3].sqrt() / _norm_sum(m), stacked
            ).tolist()
            replicates["hessian_cosine"][name] = _leave_one_out(
                lambda m: m[..., 2] / (m[..., 0] * m[..., 1]).sqrt(), stacked
            ).tolist()
            row.update(
                gradient_gap=float((gradients[name] - gradients[reference]).norm()),
                frobenius_diff=diff,
                frobenius_diff_se=diff_se,
                frobenius_diff_normalized=diff_normalized,
                frobenius_diff_normalized_se=diff_normalized_se,
                hessian_cosine=cosine,
                hessian_cosine_se=cosine_se,
            )
            if spectral_diff:
                difference = _DifferenceOperator(operators[name], operators[reference])
                spectral = operator_eigenvalues(
                    difference, 1, method=method, which="LM", iters=iters, tol=tol, seed=seed, progress=progress
                )
                row["spectral_diff"] = abs(float(spectral.eigenvalues[0]))
                row["spectral_diff_normalized"] = row["spectral_diff"] / float(_norm_sum(stacked.mean(dim=0)))
        rows.append(row)

    table = pd.DataFrame(rows)
    table.attrs.update(
        reference=reference, k=k, method=method, num_probes=num_probes, seed=seed, tol=tol,
        iters=iters, dim=operators[reference].dim, probes="rademacher", probe_replicates=replicates,
    )
    logger.info(
        "hessian consistency over %d domains (d=%d, %d probes): %.2f s",
        len(names), operators[reference].dim, num_probes, time.perf_counter() - started,
    )
    return table


def _norm_sum(means: Tensor) -> Tensor:
    """Return ‖H_e‖_F + ‖H_r‖_F from the probe means of ‖H_e v‖² and ‖H_r v‖² (columns 0 and 1)."""
    return means[..., 0].sqrt() + means[..., 1].sqrt()


# Pair metrics whose leave-one-out probe replicates ``hessian_consistency`` keeps in ``attrs``, so that
# two tables computed with the same probes can be compared as a paired difference.
_PAIRED_METRICS = ("hessian_cosine", "frobenius_diff_normalized")

_PAIR_COLUMNS = (
    "gradient_gap",
    "frobenius_diff",
    "frobenius_diff_se",
    "frobenius_diff_normalized",
    "frobenius_diff_normalized_se",
    "spectral_diff",
    "spectral_diff_normalized",
    "hessian_cosine",
    "hessian_cosine_se",
)


def consistency_gain(
    table: Any, baseline: Any, metric: str = "hessian_cosine", confidence: float = 0.95
) -> dict[str, float]:
    """Return the gain in a ``hessian.hessian_consistency`` column, averaged over the non-reference domains.

    ``value`` = mean over domains of (table − baseline), with a normal interval. When both tables
    carry probe replicates from the same probes (same ``seed``, ``num_probes`` and parameter
    dimension in ``attrs``), the standard error is the jackknife of the paired difference: each
    probe is left out of both tables at once, so noise that the two share cancels, and so does the
    correlation between domains. Otherwise (e.g. tables read back from CSV) the ``<metric>_se``
    columns are combined as if independent, which overstates the error of a paired comparison.
    ``paired`` in the result says which was used. For ``hessian_cosine`` a positive gain means
    ``table``'s Hessians agree more across domains; for ``frobenius_diff_normalized`` a negative one.
    """
    from scipy.stats import norm

    first = table[table.domain != table.reference].set_index("domain")
    second = baseline[baseline.domain != baseline.reference].set_index("domain")
    domains = [domain for domain in first.index if domain in second.index]
    if not domains:
        raise ValueError("the two tables share no non-reference domain")
    unmatched = sorted(set(first.index) ^ set(second.index))
    if unmatched:
        logger.warning("consistency_gain averages over the %d shared domains; %s are in one table only",
                       len(domains), unmatched)
    value = float((first.loc[domains, metric] - second.loc[domains, metric]).mean())

    paired = _paired_replicates(table, baseline, metric, domains)
    if paired is not None:
        # Leave-one-out replicates of the domain-mean difference, one per probe.
        standard_error = _jackknife_error(paired)
    else:
        variance = (first.loc[domains, f"{metric}_se"] ** 2 + second.loc[domains, f"{metric}_se"] ** 2).sum()
        standard_error = math.sqrt(variance) / len(domains)
    half_width = float(norm.ppf(0.5 + confidence / 2.0) * standard_error)
    return {"value": value, "low": value - half_width, "high": value + half_width, "confidence": confidence,
            "standard_error": standard_error, "paired": paired is not None}


def _paired_replicates(table: Any, baseline: Any, metric: str, domains: Sequence[str]) -> Tensor | None:
    """Return per-probe replicates of the domain-mean difference, or None when the tables cannot be paired."""
    settings = ("seed", "num_probes", "dim", "probes")
    if any(table.attrs.get(key) != baseline.attrs.get(key) for key in settings):
        return None
    first = table.attrs.get("probe_replicates", {}).get(metric, {})
    second = baseline.attrs.get("probe_replicates", {}).get(metric, {})
    if not all(domain in first and domain in second for domain in domains):
        return None
    differences = torch.tensor([first[domain] for domain in domains], dtype=torch.float64) - torch.tensor(
        [second[domain] for domain in domains], dtype=torch.float64
    )
    if differences.shape[1] < 2:
        return None
    return differences.mean(dim=0)


def seed_consistency_gain(
    tables: Sequence[Any],
    baselines: Sequence[Any],
    metric: str = "hessian_cosine",
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Return the seed-mean :func:`consistency_gain` of ``tables`` over ``baselines``, paired by position.

    ``tables[i]`` and ``baselines[i]`` come from one training seed. The percentile bootstrap
    resamples the seeds and, per resampled seed, adds normal noise with that seed's probe standard
    error, so the interval covers the spread over training runs and the probe noise. With one seed
    there is no spread to measure, so the interval is NaN, and a caller that finds ``n_seeds`` = 1
    should report the claim as not evaluated.
    ``per_seed`` lists the single-seed gains.
    """
    from dsenergy.metrics import paired_bootstrap

    if len(tables) != len(baselines) or not tables:
        raise ValueError(
            f"tables ({len(tables)}) and baselines ({len(baselines)}) must be non-empty and of equal length, "
            "one pair per training seed"
        )
    per_seed = [consistency_gain(table, baseline, metric, confidence) for table, baseline in zip(tables, baselines)]
    values = np.array([gain["value"] for gain in per_seed])
    errors = np.array([gain["standard_error"] for gain in per_seed])
    value = float(values.mean())
    if len(values) < 2:
        return {"value": value, "low": math.nan, "high": math.nan, "confidence": confidence,
                "per_seed": values.tolist(), "n_seeds": len(values)}

    noise = np.random.default_rng(seed + 1)

    def statistic(seed_index: np.ndarray) -> float:
        return float((values[seed_index] + errors[seed_index] * noise.standard_normal(len(seed_index))).mean())

    interval = paired_bootstrap(statistic, [len(values)], n_bootstrap, confidence, seed)
    return {"value": value, "low": interval["low"], "high": interval["high"], "confidence": confidence,
            "per_seed": values.tolist(), "n_seeds": len(values)}


def consistency_verdict(table: Any, baseline: Any, confidence: float = 0.95) -> dict[str, Any]:
    """Judge "``table``'s Hessians are more domain-consistent than ``baseline``'s" on two metrics.

    The cosine gain (table − baseline, higher is more consistent) and the normalised-Frobenius gain
    (baseline − table, so that higher is again more consistent) each get an interval from
    :func:`consistency_gain` and a verdict from :func:`dsenergy.metrics.claim_verdict`. The claim is
    ``"held"`` or ``"contradicted"`` only when both metrics give that verdict, ``"metrics disagree"`` when one
    metric's verdict is held and the other's contradicted, and ``"not supported"`` otherwise.
    """
    from dsenergy.metrics import claim_verdict

    cosine = consistency_gain(table, baseline, "hessian_cosine", confidence)
    frobenius = consistency_gain(baseline, table, "frobenius_diff_normalized", confidence)
    verdicts = {
        "hessian_cosine": claim_verdict(cosine["low"], cosine["high"]),
        "frobenius_diff_normalized": claim_verdict(frobenius["low"], frobenius["high"]),
    }
    distinct = set(verdicts.values())
    if len(distinct) == 1:
        verdict = distinct.pop()
    elif distinct == {"held", "contradicted"}:
        verdict = "metrics disagree"
    else:
        verdict = "not supported"
    return {"verdict": verdict, "verdicts": verdicts, "hessian_cosine": cosine, "frobenius_diff_normalized": frobenius}
