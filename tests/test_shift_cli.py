"""`longtail shift`, `longtail evaluate --target-prior` and the calibration block of metrics.json on a tiny
Fashion-MNIST-LT run, and the report's label-shift tables and figures."""

from __future__ import annotations

import json

import pytest

from conftest import TINY_FMNIST, make_small_fmnist
from longtail.cli import main
from longtail.config import load_config
from longtail.engine import fit
from longtail.evaluation import load_outputs
from longtail.shift import DEFAULT_PRIORS, resample, parse_prior

CONFIG = "configs/fmnist_lt/ce_imba100.yaml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """1 epoch, n_max 100, 10 validation images per class; 100 test images per class (forward-50 needs 50)."""
    root = make_small_fmnist(tmp_path_factory.mktemp("fmnist"), train_per_class=120, test_per_class=100)
    out = tmp_path_factory.mktemp("runs") / "ce"
    fit(load_config(CONFIG, [*TINY_FMNIST, f"dataset.root={root}", "train.amp=false"]), out)
    return out


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_metrics_json_has_the_calibration_block(run_dir):
    block = json.loads((run_dir / "metrics.json").read_text())["calibration"]
    assert block["method"] == "temperature" and block["fitted_on"] == "val" and block["temperature"] > 0
    for when in ("before", "after"):
        assert {"ece", "nll", "brier", "bins"} <= set(block[when])
        assert sum(block[when]["bins"]["count"]) == 1000 and len(block[when]["bins"]["count"]) == 15
    # temperature scaling fitted by validation NLL lowers the test NLL of a 1-epoch model (its validation twin)
    assert block["after"]["nll"] < block["before"]["nll"] + 0.05


def test_shift_writes_the_file_and_prints_the_table(run_dir, capsys):
    code, out, err = _cli(capsys, "shift", run_dir)
    assert code == 0, err
    result = json.loads((run_dir / "shift.json").read_text())
    assert set(result) == {"calibration", "rows"}
    assert set(result["calibration"]) == {"method", "temperature", "split", "ece_before", "ece_after"}
    assert result["calibration"]["method"] == "bcts" and result["calibration"]["split"] == "val"
    rows = result["rows"]
    assert all(set(r) == {"test_prior", "n_images", "correction", "top1", "mean_class_acc", "prior_l1"} for r in rows)
    assert [r["test_prior"] for r in rows[::4]] == list(DEFAULT_PRIORS)
    assert [r["correction"] for r in rows[:4]] == ["none", "known", "em", "bbse"]
    for r in rows:
        assert (r["prior_l1"] is None) == (r["correction"] in ("none", "known"))
    # forward-50 over 100 test images per class: int(100 * 50 ** (-i / 9)) for i = 0..9
    sizes = {r["test_prior"]: r["n_images"] for r in rows}
    assert sizes["uniform"] == 1000 and sizes["forward-50"] == sizes["backward-50"] == sum(int(100 * 50 ** (-i / 9)) for i in range(10))
    # the printed table carries the same numbers
    first = next(line for line in out.splitlines() if line.startswith("forward-50") and " none " in line)
    assert f"{rows[0]['top1']:.2f}" in first.split()
    assert "wrote" in out and "shift.json" in out


def test_shift_rows_agree_with_a_direct_computation(run_dir, capsys):
    code, _, _ = _cli(capsys, "shift", run_dir, "--priors", "backward-10", "--seed", "3", "--calibration", "temperature")
    assert code == 0
    rows = json.loads((run_dir / "shift.json").read_text())["rows"]
    none = next(r for r in rows if r["correction"] == "none")
    # 'none' is the plain argmax on the resampled images: recompute it from the model's outputs
    run = load_outputs(run_dir, splits=("test",))
    test = run.splits["test"]
    keep = resample(test["labels"], parse_prior("backward-10"), run.class_counts, 3)
    expected = 100 * float((test["logits"][keep].argmax(-1) == test["labels"][keep]).double().mean())
    assert none["top1"] == pytest.approx(expected) and none["n_images"] == len(keep)


def test_evaluate_with_a_target_prior(run_dir, capsys, tmp_path):
    code, out, err = _cli(capsys, "evaluate", run_dir, "--target-prior", "forward-10", "--save")
    assert code == 0, err
    saved = json.loads((run_dir / "eval_target_prior.json").read_text())
    expected_counts = [int(100 * 10 ** (-i / 9)) for i in range(10)]
    assert saved["target_prior"]["counts"] == expected_counts and saved["num_images"] == sum(expected_counts)
    assert saved["raw"]["num_images"] == sum(expected_counts) and "calibration" in saved
    assert "resampled to 'forward-10'" in out and "corrected to that known prior" in out
    weights = tmp_path / "w.txt"
    weights.write_text(" ".join(["1"] * 5 + ["0.5"] * 5))
    code, out, err = _cli(capsys, "evaluate", run_dir, "--target-prior", weights)
    assert code == 0, err
    assert "750 images" in out


@pytest.mark.parametrize("args, message", [
    (["shift", "{run}", "--priors", "forward-0.5"], "must be a finite number >= 1"),
    (["shift", "{run}", "--priors", "uniform,sideways-3"], "prior 'sideways-3' is neither a prior spec nor an existing file"),
    (["shift", "{run}", "--priors", "forward-500"], "use an imbalance factor <= 100"),
    (["shift", "{run}", "--seed", "-1"], "--seed"),
    (["evaluate", "{run}", "--target-prior", "uniform", "--posthoc", "la"], "--target-prior"),
    (["shift", "{run}", "dataset.val_source=none"], "dataset.val_source=test_holdout"),
    (["evaluate", "{run}", "--target-prior", "uniform", "dataset.val_source=none"], "dataset.val_source=test_holdout"),
])
def test_bad_input_is_one_line(run_dir, capsys, args, message):
    code, _, err = _cli(capsys, *[a.format(run=run_dir) for a in args])
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_a_run_without_validation_reports_calibration_before_only(run_dir, capsys):
    code, out, err = _cli(capsys, "evaluate", run_dir, "dataset.val_source=none")
    assert code == 0, err
    assert "after" in out and "no validation split (dataset.val_source=none)" in out


def test_report_renders_the_shift_table_and_figures(run_dir, capsys, tmp_path):
    from longtail.report import write_report

    assert _cli(capsys, "shift", run_dir)[0] == 0
    report = write_report([run_dir], tmp_path / "report")
    md = (tmp_path / "report" / "results.md").read_text(encoding="utf-8")
    result = json.loads((run_dir / "shift.json").read_text())
    em_uniform = next(r for r in result["rows"] if r["correction"] == "em" and r["test_prior"] == "uniform")
    row = next(line for line in md.splitlines() if line.startswith("| EM-estimated prior | CE |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:] and cells[2 + list(DEFAULT_PRIORS).index("uniform")] == f"{em_uniform['top1']:.2f} (L1 {em_uniform['prior_l1']:.3f})"
    assert "| Method | ECE % before | ECE % after |" in md
    names = {f.name.split("_fmnist")[0] for f in report.files if f.suffix == ".png"}
    assert {"shift", "reliability"} <= names
    html = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert 'class="shift"' in html and 'class="calibration"' in html
