"""Each loss pinned to hand-computed values or identities (not to its own code)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longtail.catalog import names
from longtail.config import LossConfig
from longtail.errors import LongtailError
from longtail.losses import (
    BaGMarLoss, BalancedSoftmaxLoss, CrossEntropyLoss, GALALoss, LDAMLoss, LogitAdjustedLoss, create_loss,
)
from longtail.losses.ldam import class_balanced_weights, ldam_margins

COUNTS = [500, 120, 30, 5]


def _ce(row: list[float], y: int) -> float:
    """Plain-Python softmax cross-entropy of one row."""
    top = max(row)
    return -(row[y] - top - math.log(sum(math.exp(v - top) for v in row)))


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v - max(row)) for v in row]
    return [v / sum(e) for v in e]


# ----------------------------------------------------------------------------- table


@pytest.mark.parametrize("name", sorted(names("loss")))
def test_every_loss_is_finite_differentiable_and_keeps_its_state(name):
    cfg = LossConfig(name=name, drw_epoch=1, num_experts=2)  # COUNTS cannot be cut into 2 local subsets
    loss = create_loss(cfg, COUNTS)
    loss.set_epoch(2)
    # multi-expert losses read (E, B, C) expert logits, the others (B, C); cosine-scale values for LGLA
    shape = (2, 16, len(COUNTS)) if loss.input_key == "expert_logits" else (16, len(COUNTS))
    logits = torch.rand(shape, generator=torch.Generator().manual_seed(0)).mul(20).sub(10).requires_grad_()
    targets = torch.arange(16) % len(COUNTS)
    value = loss(logits, targets)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    clone = create_loss(cfg, COUNTS)
    clone.load_state_dict(loss.state_dict())
    clone.set_epoch(2)
    assert torch.allclose(clone(logits.detach(), targets), loss(logits.detach(), targets), atol=1e-6)


def test_table_names_are_the_contract():
    assert set(names("loss")) >= {"ce", "la", "gala", "bagmar", "balanced_softmax", "ldam_drw"}


# ----------------------------------------------------------------------------- logit adjustment


def test_logit_adjusted_loss_hand_value():
    # counts 3:1 -> pi = (3/4, 1/4); z = 0 -> CE(log pi, y=1) = -log(1/4)
    loss = LogitAdjustedLoss([3, 1], tau=1.0)
    assert loss(torch.zeros(1, 2), torch.tensor([1])).item() == pytest.approx(math.log(4), abs=1e-6)
    # tau = 2 -> logits (2 log 3/4, 2 log 1/4) -> p_1 = (1/16) / (9/16 + 1/16) = 1/10
    loss = LogitAdjustedLoss([3, 1], tau=2.0)
    assert loss(torch.zeros(1, 2), torch.tensor([1])).item() == pytest.approx(math.log(10), abs=1e-5)


def test_logit_adjusted_at_tau_1_equals_balanced_softmax_values_and_gradients():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(32, 4, generator=g, dtype=torch.float32)
    targets = torch.randint(0, 4, (32,), generator=g)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    la, bs = LogitAdjustedLoss(COUNTS, tau=1.0)(a, targets), BalancedSoftmaxLoss(COUNTS)(b, targets)
    la.backward()
    bs.backward()
    assert la.item() == pytest.approx(bs.item(), abs=1e-5)
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_logit_adjusted_at_tau_0_is_cross_entropy():
    logits, targets = torch.randn(8, 4), torch.arange(8) % 4
    assert torch.allclose(LogitAdjustedLoss(COUNTS, tau=0.0)(logits, targets), CrossEntropyLoss()(logits, targets))


# ----------------------------------------------------------------------------- GALA / BaGMar

EPS = 1e-3


def _reference_gala(batches, num_classes, lambda1, lambda2):
    """methods.md step 3 written out literally: the C x C matrices A, P, Q as nested lists."""
    A = [[0.0] * num_classes for _ in range(num_classes)]
    P = [[0.0] * num_classes for _ in range(num_classes)]
    Q = [[0.0] * num_classes for _ in range(num_classes)]
    losses = []
    for logits, labels in batches:
        theta = [sum(P[j]) for j in range(num_classes)]
        phi = [sum(Q[j][k] for j in range(num_classes)) for k in range(num_classes)]
        B = len(labels)
        total = 0.0
        probs = []
        for z, y in zip(logits, labels):
            f = [z[c] + lambda1 * math.log(theta[c] + EPS) - lambda2 * math.log(phi[y] + EPS) for c in range(num_classes)]
            total += _ce(f, y) / B
            probs.append(_softmax(f))
        losses.append(total)
        for p, y in zip(probs, labels):
            for c in range(num_classes):
                A[c][y] += ((1 - p[c]) if c == y else p[c]) / B
        for j in range(num_classes):
            for k in range(num_classes):
                if j == k:
                    P[j][k] += A[j][k]
                else:
                    Q[j][k] += A[j][k]
    theta = [sum(P[j]) for j in range(num_classes)]
    phi = [sum(Q[j][k] for j in range(num_classes)) for k in range(num_classes)]
    return theta, phi, losses


# step 1: softmax rows (0.5, 0.25, 0.25) with label 0 and (0.2, 0.6, 0.2) with label 1 (logits = log p)
STEP1 = ([[math.log(0.5), math.log(0.25), math.log(0.25)], [math.log(0.2), math.log(0.6), math.log(0.2)]], [0, 1])
STEP2 = ([[0.3, -0.2, 1.0], [1.5, 0.1, -0.4], [0.0, 0.7, 0.2]], [2, 0, 0])


def test_gala_statistics_after_the_first_step_by_hand():
    loss = GALALoss(3, lambda1=1.2, lambda2=0.9)
    loss(torch.tensor(STEP1[0], dtype=torch.float64), torch.tensor(STEP1[1]))
    # At step 1 the statistics are zero, so p = softmax(z). With B = 2:
    #   sample 1 (y=0): |g| = ((1-0.5)/2, 0.25/2, 0.25/2) = (0.25, 0.125, 0.125) -> column 0 of A
    #   sample 2 (y=1): |g| = (0.2/2, (1-0.6)/2, 0.2/2) = (0.1, 0.2, 0.1)       -> column 1 of A
    # diag(A) = (0.25, 0.2, 0); column sums of offdiag(A) = (0.125 + 0.125, 0.1 + 0.1, 0) = (0.25, 0.2, 0)
    assert loss.theta.tolist() == pytest.approx([0.25, 0.2, 0.0], abs=1e-12)
    assert loss.phi.tolist() == pytest.approx([0.25, 0.2, 0.0], abs=1e-12)


def test_gala_statistics_after_two_steps_match_the_literal_accumulators():
    loss = GALALoss(3, lambda1=1.2, lambda2=0.9)
    values = [loss(torch.tensor(z, dtype=torch.float64), torch.tensor(y)).item() for z, y in (STEP1, STEP2)]
    theta, phi, ref_losses = _reference_gala([STEP1, STEP2], 3, 1.2, 0.9)
    assert loss.theta.tolist() == pytest.approx(theta, abs=1e-12)
    assert loss.phi.tolist() == pytest.approx(phi, abs=1e-12)
    assert values == pytest.approx(ref_losses, abs=1e-6)
    # a running sum of running sums: after step 2, theta = 2 * a1 + a2 (a_t the step's diag(A) contribution)
    p2 = [_softmax([z[c] + 1.2 * math.log([0.25, 0.2, 0.0][c] + EPS) for c in range(3)]) for z in STEP2[0]]
    a2 = [0.0, 0.0, 0.0]
    for p, y in zip(p2, STEP2[1]):
        a2[y] += (1 - p[y]) / 3
    assert loss.theta.tolist() == pytest.approx([2 * 0.25 + a2[0], 2 * 0.2 + a2[1], a2[2]], abs=1e-12)
    assert torch.allclose(loss.theta, loss.phi, atol=1e-12)  # softmax gradients sum to zero


def test_gala_lambda2_leaves_the_released_loss_unchanged():
    with_l2, without = GALALoss(3, lambda1=1.2, lambda2=0.9), GALALoss(3, lambda1=1.2, lambda2=0.0)
    for z, y in (STEP1, STEP2, STEP2):
        a = torch.tensor(z, requires_grad=True)
        b = torch.tensor(z, requires_grad=True)
        la, lb = with_l2(a, torch.tensor(y)), without(b, torch.tensor(y))
        la.backward()
        lb.backward()
        assert la.item() == pytest.approx(lb.item(), abs=1e-6)
        assert torch.allclose(a.grad, b.grad, atol=1e-6)
    assert with_l2.theta.sum() > 0  # the comparison ran with non-zero statistics


def test_gala_eval_mode_is_plain_cross_entropy_and_accumulates_nothing():
    loss = GALALoss(3, lambda1=1.2, lambda2=0.9)
    loss(torch.tensor(STEP1[0]), torch.tensor(STEP1[1]))
    before = loss.state_dict()
    loss.eval()
    z, y = torch.tensor(STEP2[0]), torch.tensor(STEP2[1])
    assert loss(z, y).item() == pytest.approx(F.cross_entropy(z, y).item(), abs=1e-7)
    assert all(torch.equal(before[k], v) for k, v in loss.state_dict().items())


def test_gala_paper_variant_uses_single_sums_and_leaves_the_target_logit_alone():
    loss = GALALoss(3, lambda1=1.2, lambda2=0.9, variant="paper")
    theta, phi = [0.0] * 3, [0.0] * 3
    for z_rows, labels in (STEP1, STEP2):
        loss(torch.tensor(z_rows, dtype=torch.float64), torch.tensor(labels))
        # paper: F_j = z_j + l1 log theta_j - l2 log phi_y for j != y, F_y = z_y; theta, phi plain running sums
        step_pos, step_neg = [0.0] * 3, [0.0] * 3
        for z, y in zip(z_rows, labels):
            f = [z[c] if c == y else z[c] + 1.2 * math.log(theta[c] + EPS) - 0.9 * math.log(phi[y] + EPS) for c in range(3)]
            p = _softmax(f)
            step_pos[y] += (1 - p[y]) / len(labels)
            step_neg[y] += sum(p[c] for c in range(3) if c != y) / len(labels)
        theta = [a + b for a, b in zip(theta, step_pos)]
        phi = [a + b for a, b in zip(phi, step_neg)]
    assert loss.theta.tolist() == pytest.approx(theta, abs=1e-12)
    assert loss.phi.tolist() == pytest.approx(phi, abs=1e-12)
    z = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    adjusted = loss.adjusted_logits(z, torch.tensor([1]))[0].tolist()
    assert adjusted[1] == pytest.approx(0.2)
    for j in (0, 2):
        assert adjusted[j] == pytest.approx(z[0, j].item() + 1.2 * math.log(theta[j] + EPS) - 0.9 * math.log(phi[1] + EPS))


def test_gala_statistics_are_buffers_restored_from_a_state_dict():
    loss = GALALoss(3)
    loss(torch.tensor(STEP1[0]), torch.tensor(STEP1[1]))
    state = loss.state_dict()
    assert {"theta", "phi", "pos_acc", "neg_acc"} <= set(state)
    fresh = GALALoss(3)
    fresh.load_state_dict(state)
    z, y = torch.tensor(STEP2[0]), torch.tensor(STEP2[1])
    assert fresh(z, y).item() == pytest.approx(loss(z, y).item(), abs=1e-7)
    assert torch.equal(fresh.theta, loss.theta)


def test_gala_statistics_need_no_autograd():
    loss = GALALoss(3)
    with torch.no_grad():
        loss(torch.tensor(STEP1[0]), torch.tensor(STEP1[1]))
    assert loss.theta.sum() > 0 and not loss.theta.requires_grad


def test_bagmar_is_gala_with_unit_lambdas():
    # against the literal accumulators of the released code at lambda1 = lambda2 = 1, not against GALALoss
    bag = create_loss(LossConfig(name="bagmar"), [3, 2, 1])
    assert isinstance(bag, BaGMarLoss)
    values = [bag(torch.tensor(z, dtype=torch.float64), torch.tensor(y)).item() for z, y in (STEP1, STEP2)]
    theta, phi, ref_losses = _reference_gala([STEP1, STEP2], 3, 1.0, 1.0)
    assert values == pytest.approx(ref_losses, abs=1e-9)
    assert bag.theta.tolist() == pytest.approx(theta, abs=1e-12) and bag.phi.tolist() == pytest.approx(phi, abs=1e-12)
    # the second step's loss depends on lambda1 (the statistics are non-zero by then): 1.2 would differ
    assert ref_losses[1] != pytest.approx(_reference_gala([STEP1, STEP2], 3, 1.2, 1.0)[2][1], abs=1e-3)
    with pytest.raises(LongtailError, match="lambda1 = lambda2 = 1"):
        create_loss(LossConfig(name="bagmar", lambda1=1.2), [3, 2, 1])
    with pytest.raises(LongtailError, match="variant"):
        GALALoss(3, variant="typo")


# ----------------------------------------------------------------------------- LDAM-DRW


def test_ldam_margins_scale_as_n_to_the_minus_quarter():
    counts = [10000, 625, 16, 1]  # fourth roots 10, 5, 2, 1
    margins = ldam_margins(counts, max_margin=0.5).tolist()
    assert margins == pytest.approx([0.05, 0.1, 0.25, 0.5], rel=1e-6)


def test_ldam_loss_subtracts_the_scaled_margin_from_the_target_logit():
    loss = LDAMLoss([10000, 625, 16, 1], max_margin=0.5, scale=30.0)
    z = [1.0, 2.0, 0.5, -1.0]
    # target class 2 has margin 0.25 -> its logit drops by 30 * 0.25 = 7.5
    expected = _ce([1.0, 2.0, 0.5 - 7.5, -1.0], 2)
    assert loss(torch.tensor([z]), torch.tensor([2])).item() == pytest.approx(expected, abs=1e-5)


def test_ldam_drw_switches_on_class_balanced_weights_at_its_epoch():
    counts, beta = [100, 10], 0.99
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    expected = [w * 2 / sum(raw) for w in raw]
    assert class_balanced_weights(counts, beta).tolist() == pytest.approx(expected, rel=1e-6)
    loss = LDAMLoss(counts, max_margin=0.5, scale=1.0, drw_epoch=3, drw_beta=beta)
    z, y = torch.tensor([[0.2, 0.1], [0.3, -0.4]]), torch.tensor([0, 1])
    m = ldam_margins(counts, 0.5).tolist()
    per_sample = [_ce([0.2 - m[0], 0.1], 0), _ce([0.3, -0.4 - m[1]], 1)]
    loss.set_epoch(2)
    assert loss(z, y).item() == pytest.approx(sum(per_sample) / 2, abs=1e-6)
    loss.set_epoch(3)
    weighted = (expected[0] * per_sample[0] + expected[1] * per_sample[1]) / (expected[0] + expected[1])
    assert loss(z, y).item() == pytest.approx(weighted, abs=1e-6)
    assert LDAMLoss(counts, drw_epoch=None).set_epoch(500) is None  # never re-weights without a DRW epoch


def _gala_worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        loss = GALALoss(3, lambda1=1.2, lambda2=0.9)
        for z, y in GLOBAL_STEPS:
            half = len(y) // world  # this process's share of the global batch
            loss(torch.tensor(z[rank * half:(rank + 1) * half], dtype=torch.float64), torch.tensor(y[rank * half:(rank + 1) * half]))
        if rank == 0:
            torch.save({k: v.clone() for k, v in loss.state_dict().items()}, out_file)
    finally:
        dist.destroy_process_group()


# two global batches of 4 samples: 2 per process
GLOBAL_STEPS = (
    ([[0.3, -0.2, 1.0], [1.5, 0.1, -0.4], [0.0, 0.7, 0.2], [-0.5, 0.2, 0.9]], [2, 0, 0, 1]),
    ([[1.0, 0.0, -1.0], [0.2, 0.1, 0.0], [0.4, 0.4, -1.0], [0.0, -0.3, 0.6]], [0, 2, 1, 1]),
)


def test_gala_statistics_summed_over_processes_equal_one_process_on_the_global_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_gala_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "stats.pt")), nprocs=2, join=True)
    distributed = torch.load(tmp_path / "stats.pt")
    single = GALALoss(3, lambda1=1.2, lambda2=0.9)
    for z, y in GLOBAL_STEPS:
        single(torch.tensor(z, dtype=torch.float64), torch.tensor(y))
    for key in ("theta", "phi", "pos_acc", "neg_acc"):
        assert torch.allclose(distributed[key], single.state_dict()[key], atol=1e-12), key
