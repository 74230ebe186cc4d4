"""Test-time ensembling (`eval.tte`): several views of each evaluated image, the model's logits averaged over them.

    none      one view, the evaluation crop
    flip      the evaluation crop and its horizontal mirror (2 views)
    fivecrop  the image resized (short side) to S + e, then torchvision's FiveCrop(S): the four corners and the
              centre (5 views); S = the network's input size, e = `eval.tte_expand`
    tencrop   the five crops and the five crops of the mirrored image, torchvision's TenCrop(S) (10 views)

The prediction is the mean of the logits over the K views, z(x) = (1 / K) sum_k z(v_k(x)), as LIFT's released
code averages its model's outputs (Shi et al., ICML 2024, trainer.py `test`: `output.view(B, K, -1).mean(dim=1)`,
with `tte_mode: fivecrop` and `expand: 24` in utils/config.py); every later step (post-hoc corrections, metrics)
sees z. In-memory datasets (CIFAR) are resized as a square image, S + e on both sides. Evaluation, tune, shift,
selection and predict use it; `longtail export` refuses it (a single-view graph).
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import InterpolationMode, v2

from .config import Config
from .errors import LongtailError
from .input_spec import normalize

VIEWS = {"none": 1, "flip": 2, "fivecrop": 5, "tencrop": 10}  # views per image of each eval.tte mode
MODES = tuple(VIEWS)


def enabled(cfg: Config) -> bool:
    return cfg.eval.tte != "none"


def five_crop_offsets(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of torchvision's FiveCrop(size) on a height x width image: top-left, top-right, bottom-left,
    bottom-right, centre (the centre offset rounded as CenterCrop rounds it)."""
    if size > height or size > width:
        raise LongtailError(f"eval.tte crops of {size} px do not fit a {height} x {width} image; the views are cut from the image "
                            "resized to the crop size + eval.tte_expand (>= 0)")
    bottom, right = height - size, width - size
    centre = (int(round(bottom / 2.0)), int(round(right / 2.0)))
    return [(0, 0), (0, right), (bottom, 0), (bottom, right), centre]


