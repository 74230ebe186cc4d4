"""`longtail sweep`: sweep files (names, seeds, validation), dry-run statuses, the thread share, and the
local executor on tiny real trainings (skipped, partial, failed runs and post-hoc steps)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CE, REPO, cli_env, main_here, tiny_sweep, write_sweep
from longtail.cli import main
from longtail.config import load_config
from longtail.errors import LongtailError
from longtail.sweep import available_cores, dry_run, load_sweep, run_task, thread_share
from longtail.sweep.executors import Task, slurm_minutes, slurm_parameters

def test_run_names_seeds_and_override_order(tmp_path):
    path = write_sweep(tmp_path, {
        "base": CE, "out": "runs", "overrides": ["train.epochs=2"],
        "axes": {"dataset.imbalance_factor": [100, 10], "seed": [0, 1]},
        "variants": [{"name": "ce"}, {"name": "la", "overrides": ["loss.name=la", "train.epochs=3"]},
                     {"name": "gala", "base": "../gala.yaml"}],
    })
    (tmp_path.parent / "gala.yaml").write_text("loss:\n  name: gala\n")
    sweep = load_sweep(path)
    names = [t.name for t in sweep.trainings]
    assert names[:4] == ["ce/dataset.imbalance_factor=100/seed=0", "ce/dataset.imbalance_factor=100/seed=1",
                         "ce/dataset.imbalance_factor=10/seed=0", "ce/dataset.imbalance_factor=10/seed=1"]
    assert len(names) == 12 and len(set(names)) == 12
    assert sweep.out == tmp_path / "runs"  # relative to the sweep file, not the working directory
    la = next(t for t in sweep.trainings if t.name == "la/dataset.imbalance_factor=10/seed=1")
    cfg = load_config(la.config, la.overrides)
    # the seed axis sets both seeds; a variant's override beats the sweep's; the axis value beats both
    assert (cfg.seed, cfg.dataset.seed, cfg.train.epochs, cfg.loss.name, cfg.dataset.imbalance_factor) == (1, 1, 3, "la", 10.0)
    assert la.run_dir == tmp_path / "runs" / "la" / "dataset.imbalance_factor=10" / "seed=1"
    gala = next(t for t in sweep.trainings if t.variant == "gala")
    assert gala.config == tmp_path.parent / "gala.yaml" and load_config(gala.config, gala.overrides).loss.name == "gala"
    # names depend only on a run's own values: adding a value to an axis leaves the other runs where they were
    path2 = write_sweep(tmp_path, {**yaml.safe_load(path.read_text()), "axes": {"dataset.imbalance_factor": [200, 100, 10], "seed": [0, 1, 2]}}, "b.yaml")
    assert set(names) <= {t.name for t in load_sweep(path2).trainings}
    # seed and dataset.seed apart when the file says so
    path3 = write_sweep(tmp_path, {"base": CE, "out": "r", "axes": {"seed": [4]}, "overrides": ["dataset.seed=7"],
                                   "seed_sets_dataset_seed": False}, "c.yaml")
    only = load_sweep(path3).trainings[0]
    assert only.name == "seed=4" and (load_config(only.config, only.overrides).dataset.seed) == 7


def test_every_variant_goes_out_before_any_second_seed(tmp_path, monkeypatch):
    from longtail.sweep import EXECUTORS, run_sweep

    path = write_sweep(tmp_path, {"base": CE, "out": "runs", "axes": {"seed": [0, 1]},
                                  "variants": [{"name": "a"}, {"name": "b", "overrides": ["loss.name=la"]}]})
    launched = []
    monkeypatch.setitem(EXECUTORS, "local", lambda tasks, jobs, say, options: launched.extend(t.name for t in tasks) or [])
    run_sweep(load_sweep(path), say=lambda line: None)
    assert launched == ["a/seed=0", "b/seed=0", "a/seed=1", "b/seed=1"]


@pytest.mark.parametrize("body, message", [
    ({"base": CE, "out": "r", "axis": {"seed": [0]}}, "unknown key 'axis' at the top level; did you mean 'axes'?"),
    ({"base": CE, "axes": {"seed": [0]}}, "'out' is missing"),
    ({"base": CE, "out": "r", "axes": {"seed": [[0, 1]]}}, "axis 'seed' has the value [0, 1]"),
    ({"base": CE, "out": "r", "axes": {"seed": []}}, "axis 'seed' must be a non-empty list"),
    ({"base": CE, "out": "r", "axes": {"seed": [1, 1]}}, "axis 'seed' repeats a value"),
    ({"base": CE, "out": "r", "axes": {"train.epoch": [1]}}, "unknown config key 'train.epoch'; did you mean 'train.epochs'?"),
    ({"base": CE, "out": "r", "axes": {"seed": ["x"]}}, "config key 'seed' expects int"),
    ({"base": CE, "out": "r", "overrides": ["loss.nme=la"]}, "did you mean 'loss.name'?"),
    ({"base": CE, "out": "r", "axes": {"seed": [0]}, "overrides": ["dataset.seed=3"]}, "the seed axis sets it"),
    ({"base": CE, "out": "r", "axes": {"seed": [0]}, "overrides": ["seed=3"]}, "'seed' is both an axis and an override"),
    ({"base": CE, "out": "r", "variants": [{"name": "a"}, {"name": "a"}]}, "two variants are named 'a'"),
    ({"base": CE, "out": "r", "variants": [{"name": "a", "overides": []}]}, "unknown key 'overides' in variant 'a'; did you mean 'overrides'?"),
    ({"base": CE, "out": "r", "variants": [{"name": "a/b"}]}, "every variant needs a name"),
    ({"base": CE, "out": "r", "variants": [{"name": "a"}, {"name": "p", "from": "z", "step": "tune --posthoc la"}]},
     "takes runs from 'z', which is not a training variant"),
    ({"base": CE, "out": "r", "variants": [{"name": "a"}, {"name": "p", "from": "a", "step": "tuen --posthoc la"}]},
     "step 'tuen' is not a post-hoc longtail command here"),
    ({"base": CE, "out": "r", "variants": [{"name": "a"}, {"name": "p", "from": "a", "step": "tune --posthoc lq"}]},
     "unknown post-hoc rule 'lq'"),
    ({"base": CE, "out": "r", "variants": [{"name": "a"}, {"name": "p", "from": "a", "step": "evaluate --posthoc la --save"},
                                           {"name": "q", "from": "a", "step": "evaluate --posthoc la --tau 2 --save"}]},
     "would write the same evaluate file"),
    ({"base": CE, "out": "r", "slurm": {"partiton": "gpu"}}, "unknown key 'partiton' under slurm; did you mean 'partition'?"),
    ({"base": "nowhere.yaml", "out": "r"}, "config file"),
])
def test_bad_sweep_files_fail_in_one_line_before_anything_runs(tmp_path, body, message):
    path = write_sweep(tmp_path, body)
    with pytest.raises(LongtailError) as info:
        load_sweep(path)
    text = str(info.value)
    assert message in text and "\n" not in text and str(path) in text
    assert not (tmp_path / "r").exists()


def test_cli_reports_a_bad_sweep_file_as_one_line(tmp_path, capsys):
    path = write_sweep(tmp_path, {"base": CE, "out": "r", "axes": {"sed": [0]}})
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("longtail: error:") and "did you mean 'seed'" in err and len(err.splitlines()) == 1
    good = write_sweep(tmp_path, {"base": CE, "out": "r"}, "good.yaml")
    assert main(["sweep", str(good), "--partition", "gpu"]) == 2  # a Slurm option without Slurm is a mistake
    assert "--partition applies to --executor slurm only" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_dry_run_lists_done_partial_and_to_do(tmp_path, capsys):
    path = write_sweep(tmp_path, {"base": CE, "out": "runs", "axes": {"seed": [0, 1, 2]},
                                  "variants": [{"name": "ce"}, {"name": "la", "from": "ce", "step": "evaluate --posthoc la --save"}]})
    runs = tmp_path / "runs" / "ce"
    (runs / "seed=0").mkdir(parents=True)
    (runs / "seed=0" / "metrics.json").write_text("{}")
    (runs / "seed=0" / "la.done").write_text("evaluate --posthoc la --save\n")
    (runs / "seed=1" / "checkpoints").mkdir(parents=True)
    (runs / "seed=1" / "checkpoints" / "last.pt").write_bytes(b"")
    assert main(["sweep", str(path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    status = {line.split()[-1]: line.split()[0] for line in lines if line.startswith("  ") and "[" not in line and "partial" not in line}
    assert status == {"ce/seed=0": "done", "ce/seed=2": "to"}
    assert any(line.split()[:2] == ["partial", "ce/seed=1"] for line in lines)
    steps = [line.split()[0] for line in lines if "[la]" in line]
    assert steps == ["done", "waiting", "waiting"]
    assert lines[-1] == "trainings: 1 done, 1 partial, 1 to do; post-hoc steps: 1 done, 2 waiting"
    # a step whose command changed is to be run again
    (runs / "seed=0" / "la.done").write_text("evaluate --posthoc la --tau 2 --save\n")
    assert dry_run(load_sweep(path), say=lambda line: None)["step to do"] == 1


def test_thread_share():
    assert thread_share(16, 6) == 2  # the GPU benchmark: --jobs 6 on 16 cores
    assert thread_share(2, 2) == 1 and thread_share(2, 1) == 2
    assert thread_share(2, 5) == 1  # never zero
    assert thread_share(16, 1) == 16


def test_threads_option_sets_torch_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        main(["--threads", "3", "sweep", str(tmp_path / "missing.yaml"), "--dry-run"])  # fails after the threads are set
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert main(["--threads", "0", "sweep", "x.yaml"]) == 2


def test_a_task_runs_with_its_thread_share_and_logs_to_its_file(tmp_path):
    log = tmp_path / "run" / "train.log"
    code = run_task(Task("probe", ("sweep", str(tmp_path / "none.yaml")), log), threads=3)
    text = log.read_text()
    # the child gets `longtail --threads 3` (torch.set_num_threads) and OMP_NUM_THREADS=3; its output is appended
    assert code == 2 and "longtail sweep, 3 threads:" in text and " -m longtail --threads 3 sweep " in text
    assert "longtail: error: sweep file" in text and text.rstrip().endswith("# exit code 2")
    run_task(Task("probe", ("sweep", str(tmp_path / "none.yaml")), log), threads=1)
    assert log.read_text().count("longtail sweep, ") == 2  # appended, never truncated: a resumed run keeps its history


def test_slurm_options():
    assert [slurm_minutes(v) for v in (90, "90", "1:30:00", "2-00:00:00", "0:00:30")] == [90, 90, 90, 2880, 1]
    for bad in ("soon", True, "0"):
        with pytest.raises(LongtailError, match="slurm time"):
            slurm_minutes(bad)
    params, threads = slurm_parameters({"partition": "gpu", "time": "12:00:00", "gpus": 1, "cpus": 8, "mem": "32gb"}, jobs=4)
    assert params == {"job_name": "longtail", "partition": "gpu", "time": 720, "nodes": 1, "ntasks_per_node": 1,
                      "gpus_per_node": 1, "cpus_per_task": 8, "mem": "32G", "array_parallelism": 4} and threads == 8
    assert slurm_parameters({"mem": 16}, None)[0]["mem"] == "16G"
    with pytest.raises(LongtailError, match="slurm cpus"):
        slurm_parameters({"cpus": 0}, None)


def test_shipped_sweep_files_reproduce_the_benchmark_configs():
    """benchmarks/fmnist_methods.yaml trains exactly configs/fmnist_lt/<method>_imba<IF>.yaml (seeds set)."""
    configs = {"ce": "ce", "la_loss": "loss", "gala": "gala", "gala_pn": "gala_pn", "bagmar": "bagmar",
               "balanced_softmax": "balanced_softmax", "ldam_drw": "ldam_drw", "lgla": "lgla"}
    sweep = load_sweep(REPO / "benchmarks" / "fmnist_methods.yaml")
    assert [s.variant for s in sweep.steps][::6] == ["ce_posthoc_la", "ce_posthoc_la_tuned"]
    assert {s.source.variant for s in sweep.steps} == {"ce"} and len(sweep.trainings) == len(configs) * 6
    for run in sweep.trainings:
        cfg = load_config(run.config, run.overrides)
        factor, seed = int(cfg.dataset.imbalance_factor), cfg.seed
        reference = load_config(REPO / "configs" / "fmnist_lt" / f"{configs[run.variant]}_imba{factor}.yaml",
                                [f"seed={seed}", f"dataset.seed={seed}"])
        assert cfg == reference, run.name
    small = load_sweep(REPO / "benchmarks" / "fmnist_methods_small.yaml")
    assert [r.name for r in small.trainings] == [r.name for r in sweep.trainings]
    for run, big in zip(small.trainings, sweep.trainings):
        cfg, reference = load_config(run.config, run.overrides), load_config(big.config, big.overrides)
        assert cfg.model.name == {"resnet32": "resnet8", "resnet32_experts": "resnet8_experts"}[reference.model.name]
        cfg.model.name = reference.model.name
        assert cfg == reference
    gala = load_sweep(REPO / "benchmarks" / "cifar100_lt_gala.yaml")
    assert len(gala.trainings) == 12 and len(gala.steps) == 12 and gala.slurm["gpus"] == 1


def test_report_reads_saved_posthoc_evaluations_of_the_test_split(tmp_path):
    pytest.importorskip("pandas")
    from longtail.config import dump_yaml
    from longtail.report import results_table

    def block(top1: float) -> dict:
        return {"top1": top1, "many": top1, "medium": top1, "few": None, "class_counts": [100, 10]}

    for seed, (raw, adjusted) in enumerate([(60.0, 70.0), (62.0, 74.0)]):
        run = tmp_path / f"seed={seed}"
        run.mkdir()
        (run / "config.yaml").write_text(dump_yaml(load_config(None, [f"seed={seed}", f"dataset.seed={seed}"])))
        (run / "metrics.json").write_text(json.dumps({**block(raw), "raw": block(raw), "posthoc": None}))
        saved = {**block(adjusted), "raw": block(raw), "split": "test",
                 "posthoc": {"name": "la", "tau": 1.0, "prior_counts": [100, 10]}}
        (run / "eval_la.json").write_text(json.dumps(saved))
        (run / "eval_pn.json").write_text(json.dumps({**saved, "split": "val", "posthoc": {"name": "pn", "tau": 1.0}}))
    table = results_table([tmp_path])
    cells = {method: row.iloc[0] for (_, method), row in table.iterrows()}
    assert cells == {"CE": "61.00 ± 1.41 (2 seeds)", "CE + post-hoc LA (τ=1)": "72.00 ± 2.83 (2 seeds)"}  # no val-split row


# ----------------------------------------------------------------------------- the local executor, for real


def make_partial(run: Path, argv: list[str]) -> None:
    """Start the training and SIGKILL it once it has saved its first epoch (checkpoints/last.pt)."""
    proc = subprocess.Popen([sys.executable, "-m", "longtail", *argv], env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "last.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_local_sweep_skips_resumes_and_survives_a_failure(tmp_path, small_fmnist_root, capsys, monkeypatch):
    """The sweep and report commands run in the test process (`main_here`); the sweep's trainings and steps are
    the executor's own subprocesses, which import this checkout's longtail (PYTHONPATH, as run_cli sets it)."""
    monkeypatch.setenv("PYTHONPATH", cli_env()["PYTHONPATH"])
    path = tiny_sweep(tmp_path, small_fmnist_root, epochs=2)
    sweep = load_sweep(path)
    partial = next(t for t in sweep.trainings if t.name == "ce/seed=1")
    make_partial(partial.run_dir, partial.argv)
    assert partial.status() == "partial", "the training finished before it could be interrupted"

    first = main_here(capsys, "sweep", str(path), "--jobs", "2", check=False)
    assert first.returncode == 1, first.stdout + first.stderr
    summary = first.stdout.strip().splitlines()[-1]
    broken_logs = [str(tmp_path / "runs" / "broken" / f"seed={s}" / "train.log") for s in (0, 1)]
    assert summary.startswith("sweep: 6 ran, 0 skipped, 2 failed: ")  # 4 trainings (one resumed) + 2 steps
    assert sorted(summary.split(": ", 2)[2].split(", ")) == sorted(broken_logs)
    threads = thread_share(available_cores(), 2)
    assert f"running 4 on this machine, 2 at a time, {threads} thread{'s' if threads > 1 else ''} each" in first.stdout
    for seed in (0, 1):
        run = tmp_path / "runs" / "ce" / f"seed={seed}"
        assert (run / "metrics.json").is_file() and len((run / "epochs.jsonl").read_text().splitlines()) == 2
        assert json.loads((run / "eval_la.json").read_text())["posthoc"]["name"] == "la"
        assert f"--threads {threads} train" in (run / "train.log").read_text()
    resumed = (partial.run_dir / "train.log").read_text()
    assert "resuming" in resumed and "starting the run from epoch 1" not in resumed
    assert "longtail: error:" in Path(broken_logs[0]).read_text() and "/nonexistent/weights.pt" in Path(broken_logs[0]).read_text()

    second = main_here(capsys, "sweep", str(path), "--jobs", "2", check=False)
    assert second.returncode == 1
    assert second.stdout.strip().splitlines()[-1].startswith("sweep: 2 ran, 4 skipped, 2 failed: ")

    report = main_here(capsys, "report", str(tmp_path / "runs"), "--out", str(tmp_path / "report"))
    table = (tmp_path / "report" / "results.md").read_text().split("Many / medium / few")[0]  # the top-1 table
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| CE")}
    assert set(rows) == {"CE", "CE + post-hoc LA (τ=1)"}, report.stdout
    assert all("2 seeds" in line for line in rows.values())
