"""What Slurm says about the sweep's jobs and its partitions, through its query commands (squeue, scontrol,
sacct, sinfo, sbatch --test-only). Works with and without an accounting database: squeue and scontrol know
every job the controller still holds (pending, running, requeued, and finished ones for MinJobAge, 300 s by
default); sacct is asked only about jobs the controller has forgotten, and only where accounting exists."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Iterable, Optional

# Slurm's final job states: the job will not run again unless someone requeues it by hand. Every other state
# (PENDING, RUNNING, REQUEUED, REQUEUE_FED, REQUEUE_HOLD, COMPLETING, CONFIGURING, SUSPENDED, RESIZING,
# SIGNALING, STAGE_OUT, STOPPED, ...) means the job is, or will again be, in the queue.
FINAL_STATES = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                          "PREEMPTED", "REVOKED", "TIMEOUT"})
# final states in which the job died on its own (the node, its launch, its allocation), not by a user's scancel
# or its own exit: a requeued run that ends this way is worth one more submission (its last.pt is intact)
LAUNCH_FAILURES = frozenset({"BOOT_FAIL", "FAILED", "NODE_FAIL"})


@dataclass(frozen=True)
class JobState:
    state: str  # Slurm's word, e.g. RUNNING; sacct's "CANCELLED by 0" is kept as CANCELLED
    reason: str = ""  # squeue's reason (BeginTime, NonZeroExitCode, PartitionNodeLimit, ...), if any
    restarts: int = 0  # how often the job was requeued (scontrol's Restarts), when known

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def describe(self) -> str:
        reason = f" ({self.reason})" if self.reason and self.reason != "None" else ""
        return f"{self.state}{reason}"


def _run(command: list[str], timeout_s: float = 60.0) -> Optional[subprocess.CompletedProcess]:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None


def job_states(ids: Iterable[str]) -> Optional[dict[str, JobState]]:
    """The state of each of these jobs (array tasks as 12_3) that Slurm still knows; a job it has forgotten is
    absent. None when squeue itself fails (controller unreachable): nothing can be concluded then."""
    wanted = set(ids)
    if not wanted:
        return {}
    out = _run(["squeue", "--me", "-h", "-r", "-t", "all", "-o", "%i|%T|%r"])
    if out is None or out.returncode != 0:
        return None
    states: dict[str, JobState] = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0] in wanted:
            states[parts[0]] = JobState(parts[1].split()[0] if parts[1].split() else "UNKNOWN", "|".join(parts[2:]))
    forgotten = wanted - set(states)
    if forgotten:
        states.update(_accounted_states(forgotten))
    return states


def _accounted_states(ids: set[str]) -> dict[str, JobState]:
    """States from the accounting database (the newest record of each job); {} without one."""
    command = ["sacct", "-X", "-n", "-P", "-o", "JobID,State"]
    for base in sorted({i.split("_")[0] for i in ids}):
        command += ["-j", base]
    out = _run(command)
    if out is None or out.returncode != 0:  # "Slurm accounting storage is disabled", or no sacct at all
        return {}
    states = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0] in ids and parts[1].split():
            states[parts[0]] = JobState(parts[1].split()[0])
    return states


def restarts(job_id: str) -> int:
    """How often Slurm requeued the job (scontrol's Restarts=), 0 when it is not known."""
    out = _run(["scontrol", "show", "job", "-o", job_id])
    if out is None or out.returncode != 0:
        return 0
    for word in out.stdout.split():
        if word.startswith("Restarts=") and word[len("Restarts="):].isdigit():
            return int(word[len("Restarts="):])
    return 0


class Watch:
    """Decides which unfinished jobs (no result written) are gone for good. A job counts as gone only when
    Slurm reports it in a final state, or no longer knows it, on `checks` checks in a row: a requeued job is
    PENDING or REQUEUED in between, never absent, and the second look leaves a finished job time to write
    its result file."""

    def __init__(self, checks: int = 2) -> None:
        self.checks = checks
        self._strikes: dict[str, int] = {}

    def gone(self, ids: Iterable[str], states: Optional[dict[str, JobState]]) -> dict[str, Optional[JobState]]:
        """Of these job ids, those gone for good, each with its last known state (None: forgotten by Slurm)."""
        if states is None:  # squeue failed: no evidence either way
            return {}
        out: dict[str, Optional[JobState]] = {}
        for job_id in ids:
            state = states.get(job_id)
            if state is not None and not state.final:
                self._strikes[job_id] = 0
                continue
            self._strikes[job_id] = self._strikes.get(job_id, 0) + 1
            if self._strikes[job_id] >= self.checks:
                out[job_id] = state
        return out

    def forget(self, job_id: str) -> None:
        self._strikes.pop(job_id, None)


def partition_summary(partition: Optional[str]) -> str:
    """What a partition (or the default one) offers, e.g. "partition 'test': 1 node, 2 CPUs and no GPUs per
    node", from sinfo; "" when sinfo cannot say."""
    command = ["sinfo", "-h", "-o", "%P|%D|%c|%G"] + (["-p", partition] if partition else [])
    out = _run(command)
    if out is None or out.returncode != 0:
        return ""
    rows = [line.split("|") for line in out.stdout.splitlines() if line.count("|") == 3]
    if not partition:
        rows = [r for r in rows if r[0].endswith("*")] or rows[:1]
    if not rows:
        return ""
    name = rows[0][0].rstrip("*")
    nodes = sum(int(r[1]) for r in rows if r[1].isdigit())
    cpus = "/".join(sorted({r[2] for r in rows}))
    gpus = ", ".join(sorted({_gpu_text(r[3]) for r in rows}))
    return f"partition '{name}': {nodes} node{'s' if nodes != 1 else ''}, {cpus} CPUs and {gpus} per node"


def _gpu_text(gres: str) -> str:
    gpus = [g for g in gres.split(",") if g.startswith("gpu")]
    if not gpus:
        return "no GPUs"
    counts = [g.split("(")[0].rsplit(":", 1)[-1] for g in gpus]
    return " + ".join(c if c.isdigit() else g for c, g in zip(counts, gpus)) + " GPUs"


def test_only(sbatch_options: list[str]) -> Optional[str]:
    """Slurm's answer to `sbatch --test-only` with these options: None if the job could run, else Slurm's own
    message (e.g. "allocation failure: Requested node configuration is not available"). A job asking for more
    nodes, tasks or GPUs than the partition has would otherwise wait in the queue forever."""
    out = _run(["sbatch", "--test-only", *sbatch_options, "--wrap", "true"])
    if out is None or out.returncode == 0:
        return None
    lines = [line.removeprefix("sbatch: error: ").strip() for line in (out.stderr + out.stdout).splitlines() if line.strip()]
    return "; ".join(lines) or f"sbatch --test-only exited with code {out.returncode}"
