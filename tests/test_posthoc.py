"""Post-hoc corrections: formulas against hand values, and the evaluate / tune commands end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import FMNIST_CONFIG, TINY_FMNIST_40, write_fake_fmnist
from longtail.cli import main
from longtail.config import load_config
from longtail.data import long_tailed_counts
from longtail.engine import fit
from longtail.errors import LongtailError
from longtail.posthoc import (
    PosthocInputs, apply_posthoc, configured_metrics, logit_adjust, rebalance, tau_norm,
)
from longtail.tune import best_tau, parse_grid

# ----------------------------------------------------------------------------- formulas


def test_the_built_in_rules_are_registered():
    from longtail import catalog

    assert {"la", "pn", "tau_norm"} <= set(catalog.names("posthoc"))


def test_logit_adjust_at_tau_0_is_the_identity():
    logits = torch.randn(5, 4)
    assert torch.equal(logit_adjust(logits, [100, 30, 10, 1], tau=0.0), logits)


def test_logit_adjust_hand_value_flips_a_head_prediction():
    # counts 3:1 -> subtract log(3/4) and log(1/4): z = (1, 0) becomes (1 - log .75, log 4) = (1.288, 1.386)
    out = logit_adjust(torch.tensor([[1.0, 0.0]]), [3, 1], tau=1.0)[0].tolist()
    assert out == pytest.approx([1 - math.log(0.75), math.log(4)], abs=1e-6)
    assert out[1] > out[0]
    half = logit_adjust(torch.tensor([[1.0, 0.0]]), [3, 1], tau=0.5)[0].tolist()
    assert half == pytest.approx([1 - 0.5 * math.log(0.75), 0.5 * math.log(4)], abs=1e-6)


def test_rebalance_hand_value():
    probs = torch.tensor([[0.6, 0.4], [0.7, 0.3]])
    # S = (1.3, 0.7): row 1 -> (0.4615, 0.5714) now predicts class 1; row 2 -> (0.5385, 0.4286) stays class 0
    out = rebalance(probs, tau=1.0)
    assert torch.allclose(out, torch.tensor([[0.6 / 1.3, 0.4 / 0.7], [0.7 / 1.3, 0.3 / 0.7]]))
    assert out.argmax(1).tolist() == [1, 0]
    given = rebalance(probs, tau=2.0, class_mass=torch.tensor([2.0, 1.0]))
    assert torch.allclose(given, torch.tensor([[0.15, 0.4], [0.175, 0.3]]))


def test_rebalance_with_uniform_predictions_changes_nothing():
    uniform = torch.full((6, 3), 1 / 3)
    assert torch.allclose(rebalance(uniform, tau=1.0) * 2, uniform)  # S = 2 for every class
    # predictions whose per-class mass is uniform (each class predicted equally often overall)
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.7, 0.2], [0.2, 0.1, 0.7]])
    for tau in (0.5, 1.0, 1.7):
        out = rebalance(probs, tau=tau)
        assert torch.allclose(out / out.sum(1, keepdim=True), probs, atol=1e-6)
        assert torch.equal(out.argmax(1), probs.argmax(1))
    assert torch.equal(rebalance(probs, tau=0.0), probs)


def test_tau_norm_hand_values_on_logits_and_features():
    weight = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # row norms 2 and 1; 2 classes, 3-d features
    assert tau_norm(torch.tensor([[1.5, 1.0]]), weight, 1.0).tolist() == [[0.75, 1.0]]
    assert tau_norm(torch.tensor([[1.5, 1.0]]), weight, 0.0).tolist() == [[1.5, 1.0]]
    features = torch.tensor([[1.0, 0.5, 3.0]])  # raw logits f.w = (2, 0.5); normalised rows give (1, 0.5)
    assert tau_norm(features, weight, 1.0).tolist() == [[1.0, 0.5]]
    assert tau_norm(features, weight, 0.5).tolist()[0] == pytest.approx([2 / math.sqrt(2), 0.5])
    with pytest.raises(LongtailError, match="cannot tell"):
        tau_norm(torch.ones(1, 2), torch.eye(2), 1.0)


def test_apply_posthoc_checks_what_the_model_offers():
    with pytest.raises(LongtailError, match="single linear head"):
        apply_posthoc("tau_norm", torch.zeros(1, 2), 1.0, PosthocInputs([1, 1]))
    with pytest.raises(LongtailError, match="unknown post-hoc"):
        apply_posthoc("la2", torch.zeros(1, 2), 1.0, PosthocInputs([1, 1]))


def test_configured_metrics_keeps_raw_and_names_the_correction():
    # 4 test images of classes (0, 0, 1, 1); the model always prefers class 0 by a small margin
    test = {"logits": torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.3, 0.0], [0.2, 0.0]]), "labels": torch.tensor([0, 0, 1, 1])}
    counts = [300, 100]
    m = configured_metrics("la", 1.0, "val", test, None, counts, None)
    assert m["raw"]["top1"] == 50.0  # everything predicted as class 0
    # log 3 = 1.0986 > every margin: all predicted class 1
    assert m["top1"] == 50.0 and m["per_class"] == [0.0, 100.0]
    assert m["posthoc"] == {"name": "la", "tau": 1.0, "class_mass": None, "prior_counts": counts}
    none = configured_metrics("none", 1.0, "val", test, None, counts, None)
    assert none["posthoc"] is None and none["raw"]["top1"] == none["top1"]
    with pytest.raises(LongtailError, match="validation"):
        configured_metrics("pn", 1.0, "val", test, None, counts, None)
    pn = configured_metrics("pn", 1.0, "transductive", test, None, counts, None)
    assert pn["posthoc"]["class_mass"] == "transductive"


def test_grid_parsing_and_tie_breaking():
    assert parse_grid("0:2:0.1") == pytest.approx([i / 10 for i in range(21)])
    assert parse_grid("0.5,1,1.5") == [0.5, 1.0, 1.5]
    for bad in ("2:1:0.1", "0:1:0", "a:b:c", "", "0:1e9:1e-9", "0:inf:1", "nan,1", "1:2"):
        with pytest.raises(LongtailError, match="--grid"):
            parse_grid(bad)
    curve = [{"tau": 0.0, "top1": 50.0}, {"tau": 0.8, "top1": 60.0}, {"tau": 1.2, "top1": 60.0}, {"tau": 1.1, "top1": 59.0}]
    assert best_tau(curve) == 0.8  # ties: closest to 1, then the smaller


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny fmnist_lt run trained with PN (class mass from validation) configured for the final test."""
    root = write_fake_fmnist(tmp_path_factory.mktemp("fmnist"), train_per_class=60, test_per_class=20)
    out = tmp_path_factory.mktemp("runs") / "ce_pn"
    cfg = load_config(FMNIST_CONFIG, [*TINY_FMNIST_40, f"dataset.root={root}", "eval.posthoc=pn"])
    fit(cfg, out)
    return out


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_final_metrics_report_posthoc_and_raw(run_dir, capsys):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["posthoc"] == {"name": "pn", "tau": 1.0, "class_mass": "val"}
    assert {"top1", "many", "medium", "few", "per_class"} <= set(metrics["raw"])
    # the same numbers come back from `longtail evaluate` on the saved checkpoint
    code, out, _ = _cli(capsys, "evaluate", run_dir, "--posthoc", "pn", "--save")
    assert code == 0 and "class mass from val" in out
    saved = json.loads((run_dir / "eval_pn.json").read_text())
    assert saved["top1"] == pytest.approx(metrics["top1"]) and saved["raw"]["top1"] == pytest.approx(metrics["raw"]["top1"])


