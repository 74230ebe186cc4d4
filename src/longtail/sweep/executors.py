"""Where a sweep's commands run: on this machine (`local`, subprocesses) or on a Slurm cluster (`slurm`,
through submitit). Each runs a list of Tasks and says which succeeded; neither stops at a failure."""

from __future__ import annotations

import datetime
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import LongtailError, one_line


@dataclass(frozen=True)
class Task:
    """`python -m longtail ARGV`, its output appended to `log`; `marker` (if any) gets `marker_text` on success."""

    name: str
    argv: tuple[str, ...]
    log: Path
    marker: Optional[Path] = None
    marker_text: str = ""


@dataclass
class Outcome:
    task: Task
    ok: bool
    reason: str = ""


def available_cores() -> int:
    """Cores this process may use (its affinity mask: a cgroup or taskset limit counts)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def thread_share(cores: int, jobs: int) -> int:
    """Torch threads per training when `jobs` run at once: oversubscribed cores slow every job down
    (two 2-thread trainings on 2 cores run about ten times slower than they should)."""
    return max(1, cores // max(1, jobs))


def _ignore_preemption() -> None:
    # Slurm may signal every process of the job step (depending on its proctrack plugin and on why the job
    # ends); the training must keep going until the submitit process stops it and requeues the job.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def run_task(task: Task, threads: int, under_slurm: bool = False,
             started: Optional[Callable[[subprocess.Popen], None]] = None) -> int:
    """Run one task to its end; returns its exit code."""
    task.log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "longtail", "--threads", str(threads), *task.argv]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with task.log.open("a", encoding="utf-8") as log:
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        log.write(f"# {stamp} longtail sweep, {threads} thread{'s' if threads != 1 else ''}: {shlex.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                                preexec_fn=_ignore_preemption if under_slurm else None)
        if started is not None:
            started(proc)
        code = proc.wait()
        if code != 0:
            log.write(f"# exit code {code}\n")
    if code == 0 and task.marker is not None:
        task.marker.write_text(task.marker_text + "\n", encoding="utf-8")
    return code


def run_local(tasks: list[Task], jobs: int, say: Callable[[str], None], options: dict[str, Any]) -> list[Outcome]:
    """Up to `jobs` tasks at once, each with an equal share of this machine's cores."""
    if not tasks:
        return []
    at_once = max(1, min(jobs, len(tasks)))
    threads = thread_share(available_cores(), at_once)
    say(f"running {len(tasks)} on this machine, {at_once} at a time, {threads} thread{'s' if threads != 1 else ''} each")
    outcomes = []
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        futures = {pool.submit(run_task, t, threads): t for t in tasks}
        try:
            for future in as_completed(futures):
                task = futures[future]
                code = future.result()
                outcomes.append(Outcome(task, code == 0, "" if code == 0 else f"exit code {code}"))
                say(f"[{len(outcomes)}/{len(tasks)}] {'finished' if code == 0 else 'FAILED'} {task.name}"
                    + ("" if code == 0 else f" (exit code {code}; log {task.log})"))
        except KeyboardInterrupt:  # the trainings got the same Ctrl-C and stop at once: run nothing new
            for future in futures:
                future.cancel()
            raise
    return outcomes


class SlurmTask:
    """submitit's checkpointable callable for one task. On preemption or time-out Slurm signals the job,
    submitit calls `checkpoint`, which stops the training (it is safe to kill anywhere) and hands submitit
    a fresh copy to requeue; that copy runs the same `train ... --resume`, so it continues from last.pt."""

    def __init__(self, task: Task, threads: int) -> None:
        self.task = task
        self.threads = threads
        self._proc: Optional[subprocess.Popen] = None

    def __getstate__(self) -> dict:
        return {"task": self.task, "threads": self.threads, "_proc": None}

    def __call__(self) -> str:
        code = run_task(self.task, self.threads, under_slurm=True, started=lambda p: setattr(self, "_proc", p))
        if code != 0:
            raise RuntimeError(f"{self.task.name} failed with exit code {code}; see {self.task.log}")
        return str(self.task.log)

    def checkpoint(self) -> Any:
        import submitit

        if self._proc is not None:
            _kill_and_reap(self._proc.pid)
        return submitit.helpers.DelayedSubmission(SlurmTask(self.task, self.threads))


