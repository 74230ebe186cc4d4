"""Post-hoc corrections of a trained model's predictions: one table from name to function.

- la (Menon et al., ICLR 2021): argmax_c z_c - tau * log pi_c, pi the training class prior.
- pn, "prediction re-balancing" of the GALA/BaGMar code: p = softmax(z), S_c = the summed p_c over a
  set of images, predict argmax_c p_c / S_c ** tau. The released code takes S on the evaluated set
  itself (transductive); estimated on a validation split it becomes an ordinary fixed correction.
- tau_norm (Kang et al., ICLR 2020): argmax_c z_c / ||w_c|| ** tau, w_c the classifier row of class c.

Each correction returns scores whose argmax is the prediction. All of them are the identity at
tau = 0 (pn and tau_norm up to a positive per-row factor that leaves the argmax unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .calibration import format_calibration
from .errors import LongtailError
from .priors import log_prior
from .metrics import TABLE_KEYS, evaluate_predictions, expert_metrics, format_rows, format_table

MASS_SOURCES = ("val", "transductive")


def logit_adjust(logits: torch.Tensor, class_counts: Sequence[int] | torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """logits - tau * log pi."""
    return logits - tau * log_prior(class_counts).to(logits.device, logits.dtype)


def rebalance(probs: torch.Tensor, tau: float = 1.0, class_mass: Optional[torch.Tensor] = None) -> torch.Tensor:
    """probs / S ** tau with S = probs.sum(0) (transductive) or the given per-class `class_mass`."""
    mass = probs.sum(0) if class_mass is None else torch.as_tensor(class_mass, dtype=probs.dtype, device=probs.device)
    if mass.shape != probs.shape[-1:]:
        raise LongtailError(f"class_mass has shape {tuple(mass.shape)} but the predictions have {probs.shape[-1]} classes")
    # a class never predicted has zero mass; clamping keeps its score finite (and largest), as 0/0 would not
    return probs / mass.clamp_min(torch.finfo(probs.dtype).tiny) ** tau


def tau_norm(logits_or_features: torch.Tensor, classifier_weight: torch.Tensor, tau: float,
             *, input: str = "auto") -> torch.Tensor:
    """Weight normalisation. Logits (N, C): z / ||w||^tau. Features (N, D): f @ (w / ||w||^tau)^T
    (Kang et al.'s form, without the bias). `input` = logits | features | auto (by the last dimension,
    an error when C == D)."""
    num_classes, dim = classifier_weight.shape
    if input == "auto":
        if num_classes == dim:
            raise LongtailError(f"tau_norm cannot tell logits from features when classes = feature size = {dim}; pass input='logits' or 'features'")
        input = "logits" if logits_or_features.shape[-1] == num_classes else "features"
    norms = classifier_weight.detach().to(logits_or_features).norm(dim=1).pow(tau)
    if input == "logits":
        return logits_or_features / norms
    if input == "features":
        return logits_or_features @ (classifier_weight.detach().to(logits_or_features) / norms[:, None]).t()
    raise LongtailError(f"tau_norm input must be logits, features or auto; got {input!r}")


@dataclass
class PosthocInputs:
    """What the corrections may need besides the logits and tau."""

    class_counts: Sequence[int]
    classifier_weight: Optional[torch.Tensor] = None  # tau_norm
    class_mass: Optional[torch.Tensor] = None  # pn; None = transductive


POSTHOC: dict[str, Callable[[torch.Tensor, float, PosthocInputs], torch.Tensor]] = {
    "la": lambda logits, tau, inp: logit_adjust(logits, inp.class_counts, tau),
    "pn": lambda logits, tau, inp: rebalance(logits.float().softmax(-1), tau, inp.class_mass),
    "tau_norm": lambda logits, tau, inp: tau_norm(logits, inp.classifier_weight, tau, input="logits"),
}


def classifier_weight(model: nn.Module) -> Optional[torch.Tensor]:
    """The (C, D) weight of the model's single linear head `model.classifier`, if it has one."""
    weight = getattr(getattr(model, "classifier", None), "weight", None)
    return weight.detach().float().cpu() if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def check_name(name: str) -> None:
    if name not in POSTHOC:
        raise LongtailError(f"unknown post-hoc correction '{name}'; choose one of {', '.join(POSTHOC)}")


def check_posthoc(name: str, weight: Optional[torch.Tensor] = None) -> None:
    """The name is known and the model has what the correction needs."""
    check_name(name)
    if name == "tau_norm" and weight is None:
        raise LongtailError("tau_norm needs a model with a single linear head `model.classifier`; this model has none")


