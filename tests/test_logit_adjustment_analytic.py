"""Menon et al. (ICLR 2021) section 6.1, the analytic check of logit adjustment.

Two classes, 2-D isotropic Gaussians (sigma 1) with means +(1, 1) and -(1, 1), P(+1) = 5 %. The
Bayes-optimal balanced error is Phi(-sqrt 2) = 7.86 %. A linear softmax model trained by plain ERM
learns the imbalanced posterior and sits near 18 %; the logit-adjusted loss, and ERM followed by
post-hoc logit adjustment, recover the balanced-optimal boundary.

Training is full-batch L-BFGS in float64 on a fixed sample (deterministic); the balanced error of
the learned linear boundary is then evaluated in closed form, so no test-set noise enters.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import GAUSSIAN_MEAN, train_linear
from conftest import normal_cdf as _phi
from conftest import two_gaussians as sample
from longtail.losses import CrossEntropyLoss, LogitAdjustedLoss
from longtail.posthoc import logit_adjust

BAYES = 100 * 0.5 * math.erfc(1.0)  # Phi(-sqrt 2) in percent = 7.865
MEAN = torch.tensor(GAUSSIAN_MEAN, dtype=torch.float64)


def balanced_error(model: torch.nn.Linear, offset: torch.Tensor | None = None) -> float:
    """Exact balanced error (%) of argmax(W x + b + offset) under the two Gaussians."""
    w, b = model.weight.detach(), model.bias.detach() + (0 if offset is None else offset)
    d, c = (w[1] - w[0]), float(b[1] - b[0])  # predict +1 where d.x + c > 0
    norm = float(d.norm())
    miss_pos = _phi(-(float(d @ MEAN) + c) / norm)  # x ~ N(+mean, I) falls on the negative side
    miss_neg = _phi((float(d @ -MEAN) + c) / norm)
    return 100 * (miss_pos + miss_neg) / 2


@pytest.fixture(scope="module")
def data():
    x, y = sample()
    counts = torch.bincount(y, minlength=2).tolist()
    return x, y, counts


@pytest.fixture(scope="module")
def erm_model(data):
    x, y, _ = data
    return train_linear(x, y, CrossEntropyLoss())


def test_logit_adjusting_the_true_posterior_gives_the_papers_bayes_error(data):
    """The yardstick of the tests below, from the code: the true (imbalanced) posterior's logits, written by
    hand (log-odds 2 (x1 + x2) + log(5/95)), logit-adjusted by `logit_adjust` with the 5 % prior, give the
    balanced-optimal boundary x1 + x2 = 0 and the paper's balanced error of 7.86 %; unadjusted they do not."""
    posterior = torch.nn.Linear(2, 2).double()
    with torch.no_grad():
        posterior.weight.copy_(torch.tensor([[0.0, 0.0], [2.0, 2.0]]))
        posterior.bias.copy_(torch.tensor([math.log(0.95), math.log(0.05)]))
    offset = logit_adjust(torch.zeros(1, 2, dtype=torch.float64), [950, 50], tau=1.0)[0]
    assert balanced_error(posterior, offset) == pytest.approx(7.86, abs=0.01) == BAYES
    assert balanced_error(posterior) > 7.86 + 2  # the imbalanced posterior is not balanced-optimal
    # counted on the fixed sample, the adjusted boundary's balanced error is the paper's figure too
    x, y, _ = data
    wrong = (posterior(x) + offset).argmax(1) != y
    counted = 100 * (wrong[y == 0].double().mean() + wrong[y == 1].double().mean()) / 2
    assert float(counted) == pytest.approx(7.86, abs=0.4)  # a fixed sample; its standard error is about 0.14 %


def test_plain_erm_is_far_from_balanced_optimal(erm_model):
    erm = balanced_error(erm_model)
    assert erm > BAYES + 7  # about 18 %
    assert erm == pytest.approx(18.1, abs=1.5)


def test_logit_adjusted_loss_reaches_the_bayes_balanced_error(data):
    x, y, counts = data
    err = balanced_error(train_linear(x, y, LogitAdjustedLoss(counts, tau=1.0)))
    assert abs(err - BAYES) < 0.5


def test_erm_with_post_hoc_logit_adjustment_reaches_the_bayes_balanced_error(data, erm_model):
    _, _, counts = data
    model = erm_model
    offset = logit_adjust(torch.zeros(1, 2, dtype=torch.float64), counts, tau=1.0)[0]  # -log pi per class
    err = balanced_error(model, offset)
    assert abs(err - BAYES) < 0.5
    assert balanced_error(model, offset * 0) > BAYES + 7  # tau 0 is plain ERM again
