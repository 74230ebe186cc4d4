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
from collections.abc import Mapping
from typing import Any, Iterator, Optional, Union

import yaml

from . import catalog
from .errors import LongtailError


# ----------------------------------------------------------------------------- what each key declares


@dataclass(frozen=True)
class Range:
    """Numbers from `low` to `high` (None: unbounded; `open_low`: low itself excluded). A list key checks each
    element, a null value is not checked."""

    low: Optional[float] = None
    high: Optional[float] = None
    open_low: bool = False
    why: str = ""  # said after the range in the error, e.g. "(torchvision's scale)"

    def check(self, key: str, value: Any) -> None:
        for number in value if isinstance(value, list) else [value]:
            if number is None or isinstance(number, bool):
                continue
            below = number <= self.low if self.open_low else number < self.low if self.low is not None else False
            if below or (self.high is not None and number > self.high):
                raise LongtailError(f"config key '{key}' must be {self.text()}{self.why}, got {_short(value)}")

    def text(self) -> str:
        def number(v: float) -> str:
            return str(int(v)) if float(v).is_integer() else f"{v:g}"

        if self.high is None:
            return "positive" if self.open_low and self.low == 0 else f"at least {number(self.low)}"
        if self.open_low:
            return f"above {number(self.low)} and at most {number(self.high)}"
        return f"between {number(self.low)} and {number(self.high)}"


@dataclass(frozen=True)
class Names:
    """The registered names of a component kind (catalog.KINDS), plus its library prefixes."""

    kind: str


ANY = "any"  # any value of the key's type (paths, switches, free numbers)


def key(default: Any, values: Union[Range, Names, tuple, str], *, resume_safe: bool = False, method: bool = True,
        loader_only: bool = False) -> Any:
    """A config field and its facts, in one place:

    values       what it may hold: a Range, the Names of a component kind, a tuple of choices, or ANY
    resume_safe  a resume may change it without changing what is computed (engine._config_differences)
    method       it defines the method: runs differing in it are different rows of a report (report/tables.py)
    loader_only  an augmentation the device pipeline lacks: when on, data.pipeline=auto picks the loader

    The defaults are the cautious answers (a resume refuses a change; a report keeps the runs apart)."""
    facts = {"values": values, "resume_safe": resume_safe, "method": method, "loader_only": loader_only}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=facts)
    return field(default=default, metadata=facts)


POSITIVE, AT_LEAST_1, NON_NEGATIVE = Range(0, open_low=True), Range(1), Range(0)
PROBABILITY = Range(0, 1)
SEED = Range(0, 2**32 - 1, why=" (numpy and torch take unsigned 32-bit seeds)")
SWITCH = ("auto", True, False)


@dataclass
class Section:
    """A config section. Hyperparameters that registered components declare (catalog.Param) are kept in `extra`
    and read as attributes, like the fields: `cfg.loss.gamma`."""

    extra: dict[str, Any] = field(default_factory=dict, repr=False, metadata={"extra": True})

    def __getattr__(self, name: str) -> Any:  # called only when no field has that name
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"config section {type(self).__name__} has no key '{name}'")


@dataclass
class DatasetConfig(Section):
    name: str = key("fmnist_lt", Names("dataset"), method=False)  # a registered dataset (the values listed here; plugins add theirs)
    root: Optional[str] = key(None, ANY, resume_safe=True, method=False)  # None: the dataset's standard locations (see data/)
    # IF = n_max / n_min of the long-tailed training subset (in-memory datasets)
    imbalance_factor: float = key(100.0, ANY, method=False)
    # class counts: exp (n_i = n_max IF^(-i/(C-1))) or step (half the classes n_max, half n_max/IF)
    profile: str = key("exp", ("exp", "step"), method=False)
    seed: int = key(0, SEED, method=False)  # which images form the long-tailed subset
    n_max: Optional[int] = key(None, ANY)  # None: the dataset's standard protocol
    val_per_class: int = key(100, NON_NEGATIVE)  # images per class in the validation split
    # validation from unused training images, a labelled test hold-out, or none
    val_source: str = key("train_unused", ("train_unused", "test_holdout", "none"))
    download: bool = key(True, ANY, resume_safe=True, method=False)  # allowed to fetch when the files are not found locally
    train_list: Optional[str] = key(None, ANY)  # list-file datasets (ImageNet-LT, Places-LT, iNat)
    val_list: Optional[str] = key(None, ANY)  # list-file or folder datasets: the validation list
    test_list: Optional[str] = key(None, ANY)  # list-file or folder datasets: the test list
    num_classes: Optional[int] = key(None, AT_LEAST_1)  # list datasets: None = from the data (train list / JSON categories)
    # list datasets: decode every image before training, report all failures
    verify_images: bool = key(False, ANY, resume_safe=True)
    # list datasets: a text file of one class name per line in class-index order (model.head_init=text needs names;
    # iNat's JSON categories give theirs); null: the names the data gives, else class indices
    class_names: Optional[str] = key(None, ANY)
    csv: Optional[str] = key(None, ANY)  # folder datasets: one `path,label` CSV of every image, split like a single tree
    test_per_class: int = key(100, NON_NEGATIVE)  # folder datasets: test images per class taken from a single tree or CSV


