"""How the Slurm executor reads the scheduler, without a cluster: squeue / sacct / sbatch / sinfo / scontrol are
small scripts on PATH that print what the real ones print (formats checked against slurm-wlm 22.05). A requeued
job is never taken for a lost one, with or without an accounting database; a job Slurm ended is reported with
Slurm's state; a job shape the partition cannot hold is refused in one line; a multi-process request with the
local executor is refused with the reason."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

import pytest
import torch

from longtail import distributed
from longtail.cli import main
from longtail.config import load_config
from longtail.errors import LongtailError
from longtail.sweep import slurm_query
from longtail.sweep.executors import _check_fits, single_process, slurm_parameters
from longtail.sweep.slurm_query import JobState, Watch
from conftest import CE, write_sweep


def fake_commands(folder: Path, monkeypatch: pytest.MonkeyPatch, **scripts: str) -> None:
    """Put `name` scripts (bash bodies) first on PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in scripts.items():
        path = folder / name
        path.write_text("#!/bin/bash\n" + body + "\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


# what `squeue --me -h -r -t all -o %i|%T|%r` showed around a submitit requeue on the test cluster (probe of
# 2026-12-02): never absent, RUNNING -> COMPLETING -> PENDING (BeginTime) -> RUNNING -> COMPLETED
REQUEUE = [JobState("RUNNING"), JobState("COMPLETING"), JobState("PENDING", "BeginTime"), JobState("PENDING"),
           JobState("RUNNING"), JobState("REQUEUED"), JobState("REQUEUE_HOLD", "JobHeldAdmin"), JobState("RUNNING")]


def test_a_requeued_job_is_watched_not_lost():
    watch = Watch()
    for state in REQUEUE:
        assert watch.gone(["7"], {"7": state}) == {}
    assert watch.gone(["7"], None) == {}  # squeue failed: no conclusion


def test_a_job_is_gone_after_two_looks_in_a_final_state_or_forgotten():
    watch = Watch()
    failed = JobState("FAILED", "NonZeroExitCode")
    assert watch.gone(["7", "8"], {"7": failed}) == {}  # first look: the result file may still be on its way
    assert watch.gone(["7", "8"], {"7": failed}) == {"7": failed, "8": None}  # 8: unknown to squeue and sacct
    watch = Watch()
    assert watch.gone(["9"], {"9": JobState("COMPLETED")}) == {}
    assert watch.gone(["9"], {"9": JobState("PENDING", "BeginTime")}) == {}  # requeued in between: starts over
    assert watch.gone(["9"], {"9": JobState("CANCELLED")}) == {}
    assert failed.describe() == "FAILED (NonZeroExitCode)" and JobState("CANCELLED", "None").describe() == "CANCELLED"


SQUEUE = 'printf "7|PENDING|BeginTime\\n12_3|RUNNING|None\\n12_4|FAILED|NonZeroExitCode\\n99|RUNNING|None\\n"'


def test_states_without_accounting(tmp_path, monkeypatch):
    fake_commands(tmp_path / "bin", monkeypatch, squeue=SQUEUE,
                  sacct='echo "Slurm accounting storage is disabled" >&2; exit 1')
    states = slurm_query.job_states(["7", "12_3", "12_4", "12_5"])
    assert states == {"7": JobState("PENDING", "BeginTime"), "12_3": JobState("RUNNING", "None"),
                      "12_4": JobState("FAILED", "NonZeroExitCode")}  # 12_5 forgotten, no database to ask


def test_states_with_accounting_for_jobs_the_controller_forgot(tmp_path, monkeypatch):
    log = tmp_path / "sacct.args"
    fake_commands(tmp_path / "bin", monkeypatch, squeue=SQUEUE,
                  sacct=f'echo "$@" > {log}; printf "12_5|CANCELLED by 0\\n12_6|COMPLETED\\n30|REQUEUED\\n"')
    states = slurm_query.job_states(["7", "12_5", "30"])
    assert states["7"] == JobState("PENDING", "BeginTime")
    assert states["12_5"] == JobState("CANCELLED") and states["30"] == JobState("REQUEUED") and not states["30"].final
    assert log.read_text().split() == ["-X", "-n", "-P", "-o", "JobID,State", "-j", "12", "-j", "30"]  # only the forgotten ones


def test_squeue_failing_means_no_evidence(tmp_path, monkeypatch):
    fake_commands(tmp_path / "bin", monkeypatch, squeue='echo "slurm_load_jobs error: Socket timed out" >&2; exit 1')
    assert slurm_query.job_states(["7"]) is None


def test_restarts_from_scontrol(tmp_path, monkeypatch):
    fake_commands(tmp_path / "bin", monkeypatch,
                  scontrol='[ "$4" = 7 ] && echo "JobId=7 JobName=longtail JobState=FAILED Reason=NonZeroExitCode Restarts=1 BatchFlag=1" || exit 1')
    assert slurm_query.restarts("7") == 1 and slurm_query.restarts("8") == 0


def test_job_shapes():
    params, threads = slurm_parameters({"nodes": 2, "gpus": 8, "cpus": 10}, None)
    assert (params["nodes"], params["ntasks_per_node"], params["gpus_per_node"], params["cpus_per_task"], threads) == (2, 8, 8, 10, 10)
    params, _ = slurm_parameters({"tasks_per_node": 2}, None)
    assert (params["nodes"], params["ntasks_per_node"], "gpus_per_node" in params) == (1, 2, False)
    assert slurm_parameters({"gpus": 4, "tasks_per_node": 4}, None)[0]["ntasks_per_node"] == 4
    with pytest.raises(LongtailError, match="one process per GPU; leave tasks_per_node out"):
        slurm_parameters({"gpus": 8, "tasks_per_node": 2}, None)
    for key in ("nodes", "tasks_per_node"):
        with pytest.raises(LongtailError, match=f"slurm {key} must be a whole number of at least 1"):
            slurm_parameters({key: 0}, None)
    step = slurm_parameters(single_process({"nodes": 2, "gpus": 8, "tasks_per_node": 8, "cpus": 10}), None)[0]
    assert (step["nodes"], step["ntasks_per_node"], step["gpus_per_node"]) == (1, 1, 1)
    assert "gpus_per_node" not in slurm_parameters(single_process({"tasks_per_node": 2}), None)[0]


def test_a_shape_the_partition_cannot_hold_is_refused_in_one_line(tmp_path, monkeypatch):
    # sbatch --test-only and sinfo as slurm-wlm 22.05 answered on the test cluster (1 node, 2 CPUs, no GPUs)
    fake_commands(tmp_path / "bin", monkeypatch,
                  sbatch='echo "allocation failure: Requested node configuration is not available" >&2; exit 1',
                  sinfo='echo "test*|1|2|(null)"')
    params, _ = slurm_parameters({"nodes": 2, "tasks_per_node": 2}, None)
    with pytest.raises(LongtailError) as error:
        _check_fits(params)
    message = str(error.value)
    assert "\n" not in message
    assert message == ("Slurm cannot run a job of 2 nodes x 2 processes (1 CPU each): allocation failure: Requested node "
                       "configuration is not available; partition 'test': 1 node, 2 CPUs and no GPUs per node; "
                       "ask for fewer nodes, GPUs, tasks or CPUs, or another partition")
    fake_commands(tmp_path / "bin", monkeypatch, sbatch='echo "sbatch: Job 3 to start at 2026-12-02T02:00:00" >&2')
    _check_fits(params)  # fits: nothing to say


def test_partition_summary_counts_gpus(tmp_path, monkeypatch):
    fake_commands(tmp_path / "bin", monkeypatch, sinfo='echo "gpu|4|64|gpu:a100:8(S:0-1)"; echo "gpu|2|64|gpu:a100:8(S:0-1)"')
    assert slurm_query.partition_summary("gpu") == "partition 'gpu': 6 nodes, 64 CPUs and 8 GPUs per node"


@pytest.mark.parametrize("flags", [["--nodes", "2"], ["--tasks-per-node", "2"]])
def test_several_processes_need_slurm(tmp_path, capsys, flags):
    path = write_sweep(tmp_path, {"base": CE, "out": "r"})
    assert main(["sweep", str(path), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{' '.join(flags)} needs --executor slurm: the local executor runs each training as one process" in err


def test_collective_timeout(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.collective_timeout().total_seconds() == 600
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "45")
    assert distributed.collective_timeout().total_seconds() == 45
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(LongtailError, match="LONGTAIL_COLLECTIVE_TIMEOUT_S='.*' is not a number of seconds above 0"):
            distributed.collective_timeout()


def test_a_failed_collective_reads_as_a_dead_or_silent_peer(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "30")

    def raised_in(filename: str, error: BaseException) -> BaseException:
        """`error` as raised by code in `filename` (gloo's errors are plain RuntimeErrors: only their origin tells)."""
        space = {"error": error}
        try:
            exec(compile("raise error", filename, "exec"), space)
        except BaseException as exc:  # noqa: BLE001 - returned to the caller
            return exc
        raise AssertionError("not raised")

    c10d = "/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py"
    gloo = raised_in(c10d, RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
                                        "[127.0.0.1]:14006: Connection reset by peer.\nmore"))
    ddp = raised_in("/venv/lib/python3.11/site-packages/torch/nn/parallel/distributed.py",
                    RuntimeError("Application timeout caused pair closure"))  # the hang test's error, from DDP's forward
    # launched as rank 1 of 2 (torchrun's or the Slurm task's environment); the group may already be torn down
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    line = distributed.peer_failure(gloo)
    assert line is not None and "\n" not in line
    assert line.startswith("process 1 of 2: a collective failed, so another process of this run died or did not "
                           "answer within 30 s (LONGTAIL_COLLECTIVE_TIMEOUT_S): [/pytorch/third_party/gloo")
    assert distributed.peer_failure(ddp).endswith("(LONGTAIL_COLLECTIVE_TIMEOUT_S): Application timeout caused pair "
                                                  "closure; see the other processes' logs, then resume with --resume")
    assert distributed.peer_failure(raised_in("/src/longtail/engine.py", RuntimeError("CUDA out of memory"))) is None
    assert distributed.peer_failure(raised_in(c10d, ValueError("x"))) is None
    assert distributed.peer_failure(torch.distributed.DistBackendError("NCCL watchdog")) is not None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.peer_failure(gloo) is None  # alone: not a peer's failure


@pytest.mark.parametrize("nodes", [1, 2])
def test_the_imagenet_lt_examples_are_one_run_over_8_gpus_per_node(nodes):
    from conftest import REPO
    from longtail.sweep import load_sweep

    sweep = load_sweep(REPO / "benchmarks" / "slurm" / f"imagenet_lt_ce_resnet50_{nodes}x8.yaml")
    assert [run.name for run in sweep.trainings] == ["run"] and not sweep.steps  # no axes: one job
    params, threads = slurm_parameters(sweep.slurm, None)
    assert (params["nodes"], params["ntasks_per_node"], params["gpus_per_node"], threads) == (nodes, 8, 8, 10)
    assert load_config(sweep.trainings[0].config).train.batch_size % (8 * nodes) == 0  # the global batch splits evenly


class _FinishedJob:
    """What run_slurm reads of a submitit job whose rank 0 wrote its result: task(0), its result file, result()."""

    def __init__(self, result_file: Path, error: Optional[str]) -> None:
        self.paths = type("Paths", (), {"result_pickle": result_file})()
        self.error = error

    def task(self, rank: int) -> "_FinishedJob":
        return self

    def result(self) -> str:
        if self.error is not None:
            raise RuntimeError(self.error)
        return "log"


def test_a_failed_job_is_reported_with_its_exception_line(tmp_path):
    from longtail.sweep.executors import _result

    trace = ("Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent call last):\n"
             '  File "x.py", line 1, in <module>\nRuntimeError: run failed with exit code 1; see /r/train.log\n\n'
             "----------------------\nYou can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n"
             "  - /r/.submitit/14/14_0_log.err\n  - /r/.submitit/14/14_0_log.out")
    assert _result(_FinishedJob(tmp_path / "none.pkl", None)) is None  # no result file yet: still running
    (tmp_path / "result.pkl").write_bytes(b"")
    assert _result(_FinishedJob(tmp_path / "result.pkl", None)) == (True, "")
    assert _result(_FinishedJob(tmp_path / "result.pkl", trace)) == (False, "RuntimeError: run failed with exit code 1; see /r/train.log")


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused_before_submitting(tmp_path, monkeypatch):
    from longtail.sweep import load_sweep, run_sweep

    monkeypatch.setenv("PATH", str(tmp_path / "no_slurm_here"))  # nothing may reach sbatch
    sweep = load_sweep(write_sweep(tmp_path, {"base": CE, "out": "r", "overrides": ["train.batch_size=32"]}))
    with pytest.raises(LongtailError) as error:
        run_sweep(sweep, "slurm", slurm={"nodes": 3, "tasks_per_node": 2}, say=lambda line: None)
    assert str(error.value) == ("run 'run': train.batch_size 32 is the global batch and must divide evenly over 6 processes "
                                "(nodes x gpus or tasks_per_node); change the job's shape or train.batch_size")
