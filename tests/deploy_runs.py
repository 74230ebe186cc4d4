"""Tiny trained runs and evaluate's own scores, for the predict and export tests."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import torch

from conftest import FMNIST_CONFIG, TINY_FMNIST_40, write_fake_fmnist
from longtail.config import load_config
from longtail.engine import fit
from longtail.evaluation import load_outputs, load_run
from longtail.posthoc import PosthocInputs, apply_posthoc, class_mass
from longtail.run import load_data

# float32 throughout (train.amp=false), so exported float32 graphs can be compared at 1e-4
TINY = [*TINY_FMNIST_40, "train.amp=false"]


def train_tiny(tmp: Path, name: str, extra: Sequence[str] = ()) -> Path:
    """A one-epoch fmnist_lt run on generated Fashion-MNIST files (about two seconds)."""
    root = tmp / "fmnist"
    if not root.is_dir():
        write_fake_fmnist(root, train_per_class=60, test_per_class=20)
    out = tmp / name
    fit(load_config(FMNIST_CONFIG, [*TINY, f"dataset.root={root}", *extra]), out)
    return out


def split_images(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's test split: uint8 images (N, C, H, W) and labels, as evaluate reads them."""
    cfg = load_run(run)[0]
    bundle = load_data(cfg)
    return bundle.test.images, bundle.test.labels


def normalised(run: Path, images: torch.Tensor) -> torch.Tensor:
    """What evaluate feeds the network for these images (data/pipeline.eval_batches)."""
    cfg, ckpt, _ = load_run(run)
    return load_data(cfg, ckpt).spec.normalize(images)


@functools.lru_cache(maxsize=8)
def _outputs(run: Path):
    return load_outputs(run, splits=("val", "test"))  # one pass per run: every correction follows from it


def evaluate_scores(run: Path, posthoc: str, tau: float = 1.0) -> torch.Tensor:
    """The scores whose argmax `longtail evaluate --posthoc ...` scores, on the test split."""
    outputs = _outputs(Path(run))
    logits = outputs.split("test")["logits"]
    if posthoc == "none":
        return logits
    mass = class_mass(outputs.split("val")["logits"]) if posthoc == "pn" else None
    return apply_posthoc(posthoc, logits, tau, PosthocInputs(outputs.class_counts, outputs.weight, mass))
