"""What `longtail predict` and `longtail export` share: a saved run made ready for use outside training.

- Class names: the checkpoint's `class_names`, else the index strings "0" .. "C-1".
- Preprocessing (`Preprocessing`): the run's evaluation transform, from an image file to the normalised
  float32 (C, S, S) tensor the network takes. List and folder datasets: RGB, short side resized to
  round(S * 256 / 224), centre crop S (S = data.image_size), as evaluation does. In-memory datasets
  (fmnist_lt 28 x 28 grey, cifar*_lt 32 x 32 RGB): an image of exactly S x S pixels is used as it is;
  any other size is resized (short side S, antialiased) and centre-cropped to S x S. Colour follows the
  checkpoint's channels: a grey model converts colour images to Pillow's 'L' (ITU-R 601-2 luma), an RGB
  model converts grey ones to 'RGB'. Then x = (pixel / 255 - mean[c]) / std[c] with the checkpoint's mean/std.
  A run from a pretrained timm/ or clip/ backbone resizes with the backbone's interpolation (bicubic for CLIP),
  and an in-memory dataset's images go to the backbone's input size, as its training did
  (models.backbone_preprocessing, data.with_backbone_preprocessing).
- The prediction rule as per-class constants (`ScoreRule`): scores = logits * scale + bias, from the run's
  eval.posthoc / eval.tau unless overridden:

      none      scores = z
      la        scores = z - tau * log pi            pi: the checkpoint's training prior
      tau_norm  scores = z / ||w_c|| ** tau          w_c: row c of the single linear head
      pn        scores = z - tau * log S             S: the class mass on the run's validation split

  pn's scores are the log of p_c / S_c ** tau up to a per-image constant: the same argmax, and their
  softmax is pn's scores renormalised. A target prior q (predict --target-prior) adds log q. The
  probabilities reported are softmax(scores).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .config import Config
from .errors import LongtailError, one_line
from .metrics import class_names_of
from .posthoc import check_posthoc, class_mass, classifier_weight, describe_posthoc, logit_adjust, rebalance, tau_norm

# Image size of the in-memory datasets (their checkpoints do not store it).
IN_MEMORY_SIZES = {"fmnist_lt": 28, "cifar10_lt": 32, "cifar100_lt": 32}
COLOR_MODES = {1: "L", 3: "RGB"}


# ----------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocessing:
    """From an image file to the network's normalised input (see the module docstring)."""

    channels: int
    size: int  # the network's input is size x size
    resize: int  # short side before the centre crop
    always_resize: bool  # False: in-memory datasets, whose S x S images are used as they are
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"  # a pretrained backbone's (models.backbone_preprocessing)

    @property
    def color(self) -> str:
        return COLOR_MODES[self.channels]

    def load(self, path: str | Path) -> torch.Tensor:
        """uint8 (C, H, W) in the model's colour mode; raises whatever the decoder raises."""
        with Image.open(path) as image:
            array = np.asarray(image.convert(self.color))
        tensor = torch.from_numpy(array.copy())
        return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (C, H, W) -> float32 (C, S, S), normalised."""
        from torchvision.transforms import v2

        from .data.transforms import eval_transform

        if self.always_resize or tuple(image.shape[-2:]) != (self.size, self.size):
            mode = v2.InterpolationMode(self.interpolation)
            image = v2.CenterCrop(self.size)(v2.Resize(self.resize, interpolation=mode, antialias=True)(image))
        return eval_transform(self.mean, self.std)(image)

    def metadata(self) -> dict:
        """The input contract, for an export's metadata and the docs."""
        keep = "" if self.always_resize else f" (an image of exactly {self.size} x {self.size} is used as it is)"
        return {
            "layout": "NCHW", "dtype": "float32", "channels": self.channels, "color": self.color,
            "size": [self.size, self.size], "mean": list(self.mean), "std": list(self.std),
            "normalisation": "x[c] = (pixel[c] / 255 - mean[c]) / std[c], pixels as 0..255 integers",
            "resize": f"short side to {self.resize} ({self.interpolation}, antialiased), then centre crop {self.size} x {self.size}{keep}",
        }


