import pytest
import torch
import torch.nn.functional as F

from dsenergy import losses


def random_batch(n=64, k=10, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    s = (torch.rand(n, k, generator=generator, dtype=dtype) * 2 - 1) * 0.4
    y = torch.randint(0, k, (n,), generator=generator)
    return s, y


@pytest.mark.parametrize("top_c", [1, 2, 4])
@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0])
def test_lower_bound_below_exact(top_c, tau):
    for seed in range(5):
        s, y = random_batch(seed=seed)
        bound = losses.ebm_lower_bound(s, y, tau, top_c=top_c)
        exact = losses.exact_delta_energy_target(s, y, tau, top_c=top_c)
        assert (bound <= exact + 1e-12).all()


def test_lower_bound_tight_when_target_dominates():
    s, y = random_batch(n=32, k=8, seed=1)
    s[torch.arange(32), y] = 0.9  # every other similarity is at most 0.4
    tau = 0.01
    bound = losses.ebm_lower_bound(s, y, tau)
    exact = losses.exact_delta_energy_target(s, y, tau)
    gap = exact - bound
    assert gap.max() < 1e-12
    assert gap.min() >= 0


def test_lower_bound_not_tight_when_classes_tie():
    s = torch.full((1, 4), 0.3, dtype=torch.float64)
    y = torch.tensor([0])
    tau = 0.1
    gap = losses.exact_delta_energy_target(s, y, tau) - losses.ebm_lower_bound(s, y, tau)
    # τ log Σ_k e^{s_k/τ} − s_y = τ log 4 when all K = 4 similarities are equal.
    torch.testing.assert_close(gap, torch.tensor([tau * torch.log(torch.tensor(4.0)).item()], dtype=torch.float64))


def test_lower_bound_hand_case():
    s = torch.tensor([[0.5, 0.2, 0.1]], dtype=torch.float64)
    y = torch.tensor([0])
    tau, a = 0.1, 0.0
    expected = 0.5 - tau * torch.log(torch.exp(torch.tensor(0.2 / tau)) + torch.exp(torch.tensor(0.1 / tau)) + 1.0)
    torch.testing.assert_close(losses.ebm_lower_bound(s, y, tau, crop_value=a), expected.reshape(1).double())


def test_top_c_crops_target_and_largest_others():
    s = torch.tensor([[0.1, 0.5, 0.4, 0.2]], dtype=torch.float64)
    y = torch.tensor([0])  # the target is not the arg-max
    tau = 0.1
    # T = {0, 1}: the target plus the largest other class.
    kept = torch.exp(torch.tensor([0.4, 0.2], dtype=torch.float64) / tau).sum() + 2.0
    expected = 0.1 - tau * torch.log(kept)
    torch.testing.assert_close(losses.ebm_lower_bound(s, y, tau, top_c=2), expected.reshape(1))


@pytest.mark.parametrize("bound", ["lower", "exact"])
@pytest.mark.parametrize("top_c", [1, 3])
def test_gradients_match_finite_differences(bound, top_c):
    s, y = random_batch(n=6, k=5, seed=2)
    s.requires_grad_(True)

    def objective(x):
        return losses.combined_loss(x, y, 0.1, ebm_weight=2.0, top_c=top_c, bound=bound).total

    assert torch.autograd.gradcheck(objective, (s,), eps=1e-6, atol=1e-6)


def test_combined_loss_parts():
    s, y = random_batch(seed=3)
    tau, weight = 0.05, 3.0
    parts = losses.combined_loss(s, y, tau, ebm_weight=weight, top_c=2)
    torch.testing.assert_close(parts.ce, F.cross_entropy(s / tau, y))
    torch.testing.assert_close(parts.ebm, -losses.ebm_lower_bound(s, y, tau, top_c=2).mean())
    torch.testing.assert_close(parts.total, parts.ce + weight * parts.ebm)


def test_zero_weight_is_plain_cross_entropy():
    s, y = random_batch(seed=4, dtype=torch.float32)
    s.requires_grad_(True)
    parts = losses.combined_loss(s, y, 0.01, ebm_weight=0.0)
    assert torch.equal(parts.total, F.cross_entropy(s / 0.01, y))
    (grad_combined,) = torch.autograd.grad(parts.total, s)
    (grad_ce,) = torch.autograd.grad(F.cross_entropy(s / 0.01, y), s)
    assert torch.equal(grad_combined, grad_ce)


def test_ebm_loss_increases_delta_energy_under_gradient_descent():
    s, y = random_batch(n=16, k=6, seed=5)
    s.requires_grad_(True)
    tau = 0.05
    before = losses.exact_delta_energy_target(s, y, tau).mean().item()
    optimizer = torch.optim.SGD([s], lr=0.01)
    for _ in range(50):
        optimizer.zero_grad()
        losses.ebm_loss(s, y, tau).backward()
        optimizer.step()
    after = losses.exact_delta_energy_target(s, y, tau).mean().item()
    assert after > before


def test_bad_inputs_raise_named_errors():
    s, y = random_batch(n=4, k=3)
    with pytest.raises(ValueError, match="targets must be class indices"):
        losses.ebm_loss(s, torch.tensor([0, 1, 2, 3]), 0.1)
    with pytest.raises(ValueError, match=r"targets must have shape \(N,\)"):
        losses.ebm_loss(s, y[:2], 0.1)
    with pytest.raises(ValueError, match="bound"):
        losses.ebm_loss(s, y, 0.1, bound="upper")
    with pytest.raises(ValueError, match="ebm_weight"):
        losses.combined_loss(s, y, 0.1, ebm_weight=-1.0)
    with pytest.raises(ValueError, match="top_c"):
        losses.ebm_lower_bound(s, y, 0.1, top_c=0)


def test_fractional_targets_rejected():
    s, _ = random_batch(n=5, k=4)
    with pytest.raises(TypeError, match="integer tensor of class indices"):
        losses.ebm_lower_bound(s, torch.tensor([0.5, 1.0, 2.0, 3.0, 0.0]), 0.07)


def test_fractional_top_c_rejected():
    s, y = random_batch(n=4, k=3)
    with pytest.raises(TypeError, match="top_c must be an integer"):
        losses.ebm_lower_bound(s, y, 0.07, top_c=1.5)
