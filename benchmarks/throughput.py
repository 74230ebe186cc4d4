"""Training throughput of longtail's data pipelines against a reference-style loop (not a test).

On one model (ResNet-32), one batch size and the GALA recipe's augmentation (pad-4 crop, flip, AutoAugment
CIFAR-10 policy, Cutout 16), on synthetic CIFAR-shaped uint8 images (3x32x32) with the class counts of
CIFAR-100-LT at imbalance factor 100 (10847 images), measure training images/s of

  (a) reference     a torchvision-CIFAR-style Dataset returning PIL images, torchvision v1 PIL transforms,
                    a DataLoader with workers, an fp32 NCHW model, the loss read with .item() every step
  (b) loader        longtail, data.pipeline=loader  (engine.train_one_epoch over the real pipeline)
  (c) device        longtail's default training on this machine: data.pipeline=device, train.amp=auto,
                    train.channels_last=auto (bf16 + channels_last on CUDA and on CPUs with native bf16)
  (d) ceiling_fp32  the model alone (one fixed, normalised batch on the device) in float32, NCHW
  (e) ceiling       the model alone as (c) computes it: the fast path's ceiling

Each is timed over a fixed number of steps after a warm-up on the same iterator; every measurement is
repeated over interleaved rounds and the best round is kept (the machine may be shared). The last line is
`speedup_vs_reference=<c/a> fraction_of_ceiling=<c/e>`. `--set train.compile=true` adds torch.compile
to (b)-(e); its compile time falls in the untimed warm-up, so the rates are steady-state ones.

  python benchmarks/throughput.py --quick                 # CPU, a few minutes at most
  python benchmarks/throughput.py --device cuda           # whole epochs, bf16 autocast etc. as in `longtail train`
  python benchmarks/throughput.py --device cuda --full-run   # plus a 200-epoch run end to end (engine.fit)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # benchmark this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))  # machine.py, also when imported from elsewhere

from longtail.config import CHOICES, Config, load_config  # noqa: E402
from longtail import register_dataset  # noqa: E402
from longtail.data.base import DataBundle, RawDataset, TensorImages  # noqa: E402
from longtail.data.cifar import CIFAR  # noqa: E402
from longtail.data.device import CHUNK_IMAGES, host_ops_on_one_thread  # noqa: E402
from longtail.data.pipeline import train_batches  # noqa: E402
from longtail.input_spec import InputSpec  # noqa: E402
from longtail.data.splits import long_tailed_counts  # noqa: E402
from longtail.distributed import Runtime  # noqa: E402
from longtail.engine import _set_determinism, train_one_epoch  # noqa: E402
from longtail.inference import prepare_model  # noqa: E402
from longtail.losses import create_loss  # noqa: E402
from longtail.models import create_model  # noqa: E402
from longtail.optim import build_optimizer, build_scheduler  # noqa: E402
from machine import machine_line  # noqa: E402

SPEC = CIFAR["cifar100"]
GALA_AUGMENT = ["data.crop=true", "data.flip=true", "data.autoaugment=true", "data.cutout=16"]
SYNTHETIC = "synthetic_cifar100_lt"


# ----------------------------------------------------------------------------- data


def synthetic_split(counts: list[int], seed: int) -> TensorImages:
    g = torch.Generator().manual_seed(seed)
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    labels = labels[torch.randperm(len(labels), generator=g)]
    images = torch.randint(0, 256, (len(labels), 3, 32, 32), generator=g, dtype=torch.uint8)
    return TensorImages(images, labels)


def synthetic_bundle(seed: int = 0) -> DataBundle:
    """CIFAR-100-LT IF100 in shape and class counts, random pixels."""
    counts = long_tailed_counts(SPEC["n_max"], SPEC["num_classes"], 100.0)
    train = synthetic_split(counts, seed)
    test = synthetic_split([100] * SPEC["num_classes"], seed + 1)
    return DataBundle(SYNTHETIC, train, None, test, counts, SPEC["num_classes"], 3, SPEC["mean"], SPEC["std"],
                      input=InputSpec(3, 32, tuple(SPEC["mean"]), tuple(SPEC["std"]), crop_pct=1.0))


def register_synthetic_dataset(seed: int = 0, train_per_class: Optional[int] = None, test_per_class: int = 100) -> None:
    """Make `dataset.name=synthetic_cifar100_lt` loadable by engine.fit: a balanced 500/100-per-class source
    that the usual long-tailed subsampling turns into CIFAR-100-LT's shape (smaller with the arguments, for
    tiny runs that take at most `train_per_class` training images per class anyway)."""
    def load(root: Optional[str], download: bool) -> RawDataset:
        per_class = [train_per_class or SPEC["n_max"]] * SPEC["num_classes"]
        return RawDataset(synthetic_split(per_class, seed), synthetic_split([test_per_class] * SPEC["num_classes"], seed + 1),
                          SPEC["num_classes"], SPEC["n_max"], SPEC["mean"], SPEC["std"])

    if SYNTHETIC not in CHOICES["dataset.name"]:  # a dataset registered as a plugin's would be
        register_dataset(SYNTHETIC, in_memory=True, channels=3, native_size=32, given_split=False)(load)


# ----------------------------------------------------------------------------- timing


def cpu_seconds() -> float:
    """CPU time used so far by this process (all threads) and its children, live DataLoader workers included.
    On a shared machine wall-clock rates depend on the share of the cores each measurement got (a pipeline with
    worker processes gets a larger share); images per CPU-second do not."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system  # children: those already reaped
    tick, me = os.sysconf("SC_CLK_TCK"), str(os.getpid())
    for entry in Path("/proc").iterdir():  # live children: processes whose parent is this one
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # ppid is field 4 of stat; utime and stime are fields 14 and 15
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