@dataclass
class DataConfig:
    # device: batched augmentation on the training device; loader: per-image DataLoader; auto: device where possible
    pipeline: str = key("auto", ("auto", "device", "loader"), method=False)
    crop: bool = key(True, ANY)  # pad-4 random crop
    flip: bool = key(True, ANY)  # random horizontal flip
    autoaugment: bool = key(False, ANY)  # AutoAugment, CIFAR policy
    cutout: int = key(0, NON_NEGATIVE)  # hole size in pixels, 0 = off
    # random: every image equally; class_balanced: a class uniformly, then an image of it
    sampler: str = key("random", ("random", "class_balanced"))
    num_workers: int = key(2, NON_NEGATIVE, method=False)  # DataLoader worker processes (loader pipeline)
    image_size: int = key(224, Range(8, why=" pixels"))  # crop size S of list and folder datasets
    randaugment: bool = key(False, ANY, loader_only=True)  # RandAugment (loader pipeline)
    randaugment_ops: int = key(2, NON_NEGATIVE)  # RandAugment N (transforms applied per image)
    randaugment_magnitude: int = key(9, Range(0, 30, why=" (torchvision's scale)"))  # RandAugment M (0..30 scale of torchvision)
    color_jitter: float = key(0.0, NON_NEGATIVE, loader_only=True)  # brightness = contrast = saturation strength, 0 = off
    grayscale: float = key(0.0, PROBABILITY, loader_only=True)  # RandomGrayscale probability (list datasets)
    blur: float = key(0.0, PROBABILITY, loader_only=True)  # probability of a GaussianBlur, sigma 0.1..2 (list datasets)
    # input normalisation (x / 255 - mean) / std per channel, 0..1 scale; null: the dataset's own statistics.
    # mean [0.5, 0.5, 0.5] with std [1, 1, 1] is google-research's x / 255 - 0.5
    mean: Optional[list[float]] = key(None, ANY)
    std: Optional[list[float]] = key(None, POSITIVE)  # per-channel divisor of that normalisation (0..1 scale); null: the dataset's own
    # drop the last partial training batch of every epoch (steps = floor(N / batch))
    drop_last: bool = key(False, ANY)
    # evaluation resize ratio, 0 < x <= 1: the short side becomes floor(S / crop_pct), then the centre S x S is kept
    # (0.875: 224 -> 256; LIFT's Resize(S * 8 // 7)). null: the pretrained backbone's own (timm's pretrained_cfg,
    # 1.0 for CLIP), else round(S * 256 / 224) for image files and the whole image for in-memory datasets
    crop_pct: Optional[float] = key(None, Range(0, 1, open_low=True))


