"""Behaviour check: one seed-fixed tiny run per shipped config family, its metrics written to a JSON file, so
two versions of longtail can be compared (issue 29: registries and plugins must not change what runs compute).

A family is a distinct (dataset kind, loss, post-hoc rule, model) among configs/*/*.yaml (kinds: datasets held
in memory, google's TFRecord files, a folder of images, image lists); the first config of each, cheapest
dataset first, is trained for one epoch (two for LDAM-DRW, whose re-weighting starts at epoch 1) on generated data of
the tests' helpers (tests/conftest.py, tests/fake_tfrecords.py, tests/image_tree.py), at the tiny sizes below.
Families that need data or weights this machine lacks (ImageNet-LT, Places-LT and iNaturalist lists, CLIP
towers) are listed as skipped, with the reason.

    OMP_NUM_THREADS=1 PYTHONPATH=/work/main/src /work/main/.venv/bin/python benchmarks/behaviour_check.py before.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/behaviour_check.py after.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

TINY = ["train.epochs=1", "train.progress=false", "device=cpu", "train.amp=false", "train.channels_last=false",
        "data.num_workers=0", "train.batch_size=32", "eval.batch_size=256", "dataset.download=false", "seed=0",
        "train.warmup_epochs=0"]
IN_MEMORY = ["dataset.n_max=40", "dataset.imbalance_factor=10", "dataset.val_per_class=5"]
KEPT = ("top1", "mean_class_acc", "many", "medium", "few", "raw", "posthoc", "per_class", "epoch", "class_counts")
SKIPPED = {"imagenet_lt": "ImageNet-LT images are not on this machine", "places_lt": "Places-LT images are not on this machine",
           "inat2018": "iNaturalist images are not on this machine"}


KINDS = {"fmnist_lt": "in-memory", "cifar10_lt": "in-memory", "cifar100_lt": "in-memory", "cifar10_lt_tfrecord": "tfrecord",
         "cifar100_lt_tfrecord": "tfrecord", "folder": "folder"}  # other datasets: image lists
ORDER = ["fmnist_lt", "cifar10_lt", "own_data", "cifar100_lt"]  # the cheapest dataset of a kind comes first


def families() -> dict[tuple, Path]:
    """{(dataset kind, loss, rule, model): first config} over configs/*/*.yaml, the cheapest datasets first."""
    found: dict[tuple, Path] = {}
    paths = sorted((ROOT / "configs").glob("*/*.yaml"),
                   key=lambda p: (ORDER.index(p.parent.name) if p.parent.name in ORDER else len(ORDER), str(p)))
    for path in paths:
        data = yaml.safe_load(path.read_text())
        dataset = data.get("dataset", {}).get("name", "fmnist_lt")
        key = (KINDS.get(dataset, "image lists"), data.get("loss", {}).get("name", "ce"),
               data.get("eval", {}).get("posthoc", "none"), data.get("model", {}).get("name", "resnet32"))
        found.setdefault(key, path)
    return found


def data_overrides(dataset: str, model: str, tmp: Path) -> list[str]:
    """Generated data for the dataset kind, and the sizes that keep the run tiny."""
    from conftest import write_fake_cifar, write_fake_fmnist
    from fake_tfrecords import write_fake_release
    from image_tree import make_class_folders

    if dataset == "fmnist_lt":
        return [f"dataset.root={write_fake_fmnist(tmp / 'fmnist', 60, 20)}", *IN_MEMORY]
    if dataset in ("cifar10_lt", "cifar100_lt"):
        variant = dataset.split("_")[0]
        return [f"dataset.root={write_fake_cifar(tmp / variant, variant, 50, 5)}", *IN_MEMORY]
    if dataset.endswith("_tfrecord"):
        variant = dataset.split("_")[0]
        classes = 10 if variant == "cifar10" else 100
        counts = [max(1, round(24 * 0.5 ** (c * 6 / classes))) for c in range(classes)]
        return [f"dataset.root={write_fake_release(tmp / dataset, variant, counts, test_per_class=3)}"]
    if dataset == "folder":
        return [f"dataset.root={make_class_folders(tmp / 'own')}", "dataset.val_per_class=3", "dataset.test_per_class=3",
                "data.image_size=32"]
    raise KeyError(dataset)


def run_family(config: Path, dataset: str, loss: str, model: str, tmp: Path) -> dict:
    import torch

    from longtail.config import load_config
    from longtail.engine import fit

    overrides = [*TINY, *data_overrides(dataset, model, tmp)]
    if loss == "ldam_drw":
        overrides += ["train.epochs=2", "loss.drw_epoch=1"]
    torch.manual_seed(0)
    metrics = fit(load_config(config, overrides), tmp / "run")
    return {k: metrics.get(k) for k in KEPT}


def main(out: str) -> None:
    import torch

    torch.set_num_threads(1)
    results: dict = {"runs": {}, "skipped": {}}
    for (kind, loss, rule, model), config in families().items():
        data = yaml.safe_load(config.read_text())
        dataset, pretrained = data["dataset"]["name"], (data.get("model") or {}).get("pretrained")
        name = f"{kind}/{loss}/{rule}/{model} ({config.relative_to(ROOT)})"
        # a library's own download (timm's hub, open_clip's tags) cannot be reached from this machine
        if dataset in SKIPPED or (model.startswith(("clip/", "timm/")) and pretrained):
            results["skipped"][name] = SKIPPED.get(dataset, f"{model}'s pretrained weights are not on this machine")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            print(f"== {name}", flush=True)
            results["runs"][name] = run_family(config, dataset, loss, model, Path(tmp))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}: {len(results['runs'])} runs, {len(results['skipped'])} skipped")


if __name__ == "__main__":
    main(sys.argv[1])
