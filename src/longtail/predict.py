"""`longtail predict` and `Run.predict`: a saved run's predictions for image files and folders (and, from
Python, PIL images and uint8 tensors).

Folders are searched recursively for torchvision's image extensions (hidden files and folders skipped);
a file named on the command line is always tried. Images go through the run's evaluation transform
(deployment.Preprocessing), in batches, through `inference.predict` (the run's precision and layout),
and are scored by the run's prediction rule (deployment.ScoreRule), or by --posthoc / --tau, or, with a
target prior q, by priors.target_prior_scores (the run's stored calibration moved to q). Rows are written as each batch finishes, in input order: CSV (default) or JSON (by --out's
extension), and kept in the summary (`PredictionSummary.rows`). An image that cannot be read gets a row with its reason and no prediction; the others are
still predicted, and the result says how many failed (the CLI then exits with 1).
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TextIO, Union

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import tte
from .deployment import Preprocessing, load_deployment
from .errors import LongtailError, one_line

DEFAULT_TOP_K = 5
SHOW_FAILURES = 5  # unreadable images named in the summary; the rest are counted (all are in the output)


def find_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively, in sorted order; an unknown path or a folder without
    images is an error."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    found: list[Path] = []
    for given in map(Path, paths):
        if given.is_file():
            found.append(given)
        elif given.is_dir():
            images = sorted(
                p for p in given.rglob("*")
                if p.is_file() and has_file_allowed_extension(p.name, IMG_EXTENSIONS)
                and not any(part.startswith(".") for part in p.relative_to(given).parts)
            )
            if not images:
                raise LongtailError(f"folder '{given}' holds no images ({' '.join(IMG_EXTENSIONS)}, searched recursively); "
                                    "point predict at image files or folders of them")
            found += images
        else:
            raise LongtailError(f"'{given}' does not exist; give image files or folders of images")
    return found


Item = Union[Path, Image.Image]  # an image file, or an image already in memory


def image_items(images: Any) -> list[Item]:
    """What predict takes, in order: image files and folders (find_images), PIL images, and uint8 tensors
    (C, H, W) or (N, C, H, W) with C = 1 or 3, as PIL images (then treated as a file's pixels)."""
    from torchvision.transforms.functional import to_pil_image

    if isinstance(images, (str, Path, Image.Image, torch.Tensor)):
        images = [images]
    items: list[Item] = []
    for given in images:
        if isinstance(given, Image.Image):
            items.append(given)
        elif isinstance(given, torch.Tensor):
            batch = given.unsqueeze(0) if given.dim() == 3 else given
            if given.dtype != torch.uint8 or given.dim() not in (3, 4) or batch.shape[1] not in (1, 3):
                raise LongtailError(f"predict takes uint8 image tensors of shape (C, H, W) or (N, C, H, W) with C = 1 or 3, got "
                                    f"{given.dtype} {tuple(given.shape)}; convert with (x * 255).round().to(torch.uint8)")
            items += [to_pil_image(image.cpu()) for image in batch]
        elif isinstance(given, (str, Path)):
            items += find_images([given])
        else:
            raise LongtailError(f"predict takes image paths, folders, PIL images or uint8 tensors, got {type(given).__name__}")
    if not items:
        raise LongtailError("predict needs at least one image")
    return items


def _name(item: Item) -> Optional[str]:
    return str(item) if isinstance(item, Path) else None  # an image in memory has its position, not a path


class ImageFiles(Dataset):
    """(position, normalised image or None, reason or None): a bad file is reported, never replaced."""

    def __init__(self, items: Sequence[Item], prep: Preprocessing):
        self.items, self.prep = list(items), prep

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Optional[torch.Tensor], Optional[str]]:
        item = self.items[i]
        try:
            return i, self.prep(self.prep.load(item) if isinstance(item, Path) else self.prep.pixels(item)), None
        except Exception as exc:  # noqa: BLE001 - any decoder failure makes this one image unreadable
            return i, None, f"cannot be read as an image ({type(exc).__name__}: {one_line(exc, 160)})"


