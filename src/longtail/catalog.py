"""The registries of components, one per kind, and the torch-free catalog of the built-in ones.

A kind is what a config key names (`KINDS`: loss.name, model.name, dataset.name, eval.posthoc, model.finetune,
model.head_init). Each registered component is one `Entry`, the record every part of longtail asks:

- its object (`entry.obj`): the constructor the kind's module calls (a loss: `(loss config, class counts) ->
  Loss`; a post-hoc rule: `(logits, tau, inputs) -> scores`; ...), set by the public decorator
  (`register(kind, name)`, exported as `longtail.register_loss` etc.) in the file that defines it;
- the hyperparameters it reads: existing config keys (`uses`, e.g. la uses `loss.tau`) and new ones it
  declares (`params`, `Param`: name, default, one-line meaning, range), set as `<section>.<name>` like any key;
- facts of its kind (`facts`): a post-hoc rule's needs, display name and whether export can trace it; a
  dataset's channels, native size, whether its split is given; a display name for reports.

Config validation runs before torch is imported, so the built-ins' names and facts are declared here, in
`_BUILTINS`, each with the module that defines it; the module's decorator fills in the object when it is
imported (`get` imports it on first use). A built-in is therefore one declaration here plus its code in its
own file; tests/test_registry.py imports every module and fails when the two disagree. Plugins
(longtail/plugins.py) register with the same decorators and give their facts to the decorator.
"""

from __future__ import annotations

import difflib
import importlib
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

from .errors import LongtailError

# kind -> the config key that names it; a component's hyperparameters live in that key's section
KINDS: dict[str, str] = {
    "loss": "loss.name", "model": "model.name", "dataset": "dataset.name", "posthoc": "eval.posthoc",
    "finetune": "model.finetune", "head_init": "model.head_init",
}
NOUNS = {"loss": "loss", "model": "model", "dataset": "dataset", "posthoc": "post-hoc rule", "finetune": "fine-tune mode",
         "head_init": "head initialisation"}
NO_RULE = "none"  # eval.posthoc's raw argmax, which is no component
RULE_NEEDS = ("classifier_weight", "class_mass")  # what a post-hoc rule may need besides class counts


def section(kind: str) -> str:
    return KINDS[kind].split(".")[0]


