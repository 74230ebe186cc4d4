"""Reports from run directories: the seeds' results tables (top-1 by method x imbalance factor,
many / medium / few) and figures, as markdown, CSV, PNG and one HTML page.

    longtail report runs/* --out report          # or: longtail report runs --out report
    >>> import longtail
    >>> report = longtail.report("runs")         # the same tables (DataFrames) and figures (longtail.api.report)
    >>> report.tables["results"]
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

__all__ = ["Report", "Run", "find_runs", "results_table", "sheets", "write_files", "write_report"]


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
    from .figures import draw_figures

    runs, skipped = find_runs(run_dirs)
    tables = build_tables(runs)
    return write_files(runs, skipped, tables, {t.dataset: draw_figures(t) for t in tables}, out_dir)


def sheets(tables: list[Table]) -> dict[str, tuple[list[str], list[list]]]:
    """The report's CSV sheets by file stem (results, shots, per_class, summary): (header, rows)."""
    records = summary(tables)
    return {"results": csv_rows(tables), "shots": csv_rows(tables, shots=True),
            "per_class": per_class_rows(tables),  # by class name where the runs kept names
            "summary": (list(records[0]) if records else [], [list(r.values()) for r in records])}


def write_files(runs: list[Run], skipped: list[Path], tables: list[Table], drawn: dict[str, list], out_dir: str | Path) -> Report:
    """Write the report of tables already built and figures already drawn (figures.draw_figures, by dataset)."""
    from .html import write_html

    out_dir = Path(out_dir)
    figure_dir = out_dir / "figures"
    try:
        figure_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LongtailError(f"cannot create the report folder '{out_dir}' ({exc.strerror}); pass --out with a writable folder") from None
    (out_dir / "results.md").write_text(markdown(tables), encoding="utf-8")
    for stem, (header, rows) in sheets(tables).items():
        _write_csv(out_dir / f"{stem}.csv", header, rows)
    figures = {}
    for t in tables:
        for _, _, name, fig in drawn.get(t.dataset, []):
            fig.savefig(figure_dir / name, dpi=100)
        figures[t.dataset] = [(c, cap, f"figures/{name}") for c, cap, name, _ in drawn.get(t.dataset, [])]
    write_html(tables, figures, out_dir, out_dir / "index.html", [r.path for r in runs], skipped)
    names = ["results.md", "results.csv", "shots.csv", "per_class.csv", "summary.csv", "index.html"]
    names += [name for figs in figures.values() for _, _, name in figs]
    return Report(tables, runs, skipped, [out_dir / n for n in names])


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


# `longtail.report(...)`: this package is also the API function of its name (longtail.api.reports.report)
from .._callable import make_callable  # noqa: E402

make_callable(__name__, "longtail.api.reports", "report")
