"""`longtail report` and longtail.report on fake run directories with known metrics."""

from __future__ import annotations

import csv
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FMNIST_CONFIG, PNG_SIGNATURE, make_run
from conftest import exp_counts as counts
from longtail.config import dump_yaml, load_config
from longtail.errors import LongtailError

matplotlib = pytest.importorskip("matplotlib", reason="matplotlib is in the 'report' extra: pip install longtail[report]")
from matplotlib.image import imread  # noqa: E402

from longtail.report import find_runs, results_table, write_report  # noqa: E402
from longtail.report.figures import effective_probabilities  # noqa: E402
from longtail.report.tables import build_tables, grid, mean_std  # noqa: E402
from longtail.report.markdown import markdown as results_md  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
def tune_file(tau: float, top1: float, on: str = "val") -> dict:
    grid = [round(0.1 * i, 1) for i in range(21)]
    curve = [{"tau": t, "top1": top1 - abs(t - tau) * 10, "many": 70.0, "medium": 60.0, "few": 50.0} for t in grid]
    return {"posthoc": "la", "on": on, "tau": tau, "grid": grid, "curve": curve,
            "test": {"top1": top1, "many": 70.0, "medium": 60.0, "few": 50.0, "per_class": [top1] * 10}}


CE_100 = {0: 60.0, 1: 62.0, 2: 67.0}  # top-1 per seed: mean 63, sample std sqrt(13)


def make_runs(root: Path) -> Path:
    """fmnist_lt: CE at IF 100 (3 seeds, each tuned with post-hoc LA) and IF 10 (seed 2 missing);
    LA loss at IF 100 only (1 seed); CE + PN from a metrics.json holding raw and post-hoc entries.
    cifar10_lt: one CE run."""
    for seed, top1 in CE_100.items():
        make_run(root / f"ce_if100_s{seed}", [f"seed={seed}", f"dataset.seed={seed}"], top1,
                 tune=tune_file(1.0 + 0.2 * seed, top1 + 5))
    for seed in (0, 1):
        make_run(root / f"ce_if10_s{seed}", [f"seed={seed}", f"dataset.seed={seed}", "dataset.imbalance_factor=10"],
                 80.0 + seed, shots=(85.0, 75.0, None))
    make_run(root / "la_if100_s0", ["loss.name=la"], 70.0)
    # metrics.json of a post-hoc run: the corrected prediction at the top level, the plain argmax under "raw"
    make_run(root / "ce_pn_if100_s0", ["eval.posthoc=pn"], 66.0, shots=(75.0, 60.0, 40.0), extra_metrics={
        "raw": {"top1": 61.0, "many": 80.0, "medium": 50.0, "few": 20.0},
        "posthoc": {"name": "pn", "tau": 1.0, "class_mass": "val"}})
    make_run(root / "other" / "cifar_ce", ["dataset.name=cifar10_lt"], 55.0)
    return root


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return make_runs(tmp_path / "runs")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, object]:
    """One report of make_runs, shared by the read-only tests (drawing figures takes seconds)."""
    root = tmp_path_factory.mktemp("report")
    return root / "report", write_report([make_runs(root / "runs")], root / "report")


