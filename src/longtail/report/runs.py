"""Finding and reading run directories.

A run directory holds config.yaml and metrics.json (written by `longtail train`), optionally
tune_<posthoc>.json files (`longtail tune`), eval_<posthoc>.json files (`longtail evaluate --posthoc
... --save`; those of the test split are read), shift.json (`longtail shift`) and epochs.jsonl (one JSON
object per epoch).
Nothing else is read: no checkpoints, no TensorBoard files.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from ..config import Config, dump_yaml, flatten
from ..errors import LongtailError


@dataclass
class Run:
    path: Path
    config: dict[str, Any]  # flat, dotted keys as in config.yaml
    metrics: dict[str, Any]
    tunes: dict[str, dict] = field(default_factory=dict)  # posthoc name -> tune_<name>.json
    epochs: list[dict] = field(default_factory=list)
    shift: Optional[dict[str, Any]] = None  # shift.json (`longtail shift`)
    evals: dict[str, dict] = field(default_factory=dict)  # posthoc name -> eval_<name>.json on the test split


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "metrics.json").is_file()


def find_runs(paths: str | Path | Iterable[str | Path]) -> tuple[list[Run], list[Path]]:
    """Runs named directly or found (recursively) under the given folders; also the unfinished
    runs skipped while searching (config.yaml without metrics.json)."""
    if isinstance(paths, (str, Path)):  # one folder given as a plain string, not its characters
        paths = [paths]
    found: list[Path] = []
    unfinished: list[Path] = []
    for given in map(Path, paths):
        if not given.exists():
            raise LongtailError(f"'{given}' does not exist; pass run directories or a folder holding them")
        if not given.is_dir():
            raise LongtailError(f"'{given}' is not a directory; pass run directories (with config.yaml and metrics.json) or a folder holding them")
        if (given / "config.yaml").is_file():
            if not (given / "metrics.json").is_file():
                raise LongtailError(f"'{given}' has no metrics.json: the run has not finished; finish it or leave it out "
                                    "(a parent folder passed instead skips unfinished runs)")
            found.append(given)
            continue
        below, pending = _search(given)
        if not below and not pending:
            raise LongtailError(f"'{given}' is not a run directory (no config.yaml and metrics.json) and holds none below it")
        found += below
        unfinished += pending
    unique = list({p.resolve(): p for p in found}.values())  # `report runs runs/a` counts runs/a once
    if not unique:
        raise LongtailError(f"no finished runs found; unfinished: {', '.join(map(str, unfinished))}")
    return [read_run(p) for p in unique], unfinished


def _search(root: Path) -> tuple[list[Path], list[Path]]:
    done, pending = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if "config.yaml" in filenames:
            (done if "metrics.json" in filenames else pending).append(Path(dirpath))
            dirnames.clear()  # a run's own subfolders (checkpoints/, tb/) hold no runs
    return done, pending


def read_run(path: Path) -> Run:
    # a config.yaml written before a key existed lacks it: that run behaved as the key's default says
    config = {**_defaults(), **_read_yaml(path / "config.yaml")}
    metrics = _read_json(path / "metrics.json")
    if not any(isinstance(metrics.get(k), (int, float, dict)) for k in ("top1", "raw")):
        raise LongtailError(f"'{path / 'metrics.json'}' has no 'top1' accuracy; it was not written by longtail")
    tunes = {}
    for file in sorted(path.glob("tune_*.json")):
        tune = _read_json(file)
        tunes[tune.get("posthoc", file.stem[len("tune_"):])] = tune
    shift = _read_json(path / "shift.json") if (path / "shift.json").is_file() else None
    if shift is not None and not (isinstance(shift.get("rows"), list) and isinstance(shift.get("calibration"), dict)):
        raise LongtailError(f"'{path / 'shift.json'}' has no 'rows' and 'calibration'; re-run `longtail shift`")
    evals = {}
    for file in sorted(path.glob("eval_*.json")):
        saved = _read_json(file)
        if saved.get("split", "test") == "test" and isinstance(saved.get("posthoc"), dict):
            evals[saved["posthoc"].get("name", file.stem[len("eval_"):])] = saved
    return Run(path, config, metrics, tunes, _read_jsonl(path / "epochs.jsonl"), shift, evals)


@functools.cache
def _defaults() -> dict[str, Any]:
    """Every config key at its default, as config.yaml would hold it."""
    return flatten(yaml.safe_load(dump_yaml(Config())))


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise LongtailError(f"'{file}' is not valid YAML; the run directory is damaged") from None
    if not isinstance(data, dict):
        raise LongtailError(f"'{file}' does not hold a config mapping; the run directory is damaged")
    return flatten(data)


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LongtailError(f"'{file}' is not valid JSON ({exc}); re-create it or leave the run out") from None
    if not isinstance(data, dict):
        raise LongtailError(f"'{file}' does not hold a JSON object; re-create it or leave the run out")
    return data


def _read_jsonl(file: Path) -> list[dict]:
    if not file.is_file():
        return []
    rows = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise LongtailError(f"line {number} of '{file}' is not valid JSON; the run directory is damaged") from None
    return rows