def preprocessing(cfg: Config, ckpt: dict) -> Preprocessing:
    channels = ckpt["in_channels"]
    if channels not in COLOR_MODES:
        raise LongtailError(f"the checkpoint takes {channels}-channel images; predict and export handle 1 (grey) or 3 (RGB) channels")
    mean, std = tuple(ckpt["mean"]), tuple(ckpt["std"])
    if len(mean) != channels or len(std) != channels:
        raise LongtailError(f"the checkpoint's mean/std have {len(mean)}/{len(std)} values for {channels} channels; the checkpoint is damaged")
    from .models import backbone_preprocessing

    backbone = backbone_preprocessing(cfg.model)
    interpolation = backbone["interpolation"] if backbone is not None else "bilinear"
    if cfg.dataset.name in IN_MEMORY_SIZES:
        size = IN_MEMORY_SIZES[cfg.dataset.name]
        if backbone is not None and backbone["image_size"] not in (None, size):  # resized as data.with_backbone_preprocessing does
            return Preprocessing(channels, backbone["image_size"], backbone["image_size"], True, mean, std, interpolation)
        return Preprocessing(channels, size, size, False, mean, std, interpolation)
    from .data.transforms import resize_for_eval

    size = cfg.data.image_size
    return Preprocessing(channels, size, resize_for_eval(size), True, mean, std, interpolation)


# ----------------------------------------------------------------------------- the prediction rule


@dataclass
class ScoreRule:
    """scores = logits * scale + bias (+ log_prior); None means 1 / 0 / no prior."""

    posthoc: str
    tau: float
    scale: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    log_prior: Optional[torch.Tensor] = None
    prior_source: Optional[str] = None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        scores = logits.float()
        if self.scale is not None:
            scores = scores * self.scale.to(scores.device)
        for term in (self.bias, self.log_prior):
            if term is not None:
                scores = scores + term.to(scores.device)
        return scores

    def describe(self) -> str:
        text = "raw argmax" if self.posthoc == "none" else describe_posthoc(self.metadata())
        return text + (f", target prior from {self.prior_source}" if self.prior_source else "")

    def metadata(self) -> dict:
        return {
            "name": self.posthoc, "tau": self.tau, "class_mass": "val" if self.posthoc == "pn" else None,
            "target_prior": self.prior_source,
        }


def score_rule(posthoc: str, tau: float, class_counts: Sequence[int], weight: Optional[torch.Tensor] = None,
               mass: Optional[torch.Tensor] = None) -> ScoreRule:
    """The correction `posthoc` at `tau` as per-class constants, each computed by posthoc.py's own
    function applied to a neutral row (zeros for additive corrections, ones for tau_norm's scale)."""
    if posthoc == "none":
        return ScoreRule("none", tau)
    check_posthoc(posthoc, weight)
    num_classes = len(class_counts)
    zeros, ones = torch.zeros(1, num_classes), torch.ones(1, num_classes)
    if posthoc == "la":
        return ScoreRule(posthoc, tau, bias=logit_adjust(zeros, class_counts, tau)[0])
    if posthoc == "tau_norm":
        return ScoreRule(posthoc, tau, scale=tau_norm(ones, weight, tau, input="logits")[0])
    if mass is None:
        raise LongtailError("pn needs the class mass of the run's validation split; use --posthoc la instead")
    return ScoreRule(posthoc, tau, bias=rebalance(ones, tau, mass).log()[0])  # -tau * log S


