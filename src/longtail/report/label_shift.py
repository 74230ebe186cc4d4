"""The label-shift and calibration tables of a report (plain Python, no torch: JSON in, strings out).

- Test-agnostic table (SADE's layout): per dataset and imbalance factor, one block of rows per
  correction (none, known, EM, BBSE), one row per method, one column per test prior; cells top-1 (%)
  "mean ± std" over the seeds' shift.json files, with the mean L1 error of an estimated prior.
- Calibration table: ECE (%) / NLL / Brier of the test softmax before and after temperature scaling on
  validation, from metrics.json's "calibration" block.

Methods are the raw-argmax rows of the accuracy table: both files describe the trained model itself.
"""

from __future__ import annotations

import re
import statistics
from typing import Any, Optional

from .runs import Run
from .tables import Table, mean_std

CORRECTIONS = {"none": "no correction", "known": "known prior", "em": "EM-estimated prior", "bbse": "BBSE-estimated prior"}
CALIBRATION_COLUMNS = [("ece", "ECE %"), ("nll", "NLL"), ("brier", "Brier")]


def prior_order(spec: str) -> tuple:
    """forward-50 ... forward-2, uniform, backward-2 ... backward-50, then anything else (files) by name."""
    match = re.fullmatch(r"(forward|backward)-([\d.]+)", spec)
    if match:
        factor = float(match.group(2))
        return (0, -factor, spec) if match.group(1) == "forward" else (2, factor, spec)
    return (1, 0.0, spec) if spec == "uniform" else (3, 0.0, spec)


def method_runs(table: Table) -> dict[str, dict[str, list[Run]]]:
    """column -> method label -> the runs of its raw-argmax row (each run once)."""
    found: dict[str, dict[str, list[Run]]] = {}
    for method, cells in table.rows.items():
        for column, cell in cells.items():
            runs = list({id(e.run): e.run for e in cell if e.variant == 0}.values())
            if runs:
                found.setdefault(column, {})[method] = runs
    return found


def shift_priors(by_method: dict[str, list[Run]]) -> list[str]:
    specs = {r["test_prior"] for runs in by_method.values() for run in runs if run.shift for r in run.shift["rows"]}
    return sorted(specs, key=prior_order)


def shift_values(runs: list[Run], correction: str, prior: str, key: str) -> list[Any]:
    return [r.get(key) for run in runs if run.shift for r in run.shift["rows"]
            if r.get("correction") == correction and r.get("test_prior") == prior]


def _cell(runs: list[Run], correction: str, prior: str) -> str:
    mean, std, n = mean_std(shift_values(runs, correction, prior, "top1"))
    if mean is None:
        return "missing"
    text = f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"
    l1 = [v for v in shift_values(runs, correction, prior, "prior_l1") if v is not None]
    return text + (f" (L1 {statistics.fmean(l1):.3f})" if l1 else "")


def shift_grid(by_method: dict[str, list[Run]]) -> Optional[tuple[list[str], list[list[str]]]]:
    """Header and rows (correction, method, one cell per test prior), or None without shift.json files."""
    with_shift = {m: [r for r in runs if r.shift] for m, runs in by_method.items()}
    with_shift = {m: runs for m, runs in with_shift.items() if runs}
    if not with_shift:
        return None
    priors = shift_priors(with_shift)
    present = {r.get("correction") for runs in with_shift.values() for run in runs for r in run.shift["rows"]}
    corrections = [c for c in CORRECTIONS if c in present] + sorted(c for c in present if c not in CORRECTIONS)
    rows = [[CORRECTIONS.get(c, c), m] + [_cell(runs, c, p) for p in priors]
            for c in corrections for m, runs in with_shift.items()]
    return ["Correction", "Method", *priors], rows


def _calibration(run: Run) -> Optional[dict]:
    block = run.metrics.get("calibration")
    return block if isinstance(block, dict) and isinstance(block.get("before"), dict) else None


def calibration_grid(by_method: dict[str, list[Run]]) -> Optional[tuple[list[str], list[list[str]]]]:
    """Header and rows (method, before / after per metric, T), or None when no run has the block."""
    blocks = {m: [b for b in map(_calibration, runs) if b] for m, runs in by_method.items()}
    blocks = {m: b for m, b in blocks.items() if b}
    if not blocks:
        return None
    header = ["Method"] + [f"{name} {when}" for _, name in CALIBRATION_COLUMNS for when in ("before", "after")] + ["T"]
    rows = []
    for method, found in blocks.items():
        row = [method]
        for key, _ in CALIBRATION_COLUMNS:
            for when in ("before", "after"):
                mean, std, _ = mean_std((b[when] or {}).get(key) if b.get(when) else None for b in found)
                digits = 2 if key == "ece" else 4
                row.append("n/a" if mean is None else f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}"))
        mean, _, _ = mean_std(b.get("temperature") for b in found)
        row.append("n/a" if mean is None else f"{mean:.3f}")
        rows.append(row)
    return header, rows


def extra_grids(table: Table) -> list[tuple[str, str, tuple[list[str], list[list[str]]]]]:
    """(kind, title, grid) for every column of the table that has shift.json or calibration data."""
    found = []
    for column, by_method in sorted(method_runs(table).items(), key=lambda item: table.columns.index(item[0])):
        shift = shift_grid(by_method)
        if shift:
            found.append(("shift", f"Top-1 accuracy (%) under test-prior shift, {column} (test-agnostic protocol; "
                                   "L1: error of the estimated prior)", shift))
        calibration = calibration_grid(by_method)
        if calibration:
            found.append(("calibration", f"Calibration of the test softmax, {column}: before and after temperature "
                                         "scaling fitted on validation", calibration))
    return found