@dataclass
class ModelConfig(Section):
    # backbone: a registered model (the values listed here; plugins add theirs), timm/<name> or clip/<name>
    name: str = key("resnet32", Names("model"))
    num_experts: int = key(3, AT_LEAST_1)  # experts of a multi-expert model (*_experts)
    # local checkpoint path, or "torchvision" (torchvision models), "hub" (timm/ and clip/ models: their own download,
    # through the library's cache), "openai" or another open_clip tag (clip/ models)
    pretrained: Optional[str] = key(None, ANY)
    # decoupled training: train only `model.classifier`, frozen BN in eval mode
    freeze_backbone: bool = key(False, ANY)
    pretrained_classifier: bool = key(False, ANY)  # also load the classifier from `pretrained` (else re-initialised, cRT)
    # linear (with bias) | cosine (s * cos(w_c, f), LDAM's normalised head)
    classifier: str = key("linear", ("linear", "cosine"))
    scale: float = key(30.0, ANY)  # s of a cosine classifier (LIFT's code uses 25 with CLIP)
    # which parameters train (models/finetune.py): full (all) | linear (the classifier only) | bias (every bias and the
    # classifier, BitFit) | block_bias (the biases inside the transformer blocks + classifier, LIFT's bias_tuning) |
    # lora (peft's LoRA on the attention and MLP projections + classifier) | lora_qv (LIFT's LoRA on the queries and
    # values + classifier) | adapter (an AdaptFormer bottleneck in parallel with each MLP block + classifier); lora,
    # lora_qv and adapter need a transformer backbone; zero_shot (clip/ models): nothing trains, the head is CLIP's,
    # the text embeddings of model.prompt (evaluate only)
    finetune: str = key("full", Names("finetune"))
    # model.finetune=lora / lora_qv: rank r of each LoRA update (lora: alpha = r, so B A; lora_qv: x A B / r)
    lora_rank: int = key(8, AT_LEAST_1)
    # model.finetune=adapter: bottleneck width; null: LIFT's 2**floor(log2(C / 2L))
    adapter_dim: Optional[int] = key(None, AT_LEAST_1)
    # how the classifier starts (models/head_init.py): random | class_means (the normalised mean feature of each class
    # over the training set, one pass) | text (clip/ models: the normalised text embedding of model.prompt)
    head_init: str = key("random", Names("head_init"))
    # head_init text and finetune zero_shot: the prompt of each class name ("{}" is the name, "_" read as a space)
    prompt: str = key("a photo of a {}.", ANY)


@dataclass
class LossConfig(Section):
    # a registered loss (the values listed here; plugins add theirs and their own loss.<hyperparameter> keys)
    name: str = key("ce", Names("loss"))
    tau: float = key(1.0, ANY)  # la: tau of CE(z + tau log pi, y); lgla: tau of the global expert
    lambda1: float = key(1.0, ANY)  # GALA: weight of log(theta + 1e-3)
    lambda2: float = key(1.0, ANY)  # GALA: weight of log(phi_y + 1e-3)
    variant: str = key("released", ("released", "paper"))  # GALA: released | paper
    max_margin: float = key(0.5, ANY)  # LDAM: the largest class margin (margins proportional to n^(-1/4))
    scale: float = key(30.0, ANY)  # LDAM: s of the logits (equal to model.scale with a cosine head)
    drw_epoch: int = key(160, ANY)  # LDAM-DRW: class-balanced re-weighting from this epoch
    drw_beta: float = key(0.9999, ANY)  # LDAM-DRW: beta of the class-balanced weights (1 - beta) / (1 - beta^n_c)
    # multi-expert losses (LGLA); null: the same as model.num_experts
    num_experts: Optional[int] = key(None, AT_LEAST_1)