def read_csv(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(encoding="utf-8") as f:
        return {(r["dataset"], r["Method"]): r for r in csv.DictReader(f)}


def test_mean_std_is_the_sample_std():
    assert mean_std([60.0, 62.0, 67.0]) == (63.0, pytest.approx(13 ** 0.5), 3)
    assert mean_std([5.0, None]) == (5.0, None, 1)
    assert mean_std([None]) == (None, None, 0)


def test_effective_probabilities_against_hand_values():
    assert np.allclose(effective_probabilities([100, 10, 1], 0.0), [1 / 3] * 3)  # beta 0: uniform
    assert np.allclose(effective_probabilities([1, 2], 0.5), [0.4, 0.6])  # E = 1 and 1 + 0.5
    assert np.allclose(effective_probabilities([30, 10], 1.0), [0.75, 0.25])  # the raw prior
    assert np.allclose(effective_probabilities([30, 10], 1 - 1e-9), [0.75, 0.25], atol=1e-6)  # beta -> 1
    big_beta = effective_probabilities(counts(100), 0.9999)
    assert np.all(np.diff(big_beta) <= 0) and big_beta[0] / big_beta[-1] < 100  # ranked, flatter than pi


def test_table_cells_grouping_and_missing_runs(built):
    out, report = built
    assert [t.dataset for t in report.tables] == ["cifar10_lt", "fmnist_lt"]
    table = read_csv(out / "results.csv")
    ce = table[("fmnist_lt", "CE")]
    assert ce["IF 100"] == f"63.00 ± {13 ** 0.5:.2f} (3 seeds)"
    assert ce["IF 10"] == "80.50 ± 0.71 (2 of 3 seeds)"  # seed 2 missing at IF 10
    assert table[("fmnist_lt", "LA loss")] == {"dataset": "fmnist_lt", "Method": "LA loss", "IF 100": "70.00 (1 of 3 seeds)",
                                               "IF 10": "missing"}
    tuned = table[("fmnist_lt", "CE + post-hoc LA (tuned τ)")]
    assert tuned["IF 100"] == f"68.00 ± {13 ** 0.5:.2f} (3 seeds, τ=1–1.4)" and tuned["IF 10"] == "missing"
    # metrics.json with raw and post-hoc entries: the post-hoc row; its raw argmax (seed 0) is the CE seed-0
    # training measured again, so it does not count twice in the CE row above
    assert table[("fmnist_lt", "CE + PN (τ=1)")]["IF 100"] == "66.00 (1 of 3 seeds)"
    assert table[("cifar10_lt", "CE")]["IF 100"] == "55.00 (1 seed)"
    assert set(table) == {("cifar10_lt", "CE"), ("fmnist_lt", "CE"), ("fmnist_lt", "CE + post-hoc LA (tuned τ)"),
                          ("fmnist_lt", "CE + PN (τ=1)"), ("fmnist_lt", "LA loss")}

    shots = read_csv(out / "shots.csv")[("fmnist_lt", "CE")]
    assert shots["IF 100 many"] == "80.00 ± 0.00" and shots["IF 10 medium"] == "75.00 ± 0.00"
    assert shots["IF 10 few"] == "n/a"  # IF 10 with 600 images at most has no class under 20
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "## fmnist_lt" in md and f"| CE | 63.00 ± {13 ** 0.5:.2f} (3 seeds) | 80.50 ± 0.71 (2 of 3 seeds) |" in md
    assert "tuned on test" not in md


def test_results_table_dataframe(runs: Path):
    pytest.importorskip("pandas", reason="pandas is in the 'report' extra: pip install longtail[report]")
    frame = results_table(str(runs))  # one folder as a plain string
    assert frame.loc[("fmnist_lt", "CE"), "IF 100"] == f"63.00 ± {13 ** 0.5:.2f} (3 seeds)"
    numeric = results_table([runs], numeric=True)
    row = numeric[(numeric.method == "CE") & (numeric.dataset == "fmnist_lt") & (numeric.column == "IF 100")].iloc[0]
    assert row.n == 3 and row.top1_mean == 63.0 and row.top1_std == pytest.approx(statistics.stdev(CE_100.values()))


def test_list_file_dataset_column_is_the_split_imbalance(tmp_path: Path):
    # ImageNet-LT-style lists fix their own imbalance (1280 / 5 = 256); the config's factor does not apply
    run = make_run(tmp_path / "inet", ["dataset.name=imagenet_lt", "dataset.train_list=train.txt"], 50.0,
                   extra_metrics={"class_counts": [1280, 300, 5] + [20] * 7})
    (table,) = build_tables(find_runs([run])[0])
    assert table.columns == ["IF 256"]


def test_method_names_come_from_the_config(tmp_path: Path):
    lgla = make_run(tmp_path / "lgla", ["loss.name=lgla", "model.name=resnet32_experts", "model.num_experts=4"], 50.0)
    new = make_run(tmp_path / "new", ["loss.name=ce", "eval.posthoc=tau_norm", "eval.tau=0.5"], 40.0)
    (table,) = build_tables(find_runs([lgla, new])[0])
    assert list(table.rows) == ["CE + τ-norm (τ=0.5)", "LGLA (4 experts)"]


def test_raw_argmax_of_a_posthoc_run_counts_as_the_plain_method_once(tmp_path: Path):
    pn = {"posthoc": {"name": "pn", "tau": 1.0, "class_mass": "val"}}
    make_run(tmp_path / "ce_s0", ["seed=0"], 60.0)
    make_run(tmp_path / "pn_s0", ["seed=0", "eval.posthoc=pn"], 66.0, extra_metrics={**pn, "raw": {"top1": 60.0}})
    make_run(tmp_path / "pn_s1", ["seed=1", "eval.posthoc=pn"], 70.0, extra_metrics={**pn, "raw": {"top1": 64.0}})
    (table,) = build_tables(find_runs([tmp_path])[0])
    _, rows = grid(table)
    # CE: seed 0 from the plain run (pn_s0's raw repeats it), seed 1 from pn_s1's raw argmax
    assert {row[0]: row[1] for row in rows} == {"CE": "62.00 ± 2.83 (2 seeds)", "CE + PN (τ=1)": "68.00 ± 2.83 (2 seeds)"}


def test_a_config_written_before_a_key_existed_is_the_same_method(tmp_path: Path):
    import yaml

    make_run(tmp_path / "new", ["seed=0"], 60.0)
    old = make_run(tmp_path / "old", ["seed=1"], 64.0)
    config = yaml.safe_load((old / "config.yaml").read_text())
    del config["train"]["sync_bn"], config["dataset"]["verify_images"]  # keys an older longtail did not write
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    (table,) = build_tables(find_runs([tmp_path])[0])
    assert {row[0]: row[1] for row in grid(table)[1]} == {"CE": "62.00 ± 2.83 (2 seeds)"}


def test_results_table_without_pandas_says_how_to_install(runs: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    with pytest.raises(LongtailError, match=re.escape("pip install longtail[report]")):
        results_table([runs])


def test_seed_runs_given_one_by_one_and_test_tuned_label(tmp_path: Path):
    make_run(tmp_path / "a", ["seed=0"], 50.0, tune=tune_file(1.7, 54.9, on="test"))
    make_run(tmp_path / "b", ["seed=1", "train.epochs=7"], 52.0)  # not a seed of 'a': another config
    report = write_report([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    table = read_csv(tmp_path / "out" / "results.csv")
    assert table[("fmnist_lt", "CE + post-hoc LA (τ tuned on test)")]["IF 100"] == "54.90 (1 of 2 seeds, τ=1.7)"
    assert table[("fmnist_lt", "CE")]["IF 100"] == "50.00 (1 of 2 seeds)"  # the all-default config keeps the plain name
    assert table[("fmnist_lt", "CE [train.epochs=7]")]["IF 100"] == "52.00 (1 of 2 seeds)"
    md = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    assert "τ tuned on test" in md and "optimistic" in md
    assert "optimistic" in (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert len(report.runs) == 2


def test_runs_selected_on_test_are_marked(tmp_path: Path):
    """train.select=best_test rows carry SELECTED ON TEST in their label, every post-hoc row of the run too,
    and the pages explain it; a run of the same method selected otherwise keeps the plain name."""
    on_test = {"selected_by": "test_pn_top1", "selected_on_test": True, "raw": {"top1": 61.0},
               "posthoc": {"name": "pn", "tau": 1.0, "class_mass": "val"}}
    make_run(tmp_path / "gala_test", ["loss.name=gala", "train.select=best_test", "eval.posthoc=pn"], 66.0, extra_metrics=on_test)
    make_run(tmp_path / "gala_last", ["loss.name=gala", "train.select=last"], 58.0, extra_metrics={"selected_by": "last_epoch"})
    write_report([tmp_path / "gala_test", tmp_path / "gala_last"], tmp_path / "out")
    table = read_csv(tmp_path / "out" / "results.csv")
    assert table[("fmnist_lt", "GALA [SELECTED ON TEST] + PN (τ=1)")]["IF 100"] == "66.00 (1 seed)"
    assert table[("fmnist_lt", "GALA [SELECTED ON TEST]")]["IF 100"] == "61.00 (1 seed)"
    assert table[("fmnist_lt", "GALA")]["IF 100"] == "58.00 (1 seed)"
    md = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    assert "Rows marked 'SELECTED ON TEST'" in md and "best test accuracy" in md
    assert "Rows marked &#x27;SELECTED ON TEST&#x27;" in (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    # a table without such runs carries no note
    (plain,) = build_tables(find_runs([tmp_path / "gala_last"])[0])
    assert "SELECTED ON TEST" not in results_md([plain])


def test_figures_are_valid_pngs(built):
    out, report = built
    pngs = sorted((out / "figures").glob("*.png"))
    kinds = {p.name.split("_fmnist")[0] for p in pngs if "fmnist_lt_if_100" in p.name}
    assert kinds == {"per_class", "shots", "tau", "training", "effective"}
    assert "tau_fmnist_lt_if_10.png" not in {p.name for p in pngs}  # nothing tuned at IF 10
    assert {p for p in report.files if p.suffix == ".png"} == set(pngs)
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_SIGNATURE, png
        image = imread(png)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0, png  # decodes, not blank


def test_partial_runs_and_errors(tmp_path: Path):
    runs = tmp_path / "runs"
    make_run(runs / "la_if100_s0", ["loss.name=la"], 70.0)
    unfinished = runs / "ce_if100_s9"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text(dump_yaml(load_config(None, ["seed=9"])))
    report = write_report([runs], tmp_path / "r1")  # found while searching: skipped and listed
    assert report.skipped == [unfinished]
    assert "ce_if100_s9" in (tmp_path / "r1" / "index.html").read_text(encoding="utf-8")
    with pytest.raises(LongtailError, match="no metrics.json"):  # named directly: an error
        write_report([unfinished], tmp_path / "r2")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LongtailError, match="not a run directory"):
        write_report([empty], tmp_path / "r3")
    with pytest.raises(LongtailError, match="does not exist"):
        write_report([tmp_path / "nowhere"], tmp_path / "r4")
    (runs / "la_if100_s0" / "metrics.json").write_text("{not json")
    with pytest.raises(LongtailError, match="not valid JSON"):
        write_report([runs / "la_if100_s0"], tmp_path / "r5")


def test_cli_report(tmp_path: Path, cli):
    runs = [make_run(tmp_path / f"s{seed}", [f"seed={seed}"], 60.0 + seed) for seed in (0, 1)]
    out = tmp_path / "report"
    proc = cli("report", *map(str, runs), "--out", str(out))
    assert "| CE | 60.50 ± 0.71 (2 seeds) |" in proc.stdout and "wrote" in proc.stdout
    assert {"results.md", "results.csv", "shots.csv", "summary.csv", "index.html", "figures"} <= {p.name for p in out.iterdir()}
    bad = cli("report", str(tmp_path), str(tmp_path / "nope"), "--out", str(out), check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr


def test_report_of_a_real_training_run(tmp_path: Path, cli, tiny_fmnist):
    # guards the report against drift in what `longtail train` writes
    run = tmp_path / "ce"
    cli("train", FMNIST_CONFIG, *tiny_fmnist, "dataset.imbalance_factor=10",
        "--out", str(run))
    report = write_report([run], tmp_path / "report")
    top1 = json.loads((run / "metrics.json").read_text())["top1"]
    assert read_csv(tmp_path / "report" / "results.csv")[("fmnist_lt", "CE")]["IF 10"] == f"{top1:.2f} (1 seed)"
    assert {f.name.split("_fmnist")[0] for f in report.files if f.suffix == ".png"} == {"per_class", "shots", "training", "effective", "reliability"}


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed (Debian package 'chromium'); the page was not opened in a browser")
def test_page_in_headless_chromium(built, tmp_path: Path):
    out, report = built
    html = out / "index.html"
    proc = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000", "--dump-dom", html.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    dom = proc.stdout
    assert proc.returncode == 0 and "<body" in dom, proc.stderr[-2000:]
    loaded = re.search(r'data-images-loaded="(\d+)"', dom)
    total = re.search(r'data-images-total="(\d+)"', dom)
    assert loaded and total, "the page's load script did not run"
    n_figures = sum(1 for f in report.files if f.suffix == ".png")
    assert int(total.group(1)) == n_figures > 0 and int(loaded.group(1)) == n_figures
    assert "<title>longtail report (ready)</title>" in dom
    fmnist = re.search(r'<table class="top1" data-dataset="fmnist_lt">(.*?)</table>', dom, re.S).group(1)
    methods = re.findall(r"<tr><td[^>]*>([^<]*)</td>", fmnist)
    assert methods == ["CE", "CE + PN (τ=1)", "CE + post-hoc LA (tuned τ)", "LA loss"]
