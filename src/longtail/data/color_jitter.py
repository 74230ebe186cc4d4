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


def greyscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of (N, 3, H, W) RGB, three in-place passes over one plane (a 1x1 convolution or a
    weighted sum over the channel dimension is 5-50x slower on a CPU)."""
    grey = x[:, 0:1] * LUMA[0]
    return grey.add_(x[:, 1:2], alpha=LUMA[1]).add_(x[:, 2:3], alpha=LUMA[2])


def color_jitter(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Jitter float RGB images (N, 3, H, W) in [0, 1] with per-image `params` (N, 6) from `jitter_params`,
    in place. Per slot: the blend target t = a * grey + b * mean(grey) with per-image a, b in {0, 1}
    (brightness: both 0), then x = f * x + (1 - f) * t, clamped; three full-size passes per slot."""
    n = x.shape[0]
    params = params.to(device=x.device, dtype=x.dtype)
    factors, order = params[:, :3], params[:, 3:].round().long()
    for slot in range(3):
        op = order[:, slot]
        f = factors.gather(1, op[:, None]).view(n, 1, 1, 1)
        grey = greyscale(x)
        mean = grey.mean(dim=(-2, -1), keepdim=True)
        use_grey = (op == SATURATION).to(x.dtype).view(n, 1, 1, 1)
        use_mean = (op == CONTRAST).to(x.dtype).view(n, 1, 1, 1)
        target = grey.mul_(use_grey * (1 - f)).add_(use_mean * (1 - f) * mean)  # (1 - f) * t, one plane
        x = x.mul_(f).add_(target).clamp_(0, 1)
    return x
