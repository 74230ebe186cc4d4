"""Shared fixtures: tiny generated datasets and a way to run the CLI from this checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
REPO = SRC.parent
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# Tiny Fashion-MNIST-LT settings for end-to-end tests: 100 images in the largest class (IF 100 leaves 1 in the smallest), resnet8.
TINY_FMNIST = [
    "dataset.n_max=100", "dataset.val_per_class=10", "model.name=resnet8", "train.epochs=1",
    "train.batch_size=32", "train.progress=false", "data.num_workers=0", "eval.batch_size=256",
]

needs_fmnist = pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def run_cli(*args: str, cwd: Path | None = None, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m longtail ARGS` from this checkout; returns the completed process (text output)."""
    proc = subprocess.run(
        [sys.executable, "-m", "longtail", *args], cwd=cwd or REPO, env=cli_env(),
        capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"longtail {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def cli():
    return run_cli


def make_fake_cifar(root: Path, variant: str = "cifar10", train_per_class: int = 30, test_per_class: int = 10, seed: int = 0) -> Path:
    """Write small CIFAR batches in the official python-pickle format (bytes keys, uint8 (N, 3072) data)."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(seed)
    classes = 10 if variant == "cifar10" else 100

    def batch(per_class: int, label_key: bytes) -> dict:
        labels = rng.permutation(np.repeat(np.arange(classes), per_class)).tolist()
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        return {b"batch_label": b"fake", label_key: labels, b"data": data, b"filenames": [b"x.png"] * len(labels)}

    if variant == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(1, 6):  # the official split spreads each class over five batches
            part = batch(max(train_per_class // 5, 1), b"labels")
            (folder / f"data_batch_{i}").write_bytes(pickle.dumps(part, protocol=2))
        (folder / "test_batch").write_bytes(pickle.dumps(batch(test_per_class, b"labels"), protocol=2))
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "train").write_bytes(pickle.dumps(batch(train_per_class, b"fine_labels"), protocol=2))
        (folder / "test").write_bytes(pickle.dumps(batch(test_per_class, b"fine_labels"), protocol=2))
    return root


def make_small_fmnist(root: Path, train_per_class: int = 120, test_per_class: int = 30) -> Path:
    """A Fashion-MNIST folder (the four IDX .gz files) holding the first images of each class of the real
    set, so end-to-end runs start in a blink and test on a few hundred images instead of 10000."""
    import gzip

    import numpy as np

    from longtail.data.fmnist import FILES, read_idx

    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        images, labels = read_idx(FMNIST_DIR / FILES[f"{split}_images"]), read_idx(FMNIST_DIR / FILES[f"{split}_labels"])
        keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))
        for key, array in ((f"{split}_images", images[keep]), (f"{split}_labels", labels[keep])):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            with gzip.open(root / FILES[key], "wb", compresslevel=1) as f:
                f.write(header + array.tobytes())
    return root
