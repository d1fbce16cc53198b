"""Exact values for advantages and the clipped policy loss."""

import pytest
import torch

from diversegrpo.grpo import clipped_loss, group_advantages


def test_group_advantages_per_group_std():
    rewards = torch.tensor([1.0, 3.0, 10.0, 10.0, 14.0, 16.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    adv = group_advantages(rewards, groups, clip=None)
    # group 0: mean 2, std 1; group 1: std 0 -> 0 / 1e-4 = 0; group 2: mean 15, std 1
    expected = torch.tensor([-1 / 1.0001, 1 / 1.0001, 0.0, 0.0, -1 / 1.0001, 1 / 1.0001])
    torch.testing.assert_close(adv, expected)


def test_group_advantages_global_std_and_clip():
    rewards = torch.tensor([0.0, 2.0, 100.0, 102.0])
    groups = torch.tensor([5, 5, 9, 9])
    std = rewards.std(unbiased=False).item()
    adv = group_advantages(rewards, groups, global_std=True, clip=None)
    torch.testing.assert_close(adv, torch.tensor([-1, 1, -1, 1]) / (std + 1e-4))
    clipped = group_advantages(torch.tensor([0.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long), clip=1.5)
    # mean 0.25, std sqrt(3)/4: the outlier's advantage sqrt(3) = 1.73 is clipped to 1.5
    assert clipped[3].item() == pytest.approx(1.5)
    assert clipped[0].item() == pytest.approx(-0.25 / (3**0.5 / 4 + 1e-4), rel=1e-5)


def test_groups_need_not_be_contiguous():
    rewards = torch.tensor([1.0, 10.0, 3.0, 14.0])
    groups = torch.tensor([0, 1, 0, 1])
    adv = group_advantages(rewards, groups, clip=None)
    assert adv[0] < 0 < adv[2] and adv[1] < 0 < adv[3]


@pytest.mark.parametrize(
    "advantage, log_ratio, expected",
    [
        (1.0, 0.0, -1.0),  # ratio 1: plain -A
        (2.0, 0.2, -2.0 * 1.1),  # A > 0, ratio 1.221 above 1 + eps: clipped to 1.1 (pessimistic)
        (2.0, 0.05, -2.0 * 1.0512710964),  # A > 0, ratio 1.051 inside the range: unclipped
        (2.0, -0.5, -2.0 * 0.6065306597),  # A > 0, ratio below 1 - eps: unclipped (it is the max)
        (-1.0, 0.5, 1.0 * 1.6487212707),  # A < 0, ratio above 1 + eps: unclipped
        (-1.0, -0.5, 1.0 * 0.9),  # A < 0, ratio below 1 - eps: clipped to 0.9
    ],
)
def test_clipped_loss_hand_computed(advantage, log_ratio, expected):
    out = clipped_loss(torch.tensor([advantage]), torch.tensor([log_ratio]), torch.tensor([0.0]), clip_range=0.1)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.clipfrac.item() == (1.0 if abs(log_ratio) > 0.1 else 0.0)


def test_clipped_loss_gradient_is_minus_advantage_on_policy():
    log_prob = torch.zeros(3, requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    clipped_loss(adv, log_prob, torch.zeros(3), clip_range=1e-4).loss.backward()
    torch.testing.assert_close(log_prob.grad, -adv / 3)
