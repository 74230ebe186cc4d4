"""AdaptFormer: a bottleneck adapter in parallel with each transformer block's MLP (Chen et al., NeurIPS 2022,
"AdaptFormer: Adapting vision transformers for scalable visual recognition"), as LIFT fine-tunes CLIP (Shi et
al., ICML 2024, "Long-tail learning with foundation model: heavy fine-tuning hurts").

With x' the block's input to its MLP branch (after attention and its residual), the block computes

    x_out = x' + MLP(LN(x')) + s * W_up ReLU(W_down LN_a(x') + b_down) + b_up

where LN is the block's own norm, LN_a the adapter's LayerNorm, W_down (d x D), W_up (D x d) the bottleneck of
width d (`model.adapter_dim`) and s a learned scalar (starts at 1). W_up and b_up start at zero, so the model
starts as the pretrained one. Only the adapter (and the classifier) train.

The block's norm and MLP are moved into `ParallelAdapter` (the block's norm slot becomes an identity), so the
adapter sees x' whatever block class holds them: timm's `Block` (norm2, mlp) and open_clip's
`ResidualAttentionBlock` (ln_2, mlp). A LayerScale after the MLP (timm `ls2`) scales both branches.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# (norm, mlp) attribute pairs of the transformer blocks an adapter can join
SITES = (("norm2", "mlp"), ("ln_2", "mlp"))


class AdaptFormer(nn.Module):
    """s * W_up ReLU(W_down LN_a(x)): the adapter branch alone (see the module docstring)."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = nn.Parameter(torch.ones(1))
        nn.init.kaiming_normal_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(self.norm(x)))) * self.scale


class ParallelAdapter(nn.Module):
    """MLP(LN(x)) + AdaptFormer(x): a block's norm and MLP with the adapter beside them."""

    def __init__(self, norm: nn.Module, mlp: nn.Module, adapter: AdaptFormer):
        super().__init__()
        self.norm, self.mlp, self.adapter = norm, mlp, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x)) + self.adapter(x)


def adapter_blocks(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(block, norm attribute, mlp attribute) of every transformer block of `model` an adapter can join."""
    found = []
    for module in model.modules():
        for norm, mlp in SITES:
            if isinstance(getattr(module, norm, None), nn.LayerNorm) and isinstance(getattr(module, mlp, None), nn.Module):
                found.append((module, norm, mlp))
    return found


def lift_adapter_dim(num_classes: int, num_blocks: int) -> int:
    """LIFT's default bottleneck width: 2 ** floor(log2(C / 2L)), at least 1."""
    return 2 ** max(0, int(math.floor(math.log2(max(num_classes / (2 * num_blocks), 1)))))


def add_adapters(model: nn.Module, bottleneck: int) -> int:
    """Put an AdaptFormer beside the MLP of every block found; returns how many blocks got one."""
    blocks = adapter_blocks(model)
    for block, norm_name, mlp_name in blocks:
        norm = getattr(block, norm_name)
        setattr(block, mlp_name, ParallelAdapter(norm, getattr(block, mlp_name), AdaptFormer(norm.normalized_shape[0], bottleneck)))
        setattr(block, norm_name, nn.Identity())
    return len(blocks)
