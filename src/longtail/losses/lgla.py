"""LGLA: Local and Global Logit Adjustments with the Adaptive Angular Weighted loss
(Tao et al., "Local and Global Logit Adjustments for Long-Tailed Learning", ICCV 2023), as the
released code computes it. Input: the raw cosine logits z_e = s * cos(w_c, f_e) of E experts.

Class subsets: classes sorted by count ascending; walk the running sum of counts and cut (then
restart the sum) whenever it passes sum(n) // (E - 1). Like the released code, a cut is a count
threshold, so the class that crosses it, and every class with the same count, stays in the lower
subset. This gives E - 1 subsets of about equal image mass; subset 0 holds the largest classes.

    local expert k < E - 1 (LLA):  z_k + log(q_k + 1e-9),  q_k,c = pi_c if c in subset k else max(pi)
    global expert E - 1   (GLA):   z + tau * log(pi + 1e-9)   (tau = 1 when E <= 2)

AAW weights, per expert, without gradient, from the expert's raw logits: a = arccos(z_y / s); the
batch is grouped by the subset the label belongs to; a_ref = mean angle of the group in the batch;
w = 1 if a < a_ref else 1 + (a - a_ref). Expert loss = -mean_batch(w * log_softmax(adjusted z)_y);
the total is the sum over experts.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..catalog import register_loss
from ..config import LossConfig
from ..errors import LongtailError
from .base import Loss

LOG_EPS = 1e-9


def equal_mass_subsets(class_counts: Sequence[int], num_subsets: int) -> torch.Tensor:
    """Subset index of every class (0 = the subset of the largest classes, num_subsets - 1 = the tail)."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.long)
    target = int(counts.sum()) // num_subsets
    thresholds, running = [], 0
    for n in sorted(counts.tolist()):
        running += n
        if running > target:
            thresholds.append(n)
            running = 0
    # a class above k thresholds lies k subsets away from the tail subset
    above = (counts[:, None] > torch.tensor(thresholds, dtype=torch.long)[None, :]).sum(1)
    subset = len(thresholds) - above
    sizes = torch.bincount(subset, minlength=num_subsets).tolist()
    if len(thresholds) != num_subsets - 1 or min(sizes) == 0:
        raise LongtailError(
            f"the class counts cannot be cut into {num_subsets} subsets of equal image mass for the local "
            f"experts (got subsets of {sizes} classes); use fewer experts (model.num_experts) or LGLA on imbalanced data"
        )
    return subset


class LGLALoss(Loss):
    """Sum over experts of the AAW-weighted cross-entropy of locally / globally adjusted logits."""

    input_key = "expert_logits"

    def __init__(self, class_counts: Sequence[int], num_experts: int = 3, tau: float = 3.0, scale: float = 30.0):
        super().__init__()
        if num_experts < 2:
            raise LongtailError(f"LGLA needs at least 2 experts (local + global), got model.num_experts={num_experts}")
        if not scale > 0:
            raise LongtailError(f"loss.scale must be positive (the cosine classifiers' s), got {scale}")
        self.num_experts = num_experts
        self.tau = tau if num_experts > 2 else 1.0  # as released: a single local expert pairs with plain LA
        self.scale = scale
        counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
        prior = counts / counts.sum()
        subset = equal_mass_subsets(class_counts, num_experts - 1)
        member = subset[None, :] == torch.arange(num_experts - 1)[:, None]  # (E-1, C)
        local = torch.where(member, prior, prior.max())
        adjustments = torch.cat([torch.log(local + LOG_EPS), self.tau * torch.log(prior + LOG_EPS)[None]])
        self.register_buffer("prior", prior.float())
        self.register_buffer("subset_of_class", subset)
        self.register_buffer("local_priors", local.float())  # q_k, one row per local expert
        self.register_buffer("adjustments", adjustments.float())  # (E, C): what each expert adds to its logits

    @torch.no_grad()
    def aaw_weights(self, expert_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(E, B) weights: 1 for samples closer to their class than their group's batch mean, else 1 + excess angle."""
        index = targets.view(1, -1, 1).expand(expert_logits.shape[0], -1, 1)
        cos = expert_logits.gather(2, index).squeeze(2) / self.scale
        angle = torch.arccos(cos.clamp(-1.0, 1.0))  # clamp: rounding may put |z_y| a hair above s
        groups = F.one_hot(self.subset_of_class[targets], self.num_experts - 1).to(angle.dtype)  # (B, G)
        mean_angle = (angle @ groups) / groups.sum(0).clamp(min=1)  # (E, G); empty groups are never read
        excess = angle - mean_angle @ groups.t()  # each sample against its own group's mean
        return torch.where(excess < 0, torch.ones_like(excess), 1.0 + excess)

    def forward(self, expert_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if expert_logits.dim() != 3 or expert_logits.shape[0] != self.num_experts:
            raise LongtailError(
                f"the LGLA loss expects expert logits of shape ({self.num_experts}, batch, classes), got "
                f"{tuple(expert_logits.shape)}; set loss.num_experts to the model's number of experts"
            )
        weights = self.aaw_weights(expert_logits, targets)
        log_probs = F.log_softmax(expert_logits + self.adjustments[:, None, :], dim=2)
        picked = log_probs.gather(2, targets.view(1, -1, 1).expand(self.num_experts, -1, 1)).squeeze(2)
        return -(weights * picked).mean(1).sum()


@register_loss("lgla")
def _lgla(cfg: LossConfig, counts: Sequence[int]) -> Loss:
    return LGLALoss(counts, cfg.num_experts, cfg.tau, cfg.scale)
