"""Figures of the documentation drawn from the records under benchmarks/results, written beside them.

    python scripts/docs_figures.py          (needs matplotlib: pip install "longtail[report]")

- quickstart_times.png     what `make demo` printed (quickstart_times.md): top-1 and medium-shot accuracy,
                           raw argmax against post-hoc logit adjustment
- image_pipeline_cpu.png   images/s per core of each image-pipeline row, one process (image_pipeline_cpu.md)

Every number is read from the record's text, so a figure cannot show what its record does not say. The
class-count chart of the own-data page is `longtail inspect`'s own output (inspect_fmnist_lt_imba100.md).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def demo_numbers(text: str) -> dict[str, tuple[float, float]]:
    """{metric: (raw, post-hoc LA)} from the `make demo` row of quickstart_times.md."""
    row = next(line for line in text.splitlines() if line.startswith("| `make demo`"))
    top1 = re.search(r"top-1 (\d+\.\d+) raw and (\d+\.\d+) with post-hoc LA", row)
    medium = re.search(r"medium-shot (\d+\.\d+) → (\d+\.\d+)", row)
    if not (top1 and medium):
        raise SystemExit("docs_figures: quickstart_times.md's make demo row no longer says top-1 and medium-shot")
    return {"top-1": (float(top1[1]), float(top1[2])), "medium-shot": (float(medium[1]), float(medium[2]))}


# the record's row names, shortened for the plot's axis
SHORT = {"(a) decode only (Pillow, full size, RGB)": "(a) Pillow decode only",
         "(b) torchvision reference recipe (PIL RandomResizedCrop, flip, ColorJitter, ToTensor, Normalize)":
             "(b) torchvision reference recipe",
         "old longtail": "longtail before (ImageList)",
         "(c) longtail": "(c) longtail after, workers' share",
         "(c) plus the device's share (jitter, normalise) on the same CPU core": "(c) + jitter, normalise, same core",
         "(c) with Pillow's decoder (draft) in place of simplejpeg": "(c) with Pillow's draft decoder"}


def pipeline_rows(text: str) -> dict[str, list[tuple[str, float]]]:
    """{image size: [(row, images/s per core)]} for one process, from image_pipeline_cpu.md's table."""
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[2] == "1" and re.fullmatch(r"\d+(\.\d+)?", cells[4]):
            size = cells[0].split(" ")[0]
            name = cells[1].split(":")[0]
            out.setdefault(size, []).append((SHORT.get(name, name), float(cells[4])))
    return out


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    demo = demo_numbers((RESULTS / "quickstart_times.md").read_text(encoding="utf-8"))
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=110)
    xs = range(len(demo))
    raw = [v[0] for v in demo.values()]
    la = [v[1] for v in demo.values()]
    bars = ax.bar([x - 0.18 for x in xs], raw, 0.36, label="CE, raw argmax")
    bars_la = ax.bar([x + 0.18 for x in xs], la, 0.36, label="CE + post-hoc LA (τ = 1)")
    for group in (bars, bars_la):
        ax.bar_label(group, fmt="%.2f", fontsize=8)
    ax.set_xticks(list(xs), list(demo))
    ax.set_ylim(min(raw + la) - 5, 101)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("make demo: Fashion-MNIST-LT, IF 100, ResNet-32, seed 0", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(RESULTS / "quickstart_times.png")
    plt.close(fig)

    rows = pipeline_rows((RESULTS / "image_pipeline_cpu.md").read_text(encoding="utf-8"))
    fig, axes = plt.subplots(1, len(rows), figsize=(9, 3.4), dpi=110, sharey=True)
    for ax, (size, items) in zip(axes, rows.items()):
        names = [name for name, _ in items]
        ax.barh(range(len(items)), [v for _, v in items], color="tab:blue")
        for i, (_, v) in enumerate(items):
            ax.text(v, i, f" {v:.0f}", va="center", fontsize=8)
        ax.set_yticks(range(len(items)), names, fontsize=8)
        ax.set_title(f"{size} JPEG, one process", fontsize=9)
        ax.set_xlabel("images/s per core")
        ax.set_xlim(0, max(v for _, v in items) * 1.2)
    axes[0].invert_yaxis()  # the axes share y: once for both, the record's row order from the top
    fig.tight_layout()
    fig.savefig(RESULTS / "image_pipeline_cpu.png")
    plt.close(fig)
    print("docs_figures: wrote quickstart_times.png and image_pipeline_cpu.png in benchmarks/results")


if __name__ == "__main__":
    sys.exit(main())
