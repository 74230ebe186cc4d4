"""Where a sweep's commands run: on this machine (`local`, subprocesses) or on a Slurm cluster (`slurm`,
through submitit). Each runs a list of Tasks and says which succeeded; neither stops at a failure."""

from __future__ import annotations

import contextlib
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
from . import slurm_query


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
             started: Optional[Callable[[subprocess.Popen], None]] = None, rank: int = 0) -> int:
    """Run one task to its end; returns its exit code. Rank > 0 (another process of a multi-process Slurm job)
    writes nothing into the run: its output goes to its own submitit log (<job>_<rank>_log.out)."""
    command = [sys.executable, "-m", "longtail", "--threads", str(threads), *task.argv]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if rank == 0:
        task.log.parent.mkdir(parents=True, exist_ok=True)
    else:
        sys.stdout.flush()
    with task.log.open("a", encoding="utf-8") if rank == 0 else contextlib.nullcontext(sys.stdout) as log:
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
    if code == 0 and rank == 0 and task.marker is not None:
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


def _join_job_processes() -> int:
    """In a job of several Slurm tasks (--nodes, --gpus, --tasks-per-node), export torch.distributed's env://
    variables (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE) from submitit's view of
    the job, as torchrun would, so the training's process group spans every task; returns this task's rank.
    Each task sees all of its node's GPUs and takes cuda:LOCAL_RANK, as under torchrun."""
    import submitit

    if submitit.JobEnvironment().num_tasks == 1:
        return 0
    return submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True).rank


class SlurmTask:
    """submitit's checkpointable callable for one task. On preemption or time-out Slurm signals the job,
    submitit calls `checkpoint`, which stops the training (it is safe to kill anywhere) and hands submitit
    a fresh copy to requeue; that copy runs the same `train ... --resume`, so it continues from last.pt.
    In a job of several tasks every task runs this (one training process each, joined by torch.distributed);
    rank 0 speaks for the job: submitit checkpoints and requeues there only, and the sweep reads its result."""

    def __init__(self, task: Task, threads: int) -> None:
        self.task = task
        self.threads = threads
        self._proc: Optional[subprocess.Popen] = None

    def __getstate__(self) -> dict:
        return {"task": self.task, "threads": self.threads, "_proc": None}

    def __call__(self) -> str:
        rank = _join_job_processes()
        code = run_task(self.task, self.threads, under_slurm=True, started=lambda p: setattr(self, "_proc", p), rank=rank)
        if rank != 0:  # a failure here fails rank 0 too (a collective errors or times out), which reports it
            return f"rank {rank}: exit code {code}"
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
    """submitit SlurmExecutor parameters from partition / time / nodes / gpus / tasks_per_node / cpus / mem;
    and the threads per training process. --gpus G runs G processes per node (one per GPU), --tasks-per-node P
    runs P on a CPU partition; with --nodes M the job's training is one DDP run over M x (G or P) processes."""
    params: dict[str, Any] = {"job_name": "longtail"}
    if options.get("partition") is not None:
        params["partition"] = str(options["partition"])
    if options.get("time") is not None:
        params["time"] = slurm_minutes(options["time"])
    for key, least in (("gpus", 0), ("cpus", 1), ("nodes", 1), ("tasks_per_node", 1)):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise LongtailError(f"slurm {key} must be a whole number of at least {least}, got {one_line(repr(value), 40)}")
    gpus, tasks = options.get("gpus") or 0, options.get("tasks_per_node")
    if gpus and tasks is not None and tasks != gpus:
        raise LongtailError(f"slurm tasks_per_node {tasks} with gpus {gpus}: a GPU job runs one process per GPU; "
                            f"leave tasks_per_node out (or make it {gpus})")
    params["nodes"] = options.get("nodes") or 1
    params["ntasks_per_node"] = gpus or tasks or 1
    if params["nodes"] * params["ntasks_per_node"] > 1:
        # rank 0 exits with an error once its training failed (a dead or hung peer: collective timeout); srun then
        # ends the other tasks rather than leave a hung one holding the nodes until the time limit
        params["srun_args"] = ["--kill-on-bad-exit=1"]
    if gpus:
        params["gpus_per_node"] = gpus
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


def single_process(options: dict[str, Any]) -> dict[str, Any]:
    """The job shape for post-hoc steps: one process on one node (with one GPU if the trainings have GPUs)."""
    return {**options, "nodes": None, "tasks_per_node": None, "gpus": min(options.get("gpus") or 0, 1) or None}


def _shape(params: dict[str, Any]) -> str:
    """A job's shape in words, e.g. "2 nodes x 8 processes (1 GPU, 8 CPUs each)"."""
    nodes, tasks = params["nodes"], params["ntasks_per_node"]
    each = f"{params['cpus_per_task']} CPU{'s' if params['cpus_per_task'] != 1 else ''}"
    if params.get("gpus_per_node"):
        each = f"1 GPU, {each}"
    return f"{nodes} node{'s' if nodes != 1 else ''} x {tasks} process{'es' if tasks != 1 else ''} ({each} each)"


def _check_fits(params: dict[str, Any]) -> None:
    """Refuse, in one line built from Slurm's own answer, a job the partition can never run (too many nodes,
    tasks, CPUs or GPUs): Slurm would accept it and leave it pending forever (PartitionNodeLimit, PartitionConfig)."""
    flags = {"partition": "--partition", "time": "--time", "nodes": "--nodes", "ntasks_per_node": "--ntasks-per-node",
             "cpus_per_task": "--cpus-per-task", "gpus_per_node": "--gpus-per-node", "mem": "--mem"}
    answer = slurm_query.test_only([f"{flag}={params[key]}" for key, flag in flags.items() if params.get(key) is not None])
    if answer is None:
        return
    offers = slurm_query.partition_summary(params.get("partition"))
    raise LongtailError(f"Slurm cannot run a job of {_shape(params)}: {one_line(answer, 160)}"
                        + (f"; {offers}" if offers else "") + "; ask for fewer nodes, GPUs, tasks or CPUs, or another partition")


