"""The fast path on every device: how train.amp / train.channels_last resolve (with the CPU probe mocked),
that evaluation runs in the training precision, and that channels_last and torch.compile train on the CPU."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import TINY_FMNIST, needs_fmnist
from longtail import inference
from longtail.config import load_config
from longtail.distributed import Runtime

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize("native", [True, False])
def test_amp_resolution_follows_the_cpu_probe(monkeypatch, native):
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: native)
    assert inference.uses_bf16("auto", CPU) is native
    assert inference.uses_bf16("auto", CUDA) is True  # every CUDA GPU longtail targets computes bf16
    for device in (CPU, CUDA):
        assert inference.uses_bf16(True, device) is True and inference.uses_bf16(False, device) is False
    auto = load_config(overrides=[])
    assert inference.uses_channels_last(auto, CPU) is native and inference.uses_channels_last(auto, CUDA) is True
    forced = load_config(overrides=["train.amp=false", "train.channels_last=true"])
    assert inference.uses_channels_last(forced, CPU) is True
    assert inference.describe(auto, CPU) == ("cpu: bf16 autocast, channels_last" if native else "cpu: float32, NCHW")


@pytest.mark.parametrize("avx512_bf16,amx,expected", [(False, False, False), (True, False, True), (False, True, True)])
def test_the_probe_reads_torch_cpu_capabilities(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert inference.cpu_has_native_bf16() is expected


def test_a_torch_without_the_probes_means_no_native_bf16(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert inference.cpu_has_native_bf16() is False


@pytest.mark.parametrize("amp", [True, False])
def test_evaluation_runs_in_the_training_precision(amp):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)).eval()
    wrapped = _DictOutput(model)
    x, y = torch.randn(4, 1, 8, 8), torch.arange(4)
    cfg = load_config(overrides=[f"train.amp={str(amp).lower()}", "train.channels_last=false"])
    out = inference.predict(wrapped, [(x, y)], cfg, Runtime(CPU))["logits"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        expected = model(x).float()
    with torch.no_grad():
        fp32 = model(x)
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    assert torch.equal(out, fp32) is (not amp)  # bf16 rounding shows in the logits, so the check can tell


class _DictOutput(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.inner(x)}


def test_channels_last_puts_model_and_batches_in_that_layout():
    cfg = load_config(overrides=["train.channels_last=true", "train.amp=false"])
    model = inference.prepare_model(nn.Conv2d(3, 4, 3), cfg, CPU)
    assert model.weight.is_contiguous(memory_format=torch.channels_last) and not model.weight.is_contiguous()
    x = inference.to_layout(torch.randn(2, 3, 5, 5), cfg, CPU)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    off = load_config(overrides=["train.channels_last=false", "train.amp=false"])
    assert inference.to_layout(torch.randn(2, 3, 5, 5), off, CPU).is_contiguous()


def _train(cli, out, *extra):
    proc = cli("train", "configs/fmnist_lt/ce_imba100.yaml", *TINY_FMNIST, "train.epochs=2", "device=cpu", *extra,
               "--out", str(out))
    rows = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
    return proc, [row["train_loss"] for row in rows]


@pytest.fixture(scope="module")
def fp32_nchw_losses(tmp_path_factory):
    from conftest import run_cli

    return _train(run_cli, tmp_path_factory.mktemp("fp32") / "run", "train.amp=false", "train.channels_last=false")[1]


@needs_fmnist
@pytest.mark.parametrize("extra,rel", [(["train.channels_last=true", "train.amp=false"], 1e-3),
                                       (["train.channels_last=true", "train.amp=true"], 5e-2),
                                       (["train.compile=true", "train.channels_last=true", "train.amp=false"], 1e-2)],
                         ids=["channels_last_fp32", "channels_last_bf16", "compile_fp32"])
def test_fast_paths_train_like_the_float32_nchw_path(cli, tmp_path, fp32_nchw_losses, extra, rel):
    """The same 2-epoch training on each path: the per-epoch training losses agree with plain float32 NCHW
    up to the path's rounding (bf16 keeps 8 bits of mantissa), and a compiled run saves plain weights."""
    proc, losses = _train(cli, tmp_path / "run", *extra)
    assert "computing on cpu:" in proc.stdout
    assert ("torch.compile" in proc.stdout) is ("train.compile=true" in extra)
    assert losses == pytest.approx(fp32_nchw_losses, rel=rel)
    assert losses[1] < losses[0]
    from longtail.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    assert not any(key.startswith("_orig_mod.") for key in state)
