"""Checkpoints: written atomically (temp file, fsync, rename) and read with weights_only=True,
so a half-written file never replaces a good one and a stranger's file cannot run code."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import LongtailError

FORMAT_VERSION = 1


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **obj}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise LongtailError(f"checkpoint '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LongtailError(f"checkpoint '{path}' holds objects that are not plain data and was refused ({first[:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise LongtailError(f"checkpoint '{path}' is corrupt or truncated ({type(exc).__name__}); use another checkpoint") from None
    if not isinstance(ckpt, dict) or "format_version" not in ckpt or "model" not in ckpt:
        raise LongtailError(f"'{path}' is not a longtail checkpoint (no format_version/model entries)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise LongtailError(f"checkpoint '{path}' has format {ckpt['format_version']}, newer than this longtail ({FORMAT_VERSION}); upgrade longtail")
    return ckpt
