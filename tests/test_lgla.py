"""LGLA loss (losses/lgla.py): class subsets, local priors, AAW weights and gradients, config wiring."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longtail.config import load_config
from longtail.data import long_tailed_counts
from longtail.errors import LongtailError
from longtail.losses import LGLALoss, create_loss
from longtail.losses.lgla import equal_mass_subsets

S = 30.0


# ----------------------------------------------------------------------------- class subsets


def test_cifar100_if100_split_is_14_head_86_tail():
    counts = long_tailed_counts(500, 100, 100)  # label order = descending counts
    subset = equal_mass_subsets(counts, 2).tolist()
    assert subset == [0] * 14 + [1] * 86
    # the cut is where the ascending running sum first passes 10847 // 2 = 5423
    assert sum(counts) == 10847
    assert sum(counts[14:]) > 5423 >= sum(counts[15:])


def test_cifar10_if100_split_hand_worked():
    # ascending 50 + 83 + 139 + 232 + 387 + 645 + 1077 + 1796 = 4409 <= 6203 = 12406 // 2; + 2997 = 7406 passes
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert equal_mass_subsets(counts, 2).tolist() == [0] + [1] * 9


def test_three_subsets_restart_the_running_sum():
    # sum 36, 36 // 3 = 12. Ascending 1+2+3+4 = 10, +5 = 15 > 12: cut (tail = counts <= 5), restart;
    # 6, +7 = 13 > 12: cut (middle = counts 6, 7); the rest, count 8, is the head.
    counts = [8, 7, 6, 5, 4, 3, 2, 1]
    assert equal_mass_subsets(counts, 3).tolist() == [0, 1, 1, 2, 2, 2, 2, 2]


def test_classes_tied_with_the_cut_stay_in_the_lower_subset():
    # sum 12, 12 // 2 = 6. Ascending 2, +3 = 5, +3 = 8 > 6: cut at count 3, and both 3s are "tail".
    assert equal_mass_subsets([4, 3, 3, 2], 2).tolist() == [0, 1, 1, 1]


def test_single_local_expert_covers_every_class():
    assert equal_mass_subsets([9, 5, 1], 1).tolist() == [0, 0, 0]


def test_balanced_counts_cannot_be_split():
    with pytest.raises(LongtailError, match="fewer experts"):
        equal_mass_subsets([10, 10, 10, 10], 2)


# ----------------------------------------------------------------------------- priors


def test_local_and_global_adjustments_hand_worked():
    counts = [8, 7, 6, 5, 4, 3, 2, 1]  # subsets {0}, {1, 2}, {3..7} (see above); 3 local experts + 1 global
    loss = LGLALoss(counts, num_experts=4, tau=2.0)
    q = torch.tensor([
        [8, 8, 8, 8, 8, 8, 8, 8],  # head expert: pi_0 = max(pi), every other class gets max(pi) too
        [8, 7, 6, 8, 8, 8, 8, 8],
        [8, 8, 8, 5, 4, 3, 2, 1],
    ]) / 36.0
    torch.testing.assert_close(loss.local_priors, q)
    pi = torch.tensor(counts) / 36.0
    expected = torch.cat([torch.log(q + 1e-9), 2.0 * torch.log(pi + 1e-9)[None]])
    torch.testing.assert_close(loss.adjustments, expected)
    assert {"prior", "local_priors", "adjustments", "subset_of_class"} <= set(loss.state_dict())


def test_two_experts_use_tau_one():
    loss = LGLALoss([9, 5, 1], num_experts=2, tau=3.0)
    pi = torch.tensor([9, 5, 1]) / 15.0
    assert loss.tau == 1.0
    torch.testing.assert_close(loss.adjustments[1], torch.log(pi + 1e-9))
    torch.testing.assert_close(loss.adjustments[0], torch.log(pi + 1e-9))  # one subset: q = pi


def test_one_expert_is_refused():
    with pytest.raises(LongtailError, match="at least 2 experts"):
        LGLALoss([9, 5, 1], num_experts=1)


# ----------------------------------------------------------------------------- AAW weights

# counts [5, 4, 2, 1]: sum 12, 12 // 2 = 6; ascending 1 + 2 = 3, + 4 = 7 > 6: head {0}, tail {1, 2, 3}
COUNTS = [5, 4, 2, 1]
LABELS = torch.tensor([0, 0, 1, 3])


def logits_with_true_cosines(cosines: list[list[float]], labels: torch.Tensor = LABELS) -> torch.Tensor:
    """(E, B, 4) logits whose true-class entry is s * cos and the others fixed small values."""
    z = torch.tensor([[0.3, -0.2, 0.1, 0.05]]).repeat(len(cosines), len(labels), 1) * S
    for e, row in enumerate(cosines):
        for b, c in enumerate(row):
            z[e, b, labels[b]] = S * c
    return z


def test_aaw_weights_hand_worked_batch():
    loss = LGLALoss(COUNTS, num_experts=3, tau=3.0)
    assert loss.subset_of_class.tolist() == [0, 1, 1, 1]
    z = logits_with_true_cosines([
        [1.0, 0.0, 0.5, -0.5],  # angles 0, pi/2 (head, mean pi/4) | pi/3, 2pi/3 (tail, mean pi/2)
        [0.0, 1.0, 0.5, 0.5],  # head mirrored; tail angles equal: a = a_ref gives 1 + 0
        [0.5, 0.5, -0.5, 0.5],  # tail: 2pi/3 vs mean pi/2 -> 1 + pi/6
    ])
    w = loss.aaw_weights(z, LABELS)
    expected = torch.tensor([
        [1.0, 1 + math.pi / 4, 1.0, 1 + math.pi / 6],
        [1 + math.pi / 4, 1.0, 1.0, 1.0],
        [1.0, 1.0, 1 + math.pi / 6, 1.0],
    ])
    torch.testing.assert_close(w, expected, atol=1e-5, rtol=0)


def test_aaw_group_mean_uses_only_the_group_present():
    # a batch with tail samples only: the head group is empty and must not disturb the tail's reference
    loss = LGLALoss(COUNTS, num_experts=3)
    labels = torch.tensor([1, 2, 3])
    z = logits_with_true_cosines([[1.0, 0.0, -1.0]] * 3, labels)  # angles 0, pi/2, pi; mean pi/2
    w = loss.aaw_weights(z, labels)
    torch.testing.assert_close(w[0], torch.tensor([1.0, 1.0, 1 + math.pi / 2]))


def test_aaw_clamps_cosines_rounded_past_one():
    loss = LGLALoss(COUNTS, num_experts=3)
    z = logits_with_true_cosines([[1.0 + 1e-6, 0.0, 0.5, -0.5]] * 3)
    assert torch.isfinite(loss.aaw_weights(z, LABELS)).all()


def test_loss_value_hand_worked():
    loss = LGLALoss(COUNTS, num_experts=3, tau=3.0)
    z = logits_with_true_cosines([[1.0, 0.0, 0.5, -0.5], [0.0, 1.0, 0.5, 0.5], [0.5, 0.5, -0.5, 0.5]])
    pi = [n / 12 for n in COUNTS]
    adjust = [
        [math.log(5 / 12 + 1e-9)] * 4,  # head expert: subset {0}, the rest at max(pi) = 5/12
        [math.log(p + 1e-9) for p in [5 / 12, 4 / 12, 2 / 12, 1 / 12]],  # tail expert: q = pi here
        [3.0 * math.log(p + 1e-9) for p in pi],
    ]
    weights = [
        [1.0, 1 + math.pi / 4, 1.0, 1 + math.pi / 6],
        [1 + math.pi / 4, 1.0, 1.0, 1.0],
        [1.0, 1.0, 1 + math.pi / 6, 1.0],
    ]
    total = 0.0
    for e in range(3):
        terms = []
        for b, y in enumerate(LABELS.tolist()):
            row = [float(z[e, b, c]) + adjust[e][c] for c in range(4)]
            log_p = row[y] - math.log(sum(math.exp(v) for v in row))
            terms.append(weights[e][b] * log_p)
        total += -sum(terms) / len(terms)
    assert float(loss(z, LABELS)) == pytest.approx(total, rel=1e-5)


def test_no_gradient_flows_through_the_weights():
    """d loss / d z[e, b, c] = w[e, b] / B * (softmax(z + adj)[c] - [c == y]) with w held constant."""
    loss = LGLALoss(COUNTS, num_experts=3, tau=2.0)
    torch.manual_seed(0)
    z = (torch.rand(3, 6, 4) * 2 - 1).mul(S).requires_grad_()  # valid cosines times s
    y = torch.tensor([0, 0, 1, 2, 3, 3])
    loss(z, y).backward()
    with torch.no_grad():
        w = loss.aaw_weights(z, y)
        assert not w.requires_grad
        p = F.softmax(z + loss.adjustments[:, None, :], dim=2)
        expected = w[..., None] / len(y) * (p - F.one_hot(y, 4))
    torch.testing.assert_close(z.grad, expected)


def test_expert_count_mismatch_is_reported():
    loss = LGLALoss(COUNTS, num_experts=3)
    with pytest.raises(LongtailError, match="loss.num_experts"):
        loss(torch.zeros(2, 4, 4), LABELS)


def test_loss_follows_the_module_to_another_dtype_and_back():
    loss = LGLALoss(COUNTS, num_experts=3)
    z = logits_with_true_cosines([[1.0, 0.0, 0.5, -0.5], [0.0, 1.0, 0.5, 0.5], [0.5, 0.5, -0.5, 0.5]])
    reference = loss(z, LABELS)
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    assert {"prior", "local_priors", "adjustments", "subset_of_class"} <= set(before)
    loss.double()
    for key, value in loss.state_dict().items():  # float tables follow the module; class indices stay integers
        assert value.dtype == (torch.float64 if before[key].is_floating_point() else before[key].dtype), key
    in_double = loss(z.double(), LABELS)
    assert in_double.dtype == torch.float64 and float(in_double) == pytest.approx(float(reference), rel=1e-5)
    loss.float()  # and back: the same tables, bit for bit, and the same float32 loss
    for key, value in loss.state_dict().items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key
    again = loss(z, LABELS)
    assert again.dtype == torch.float32 and torch.equal(again, reference)


# ----------------------------------------------------------------------------- config wiring


def test_loss_num_experts_defaults_to_the_model_s():
    cfg = load_config(None, ["loss.name=lgla", "model.name=resnet32_experts", "model.num_experts=4"])
    assert cfg.loss.num_experts == 4
    built = create_loss(cfg.loss, [8, 7, 6, 5, 4, 3, 2, 1])
    assert isinstance(built, LGLALoss) and built.num_experts == 4 and built.input_key == "expert_logits"
    assert load_config(None, ["loss.num_experts=2"]).loss.num_experts == 2


def test_loss_table_passes_tau_and_scale():
    cfg = load_config(None, ["loss.name=lgla", "model.name=resnet32_experts", "loss.tau=2.5", "loss.scale=16"])
    built = create_loss(cfg.loss, long_tailed_counts(500, 100, 100))
    assert built.tau == 2.5 and built.scale == 16.0


def test_bad_loss_num_experts_is_a_config_error():
    with pytest.raises(LongtailError, match="loss.num_experts"):
        load_config(None, ["loss.num_experts=0"])
