"""Process-group plumbing for torchrun and multi-task Slurm jobs (same env:// variables): who am I, and the
few collectives the engine needs. Without that environment everything degrades to a single process."""

from __future__ import annotations

import datetime
import os
import traceback
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from .errors import LongtailError


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise LongtailError("device 'cuda' asked for but no CUDA GPU is visible; use device=auto or device=cpu")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


TIMEOUT_ENV = "LONGTAIL_COLLECTIVE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600


def collective_timeout() -> datetime.timedelta:
    """How long a collective (all-reduce, gather, barrier) waits for the other processes before it fails:
    LONGTAIL_COLLECTIVE_TIMEOUT_S seconds, 600 by default. A process that died or hangs thus stops the others
    within that time instead of leaving them waiting (gloo notices a killed peer at once; NCCL may need it all)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return datetime.timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise LongtailError(f"{TIMEOUT_ENV}='{text}' is not a number of seconds above 0; unset it (default {DEFAULT_TIMEOUT_S}) or set e.g. 600")
    return datetime.timedelta(seconds=seconds)


def peer_failure(exc: BaseException) -> Optional[str]:
    """The one line to print when a collective failed because another process died or stopped answering, or
    None when `exc` is something else (or this process was launched alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))  # the group itself may be torn down by the time this is asked
    if world < 2 or not isinstance(exc, RuntimeError) or not _from_collective(exc):
        return None
    seconds = int(collective_timeout().total_seconds())
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"process {os.environ.get('RANK', '0')} of {world}: a collective failed, so another process of this run died "
            f"or did not answer within {seconds} s ({TIMEOUT_ENV}): {first[:160]}; see the other processes' logs, then resume with --resume")


def _from_collective(exc: BaseException) -> bool:
    """Raised by torch.distributed or DDP: NCCL and c10d raise DistError subclasses; gloo raises plain
    RuntimeErrors ("Connection reset by peer", "Timed out waiting 30000ms for recv", "Application timeout caused
    pair closure"), recognisable only by where they come from, the innermost Python frame."""
    if isinstance(exc, dist.DistError):
        return True
    frames = traceback.extract_tb(exc.__traceback__)
    where = frames[-1].filename.replace(os.sep, "/") if frames else ""
    return "torch/distributed/" in where or "torch/nn/parallel/" in where


def setup(device_name: str) -> Runtime:
    """Join the process group when launched by torchrun or a multi-task Slurm job (WORLD_SIZE > 1), else run
    alone. Collectives fail after collective_timeout() rather than wait forever for a dead process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=collective_timeout())
    return Runtime(device, rank, world_size, local_rank)


def launched_as_main() -> bool:
    """Rank 0 of a torchrun launch, or a process launched alone: the one that prints and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In place, summed over processes; a no-op alone."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def _gather_parts(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every process's rows (lengths may differ), as a list in rank order."""
    n = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return [p[: int(s.item())] for p, s in zip(parts, sizes)]


def gather_strided(tensor: torch.Tensor) -> torch.Tensor:
    """Undo a strided sharding: process r holds rows r, r + W, r + 2W, ... of a set (W processes, so
    shard lengths differ by at most one); returns all rows in the set's order on every process."""
    if not is_initialized():
        return tensor
    parts = _gather_parts(tensor)
    world, total = len(parts), sum(len(p) for p in parts)
    out = tensor.new_empty((total, *tensor.shape[1:]))
    for rank, part in enumerate(parts):
        if len(part) != len(range(rank, total, world)):
            raise RuntimeError(f"process {rank} holds {len(part)} of {total} rows, not a rank::world_size shard")
        out[rank::world] = part
    return out


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()
