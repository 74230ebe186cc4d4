"""`longtail sweep --executor slurm` on a real single-node Slurm cluster started for these tests (munged,
slurmctld, slurmd; see slurm_cluster.py): a small sweep with a failing run and a post-hoc step, and a job
preempted mid-training that Slurm requeues and that resumes to the metrics of the uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import slurm_cluster
from conftest import SRC, cli_env, make_small_fmnist
from test_sweep import tiny_sweep, write_sweep

_missing = slurm_cluster.missing_binaries()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_missing), reason=f"Slurm is not installed ({', '.join(_missing)} missing): apt-get install slurm-wlm munge"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the test cluster's slurmd runs jobs as root, so these tests must run as root"),
]
pytest.importorskip("submitit", reason="submitit is in the 'slurm' extra: pip install longtail[slurm]")
TIMING_KEYS = {"images_per_s", "epoch_time_s"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLURM_CONF", str(started.conf))  # for sbatch/squeue/scontrol here and in the jobs
            patch.setenv("PYTHONPATH", os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
            yield started
    finally:
        slurm_cluster.stop(started)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return make_small_fmnist(tmp_path_factory.mktemp("fmnist_slurm"))


@pytest.fixture(scope="module")
def swept(cluster, small_root, tmp_path_factory):
    """A sweep run to its end through Slurm: 2 CE runs, 2 failing runs, 2 post-hoc steps."""
    folder = tmp_path_factory.mktemp("slurm_sweep")
    path = tiny_sweep(folder, small_root, epochs=2)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "longtail", "sweep", str(path), "--executor", "slurm", "--jobs", "2"],
                          env=cli_env(), capture_output=True, text=True, timeout=900)
    print(f"slurm sweep: {time.monotonic() - start:.0f} s")
    return folder, proc


def test_a_sweep_through_slurm_runs_reports_and_survives_a_failing_run(swept, cli):
    folder, proc = swept
    assert proc.returncode == 1, proc.stdout + proc.stderr  # two runs failed
    assert "submitted 4 jobs to Slurm" in proc.stdout and "submitted 2 jobs to Slurm" in proc.stdout
    summary = proc.stdout.strip().splitlines()[-1]
    broken = sorted(str(folder / "runs" / "broken" / f"seed={s}" / "train.log") for s in (0, 1))
    assert summary.startswith("sweep: 6 ran, 0 skipped, 2 failed: ") and sorted(summary.split(": ", 2)[2].split(", ")) == broken
    for log in broken:
        assert "/nonexistent/weights.pt" in Path(log).read_text()
    for seed in (0, 1):
        run = folder / "runs" / "ce" / f"seed={seed}"
        assert len((run / "epochs.jsonl").read_text().splitlines()) == 2 and (run / "metrics.json").is_file()
        assert json.loads((run / "eval_la.json").read_text())["posthoc"]["name"] == "la"
        assert "--threads 1 train" in (run / "train.log").read_text()  # one CPU per job (the default): one thread
    cli("report", str(folder / "runs"), "--out", str(folder / "report"))
    table = (folder / "report" / "results.md").read_text().split("Many / medium / few")[0]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| CE")}
    assert set(rows) == {"CE", "CE + post-hoc LA (τ=1)"} and all("(2 seeds)" in r for r in rows.values())
    again = subprocess.run([sys.executable, "-m", "longtail", "sweep", str(folder / "sweep.yaml"), "--dry-run"],
                           env=cli_env(), capture_output=True, text=True, timeout=120)
    assert again.stdout.strip().splitlines()[-1] == "trainings: 2 done, 2 to do; post-hoc steps: 2 done"


def _squeue(*args: str) -> str:
    return subprocess.run(["squeue", "--me", "-h", *args], capture_output=True, text=True, timeout=60).stdout.strip()


def _wait(condition, what: str, timeout_s: float = 300.0, every_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_preempted_job_is_requeued_and_resumes_to_the_uninterrupted_metrics(swept, small_root):
    folder, _ = swept
    reference = folder / "runs" / "ce" / "seed=0"
    body = yaml.safe_load((folder / "sweep.yaml").read_text())  # the same runs: ce/seed=0 is the reference
    body.update({"out": "preempted", "axes": {"seed": [0]}, "variants": [{"name": "ce"}]})
    path = write_sweep(folder, body, "preempted.yaml")
    run = folder / "preempted" / "ce" / "seed=0"
    sweep = subprocess.Popen([sys.executable, "-m", "longtail", "sweep", str(path), "--executor", "slurm"],
                             env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # preempt it as Slurm does, once the first of its two epochs is saved: SIGTERM, then submitit's USR2
        _wait(lambda: (run / "epochs.jsonl").is_file() and (run / "epochs.jsonl").read_text().strip(), "epoch 1", 600)
        job = _squeue("-o", "%i")
        assert job and not (run / "metrics.json").exists(), "the run finished before it could be preempted"
        for name in ("TERM", "USR2"):
            subprocess.run(["scancel", f"--signal={name}", job], check=True, timeout=60)
        # a requeued job waits about two minutes (its BeginTime) before Slurm starts it again: start it now
        _wait(lambda: "BeginTime" in _squeue("-j", job, "-o", "%r"), "the requeued job", 120, 0.2)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=60)
        out, _ = sweep.communicate(timeout=600)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, out
    assert out.strip().splitlines()[-1] == "sweep: 1 ran, 0 skipped, 0 failed"
    log = (run / "train.log").read_text()
    assert log.count("longtail sweep, ") == 2 and "resuming" in log and "after epoch 1" in log, log
    submitit_logs = "".join(p.read_text() for p in (folder / "preempted" / ".submitit").rglob("*_log.*"))
    assert "Requeued job" in submitit_logs

    def metrics(folder: Path) -> dict:
        values = json.loads((folder / "metrics.json").read_text())
        values.pop("checkpoint", None)  # a path inside the run directory
        values.pop("launches", None)  # how the epochs were split over launches: compared below
        return values

    def epochs(folder: Path) -> list[dict]:
        rows = [json.loads(line) for line in (folder / "epochs.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]

    assert metrics(run) == metrics(reference)
    assert epochs(run) == epochs(reference)
    launches = json.loads((run / "metrics.json").read_text())["launches"]
    assert launches == [{"start_epoch": 0, "epochs": 1}, {"start_epoch": 1, "epochs": 1}]  # resumed, not restarted
