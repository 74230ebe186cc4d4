"""A tiny ImageNet-LT-style JPEG tree with text lists and iNaturalist-style JSON files, for tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TRAIN_COUNTS = [12, 8, 5, 3, 2]  # long-tailed, 30 images
VAL_PER_CLASS, TEST_PER_CLASS = 2, 4
SIZE = 36


def _image(cls: int, k: int) -> torch.Tensor:
    """A class-coloured 36x36 image with a little per-image noise, so a model can learn something."""
    g = torch.Generator().manual_seed(1000 * cls + k)
    base = torch.tensor([(cls * 50) % 256, (cls * 90 + 40) % 256, (255 - cls * 40) % 256], dtype=torch.float32)
    noise = torch.randint(-30, 31, (3, SIZE, SIZE), generator=g).float()
    return (base.view(3, 1, 1) + noise).clamp(0, 255).to(torch.uint8)


def make_tree(root: Path) -> dict[str, Path]:
    """Images under root/images; lists imagenet_{train,val,test}.txt and inat_{train,val}.json next to it."""
    images = root / "images"
    rows: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for split, per_class in (("train", None), ("val", VAL_PER_CLASS), ("test", TEST_PER_CLASS)):
        for cls, n_train in enumerate(TRAIN_COUNTS):
            for k in range(per_class or n_train):
                rel = f"{split}/n{cls:08d}/img_{k:03d}.JPEG"
                (images / rel).parent.mkdir(parents=True, exist_ok=True)
                pixels = _image(cls, k + 100 * len(split)).permute(1, 2, 0).numpy()
                Image.fromarray(np.ascontiguousarray(pixels)).save(images / rel, format="JPEG", quality=90)
                rows[split].append((rel, cls))
    files = {"root": images}
    for split, entries in rows.items():
        path = root / f"imagenet_{split}.txt"
        path.write_text("".join(f"{rel} {label}\n" for rel, label in entries))
        files[f"{split}_list"] = path
    for split in ("train", "val"):
        data = {
            "info": {"year": 2018},
            "images": [{"id": 10_000 * (split == "val") + i, "file_name": rel, "width": SIZE, "height": SIZE}
                       for i, (rel, _) in enumerate(rows[split])],
            "annotations": [{"id": i, "image_id": 10_000 * (split == "val") + i, "category_id": label}
                            for i, (_, label) in enumerate(rows[split])],
            "categories": [{"id": c, "name": f"species {c}", "supercategory": "Plantae"} for c in range(len(TRAIN_COUNTS))],
        }
        path = root / f"inat_{split}.json"
        path.write_text(json.dumps(data))
        files[f"inat_{split}"] = path
    return files


# Your own data (dataset.name: folder): class folders of tiny JPEGs, long-tailed.
OWN_COUNTS = {"cat": 40, "dog": 20, "emu": 10, "yak": 5}


def make_class_folders(root: Path, counts: dict[str, int] = OWN_COUNTS, size: int = 16) -> Path:
    """root/<class>/img_NNN.jpg, `counts[class]` class-coloured images of size x size; returns root."""
    for cls, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            pixels = _image(cls, k)[:, :size, :size].permute(1, 2, 0).numpy()
            Image.fromarray(np.ascontiguousarray(pixels)).save(root / name / f"img_{k:03d}.jpg", format="JPEG", quality=90)
    return root


def write_csv_twin(tree: Path, path: Path) -> Path:
    """A `path,label` CSV listing every image of a class-folder tree (paths relative to the tree)."""
    rows = sorted(p.relative_to(tree).as_posix() for p in tree.glob("*/*.jpg"))
    path.write_text("path,label\n" + "".join(f"{rel},{rel.split('/')[0]}\n" for rel in rows))
    return path
