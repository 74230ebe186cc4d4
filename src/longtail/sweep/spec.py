"""Sweep files: a grid of trainings (variants x axes) and the post-hoc steps run on them.

    base: ../configs/fmnist_lt/ce_imba100.yaml    # relative to the sweep file, or absolute
    overrides: [train.epochs=6]                   # every run
    axes: {dataset.imbalance_factor: [100, 10], seed: [0, 1, 2]}
    out: ../runs/fmnist_methods                   # relative to the sweep file, or absolute
    variants:                                     # optional; without it, one unnamed variant
      - {name: ce}
      - {name: gala, base: ../configs/fmnist_lt/gala_imba100.yaml}
      - {name: ce_posthoc_la, from: ce, step: evaluate --posthoc la --tau 1 --save}

A run's directory is out/<variant>/<key>=<value>/... (one level per axis, in the file's order), so it
depends on the run's own settings only and stays put when values are added to an axis. The seed axis
sets `seed` and `dataset.seed` together unless `seed_sets_dataset_seed: false`. A step variant runs
`longtail <step> RUN_DIR` on every run of the variant named by `from`, after that training finished.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import itertools
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from .. import catalog
from ..config import load_config
from ..errors import LongtailError, one_line

SWEEP_KEYS = ("base", "overrides", "axes", "out", "variants", "seed_sets_dataset_seed", "slurm")
VARIANT_KEYS = ("name", "base", "overrides", "from", "step")
SLURM_KEYS = ("partition", "time", "nodes", "gpus", "tasks_per_node", "cpus", "mem")
_SAFE = re.compile(r"[^A-Za-z0-9._+=-]")  # characters kept as they are in a run directory's name
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
DICT_SOURCE = "<sweep dict>"  # the name of a sweep given as a dict; its relative paths start at the working directory


@dataclass(frozen=True)
class Training:
    """One training run: `longtail train config overrides --out run_dir --resume`."""

    name: str  # the run directory relative to the sweep's out folder
    run_dir: Path
    config: Path
    overrides: tuple[str, ...]
    variant: Optional[str]
    order: tuple[int, int] = (0, 0)  # (grid point, variant): runs go out point by point, every variant at each

    @property
    def log(self) -> Path:
        return self.run_dir / "train.log"

    @property
    def argv(self) -> list[str]:
        return ["train", str(self.config), *self.overrides, "--out", str(self.run_dir), "--resume"]

    def status(self) -> str:
        """done (metrics.json), partial (checkpoints/last.pt: will resume) or to do."""
        if (self.run_dir / "metrics.json").is_file():
            return "done"
        if (self.run_dir / "checkpoints" / "last.pt").is_file():
            return "partial"
        return "to do"


@dataclass(frozen=True)
class Step:
    """A post-hoc command on a finished training: `longtail <args[0]> RUN_DIR <args[1:]>`."""

    variant: str
    source: Training
    args: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.source.name} [{self.variant}]"

    @property
    def log(self) -> Path:
        return self.source.run_dir / f"{self.variant}.log"

    @property
    def marker(self) -> Path:
        """Written after the step succeeded; holds the command, so a changed step runs again."""
        return self.source.run_dir / f"{self.variant}.done"

    @property
    def argv(self) -> list[str]:
        return [self.args[0], str(self.source.run_dir), *self.args[1:]]

    def status(self) -> str:
        """done, to do, or waiting (its training has not finished)."""
        if self.marker.is_file() and self.marker.read_text(encoding="utf-8").strip() == shlex.join(self.args):
            return "done"
        return "to do" if self.source.status() == "done" else "waiting"


@dataclass
class Sweep:
    path: Path
    out: Path
    trainings: list[Training]
    steps: list[Step]
    slurm: dict[str, Any]  # the file's slurm: section (partition, time, nodes, gpus, tasks_per_node, cpus, mem)


def _fail(path: Path, message: str) -> LongtailError:
    where = "the sweep dict" if path.name == DICT_SOURCE else f"sweep file '{path}'"
    return LongtailError(f"{where}: {message}")


def _unknown(path: Path, key: Any, allowed: tuple[str, ...], where: str) -> LongtailError:
    near = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
    hint = f"did you mean '{near[0]}'?" if near else f"use {', '.join(allowed)}"
    return _fail(path, f"unknown key '{one_line(key, 60)}' {where}; {hint}")


def _value_text(value: Any) -> str:
    """An axis value as an override writes it (YAML), e.g. 100, 0.5, true, ce."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def _relative(path: Path, text: Any, key: str) -> Path:
    if not isinstance(text, str) or not text.strip():
        raise _fail(path, f"'{key}' must be a path (relative to the sweep file or absolute), got {one_line(repr(text), 60)}")
    given = Path(text).expanduser()
    return given if given.is_absolute() else Path(os.path.normpath(path.parent / given))


