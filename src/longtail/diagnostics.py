"""`longtail inspect CONFIG`: how long-tailed a dataset is, before any training.

From the training class counts: images per class, the imbalance factor (largest / smallest class),
the Gini coefficient of the counts (0 for balanced classes, towards 1 when one class holds everything),
the head and tail mass (share of the training images held by the largest 20% and the smallest 50% of
the classes), the many / medium / few groups of shots.py, and the sizes of the splits. Written as
inspect.json and a bar chart class_counts.png (matplotlib, the `report` extra), plus the split lists
of a folder dataset (split_*.csv) to audit before training.

Counts of a balanced source with a known protocol (Fashion-MNIST-LT, CIFAR-LT) follow from the config
(long_tailed_counts, the official sets' sizes, no file read); every other dataset is built from its record.
samples.png shows training images of every kind of dataset (files decoded; never downloaded).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .config import Config
from .errors import LongtailError
from .shots import RULE, SHOTS, shot_groups

HEAD_SHARE, TAIL_SHARE = 0.2, 0.5
SAMPLES_PER_CLASS, SAMPLE_CLASSES, SAMPLE_SIDE = 6, 10, 64  # samples.png: a row of training images per class  # the head: the largest 20% of the classes; the tail: the smallest 50%


def gini(counts: Sequence[int]) -> float:
    """Mean absolute difference of all pairs of counts over twice their mean: sum_ij |x_i - x_j| / (2 n^2 mean)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), float(x.sum())
    if n == 0 or total == 0:
        return 0.0
    # the sorted form of the pairwise sum: sum_ij |x_i - x_j| = 2 sum_i (2i - n - 1) x_(i), i = 1..n
    return float(np.sum((2 * np.arange(1, n + 1) - n - 1) * x) / (n * total))


def head_tail_mass(counts: Sequence[int]) -> tuple[float, float]:
    """Shares of the images in the ceil(20%) largest and the floor(50%) smallest classes (at least one class each)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    n, total = len(x), float(x.sum())
    head, tail = max(1, math.ceil(HEAD_SHARE * n)), max(1, math.floor(TAIL_SHARE * n))
    return float(x[:head].sum() / total), float(x[n - tail :].sum() / total)


def summarize_counts(counts: Sequence[int], names: Sequence[str]) -> dict:
    """The diagnostics of training class counts (all positive)."""
    counts = [int(c) for c in counts]
    head, tail = head_tail_mass(counts)
    groups = shot_groups(counts)
    return {
        "num_classes": len(counts),
        "num_train": sum(counts),
        "class_names": list(names),
        "class_counts": counts,
        "images_per_class": dict(zip(names, counts)),
        "imbalance_factor": max(counts) / min(counts),
        "gini": gini(counts),
        "head_mass": head,
        "tail_mass": tail,
        "head_tail_rule": f"head = the largest {HEAD_SHARE:.0%} of the classes, tail = the smallest {TAIL_SHARE:.0%}",
        "shots": {g: {"classes": len(groups[g]), "images": sum(counts[c] for c in groups[g])} for g in SHOTS},
        "shot_rule": RULE,
    }


def _in_memory_sizes(cfg: Config) -> dict:
    """Counts and split sizes of Fashion-MNIST-LT / CIFAR-LT from the config and the official sets' sizes."""
    from .data import dataset_record, long_tailed_counts, long_tailed_split

    d = cfg.dataset
    record = dataset_record(d.name)
    classes, n_max, train_per_class, test_per_class = record.facts["protocol"]
    names = record.facts.get("class_names")
    counts = long_tailed_counts(d.n_max if d.n_max is not None else n_max, classes, d.imbalance_factor, d.profile)
    val = d.val_per_class if d.val_source != "none" else 0
    # the same check training makes, on the official set's labels (every class train_per_class images)
    long_tailed_split(np.repeat(np.arange(classes), train_per_class), counts, d.seed, val if d.val_source == "train_unused" else 0)
    test = classes * (test_per_class - (val if d.val_source == "test_holdout" else 0))
    return {"counts": counts, "names": names, "val": classes * val, "test": test, "notes": [],
            "sizes_from": "the config and the official balanced sets' sizes (no file read)", "split_files": {}}


def _file_sizes(cfg: Config) -> dict:
    from .run import load_data

    bundle = load_data(cfg)
    sizes = {"counts": bundle.class_counts, "names": bundle.names(), "notes": bundle.notes, "bundle": bundle,
             "sizes_from": "the lists of the data files", "split_files": bundle.split_files}
    for split in ("val", "test"):
        data = getattr(bundle, split)
        sizes[split] = 0 if data is None else len(data)
        if data is not None:
            sizes[f"{split}_per_class"] = np.bincount(np.asarray(data.targets), minlength=bundle.num_classes).tolist()
    return sizes


def dataset_diagnostics(cfg: Config) -> tuple[dict, dict[str, str]]:
    """(inspect.json's body, the split files of a folder dataset)."""
    result, split_files, _ = _diagnostics(cfg)
    return result, split_files


def _diagnostics(cfg: Config) -> tuple[dict, dict[str, str], Any]:
    """dataset_diagnostics, and the data bundle when it was built (None: counted from the config alone)."""
    from .data import dataset_record

    name = cfg.dataset.name
    # a balanced source with a known protocol is counted from the config alone; any other dataset is built
    sizes = _in_memory_sizes(cfg) if "protocol" in dataset_record(name).facts else _file_sizes(cfg)
    names = sizes["names"] or [str(c) for c in range(len(sizes["counts"]))]
    result = {"dataset": name, **summarize_counts(sizes["counts"], names)}
    result["splits"] = {"train": result["num_train"], "val": sizes["val"], "test": sizes["test"]}
    result.update({k: sizes[k] for k in ("val_per_class", "test_per_class") if k in sizes})
    result["sizes_from"], result["notes"] = sizes["sizes_from"], list(sizes["notes"])
    return result, sizes["split_files"], sizes.get("bundle")


