"""LoRA through the `peft` library (Hu et al., ICLR 2022, "LoRA: Low-rank adaptation of large language
models"), an optional extra (`pip install "longtail[peft]"`).

Each targeted linear layer W (out x in) gets a trained low-rank update: y = W x + (alpha / r) B A x with A
(r x in, random) and B (out x r, zero at the start), r = `model.lora_rank`, alpha = r (so the update is B A).
Targets: the attention and MLP projections of every transformer block, found by name: timm's ViT family
(`attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2`) and open_clip's (`mlp.c_fc`, `mlp.c_proj`, and the attention
`nn.MultiheadAttention` itself, whose packed in/out projections peft adapts as one layer).

`merge_lora` folds B A into W and puts the plain layers back, for export: one matmul per layer, no peft in
the exported graph.

`model.finetune: lora_qv` is LIFT's LoRA (Shi et al., ICML 2024, models/peft_modules.py `LoRA`, used on q and v in
models/peft_vit.py): in every block, q += x A_q B_q / r and v += x A_v B_v / r, A (D x r) kaiming-uniform (a = sqrt 5),
B (r x D) zero, r = model.lora_rank; keys, the output projection and the MLP stay as they are. It is written as a
parametrization of the packed q, k, v weight (open_clip's `attn.in_proj_weight`, timm's `attn.qkv.weight`):
W' = W + [(A_q B_q)^T / r; 0; (A_v B_v)^T / r], without peft; `merge_lora` folds it into W as well.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import LongtailError
from .libraries import optional_import

LINEAR_TARGETS = (".attn.qkv", ".attn.proj", ".mlp.fc1", ".mlp.fc2", ".mlp.c_fc", ".mlp.c_proj")


def _peft() -> Any:
    return optional_import("peft", "model.finetune=lora", "peft")


def lora_targets(backbone: nn.Module) -> list[str]:
    """Full names of the layers LoRA adapts in `backbone`."""
    names = []
    for name, module in backbone.named_modules():
        dotted = "." + name
        if isinstance(module, nn.Linear) and dotted.endswith(LINEAR_TARGETS):
            names.append(name)
        elif isinstance(module, nn.MultiheadAttention) and dotted.endswith(".attn"):
            names.append(name)
    return names


def add_lora(backbone: nn.Module, rank: int, model_name: str) -> int:
    """Insert peft's LoRA layers into `backbone` in place; returns how many layers were adapted."""
    peft = _peft()
    targets = lora_targets(backbone)
    if not targets:
        raise LongtailError(
            f"model.finetune=lora found no attention or MLP projections ({', '.join(t.lstrip('.') for t in LINEAR_TARGETS)}) "
            f"in '{model_name}'; LoRA here is for transformer backbones (timm ViTs, clip/...): use model.finetune=bias or linear"
        )
    config = peft.LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=targets)
    peft.inject_adapter_in_model(config, backbone)
    return len(targets)


class QVLoRA(nn.Module):
    """W -> W + [(A_q B_q)^T / r; 0; (A_v B_v)^T / r] for a packed (3D x D) q, k, v weight (LIFT's LoRA)."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.scaling = 1.0 / rank
        self.lora_A_q, self.lora_A_v = nn.Parameter(torch.empty(dim, rank)), nn.Parameter(torch.empty(dim, rank))
        self.lora_B_q, self.lora_B_v = nn.Parameter(torch.zeros(rank, dim)), nn.Parameter(torch.zeros(rank, dim))
        for a in (self.lora_A_q, self.lora_A_v):  # as the release: fan_in of a (D x r) tensor is r
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        dq = (self.lora_A_q @ self.lora_B_q).t() * self.scaling
        dv = (self.lora_A_v @ self.lora_B_v).t() * self.scaling
        return weight + torch.cat([dq, torch.zeros_like(dq), dv]).to(weight.dtype)


def qkv_weights(backbone: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, attribute) of every packed q, k, v weight: open_clip's MultiheadAttention, timm's attn.qkv."""
    found = []
    for name, module in backbone.named_modules():
        if isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim:
            found.append((module, "in_proj_weight"))
        elif isinstance(module, nn.Linear) and ("." + name).endswith(".attn.qkv"):
            found.append((module, "weight"))
    return found


def add_qv_lora(backbone: nn.Module, rank: int, model_name: str) -> int:
    """Parametrize every packed q, k, v weight with LIFT's q/v LoRA; returns how many."""
    targets = qkv_weights(backbone)
    if not targets:
        raise LongtailError(f"model.finetune=lora_qv found no packed q, k, v projection (open_clip's attention, timm's attn.qkv) "
                            f"in '{model_name}'; use a ViT, or model.finetune=bias or linear")
    for module, attribute in targets:
        parametrize.register_parametrization(module, attribute, QVLoRA(getattr(module, attribute).shape[1], rank))
    return len(targets)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA update into its base layer and put the base layer back in its place; returns the count."""
    merged = 0
    for module in list(model.modules()):  # lora_qv: the parametrized weights become plain ones again
        for attribute in list(getattr(module, "parametrizations", {}) or {}):
            if any(isinstance(p, QVLoRA) for p in module.parametrizations[attribute]):
                parametrize.remove_parametrizations(module, attribute, leave_parametrized=True)
                merged += 1
    return merged + _merge_peft(model)


def _merge_peft(model: nn.Module) -> int:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft absent: the model can hold no LoRA layer
        return 0
    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer) and name:
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
            merged += 1
    return merged
