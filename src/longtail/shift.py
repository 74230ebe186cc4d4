"""Label shift: evaluating one trained model under other test class priors, and correcting its
predictions to a known or estimated target prior.

Posteriors q(c|x) calibrated on the validation split (the run's stored calibration, run.py) refer to the
validation prior pi_val. For a target prior pi_t every correction predicts with the one rule of priors.py,
argmax_c log q(c|x) - log pi_val(c) + log pi_t(c) (post-hoc LA is the case pi_t uniform, source = training
prior); they differ in where pi_t comes from. Corrections, one table below:

- none:  the model's own argmax (raw logits), no calibration.
- known: the prior the test spec stands for (priors.prior_weights), the one `predict --target-prior`
         takes; the resampled set's frequencies differ from it only by rounding to whole images.
- em:    Saerens, Latinne, Decaestecker (Neural Computation 2002): EM on the calibrated posteriors of
         the unlabelled evaluated set, started from and referred to pi_val, in log space.
- bbse:  Lipton, Wang, Smola (ICML 2018): solve C w = mu, C[i, j] = P(pred i, true j) on validation,
         mu the predicted-class frequencies on the evaluated set; negative weights clipped, pi = w pi_val
         renormalised.

Test priors (SADE's test-agnostic protocol, Zhang et al. NeurIPS 2022): `uniform`, `forward-IF`
(the exponential profile over the test split's per-class counts, classes in training order: most
frequent training class first), `backward-IF` (that order reversed), or a file of per-class weights
(priors.py: one grammar and one file rule). Each keeps a seeded per-class subsample of the test split
(data.splits.long_tailed_split).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .calibration import Calibrator, calibration_summary, ece, format_calibration
from .data.splits import long_tailed_counts, long_tailed_split
from .errors import LongtailError
from .evaluation import outputs_of
from .metrics import class_names_of, evaluate_predictions, format_table
from .priors import PriorSpec, parse_prior, prior_weights, profile_order, source_log_prior, target_prior_scores
from .run import DEFAULT_CALIBRATION, no_validation_error, run_calibrator, run_directory
from .zeroshot import load_run

DEFAULT_PRIORS = ("forward-50", "forward-10", "uniform", "backward-10", "backward-50")
DEFAULT_SEED = 0


# ----------------------------------------------------------------------------- test priors


def target_counts(prior: PriorSpec, available: Sequence[int], train_counts: Sequence[int],
                  names: Optional[Sequence[str]] = None) -> list[int]:
    """Test images to keep per class (label order). available: the test split's images per class;
    names: the class names a {name: weight} prior file refers to (default: the index strings)."""
    num_classes = len(available)
    n_max = min(available)
    if prior.kind == "uniform":
        return [n_max] * num_classes
    if prior.kind == "file":
        weights = prior_weights(prior, train_counts, names or [str(c) for c in range(num_classes)]).tolist()
        top = max(weights)
        return [int(n_max * w / top) for w in weights]
    if prior.factor > n_max:
        raise LongtailError(f"test prior '{prior.spec}' needs at least {prior.factor:g} test images in every class; "
                            f"the test split has {n_max}; use an imbalance factor <= {n_max}")
    profile = long_tailed_counts(n_max, num_classes, prior.factor, "exp")
    counts = [0] * num_classes
    for rank, cls in enumerate(profile_order(prior, train_counts)):
        counts[cls] = profile[rank]
    return counts


def resample(labels: torch.Tensor, prior: PriorSpec, train_counts: Sequence[int], seed: int,
             names: Optional[Sequence[str]] = None) -> torch.Tensor:
    """Indices (sorted) of a seeded per-class subsample of a labelled split following `prior`."""
    labels_np = labels.cpu().numpy()
    available = np.bincount(labels_np, minlength=len(train_counts)).tolist()
    if min(available) == 0:
        empty = available.index(0)
        raise LongtailError(f"the test split has no image of class {empty}; test priors resample every class")
    keep, _ = long_tailed_split(labels_np, target_counts(prior, available, train_counts, names), seed)
    return torch.from_numpy(keep)


# ----------------------------------------------------------------------------- prior estimation


@dataclass
class PriorEstimate:
    prior: torch.Tensor  # (C,) float64, sums to 1
    note: Optional[str] = None  # what went wrong, if anything (not converged, singular, fallback)


def em_prior(log_q: torch.Tensor, source_prior: torch.Tensor, tol: float = 1e-8, min_iter: int = 10,
             max_iter: int = 2000) -> PriorEstimate:
    """Saerens et al.'s EM: w <- mean_x q_w(c|x), q_w(c|x) proportional to q(c|x) w(c) / pi_s(c), from w = pi_s.
    Stops when no class's estimate moves by more than `tol` (after `min_iter` iterations)."""
    log_q = log_q.double()
    log_source = source_prior.double().clamp_min(torch.finfo(torch.float64).tiny).log()
    log_w = log_source.clone()
    log_n = math.log(len(log_q))
    for iteration in range(1, max_iter + 1):
        log_post = log_q + (log_w - log_source)
        log_post = log_post - log_post.logsumexp(-1, keepdim=True)
        new = log_post.logsumexp(0) - log_n
        change = float((new.exp() - log_w.exp()).abs().max())
        log_w = new
        if iteration >= min_iter and change < tol:
            return PriorEstimate(log_w.exp() / log_w.exp().sum())
    return PriorEstimate(log_w.exp() / log_w.exp().sum(), f"EM did not converge in {max_iter} iterations (last change {change:.2g})")


