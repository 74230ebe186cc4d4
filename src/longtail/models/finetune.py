"""Which parameters of a pretrained model train (`model.finetune`), and what its checkpoints store.

    full     every parameter
    linear   the classifier only (linear probe; the same as model.freeze_backbone)
    bias     every bias and the classifier (BitFit, Ben Zaken et al. 2022)
    block_bias  the biases inside the transformer blocks and the classifier (LIFT's `bias_tuning`: not the patch
             embedding's, nor the LayerNorms before and after the blocks)
    lora     LoRA updates of the attention and MLP projections (lora.py, through peft) and the classifier
    lora_qv  LIFT's LoRA: low-rank updates of the queries and values only (lora.py, no peft) and the classifier
    adapter  an AdaptFormer beside each MLP block (adapter.py) and the classifier
    zero_shot  nothing (clip/ models): CLIP's own classifier, the text embeddings of model.prompt at CLIP's
             temperature (clip_models.py); evaluated from the config itself (zeroshot.py), never trained

lora and adapter change the network when it is built (`add_finetune_layers`, called by create_model), so a
checkpoint's tensors find their places when the model is rebuilt. `freeze` then turns off the gradients of
everything else once, before the optimizer is built: frozen parameters get no gradient and no optimizer
state, and modules with no trained parameter stay in eval mode (freeze.py).

A run that starts from pretrained weights (model.pretrained) and trains part of them (model.finetune) stores in its
checkpoints only the trained tensors and every buffer, plus the base weights' identity (`base_identity`:
model name, weights spec, sha256 of a weights file), not a second copy of the backbone; the base is read
again from model.pretrained when the run is resumed, evaluated or exported (`check_base`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from torch import nn

from .. import catalog
from ..catalog import register_finetune
from ..config import ModelConfig
from ..errors import LongtailError
from .adapter import add_adapters, adapter_blocks, lift_adapter_dim
from .freeze import mark_frozen
from .lora import add_lora, add_qv_lora

HEAD = "classifier."


@dataclass(frozen=True)
class Finetune:
    add_layers: Optional[Callable[[nn.Module, ModelConfig, int], None]]  # new trained layers, when built
    trains: Callable[[str], bool]  # whether a backbone parameter (by name) trains; the classifier always does


def _lora(model: nn.Module, cfg: ModelConfig, num_classes: int) -> None:
    add_lora(model, cfg.lora_rank, cfg.name)


def _lora_qv(model: nn.Module, cfg: ModelConfig, num_classes: int) -> None:
    add_qv_lora(model, cfg.lora_rank, cfg.name)


def _adapter(model: nn.Module, cfg: ModelConfig, num_classes: int) -> None:
    blocks = len(adapter_blocks(model))
    if blocks == 0:
        raise LongtailError(
            f"model.finetune=adapter found no transformer blocks (a LayerNorm and an MLP: timm's norm2/mlp or "
            f"open_clip's ln_2/mlp) in '{cfg.name}'; use a ViT (timm/vit_..., clip/ViT-...) or model.finetune=bias or linear"
        )
    add_adapters(model, cfg.adapter_dim or lift_adapter_dim(num_classes, blocks))


BLOCK_LISTS = (".resblocks.", ".blocks.")  # open_clip's and timm's transformer blocks


def _in_block_bias(name: str) -> bool:
    return name.endswith("bias") and any(part in "." + name for part in BLOCK_LISTS)


def _block_bias(model: nn.Module, cfg: ModelConfig, num_classes: int) -> None:
    if not any(_in_block_bias(name) for name, _ in model.named_parameters()):
        raise LongtailError(f"model.finetune=block_bias found no transformer blocks (open_clip's resblocks, timm's blocks) "
                            f"in '{cfg.name}'; use model.finetune=bias (every bias)")


def _zero_shot(model: nn.Module, cfg: ModelConfig, num_classes: int) -> None:
    if getattr(model, "text_tower", None) is None:
        raise LongtailError(f"model.finetune=zero_shot classifies with CLIP's text embeddings and needs a clip/... model, "
                            f"not '{cfg.name}'; use model.name=clip/ViT-B-16 or another model.finetune")


# each mode registered under its model.finetune name
register_finetune("full")(Finetune(None, lambda name: True))
register_finetune("linear")(Finetune(None, lambda name: False))
register_finetune("bias")(Finetune(None, lambda name: name.endswith("bias")))  # also nn.MultiheadAttention's in_proj_bias
register_finetune("block_bias")(Finetune(_block_bias, _in_block_bias))
register_finetune("lora")(Finetune(_lora, lambda name: ".lora_" in name))
register_finetune("lora_qv")(Finetune(_lora_qv, lambda name: ".lora_" in name))
register_finetune("adapter")(Finetune(_adapter, lambda name: ".adapter." in name))
register_finetune("zero_shot")(Finetune(_zero_shot, lambda name: False))  # its checkpoint keeps the text rows of the head


def mode(cfg: ModelConfig) -> str:
    return "linear" if cfg.freeze_backbone else cfg.finetune


def _record(cfg: ModelConfig) -> Finetune:
    return catalog.get("finetune", mode(cfg)).obj


def add_finetune_layers(model: nn.Module, cfg: ModelConfig, num_classes: int) -> nn.Module:
    add = _record(cfg).add_layers
    if add is not None:
        add(model, cfg, num_classes)
    return model


def is_trained(name: str, cfg: ModelConfig) -> bool:
    return name.startswith(HEAD) or _record(cfg).trains(name)


def freeze(model: nn.Module, cfg: ModelConfig) -> tuple[int, int]:
    """Turn off the gradients of the parameters `model.finetune` keeps; returns (trained, total) counts."""
    if mode(cfg) == "zero_shot":
        raise LongtailError("model.finetune=zero_shot trains nothing; evaluate the config itself: "
                            "longtail evaluate CONFIG.yaml model.finetune=zero_shot")
    if mode(cfg) == "full":
        counts = [(p.numel(), p.requires_grad) for p in model.parameters()]
        return sum(n for n, g in counts if g), sum(n for n, _ in counts)
    if not isinstance(getattr(model, "classifier", None), nn.Module):
        raise LongtailError(f"model.finetune={mode(cfg)} needs a model with a single head `classifier`; {type(model).__name__} has none")
    trained = total = 0
    for name, p in model.named_parameters():
        p.requires_grad_(is_trained(name, cfg))
        trained += p.numel() if p.requires_grad else 0
        total += p.numel()
    mark_frozen(model)
    return trained, total


def describe(trained: int, total: int, cfg: ModelConfig) -> str:
    """The start line: how many parameters train, and their share."""
    return f"training {trained:,} of {total:,} parameters ({100 * trained / max(total, 1):.2f}%, model.finetune={mode(cfg)})"


# ----------------------------------------------------------------------------- checkpoints


def stores_trained_only(cfg: ModelConfig) -> bool:
    """True when checkpoints hold only the trained tensors (and buffers), the base coming from model.pretrained.
    model.freeze_backbone (decoupled classifier re-training, whose stage-1 file is a run of the user's) keeps
    self-contained checkpoints, as before model.finetune existed."""
    return cfg.finetune != "full" and cfg.pretrained is not None


def model_state(model: nn.Module, cfg: ModelConfig) -> dict[str, Any]:
    """What a checkpoint stores under 'model'."""
    state = model.state_dict()
    if not stores_trained_only(cfg):
        return state
    buffers = {name for name, _ in model.named_buffers()}
    return {k: v for k, v in state.items() if k in buffers or is_trained(k, cfg)}


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime) in a process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def base_identity(cfg: ModelConfig) -> Optional[dict[str, Any]]:
    """{'name', 'pretrained', 'sha256'} of the base weights, for a checkpoint of trained tensors only (else None);
    sha256 is None for weights named by a tag (hub, openai) rather than a file."""
    if not stores_trained_only(cfg):
        return None
    assert cfg.pretrained is not None
    path = Path(cfg.pretrained).expanduser()
    return {"name": cfg.name, "pretrained": cfg.pretrained, "sha256": file_sha256(path) if path.is_file() else None}


def check_base(cfg: ModelConfig, base: dict[str, Any], source: str | Path) -> None:
    """Fail in one line when the base weights a checkpoint was trained from are missing or are other weights."""
    spec = cfg.pretrained
    if not isinstance(base, dict):
        raise LongtailError(f"checkpoint '{source}' has a 'base' entry that is not a dict; it is damaged")
    if base.get("sha256") is None:
        return
    how = ("put the file back, or pass model.pretrained=PATH of the same file; the checkpoint holds only the trained "
           "tensors (model.finetune), not the backbone")
    if spec is None or not Path(spec).expanduser().is_file():
        raise LongtailError(f"the base weights '{base.get('pretrained')}' of checkpoint '{source}' are missing "
                            f"(model {base.get('name')}, sha256 {str(base['sha256'])[:12]}...): {how}")
    if file_sha256(Path(spec).expanduser()) != base["sha256"]:
        raise LongtailError(f"model.pretrained '{spec}' is not the file checkpoint '{source}' was trained from "
                            f"(sha256 {str(base['sha256'])[:12]}...): {how}")


def load_model_state(model: nn.Module, state: dict[str, Any], trained_only: bool, source: str | Path) -> None:
    """Load a checkpoint's 'model' entry: every tensor of the model, or (trained_only) the trained tensors on
    top of the base weights the model was built with."""
    target = model.state_dict()
    missing = [k for k in target if k not in state] if not trained_only else []
    unexpected = [k for k in state if k not in target]
    reshaped = [k for k in state if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or reshaped:
        first = (missing or unexpected or reshaped)[0]
        raise LongtailError(
            f"the model weights in '{source}' do not fit this model ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(reshaped)} of another shape, e.g. {first}); the checkpoint was saved with a different model, "
            "model.finetune or class count"
        )
    model.load_state_dict({**target, **state})