class Rate:
    """Images over a timed window, per wall-clock second and per CPU-second."""

    def __init__(self, sync: Callable[[], None]):
        self.sync, self.images = sync, 0

    def start(self) -> None:
        self.sync()
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()

    def stop(self) -> "Rate":
        self.sync()
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu
        return self

    @property
    def per_s(self) -> float:
        return self.images / self.wall

    @property
    def per_cpu_s(self) -> float:
        return self.images / self.cpu


class Timed:
    """TrainBatches around another: `warmup` batches, then `steps` timed ones (starting new epochs of the
    inner pipeline when it runs out). The clock starts when batch `warmup` is asked for and stops when the
    consumer asks for the batch after the last, i.e. once the last step has run; on CUDA it synchronises
    at both ends."""

    def __init__(self, inner, warmup: int, steps: int, sync: Callable[[], None]):
        self.inner, self.warmup, self.steps = inner, warmup, steps
        self.epoch, self.rate = 0, Rate(sync)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return self.warmup + self.steps

    def _endless(self) -> Iterator:
        epoch = self.epoch
        while True:
            yield from self.inner
            epoch += 1
            self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator:
        batches = self._endless()
        for i in range(self.warmup + self.steps):
            if i == self.warmup:
                self.rate.start()
            batch = next(batches)
            if i >= self.warmup:
                self.rate.images += len(batch[1])
            yield batch
        self.rate.stop()


