"""Post-hoc corrections of a trained model's predictions: each a rule registered with `register_posthoc`.

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
from typing import Optional, Sequence

import torch
from torch import nn

from . import catalog
from .calibration import format_calibration
from .catalog import register_posthoc
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
    """What a rule may need besides the logits and tau (its record's `needs` says which).

    Example, a rule reading the training class counts:
        >>> import torch, longtail
        >>> @longtail.register_posthoc("half_la", display="half LA", needs=(), traceable=True)
        ... def half_la(logits, tau, inputs: longtail.PosthocInputs):
        ...     counts = torch.as_tensor(inputs.class_counts, dtype=logits.dtype)
        ...     return logits - 0.5 * tau * torch.log(counts / counts.sum())
    """

    class_counts: Sequence[int]
    classifier_weight: Optional[torch.Tensor] = None  # "classifier_weight": the (C, D) single linear head
    class_mass: Optional[torch.Tensor] = None  # "class_mass": per-class prediction mass; None = transductive


# Each rule is one record in longtail/catalog.py (needs, display name, traceable) plus its function here. A rule
# that is a per-class affine map of the logits also gives `constants(tau, inputs) -> (scale, bias)`, scores =
# z * scale + bias up to a per-row constant: predict applies them and export folds them into the classifier.


def _la_constants(tau: float, inp: PosthocInputs) -> tuple[None, torch.Tensor]:
    return None, logit_adjust(torch.zeros(1, len(inp.class_counts)), inp.class_counts, tau)[0]


def _pn_constants(tau: float, inp: PosthocInputs) -> tuple[None, torch.Tensor]:
    return None, rebalance(torch.ones(1, len(inp.class_counts)), tau, inp.class_mass).log()[0]  # -tau * log S


def _tau_norm_constants(tau: float, inp: PosthocInputs) -> tuple[torch.Tensor, None]:
    return tau_norm(torch.ones(1, len(inp.class_counts)), inp.classifier_weight, tau, input="logits")[0], None


@register_posthoc("la", constants=_la_constants)
def _la(logits: torch.Tensor, tau: float, inp: PosthocInputs) -> torch.Tensor:
    return logit_adjust(logits, inp.class_counts, tau)


@register_posthoc("pn", constants=_pn_constants)
def _pn(logits: torch.Tensor, tau: float, inp: PosthocInputs) -> torch.Tensor:
    return rebalance(logits.float().softmax(-1), tau, inp.class_mass)


@register_posthoc("tau_norm", constants=_tau_norm_constants)
def _tau_norm(logits: torch.Tensor, tau: float, inp: PosthocInputs) -> torch.Tensor:
    return tau_norm(logits, inp.classifier_weight, tau, input="logits")


def classifier_weight(model: nn.Module) -> Optional[torch.Tensor]:
    """The (C, D) weight of the model's single linear head `model.classifier`, if it has one."""
    weight = getattr(getattr(model, "classifier", None), "weight", None)
    return weight.detach().float().cpu() if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


def rule(name: str) -> catalog.Entry:
    """The record of post-hoc rule `name` (one line with a did-you-mean when unknown)."""
    return catalog.get("posthoc", name)


def needs(name: str, what: str) -> bool:
    """Whether rule `name` needs `what` (catalog.RULE_NEEDS); 'none' needs nothing."""
    return name != catalog.NO_RULE and what in catalog.entry("posthoc", name).facts.get("needs", ())


def uses_prior(name: str) -> bool:
    """Whether rule `name` adjusts by the training prior (which evaluate's --imbalance-factor replaces)."""
    return name != catalog.NO_RULE and bool(catalog.entry("posthoc", name).facts.get("prior"))


def needs_val_mass(name: str, mass_source: str) -> bool:
    """The rule's class mass comes from the validation split (eval.pn_mass=val)."""
    return needs(name, "class_mass") and mass_source == "val"


def display_name(name: str) -> str:
    """What reports call the rule (its record's display name; the name itself when not registered here)."""
    try:
        return catalog.entry("posthoc", name).display
    except LongtailError:
        return name


def check_name(name: str) -> None:
    rule(name)


def check_posthoc(name: str, weight: Optional[torch.Tensor] = None) -> None:
    """The name is known and the model has what the rule needs."""
    check_name(name)
    if needs(name, "classifier_weight") and weight is None:
        raise LongtailError(f"{name} needs a model with a single linear head `model.classifier`; this model has none")


def apply_posthoc(name: str, logits: torch.Tensor, tau: float, inputs: PosthocInputs) -> torch.Tensor:
    check_posthoc(name, inputs.classifier_weight)
    return rule(name).obj(logits, tau, inputs)


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
    if posthoc != catalog.NO_RULE:
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
    if posthoc == catalog.NO_RULE:
        return {**raw, **extra, "raw": raw, "posthoc": None}
    mass = None
    if needs_val_mass(posthoc, pn_mass):
        if val is None:
            raise LongtailError("pn with class mass 'val' needs a validation split; use the transductive class mass instead")
        mass = class_mass(val["logits"])
    inputs = PosthocInputs(prior_counts if prior_counts is not None else class_counts, weight, mass)
    adjusted = scored_metrics(test["logits"], test["labels"], class_counts, posthoc, tau, inputs)
    block = {"name": posthoc, "tau": tau, "class_mass": pn_mass if needs(posthoc, "class_mass") else None}
    if uses_prior(posthoc):
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
