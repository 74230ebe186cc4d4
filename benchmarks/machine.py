"""What a benchmark ran on, for the records the benchmark scripts write."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine_line(device: torch.device) -> str:
    """The GPU and CUDA version, or the CPU model, its logical cores and torch's thread count."""
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    model = platform.processor() or platform.machine() or "unknown CPU"
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), model)
    except OSError:  # no /proc (macOS, Windows)
        pass
    return (f"CPU {model}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads, "
            f"{cpu_capability()}")


def cpu_capability() -> str:
    """The vector extension PyTorch's kernels use here, and whether bf16 runs in hardware (what train.amp=auto reads)."""
    from longtail.inference import cpu_has_native_bf16

    native = "native bf16 (AVX512-BF16/AMX): yes" if cpu_has_native_bf16() else "native bf16: no"
    return f"PyTorch CPU capability {torch.backends.cpu.get_cpu_capability()}, {native}"
