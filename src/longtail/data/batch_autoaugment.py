"""AutoAugment (Cubuk et al., CVPR 2019; CIFAR-10 policy) on a uint8 batch, per-image semantics kept.

Every image draws its own sub-policy (uniform over the 25); each of the sub-policy's two operations is
applied with its own probability (u <= p, u ~ U[0, 1)), and a signed magnitude is negated with probability
1/2. These are the draws of torchvision's `v2.AutoAugment`; the policy table and the magnitude bins are read
from torchvision itself, so this batched version and the loader pipeline cannot drift apart.

Batched by grouping: an image's operation in slot s is one "variant" (operation, signed magnitude); all images
of a batch that drew the same variant in slot 0 go through one torchvision functional call, then the same for
slot 1, so each image still sees its two operations in order. The draws live on the CPU (they are tiny), so
the grouping costs no device-to-host synchronisation.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

NEAREST = v2.InterpolationMode.NEAREST  # v2.AutoAugment's default interpolation
NUM_BINS = 10  # v2.AutoAugment.forward uses 10 magnitude bins

# Operation name -> f(uint8 batch, magnitude): the same functional calls and arguments v2.AutoAugment makes.
OPS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "ShearX": lambda x, m: F.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(math.atan(m)), 0.0],
                                    interpolation=NEAREST, fill=None, center=[0, 0]),
    "ShearY": lambda x, m: F.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, math.degrees(math.atan(m))],
                                    interpolation=NEAREST, fill=None, center=[0, 0]),
    "TranslateX": lambda x, m: F.affine(x, angle=0.0, translate=[int(m), 0], scale=1.0, shear=[0.0, 0.0],
                                        interpolation=NEAREST, fill=None),
    "TranslateY": lambda x, m: F.affine(x, angle=0.0, translate=[0, int(m)], scale=1.0, shear=[0.0, 0.0],
                                        interpolation=NEAREST, fill=None),
    "Rotate": lambda x, m: F.rotate(x, angle=m, interpolation=NEAREST, fill=None),
    "Brightness": lambda x, m: F.adjust_brightness(x, brightness_factor=1.0 + m),
    "Color": lambda x, m: F.adjust_saturation(x, saturation_factor=1.0 + m),
    "Contrast": lambda x, m: F.adjust_contrast(x, contrast_factor=1.0 + m),
    "Sharpness": lambda x, m: F.adjust_sharpness(x, sharpness_factor=1.0 + m),
    "Posterize": lambda x, m: F.posterize(x, bits=int(m)),
    "Solarize": lambda x, m: F.solarize(x, threshold=255.0 * m),  # the bound of uint8 times the magnitude
    "AutoContrast": lambda x, m: F.autocontrast(x),
    "Equalize": lambda x, m: F.equalize(x),
    "Invert": lambda x, m: F.invert(x),
}


def torchvision_policy(policy: v2.AutoAugmentPolicy) -> tuple[list, dict]:
    """(sub-policies, augmentation space) exactly as torchvision's v2.AutoAugment holds them."""
    reference = v2.AutoAugment(policy)
    try:
        return reference._policies, reference._AUGMENTATION_SPACE
    except AttributeError:  # a torchvision that reorganised its private tables
        raise RuntimeError("this torchvision's v2.AutoAugment has no _policies/_AUGMENTATION_SPACE; "
                           "longtail's batched AutoAugment needs them (torchvision 0.19-0.29 have them)") from None


class BatchAutoAugment:
    """Draw per-image AutoAugment decisions, and apply them to a uint8 (N, C, H, W) batch."""

    def __init__(self, height: int, width: int, policy: v2.AutoAugmentPolicy = v2.AutoAugmentPolicy.CIFAR10):
        subpolicies, space = torchvision_policy(policy)
        self.variants: list[tuple[str, float]] = []  # (operation, signed magnitude)
        index: dict[tuple[str, float], int] = {}

        def variant(name: str, magnitude: float) -> int:
            if (name, magnitude) not in index:
                index[(name, magnitude)] = len(self.variants)
                self.variants.append((name, magnitude))
            return index[(name, magnitude)]

        k = len(subpolicies)
        self.prob = torch.zeros(k, 2, dtype=torch.float64)
        self.plus = torch.zeros(k, 2, dtype=torch.long)  # variant id with the positive magnitude
        self.minus = torch.zeros(k, 2, dtype=torch.long)  # ... negated (the same id for unsigned operations)
        for i, ops in enumerate(subpolicies):
            for slot, (name, probability, bin_index) in enumerate(ops):
                bins, signed = space[name]
                values = bins(NUM_BINS, height, width)
                magnitude = float(values[bin_index]) if values is not None else 0.0
                self.prob[i, slot] = probability
                self.plus[i, slot] = variant(name, magnitude)
                self.minus[i, slot] = variant(name, -magnitude) if signed else self.plus[i, slot]

    @property
    def num_subpolicies(self) -> int:
        return len(self.prob)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Per-image variant ids, (n, 2) int64 on the CPU; -1 where the operation is not applied."""
        return self.draw_with_subpolicies(n, generator)[1]

    def draw_with_subpolicies(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(the sub-policy index each image drew, (n,); its variant ids, as `draw` returns them)."""
        policy = torch.randint(self.num_subpolicies, (n,), generator=generator)
        # float64 uniforms so u <= p compares against the policy's probabilities exactly as written
        applied = torch.rand(n, 2, generator=generator, dtype=torch.float64) <= self.prob[policy]
        negated = torch.rand(n, 2, generator=generator) <= 0.5
        chosen = torch.where(negated, self.minus[policy], self.plus[policy])
        return policy, torch.where(applied, chosen, torch.full_like(chosen, -1))

    def __call__(self, x: torch.Tensor, variants: torch.Tensor) -> torch.Tensor:
        """Each image of `x` (uint8, on any device) with its drawn operations applied, as a new tensor.

        For each slot the images are gathered in the order of their variant ids, so every group is a
        contiguous slice that one functional call transforms; one gather per slot and one at the end
        restore the original order. The permutations are computed on the CPU."""
        variants = variants.cpu()
        n = len(variants)
        plans, perms = [], []
        where = torch.arange(n)  # where[p]: the position of image p in the current (permuted) order
        for slot in range(variants.shape[1]):
            ids = variants[:, slot]
            order = torch.argsort(ids, stable=True)
            counts = torch.bincount(ids + 1, minlength=len(self.variants) + 1).tolist()
            spans, start = [], counts[0]  # images skipping this slot (-1) sort first and are left alone
            for v, count in enumerate(counts[1:]):
                if count:
                    spans.append((v, start, start + count))
                    start += count
            if spans:
                perms.append(where[order])  # gather from the current order into this slot's order
                plans.append(spans)
                where = torch.argsort(order)
        if not plans:
            return x
        perms.append(where)  # back to the original order
        perms = to_device(torch.cat(perms), x.device).view(len(perms), n)
        for perm, spans in zip(perms, plans):
            x = x[perm]
            for v, start, stop in spans:
                name, magnitude = self.variants[v]
                x[start:stop] = OPS[name](x[start:stop], magnitude)
        return x[perms[-1]]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """CPU tensor -> device without a host synchronisation (pinned staging on CUDA)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
