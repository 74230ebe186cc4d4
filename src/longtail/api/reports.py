"""`longtail.report` and `Report`: the tables and figures `longtail report` writes, as DataFrames and
matplotlib Figures."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from .output import pandas_module, say

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure


class Report:
    """The report of some run directories.

    `tables`: DataFrames by name, the CSV files `longtail report` writes: "results" (top-1, method x
    imbalance factor, mean ± std over seeds, as printed), "shots" (many / medium / few), "per_class" and
    "summary" (the numbers behind the cells). `figures`: matplotlib Figures by file name (per-class accuracy
    against training images, shots, tau curves, training curves, ...). `markdown`: results.md. `runs`: the
    run directories read; `skipped`: unfinished ones; `files`: what was written (with `out`).

    Examples:
        >>> report = longtail.report("runs/ce_imba100", "runs/la_imba100")
        >>> report.tables["shots"]
        >>> report.figures  # {'per_class_fashion_mnist_lt_if_100.png': <Figure ...>, ...}
    """

    def __init__(self, tables: dict, figures: dict, markdown: str, runs: list[Path], skipped: list[Path],
                 files: list[Path]) -> None:
        self.tables: dict[str, "pandas.DataFrame"] = tables
        self.figures: dict[str, "Figure"] = figures
        self.markdown = markdown
        self.runs, self.skipped, self.files = runs, skipped, files

    def __repr__(self) -> str:
        return f"<longtail Report: {len(self.runs)} runs, tables {list(self.tables)}, {len(self.figures)} figures>"

    def _repr_markdown_(self) -> str:  # a notebook shows the results tables
        return self.markdown


def report(*run_dirs: Union[str, Path], out: Optional[Union[str, Path]] = None, progress: bool = False) -> Report:
    """Tables and figures from run directories (or folders searched for them), as `longtail report` makes them.

    Args:
        *run_dirs: run directories (or `Run`s), or folders searched for them.
        out: also write results.md, the CSV files, figures/*.png and index.html into this folder, as
            `longtail report RUNS --out OUT` does.
        progress: print the skipped runs, the results tables and what was written, as the command does.

    Examples:
        >>> import longtail
        >>> report = longtail.report("runs")
        >>> report.tables["summary"][["method", "top1_mean", "few_mean"]]
    """
    from ..report import find_runs, sheets, write_files
    from ..report.figures import draw_figures
    from ..report.markdown import markdown
    from ..report.tables import build_tables

    pandas = pandas_module()
    runs, skipped = find_runs(list(run_dirs))
    tables = build_tables(runs)
    drawn = {t.dataset: draw_figures(t) for t in tables}
    files: list[Path] = []
    if out is not None:
        files = write_files(runs, skipped, tables, drawn, out).files
    log = say(progress)
    for path in skipped if progress else []:
        print(f"longtail: skipped unfinished run '{path}' (no metrics.json)", file=sys.stderr)
    text = markdown(tables)
    log(text)
    if out is not None:
        counts = {"run": len(runs), "dataset": len(tables), "figure": sum(f.suffix == ".png" for f in files)}
        log(f"wrote {Path(out) / 'index.html'}: " + ", ".join(f"{n} {w}{'s' if n != 1 else ''}" for w, n in counts.items()))
    frames = {stem: pandas.DataFrame(rows, columns=header) for stem, (header, rows) in sheets(tables).items()}
    figures = {name: fig for per_dataset in drawn.values() for _, _, name, fig in per_dataset}
    return Report(frames, figures, text, [r.path for r in runs], skipped, files)


__all__ = ["Report", "report"]
