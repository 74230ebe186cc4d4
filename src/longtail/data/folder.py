"""Your own images (`dataset.name: folder`): an image folder tree or `path,label` CSV files.

Sources, in the order they are looked for:
- `dataset.csv`: one CSV of every image, split into train / val / test (below);
- `dataset.train_list` (+ `test_list`, optional `val_list`): CSVs already split, e.g. the
  split_*.csv files a run wrote;
- `dataset.root` alone: a tree `root/<class name>/<images>` (torchvision's ImageFolder layout and
  extensions; hidden folders such as `.ipynb_checkpoints` are not classes), split into train / val /
  test, or, when `root/train/` exists, the subtrees `root/train/`, `root/test/` and optional `root/val/`.

Classes are the sorted folder names of the (training) tree, or the sorted names of a CSV's `label`
column; a CSV whose labels are all integers gives class indices instead (names are then the index
strings). CSV paths are relative to `dataset.root` (default: the CSV's folder) and are checked like
every list (image_list.py): absent files, paths escaping the root, unknown class names are reported
with file and line before training.

The split of one set (single tree or `dataset.csv`) is seeded and stratified (splits.stratified_split):
val and test each take `dataset.val_per_class` / `dataset.test_per_class` images of a class, at most
(n - 1) // 2 of its n images, so every class keeps a training image. Classes given fewer than asked are
named in a note; they are trained on, never dropped. Pre-split sources without val images get val the
same way from their training images. The three lists are written into the run directory (split_*.csv).
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Optional

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from ..config import Config
from ..errors import LongtailError
from .base import DataBundle
from .image_list import IMAGENET_MEAN, IMAGENET_STD, Entries, ImageList, Problems, check_paths, verify_images
from .splits import stratified_split

COLUMNS = ("path", "label")
SPLIT_FILES = {"train": "split_train.csv", "val": "split_val.csv", "test": "split_test.csv"}
SHOW_CLASSES = 8  # small classes named in the note; the rest are counted
_INDEX = re.compile(r"\d+")


# ----------------------------------------------------------------------------- folder trees


def class_folders(tree: Path) -> list[str]:
    """The class folders of `tree`, sorted as torchvision's find_classes sorts them, without hidden ones."""
    return sorted(entry.name for entry in os.scandir(tree) if entry.is_dir() and not entry.name.startswith("."))


def read_tree(tree: Path, root: Path, classes: list[str]) -> Entries:
    """Every image of `tree/<class>/` (searched recursively) with its class index in `classes`; paths
    relative to `root`. A class folder of `tree` that is not in `classes`, or holds no image, is an error."""
    present = class_folders(tree)
    if not present:
        raise LongtailError(
            f"'{tree}' holds no class folders; put the images in {tree}/<class name>/ (one folder per class)"
        )
    unknown = [c for c in present if c not in classes]
    if unknown:
        raise LongtailError(
            f"'{tree}' has class folders that the training tree lacks: {', '.join(unknown[:SHOW_CLASSES])}; "
            "every class needs training images: add them to the training tree or remove these folders"
        )
    index = {c: classes.index(c) for c in present}
    samples = make_dataset(str(tree), index, extensions=IMG_EXTENSIONS, allow_empty=True)
    found = {label for _, label in samples}
    empty = [c for c in present if index[c] not in found]
    if empty:
        raise LongtailError(
            f"class folder(s) {', '.join(repr(str(tree / c)) for c in empty[:SHOW_CLASSES])} hold no images "
            f"(looked for {' '.join(IMG_EXTENSIONS)}); add images or remove the empty folders"
        )
    entries = Entries(source=f"folder '{tree}'", unit="image")
    for number, (path, label) in enumerate(samples):
        entries.paths.append(os.path.relpath(path, root))
        entries.labels.append(label)
        entries.numbers.append(number)
    return entries


# ----------------------------------------------------------------------------- CSV files


