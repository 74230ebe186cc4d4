"""Calibration: metrics against hand-computed values, fits against known generating parameters."""

from __future__ import annotations

import math

import pytest
import torch

from longtail.calibration import (
    brier, calibration_summary, ece, fit_bcts, fit_temperature, format_calibration, nll, reliability_bins,
)

# Four images, three classes. Confidences 0.9, 0.55, 0.7, 0.72 fall in the 15 equal-width bins
# (13/15, 14/15], (8/15, 9/15], (10/15, 11/15] and (10/15, 11/15]: none near a bin edge.
PROBS = torch.tensor([[0.90, 0.05, 0.05],   # y 0: predicted 0, right
                      [0.55, 0.45, 0.00],   # y 1: predicted 0, wrong
                      [0.10, 0.70, 0.20],   # y 1: predicted 1, right
                      [0.72, 0.18, 0.10]], dtype=torch.float64)  # y 2: predicted 0, wrong
LABELS = torch.tensor([0, 1, 1, 2])


def test_ece_nll_brier_by_hand():
    # ECE: bin of 0.9 -> 1 image, accuracy 1, |1 - 0.9| = 0.1; bin of 0.55 -> 1 image, accuracy 0, 0.55;
    # bin of 0.7 and 0.72 -> 2 images, accuracy 1/2, mean confidence 0.71, |0.5 - 0.71| = 0.21
    hand_ece = 100 * (1 / 4 * 0.1 + 1 / 4 * 0.55 + 2 / 4 * 0.21)
    assert hand_ece == pytest.approx(26.75)
    assert ece(PROBS, LABELS) == pytest.approx(hand_ece, abs=1e-9)
    hand_nll = -(math.log(0.9) + math.log(0.45) + math.log(0.7) + math.log(0.1)) / 4
    assert nll(PROBS, LABELS) == pytest.approx(hand_nll, abs=1e-6)
    hand_brier = ((0.1 ** 2 + 0.05 ** 2 + 0.05 ** 2)
                  + (0.55 ** 2 + 0.55 ** 2 + 0.0)
                  + (0.1 ** 2 + 0.3 ** 2 + 0.2 ** 2)
                  + (0.72 ** 2 + 0.18 ** 2 + 0.9 ** 2)) / 4
    assert hand_brier == pytest.approx(0.5302)
    assert brier(PROBS, LABELS) == pytest.approx(hand_brier, abs=1e-6)
    bins = reliability_bins(PROBS, LABELS)
    assert len(bins["count"]) == 15 and bins["count"][13] == 1 and bins["count"][8] == 1 and bins["count"][10] == 2
    assert sum(bins["count"]) == 4 and bins["accuracy"][10] == pytest.approx(0.5) and bins["confidence"][10] == pytest.approx(0.71)


def test_confidence_one_lands_in_the_last_bin():
    saturated = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    bins = reliability_bins(saturated, torch.tensor([0, 1]))
    assert bins["count"][14] == 2 and sum(bins["count"]) == 2
    assert ece(saturated, torch.tensor([0, 0])) == 0 and ece(saturated, torch.tensor([1, 1])) == pytest.approx(100)


def _draw_labels(probs: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(seed)).squeeze(1)


def test_ece_of_calibrated_predictions_is_small_and_of_distorted_ones_is_not():
    g = torch.Generator().manual_seed(0)
    logits = 2.5 * torch.randn(100_000, 10, generator=g, dtype=torch.float64)
    probs = logits.softmax(-1)
    labels = _draw_labels(probs, 1)  # calibrated by construction: y ~ p
    assert ece(probs, labels) < 1.0
    overconfident = (2 * logits).softmax(-1)
    assert ece(overconfident, labels) > 5.0


@pytest.mark.parametrize("true_t", [0.5, 2.0])
def test_temperature_scaling_recovers_the_generating_temperature(true_t):
    g = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(20_000, 10, generator=g, dtype=torch.float64)
    labels = _draw_labels((logits / true_t).softmax(-1), 4)
    fitted = fit_temperature(logits, labels)
    assert fitted.temperature == pytest.approx(true_t, rel=0.02)
    assert fitted.method == "temperature" and fitted.bias is None
    # the fitted probabilities are better calibrated than the raw ones
    assert ece(fitted.probs(logits), labels) < ece(logits.softmax(-1), labels)


def test_bcts_recovers_temperature_and_class_biases():
    g = torch.Generator().manual_seed(5)
    logits = 2 * torch.randn(30_000, 4, generator=g, dtype=torch.float64)
    true_bias = torch.tensor([1.0, 0.0, -0.5, -1.5], dtype=torch.float64)
    labels = _draw_labels((logits / 1.5 + true_bias).softmax(-1), 6)
    fitted = fit_bcts(logits, labels)
    assert fitted.temperature == pytest.approx(1.5, rel=0.03)
    # biases are identified up to a shared constant
    assert torch.allclose(fitted.bias - fitted.bias.mean(), true_bias - true_bias.mean(), atol=0.06)
    # temperature scaling alone cannot remove the bias: BCTS fits clearly better
    ts = fit_temperature(logits, labels)
    assert nll(fitted.probs(logits), labels) < nll(ts.probs(logits), labels) - 0.01


def test_summary_block_with_and_without_validation():
    g = torch.Generator().manual_seed(7)
    logits = 3 * torch.randn(4000, 5, generator=g)
    labels = _draw_labels((logits.double() / 2).softmax(-1), 8)
    test, val = {"logits": logits[:2000], "labels": labels[:2000]}, {"logits": logits[2000:], "labels": labels[2000:]}
    block = calibration_summary(test, val)
    assert block["fitted_on"] == "val" and block["temperature"] == pytest.approx(2.0, rel=0.1)
    assert block["after"]["ece"] < block["before"]["ece"] and block["after"]["nll"] < block["before"]["nll"]
    assert block["before"]["ece"] == pytest.approx(ece(test["logits"].double().softmax(-1), test["labels"]))
    shown = format_calibration(block).splitlines()
    assert f"T = {block['temperature']:.3f}" in shown[0]
    assert shown[2].split() == ["before", f"{block['before']['ece']:.2f}", f"{block['before']['nll']:.4f}", f"{block['before']['brier']:.4f}"]
    assert shown[3].split()[:2] == ["after", f"{block['after']['ece']:.2f}"]
    alone = calibration_summary(test, None, "no validation split (dataset.val_source=none)")
    assert alone["after"] is None and alone["temperature"] is None and alone["before"] == block["before"]
    assert "dataset.val_source=none" in format_calibration(alone)