def bbse_prior(val_preds: torch.Tensor, val_labels: torch.Tensor, target_preds: torch.Tensor,
               source_prior: torch.Tensor) -> PriorEstimate:
    """Lipton et al.'s black-box shift estimate from hard predictions."""
    num_classes = len(source_prior)
    joint = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    joint.index_put_((val_preds.long().cpu(), val_labels.long().cpu()), torch.ones(len(val_labels), dtype=torch.float64),
                     accumulate=True)
    joint /= len(val_labels)  # joint[i, j] = P(pred i, true j) on validation
    mu = torch.bincount(target_preds.long().cpu(), minlength=num_classes).double() / len(target_preds)
    note = None
    rank = int(torch.linalg.matrix_rank(joint))
    if rank < num_classes:
        note = f"the validation confusion matrix has rank {rank} < {num_classes} (a class never predicted); least-squares solution"
    weights = (torch.linalg.pinv(joint) @ mu).clamp_min(0)
    prior = weights * source_prior.double()
    if float(prior.sum()) <= 0:
        return PriorEstimate(source_prior.double() / source_prior.double().sum(), "BBSE found no positive weight; kept the validation prior")
    return PriorEstimate(prior / prior.sum(), note)


@dataclass
class ShiftInputs:
    """What the corrections may use for one evaluated (resampled) set."""

    logits: torch.Tensor  # raw model logits of the evaluated set
    calibrator: Calibrator  # the run's calibration (fitted on val)
    log_q: torch.Tensor  # calibrated log-posteriors of the evaluated set (w.r.t. source_prior)
    true_prior: torch.Tensor  # the evaluated set's class frequencies (what estimates are measured against)
    target_prior: torch.Tensor  # the prior the spec stands for (priors.prior_weights), for `known`
    source_prior: torch.Tensor  # the validation split's class frequencies
    val_log_q: torch.Tensor
    val_labels: torch.Tensor


# name -> function giving (target prior, or None for the raw argmax; estimated?; note)
CORRECTIONS: dict[str, Callable[[ShiftInputs], tuple[Optional[PriorEstimate], bool]]] = {
    "none": lambda inp: (None, False),
    "known": lambda inp: (PriorEstimate(inp.target_prior), False),
    "em": lambda inp: (em_prior(inp.log_q, inp.source_prior), True),
    "bbse": lambda inp: (bbse_prior(inp.val_log_q.argmax(-1), inp.val_labels, inp.log_q.argmax(-1), inp.source_prior), True),
}


def corrected_predictions(name: str, inputs: ShiftInputs) -> tuple[torch.Tensor, Optional[PriorEstimate], bool]:
    """Predictions of one correction: the raw argmax, or priors.target_prior_scores at its prior."""
    if name not in CORRECTIONS:
        raise LongtailError(f"unknown label-shift correction '{name}'; choose one of {', '.join(CORRECTIONS)}")
    estimate, estimated = CORRECTIONS[name](inputs)
    if estimate is None:
        return inputs.logits.argmax(-1), None, False
    scores = target_prior_scores(inputs.logits, inputs.calibrator, source_log_prior(inputs.source_prior),
                                 estimate.prior.double().log())
    return scores.argmax(-1), estimate, estimated


# ----------------------------------------------------------------------------- runs


def class_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(labels.long().cpu(), minlength=num_classes).double() / len(labels)


def validation_of(run, purpose: str) -> dict[str, torch.Tensor]:
    """The run's validation outputs, or the one error that says how to get a validation split."""
    val = run.splits.get("val")
    if val is None:
        raise no_validation_error(run.cfg, purpose)
    return val


def _calibration(run, val: dict[str, torch.Tensor], method: str) -> tuple[Calibrator, torch.Tensor]:
    """The run's stored calibration (fitted on this validation split when it has none, or another method),
    and the validation prior."""
    block = run_calibrator(run.ckpt, val, method)
    return Calibrator.from_dict(block), class_prior(val["labels"], len(run.class_counts))


def shift_evaluation(run, priors: Sequence[str] = DEFAULT_PRIORS, seed: int = DEFAULT_SEED,
                     calibration: str = DEFAULT_CALIBRATION, log: Callable[[str], None] = lambda line: None) -> dict:
    """shift.json's body for a run evaluated once (evaluation.RunOutputs with 'val' and 'test')."""
    parsed = [parse_prior(p) for p in priors]  # every spec checked before any work
    val, test = validation_of(run, "longtail shift"), run.split("test")
    calibrator, source = _calibration(run, val, calibration)
    num_classes = len(run.class_counts)
    log_q, val_log_q = calibrator.log_probs(test["logits"]), calibrator.log_probs(val["logits"])
    rows = []
    for prior in parsed:
        keep = resample(test["labels"], prior, run.class_counts, seed, run.class_names)
        labels = test["labels"][keep]
        target = prior_weights(prior, run.class_counts, run.class_names)
        inputs = ShiftInputs(test["logits"][keep], calibrator, log_q[keep], class_prior(labels, num_classes), target,
                             source, val_log_q, val["labels"])
        for name in CORRECTIONS:
            preds, estimate, estimated = corrected_predictions(name, inputs)
            if estimate is not None and estimate.note:
                log(f"{prior.spec}, {name}: {estimate.note}")
            m = evaluate_predictions(preds, labels, run.class_counts)
            l1 = float((estimate.prior - inputs.true_prior).abs().sum()) if estimated else None
            rows.append({"test_prior": prior.spec, "n_images": len(labels), "correction": name,
                         "top1": m["top1"], "mean_class_acc": m["mean_class_acc"], "prior_l1": l1})
    block = {"method": calibrator.method, "temperature": calibrator.temperature, "split": "val",
             "ece_before": ece(test["logits"].double().softmax(-1), test["labels"]),
             "ece_after": ece(log_q.exp(), test["labels"])}
    return {"calibration": block, "rows": rows}


def format_shift(result: dict, title: str) -> str:
    cal = result["calibration"]
    lines = [f"{title}",
             f"calibration: {cal['method']} fitted on {cal['split']} (T = {cal['temperature']:.3f}); "
             f"ECE on the test split {cal['ece_before']:.2f} % before, {cal['ece_after']:.2f} % after",
             f"{'test prior':<14} {'images':>7} {'correction':<10} {'top1':>7} {'mean/class':>10} {'prior L1':>9}"]
    for r in result["rows"]:
        l1 = "-" if r["prior_l1"] is None else f"{r['prior_l1']:.3f}"
        mca = "n/a" if r["mean_class_acc"] is None else f"{r['mean_class_acc']:.2f}"
        lines.append(f"{r['test_prior']:<14} {r['n_images']:>7} {r['correction']:<10} {r['top1']:7.2f} {mca:>10} {l1:>9}")
    return "\n".join(lines)


def _check_specs(specs: Sequence[str], ckpt: dict) -> None:
    """Every spec, and every prior file's contents, checked against the run's classes before the model runs."""
    for spec in specs:
        prior_weights(parse_prior(spec), ckpt["class_counts"], class_names_of(ckpt))


def run_shift(path: str | Path, priors: Sequence[str] = DEFAULT_PRIORS, seed: int = DEFAULT_SEED,
              overrides: Sequence[str] = (), calibration: str = DEFAULT_CALIBRATION, write: bool = True,
              log: Callable[[str], None] = print) -> dict:
    """`longtail shift`: evaluate the run's checkpoint once, print the table, write RUN_DIR/shift.json."""
    from .checkpoint import write_json_atomic

    for p in priors:
        parse_prior(p)  # a typo fails before the checkpoint is read
    if not 0 <= seed < 2**32:
        raise LongtailError(f"--seed must be an integer from 0 to 2**32 - 1, got {seed}")
    if calibration not in ("temperature", "bcts"):
        raise LongtailError(f"unknown calibration '{calibration}'; choose temperature or bcts")
    cfg, ckpt, ckpt_path = load_run(path, overrides)
    _check_specs(priors, ckpt)
    run = outputs_of(cfg, ckpt, ckpt_path, ("val", "test"))
    result = shift_evaluation(run, priors, seed, calibration, log)
    log(format_shift(result, f"label shift: test priors x corrections, accuracy (%) of {run.ckpt_path} (seed {seed})"))
    if write:
        out = run_directory(path) / "shift.json"
        write_json_atomic(out, result)
        log(f"wrote {out}")
    return result


def parse_prior_list(text: str) -> list[str]:
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise LongtailError(f"--priors '{text}' names no test prior; e.g. --priors forward-50,uniform,backward-50")
    return specs


# ----------------------------------------------------------------------------- evaluate --target-prior


def target_prior_metrics(run, spec: str, seed: int = DEFAULT_SEED, calibration: str = DEFAULT_CALIBRATION) -> dict:
    """The test split resampled to `spec`, predictions corrected to that (known) prior q, the one
    predict --target-prior uses (priors.target_prior_scores): the usual metrics at the top level, the
    uncorrected argmax on the same images under 'raw'."""
    prior = parse_prior(spec)
    val, test = validation_of(run, "--target-prior"), run.split("test")
    keep = resample(test["labels"], prior, run.class_counts, seed, run.class_names)
    labels, logits = test["labels"][keep], test["logits"][keep]
    calibrator, source = _calibration(run, val, calibration)
    num_classes = len(run.class_counts)
    log_q = prior_weights(prior, run.class_counts, run.class_names).log()
    scores = target_prior_scores(logits, calibrator, source_log_prior(source), log_q)
    metrics = evaluate_predictions(scores.argmax(-1), labels, run.class_counts)
    metrics.update({
        "raw": evaluate_predictions(logits.argmax(-1), labels, run.class_counts),
        "posthoc": None,
        "target_prior": {"spec": spec, "seed": seed, "counts": torch.bincount(labels, minlength=num_classes).tolist(),
                         "prior": log_q.exp().tolist(), "calibration": calibrator.method,
                         "temperature": calibrator.temperature},
        "calibration": calibration_summary({"logits": logits, "labels": labels}, val),
        "indices": keep.tolist(),  # the test images kept (positions in the test split)
        "predictions": scores.argmax(-1).tolist(),
    })
    return metrics


def format_target_prior(metrics: dict, title: str) -> str:
    block = metrics["target_prior"]
    raw = format_table(metrics["raw"], f"{title}, test split resampled to '{block['spec']}' "
                       f"({metrics['num_images']} images, seed {block['seed']}), raw argmax:")
    known = format_table(metrics, f"{title}, corrected to that known prior ({block['calibration']} calibration on val):")
    return "\n".join([raw, known, format_calibration(metrics["calibration"])])


def evaluate_target_prior(path: str | Path, spec: str, overrides: Sequence[str] = (), seed: int = DEFAULT_SEED,
                          calibration: str = DEFAULT_CALIBRATION) -> dict:
    """`longtail evaluate RUN --target-prior SPEC`: the checkpoint run once over val and test."""
    parse_prior(spec)  # a typo fails before the checkpoint is read
    cfg, ckpt, ckpt_path = load_run(path, overrides)
    _check_specs([spec], ckpt)
    run = outputs_of(cfg, ckpt, ckpt_path, ("val", "test"))
    metrics = target_prior_metrics(run, spec, seed, calibration)
    metrics.update({"split": "test", "checkpoint_path": str(run.ckpt_path), "class_counts": run.class_counts})
    return metrics
