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