@dataclass
class TrainConfig:
    epochs: int = key(200, AT_LEAST_1)  # training epochs
    batch_size: int = key(128, AT_LEAST_1)  # global batch, split over processes
    lr: float = key(0.1, POSITIVE)  # peak learning rate of SGD
    momentum: float = key(0.9, NON_NEGATIVE)  # SGD momentum
    nesterov: bool = key(False, ANY)  # Nesterov momentum
    weight_decay: float = key(5e-4, NON_NEGATIVE)  # SGD weight decay
    # weight decay of normalisation layers' weights and biases (BatchNorm, GroupNorm, LayerNorm); null: weight_decay.
    # 0 matches a Keras model whose kernel regularisers leave BatchNorm alone
    norm_weight_decay: Optional[float] = key(None, NON_NEGATIVE)
    # learning-rate schedule after warmup: x gamma at milestones, cosine to 0, or constant
    schedule: str = key("multistep", ("multistep", "cosine", "constant"))
    milestones: list[int] = key([160, 180], ANY)  # multistep: epochs where lr is multiplied by gamma
    gamma: float = key(0.1, NON_NEGATIVE)  # multistep: lr factor at each milestone
    warmup_epochs: float = key(0.0, NON_NEGATIVE)  # linear warmup length in epochs (fractions allowed)
    warmup_start_factor: float = key(0.0, NON_NEGATIVE)  # lr multiplier at the start of warmup
    # step: the schedule moves every step (fractional epoch); epoch: it holds within an epoch (torch's scheduler
    # stepped once per epoch, as LIFT's CosineAnnealingLR)
    schedule_per: str = key("step", ("step", "epoch"))
    eval_every: int = key(1, AT_LEAST_1)  # validate every N epochs
    # best_val | last | best_test (the released codes' protocol, chosen on the TEST set: optimistic, and every
    # output of the run says SELECTED ON TEST; see selection.py)
    select: str = key("best_val", ("best_val", "last", "best_test"))
    resume: bool = key(False, ANY, resume_safe=True, method=False)  # continue from checkpoints/last.pt (what `train --resume` sets)
    # auto: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16 / AMX), float32 elsewhere
    amp: Union[bool, str] = key("auto", SWITCH, method=False)
    # channels_last memory format; auto: wherever bf16 autocast runs
    channels_last: Union[bool, str] = key("auto", SWITCH, method=False)
    # torch.compile the model for training (inductor; on CPU it needs a C++ compiler)
    compile: bool = key(False, ANY, method=False)
    progress: bool = key(True, ANY, resume_safe=True, method=False)  # a progress bar per epoch
    # deterministic algorithms: the same seed gives the same weights on one machine
    deterministic: bool = key(True, ANY)
    sync_bn: bool = key(True, ANY)  # under DDP: BatchNorm statistics over the global batch (same result as 1 process)


@dataclass
class EvalConfig(Section):
    batch_size: int = key(1024, AT_LEAST_1, resume_safe=True, method=False)  # images per evaluation batch
    # post-hoc correction at the final test, a registered rule or none (metrics.json also keeps the raw argmax under "raw")
    posthoc: str = key("none", Names("posthoc"))
    tau: float = key(1.0, ANY)  # strength of the post-hoc correction
    # PN's per-class prediction mass (a rule that needs a class mass): estimated on the validation split, or on the
    # evaluated set itself (transductive, as the released GALA code does)
    pn_mass: str = key("val", ("val", "transductive"))  # val | transductive
    # also test every evaluated epoch and record test_* (and test_<posthoc>_*) in epochs.jsonl, as the
    # released logit-adjustment code logs them; never used to choose the reported epoch (train.select does)
    test_every_epoch: bool = key(False, ANY)
    # test-time ensembling (tte.py): none | flip (the evaluation crop and its mirror) | fivecrop | tencrop (torchvision's
    # crops of the image resized to data.image_size + eval.tte_expand, tencrop adding their mirrors); logits averaged
    tte: str = key("none", ("none", "flip", "fivecrop", "tencrop"))
    # fivecrop/tencrop: pixels added to the crop size for the resize before cropping (LIFT's expand)
    tte_expand: int = key(24, Range(0, why=" pixels"))


