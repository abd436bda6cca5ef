"""Reward-model losses: L_map (L1 / BCE, class balancing), L_rank (chain hinge), L_align."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finpercep.rm.losses import (
    align_loss,
    cross_rank_loss,
    level_loss,
    map_area_loss,
    map_bce_loss,
    map_l1_loss,
    rank_loss,
)


def test_map_l1_plain_is_mean_absolute_error() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(3, 1, 8, 8, generator=g)
    target = torch.rand(3, 1, 8, 8, generator=g)
    assert torch.allclose(map_l1_loss(pred, target), (pred - target).abs().mean())
    assert float(map_l1_loss(target, target, balance=1.0)) == 0.0


def test_map_l1_balance_weighs_small_defects_like_the_background() -> None:
    target = torch.zeros(1, 1, 10, 10)
    target[0, 0, 0, 0] = 1.0  # one defect pixel out of 100
    pred = torch.zeros_like(target)  # misses it entirely
    plain = map_l1_loss(pred, target, balance=0.0)
    balanced = map_l1_loss(pred, target, balance=1.0)
    assert float(plain) == pytest.approx(0.01)
    assert float(balanced) == pytest.approx(0.5)  # half the weight on the (fully wrong) defect class
    assert float(map_l1_loss(pred, target, balance=0.5)) == pytest.approx(0.5 * 0.01 + 0.5 * 0.5)


def test_map_l1_balance_falls_back_to_plain_mean_without_defects() -> None:
    target = torch.zeros(2, 1, 4, 4)
    pred = torch.full_like(target, 0.25)
    assert float(map_l1_loss(pred, target, balance=1.0)) == pytest.approx(0.25)


def test_map_bce_matches_torch_and_is_minimal_at_the_target() -> None:
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 1, 6, 6, generator=g) * 0.8 + 0.1
    logits = torch.randn(2, 1, 6, 6, generator=g)
    ref = F.binary_cross_entropy(torch.sigmoid(logits), target)
    assert torch.allclose(map_bce_loss(logits, target), ref, atol=1e-5)
    z = torch.logit(target).requires_grad_(True)
    map_bce_loss(z, target).backward()
    assert z.grad.abs().max() < 1e-6


def test_map_area_loss_compares_means_not_layouts() -> None:
    target = torch.zeros(2, 1, 4, 4)
    target[0, :, :2] = 1.0  # image 0: top half degraded (mean 0.5); image 1: clean
    moved = target.flip(2)  # the same amount in the wrong place: no area error, large L1 error
    assert map_area_loss(moved, target).item() == pytest.approx(0.0)
    assert map_l1_loss(moved, target).item() == pytest.approx(0.5)
    flat = torch.full_like(target, 0.1)  # |0.1 - 0.5| and |0.1 - 0| averaged over the batch
    assert map_area_loss(flat, target).item() == pytest.approx(0.25)
    pred = flat.clone().requires_grad_(True)
    map_area_loss(pred, target).backward()
    assert (pred.grad[0] < 0).all() and (pred.grad[1] > 0).all()  # raise image 0, lower image 1


def test_map_losses_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        map_l1_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match="shapes differ"):
        map_bce_loss(torch.zeros(1, 1, 4, 4), torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="shapes differ"):
        map_area_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 5, 4))


def test_rank_loss_zero_when_ordered_with_margins() -> None:
    scores = torch.tensor([[1.0, 0.8, 0.6, 0.4]])
    assert float(rank_loss(scores, (0.1, 0.1, 0.1))) == 0.0
    assert float(rank_loss(scores, (0.15, 0.15, 0.15))) == 0.0
    assert float(rank_loss(scores, (0.3, 0.1, 0.1))) > 0.0


def test_rank_loss_value_with_cumulative_margins() -> None:
    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    margins = (0.1, 0.2, 0.3)
    # pairs: (0,1)=.1 (0,2)=.3 (0,3)=.6 (1,2)=.2 (1,3)=.5 (2,3)=.3 -> mean = 2.0 / 6
    assert float(rank_loss(scores, margins)) == pytest.approx(2.0 / 6)
    assert float(rank_loss(scores, margins, all_pairs=False)) == pytest.approx(0.6 / 3)


def test_rank_loss_gradient_pushes_better_images_up() -> None:
    scores = torch.tensor([[0.0, 0.5, 0.2, 0.1]], requires_grad=True)  # GT scored below the small swap
    rank_loss(scores, (0.1, 0.1, 0.1)).backward()
    assert scores.grad[0, 0] < 0  # gradient descent raises the GT score
    assert scores.grad[0, 1] > 0  # and lowers the over-rated small swap


def test_rank_loss_skips_invalid_members() -> None:
    scores = torch.tensor([[1.0, 5.0, 0.5, 0.0]])  # member 1 badly misranked ...
    valid = torch.tensor([[True, False, True, True]])  # ... but missing from the chain
    assert float(rank_loss(scores, (0.1, 0.1, 0.1), valid)) == 0.0
    assert float(rank_loss(scores, (0.1, 0.1, 0.1))) > 0.0
    none_valid = torch.zeros(1, 4, dtype=torch.bool)
    assert float(rank_loss(scores, (0.1, 0.1, 0.1), none_valid)) == 0.0


def test_rank_losses_skip_pairs_whose_areas_contradict_the_chain() -> None:
    # chain 0's crop misses its small swap: that "small" image is its GT (same score, area 0)
    scores = torch.tensor([[0.7, 0.7, 0.4, 0.2], [0.75, 0.55, 0.4, 0.2]])
    margins = (0.1, 0.1, 0.1)
    areas = torch.tensor([[0.0, 0.0, 0.4, 1.0], [0.0, 0.1, 0.4, 1.0]])
    assert float(rank_loss(scores, margins)) == pytest.approx(0.1 / 12)  # (GT, small) of chain 0 counts
    assert float(rank_loss(scores, margins, areas=areas)) == 0.0  # ... unless the areas say they are equal
    # across chains the one violated pair is chain 1's GT over chain 0's clean "small" (0.75 - 0.7 < 0.1)
    assert float(cross_rank_loss(scores, margins)) == pytest.approx(0.05 / 12)
    assert float(cross_rank_loss(scores, margins, areas=areas)) == 0.0
    flipped = torch.tensor([[0.0, 0.5, 0.2, 1.0]])  # a crop where the large swap shows less than the small
    assert float(rank_loss(torch.tensor([[1.0, 0.5, 0.6, 0.0]]), margins, areas=flipped)) == 0.0
    assert float(rank_loss(torch.tensor([[1.0, 0.5, 0.6, 0.0]]), margins)) > 0.0
    with pytest.raises(ValueError, match="areas"):
        rank_loss(scores, margins, areas=areas[:1])
    with pytest.raises(ValueError, match="areas"):
        cross_rank_loss(scores, margins, areas=areas[:, :3])


def test_rank_loss_checks_arguments() -> None:
    with pytest.raises(ValueError, match="margins"):
        rank_loss(torch.zeros(2, 4), (0.1, 0.1))
    with pytest.raises(ValueError, match="chains"):
        rank_loss(torch.zeros(4), (0.1, 0.1, 0.1))


def test_cross_rank_loss_orders_roles_across_chains() -> None:
    # each chain is ordered, but chain 1 sits entirely below chain 0: its GT is under chain 0's SR
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0], [0.9, 0.6, 0.3, 0.0]], requires_grad=True)
    assert float(rank_loss(scores, (0.1, 0.1, 0.1))) == 0.0
    loss = cross_rank_loss(scores, (0.1, 0.1, 0.1))
    # violated cross pairs (chain 1 member i vs chain 0 member j > i):
    # (g1,s0),(g1,l0),(g1,r0),(s1,l0),(s1,r0),(l1,r0) with hinges 2.2, 1.3, .4, 1.5, .6, .8: 6.8 over 12 pairs
    assert float(loss.detach()) == pytest.approx(6.8 / 12)
    loss.backward()
    assert scores.grad[1, 0] < 0 and scores.grad[0, 3] > 0  # lift chain 1's GT, push chain 0's SR down
    aligned = torch.tensor([[4.0, 3.0, 2.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    assert float(cross_rank_loss(aligned, (0.1, 0.1, 0.1))) == 0.0
    assert float(cross_rank_loss(scores[:1].detach(), (0.1, 0.1, 0.1))) == 0.0  # one chain: no cross pairs
    valid = torch.tensor([[True] * 4, [False, True, True, True]])
    masked = cross_rank_loss(scores.detach(), (0.1, 0.1, 0.1), valid)
    assert float(masked) == pytest.approx((1.5 + 0.6 + 0.8) / 9)


def test_level_loss_pulls_every_score_to_minus_its_degradation() -> None:
    # two images whose ranks are right but whose levels are not: the hinge is silent, L_level is not
    scores = torch.tensor([0.5, 0.3], requires_grad=True)
    degradation = torch.tensor([0.0, 0.8], requires_grad=True)
    loss = level_loss(scores, degradation, beta=0.05)
    # Huber: |0.5 - 0| and |0.3 + 0.8| both exceed beta -> (0.5 - 0.025 + 1.1 - 0.025) / 2
    assert float(loss.detach()) == pytest.approx((0.475 + 1.075) / 2)
    loss.backward()
    assert degradation.grad is None  # the target is fixed
    assert scores.grad[0] > 0 and scores.grad[1] > 0  # both pushed down (descent goes against the gradient)
    assert float(level_loss(torch.tensor([0.0, -0.8]), torch.tensor([0.0, 0.8]))) == 0.0
    near = level_loss(torch.tensor([0.01]), torch.tensor([0.0]), beta=0.05)
    assert float(near) == pytest.approx(0.5 * 0.01**2 / 0.05)  # quadratic inside beta
    with pytest.raises(ValueError, match="beta"):
        level_loss(scores, degradation, beta=0.0)
    with pytest.raises(ValueError, match="shape"):
        level_loss(torch.zeros(3), torch.zeros(2))


def test_align_loss_is_mse_to_a_fixed_reference() -> None:
    s = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    ref = torch.tensor([1.0, 1.0, 1.0], requires_grad=True)
    loss = align_loss(s, ref)
    assert float(loss.detach()) == pytest.approx((0 + 1 + 4) / 3)
    loss.backward()
    assert ref.grad is None  # the previous stage's scores are a constant target
    assert torch.allclose(s.grad, 2 * (s - ref).detach() / 3)
    assert float(align_loss(ref.detach(), ref.detach())) == 0.0
    assert float(align_loss(s.detach(), ref.detach(), scale=2.0)) == pytest.approx((0 + 1 + 4) / 3 / 4)
    with pytest.raises(ValueError, match="scale"):
        align_loss(s, ref, scale=0.0)
    with pytest.raises(ValueError):
        align_loss(torch.zeros(3), torch.zeros(4))
