"""Crash safety: a run SIGKILLed at any moment of its training and resumed with --resume ends bit for bit
where the uninterrupted run ends (CPU, deterministic settings, the default bf16 autocast + channels_last
where the CPU has them), resumes rather than restarts, and no kill ever leaves a half-written file.

Kill points per case, each in a fresh process resuming the previous one: one mid-epoch (a fifth of an
epoch after the "epoch 1/3" line), seeded random ones at a fraction of the training left to the launch,
counted from the moment training starts (the engine's "computing on ..." line, printed once data and model
are ready), and (CE only, since the code is the same for every method) one while a checkpoint is being written
(the moment its temp file appears) and one during the final test (after the "epoch 3/3" line, before
metrics.json). Every kill must land after training started: a kill during interpreter start-up or data loading
proves nothing about resuming. Every launch after the first must resume where the last one committed: it prints
"resuming ... after epoch N" with N the epochs in last.pt, trains only later epochs, leaves the rows of
epochs.jsonl already written byte for byte (timings included), and metrics.json's "launches" add up to the
epochs once. The CE case's uninterrupted reference is also the finished run of the resume-rule tests below.

Kill points are races against a process on a shared machine, so a kill that misses its aim is aimed again,
up to MAX_AIMS launches per kill point (generous: a miss costs one launch, and a test that gives up on a
loaded machine would be a false failure; no assertion depends on how long anything takes): a launch that
finished first is undone from a snapshot of the run directory taken before it, and one killed elsewhere is
kept (it is one more valid kill) and resumed.
To cover a new method after merging, add a line to CASES (config, overrides, random kills); the harness is generic.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import TINY_FMNIST, make_small_fmnist
from longtail.checkpoint import TRAINING_STATE, load_checkpoint
from resume_harness import (CHECKPOINT_TMP, EPOCHS, TRAINING_STARTED, Kill, Launch, RowLedger, assert_same_run,
                            check_nothing_half_written, check_resumed, last_epoch, launch)

MAX_AIMS = 5  # launches per kill point before the test gives up on a machine too loaded to aim at
# name -> (config, overrides, random kills). Three epochs on a few hundred images.
CASES: dict[str, tuple[str, list[str], int]] = {
    # the DataLoader path with two workers (their augmentation RNG must be reproducible too), every aimed kill
    "ce": ("configs/fmnist_lt/ce_imba100.yaml", ["data.num_workers=2"], 2),
    # a stateful loss (GALA's gradient statistics live in last.pt) on the device pipeline (AutoAugment on)
    "gala_device": ("configs/fmnist_lt/gala_imba100.yaml", ["data.pipeline=device", "data.autoaugment=true"], 1),
    # multi-expert model and loss
    "lgla": ("configs/fmnist_lt/lgla_imba100.yaml", ["model.name=resnet8_experts"], 1),
}


def _args(case: str, data_root: Path, run: Path) -> list[str]:
    config, overrides, _ = CASES[case]
    return ["train", config, *TINY_FMNIST, f"train.epochs={EPOCHS}", f"dataset.root={data_root}",
            "dataset.download=false", *overrides, "--out", str(run), "--resume"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    # 1000 test images: the final test lasts long enough (about a second) to be killed reliably
    return make_small_fmnist(tmp_path_factory.mktemp("fmnist_small"), test_per_class=100)


def aim(kill: Kill, args: list[str], run: Path, expected_s: Callable[[], float], ledger: RowLedger) -> tuple[Launch, int]:
    """Launch until `kill` lands where aimed (see the module docstring). Returns the landed launch and
    how many launches it took; every launch on the way is checked for a real resume, every kill for
    half-written files."""
    for attempt in range(1, MAX_AIMS + 1):
        snapshot = run.parent / f"{run.name}.before"
        shutil.rmtree(snapshot, ignore_errors=True)
        if run.exists():
            shutil.copytree(run, snapshot)
        if kill.fraction is not None:
            kill = replace(kill, delay_s=kill.fraction * expected_s())
        before = last_epoch(run)
        result = launch(args, run, kill)
        check_resumed(result, run, before)
        if result.killed:
            check_nothing_half_written(run, before)
        if not result.killed or (run / "metrics.json").exists():  # finished first: undo the launch
            shutil.rmtree(run)
            if snapshot.exists():
                shutil.copytree(snapshot, run)
            if kill.fraction is not None and result.printed(TRAINING_STARTED):  # aim at the launch just seen
                seen = result.output[-1][0] - result.when(TRAINING_STARTED)
                kill = replace(kill, fraction=None, delay_s=kill.fraction * seen)
            continue
        ledger.check(run)  # a kept launch: the rows it left must agree with every earlier version
        if kill.landed(result):
            return result, attempt
    raise AssertionError(f"the kill '{kill.name}' missed its aim in {MAX_AIMS} launches; last: {_where(result)}")


@pytest.fixture(scope="module")
def references(data_root, tmp_path_factory) -> Callable[[str], tuple[Path, Launch]]:
    """case -> its uninterrupted run and that launch, launched once on first use. Read-only: the CE one is also
    the finished run of the resume-rule tests, which copy it before writing."""
    made: dict[str, tuple[Path, Launch]] = {}

    def get(case: str) -> tuple[Path, Launch]:
        if case not in made:
            run = tmp_path_factory.mktemp(f"reference_{case}") / "run"
            made[case] = (run, launch(_args(case, data_root, run), run))
        return made[case]

    return get


@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_runs_resume_bit_for_bit(case, references, data_root, tmp_path):
    """Over 30 s (4 to 7 launches of the CLI per case): the only test that a run SIGKILLed at any moment of
    training, in a checkpoint write or in the final test resumes bit for bit (weights, optimizer and loss state,
    metrics, epochs.jsonl, TensorBoard) with each pipeline and a stateful loss, and leaves nothing half-written."""
    reference, ref = references(case)
    assert ref.printed("test metrics") and ref.trained_epochs() == list(range(1, EPOCHS + 1))
    epoch_s = (ref.when(f"epoch {EPOCHS}/{EPOCHS}") - ref.when(TRAINING_STARTED)) / EPOCHS
    run = tmp_path / "killed"

    def training_left_s() -> float:
        return (EPOCHS - last_epoch(run)) * epoch_s

    rng = random.Random(8)
    plan = [
        Kill("mid-epoch", lines=(f"epoch 1/{EPOCHS}",), delay_s=0.2 * epoch_s,
             aimed=lambda r: r.printed(f"epoch 1/{EPOCHS}") and not r.printed(f"epoch 2/{EPOCHS}")),
        *[Kill(f"random {i + 1}", lines=(TRAINING_STARTED,), fraction=rng.uniform(0.05, 0.95)) for i in range(CASES[case][2])],
    ]
    if case == "ce":  # the checkpoint write (save_atomic) and the final test are the same code for every method
        plan.insert(1, Kill("checkpoint write", file=CHECKPOINT_TMP, aimed=lambda r: bool(r.tmp_left)))
        plan.append(Kill("final test", lines=(f"epoch {EPOCHS}/{EPOCHS}", f"after epoch {EPOCHS}"),
                         aimed=lambda r: not r.printed("test metrics")))
    ledger = RowLedger()
    landed = {kill.name: aim(kill, _args(case, data_root, run), run, training_left_s, ledger) for kill in plan}
    assert all(r.killed and r.printed(TRAINING_STARTED) for r, _ in landed.values())  # no kill during start-up
    before = last_epoch(run)
    final = launch(_args(case, data_root, run), run)
    assert not final.killed and final.printed("test metrics")
    check_resumed(final, run, before)
    ledger.check(run)
    assert sorted(ledger.rows) == list(range(1, EPOCHS + 1))
    assert_same_run(run, reference)
    print(f"{case}: " + "; ".join(f"{name}: {_where(r)} (launch {n})" for name, (r, n) in landed.items()))


def _where(result: Launch) -> str:
    if not result.killed:
        return "finished before the kill"
    last = f"after '{result.output[-1][1][:48]}'" if result.output else "during start-up (nothing printed yet)"
    return f"killed {last}" + (f", temp files left: {', '.join(result.tmp_left)}" if result.tmp_left else "")


# ----------------------------------------------------------------------------- resume rules and NaN stop


@pytest.fixture(scope="module")
def finished_run(references, data_root):
    """A finished run (the CE case's uninterrupted reference, 3 epochs) and the arguments that made it."""
    run, _ = references("ce")
    return run, _args("ce", data_root, run)


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and "tb" not in p.parts}


