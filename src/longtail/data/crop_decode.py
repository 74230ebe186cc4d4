"""Decode only what the model sees: a crop box drawn from the image's header, then one resize of that box.

The list datasets' training crop is torchvision's RandomResizedCrop (area fraction uniform in `scale`,
aspect ratio log-uniform in `ratio`, up to ten tries, else a centre crop of the clamped ratio) and their
evaluation is the input spec's Resize(R) + CenterCrop(S) (input_spec.InputSpec.eval_box: R = floor(S / crop_pct),
or round(S * 256 / 224)). Both end as one box of the original image
resized to S x S, so here the box comes first, from the image size in the file's header:

1. the JPEG decoder is asked for a reduced image (libjpeg's DCT scaling by 1/2, 1/4 or 1/8, Pillow's
   `draft`) as long as the box still spans at least S x S pixels in it (`reduction`): a 500 x 375 photo
   whose box is 300 x 260 pixels, resized to S = 112, decodes at half size;
2. the box (in the reduced image's pixels) is resized to S x S in one antialiased bilinear resize on the
   uint8 pixels (torch's kernel, the one the former pipeline's RandomResizedCrop ran).

With the optional `simplejpeg` package (`pip install longtail[jpeg]`), JPEG files are decoded by that
libjpeg-turbo binding instead (the same reductions, without Pillow's file and image objects); files it
refuses (CMYK, damaged) go to Pillow.

A box is (left, top, width, height) in original pixels, floats: the evaluation box of a resized image has
fractional edges. It is rounded to whole pixels of the decoded image (at most half a pixel, i.e. half the
reduction factor in original pixels).
"""

from __future__ import annotations

import io
import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as nnf
from PIL import Image

from ..input_spec import Box

try:  # the optional libjpeg-turbo binding (extra `jpeg`); Pillow decodes everything without it
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    simplejpeg = None

BoxRule = Callable[[int, int], Box]  # (width, height) from the header -> the box to keep
DCT_FACTORS = (8, 4, 2, 1)  # JPEG reductions (1/8, 1/4, 1/2, none) that cost less than a full decode
CROP_TRIES = 10  # torchvision's RandomResizedCrop tries this many boxes before its centre-crop fallback
DRAWS_PER_CROP = 4 * CROP_TRIES  # uniforms a crop draw consumes: (area, log ratio, top, left) per try
JPEG_MAGIC = b"\xff\xd8"


def random_resized_crop_box(width: int, height: int, uniforms: Sequence[float],
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (left, top, width, height in whole pixels) from
    DRAWS_PER_CROP uniforms in [0, 1): the same algorithm and distribution, with its randomness given."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for k in range(CROP_TRIES):
        u_area, u_ratio, u_top, u_left = uniforms[4 * k : 4 * k + 4]
        target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(u_top * (height - h + 1)), height - h)
            left = min(int(u_left * (width - w + 1)), width - w)
            return left, top, w, h
    # fallback: the whole image, its aspect ratio clamped into `ratio`, centred
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def reduction(box: Box, size: int) -> int:
    """The largest JPEG DCT reduction (8, 4, 2 or 1) at which the box still spans `size` pixels both ways,
    so the final resize stays a reduction. Only these: libjpeg-turbo's other n/8 scales use slower IDCT
    routines (measured with simplejpeg on a 500 x 375 photo: 6/8 and 7/8 took longer than the full size)."""
    room = min(box[2], box[3]) / size
    return next(f for f in DCT_FACTORS if f <= room or f == 1)


def decode_reduced(path: str, box_of: BoxRule, size: int) -> tuple[np.ndarray, Box]:
    """uint8 (H, W, 3) RGB decoded at the largest reduction the box allows, and the box in its pixels."""
    source: str | io.BytesIO = path
    if simplejpeg is not None:
        with open(path, "rb") as f:
            data = f.read()
        source = io.BytesIO(data)
        if data[:2] == JPEG_MAGIC:
            try:
                height, width, _, _ = simplejpeg.decode_jpeg_header(data)
                box = box_of(width, height)
                factor = reduction(box, size)  # the smallest n/8 scale giving at least width // factor is 1/factor
                array = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=width // factor, min_height=height // factor)
                return array, _rescaled(box, array.shape[1] / width, array.shape[0] / height)
            except ValueError:  # CMYK, arithmetic coding, damage: Pillow decides below
                pass
    with Image.open(source) as image:
        width, height = image.size
        box = box_of(width, height)
        factor = reduction(box, size)
        if factor > 1 and image.format == "JPEG":  # draft picks the largest scale with size // asked >= factor
            image.draft("RGB", (width // factor, height // factor))
        array = np.array(image if image.mode == "RGB" else image.convert("RGB"))  # writable, for torch
        return array, _rescaled(box, image.size[0] / width, image.size[1] / height)


def _rescaled(box: Box, sx: float, sy: float) -> Box:
    return box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy


def pixel_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """A box rounded to whole pixels (at least one), inside a width x height image."""
    left = min(max(int(round(box[0])), 0), width - 1)
    top = min(max(int(round(box[1])), 0), height - 1)
    w = min(max(int(round(box[0] + box[2])) - left, 1), width - left)
    h = min(max(int(round(box[1] + box[3])) - top, 1), height - top)
    return left, top, w, h


def decode_box(path: str, box_of: BoxRule, size: int, flip: bool = False, interpolation: str = "bilinear") -> torch.Tensor:
    """uint8 (3, size, size) RGB: the box `box_of(width, height)` of the image at `path`, resized to
    size x size, mirrored when `flip`. Any file Pillow reads works (grey, CMYK, PNG); JPEGs decode reduced.
    The resize is torch's antialiased bilinear (or `interpolation`: bicubic) on uint8 (what v2.RandomResizedCrop(antialias=True) runs on
    a uint8 tensor; 2-3x faster than Pillow's), from the box rounded to the decoded image's pixels."""
    array, box = decode_reduced(path, box_of, size)
    left, top, w, h = pixel_box(box, array.shape[1], array.shape[0])
    crop = torch.from_numpy(array)[top : top + h, left : left + w].permute(2, 0, 1).unsqueeze(0)
    crop = crop.contiguous(memory_format=torch.channels_last)  # the layout the uint8 kernel is fast on
    if (h, w) != (size, size):
        crop = nnf.interpolate(crop, size=(size, size), mode=interpolation, antialias=True, align_corners=False)
    out = crop[0]
    return out.flip(-1) if flip else out


def random_box(uniforms: Sequence[float], scale: tuple[float, float], ratio: tuple[float, float]) -> BoxRule:
    """The training crop's rule: a RandomResizedCrop box from the given uniforms."""
    def box_of(width: int, height: int) -> Box:
        left, top, w, h = random_resized_crop_box(width, height, uniforms, scale, ratio)
        return float(left), float(top), float(w), float(h)
    return box_of


def decoder_name() -> str:
    """Which decoder `decode_box` uses here, for benchmark records and logs."""
    return "simplejpeg (libjpeg-turbo)" if simplejpeg is not None else f"Pillow {Image.__version__} (draft)"
