"""Tiny trained runs, evaluate's own scores and the target-prior scores written out by hand, and runners of
exported models, for the predict, export and target-prior tests (a plain helper module, not a test file)."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Sequence

import torch

from conftest import FMNIST_CONFIG, TINY_FMNIST_40, write_fake_fmnist
from longtail.checkpoint import load_checkpoint
from longtail.config import load_config
from longtail.engine import fit
from longtail.evaluation import load_outputs, load_run
from longtail.posthoc import PosthocInputs, apply_posthoc, class_mass
from longtail.run import load_data, resolve_checkpoint

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


def target_scores(run_dir: Path, log_q: torch.Tensor) -> torch.Tensor:
    """The target-prior scores of evaluate's test logits, written out by hand from the run's stored
    calibration: log_softmax(z / T + b) - log(n_val / N_val) + log q."""
    cal = load_checkpoint(resolve_checkpoint(run_dir))["calibrator"]
    z = evaluate_scores(run_dir, "none").double() / cal["temperature"] + torch.tensor(cal["bias"], dtype=torch.float64)
    counts = torch.tensor(cal["val_counts"], dtype=torch.float64)
    return (z.log_softmax(1) - (counts / counts.sum()).log() + log_q.double()).float()


def run_onnx(path: Path, images: torch.Tensor, log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """The scores of an exported ONNX model (ONNX Runtime, CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"images": images.numpy()}
    if log_prior is not None:
        feed["log_prior"] = log_prior.numpy()
    return torch.from_numpy(session.run(["scores"], feed)[0])


def run_torchscript(path: Path, images: torch.Tensor, log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """The scores of an exported TorchScript model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream; loading still works
        model = torch.jit.load(str(path))
    with torch.no_grad():
        return model(images) if log_prior is None else model(images, log_prior)


RUNNERS = {"onnx": run_onnx, "torchscript": run_torchscript}
