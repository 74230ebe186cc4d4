"""Images per second of the large-scale JPEG input pipeline, per core and in total (not a test).

On synthetic JPEGs at ImageNet's and iNaturalist's typical sizes (500x375 and 800x600, quality 90), with
one loader process per core (1 process, then every core), four rows per image size:

  (a) decode           Pillow's full decode to RGB (longtail's `decode`), nothing else
  (b) reference        torchvision's reference recipe on PIL images: RandomResizedCrop, flip, ColorJitter,
                       ToTensor, Normalize (float32 out)
  old longtail before  ImageList decode + image_train_transform (the pipeline before the crop-box decode)
  (c) longtail         the pipeline `longtail train` runs for the ImageNet-LT / iNat configs, the part
                       its DataLoader workers do: crop-box decode to uint8, batches of 64 stacked (colour
                       jitter and normalisation run on the training device, batched)
  (c) + finish         with --device cpu: the same plus the jitter and normalisation, on the same core
  (c) with Pillow      when simplejpeg (the `jpeg` extra) is installed: (c) decoded by Pillow instead

The augmentation is the one the config sets (configs/imagenet_lt/ce_resnet50.yaml for 500x375,
configs/inat2018/ce_resnet50.yaml for 800x600: 224 px, crop, flip, ColorJitter 0.4). With --device cuda
two more rows run: the device's own finishing rate, and (c) end to end, a DataLoader with one worker per
core feeding the GPU (uint8 through pinned memory, non-blocking). The last line is
`pipeline_vs_decode=<c/a> pipeline_vs_reference=<c/b>` per core, one process, at 500x375.

`--train` instead times training end to end on an ImageNet-LT-shaped synthetic list (ResNet-18, 1000
classes): `--pipeline old`, `new` or `both` (the two in one run, interleaved rounds).

  python benchmarks/image_pipeline.py                       # CPU: both sizes, 1 process and every core
  python benchmarks/image_pipeline.py --device cuda         # plus the device rows
  python benchmarks/image_pipeline.py --train --pipeline both --size 224 --workers 2
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # benchmark this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))  # machine.py, throughput.py

from longtail.config import Config, load_config  # noqa: E402
from longtail.data import crop_decode  # noqa: E402
from longtail.data.crop_decode import decoder_name  # noqa: E402
from longtail.data.image_batches import CroppedImages, ImageListPipeline, finish  # noqa: E402
from longtail.data.image_list import IMAGENET_MEAN, IMAGENET_STD, Entries, ImageList, decode  # noqa: E402
from longtail.data.loader import LoaderPipeline, TransformedImages  # noqa: E402
from longtail.data.pipeline import cropped_train_images  # noqa: E402
from longtail.data.samplers import EpochSampler, SeededSampler, sample_seed  # noqa: E402
from longtail.data.transforms import image_train_transform  # noqa: E402
from longtail.input_spec import InputSpec  # noqa: E402
from machine import machine_line  # noqa: E402

SIZES = {"imagenet_lt": (500, 375), "inat2018": (800, 600)}  # typical photo sizes of the two datasets
CONFIGS = {"imagenet_lt": "configs/imagenet_lt/ce_resnet50.yaml", "inat2018": "configs/inat2018/ce_resnet50.yaml"}
ROWS = {
    "decode": "(a) decode only (Pillow, full size, RGB)",
    "reference": "(b) torchvision reference recipe (PIL RandomResizedCrop, flip, ColorJitter, ToTensor, Normalize)",
    "old": "old longtail: ImageList decode + image_train_transform (before)",
    "longtail": "(c) longtail: crop-box decode to uint8 batches, the workers' share (after)",
    "longtail+finish": "(c) plus the device's share (jitter, normalise) on the same CPU core",
    "longtail/pillow": "(c) with Pillow's decoder (draft) in place of simplejpeg",
}
BATCH = 64  # images per batch in (c)'s stack-and-finish


# ----------------------------------------------------------------------------- synthetic photos


def make_jpegs(folder: Path, width: int, height: int, count: int, seed: int = 0) -> list[str]:
    """`count` JPEGs (quality 90) with photo-like content: smooth colour fields with fine texture, so the
    entropy decoder has ImageNet's kind of work (about 60-90 KB at 500x375)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(count):
        coarse = Image.fromarray((rng.random((height // 12 + 2, width // 12 + 2, 3)) * 255).astype(np.uint8))
        pixels = np.asarray(coarse.resize((width, height), Image.BICUBIC)).astype(np.int16)
        pixels += rng.integers(-12, 13, pixels.shape, dtype=np.int16)
        path = folder / f"img_{k:04d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)
        paths.append(str(path))
    return paths


def image_list(folder: Path, paths: list[str], classes: int = 1000) -> ImageList:
    entries = Entries(source="synthetic", unit="line", paths=[os.path.relpath(p, folder) for p in paths],
                      labels=[k % classes for k in range(len(paths))], numbers=list(range(1, len(paths) + 1)))
    return ImageList(folder, entries)


def dataset_config(name: str, overrides: list[str] = ()) -> Config:
    return load_config(str(ROOT / CONFIGS[name]), ["dataset.root=.", *overrides])


# ----------------------------------------------------------------------------- one loader process's work


def reference_transform(cfg: Config) -> Callable:
    from torchvision import transforms as T

    j = cfg.data.color_jitter
    return T.Compose([T.RandomResizedCrop(cfg.data.image_size), T.RandomHorizontalFlip(),
                      T.ColorJitter(j, j, j), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def one_item(row: str, images: ImageList, cfg: Config) -> Callable[[int, int], object]:
    """The per-image work of a row: f(index, key seed)."""
    if row == "decode":
        return lambda i, seed: decode(images.full_path(i))
    if row == "reference":
        transform = reference_transform(cfg)

        def reference(i: int, seed: int):
            with Image.open(images.full_path(i)) as image:
                return transform(image.convert("RGB"))
        return reference
    if row == "old":
        dataset = TransformedImages(images, image_train_transform(cfg.data, imagenet_spec(cfg)))
        return lambda i, seed: dataset[(i, seed)]
    raise ValueError(row)


def loader_process(row: str, folder: str, paths: list[str], name: str, images_to_time: int,
                   warmup: int) -> tuple[int, float]:
    """(images, seconds) of one process running `row` over its images, after `warmup` untimed ones."""
    torch.set_num_threads(1)
    cfg = dataset_config(name)
    images = image_list(Path(folder), paths)
    n = len(images)
    if row.startswith("longtail"):
        finish_on_cpu = row == "longtail+finish"
        if row == "longtail/pillow":
            crop_decode.simplejpeg = None  # this process only
        dataset = cropped_train_images_of(images, cfg)
        mean, std = imagenet_spec(cfg).stats(torch.device("cpu"))
        jitter = dataset.augment.jitter > 0

        def batch(start: int) -> int:
            items = [dataset[((start + k) % n, sample_seed(0, 0, start + k))] for k in range(BATCH)]
            x, params = torch.stack([item[0] for item in items]), torch.stack([item[2] for item in items])
            if finish_on_cpu:
                finish(x, params, jitter, mean, std)
            return BATCH

        done = 0
        while done < warmup:
            done += batch(done)
        start, timed = time.perf_counter(), 0
        while timed < images_to_time:
            timed += batch(done + timed)
        return timed, time.perf_counter() - start
    item = one_item(row, images, cfg)
    for k in range(warmup):
        item(k % n, sample_seed(0, 0, k))
    start = time.perf_counter()
    for k in range(images_to_time):
        item((warmup + k) % n, sample_seed(0, 0, warmup + k))
    return images_to_time, time.perf_counter() - start


def imagenet_spec(cfg: Config) -> InputSpec:
    """ImageNet's statistics at data.image_size, longtail's 256/224 evaluation resize."""
    return InputSpec(3, cfg.data.image_size, IMAGENET_MEAN, IMAGENET_STD)


def cropped_train_images_of(images: ImageList, cfg: Config) -> CroppedImages:
    """The training dataset `longtail train` builds for this config (pipeline.cropped_train_images)."""
    from longtail.data.base import DataBundle

    bundle = DataBundle(name=cfg.dataset.name, train=images, val=None, test=images, class_counts=[1], num_classes=1000,
                        in_channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD, in_memory=False, input=imagenet_spec(cfg))
    return cropped_train_images(bundle, cfg)


def rate(row: str, folder: Path, paths: list[str], name: str, processes: int, images_each: int, warmup: int,
         in_process: bool = False) -> float:
    """Total images/s of `processes` loader processes running at once, each on its own share of the files.
    `in_process` (--tiny, one process): the loader runs in this process instead, its settings restored after."""
    if in_process and processes == 1:
        threads, decoder = torch.get_num_threads(), crop_decode.simplejpeg
        try:
            images, seconds = loader_process(row, str(folder), paths, name, images_each, warmup)
        finally:
            torch.set_num_threads(threads)
            crop_decode.simplejpeg = decoder
        return images / seconds
    shares = [paths[k::processes] or paths for k in range(processes)]
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("fork")) as pool:
        jobs = [pool.submit(loader_process, row, str(folder), share, name, images_each, warmup)
                for share in shares]
        results = [job.result() for job in jobs]
    return sum(images / seconds for images, seconds in results)


# ----------------------------------------------------------------------------- on the device


def device_rates(folder: Path, paths: list[str], name: str, device: torch.device, workers: int, batches: int) -> dict[str, float]:
    """The device's finishing rate alone, and (c) end to end into the device with `workers` DataLoader workers."""
    cfg = dataset_config(name)
    images = image_list(folder, paths)
    dataset = cropped_train_images_of(images, cfg)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = torch.randint(0, 256, (BATCH, 3, cfg.data.image_size, cfg.data.image_size), dtype=torch.uint8, device=device)
    params = torch.stack([dataset[(0, sample_seed(0, 0, k))][2] for k in range(BATCH)]).to(device)
    mean, std = imagenet_spec(cfg).stats(device)
    for _ in range(3):
        finish(x, params, True, mean, std)
    sync()
    start = time.perf_counter()
    for _ in range(20):
        finish(x, params, True, mean, std)
    sync()
    finish_rate = 20 * BATCH / (time.perf_counter() - start)
    pipeline = ImageListPipeline(dataset, SeededSampler(EpochSampler(images.targets, 0)), BATCH, 0, device,
                                 imagenet_spec(cfg), workers)
    warm, steps, seen, start, epoch = 2, 0, 0, 0.0, 0  # two batches untimed: workers started and warm
    while steps < warm + batches:
        pipeline.set_epoch(epoch)
        for xb, _ in pipeline:
            steps += 1
            if steps == warm:
                sync()
                start = time.perf_counter()
            elif steps > warm:
                seen += len(xb)
            if steps == warm + batches:
                break
        epoch += 1
    sync()
    return {"device finish": finish_rate, "(c) end to end into the device": seen / (time.perf_counter() - start)}


# ----------------------------------------------------------------------------- training end to end


def training_rate(pipeline_name: str, folder: Path, paths: list[str], args: argparse.Namespace) -> float:
    """Training images/s of ResNet-18 (1000 classes) at --size on the list, fed by the old or the new pipeline."""
    import torchvision

    from throughput import Rate, Timed, sync_of
    from longtail.distributed import Runtime
    from longtail.engine import train_one_epoch
    from longtail.losses import create_loss
    from longtail.optim import build_optimizer, build_scheduler

    device = torch.device(args.device)
    runtime = Runtime(device)
    cfg = dataset_config("imagenet_lt", [f"data.image_size={args.size}", f"data.num_workers={args.workers}",
                                         f"train.batch_size={args.batch_size}", "train.progress=false", f"device={args.device}"])
    images = image_list(folder, paths)
    sampler = SeededSampler(EpochSampler(images.targets, 0))
    if pipeline_name == "new":
        batches = ImageListPipeline(cropped_train_images_of(images, cfg), sampler, args.batch_size, 0, device,
                                    imagenet_spec(cfg), args.workers)
    else:
        dataset = TransformedImages(images, image_train_transform(cfg.data, imagenet_spec(cfg)))
        batches = LoaderPipeline(dataset, sampler, args.batch_size, 0, num_workers=args.workers, pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000).to(device)
    criterion = create_loss(cfg.loss, [1] * 1000).to(device)
    timed = Timed(batches, args.train_warmup, args.train_steps, sync_of(device))
    optimizer = build_optimizer(model, cfg.train, fused=device.type == "cuda")
    scheduler = build_scheduler(optimizer, cfg.train, len(timed))

    class Logits(torch.nn.Module):  # the engine reads output[criterion.input_key]
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.inner(x)}

    train_one_epoch(Logits(model), criterion, timed, optimizer, scheduler, cfg, runtime, 0, show_progress=False)
    rate: Rate = timed.rate
    return rate.per_s


# ----------------------------------------------------------------------------- main


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--processes", help="comma-separated loader process counts (default: 1 and every core)")
    parser.add_argument("--images", type=int, default=300, help="timed images per process and row (default 300)")
    parser.add_argument("--warmup", type=int, default=64, help="untimed images per process first (default 64)")
    parser.add_argument("--files", type=int, default=200, help="synthetic JPEGs per size (default 200)")
    parser.add_argument("--sizes", default="imagenet_lt,inat2018", help="which of imagenet_lt (500x375), inat2018 (800x600)")
    parser.add_argument("--tiny", action="store_true", help="a few small images: checks that everything runs, in seconds")
    parser.add_argument("--out", help="write the record (Markdown) here; default benchmarks/results/image_pipeline_<device>.md")
    parser.add_argument("--note", default="", help="a remark for the record (e.g. that the machine was shared)")
    parser.add_argument("--train", action="store_true", help="time training end to end instead (ResNet-18, ImageNet-LT shape)")
    parser.add_argument("--pipeline", default="both", choices=["old", "new", "both"], help="--train: which input pipeline")
    parser.add_argument("--size", type=int, default=224, help="--train: the model's input size")
    parser.add_argument("--batch-size", type=int, default=64, help="--train: batch size")
    parser.add_argument("--workers", type=int, help="DataLoader workers (--train and the device rows; default: every core)")
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--train-warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="--train: interleaved rounds, the best kept")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is visible")
    cores = os.cpu_count() or 1
    args.workers = args.workers if args.workers is not None else cores
    args.processes = sorted({int(p) for p in args.processes.split(",")}) if args.processes else sorted({1, cores})
    unknown = set(args.sizes.split(",")) - set(SIZES)
    if unknown:
        parser.error(f"--sizes: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SIZES)}")
    args.sizes = args.sizes.split(",")
    if args.tiny:
        args.files, args.images, args.warmup, args.processes = 8, 8, 2, [1]
        args.train_steps, args.train_warmup, args.rounds, args.batch_size, args.size = 2, 1, 1, 4, 32
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    cores = os.cpu_count() or 1
    header = [f"machine: {machine_line(device)}", f"loader CPU: {machine_line(torch.device('cpu'))}",
              f"torch {torch.__version__}, Python {platform.python_version()}, decoder of (c): {decoder_name()}",
              f"1-minute load average at the start: {os.getloadavg()[0]:.2f}"]
    for line in header:
        print(line, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.train:
            lines = train_table(Path(tmp), args)
            last = lines[-1]
        else:
            lines, last = pipeline_table(Path(tmp), args, cores)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        f"image_pipeline{'_train' if args.train else ''}_{args.device}{'_tiny' if args.tiny else ''}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = ["# Image pipeline" + (" training throughput" if args.train else ""), "",
              f"- command: `python benchmarks/image_pipeline.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
              *[f"- {line}" for line in header], f"- 1-minute load average at the end: {os.getloadavg()[0]:.2f}"]
    if args.note:
        record.append(f"- note: {args.note}")
    out.write_text("\n".join(record + [""] + lines) + "\n")
    print(f"record written to {out}")
    print(last)


def pipeline_table(tmp: Path, args: argparse.Namespace, cores: int) -> tuple[list[str], str]:
    lines = ["| image size | row | processes | images/s total | images/s per core | of (a) per core |",
             "|---|---|---:|---:|---:|---:|"]
    per_core: dict[tuple[str, str, int], float] = {}
    for name in args.sizes:
        width, height = SIZES[name]
        if args.tiny:
            width, height = width // 8, height // 8
        folder = tmp / name
        paths = make_jpegs(folder, width, height, args.files)
        kb = np.mean([os.path.getsize(p) for p in paths]) / 1000
        print(f"{name}: {len(paths)} synthetic {width}x{height} JPEGs, {kb:.0f} KB on average ({CONFIGS[name]})", flush=True)
        for processes in args.processes:
            for row, label in ROWS.items():
                if row == "longtail+finish" and args.device != "cpu":
                    continue  # on CUDA the finish runs on the GPU: its own row below
                if row == "longtail/pillow" and crop_decode.simplejpeg is None:
                    continue  # (c) already is Pillow
                total = rate(row, folder, paths, name, processes, args.images, args.warmup, in_process=args.tiny)
                per_core[(name, row, processes)] = total / processes
                fraction = per_core[(name, row, processes)] / per_core[(name, "decode", processes)]
                text = (f"| {width}x{height} ({kb:.0f} KB) | {label} | {processes} | {total:.0f} | "
                        f"{total / processes:.0f} | {fraction:.2f} |")
                print(text, flush=True)
                lines.append(text)
        if args.device == "cuda":
            for label, value in device_rates(folder, paths, name, torch.device(args.device), args.workers, 20).items():
                text = f"| {width}x{height} ({kb:.0f} KB) | {label} | {args.workers} workers | {value:.0f} | | |"
                print(text, flush=True)
                lines.append(text)
    first = args.sizes[0]
    a, b, c = (per_core[(first, row, 1 if 1 in args.processes else args.processes[0])] for row in ("decode", "reference", "longtail"))
    last = f"pipeline_vs_decode={c / a:.2f} pipeline_vs_reference={c / b:.2f}"
    lines += ["", f"Per core, {'one process' if 1 in args.processes else f'{args.processes[0]} processes'}, "
                  f"{first}: `{last}`"]
    return lines, last


def train_table(tmp: Path, args: argparse.Namespace) -> list[str]:
    width, height = SIZES["imagenet_lt"] if not args.tiny else (64, 48)
    paths = make_jpegs(tmp / "train", width, height, args.files)
    names = ["old", "new"] if args.pipeline == "both" else [args.pipeline]
    lines = [f"ResNet-18 (1000 classes) at {args.size} px, batch {args.batch_size}, {args.workers} DataLoader workers, "
             f"{len(paths)} synthetic {width}x{height} JPEGs, ImageNet-LT config's augmentation; {args.train_warmup} "
             f"warm-up + {args.train_steps} timed steps, best of {args.rounds} interleaved rounds", "",
             "| pipeline | training images/s (best) | each round |", "|---|---:|---|"]
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names:
            rates[name].append(training_rate(name, tmp / "train", paths, args))
            print(f"  round {r + 1} {name}: {rates[name][-1]:.1f} training images/s", flush=True)
    for name in names:
        label = "old: ImageList decode + image_train_transform" if name == "old" else "new: crop-box decode, device finish"
        lines.append(f"| {label} | {max(rates[name]):.1f} | {', '.join(f'{v:.1f}' for v in rates[name])} |")
    if len(names) == 2:
        lines += ["", f"new_vs_old={max(rates['new']) / max(rates['old']):.2f}"]
    return lines


if __name__ == "__main__":
    main()
