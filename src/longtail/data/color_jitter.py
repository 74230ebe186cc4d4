"""torchvision's ColorJitter(brightness=s, contrast=s, saturation=s) on a whole float batch at once.

Per image, as v2.ColorJitter draws it: three factors uniform in [max(0, 1 - s), 1 + s] and the three
operations in a uniformly random order (torchvision permutes four, hue included; with hue off the other
three keep a uniform order). Each operation blends the image with a target and clamps to [0, 1]:

  brightness   f * x                      (target black)
  contrast     f * x + (1 - f) * mean      (mean of the image's greyscale, one value per image)
  saturation   f * x + (1 - f) * grey      (greyscale, ITU-R 601-2 luma, per pixel)

The batch goes through three slots; in slot k each image applies the operation its order puts there, by
choosing its blend target per image, so a batch of any size costs three blends and no Python loop over
images. The parameters are drawn on the host from the image's own uniforms (`jitter_params`), so they
follow from (seed, epoch, position) like the crop and the flip.
"""

from __future__ import annotations

from typing import Sequence

import torch

JITTER_DRAWS = 6  # uniforms one image's jitter consumes: three factors, three order keys
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2
LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def jitter_params(uniforms: Sequence[float], strength: float) -> list[float]:
    """[brightness, contrast, saturation factors, then the operation in slots 0, 1, 2] from JITTER_DRAWS
    uniforms in [0, 1). The order is the ranking of three uniforms: every permutation has chance 1/6."""
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    factors = [low + (high - low) * u for u in uniforms[:3]]
    keys = list(uniforms[3:6])
    order = sorted(range(3), key=keys.__getitem__)
    return factors + [float(op) for op in order]


def _grey(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=-3)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(-3)


def color_jitter(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Jitter float RGB images (N, 3, H, W) in [0, 1] with per-image `params` (N, 6) from `jitter_params`."""
    n = x.shape[0]
    params = params.to(device=x.device, dtype=x.dtype)
    factors, order = params[:, :3], params[:, 3:].round().long()
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    for slot in range(3):
        op = order[:, slot]
        f = factors.gather(1, op[:, None]).view(n, 1, 1, 1)
        grey = _grey(x)
        mean = grey.mean(dim=(-3, -2, -1), keepdim=True)
        target = torch.where((op == BRIGHTNESS).view(n, 1, 1, 1), zero,
                             torch.where((op == CONTRAST).view(n, 1, 1, 1), mean, grey))
        x = (f * x + (1 - f) * target).clamp_(0, 1)
    return x
