"""Crash safety: a run SIGKILLed at any moment and resumed with --resume ends bit for bit where the
uninterrupted run ends (CPU, deterministic settings), and no kill ever leaves a half-written file.

Kill points per case (6), each in a fresh process resuming the previous one: one mid-epoch (a fifth of an
epoch after the "epoch 1/3" line), one while a checkpoint is being written (the moment its temp file
appears), three at seeded random fractions of the training left to the launch and one during the final
test (after the "epoch 3/3" line, before metrics.json).
Kill points are races against a process on a shared machine, so a kill that misses its aim is aimed again
(up to MAX_AIMS launches): a launch that finished first is undone from a snapshot of the run directory
taken before it, and one killed elsewhere is kept (it is one more valid kill) and resumed.
To cover a new method after merging, add a line to CASES (config and overrides); the harness is generic.
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

from conftest import TINY_FMNIST, cli_env, make_small_fmnist, needs_fmnist
from longtail.checkpoint import TRAINING_STATE, load_checkpoint

pytestmark = needs_fmnist

EPOCHS = 3
RANDOM_KILLS = 3  # plus 3 aimed ones: mid-epoch, checkpoint write, final test
MAX_AIMS = 5  # launches per kill point before the test gives up on a machine too loaded to aim at
# name -> (config, overrides). Three epochs of resnet8 on a few hundred images, two DataLoader workers
# (their augmentation RNG must be reproducible too).
CASES: dict[str, tuple[str, list[str]]] = {
    "ce": ("configs/fmnist_lt/ce_imba100.yaml", ["data.num_workers=2"]),
}
TIMING_KEYS = {"images_per_s", "epoch_time_s"}  # the only values allowed to differ between runs
CHECKPOINT_TMP = "checkpoints/.*.pt.*.tmp"  # save_atomic's temp files


@dataclass
class Kill:
    """When to SIGKILL a launch: `after_s` seconds after it starts, or `delay_s` after a stdout line
    containing one of `lines` appears, or as soon as a file matching `file` (a glob in the run dir) exists.
    `fraction` (random kills) sets `after_s` at launch time, as that share of the launch's expected time.
    `aimed(launch)` says whether a kill landed where it was meant to."""

    name: str
    after_s: Optional[float] = None
    lines: tuple[str, ...] = ()
    delay_s: float = 0.0
    file: Optional[str] = None
    fraction: Optional[float] = None
    aimed: Callable[["Launch"], bool] = lambda launch: launch.killed

    def due(self, elapsed: float, output: list[tuple[float, str]], run: Path) -> bool:
        if self.after_s is not None:
            return elapsed >= self.after_s
        if self.lines:
            seen = [t for t, line in output if any(text in line for text in self.lines)]
            return bool(seen) and elapsed - seen[0] >= self.delay_s
        return any(run.glob(self.file))


@dataclass
class Launch:
    killed: bool
    output: list[tuple[float, str]]  # (seconds since start, line)
    tmp_left: list[str] = field(default_factory=list)  # temp files present right after the kill

    def printed(self, text: str) -> bool:
        return any(text in line for _, line in self.output)

    def when(self, text: str) -> float:
        return next(t for t, line in self.output if text in line)


def _args(case: str, data_root: Path, run: Path) -> list[str]:
    config, overrides = CASES[case]
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
        if elapsed > timeout:
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
    assert json.loads((run / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())

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


def aim(kill: Kill, args: list[str], run: Path, expected_s: Callable[[], float]) -> tuple[Launch, int]:
    """Launch until `kill` lands where aimed (see the module docstring). Returns the landed launch and
    how many launches it took; every kill on the way is checked for half-written files."""
    for attempt in range(1, MAX_AIMS + 1):
        snapshot = run.parent / f"{run.name}.before"
        shutil.rmtree(snapshot, ignore_errors=True)
        if run.exists():
            shutil.copytree(run, snapshot)
        if kill.fraction is not None:
            kill = replace(kill, after_s=kill.fraction * expected_s())
        before = last_epoch(run)
        result = launch(args, run, kill)
        if result.killed:
            check_nothing_half_written(run, before)
        if not result.killed or (run / "metrics.json").exists():  # finished first: undo the launch
            shutil.rmtree(run)
            if snapshot.exists():
                shutil.copytree(snapshot, run)
            if kill.fraction is not None:  # aim at the launch just seen, not the estimate
                kill = replace(kill, fraction=None, after_s=kill.fraction * result.output[-1][0])
        elif kill.aimed(result):
            return result, attempt
    raise AssertionError(f"the kill '{kill.name}' missed its aim in {MAX_AIMS} launches; last: {_where(result)}")


@pytest.mark.slow  # 8 launches of the CLI: about a minute on an idle 2-core machine, several when shared
@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_runs_resume_bit_for_bit(case, data_root, tmp_path):
    reference = tmp_path / "reference"
    ref = launch(_args(case, data_root, reference), reference)
    assert ref.printed("test metrics")
    epoch_s = ref.when(f"epoch 2/{EPOCHS}") - ref.when(f"epoch 1/{EPOCHS}")
    startup_s = max(ref.when(f"epoch 1/{EPOCHS}") - epoch_s, 0.0)
    run = tmp_path / "killed"

    def training_left_s() -> float:
        return startup_s + (EPOCHS - last_epoch(run)) * epoch_s

    rng = random.Random(8)
    plan = [
        Kill("mid-epoch", lines=(f"epoch 1/{EPOCHS}",), delay_s=0.2 * epoch_s,
             aimed=lambda r: r.killed and r.printed(f"epoch 1/{EPOCHS}") and not r.printed(f"epoch 2/{EPOCHS}")),
        Kill("checkpoint write", file=CHECKPOINT_TMP, aimed=lambda r: r.killed and bool(r.tmp_left)),
        *[Kill(f"random {i + 1}", fraction=rng.uniform(0.05, 0.95)) for i in range(RANDOM_KILLS)],
        Kill("final test", lines=(f"epoch {EPOCHS}/{EPOCHS}", f"after epoch {EPOCHS}"),
             aimed=lambda r: r.killed and not r.printed("test metrics")),
    ]
    landed = {kill.name: aim(kill, _args(case, data_root, run), run, training_left_s) for kill in plan}
    final = launch(_args(case, data_root, run), run)
    assert not final.killed and final.printed("test metrics")
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
