"""What `longtail predict` and `longtail export` share: a saved run made ready for use outside training.

- Class names: the checkpoint's `class_names`, else the index strings "0" .. "C-1".
- Preprocessing (`Preprocessing`): the run's input spec (input_spec.InputSpec, stored in the checkpoint), from
  an image file to the normalised float32 (C, S, S) tensor the network takes: short side resized to R =
  floor(S / crop_pct) (or round(S * 256 / 224)), antialiased with the spec's interpolation, and centre-cropped to
  S x S, unless the image is already S x S and R = S; evaluation does the same. Colour follows the spec's
  channels: a grey model converts colour images to Pillow's 'L' (ITU-R 601-2 luma), an RGB model converts grey
  ones to 'RGB'. Then x = (pixel / 255 - mean[c]) / std[c] (input_spec.normalize).
- The prediction rule as per-class constants (`ScoreRule`): scores = logits * scale + bias, from the run's
  eval.posthoc / eval.tau unless overridden:

      none      scores = z
      la        scores = z - tau * log pi            pi: the checkpoint's training prior
      tau_norm  scores = z / ||w_c|| ** tau          w_c: row c of the single linear head
      pn        scores = z - tau * log S             S: the class mass on the run's validation split (stored with
                                                     the run when training ends)
      other     scores = the rule's function of z     a registered rule without per-class constants

  pn's scores are the log of p_c / S_c ** tau up to a per-image constant: the same argmax, and their
  softmax is pn's scores renormalised. A target prior q (predict --target-prior) replaces the rule by
  priors.target_prior_scores: the run's stored calibration, log p_v(c|x) - log pi_v(c) + log q(c),
  whatever the run's rule. The probabilities reported are softmax(scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .calibration import Calibrator
from .catalog import NO_RULE
from .config import Config
from .errors import LongtailError, one_line
from .metrics import class_names_of
from .posthoc import PosthocInputs, check_posthoc, class_mass, classifier_weight, describe_posthoc, needs, rule
from .priors import log_target_prior, target_prior_scores
from .input_spec import InputSpec
from .run import calibrator_of, input_spec_of, restore_model, rule_of, training_counts
from .zeroshot import load_run

COLOR_MODES = {1: "L", 3: "RGB"}


# ----------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """From an image file to the network's normalised input (see the module docstring)."""

    spec: InputSpec

    @property
    def channels(self) -> int:
        return self.spec.channels

    @property
    def size(self) -> int:
        """The network's input is size x size."""
        return self.spec.size

    @property
    def color(self) -> str:
        return COLOR_MODES[self.channels]

    def load(self, path: str | Path) -> torch.Tensor:
        """uint8 (C, H, W) in the model's colour mode; raises whatever the decoder raises."""
        with Image.open(path) as image:
            return self.pixels(image)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """A PIL image as uint8 (C, H, W) in the model's colour mode."""
        tensor = torch.from_numpy(np.asarray(image.convert(self.color)).copy())
        return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)

    @cached_property
    def transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """data.transforms.eval_transform of the spec, built once."""
        from .data.transforms import eval_transform

        return eval_transform(self.spec)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (C, H, W) -> float32 (C, S, S), normalised."""
        return self.transform(image)

    def metadata(self) -> dict:
        """The input spec, for an export's metadata and the docs."""
        spec = self.spec
        return {
            "layout": "NCHW", "dtype": "float32", "channels": self.channels, "color": self.color,
            "size": [self.size, self.size], "mean": list(spec.mean), "std": list(spec.std),
            "normalisation": "x[c] = (pixel[c] / 255 - mean[c]) / std[c], pixels as 0..255 integers",
            "resize": spec.describe_resize(), "spec": spec.to_dict(),
        }


def preprocessing(cfg: Config, ckpt: dict) -> Preprocessing:
    """The run's input spec (run.input_spec_of) as a callable transform."""
    spec = input_spec_of(cfg, ckpt)
    if spec.channels not in COLOR_MODES:
        raise LongtailError(f"the checkpoint takes {spec.channels}-channel images; predict and export handle 1 (grey) or 3 (RGB) channels")
    return Preprocessing(spec)


# ----------------------------------------------------------------------------- the prediction rule


@dataclass
class TargetPrior:
    """A target prior q with what priors.target_prior_scores needs: the run's calibration and log pi_v."""

    spec: str
    calibrator: Calibrator
    log_source: torch.Tensor  # log pi_v (float64)
    log_q: torch.Tensor  # log q (float64; -inf: a class never predicted)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return target_prior_scores(logits, self.calibrator, self.log_source, self.log_q).float()

    def metadata(self) -> dict:
        return {"spec": self.spec, "calibrator": self.calibrator.to_dict(), "log_val_prior": _floats(self.log_source),
                "log_prior": _floats(self.log_q)}


def _floats(values: torch.Tensor) -> list:
    return [float(v) for v in values]  # -inf stays -inf (JSON -Infinity)


def target_prior(cfg: Config, ckpt: dict, ckpt_path: Path, spec: str) -> TargetPrior:
    """`spec` (priors.parse_prior) for this run, with its stored calibration."""
    log_q = log_target_prior(spec, training_counts(ckpt), class_names_of(ckpt))
    calibrator, log_source = calibrator_of(cfg, ckpt, ckpt_path, "--target-prior")
    return TargetPrior(spec, calibrator, log_source, log_q)


