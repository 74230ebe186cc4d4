"""The input spec: how an image becomes the network's input, as one small frozen record built once per run,
stored once in its checkpoint (ckpt["input"]) and taken by every pipeline (device, loader, crop-decode, predict,
export).

    channels     1 (Pillow 'L') or 3 ('RGB')
    size         S: the network sees S x S
    crop_pct     evaluation's resize ratio: the short side is resized to R = floor(S / crop_pct), then the centre
                 S x S is kept (timm's convention; crop_pct 1.0 resizes the short side to S). None: longtail's rule
                 for image files, R = round(S * 256 / 224) (224 -> 256)
    interpolation  of every resize (bilinear, or a pretrained backbone's: bicubic for CLIP), antialiased
    mean, std    x[c] = (pixel[c] / 255 - mean[c]) / std[c], applied by `normalize` and nowhere else

An image already S x S with R = S is used as it is (in-memory datasets at their native size).

`build_input_spec` resolves it once from the dataset (channels, statistics, native size of an in-memory set),
the pretrained backbone (`BackboneInput`, from models.backbone_preprocessing) and the config's overrides
(data.image_size, data.mean, data.std, data.crop_pct). Defaults of crop_pct: data.crop_pct when set; else for
image files the backbone's own (timm's pretrained_cfg, 1.0 for open_clip's CLIP), or None without a pretrained
backbone; in-memory datasets 1.0 (the whole image, resized to the backbone's size when it has one, as training
sees it).

This module imports no torch at import time (config validation and `inspect` read it); the tensor helpers take
tensors and use their methods.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from .errors import LongtailError

INTERPOLATIONS = ("bilinear", "bicubic")
CONFIG_KEYS = ("data.image_size", "data.mean", "data.std", "data.crop_pct")  # the config keys that set a spec
FIELDS = ("channels", "size", "crop_pct", "interpolation", "mean", "std")
Box = tuple[float, float, float, float]  # left, top, width, height in original pixels


def eval_resize(size: int, crop_pct: Optional[float]) -> int:
    """The short side R before the centre crop: floor(S / crop_pct) (timm's scale_size), or for crop_pct None
    longtail's image-file rule round(S * 256 / 224). LIFT's Resize(S * 8 // 7) is crop_pct 0.875: 0.875 = 7/8
    is exact in binary, so S / 0.875 is 8S/7 correctly rounded, and floor of it is S * 8 // 7 (224 -> 256, 32 -> 36)."""
    if crop_pct is None:
        return int(round(size * 256 / 224))
    return int(math.floor(size / crop_pct))


def centre_crop_box(width: int, height: int, size: int, resize_to: int) -> Box:
    """The box of a width x height image that Resize(resize_to) (short side) + CenterCrop(size) keeps, in original
    pixels, computed as torchvision computes both steps: the long side becomes int(resize_to * long / short), the
    crop starts at int(round((side - size) / 2)) (Python's round: halves to even)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(resize_to * long / short)
    new_w, new_h = (resize_to, new_long) if width <= height else (new_long, resize_to)
    crop_top = int(round((new_h - size) / 2.0)) if new_h > size else 0
    crop_left = int(round((new_w - size) / 2.0)) if new_w > size else 0
    sx, sy = width / new_w, height / new_h
    return crop_left * sx, crop_top * sy, min(size, new_w) * sx, min(size, new_h) * sy


@dataclass(frozen=True)
class BackboneInput:
    """What a pretrained library backbone expects (models.backbone_preprocessing): its input size (None: any),
    interpolation, mean/std (0..1 scale) and evaluation crop_pct."""

    image_size: Optional[int]
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float


@dataclass(frozen=True)
class InputSpec:
    """How an image becomes the network's input (module docstring)."""

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: Optional[float] = None
    interpolation: str = "bilinear"

    def eval_resize_size(self) -> int:
        """R: the short side before the centre crop."""
        return eval_resize(self.size, self.crop_pct)

    def eval_box(self, width: int, height: int) -> Box:
        """The region of a width x height image that evaluation keeps (then resized to S x S)."""
        return centre_crop_box(width, height, self.size, self.eval_resize_size())

    def keeps(self, height: int, width: int) -> bool:
        """Whether an image of that size is used as it is (already S x S, and R = S)."""
        return (height, width) == (self.size, self.size) and self.eval_resize_size() == self.size

    # ------------------------------------------------------------------ tensors (torch imported by the caller)

    def stats(self, device: Any) -> tuple[Any, Any]:
        """mean and std as float32 (C, 1, 1) tensors on `device`, what `normalize` takes."""
        return stats_tensor(self.mean, device), stats_tensor(self.std, device)

    def normalize(self, x: Any) -> Any:
        """uint8 pixels (or float 0..1) (..., C, H, W) -> normalised float32 (`normalize`)."""
        return normalize(x, *self.stats(x.device))

    def resize_for_eval(self, x: Any) -> Any:
        """uint8 (..., C, H, W) -> (..., C, S, S): short side to R, centre crop S x S (torchvision's Resize and
        CenterCrop, antialiased); unchanged when `keeps` it."""
        if self.keeps(*x.shape[-2:]):
            return x
        from torchvision.transforms.v2 import InterpolationMode, functional

        x = functional.resize(x, [self.eval_resize_size()], interpolation=InterpolationMode(self.interpolation), antialias=True)
        return functional.center_crop(x, [self.size, self.size])

    # ------------------------------------------------------------------ storage

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (ckpt["input"], export metadata)."""
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "the checkpoint") -> "InputSpec":
        """The spec stored by `to_dict`; a damaged one is one line."""
        if not isinstance(data, dict) or set(FIELDS) - set(data):
            missing = sorted(set(FIELDS) - set(data)) if isinstance(data, dict) else list(FIELDS)
            raise LongtailError(f"the input spec in {source} lacks {', '.join(missing)}; {source} is damaged")
        try:
            spec = cls(channels=int(data["channels"]), size=int(data["size"]), mean=tuple(float(v) for v in data["mean"]),
                       std=tuple(float(v) for v in data["std"]),
                       crop_pct=None if data["crop_pct"] is None else float(data["crop_pct"]),
                       interpolation=str(data["interpolation"]))
        except (TypeError, ValueError):
            raise LongtailError(f"the input spec in {source} has a value of the wrong type; {source} is damaged") from None
        problem = spec.problem()
        if problem:
            raise LongtailError(f"the input spec in {source} is invalid ({problem}); {source} is damaged")
        return spec

    def problem(self) -> Optional[str]:
        """What is inconsistent in the spec, or None."""
        if self.channels < 1 or self.size < 1:
            return f"channels {self.channels} and size {self.size} must be positive"
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            return f"mean/std have {len(self.mean)}/{len(self.std)} values for {self.channels} channels"
        if not all(v > 0 for v in self.std):
            return f"std {list(self.std)} must be positive"
        if self.crop_pct is not None and not 0 < self.crop_pct <= 1:
            return f"crop_pct {self.crop_pct} must be in (0, 1]"
        if self.interpolation not in INTERPOLATIONS:
            return f"interpolation '{self.interpolation}' is not one of {', '.join(INTERPOLATIONS)}"
        return None

    def describe_resize(self) -> str:
        """One line: what evaluation, predict and an export's user do before normalising."""
        rule = "longtail's 256/224" if self.crop_pct is None else f"crop_pct {self.crop_pct:g}"
        keep = f" (an image of exactly {self.size} x {self.size} is used as it is)" if self.eval_resize_size() == self.size else ""
        return (f"short side to {self.eval_resize_size()} ({rule}; {self.interpolation}, antialiased), then centre crop "
                f"{self.size} x {self.size}{keep}")


# ----------------------------------------------------------------------------- the one normalisation


def stats_tensor(values: Sequence[float], device: Any) -> Any:
    """Per-channel values as a float32 (C, 1, 1) tensor on `device`."""
    import torch

    return torch.as_tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1)


def normalize(x: Any, mean: Any, std: Any) -> Any:
    """(x / 255 - mean) / std per channel: THE normalisation, the only function of longtail that applies mean and
    std (tests/test_input_spec.py checks it). `x`: uint8 pixels, or float32 already in 0..1 (after the batched
    colour jitter); `mean`, `std`: float32 (C, 1, 1) on x's device (`stats_tensor`). The operations are those of
    torchvision's v2.ToDtype(float32, scale=True) then v2.Normalize, so every pipeline gives bit-identical inputs
    for the same pixels."""
    if not x.is_floating_point():
        return x.float().mul_(1.0 / 255).sub_(mean).div_(std)
    return x.sub(mean).div_(std)


# ----------------------------------------------------------------------------- building it once


@dataclass(frozen=True)
class DatasetInput:
    """What the dataset contributes: its name (for messages), channels, own statistics, and the side of its
    images when they are held in memory (None: image files, cropped to data.image_size)."""

    name: str
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_size: Optional[int] = None


@dataclass(frozen=True)
class Overrides:
    """The config keys that set the spec (data.image_size, data.mean, data.std, data.crop_pct), and the model's
    name for notes."""

    image_size: int
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    crop_pct: Optional[float] = None
    model: str = ""


@dataclass(frozen=True)
class BuiltSpec:
    """The spec and the lines to print about it (a backbone's size that differs from the run's)."""

    spec: InputSpec
    notes: tuple[str, ...] = field(default_factory=tuple)


def build_input_spec(dataset: DatasetInput, backbone: Optional[BackboneInput], overrides: Overrides) -> BuiltSpec:
    """The run's spec, in one pass: the dataset's statistics, replaced by a pretrained backbone's when its channels
    match, replaced by data.mean / data.std when set; the backbone's interpolation; size and crop_pct as the module
    docstring says. In-memory images are resized to the backbone's input size (LIFT feeds CIFAR to CLIP at 224 px)."""
    for key, values in (("mean", overrides.mean), ("std", overrides.std)):
        if values is not None and len(values) != dataset.channels:
            raise LongtailError(f"config key 'data.{key}' has {len(values)} values but '{dataset.name}' images have "
                                f"{dataset.channels} channels; give one value per channel")
    mean, std, interpolation, notes = tuple(dataset.mean), tuple(dataset.std), "bilinear", []
    if backbone is not None:
        interpolation = backbone.interpolation
        if len(backbone.mean) == dataset.channels:
            mean, std = tuple(backbone.mean), tuple(backbone.std)
    if overrides.mean is not None:
        mean = tuple(float(v) for v in overrides.mean)
    if overrides.std is not None:
        std = tuple(float(v) for v in overrides.std)
    wanted = None if backbone is None else backbone.image_size
    if dataset.native_size is None:  # image files: cropped to data.image_size
        size = overrides.image_size
        if wanted is not None and wanted != size:
            notes.append(f"{overrides.model} was pretrained at {wanted} px; this run resizes to data.image_size={size}")
        default_crop = None if backbone is None else backbone.crop_pct
    else:
        size = dataset.native_size
        if wanted is not None and wanted != size:
            notes.append(f"images are resized from {size} to {wanted} px, {overrides.model}'s input size")
            size = wanted
        default_crop = 1.0
    crop_pct = default_crop if overrides.crop_pct is None else float(overrides.crop_pct)
    spec = InputSpec(dataset.channels, int(size), mean, std, crop_pct, interpolation)
    problem = spec.problem()
    if problem:
        raise LongtailError(f"the input of '{dataset.name}' cannot be built ({problem}); check data.mean, data.std, data.crop_pct")
    return BuiltSpec(spec, tuple(notes))


__all__ = ["InputSpec", "BackboneInput", "DatasetInput", "Overrides", "BuiltSpec", "build_input_spec", "normalize",
           "stats_tensor", "eval_resize", "centre_crop_box"]
