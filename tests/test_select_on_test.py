"""train.select=best_test: the released codes' checkpoint protocol (best epoch by test accuracy), offered
as an explicit option whose every output says SELECTED ON TEST."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_FMNIST, epoch_rows, fit_here, make_small_fmnist
from longtail import selection
from longtail.checkpoint import load_checkpoint
from longtail.config import Config, load_config
from longtail.errors import LongtailError

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fmnist_lt" / "ce_imba100.yaml"


def test_best_test_is_a_choice_and_never_the_default():
    assert Config().train.select == "best_val"
    assert load_config(None, ["train.select=best_test"]).train.select == "best_test"
    with pytest.raises(LongtailError, match="best_test"):
        load_config(None, ["train.select=on_test"])


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    return make_small_fmnist(tmp_path_factory.mktemp("fmnist"), train_per_class=120, test_per_class=30)


@pytest.fixture
def train(small_root, capsys):
    """Train the fmnist CE config tiny in this process; returns (metrics.json, epochs.jsonl rows, stdout)."""

    def run(out: Path, *extra: str):
        overrides = [f"dataset.root={small_root}", "dataset.download=false", *TINY_FMNIST, "train.epochs=3",
                     "train.lr=0.4", "train.amp=false", "device=cpu", *extra]
        fit_here(CONFIG, overrides, out)
        return json.loads((out / "metrics.json").read_text()), epoch_rows(out), capsys.readouterr().out

    return run


def test_best_test_picks_the_epoch_with_the_best_recorded_test_top1(train, tmp_path):
    from longtail.evaluation import evaluate_checkpoint

    metrics, rows, printed = train(tmp_path / "run", "train.select=best_test")
    scores = [r["test_top1"] for r in rows]
    assert len(scores) == 3 and all("val_top1" in r for r in rows)  # validation still runs as usual
    best = scores.index(max(scores)) + 1  # the first of equal maxima: a later epoch must beat it
    assert metrics["epoch"] == best and metrics["checkpoint"] == "best"
    # the reported metrics are those of that epoch's weights
    assert metrics["top1"] == pytest.approx(rows[best - 1]["test_top1"], abs=1e-9)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["epoch"] == best
    assert metrics["selected_by"] == "test_top1" and metrics["selected_on_test"] is True
    assert metrics["protocol_warning"].startswith("SELECTED ON TEST")
    for n in (1, 2, 3):
        line = next(l for l in printed.splitlines() if l.startswith(f"epoch {n}/3"))
        assert "[SELECTED ON TEST]" in line and f"test top1 {scores[n - 1]:.2f}" in line
    assert "[SELECTED ON TEST] test metrics of the best checkpoint" in printed
    evaluated = evaluate_checkpoint(tmp_path / "run")
    assert evaluated["selected_on_test"] is True and evaluated["top1"] == pytest.approx(metrics["top1"])


def _scripted(monkeypatch, key: str, values: list[float], decoy: str | None = None, decoy_values: list[float] = ()):
    """Replace the per-epoch test score `key` by scripted values (the real ones are kept as real_<key>),
    and an optional decoy key by values peaking elsewhere."""
    real = selection.test_scores
    epoch = iter(range(len(values)))

    def scores(model, bundle, cfg, runtime):
        row = real(model, bundle, cfg, runtime)
        i = next(epoch)
        row[f"real_{key}"], row[key] = row[key], values[i]
        if decoy:
            row[decoy] = decoy_values[i]
        return row

    monkeypatch.setattr(selection, "test_scores", scores)


def test_the_selected_epoch_need_not_be_the_last(train, tmp_path, monkeypatch):
    _scripted(monkeypatch, "test_top1", [40.0, 90.0, 60.0])
    metrics, rows, _ = train(tmp_path / "run", "train.select=best_test")
    assert metrics["epoch"] == 2
    # best.pt holds epoch 2's weights: the final test reproduces that epoch's real test top-1
    assert metrics["top1"] == pytest.approx(rows[1]["real_test_top1"], abs=1e-9)


def test_with_a_posthoc_the_corrected_test_top1_decides(train, tmp_path, monkeypatch):
    _scripted(monkeypatch, "test_la_top1", [30.0, 20.0, 80.0], decoy="test_top1", decoy_values=[95.0, 10.0, 10.0])
    metrics, rows, printed = train(tmp_path / "run", "train.select=best_test", "eval.posthoc=la")
    assert metrics["selected_by"] == "test_la_top1" and metrics["epoch"] == 3
    assert {"test_top1", "test_la_top1", "test_la_many", "test_many"} <= set(rows[0])
    assert metrics["top1"] == pytest.approx(rows[2]["real_test_la_top1"], abs=1e-9)
    assert "(la 80.00)" in printed


def test_selection_rule_keys():
    def cfg(*overrides: str) -> Config:
        return load_config(None, list(overrides))

    assert selection.selected_by(cfg("train.select=best_test"), has_val=False) == "test_top1"
    assert selection.selected_by(cfg("train.select=best_test", "eval.posthoc=pn", "eval.pn_mass=transductive"), True) == "test_pn_top1"
    assert selection.selected_by(cfg(), has_val=True) == "val_top1"
    assert selection.selected_by(cfg(), has_val=False) == "last_epoch"
    assert selection.selected_by(cfg("train.select=last"), has_val=True) == "last_epoch"
    assert selection.protocol_fields(cfg()) == {} and selection.tag(cfg("train.select=last")) == ""
