"""The Python API (longtail.train, load_run, Run, sweep, report): light to import, the commands' numbers and
errors, silent unless asked, a docstring with an example on every public name; and the commands as a thin
layer over it (the same numbers from `longtail evaluate / predict / shift / report`)."""

from __future__ import annotations

import inspect
import io
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

import longtail
from conftest import FMNIST_CONFIG, REPO, TINY_RUN_TEST_PER_CLASS, cli_env
from longtail.cli import main


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
    """A copy of the session's tiny run (ResNet-8, one epoch, configured with post-hoc la), which these tests write into."""
    copy = tmp_path_factory.mktemp("api") / "run"
    shutil.copytree(tiny_run, copy)
    return longtail.load_run(copy)


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ----------------------------------------------------------------------------- import and errors


def test_import_loads_no_torch_and_a_config_mistake_fails_before_it():
    code = ("import sys, longtail\n"
            "print('torch' in sys.modules, 'pandas' in sys.modules)\n"
            "try:\n"
            "    longtail.train('configs/fmnist_lt/ce_imba100.yaml', 'train.lr=fast', out='unused')\n"
            "except longtail.LongtailError as exc:\n"
            "    print(exc)\n"
            "print('torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines() == ["False False", "config key 'train.lr' expects float, got str 'fast'", "False"], proc.stderr
    assert proc.stderr == ""


def _public_objects():
    for name in longtail.__all__:
        if name == "__version__":
            continue
        obj = getattr(longtail, name)
        yield name, obj
        if isinstance(obj, type) and obj.__module__.startswith("longtail.api"):
            for member, value in vars(obj).items():
                if not member.startswith("_"):
                    yield f"{name}.{member}", value


@pytest.mark.parametrize("name, obj", list(_public_objects()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_public_name_has_a_docstring_with_an_example(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert ">>>" in doc, f"longtail.{name} needs a docstring with an example (>>> lines)"


def test_sweep_and_report_are_both_the_packages_and_the_api_functions():
    from longtail.report import write_report  # noqa: F401 - importing the packages binds them on longtail
    from longtail.sweep import load_sweep  # noqa: F401

    assert callable(longtail.sweep) and callable(longtail.report)
    assert longtail.sweep.load_sweep is load_sweep
    with pytest.raises(longtail.LongtailError, match="does not exist"):
        longtail.sweep("no/such/sweep.yaml")


def test_config_forms_and_override_forms_resolve_alike(tmp_path):
    from longtail.api.training import resolve_config
    from longtail.config import load_config, load_yaml

    expected = load_config(FMNIST_CONFIG, ["train.lr=0.05", "model.name=resnet8"])
    nested = yaml.safe_load((REPO / FMNIST_CONFIG).read_text())
    assert resolve_config(REPO / FMNIST_CONFIG, ["train.lr=0.05", {"model.name": "resnet8"}]) == expected
    assert resolve_config(nested, [{"train.lr": 0.05, "model.name": "resnet8"}]) == expected
    assert resolve_config(load_yaml(REPO / FMNIST_CONFIG), ["train.lr=0.05", "model.name=resnet8"]) == expected
    assert resolve_config(load_config(FMNIST_CONFIG), ["train.lr=0.05"], ) != expected  # the model differs
    assert resolve_config(expected) == expected
    with pytest.raises(longtail.LongtailError, match="^pass out= "):
        longtail.train(nested)
    with pytest.raises(longtail.LongtailError, match="must look like key.sub=value"):
        longtail.train(nested, "train.lr", out=tmp_path)
    assert not tmp_path.joinpath("checkpoints").exists()  # nothing started


# ----------------------------------------------------------------------------- a run


def test_a_trained_run_resumes_instead_of_training_again(run, capfd):
    rows, metrics = (run.path / "epochs.jsonl").read_bytes(), (run.path / "metrics.json").stat().st_mtime_ns
    again = longtail.train(run.config, out=run.path)  # the run's own config: finished, so returned at once
    assert (run.path / "epochs.jsonl").read_bytes() == rows and (run.path / "metrics.json").stat().st_mtime_ns == metrics
    assert again.metrics == run.metrics and list(again.history["epoch"]) == [1]
    with pytest.raises(longtail.LongtailError, match="already holds a run; pass train.resume=true"):
        longtail.train(run.config, out=run.path, resume=False)
    with pytest.raises(longtail.LongtailError, match="the config differs from the run being resumed in: train.lr"):
        longtail.train(run.config, {"train.lr": 0.5}, out=run.path)
    assert capfd.readouterr() == ("", "")  # nothing printed without progress=True


def test_metrics_and_scores_agree_with_a_hand_computed_accuracy(run, capfd):
    logits, labels = run.scores("test")
    counts = torch.tensor(run.metrics["class_counts"], dtype=torch.float64)
    raw = (logits.argmax(1) == labels).double().mean().item() * 100
    adjusted = (logits.double() - (counts / counts.sum()).log()).argmax(1)  # post-hoc LA, tau 1: the run's rule
    la = (adjusted == labels).double().mean().item() * 100
    assert run.config.eval.posthoc == "la" and run.metrics["top1"] == pytest.approx(la, rel=1e-12)
    assert run.evaluate()["top1"] == run.metrics["top1"]  # the run's own rule: metrics.json
    assert run.evaluate(posthoc="none")["top1"] == pytest.approx(raw, rel=1e-12)
    metrics = run.evaluate(posthoc="la", tau=1.0)
    assert metrics["top1"] == run.metrics["top1"] and metrics["posthoc"]["name"] == "la"
    assert set(run.metrics) <= set(metrics) | {"epoch", "checkpoint", "selected_by", "launches"}  # metrics.json's keys
    assert capfd.readouterr() == ("", "")


def test_tune_chooses_the_tau_whose_validation_top1_is_best(run, capfd):
    result = run.tune("la", grid="0,1", save=False)
    assert capfd.readouterr() == ("", "") and not (run.path / "tune_la.json").exists()
    curve = {row["tau"]: row["top1"] for row in result["curve"]}
    assert sorted(curve) == [0.0, 1.0] and curve[result["tau"]] == max(curve.values())
    assert curve[0.0] == run.evaluate(posthoc="none", split="val")["top1"]  # tau 0 is the raw argmax
    assert result["test"]["top1"] == run.evaluate(posthoc="la", tau=result["tau"])["top1"]


def test_a_missing_run_and_unfinished_results_are_one_line_errors(tmp_path):
    with pytest.raises(longtail.LongtailError, match="is neither a run directory nor a checkpoint file"):
        longtail.load_run(tmp_path / "nothing")
    (tmp_path / "half" / "checkpoints").mkdir(parents=True)
    (tmp_path / "half" / "checkpoints" / "last.pt").write_bytes(b"")
    half = longtail.load_run(tmp_path / "half")
    with pytest.raises(longtail.LongtailError, match="has no metrics.json: its training has not finished"):
        half.metrics
    with pytest.raises(longtail.LongtailError, match="has no epochs.jsonl"):
        half.history


# ----------------------------------------------------------------------------- the commands = the API


def test_evaluate_command_writes_the_numbers_the_api_returns(run, tmp_path, capsys):
    code, out, _ = _cli(capsys, "evaluate", run.path, "--posthoc", "la", "--json", tmp_path / "la.json")
    assert code == 0 and "post-hoc la (tau 1)" in out
    assert json.loads((tmp_path / "la.json").read_text()) == json.loads(json.dumps(run.evaluate(posthoc="la")))
    assert capsys.readouterr() == ("", "")  # the API call printed nothing


def test_predict_command_writes_the_rows_the_api_returns(run, tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    pixels = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image, mode="L").save(folder / f"{i}.png")
    (folder / "3.png").write_bytes(b"not an image")
    code, out, _ = _cli(capsys, "predict", run.path, folder, "--top-k", "3", "--out", tmp_path / "rows.csv")
    assert code == 1 and "predicted 3 of 4 images" in out and "1 could not be read" in out
    command = pd.read_csv(tmp_path / "rows.csv", dtype=str, keep_default_na=False)
    rows = run.predict(folder, top_k=3)
    assert capsys.readouterr() == ("", "")
    assert list(rows.columns) == list(command.columns)
    assert command.to_dict("records") == pd.read_csv(io.StringIO(rows.to_csv(index=False)), dtype=str,
                                                      keep_default_na=False).to_dict("records")
    assert rows["error"].notna().tolist() == [False, False, False, True] and rows.attrs["summary"].predicted == 3
    assert rows.loc[3, "error"].startswith("cannot be read as an image") and pd.isna(rows.loc[3, "class_index"])
    # the same pixels given in memory: a PIL image, a (C, H, W) tensor, a batch; paths None, the same scores
    memory = run.predict([Image.fromarray(pixels[0], mode="L"), torch.from_numpy(pixels[1:2]),
                          torch.from_numpy(pixels[:2, None])], top_k=3)
    files = rows.iloc[[0, 1, 0, 1]].reset_index(drop=True)
    assert memory["path"].isna().all()
    assert memory["class_index"].tolist() == files["class_index"].tolist()
    assert np.allclose(memory["probability"], files["probability"], rtol=0, atol=1e-6)
    with pytest.raises(longtail.LongtailError, match="uint8 image tensors"):
        run.predict(torch.zeros(1, 28, 28))
    # test-time flips (eval.tte): an image in memory gets the views a file gets
    flipped = longtail.load_run(run.path, "eval.tte=flip")
    from_file, in_memory = flipped.predict(folder / "0.png"), flipped.predict(Image.fromarray(pixels[0], mode="L"))
    assert in_memory.loc[0, "error"] is None and in_memory.loc[0, "probability"] == from_file.loc[0, "probability"]


def test_shift_command_writes_the_rows_the_api_returns(run, capsys):
    code, out, _ = _cli(capsys, "shift", run.path, "--priors", "forward-10,uniform")
    assert code == 0 and "wrote" in out
    written = json.loads((run.path / "shift.json").read_text())
    table = run.shift("forward-10,uniform", save=False)
    assert capsys.readouterr() == ("", "")
    pd.testing.assert_frame_equal(table, pd.DataFrame(written["rows"]), check_exact=True)
    assert table.attrs["calibration"] == written["calibration"]
    # a uniform prior on the balanced test split keeps every image: uncorrected, that is the run's raw top-1
    uniform = table.set_index(["test_prior", "correction"]).loc[("uniform", "none")]
    assert uniform["n_images"] == 10 * TINY_RUN_TEST_PER_CLASS and uniform["top1"] == run.evaluate(posthoc="none")["top1"]


def test_report_command_writes_the_tables_and_figures_the_api_returns(run, tmp_path, capsys):
    code, out, _ = _cli(capsys, "report", run.path, "--out", tmp_path / "report")
    assert code == 0 and "wrote" in out
    report = longtail.report(run)
    assert capsys.readouterr() == ("", "")
    for stem in ("results", "shots", "per_class", "summary"):
        command = pd.read_csv(tmp_path / "report" / f"{stem}.csv", dtype=str, keep_default_na=False)
        api = pd.read_csv(io.StringIO(report.tables[stem].to_csv(index=False)), dtype=str, keep_default_na=False)
        assert command.to_dict("records") == api.to_dict("records"), stem
    # the run's raw argmax and its configured rule (post-hoc la), each a row with metrics.json's numbers
    assert sorted(report.tables["summary"]["top1_mean"]) == sorted([run.metrics["raw"]["top1"], run.metrics["top1"]])
    assert sorted(report.figures) == sorted(p.name for p in (tmp_path / "report" / "figures").glob("*.png"))


# ----------------------------------------------------------------------------- sweeps


def _sweep_file(tmp_path) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": str(REPO / FMNIST_CONFIG), "out": str(tmp_path / "runs"),
                                    "overrides": ["train.batch_size=32"], "axes": {"seed": [0, 1]}}))
    return str(path)


@pytest.mark.parametrize("flags, message", [
    (["--executor", "local", "--nodes", "2"], "--nodes 2 needs --executor slurm"),
    (["--executor", "slurm", "--nodes", "0"], "slurm nodes must be a whole number of at least 1, got 0"),
    (["--partition", "gpu"], "--partition applies to --executor slurm only"),
    (["--executor", "slurm", "--tasks-per-node", "3"], "train.batch_size 32 is the global batch and must divide evenly over 3"),
])
def test_a_dry_run_refuses_what_the_run_refuses(tmp_path, capsys, monkeypatch, flags, message):
    monkeypatch.setenv("PATH", str(tmp_path / "no_slurm_here"))  # nothing may reach sbatch
    path = _sweep_file(tmp_path)
    real = _cli(capsys, "sweep", path, *flags)
    dry = _cli(capsys, "sweep", path, *flags, "--dry-run")
    assert real[0] == dry[0] == 2 and real[2] == dry[2] and message in dry[2], dry
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_a_sweep_dict_lists_its_plan_without_printing(tmp_path, capsys):
    plan = longtail.sweep({"base": str(REPO / FMNIST_CONFIG), "out": str(tmp_path / "runs"), "axes": {"seed": [0, 1]}},
                          dry_run=True)
    table = plan.table()
    assert table[["run", "status"]].to_dict("records") == [{"run": "seed=0", "status": "to do"},
                                                           {"run": "seed=1", "status": "to do"}]
    assert table["top1"].isna().all() and [r.path for r in plan.runs] == [tmp_path / "runs" / "seed=0", tmp_path / "runs" / "seed=1"]
    assert plan.summary is None and capsys.readouterr() == ("", "")
    with pytest.raises(longtail.LongtailError, match="^the sweep dict: 'out' is missing"):
        longtail.sweep({"base": str(REPO / FMNIST_CONFIG)}, dry_run=True)
