"""results.md: the report's tables as markdown (the main grid, the shot groups, and the label-shift and
calibration tables of report.label_shift). Plain Python, no torch."""

from __future__ import annotations

from ..shots import RULE
from .label_shift import extra_grids
from .tables import MISSING, SELECTED_ON_TEST_NOTE, UNDEFINED, Table, grid, has_selected_on_test, provenance, tuned_on_test


def markdown(tables: list[Table]) -> str:
    parts = ["# Results", "",
             "Test accuracy (%) of the selected checkpoint, mean ± sample std over seeds (n - 1); "
             f"'{MISSING}': no run for that cell; '{UNDEFINED}': the shot group has no classes; "
             "τ: the post-hoc temperature chosen by `longtail tune`.", ""]
    for table in tables:
        parts += [f"## {table.dataset}", "", provenance(table) + ".", "", "Top-1 accuracy (%)", "", _md_table(*grid(table)), "",
                  f"Many / medium / few accuracy (%): classes with {RULE}", "",
                  _md_table(*grid(table, shots=True)), ""]
        if tuned_on_test(table):
            parts += ["**Rows marked 'τ tuned on test' chose τ on the test set itself: optimistic, not comparable "
                      "with the other rows.**", ""]
        if has_selected_on_test(table):
            parts += [f"**{SELECTED_ON_TEST_NOTE}**", ""]
        for _, title, (header, rows) in extra_grids(table):  # shift.json and calibration tables, where present
            parts += [title, "", _md_table(header, rows), ""]
    return "\n".join(parts)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| :-- |" + " :-: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
