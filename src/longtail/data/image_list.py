"""Datasets named by annotation files over images the user already has.

ImageNet-LT and Places-LT come as text lists, one `relative/path label` per line (the release of
Liu et al. 2019, "Large-Scale Long-Tailed Recognition in an Open World"), indexing ImageNet-2012 and
Places-365 images under `dataset.root`. iNaturalist 2018 comes as the competition's JSON files
(`images`, `annotations`, `categories`); a text list in the same format as above works too.

Every list is checked before training starts: a line whose label is not an integer or out of range,
whose path is absolute, climbs out with '..' or leaves the root through a symlink, or whose image is
missing is reported with its file and line (annotation number for JSON). All problems are collected
and raised as one LongtailError. An image that cannot be decoded when it is loaded stops the run with
its path and list line; `dataset.verify_images` decodes every image up front and lists them all.
"""

from __future__ import annotations

import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..config import Config
from ..errors import LongtailError
from .base import DataBundle

# torchvision's ImageNet statistics; the three benchmarks use them with ImageNet-pretrained backbones.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SHOW_PROBLEMS = 5  # problems quoted in the error message; the rest are counted
T = TypeVar("T")


class UnreadableImage(LongtailError):
    """An image listed (and present) that the decoder rejects."""


def _where(source: str, unit: str, number: int) -> str:
    return f"{source}:{number}" if unit == "line" else f"{source} {unit} #{number}"


@dataclass
class Entries:
    """The usable rows of one annotation file; `numbers[i]` is the line (or annotation index) of row i."""

    source: str
    unit: str  # "line" for text and CSV lists, "annotation" for JSON, "image" for folder trees
    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)
    num_categories: Optional[int] = None  # from a JSON file's `categories`
    category_names: Optional[list[str]] = None  # their `name`s in id order, when every category has one

    def where(self, i: int) -> str:
        return _where(self.source, self.unit, self.numbers[i])