@dataclass
class ScoreRule:
    """scores = logits * scale + bias (None means 1 / 0), the per-class constants of an affine rule; or, for a rule
    without constants, `function(logits)`, the rule itself (export traces it when its record says it is
    traceable); with a target prior, its scores instead."""

    posthoc: str
    tau: float
    scale: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    target: Optional[TargetPrior] = None
    function: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    traceable: bool = True

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.target is not None:
            return self.target.scores(logits)
        scores = logits.float()
        if self.function is not None:
            return self.function(scores).float()
        if self.scale is not None:
            scores = scores * self.scale.to(scores.device)
        if self.bias is not None:
            scores = scores + self.bias.to(scores.device)
        return scores

    def describe(self) -> str:
        if self.target is not None:
            cal = self.target.calibrator
            return f"target prior {self.target.spec} ({cal.method} calibration from val, T = {cal.temperature:.3f})"
        return "raw argmax" if self.posthoc == NO_RULE else describe_posthoc(self.metadata())

    def metadata(self) -> dict:
        return {
            "name": self.posthoc, "tau": self.tau, "class_mass": "val" if needs(self.posthoc, "class_mass") else None,
            "target_prior": None if self.target is None else self.target.spec,
        }


def score_rule(posthoc: str, tau: float, class_counts: Sequence[int], weight: Optional[torch.Tensor] = None,
               mass: Optional[torch.Tensor] = None) -> ScoreRule:
    """The rule `posthoc` at `tau` for single images: its record's per-class constants when it has them (la, pn,
    tau_norm: posthoc.py), else the rule's own function with these inputs bound."""
    if posthoc == NO_RULE:
        return ScoreRule(NO_RULE, tau)
    check_posthoc(posthoc, weight)
    if needs(posthoc, "class_mass") and mass is None:
        raise LongtailError(f"{posthoc} needs the class mass of the run's validation split; use another --posthoc "
                            "(e.g. la) instead")
    record = rule(posthoc)
    inputs = PosthocInputs(list(class_counts), weight, None if mass is None else torch.as_tensor(mass, dtype=torch.float32))
    constants = record.facts.get("constants")
    if constants is not None:
        scale, bias = constants(tau, inputs)
        return ScoreRule(posthoc, tau, scale=scale, bias=bias)
    return ScoreRule(posthoc, tau, function=lambda logits: record.obj(logits, tau, inputs),
                     traceable=bool(record.facts.get("traceable", False)))


def validation_mass(cfg: Config, ckpt: dict, ckpt_path: Path) -> torch.Tensor:
    """The class mass of the run's validation split: stored with the run when training ended (ckpt["class_mass"]),
    else (older runs) the model run once over the validation split, which needs the run's dataset."""
    from .evaluation import outputs_of

    if cfg.eval.pn_mass != "val":
        raise LongtailError(
            "the run's rule uses a transductive class mass (of the evaluated set), which single images do not have; "
            "pass eval.pn_mass=val to estimate it on the validation split, or use --posthoc la"
        )
    if ckpt.get("class_mass") is not None:
        return torch.as_tensor(ckpt["class_mass"], dtype=torch.float32)
    try:
        run = outputs_of(cfg, ckpt, ckpt_path, ["val"])
        val = run.split("val", " to estimate the class mass", "use --posthoc la")
    except LongtailError as exc:
        raise LongtailError(f"the class mass comes from the run's validation split, which could not be used ({one_line(exc)}); "
                            "fix dataset.root or use --posthoc la") from None
    return class_mass(val["logits"])


def configured_rule(cfg: Config, ckpt: dict, ckpt_path: Path, model: nn.Module, posthoc: Optional[str] = None,
                    tau: Optional[float] = None) -> ScoreRule:
    """The run's eval.posthoc / eval.tau, or the ones given."""
    posthoc, tau = rule_of(cfg, posthoc, tau)
    weight = classifier_weight(model)
    if posthoc != NO_RULE:
        check_posthoc(posthoc, weight)  # before a pass over the validation split
    mass = validation_mass(cfg, ckpt, ckpt_path) if needs(posthoc, "class_mass") else None
    return score_rule(posthoc, tau, ckpt["class_counts"], weight, mass)


@dataclass
class Deployment:
    """A run loaded for predict / export: its model (eval mode, float32 weights) and what goes with it."""

    cfg: Config
    ckpt: dict
    ckpt_path: Path
    model: nn.Module
    class_names: list[str]
    preprocessing: Preprocessing
    rule: ScoreRule


def load_deployment(run: str | Path, overrides: Sequence[str] = (), posthoc: Optional[str] = None,
                    tau: Optional[float] = None, device: Optional[torch.device] = None,
                    prior: Optional[str] = None) -> Deployment:
    """A run directory or checkpoint, with `key=value` overrides, its model on `device` (default: the run's
    `device` setting). With a target prior `prior` (a spec) the rule is priors.target_prior_scores."""
    from .distributed import resolve_device

    if prior is not None and (posthoc is not None or tau is not None):
        raise LongtailError("a target prior replaces the prediction rule (calibrated posteriors moved to that prior); "
                            "leave out --posthoc and --tau")
    cfg, ckpt, ckpt_path = load_run(run, overrides)
    names = class_names_of(ckpt)
    prep = preprocessing(cfg, ckpt)
    target = target_prior(cfg, ckpt, ckpt_path, prior) if prior is not None else None  # before the model is built
    model = restore_model(cfg, ckpt, device or resolve_device(cfg.device), ckpt_path).eval()
    rule = ScoreRule("none", 1.0, target=target) if target is not None else configured_rule(cfg, ckpt, ckpt_path, model, posthoc, tau)
    return Deployment(cfg, ckpt, ckpt_path, model, names, prep, rule)
