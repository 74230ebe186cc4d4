"""The test suite's helpers, in one module: running the CLI from this checkout, the tiny-run settings, generated
datasets in the official on-disk formats, and where the tests find Fashion-MNIST.

Fashion-MNIST is looked for where longtail looks (data/fmnist.py): the folder named by $LONGTAIL_TEST_FMNIST (the
tests' `dataset.root`), Debian's /usr/share/datasets/fashion-mnist, then longtail's download in ~/.cache/longtail.
Without any of them, tests run on a generated set of the same IDX files, except the few marked `needs_fmnist`,
which check the real images' statistics and say so in pytest's skip summary. LONGTAIL_TEST_FMNIST=none hides
every copy (from longtail too, in the test process), to run the suite as a machine without Fashion-MNIST would.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
REPO = SRC.parent
FMNIST_CONFIG = "configs/fmnist_lt/ce_imba100.yaml"
FMNIST_ENV = "LONGTAIL_TEST_FMNIST"

# ----------------------------------------------------------------------------- tiny runs

# What every tiny test run shares: the smallest ResNet, one epoch, no progress bar, no loader processes.
TINY_RUN = ["model.name=resnet8", "train.epochs=1", "train.progress=false", "data.num_workers=0"]
# Tiny Fashion-MNIST-LT: 100 images in the largest class (IF 100 leaves 1 in the smallest). Add `dataset.root`
# (the `tiny_fmnist` fixture does) so that the run reads the copy the tests found or generated.
TINY_FMNIST = [*TINY_RUN, "dataset.n_max=100", "dataset.val_per_class=10", "train.batch_size=32", "eval.batch_size=256"]
# Tinier still (n_max 40, IF 10: 159 images), for runs on a few generated images per class; float32 on the CPU.
TINY_FMNIST_40 = [*TINY_FMNIST, "dataset.n_max=40", "dataset.imbalance_factor=10", "dataset.download=false",
                  "eval.batch_size=500", "device=cpu"]


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


# ----------------------------------------------------------------------------- generated datasets

def _images(labels: np.ndarray, shape: tuple[int, ...], num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Noise around a class-dependent brightness, so a model can learn a little in one epoch."""
    level = (labels.astype(np.float64) + 0.5) / num_classes * 200 + 25
    noise = rng.normal(0, 30, size=(len(labels), *shape))
    return np.clip(level.reshape(-1, *([1] * len(shape))) + noise, 0, 255).astype(np.uint8)