def test_resuming_a_finished_run_is_a_no_op_that_says_so(finished_run, capsys):
    from longtail.cli import main

    run, args = finished_run
    before = _snapshot(run)
    assert main(args) == 0
    assert f"already finished {EPOCHS} epochs; nothing to do" in capsys.readouterr().out
    assert _snapshot(run) == before


def test_resuming_with_a_changed_config_names_the_keys(finished_run, capsys):
    from longtail.cli import main

    run, args = finished_run
    before = _snapshot(run)
    assert main([*args, "train.lr=0.5", "data.flip=false", "data.num_workers=0"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "differs from the run being resumed in: data.flip, data.num_workers, train.lr;" in err
    assert "--allow-config-change" in err
    assert _snapshot(run) == before
    # keys that do not change what is computed may differ
    assert main([*args, "train.progress=true", "eval.batch_size=100"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(finished_run, tmp_path, capsys):
    from longtail.cli import main

    run, args = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    good = load_checkpoint(copy / "checkpoints" / "last.pt")
    best_before = (copy / "checkpoints" / "best.pt").read_bytes()
    args = [a if a != str(run) else str(copy) for a in args]
    # one more epoch with an absurd learning rate; it must take effect on resume (not the saved 0.1)
    more = [a if a != f"train.epochs={EPOCHS}" else f"train.epochs={EPOCHS + 1}" for a in args]
    capsys.readouterr()
    saved = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:  # in this process (no DataLoader workers forked from it), restoring the switches the training sets
        assert main([*more, "train.lr=1e30", "data.num_workers=0", "--allow-config-change"]) == 2
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(rf"the loss became (nan|inf|-inf) at step \d+ of epoch {EPOCHS + 1}; training stopped and the last good "
                     rf"checkpoint '.*last.pt' \(epoch {EPOCHS}\) was kept", err), err
    kept = load_checkpoint(copy / "checkpoints" / "last.pt", require=tuple(TRAINING_STATE))
    assert kept["progress"]["epoch"] == EPOCHS
    assert all(torch.equal(kept["model"][k], good["model"][k]) for k in good["model"])
    assert (copy / "checkpoints" / "best.pt").read_bytes() == best_before


def test_a_second_process_on_a_running_run_directory_is_refused(finished_run, capsys):
    import fcntl

    from longtail.cli import main

    run, args = finished_run
    with open(run / "checkpoints" / ".lock", "a") as held:  # what a running `longtail train` holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        (run / "checkpoints" / ".last.pt.inflight.tmp").write_bytes(b"being written")
        assert main(args) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "is in use by another longtail process" in err
        assert (run / "checkpoints" / ".last.pt.inflight.tmp").exists()  # the other process's write is untouched
    assert main(args) == 0  # lock released: the finished run is a no-op again, and the stale temp file is gone
    assert not (run / "checkpoints" / ".last.pt.inflight.tmp").exists()
