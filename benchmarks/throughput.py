"""Training throughput of longtail's data pipelines against a reference-style loop (not a test).

On one model (ResNet-32), one batch size and the GALA recipe's augmentation (pad-4 crop, flip, AutoAugment
CIFAR-10 policy, Cutout 16), on synthetic CIFAR-shaped uint8 images (3x32x32) with the class counts of
CIFAR-100-LT at imbalance factor 100 (10847 images), measure training images/s of

  (a) reference  a torchvision-CIFAR-style Dataset returning PIL images, torchvision v1 PIL transforms,
                 a DataLoader with workers, an fp32 model, the loss read with .item() every step
  (b) loader     longtail, data.pipeline=loader  (engine.train_one_epoch over the real pipeline)
  (c) device     longtail, data.pipeline=device  (engine.train_one_epoch over the real pipeline)
  (d) ceiling    engine.train_one_epoch over one fixed, already normalised batch on the device

Each is timed over a fixed number of steps after a warm-up on the same iterator; every measurement is
repeated over interleaved rounds and the best round is kept (the machine may be shared). The last line is
`speedup_vs_reference=<c/a> fraction_of_ceiling=<c/d>`.

  python benchmarks/throughput.py --quick                 # CPU, a few minutes at most
  python benchmarks/throughput.py --device cuda           # whole epochs, bf16 autocast etc. as in `longtail train`
  python benchmarks/throughput.py --device cuda --full-run   # plus a 200-epoch run end to end (engine.fit)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # benchmark this checkout

from longtail.config import Config, load_config  # noqa: E402
from longtail.data import IN_MEMORY  # noqa: E402
from longtail.data.base import DataBundle, RawDataset, TensorImages  # noqa: E402
from longtail.data.cifar import CIFAR  # noqa: E402
from longtail.data.device import CHUNK_IMAGES  # noqa: E402
from longtail.data.pipeline import train_batches  # noqa: E402
from longtail.data.splits import long_tailed_counts  # noqa: E402
from longtail.distributed import Runtime  # noqa: E402
from longtail.engine import _set_determinism, train_one_epoch  # noqa: E402
from longtail.losses import create_loss  # noqa: E402
from longtail.models import create_model  # noqa: E402
from longtail.optim import build_optimizer, build_scheduler  # noqa: E402

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
    return DataBundle(SYNTHETIC, train, None, test, counts, SPEC["num_classes"], 3, SPEC["mean"], SPEC["std"])


def register_synthetic_dataset(seed: int = 0) -> None:
    """Make `dataset.name=synthetic_cifar100_lt` loadable by engine.fit: a balanced 500/100-per-class source
    that the usual long-tailed subsampling turns into CIFAR-100-LT's shape."""
    def load(root: Optional[str], download: bool) -> RawDataset:
        per_class = [SPEC["n_max"]] * SPEC["num_classes"]
        return RawDataset(synthetic_split(per_class, seed), synthetic_split([100] * SPEC["num_classes"], seed + 1),
                          SPEC["num_classes"], SPEC["n_max"], SPEC["mean"], SPEC["std"])

    IN_MEMORY[SYNTHETIC] = load


# ----------------------------------------------------------------------------- timing


class Timed:
    """TrainBatches around another: `warmup` batches, then `steps` timed ones (starting new epochs of the
    inner pipeline when it runs out). The clock starts when batch `warmup` is asked for and stops when the
    consumer asks for the batch after the last, i.e. once the last step has run; on CUDA it synchronises
    at both ends."""

    def __init__(self, inner, warmup: int, steps: int, sync: Callable[[], None]):
        self.inner, self.warmup, self.steps, self.sync = inner, warmup, steps, sync
        self.epoch, self.images, self.seconds = 0, 0, float("nan")

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
        self.images = 0
        for i in range(self.warmup + self.steps):
            if i == self.warmup:
                self.sync()
                start = time.perf_counter()
            batch = next(batches)
            if i >= self.warmup:
                self.images += len(batch[1])
            yield batch
        self.sync()
        self.seconds = time.perf_counter() - start

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


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


def longtail_config(pipeline: str, args: argparse.Namespace) -> Config:
    return load_config(overrides=[
        f"device={args.device}", "model.name=resnet32", f"train.batch_size={args.batch_size}", "train.progress=false",
        f"data.pipeline={pipeline}", f"data.num_workers={args.workers}", *GALA_AUGMENT, *args.set,
    ])


def longtail_rate(cfg: Config, bundle: DataBundle, runtime: Runtime, warmup: int, steps: int,
                  fixed: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> float:
    """Images/s of engine.train_one_epoch, set up as engine.fit sets it up."""
    _set_determinism(cfg, runtime.device)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, bundle.num_classes, bundle.in_channels).to(runtime.device)
    if runtime.device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = create_loss(cfg.loss, bundle.class_counts).to(runtime.device)
    pipeline = train_batches(bundle, cfg, runtime)
    batches = Timed(FixedBatch(*fixed, len(pipeline)) if fixed else pipeline, warmup, steps, sync_of(runtime.device))
    optimizer = build_optimizer(model, cfg.train, fused=runtime.device.type == "cuda")
    scheduler = build_scheduler(optimizer, cfg.train, len(pipeline))
    train_model = torch.compile(model) if cfg.train.compile else model
    batches.set_epoch(0)
    train_one_epoch(train_model, criterion, batches, optimizer, scheduler, cfg, runtime, 0, show_progress=False)
    return batches.images_per_s


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


