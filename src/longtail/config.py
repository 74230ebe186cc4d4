"""Configuration: a typed schema, YAML files and dotted command-line overrides.

Precedence is defaults < YAML < command line. Building a config touches neither disk nor
environment; the engine writes the resolved config into the run directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .errors import LongtailError


@dataclass
class DatasetConfig:
    name: str = "fmnist_lt"  # fmnist_lt | cifar10_lt | cifar100_lt | imagenet_lt | places_lt | inat2018 | folder
    root: Optional[str] = None  # None: the dataset's standard locations (see data/)
    imbalance_factor: float = 100.0  # IF = n_max / n_min of the long-tailed training subset (in-memory datasets)
    profile: str = "exp"  # class counts: exp (n_i = n_max IF^(-i/(C-1))) or step (half the classes n_max, half n_max/IF)
    seed: int = 0  # which images form the long-tailed subset
    n_max: Optional[int] = None  # None: the dataset's standard protocol
    val_per_class: int = 100  # images per class in the validation split
    val_source: str = "train_unused"  # validation from unused training images, a labelled test hold-out, or none
    download: bool = True  # allowed to fetch when the files are not found locally
    train_list: Optional[str] = None  # list-file datasets (ImageNet-LT, Places-LT, iNat)
    val_list: Optional[str] = None  # list-file or folder datasets: the validation list
    test_list: Optional[str] = None  # list-file or folder datasets: the test list
    num_classes: Optional[int] = None  # list datasets: None = from the data (train list / JSON categories)
    verify_images: bool = False  # list datasets: decode every image before training, report all failures
    # list datasets: a text file of one class name per line in class-index order (model.head_init=text needs names;
    # iNat's JSON categories give theirs); null: the names the data gives, else class indices
    class_names: Optional[str] = None
    csv: Optional[str] = None  # folder datasets: one `path,label` CSV of every image, split like a single tree
    test_per_class: int = 100  # folder datasets: test images per class taken from a single tree or CSV


@dataclass
class DataConfig:
    pipeline: str = "auto"  # device: batched augmentation on the training device; loader: per-image DataLoader; auto: device where possible
    crop: bool = True  # pad-4 random crop
    flip: bool = True  # random horizontal flip
    autoaugment: bool = False  # AutoAugment, CIFAR policy
    cutout: int = 0  # hole size in pixels, 0 = off
    sampler: str = "random"  # random: every image equally; class_balanced: a class uniformly, then an image of it
    num_workers: int = 2  # DataLoader worker processes (loader pipeline)
    image_size: int = 224  # crop size S of list and folder datasets
    randaugment: bool = False  # RandAugment (loader pipeline)
    randaugment_ops: int = 2  # RandAugment N (transforms applied per image)
    randaugment_magnitude: int = 9  # RandAugment M (0..30 scale of torchvision)
    color_jitter: float = 0.0  # brightness = contrast = saturation strength, 0 = off
    grayscale: float = 0.0  # RandomGrayscale probability (list datasets)
    blur: float = 0.0  # probability of a GaussianBlur, sigma 0.1..2 (list datasets)
    # input normalisation (x / 255 - mean) / std per channel, 0..1 scale; null: the dataset's own statistics.
    # mean [0.5, 0.5, 0.5] with std [1, 1, 1] is google-research's x / 255 - 0.5
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None  # per-channel divisor of that normalisation (0..1 scale); null: the dataset's own
    drop_last: bool = False  # drop the last partial training batch of every epoch (steps = floor(N / batch))
    # evaluation resize ratio, 0 < x <= 1: the short side becomes floor(S / crop_pct), then the centre S x S is kept
    # (0.875: 224 -> 256; LIFT's Resize(S * 8 // 7)). null: the pretrained backbone's own (timm's pretrained_cfg,
    # 1.0 for CLIP), else round(S * 256 / 224) for image files and the whole image for in-memory datasets
    crop_pct: Optional[float] = None


@dataclass
class ModelConfig:
    name: str = "resnet32"  # backbone: resnet8/20/32, resnet50, resnext50_32x4d, resnet152, *_experts, timm/<name>, clip/<name>
    num_experts: int = 3  # experts of a multi-expert model (*_experts)
    # local checkpoint path, or "torchvision" (torchvision models), "hub" (timm/ and clip/ models: their own download,
    # through the library's cache), "openai" or another open_clip tag (clip/ models)
    pretrained: Optional[str] = None
    freeze_backbone: bool = False  # decoupled training: train only `model.classifier`, frozen BN in eval mode
    pretrained_classifier: bool = False  # also load the classifier from `pretrained` (else re-initialised, cRT)
    classifier: str = "linear"  # linear (with bias) | cosine (s * cos(w_c, f), LDAM's normalised head)
    scale: float = 30.0  # s of a cosine classifier (LIFT's code uses 25 with CLIP)
    # which parameters train (models/finetune.py): full (all) | linear (the classifier only) | bias (every bias and the
    # classifier, BitFit) | block_bias (the biases inside the transformer blocks + classifier, LIFT's bias_tuning) |
    # lora (peft's LoRA on the attention and MLP projections + classifier) | lora_qv (LIFT's LoRA on the queries and
    # values + classifier) | adapter (an AdaptFormer bottleneck in parallel with each MLP block + classifier); lora,
    # lora_qv and adapter need a transformer backbone; zero_shot (clip/ models): nothing trains, the head is CLIP's,
    # the text embeddings of model.prompt (evaluate only)
    finetune: str = "full"
    lora_rank: int = 8  # model.finetune=lora / lora_qv: rank r of each LoRA update (lora: alpha = r, so B A; lora_qv: x A B / r)
    adapter_dim: Optional[int] = None  # model.finetune=adapter: bottleneck width; null: LIFT's 2**floor(log2(C / 2L))
    # how the classifier starts (models/head_init.py): random | class_means (the normalised mean feature of each class
    # over the training set, one pass) | text (clip/ models: the normalised text embedding of "a photo of a {name}.")
    head_init: str = "random"
    # head_init text and finetune zero_shot: the prompt of each class name ("{}" is the name, "_" read as a space)
    prompt: str = "a photo of a {}."


@dataclass
class LossConfig:
    name: str = "ce"  # ce | la | balanced_softmax | gala | bagmar | ldam_drw | lgla (the table in losses/__init__.py)
    tau: float = 1.0  # la: tau of CE(z + tau log pi, y); lgla: tau of the global expert
    lambda1: float = 1.0  # GALA: weight of log(theta + 1e-3)
    lambda2: float = 1.0  # GALA: weight of log(phi_y + 1e-3)
    variant: str = "released"  # GALA: released | paper
    max_margin: float = 0.5  # LDAM: the largest class margin (margins proportional to n^(-1/4))
    scale: float = 30.0  # LDAM: s of the logits (equal to model.scale with a cosine head)
    drw_epoch: int = 160  # LDAM-DRW: class-balanced re-weighting from this epoch
    drw_beta: float = 0.9999  # LDAM-DRW: beta of the class-balanced weights (1 - beta) / (1 - beta^n_c)
    num_experts: Optional[int] = None  # multi-expert losses (LGLA); null: the same as model.num_experts


@dataclass
class TrainConfig:
    epochs: int = 200  # training epochs
    batch_size: int = 128  # global batch, split over processes
    lr: float = 0.1  # peak learning rate of SGD
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum
    weight_decay: float = 5e-4  # SGD weight decay
    # weight decay of normalisation layers' weights and biases (BatchNorm, GroupNorm, LayerNorm); null: weight_decay.
    # 0 matches a Keras model whose kernel regularisers leave BatchNorm alone
    norm_weight_decay: Optional[float] = None
    schedule: str = "multistep"  # learning-rate schedule after warmup: x gamma at milestones, cosine to 0, or constant
    milestones: list[int] = field(default_factory=lambda: [160, 180])  # multistep: epochs where lr is multiplied by gamma
    gamma: float = 0.1  # multistep: lr factor at each milestone
    warmup_epochs: float = 0.0  # linear warmup length in epochs (fractions allowed)
    warmup_start_factor: float = 0.0  # lr multiplier at the start of warmup
    # step: the schedule moves every step (fractional epoch); epoch: it holds within an epoch (torch's scheduler
    # stepped once per epoch, as LIFT's CosineAnnealingLR)
    schedule_per: str = "step"
    eval_every: int = 1  # validate every N epochs
    # best_val | last | best_test (the released codes' protocol, chosen on the TEST set: optimistic, and every
    # output of the run says SELECTED ON TEST; see selection.py)
    select: str = "best_val"
    resume: bool = False  # continue from checkpoints/last.pt (what `train --resume` sets)
    # auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16 / AMX), float32 elsewhere
    amp: Union[bool, str] = "auto"
    channels_last: Union[bool, str] = "auto"  # channels_last memory format; auto: wherever bf16 autocast runs
    compile: bool = False  # torch.compile the model for training (inductor; on CPU it needs a C++ compiler)
    progress: bool = True  # a progress bar per epoch
    deterministic: bool = True  # deterministic algorithms: the same seed gives the same weights on one machine
    sync_bn: bool = True  # under DDP: BatchNorm statistics over the global batch (same result as 1 process)


@dataclass
class EvalConfig:
    batch_size: int = 1024  # images per evaluation batch
    posthoc: str = "none"  # post-hoc correction at the final test (metrics.json also keeps the raw argmax under "raw")
    tau: float = 1.0  # strength of the post-hoc correction
    # PN's per-class prediction mass: estimated on the validation split, or on the evaluated set
    # itself (transductive, as the released GALA code does)
    pn_mass: str = "val"  # val | transductive
    # also test every evaluated epoch and record test_* (and test_<posthoc>_*) in epochs.jsonl, as the
    # released logit-adjustment code logs them; never used to choose the reported epoch (train.select does)
    test_every_epoch: bool = False
    # test-time ensembling (tte.py): none | flip (the evaluation crop and its mirror) | fivecrop | tencrop (torchvision's
    # crops of the image resized to data.image_size + eval.tte_expand, tencrop adding their mirrors); logits averaged
    tte: str = "none"
    tte_expand: int = 24  # fivecrop/tencrop: pixels added to the crop size for the resize before cropping (LIFT's expand)


@dataclass
class Config:
    seed: int = 0  # seeds training (initialisation, sampling, augmentation)
    device: str = "auto"  # where to train and evaluate; auto: CUDA when available
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# Values a string-valued key may take; checked at load time so typos fail before training.
CHOICES: dict[str, tuple[Union[str, bool], ...]] = {
    "train.amp": ("auto", True, False),
    "train.channels_last": ("auto", True, False),
    "device": ("auto", "cpu", "cuda"),
    "dataset.profile": ("exp", "step"),
    "dataset.val_source": ("train_unused", "test_holdout", "none"),
    "data.pipeline": ("auto", "device", "loader"),
    "data.sampler": ("random", "class_balanced"),
    "loss.variant": ("released", "paper"),
    "train.schedule": ("multistep", "cosine", "constant"),
    "train.schedule_per": ("step", "epoch"),
    "train.select": ("best_val", "last", "best_test"),
    "eval.posthoc": ("none", "la", "pn", "tau_norm"),
    "eval.pn_mass": ("val", "transductive"),
    "eval.tte": ("none", "flip", "fivecrop", "tencrop"),
    "model.classifier": ("linear", "cosine"),
    # component names, so a misspelt one fails before any data is built; each list equals the keys of its
    # name table (data.IN_MEMORY + data.IMAGE_LISTS, models.MODELS, losses.LOSSES, models.finetune.FINETUNE,
    # models.head_init.HEAD_INITS; eval.posthoc above: posthoc.POSTHOC + none), which tests/test_target_prior.py checks
    "dataset.name": ("fmnist_lt", "cifar10_lt", "cifar100_lt", "imagenet_lt", "places_lt", "inat2018", "folder",
                     "cifar10_lt_tfrecord", "cifar100_lt_tfrecord"),
    "model.name": ("resnet8", "resnet20", "resnet32", "resnet50", "resnext50_32x4d", "resnet152", "resnet8_experts",
                   "resnet20_experts", "resnet32_experts", "resnet50_experts", "resnext50_experts", "resnet152_experts",
                   "resnet32_keras", "resnet18_cifar", "resnet34_cifar"),
    "loss.name": ("ce", "la", "gala", "bagmar", "balanced_softmax", "lgla", "ldam_drw"),
    "model.finetune": ("full", "linear", "bias", "block_bias", "lora", "lora_qv", "adapter", "zero_shot"),
    "model.head_init": ("random", "class_means", "text"),
}
# Names a key also takes by prefix: any timm network as timm/<name> (models/timm_models.py), any open_clip
# image tower as clip/<name> (models/clip_models.py); the library itself checks <name> when the model is built
CHOICE_PREFIXES: dict[str, tuple[str, ...]] = {"model.name": ("timm/", "clip/")}


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _schema(cls: type = Config, prefix: str = "") -> dict[str, Any]:
    """Flattened {dotted.key: type} of every leaf key."""
    out: dict[str, Any] = {}
    for name, tp in typing.get_type_hints(cls).items():
        if _is_section(tp):
            out.update(_schema(tp, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = tp
    return out


SCHEMA = _schema()
SECTIONS = {k.rsplit(".", 1)[0] for k in SCHEMA if "." in k}


# Values quoted in error messages stay short and finite, whatever a hostile YAML file holds
# (a deep or self-referencing structure, a megabyte-long string).
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 2, 60, 60, 4, 4


def _short(value: Any) -> str:
    return " ".join(_SHORT.repr(value).split())


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else tp.__name__


# PyYAML reads YAML 1.1, where `1e-3` and `1e30` (no dot) are strings; YAML 1.2 and users read them as numbers.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(key, value, arg)
            except LongtailError:
                pass
    elif origin is list:
        if isinstance(value, list):
            return [_coerce(key, v, typing.get_args(tp)[0]) for v in value]
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise LongtailError(
        f"config key '{key}' expects {_type_name(tp)}, got {type(value).__name__} {_short(value)}"
    )


def _closest(key: str) -> str:
    candidates = difflib.get_close_matches(key, list(SCHEMA) + sorted(SECTIONS), n=1, cutoff=0.5)
    if not candidates:  # a misspelt leaf under a correct section, e.g. train.epoch
        leaf = key.rsplit(".", 1)[-1]
        names = {k.rsplit(".", 1)[-1]: k for k in SCHEMA}
        near = difflib.get_close_matches(leaf, list(names), n=1, cutoff=0.6)
        candidates = [names[near[0]]] if near else []
    return f"; did you mean '{candidates[0]}'?" if candidates else ""


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """Nested sections -> {dotted.key: value}."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if not isinstance(k, str):
            raise LongtailError(f"config key {_short(k)} under '{prefix or 'top level'}' is not a string")
        dotted = f"{prefix}{k}"
        if isinstance(v, dict) and dotted in SECTIONS:
            out.update(flatten(v, dotted + "."))
        else:
            out[dotted] = v
    return out


