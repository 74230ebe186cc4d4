"""The kill-and-resume harness of the crash-safety tests (test_kill_resume.py, test_image_batches.py): launch
`longtail train` in its own process group, SIGKILL it at a chosen moment, and check that what the kill left is
whole and that the resumed run ends bit for bit where the uninterrupted run ends. A plain helper module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from conftest import REPO, cli_env
from longtail.checkpoint import TRAINING_STATE, load_checkpoint

EPOCHS = 3  # the runs' length: three epochs on a few hundred images
TRAINING_STARTED = "computing on"  # the engine's last line before its first training step
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


def launch(args: list[str], run: Path, kill: Optional[Kill] = None, timeout: float = 300) -> Launch:
    """Run `longtail ARGS` in its own process group; SIGKILL the whole group (workers too) when `kill` is due."""
    env = {**cli_env(), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "longtail", *args], cwd=REPO, env=env,
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