def test_evaluate_la_at_tau_0_is_raw_and_the_prior_can_be_overridden(run_dir, capsys):
    code, _, _ = _cli(capsys, "evaluate", run_dir, "--posthoc", "la", "--tau", "0", "--save")
    identity = json.loads((run_dir / "eval_la.json").read_text())
    assert code == 0 and identity["per_class"] == identity["raw"]["per_class"]
    code, _, _ = _cli(capsys, "evaluate", run_dir, "--posthoc", "la", "--imbalance-factor", "5", "--save")
    adjusted = json.loads((run_dir / "eval_la.json").read_text())
    assert adjusted["posthoc"]["prior_counts"] == long_tailed_counts(40, 10, 5) != adjusted["class_counts"]
    code, _, err = _cli(capsys, "evaluate", run_dir, "--posthoc", "la", "--class-counts", "5,4,3")
    assert code == 2 and "10 positive integers" in err
    code, _, _ = _cli(capsys, "evaluate", run_dir, "--tau", "0.5", "--json", run_dir / "tau.json")  # the run's pn at tau 0.5
    assert code == 0 and json.loads((run_dir / "tau.json").read_text())["posthoc"]["name"] == "pn"
    code, _, err = _cli(capsys, "evaluate", run_dir, "--posthoc", "none", "--tau", "0.5")
    assert code == 2 and "--posthoc" in err
    code, _, _ = _cli(capsys, "evaluate", run_dir, "--posthoc", "tau_norm", "--tau", "1")
    assert code == 0