def check_slurm(options: dict[str, Any], jobs: Optional[int]) -> tuple[dict[str, Any], int]:
    """What run_slurm checks before it submits (submitit installed, sbatch on PATH, the options valid, a job of this
    shape runnable on the partition); returns slurm_parameters'. A dry run checks the same, submitting nothing."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise LongtailError("--executor slurm needs submitit: pip install 'longtail[slurm]'") from None
    if shutil.which("sbatch") is None:
        raise LongtailError("--executor slurm needs Slurm's sbatch on PATH; run it on a cluster's login node, or use --executor local")
    params, threads = slurm_parameters(options, jobs)
    _check_fits(params)
    return params, threads


RESUBMISSIONS = 1  # per run and sweep: how often a requeued job that Slurm then killed is submitted again


def _result(job: Any) -> Optional[tuple[bool, str]]:
    """(ok, reason) once rank 0 of the job wrote its result file, else None. Read from the file, not from
    submitit's job.done(), which asks sacct: without accounting that fails (and warns) on every poll."""
    lead = job.task(0)
    if not lead.paths.result_pickle.exists():
        return None
    try:
        lead.result()
        return True, ""
    except Exception as exc:  # the training failed: its log says why
        # submitit's text is the job's traceback, then the paths of its logs: keep the exception's own line
        lines = str(exc).strip().splitlines()
        raised = [line for line in lines if re.match(r"[A-Za-z_][\w.]*(Error|Exception): ", line)]
        return False, one_line(raised[-1] if raised else lines[-1] if lines else repr(exc))


def run_slurm(tasks: list[Task], jobs: Optional[int], say: Callable[[str], None], options: dict[str, Any],
              folder: Path, poll_s: float = 2.0, queue_check_s: float = 20.0) -> list[Outcome]:
    """One job array (one task per run), then wait for every job to end. A requeued job is watched until it
    ends; a job counts as failed when it wrote a failure, or when Slurm reports it ended (or forgot it) without
    a result, with Slurm's state as the reason. A job that had been requeued and then died at Slurm's hands
    (FAILED, NODE_FAIL, BOOT_FAIL without a result) is submitted again, RESUBMISSIONS times: it resumes."""
    if not tasks:
        return []
    import submitit

    params, threads = check_slurm(options, jobs)
    executor = submitit.SlurmExecutor(folder=folder / "%j")
    executor.update_parameters(**params)
    try:
        jobs_list = executor.submit_array([SlurmTask(task, threads) for task in tasks])
    except Exception as exc:  # sbatch's refusal (unknown partition, limits) as one line
        detail = getattr(exc, "stderr", None) or getattr(exc, "output", None) or exc
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise LongtailError(f"Slurm did not accept the jobs ({one_line(detail)}); check partition, time, gpus, cpus and mem") from None
    say(f"submitted {len(tasks)} job{'s' if len(tasks) != 1 else ''} to Slurm ({jobs_list[0].job_id.split('_')[0]}), "
        f"each {_shape(params)}; submitit files in {folder}; waiting for them to end (Ctrl-C stops waiting, not the jobs)")
    waiting = dict(zip(jobs_list, tasks))
    outcomes: list[Outcome] = []
    resubmitted: dict[Task, int] = {}
    watch = slurm_query.Watch()
    last_check = time.monotonic()

    def finish(job: Any, ok: bool, reason: str, word: str) -> None:
        task = waiting.pop(job)
        outcomes.append(Outcome(task, ok, reason))
        say(f"[{len(outcomes)}/{len(tasks)}] {word} {task.name} (job {job.job_id}" + (")" if ok else f"; {reason}; log {task.log})"))

    while waiting:
        for job in list(waiting):
            result = _result(job)
            if result is not None:
                finish(job, *result, "finished" if result[0] else "FAILED")
        if waiting and time.monotonic() - last_check > queue_check_s:
            last_check = time.monotonic()
            ids = {job.job_id: job for job in waiting}
            for job_id, state in watch.gone(ids, slurm_query.job_states(ids)).items():
                job = ids[job_id]
                if _result(job) is not None:
                    continue  # written since the last look: read in the next round
                task = waiting[job]
                said = f"Slurm ended job {job_id} as {state.describe()}" if state else f"Slurm no longer knows job {job_id}"
                requeues = slurm_query.restarts(job_id) if state is not None and state.state in slurm_query.LAUNCH_FAILURES else 0
                if requeues and resubmitted.get(task, 0) < RESUBMISSIONS:
                    resubmitted[task] = resubmitted.get(task, 0) + 1
                    again = executor.submit(SlurmTask(task, threads))
                    del waiting[job]
                    waiting[again] = task
                    watch.forget(job_id)
                    say(f"resubmitted {task.name} as job {again.job_id}: {said} without a result after "
                        f"{requeues} requeue{'s' if requeues != 1 else ''}; it resumes from its last.pt")
                else:
                    finish(job, False, f"{said} without a result", "LOST")
        if waiting:
            time.sleep(poll_s)
    return outcomes


EXECUTORS: dict[str, Callable[..., list[Outcome]]] = {"local": run_local, "slurm": run_slurm}
