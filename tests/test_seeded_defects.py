"""Hand-computed checks written for seeded defects of scripts/mutation_check.py that no other test caught:
each test names its defect. Values come from the formulas (docs/methods.md), never from the code's output."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from longtail.data.samplers import EpochSampler
from longtail.losses import CrossEntropyLoss, GALALoss
from longtail.priors import log_prior


def test_cross_entropy_hand_value():
    """ce_loss_smoothed: CE(z, y) = -log softmax(z)_y, averaged over the batch, nothing else."""
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    targets = torch.tensor([0, 2])
    first = -(1.0 - math.log(math.e ** 1 + math.e ** 2 + math.e ** 0))
    second = -(3.0 - math.log(2 + math.e ** 3))
    assert CrossEntropyLoss()(logits, targets).item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_log_prior_is_the_log_of_the_class_frequencies():
    """log_prior_of_counts: log pi_c = log(n_c / sum n) (+1e-12), not the log of the counts (a constant shift that
    CE and the argmax ignore, but an exported la bias or a tau-scaled adjustment would not)."""
    got = log_prior([1, 3])
    assert torch.allclose(got, torch.tensor([math.log(0.25), math.log(0.75)]), atol=1e-6)


def test_class_balanced_draws_reach_every_member_of_a_class():
    """class_balanced_first_member: a class is picked uniformly, then a member of it uniformly. With classes of
    2 and 8 images over 50 epochs of 10 draws, each member of the large class is expected 500 / 2 / 8 = 31 times
    (drawn at least 10 times each; a draw stuck on the first member leaves 7 of them at 0)."""
    labels = torch.tensor([0, 0] + [1] * 8)
    sampler = EpochSampler(labels, seed=5, class_balanced=True)
    draws = []
    for epoch in range(50):
        sampler.set_epoch(epoch)
        draws += sampler.global_order().tolist()
    counts = torch.bincount(torch.tensor(draws), minlength=10)
    assert counts[2:].min() >= 10 and counts[:2].min() >= 50  # each of the 2 small-class images ~ 125 times


def test_each_epoch_has_its_own_order():
    """epoch_order_ignores_epoch: epoch e's shuffle is seeded by (seed, e); two epochs of 20 images in the same
    order would happen by chance once in 20! shuffles."""
    sampler = EpochSampler(torch.arange(20) % 4, seed=3)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(sampler.global_order().tolist())
    assert orders[0] != orders[1] != orders[2] and sorted(orders[0]) == list(range(20))
    sampler.set_epoch(1)
    assert sampler.global_order().tolist() == orders[1]  # and the same epoch, the same order (resume)


def test_a_resumed_stateful_loss_continues_its_statistics():
    """resume_drops_loss_state: a resume loads the loss's statistics from last.pt (GALA's accumulators), so the
    resumed run continues them instead of starting from zero."""
    from longtail.config import load_config
    from longtail.engine import _restore
    from longtail.optim import build_optimizer

    cfg = load_config(None, ["loss.name=gala"])
    model = torch.nn.Linear(3, 2)
    saved = {"pos_acc": torch.tensor([0.5, 0.25], dtype=torch.float64), "neg_acc": torch.tensor([0.5, 0.75], dtype=torch.float64),
             "theta": torch.tensor([2.0, 1.0], dtype=torch.float64), "phi": torch.tensor([1.0, 3.0], dtype=torch.float64)}
    ckpt = {"model": model.state_dict(), "optimizer": build_optimizer(model, cfg.train).state_dict(), "loss": saved,
            "progress": {"epoch": 1, "best_score": 1.0, "best_epoch": 1, "history": [{}]}}
    fresh = GALALoss(2)
    _restore(ckpt, Path("last.pt"), torch.nn.Linear(3, 2), build_optimizer(torch.nn.Linear(3, 2), cfg.train), fresh)
    for name, value in saved.items():
        assert torch.equal(getattr(fresh, name), value), name


def test_lgla_cuts_only_when_the_running_sum_passes_the_target():
    """lgla_subset_cut: counts (4, 3, 2), 2 subsets: target = 9 // 2 = 4. Ascending, the running sum is 2, then
    5 > 4: cut at count 3 and restart; then 4, which equals the target and does not pass it: no second cut. So one
    threshold (3): the class of 4 images is above it (subset 0), the others form the tail subset 1. A cut at
    'reaches the target' would make two thresholds for two subsets, an error."""
    from longtail.losses.lgla import equal_mass_subsets

    assert equal_mass_subsets([4, 3, 2], 2).tolist() == [0, 1, 1]


def test_a_forward_profile_spreads_the_factor_over_c_minus_1_steps():
    """prior_profile_exponent: forward-100 over 3 classes in training order: q_r proportional to 100^(-r / 2),
    i.e. 1, 1/10, 1/100, normalised by 1.11; the least frequent class gets exactly 1/IF of the most frequent."""
    from longtail.priors import parse_prior, prior_weights

    q = prior_weights(parse_prior("forward-100"), [50, 10, 30], ["a", "b", "c"])  # training order: a, c, b
    assert torch.allclose(q, torch.tensor([1.0, 0.01, 0.1], dtype=torch.float64) / 1.11, rtol=1e-12)


def test_a_confidence_on_a_bin_edge_belongs_to_the_lower_bin():
    """ece_floor_bins: the bins are (lower, upper]. With 4 bins, a confidence of exactly 0.5 is in (0.25, 0.5], bin
    1, and 0.75 in (0.5, 0.75], bin 2 (both exact in binary, so no rounding decides)."""
    from longtail.calibration import reliability_bins

    probs = torch.tensor([[0.5, 0.25, 0.25], [0.75, 0.125, 0.125]], dtype=torch.float64)
    table = reliability_bins(probs, torch.tensor([0, 1]), bins=4)
    assert table["count"] == [0, 1, 1, 0]
    assert table["confidence"] == [None, 0.5, 0.75, None] and table["accuracy"] == [None, 1.0, 0.0, None]