def _validate_key(key: str, value: Any) -> Any:
    if key in SECTIONS:
        raise LongtailError(f"config key '{key}' is a section and needs a mapping of keys, got {_short(value)}")
    if key not in SCHEMA:
        raise LongtailError(f"unknown config key {_short(key)}{_closest(key)}")
    value = _coerce(key, value, SCHEMA[key])
    if key in CHOICES and not _is_choice(key, value):
        allowed = ", ".join(str(c).lower() if isinstance(c, bool) else c for c in CHOICES[key])
        if key in CHOICE_PREFIXES:
            allowed += "".join(f" or {prefix}<name>" for prefix in CHOICE_PREFIXES[key])
        near = difflib.get_close_matches(value, [c for c in CHOICES[key] if isinstance(c, str)], n=1) if isinstance(value, str) else []
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise LongtailError(f"config key '{key}' must be one of {allowed}; got {_short(value)}{hint}")
    for number in value if isinstance(value, list) else [value]:
        if isinstance(number, float) and not math.isfinite(number):
            raise LongtailError(f"config key '{key}' must be a finite number, got {number}")
        if isinstance(number, int) and not isinstance(number, bool) and abs(number) >= 2**32:
            raise LongtailError(f"config key '{key}' is out of range ({_short(number)}); use a value below 2**32")
    return value


