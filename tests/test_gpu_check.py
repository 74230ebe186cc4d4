"""benchmarks/gpu_check.sh in its CPU mode: one call runs every step (in one Python process, gpu_check_tiny.py) and
writes every result file; a failing step, or a Python that fails, is recorded and the script still ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO, SRC, needs_fmnist

RESULTS = ["machine.txt", "throughput.md", "image_pipeline.md", "cifar100_lt_resnet32.json", "fmnist_sweep.yaml",
           "fmnist_report/results.md"]
STEPS = ["machine", "throughput", "image_pipeline", "cifar100_lt_resnet32", "fmnist_sweep", "fmnist_report"]


@needs_fmnist
def test_gpu_check_tiny_on_the_cpu_writes_every_result(tmp_path):
    """Over 30 s (six steps of tiny work, one Python process): the only run of the benchmarks gpu_check.sh calls
    (throughput, image pipeline, CIFAR epochs, the sweep and report of the method table) and of its steps' wiring."""
    out = tmp_path / "check"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SRC)}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--out", str(out),
                           "--python", sys.executable], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()[1:]]
    assert [row[0] for row in rows] == STEPS
    assert all(row[1] == "ok" for row in rows), rows
    missing = [name for name in RESULTS if not (out / name).is_file()]
    assert not missing, missing
    record = json.loads((out / "cifar100_lt_resnet32.json").read_text())
    assert isinstance(record["estimated_200_epochs_s"], float)  # tiny runs differ by noise: any sign
    assert "pipeline_vs_decode=" in (out / "image_pipeline.md").read_text()
    assert (out / "image_pipeline.log").read_text().rstrip().splitlines()[-1].startswith("pipeline_vs_decode=")


def test_a_failing_step_is_recorded_and_the_next_one_runs(tmp_path):
    """A Python that fails every command: each step is recorded as failed with its exit code, and the script ends."""
    fake = tmp_path / "broken_python"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--out", str(out),
                           "--python", str(fake)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()[1:]]
    assert [row[0] for row in rows] == STEPS
    assert all(row[1] == "failed rc=3" for row in rows), rows
    assert (out / "fmnist_sweep.yaml").is_file()


def test_unknown_options_are_refused_in_one_line(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--devcie", "cpu"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "unknown option '--devcie'" in proc.stderr
