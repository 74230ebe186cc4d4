"""Resume rules that need no data: where a non-finite loss is reported, how a resumed optimizer and
schedule are set, and how a resume settles what a kill left half done. (The kill and resume runs
themselves are in test_kill_resume.py, which needs Fashion-MNIST.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longtail.checkpoint import load_checkpoint


def test_check_finite_names_the_failing_step():
    from longtail.engine import CHECK_EVERY, NonFiniteLoss, _check_finite

    recent = torch.zeros(CHECK_EVERY)
    _check_finite(recent, CHECK_EVERY, 0)  # all finite: no error
    recent[3] = float("nan")
    with pytest.raises(NonFiniteLoss, match="became nan at step 4 of epoch 1"):
        _check_finite(recent, CHECK_EVERY, 0)  # the first window holds steps 1..25
    recent.zero_()
    recent[2] = float("inf")
    with pytest.raises(NonFiniteLoss, match="became inf at step 28 of epoch 3"):
        _check_finite(recent, CHECK_EVERY + 5, 2)  # a partial second window: steps 26..30


def test_resume_applies_changed_optimizer_settings_and_the_schedule_position():
    from longtail.config import load_config
    from longtail.engine import Progress, _restore
    from longtail.losses import CrossEntropyLoss
    from longtail.optim import build_optimizer, build_scheduler, lr_factor

    old = load_config(None, ["train.lr=0.1", "train.momentum=0.9", "train.schedule=cosine", "train.epochs=4"])
    new = load_config(None, ["train.lr=0.02", "train.momentum=0.5", "train.schedule=cosine", "train.epochs=4"])
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, old.train)
    sched = build_scheduler(opt, old.train, 5)
    for _ in range(10):  # two epochs of five steps
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        sched.step()
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "loss": {},
            "progress": {"epoch": 2, "best_score": 1.0, "best_epoch": 2, "history": [{}, {}]}}
    fresh = torch.nn.Linear(3, 2)
    opt2 = build_optimizer(fresh, new.train)
    progress = _restore(ckpt, Path("last.pt"), fresh, opt2, CrossEntropyLoss())
    build_scheduler(opt2, new.train, 5, start_step=progress.epoch * 5)  # sets the lr of the resumed step
    assert isinstance(progress, Progress) and progress.epoch == 2
    group = opt2.param_groups[0]
    assert group["momentum"] == 0.5 and group["lr"] == pytest.approx(0.02 * lr_factor(new.train, 2.0)) == 0.01
    assert torch.equal(opt2.state[fresh.weight]["momentum_buffer"], opt.state[model.weight]["momentum_buffer"])
    # unchanged config: the resumed schedule continues exactly where the saved one stood
    opt3 = build_optimizer(torch.nn.Linear(3, 2), old.train)
    build_scheduler(opt3, old.train, 5, start_step=10)
    assert opt3.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_a_resume_settles_what_a_kill_left_half_done(tmp_path):
    """Killed between last.pt and best.pt of the best epoch: the resume rebuilds best.pt from last.pt's
    weights, drops temp files and rewrites epochs.jsonl from last.pt's history."""
    from longtail.checkpoint import remove_partial_writes, save_atomic
    from longtail.engine import Progress, _settle_killed_run

    (tmp_path / "checkpoints").mkdir()
    best = tmp_path / "checkpoints" / "best.pt"
    payload = {"model": {"w": torch.ones(2)}, "config": {}, "num_classes": 2, "in_channels": 1,
               "class_counts": [2, 1], "input": {"channels": 1, "size": 28, "crop_pct": 1.0, "mean": [0.5], "std": [0.5],
                                                 "interpolation": "bilinear"}}
    save_atomic({**payload, "model": {"w": torch.zeros(2)}, "epoch": 1}, best)  # the previous best
    (tmp_path / "checkpoints" / ".last.pt.abcd.tmp").write_bytes(b"half")
    (tmp_path / "epochs.jsonl.tmp").write_text("{")
    history = [{"epoch": 1, "val_top1": 10.0}, {"epoch": 2, "val_top1": 20.0}]
    progress = Progress(epoch=2, best_score=20.0, best_epoch=2, history=history)
    for directory in (tmp_path, tmp_path / "checkpoints"):
        remove_partial_writes(directory)
    _settle_killed_run(tmp_path, progress, best, lambda: {**payload, "epoch": 2, "val": 20.0})
    rebuilt = load_checkpoint(best)
    assert rebuilt["epoch"] == 2 and torch.equal(rebuilt["model"]["w"], torch.ones(2))
    assert not list(tmp_path.rglob("*.tmp"))
    assert [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()] == history
    # best.pt already holds the best epoch: left alone
    before = best.read_bytes()
    _settle_killed_run(tmp_path, progress, best, lambda: pytest.fail("best.pt was rebuilt needlessly"))
    assert best.read_bytes() == before
