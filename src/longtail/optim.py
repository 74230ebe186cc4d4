"""SGD and the learning-rate schedules of the recipes: linear warmup, then multi-step or cosine.
google-research's logit-adjustment schedule, a list of (multiplier, epoch) pairs whose first pair ends a linear
warm-up from 0, is the multistep one: warmup_epochs = the first epoch, warmup_start_factor 0, milestones = the
other epochs, gamma 0.1 (its multipliers are 1, 0.1, 0.01, 0.001; test_releases.py checks it step by step).
The schedule is a pure function of fractional epoch, applied every step, so it needs no state of its own."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig


def lr_factor(cfg: TrainConfig, epoch: float) -> float:
    """Multiplier of `train.lr` at fractional epoch `epoch` (0 at the start of training)."""
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        return cfg.warmup_start_factor + (1 - cfg.warmup_start_factor) * epoch / cfg.warmup_epochs
    if cfg.schedule == "multistep":
        return cfg.gamma ** sum(int(epoch) >= m for m in cfg.milestones)
    if cfg.schedule == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
        return 0.5 * (1 + math.cos(math.pi * min((epoch - cfg.warmup_epochs) / span, 1.0)))
    return 1.0


NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The trainable parameters as SGD groups: one group at train.weight_decay, or, with
    train.norm_weight_decay set, a second group holding the normalisation layers' parameters at that decay."""
    if cfg.norm_weight_decay is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    norm_ids = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in norm_ids]},
        {"params": [p for p in trainable if id(p) in norm_ids], "weight_decay": cfg.norm_weight_decay},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    extra = {"fused": True} if fused else {}
    return torch.optim.SGD(
        param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay, **extra,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, start_step: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per batch. `start_step` > 0 resumes the schedule after that many steps; each
    param group's current 'lr' is then taken as its base learning rate (the config's, not a saved one)."""
    if start_step > 0:
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    per_epoch = cfg.schedule_per == "epoch"  # the lr of the epoch's start for all its steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step // steps_per_epoch if per_epoch else step / steps_per_epoch),
        last_epoch=start_step - 1,
    )
