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

# Tiny Fashion-MNIST-LT settings for end-to-end tests: 60 images in the largest class, resnet8.
TINY_FMNIST = [
    "dataset.n_max=60", "dataset.val_per_class=10", "model.name=resnet8", "train.epochs=1",
    "train.batch_size=32", "train.progress=false", "data.num_workers=0", "eval.batch_size=2000",
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
