"""LoRA through the `peft` library (Hu et al., ICLR 2022, "LoRA: Low-rank adaptation of large language
models"), an optional extra (`pip install "longtail[peft]"`).

Each targeted linear layer W (out x in) gets a trained low-rank update: y = W x + (alpha / r) B A x with A
(r x in, random) and B (out x r, zero at the start), r = `model.lora_rank`, alpha = r (so the update is B A).
Targets: the attention and MLP projections of every transformer block, found by name: timm's ViT family
(`attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2`) and open_clip's (`mlp.c_fc`, `mlp.c_proj`, and the attention
`nn.MultiheadAttention` itself, whose packed in/out projections peft adapts as one layer).

`merge_lora` folds B A into W and puts the plain layers back, for export: one matmul per layer, no peft in
the exported graph.
"""

from __future__ import annotations

from typing import Any

from torch import nn

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


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA update into its base layer and put the base layer back in its place; returns the count."""
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
