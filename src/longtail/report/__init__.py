"""Reports from run directories: the seeds' results tables (top-1 by method x imbalance factor,
many / medium / few) and figures, as markdown, CSV, PNG and one HTML page.

    longtail report runs/* --out report          # or: longtail report runs --out report
    >>> from longtail.report import results_table
    >>> results_table(["runs"])                  # a pandas DataFrame of the top-1 table

Only config.yaml, metrics.json, tune_*.json, eval_*.json (test split) and epochs.jsonl are read.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import LongtailError
from .runs import Run, find_runs
from .markdown import markdown
from .tables import Table, build_tables, csv_rows, per_class_rows, summary

__all__ = ["Report", "Run", "find_runs", "results_table", "write_report"]


@dataclass
class Report:
    tables: list[Table]
    runs: list[Run]
    skipped: list[Path]  # unfinished runs met while searching folders
    files: list[Path]  # everything written


def results_table(run_dirs: str | Path | Iterable[str | Path], shots: bool = False, numeric: bool = False):
    """The top-1 table (or with shots=True the many/medium/few table) as a pandas DataFrame indexed
    by (dataset, method); numeric=True gives instead one row per cell with means, stds and n."""
    try:
        import pandas as pd
    except ImportError:
        raise LongtailError("results_table needs pandas: pip install longtail[report]") from None
    tables = build_tables(find_runs(run_dirs)[0])
    if numeric:
        return pd.DataFrame(summary(tables))
    header, rows = csv_rows(tables, shots)
    return pd.DataFrame(rows, columns=header).set_index(["dataset", "Method"])


def write_report(run_dirs: str | Path | Iterable[str | Path], out_dir: str | Path) -> Report:
    """Write results.md, results.csv, shots.csv, per_class.csv, summary.csv, figures/*.png and index.html into out_dir."""
    from .figures import write_figures
    from .html import write_html

    runs, skipped = find_runs(run_dirs)
    tables = build_tables(runs)
    out_dir = Path(out_dir)
    figure_dir = out_dir / "figures"
    try:
        figure_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LongtailError(f"cannot create the report folder '{out_dir}' ({exc.strerror}); pass --out with a writable folder") from None
    (out_dir / "results.md").write_text(markdown(tables), encoding="utf-8")
    _write_csv(out_dir / "results.csv", *csv_rows(tables))
    _write_csv(out_dir / "shots.csv", *csv_rows(tables, shots=True))
    _write_csv(out_dir / "per_class.csv", *per_class_rows(tables))  # by class name where the runs kept names
    records = summary(tables)
    _write_csv(out_dir / "summary.csv", list(records[0]) if records else [], [list(r.values()) for r in records])
    figures = {t.dataset: [(c, cap, f"figures/{name}") for c, cap, name in write_figures(t, figure_dir)] for t in tables}
    write_html(tables, figures, out_dir, out_dir / "index.html", [r.path for r in runs], skipped)
    names = ["results.md", "results.csv", "shots.csv", "per_class.csv", "summary.csv", "index.html"]
    names += [name for figs in figures.values() for _, _, name in figs]
    return Report(tables, runs, skipped, [out_dir / n for n in names])


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
