"""KL and SA-Reg: exact values, scaling and the K cut-off."""

import pytest
import torch

from diversegrpo.regularizers import kl, needs_reference, penalty, sa_reg


def test_sa_reg_is_mean_squared_distance_before_k_and_exactly_zero_after():
    mean, ref = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    torch.testing.assert_close(sa_reg(mean, ref, step_index=0, num_constrained_steps=3), torch.full((2,), 0.25))
    torch.testing.assert_close(sa_reg(mean, ref, step_index=2, num_constrained_steps=3), torch.full((2,), 0.25))
    for step in (3, 4, 9):
        assert torch.equal(sa_reg(mean, ref, step, 3), torch.zeros(2))


def test_kl_is_the_exact_gaussian_kl():
    mean, ref = torch.zeros(1, 5), torch.full((1, 5), 0.3)
    std = torch.tensor([0.2])
    p, q = torch.distributions.Normal(mean, std), torch.distributions.Normal(ref, std)
    expected = torch.distributions.kl_divergence(p, q).mean(dim=1)
    torch.testing.assert_close(kl(mean, ref, std), expected)


def test_kl_scales_inversely_with_step_variance():
    mean, ref = torch.zeros(1, 8), torch.ones(1, 8)
    # std = std_t * sqrt(-dt): halving std_t quadruples the penalty, halving -dt doubles it
    base = kl(mean, ref, torch.tensor([0.4 * 0.1**0.5]))
    assert kl(mean, ref, torch.tensor([0.2 * 0.1**0.5])).item() == pytest.approx(4 * base.item(), rel=1e-5)
    assert kl(mean, ref, torch.tensor([0.4 * 0.05**0.5])).item() == pytest.approx(2 * base.item(), rel=1e-5)
    # SA-Reg does not depend on the variance at all
    assert sa_reg(mean, ref, 0, 1).item() == 1.0


def test_reference_pass_is_skipped_where_the_penalty_is_zero():
    assert not needs_reference("none", 0, 5)
    assert needs_reference("sa_reg", 1, 2) and not needs_reference("sa_reg", 2, 2)
    assert needs_reference("kl", 9, 0)
    zero = penalty("sa_reg", torch.ones(2, 3), None, torch.ones(2), step_index=4, num_constrained_steps=2)
    assert torch.equal(zero, torch.zeros(2))
