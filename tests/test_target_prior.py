"""One rule for a target prior (priors.py) through predict, evaluate, shift and export; the calibration and
input spec stored with a run (run.py); `evaluate RUN` reproducing metrics.json; component names checked
when the config is read; no import cycles."""

from __future__ import annotations

import ast
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SRC, TINY_RUN_TEST_PER_CLASS, cli_env, import_graph, write_fake_fmnist
from deploy_runs import RUNNERS, TINY, evaluate_scores, normalised, split_images, target_scores
from longtail.calibration import fit_bcts
from longtail.checkpoint import load_checkpoint, save_atomic
from longtail.cli import main
from longtail.config import CHOICES, load_config
from longtail.data.fmnist import CLASS_NAMES as FMNIST_NAMES
from longtail.engine import fit
from longtail.errors import LongtailError
from longtail.evaluation import load_outputs
from longtail.run import load_run, resolve_checkpoint
from longtail.shift import run_shift

TEST_PER_CLASS = TINY_RUN_TEST_PER_CLASS  # backward-50 keeps 50 .. 1 test images per class


def _train(tmp: Path, name: str, extra: list[str]) -> Path:
    root = tmp / "fmnist"
    if not root.is_dir():
        write_fake_fmnist(root, train_per_class=60, test_per_class=TEST_PER_CLASS)
    fit(load_config("configs/fmnist_lt/ce_imba100.yaml", [*TINY, f"dataset.root={root}", *extra]), tmp / name)
    return tmp / name


def _write_pngs(run_dir: Path, folder: Path, keep: list[int] | None = None) -> Path:
    """Test images (all, or those at the positions `keep`) as lossless PNGs named by position."""
    images, _ = split_images(run_dir)
    for i in range(len(images)) if keep is None else keep:
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i][0].numpy(), mode="L").save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def ce(tmp_path_factory, tiny_run):
    """The session's tiny run (trained with cross-entropy on a long-tailed split; its configured rule, la, is what
    a target prior replaces), and its whole test split as PNGs."""
    return tiny_run, _write_pngs(tiny_run, tmp_path_factory.mktemp("target_prior") / "pngs")


def predict_json(capsys, *args) -> tuple[int, dict, str]:
    out = Path(args[args.index("--out") + 1]) if "--out" in args else None
    code = main(["predict", *map(str, args)])
    err = capsys.readouterr().err
    return code, (json.loads(out.read_text()) if code == 0 and out else {}), err


def _by_position(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: int(Path(r["path"]).stem))


def _probabilities(rows: list[dict], classes: int) -> torch.Tensor:
    probs = torch.zeros(len(rows), classes, dtype=torch.float64)
    for r, row in enumerate(rows):
        for entry in row["top_k"]:
            probs[r, entry["index"]] = entry["probability"]
    return probs


# ----------------------------------------------------------------------------- the stored calibration


def test_the_stored_calibration_is_bcts_on_the_validation_split(ce):
    run_dir, _ = ce
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    block = ckpt["calibrator"]
    assert block == json.loads((run_dir / "metrics.json").read_text())["calibrator"]
    val = load_outputs(run_dir).split("val")
    fitted = fit_bcts(val["logits"], val["labels"])
    assert block["method"] == "bcts" and block["temperature"] == fitted.temperature
    assert block["bias"] == fitted.bias.tolist()
    assert block["val_counts"] == torch.bincount(val["labels"], minlength=10).tolist() == [10] * 10


# ----------------------------------------------------------------------------- predict


def test_uniform_target_prior_is_the_calibrated_adjusted_argmax(ce, tmp_path, capsys):
    run_dir, folder = ce
    code, result, _ = predict_json(capsys, run_dir, folder, "--target-prior", "uniform", "--out", tmp_path / "u.json")
    assert code == 0
    got = [r["class_index"] for r in _by_position(result["predictions"])]
    assert got == target_scores(run_dir, torch.full((10,), -math.log(10), dtype=torch.float64)).argmax(1).tolist()
    raw = evaluate_scores(run_dir, "none").argmax(1).tolist()
    assert sum(a != b for a, b in zip(got, raw)) > 0  # a uniform q is not a constant added to a CE run's logits


