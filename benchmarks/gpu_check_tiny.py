"""The steps of benchmarks/gpu_check.sh --tiny in one Python process: the same commands with the same arguments,
run in this interpreter instead of one interpreter each (the tests run the tiny mode, and each start-up of
Python with torch costs seconds on a small machine). The GPU mode stays the shell script's, one process per step.

    python benchmarks/gpu_check_tiny.py --device cpu --out DIR      # what gpu_check.sh --tiny runs

DIR must hold fmnist_sweep.yaml (gpu_check.sh writes it first). As in the script, every step writes its output to
DIR/<step>.log and one line to DIR/steps.tsv (step, status: ok / failed rc=N / timed out, seconds, limit); a step
that fails or runs out of time (SIGALRM) is recorded and the next one runs. The sweep's trainings and post-hoc
steps run in this process too, one after the other, each appending to its own log like `longtail sweep` does.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
STEPS = ("machine", "throughput", "image_pipeline", "cifar100_lt_resnet32", "fmnist_sweep", "fmnist_report")
LIMIT_S = 300  # per step, as the script's tiny limits: tiny work, generous for a loaded test machine


class StepTimedOut(Exception):
    pass


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """File descriptors 1 and 2 (Python's and C's output) into `path` for the block, as the script's `> log 2>&1`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _on_alarm(signum: int, frame: Any) -> None:
    raise StepTimedOut()


def step(out: Path, name: str, limit: int, body: Callable[[], Any]) -> None:
    """Run `body` with its output in NAME.log under a time limit; one line to steps.tsv."""
    start = time.monotonic()
    print(f"[{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] {name} (at most {limit} s)", flush=True)
    (out / f"{name}.log").unlink(missing_ok=True)
    status = "ok"
    with output_to(out / f"{name}.log"):
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(limit)
        try:
            body()
        except StepTimedOut:
            status = "timed out"
        except SystemExit as exc:  # a script's main() ending with sys.exit / argparse's error
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            status = "ok" if code == 0 else f"failed rc={code}"
        except BaseException:  # noqa: BLE001 - recorded as the step's failure, as a non-zero exit code is
            traceback.print_exc()
            status = "failed rc=1"
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
    seconds = int(time.monotonic() - start)
    with open(out / "steps.tsv", "a", encoding="utf-8") as tsv:
        tsv.write(f"{name}\t{status}\t{seconds}\t{limit}\n")
    print(f"[{datetime.datetime.now(datetime.timezone.utc):%H:%M:%S}] {name}: {status}", flush=True)


def script(name: str, *args: str) -> Callable[[], None]:
    """benchmarks/NAME.py ARGS as `python benchmarks/NAME.py ARGS` runs it (its __main__ block, its sys.argv)."""
    def run() -> None:
        saved = sys.argv
        sys.argv = [str(BENCHMARKS / name), *args]
        try:
            runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
        finally:
            sys.argv = saved
    return run


def machine(out: Path) -> None:
    """machine.txt as the script writes it: the date, nvidia-smi (or that there is none), torch, the core count."""
    import torch

    lines = [datetime.datetime.now(datetime.timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y")]
    smi = shutil.which("nvidia-smi")
    lines.append(subprocess.run([smi], capture_output=True, text=True, timeout=60).stdout.rstrip() if smi else "no nvidia-smi")
    lines.append(f"torch {torch.__version__} cuda {torch.version.cuda} available {torch.cuda.is_available()}")
    lines.append(str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()))
    (out / "machine.txt").write_text("\n".join(lines) + "\n")


def sweep_here(path: Path) -> None:
    """`longtail sweep PATH --jobs 1`, each training and post-hoc step in this process: run_sweep's order, skips
    and summary with an executor that runs a task's `longtail ARGV` here, its output appended to the task's log
    and its marker written on success, as the local executor does."""
    from longtail.cli import main
    from longtail.sweep import EXECUTORS, load_sweep, run_sweep
    from longtail.sweep.executors import Outcome, Task

    def here(tasks: list[Task], jobs: int, say: Callable[[str], None], options: dict) -> list[Outcome]:
        outcomes = []
        for task in tasks:
            task.log.parent.mkdir(parents=True, exist_ok=True)
            with output_to(task.log):
                print(f"# {datetime.datetime.now().astimezone().isoformat(timespec='seconds')} longtail sweep, "
                      f"in the gpu_check process: longtail {' '.join(task.argv)}", flush=True)
                code = main(["--threads", "1", *task.argv])
                if code:
                    print(f"# exit code {code}", flush=True)
            if code == 0 and task.marker is not None:
                task.marker.write_text(task.marker_text + "\n", encoding="utf-8")
            outcomes.append(Outcome(task, code == 0, "" if code == 0 else f"exit code {code}"))
            say(f"[{len(outcomes)}/{len(tasks)}] {'finished' if code == 0 else 'FAILED'} {task.name}")
        return outcomes

    saved = EXECUTORS["local"]
    EXECUTORS["local"] = here
    try:
        summary = run_sweep(load_sweep(path), "local", jobs=1)
    finally:
        EXECUTORS["local"] = saved
    if summary.failed:
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=LIMIT_S, help=f"seconds per step (default {LIMIT_S})")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    from longtail.cli import main as longtail

    device = args.device
    steps: dict[str, Callable[[], Any]] = {
        "machine": lambda: machine(out),
        "throughput": script("throughput.py", "--device", device, "--quick", "--steps", "1", "--warmup", "1", "--rounds", "1",
                             "--batch-size", "16", "--workers", "0", "--markdown", str(out / "throughput.md")),
        "image_pipeline": script("image_pipeline.py", "--device", device, "--tiny", "--out", str(out / "image_pipeline.md")),
        "cifar100_lt_resnet32": script("cifar_lt_epochs.py", "--device", device, "--tiny", "--epochs", "3",
                                       "--out", str(out / "cifar100_lt_resnet32.json")),
        "fmnist_sweep": lambda: sweep_here(out / "fmnist_sweep.yaml"),
        "fmnist_report": lambda: sys.exit(longtail(["report", str(out / "fmnist_runs"), "--out", str(out / "fmnist_report")])),
    }
    for name in STEPS:
        step(out, name, args.limit, steps[name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
