"""Running a model over data: the numeric precision and memory layout a run uses, and `predict`, which
training (validation, the final test), evaluation, tuning, prediction and export share.

Precision (`train.amp`): `auto` is bf16 autocast on CUDA and on CPUs with native bf16 arithmetic
(AVX512-BF16 or AMX), float32 elsewhere; `true` / `false` force it. Layout (`train.channels_last`):
`auto` is channels_last wherever bf16 autocast runs (where it was measured to pay), NCHW elsewhere.
Evaluation runs in the precision the run trained in. Losses, metrics and statistics stay float32/float64.
$LONGTAIL_NATIVE_BF16 (1 or 0) overrides the CPU probe, so either resolution of `auto` can be tested on any CPU.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Iterable, Union

import torch
from torch import nn

from . import distributed, tte
from .config import Config
from .data import DataBundle
from .data.pipeline import eval_batches
from .distributed import Runtime
from .errors import LongtailError
from .metrics import evaluate_predictions


NATIVE_BF16_ENV = "LONGTAIL_NATIVE_BF16"


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles), read from what
    PyTorch's own CPU probe reports, not guessed from the vendor. Without it bf16 is emulated and slower.
    $LONGTAIL_NATIVE_BF16=1 or 0 answers instead of the probe."""
    forced = os.environ.get(NATIVE_BF16_ENV, "")
    if forced:
        if forced not in ("0", "1"):
            raise LongtailError(f"{NATIVE_BF16_ENV}={forced!r} is neither 1 (treat this CPU as computing bf16 natively) "
                                "nor 0 (as not); set one of them or unset it")
        return forced == "1"
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def uses_bf16(amp: Union[bool, str], device: torch.device) -> bool:
    """Resolve `train.amp` (auto | true | false) on `device`."""
    if amp == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return bool(amp)


def uses_channels_last(cfg: Config, device: torch.device) -> bool:
    """Resolve `train.channels_last` (auto | true | false) on `device`."""
    if cfg.train.channels_last == "auto":
        return device.type == "cuda" or uses_bf16(cfg.train.amp, device)
    return bool(cfg.train.channels_last)


def autocast(cfg: Config, device: torch.device):
    if uses_bf16(cfg.train.amp, device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def to_layout(x: torch.Tensor, cfg: Config, device: torch.device) -> torch.Tensor:
    """An image batch in the memory layout the model was put in (`prepare_model`)."""
    if x.dim() == 4 and uses_channels_last(cfg, device):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def prepare_model(model: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    if uses_channels_last(cfg, device):
        return model.to(memory_format=torch.channels_last)
    return model


def describe(cfg: Config, device: torch.device) -> str:
    """One line saying how this run computes, for the log."""
    precision = "bf16 autocast" if uses_bf16(cfg.train.amp, device) else "float32"
    layout = "channels_last" if uses_channels_last(cfg, device) else "NCHW"
    compiled = ", torch.compile" if cfg.train.compile else ""
    return f"{device.type}: {precision}, {layout}{compiled}"


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable, cfg: Config, runtime: Runtime) -> dict[str, torch.Tensor]:
    """Every model output but 'features' over the evaluated set, gathered from all processes, on the CPU in
    float32, rows in the set's order. Outputs stay on the device until the end: one host sync per evaluation,
    not one per batch. `batches` is this process's rank::world_size shard (as eval_batches yields)."""
    model.eval()
    outputs: dict[str, list[torch.Tensor]] = {}
    labels = []
    for x, y in batches:
        views = tte.batch_views(x)  # eval.tte: (B, K, C, H, W), the K views' logits averaged
        x = to_layout(x if views is None else x.flatten(0, 1), cfg, runtime.device)
        with autocast(cfg, runtime.device):
            out = model(x)
        if views is not None:
            out = tte.average({k: v for k, v in out.items() if k != "features"}, views)
        for key, value in out.items():
            if key == "features":  # not returned; keeping them would only cost memory
                continue
            # multi-expert outputs are (E, B, C): keep the batch axis first while gathering
            value = value.transpose(0, 1) if key == "expert_logits" else value
            outputs.setdefault(key, []).append(value.float())
        labels.append(y)
    result = {k: distributed.gather_strided(torch.cat(v)).cpu() for k, v in outputs.items()}
    if "expert_logits" in result:
        result["expert_logits"] = result["expert_logits"].transpose(0, 1).contiguous()
    result["labels"] = distributed.gather_strided(torch.cat(labels)).cpu()
    return result


def predict_split(model: nn.Module, split, bundle: DataBundle, cfg: Config, runtime: Runtime) -> dict[str, torch.Tensor]:
    """`predict` over a split, each image as the views of eval.tte (tte.py) when it is set."""
    batches = tte.eval_batches if tte.enabled(cfg) else eval_batches
    return predict(model, batches(split, bundle, cfg, runtime), cfg, runtime)


def evaluate_split(model: nn.Module, split, bundle: DataBundle, cfg: Config, runtime: Runtime) -> dict:
    out = predict_split(model, split, bundle, cfg, runtime)
    return evaluate_predictions(out["logits"].argmax(1), out["labels"], bundle.class_counts)
