"""Tests for the HVP-based Hessian tools against dense Hessians of small problems (float64)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsenergy import hessian

DTYPE = torch.float64


def _spd_quadratic(eigenvalues: list[float], seed: int) -> torch.Tensor:
    """Return a symmetric matrix Q diag(eigenvalues) Qᵀ with a random orthogonal Q."""
    generator = torch.Generator().manual_seed(seed)
    dim = len(eigenvalues)
    orthogonal, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=DTYPE))
    return orthogonal @ torch.diag(torch.tensor(eigenvalues, dtype=DTYPE)) @ orthogonal.T


def _quadratic_loss(theta: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Return the mean over samples of ½ θᵀ A_i θ, with per-sample matrices A_i (n×d×d) as the batch."""
    flat = theta.reshape(-1)
    return 0.5 * torch.einsum("i,nij,j->n", flat, batch, flat).mean()


def _uneven(tensor: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    assert sum(sizes) == tensor.shape[0]
    return list(torch.split(tensor, sizes))


def _classifier_problem(num_classes=4, width=10, num_samples=60, shift=0.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(num_samples, width, generator=generator, dtype=DTYPE) + shift
    features = F.normalize(features, dim=1)
    labels = torch.randint(0, num_classes, (num_samples,), generator=generator)
    text_features = torch.randn(num_classes, width, generator=generator, dtype=DTYPE)
    return features, labels, text_features


def _full_data_hessian(features, labels, text_features, temperature, renormalize):
    """Dense Hessian of the full-data CE written out directly, independent of dsenergy.hessian."""

    def loss(flat):
        weights = flat.view(text_features.shape)
        if renormalize:
            weights = weights / weights.norm(dim=1, keepdim=True)
        return F.cross_entropy(features @ weights.T / temperature, labels)

    return torch.autograd.functional.hessian(loss, text_features.reshape(-1).clone())


def _rademacher_variance(matrix: torch.Tensor) -> float:
    """Var(vᵀMv) for Rademacher v: 2(‖S‖_F² − Σ S_jj²) with S the symmetric part of M."""
    symmetric = 0.5 * (matrix + matrix.T)
    return float(2 * (symmetric.square().sum() - symmetric.diagonal().square().sum()))


# ----------------------------------------------------------------------------------------------
# HVP, gradient, dense Hessian
# ----------------------------------------------------------------------------------------------


def test_hvp_matches_dense_quadratic():
    generator = torch.Generator().manual_seed(1)
    dim, count = 20, 37
    matrices = torch.randn(count, dim, dim, generator=generator, dtype=DTYPE)
    matrices = matrices + matrices.transpose(1, 2)
    expected = matrices.mean(dim=0)
    theta = torch.randn(4, 5, generator=generator, dtype=DTYPE)
    vector = torch.randn(4, 5, generator=generator, dtype=DTYPE)
    batches = _uneven(matrices, [3, 20, 1, 13])

    product = hessian.hvp(_quadratic_loss, theta, batches, vector)

    assert product.shape == theta.shape
    torch.testing.assert_close(product.reshape(-1), expected @ vector.reshape(-1), atol=1e-5, rtol=0)
    dense = hessian.dense_hessian(_quadratic_loss, theta, batches)
    torch.testing.assert_close(dense, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("mode", ["forward-over-reverse", "reverse-over-reverse"])
def test_hvp_matches_dense_softmax_ce(renormalize, mode):
    features, labels, text_features = _classifier_problem()
    temperature = 0.1
    loss_fn = hessian.make_classifier_loss(temperature, renormalize=renormalize)
    batches = hessian.feature_batches(features, labels, batch_size=16)
    expected = _full_data_hessian(features, labels, text_features, temperature, renormalize)
    generator = torch.Generator().manual_seed(2)

    for _ in range(3):
        vector = torch.randn(text_features.shape, generator=generator, dtype=DTYPE)
        product = hessian.hvp(loss_fn, text_features, batches, vector, mode=mode)
        torch.testing.assert_close(product.reshape(-1), expected @ vector.reshape(-1), atol=1e-5, rtol=0)

    dense = hessian.dense_hessian(loss_fn, text_features, batches)
    torch.testing.assert_close(dense, expected, atol=1e-8, rtol=0)


def test_gradient_matches_autograd():
    features, labels, text_features = _classifier_problem()
    loss_fn = hessian.make_classifier_loss(0.05)
    batches = hessian.feature_batches(features, labels, batch_size=13)
    weights = text_features.clone().requires_grad_(True)

    full_loss = F.cross_entropy(features @ F.normalize(weights, dim=1).T / 0.05, labels)
    (expected,) = torch.autograd.grad(full_loss, weights)

    torch.testing.assert_close(hessian.gradient(loss_fn, text_features, batches), expected)


def test_batching_invariance_uneven_batches():
    features, labels, text_features = _classifier_problem(num_samples=50)
    loss_fn = hessian.make_classifier_loss(0.1)
    sizes = [7, 13, 1, 29]
    one_batch = [(features, labels)]
    many = list(zip(_uneven(features, sizes), _uneven(labels, sizes)))
    vector = torch.randn(text_features.shape, generator=torch.Generator().manual_seed(3), dtype=DTYPE)

    single = hessian.hvp(loss_fn, text_features, one_batch, vector)
    split = hessian.hvp(loss_fn, text_features, many, vector)
    torch.testing.assert_close(split, single, atol=1e-12, rtol=0)

    # An unweighted mean of per-batch products differs, so the check above can fail.
    naive = torch.stack([hessian.hvp(loss_fn, text_features, [batch], vector) for batch in many]).mean(0)
    assert (naive - single).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------
# Eigenvalues
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalues_known_spectrum(method):
    spectrum = [5.0, 4.0, 3.0, 1.5, -6.0] + [0.5 * i / 25 - 0.2 for i in range(25)]
    matrix = _spd_quadratic(spectrum, seed=4)
    batches = [matrix[None]]
    theta = torch.zeros(len(spectrum), dtype=DTYPE)

    # Eigenvalue errors scale as the squared residual, so tol=1e-6 is ample for 1e-3 relative.
    largest = hessian.top_eigenvalues(
        _quadratic_loss, theta, batches, k=3, method=method, which="LA", iters=500, tol=1e-6
    )
    magnitude = hessian.top_eigenvalues(
        _quadratic_loss, theta, batches, k=2, method=method, which="LM", iters=500, tol=1e-6
    )

    torch.testing.assert_close(largest.eigenvalues, torch.tensor([5.0, 4.0, 3.0], dtype=DTYPE), rtol=1e-3, atol=0)
    torch.testing.assert_close(magnitude.eigenvalues, torch.tensor([-6.0, 5.0], dtype=DTYPE), rtol=1e-3, atol=0)
    assert largest.converged
    for value, vector in zip(largest.eigenvalues, largest.eigenvectors):
        torch.testing.assert_close(matrix @ vector, value * vector, atol=1e-3, rtol=0)


@pytest.mark.parametrize("method", ["lanczos", pytest.param("power", marks=pytest.mark.slow)])
def test_top_eigenvalues_softmax_ce(method):
    # Power iteration on this spectrum needs ~10⁴ HVPs, so it runs only with --runslow; the
    # known-spectrum test covers power iteration by default.
    features, labels, text_features = _classifier_problem(num_classes=5, width=16, num_samples=80)
    temperature = 0.1
    loss_fn = hessian.make_classifier_loss(temperature)
    batches = hessian.feature_batches(features, labels, batch_size=50)
    expected = torch.linalg.eigvalsh(_full_data_hessian(features, labels, text_features, temperature, True))
    expected_top = expected.flip(0)[:3]

    result = hessian.top_eigenvalues(loss_fn, text_features, batches, k=3, method=method, iters=2000, tol=1e-8)

    torch.testing.assert_close(result.eigenvalues, expected_top, rtol=1e-3, atol=0)


def test_lanczos_handles_low_rank_operator():
    # Rank 2 in d = 30: Lanczos meets an invariant subspace after two steps and must restart.
    generator = torch.Generator().manual_seed(5)
    factors = torch.randn(30, 2, generator=generator, dtype=DTYPE)
    matrix = factors @ factors.T
    expected = torch.linalg.eigvalsh(matrix).flip(0)[:3]

    result = hessian.top_eigenvalues(_quadratic_loss, torch.zeros(30, dtype=DTYPE), [matrix[None]], k=3)

    torch.testing.assert_close(result.eigenvalues, expected, rtol=1e-3, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# Stochastic estimators
# ----------------------------------------------------------------------------------------------


def test_hutchinson_trace_within_derived_tolerance():
    features, labels, text_features = _classifier_problem(num_classes=5, width=12)
    loss_fn = hessian.make_classifier_loss(0.1)
    batches = hessian.feature_batches(features, labels, batch_size=40)
    dense = _full_data_hessian(features, labels, text_features, 0.1, True)
    num_probes = 200
    exact_se = math.sqrt(_rademacher_variance(dense) / num_probes)

    result = hessian.hutchinson_trace(loss_fn, text_features, batches, num_probes=num_probes, seed=7)

    assert abs(result.estimate - float(dense.trace())) <= 4 * exact_se
    # The sample standard error of m = 200 probes is within ±40 % of the exact one for this
    # problem's probe distribution; a wrong formula (missing √m, or a variance) is off by far more.
    assert 0.6 * exact_se <= result.std_error <= 1.4 * exact_se


def test_hutchinson_trace_exact_for_diagonal():
    # Rademacher probes give vᵀHv = tr(H) exactly when H is diagonal.
    diagonal = torch.diag(torch.linspace(-1.0, 3.0, 15, dtype=DTYPE))
    result = hessian.hutchinson_trace(_quadratic_loss, torch.ones(15, dtype=DTYPE), [diagonal[None]], num_probes=5)

    assert result.estimate == pytest.approx(float(diagonal.trace()), abs=1e-12)
    assert result.std_error == pytest.approx(0.0, abs=1e-12)


def test_frobenius_norm_within_derived_tolerance():
    matrix = _spd_quadratic([3.0, -2.0, 1.0, 0.5] + [0.1] * 16, seed=8)
    num_probes = 200
    squared_se = math.sqrt(_rademacher_variance(matrix @ matrix) / num_probes)
    exact_squared = float(matrix.square().sum())

    result = hessian.frobenius_norm(_quadratic_loss, torch.zeros(20, dtype=DTYPE), [matrix[None]], num_probes=num_probes)

    assert abs(result.estimate**2 - exact_squared) <= 4 * squared_se


def test_estimators_reproducible_by_seed():
    features, labels, text_features = _classifier_problem()
    loss_fn = hessian.make_classifier_loss(0.1)
    batches = hessian.feature_batches(features, labels, batch_size=20)

    first = hessian.hutchinson_trace(loss_fn, text_features, batches, num_probes=6, seed=3, probe_chunk=4)
    again = hessian.hutchinson_trace(loss_fn, text_features, batches, num_probes=6, seed=3, probe_chunk=1)
    other = hessian.hutchinson_trace(loss_fn, text_features, batches, num_probes=6, seed=4)

    # Chunked (vmap) and one-at-a-time passes see the same probes and agree.
    torch.testing.assert_close(first.samples, again.samples, atol=1e-12, rtol=0)
    assert first.estimate != other.estimate


# ----------------------------------------------------------------------------------------------
# Cross-domain consistency
# ----------------------------------------------------------------------------------------------


def _interval_sqrt(center: float, half_width: float) -> tuple[float, float]:
    return math.sqrt(max(center - half_width, 0.0)), math.sqrt(center + half_width)


def test_hessian_consistency_matches_dense():
    temperature = 0.1
    features, labels, text_features = _classifier_problem(num_classes=4, width=6, num_samples=60)
    shifted, shifted_labels, _ = _classifier_problem(num_classes=4, width=6, num_samples=45, shift=0.4, seed=1)
    domains = {
        "id": hessian.feature_batches(features, labels, batch_size=40),
        "shift": hessian.feature_batches(shifted, shifted_labels, batch_size=45),
    }
    loss_fn = hessian.make_classifier_loss(temperature)
    num_probes = 200

    table = hessian.hessian_consistency(
        loss_fn, text_features, domains, reference="id", k=2, num_probes=num_probes, iters=200, tol=1e-8,
        probe_chunk=50,
    )

    reference_hessian = _full_data_hessian(features, labels, text_features, temperature, True)
    shift_hessian = _full_data_hessian(shifted, shifted_labels, text_features, temperature, True)
    difference = shift_hessian - reference_hessian
    row = table.set_index("domain").loc["shift"]
    reference_row = table.set_index("domain").loc["id"]

    # Exact quantities.
    assert row["num_samples"] == 45
    assert math.isnan(reference_row["frobenius_diff"])
    expected_eigs = torch.linalg.eigvalsh(shift_hessian).flip(0)[:2]
    assert [row["eigenvalue_1"], row["eigenvalue_2"]] == pytest.approx(expected_eigs.tolist(), rel=1e-3)
    assert row["spectral_diff"] == pytest.approx(float(torch.linalg.eigvalsh(difference).abs().max()), rel=1e-3)

    def gradient_of(x, y):
        weights = text_features.clone().requires_grad_(True)
        loss = F.cross_entropy(x @ F.normalize(weights, dim=1).T / temperature, y)
        return torch.autograd.grad(loss, weights)[0]

    expected_gap = float((gradient_of(shifted, shifted_labels) - gradient_of(features, labels)).norm())
    assert row["gradient_gap"] == pytest.approx(expected_gap, rel=1e-8)

    # Probe estimates within 4 exact standard errors of each probe mean.
    def bounds(matrix):
        center = float(matrix.trace())
        return center, 4 * math.sqrt(_rademacher_variance(matrix) / num_probes)

    trace_center, trace_width = bounds(shift_hessian)
    assert abs(row["trace"] - trace_center) <= trace_width

    diff_low, diff_high = _interval_sqrt(*bounds(difference @ difference))
    assert diff_low <= row["frobenius_diff"] <= diff_high

    cross_center, cross_width = bounds(shift_hessian @ reference_hessian)
    shift_low, shift_high = _interval_sqrt(*bounds(shift_hessian @ shift_hessian))
    ref_low, ref_high = _interval_sqrt(*bounds(reference_hessian @ reference_hessian))
    cosine_low = (cross_center - cross_width) / (shift_high * ref_high)
    cosine_high = (cross_center + cross_width) / (shift_low * ref_low)
    exact_cosine = float((shift_hessian * reference_hessian).sum() / (shift_hessian.norm() * reference_hessian.norm()))
    assert cosine_low <= exact_cosine <= cosine_high
    assert cosine_low <= row["hessian_cosine"] <= cosine_high

    normalized_low = diff_low / (shift_high + ref_high)
    normalized_high = diff_high / (shift_low + ref_low)
    assert normalized_low <= row["frobenius_diff_normalized"] <= normalized_high
    assert row["spectral_diff_normalized"] == pytest.approx(
        row["spectral_diff"] / (row["frobenius"] + reference_row["frobenius"]), rel=1e-12
    )


def test_hessian_consistency_identical_domains():
    features, labels, text_features = _classifier_problem()
    batches = hessian.feature_batches(features, labels, batch_size=60)
    rebatched = hessian.feature_batches(features, labels, batch_size=25)
    loss_fn = hessian.make_classifier_loss(0.1)

    table = hessian.hessian_consistency(
        loss_fn, text_features, {"id": batches, "copy": rebatched}, k=1, num_probes=5, iters=10, tol=1e-2
    )
    row = table.set_index("domain").loc["copy"]

    assert row["frobenius_diff"] == pytest.approx(0.0, abs=1e-10)
    assert row["spectral_diff"] == pytest.approx(0.0, abs=1e-10)
    assert row["gradient_gap"] == pytest.approx(0.0, abs=1e-12)
    assert row["hessian_cosine"] == pytest.approx(1.0, abs=1e-10)
    assert table.attrs["num_probes"] == 5


# ----------------------------------------------------------------------------------------------
# Prompt-learner path through functional_call
# ----------------------------------------------------------------------------------------------


class _TinyPromptLearner(nn.Module):
    """Same shape contract as a CoOp prompt learner: only ``context_vectors`` trains, forward() → K×D."""

    def __init__(self, num_context=3, width=6, num_classes=4, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.context_vectors = nn.Parameter(0.3 * torch.randn(num_context, width, generator=generator, dtype=DTYPE))
        self.class_embeddings = nn.Parameter(
            torch.randn(num_classes, width, generator=generator, dtype=DTYPE), requires_grad=False
        )
        self.register_buffer("mixing", torch.randn(width, width, generator=generator, dtype=DTYPE))

    def forward(self) -> torch.Tensor:
        pooled = torch.tanh(self.context_vectors).mean(dim=0)
        return torch.tanh((self.class_embeddings + pooled) @ self.mixing)


def test_prompt_learner_functional_call_matches_dense():
    module = _TinyPromptLearner()
    name, theta = hessian.trainable_parameter(module)
    generator = torch.Generator().manual_seed(9)
    features = F.normalize(torch.randn(30, 6, generator=generator, dtype=DTYPE), dim=1)
    labels = torch.randint(0, 4, (30,), generator=generator)
    loss_fn = hessian.make_classifier_loss(0.2, hessian.module_text_features(module))
    batches = hessian.feature_batches(features, labels, batch_size=8)

    def direct_loss(flat):
        pooled = torch.tanh(flat.view(theta.shape)).mean(dim=0)
        text = torch.tanh((module.class_embeddings.detach() + pooled) @ module.mixing)
        return F.cross_entropy(features @ F.normalize(text, dim=1).T / 0.2, labels)

    expected = torch.autograd.functional.hessian(direct_loss, theta.reshape(-1).clone())
    vector = torch.randn(theta.shape, generator=generator, dtype=DTYPE)

    assert name == "context_vectors"
    product = hessian.hvp(loss_fn, theta, batches, vector)
    torch.testing.assert_close(product.reshape(-1), expected @ vector.reshape(-1), atol=1e-5, rtol=0)
    # The module's own parameter is left untouched.
    torch.testing.assert_close(module.context_vectors.detach(), theta)


def test_trainable_parameter_requires_single():
    module = _TinyPromptLearner()
    module.class_embeddings.requires_grad_(True)

    with pytest.raises(ValueError, match="exactly one trainable parameter"):
        hessian.trainable_parameter(module)
    assert hessian.trainable_parameter(module, "class_embeddings")[0] == "class_embeddings"
    with pytest.raises(KeyError, match="no parameter"):
        hessian.trainable_parameter(module, "missing")


# ----------------------------------------------------------------------------------------------
# Inputs, guards, dtype and device
# ----------------------------------------------------------------------------------------------


def test_invalid_inputs_raise():
    features, labels, text_features = _classifier_problem()
    loss_fn = hessian.make_classifier_loss(0.1)
    batches = hessian.feature_batches(features, labels, batch_size=16)

    with pytest.raises(TypeError, match="one-shot iterator"):
        hessian.gradient(loss_fn, text_features, (batch for batch in batches))
    with pytest.raises(ValueError, match="no samples"):
        hessian.gradient(loss_fn, text_features, [])
    with pytest.raises(ValueError, match="scalar mean loss"):
        hessian.gradient(lambda theta, batch: (batch[0] @ theta.T).sum(1), text_features, batches)
    with pytest.raises(ValueError, match="vector must have"):
        hessian.hvp(loss_fn, text_features, batches, torch.ones(3, dtype=DTYPE))
    with pytest.raises(ValueError, match="k must be between"):
        hessian.top_eigenvalues(loss_fn, text_features, batches, k=text_features.numel() + 1)
    with pytest.raises(ValueError, match="max_dim"):
        hessian.dense_hessian(loss_fn, text_features, batches, max_dim=10)
    with pytest.raises(KeyError, match="reference domain"):
        hessian.hessian_consistency(loss_fn, text_features, {"ood": batches}, reference="id")
    with pytest.raises(ValueError, match="temperature"):
        hessian.make_classifier_loss(0.0)
    with pytest.raises(ValueError, match="num_probes"):
        hessian.hutchinson_trace(loss_fn, text_features, batches, num_probes=0)
    with pytest.raises(TypeError, match="batch_size_fn"):
        hessian.infer_batch_size(object())


def test_follows_theta_dtype():
    features, labels, text_features = _classifier_problem()
    loss_fn = hessian.make_classifier_loss(0.1)
    # float64 batches are cast to θ's float32.
    batches = hessian.feature_batches(features, labels, batch_size=16)
    theta32 = text_features.float()

    product = hessian.hvp(loss_fn, theta32, batches, torch.ones_like(theta32))
    result = hessian.top_eigenvalues(loss_fn, theta32, batches, k=1, iters=30, tol=1e-4)

    assert product.dtype == torch.float32
    assert result.eigenvectors.dtype == torch.float32
    expected = hessian.hvp(loss_fn, text_features, batches, torch.ones_like(text_features))
    torch.testing.assert_close(product.double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    features, labels, text_features = _classifier_problem()
    loss_fn = hessian.make_classifier_loss(0.1)
    batches = hessian.feature_batches(features, labels, batch_size=16)

    on_cpu = hessian.hutchinson_trace(loss_fn, text_features, batches, num_probes=4, seed=1)
    on_gpu = hessian.hutchinson_trace(loss_fn, text_features.cuda(), batches, num_probes=4, seed=1)

    assert on_gpu.estimate == pytest.approx(on_cpu.estimate, rel=1e-9)


def test_consistency_gain_uses_standard_errors():
    def table(cosines, errors):
        return pd.DataFrame({"domain": ["id", "a", "b"], "reference": "id",
                             "hessian_cosine": [np.nan, *cosines], "hessian_cosine_se": [np.nan, *errors]})

    gain = hessian.consistency_gain(table([0.9, 0.8], [0.01, 0.01]), table([0.5, 0.6], [0.01, 0.01]))
    assert gain["value"] == pytest.approx(0.3)
    assert gain["high"] - gain["value"] == pytest.approx(1.959964 * math.sqrt(4 * 0.01**2) / 2, rel=1e-4)


def _two_domain_tables(seed=0, num_probes=40, perturbation=0.0):
    """Return hessian_consistency tables of the same problem at θ and at a perturbed θ, with shared probes."""
    features, labels, text_features = _classifier_problem(num_classes=4, width=6, num_samples=60)
    shifted, shifted_labels, _ = _classifier_problem(num_classes=4, width=6, num_samples=45, shift=0.4, seed=1)
    domains = {
        "id": hessian.feature_batches(features, labels, batch_size=60),
        "shift": hessian.feature_batches(shifted, shifted_labels, batch_size=45),
    }
    loss_fn = hessian.make_classifier_loss(0.1)
    settings = dict(reference="id", k=1, iters=8, num_probes=num_probes, seed=seed, spectral_diff=False, progress=False)
    generator = torch.Generator().manual_seed(3)
    moved = text_features + perturbation * torch.randn(text_features.shape, generator=generator, dtype=text_features.dtype)
    return (hessian.hessian_consistency(loss_fn, text_features, domains, **settings),
            hessian.hessian_consistency(loss_fn, moved, domains, **settings))


def test_consistency_gain_identical_models_zero_width():
    table, _ = _two_domain_tables()
    gain = hessian.consistency_gain(table, table.copy())
    assert gain["paired"]
    assert gain["value"] == 0.0
    assert gain["high"] - gain["low"] == 0.0


def test_consistency_gain_pairs_shared_probes():
    table, moved = _two_domain_tables(perturbation=0.05)
    paired = hessian.consistency_gain(moved, table)
    moved.attrs.pop("probe_replicates")
    unpaired = hessian.consistency_gain(moved, table)
    assert paired["paired"]
    assert not unpaired["paired"]
    assert paired["value"] == pytest.approx(unpaired["value"])
    assert paired["high"] - paired["low"] < unpaired["high"] - unpaired["low"]


def test_consistency_gain_unpaired_for_other_probes():
    table, _ = _two_domain_tables(seed=0)
    other, _ = _two_domain_tables(seed=1)
    assert not hessian.consistency_gain(table, other)["paired"]


@pytest.mark.parametrize(
    "cosines, frobenius, verdict",
    [
        ((0.9, 0.5), (0.1, 0.5), "held"),
        ((0.5, 0.9), (0.5, 0.1), "contradicted"),
        ((0.9, 0.5), (0.5, 0.1), "metrics disagree"),
        ((0.9, 0.5), (0.3, 0.3), "not supported"),
    ],
)
def test_consistency_verdict_needs_both_metrics(cosines, frobenius, verdict):
    def table(cosine, difference):
        return pd.DataFrame({"domain": ["id", "a"], "reference": "id",
                             "hessian_cosine": [np.nan, cosine], "hessian_cosine_se": [np.nan, 0.01],
                             "frobenius_diff_normalized": [np.nan, difference],
                             "frobenius_diff_normalized_se": [np.nan, 0.01]})

    result = hessian.consistency_verdict(table(cosines[0], frobenius[0]), table(cosines[1], frobenius[1]))
    assert result["verdict"] == verdict


def test_hessian_consistency_without_eigenvalues():
    features, labels, text_features = _classifier_problem()
    batches = hessian.feature_batches(features, labels, batch_size=60)
    table = hessian.hessian_consistency(hessian.make_classifier_loss(0.1), text_features, {"id": batches, "copy": batches},
                                        reference="id", k=0, num_probes=8, spectral_diff=False, progress=False)
    assert not [column for column in table.columns if column.startswith("eigenvalue_")]
    assert table.set_index("domain").loc["copy", "hessian_cosine"] == pytest.approx(1.0)


def test_seed_consistency_gain_spans_seeds():
    table, moved = _two_domain_tables(perturbation=0.05)
    _, moved_more = _two_domain_tables(perturbation=0.2)
    gain = hessian.seed_consistency_gain([moved, moved_more], [table, table], n_bootstrap=200)
    per_seed = [hessian.consistency_gain(moved, table)["value"], hessian.consistency_gain(moved_more, table)["value"]]
    assert gain["per_seed"] == pytest.approx(per_seed)
    assert gain["value"] == pytest.approx(np.mean(per_seed))
    assert gain["low"] <= min(per_seed) + 1e-9
    assert gain["high"] >= max(per_seed) - 1e-9


def test_seed_consistency_gain_one_seed_has_no_interval():
    table, moved = _two_domain_tables(perturbation=0.05)
    gain = hessian.seed_consistency_gain([moved], [table])
    assert gain["n_seeds"] == 1
    assert math.isnan(gain["low"])
