"""Checkpoints: written atomically (temp file, fsync, rename) and read with weights_only=True,
so a half-written file never replaces a good one and a stranger's file cannot run code.

A checkpoint is a dict of plain data (tensors, numbers, strings, lists, dicts). `load_checkpoint`
checks its structure before anyone indexes into it, so a foreign or damaged file is one clear
error instead of a KeyError deep in the engine.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .errors import LongtailError, one_line

FORMAT_VERSION = 1

# Entries every checkpoint carries (what evaluating it needs), and a check of each one's type.
_IS_INT = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
_IS_NUMBER = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
REQUIRED: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "format_version": ("an integer", _IS_INT),
    "model": ("a dict of tensors", lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())),
    "config": ("a dict", lambda v: isinstance(v, dict)),
    "num_classes": ("a positive integer", lambda v: _IS_INT(v) and v > 0),
    "in_channels": ("a positive integer", lambda v: _IS_INT(v) and v > 0),
    "class_counts": ("a list of integers", lambda v: isinstance(v, list) and all(_IS_INT(c) for c in v)),
    "mean": ("a list of numbers", lambda v: isinstance(v, list) and all(_IS_NUMBER(c) for c in v)),
    "std": ("a list of numbers", lambda v: isinstance(v, list) and all(_IS_NUMBER(c) for c in v)),
}


def _is_launch_list(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(x, dict) and set(x) == {"start_epoch", "epochs"} and all(_IS_INT(n) for n in x.values()) for x in v)


# What resuming training needs on top (last.pt).
TRAINING_STATE: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "optimizer": ("a dict", lambda v: isinstance(v, dict)),
    "scheduler": ("a dict", lambda v: isinstance(v, dict)),
    "loss": ("a dict of tensors", lambda v: isinstance(v, dict) and all(isinstance(t, torch.Tensor) for t in v.values())),
    "progress": ("a dict with epoch, best_score, best_epoch, history (and launches)", lambda v: (
        isinstance(v, dict) and set(v) - {"launches"} == {"epoch", "best_score", "best_epoch", "history"}
        and _IS_INT(v["epoch"]) and v["epoch"] >= 0 and _IS_INT(v["best_epoch"]) and _IS_NUMBER(v["best_score"])
        and isinstance(v["history"], list) and all(isinstance(r, dict) for r in v["history"])
        and _is_launch_list(v.get("launches", []))  # absent from checkpoints written before launches were kept
    )),
}


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write `obj` to `path` so that `path` always holds either the old or the new complete file.
    A failed write (disk full) leaves the old file and raises LongtailError."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **obj}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)  # make the rename itself durable
    except OSError as exc:
        hint = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "check the folder"
        raise LongtailError(
            f"could not write checkpoint '{path}' ({exc.strerror or exc}); the previous checkpoint is intact: "
            f"{hint} and continue with --resume"
        ) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Text files of a run (metrics.json, epochs.jsonl, config.yaml): complete or not there, never half."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise LongtailError(f"could not write '{path}' ({exc.strerror or exc}); free some space or check the folder, then continue with --resume") from None


def write_json_atomic(path: Path, data: Any) -> None:
    """A run's JSON result files (metrics.json, tune_*.json, eval_*.json), written as write_text_atomic does."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def remove_partial_writes(directory: Path) -> list[Path]:
    """Delete the temp files of writes a killed process left behind (they never replaced anything)."""
    removed = sorted(directory.glob("*.tmp"))  # pathlib's glob also matches the hidden '.last.pt.XXXX.tmp'
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def load_checkpoint(path: str | Path, require: Sequence[str] = ()) -> dict[str, Any]:
    """Read a longtail checkpoint with torch.load(weights_only=True) and check its structure.

    `require` names extra entries that must be present (e.g. checkpoint.TRAINING_STATE for resuming).
    """
    path = Path(path)
    if not path.is_file():
        raise LongtailError(f"checkpoint '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LongtailError(f"checkpoint '{path}' holds objects that are not plain data and was refused ({one_line(first, 160)})") from None
    except Exception as exc:  # noqa: BLE001 - foreign bytes surface as many exception types inside torch.load
        raise LongtailError(f"checkpoint '{path}' is corrupt or truncated ({type(exc).__name__}); use another checkpoint") from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt or "model" not in ckpt:
        raise LongtailError(f"'{path}' is not a longtail checkpoint (no format_version/model entries)")
    checks = {**REQUIRED, **{k: TRAINING_STATE[k] for k in require}}
    for key, (what, ok) in checks.items():
        if key not in ckpt:
            raise LongtailError(f"checkpoint '{path}' lacks its '{key}' entry; it was not written by longtail or is damaged")
        if not ok(ckpt[key]):
            raise LongtailError(f"checkpoint '{path}' has a '{key}' entry that is not {what}; it was not written by longtail or is damaged")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise LongtailError(f"checkpoint '{path}' has format {ckpt['format_version']}, newer than this longtail ({FORMAT_VERSION}); upgrade longtail")
    return ckpt


def load_state(module: nn.Module, state: dict[str, Any], what: str, source: str | Path) -> None:
    """`module.load_state_dict(state)`, with a mismatch (another model, loss or class count) as one clear line."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        details = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = details[1] if len(details) > 1 else (details[0] if details else type(exc).__name__)
        raise LongtailError(
            f"the {what} weights in '{source}' do not fit this {what} ({one_line(first)}); "
            "the checkpoint was saved with a different model, loss or class count"
        ) from None
