"""Tiny Fashion-MNIST-LT runs through the CLI: the run-directory contract (a real `python -m longtail` process),
evaluate, resume and user mistakes (the same `main` in the test process, without an interpreter start-up each)."""

import functools
import json

import pytest
import torch

from conftest import FMNIST_CONFIG, main_here, run_cli
from longtail.checkpoint import load_checkpoint
from longtail.data.fmnist import FILES, read_idx

CONFIG = FMNIST_CONFIG


@pytest.fixture
def cli(capsys):
    """`longtail ARGS` in this process (conftest.main_here), as run_cli returns it."""
    return functools.partial(main_here, capsys)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_fmnist, fmnist_root):
    run = tmp_path_factory.mktemp("runs") / "ce"
    proc = run_cli("train", CONFIG, *tiny_fmnist, "train.epochs=2", "--out", str(run))
    return run, proc, len(read_idx(fmnist_root / FILES["test_labels"]))


def test_run_directory_contract(trained):
    run, proc, test_images = trained
    for name in ("config.yaml", "metrics.json", "epochs.jsonl", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("top1", "mean_class_acc", "many", "medium", "few", "per_class", "split"):
        assert key in metrics
    assert metrics["split"] == "test" and len(metrics["per_class"]) == 10
    # n_max 100, IF 100: counts 100 ... 1, so no class has more than 100 images
    assert metrics["many"] is None and metrics["num_images"] == test_images
    rows = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and "val_top1" in rows[0]
    assert "test metrics" in proc.stdout


def test_checkpoint_carries_config_and_counts(trained):
    run = trained[0]
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["config"]["dataset"]["n_max"] == 100
    assert ckpt["class_counts"][0] == 100 and ckpt["num_classes"] == 10
    assert {"optimizer", "scheduler", "loss", "progress"} <= set(ckpt)


SCORES = ("top1", "mean_class_acc", "many", "medium", "few", "per_class")


def test_evaluate_reproduces_the_test_metrics(trained, cli, tmp_path):
    run = trained[0]
    metrics = json.loads((run / "metrics.json").read_text())
    cli("evaluate", str(run), "--split", "test", "--json", str(tmp_path / "test.json"))
    evaluated = json.loads((tmp_path / "test.json").read_text())
    assert {k: evaluated[k] for k in SCORES} == {k: metrics[k] for k in SCORES}
    assert evaluated["split"] == "test" and evaluated["checkpoint_path"].endswith("best.pt")
    # the validation scores of best.pt are those logged for its epoch during training
    proc = cli("evaluate", str(run / "checkpoints" / "best.pt"), "--split", "val", "--json", str(tmp_path / "val.json"))
    assert "val metrics" in proc.stdout
    val = json.loads((tmp_path / "val.json").read_text())
    row = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()][metrics["epoch"] - 1]
    assert val["split"] == "val" and val["top1"] == row["val_top1"] and val["mean_class_acc"] == row["val_mean_class_acc"]


def test_resume_equals_uninterrupted(trained, cli, tmp_path, tiny_fmnist):
    """A resumed run continues from its checkpoint: it says where, retrains nothing (the first launch's
    epochs.jsonl row, timings included, is kept byte for byte) and ends with the uninterrupted run's weights."""
    run = trained[0]
    part = tmp_path / "part"
    cli("train", CONFIG, *tiny_fmnist, "train.epochs=1", "--out", str(part))
    first_row = (part / "epochs.jsonl").read_text()
    # continue the 1-epoch run to 2 epochs: only train.epochs differs, which the flag allows
    resumed = cli("train", CONFIG, *tiny_fmnist, "train.epochs=2", "--out", str(part), "--resume", "--allow-config-change").stdout
    assert f"resuming '{part}' after epoch 1" in resumed
    assert "epoch 2/2" in resumed and "epoch 1/2" not in resumed  # the resumed launch trained epoch 2 only
    rows = (part / "epochs.jsonl").read_text().splitlines(keepends=True)
    assert len(rows) == 2 and rows[0] == first_row
    launches = json.loads((part / "metrics.json").read_text())["launches"]
    assert launches == [{"start_epoch": 0, "epochs": 1}, {"start_epoch": 1, "epochs": 1}]
    assert json.loads((run / "metrics.json").read_text())["launches"] == [{"start_epoch": 0, "epochs": 2}]
    full_w = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    part_w = load_checkpoint(part / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(full_w[k], part_w[k]) for k in full_w)


def test_resuming_a_finished_run_is_a_no_op(trained, cli, tiny_fmnist):
    run = trained[0]
    before = (run / "metrics.json").read_text()
    proc = cli("train", CONFIG, *tiny_fmnist, "train.epochs=2", "--out", str(run), "--resume")
    assert "nothing to do" in proc.stdout and (run / "metrics.json").read_text() == before


def test_user_mistakes_are_one_line_errors(trained, cli, tmp_path, tiny_fmnist):
    run = trained[0]
    cases = [
        (["train", CONFIG, "train.epoch=3"], "did you mean 'train.epochs'"),
        (["train", CONFIG, *tiny_fmnist, "--out", str(run)], "already holds a run"),
        (["train", CONFIG, *tiny_fmnist, "train.epochs=2", "train.lr=0.5", "--out", str(run), "--resume"], "differs from the run being resumed in: train.lr"),
        (["evaluate", str(tmp_path)], "not a run directory"),
    ]
    launches = [(cli, args, message) for args, message in cases]
    # and once through a real process: what a user's shell shows, exit status included
    launches.append((run_cli, ["train", str(tmp_path / "missing.yaml")], "does not exist"))
    for launch, args, message in launches:
        proc = launch(*args, check=False)
        assert proc.returncode == 2, args
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