class Problems:
    """Every problem found in the lists, raised together as one LongtailError."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def raise_if_any(self, root: Path) -> None:
        if not self.items:
            return
        shown = "; ".join(self.items[:SHOW_PROBLEMS])
        more = f" (and {len(self.items) - SHOW_PROBLEMS} more)" if len(self.items) > SHOW_PROBLEMS else ""
        raise LongtailError(
            f"{len(self.items)} problem(s) in the image lists{more}: {shown}; "
            f"fix the list files or dataset.root (now '{root}')"
        )


# ----------------------------------------------------------------------------- reading annotation files


def read_text_list(path: Path, problems: Problems) -> Entries:
    """`relative/path label` per line; blank lines are skipped. The path may contain spaces."""
    entries = Entries(source=path.name, unit="line")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise LongtailError(f"list file '{path}' is not UTF-8 text; give the `relative/path label` list") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(None, 1)
        if len(parts) != 2:
            problems.add(f"{path.name}:{number}", f"expected 'relative/path label', got {line.strip()[:80]!r}")
            continue
        try:
            label = int(parts[1])
        except ValueError:
            problems.add(f"{path.name}:{number}", f"label {parts[1][:40]!r} is not an integer")
            continue
        entries.paths.append(parts[0])
        entries.labels.append(label)
        entries.numbers.append(number)
    return entries


def read_inat_json(path: Path, problems: Problems) -> Entries:
    """The iNaturalist competition format: images (id, file_name), annotations (image_id, category_id)
    and categories (id 0..C-1)."""
    entries = Entries(source=path.name, unit="annotation")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LongtailError(f"'{path}' is not valid JSON (line {exc.lineno}, column {exc.colno}); fetch the annotation file again") from None
    except UnicodeDecodeError:
        raise LongtailError(f"'{path}' is not UTF-8 JSON; give the iNaturalist annotation file") from None
    images, annotations = (data.get("images"), data.get("annotations")) if isinstance(data, dict) else (None, None)
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise LongtailError(f"'{path}' is not an iNaturalist-style annotation file: it needs 'images' and 'annotations' lists")
    if not annotations:
        raise LongtailError(
            f"'{path}' has no annotations (the iNaturalist test file carries no labels); "
            "evaluate on val2018.json: set dataset.test_list to it"
        )
    categories = data.get("categories")
    if isinstance(categories, list) and categories:
        ids = [c.get("id") if isinstance(c, dict) else None for c in categories]
        if sorted(i for i in ids if isinstance(i, int)) != list(range(len(ids))):
            raise LongtailError(f"'{path}' has category ids that are not 0..{len(ids) - 1}; longtail uses the id as the class index")
        entries.num_categories = len(ids)
        names = {c["id"]: c.get("name") for c in categories}
        if all(isinstance(names[i], str) for i in range(len(ids))):
            entries.category_names = [names[i] for i in range(len(ids))]
    file_of: dict = {}
    for k, image in enumerate(images):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            problems.add(f"{path.name} image #{k}", "needs an 'id' and a 'file_name'")
            continue
        file_of[image["id"]] = image["file_name"]
    for k, ann in enumerate(annotations):
        where = f"{path.name} annotation #{k}"
        if not isinstance(ann, dict):
            problems.add(where, "is not an object")
            continue
        if ann.get("image_id") not in file_of:
            problems.add(where, f"image_id {ann.get('image_id')!r} is not among the file's images")
            continue
        label = ann.get("category_id")
        if not isinstance(label, int) or isinstance(label, bool):
            problems.add(where, f"category_id {label!r} is not an integer")
            continue
        entries.paths.append(file_of[ann["image_id"]])
        entries.labels.append(label)
        entries.numbers.append(k)
    return entries


def read_entries(path_text: Optional[str], key: str, problems: Problems) -> Optional[Entries]:
    if path_text is None:
        return None
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise LongtailError(f"{key} '{path}' does not exist; set {key} to the list file (docs/datasets.md says where the lists come from)")
    return read_inat_json(path, problems) if path.suffix.lower() == ".json" else read_text_list(path, problems)


# ----------------------------------------------------------------------------- checks


def check_labels(entries: Entries, num_classes: int, problems: Problems, origin: str) -> None:
    for i, label in enumerate(entries.labels):
        if not 0 <= label < num_classes:
            problems.add(entries.where(i), f"label {label} is outside 0..{num_classes - 1} ({origin})")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def check_paths(entries: Entries, root: Path, problems: Problems) -> None:
    """Relative, no '..', inside the root after following symlinks, and an existing file.
    Directories are resolved once each; each file costs one lstat."""
    real_root = os.path.realpath(root)
    real_dirs: dict[str, str] = {}
    for i, rel in enumerate(entries.paths):
        where = entries.where(i)
        if rel.startswith("/") or os.path.isabs(rel):
            problems.add(where, f"path '{rel}' is absolute; paths must be relative to dataset.root")
            continue
        if ".." in rel.split("/"):
            problems.add(where, f"path '{rel}' climbs out of dataset.root with '..'")
            continue
        parent = os.path.dirname(rel)
        if parent not in real_dirs:
            real_dirs[parent] = os.path.realpath(os.path.join(real_root, parent))
        real_parent = real_dirs[parent]
        if not _inside(real_parent, real_root):
            problems.add(where, f"path '{rel}' leaves dataset.root through a symlinked folder (to '{real_parent}')")
            continue
        full = os.path.join(real_parent, os.path.basename(rel))
        try:
            mode = os.lstat(full).st_mode
        except OSError:
            problems.add(where, f"image '{rel}' does not exist under dataset.root")
            continue
        if stat.S_ISLNK(mode):
            target = os.path.realpath(full)
            if not _inside(target, real_root):
                problems.add(where, f"image '{rel}' is a symlink leaving dataset.root (to '{target}')")
                continue
            if not os.path.isfile(target):
                problems.add(where, f"image '{rel}' is a broken symlink")
                continue
        elif not stat.S_ISREG(mode):
            problems.add(where, f"'{rel}' is not a regular file")


def decode(path: str) -> torch.Tensor:
    """uint8 (3, H, W) RGB, whatever the file holds (grey, CMYK, PNG under a .JPEG name). Pillow decodes
    (torchvision.io's decoders are deprecated since torchvision 0.29); a truncated file is an error."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _last_line(exc: BaseException) -> str:
    """The last line of an exception's message (where a decoder states the cause), at most 200 characters."""
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:200]


def verify_images(datasets: list["ImageList"], threads: int) -> None:
    """Decode every listed image once (in threads: the decoder releases the GIL); all failures are reported together."""
    failures: list[str] = []

    def check(item: tuple[ImageList, int]) -> Optional[str]:
        ds, i = item
        try:
            decode(ds.full_path(i))
        except Exception as exc:  # any decoder failure is a bad image
            return f"{ds.where(i)}: image '{ds.path(i)}' cannot be decoded ({_last_line(exc)})"
        return None

    seen: set[bytes] = set()  # an image listed twice (or in two lists) is decoded and reported once
    items = []
    for ds in datasets:
        for i in range(len(ds)):
            if ds._paths[i] not in seen:
                seen.add(ds._paths[i])
                items.append((ds, i))
    with ThreadPoolExecutor(max_workers=max(threads, 1)) as pool:
        failures = [msg for msg in pool.map(check, items, chunksize=256) if msg]
    if failures:
        more = f" (and {len(failures) - SHOW_PROBLEMS} more)" if len(failures) > SHOW_PROBLEMS else ""
        raise LongtailError(
            f"{len(failures)} unreadable image(s){more}: {'; '.join(failures[:SHOW_PROBLEMS])}; "
            "replace the files or remove their lines from the lists"
        )


# ----------------------------------------------------------------------------- the dataset


