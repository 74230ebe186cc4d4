"""The README's commands without installing anything: the demo's comparison table, the scripts' syntax
and early errors, and which interpreter each make target runs."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from longtail.posthoc import format_comparison, format_configured

SCRIPTS = [REPO / "scripts" / "setup.sh", REPO / "scripts" / "demo.sh", REPO / ".ci" / "run"]
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed (apt-get install make)")

# ----------------------------------------------------------------------------- the comparison table

RAW = {"top1": 70.0, "mean_class_acc": 60.5, "many": 95.25, "medium": 55.0, "few": None}
ADJUSTED = {"top1": 75.5, "mean_class_acc": 68.0, "many": 90.0, "medium": 66.75, "few": 12.0}


def cells(line: str) -> list[str]:
    return line.split()[-5:]


def test_comparison_rows_and_change_by_hand():
    lines = format_comparison(RAW, ADJUSTED, "post-hoc la (tau 1)", "title:").splitlines()
    assert lines[0] == "title:"
    assert lines[1].split() == ["top1", "mean_class_acc", "many", "medium", "few"]
    assert lines[2].startswith("raw argmax") and cells(lines[2]) == ["70.00", "60.50", "95.25", "55.00", "n/a"]
    assert lines[3].startswith("post-hoc la (tau 1)") and cells(lines[3]) == ["75.50", "68.00", "90.00", "66.75", "12.00"]
    # change = corrected - raw, signed; undefined where either side is
    assert lines[4].startswith("change") and cells(lines[4]) == ["+5.50", "+7.50", "-5.25", "+11.75", "n/a"]
    assert len(lines) == 5


def test_comparison_columns_line_up():
    lines = format_comparison(RAW, ADJUSTED, "post-hoc la (tau 1)").splitlines()
    assert len({len(line) for line in lines}) == 1


def test_configured_output_compares_in_one_table_and_keeps_plain_runs_and_experts_as_they_were():
    block = {"name": "la", "tau": 1.0, "class_mass": None}
    text = format_configured({**ADJUSTED, "raw": RAW, "posthoc": block}, "test metrics of run")
    assert text.splitlines()[0] == "test metrics of run, without and with post-hoc la (tau 1):"
    assert text.count("top1") == 1 and "change" in text
    plain = format_configured({**RAW, "raw": RAW, "posthoc": None}, "test metrics")
    assert "change" not in plain and plain.count("top1") == 1 and "95.25" in plain
    experts = format_configured({**ADJUSTED, "experts": [RAW, RAW], "raw": {**RAW, "experts": [RAW, RAW]},
                                 "posthoc": block}, "t")
    assert experts.count("top1") == 2 and "expert 1" in experts and "change" not in experts


# ----------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def fake_python(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def run_setup(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "setup.sh")], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)


def test_setup_names_a_missing_interpreter_in_one_line():
    result = run_setup({"PYTHON": "/nonexistent/python3"})
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "no Python interpreter '/nonexistent/python3'" in result.stderr


def test_setup_refuses_an_old_python_in_one_line(tmp_path):
    # a stand-in for Python 3.8: prints its version, fails the >= 3.10 check
    old = fake_python(tmp_path / "python3.8", 'case "$2" in *print*) echo 3.8;; *) exit 1;; esac\n')
    result = run_setup({"PYTHON": str(old)})
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "needs Python >= 3.10" in result.stderr and "3.8" in result.stderr


def test_setup_never_turns_a_folder_that_is_not_a_venv_into_one(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "keep.txt").write_text("data")
    # a stand-in Python 3.11 that answers every check but can make nothing (`-m venv`, `-m pip` fail)
    python = fake_python(tmp_path / "python3", 'case "$*" in *print*) echo 3.11;; -c*) exit 0;; *) exit 1;; esac\n')
    result = run_setup({"VENV": str(folder), "PYTHON": str(python)})
    assert result.returncode == 1 and "is not a virtual environment" in result.stderr
    assert (folder / "keep.txt").read_text() == "data" and not (folder / "bin").exists()


def test_demo_trains_then_compares_on_the_same_run_and_says_where_things_are(tmp_path):
    # a stand-in interpreter that only records its arguments: checks the demo's order of commands
    log = tmp_path / "calls"
    py = fake_python(tmp_path / "python", f'echo "$*" >> {log}\n')
    out = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "train.epochs=1"], capture_output=True,
                         text=True, env={**os.environ, "PY": str(py), "VENV": ".venv"}, timeout=60)
    assert out.returncode == 0, out.stderr
    train, evaluate = log.read_text().splitlines()
    run = train.split("--out ")[1].split()[0]
    assert run.startswith("runs/demo-")
    assert train == f"-m longtail train configs/fmnist_lt/ce_imba100.yaml --out {run} train.epochs=1"
    assert evaluate == f"-m longtail evaluate {run} --posthoc la"
    assert f"run directory is {run}" in out.stdout and ".venv/bin/longtail" in out.stdout
    assert "source .venv/bin/activate" in out.stdout
    assert "tensorboard --logdir runs" in out.stdout and "longtail report runs --out report" in out.stdout
    own = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], capture_output=True, text=True,
                         env={**os.environ, "PY": str(py), "VENV": ""}, timeout=60)
    assert own.returncode == 0 and ".venv" not in own.stdout and f"environment of {py}" in own.stdout


# ----------------------------------------------------------------------------- make targets


def make_n(*args: str) -> list[str]:
    result = subprocess.run(["make", "-n", "-C", str(REPO), *args], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k not in ("PYTHON", "VENV", "DEMO_ARGS")})
    assert result.returncode == 0, result.stderr
    return [line.rstrip() for line in result.stdout.splitlines() if not line.startswith("make")]


@needs_make
def test_make_targets_run_in_the_project_venv():
    setup, pytest_line = make_n("test")
    assert setup == 'PYTHON="python3" VENV=".venv" EXTRAS="test" bash scripts/setup.sh'
    # pytest lists the 10 slowest tests, then the wall time since make started (setup included), pytest's exit code kept
    assert re.fullmatch(r'\.venv/bin/python -m pytest --durations=10; rc=\$\?; echo "make test: \$\(\( \$\(date \+%s\) - \d+ \)\) '
                        r's wall, setup included"; exit \$rc', pytest_line), pytest_line
    demo = make_n("demo", "PYTHON=/usr/bin/python3", "DEMO_ARGS=train.epochs=1 seed=3")
    # the demo installs the report extra it points to, and no test tools, no ONNX Runtime, no timm
    assert demo == ['PYTHON="/usr/bin/python3" VENV=".venv" EXTRAS="report" bash scripts/setup.sh',
                    'PY=".venv/bin/python" VENV=".venv" bash scripts/demo.sh train.epochs=1 seed=3']
    assert make_n("docs") == ['PYTHON="python3" VENV=".venv" EXTRAS="docs" bash scripts/setup.sh',
                              ".venv/bin/python -m mkdocs build --strict"]


@needs_make
def test_make_without_venv_runs_the_given_interpreter():
    setup, pytest_line = make_n("test", "VENV=")
    assert setup == 'PYTHON="python3" VENV="" EXTRAS="test" bash scripts/setup.sh'
    assert pytest_line.startswith("python3 -m pytest --durations=10;")
    demo = make_n("demo", "VENV=", "PYTHON=/opt/py/bin/python3")
    assert demo[-1] == 'PY="/opt/py/bin/python3" VENV="" bash scripts/demo.sh'


def test_a_changed_torch_spec_reinstalls_torch_and_an_unset_one_keeps_it(tmp_path):
    # a stand-in Python 3.11 whose "environment" is tmp_path: torch imports while the file `torch` exists,
    # pip records what it was asked to do
    log = tmp_path / "pip.log"
    python = fake_python(tmp_path / "python3", f"""case "$*" in
  *sys.executable*) echo {tmp_path}/python3;;
  *sys.prefix*) echo {tmp_path};;
  *print*) echo 3.11;;
  "-c import torch, torchvision") [ -f {tmp_path}/torch ];;
  "-m pip uninstall"*) echo "uninstall" >> {log}; rm -f {tmp_path}/torch;;
  "-m pip install -q torch"*) echo "install $*" >> {log}; touch {tmp_path}/torch;;
  "-m pip"*) echo "pip $*" >> {log};;
  *) exit 0;;
esac
""")
    (tmp_path / "torch").touch()  # a torch installed earlier, not by setup.sh (no record)
    env = {"VENV": "", "PYTHON": str(python)}
    assert run_setup(env).returncode == 0
    assert log.read_text().splitlines() == ["pip -m pip install -q -e ."]  # kept; the demo installs no extras
    cpu = "torch torchvision --index-url https://download.pytorch.org/whl/cpu"
    log.unlink()
    result = run_setup({**env, "TORCH_SPEC": cpu, "EXTRAS": "test"})
    assert result.returncode == 0 and "reinstalling torch" in result.stdout
    assert log.read_text().splitlines() == ["uninstall", f"install -m pip install -q {cpu}", "pip -m pip install -q -e .[test]"]
    assert (tmp_path / ".longtail-torch-spec").read_text().strip() == cpu
    log.unlink()
    assert run_setup(env).returncode == 0  # TORCH_SPEC unset: the recorded CPU build stays
    assert "uninstall" not in log.read_text()
