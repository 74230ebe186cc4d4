"""Report figures as PNG files, drawn on matplotlib `Figure` objects (Agg canvas, no pyplot state,
no display needed). One set per dataset and imbalance factor; means over seeds."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import LongtailError
from ..shots import SHOTS, shot_groups
from .label_shift import CORRECTIONS, shift_priors, shift_values
from .tables import Entry, Table, mean_std

BETAS = (0.0, 0.99, 0.999, 0.9999)


def effective_probabilities(class_counts: Sequence[int], beta: float) -> np.ndarray:
    """Cui et al. (CVPR 2019): effective number E_c = (1 - beta^n_c) / (1 - beta), normalised to sum 1.
    beta = 0 gives uniform weights; beta -> 1 tends to the raw prior n_c / sum(n)."""
    counts = np.asarray(class_counts, dtype=np.float64)
    effective = counts if beta >= 1 else (1.0 - np.power(beta, counts)) / (1.0 - beta)
    return effective / effective.sum()


try:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
except ImportError:
    raise LongtailError("the report needs matplotlib: pip install longtail[report]") from None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def write_figures(table: Table, out_dir: Path) -> list[tuple[str, str, str]]:
    """Draw every figure of one dataset table into out_dir; returns (column, caption, file name)."""
    written = []
    for column, caption, name, fig in draw_figures(table):
        fig.savefig(out_dir / name, dpi=100)
        written.append((column, caption, name))
    return written


def draw_figures(table: Table) -> list[tuple[str, str, str, "Figure"]]:
    """Every figure of one dataset table: (column, caption, file name, matplotlib Figure)."""
    drawn = []
    for column in table.columns:
        by_method = {m: cells[column] for m, cells in table.rows.items() if cells[column]}
        base = f"{_slug(table.dataset)}_{_slug(column)}"
        where = f"{table.dataset}, {column}"
        for kind, caption, draw in (
            ("per_class", f"Per-class test accuracy against training images ({where})", _per_class),
            ("shots", f"Many / medium / few test accuracy ({where})", _shots),
            ("tau", f"Accuracy against τ from `longtail tune` ({where})", _tau_curves),
            ("training", f"Training loss and validation (or, without validation, test) top-1 per epoch ({where})", _training),
            ("effective", f"Effective class probabilities, classes ranked by frequency ({where})", _effective),
            ("shift", f"Test top-1 against the test class prior, per correction (`longtail shift`; {where})", _shift_curves),
            ("reliability", f"Reliability of the test softmax before and after temperature scaling ({where})", _reliability),
        ):
            fig = draw(by_method, where)
            if fig is None:  # nothing to draw, e.g. no tune_*.json for this column
                continue
            drawn.append((column, caption, f"{kind}_{base}.png", fig))
    return drawn


def _new(width: float = 7.0, height: float = 4.5, cols: int = 1, rows: int = 1, legend: int = 0):
    height += 0.25 * ((legend + 1) // 2)  # room for a two-column legend below the axes
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False)


def _legend(fig, ax):
    # below the axes, so a long list of methods never hides the data
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize="small")
    return fig


def _per_class(by_method: dict[str, list[Entry]], where: str):
    fig, axes = _new(legend=len(by_method))
    ax, drawn = axes[0, 0], False
    for method, cell in by_method.items():
        usable = [e for e in cell if e.metrics.get("per_class") and e.class_counts]
        if not usable:
            continue
        counts = np.asarray(usable[0].class_counts, dtype=float)
        acc = np.nanmean([[np.nan if a is None else a for a in e.metrics["per_class"]] for e in usable], axis=0)
        order = np.argsort(-counts)
        ax.plot(counts[order], acc[order], marker="o", markersize=3, linewidth=1, label=method)
        drawn = True
    if not drawn:
        return None
    ax.set(xscale="log", xlabel="training images of the class (log scale)", ylabel="test accuracy (%)", title=where)
    return _legend(fig, ax)


def _shots(by_method: dict[str, list[Entry]], where: str):
    fig, axes = _new(legend=len(by_method))
    ax = axes[0, 0]
    width = 0.8 / max(len(by_method), 1)
    x = np.arange(len(SHOTS))
    for i, (method, cell) in enumerate(by_method.items()):
        stats = [mean_std(e.metrics.get(s) for e in cell) for s in SHOTS]
        heights = [np.nan if m is None else m for m, _, _ in stats]
        errors = [0.0 if s is None else s for _, s, _ in stats]
        ax.bar(x + (i - (len(by_method) - 1) / 2) * width, heights, width, yerr=errors, capsize=2, label=method)
    ax.set_xticks(x, [f"{s}\n{_group_size(by_method, s)}" for s in SHOTS])
    ax.set(ylabel="test accuracy (%)", title=where, ylim=(0, 100))
    return _legend(fig, ax)


def _group_size(by_method: dict[str, list[Entry]], shot: str) -> str:
    counts = next((e.class_counts for cell in by_method.values() for e in cell if e.class_counts), None)
    if counts is None:
        return ""
    return f"({len(shot_groups(counts)[shot])} classes)"


def _tau_curves(by_method: dict[str, list[Entry]], where: str):
    tuned = {m: [e for e in cell if e.tune and e.tune.get("curve")] for m, cell in by_method.items()}
    tuned = {m: cell for m, cell in tuned.items() if cell}
    if not tuned:
        return None
    fig, axes = _new(legend=len(tuned))
    ax = axes[0, 0]
    for method, cell in tuned.items():
        points: dict[float, list] = {}
        for e in cell:
            for p in e.tune["curve"]:
                points.setdefault(float(p["tau"]), []).append(p.get("top1"))
        taus = sorted(points)
        line, = ax.plot(taus, [mean_std(points[t])[0] for t in taus], marker=".", label=method)
        for e in (e for e in cell if e.tau is not None):  # the chosen tau of each seed
            ax.axvline(e.tau, color=line.get_color(), linestyle=":", linewidth=1)
    on = {e.tune.get("on", "val") for cell in tuned.values() for e in cell}
    split = "validation" if on == {"val"} else "TEST (tuned on the test set)" if on == {"test"} else "validation / test"
    ax.set(xlabel="τ", ylabel=f"{split} top-1 (%)", title=f"{where}; dotted: chosen τ")
    return _legend(fig, ax)


def _training(by_method: dict[str, list[Entry]], where: str):
    # each run once, under the name of its first row (post-hoc rows share the run's training)
    seen, curves = set(), {}
    for method, cell in by_method.items():
        runs = [e.run for e in cell if e.run.epochs and id(e.run) not in seen]
        seen.update(id(r) for r in runs)
        if runs:
            curves[method] = runs
    if not curves:
        return None
    # right panel: validation top-1, or, for runs without validation that test every epoch
    # (eval.test_every_epoch, as google-research's release logs), test top-1 and its post-hoc one dashed
    rows = [row for runs in curves.values() for run in runs for row in run.epochs]
    split = "val" if any(row.get("val_top1") is not None for row in rows) else "test"
    posthoc = sorted({k for row in rows for k in row if split == "test" and k.startswith("test_") and k.endswith("_top1")} - {"test_top1"})
    fig, axes = _new(width=11, cols=2, legend=len(curves) * (1 + len(posthoc)))
    for number, (method, runs) in enumerate(curves.items()):
        panels = [(axes[0, 0], "train_loss", method, "-"), (axes[0, 1], f"{split}_top1", method, "-")]
        panels += [(axes[0, 1], key, f"{method}, {key[5:-5]}-adjusted", "--") for key in posthoc]
        for ax, key, label, style in panels:
            values: dict[int, list] = {}
            for run in runs:
                for row in run.epochs:
                    values.setdefault(int(row["epoch"]), []).append(row.get(key))
            epochs = [ep for ep in sorted(values) if mean_std(values[ep])[0] is not None]
            if epochs or key == "train_loss" or key == f"{split}_top1":
                ax.plot(epochs, [mean_std(values[ep])[0] for ep in epochs], style, color=f"C{number % 10}", label=label)
    axes[0, 0].set(xlabel="epoch", ylabel="training loss", title=where)
    axes[0, 1].set(xlabel="epoch", ylabel=f"{'validation' if split == 'val' else 'test'} top-1 (%)", title=where)
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _legend(fig, axes[0, 1])


def _effective(by_method: dict[str, list[Entry]], where: str):
    counts: Optional[list] = next((e.class_counts for cell in by_method.values() for e in cell if e.class_counts), None)
    if not counts:
        return None
    ranked = sorted(counts, reverse=True)
    panels = [(f"β = {b:g}" + (" (uniform)" if b == 0 else ""), effective_probabilities(ranked, b)) for b in BETAS]
    panels.append(("raw prior π (β → 1)", effective_probabilities(ranked, 1.0)))
    fig, axes = _new(width=7, height=9, rows=len(panels))
    for ax, (title, probs) in zip(axes[:, 0], panels):
        ax.bar(np.arange(1, len(probs) + 1), probs, width=0.9)
        ax.set_title(title, fontsize="medium")
        ax.set_ylabel("probability")
    axes[-1, 0].set_xlabel("class rank by training images (1 = most frequent)")
    fig.suptitle(f"Effective class probabilities (Cui et al.), {where}")
    return fig


def _raw_runs(by_method: dict[str, list[Entry]], has) -> dict[str, list]:
    """method -> its raw-argmax runs (each once) for which has(run) holds."""
    found = {m: list({id(e.run): e.run for e in cell if e.variant == 0 and has(e.run)}.values()) for m, cell in by_method.items()}
    return {m: runs for m, runs in found.items() if runs}


def _panels(count: int, legend: int = 0):
    cols = min(count, 3)
    rows = (count + cols - 1) // cols
    fig, axes = _new(width=max(4.2 * cols, 6.0), height=3.6 * rows + 0.4, cols=cols, rows=rows, legend=legend)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes.flat


def _shift_curves(by_method: dict[str, list[Entry]], where: str):
    runs = _raw_runs(by_method, lambda run: run.shift is not None)
    if not runs:
        return None
    priors = shift_priors(runs)
    fig, axes = _panels(len(runs), legend=len(CORRECTIONS))
    x = np.arange(len(priors))
    for ax, (method, found) in zip(axes, runs.items()):
        for correction, label in CORRECTIONS.items():
            means = [mean_std(shift_values(found, correction, p, "top1"))[0] for p in priors]
            if all(m is None for m in means):
                continue
            ax.plot(x, [np.nan if m is None else m for m in means], marker="o", markersize=3, label=label)
        ax.set_xticks(x, priors, rotation=45, ha="right", fontsize="small")
        ax.set(title=method, ylabel="test top-1 (%)")
    fig.suptitle(f"Accuracy against the test class prior ({where})", fontsize="medium")
    return _legend(fig, axes[0])


def _merged_bins(blocks: list[dict], when: str) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Seeds' reliability bins pooled: counts summed, confidence and accuracy weighted by count."""
    tables = [b[when]["bins"] for b in blocks if isinstance(b.get(when), dict) and b[when].get("bins")]
    if not tables:
        return None
    counts = np.sum([t["count"] for t in tables], axis=0).astype(float)
    def pooled(key: str) -> np.ndarray:
        total = np.sum([[0.0 if v is None else v * n for v, n in zip(t[key], t["count"])] for t in tables], axis=0)
        return np.divide(total, counts, out=np.full_like(counts, np.nan), where=counts > 0)
    return counts, pooled("confidence"), pooled("accuracy")


def _reliability(by_method: dict[str, list[Entry]], where: str):
    runs = _raw_runs(by_method, lambda run: isinstance(run.metrics.get("calibration"), dict))
    if not runs:
        return None
    fig, axes = _panels(len(runs), legend=2)
    for ax, (method, found) in zip(axes, runs.items()):
        blocks = [run.metrics["calibration"] for run in found]
        for when, style in (("before", "o-"), ("after", "s--")):
            merged = _merged_bins(blocks, when)
            if merged is None:
                continue
            counts, confidence, accuracy = merged
            ece = 100 * np.nansum(counts * np.abs(accuracy - confidence)) / counts.sum()
            ax.plot(confidence, accuracy, style, markersize=4, label=f"{when} calibration", alpha=0.85)
            ax.text(0.03, 0.92 if when == "before" else 0.84, f"ECE {when}: {ece:.2f} %", transform=ax.transAxes, fontsize="small")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean confidence (15 bins)", ylabel="accuracy", title=method)
    return _legend(fig, axes[0])
