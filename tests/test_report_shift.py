"""The report's label-shift table, calibration table, accuracy-vs-prior figure and reliability diagram,
from fake run directories with known shift.json and metrics.json calibration blocks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PNG_SIGNATURE, cli_env, make_run

pytest.importorskip("matplotlib", reason="matplotlib is in the 'report' extra: pip install longtail[report]")
from matplotlib.image import imread  # noqa: E402

from longtail.errors import LongtailError  # noqa: E402
from longtail.report import write_report  # noqa: E402

PRIORS = ["backward-50", "uniform", "forward-50"]  # written out of order: the table sorts them


def shift_file(top1: dict[str, float], l1: float) -> dict:
    rows = []
    for prior in PRIORS:
        for correction in ("none", "known", "em", "bbse"):
            rows.append({"test_prior": prior, "n_images": 1000, "correction": correction,
                         "top1": top1[correction] + PRIORS.index(prior), "mean_class_acc": 50.0,
                         "prior_l1": l1 if correction in ("em", "bbse") else None})
    return {"calibration": {"method": "bcts", "temperature": 1.1, "split": "val", "ece_before": 5.0, "ece_after": 1.0},
            "rows": rows}


def calibration_block(ece_before: float, ece_after: float, temperature: float) -> dict:
    def metrics(ece: float, shift: float) -> dict:
        bins = {"count": [0] * 10 + [100, 200, 300, 200, 200], "confidence": [None] * 10 + [0.7, 0.75, 0.82, 0.88, 0.95],
                "accuracy": [None] * 10 + [0.6 + shift, 0.7, 0.8, 0.85, 0.9]}
        return {"ece": ece, "nll": ece / 10, "brier": ece / 100, "bins": bins}
    return {"method": "temperature", "fitted_on": "val", "temperature": temperature,
            "before": metrics(ece_before, 0.0), "after": metrics(ece_after, 0.05), "reason": None}


def make_shift_runs(root: Path) -> Path:
    for seed, offset in ((0, 0.0), (1, 2.0)):
        run = make_run(root / f"ce_s{seed}", [f"seed={seed}"], 60.0 + offset,
                       extra_metrics={"calibration": calibration_block(4.0 + offset, 1.0, 1.2 + offset / 10)})
        (run / "shift.json").write_text(json.dumps(shift_file({"none": 70 + offset, "known": 80 + offset,
                                                               "em": 79 + offset, "bbse": 78 + offset}, 0.01 + offset / 100)))
    make_run(root / "la_s0", ["loss.name=la"], 70.0)  # no shift.json, no calibration block: absent from the new tables
    return root


def _md_rows(md: str, start: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines() if line.startswith(start)]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, object]:
    """One report of make_shift_runs, shared (drawing figures takes seconds)."""
    root = tmp_path_factory.mktemp("shift_report")
    return root / "report", write_report([make_shift_runs(root / "runs")], root / "report")


def test_shift_and_calibration_tables(built):
    out, _ = built
    md = (out / "results.md").read_text(encoding="utf-8")
    header = _md_rows(md, "| Correction |")
    assert header == [["Correction", "Method", "forward-50", "uniform", "backward-50"]]
    # none: 70 / 72 (+ the prior's index in PRIORS: backward-50 0, uniform 1, forward-50 2), std sqrt(2)
    assert _md_rows(md, "| no correction |") == [["no correction", "CE", "73.00 ± 1.41", "72.00 ± 1.41", "71.00 ± 1.41"]]
    assert _md_rows(md, "| EM-estimated prior |") == [["EM-estimated prior", "CE", "82.00 ± 1.41 (L1 0.020)",
                                                       "81.00 ± 1.41 (L1 0.020)", "80.00 ± 1.41 (L1 0.020)"]]
    assert [r[0] for r in _md_rows(md, "| ") if r[1] == "CE" and r[0].endswith(("correction", "prior"))] == [
        "no correction", "known prior", "EM-estimated prior", "BBSE-estimated prior"]
    calibration = _md_rows(md, "| CE | 5.00")
    assert calibration == [["CE", "5.00 ± 1.41", "1.00 ± 0.00", "0.5000 ± 0.1414", "0.1000 ± 0.0000", "0.0500 ± 0.0141", "0.0100 ± 0.0000", "1.300"]]
    assert not any(r[1] == "LA loss" for r in _md_rows(md, "| ") if len(r) > 2 and r[0].endswith(("correction", "prior")))


def test_shift_figures_are_drawn(built):
    out, report = built
    pngs = {p.name: p for p in report.files if p.suffix == ".png"}
    for name in ("shift_fmnist_lt_if_100.png", "reliability_fmnist_lt_if_100.png"):
        png = pngs[name]
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        image = imread(png)
        assert image.shape[0] > 100 and image.std() > 0
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "data-file='figures/shift_fmnist_lt_if_100.png'" in html and 'class="shift"' in html


def test_a_damaged_shift_file_is_a_clear_error(tmp_path: Path):
    run = make_run(tmp_path / "ce", [], 60.0)
    (run / "shift.json").write_text(json.dumps({"rows": "nope"}))
    with pytest.raises(LongtailError, match="re-run `longtail shift`"):
        write_report([run], tmp_path / "report")


def test_the_report_still_imports_no_torch(tmp_path: Path):
    root = make_shift_runs(tmp_path / "runs")
    # every report module imported and the new tables built (figures need no torch either, but take seconds)
    code = ("import sys; import longtail.report.figures, longtail.report.html; from longtail.report import find_runs; "
            "from longtail.report.tables import build_tables; from longtail.report.markdown import markdown; "
            f"text = markdown(build_tables(find_runs([{str(root)!r}])[0])); "
            "print('EM-estimated prior' in text, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True False"
