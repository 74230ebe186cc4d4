"""Class priors: one grammar, one file reader, one rule for scoring under a target prior.

Specs (`--target-prior`, `--priors`): `uniform`; `forward-IF` / `backward-IF` (IF >= 1), the exponential
profile q_r proportional to IF^(-r / (C - 1)) over the classes in training order (r = 0 the most frequent
training class; stable on ties) or that order reversed; or a FILE of per-class weights. One rule for files:
plain text of numbers (separated by spaces, commas or newlines) in class-index order, a JSON list of numbers,
or a JSON object {class name: weight} naming every class. Weights are finite, >= 0 and not all 0; they are
normalised to sum to 1, and a class of weight 0 is never predicted (its log-prior is -inf).

The one rule for a target prior q (`target_prior_scores`), whatever the loss and the run's own rule:

    s_c(x) = log p_v(c | x) - log pi_v(c) + log q(c)

p_v is the run's calibration (calibration.Calibrator, BCTS by default) fitted on the validation split, so
it estimates the posterior under the validation prior pi_v; Bayes' rule moves it to q (Saerens et al. 2002;
post-hoc LA is the special case q uniform with pi_v the training prior and no calibration). softmax(s) is
the posterior under q, argmax(s) the prediction. predict, export, evaluate and shift all use it.

Log-priors from counts: `log_prior(counts)` = log(n_c / sum n + 1e-12), the form Menon et al.'s code uses
for logit adjustment (an empty class stays finite).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .calibration import Calibrator
from .errors import LongtailError, one_line

SPEC_HELP = "uniform, forward-IF or backward-IF (IF >= 1, e.g. forward-50), or a file of per-class weights"
FILE_HELP = ("numbers in class-index order (separated by spaces, commas or newlines), a JSON list, or a JSON "
             "object {class name: weight}; finite, >= 0, not all 0")
LOG_EPS = 1e-12  # inside the log of a count prior, as in Menon et al.'s code


@dataclass(frozen=True)
class PriorSpec:
    """A parsed prior spec: kind uniform | forward | backward | file (`path` set)."""

    spec: str
    kind: str
    factor: float = 1.0
    path: Optional[Path] = None


def parse_prior(spec: str) -> PriorSpec:
    """Read a spec; a file's contents are read later, against the run's classes (`prior_weights`)."""
    text = str(spec).strip()
    if text == "uniform":
        return PriorSpec(text, "uniform")
    if Path(text).is_file():
        return PriorSpec(text, "file", path=Path(text))
    match = re.fullmatch(r"(forward|backward)-(.+)", text)
    if match:
        try:
            factor = float(match.group(2))
        except ValueError:
            raise LongtailError(f"prior '{text}': '{match.group(2)}' is not a number; use {SPEC_HELP}") from None
        if not math.isfinite(factor) or factor < 1:
            raise LongtailError(f"prior '{text}': the imbalance factor must be a finite number >= 1 "
                                f"(n_max / n_min), got {match.group(2)}; e.g. {match.group(1)}-50")
        return PriorSpec(text, match.group(1), factor)
    raise LongtailError(f"prior '{text}' is neither a prior spec nor an existing file; use {SPEC_HELP}")


def read_weights(path: str | Path, names: Sequence[str]) -> list[float]:
    """The per-class weights of a prior file, in class-index order (see the module docstring for the rule)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LongtailError(f"cannot read the prior file '{path}' ({one_line(exc)})") from None
    try:
        if text.lstrip().startswith(("[", "{")):
            data = json.loads(text)
            if isinstance(data, dict):
                unknown = sorted(str(k) for k in set(data) - set(names))
                missing = [n for n in names if n not in data]
                if unknown or missing:
                    raise LongtailError(f"the prior file '{path}' names unknown classes {unknown[:5]} or misses {missing[:5]}; "
                                        "give one weight for each of the run's class names")
                data = [data[n] for n in names]
            if not isinstance(data, list) or any(isinstance(v, bool) for v in data):
                raise ValueError("not a list of numbers")
            values = [float(v) for v in data]
        else:
            values = [float(v) for v in re.split(r"[\s,]+", text.strip()) if v]
    except (ValueError, TypeError) as exc:
        raise LongtailError(f"the prior file '{path}' is not a list of numbers ({one_line(exc, 100)}); give {FILE_HELP}") from None
    if len(values) != len(names):
        raise LongtailError(f"the prior file '{path}' has {len(values)} weights but the run has {len(names)} classes; "
                            "give one weight per class")
    bad = [v for v in values if not math.isfinite(v) or v < 0]
    if bad:
        raise LongtailError(f"the prior file '{path}' holds {bad[0]}; class weights must be finite and >= 0")
    if sum(values) <= 0:
        raise LongtailError(f"the prior file '{path}' has no positive weight; give one weight >= 0 per class, not all 0")
    return values


def profile_order(prior: PriorSpec, train_counts: Sequence[int]) -> list[int]:
    """Classes by profile rank: the training order (most frequent training class first, stable) for
    forward-IF, reversed for backward-IF."""
    order = sorted(range(len(train_counts)), key=lambda c: -train_counts[c])
    return order[::-1] if prior.kind == "backward" else order


def prior_weights(prior: PriorSpec, train_counts: Sequence[int], names: Sequence[str]) -> torch.Tensor:
    """q (float64, label order, sums to 1) that a spec stands for: uniform, the exponential profile
    IF^(-rank / (C - 1)) over the training order (or reversed), or a file's weights normalised."""
    num_classes = len(train_counts)
    if prior.kind == "file":
        weights = torch.tensor(read_weights(prior.path, names), dtype=torch.float64)
    elif prior.kind == "uniform" or num_classes == 1:
        weights = torch.ones(num_classes, dtype=torch.float64)
    else:
        weights = torch.zeros(num_classes, dtype=torch.float64)
        for rank, cls in enumerate(profile_order(prior, train_counts)):
            weights[cls] = prior.factor ** (-rank / (num_classes - 1))
    return weights / weights.sum()


def log_target_prior(spec: str | PriorSpec, train_counts: Sequence[int], names: Sequence[str]) -> torch.Tensor:
    """log q (float64) of a spec; -inf for a class of weight 0 (never predicted)."""
    prior = spec if isinstance(spec, PriorSpec) else parse_prior(spec)
    return prior_weights(prior, train_counts, names).log()


def log_prior(class_counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """log pi_c = log(n_c / sum n + 1e-12) of per-class counts, in float32."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    return torch.log(counts / counts.sum() + LOG_EPS).float()


def source_log_prior(counts: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """log pi_v (float64) of the split a calibration was fitted on; a class without images counts as the
    smallest positive float64 so the subtraction stays finite."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    return (counts / counts.sum()).clamp_min(torch.finfo(torch.float64).tiny).log()


def target_prior_scores(logits: torch.Tensor, calibrator: Calibrator, log_source: torch.Tensor,
                        log_q: torch.Tensor) -> torch.Tensor:
    """s = log p_v(c|x) - log pi_v(c) + log q(c), p_v = the calibrator's posterior (w.r.t. pi_v, the prior of
    the split it was fitted on) moved to the target prior q by Bayes' rule. float64; q = 0 scores -inf."""
    log_posterior = calibrator.log_probs(logits)
    return log_posterior - log_source.to(log_posterior) + log_q.to(log_posterior)


__all__ = [
    "PriorSpec", "SPEC_HELP", "FILE_HELP", "parse_prior", "read_weights", "profile_order", "prior_weights",
    "log_target_prior", "log_prior", "source_log_prior", "target_prior_scores",
]