def read_csv(path_text: str, key: str) -> list[tuple[int, str, str]]:
    """(line number, path, label text) of each row of a `path,label` CSV (further columns are ignored)."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise LongtailError(f"{key} '{path}' does not exist; give a CSV file with the columns path,label")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise LongtailError(f"{key} '{path}' is not UTF-8 text; give a CSV file with the columns path,label") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    if not all(c in header for c in COLUMNS):
        raise LongtailError(
            f"{key} '{path}' needs a header row with the columns path,label (found {','.join(header)[:80] or 'nothing'}); "
            "add the header line 'path,label'"
        )
    at_path, at_label = header.index("path"), header.index("label")
    rows = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        number = reader.line_num
        cells = row + [""] * (len(header) - len(row))
        rows.append((number, cells[at_path].strip(), cells[at_label].strip()))
    if not rows:
        raise LongtailError(f"{key} '{path}' lists no images; add one `path,label` row per image")
    return rows


def csv_classes(rows: list[tuple[int, str, str]], num_classes: Optional[int]) -> tuple[Optional[list[str]], int]:
    """(class names, class count) defined by a CSV's labels: sorted names, or for all-integer labels
    no names and dataset.num_classes or 1 + the largest index."""
    labels = [label for _, _, label in rows]
    if all(_INDEX.fullmatch(label) for label in labels):
        return None, num_classes if num_classes is not None else max(int(label) for label in labels) + 1
    names = sorted(set(labels) - {""})
    if num_classes is not None and num_classes != len(names):
        raise LongtailError(f"dataset.num_classes is {num_classes} but the CSV names {len(names)} classes; remove dataset.num_classes")
    return names, len(names)


def csv_entries(rows: list[tuple[int, str, str]], source: str, names: Optional[list[str]], num_classes: int,
                problems: Problems) -> Entries:
    """The rows with labels resolved (class names, or indices when `names` is None); bad rows go to `problems`."""
    index = {name: i for i, name in enumerate(names or [])}
    entries = Entries(source=source, unit="line")
    for number, path, label in rows:
        if not path:
            problems.add(f"{source}:{number}", "the path is empty")
            continue
        if names is not None and label not in index:
            shown = ", ".join(names[:SHOW_CLASSES]) + (" ..." if len(names) > SHOW_CLASSES else "")
            problems.add(f"{source}:{number}", f"unknown class name {label[:40]!r} (the classes are {shown})")
            continue
        if names is None and not (_INDEX.fullmatch(label) and int(label) < num_classes):
            problems.add(f"{source}:{number}", f"label {label[:40]!r} is not a class index 0..{num_classes - 1}")
            continue
        entries.paths.append(path)
        entries.labels.append(index[label] if names is not None else int(label))
        entries.numbers.append(number)
    return entries


# ----------------------------------------------------------------------------- splitting and the bundle


def _subset(entries: Entries, idx: np.ndarray) -> Entries:
    return Entries(entries.source, entries.unit, [entries.paths[i] for i in idx], [entries.labels[i] for i in idx],
                   [entries.numbers[i] for i in idx])


def _small_classes_note(short: list[int], counts: np.ndarray, names: list[str], val: Entries, test: Entries, cfg: Config) -> str:
    val_n = np.bincount(np.asarray(val.labels, dtype=np.int64), minlength=len(names))
    test_n = np.bincount(np.asarray(test.labels, dtype=np.int64), minlength=len(names))
    shown = ", ".join(f"{names[c]} ({counts[c]} images: {val_n[c]} val, {test_n[c]} test)" for c in short[:SHOW_CLASSES])
    more = f" and {len(short) - SHOW_CLASSES} more" if len(short) > SHOW_CLASSES else ""
    return (
        f"{len(short)} class(es) too small for {cfg.dataset.val_per_class} val + {cfg.dataset.test_per_class} test "
        f"images each (a class of n images gives at most (n - 1) // 2 to each): {shown}{more}; they are trained on"
    )


def _split(entries: Entries, cfg: Config, names: list[str], val_per_class: int, test_per_class: int):
    train_idx, val_idx, test_idx, short = stratified_split(entries.labels, len(names), cfg.dataset.seed, val_per_class, test_per_class)
    parts = _subset(entries, train_idx), _subset(entries, val_idx), _subset(entries, test_idx)
    counts = np.bincount(np.asarray(entries.labels, dtype=np.int64), minlength=len(names))
    note = _small_classes_note(short, counts, names, parts[1], parts[2], cfg) if short else None
    return parts, note


def split_csv(entries: Entries, names: Optional[list[str]]) -> str:
    """A split as `path,label` CSV text; labels are class names (or indices for a dataset without names)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for path, label in zip(entries.paths, entries.labels):
        writer.writerow((path, names[label] if names is not None else label))
    return out.getvalue()


def _root(cfg: Config, default: Optional[Path]) -> Path:
    if cfg.dataset.root is None and default is None:
        raise LongtailError(
            "dataset 'folder' needs dataset.root (a folder of class folders) or dataset.csv / dataset.train_list (CSV files)"
        )
    root = Path(cfg.dataset.root).expanduser() if cfg.dataset.root is not None else default
    assert root is not None
    if not root.is_dir():
        raise LongtailError(f"dataset.root '{root}' is not a folder; point it at your images")
    return root


