"""Label shift: test priors, prior estimation (EM, BBSE) on a generative model with exact posteriors,
the known-prior correction against the closed-form Bayes error, and bad specs."""

from __future__ import annotations

import math

import pytest
import torch

from longtail.calibration import Calibrator, fit_bcts
from longtail.errors import LongtailError
from longtail.priors import source_log_prior, target_prior_scores
from longtail.shift import bbse_prior, em_prior, parse_prior, parse_prior_list, resample, target_counts

IDENTITY = Calibrator("temperature", 1.0)  # log_softmax of log-posteriors: the posteriors themselves


def shifted_scores(log_q: torch.Tensor, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """priors.target_prior_scores on posteriors already calibrated."""
    return target_prior_scores(log_q, IDENTITY, source_log_prior(source), target.log())
from conftest import GAUSSIAN_MEAN, train_linear
from conftest import normal_cdf as _phi
from conftest import two_gaussians as sample

MEAN = torch.tensor(GAUSSIAN_MEAN, dtype=torch.float64)

# ----------------------------------------------------------------------------- a Gaussian mixture

CLASSES = 5
ANGLES = torch.arange(CLASSES, dtype=torch.float64) * 2 * math.pi / CLASSES
MEANS = 3.0 * torch.stack([ANGLES.cos(), ANGLES.sin()], 1)  # 2-D, sigma 1, well separated


def profile(factor: float, backward: bool = False) -> torch.Tensor:
    p = factor ** (-torch.arange(CLASSES, dtype=torch.float64) / (CLASSES - 1))
    p = p.flip(0) if backward else p
    return p / p.sum()


def mixture_sample(prior: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.multinomial(prior, n, replacement=True, generator=g)
    return MEANS[y] + torch.randn(n, 2, generator=g, dtype=torch.float64), y


def exact_log_posterior(x: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """log p(c | x) under `prior`, from the Gaussian densities (shared sigma 1: the normaliser cancels)."""
    log_joint = -0.5 * ((x[:, None, :] - MEANS[None]) ** 2).sum(-1) + prior.log()
    return log_joint - log_joint.logsumexp(-1, keepdim=True)


SOURCE = torch.full((CLASSES,), 1.0 / CLASSES, dtype=torch.float64)


@pytest.mark.parametrize("backward", [False, True], ids=["forward-20", "backward-20"])
def test_em_and_bbse_recover_a_shifted_prior(backward):
    target = profile(20.0, backward)
    x, y = mixture_sample(target, 20_000, seed=1)
    true = torch.bincount(y, minlength=CLASSES).double() / len(y)
    log_q = exact_log_posterior(x, SOURCE)  # exact posteriors w.r.t. the (uniform) source prior
    em = em_prior(log_q, SOURCE)
    assert em.note is None and float(em.prior.sum()) == pytest.approx(1.0)
    assert float((em.prior - true).abs().sum()) < 0.02
    x_val, y_val = mixture_sample(SOURCE, 20_000, seed=2)  # labelled hold-out from the source distribution
    bbse = bbse_prior(exact_log_posterior(x_val, SOURCE).argmax(-1), y_val, log_q.argmax(-1), SOURCE)
    assert float((bbse.prior - true).abs().sum()) < 0.02
    # the estimates are real information: the source prior itself is far off
    assert float((SOURCE - true).abs().sum()) > 0.5


def test_estimates_with_a_long_tailed_source_prior():
    # validation drawn with a forward prior (its confusion matrix is far from symmetric), target backward
    source, target = profile(5.0), profile(20.0, backward=True)
    x, y = mixture_sample(target, 20_000, seed=5)
    true = torch.bincount(y, minlength=CLASSES).double() / len(y)
    log_q = exact_log_posterior(x, source)
    x_val, y_val = mixture_sample(source, 20_000, seed=6)
    bbse = bbse_prior(exact_log_posterior(x_val, source).argmax(-1), y_val, log_q.argmax(-1), source)
    assert float((bbse.prior - true).abs().sum()) < 0.02
    assert float((em_prior(log_q, source).prior - true).abs().sum()) < 0.02


def test_em_is_referred_to_the_source_prior():
    # posteriors w.r.t. a non-uniform source prior, no shift: EM must stay at that prior
    source = profile(5.0)
    x, y = mixture_sample(source, 20_000, seed=3)
    est = em_prior(exact_log_posterior(x, source), source)
    assert float((est.prior - torch.bincount(y, minlength=CLASSES).double() / len(y)).abs().sum()) < 0.02


def test_bbse_with_a_class_never_predicted_says_so_and_clips():
    val_preds = torch.tensor([0, 0, 1, 1, 0, 1])  # class 2 never predicted
    val_labels = torch.tensor([0, 0, 1, 1, 2, 2])
    est = bbse_prior(val_preds, val_labels, torch.tensor([0, 0, 0, 1]), torch.tensor([1 / 3] * 3, dtype=torch.float64))
    assert est.note and "rank" in est.note
    assert (est.prior >= 0).all() and float(est.prior.sum()) == pytest.approx(1.0)


def test_shifted_scores_are_bayes_rule():
    log_q = torch.log(torch.tensor([[0.6, 0.4]], dtype=torch.float64))
    scores = shifted_scores(log_q, torch.tensor([0.2, 0.8], dtype=torch.float64), torch.tensor([0.25, 0.75], dtype=torch.float64))
    posterior = scores.softmax(-1)  # 0.6 * 0.2 / 0.25 : 0.4 * 0.8 / 0.75 = 0.48 : 0.42667
    assert posterior[0, 0].item() == pytest.approx(0.48 / (0.48 + 0.32 / 0.75))


# ----------------------------------------------------------------------------- Menon et al.'s problem


def target_error(w: torch.Tensor, b: torch.Tensor, prior_pos: float) -> float:
    """Exact error (%) of predicting +1 where (w[1] - w[0]).x + (b[1] - b[0]) > 0, under the two
    Gaussians N(+-(1,1), I) mixed with P(+1) = prior_pos."""
    d, c = w[1] - w[0], float(b[1] - b[0])
    norm = float(d.norm())
    miss_pos = _phi(-(float(d @ MEAN) + c) / norm)
    miss_neg = _phi((float(d @ -MEAN) + c) / norm)
    return 100 * (prior_pos * miss_pos + (1 - prior_pos) * miss_neg)


def bayes_error(prior_pos: float) -> float:
    """Closed form: predict +1 where 2 m.x + log(r) > 0, r = P(+1) / P(-1), m = (1, 1), |m|^2 = 2."""
    log_r, m = math.log(prior_pos / (1 - prior_pos)), math.sqrt(2)
    return 100 * (prior_pos * _phi((-log_r / 2 - 2) / m) + (1 - prior_pos) * _phi((log_r / 2 - 2) / m))


def test_bayes_error_formula_at_the_balanced_prior():
    assert bayes_error(0.5) == pytest.approx(100 * 0.5 * math.erfc(1.0), abs=1e-9)  # Phi(-sqrt 2)


@pytest.fixture(scope="module")
def calibrated_menon():
    """Plain ERM on the 5 % problem, then BCTS fitted on a balanced validation sample: posteriors
    w.r.t. that sample's prior."""
    x, y = sample(100_000, seed=0)
    model = train_linear(x, y, torch.nn.CrossEntropyLoss())
    g = torch.Generator().manual_seed(11)
    y_val = torch.arange(20_000) % 2
    x_val = torch.where(y_val[:, None] == 1, MEAN, -MEAN) + torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    with torch.no_grad():
        calibrator = fit_bcts(model(x_val), y_val)
    return model, calibrator, torch.bincount(y_val).double() / len(y_val)


@pytest.mark.parametrize("prior_pos", [0.05, 0.3, 0.7, 0.95])
def test_known_prior_correction_reaches_the_bayes_error(calibrated_menon, prior_pos):
    model, cal, val_prior = calibrated_menon
    target = torch.tensor([1 - prior_pos, prior_pos], dtype=torch.float64)
    # the corrected scores are linear in x: (W x + b) / T + beta + log pi_t - log pi_val
    w = model.weight.detach() / cal.temperature
    b = model.bias.detach() / cal.temperature + cal.bias + target.log() - val_prior.log()
    corrected, bayes = target_error(w, b, prior_pos), bayes_error(prior_pos)
    assert abs(corrected - bayes) < 0.5
    # and it is the rule priors.target_prior_scores applies
    x = torch.randn(64, 2, dtype=torch.float64)
    with torch.no_grad():
        scores = target_prior_scores(model(x), cal, source_log_prior(val_prior), target.log())
    assert torch.equal(scores.argmax(-1), (x @ w.T + b).argmax(-1))


def test_without_correction_the_shifted_error_is_worse(calibrated_menon):
    model, _, _ = calibrated_menon
    # the ERM model (trained at 5 %) evaluated at 70 %: well above the Bayes error for that prior
    assert target_error(model.weight.detach(), model.bias.detach(), 0.7) > bayes_error(0.7) + 5


# ----------------------------------------------------------------------------- test priors


def test_forward_and_backward_counts_follow_the_training_order():
    available = [100] * 4
    train = [10, 500, 50, 5]  # training order: class 1, 2, 0, 3
    forward = target_counts(parse_prior("forward-10"), available, train)
    # profile int(100 * 10 ** (-r / 3)): 100, 46, 21, 10 for ranks 0..3
    assert forward == [21, 100, 46, 10]
    assert target_counts(parse_prior("backward-10"), available, train) == [46, 10, 21, 100]
    assert target_counts(parse_prior("uniform"), [100, 90, 95, 100], train) == [90] * 4
    assert target_counts(parse_prior("forward-1"), available, train) == [100] * 4


def test_resample_is_seeded_per_class_and_exact():
    labels = torch.arange(4).repeat_interleave(100)
    prior = parse_prior("backward-10")
    a, b = resample(labels, prior, [400, 300, 200, 100], 0), resample(labels, prior, [400, 300, 200, 100], 0)
    assert torch.equal(a, b) and torch.equal(a, a.sort().values)
    assert torch.bincount(labels[a]).tolist() == [10, 21, 46, 100]
    assert not torch.equal(a, resample(labels, prior, [400, 300, 200, 100], 1))


def test_weights_file(tmp_path):
    path = tmp_path / "prior.txt"
    path.write_text("4, 2\n1 0\n")
    assert target_counts(parse_prior(str(path)), [100] * 4, [1] * 4) == [100, 50, 25, 0]
    (tmp_path / "prior.json").write_text("[1, 1, 2, 4]")
    assert target_counts(parse_prior(str(tmp_path / "prior.json")), [100] * 4, [1] * 4) == [25, 25, 50, 100]


@pytest.mark.parametrize("spec, message", [
    ("forward-0.5", "must be a finite number >= 1"),
    ("backward-x", "not a number"),
    ("sideways-10", "neither a prior spec nor an existing file"),
    ("", "neither a prior spec nor an existing file"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(LongtailError, match=message) as err:
        parse_prior(spec)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content, message", [
    ("1 2 3", "has 3 weights but the run has 4 classes"),
    ("1 -2 3 4", "finite and >= 0"),
    ("1 nan 3 4", "finite and >= 0"),
    ("1 inf 3 4", "finite and >= 0"),
    ("0 0 0 0", "no positive weight"),
    ("one two", "not a list of numbers"),
])
def test_bad_weight_files(tmp_path, content, message):
    path = tmp_path / "w.txt"
    path.write_text(content)
    with pytest.raises(LongtailError, match=message) as err:
        target_counts(parse_prior(str(path)), [100] * 4, [1] * 4)
    assert "\n" not in str(err.value)


def test_factor_beyond_the_test_split_is_an_error():
    with pytest.raises(LongtailError, match="use an imbalance factor <= 30"):
        target_counts(parse_prior("forward-50"), [30] * 3, [3, 2, 1])
    with pytest.raises(LongtailError, match="names no test prior"):
        parse_prior_list(" , ")
