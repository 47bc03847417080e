import math

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from dsenergy import scores


def random_similarities(n=200, k=10, seed=0, dtype=torch.float64, spread=0.3):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, k, generator=generator, dtype=dtype) * 2 - 1) * spread


def softmax_form_delta_energy(s, tau, top_c, crop_value):
    """ΔE = −τ log(1 − Σ_{k∈T_c} p_k (1 − e^{(a − s_k)/τ})), written independently of the module."""
    p = torch.softmax(s / tau, dim=1)
    top = s.topk(top_c, dim=1).indices
    p_top = p.gather(1, top)
    s_top = s.gather(1, top)
    removed = (p_top * (1 - torch.exp((crop_value - s_top) / tau))).sum(dim=1)
    return -tau * torch.log1p(-removed), 1 - removed


def explicit_crop_delta_energy(s, tau, top_c, crop_value):
    """ΔE = E_τ(s̃) − E_τ(s) with s̃ built by replacing the top-c entries."""
    cropped = s.clone()
    top = s.topk(top_c, dim=1).indices
    cropped.scatter_(1, top, crop_value)
    return scores.free_energy(cropped, tau) - scores.free_energy(s, tau)


@pytest.mark.parametrize("tau", [0.01, 0.05, 1.0])
@pytest.mark.parametrize("top_c", [1, 3])
def test_delta_energy_forms_agree_float64(tau, top_c):
    s = random_similarities()
    expected_softmax_form, remaining_mass = softmax_form_delta_energy(s, tau, top_c, 0.0)
    expected_crop_form = explicit_crop_delta_energy(s, tau, top_c, 0.0)
    result = scores.delta_energy(s, tau, top_c=top_c, crop_value=0.0)

    torch.testing.assert_close(result, expected_crop_form, rtol=1e-10, atol=1e-12)
    # The softmax form computes log(m) from m = 1 − Σ p_k(…), which carries an absolute error of a
    # few float64 ulps, so its error in ΔE is about τ · 1e-16 / m; allow a hundred times that.
    tolerance = tau * 1e-14 / remaining_mass
    assert ((result - expected_softmax_form).abs() <= tolerance).all()


def test_delta_energy_nonnegative_when_crop_below_top():
    s = random_similarities(n=500, k=20, seed=1) + 0.5  # all in [0.2, 0.8]
    for top_c in (1, 2, 5, 20):
        for crop_value in (0.0, 0.1, 0.2):
            delta = scores.delta_energy(s, 0.02, top_c=top_c, crop_value=crop_value)
            assert (delta >= 0).all(), (top_c, crop_value)


def test_delta_energy_negative_when_crop_above_top():
    s = random_similarities(n=50, k=5, seed=2)  # all in [-0.3, 0.3]
    delta = scores.delta_energy(s, 0.05, top_c=1, crop_value=0.9)
    assert (delta < 0).all()


def test_delta_energy_msp_ranks_small_tau():
    # CLIP-like cosines in [0.15, 0.35]: e^{-s_max/τ} < 1e-10, so ΔE = −τ log(1 − p_max) to float64 precision.
    generator = torch.Generator().manual_seed(3)
    s = 0.15 + 0.2 * torch.rand(1000, 10, generator=generator, dtype=torch.float64)
    tau = 0.01
    delta = scores.delta_energy(s, tau, top_c=1)
    max_softmax = scores.msp(s, tau)
    assert (rankdata(delta.numpy()) == rankdata(max_softmax.numpy())).all()


def test_delta_energy_differs_from_msp_at_large_tau():
    s = random_similarities(n=1000, k=10, seed=3)
    delta = scores.delta_energy(s, 1.0, top_c=1)
    max_softmax = scores.msp(s, 1.0)
    assert (rankdata(delta.numpy()) != rankdata(max_softmax.numpy())).any()


def test_float32_msp_saturation_delta_order():
    # Top-1 margins of 0.2–0.4 at τ = 0.01 make e^{-margin/τ} < 2e-9, below float32 resolution at 1.
    s = torch.tensor(
        [
            [0.30, 0.10, 0.05],
            [0.40, 0.10, 0.05],
            [0.50, 0.10, 0.05],
            [0.45, 0.05, 0.00],
        ],
        dtype=torch.float32,
    )
    max_softmax = scores.msp(s, 0.01)
    delta = scores.delta_energy(s, 0.01)

    assert torch.unique(max_softmax).numel() == 1
    assert max_softmax[0].item() == 1.0
    assert torch.unique(delta).numel() == 4
    reference = scores.delta_energy(s.double(), 0.01)
    assert (torch.argsort(delta) == torch.argsort(reference)).all()


def test_delta_energy_all_classes_cropped():
    s = random_similarities(n=10, k=4, seed=4)
    delta = scores.delta_energy(s, 0.1, top_c=4, crop_value=0.0)
    expected = scores.energy(s, 0.1) - 0.1 * math.log(4)
    torch.testing.assert_close(delta, expected)


