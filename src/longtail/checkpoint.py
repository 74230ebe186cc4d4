"""Checkpoints: written atomically (temp file, fsync, rename) and read with weights_only=True,
so a half-written file never replaces a good one and a stranger's file cannot run code.

A checkpoint is a dict of plain data (tensors, numbers, strings, lists, dicts). `load_checkpoint`
checks its structure before anyone indexes into it, so a foreign or damaged file is one clear
error instead of a KeyError deep in the engine.

Every checkpoint records its format (`format_version`) and the longtail that wrote it (`longtail_version`).
Formats:
  1  longtail 0.1.0 before the input spec: mean and std at the top level, and (later 0.1.0 files) the input
     contract ckpt["input"] = {channels, image_size, resize, mean, std, interpolation}
  2  the input spec ckpt["input"] = input_spec.InputSpec.to_dict(), stored once (no top-level mean/std)
A format-1 file is converted on load, in `upgrade` (the one place that knows format 1); a file of a newer
format than this longtail's is refused with one line naming both.
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

from . import __version__
from .errors import LongtailError, one_line
from .input_spec import InputSpec, eval_resize

FORMAT_VERSION = 2

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
    "input": ("a dict (the input spec)", lambda v: isinstance(v, dict)),
}
# Format 1 held the normalisation at the top level instead of "input".
REQUIRED_V1: dict[str, tuple[str, Callable[[Any], bool]]] = {
    **{k: v for k, v in REQUIRED.items() if k != "input"},
    "mean": ("a list of numbers", lambda v: isinstance(v, list) and all(_IS_NUMBER(c) for c in v)),
    "std": ("a list of numbers", lambda v: isinstance(v, list) and all(_IS_NUMBER(c) for c in v)),
}
# Format 1 files without ckpt["input"] predate the image-file datasets' contract: the datasets then held in memory
# and their native sides (every other dataset was cropped to data.image_size with the 256/224 resize)
_V1_IN_MEMORY_SIZE = {"fmnist_lt": 28, "cifar10_lt": 32, "cifar100_lt": 32}


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
    """Write `obj` to `path` so that `path` always holds either the old or the new complete file, stamped with
    this longtail's format and version. A failed write (disk full) leaves the old file and raises LongtailError."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save({**obj, "format_version": FORMAT_VERSION, "longtail_version": __version__}, f)
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
    fmt = ckpt["format_version"]
    if _IS_INT(fmt) and fmt > FORMAT_VERSION:
        writer = ckpt.get("longtail_version", "a newer longtail")
        raise LongtailError(f"checkpoint '{path}' has format {fmt} (written by longtail {writer}); this longtail {__version__} "
                            f"reads formats up to {FORMAT_VERSION}: upgrade longtail")
    checks = {**(REQUIRED_V1 if fmt == 1 else REQUIRED), **{k: TRAINING_STATE[k] for k in require}}
    for key, (what, ok) in checks.items():
        if key not in ckpt:
            raise LongtailError(f"checkpoint '{path}' lacks its '{key}' entry; it was not written by longtail or is damaged")
        if not ok(ckpt[key]):
            raise LongtailError(f"checkpoint '{path}' has a '{key}' entry that is not {what}; it was not written by longtail or is damaged")
    if fmt < 1:
        raise LongtailError(f"checkpoint '{path}' has format {fmt}, which no longtail wrote; it is damaged")
    ckpt = upgrade(ckpt, path)
    InputSpec.from_dict(ckpt["input"], f"checkpoint '{path}'")  # a damaged spec is one line here, not a KeyError later
    return ckpt


def upgrade(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """A checkpoint of format 1 as format 2: the input spec from its contract (resize R = S: crop_pct 1.0; R =
    round(S * 256 / 224), the only other value format 1 wrote: crop_pct None, the same rule), or for the oldest
    files, without a contract, from the config and channels as longtail then built it. Evaluating the converted
    checkpoint feeds the network exactly the pixels the old one did (tests/test_input_spec.py, on a stored file)."""
    if ckpt["format_version"] != 1:
        return ckpt
    ckpt = dict(ckpt)
    mean, std, old = ckpt.pop("mean"), ckpt.pop("std"), ckpt.pop("input", None)
    config = ckpt["config"]
    if old is None:
        dataset, data = config.get("dataset", {}), config.get("data", {})
        native = _V1_IN_MEMORY_SIZE.get(dataset.get("name"))
        size = native if native is not None else data.get("image_size", 224)
        old = {"channels": ckpt["in_channels"], "image_size": size, "resize": size if native is not None else eval_resize(size, None),
               "interpolation": "bilinear"}
    try:
        size, resize = int(old["image_size"]), int(old["resize"])
        crop_pct = 1.0 if resize == size else None if resize == eval_resize(size, None) else size / resize
        spec = InputSpec(int(old["channels"]), size, tuple(mean), tuple(std), crop_pct, str(old["interpolation"]))
    except (KeyError, TypeError, ValueError):
        raise LongtailError(f"checkpoint '{path}' (format 1) has a damaged input contract; it cannot be converted") from None
    if spec.eval_resize_size() != resize:
        raise LongtailError(f"checkpoint '{path}' (format 1) resizes to {resize} before its {size} px crop, which no longtail "
                            "wrote; it cannot be converted")
    return {**ckpt, "input": spec.to_dict(), "format_version": FORMAT_VERSION}


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