def _is_choice(key: str, value: Any) -> bool:
    for prefix in CHOICE_PREFIXES.get(key, ()):
        if isinstance(value, str) and value.startswith(prefix) and len(value) > len(prefix):
            return True
    return any(value == c and type(value) is type(c) for c in CHOICES[key])


def parse_override(text: str) -> tuple[str, Any]:
    """`train.lr=0.05` -> ("train.lr", 0.05); the value is read as YAML."""
    if "=" not in text:
        raise LongtailError(f"override '{text}' must look like key.sub=value (e.g. train.epochs=5)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def from_flat(values: dict[str, Any]) -> Config:
    cfg = Config()
    for key, value in values.items():
        value = _validate_key(key, value)
        *path, leaf = key.split(".")
        section = cfg
        for part in path:
            section = getattr(section, part)
        setattr(section, leaf, value)
    _check_ranges(cfg)
    if cfg.loss.num_experts is None:  # resolved here so the loss table needs only the loss section
        cfg.loss.num_experts = cfg.model.num_experts
    return cfg


def _check_ranges(cfg: Config) -> None:
    positive = {
        "train.epochs": cfg.train.epochs,
        "train.batch_size": cfg.train.batch_size,
        "eval.batch_size": cfg.eval.batch_size,
        "train.eval_every": cfg.train.eval_every,
        "model.num_experts": cfg.model.num_experts,
        "loss.num_experts": cfg.model.num_experts if cfg.loss.num_experts is None else cfg.loss.num_experts,
        "data.image_size": cfg.data.image_size,
        "model.lora_rank": cfg.model.lora_rank,
        "model.adapter_dim": 1 if cfg.model.adapter_dim is None else cfg.model.adapter_dim,
    }
    for key, value in positive.items():
        if value < 1:
            raise LongtailError(f"config key '{key}' must be at least 1, got {value}")
    if not cfg.train.lr > 0:
        raise LongtailError(f"config key 'train.lr' must be positive, got {cfg.train.lr}")
    if min(cfg.dataset.val_per_class, cfg.dataset.test_per_class, cfg.data.cutout, cfg.data.num_workers) < 0:
        raise LongtailError("config keys 'dataset.val_per_class', 'dataset.test_per_class', 'data.cutout' and 'data.num_workers' must be >= 0")
    # ranges torch.optim.SGD would otherwise reject mid-setup with a traceback
    for key, value in {"train.momentum": cfg.train.momentum, "train.weight_decay": cfg.train.weight_decay,
                       "train.warmup_epochs": cfg.train.warmup_epochs, "train.warmup_start_factor": cfg.train.warmup_start_factor,
                       "train.gamma": cfg.train.gamma, "train.norm_weight_decay": cfg.train.norm_weight_decay or 0.0}.items():
        if value < 0:
            raise LongtailError(f"config key '{key}' must be >= 0, got {value}")
    for key, value in {"seed": cfg.seed, "dataset.seed": cfg.dataset.seed}.items():
        if not 0 <= value < 2**32:  # numpy and torch generators take unsigned 32/64-bit seeds
            raise LongtailError(f"config key '{key}' must be between 0 and 2**32 - 1, got {value}")
    for key in ("data.grayscale", "data.blur"):
        value = getattr(cfg.data, key.split(".")[1])
        if not 0.0 <= value <= 1.0:
            raise LongtailError(f"config key '{key}' is a probability and must lie in 0..1, got {value}")
    if cfg.data.color_jitter < 0 or cfg.data.randaugment_ops < 0 or cfg.data.randaugment_magnitude < 0:
        raise LongtailError("config keys 'data.color_jitter', 'data.randaugment_ops' and 'data.randaugment_magnitude' must be >= 0")
    if cfg.data.randaugment_magnitude > 30:
        raise LongtailError(f"config key 'data.randaugment_magnitude' runs 0..30 (torchvision's scale), got {cfg.data.randaugment_magnitude}")
    if cfg.data.std is not None and not all(v > 0 for v in cfg.data.std):
        raise LongtailError(f"config key 'data.std' must hold positive values, got {cfg.data.std}")
    if cfg.data.crop_pct is not None and not 0 < cfg.data.crop_pct <= 1:
        raise LongtailError(f"config key 'data.crop_pct' must lie in (0, 1] (or null: the backbone's own), got {cfg.data.crop_pct}")
    if cfg.data.image_size < 8:
        raise LongtailError(f"config key 'data.image_size' must be at least 8 pixels, got {cfg.data.image_size}")
    if cfg.eval.tte_expand < 0:
        raise LongtailError(f"config key 'eval.tte_expand' must be >= 0 pixels, got {cfg.eval.tte_expand}")
    if cfg.model.prompt.count("{}") != 1:
        raise LongtailError(f"config key 'model.prompt' must hold one '{{}}' where the class name goes, got {_short(cfg.model.prompt)}")
    if cfg.dataset.num_classes is not None and cfg.dataset.num_classes < 1:
        raise LongtailError(f"config key 'dataset.num_classes' must be at least 1 or null, got {cfg.dataset.num_classes}")
    _check_consistency(cfg)


def _check_consistency(cfg: Config) -> None:
    """Key combinations that would only fail, or silently mean something else, after training."""
    if cfg.dataset.train_list is not None:  # list datasets (ImageNet-LT, ...): validation is dataset.val_list
        has_val = cfg.dataset.val_list is not None
    else:
        has_val = cfg.dataset.val_source != "none" and cfg.dataset.val_per_class > 0
    if cfg.eval.posthoc == "pn" and cfg.eval.pn_mass == "val" and not has_val:
        raise LongtailError(
            "eval.posthoc=pn with eval.pn_mass=val estimates the class mass on the validation split, but the run has "
            "none; set dataset.val_source=train_unused or test_holdout, or eval.pn_mass=transductive (the released form)"
        )
    if cfg.loss.name == "ldam_drw" and cfg.loss.drw_epoch >= cfg.train.epochs:
        raise LongtailError(
            f"loss.drw_epoch {cfg.loss.drw_epoch} is not below train.epochs {cfg.train.epochs}, so LDAM-DRW would never "
            "re-weight; set loss.drw_epoch (0-based) below train.epochs, e.g. at 80% of the epochs"
        )
    if cfg.model.freeze_backbone and cfg.model.finetune not in ("full", "linear"):
        raise LongtailError(
            f"model.freeze_backbone=true trains the classifier only, which contradicts model.finetune={cfg.model.finetune}; "
            "drop model.freeze_backbone (model.finetune=linear is the same as freeze_backbone)"
        )
    if cfg.loss.name == "ldam_drw" and cfg.model.classifier == "cosine" and cfg.loss.scale != cfg.model.scale:
        raise LongtailError(
            f"loss.scale {cfg.loss.scale} differs from model.scale {cfg.model.scale}; LDAM's margin is in cosine units "
            "of the classifier, so set them equal"
        )


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise LongtailError(f"config file '{path}' does not exist; pass a YAML file such as configs/fmnist_lt/ce_imba100.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise LongtailError(f"config file '{path}' is not valid YAML{at}: fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LongtailError(f"config file '{path}' must hold a mapping of keys, got {type(data).__name__}")
    return flatten(data)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file, then `key=value` overrides."""
    values = load_yaml(path) if path is not None else {}
    for text in overrides:
        key, value = parse_override(text)
        values[key] = value
    return from_flat(values)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> Config:
    return from_flat(flatten(data))


def flat_dict(cfg: Config) -> dict[str, Any]:
    return flatten(to_dict(cfg))


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