def _collate(items: list) -> list:
    return items


# ----------------------------------------------------------------------------- output


def top_k_columns(k: int) -> list[str]:
    return [f"top{i}_{what}" for i in range(1, k + 1) for what in ("name", "prob")]


def flat_row(row: dict) -> dict:
    """A row as the CSV (and Run.predict's DataFrame) has it: top_k spread over top1_name, top1_prob, ..."""
    flat = {k: row[k] for k in ("path", "class_index", "class_name", "probability")}
    for i, entry in enumerate(row["top_k"], start=1):
        flat[f"top{i}_name"], flat[f"top{i}_prob"] = entry["name"], entry["probability"]
    return {**flat, "error": row["error"]}


class CsvRows:
    """One row per image: path, class_index, class_name, probability, top1_name, top1_prob, ..., error."""

    def __init__(self, stream: TextIO, top_k: int):
        self.stream = stream
        self.writer = csv.DictWriter(stream, ["path", "class_index", "class_name", "probability", *top_k_columns(top_k), "error"])
        self.writer.writeheader()

    def add(self, row: dict) -> None:
        self.writer.writerow({k: "" if v is None else v for k, v in flat_row(row).items()})
        self.stream.flush()

    def finish(self, header: dict) -> None:
        pass


class JsonRows:
    """{"checkpoint", "rule", "class_names", "summary", "predictions": [row, ...]}, written at the end."""

    def __init__(self, stream: TextIO, top_k: int):
        self.stream, self.rows = stream, []

    def add(self, row: dict) -> None:
        self.rows.append(row)

    def finish(self, header: dict) -> None:
        json.dump({**header, "predictions": self.rows}, self.stream, indent=2)
        self.stream.write("\n")


WRITERS: dict[str, Callable[[TextIO, int], "CsvRows | JsonRows"]] = {".csv": CsvRows, ".json": JsonRows}