class ImageList(Dataset):
    """Images under `root` with labels; yields (uint8 (3, H, W) tensor, label). `targets` holds all
    labels (for samplers and class counts). Paths are kept as one numpy byte array, not a list of
    Python strings, so DataLoader workers do not copy them page by page through reference counting."""

    def __init__(self, root: Path, entries: Entries):
        self.root = str(root)
        self.source, self.unit = entries.source, entries.unit
        self._paths = np.array([p.encode("utf-8") for p in entries.paths], dtype=np.bytes_)
        self._numbers = np.asarray(entries.numbers, dtype=np.int64)
        self.targets = np.asarray(entries.labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def path(self, i: int) -> str:
        return self._paths[i].decode("utf-8")

    def full_path(self, i: int) -> str:
        return os.path.join(self.root, self.path(i))

    def where(self, i: int) -> str:
        return _where(self.source, self.unit, int(self._numbers[i]))

    def read(self, i: int, reader: Callable[[str], T]) -> T:
        """`reader(full path of image i)`; any failure of it is an UnreadableImage naming the file and line."""
        try:
            return reader(self.full_path(i))
        except Exception as exc:  # any decoder failure: name the file, never skip it silently
            raise UnreadableImage(
                f"image '{self.full_path(i)}' ({self.where(i)}) cannot be read ({_last_line(exc)}); replace it or "
                "remove its line (dataset.verify_images=true lists every unreadable image before training)"
            ) from None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.read(i, decode), int(self.targets[i])


# ----------------------------------------------------------------------------- the bundle


def _root(root: Optional[str]) -> Path:
    if root is None:
        raise LongtailError("dataset.root is not set; point it at the folder the list paths are relative to")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise LongtailError(f"dataset.root '{path}' is not a folder; point it at the folder the list paths are relative to")
    return path


def _num_classes(cfg: Config, train: Entries) -> int:
    """dataset.num_classes, else the train JSON's categories, else 1 + the largest train label."""
    configured, from_json = cfg.dataset.num_classes, train.num_categories
    if configured is not None and from_json is not None and configured != from_json:
        raise LongtailError(
            f"dataset.num_classes is {configured} but {train.source} defines {from_json} categories; "
            "fix dataset.num_classes or use the matching annotation file"
        )
    if configured is not None:
        return configured
    if from_json is not None:
        return from_json
    return max((label for label in train.labels if label >= 0), default=-1) + 1


def build_image_lists(cfg: Config, name: str) -> DataBundle:
    """Validate every list, then the DataBundle (train, val = dataset.val_list or none, test)."""
    d = cfg.dataset
    root = _root(d.root)
    if d.train_list is None or d.test_list is None:
        raise LongtailError(f"dataset '{name}' needs dataset.train_list and dataset.test_list (dataset.val_list is optional)")
    problems = Problems()
    train = read_entries(d.train_list, "dataset.train_list", problems)
    val = read_entries(d.val_list, "dataset.val_list", problems)
    test = read_entries(d.test_list, "dataset.test_list", problems)
    assert train is not None and test is not None
    if not train.labels and not problems.items:
        raise LongtailError(f"the train list '{d.train_list}' has no entries")
    num_classes = _num_classes(cfg, train)
    origin = f"the train list {train.source} defines {num_classes} classes" if d.num_classes is None else f"dataset.num_classes is {num_classes}"
    splits = [s for s in (train, val, test) if s is not None]
    for entries in splits:
        if entries.num_categories is not None and entries is not train and entries.num_categories != num_classes:
            problems.add(entries.source, f"defines {entries.num_categories} categories, the training data {num_classes}")
        check_labels(entries, num_classes, problems, origin)
        check_paths(entries, root, problems)
    problems.raise_if_any(root)

    counts = np.bincount(np.asarray(train.labels, dtype=np.int64), minlength=num_classes)
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        listed = ", ".join(str(c) for c in empty[:10]) + (" ..." if len(empty) > 10 else "")
        raise LongtailError(
            f"{len(empty)} of {num_classes} classes have no image in the train list {train.source} (classes {listed}); "
            "every class needs training images: fix the list or dataset.num_classes"
        )
    datasets = {key: ImageList(root, e) if e is not None else None for key, e in (("train", train), ("val", val), ("test", test))}
    if d.verify_images:
        verify_images([ds for ds in datasets.values() if ds is not None], cfg.data.num_workers)
    names = read_class_names(d.class_names, num_classes) if d.class_names is not None else train.category_names
    return DataBundle(
        name=name, train=datasets["train"], val=datasets["val"], test=datasets["test"],
        class_counts=counts.tolist(), num_classes=num_classes, in_channels=3,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, in_memory=False, class_names=names,
    )


def read_class_names(path_text: str, num_classes: int) -> list[str]:
    """`dataset.class_names`: a text file of one class name per line, in class-index order (blank lines skipped),
    e.g. the ImageNet-LT / Places-LT name files LIFT and CoOp ship."""
    path = Path(path_text).expanduser()
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise LongtailError(f"dataset.class_names '{path}' cannot be read ({type(exc).__name__}); give a UTF-8 text file of one name per line") from None
    if len(names) != num_classes:
        raise LongtailError(f"dataset.class_names '{path}' has {len(names)} names for {num_classes} classes; give one name per line, "
                            "in class-index order")
    return names