def test_predict_backward_50_is_evaluates_known_row_image_for_image(ce, tmp_path, capsys):
    run_dir, _ = ce
    assert main(["evaluate", str(run_dir), "--target-prior", "backward-50", "--json", str(tmp_path / "e.json")]) == 0
    evaluated = json.loads((tmp_path / "e.json").read_text())
    kept = evaluated["indices"]
    assert len(kept) == evaluated["num_images"] < 10 * TEST_PER_CLASS  # the resampled subset only
    folder = _write_pngs(run_dir, tmp_path / "kept", kept)
    code, result, _ = predict_json(capsys, run_dir, folder, "--target-prior", "backward-50", "--out", tmp_path / "p.json")
    assert code == 0
    rows = _by_position(result["predictions"])
    assert [int(Path(r["path"]).stem) for r in rows] == kept
    assert [r["class_index"] for r in rows] == evaluated["predictions"]
    # shift's known row on the same subsample is the same prediction
    shift = run_shift(run_dir, ["backward-50"], write=False, log=lambda line: None)
    known = next(r for r in shift["rows"] if r["correction"] == "known")
    assert known["top1"] == evaluated["top1"] and known["n_images"] == len(kept)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exports_fed_log_q_give_predicts_scores(ce, tmp_path, capsys, fmt):
    run_dir, folder = ce
    weights = [float(w) for w in range(1, 11)]
    (tmp_path / "q.json").write_text(json.dumps(weights))
    code, result, _ = predict_json(capsys, run_dir, folder, "--target-prior", tmp_path / "q.json", "--top-k", "10",
                                   "--out", tmp_path / "p.json")
    assert code == 0
    predicted = _probabilities(_by_position(result["predictions"]), 10)
    path = tmp_path / f"m.{fmt}"
    assert main(["export", str(run_dir), "--format", fmt, "--prior-input", "--out", str(path)]) == 0
    log_q = torch.tensor(result["target_prior"]["log_prior"], dtype=torch.float32)
    scores = RUNNERS[fmt](path, normalised(run_dir, split_images(run_dir)[0]), log_q)
    assert (scores - target_scores(run_dir, log_q)).abs().max() < 1e-4
    assert (scores.double().softmax(1) - predicted).abs().max() < 1e-4
    assert torch.equal(scores.argmax(1), predicted.argmax(1))


# ----------------------------------------------------------------------------- one reader of priors


def test_one_prior_file_rule_and_a_zero_weight_class_is_never_predicted(ce, tmp_path, capsys):
    run_dir, folder = ce
    uniform = target_scores(run_dir, torch.full((10,), -math.log(10), dtype=torch.float64)).argmax(1)
    top = int(torch.bincount(uniform, minlength=10).argmax())  # the class predicted most under a uniform q
    weights = {name: (0.0 if c == top else float(c + 1)) for c, name in enumerate(FMNIST_NAMES)}
    (tmp_path / "w.json").write_text(json.dumps(weights))
    code, result, _ = predict_json(capsys, run_dir, folder, "--target-prior", tmp_path / "w.json", "--out", tmp_path / "p.json")
    assert code == 0 and all(r["class_index"] != top for r in result["predictions"])
    log_q = result["target_prior"]["log_prior"]
    assert log_q[top] == -math.inf
    assert main(["evaluate", str(run_dir), "--target-prior", str(tmp_path / "w.json"), "--json", str(tmp_path / "e.json")]) == 0
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert np.allclose(np.exp(log_q), evaluated["target_prior"]["prior"], rtol=0, atol=1e-15)
    assert evaluated["target_prior"]["counts"][top] == 0 and top not in evaluated["predictions"]
    # the same weights as numbers in class order: the same log-prior
    (tmp_path / "w.txt").write_text(" ".join(str(weights[n]) for n in FMNIST_NAMES))
    code, again, _ = predict_json(capsys, run_dir, folder, "--target-prior", tmp_path / "w.txt", "--out", tmp_path / "t.json")
    assert code == 0 and again["target_prior"]["log_prior"] == log_q


# ----------------------------------------------------------------------------- runs without a calibration