def _kill_and_reap(pid: int, timeout_s: float = 60.0) -> None:
    """SIGKILL a child and wait until it is gone. This runs in a signal handler that interrupted
    Popen.wait, which holds the Popen's lock: reap with os.waitpid, not through the Popen."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:  # already reaped
            return
        time.sleep(0.05)


def slurm_minutes(value: Any) -> int:
    """A time limit as minutes: 90, "90", "1:30:00" (h:m:s) or "2-00:00:00" (days-h:m:s)."""
    text = str(value).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if isinstance(value, bool) or not match:
        raise LongtailError(f"slurm time '{one_line(text, 40)}' is not a time limit; write minutes (e.g. 600) or H:MM:SS (e.g. 10:00:00)")
    days, first, second, third = match.groups()
    if days is None and second is None:
        minutes = int(first)
    else:
        parts = [int(first), int(second or 0), int(third or 0)]  # with days: h[:m[:s]]; without: h:m[:s]
        minutes = int(days or 0) * 1440 + parts[0] * 60 + parts[1] + (1 if parts[2] else 0)
    if minutes < 1:
        raise LongtailError(f"slurm time '{text}' must be at least one minute")
    return minutes


def slurm_parameters(options: dict[str, Any], jobs: Optional[int]) -> tuple[dict[str, Any], int]:
    """submitit SlurmExecutor parameters from partition / time / gpus / cpus / mem; and the threads per job."""
    params: dict[str, Any] = {"job_name": "longtail"}
    if options.get("partition") is not None:
        params["partition"] = str(options["partition"])
    if options.get("time") is not None:
        params["time"] = slurm_minutes(options["time"])
    for key, least in (("gpus", 0), ("cpus", 1)):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise LongtailError(f"slurm {key} must be a whole number of at least {least}, got {one_line(repr(value), 40)}")
    if options.get("gpus"):
        params["gpus_per_node"] = options["gpus"]
    cpus = options.get("cpus") or 1
    params["cpus_per_task"] = cpus
    if options.get("mem") is not None:
        mem = str(options["mem"]).strip()
        if not re.fullmatch(r"\d+[KMGT]?B?", mem, flags=re.IGNORECASE):
            raise LongtailError(f"slurm mem '{one_line(mem, 40)}' is not a memory size; write e.g. 32G or 16000M")
        params["mem"] = mem.upper().rstrip("B") if mem[-1].isalpha() else f"{mem}G"
    if jobs:
        params["array_parallelism"] = jobs
    return params, cpus


def _queued_ids() -> Optional[set[str]]:
    """Job ids still in Slurm's queue (pending, running, requeued), array tasks one by one; None if squeue fails."""
    try:
        out = subprocess.run(["squeue", "--me", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return set(out.stdout.split()) if out.returncode == 0 else None


def run_slurm(tasks: list[Task], jobs: Optional[int], say: Callable[[str], None], options: dict[str, Any],
              folder: Path, poll_s: float = 2.0, queue_check_s: float = 20.0) -> list[Outcome]:
    """One job array (one task per run), then wait for every job to end."""
    if not tasks:
        return []
    try:
        import submitit
    except ImportError:
        raise LongtailError("--executor slurm needs submitit: pip install 'longtail[slurm]'") from None
    if shutil.which("sbatch") is None:
        raise LongtailError("--executor slurm needs Slurm's sbatch on PATH; run it on a cluster's login node, or use --executor local")
    params, threads = slurm_parameters(options, jobs)
    executor = submitit.SlurmExecutor(folder=folder / "%j")
    executor.update_parameters(**params)
    try:
        jobs_list = executor.submit_array([SlurmTask(task, threads) for task in tasks])
    except Exception as exc:  # sbatch's refusal (unknown partition, limits) as one line
        detail = getattr(exc, "stderr", None) or getattr(exc, "output", None) or exc
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise LongtailError(f"Slurm did not accept the jobs ({one_line(detail)}); check partition, time, gpus, cpus and mem") from None
    say(f"submitted {len(tasks)} job{'s' if len(tasks) != 1 else ''} to Slurm ({jobs_list[0].job_id.split('_')[0]}); "
        f"submitit files in {folder}; waiting for them to end (Ctrl-C stops waiting, not the jobs)")
    waiting = dict(zip(jobs_list, tasks))
    outcomes: list[Outcome] = []
    missing: dict[Any, int] = {}
    last_check = time.monotonic()
    while waiting:
        for job in list(waiting):
            if job.done():
                task = waiting.pop(job)
                try:
                    job.result()
                    outcomes.append(Outcome(task, True))
                except Exception as exc:  # the training failed: its log says why
                    outcomes.append(Outcome(task, False, one_line(str(exc).strip().splitlines()[-1] if str(exc).strip() else exc)))
                ok = outcomes[-1].ok
                say(f"[{len(outcomes)}/{len(tasks)}] {'finished' if ok else 'FAILED'} {task.name} (job {job.job_id})"
                    + ("" if ok else f" (log {task.log})"))
        if waiting and time.monotonic() - last_check > queue_check_s:
            last_check = time.monotonic()
            queued = _queued_ids()
            for job in list(waiting) if queued is not None else []:
                missing[job] = 0 if job.job_id in queued else missing.get(job, 0) + 1
                if missing[job] >= 2 and not job.done():  # gone twice in a row and never wrote a result
                    task = waiting.pop(job)
                    outcomes.append(Outcome(task, False, "the job left the queue without a result (cancelled or killed)"))
                    say(f"[{len(outcomes)}/{len(tasks)}] LOST {task.name} (job {job.job_id} cancelled or killed; log {task.log})")
        if waiting:
            time.sleep(poll_s)
    return outcomes


EXECUTORS: dict[str, Callable[..., list[Outcome]]] = {"local": run_local, "slurm": run_slurm}
