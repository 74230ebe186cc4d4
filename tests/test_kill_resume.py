"""Crash safety: a run SIGKILLed at any moment of its training and resumed with --resume ends bit for bit
where the uninterrupted run ends (CPU, deterministic settings, the default bf16 autocast + channels_last
where the CPU has them), resumes rather than restarts, and no kill ever leaves a half-written file.

Kill points per case, each in a fresh process resuming the previous one: one mid-epoch (a fifth of an
epoch after the "epoch 1/3" line), one while a checkpoint is being written (the moment its temp file
appears), seeded random ones at a fraction of the training left to the launch, counted from the moment
training starts (the engine's "computing on ..." line, printed once data and model are ready), and (CE
only) one during the final test (after the "epoch 3/3" line, before metrics.json). Every kill must land
after training started: a kill during interpreter start-up or data loading proves nothing about resuming.
Every launch after the first must resume where the last one committed: it prints "resuming ... after
epoch N" with N the epochs in last.pt, trains only later epochs, leaves the rows of epochs.jsonl already
written byte for byte (timings included), and metrics.json's "launches" add up to the epochs once.

Kill points are races against a process on a shared machine, so a kill that misses its aim is aimed again,
up to MAX_AIMS launches per kill point (generous: a miss costs one launch, and a test that gives up on a
loaded machine would be a false failure; no assertion depends on how long anything takes): a launch that
finished first is undone from a snapshot of the run directory taken before it, and one killed elsewhere is
kept (it is one more valid kill) and resumed.
To cover a new method after merging, add a line to CASES (config, overrides, random kills); the harness is generic.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch

from conftest import TINY_FMNIST, cli_env, make_small_fmnist
from longtail.checkpoint import TRAINING_STATE, load_checkpoint

EPOCHS = 3
MAX_AIMS = 5  # launches per kill point before the test gives up on a machine too loaded to aim at
TRAINING_STARTED = "computing on"  # the engine's last line before its first training step
# name -> (config, overrides, random kills). Three epochs on a few hundred images.
CASES: dict[str, tuple[str, list[str], int]] = {
    # the DataLoader path with two workers (their augmentation RNG must be reproducible too), every aimed kill
    "ce": ("configs/fmnist_lt/ce_imba100.yaml", ["data.num_workers=2"], 3),
    # a stateful loss (GALA's gradient statistics live in last.pt) on the device pipeline (AutoAugment on)
    "gala_device": ("configs/fmnist_lt/gala_imba100.yaml", ["data.pipeline=device", "data.autoaugment=true"], 2),
    # multi-expert model and loss
    "lgla": ("configs/fmnist_lt/lgla_imba100.yaml", ["model.name=resnet8_experts"], 1),
}
TIMING_KEYS = {"images_per_s", "epoch_time_s"}  # the only values allowed to differ between runs
CHECKPOINT_TMP = "checkpoints/.*.pt.*.tmp"  # save_atomic's temp files


@dataclass
class Kill:
    """When to SIGKILL a launch: `delay_s` after a stdout line containing one of `lines` appears, or as soon
    as a file matching `file` (a glob in the run dir) exists. `fraction` (random kills) sets `delay_s` at
    launch time, as that share of the launch's expected training time. `aimed(launch)` says whether a kill
    landed where it was meant to; every kill must also land after training started."""

    name: str
    lines: tuple[str, ...] = ()
    delay_s: float = 0.0
    file: Optional[str] = None
    fraction: Optional[float] = None
    aimed: Callable[["Launch"], bool] = lambda launch: True

    def due(self, elapsed: float, output: list[tuple[float, str]], run: Path) -> bool:
        if self.lines:
            seen = [t for t, line in output if any(text in line for text in self.lines)]
            return bool(seen) and elapsed - seen[0] >= self.delay_s
        return any(run.glob(self.file))

    def landed(self, launch: "Launch") -> bool:
        return launch.killed and launch.printed(TRAINING_STARTED) and self.aimed(launch)


@dataclass
class Launch:
    killed: bool
    output: list[tuple[float, str]]  # (seconds since start, line)
    tmp_left: list[str] = field(default_factory=list)  # temp files present right after the kill

    def printed(self, text: str) -> bool:
        return any(text in line for _, line in self.output)

    def when(self, text: str) -> float:
        return next(t for t, line in self.output if text in line)

    def trained_epochs(self) -> list[int]:
        return [int(line.split()[1].split("/")[0]) for _, line in self.output if line.startswith("epoch ") and f"/{EPOCHS}" in line]


def _args(case: str, data_root: Path, run: Path) -> list[str]:
    config, overrides, _ = CASES[case]
    return ["train", config, *TINY_FMNIST, f"train.epochs={EPOCHS}", f"dataset.root={data_root}",
            "dataset.download=false", *overrides, "--out", str(run), "--resume"]


def launch(args: list[str], run: Path, kill: Optional[Kill] = None, timeout: float = 300) -> Launch:
    """Run `longtail ARGS` in its own process group; SIGKILL the whole group (workers too) when `kill` is due."""
    env = {**cli_env(), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "longtail", *args], cwd=Path(__file__).resolve().parents[1], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: [output.append((time.monotonic() - start, line.rstrip())) for line in proc.stdout])
    reader.start()
    fired, tmp_left = False, []
    while proc.poll() is None:
        elapsed = time.monotonic() - start
        if elapsed > timeout:  # a hung launch, not a slow one: 300 s is 20 times a launch on a shared machine
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"launch timed out: {output}")
        if kill is not None and kill.due(elapsed, list(output), run):
            os.killpg(proc.pid, signal.SIGKILL)
            fired, tmp_left = True, [str(p.relative_to(run)) for p in run.glob("**/*.tmp")]
            break
        time.sleep(0.002 if kill is not None and kill.file else 0.01)  # a checkpoint write takes ~20 ms
    proc.wait()
    reader.join()
    if not fired:
        assert proc.returncode == 0, "\n".join(line for _, line in output)
    return Launch(fired, output, tmp_left)


def last_epoch(run: Path) -> int:
    last = run / "checkpoints" / "last.pt"
    return load_checkpoint(last, require=tuple(TRAINING_STATE))["progress"]["epoch"] if last.exists() else 0


def check_nothing_half_written(run: Path, previous_epoch: int) -> None:
    """Every file a killed run leaves is complete, and no finished epoch was lost."""
    epoch = last_epoch(run)
    if (run / "checkpoints" / "best.pt").exists():
        load_checkpoint(run / "checkpoints" / "best.pt")
    assert epoch >= previous_epoch, "a kill lost a finished epoch"
    if (run / "metrics.json").exists():
        json.loads((run / "metrics.json").read_text())
    if (run / "epochs.jsonl").exists():
        rows = [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]
        assert epoch - 1 <= len(rows) <= epoch  # may lag last.pt by one epoch; the resume rewrites it
    if (run / "config.yaml").exists():
        import yaml

        assert isinstance(yaml.safe_load((run / "config.yaml").read_text()), dict)


def check_resumed(result: Launch, run: Path, before: int) -> None:
    """A launch that started on a run with `before` epochs in last.pt continued from there: it said so,
    and every epoch it trained (and logged) comes after them."""
    if before and result.printed(TRAINING_STARTED):
        assert result.printed(f"resuming '{run}' after epoch {before}"), "a launch did not resume from last.pt"
    assert all(e > before for e in result.trained_epochs()), f"epochs {result.trained_epochs()} retrained after epoch {before}"


class RowLedger:
    """The first version seen of each epochs.jsonl row; a row must never change once written (a resume
    that recomputed an epoch would write new timings)."""

    def __init__(self) -> None:
        self.rows: dict[int, str] = {}

    def check(self, run: Path) -> None:
        path = run / "epochs.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            epoch = json.loads(line)["epoch"]
            assert self.rows.setdefault(epoch, line) == line, f"the epochs.jsonl row of epoch {epoch} was rewritten"


def _tb_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))  # applies the purge a resumed writer asks for
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_same_run(run: Path, reference: Path) -> None:
    for name in ("last.pt", "best.pt"):
        got, want = (load_checkpoint(r / "checkpoints" / name) for r in (run, reference))
        assert got["model"].keys() == want["model"].keys()
        for key in want["model"]:
            assert torch.equal(got["model"][key], want["model"][key]), f"{name}: {key} differs"
        assert got.get("epoch") == want.get("epoch")
    got, want = (load_checkpoint(r / "checkpoints" / "last.pt", require=tuple(TRAINING_STATE)) for r in (run, reference))
    for p, state in want["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(got["optimizer"]["state"][p][key], value), f"optimizer {key} of param {p} differs"
    assert got["loss"].keys() == want["loss"].keys()
    for key in want["loss"]:  # a stateful loss's statistics (GALA) resume exactly too
        assert torch.equal(got["loss"][key], want["loss"][key]), f"loss state {key} differs"
    metrics, ref_metrics = (json.loads((r / "metrics.json").read_text()) for r in (run, reference))
    assert ref_metrics.pop("launches") == [{"start_epoch": 0, "epochs": EPOCHS}]
    launches = metrics.pop("launches")
    assert metrics == ref_metrics
    # the launches that committed epochs, each starting where the previous one ended: every epoch trained once
    assert len(launches) > 1 and launches[0]["start_epoch"] == 0
    assert all(b["start_epoch"] == a["start_epoch"] + a["epochs"] for a, b in zip(launches, launches[1:]))
    assert sum(x["epochs"] for x in launches) == EPOCHS

    def rows(r: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in (r / "epochs.jsonl").read_text().splitlines()]

    assert rows(run) == rows(reference)
    tb, tb_ref = _tb_scalars(run), _tb_scalars(reference)
    for tag in ("train/loss", "val/top1"):
        assert tb[tag] == tb_ref[tag], f"TensorBoard {tag}: duplicated or missing epochs"
        assert [step for step, _ in tb[tag]] == list(range(1, EPOCHS + 1))
    assert not list(run.glob("**/*.tmp")), "temp files were left behind"


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


@pytest.mark.slow  # 20 launches of the CLI in all: a few minutes on a shared 2-core machine
@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_runs_resume_bit_for_bit(case, data_root, tmp_path):
    reference = tmp_path / "reference"
    ref = launch(_args(case, data_root, reference), reference)
    assert ref.printed("test metrics") and ref.trained_epochs() == list(range(1, EPOCHS + 1))
    epoch_s = (ref.when(f"epoch {EPOCHS}/{EPOCHS}") - ref.when(TRAINING_STARTED)) / EPOCHS
    run = tmp_path / "killed"

    def training_left_s() -> float:
        return (EPOCHS - last_epoch(run)) * epoch_s

    rng = random.Random(8)
    plan = [
        Kill("mid-epoch", lines=(f"epoch 1/{EPOCHS}",), delay_s=0.2 * epoch_s,
             aimed=lambda r: r.printed(f"epoch 1/{EPOCHS}") and not r.printed(f"epoch 2/{EPOCHS}")),
        Kill("checkpoint write", file=CHECKPOINT_TMP, aimed=lambda r: bool(r.tmp_left)),
        *[Kill(f"random {i + 1}", lines=(TRAINING_STARTED,), fraction=rng.uniform(0.05, 0.95)) for i in range(CASES[case][2])],
    ]
    if case == "ce":  # the final test is the same code for every method
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
def finished_run(data_root, tmp_path_factory):
    """A finished one-epoch run (subprocess) and the arguments that made it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    args = _args("ce", data_root, run)
    args[args.index(f"train.epochs={EPOCHS}")] = "train.epochs=1"
    launch(args, run)
    return run, args


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and "tb" not in p.parts}


def test_resuming_a_finished_run_is_a_no_op_that_says_so(finished_run, capsys):
    from longtail.cli import main

    run, args = finished_run
    before = _snapshot(run)
    assert main(args) == 0
    assert "already finished 1 epochs; nothing to do" in capsys.readouterr().out
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


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(finished_run, tmp_path):
    from conftest import run_cli

    run, args = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    good = load_checkpoint(copy / "checkpoints" / "last.pt")
    best_before = (copy / "checkpoints" / "best.pt").read_bytes()
    args = [a if a != str(run) else str(copy) for a in args]
    # epoch 2 with an absurd learning rate; it must take effect on resume (not the saved 0.1)
    proc = run_cli(*[a if a != "train.epochs=1" else "train.epochs=2" for a in args], "train.lr=1e30",
                   "--allow-config-change", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(r"the loss became (nan|inf|-inf) at step \d+ of epoch 2; training stopped and the last good checkpoint '.*last.pt' \(epoch 1\) was kept", err), err
    kept = load_checkpoint(copy / "checkpoints" / "last.pt", require=tuple(TRAINING_STATE))
    assert kept["progress"]["epoch"] == 1
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
