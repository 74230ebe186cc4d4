"""Plugins: a loss with a hyperparameter, a post-hoc rule and a dataset from one file outside the package (the
file of docs/adding-a-method.md) go through every command as built-ins do, and a plugin's mistakes are one line."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, run_cli, write_recipe

TINY = ["train.progress=false", "device=cpu", "train.amp=false", "data.num_workers=0"]


def _package_state() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=REPO, capture_output=True, text=True).stdout


def test_a_plugin_file_goes_through_every_command(tmp_path, isolated_plugins):
    from longtail.config import load_config
    from longtail.engine import fit
    from longtail.evaluation import evaluate_checkpoint
    from longtail.export import export_run
    from longtail.predict import predict_paths
    from longtail.report import write_report
    from longtail.shift import run_shift
    from longtail.tune import tune

    before = _package_state()
    config = write_recipe(tmp_path)
    run = tmp_path / "run"

    # train one epoch, then resume it to two: the resumed run continues from last.pt
    fit(load_config(config, [*TINY, "train.epochs=1"]), run)
    metrics = fit(load_config(config, [*TINY, "train.epochs=2", "train.resume=true"]), run, allow_config_change=True)
    assert [launch["start_epoch"] for launch in metrics["launches"]] == [0, 1]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["loss"]["gamma"] == 1.5 and saved["plugins"] == [str(tmp_path / "my_methods.py")]
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    assert ckpt["plugins"][0]["sha256"] and len(ckpt["class_mass"]) == 6  # recorded plugin; PN-style mass stored

    # evaluate: the run's own rule gives metrics.json's numbers
    evaluated = evaluate_checkpoint(run)
    stored = json.loads((run / "metrics.json").read_text())
    assert evaluated["posthoc"] == stored["posthoc"] and evaluated["top1"] == stored["top1"]
    assert evaluated["raw"] == stored["raw"] and evaluated["per_class"] == stored["per_class"]

    tuned = tune(run, "prob_la", grid="0,1", log=lambda line: None)
    assert tuned["tau"] in (0.0, 1.0) and (run / "tune_prob_la.json").is_file()
    shifted = run_shift(run, ["uniform", "forward-5"], log=lambda line: None)
    assert set(shifted) and (run / "shift.json").is_file()
    report = write_report([run], tmp_path / "report")
    labels = [label for table in report.tables for label in table.rows]
    assert any("focal_la + probability LA" in label for label in labels), labels

    # predict image files, then an ONNX export with the traced rule: the same scores
    images = np.asarray(torch.randint(0, 256, (3, 16, 16, 3), generator=torch.Generator().manual_seed(0)), dtype=np.uint8)
    from PIL import Image

    paths = []
    for i, array in enumerate(images):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(array).save(paths[-1])
    predict_paths(run, paths, out=tmp_path / "preds.json", top_k=6)
    rows = json.loads((tmp_path / "preds.json").read_text())["predictions"]
    predicted = {Path(r["path"]).name: {t["name"]: t["probability"] for t in r["top_k"]} for r in rows}
    exported = export_run(run, "onnx", tmp_path / "model.onnx")
    assert exported.metadata["rule"]["name"] == "prob_la" and "graph" in exported.metadata["rule"]["folded_into"]
    import onnxruntime

    from longtail.deployment import load_deployment

    prep = load_deployment(run).preprocessing
    batch = torch.stack([prep(prep.load(p)) for p in paths]).numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = torch.from_numpy(session.run(["scores"], {"images": batch})[0]).softmax(1)
    names = exported.metadata["class_names"]
    for path, row in zip(paths, probs):
        assert np.allclose([predicted[path.name][n] for n in names], row.numpy(), atol=1e-4)
    assert _package_state() == before  # no package file was edited


def test_a_sweep_of_two_plugin_runs_and_a_changed_plugin_is_refused(tmp_path):
    """Through the CLI, in fresh processes: the config's plugin is found relative to the config file."""
    config = write_recipe(tmp_path)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"base": config.name, "out": "runs", "overrides": [*TINY, "train.epochs=1"],
                                     "axes": {"seed": [0, 1]}}))
    run_cli("sweep", str(sweep), cwd=tmp_path)
    runs = sorted(p.parent for p in (tmp_path / "runs").rglob("metrics.json"))
    assert len(runs) == 2
    plugin = tmp_path / "my_methods.py"
    plugin.write_text(plugin.read_text() + "\n# edited\n")
    proc = run_cli("evaluate", str(runs[0]), check=False)
    assert proc.returncode == 2 and f"plugin '{plugin}' has changed" in proc.stderr and proc.stderr.count("\n") == 1
    copy = tmp_path / "elsewhere" / "my_methods.py"  # a replacement given with --plugin is accepted
    copy.parent.mkdir()
    copy.write_text(plugin.read_text())
    proc = run_cli("evaluate", str(runs[0]), "--plugin", str(copy), "--posthoc", "prob_la")
    assert "probability" in proc.stdout or "prob_la" in proc.stdout


@pytest.mark.parametrize("body, message", [
    ("raise RuntimeError('boom')", "raised RuntimeError at import: boom"),
    ("import longtail\n@longtail.register_posthoc('twice')\ndef a(l, t, i): return l\n"
     "@longtail.register_posthoc('twice')\ndef b(l, t, i): return l", "posthoc 'twice' registered by"),
    ("import longtail\n@longtail.register_loss('la')\ndef la(cfg, counts): pass", "shadows longtail's built-in loss"),
    ("import longtail\n@longtail.register_loss('notaloss')\nclass NotALoss:\n    pass", "not a longtail.Loss"),
])
def test_plugin_mistakes_are_one_line_naming_the_file(tmp_path, body, message):
    plugin = tmp_path / "bad.py"
    plugin.write_text(body + "\n")
    proc = run_cli("--threads", "1", "train", str(REPO / "configs" / "fmnist_lt" / "ce_imba100.yaml"), "--plugin", str(plugin),
                   "--out", str(tmp_path / "run"), "train.epochs=1", "model.name=resnet8", "dataset.n_max=20",  # ends soon if no error
                   check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and str(plugin) in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
