"""The fast path on every device: how train.amp / train.channels_last resolve (with the CPU probe mocked),
that evaluation runs in the training precision, and that channels_last and torch.compile train on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import FMNIST_CONFIG, TINY_FMNIST, epoch_rows, fit_here, make_small_fmnist
from longtail import inference
from longtail.config import load_config
from longtail.distributed import Runtime
from longtail.errors import LongtailError

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
    monkeypatch.delenv(inference.NATIVE_BF16_ENV, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert inference.cpu_has_native_bf16() is expected


def test_a_torch_without_the_probes_means_no_native_bf16(monkeypatch):
    monkeypatch.delenv(inference.NATIVE_BF16_ENV, raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert inference.cpu_has_native_bf16() is False


@pytest.mark.parametrize("probe", [True, False])
def test_the_environment_answers_instead_of_the_probe(monkeypatch, probe):
    """$LONGTAIL_NATIVE_BF16 lets a whole test run take either resolution of train.amp: auto on any CPU."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: probe, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: probe, raising=False)
    for value, native in (("1", True), ("0", False)):
        monkeypatch.setenv(inference.NATIVE_BF16_ENV, value)
        assert inference.cpu_has_native_bf16() is native and inference.uses_bf16("auto", CPU) is native
    monkeypatch.setenv(inference.NATIVE_BF16_ENV, "yes")
    with pytest.raises(LongtailError, match="LONGTAIL_NATIVE_BF16='yes' is neither 1 .* nor 0"):
        inference.cpu_has_native_bf16()


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


# Two trainings that differ only in rounding (memory format, bf16, compiled kernels) drift apart chaotically with
# the number of steps and the learning rate: over 2 epochs of the recipe (lr 0.1 with momentum 0.9, warm-up, cosine)
# channels_last float32 moved the mean loss by 1.2e-3 relative on an AMD EPYC and less on an Intel CPU, and at a
# constant lr 0.02 still by 4e-5. At a constant lr 0.005 over 16 steps (2 epochs of 242 images in batches of 32) the
# drift stays at rounding level, and the loss still falls by a fifth from epoch 1 to 2. Measured there (AMD EPYC, no
# AMX): float32 paths 2e-6 relative, bf16 1.3e-4. The tolerances: 1e-4 for float32 (50 times that), and for bf16
# 2e-3, one rounding of bf16's 8-bit mantissa (2**-9). data.drop_last keeps the 7 full batches of each epoch (14
# steps, fewer than those 16, so no more drift): torch.compile then sees one batch shape and compiles one graph
# instead of a second, dynamic-shape one for the short last batch (about half of the compiled case's time).
SHORT = ["train.epochs=2", "train.lr=0.005", "train.schedule=constant", "train.warmup_epochs=0", "device=cpu",
         "data.drop_last=true"]
REL_FP32, REL_BF16 = 1e-4, 2e-3
FP32_NCHW = ["train.amp=false", "train.channels_last=false"]
BF16_CHANNELS_LAST = ["train.amp=true", "train.channels_last=true"]


@pytest.fixture(scope="module")
def small_fmnist(tmp_path_factory) -> list[str]:
    """TINY_FMNIST on 120 training and 30 test images per class: the final tests take no time."""
    root = make_small_fmnist(tmp_path_factory.mktemp("fmnist"), train_per_class=120, test_per_class=30)
    return [*TINY_FMNIST, f"dataset.root={root}", "dataset.download=false"]


def _train(data: list[str], out: Path, *extra: str) -> list[float]:
    fit_here(FMNIST_CONFIG, [*data, *SHORT, *extra], out)
    return [row["train_loss"] for row in epoch_rows(out)]


@pytest.fixture(scope="module")
def fp32_nchw_losses(small_fmnist, tmp_path_factory) -> list[float]:
    return _train(small_fmnist, tmp_path_factory.mktemp("fp32") / "run", *FP32_NCHW)


@pytest.fixture(scope="module")
def bf16_losses(small_fmnist, tmp_path_factory) -> list[float]:
    return _train(small_fmnist, tmp_path_factory.mktemp("bf16") / "run", *BF16_CHANNELS_LAST)


@pytest.mark.parametrize("native", [True, False], ids=["native_bf16", "no_native_bf16"])
def test_amp_auto_trains_on_the_path_the_probe_picks(monkeypatch, capsys, small_fmnist, tmp_path, native,
                                                     fp32_nchw_losses, bf16_losses):
    """train.amp and train.channels_last left at auto: with the probe mocked each way, the run says which path
    it took and trains bit for bit like that path forced explicitly (the same code twice on this machine), so a
    CPU without native bf16 still tests the bf16 plumbing and one with it still tests float32."""
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: native)
    capsys.readouterr()
    losses = _train(small_fmnist, tmp_path / "run", "train.amp=auto", "train.channels_last=auto")
    shown = capsys.readouterr().out
    assert ("computing on cpu: bf16 autocast, channels_last" if native else "computing on cpu: float32, NCHW") in shown
    assert losses == (bf16_losses if native else fp32_nchw_losses)
    assert bf16_losses != fp32_nchw_losses  # the two paths are told apart by their losses


@pytest.mark.parametrize("extra,rel", [(["train.channels_last=true", "train.amp=false"], REL_FP32),
                                       (["train.compile=true", "train.channels_last=true", "train.amp=false"], REL_FP32),
                                       (BF16_CHANNELS_LAST, REL_BF16)],
                         ids=["channels_last_fp32", "compile_fp32", "channels_last_bf16"])
def test_fast_paths_train_like_the_float32_nchw_path(capsys, monkeypatch, small_fmnist, tmp_path, fp32_nchw_losses,
                                                    extra, rel):
    """The same short training on each path: the per-epoch training losses agree with plain float32 NCHW up to
    the path's rounding, and a compiled run saves plain weights. compile_fp32 takes over 30 s (inductor compiles
    the training graph to C++): the only test that a torch.compile'd model trains and saves like the plain one."""
    if "train.compile=true" in extra:  # inductor's C++ compiles in this process: no pool of compile workers to start
        import torch._inductor.config

        monkeypatch.setattr(torch._inductor.config, "compile_threads", 1)
    capsys.readouterr()
    losses = _train(small_fmnist, tmp_path / "run", *extra)
    assert ("torch.compile" in capsys.readouterr().out) is ("train.compile=true" in extra)
    assert losses == pytest.approx(fp32_nchw_losses, rel=rel)
    assert losses[1] < losses[0]
    from longtail.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    assert not any(key.startswith("_orig_mod.") for key in state)
