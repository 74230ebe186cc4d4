"""How long the 200-epoch CIFAR-100-LT recipe takes here, from a few timed epochs (not a test).

Synthetic data of CIFAR-100-LT's shape (10,847 training images of 3x32x32 at imbalance factor 100, 100
classes; throughput.py's `synthetic_cifar100_lt`), ResNet-32, batch 128, the GALA recipe's augmentation,
trained by `engine.fit` exactly as `longtail train` runs it (validation and checkpoints every epoch, the
final test). Two runs, of 2 and of N epochs, share every start-up and final cost, so their difference
is N - 2 whole epochs and the estimate is

    T(200) = T(2) + (T(N) - T(2)) / (N - 2) x 198

Writes a JSON record.

  python benchmarks/cifar_lt_epochs.py --device cuda --epochs 8 --out result.json
  python benchmarks/cifar_lt_epochs.py --device cpu --tiny --out result.json     # seconds: checks it runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # benchmark this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from longtail.config import load_config  # noqa: E402
from longtail.engine import fit  # noqa: E402
from machine import machine_line  # noqa: E402
from throughput import GALA_AUGMENT, SYNTHETIC, register_synthetic_dataset  # noqa: E402

RECIPE_EPOCHS = 200


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the longer run (at least 3; default 8)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--tiny", action="store_true", help="ResNet-8 on 10 images per class at most")
    parser.add_argument("--out", required=True, help="the JSON record to write")
    args = parser.parse_args(argv)
    if args.epochs < 3:
        parser.error("--epochs must be at least 3 (the estimate is the difference to a 2-epoch run)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA GPU is visible")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    # --tiny: 10 training images per class at most (n_max), and 5 test images per class (2 of them held out for val)
    register_synthetic_dataset(train_per_class=10, test_per_class=5) if args.tiny else register_synthetic_dataset()
    tiny = ["model.name=resnet8", "dataset.n_max=10", "dataset.imbalance_factor=5", "dataset.val_per_class=2",
            "eval.batch_size=512", "train.amp=false"] if args.tiny else []
    short, seconds, rows = 2, {}, []
    for epochs in (short, args.epochs):
        cfg = load_config(overrides=[
            f"dataset.name={SYNTHETIC}", "dataset.val_source=test_holdout", "dataset.val_per_class=20",
            f"device={args.device}", "model.name=resnet32", f"train.batch_size={args.batch_size}", "train.progress=false",
            "data.pipeline=device", f"train.epochs={epochs}", "train.schedule=cosine", *GALA_AUGMENT, *tiny,
        ])
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            fit(cfg, Path(out) / "run")
            if args.device == "cuda":
                torch.cuda.synchronize()
            seconds[epochs] = time.perf_counter() - start
            rows = [json.loads(line) for line in (Path(out) / "run" / "epochs.jsonl").read_text().splitlines()]
    per_epoch = (seconds[args.epochs] - seconds[short]) / (args.epochs - short)
    estimate = seconds[short] + per_epoch * (RECIPE_EPOCHS - short)
    record = {
        "machine": machine_line(torch.device(args.device)), "torch": torch.__version__,
        "model": cfg.model.name, "batch_size": cfg.train.batch_size, "tiny": args.tiny,
        "run_seconds": {str(k): v for k, v in seconds.items()}, "seconds_per_epoch": per_epoch,
        "training_images_per_s_median": statistics.median(row["images_per_s"] for row in rows[1:]),
        "estimated_200_epochs_s": estimate,
        "command": "python benchmarks/cifar_lt_epochs.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    if per_epoch <= 0:
        print(f"the {args.epochs}-epoch run was not slower than the {short}-epoch one: the difference is noise; raise --epochs")
    print(f"{short} epochs in {seconds[short]:.1f} s, {args.epochs} in {seconds[args.epochs]:.1f} s: {per_epoch:.2f} s per "
          f"epoch; 200 epochs estimated at {estimate / 60:.1f} min")

if __name__ == "__main__":
    main()
