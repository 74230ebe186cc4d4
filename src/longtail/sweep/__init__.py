"""`longtail sweep`: every training of a sweep file (see spec.py), then its post-hoc steps, on this
machine or a Slurm cluster. Finished runs are skipped, partial ones resume from last.pt, a failure does
not stop the others, and a summary line ends it. `longtail report OUT` then makes the tables.

    >>> import longtail
    >>> longtail.sweep("benchmarks/fmnist_methods.yaml", jobs=2).table()   # the API (longtail.api.sweep)
    >>> from longtail.sweep import load_sweep, run_sweep
    >>> run_sweep(load_sweep("benchmarks/fmnist_methods.yaml"), executor="local", jobs=2)
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..errors import LongtailError
from .executors import (EXECUTORS, Outcome, Task, available_cores, check_slurm, run_task, single_process, slurm_parameters,
                        thread_share)
from .spec import SLURM_KEYS, Step, Sweep, Training, load_sweep

__all__ = ["EXECUTORS", "Summary", "Sweep", "Step", "Training", "available_cores", "check_launch", "dry_run", "load_sweep",
           "run_sweep", "run_task", "thread_share"]


@dataclass
class Summary:
    ran: list[Task] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # names of runs and steps already done
    failed: list[Outcome] = field(default_factory=list)
    blocked: list[Step] = field(default_factory=list)  # steps whose training failed

    def line(self) -> str:
        text = f"sweep: {len(self.ran)} ran, {len(self.skipped)} skipped, {len(self.failed)} failed"
        if self.failed:
            text += ": " + ", ".join(str(o.task.log) for o in self.failed)
        if self.blocked:
            text += f"; {len(self.blocked)} post-hoc step{'s' if len(self.blocked) != 1 else ''} not run (training failed)"
        return text


def _training_task(run: Training) -> Task:
    return Task(run.name, tuple(run.argv), run.log)


def _step_task(step: Step) -> Task:
    return Task(step.name, tuple(step.argv), step.log, step.marker, shlex.join(step.args))


def _check_global_batches(runs: list[Training], options: dict[str, Any]) -> None:
    """Before submitting: every run's global batch must split evenly over a job's processes."""
    import torch

    from ..config import load_config
    from ..data.pipeline import per_process_batch
    from ..distributed import Runtime

    params, _ = slurm_parameters(options, None)
    world = params["nodes"] * params["ntasks_per_node"]
    for run in runs if world > 1 else []:
        try:
            per_process_batch(load_config(run.config, run.overrides), Runtime(torch.device("cpu"), world_size=world))
        except LongtailError as exc:
            raise LongtailError(f"run '{run.name}': {exc} (nodes x gpus or tasks_per_node); change the job's shape or train.batch_size") from None


def check_launch(sweep: Sweep, executor: str = "local", jobs: Optional[int] = None,
                 slurm: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Everything a run of `sweep` checks before it launches anything, so that a dry run (which calls this too)
    refuses what the run would. `slurm`: the command line's Slurm options (None: not given), over the file's
    slurm: section; returns the merged options."""
    if executor not in EXECUTORS:
        raise LongtailError(f"unknown executor '{executor}'; use one of {', '.join(EXECUTORS)}")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise LongtailError(f"--jobs must be at least 1, got {jobs}")
    given = {k: v for k, v in (slurm or {}).items() if v is not None}
    unknown = sorted(set(given) - set(SLURM_KEYS))
    if unknown:
        raise LongtailError(f"unknown Slurm option {', '.join(unknown)}; use {', '.join(SLURM_KEYS)}")
    flags = [f"--{k.replace('_', '-')}" for k in given]
    spread = [f"--{k.replace('_', '-')} {given[k]}" for k in ("nodes", "tasks_per_node") if k in given]
    if spread and executor != "slurm":
        raise LongtailError(f"{' and '.join(spread)} needs --executor slurm: the local executor runs each training as one "
                            "process on this machine; for several processes here, run the training under torchrun")
    if flags and executor != "slurm":
        raise LongtailError(f"{', '.join(flags)} {'applies' if len(flags) == 1 else 'apply'} to --executor slurm only")
    options = {**sweep.slurm, **given}
    if executor == "slurm":
        todo = [run for run in sweep.trainings if run.status() != "done"]
        if todo:
            _check_global_batches(todo, options)  # (checks the options too) before asking Slurm
            check_slurm(options, jobs)
        if any(step.status() != "done" for step in sweep.steps):
            check_slurm(single_process(options), jobs)
    return options


def dry_run(sweep: Sweep, say: Callable[[str], None] = print) -> dict[str, int]:
    """List every run and step with its status; returns the counts per status."""
    say(f"sweep '{sweep.path}': {len(sweep.trainings)} training{'s' if len(sweep.trainings) != 1 else ''}, "
        f"{len(sweep.steps)} post-hoc step{'s' if len(sweep.steps) != 1 else ''}, runs in {sweep.out}")
    counts: dict[str, int] = {}
    steps: dict[str, int] = {}
    for run in sweep.trainings:
        status = run.status()
        counts[status] = counts.get(status, 0) + 1
        note = "  (resumes from checkpoints/last.pt)" if status == "partial" else ""
        say(f"  {status:8} {run.name}{note}")
    for step in sweep.steps:
        status = step.status()
        steps[status] = steps.get(status, 0) + 1
        say(f"  {status:8} {step.name}: longtail {shlex.join(step.args[:1] + ('RUN_DIR',) + step.args[1:])}")
    line = "trainings: " + ", ".join(f"{n} {status}" for status, n in counts.items())
    if steps:
        line += "; post-hoc steps: " + ", ".join(f"{n} {status}" for status, n in steps.items())
    say(line)
    return {**counts, **{f"step {k}": n for k, n in steps.items()}}


def run_sweep(sweep: Sweep, executor: str = "local", jobs: Optional[int] = None, slurm: Optional[dict[str, Any]] = None,
              say: Callable[[str], None] = print) -> Summary:
    """Run what is not done yet: trainings first, then the steps whose training has finished."""
    options = check_launch(sweep, executor, jobs, slurm)
    launch = EXECUTORS[executor]
    summary = Summary()

    def execute(tasks: list[Task], kind: str, shape: dict[str, Any]) -> None:
        if not tasks:
            return
        say(f"{kind}: {len(tasks)} to run")
        if executor == "local":
            outcomes = launch(tasks, jobs or 1, say, shape)
        else:
            outcomes = launch(tasks, jobs, say, shape, sweep.out / ".submitit")
        summary.ran += [o.task for o in outcomes]
        summary.failed += [o for o in outcomes if not o.ok]

    todo = []
    # every variant's first seed before any second one, so a sweep stopped half-way still covers every variant
    for run in sorted(sweep.trainings, key=lambda r: r.order):
        if run.status() == "done":
            summary.skipped.append(run.name)
        else:
            todo.append(run)
    execute([_training_task(run) for run in todo], "trainings", options)

    steps = []
    for step in sweep.steps:
        status = step.status()
        if status == "done":
            summary.skipped.append(step.name)
        elif status == "waiting":
            summary.blocked.append(step)
        else:
            steps.append(_step_task(step))
    execute(steps, "post-hoc steps", single_process(options))  # a step is one process
    say(summary.line())
    return summary


# `longtail.sweep(...)`: this package is also the API function of its name (longtail.api.sweeps.sweep)
from .._callable import make_callable  # noqa: E402

make_callable(__name__, "longtail.api.sweeps", "sweep")