@dataclass
class Config:
    seed: int = key(0, SEED, method=False)  # seeds training (initialisation, sampling, augmentation)
    device: str = key("auto", ("auto", "cpu", "cuda"), method=False)  # where to train and evaluate; auto: CUDA when available
    # plugin files (relative to the config file) or modules that register components (longtail/plugins.py)
    plugins: list[str] = key([], ANY, method=False)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _leaves(cls: type = Config, prefix: str = "") -> dict[str, tuple[Any, dataclasses.Field]]:
    """Flattened {dotted.key: (type, dataclass field)} of every leaf key (a section's `extra` is no key)."""
    out: dict[str, tuple[Any, dataclasses.Field]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("extra"):
            continue
        if _is_section(hints[f.name]):
            out.update(_leaves(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = (hints[f.name], f)
    return out


SCHEMA = {k: tp for k, (tp, _) in _leaves().items()}  # {dotted.key: type}
FIELDS = {k: f for k, (_, f) in _leaves().items()}  # {dotted.key: field}, whose metadata are the key's facts
SECTIONS = {k.rsplit(".", 1)[0] for k in SCHEMA if "." in k}
COMPONENT_SECTIONS = {catalog.section(kind) for kind in catalog.KINDS}  # where component hyperparameters live


def facts(key: str) -> dict[str, Any]:
    """What config key `key` declares (see `key`)."""
    return dict(FIELDS[key].metadata)


def keys_where(fact: str, value: Any = True) -> frozenset[str]:
    """The keys declaring `fact` = `value`, e.g. keys_where("resume_safe")."""
    return frozenset(k for k, f in FIELDS.items() if f.metadata[fact] == value)


RESUME_SAFE_KEYS = keys_where("resume_safe")  # engine._config_differences ignores them
NOT_METHOD = keys_where("method", False)  # report/tables.py: runs differing only in them are seeds of one method
LOADER_ONLY = [k for k in FIELDS if FIELDS[k].metadata["loader_only"]]  # data/pipeline.device_unsupported


def choices_of(key: str) -> tuple:
    """The values a key with a list of values may take (component kinds: every registered name), else ()."""
    values = FIELDS[key].metadata["values"]
    if isinstance(values, Names):
        return catalog.choices(values.kind)
    return values if isinstance(values, tuple) else ()


class _Choices(Mapping):
    """{key: allowed values} of every key with a list of values, read when asked (plugins add names)."""

    def __getitem__(self, key: str) -> tuple:
        values = choices_of(key) if key in FIELDS else ()
        if not values:
            raise KeyError(key)
        return values

    def __iter__(self) -> Iterator[str]:
        return (k for k in FIELDS if choices_of(k))

    def __len__(self) -> int:
        return sum(1 for _ in self)


CHOICES = _Choices()
# names a key also takes by prefix (model.name: timm/<name>, clip/<name>; see catalog.PREFIXES)
CHOICE_PREFIXES: dict[str, tuple[str, ...]] = {
    f"{catalog.KINDS[kind]}": prefixes for kind, prefixes in catalog.PREFIXES.items()}


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


def _param_keys() -> dict[str, Any]:
    """{section.leaf: catalog.Param} of the hyperparameters registered components add."""
    return {f"{sec}.{leaf}": p for sec in sorted(COMPONENT_SECTIONS) for leaf, (p, _) in catalog.params(sec).items()
            if f"{sec}.{leaf}" not in SCHEMA}


def _closest(key: str) -> str:
    known = [*SCHEMA, *_param_keys()]
    candidates = difflib.get_close_matches(key, known + sorted(SECTIONS), n=1, cutoff=0.5)
    if not candidates:  # a misspelt leaf under a correct section, e.g. train.epoch
        leaf = key.rsplit(".", 1)[-1]
        names = {k.rsplit(".", 1)[-1]: k for k in known}
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
        param = _param_keys().get(key)
        if param is None:
            raise LongtailError(f"unknown config key {_short(key)}{_closest(key)}")
        return param.check(key, value)
    value = _coerce(key, value, SCHEMA[key])
    allowed_values = choices_of(key)
    if allowed_values and not _is_choice(key, value, allowed_values):
        allowed = ", ".join(str(c).lower() if isinstance(c, bool) else c for c in allowed_values)
        if key in CHOICE_PREFIXES:
            allowed += "".join(f" or {prefix}<name>" for prefix in CHOICE_PREFIXES[key])
        near = difflib.get_close_matches(value, [c for c in allowed_values if isinstance(c, str)], n=1) if isinstance(value, str) else []
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise LongtailError(f"config key '{key}' must be one of {allowed}; got {_short(value)}{hint}")
    for number in value if isinstance(value, list) else [value]:
        if isinstance(number, float) and not math.isfinite(number):
            raise LongtailError(f"config key '{key}' must be a finite number, got {number}")
        if isinstance(number, int) and not isinstance(number, bool) and abs(number) >= 2**32:
            raise LongtailError(f"config key '{key}' is out of range ({_short(number)}); use a value below 2**32")
    values = FIELDS[key].metadata["values"]
    if isinstance(values, Range):
        values.check(key, value)
    return value


def _is_choice(key: str, value: Any, allowed: tuple) -> bool:
    for prefix in CHOICE_PREFIXES.get(key, ()):
        if isinstance(value, str) and value.startswith(prefix) and len(value) > len(prefix):
            return True
    return any(value == c and type(value) is type(c) for c in allowed)


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
    """A Config from {dotted.key: value}. The `plugins` it names are loaded first (paths relative to the working
    directory; load_config makes a file's own relative to the file), so their components and keys are known."""
    from .plugins import load_entry_points, load_plugins

    load_entry_points()
    cfg = Config()
    if "plugins" in values:
        cfg.plugins = load_plugins(_validate_key("plugins", values["plugins"]))
    for key, value in values.items():
        if key == "plugins":
            continue
        value = _validate_key(key, value)
        *path, leaf = key.split(".")
        section = cfg
        for part in path:
            section = getattr(section, part)
        if key in SCHEMA:
            setattr(section, leaf, value)
        else:
            section.extra[leaf] = value
    for key, param in _param_keys().items():  # hyperparameters left at the default a component declares
        sec, leaf = key.split(".")
        getattr(cfg, sec).extra.setdefault(leaf, param.default)
    _check_consistency(cfg)
    if cfg.loss.num_experts is None:  # resolved here so the loss table needs only the loss section
        cfg.loss.num_experts = cfg.model.num_experts
    return cfg


def _check_consistency(cfg: Config) -> None:
    """Key combinations that would only fail, or silently mean something else, after training (the range of
    each key alone is its Range, checked as it is read)."""
    if cfg.dataset.train_list is not None:  # list datasets (ImageNet-LT, ...): validation is dataset.val_list
        has_val = cfg.dataset.val_list is not None
    else:
        has_val = cfg.dataset.val_source != "none" and cfg.dataset.val_per_class > 0
    if cfg.model.prompt.count("{}") != 1:
        raise LongtailError(f"config key 'model.prompt' must hold one '{{}}' where the class name goes, got {_short(cfg.model.prompt)}")
    rule = cfg.eval.posthoc
    if rule != catalog.NO_RULE and "class_mass" in catalog.entry("posthoc", rule).facts.get("needs", ()) \
            and cfg.eval.pn_mass == "val" and not has_val:
        raise LongtailError(
            f"eval.posthoc={rule} with eval.pn_mass=val estimates the class mass on the validation split, but the run has "
            "none; set dataset.val_source=train_unused or test_holdout, or eval.pn_mass=transductive (the released form)"
        )
    if cfg.loss.name == "ldam_drw" and cfg.loss.drw_epoch >= cfg.train.epochs:
        raise LongtailError(
            f"loss.drw_epoch {cfg.loss.drw_epoch} is not below train.epochs {cfg.train.epochs}, so LDAM-DRW would never "
            "re-weight; set loss.drw_epoch (0-based) below train.epochs, e.g. at 80% of the epochs"
        )
    reads = catalog.entry("loss", cfg.loss.name).facts.get("reads", "logits")
    if reads not in catalog.model_outputs(cfg.model.name):
        raise LongtailError(
            f"loss.name={cfg.loss.name} reads the model output '{reads}', which model.name={cfg.model.name} does not give; "
            "choose a model that declares it (e.g. a multi-expert *_experts model for 'expert_logits')"
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
    """A config file's keys, flat; its `plugins` paths are made relative to the file's folder."""
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
    flat = flatten(data)
    if isinstance(flat.get("plugins"), list):
        from .plugins import relative_to

        flat["plugins"] = [relative_to(spec, path.parent) for spec in flat["plugins"]]
    return flat


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file, then `key=value` overrides."""
    values = load_yaml(path) if path is not None else {}
    for text in overrides:
        key, value = parse_override(text)
        values[key] = value
    return from_flat(values)


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as nested plain data; component hyperparameters sit beside the fields of their section."""
    data = dataclasses.asdict(cfg)
    for name, value in data.items():
        if isinstance(value, dict) and "extra" in value:
            value.update(value.pop("extra"))
    return data


def from_dict(data: dict[str, Any]) -> Config:
    return from_flat(flatten(data))


def flat_dict(cfg: Config) -> dict[str, Any]:
    return flatten(to_dict(cfg))


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