def test_a_run_without_a_stored_calibration_names_the_command_that_adds_it(ce, tmp_path, capsys):
    run_dir, folder = ce
    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old)
    best = old / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(best)
    stored = ckpt.pop("calibrator")
    save_atomic({k: v for k, v in ckpt.items() if k != "format_version"}, best)
    for args in (["predict", str(old), str(folder), "--target-prior", "uniform"],
                 ["export", str(old), "--format", "torchscript", "--prior-input", "--out", str(tmp_path / "m.pt")]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"longtail evaluate {old} --save" in err
    assert main(["tune", str(old), "--posthoc", "la", "--grid", "0,1"]) == 0  # tune adds it too
    assert load_checkpoint(best)["calibrator"] == stored
    save_atomic({k: v for k, v in ckpt.items() if k != "format_version"}, best)
    assert main(["evaluate", str(old), "--save"]) == 0
    assert load_checkpoint(best)["calibrator"] == stored
    code, _, _ = predict_json(capsys, old, folder, "--target-prior", "uniform", "--out", tmp_path / "p.json")
    assert code == 0


def test_a_run_without_a_validation_split_gets_shifts_error(tmp_path, capsys):
    run_dir = _train(tmp_path, "no_val", ["model.name=resnet8", "dataset.val_source=none"])
    assert "calibrator" not in load_checkpoint(run_dir / "checkpoints" / "last.pt")
    folder = _write_pngs(run_dir, tmp_path / "pngs", [0, 1])
    assert main(["predict", str(run_dir), str(folder), "--target-prior", "uniform"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dataset.val_source=test_holdout" in err


# ----------------------------------------------------------------------------- evaluate reproduces the run


def test_evaluate_applies_the_runs_own_rule_and_equals_metrics_json(tmp_path, capsys):
    run_dir = _train(tmp_path, "la_rule", ["model.name=resnet8", "eval.posthoc=la", "eval.tau=1.5"])
    expected = json.loads((run_dir / "metrics.json").read_text())
    assert main(["evaluate", str(run_dir), "--json", str(tmp_path / "e.json")]) == 0
    got = json.loads((tmp_path / "e.json").read_text())
    assert got["posthoc"] == expected["posthoc"] and got["posthoc"]["name"] == "la" and got["posthoc"]["tau"] == 1.5
    for key in ("top1", "mean_class_acc", "many", "medium", "few", "per_class", "raw", "calibration", "calibrator",
                "class_names", "class_counts", "num_images"):
        assert got[key] == expected[key], key
    assert main(["evaluate", str(run_dir), "--posthoc", "none", "--json", str(tmp_path / "raw.json")]) == 0
    raw = json.loads((tmp_path / "raw.json").read_text())
    assert raw["posthoc"] is None and raw["per_class"] == expected["raw"]["per_class"]
    capsys.readouterr()


# ----------------------------------------------------------------------------- the input spec


def test_the_input_spec_travels_in_the_checkpoint_once(ce):
    run_dir, _ = ce
    cfg, ckpt, _ = load_run(run_dir)
    stored = ckpt["input"]
    assert stored == {"channels": 1, "size": 28, "crop_pct": 1.0, "mean": [pytest.approx(0.2860, abs=1e-4)],
                      "std": [pytest.approx(0.3530, abs=1e-4)], "interpolation": "bilinear"}  # Fashion-MNIST's own
    assert "mean" not in ckpt and "std" not in ckpt and ckpt["format_version"] == 2  # stored once
    json.dumps(stored)  # plain data


def test_predict_takes_positional_overrides(ce, tmp_path, capsys):
    run_dir, folder = ce
    code, result, _ = predict_json(capsys, run_dir, folder, "eval.batch_size=7", "--out", tmp_path / "p.json")
    assert code == 0 and result["summary"]["predicted"] == 10 * TEST_PER_CLASS
    assert main(["predict", str(run_dir), str(folder), "eval.batchsize=7"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'eval.batch_size'" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------- names and imports


def _registered(kind: str) -> set[str]:
    """The names registered by the modules that define the components (imported here), not the catalog's list."""
    import importlib

    from longtail import catalog

    for module in {e.module for e in catalog.entries(kind)}:
        importlib.import_module(module)
    return {e.name for e in catalog.entries(kind) if e.obj is not None}


@pytest.mark.parametrize("kind", ["dataset", "model", "loss", "posthoc", "finetune", "head_init"])
def test_the_names_checked_by_the_config_are_the_registered_names(kind):
    from longtail.catalog import KINDS

    assert set(CHOICES[KINDS[kind]]) - {"none"} == _registered(kind)


def test_the_config_takes_the_model_prefixes():
    from longtail import models
    from longtail.config import CHOICE_PREFIXES

    assert set(CHOICE_PREFIXES["model.name"]) == set(models.PREFIXED) == set(models.PREFIX_BUILDERS)


@pytest.mark.parametrize("override, message", [
    ("dataset.name=fmnist_l", "did you mean 'fmnist_lt'"),
    ("model.name=resnet322", "did you mean 'resnet32'"),
    ("loss.name=gal", "did you mean 'gala'"),
    ("eval.posthoc=tau-norm", "did you mean 'tau_norm'"),
])
def test_misspelt_names_fail_when_the_config_is_read(override, message):
    with pytest.raises(LongtailError, match=message) as err:
        load_config("configs/fmnist_lt/ce_imba100.yaml", [override])
    assert "must be one of" in str(err.value)
    load_config(None, ["model.name=timm/convnext_tiny"])  # any timm network by prefix


def test_train_with_a_misspelt_loss_fails_before_torch_is_imported(tmp_path):
    """Fast by construction: the error comes before torch (or any data) is imported."""
    code = ("import sys; from longtail.cli import main; "
            "rc = main(['train', 'configs/fmnist_lt/ce_imba100.yaml', 'loss.name=gal', '--out', sys.argv[1]]); "
            "print('torch' in sys.modules, rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], cwd=SRC.parent, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False", "2"]
    assert "did you mean 'gala'" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_no_import_cycles():
    graph, state, cycles = import_graph(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)
    assert "longtail.parser" in graph["longtail.sweep.spec"]  # the check above sees function-level imports


def test_the_selected_on_test_label_has_one_torch_free_home():
    holders = [p for p in (SRC / "longtail").rglob("*.py") if '"SELECTED ON TEST"' in p.read_text(encoding="utf-8")]
    assert [p.name for p in holders] == ["protocol.py"]
    code = "import sys, longtail.protocol, longtail.report.tables; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr
