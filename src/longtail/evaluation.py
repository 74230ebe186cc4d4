"""Re-evaluating saved models: a checkpoint carries the config and class counts it needs.

`load_outputs` runs the model once over the splits asked for; every metric, raw or post-hoc, at
any tau, is then computed from those stored logits (`evaluate_checkpoint`, and `tune`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from . import catalog, distributed
from .calibration import calibration_summary
from .catalog import NO_RULE
from .config import Config
from .data import long_tailed_counts
from .inference import predict_split
from .errors import LongtailError
from .metrics import class_names_of, with_class_names
from .posthoc import (PosthocInputs, check_name, class_mass, classifier_weight, configured_metrics, needs_val_mass,
                      scored_metrics, uses_prior)
from .run import check_bundle, fit_calibrator, load_data, restore_model, rule_of
from .zeroshot import load_run
from .selection import protocol_fields


@dataclass
class RunOutputs:
    """A run's checkpoint evaluated once: logits and labels per split ({'logits', 'labels'})."""

    cfg: Config
    ckpt_path: Path
    class_counts: list[int]  # the training counts saved with the checkpoint
    weight: Optional[torch.Tensor]  # model.classifier.weight, for tau_norm
    splits: dict[str, Optional[dict[str, torch.Tensor]]]  # None: the run has no such split
    ckpt: dict = field(default_factory=dict, repr=False)  # the checkpoint (class names, stored calibration)

    @property
    def class_names(self) -> list[str]:
        return class_names_of(self.ckpt)

    def split(self, name: str, purpose: str = "", alternative: str = "use --split test") -> dict[str, torch.Tensor]:
        out = self.splits.get(name)
        if out is None:
            raise LongtailError(
                f"the run has no {'validation' if name == 'val' else name} split (dataset.val_source="
                f"{self.cfg.dataset.val_source}){purpose}; add the override dataset.val_source=test_holdout (a labelled "
                f"hold-out of the test set, e.g. with dataset.val_per_class=20), or {alternative}"
            )
        return out


def load_outputs(path: str | Path, overrides: Sequence[str] = (), splits: Sequence[str] = ("val", "test")) -> RunOutputs:
    return outputs_of(*load_run(path, overrides), splits)


def outputs_of(cfg: Config, ckpt: dict, ckpt_path: Path, splits: Sequence[str]) -> RunOutputs:
    """Run a loaded checkpoint once over each split named (val and/or test)."""
    runtime = distributed.setup(cfg.device)
    try:
        bundle = load_data(cfg, ckpt)  # the run's stored input spec
        check_bundle(bundle, ckpt)
        model = restore_model(cfg, ckpt, runtime.device, ckpt_path)
        data = {"val": bundle.val, "test": bundle.test}
        outputs = {s: (predict_split(model, data[s], bundle, cfg, runtime) if data[s] is not None else None) for s in splits}
    finally:
        distributed.cleanup()
    return RunOutputs(cfg, ckpt_path, list(ckpt["class_counts"]), classifier_weight(model), outputs, ckpt)


def prior_counts(
    train_counts: Sequence[int], cfg: Config, imbalance_factor: Optional[float] = None,
    class_counts: Optional[Sequence[int]] = None,
) -> list[int]:
    """The counts `la` adjusts by: the checkpoint's training counts, or those of another imbalance
    factor (same n_max and profile), or an explicit list (mmpretrain's `imb_ratio` override)."""
    if imbalance_factor is not None and class_counts is not None:
        raise LongtailError("pass either an imbalance factor or class counts, not both")
    if imbalance_factor is not None:
        return long_tailed_counts(max(train_counts), len(train_counts), imbalance_factor, cfg.dataset.profile)
    if class_counts is not None:
        counts = list(class_counts)
        if len(counts) != len(train_counts) or any(int(n) != n or n < 1 for n in counts):
            raise LongtailError(
                f"class counts must be {len(train_counts)} positive integers (one per class), got {len(counts)} values"
            )
        return [int(n) for n in counts]
    return list(train_counts)


def evaluate_checkpoint(
    path: str | Path,
    split: str = "test",
    overrides: Sequence[str] = (),
    posthoc: Optional[str] = None,
    tau: Optional[float] = None,
    pn_mass: Optional[str] = None,
    imbalance_factor: Optional[float] = None,
    class_counts: Optional[Sequence[int]] = None,
) -> dict:
    """Metrics of a saved model on `split` under a prediction rule (no retraining): by default the run's own
    eval.posthoc / eval.tau, so the test metrics equal metrics.json's; posthoc "none" is the raw argmax.

    pn_mass (default: the run's eval.pn_mass) is where PN's class mass comes from: "val" or the
    evaluated split itself ("transductive"). imbalance_factor / class_counts replace the prior of `la`.
    With a validation split the result also holds "calibrator", the calibration a target prior uses
    (run.fit_calibrator; `evaluate --save` stores it with the run).
    """
    cfg, ckpt, ckpt_path = load_run(path, overrides)
    given_tau = tau is not None
    posthoc, tau = rule_of(cfg, posthoc, tau)
    if posthoc == NO_RULE and (given_tau or pn_mass is not None):
        raise LongtailError("a tau or PN class mass goes with a correction, and the rule here is the raw argmax; "
                            f"add --posthoc {'|'.join(catalog.names('posthoc'))}")
    if posthoc != NO_RULE:
        check_name(posthoc)  # a misspelt --posthoc fails before the model runs
    if (imbalance_factor is not None or class_counts is not None) and not uses_prior(posthoc):
        with_prior = "|".join(n for n in catalog.names("posthoc") if uses_prior(n))
        raise LongtailError(f"an imbalance factor or class counts only change the prior of a rule that adjusts by it; add --posthoc {with_prior}")
    pn_mass = pn_mass or cfg.eval.pn_mass
    run = outputs_of(cfg, ckpt, ckpt_path, sorted({split, "val"}))  # val (where the run has one): calibration, pn mass
    evaluated = run.split(split)
    needs_val = needs_val_mass(posthoc, pn_mass)
    val = run.split("val", " to estimate PN's class mass", "pass --pn-mass transductive") if needs_val else None
    prior = prior_counts(run.class_counts, run.cfg, imbalance_factor, class_counts)
    metrics = configured_metrics(posthoc, tau, pn_mass, evaluated, val, run.class_counts, run.weight, prior)
    no_val = "the evaluated split is the calibration split" if split == "val" else f"no validation split (dataset.val_source={cfg.dataset.val_source})"
    metrics["calibration"] = calibration_summary(evaluated, None if split == "val" else run.splits.get("val"), no_val)
    if run.splits.get("val") is not None:
        metrics["calibrator"] = fit_calibrator(run.splits["val"], len(run.class_counts))
    metrics.update({"split": split, "checkpoint_path": str(run.ckpt_path), "class_counts": run.class_counts,
                    **protocol_fields(cfg)})  # a checkpoint chosen on test says so wherever it is evaluated
    return with_class_names(metrics, class_names_of(ckpt))


def sweep(
    name: str, logits: torch.Tensor, labels: torch.Tensor, taus: Sequence[float], class_counts: Sequence[int],
    inputs: PosthocInputs,
) -> list[dict]:
    """Metrics of one correction at every tau, from the same logits."""
    rows = []
    for tau in taus:
        m = scored_metrics(logits, labels, class_counts, name, tau, inputs)
        rows.append({"tau": tau, **{k: m[k] for k in ("top1", "mean_class_acc", "many", "medium", "few")}})
    return rows


__all__ = ["RunOutputs", "load_outputs", "outputs_of", "evaluate_checkpoint", "prior_counts", "sweep", "class_mass"]
