"""Calibration of a classifier's probabilities: plain tensor functions, usable on their own.

- Temperature scaling (Guo et al., ICML 2017): softmax(z / T), one T fitted by validation NLL.
- Bias-corrected temperature scaling, BCTS (Alexandari, Kundaje, Shrikumar, ICML 2020):
  softmax(z / T + b), T and one bias per class fitted by validation NLL. The fitted posteriors refer to
  the class prior of the split they were fitted on (label shift correction needs to know which).
- Metrics: ECE (top-label, 15 equal-width confidence bins, in %), NLL (mean -log p_y), Brier
  (mean over images of sum_c (p_c - 1[c = y])^2).

Fits run in float64 with L-BFGS and a strong-Wolfe line search on log T (so T stays positive), from T = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .errors import LongtailError

ECE_BINS = 15


@dataclass
class Calibrator:
    """A fitted calibration map: log-probabilities = log_softmax(logits / temperature + bias)."""

    method: str
    temperature: float
    bias: Optional[torch.Tensor] = None  # (C,) for BCTS

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        z = logits.double() / self.temperature
        if self.bias is not None:
            z = z + self.bias.to(z)
        return z.log_softmax(-1)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return self.log_probs(logits).exp()

    def to_dict(self) -> dict:
        """Plain JSON data (a checkpoint's and metrics.json's "calibrator" block)."""
        return {"method": self.method, "temperature": self.temperature,
                "bias": None if self.bias is None else [float(b) for b in self.bias]}

    @classmethod
    def from_dict(cls, data: dict) -> "Calibrator":
        bias = data.get("bias")
        return cls(data["method"], float(data["temperature"]), None if bias is None else torch.tensor(bias, dtype=torch.float64))


def _minimise_nll(logits: torch.Tensor, labels: torch.Tensor, with_bias: bool) -> tuple[float, Optional[torch.Tensor]]:
    if len(labels) == 0:
        raise LongtailError("cannot fit a calibration on an empty split")
    z, y = logits.detach().double().cpu(), labels.detach().long().cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(z.shape[-1], dtype=torch.float64, requires_grad=True)
    params = [log_t, bias] if with_bias else [log_t]
    opt = torch.optim.LBFGS(params, lr=1, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        scaled = z * torch.exp(-log_t) + (bias if with_bias else 0)
        loss = torch.nn.functional.cross_entropy(scaled, y)
        loss.backward()
        return loss

    opt.step(closure)
    temperature = float(log_t.detach().exp())
    if not torch.isfinite(torch.tensor(temperature)) or (with_bias and not bool(torch.isfinite(bias).all())):
        raise LongtailError("the calibration fit diverged (non-finite temperature or bias); the logits may be non-finite")
    return temperature, (bias.detach().clone() if with_bias else None)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> Calibrator:
    """One temperature T minimising the NLL of softmax(logits / T) on (logits, labels)."""
    temperature, _ = _minimise_nll(logits, labels, with_bias=False)
    return Calibrator("temperature", temperature)


def fit_bcts(logits: torch.Tensor, labels: torch.Tensor) -> Calibrator:
    """T and one bias per class minimising the NLL of softmax(logits / T + b) on (logits, labels)."""
    temperature, bias = _minimise_nll(logits, labels, with_bias=True)
    return Calibrator("bcts", temperature, bias)


CALIBRATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], Calibrator]] = {
    "temperature": fit_temperature,
    "bcts": fit_bcts,
}


def fit_calibration(method: str, logits: torch.Tensor, labels: torch.Tensor) -> Calibrator:
    if method not in CALIBRATIONS:
        raise LongtailError(f"unknown calibration '{method}'; choose one of {', '.join(CALIBRATIONS)}")
    return CALIBRATIONS[method](logits, labels)


# ----------------------------------------------------------------------------- metrics


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> dict[str, list]:
    """Per equal-width confidence bin (lower, upper]: image count, mean top-label confidence and accuracy
    (None for an empty bin). A confidence of exactly 1.0 lands in the last bin."""
    probs, labels = probs.double().cpu(), labels.long().cpu()
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).double()
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence)
    acc_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    return {
        "count": count.tolist(),
        "confidence": [float(s / n) if n else None for s, n in zip(conf_sum, count)],
        "accuracy": [float(s / n) if n else None for s, n in zip(acc_sum, count)],
    }


def ece_of_bins(table: dict[str, list]) -> float:
    total = sum(table["count"])
    gaps = (n * abs(a - c) for n, a, c in zip(table["count"], table["accuracy"], table["confidence"]) if n)
    return 100.0 * sum(gaps) / total


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error in %: sum over bins of (bin size / N) |accuracy - mean confidence|."""
    return ece_of_bins(reliability_bins(probs, labels, bins))


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-probability of the true class (a zero probability counts as the smallest float64)."""
    picked = probs.double().cpu().gather(1, labels.long().cpu()[:, None]).squeeze(1)
    return float(-picked.clamp_min(torch.finfo(torch.float64).tiny).log().mean())


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over images of sum_c (p_c - 1[c = y])^2 (the multi-class form, between 0 and 2)."""
    probs = probs.double().cpu()
    onehot = torch.nn.functional.one_hot(labels.long().cpu(), probs.shape[-1]).double()
    return float(((probs - onehot) ** 2).sum(-1).mean())


def calibration_metrics(probs: torch.Tensor, labels: torch.Tensor, with_bins: bool = True) -> dict:
    """{'ece' (%), 'nll', 'brier'} and the reliability diagram's 'bins'."""
    table = reliability_bins(probs, labels)
    out = {"ece": ece_of_bins(table), "nll": nll(probs, labels), "brier": brier(probs, labels)}
    return {**out, "bins": table} if with_bins else out


def calibration_summary(evaluated: dict[str, torch.Tensor], val: Optional[dict[str, torch.Tensor]],
                        missing: str = "no validation split to fit the temperature on") -> dict:
    """metrics.json's "calibration" block: ECE / NLL / Brier of the evaluated split's softmax before and
    after temperature scaling fitted on `val` (outputs of inference.predict: 'logits', 'labels').
    Without `val`, after = null and `reason` says why."""
    logits, labels = evaluated["logits"], evaluated["labels"]
    before = calibration_metrics(logits.double().softmax(-1), labels)
    block = {"method": "temperature", "fitted_on": None, "temperature": None, "before": before, "after": None,
             "reason": missing}
    if val is not None:
        fitted = fit_temperature(val["logits"], val["labels"])
        after = calibration_metrics(fitted.probs(logits), labels)
        block.update({"fitted_on": "val", "temperature": fitted.temperature, "after": after, "reason": None})
    return block


def format_calibration(block: dict) -> str:
    """The calibration block for the terminal: ECE / NLL / Brier before and after."""
    head = "calibration of the softmax probabilities"
    if block.get("after") is not None:
        head += f" (temperature scaling fitted on {block['fitted_on']}, T = {block['temperature']:.3f})"
    lines = [head + ":", f"{'':<8} {'ECE %':>8} {'NLL':>8} {'Brier':>8}"]
    for name in ("before", "after"):
        m = block.get(name)
        if m is None:
            lines.append(f"{name:<8} {'n/a':>8}  ({block.get('reason')})")
        else:
            lines.append(f"{name:<8} {m['ece']:8.2f} {m['nll']:8.4f} {m['brier']:8.4f}")
    return "\n".join(lines)