def sample_grid(split: Any, num_classes: int) -> np.ndarray:
    """(H, W, 3) uint8: up to SAMPLES_PER_CLASS training images of each of the first SAMPLE_CLASSES classes, one
    row per class, each resized to SAMPLE_SIDE pixels. Works on every kind of split (images in memory or files)."""
    import torch
    import torch.nn.functional as F

    targets = np.asarray(split.targets)
    rows = []
    for c in range(min(num_classes, SAMPLE_CLASSES)):
        tiles = []
        for i in np.flatnonzero(targets == c)[:SAMPLES_PER_CLASS]:
            image = split.images[int(i)] if hasattr(split, "images") else split[int(i)][0]
            image = torch.as_tensor(image)
            image = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
            tiles.append(F.interpolate(image[None].float(), size=(SAMPLE_SIDE, SAMPLE_SIDE), mode="bilinear",
                                       align_corners=False, antialias=True)[0].round().clamp(0, 255).byte())
        tiles += [torch.zeros(3, SAMPLE_SIDE, SAMPLE_SIDE, dtype=torch.uint8)] * (SAMPLES_PER_CLASS - len(tiles))
        rows.append(torch.cat(tiles, dim=2))
    return torch.cat(rows, dim=1).permute(1, 2, 0).numpy()


def write_samples(cfg: Config, bundle: Any, path: Path) -> None:
    """samples.png, the sample grid of the training split; the data is built (never downloaded) when inspect
    counted it from the config alone."""
    import dataclasses

    from PIL import Image

    if bundle is None:
        from .data import build_data

        bundle = build_data(dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, download=False)))
    Image.fromarray(sample_grid(bundle.train, bundle.num_classes)).save(path)


def write_chart(result: dict, path: Path) -> None:
    """Bars of the training images per class, largest first, coloured by shot group; log scale when skewed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    counts, names = np.asarray(result["class_counts"]), result["class_names"]
    order = np.argsort(-counts, kind="stable")
    group_of = {c: g for g, members in shot_groups(counts.tolist()).items() for c in members}
    colours = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.25 * len(counts)), 16.0), 4.0))
    ax.bar(np.arange(len(order)), counts[order], width=1.0 if len(order) > 60 else 0.8,
           color=[colours[group_of[c]] for c in order])
    legend = [Patch(color=colours[g], label=f"{g} ({result['shots'][g]['classes']} classes)")
              for g in SHOTS if result["shots"][g]["classes"]]
    if result["imbalance_factor"] >= 10:
        ax.set_yscale("log")
    if len(order) <= 40:
        ax.set_xticks(np.arange(len(order)), [names[c] for c in order], rotation=60, ha="right", fontsize=8)
    else:
        ax.set_xlabel("classes, largest first")
    ax.set_ylabel("training images")
    ax.set_title(f"{result['dataset']}: imbalance factor {result['imbalance_factor']:.1f}, Gini {result['gini']:.2f}")
    ax.legend(handles=legend, title=RULE, fontsize=8, title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_diagnostics(result: dict) -> str:
    lines = [f"{result['dataset']}: {result['num_classes']} classes, {result['num_train']} training images"]
    width = max(len(n) for n in result["class_names"])
    shown = list(result["images_per_class"].items())
    for name, n in shown[:30]:
        lines.append(f"  {name:<{width}}  {n:>8}")
    if len(shown) > 30:
        lines.append(f"  ... and {len(shown) - 30} more classes (all in inspect.json)")
    lines.append(f"imbalance factor {result['imbalance_factor']:.2f}   Gini {result['gini']:.3f}   "
                 f"head mass {result['head_mass']:.3f}   tail mass {result['tail_mass']:.3f}   ({result['head_tail_rule']})")
    lines.append("shots (" + RULE + "): " + ", ".join(
        f"{g} {result['shots'][g]['classes']} classes / {result['shots'][g]['images']} images" for g in SHOTS))
    split = result["splits"]
    lines.append(f"splits: train {split['train']}, val {split['val']}, test {split['test']} images (from {result['sizes_from']})")
    return "\n".join(lines + result["notes"])


def inspect_dataset(cfg: Config, out: str | Path, log: Callable[[str], None] = print) -> dict:
    """Print the diagnostics and write inspect.json, class_counts.png and any split lists into `out`."""
    from .checkpoint import write_json_atomic, write_text_atomic

    result, split_files, bundle = _diagnostics(cfg)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LongtailError(f"cannot create '{out}' ({exc.strerror}); pass --out with a writable folder") from None
    log(format_diagnostics(result))
    write_json_atomic(out / "inspect.json", result)
    for name, text in split_files.items():
        write_text_atomic(out / name, text)
    written = ["inspect.json", *split_files]
    try:
        write_chart(result, out / "class_counts.png")
        written.append("class_counts.png")
    except ImportError:
        log('longtail: no chart: matplotlib is not installed (pip install "longtail[report]")')
    try:
        write_samples(cfg, bundle, out / "samples.png")
        written.append("samples.png")
    except LongtailError as exc:  # e.g. an in-memory dataset whose files are not here (inspect never downloads)
        log(f"longtail: no sample images: {exc}")
    log(f"wrote {', '.join(str(out / n) for n in written)}")
    return result


__all__ = ["gini", "head_tail_mass", "summarize_counts", "dataset_diagnostics", "inspect_dataset", "write_chart"]
