"""The small contract between losses and the engine."""

from __future__ import annotations

from torch import nn


class Loss(nn.Module):
    """Base of every longtail loss: `forward(model_output[input_key], targets) -> scalar`.

    `input_key` names the model output the loss reads ('logits', or 'expert_logits' for
    multi-expert losses); `set_epoch` lets schedule-dependent losses (LDAM-DRW) follow training.
    Statistics a loss keeps are buffers, so they move with `.to()` and land in `state_dict`.

    Example, a loss registered from a user's file (docs/adding-a-method.md):
        >>> import torch, longtail
        >>> @longtail.register_loss("my_ce")
        ... class MyCE(longtail.Loss):
        ...     def __init__(self, cfg, class_counts):
        ...         super().__init__()
        ...     def forward(self, logits, targets):
        ...         return torch.nn.functional.cross_entropy(logits, targets)
    """

    input_key = "logits"

    def set_epoch(self, epoch: int) -> None:
        """Called by the engine at the start of every training epoch (0-based)."""