def reference_rate(bundle: DataBundle, device: torch.device, args: argparse.Namespace, warmup: int, steps: int) -> float:
    from torchvision import transforms as T

    transform = T.Compose([
        T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.AutoAugment(T.AutoAugmentPolicy.CIFAR10),
        T.ToTensor(), T.Normalize(bundle.mean, bundle.std), ReferenceCutout(16),
    ])
    loader = torch.utils.data.DataLoader(
        PILCifar(bundle.train, transform), batch_size=args.batch_size, shuffle=True,
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

    batches, images, start = endless(), 0, 0.0
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            start = time.perf_counter()
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = torch.nn.functional.cross_entropy(model(x)["logits"], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the reference codes log the running loss every step
        images += len(y) if i >= warmup else 0
    sync()
    return images / (time.perf_counter() - start)


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


def machine_line(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    return f"CPU {model}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"


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


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    runtime = Runtime(device)
    bundle = synthetic_bundle()
    load_before = os.getloadavg()[0]
    print(f"machine: {machine_line(device)}; torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}")
    print(f"{longtail_config('device', args).model.name}, batch {args.batch_size}, {len(bundle.train)} synthetic 3x32x32 images (CIFAR-100-LT IF100 counts), "
          f"crop+flip+AutoAugment+Cutout16; {args.warmup} warm-up + {args.steps} timed steps, best of {args.rounds} rounds")
    fixed = first_device_batch(bundle, runtime, args)
    measures: dict[str, Callable[[], float]] = {
        "ceiling": lambda: longtail_rate(longtail_config("device", args), bundle, runtime, args.warmup, args.steps, fixed),
        "device": lambda: longtail_rate(longtail_config("device", args), bundle, runtime, args.warmup, args.steps),
        "loader": lambda: longtail_rate(longtail_config("loader", args), bundle, runtime, args.warmup, args.steps),
        "reference": lambda: reference_rate(bundle, device, args, args.warmup, args.steps),
    }
    rates: dict[str, list[float]] = {name: [] for name in measures}
    for r in range(args.rounds):
        for name, measure in measures.items():
            rates[name].append(measure())
            print(f"  round {r + 1}  {name:9s} {rates[name][-1]:9.1f} images/s", flush=True)
    best = {name: max(values) for name, values in rates.items()}
    labels = {"reference": "(a) reference", "loader": "(b) longtail loader", "device": "(c) longtail device",
              "ceiling": "(d) model alone"}
    for name in ("reference", "loader", "device", "ceiling"):
        print(f"{labels[name]:22s} {best[name]:9.1f} images/s  ({best[name] / best['ceiling']:.2f} of the ceiling)")
    full = None
    if args.full_run:
        seconds, rate = full_run(args)
        full = (seconds, rate)
        print(f"full run: {args.full_epochs} epochs end to end in {seconds:.1f} s, {rate:.0f} training images/s "
              f"({rate / best['ceiling']:.2f} of the ceiling)")
    if args.markdown:
        write_markdown(Path(args.markdown), args, device, best, full, (load_before, os.getloadavg()[0]), rates)
    print(f"c/a = {best['device'] / best['reference']:.2f}, c/b = {best['device'] / best['loader']:.2f}, "
          f"c/d = {best['device'] / best['ceiling']:.2f}")
    print(f"speedup_vs_reference={best['device'] / best['reference']:.2f} fraction_of_ceiling={best['device'] / best['ceiling']:.2f}")


def write_markdown(path: Path, args: argparse.Namespace, device: torch.device, best: dict[str, float],
                   full: Optional[tuple[float, float]], load: tuple[float, float], rates: dict[str, list[float]]) -> None:
    command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:])
    lines = [
        f"# Training throughput, {args.device.upper()}", "",
        f"- command: `{command}`",
        f"- machine: {machine_line(device)}",
        f"- torch {torch.__version__}, Python {platform.python_version()}",
        f"- {longtail_config('device', args).model.name}, batch {args.batch_size}, synthetic CIFAR-100-LT IF100 (10847 images 3x32x32), "
        "crop + flip + AutoAugment (CIFAR-10 policy) + Cutout 16",
        f"- {args.warmup} warm-up + {args.steps} timed steps per measurement, best of {args.rounds} interleaved rounds; "
        f"DataLoader workers: (a) {args.ref_workers}, (b) {args.workers}",
        f"- 1-minute load average {load[0]:.2f} at the start, {load[1]:.2f} at the end" + (f"; {args.note}" if args.note else ""),
        "", "| pipeline | images/s (best round) | all rounds | fraction of (d) |", "|---|---:|---|---:|",
    ]
    names = {"reference": "(a) reference-style loop (PIL, DataLoader, fp32)", "loader": "(b) longtail data.pipeline=loader",
             "device": "(c) longtail data.pipeline=device", "ceiling": "(d) model alone on a fixed batch"}
    for key, label in names.items():
        rounds = ", ".join(f"{r:.1f}" for r in rates[key])
        lines.append(f"| {label} | {best[key]:.1f} | {rounds} | {best[key] / best['ceiling']:.2f} |")
    lines += ["", f"speedup_vs_reference={best['device'] / best['reference']:.2f} "
                  f"fraction_of_ceiling={best['device'] / best['ceiling']:.2f}"]
    if full is not None:
        lines += ["", f"Full run: {args.full_epochs} epochs end to end in {full[0]:.1f} s, {full[1]:.0f} training images/s "
                      f"({full[1] / best['ceiling']:.2f} of (d))."]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