def _labels(per_class: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def idx_bytes(array: np.ndarray, type_code: int = 8) -> bytes:
    """An uncompressed IDX file: magic (0, 0, type, ndim), big-endian dimensions, then the values as bytes."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    """`array` as a gzip-compressed IDX file of unsigned bytes (Fashion-MNIST's format)."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(idx_bytes(array))


def write_fake_fmnist(root: Path, train_per_class: int = 30, test_per_class: int = 10, seed: int = 0) -> Path:
    """Fashion-MNIST's four IDX .gz files (10 classes, 28x28, generated images) in `root`; returns `root`."""
    from longtail.data.fmnist import FILES

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = _labels(per_class, 10, rng)
        write_idx(root / FILES[f"{split}_images"], _images(labels, (28, 28), 10, rng))
        write_idx(root / FILES[f"{split}_labels"], labels.astype(np.uint8))
    return root


def write_fake_cifar(root: Path, variant: str, train_per_class: int = 25, test_per_class: int = 5, seed: int = 0) -> Path:
    """The python-pickle CIFAR-10 (5 data batches + test_batch) or CIFAR-100 (train + test) files under
    `root`/cifar-10-batches-py or `root`/cifar-100-python, uint8 (N, 3072) rows; returns `root` (the dataset.root)."""
    rng = np.random.default_rng(seed)
    cifar10 = variant == "cifar10"
    classes, label_key = (10, b"labels") if cifar10 else (100, b"fine_labels")
    folder = root / ("cifar-10-batches-py" if cifar10 else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)

    def batch(labels: np.ndarray) -> dict:
        data = _images(labels, (3, 32, 32), classes, rng).reshape(len(labels), 3072)
        return {b"batch_label": b"fake", label_key: labels.tolist(), b"data": data}

    train = _labels(train_per_class, classes, rng)
    test = _labels(test_per_class, classes, rng)
    names = [f"data_batch_{i}" for i in range(1, 6)] if cifar10 else ["train"]
    for name, part in zip(names, np.array_split(train, len(names))):
        (folder / name).write_bytes(pickle.dumps(batch(part), protocol=2))  # the official files are protocol 2
    (folder / ("test_batch" if cifar10 else "test")).write_bytes(pickle.dumps(batch(test), protocol=2))
    return root


# ----------------------------------------------------------------------------- Fashion-MNIST

def find_fmnist() -> Optional[Path]:
    """The folder of the real Fashion-MNIST files, where longtail finds them, or None (see the module docstring)."""
    from longtail.data import fmnist

    setting = os.environ.get(FMNIST_ENV, "")
    if setting.lower() == "none":
        return None
    return fmnist.first_complete(fmnist.search_dirs(setting or None, defaults=not setting))


REAL_FMNIST = find_fmnist()
needs_fmnist = pytest.mark.skipif(
    REAL_FMNIST is None,
    reason=f"needs the real Fashion-MNIST images, found neither in ${FMNIST_ENV} nor in /usr/share/datasets/fashion-mnist "
           "(apt-get install dataset-fashion-mnist) nor in ~/.cache/longtail (longtail downloads it there when online)",
)


def pytest_configure(config) -> None:
    setting = os.environ.get(FMNIST_ENV, "")
    if setting.lower() == "none":  # hide the system copy and the download from longtail in this process too
        from longtail.data import fmnist

        fmnist.DEBIAN_DIR = fmnist.CACHE_DIR = Path("/nonexistent/hidden-by-" + FMNIST_ENV)
    elif setting and REAL_FMNIST is None:
        pytest.exit(f"{FMNIST_ENV}={setting} holds no Fashion-MNIST IDX files (nor does its FashionMNIST/raw); point it "
                    f"at the folder holding them, or set {FMNIST_ENV}=none to test without the real images", returncode=4)


def make_small_fmnist(root: Path, train_per_class: int = 120, test_per_class: int = 30) -> Path:
    """A Fashion-MNIST folder (the four IDX .gz files) of `train_per_class` + `test_per_class` images per class,
    so end-to-end runs start in a blink: the first images of each class of the real set where the tests found
    it, generated ones otherwise."""
    from longtail.data.fmnist import FILES, read_idx

    if REAL_FMNIST is None:
        return write_fake_fmnist(root, train_per_class, test_per_class)
    root.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        images, labels = read_idx(REAL_FMNIST / FILES[f"{split}_images"]), read_idx(REAL_FMNIST / FILES[f"{split}_labels"])
        keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(10)]))
        write_idx(root / FILES[f"{split}_images"], images[keep])
        write_idx(root / FILES[f"{split}_labels"], labels[keep])
    return root


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory) -> Path:
    """The whole real Fashion-MNIST where the tests found it; else a generated set with room for TINY_FMNIST
    (110 training images per class) and 100 test images per class."""
    if REAL_FMNIST is not None:
        return REAL_FMNIST
    return write_fake_fmnist(tmp_path_factory.mktemp("fmnist_generated"), train_per_class=120, test_per_class=100)


@pytest.fixture(scope="session")
def tiny_fmnist(fmnist_root) -> list[str]:
    """TINY_FMNIST reading `fmnist_root`, never downloading: the overrides of a tiny Fashion-MNIST-LT run."""
    return [*TINY_FMNIST, f"dataset.root={fmnist_root}", "dataset.download=false"]


# ----------------------------------------------------------------------------- training in the test process

def fit_here(config: str | Path | None, overrides: list[str], out: Path) -> dict:
    """Train in this process (no interpreter start-up per run) and return its metrics; restores the global
    determinism switches that `fit` sets."""
    import torch

    from longtail.config import load_config
    from longtail.engine import fit

    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark)
    try:
        return fit(load_config(config, overrides), out)
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]


def epoch_rows(run: Path) -> list[dict]:
    """The rows of a run's epochs.jsonl."""
    import json

    return [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- plugins

@pytest.fixture
def isolated_plugins():
    """Components and plugins registered during the test are forgotten after it (the registries are process-wide)."""
    from longtail import catalog, plugins

    registry = {kind: dict(entries) for kind, entries in catalog._REGISTRY.items()}
    loaded, entry_points = dict(plugins._LOADED), plugins._entry_points_loaded
    modules = set(sys.modules)
    yield
    for kind, entries in registry.items():
        catalog._REGISTRY[kind].clear()
        catalog._REGISTRY[kind].update(entries)
    plugins._LOADED.clear()
    plugins._LOADED.update(loaded)
    plugins._entry_points_loaded = entry_points
    for name in set(sys.modules) - modules:
        if name.startswith(plugins.MODULE_PREFIX):
            del sys.modules[name]


def recipe_blocks() -> dict[str, str]:
    """docs/adding-a-method.md's files: {'recipe-file: NAME' or 'recipe-config: NAME': text}."""
    import re

    text = (REPO / "docs" / "adding-a-method.md").read_text(encoding="utf-8")
    return dict(re.findall(r"<!-- (recipe-[\w-]+(?:: \S+)?) -->\n```\w+\n(.*?)```", text, re.S))


def write_recipe(folder: Path) -> Path:
    """Write the page's plugin file and config into `folder`; returns the config's path."""
    config = None
    for marker, body in recipe_blocks().items():
        path = folder / marker.split(": ", 1)[1]
        path.write_text(body, encoding="utf-8")
        if marker.startswith("recipe-config"):
            config = path
    assert config is not None
    return config