def validation_mass(cfg: Config, ckpt: dict, ckpt_path: Path) -> torch.Tensor:
    """PN's S: the model run once over the run's validation split (which needs the run's dataset)."""
    from .evaluation import outputs_of

    if cfg.eval.pn_mass != "val":
        raise LongtailError(
            "the run's pn uses a transductive class mass (of the evaluated set), which single images do not have; "
            "pass eval.pn_mass=val to estimate it on the validation split, or use --posthoc la"
        )
    try:
        run = outputs_of(cfg, ckpt, ckpt_path, ["val"])
        val = run.split("val", " to estimate PN's class mass", "use --posthoc la")
    except LongtailError as exc:
        raise LongtailError(f"pn's class mass comes from the run's validation split, which could not be used ({one_line(exc)}); "
                            "fix dataset.root or use --posthoc la") from None
    return class_mass(val["logits"])


def configured_rule(cfg: Config, ckpt: dict, ckpt_path: Path, model: nn.Module, posthoc: Optional[str] = None,
                    tau: Optional[float] = None) -> ScoreRule:
    """The run's eval.posthoc / eval.tau, or the ones given."""
    posthoc = cfg.eval.posthoc if posthoc is None else posthoc
    tau = cfg.eval.tau if tau is None else tau
    weight = classifier_weight(model)
    if posthoc != "none":
        check_posthoc(posthoc, weight)  # before pn's pass over the validation split
    mass = validation_mass(cfg, ckpt, ckpt_path) if posthoc == "pn" else None
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
                    tau: Optional[float] = None, device: Optional[torch.device] = None) -> Deployment:
    """A run directory or checkpoint, with `key=value` overrides, its model on `device` (default: the run's
    `device` setting)."""
    from .distributed import resolve_device
    from .evaluation import load_run, restore_model

    cfg, ckpt, ckpt_path = load_run(run, overrides)
    names = class_names_of(ckpt)
    prep = preprocessing(cfg, ckpt)
    model = restore_model(cfg, ckpt, device or resolve_device(cfg.device), ckpt_path).eval()
    rule = configured_rule(cfg, ckpt, ckpt_path, model, posthoc, tau)
    return Deployment(cfg, ckpt, ckpt_path, model, names, prep, rule)


# ----------------------------------------------------------------------------- target priors


def read_target_prior(spec: str, names: Sequence[str], train_counts: Sequence[int]) -> torch.Tensor:
    """log q for a target class prior q given as a FILE of per-class weights (normalised here): plain
    text, numbers separated by commas, spaces or newlines in class-index order; or JSON, a list of
    numbers or an object {class name: weight} naming every class. A label-shift spec (`uniform`,
    `forward-IF`, `backward-IF`: longtail.shift) stands for its exponential profile over the training order."""
    path = Path(spec)
    if not path.is_file():
        from .shift import SPEC_HELP, parse_prior, profile_prior

        if spec.strip() == "uniform" or spec.strip().startswith(("forward-", "backward-")):
            return torch.tensor(profile_prior(parse_prior(spec), train_counts), dtype=torch.float64).log().float()
        raise LongtailError(f"--target-prior '{spec}' is neither a file nor a prior spec; give {SPEC_HELP} "
                            f"({len(names)} weights: numbers in class-index order, or a JSON list or {{class name: weight}} object)")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
            if isinstance(data, dict):
                unknown = sorted(set(data) - set(names))
                missing = [n for n in names if n not in data]
                if unknown or missing:
                    raise LongtailError(f"target prior '{spec}' names unknown classes {unknown[:5]} or misses {missing[:5]}; "
                                        "give one weight for each of the checkpoint's class names")
                data = [data[n] for n in names]
            values = [float(v) for v in data]
        else:
            values = [float(v) for v in text.replace(",", " ").split()]
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise LongtailError(f"target prior '{spec}' is not a list of numbers ({one_line(exc, 120)})") from None
    weights = torch.tensor(values, dtype=torch.float64)
    if len(values) != len(names):
        raise LongtailError(f"target prior '{spec}' has {len(values)} weights but the model has {len(names)} classes; give one per class")
    if not bool(torch.isfinite(weights).all()) or bool((weights <= 0).any()):
        raise LongtailError(f"target prior '{spec}' must hold positive finite weights (a class that can still occur needs a weight above 0)")
    return (weights / weights.sum()).log().float()