def apply_posthoc(name: str, logits: torch.Tensor, tau: float, inputs: PosthocInputs) -> torch.Tensor:
    check_posthoc(name, inputs.classifier_weight)
    return POSTHOC[name](logits, tau, inputs)


def class_mass(logits: torch.Tensor) -> torch.Tensor:
    """PN's S: the summed softmax probabilities per class over a set of images."""
    return logits.float().softmax(-1).sum(0)


def scored_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_counts: Sequence[int],
    posthoc: str = "none",
    tau: float = 1.0,
    inputs: Optional[PosthocInputs] = None,
) -> dict:
    """Accuracy metrics of argmax predictions, after the named correction (or none)."""
    if posthoc != "none":
        logits = apply_posthoc(posthoc, logits, tau, inputs or PosthocInputs(class_counts))
    return evaluate_predictions(logits.argmax(-1), labels, class_counts)


def configured_metrics(
    posthoc: str,
    tau: float,
    pn_mass: str,
    test: dict[str, torch.Tensor],
    val: Optional[dict[str, torch.Tensor]],
    class_counts: Sequence[int],
    weight: Optional[torch.Tensor],
    prior_counts: Optional[Sequence[int]] = None,
) -> dict:
    """metrics.json's body: the configured prediction's metrics at the top level, the plain argmax
    under "raw", and a "posthoc" block naming what was applied (null when nothing was).

    `test`/`val` are `engine.predict` outputs ({'logits', 'labels'}); `val` is needed for pn with
    pn_mass "val". `prior_counts` (default `class_counts`) is the prior LA adjusts by.
    """
    raw = scored_metrics(test["logits"], test["labels"], class_counts)
    experts = expert_metrics(test, test["labels"], class_counts)  # multi-expert models: each expert's own argmax
    extra = {"experts": experts} if experts else {}
    if posthoc == "none":
        return {**raw, **extra, "raw": raw, "posthoc": None}
    mass = None
    if posthoc == "pn" and pn_mass == "val":
        if val is None:
            raise LongtailError("pn with class mass 'val' needs a validation split; use the transductive class mass instead")
        mass = class_mass(val["logits"])
    inputs = PosthocInputs(prior_counts if prior_counts is not None else class_counts, weight, mass)
    adjusted = scored_metrics(test["logits"], test["labels"], class_counts, posthoc, tau, inputs)
    block = {"name": posthoc, "tau": tau, "class_mass": pn_mass if posthoc == "pn" else None}
    if posthoc == "la":
        block["prior_counts"] = list(inputs.class_counts)
    return {**adjusted, **extra, "raw": raw, "posthoc": block}


def format_configured(metrics: dict, title: str) -> str:
    """configured_metrics' result for the terminal under `title`. With a correction applied: one table
    comparing the raw argmax with the corrected prediction of the same model, and their difference
    (multi-expert models: the raw table, then the corrected one, each with a row per expert); then the
    calibration block (ECE / NLL / Brier) if present."""
    calibration = "\n" + format_calibration(metrics["calibration"]) if metrics.get("calibration") else ""
    if metrics["posthoc"] is None:
        return format_table(metrics, title + ":") + calibration
    described = describe_posthoc(metrics["posthoc"])
    if metrics.get("experts"):
        raw = format_table(metrics["raw"], f"{title}, raw argmax:")
        return raw + "\n" + format_table(metrics, f"{title}, {described}:") + calibration
    return format_comparison(metrics["raw"], metrics, described, f"{title}, without and with {described}:") + calibration


def format_comparison(raw: dict, corrected: dict, correction: str, title: str = "") -> str:
    """Three rows under one header: the raw argmax, the corrected prediction (labelled `correction`),
    and the change (corrected - raw, in points; n/a where either is undefined)."""
    change = {k: None if raw.get(k) is None or corrected.get(k) is None else corrected[k] - raw[k] for k in TABLE_KEYS}
    rows = [("raw argmax", raw), (correction, corrected), ("change", change)]
    return format_rows(rows, title, signed=("change",))


def describe_posthoc(block: dict) -> str:
    """One phrase for a "posthoc" block, e.g. 'post-hoc pn (tau 1.0, class mass from val)'."""
    text = f"post-hoc {block['name']} (tau {block['tau']:g}"
    if block.get("class_mass"):
        text += ", class mass " + ("from val" if block["class_mass"] == "val" else "transductive on the evaluated set")
    return text + ")"
