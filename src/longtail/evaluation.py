"""Re-evaluating saved models: a checkpoint carries the config and class counts it needs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from . import distributed
from .checkpoint import load_checkpoint
from .config import Config, flatten, from_flat, parse_override
from .data import DataBundle, build_data
from .engine import evaluate_split
from .errors import LongtailError
from .models import create_model


def resolve_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise LongtailError(f"'{path}' is not a run directory: it has no checkpoints/best.pt or checkpoints/last.pt")
    if not path.is_file():
        raise LongtailError(f"'{path}' is neither a run directory nor a checkpoint file")
    return path


def load_run(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Config, dict, Path]:
    """The checkpoint of a run and its config, with `key=value` overrides (e.g. dataset.root) applied."""
    ckpt_path = resolve_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    values = {**flatten(ckpt["config"]), **dict(parse_override(o) for o in overrides)}
    return from_flat(values), ckpt, ckpt_path


def restore_model(cfg: Config, ckpt: dict, device: torch.device) -> nn.Module:
    # the checkpoint holds every weight: build without model.pretrained (no download, no stage-1 file needed)
    model = create_model(dataclasses.replace(cfg.model, pretrained=None), ckpt["num_classes"], ckpt["in_channels"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError:
        raise LongtailError(
            f"the checkpoint's weights do not fit model '{cfg.model.name}' with {ckpt['num_classes']} classes; "
            "it was saved by a different model or class count"
        ) from None
    return model.to(device)


def check_bundle(bundle: DataBundle, ckpt: dict) -> None:
    if bundle.num_classes != ckpt["num_classes"]:
        raise LongtailError(
            f"the dataset has {bundle.num_classes} classes but the checkpoint was trained on {ckpt['num_classes']}; "
            "evaluate it on the dataset it was trained on"
        )


def evaluate_checkpoint(path: str | Path, split: str = "test", overrides: Sequence[str] = ()) -> dict:
    cfg, ckpt, ckpt_path = load_run(path, overrides)
    runtime = distributed.setup(cfg.device)
    bundle = build_data(cfg)
    check_bundle(bundle, ckpt)
    data = bundle.val if split == "val" else bundle.test
    if data is None:
        raise LongtailError(f"the run has no validation split (dataset.val_source={cfg.dataset.val_source}); use --split test")
    model = restore_model(cfg, ckpt, runtime.device)
    metrics = evaluate_split(model, data, bundle, cfg, runtime, experts=True)
    metrics.update({"split": split, "checkpoint_path": str(ckpt_path)})
    return metrics