def _overrides(path: Path, value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise _fail(path, f"'overrides' {where} must be a list of key=value strings, e.g. [train.epochs=5]")
    return list(value)


def _axes(path: Path, value: Any) -> dict[str, list]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(path, "'axes' must map config keys to lists of values, e.g. {seed: [0, 1, 2]}")
    for key, values in value.items():
        if not isinstance(key, str):
            raise _fail(path, f"axis key {one_line(repr(key), 60)} must be a config key such as loss.name")
        if not isinstance(values, list) or not values:
            raise _fail(path, f"axis '{key}' must be a non-empty list of values, e.g. {key}: [a, b]")
        for v in values:
            if not isinstance(v, (str, int, float, bool)) and v is not None:
                raise _fail(path, f"axis '{key}' has the value {one_line(repr(v), 60)}; axis values are numbers, strings or true/false")
        names = [_SAFE.sub("_", _value_text(v)) for v in values]
        if len(set(names)) != len(names):
            raise _fail(path, f"axis '{key}' repeats a value (or two values name the same folder): {values}")
    return value


def _step_args(path: Path, name: str, text: Any) -> tuple[str, ...]:
    """Check a step against the CLI's own parser now, so a typo stops the sweep before any training."""
    from ..parser import build_parser

    args = shlex.split(text) if isinstance(text, str) else text
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise _fail(path, f"variant '{name}': 'step' must be a longtail command without its run directory, e.g. 'tune --posthoc la'")
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices  # the subcommands of this install
    if args[0] not in commands or args[0] in ("train", "sweep", "report"):
        usable = ", ".join(c for c in commands if c not in ("train", "sweep", "report"))
        raise _fail(path, f"variant '{name}': step '{args[0]}' is not a post-hoc longtail command here; use one of {usable}")
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            parsed, extra = parser.parse_known_args([args[0], "RUN_DIR", *args[1:]])
    except SystemExit:
        message = captured.getvalue().strip().splitlines()[-1:] or ["invalid arguments"]
        raise _fail(path, f"variant '{name}': step '{shlex.join(args)}' is not valid: {message[0]}") from None
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(parsed, "overrides")]
    if stray:
        raise _fail(path, f"variant '{name}': step '{shlex.join(args)}' has unrecognised arguments {' '.join(stray)}")
    if getattr(parsed, "posthoc", None) not in (None, catalog.NO_RULE):  # the runs' plugins are loaded by now
        try:
            catalog.entry("posthoc", parsed.posthoc)
        except LongtailError as exc:
            raise _fail(path, f"variant '{name}': step '{shlex.join(args)}' is not valid: {exc}") from None
    return tuple(args)


def load_sweep(path: str | Path | dict) -> Sweep:
    """Read and check a sweep file (or the same content as a dict), and every run's config (via
    longtail.config), before anything runs."""
    if isinstance(path, dict):
        return _sweep_from(Path.cwd() / DICT_SOURCE, path)
    path = Path(path)
    if not path.is_file():
        raise LongtailError(f"sweep file '{path}' does not exist; pass a YAML file such as benchmarks/fmnist_methods.yaml")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise _fail(path, "not valid YAML; fix the syntax") from None
    return _sweep_from(path, data)


