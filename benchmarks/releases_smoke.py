"""A short CPU run of every config of the two logit-adjustment releases (google_*.yaml, mmpretrain_*.yaml) on
generated data, to show that they run: google's configs on fake TFRecord files in the release's format,
mmpretrain's on fake CIFAR pickles. Each config keeps its model, loss, post-hoc correction, schedule shape
and normalisation; only the epochs, the batch size (the fake files are small) and the data change. The
accuracies mean nothing (random images with a class-dependent brightness), and nothing here reproduces the
published numbers (no CIFAR, no GPU).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/releases_smoke.py            # all 30 configs
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/releases_smoke.py --only google_loss --epochs 1

Writes benchmarks/results/releases_smoke.md (or --out): one row per config, the final epoch's test top-1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the generated-data writers live with the tests

from conftest import write_fake_cifar  # noqa: E402
from fake_tfrecords import write_fake_release  # noqa: E402

from longtail.config import load_config  # noqa: E402
from longtail.engine import fit  # noqa: E402


def configs(only: str) -> list[Path]:
    found = sorted(p for folder in ("cifar10_lt", "cifar100_lt") for prefix in ("google_", "mmpretrain_")
                   for p in (REPO / "configs" / folder).glob(f"{prefix}*.yaml"))
    return [p for p in found if only in str(p.relative_to(REPO / "configs"))]


FAKE_CLASS_SIZE = {"cifar10_lt": 60, "cifar100_lt": 20}  # images per class of the fake balanced CIFAR


def fake_data(base: Path) -> dict[str, Path]:
    """dataset.name -> dataset.root of generated files."""
    counts10 = [int(60 * 0.01 ** (i / 9)) or 1 for i in range(10)]  # an EXP-100 profile of 60 .. 1 images
    return {
        "cifar10_lt_tfrecord": write_fake_release(base / "release", "cifar10", counts10, test_per_class=10),
        "cifar100_lt_tfrecord": write_fake_release(base / "release", "cifar100", [3] * 20 + [1] * 80, test_per_class=2),
        "cifar10_lt": write_fake_cifar(base / "cifar", "cifar10", train_per_class=FAKE_CLASS_SIZE["cifar10_lt"], test_per_class=10),
        "cifar100_lt": write_fake_cifar(base / "cifar", "cifar100", train_per_class=FAKE_CLASS_SIZE["cifar100_lt"], test_per_class=2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the configs whose path contains this text")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "releases_smoke.md")
    args = parser.parse_args(argv)
    chosen = configs(args.only)
    if not chosen:
        parser.error(f"no release config matches '{args.only}'")
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        roots = fake_data(Path(temp) / "data")
        for number, path in enumerate(chosen):
            name = str(path.relative_to(REPO / "configs"))
            given = load_config(path)
            overrides = [
                f"dataset.root={roots[given.dataset.name]}", "dataset.download=false", "device=cpu",
                f"train.epochs={args.epochs}", "train.batch_size=32", "train.progress=false", "data.num_workers=0",
                "eval.batch_size=256",
            ]
            if given.dataset.name in FAKE_CLASS_SIZE:  # regenerated CIFAR-LT: the fake class size, at most IF n_max
                n_max = FAKE_CLASS_SIZE[given.dataset.name]
                overrides += [f"dataset.n_max={n_max}", f"dataset.imbalance_factor={min(given.dataset.imbalance_factor, n_max)}"]
            cfg = load_config(path, overrides)
            print(f"[{number + 1}/{len(chosen)}] {name}", flush=True)
            metrics = fit(cfg, Path(temp) / "runs" / name.replace("/", "_").removesuffix(".yaml"))
            raw = metrics["raw"]["top1"] if "raw" in metrics else metrics["top1"]
            post = f"{metrics['top1']:.2f}" if cfg.eval.posthoc != "none" else "-"
            factor = f"{cfg.dataset.imbalance_factor:g} (config {given.dataset.imbalance_factor:g})" if cfg.dataset.name in FAKE_CLASS_SIZE else "file's"
            rows.append(f"| {name} | {cfg.dataset.name} | {factor} | {cfg.model.name} | {sum(metrics['class_counts'])} | "
                        f"{metrics['num_images']} | {args.epochs} | {raw:.2f} | {post} |")
    command = " ".join(["python benchmarks/releases_smoke.py", *(argv if argv is not None else sys.argv[1:])])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join([
        "# The releases' configs, a short CPU run each on generated data",
        "",
        f"Written by `{command}`. Overrides: "
        f"train.epochs={args.epochs}, train.batch_size=32, generated images (fake CIFAR: 60 / 20 images per class, so "
        "the imbalance factor is capped at that class size); everything else as in the config. "
        "These numbers only show that each config runs end to end; they are not the releases' results, which "
        "were not reproduced here (no CIFAR, no GPU).",
        "",
        "| config | dataset | IF run | model | train images | test images | epochs | test top-1 | post-hoc top-1 |",
        "| :-- | :-- | :-- | :-- | --: | --: | --: | --: | --: |",
        *rows,
        "",
    ]), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
