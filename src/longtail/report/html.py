"""index.html: one self-contained page (figures embedded as base64 PNG) with the tables and figures.

A small script marks the page once it has loaded: <body data-images-loaded="k" data-images-total="n">
and the title "longtail report (ready)" when every image decoded, so a headless browser can check it.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from .label_shift import extra_grids
from .tables import SELECTED_ON_TEST_NOTE, Table, grid, has_selected_on_test, provenance, tuned_on_test

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: center; }
td:first-child, th:first-child { text-align: left; }
td.missing { color: #b00; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 560px; border: 1px solid #eee; }
figure img.wide { max-width: 1120px; }
figcaption { font-size: 0.85em; max-width: 560px; }
.warning { color: #b00; font-weight: bold; }
"""

CHECK_IMAGES = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", String(loaded));
  document.body.setAttribute("data-images-total", String(images.length));
  document.title = loaded === images.length ? "longtail report (ready)" : "longtail report (broken images)";
});
"""


def _table_html(table: Table, shots: bool, kind: str) -> str:
    return _grid_html(*grid(table, shots), table.dataset, kind)


def _grid_html(header: list[str], rows: list[list[str]], dataset: str, kind: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="{"missing" if c == "missing" else ""}">{escape(c)}</td>' for c in row) + "</tr>"
        for row in rows
    )
    return (f'<table class="{kind}" data-dataset="{escape(dataset)}">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def write_html(tables: list[Table], figures: dict[str, list[tuple[str, str, str]]], figure_dir: Path,
               out_file: Path, runs: list[Path], skipped: list[Path]) -> None:
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>longtail report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>longtail report</h1>",
        f"<p>{len(runs)} runs. Test accuracy (%) of the selected checkpoint, mean ± sample std over seeds; "
        "'missing': no run for that cell; 'n/a': the shot group has no classes; τ: the temperature chosen by "
        "<code>longtail tune</code>.</p>",
    ]
    for table in tables:
        parts += [f"<h2>{escape(table.dataset)}</h2>", f"<p>{escape(provenance(table))}.</p>", "<h3>Top-1 accuracy (%)</h3>", _table_html(table, False, "top1"),
                  "<h3>Many / medium / few accuracy (%)</h3>", _table_html(table, True, "shots")]
        for kind, title, (header, rows) in extra_grids(table):
            parts += [f"<h3>{escape(title)}</h3>", _grid_html(header, rows, table.dataset, kind)]
        if tuned_on_test(table):
            parts.append("<p class='warning'>Rows marked 'τ tuned on test' chose τ on the test set itself: "
                         "optimistic, not comparable with the other rows.</p>")
        if has_selected_on_test(table):
            parts.append(f"<p class='warning'>{escape(SELECTED_ON_TEST_NOTE)}</p>")
        for column, caption, name in figures.get(table.dataset, []):
            data = base64.b64encode((figure_dir / name).read_bytes()).decode("ascii")
            wide = " class='wide'" if name.startswith(("training_", "shift_", "reliability_")) else ""
            parts.append(f"<figure><img{wide} src='data:image/png;base64,{data}' alt='{escape(caption)}' data-file='{escape(name)}'>"
                         f"<figcaption>{escape(caption)}</figcaption></figure>")
    parts.append("<details><summary>Runs read</summary><ul>" + "".join(f"<li>{escape(str(r))}</li>" for r in runs) + "</ul></details>")
    if skipped:
        parts.append("<p>Unfinished runs skipped (no metrics.json): " + ", ".join(escape(str(s)) for s in skipped) + "</p>")
    parts.append(f"<script>{CHECK_IMAGES}</script></body></html>")
    out_file.write_text("\n".join(parts), encoding="utf-8")