def views(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, K, C, size, size), the K views of `mode`. flip takes the evaluation crops themselves
    (H = W = size); fivecrop and tencrop take the resized images, larger than `size`."""
    if mode == "flip":
        return torch.stack([images, images.flip(-1)], dim=1)
    if mode not in ("fivecrop", "tencrop"):
        raise LongtailError(f"eval.tte must be one of {', '.join(MODES)}, got {mode!r}")
    offsets = five_crop_offsets(images.shape[-2], images.shape[-1], size)
    sources = [images] if mode == "fivecrop" else [images, images.flip(-1)]
    crops = [src[..., top : top + size, left : left + size] for src in sources for top, left in offsets]
    return torch.stack(crops, dim=1)


def average(out: dict[str, torch.Tensor], num_views: int) -> dict[str, torch.Tensor]:
    """A model's outputs over B * K views (rows image-major) -> their mean over each image's K views, float32.
    Multi-expert outputs (E, B * K, C) are averaged per expert."""
    result = {}
    for key, value in out.items():
        value = value.float()
        if key == "expert_logits":
            result[key] = value.view(value.shape[0], -1, num_views, *value.shape[2:]).mean(2)
        else:
            result[key] = value.view(-1, num_views, *value.shape[1:]).mean(1)
    return result


def resize_side(cfg: Config, size: int) -> int:
    """The short side fivecrop and tencrop resize to: S + eval.tte_expand."""
    return size + cfg.eval.tte_expand


# ----------------------------------------------------------------------------- evaluation batches


class ImageViews(Dataset):
    """An ImageList's images as uint8 (K, 3, S, S) views: the whole image decoded, resized (short side) to
    S + e, then cropped (fivecrop, tencrop); flip mirrors the usual evaluation crop."""

    def __init__(self, images: Any, spec: Any, mode: str, expand: int):
        from .data.image_batches import CroppedImages

        self.images, self.size, self.mode, self.expand, self.interpolation = images, spec.size, mode, expand, spec.interpolation
        self.crops = CroppedImages(images, spec)  # flip: the evaluation crop

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.mode == "flip":
            crop, label, _ = self.crops[index]
            return views(crop[None], self.size, "flip")[0], label
        image = self.images.read(index, _read_rgb)
        image = v2.functional.resize(image, self.size + self.expand, interpolation=InterpolationMode(self.interpolation), antialias=True)
        return views(image[None], self.size, self.mode)[0], int(self.images.targets[index])


def _read_rgb(path: str) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def eval_batches(split: Any, bundle: Any, cfg: Config, runtime: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """As data.pipeline.eval_batches (this process's rank::world_size shard, normalised, on the device), each
    image as its K views: (B, K, C, S, S). eval.batch_size counts views, so a batch holds batch_size // K images."""
    mode, k = cfg.eval.tte, VIEWS[cfg.eval.tte]
    per_batch = max(1, cfg.eval.batch_size // k)
    spec = bundle.spec  # S = spec.size, the side the network sees (a pretrained backbone's, for in-memory images)
    mean, std = spec.stats(runtime.device)
    if not bundle.in_memory:
        dataset = Subset(ImageViews(split, spec, mode, cfg.eval.tte_expand),
                         list(range(runtime.rank, len(split), runtime.world_size)))
        loader = DataLoader(dataset, batch_size=per_batch, num_workers=cfg.data.num_workers,
                            pin_memory=runtime.device.type == "cuda")
        for x, y in loader:
            yield normalize(x.to(runtime.device, non_blocking=True), mean, std), y.to(runtime.device, non_blocking=True)
        return
    images, labels = split.images[runtime.rank :: runtime.world_size], split.labels[runtime.rank :: runtime.world_size]
    side = spec.size if mode == "flip" else resize_side(cfg, spec.size)
    mode_i = InterpolationMode(spec.interpolation)
    for start in range(0, len(labels), per_batch):
        x = images[start : start + per_batch].to(runtime.device, non_blocking=True)
        y = labels[start : start + per_batch].to(runtime.device, non_blocking=True)
        if side != x.shape[-1] or side != x.shape[-2]:  # as data.pipeline resizes in-memory images, on uint8
            x = v2.functional.resize(x, [side, side], interpolation=mode_i, antialias=True)
        yield normalize(views(x, spec.size, mode), mean, std), y


# ----------------------------------------------------------------------------- predict and export


class ViewsPreprocessing:
    """deployment.Preprocessing giving (K, C, S, S) views of one image (longtail predict)."""

    def __init__(self, prep: Any, mode: str, expand: int):
        self.prep, self.mode, self.expand = prep, mode, expand

    def load(self, path: Any) -> torch.Tensor:
        return self.prep.load(path)

    def pixels(self, image: Any) -> torch.Tensor:  # an image given in memory (Run.predict)
        return self.prep.pixels(image)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        spec = self.prep.spec
        if self.mode == "flip":
            return views(self.prep(image)[None], spec.size, "flip")[0]
        image = v2.functional.resize(image, spec.size + self.expand, interpolation=InterpolationMode(spec.interpolation), antialias=True)
        return views(spec.normalize(image)[None], spec.size, self.mode)[0]


def preprocessing(prep: Any, cfg: Config) -> Any:
    """The run's per-image preprocessing, or its views under eval.tte."""
    return ViewsPreprocessing(prep, cfg.eval.tte, cfg.eval.tte_expand) if enabled(cfg) else prep


def refuse_export(cfg: Config) -> None:
    if enabled(cfg):
        raise LongtailError(f"export writes a single-view graph and eval.tte={cfg.eval.tte} averages {VIEWS[cfg.eval.tte]} "
                            "views per image; export with the override eval.tte=none")


def batch_views(x: torch.Tensor) -> Optional[int]:
    """K for a (B, K, C, H, W) batch of views, None for a plain (B, C, H, W) batch."""
    return int(x.shape[1]) if x.dim() == 5 else None
