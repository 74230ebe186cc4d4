"""`longtail.train`: a config (YAML path, dict or Config) plus overrides, trained into a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from ..config import Config, flat_dict, flatten, from_flat, load_yaml, parse_override
from ..errors import LongtailError
from ..plugins import load_plugins
from .output import quiet
from .overrides import Overrides, override_strings
from .runs import Run

ConfigLike = Union[str, Path, Mapping[str, Any], Config]


def resolve_config(config: ConfigLike, overrides: Sequence[Overrides] = ()) -> Config:
    """Defaults, then the config (YAML file, nested or dotted dict, or Config), then the overrides; checked
    like the command line's, without importing torch."""
    if isinstance(config, Config):
        values = flat_dict(config)
    elif isinstance(config, Mapping):
        values = flatten(dict(config))
    elif isinstance(config, (str, Path)):
        values = load_yaml(config)
    else:
        raise LongtailError(f"config must be a YAML path, a dict or a longtail Config, got {type(config).__name__}")
    for text in override_strings(overrides):
        key, value = parse_override(text)
        values[key] = value
    return from_flat(values)


def train(config: ConfigLike, *overrides: Overrides, out: Optional[str | Path] = None, plugins: Sequence[str] = (),
          progress: bool = False, resume: bool = True, allow_config_change: bool = False) -> Run:
    """Train a model, as `longtail train CONFIG OVERRIDES --out OUT --resume` does, and return its `Run`.

    Args:
        config: a YAML file (e.g. `configs/fmnist_lt/ce_imba100.yaml`), a dict of settings (nested sections
            or dotted keys) or a `longtail.config.Config`.
        *overrides: `"key=value"` strings or dicts `{key: value}`, applied after `config` in order.
        out: the run directory; default `runs/<config file name>` (required for a dict or Config).
        plugins: modules or `.py` files that register components the config names, loaded before the
            config is checked (see the plugin docs).
        progress: print the training log and progress bars (default: print nothing).
        resume: continue the run `out` holds (default); False refuses a folder that holds one, as
            `longtail train` without `--resume` does.
        allow_config_change: resume a run whose config differs in keys that are not resume-safe.

    When `out` already holds a run, it resumes from `checkpoints/last.pt` (a finished run returns at once,
    metrics.json unchanged), as the command line does with `--resume`. A config mistake raises
    `LongtailError` before torch is imported.

    Examples:
        >>> import longtail
        >>> run = longtail.train("configs/fmnist_lt/ce_imba100.yaml", "train.epochs=1", "model.name=resnet8", out="/tmp/x")
        >>> run.metrics["top1"], run.evaluate(posthoc="la")["top1"]
    """
    load_plugins(plugins)  # as `--plugin`: files relative to the working directory
    # train.resume is resume-safe, and with it a fresh folder simply starts
    cfg = resolve_config(config, [*overrides, *(["train.resume=true"] if resume else [])])
    if out is None:
        if not isinstance(config, (str, Path)):
            raise LongtailError("pass out= (the run directory) when the config is a dict or a Config; e.g. out='runs/ce'")
        out = Path("runs") / Path(config).stem
    from ..engine import fit  # torch is imported only once the config is known to be valid

    with quiet(progress):
        fit(cfg, Path(out), allow_config_change=allow_config_change)
    return Run(Path(out))


__all__ = ["train", "resolve_config"]