def test_scores_higher_means_more_id():
    peaked = torch.tensor([[0.35, 0.10, 0.10, 0.10]])
    flat = torch.tensor([[0.20, 0.19, 0.19, 0.19]])
    for name, fn in scores.SCORES.items():
        assert fn(peaked, 0.01) > fn(flat, 0.01), name


def test_energy_matches_definition():
    s = random_similarities(n=20, k=7, seed=5)
    tau = 0.07
    expected = tau * torch.log(torch.exp(s / tau).sum(dim=1))
    torch.testing.assert_close(scores.energy(s, tau), expected)
    torch.testing.assert_close(scores.free_energy(s, tau), -expected)


def test_mcm_defaults_to_unit_temperature():
    s = random_similarities(n=5, k=3, seed=6)
    torch.testing.assert_close(scores.mcm(s), torch.softmax(s, dim=1).amax(dim=1))
    assert scores.score_temperature("mcm", 0.01) == 1.0
    assert scores.score_temperature("msp", 0.01) == 0.01
    assert scores.score_temperature("mcm", 0.01, override=0.5) == 0.5


def test_scores_stable_for_large_logits():
    s = torch.tensor([[1.0, -1.0, 0.0]], dtype=torch.float32)
    for name, fn in scores.SCORES.items():
        value = fn(s, 1e-4)
        assert torch.isfinite(value).all(), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_scores_accept_float_dtypes(dtype):
    s = random_similarities(n=8, k=5, seed=7, dtype=torch.float64)
    reference = scores.delta_energy(s, 0.05)
    result = scores.delta_energy(s.to(dtype), 0.05)
    torch.testing.assert_close(result.double(), reference, rtol=2e-2, atol=2e-3)


def test_bad_inputs_raise_named_errors():
    s = random_similarities(n=4, k=3)
    with pytest.raises(ValueError, match="temperature"):
        scores.energy(s, 0.0)
    with pytest.raises(ValueError, match="top_c"):
        scores.delta_energy(s, 0.01, top_c=4)
    with pytest.raises(ValueError, match="shape"):
        scores.msp(s[0], 0.01)
    with pytest.raises(TypeError, match="floating-point"):
        scores.msp(torch.ones(2, 2, dtype=torch.long), 0.01)
    with pytest.raises(KeyError, match="unknown score"):
        scores.score_temperature("entropy", 0.01)


@pytest.mark.parametrize("top_c", [1.5, 2.0, True])
def test_delta_energy_rejects_non_integer_top_c(top_c):
    with pytest.raises(TypeError, match="top_c must be an integer"):
        scores.delta_energy(random_similarities(n=4, k=3), 0.05, top_c=top_c)


def test_delta_energy_accepts_numpy_integer_top_c():
    s = random_similarities(n=4, k=3)
    torch.testing.assert_close(scores.delta_energy(s, 0.05, top_c=np.int64(2)), scores.delta_energy(s, 0.05, top_c=2))


def test_feature_mask_delta_energy_hand_case():
    image = torch.tensor([[3.0, 4.0, 0.0, 0.0]])  # normalised: [0.6, 0.8, 0, 0]
    text = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    tau = 0.1
    # Predicted class 1 (cosine 0.8); the top contribution is dimension 1, which is masked (ρ·D = 1).
    masked = torch.tensor([[1.0, 0.0, 0.0]])  # renormalised [1, 0, 0, 0] against the three text rows
    original = torch.tensor([[0.6, 0.8, 0.0]])
    expected = scores.free_energy(masked, tau) - scores.free_energy(original, tau)
    result = scores.delta_energy_feature_mask(image, text, tau, mask_fraction=0.25, renormalize=True)
    torch.testing.assert_close(result, expected)

    unnormalised = torch.tensor([[0.6, 0.0, 0.0]])
    expected_raw = scores.free_energy(unnormalised, tau) - scores.free_energy(original, tau)
    result_raw = scores.delta_energy_feature_mask(image, text, tau, mask_fraction=0.25, renormalize=False)
    torch.testing.assert_close(result_raw, expected_raw)


def test_feature_mask_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="feature dimensions differ"):
        scores.delta_energy_feature_mask(torch.randn(2, 4), torch.randn(3, 5), 0.01)
    with pytest.raises(ValueError, match="mask_fraction"):
        scores.delta_energy_feature_mask(torch.randn(2, 4), torch.randn(3, 4), 0.01, mask_fraction=1.0)


def test_reported_temperature_skips_max_cosine():
    assert scores.reported_temperature("max_cosine", 0.07) is None
    assert scores.reported_temperature("energy", 0.07) == 0.07
    assert scores.reported_temperature("mcm", 0.07) == scores.SCORE_DEFAULT_TEMPERATURES["mcm"]
    assert scores.reported_temperature("msp", 0.07, override=0.5) == 0.5