def _open_output(out: Optional[str | Path | TextIO], top_k: int):
    """(stream to close or None, writer or None): nothing for None, CSV to a text stream, a file by its extension."""
    if out is None:
        return None, None
    if not isinstance(out, (str, Path)):
        return None, CsvRows(out, top_k)
    path = Path(out)
    try:
        stream = open(path, "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise LongtailError(f"cannot write '{path}' ({exc.strerror or exc}); pass --out with a writable path") from None
    return stream, WRITERS[path.suffix.lower()](stream, top_k)


# ----------------------------------------------------------------------------- predicting


@dataclass
class PredictionSummary:
    total: int
    predicted: int
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    out: Optional[str] = None
    rule: str = ""
    rows: list[dict] = field(default_factory=list, repr=False)  # every row, in input order

    def line(self) -> str:
        text = f"predicted {self.predicted} of {self.total} images ({self.rule})"
        if self.failures:
            shown = "; ".join(f"'{p}' {reason}" for p, reason in self.failures[:SHOW_FAILURES])
            more = f" (and {len(self.failures) - SHOW_FAILURES} more)" if len(self.failures) > SHOW_FAILURES else ""
            text += f"; {len(self.failures)} could not be read{more}, listed with their reason in the output: {shown}"
        return text + (f"; wrote {self.out}" if self.out else "")


def _rows(paths: list[Item], positions: list[int], probs: torch.Tensor, names: list[str], top_k: int) -> list[dict]:
    values, indices = probs.topk(top_k, dim=1)
    rows = []
    for r, i in enumerate(positions):
        top = [{"index": int(c), "name": names[int(c)], "probability": float(p)} for p, c in zip(values[r], indices[r])]
        rows.append({"path": _name(paths[i]), "class_index": top[0]["index"], "class_name": top[0]["name"],
                     "probability": top[0]["probability"], "top_k": top, "error": None})
    return rows


def _failed_row(path: Item, reason: str) -> dict:
    return {"path": _name(path), "class_index": None, "class_name": None, "probability": None, "top_k": [], "error": reason}


def predict_paths(
    run: str | Path,
    paths: Any,
    out: Optional[str | Path | TextIO] = None,
    top_k: Optional[int] = None,
    posthoc: Optional[str] = None,
    tau: Optional[float] = None,
    target_prior: Optional[str] = None,
    overrides: Sequence[str] = (),
    batch_size: Optional[int] = None,
    workers: int = 0,
    progress: bool = True,
) -> PredictionSummary:
    """Predict every image of `paths` (image_items: files, folders, PIL images, uint8 tensors) with the run at
    `run`; rows go to `out` (a .csv / .json path or a text stream for CSV; None: only the summary's rows)."""
    from .distributed import Runtime
    from .inference import predict, prepare_model

    if batch_size is not None and batch_size < 1:
        raise LongtailError(f"--batch-size must be at least 1, got {batch_size}")
    if workers < 0:
        raise LongtailError(f"--workers must be 0 or more, got {workers}")
    if isinstance(out, (str, Path)) and Path(out).suffix.lower() not in WRITERS:
        raise LongtailError(f"--out '{out}' must end in {' or '.join(WRITERS)} (the output format follows the extension)")
    files = image_items(paths)  # a mistyped path fails before the model is loaded
    deployment = load_deployment(run, overrides, posthoc, tau, prior=target_prior)
    device = next(deployment.model.parameters()).device
    num_classes = len(deployment.class_names)
    k = min(DEFAULT_TOP_K, num_classes) if top_k is None else top_k
    if not 1 <= k <= num_classes:
        raise LongtailError(f"--top-k {k} must be between 1 and the model's {num_classes} classes")
    rule = deployment.rule
    model = prepare_model(deployment.model, deployment.cfg, device)
    runtime = Runtime(device)

    stream, writer = _open_output(out, k)
    summary = PredictionSummary(len(files), 0, out=str(out) if isinstance(out, (str, Path)) else None, rule=rule.describe())
    loader = DataLoader(ImageFiles(files, tte.preprocessing(deployment.preprocessing, deployment.cfg)), batch_size=batch_size or deployment.cfg.eval.batch_size,
                        num_workers=workers, collate_fn=_collate)
    try:
        with tqdm(total=len(files), unit="img", desc="predict", disable=None if progress else True, file=sys.stderr) as bar:
            for items in loader:
                good = [(i, x) for i, x, _ in items if x is not None]
                rows = {i: _failed_row(files[i], reason) for i, x, reason in items if x is None}
                if good:
                    x = torch.stack([x for _, x in good]).to(device)
                    # inference.predict: the run's precision and layout; the labels it wants are unused here
                    logits = predict(model, [(x, torch.zeros(len(good), dtype=torch.long))], deployment.cfg, runtime)["logits"]
                    positions = [i for i, _ in good]
                    rows.update(zip(positions, _rows(files, positions, rule.apply(logits).softmax(1), deployment.class_names, k)))
                for i, _, _ in items:  # input order
                    summary.rows.append(rows[i])
                    if writer is not None:
                        writer.add(rows[i])
                summary.predicted += len(good)
                summary.failures += [(_name(files[i]) or f"image {i}", rows[i]["error"]) for i in sorted(rows) if rows[i]["error"]]
                bar.update(len(items))
        header = {"checkpoint": str(deployment.ckpt_path), "rule": rule.metadata(), "rule_text": rule.describe(),
                  "target_prior": None if rule.target is None else rule.target.metadata(),
                  "class_names": deployment.class_names, "summary": {"images": summary.total, "predicted": summary.predicted,
                                                                     "unreadable": len(summary.failures)}}
        if writer is not None:
            writer.finish(header)
    finally:
        if stream is not None:
            stream.close()
    return summary


__all__ = ["find_images", "flat_row", "image_items", "predict_paths", "PredictionSummary", "top_k_columns"]
