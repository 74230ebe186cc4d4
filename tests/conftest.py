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
from dataclasses import dataclass
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


def main_here(capsys, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`longtail ARGS` in this process (no interpreter start-up), its output read from `capsys`; returns it as
    run_cli does. Restores the global determinism switches that training sets."""
    import torch

    from longtail.cli import main

    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark)
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]
    out, err = capsys.readouterr()
    if check and code != 0:
        raise AssertionError(f"longtail {' '.join(map(str, args))} failed ({code}):\n{out}\n{err}")
    return subprocess.CompletedProcess(["longtail", *map(str, args)], code, out, err)


def setup_and_one_step(cfg, evaluate: bool = True) -> float:
    """The setup engine._fit performs before its first epoch, then one training step and (`evaluate`) an evaluation
    of the test split; returns the step's loss."""
    from longtail import distributed
    from longtail.data.pipeline import train_batches
    from longtail.inference import evaluate_split
    from longtail.losses import create_loss
    from longtail.models import create_model
    from longtail.optim import build_optimizer, build_scheduler, lr_factor

    from longtail.run import load_data

    runtime = distributed.setup(cfg.device)
    bundle = load_data(cfg)
    model = create_model(cfg.model, bundle.num_classes, bundle.in_channels).to(runtime.device)
    criterion = create_loss(cfg.loss, bundle.class_counts).to(runtime.device)
    batches = train_batches(bundle, cfg, runtime)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, len(batches))
    [lr_factor(cfg.train, e) for e in (0, 0.5, cfg.train.epochs / 2, cfg.train.epochs)]
    batches.set_epoch(0)
    x, y = next(iter(batches))
    loss = criterion(model(x.to(runtime.device))[criterion.input_key], y.to(runtime.device))
    loss.backward()
    optimizer.step()
    scheduler.step()
    if evaluate:
        evaluate_split(model, bundle.test, bundle, cfg, runtime)
    return float(loss.detach())