def _read_sources(cfg: Config):
    """(root, names, num_classes, the one set to split or None, {split: entries or None}) of the configured source."""
    d = cfg.dataset
    if d.csv is not None and d.train_list is not None:
        raise LongtailError("set either dataset.csv (one CSV to split) or dataset.train_list/test_list (CSVs already split), not both")
    problems = Problems()
    if d.csv is not None or d.train_list is not None:
        given = {"csv": d.csv} if d.csv is not None else {"train": d.train_list, "val": d.val_list, "test": d.test_list}
        if d.csv is None and d.test_list is None:
            raise LongtailError("dataset 'folder' with dataset.train_list also needs dataset.test_list (or give one CSV as dataset.csv)")
        rows = {k: read_csv(v, "dataset.csv" if k == "csv" else f"dataset.{k}_list") if v else None for k, v in given.items()}
        defining = d.csv if d.csv is not None else d.train_list
        root = _root(cfg, Path(defining).expanduser().parent)
        names, num_classes = csv_classes(rows["csv" if d.csv is not None else "train"], d.num_classes)
        entries = {k: csv_entries(r, Path(given[k]).name, names, num_classes, problems) if r else None for k, r in rows.items()}
        for e in entries.values():
            if e is not None:
                check_paths(e, root, problems)
        problems.raise_if_any(root)
        whole = entries.pop("csv", None)
        return root, names, num_classes, whole, entries
    root = _root(cfg, None)
    if (root / "train").is_dir():
        if not (root / "test").is_dir():
            raise LongtailError(
                f"dataset.root '{root}' has train/ but no test/; add test/ (and optionally val/) with the same class "
                "folders, or put the class folders directly under the root to have them split"
            )
        names = class_folders(root / "train")
        trees = {k: read_tree(root / k, root, names) if (root / k).is_dir() else None for k in ("train", "val", "test")}
        return root, names, len(names), None, trees
    names = class_folders(root)
    if not names:
        images = [p.name for p in root.iterdir() if p.suffix.lower() in IMG_EXTENSIONS][:3]
        hint = f" (it holds images such as {', '.join(images)} directly)" if images else ""
        raise LongtailError(f"dataset.root '{root}' holds no class folders{hint}; put the images in {root}/<class name>/")
    return root, names, len(names), read_tree(root, root, names), {}


def build_folder(cfg: Config, name: str) -> DataBundle:
    """The DataBundle of your own images (see the module docstring)."""
    d = cfg.dataset
    val_per_class = d.val_per_class if d.val_source != "none" else 0
    root, names, num_classes, whole, splits = _read_sources(cfg)
    display = names if names is not None else [str(c) for c in range(num_classes)]
    notes = []
    if whole is not None:
        (train, val, test), note = _split(whole, cfg, display, val_per_class, d.test_per_class)
    else:
        train, val, test = splits["train"], splits.get("val"), splits["test"]
        assert train is not None and test is not None
        note = None
        if val is None and val_per_class:
            (train, val, _), note = _split(train, cfg, display, val_per_class, 0)
            notes.append(f"val: {len(val.labels)} images taken from the training images ({val_per_class} per class at most)")
    if note:
        notes.append(note)
    if not test.labels:
        raise LongtailError(
            f"the test split is empty (dataset.test_per_class is {d.test_per_class}; a class needs 3 images to give one "
            "to test); raise dataset.test_per_class or add images"
        )
    counts = np.bincount(np.asarray(train.labels, dtype=np.int64), minlength=num_classes)
    if not counts.all():
        missing = [display[c] for c in np.flatnonzero(counts == 0)[:SHOW_CLASSES]]
        raise LongtailError(
            f"{int((counts == 0).sum())} of {num_classes} classes have no training image ({', '.join(missing)}); "
            "every class needs training images: fix the training list or dataset.num_classes"
        )
    parts = {"train": train, "val": val if val is not None and val.labels else None, "test": test}
    datasets = {k: ImageList(root, e) if e is not None else None for k, e in parts.items()}
    if d.verify_images:
        verify_images([ds for ds in datasets.values() if ds is not None], cfg.data.num_workers)
    return DataBundle(
        name=name, train=datasets["train"], val=datasets["val"], test=datasets["test"],
        class_counts=counts.tolist(), num_classes=num_classes, in_channels=3,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, in_memory=False, class_names=names,
        split_files={SPLIT_FILES[k]: split_csv(e, names) for k, e in parts.items() if e is not None}, notes=notes,
    )
