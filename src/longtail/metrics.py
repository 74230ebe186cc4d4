"""Accuracy metrics for long-tailed evaluation, all derived from one confusion matrix.

Shot groups (shots.py) follow the training counts: many > 100, medium 20..100, few < 20 images. A group
with no classes, or whose classes have no evaluated images, is None ("not defined"), never 0.
Accuracies are percentages.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .errors import LongtailError
from .shots import shot_groups


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts, rows = true class, columns = predicted class. Summed across processes it stays exact."""
    flat = targets.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _mean(values: list[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def summarize(confusion: torch.Tensor, class_counts: Sequence[int]) -> dict:
    """top1, mean_class_acc, many/medium/few (mean per-class accuracy within the group), per_class."""
    confusion = confusion.double().cpu()
    support = confusion.sum(1)
    correct = confusion.diagonal()
    per_class = [float(100 * c / s) if s > 0 else None for c, s in zip(correct.tolist(), support.tolist())]
    total = float(support.sum())
    result = {
        "top1": float(100 * correct.sum() / total) if total else None,
        "mean_class_acc": _mean(per_class),
    }
    for name, classes in shot_groups(class_counts).items():
        result[name] = _mean([per_class[c] for c in classes])
    result["per_class"] = per_class
    result["num_images"] = int(total)
    return result


def evaluate_predictions(preds: torch.Tensor, targets: torch.Tensor, class_counts: Sequence[int]) -> dict:
    return summarize(confusion_matrix(preds, targets, len(class_counts)), class_counts)


def expert_metrics(outputs: dict[str, torch.Tensor], labels: torch.Tensor, class_counts: Sequence[int]) -> list[dict]:
    """Metrics of each expert's own prediction (argmax of its logits) when `outputs` holds
    'expert_logits' (E, N, C); an empty list for single-head models."""
    if "expert_logits" not in outputs:
        return []
    return [evaluate_predictions(logits.argmax(1), labels, class_counts) for logits in outputs["expert_logits"]]


TABLE_KEYS = ("top1", "mean_class_acc", "many", "medium", "few")


def format_table(metrics: dict, title: str = "") -> str:
    """One row of accuracies; with per-expert metrics ('experts'), the ensemble row then one row per expert."""
    rows = [("", metrics)]
    if metrics.get("experts"):
        rows = [("ensemble", metrics)] + [(f"expert {i}", m) for i, m in enumerate(metrics["experts"])]
    return format_rows(rows, title)


def format_rows(rows: Sequence[tuple[str, dict]], title: str = "", signed: Sequence[str] = ()) -> str:
    """Labelled rows of accuracies under one header; rows labelled in `signed` are differences (+/-)."""

    def cell(v: Optional[float], label: str) -> str:
        if v is None:
            return "  n/a"
        return f"{v:+6.2f}" if label in signed else f"{v:6.2f}"

    width = max(len(label) for label, _ in rows)
    lead = (lambda label: f"{label:<{width}} ") if width else (lambda label: "")
    lines = [lead("") + " ".join(f"{k:>14}" for k in TABLE_KEYS)]
    lines += [lead(label) + " ".join(f"{cell(m.get(k), label):>14}" for k in TABLE_KEYS) for label, m in rows]
    return (f"{title}\n" if title else "") + "\n".join(lines)


def with_class_names(metrics: dict, names: Sequence[str]) -> dict:
    """`metrics` with `class_names` and, beside each `per_class` list (top level and "raw"),
    `per_class_named`: {class name: accuracy}. `per_class` itself stays as it was (by index)."""
    named = dict(metrics, class_names=list(names))
    for block in (named, named.get("raw")):
        if isinstance(block, dict) and isinstance(block.get("per_class"), list):
            block["per_class_named"] = dict(zip(names, block["per_class"]))
    return named


def class_names_of(ckpt: dict) -> list[str]:
    """The class names a checkpoint carries; the index strings for one written before names were kept.
    Names that do not fit its class count are a damaged checkpoint, never silently replaced."""
    count = ckpt["num_classes"]
    names = ckpt.get("class_names")
    if names is None:
        return [str(i) for i in range(count)]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) != count:
        size = len(names) if isinstance(names, list) else type(names).__name__
        raise LongtailError(f"the checkpoint's class_names ({size}) do not name its {count} classes one string each; the checkpoint is damaged")
    return list(names)
