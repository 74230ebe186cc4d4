"""BatchNorm over the global batch under DistributedDataParallel (`train.sync_bn`).

With plain BatchNorm each process normalises with its own B / N images, so N processes compute
something else than one process with the same global batch. torch's SyncBatchNorm fixes that on
GPUs but refuses CPU tensors (torch 2.x: "SyncBatchNorm expected input tensor to be on GPU"), so on
CPU (gloo) `GlobalBatchNorm` does the same computation with autograd-aware all-reduces:

    mean = sum_all(x) / n,  var = sum_all((x - mean)^2) / n   (biased, as BatchNorm normalises)
    y = (x - mean) / sqrt(var + eps) * weight + bias,  running_var uses var * n / (n - 1)

The sums are taken in float64 and the backward pass all-reduces the gradients of the sums, so each
process gets the gradient of the global-batch objective; DDP's gradient averaging completes it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class GlobalBatchNorm(_BatchNorm):
    """Drop-in for BatchNorm1d/2d/3d whose training statistics cover every process's batch."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (batch, channels, ...), got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xd = x.double()
        local = torch.cat([xd.sum(dims), xd.new_tensor([x.numel() / x.shape[1]])])
        total = dist_nn.all_reduce(local)
        count = total[-1].detach()
        mean = total[:-1] / count
        centered = xd - mean.view(shape)
        var = dist_nn.all_reduce((centered * centered).sum(dims)) / count
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), float(count))
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * count / max(count - 1.0, 1.0)
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def _to_global(module: _BatchNorm) -> GlobalBatchNorm:
    new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
    if module.affine:
        new.weight, new.bias = module.weight, module.bias  # the same Parameter objects
    if module.track_running_stats:
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
    new.train(module.training)
    return new


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `module` made global-batch: torch's SyncBatchNorm on CUDA, GlobalBatchNorm elsewhere.
    Parameter and buffer names are unchanged, so checkpoints load into the unconverted model."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, (GlobalBatchNorm, nn.SyncBatchNorm)):
        return _to_global(module)
    for name, child in module.named_children():
        new = convert_sync_batchnorm(child, device)
        if new is not child:
            setattr(module, name, new)
    return module
