"""GALA (Gradient-Aware Logit Adjustment) and BaGMar (Balanced Gradient Margin) losses: one
released codebase (see docs/methods.md).

Released behaviour (`variant="released"`, the default: it produced the published tables):

    F = z + lambda1 * log(theta + 1e-3) - lambda2 * log(phi[y] + 1e-3)       loss = CE(F, y)

After each training forward, g = |dCE/dF| with the 1/B of the batch mean (g_y = (1 - p_y)/B,
g_c = p_c/B otherwise, p = softmax(F)) is added to a never-reset C x C accumulator, A[c, y] += g_c;
every step P += diag(A) and Q += offdiag(A); theta = row sums of P, phi = column sums of Q.
So theta is a running sum of running sums. Only diag(A) and the column sums of offdiag(A) are
ever read, so this module keeps those two vectors (`pos_acc`, `neg_acc`) instead of the C x C
matrix: the same numbers in O(C) memory (A alone would be 265 MB at iNaturalist's 8142 classes).
Since softmax gradients sum to zero theta equals phi, and the lambda2 term, the same for every
column of a row, cancels in the softmax. At the first step the statistics are zero. In eval mode
the loss is plain CE(z, y) and nothing is accumulated.

Paper formula (`variant="paper"`): theta and phi are single running sums of the per-step
contributions (theta += batch diag(A), phi += batch column sums of offdiag(A)), and the margin
only touches the non-target columns: F_j = z_j + lambda1 log theta_j - lambda2 log phi_y for
j != y, F_y = z_y.

With torch.distributed initialised, each step's contribution is summed over processes and divided
by the world size, which gives exactly the statistics of one process seeing the global batch.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .. import distributed
from ..catalog import register_loss
from ..config import LossConfig
from ..errors import LongtailError
from .base import Loss

EPS = 1e-3
VARIANTS = ("released", "paper")


class GALALoss(Loss):
    def __init__(self, num_classes: int, lambda1: float = 1.0, lambda2: float = 1.0, variant: str = "released"):
        super().__init__()
        if variant not in VARIANTS:
            raise LongtailError(f"unknown GALA variant '{variant}'; choose one of {', '.join(VARIANTS)}")
        self.lambda1, self.lambda2, self.variant = float(lambda1), float(lambda2), variant
        # float64: theta grows like steps^2 and must still absorb small increments late in training
        for name in ("pos_acc", "neg_acc", "theta", "phi"):
            self.register_buffer(name, torch.zeros(num_classes, dtype=torch.float64))

    def adjusted_logits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_theta = torch.log(self.theta + EPS).to(logits.dtype)
        log_phi_y = torch.log(self.phi[targets] + EPS).to(logits.dtype)[:, None]
        margin = self.lambda1 * log_theta - self.lambda2 * log_phi_y  # (B, C)
        if self.variant == "paper":
            margin = margin.scatter(1, targets[:, None], 0.0)
        return logits + margin

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.cross_entropy(logits, targets)
        adjusted = self.adjusted_logits(logits, targets)
        loss = F.cross_entropy(adjusted, targets)
        self._accumulate(adjusted.detach(), targets)
        return loss

    @torch.no_grad()
    def _accumulate(self, adjusted: torch.Tensor, targets: torch.Tensor) -> None:
        """Add this step's |dCE/dF| to the statistics (the analytic softmax gradient, no autograd)."""
        probs = adjusted.double().softmax(1)
        grad = (probs - F.one_hot(targets, probs.shape[1]).double()).abs() / len(targets)
        on_target = grad.gather(1, targets[:, None]).squeeze(1)
        off_target = grad.sum(1) - on_target  # column y of offdiag(A) for a sample of class y
        step = torch.zeros(2, len(self.theta), dtype=torch.float64, device=grad.device)
        step[0].index_add_(0, targets, on_target)
        step[1].index_add_(0, targets, off_target)
        if distributed.is_initialized():
            distributed.all_reduce_sum(step).div_(distributed.world_size())
        if self.variant == "released":
            self.pos_acc += step[0]
            self.neg_acc += step[1]
            self.theta += self.pos_acc
            self.phi += self.neg_acc
        else:
            self.theta += step[0]
            self.phi += step[1]


class BaGMarLoss(GALALoss):
    """BaGMar: the same code under its earlier name, lambda1 = lambda2 = 1."""

    def __init__(self, num_classes: int, variant: str = "released"):
        super().__init__(num_classes, lambda1=1.0, lambda2=1.0, variant=variant)


@register_loss("gala")
def _gala(cfg: LossConfig, counts: Sequence[int]) -> Loss:
    return GALALoss(len(counts), cfg.lambda1, cfg.lambda2, cfg.variant)


@register_loss("bagmar")
def _bagmar(cfg: LossConfig, counts: Sequence[int]) -> Loss:
    if (cfg.lambda1, cfg.lambda2) != (1.0, 1.0):
        raise LongtailError(
            f"loss 'bagmar' fixes lambda1 = lambda2 = 1 but the config sets {cfg.lambda1} and {cfg.lambda2}; "
            "use loss.name=gala to choose them"
        )
    return BaGMarLoss(len(counts), variant=cfg.variant)