class FixedBatch:
    """The same (x, y) every step: the model's own speed through the same training loop."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, length: int):
        self.x, self.y, self.length = x, y, length

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator:
        return iter([(self.x, self.y)] * self.length)


# ----------------------------------------------------------------------------- (b), (c), (d): longtail


def longtail_config(pipeline: str, args: argparse.Namespace, extra: tuple[str, ...] | list[str] = ()) -> Config:
    return load_config(overrides=[
        f"device={args.device}", "model.name=resnet32", f"train.batch_size={args.batch_size}", "train.progress=false",
        f"data.pipeline={pipeline}", f"data.num_workers={args.workers}", *GALA_AUGMENT, *args.set, *extra,
    ])


def longtail_rate(cfg: Config, bundle: DataBundle, runtime: Runtime, warmup: int, steps: int,
                  fixed: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> Rate:
    """Images/s of engine.train_one_epoch, set up as engine.fit sets it up."""
    _set_determinism(cfg, runtime.device)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, bundle.num_classes, bundle.in_channels).to(runtime.device)
    model = prepare_model(model, cfg, runtime.device)
    criterion = create_loss(cfg.loss, bundle.class_counts).to(runtime.device)
    pipeline = train_batches(bundle, cfg, runtime)
    batches = Timed(FixedBatch(*fixed, len(pipeline)) if fixed else pipeline, warmup, steps, sync_of(runtime.device))
    optimizer = build_optimizer(model, cfg.train, fused=runtime.device.type == "cuda")
    scheduler = build_scheduler(optimizer, cfg.train, len(pipeline))
    train_model = torch.compile(model) if cfg.train.compile else model
    batches.set_epoch(0)
    train_one_epoch(train_model, criterion, batches, optimizer, scheduler, cfg, runtime, 0, show_progress=False)
    return batches.rate


def first_device_batch(bundle: DataBundle, runtime: Runtime, args: argparse.Namespace):
    cfg = longtail_config("device", args)
    x, y = next(iter(train_batches(bundle, cfg, runtime)))
    return x.to(runtime.device), y.to(runtime.device)


# ----------------------------------------------------------------------------- (a): reference-style loop


class PILCifar(torch.utils.data.Dataset):
    """As torchvision.datasets.CIFAR100 serves it: HWC uint8 arrays, one PIL image per item."""

    def __init__(self, split: TensorImages, transform: Callable):
        self.data = split.images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = split.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


class ReferenceCutout:
    """Cutout as the reference codes write it: a numpy mask multiplied into the normalised tensor."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[1:]
        mask = np.ones((h, w), np.float32)
        y, x = np.random.randint(h), np.random.randint(w)
        mask[max(y - self.size // 2, 0): min(y + self.size // 2, h), max(x - self.size // 2, 0): min(x + self.size // 2, w)] = 0
        return image * torch.from_numpy(mask)


def reference_dataset(bundle: DataBundle) -> PILCifar:
    from torchvision import transforms as T

    transform = T.Compose([
        T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.AutoAugment(T.AutoAugmentPolicy.CIFAR10),
        T.ToTensor(), T.Normalize(bundle.mean, bundle.std), ReferenceCutout(16),
    ])
    return PILCifar(bundle.train, transform)


def reference_rate(bundle: DataBundle, device: torch.device, args: argparse.Namespace, warmup: int, steps: int) -> Rate:
    loader = torch.utils.data.DataLoader(
        reference_dataset(bundle), batch_size=args.batch_size, shuffle=True,
        num_workers=args.ref_workers, pin_memory=device.type == "cuda",
    )
    torch.manual_seed(0)
    model_cfg = longtail_config("device", args).model  # the same network as (b), (c), (d)
    model = create_model(model_cfg, bundle.num_classes, 3).to(device)  # fp32, default memory format
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()
    sync = sync_of(device)

    def endless():
        while True:
            yield from loader

    batches, rate = endless(), Rate(sync)
    for i in range(warmup + steps):
        if i == warmup:
            rate.start()
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = torch.nn.functional.cross_entropy(model(x)["logits"], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the reference codes log the running loss every step
        rate.images += len(y) if i >= warmup else 0
    return rate.stop()


# ----------------------------------------------------------------------------- parts alone (--parts)


def part_costs(bundle: DataBundle, runtime: Runtime, args: argparse.Namespace, repeats: int) -> dict[str, float]:
    """Seconds per batch of each part alone, in this process, the fastest of `repeats` interleaved tries:
    the fastest try is the one the other tenants of a shared machine disturbed least."""
    from torch.utils.data import default_collate

    device_batches = train_batches(bundle, longtail_config("device", args), runtime)
    loader_items = train_batches(bundle, longtail_config("loader", args), runtime).dataset
    reference_items = reference_dataset(bundle)
    chunk = getattr(device_batches, "chunk_batches", 1)
    cfg = longtail_config("device", args)
    model = create_model(cfg.model, bundle.num_classes, bundle.in_channels).to(runtime.device)
    optimizer = build_optimizer(model, cfg.train, fused=runtime.device.type == "cuda")
    x, y = first_device_batch(bundle, runtime, args)
    sync = sync_of(runtime.device)

    def device_part(r: int) -> None:  # one chunk of batches, drawn, gathered, augmented, normalised
        device_batches.set_epoch(r)
        batches = iter(device_batches)
        for _ in range(chunk):
            next(batches)

    def items(dataset) -> Callable[[int], None]:
        def run(r: int) -> None:
            default_collate([dataset[i] for i in range(r * args.batch_size, (r + 1) * args.batch_size)])
        return run

    def model_step(r: int) -> None:
        loss = torch.nn.functional.cross_entropy(model(x)["logits"], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    parts = {"device data": (device_part, chunk), "loader data": (items(loader_items), 1),
             "reference data": (items(reference_items), 1), "model step": (model_step, 1)}
    best = {name: math.inf for name in parts}
    for r in range(repeats):
        for name, (run, batches) in parts.items():
            # data parts on one intra-op thread, as in DataLoader workers; the model step on all threads
            threads = host_ops_on_one_thread(torch.device("cpu")) if name != "model step" else nullcontext()
            sync()
            start = time.perf_counter()
            with threads:
                run(r)
            sync()
            best[name] = min(best[name], (time.perf_counter() - start) / batches)
    return best


def print_parts(costs: dict[str, float]) -> None:
    step = costs["model step"]
    print("per batch, each part alone (fastest of the tries; data parts on one core, the model on all threads):")
    for name, seconds in costs.items():
        print(f"  {name:15s} {1000 * seconds:8.1f} ms")
    print(f"  serial estimate of (c)/(d): {step / (step + costs['device data']):.3f}   "
          f"(the data of (a) and (b) runs in worker processes beside the model)")


# ----------------------------------------------------------------------------- the 200-epoch run


def full_run(args: argparse.Namespace) -> tuple[float, float]:
    """engine.fit end to end on synthetic CIFAR-100-LT: (wall seconds, training images/s over the run)."""
    from longtail.engine import fit

    register_synthetic_dataset()
    cfg = load_config(overrides=[
        f"dataset.name={SYNTHETIC}", "dataset.val_source=test_holdout", "dataset.val_per_class=20",
        f"device={args.device}", "model.name=resnet32", f"train.batch_size={args.batch_size}", "train.progress=false",
        "data.pipeline=device", f"train.epochs={args.full_epochs}", "train.schedule=cosine", *GALA_AUGMENT, *args.set,
    ])
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        fit(cfg, Path(out) / "run")
        sync_of(torch.device(args.device))()
        seconds = time.perf_counter() - start
    images = args.full_epochs * sum(long_tailed_counts(SPEC["n_max"], SPEC["num_classes"], 100.0))
    return seconds, images / seconds


# ----------------------------------------------------------------------------- main


def sync_of(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds (CPU: a few minutes)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, help="timed steps per measurement (default: by device and --quick)")
    parser.add_argument("--warmup", type=int, help="untimed steps before (default: by device and --quick)")
    parser.add_argument("--rounds", type=int, help="interleaved repetitions, the best kept (default 2)")
    parser.add_argument("--workers", type=int, help="DataLoader workers of (b) (default: 2 on CPU, 8 on CUDA)")
    parser.add_argument("--ref-workers", type=int, help="DataLoader workers of (a) (default: as --workers)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for (b), (c), (d) and the full run, e.g. train.compile=true")
    parser.add_argument("--parts", type=int, metavar="TRIES", default=0,
                        help="also time each part alone per batch (device data, loader data, reference data, model "
                             "step), the fastest of TRIES interleaved tries")
    parser.add_argument("--parts-only", action="store_true", help="with --parts: only that")
    parser.add_argument("--full-run", action="store_true", help="also train 200 epochs end to end (for a GPU)")
    parser.add_argument("--full-epochs", type=int, default=200)
    parser.add_argument("--markdown", help="also write the figures to this Markdown file")
    parser.add_argument("--note", default="", help="a remark for the Markdown file (e.g. that the machine was shared)")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is visible")
    steps_per_epoch = -(-sum(long_tailed_counts(SPEC["n_max"], SPEC["num_classes"], 100.0)) // args.batch_size)
    if cuda:  # whole epochs: on CUDA the device pipeline augments most of an epoch at once
        args.warmup = steps_per_epoch if args.warmup is None else args.warmup
        args.steps = (1 if args.quick else 2) * steps_per_epoch if args.steps is None else args.steps
    else:  # whole chunks of the device pipeline (it augments several batches at once), the same for all four
        chunk = max(1, CHUNK_IMAGES["cpu"] // args.batch_size)
        args.warmup = chunk if args.warmup is None else args.warmup
        args.steps = (1 if args.quick else 3) * chunk if args.steps is None else args.steps
    args.rounds = args.rounds or 2
    args.workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if cuda else 2)
    args.ref_workers = args.ref_workers if args.ref_workers is not None else args.workers
    return args


NAMES = {
    "reference": "(a) reference-style loop (PIL, DataLoader, fp32)",
    "loader": "(b) longtail data.pipeline=loader",
    "device": "(c) longtail default (data.pipeline=device)",
    "ceiling_fp32": "(d) model alone on a fixed batch, fp32 NCHW",
    "ceiling": "(e) model alone on a fixed batch, as (c)",
}
FP32_NCHW = ["train.amp=false", "train.channels_last=false"]


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    runtime = Runtime(device)
    bundle = synthetic_bundle()
    load_before = os.getloadavg()[0]
    model_name = longtail_config("device", args).model.name
    print(f"machine: {machine_line(device)}; torch {torch.__version__}; load average {load_before:.2f}")
    print(f"{model_name}, batch {args.batch_size}, {len(bundle.train)} synthetic 3x32x32 images (CIFAR-100-LT IF100 counts), "
          "crop+flip+AutoAugment+Cutout16")
    costs = None
    if args.parts:
        costs = part_costs(bundle, runtime, args, args.parts)
        print_parts(costs)
    if args.parts_only:
        return
    print(f"{args.warmup} warm-up + {args.steps} timed steps per measurement, best of {args.rounds} interleaved rounds")
    fixed = first_device_batch(bundle, runtime, args)
    measures: dict[str, Callable[[], Rate]] = {
        "ceiling": lambda: longtail_rate(longtail_config("device", args), bundle, runtime, args.warmup, args.steps, fixed),
        "ceiling_fp32": lambda: longtail_rate(longtail_config("device", args, FP32_NCHW), bundle, runtime, args.warmup,
                                              args.steps, fixed),
        "device": lambda: longtail_rate(longtail_config("device", args), bundle, runtime, args.warmup, args.steps),
        "loader": lambda: longtail_rate(longtail_config("loader", args), bundle, runtime, args.warmup, args.steps),
        "reference": lambda: reference_rate(bundle, device, args, args.warmup, args.steps),
    }
    rates: dict[str, list[Rate]] = {name: [] for name in measures}
    for r in range(args.rounds):
        for name, measure in measures.items():
            rate = measure()
            rates[name].append(rate)
            print(f"  round {r + 1}  {name:9s} {rate.per_s:9.1f} images/s  {rate.per_cpu_s:8.1f} images/CPU-s", flush=True)
    best = {name: max(r.per_s for r in values) for name, values in rates.items()}
    best_cpu = {name: max(r.per_cpu_s for r in values) for name, values in rates.items()}
    for name, label in NAMES.items():
        print(f"{label:50s} {best[name]:9.1f} images/s ({best[name] / best['ceiling']:.2f} of (e))  "
              f"{best_cpu[name]:8.1f} images/CPU-s ({best_cpu[name] / best_cpu['ceiling']:.2f} of (e))")
    full = None
    if args.full_run:
        full = full_run(args)
        print(f"full run: {args.full_epochs} epochs end to end in {full[0]:.1f} s, {full[1]:.0f} training images/s "
              f"({full[1] / best['ceiling']:.2f} of the ceiling)")
    if args.markdown:
        write_markdown(Path(args.markdown), args, device, model_name, rates, full, (load_before, os.getloadavg()[0]))
    print(f"per CPU-second: c/a = {best_cpu['device'] / best_cpu['reference']:.2f}, "
          f"c/e = {best_cpu['device'] / best_cpu['ceiling']:.2f}; wall clock: c/b = {best['device'] / best['loader']:.2f}, "
          f"e/d = {best['ceiling'] / best['ceiling_fp32']:.2f} (the fast path's gain on the model alone)")
    print(f"speedup_vs_reference={best['device'] / best['reference']:.2f} fraction_of_ceiling={best['device'] / best['ceiling']:.2f}")


def write_markdown(path: Path, args: argparse.Namespace, device: torch.device, model_name: str,
                   rates: dict[str, list[Rate]], full: Optional[tuple[float, float]], load: tuple[float, float]) -> None:
    best = {name: max(r.per_s for r in values) for name, values in rates.items()}
    best_cpu = {name: max(r.per_cpu_s for r in values) for name, values in rates.items()}
    lines = [
        f"# Training throughput, {args.device.upper()}", "",
        f"- command: `python benchmarks/throughput.py {' '.join(sys.argv[1:])}`",
        f"- machine: {machine_line(device)}",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        f"- {model_name}, batch {args.batch_size}, synthetic CIFAR-100-LT IF100 (10847 images 3x32x32), "
        "crop + flip + AutoAugment (CIFAR-10 policy) + Cutout 16",
        f"- {args.warmup} warm-up + {args.steps} timed steps per measurement, best of {args.rounds} interleaved rounds; "
        f"DataLoader workers: (a) {args.ref_workers}, (b) {args.workers}",
        f"- 1-minute load average {load[0]:.2f} at the start, {load[1]:.2f} at the end" + (f"; {args.note}" if args.note else ""),
        "",
        "| pipeline | images/s (best) | images/s, each round | fraction of (e) | images/CPU-s (best) | fraction of (e) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for key, label in NAMES.items():
        rounds = ", ".join(f"{r.per_s:.1f}" for r in rates[key])
        lines.append(f"| {label} | {best[key]:.1f} | {rounds} | {best[key] / best['ceiling']:.2f} | "
                     f"{best_cpu[key]:.1f} | {best_cpu[key] / best_cpu['ceiling']:.2f} |")
    lines += [
        "", "CPU-seconds count this process and its DataLoader workers.", "",
        f"Wall clock: `speedup_vs_reference={best['device'] / best['reference']:.2f} "
        f"fraction_of_ceiling={best['device'] / best['ceiling']:.2f}`; per CPU-second: c/a = "
        f"{best_cpu['device'] / best_cpu['reference']:.2f}, c/e = {best_cpu['device'] / best_cpu['ceiling']:.2f}; "
        f"the fast path's gain on the model alone e/d = {best['ceiling'] / best['ceiling_fp32']:.2f}.",
    ]
    if full is not None:
        lines += ["", f"Full run: {args.full_epochs} epochs end to end in {full[0]:.1f} s, {full[1]:.0f} training images/s "
                      f"({full[1] / best['ceiling']:.2f} of (e))."]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