@dataclass(frozen=True)
class Param:
    """A hyperparameter a component declares: `<section>.<name>` (e.g. loss.gamma), with its default, a one-line
    meaning (the config reference prints it) and its allowed values: low..high (either may be None) or `choices`.

    Example, a loss hyperparameter set as `loss.gamma=1.5`:
        >>> import longtail
        >>> gamma = longtail.Param("gamma", 2.0, "focal loss: exponent of (1 - p_y)", low=0.0)
    """

    name: str
    default: Any
    meaning: str
    low: Optional[float] = None
    high: Optional[float] = None
    choices: tuple = ()

    def check(self, key: str, value: Any) -> Any:
        """`value` as the default's type, within range, or one line saying what is allowed."""
        kind = type(self.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise LongtailError(f"config key '{key}' expects {kind.__name__}, got {type(value).__name__} {value!r:.60}")
        if self.choices and value not in self.choices:
            raise LongtailError(f"config key '{key}' must be one of {', '.join(map(str, self.choices))}; got {value!r:.60}")
        if isinstance(value, float) and not math.isfinite(value):
            raise LongtailError(f"config key '{key}' must be a finite number, got {value}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise LongtailError(f"config key '{key}' must lie in {self.range_text()}, got {value}")
        return value

    def range_text(self) -> str:
        if self.choices:
            return ", ".join(map(str, self.choices))
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return "any" if self.low is None and self.high is None else f"{low}..{high}"


@dataclass
class Entry:
    """One registered component (see the module docstring)."""

    kind: str
    name: str
    module: Optional[str] = None  # a built-in's defining module (imported on first use); None for plugins
    uses: tuple[str, ...] = ()  # existing keys of its section it reads
    params: tuple[Param, ...] = ()  # keys it adds to its section
    facts: dict[str, Any] = field(default_factory=dict)
    obj: Any = None
    source: Optional[str] = None  # the plugin file or module that registered it (None: longtail itself)

    @property
    def display(self) -> str:
        return self.facts.get("display", self.name)

    @property
    def builtin(self) -> bool:
        return self.module is not None


def _builtin(kind: str, name: str, module: str, uses: Sequence[str] = (), **facts: Any) -> Entry:
    return Entry(kind, name, module, tuple(uses), (), facts)


_LOSSES, _MODELS, _DATA = "longtail.losses.", "longtail.models", "longtail.data"
_BUILTINS: list[Entry] = [
    # losses, in the order reports list them
    _builtin("loss", "ce", _LOSSES + "cross_entropy", display="CE"),
    _builtin("loss", "la", _LOSSES + "logit_adjusted", ["tau"], display="LA loss"),
    _builtin("loss", "balanced_softmax", _LOSSES + "balanced_softmax", display="Balanced Softmax"),
    _builtin("loss", "ldam_drw", _LOSSES + "ldam", ["max_margin", "scale", "drw_epoch", "drw_beta"], display="LDAM-DRW"),
    _builtin("loss", "bagmar", _LOSSES + "gala", ["lambda1", "lambda2", "variant"], display="BaGMar"),
    _builtin("loss", "gala", _LOSSES + "gala", ["lambda1", "lambda2", "variant"], display="GALA"),
    # reads: the model output the loss takes (Loss.input_key; default 'logits'), which the model must give
    _builtin("loss", "lgla", _LOSSES + "lgla", ["tau", "scale", "num_experts"], display="LGLA", reads="expert_logits"),
    # post-hoc rules (posthoc.py); needs: what besides the class counts; traceable: export can fold it into the graph;
    # prior: it adjusts by the training prior (evaluate --imbalance-factor / --class-counts replace it)
    _builtin("posthoc", "la", "longtail.posthoc", ["tau"], display="post-hoc LA", needs=(), traceable=True, prior=True),
    _builtin("posthoc", "pn", "longtail.posthoc", ["tau", "pn_mass"], display="PN", needs=("class_mass",), traceable=True),
    _builtin("posthoc", "tau_norm", "longtail.posthoc", ["tau"], display="τ-norm", needs=("classifier_weight",), traceable=True),
    # backbones (models/__init__.py); timm/<name> and clip/<name> stand for whole libraries (PREFIXES)
    *(_builtin("model", name, _MODELS) for name in (
        "resnet8", "resnet20", "resnet32", "resnet50", "resnext50_32x4d", "resnet152", "resnet32_keras", "resnet18_cifar",
        "resnet34_cifar")),
    # outputs: what the model's forward returns besides 'logits' (a loss's `reads` must be among them)
    *(_builtin("model", name, _MODELS, outputs=("logits", "expert_logits")) for name in (
        "resnet8_experts", "resnet20_experts", "resnet32_experts", "resnet50_experts", "resnext50_experts",
        "resnet152_experts")),
    # datasets (data/__init__.py): balanced sources made long-tailed by longtail (in_memory), or given splits
    _builtin("dataset", "fmnist_lt", _DATA, in_memory=True, channels=1, native_size=28, given_split=False),
    _builtin("dataset", "cifar10_lt", _DATA, in_memory=True, channels=3, native_size=32, given_split=False),
    _builtin("dataset", "cifar100_lt", _DATA, in_memory=True, channels=3, native_size=32, given_split=False),
    _builtin("dataset", "imagenet_lt", _DATA, in_memory=False, channels=3, native_size=None, given_split=True),
    _builtin("dataset", "places_lt", _DATA, in_memory=False, channels=3, native_size=None, given_split=True),
    _builtin("dataset", "inat2018", _DATA, in_memory=False, channels=3, native_size=None, given_split=True),
    _builtin("dataset", "folder", _DATA, in_memory=False, channels=3, native_size=None, given_split=True),
    _builtin("dataset", "cifar10_lt_tfrecord", _DATA, in_memory=False, channels=3, native_size=32, given_split=True),
    _builtin("dataset", "cifar100_lt_tfrecord", _DATA, in_memory=False, channels=3, native_size=32, given_split=True),
    # which parameters train, and how the classifier starts
    *(_builtin("finetune", name, _MODELS + ".finetune") for name in ("full", "linear", "bias", "block_bias", "lora", "lora_qv", "adapter", "zero_shot")),
    _builtin("head_init", "random", _MODELS + ".head_init"),
    _builtin("head_init", "class_means", _MODELS + ".head_init"),
    _builtin("head_init", "text", _MODELS + ".head_init"),
]
# names a kind also takes by prefix: any timm network as timm/<name>, any open_clip image tower as clip/<name>;
# the library checks <name> when the model is built (models/__init__.py)
PREFIXES: dict[str, tuple[str, ...]] = {"model": ("timm/", "clip/")}

_REGISTRY: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
for _entry in _BUILTINS:
    _REGISTRY[_entry.kind][_entry.name] = _entry
_BUILTIN_NAMES = {(e.kind, e.name) for e in _BUILTINS}



# ----------------------------------------------------------------------------- reading


def names(kind: str) -> tuple[str, ...]:
    """Every registered name of a kind, built-ins first in catalog order."""
    return tuple(_REGISTRY[kind])


def choices(kind: str) -> tuple[str, ...]:
    """The values the kind's config key takes (eval.posthoc adds 'none')."""
    return (NO_RULE, *names(kind)) if kind == "posthoc" else names(kind)


def model_outputs(name: str) -> tuple[str, ...]:
    """The outputs a model declares (`outputs`; default just 'logits'); a library's (timm/, clip/) give logits."""
    if any(name.startswith(prefix) for prefix in PREFIXES["model"]):
        return ("logits",)
    return tuple(entry("model", name).facts.get("outputs", ("logits",)))


def entries(kind: Optional[str] = None) -> Iterator[Entry]:
    for k in [kind] if kind else list(KINDS):
        yield from list(_REGISTRY[k].values())


def entry(kind: str, name: str) -> Entry:
    """The record of `name` (without importing its module), or one line with a did-you-mean."""
    found = _REGISTRY[kind].get(name)
    if found is None:
        near = difflib.get_close_matches(str(name), names(kind), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise LongtailError(f"unknown {NOUNS[kind]} '{name}' ({KINDS[kind]}); choose one of {', '.join(choices(kind))}{hint} "
                            "(a plugin's components need the plugin: --plugin FILE or `plugins:` in the config)")
    return found


def get(kind: str, name: str) -> Entry:
    """The record of `name` with its object, importing the built-in's module when it is not loaded yet."""
    found = entry(kind, name)
    if found.obj is None and found.module is not None:
        importlib.import_module(found.module)
    if found.obj is None:
        raise LongtailError(f"{KINDS[kind]} '{name}' is declared in longtail/catalog.py but {found.module} registers "
                            "no such component; this longtail installation is broken")
    return found


def params(sec: str) -> dict[str, tuple[Param, list[str]]]:
    """{key leaf: (Param, names declaring it)} of the hyperparameters components of section `sec` declare."""
    out: dict[str, tuple[Param, list[str]]] = {}
    for kind in KINDS:
        if section(kind) == sec:
            for e in _REGISTRY[kind].values():
                for p in e.params:
                    out.setdefault(p.name, (p, []))[1].append(e.name)
    return out


def users(kind: str, leaf: str) -> list[str]:
    """Names of the components of `kind` that read `<section>.<leaf>`."""
    return [e.name for e in _REGISTRY[kind].values() if leaf in e.uses or any(p.name == leaf for p in e.params)]


# ----------------------------------------------------------------------------- registering


def _where(obj: Any) -> str:
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    return str(getattr(module, "__file__", None) or getattr(obj, "__module__", None) or "?")


def register(kind: str, name: str, *, override: bool = False, uses: Sequence[str] = (),
             params: Sequence[Param] = (), **facts: Any) -> Callable[[Any], Any]:
    """Decorator: register the decorated object as component `name` of `kind`; returns it unchanged.

    Code of longtail fills in a built-in declared above (its facts may add to the declared ones). Anything else
    is a plugin: its name must be new, or replace a built-in with `override=True`. The object is checked by the
    kind's validator (a loss must be a `Loss` class or a function returning one)."""
    if kind not in KINDS:
        raise LongtailError(f"unknown component kind '{kind}'; one of {', '.join(KINDS)}")

    def add(obj: Any) -> Any:
        where = _where(obj)
        internal = str(getattr(obj, "__module__", "")).split(".")[0] == "longtail"
        current = _REGISTRY[kind].get(name)
        label = f"{kind} '{name}' registered by {where}"
        problem = _problem(kind, obj)
        if problem:
            raise LongtailError(f"{label} {problem}")
        if internal and (kind, name) in _BUILTIN_NAMES:
            if current.obj is None:  # a plugin may have replaced it before its module was imported
                current.obj = obj
                current.facts = {**facts, **current.facts}
            return obj
        if current is not None and current.builtin and not override:
            raise LongtailError(f"{label} shadows longtail's built-in {kind} of that name; rename it, or pass "
                                f"override=True to the decorator to replace the built-in")
        if current is not None and current.obj is obj:
            return obj
        if current is not None and not current.builtin:
            raise LongtailError(f"{label} is already registered by {current.source}; a name is registered once, so "
                                "rename one of them")
        declared = _REGISTRY[kind]
        bad = [p for p in params if not isinstance(p, Param)]
        if bad:
            raise LongtailError(f"{label} declares params that are not longtail.Param: {bad[0]!r:.60}")
        declared[name] = Entry(kind, name, None, tuple(uses), tuple(params), dict(facts), obj, where)
        return obj

    return add


def register_loss(name: str, **options: Any) -> Callable[[Any], Any]:
    """Register `(loss config, class counts) -> longtail.Loss` (a Loss subclass taking those two, or a function).

    Example (the loss section's `tau` read, `gamma` declared; see longtail.Loss for a whole class):
        >>> import longtail
        >>> @longtail.register_loss("focal_la", uses=["tau"], params=[longtail.Param("gamma", 2.0, "focal exponent", low=0.0)])
        ... class FocalLA(longtail.Loss): ...
    """
    return register("loss", name, **options)


def register_model(name: str, **options: Any) -> Callable[[Any], Any]:
    """Register `(model config, num_classes, in_channels) -> nn.Module` returning {'logits': (B, C), ...}.

    Example:
        >>> import longtail, torch
        >>> @longtail.register_model("tiny_mlp")
        ... def tiny_mlp(cfg, num_classes, in_channels):
        ...     return TinyMLP(in_channels, num_classes)  # forward(x) -> {"logits": ...}; `.classifier` its head
    """
    return register("model", name, **options)


def register_dataset(name: str, **options: Any) -> Callable[[Any], Any]:
    """Register a dataset builder (see data/__init__.py): facts channels, native_size, in_memory, given_split.

    Example, a balanced source that longtail makes long-tailed (`(root, download) -> RawDataset`):
        >>> import longtail
        >>> @longtail.register_dataset("blobs", in_memory=True, channels=3, native_size=16, given_split=False)
        ... def blobs(root, download): ...
    """
    return register("dataset", name, **options)


def register_posthoc(name: str, **options: Any) -> Callable[[Any], Any]:
    """Register a post-hoc rule `(logits, tau, inputs) -> scores` (see posthoc.py): facts needs, display, traceable.

    Example (see longtail.PosthocInputs for what `inputs` holds):
        >>> import longtail
        >>> @longtail.register_posthoc("prob_la", display="probability LA", needs=(), traceable=True)
        ... def prob_la(logits, tau, inputs): ...
    """
    return register("posthoc", name, **options)


def register_finetune(name: str, **options: Any) -> Callable[[Any], Any]:
    """Register a fine-tune mode (models/finetune.py's Finetune record).

    Example, train the classifier and the normalisation layers only:
        >>> import longtail
        >>> from longtail.models.finetune import Finetune
        >>> longtail.register_finetune("norms")(Finetune(None, lambda name: ".bn" in name or ".norm" in name))
    """
    return register("finetune", name, **options)


def register_head_init(name: str, **options: Any) -> Callable[[Any], Any]:
    """Register a head initialisation `(model, context) -> (C, D) rows` (models/head_init.py).

    Example:
        >>> import longtail, torch
        >>> @longtail.register_head_init("zeros")
        ... def zeros(model, context):
        ...     return torch.zeros_like(model.classifier.weight)
    """
    return register("head_init", name, **options)


def _problem(kind: str, obj: Any) -> Optional[str]:
    """Why `obj` cannot be a component of `kind` (None: it can)."""
    import inspect

    if kind == "loss" and inspect.isclass(obj):
        from .losses.base import Loss

        if not issubclass(obj, Loss):
            return f"is the class {obj.__name__}, which is not a longtail.Loss; derive it from longtail.Loss"
    if kind != "finetune" and not callable(obj):  # a fine-tune mode is a record (models/finetune.py's Finetune)
        return f"is a {type(obj).__name__}, not a function or class"
    return None


def unregister(kind: str, name: str) -> None:
    """Remove a plugin's component (tests; a built-in cannot be removed)."""
    found = _REGISTRY[kind].get(name)
    if found is not None and found.builtin:
        raise LongtailError(f"{kind} '{name}' is built in and cannot be unregistered")
    _REGISTRY[kind].pop(name, None)


__all__ = ["KINDS", "Param", "Entry", "PREFIXES", "names", "choices", "entries", "entry", "get", "params", "users",
           "register", "unregister", "section", "register_loss", "register_model", "register_dataset", "register_posthoc",
           "register_finetune", "register_head_init"]