def _sweep_from(path: Path, data: Any) -> Sweep:
    if not isinstance(data, dict):
        raise _fail(path, "must hold a mapping with the keys base, axes, out (and optionally overrides, variants, slurm)")
    for key in data:
        if key not in SWEEP_KEYS:
            raise _unknown(path, key, SWEEP_KEYS, "at the top level")
    for key in ("base", "out"):
        if key not in data:
            raise _fail(path, f"'{key}' is missing; add {key}: PATH (relative to the sweep file or absolute)")
    base = _relative(path, data["base"], "base")
    out = _relative(path, data["out"], "out")
    common = _overrides(path, data.get("overrides"), "at the top level")
    axes = _axes(path, data.get("axes"))
    tie = data.get("seed_sets_dataset_seed", True)
    if not isinstance(tie, bool):
        raise _fail(path, f"'seed_sets_dataset_seed' must be true or false, got {one_line(repr(tie), 60)}")
    tie = tie and "seed" in axes and "dataset.seed" not in axes
    slurm = data.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise _fail(path, "'slurm' must be a mapping, e.g. {partition: gpu, time: 600, gpus: 1, cpus: 8, mem: 32G}")
    for key in slurm:
        if key not in SLURM_KEYS:
            raise _unknown(path, key, SLURM_KEYS, "under slurm")

    variants = data.get("variants")
    if variants is None:
        variants = [{"name": None}]
    if not isinstance(variants, list) or not variants or not all(isinstance(v, dict) for v in variants):
        raise _fail(path, "'variants' must be a list of mappings, e.g. [{name: ce}, {name: la, overrides: [loss.name=la]}]")
    names: list = []
    for variant in variants:
        for key in variant:
            if key not in VARIANT_KEYS:
                raise _unknown(path, key, VARIANT_KEYS, f"in variant '{variant.get('name')}'")
        name = variant.get("name")
        if data.get("variants") is not None and (not isinstance(name, str) or not _NAME.fullmatch(name)):
            raise _fail(path, f"every variant needs a name of letters, digits, '.', '_' or '-', got {one_line(repr(name), 60)}")
        if name in names:
            raise _fail(path, f"two variants are named '{name}'; give each its own name")
        names.append(name)

    trainings: dict[Optional[str], list[Training]] = {}
    folders: dict[Path, str] = {}
    for index, variant in enumerate(v for v in variants if "step" not in v and "from" not in v):
        name = variant.get("name")
        config = _relative(path, variant["base"], "base") if "base" in variant else base
        own = _overrides(path, variant.get("overrides"), f"of variant '{name}'")
        for key in {o.split("=", 1)[0].strip() for o in own + common}:
            if key in axes or (tie and key == "dataset.seed"):
                hint = " (the seed axis sets it; add seed_sets_dataset_seed: false to set it yourself)" if key == "dataset.seed" else ""
                raise _fail(path, f"'{key}' is both an axis and an override{hint}; keep one")
        runs = []
        for number, point in enumerate(itertools.product(*axes.values())):
            settings = [f"{k}={_value_text(v)}" for k, v in zip(axes, point)]
            if tie:
                settings.append(f"dataset.seed={_value_text(point[list(axes).index('seed')])}")
            parts = ([name] if name else []) + [_SAFE.sub("_", f"{k}={_value_text(v)}") for k, v in zip(axes, point)]
            relative = "/".join(parts) or "run"
            run = Training(relative, out / relative, config, tuple(common + own + settings), name, (number, index))
            try:
                load_config(run.config, run.overrides)  # unknown keys, bad values: one line, before any launch
            except LongtailError as exc:
                raise _fail(path, f"run '{relative}': {exc}") from None
            if run.run_dir in folders:
                raise _fail(path, f"runs '{folders[run.run_dir]}' and '{relative}' share a folder; rename a variant")
            folders[run.run_dir] = relative
            runs.append(run)
        trainings[name] = runs

    steps: list[Step] = []
    seen: dict[tuple, str] = {}
    for variant in (v for v in variants if "step" in v or "from" in v):
        name = variant["name"]
        if "step" not in variant or "from" not in variant:
            raise _fail(path, f"variant '{name}' needs both 'from' (a training variant) and 'step' (a longtail command)")
        if "base" in variant or "overrides" in variant:
            raise _fail(path, f"variant '{name}' is a post-hoc step: it re-uses the checkpoints of '{variant['from']}' and takes no base or overrides")
        if variant["from"] not in trainings:
            choices = ", ".join(str(n) for n in trainings)
            raise _fail(path, f"variant '{name}' takes runs from '{variant['from']}', which is not a training variant; use one of {choices}")
        args = _step_args(path, name, variant["step"])
        if args[0] in ("evaluate", "tune"):  # both write <kind>_<posthoc>.json into the run: one of each per run
            output = (variant["from"], args[0], _option(args, "--posthoc"))
            if output in seen:
                raise _fail(path, f"variants '{seen[output]}' and '{name}' would write the same {args[0]} file into the runs of '{variant['from']}'")
            seen[output] = name
        steps += [Step(name, run, args) for run in trainings[variant["from"]]]
    return Sweep(path, out, [t for runs in trainings.values() for t in runs], steps, slurm)


def _option(args: tuple[str, ...], flag: str) -> Optional[str]:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None