def test_tune_on_validation_writes_the_curve_and_test_metrics(run_dir, capsys):
    code, out, _ = _cli(capsys, "tune", run_dir, "--posthoc", "la", "--grid", "0:3:0.5")
    assert code == 0 and "TUNED ON TEST" not in out
    result = json.loads((run_dir / "tune_la.json").read_text())
    assert result["posthoc"] == "la" and result["on"] == "val" and result["grid"] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert [row["tau"] for row in result["curve"]] == result["grid"]
    assert {"top1", "many", "medium", "few"} <= set(result["curve"][0])
    # the curve, recomputed here from the model's stored validation logits: top-1 of argmax(z - tau log pi)
    from longtail.evaluation import load_outputs

    outputs = load_outputs(run_dir, splits=("val",))
    val = outputs.split("val")
    log_pi = torch.log(torch.tensor(outputs.class_counts, dtype=torch.float64))
    log_pi -= torch.logsumexp(log_pi, 0)
    recomputed = [100 * float(((val["logits"] - tau * log_pi.float()).argmax(1) == val["labels"]).double().mean())
                  for tau in result["grid"]]
    assert [row["top1"] for row in result["curve"]] == pytest.approx(recomputed, abs=1e-9)
    assert len(set(recomputed)) > 1, "a flat curve cannot show that the best tau was chosen"
    # tau is the best point of the curve (ties: the tau closest to 1)
    best = max(recomputed)
    assert result["tau"] == min((t for t, v in zip(result["grid"], recomputed) if v == best), key=lambda t: abs(t - 1))
    # test metrics at the chosen tau are what `evaluate` gives at that tau
    _cli(capsys, "evaluate", run_dir, "--posthoc", "la", "--tau", result["tau"], "--save")
    assert json.loads((run_dir / "eval_la.json").read_text())["top1"] == pytest.approx(result["test"]["top1"])


def test_tune_on_test_says_so_everywhere(run_dir, capsys):
    code, out, _ = _cli(capsys, "tune", run_dir, "--posthoc", "pn", "--grid", "0.5,1,1.5", "--on", "test")
    assert code == 0
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines and all("TUNED ON TEST" in line for line in lines)
    result = json.loads((run_dir / "tune_pn.json").read_text())
    assert result["on"] == "test" and "TUNED ON TEST" in result["warning"] and result["test"]["tuned_on_test"] is True


def test_tune_needs_a_validation_split_or_an_explicit_flag(run_dir, capsys):
    code, _, err = _cli(capsys, "tune", run_dir, "--posthoc", "la", "dataset.val_source=none", "eval.posthoc=none")
    assert code == 2 and "dataset.val_source=test_holdout" in err and "--on test" in err
    code, _, err = _cli(capsys, "tune", run_dir, "--posthoc", "pn", "--on", "test", "dataset.val_source=none", "eval.posthoc=none")
    assert code == 2 and "--pn-mass transductive" in err
    code, _, _ = _cli(capsys, "tune", run_dir, "--posthoc", "pn", "--on", "test", "--pn-mass", "transductive",
                      "--grid", "1", "dataset.val_source=none", "eval.posthoc=none")
    assert code == 0


def test_pn_with_validation_mass_needs_a_validation_split_before_training():
    with pytest.raises(LongtailError, match="pn_mass=transductive"):
        load_config("configs/fmnist_lt/ce_imba100.yaml", ["eval.posthoc=pn", "dataset.val_source=none"])
