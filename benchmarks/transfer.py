"""Transfer from a pretrained backbone on a machine without downloadable weights (not a test).

1. Pretrain a small ViT on Fashion-MNIST classes 0-4 (T-shirt, Trouser, Pullover, Dress, Coat): all 30,000 of
   their training images, balanced, cross-entropy; its last checkpoint is the "pretrained weights" file.
2. Train the long-tailed task on classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot), imbalance factor 100
   (n_max 1000: 1000, 316, 100, 32, 10 training images, so many/medium/few hold 2/2/1 classes), logit-adjusted
   loss (tau 1), each way below, SEEDS seeds; tested on the 5,000 official test images of classes 5-9:

     scratch   the same ViT from random weights, every parameter trained
     linear    the pretrained backbone frozen, the classifier trained (linear probe)
     adapter   AdaptFormer (bottleneck 8) beside each MLP block + the classifier
     lora      LoRA (rank 4, through peft) on the attention and MLP projections + the classifier
     full      every parameter trained from the pretrained weights

Every run is `longtail.engine.fit` in its own process (so its peak memory is its own): top-1 and many/medium/few
from metrics.json, seconds per epoch from epochs.jsonl (mean over epochs), peak memory (CPU: the process's peak
resident set, ru_maxrss; CUDA: torch.cuda.max_memory_allocated). The ViT (`lt_fmnist_vit`: 28 px, patch 7, width
64, 4 blocks, 4 heads, MLP 128) and the two class-subset datasets are registered in timm's and longtail's tables
by this script, in the processes it starts.

  python benchmarks/transfer.py                 # the full table (estimated 8-10 minutes on 2 idle CPU cores)
  python benchmarks/transfer.py --quick --out /tmp/transfer.md   # a check of the pipeline in a minute
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

MODEL = "lt_fmnist_vit"
SEEDS = (0, 1, 2)
WAYS: dict[str, list[str]] = {
    "scratch": ["model.finetune=full"],
    "linear": ["model.finetune=linear"],
    "adapter": ["model.finetune=adapter", "model.adapter_dim=8"],
    "lora": ["model.finetune=lora", "model.lora_rank=4"],
    "full": ["model.finetune=full"],
}
COMMON = [
    f"model.name=timm/{MODEL}", "loss.name=la", "loss.tau=1.0", "train.batch_size=128", "train.lr=0.05",
    "train.momentum=0.9", "train.weight_decay=5e-4", "train.schedule=cosine", "train.warmup_epochs=1",
    "train.warmup_start_factor=0.1", "train.select=last", "train.progress=false", "dataset.val_source=none",
    "dataset.download=false", "data.num_workers=0", "eval.batch_size=1000",
]


def register() -> None:
    """The ViT in timm's registry and the class-subset datasets registered as longtail datasets (this process)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    from longtail import catalog, register_dataset
    from longtail.data.base import RawDataset, TensorImages
    from longtail.data.fmnist import load_fmnist

    def lt_fmnist_vit(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")}
        return VisionTransformer(**{**dict(img_size=28, patch_size=7, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0), **kwargs})

    if not timm.is_model(MODEL):
        timm.models.register_model(lt_fmnist_vit)

    def classes(first: int):
        def load(root, download) -> RawDataset:
            raw = load_fmnist(root, download)

            def keep(split: TensorImages) -> TensorImages:
                mask = (split.labels >= first) & (split.labels < first + 5)
                return TensorImages(split.images[mask], split.labels[mask] - first)

            return RawDataset(keep(raw.train), keep(raw.test), num_classes=5, n_max=6000, mean=raw.mean, std=raw.std,
                              class_names=raw.class_names[first:first + 5])
        return load

    for first, name in ((0, "fmnist_0to4"), (5, "fmnist_5to9")):
        if name not in catalog.names("dataset"):
            register_dataset(name, in_memory=True, channels=1, native_size=28, given_split=False)(classes(first))


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def child(out: str, overrides: list[str]) -> None:
    """One run (in its own process): fit, then a JSON line of what the table needs."""
    register()
    from longtail.config import load_config
    from longtail.engine import fit

    cfg = load_config(None, overrides)
    metrics = fit(cfg, out)
    rows = [json.loads(line) for line in (Path(out) / "epochs.jsonl").read_text().splitlines()]
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
    print("RESULT " + json.dumps({
        "top1": metrics["top1"], "many": metrics.get("many"), "medium": metrics.get("medium"), "few": metrics.get("few"),
        "s_per_epoch": statistics.mean(r["epoch_time_s"] for r in rows), "peak_mib": peak_memory_mib(device),
    }))


def launch(out: Path, overrides: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", str(out), *overrides], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(HERE.parent / "src")})
    if proc.returncode != 0:
        raise SystemExit(f"run {out} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def mean_std(values: list[float]) -> str:
    if any(v is None for v in values):
        return "n/a"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE / "results" / "transfer_fmnist.md"))
    parser.add_argument("--runs", default="runs/transfer", help="folder of the runs (pretraining and fine-tuning)")
    parser.add_argument("--root", default=None, help="Fashion-MNIST folder (default: the dataset's standard places)")
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch each, 1000 pretraining images per class")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1:])
        return
    runs = Path(args.runs)
    seeds = SEEDS[:1] if args.quick else SEEDS
    pre_epochs, epochs = (1, 1) if args.quick else (args.pretrain_epochs, args.epochs)
    pre_per_class = 1000 if args.quick else 6000
    base = [*COMMON, f"device={args.device}"] + ([f"dataset.root={args.root}"] if args.root else [])
    start = time.time()
    pretrain = runs / "pretrain_0to4"
    if not (pretrain / "metrics.json").is_file():
        pre = launch(pretrain, [*base, "dataset.name=fmnist_0to4", "dataset.imbalance_factor=1",
                                f"dataset.n_max={pre_per_class}", "loss.name=ce", f"train.epochs={pre_epochs}"])
        print(f"pretrained on classes 0-4: top-1 {pre['top1']:.1f}, {pre['s_per_epoch']:.1f} s/epoch", flush=True)
    weights = pretrain / "checkpoints" / "last.pt"
    results: dict[str, list[dict[str, Any]]] = {}
    for way, overrides in WAYS.items():
        for seed in seeds:
            source = [] if way == "scratch" else [f"model.pretrained={weights}"]
            result = launch(runs / f"{way}_seed{seed}", [
                *base, "dataset.name=fmnist_5to9", "dataset.imbalance_factor=100", "dataset.n_max=1000",
                f"dataset.seed={seed}", f"seed={seed}", f"train.epochs={epochs}", *source, *overrides])
            results.setdefault(way, []).append(result)
            print(f"{way} seed {seed}: {json.dumps(result)}", flush=True)
    from machine import machine_line

    command = "python benchmarks/transfer.py " + " ".join(sys.argv[1:])
    lines = [
        "# Transfer on Fashion-MNIST: pretrained on classes 0-4, long-tailed (IF 100) on classes 5-9",
        "",
        f"Command: `{command.strip()}` ({time.time() - start:.0f} s in all)  ",
        f"Machine: {machine_line(torch.device(args.device))}, torch {torch.__version__}  ",
        f"Pretraining: {pre_epochs} epochs of CE on {5 * pre_per_class:,} balanced training images of classes 0-4 (the ViT of "
        f"benchmarks/transfer.py). Fine-tuning: {epochs} epochs, LA loss (tau 1), SGD lr 0.05 cosine with 1 warm-up "
        f"epoch, batch 128, weight decay 5e-4; n_max 1000 (1000/316/100/32/10 training images), last epoch tested on "
        f"the 5,000 test images of classes 5-9. Mean ± std over seeds {', '.join(map(str, seeds))} (dataset.seed = seed).",
        "",
        "| way | top-1 | many (2 classes) | medium (2) | few (1) | s / epoch | peak memory (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for way, rows in results.items():
        cells = [mean_std([r[k] for r in rows]) for k in ("top1", "many", "medium", "few")]
        speed = statistics.mean(r["s_per_epoch"] for r in rows)
        peak = max(r["peak_mib"] for r in rows)
        lines.append(f"| {way} | {' | '.join(cells)} | {speed:.2f} | {peak:.0f} |")
    lines += ["", "s / epoch: mean training time of an epoch (evaluation excluded); peak memory: the run's process "
              "peak resident set (CPU) or peak allocated GPU memory, the largest over seeds.", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    (Path(args.out).with_suffix(".json")).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