def epoch_rows(run: Path) -> list[dict]:
    """The rows of a run's epochs.jsonl."""
    import json

    return [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- the package's import graph

def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """longtail module -> the longtail modules it imports anywhere (top level or inside functions), relative
    imports resolved; `from . import x` names the module x when there is one."""
    import ast

    root = src / "longtail"
    modules = {".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")
                base = base[: len(base) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:  # `from . import distributed` names a module
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def run_snapshot(run: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file under `run`: equal before and after means nothing wrote into it."""
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(run.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- shared expensive work (session scope)

# The session's tiny trained run: generated Fashion-MNIST (60 training and 50 test images per class, so that
# backward-50 keeps 50 .. 1 test images per class), ResNet-8, one epoch in float32 (train.amp=false: exported
# float32 graphs compare at 1e-4), configured with post-hoc la at tau 1.
TINY_RUN_TEST_PER_CLASS = 50
TINY_RUN_SETTINGS = [*TINY_FMNIST_40, "train.amp=false", "model.name=resnet8", "eval.posthoc=la"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One tiny trained run for the evaluate, predict, export, shift and tune tests. Read-only: a test that
    writes into a run copies it first (shutil.copytree); the fixture fails at the end of the session if any
    file of the run changed."""
    from longtail.config import load_config
    from longtail.engine import fit

    tmp = tmp_path_factory.mktemp("tiny_run")
    root = write_fake_fmnist(tmp / "fmnist", train_per_class=60, test_per_class=TINY_RUN_TEST_PER_CLASS)
    run = tmp / "resnet8_la"
    fit(load_config(FMNIST_CONFIG, [*TINY_RUN_SETTINGS, f"dataset.root={root}"]), run)
    before = run_snapshot(run)
    yield run
    assert run_snapshot(run) == before, "a test wrote into the shared tiny_run; copy it first (shutil.copytree)"


@pytest.fixture(scope="session")
def small_fmnist_root(tmp_path_factory) -> Path:
    """make_small_fmnist's default folder (120 training and 30 test images per class), made once per session."""
    return make_small_fmnist(tmp_path_factory.mktemp("fmnist_small"))


# ----------------------------------------------------------------------------- distributed training

# The tiny DDP setting (after TINY_FMNIST and a dataset.root) of the torchrun and Slurm comparisons.
# Augmentation stays on: each image's crop and flip follow from (seed, epoch, position), whatever the process count.
# A small constant learning rate and few steps (2 epochs x 3 steps) keep float32 round-off, which differs
# with the summation order, from growing chaotically (at lr 0.1 or 12+ steps it reaches 1e-3 in the weights).
# 240 training images (n_max 60, IF 10): divisible by 2 processes, so no image is repeated to pad the shards.
# GALA: its statistics are summed over the processes each step (losses/gala.py), so they must match too.
DDP_SETTINGS = ["dataset.n_max=60", "dataset.imbalance_factor=10", "train.batch_size=80", "train.lr=0.02",
                "train.warmup_epochs=0", "train.schedule=constant", "data.crop=true", "data.flip=true",
                "loss.name=gala", "loss.lambda1=1.2", "loss.lambda2=0.9",
                "data.pipeline=loader",  # the DataLoader path the image-list datasets train through
                "train.amp=false"]  # float32: bf16 rounding (the default on CPUs with native bf16) would swamp these tolerances


def ddp_settings(data_root: Path) -> list[str]:
    """The overrides of the tiny DDP run on the Fashion-MNIST folder `data_root`."""
    return [*TINY_FMNIST, f"dataset.root={data_root}", "dataset.download=false", *DDP_SETTINGS]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 -m longtail ARGS` (one thread per process); fails the test on error."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "longtail", *args]
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


@dataclass
class TorchrunReference:
    """The tiny DDP run trained by 2-process torchrun: epoch 1, then resumed to epoch 2 (`resumed`: that launch's
    output; `first_row`: epochs.jsonl after epoch 1)."""

    run: Path
    first_row: str
    first_history: list[dict]
    resumed: str


@pytest.fixture(scope="session")
def torchrun_reference(tmp_path_factory, small_fmnist_root) -> TorchrunReference:
    """One torchrun reference for the DDP test (against one process) and the Slurm test (against a 2-task job).
    Read-only: a test that writes copies it."""
    run = tmp_path_factory.mktemp("torchrun") / "run"
    settings = ddp_settings(small_fmnist_root)
    torchrun("train", FMNIST_CONFIG, *settings, "train.epochs=1", "--out", str(run))
    first_row, first_history = (run / "epochs.jsonl").read_text(), epoch_rows(run)
    resumed = torchrun("train", FMNIST_CONFIG, *settings, "train.epochs=2", "--resume", "--allow-config-change",
                       "--out", str(run)).stdout
    before = run_snapshot(run)
    yield TorchrunReference(run, first_row, first_history, resumed)
    assert run_snapshot(run) == before, "a test wrote into the shared torchrun reference; copy it first"


# ----------------------------------------------------------------------------- sweeps and Slurm

CE = str(REPO / "configs" / "fmnist_lt" / "ce_imba100.yaml")


def write_sweep(folder: Path, body: dict, name: str = "sweep.yaml") -> Path:
    """`body` as a sweep file `folder`/`name`."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def tiny_sweep(folder: Path, data_root: Path, epochs: int = 1) -> Path:
    """Seeds 0 and 1 of a CE run, a run that fails when it builds its model, and a post-hoc la step of CE."""
    common = [o for o in TINY_FMNIST if not o.startswith("train.epochs")]
    return write_sweep(folder, {
        "base": CE, "out": "runs", "axes": {"seed": [0, 1]},
        "overrides": [*common, f"train.epochs={epochs}", f"dataset.root={data_root}", "dataset.download=false"],
        "variants": [
            {"name": "ce"},
            # passes every config check, fails when the training builds its model
            {"name": "broken", "overrides": ["model.pretrained=/nonexistent/weights.pt"]},
            {"name": "ce_la", "from": "ce", "step": "evaluate --posthoc la --save"},
        ],
    })


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """One single-node Slurm cluster (slurm_cluster.py) for the whole pytest run, started by the first test that
    asks for it; SLURM_CONF and PYTHONPATH are set for the clients here and in the jobs."""
    import slurm_cluster as cluster_module

    started = cluster_module.start(tmp_path_factory.mktemp("slurm"))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLURM_CONF", str(started.conf))
            patch.setenv("PYTHONPATH", os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
            yield started
    finally:
        cluster_module.stop(started)


# ----------------------------------------------------------------------------- the two-Gaussian problem

# Menon et al. (ICLR 2021) section 6.1: two classes, 2-D isotropic Gaussians (sigma 1) with means +(1, 1) and
# -(1, 1), P(+1) = 5 %.
GAUSSIAN_MEAN = (1.0, 1.0)


def normal_cdf(x: float) -> float:
    """Phi(x), the standard normal distribution function."""
    import math

    return 0.5 * math.erfc(-x / math.sqrt(2))


def two_gaussians(n: int = 200_000, seed: int = 0):
    """n points (float64) of the two-Gaussian problem and their labels (1 = the rare '+1' class)."""
    import torch

    mean = torch.tensor(GAUSSIAN_MEAN, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g, dtype=torch.float64) < 0.05).long()
    x = torch.where(y[:, None] == 1, mean, -mean) + torch.randn(n, 2, generator=g, dtype=torch.float64)
    return x, y


def train_linear(x, y, loss_fn):
    """A 2-class linear softmax model fitted to (x, y) by full-batch L-BFGS in float64 (deterministic)."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 2).double()
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-10,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    return model


# ----------------------------------------------------------------------------- fake run directories (report)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def exp_counts(imbalance: float, n_max: int = 600, classes: int = 10) -> list[int]:
    """int(n_max * (1 / IF) ** (i / (C - 1))) per class i: the exponential long-tailed profile."""
    return [int(n_max * (1 / imbalance) ** (i / (classes - 1))) for i in range(classes)]


def make_run(path: Path, overrides: list[str], top1: float, shots=(80.0, 50.0, 20.0), tune: dict | None = None,
             extra_metrics: dict | None = None) -> Path:
    """A run directory as `longtail train` (and `longtail tune`) leave it, with the given accuracies."""
    import json

    from longtail.config import dump_yaml, load_config

    cfg = load_config(None, ["dataset.n_max=600", *overrides])
    class_counts = exp_counts(cfg.dataset.imbalance_factor)
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(dump_yaml(cfg))
    many, medium, few = shots
    metrics = {"top1": top1, "mean_class_acc": top1, "many": many, "medium": medium, "few": few,
               "per_class": [float(top1 + 10 - 2 * i) for i in range(10)], "split": "test", "checkpoint": "best",
               "epoch": 2, "selected_by": "val_top1", "class_counts": class_counts, "num_images": 1000,
               **(extra_metrics or {})}
    (path / "metrics.json").write_text(json.dumps(metrics))
    epochs = [{"epoch": e, "train_loss": 2.0 / e, "lr": 0.1, "images_per_s": 1000.0, "epoch_time_s": 1.0,
               "val_top1": top1 - 5 + e, "val_many": many, "val_medium": medium, "val_few": few} for e in (1, 2)]
    (path / "epochs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epochs))
    if tune is not None:
        (path / f"tune_{tune['posthoc']}.json").write_text(json.dumps(tune))
    return path


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
