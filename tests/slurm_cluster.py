"""A single-node Slurm cluster for tests: munged, slurmctld and slurmd on this machine, everything (key,
socket, state, logs, slurm.conf, ports) in one temporary folder, stopped by pid afterwards."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DAEMONS = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld", "slurmd": "/usr/sbin/slurmd"}
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "srun", "sinfo")


def missing_binaries() -> list[str]:
    absent = [name for name, path in DAEMONS.items() if not Path(path).is_file()]
    return absent + [name for name in CLIENTS if shutil.which(name) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


@dataclass
class Cluster:
    folder: Path
    conf: Path
    pids: dict[str, int]

    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}


def _pid(file: Path, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if file.is_file() and file.read_text().strip():
            return int(file.read_text().split()[0])
        time.sleep(0.1)
    raise RuntimeError(f"{file} never appeared")


def start(folder: Path) -> Cluster:
    """Start the three daemons; returns once the node is idle. Raises with the daemons' logs if not."""
    for sub in ("munge", "state", "spool", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "munge").chmod(0o700)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = folder / "munge" / "munge.socket"
    pids: dict[str, int] = {}
    cluster = Cluster(folder, folder / "slurm.conf", pids)
    try:
        subprocess.run([DAEMONS["munged"], "--force", f"--key-file={key}", f"--socket={munge_socket}",
                        f"--pid-file={folder / 'munge' / 'munged.pid'}", f"--log-file={folder / 'log' / 'munged.log'}",
                        f"--seed-file={folder / 'munge' / 'munged.seed'}"], check=True, capture_output=True, timeout=60)
        pids["munged"] = _pid(folder / "munge" / "munged.pid")
        host = socket.gethostname().split(".")[0]
        cluster.conf.write_text("\n".join([
            "ClusterName=longtailtest",
            f"SlurmctldHost={host}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={munge_socket}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            f"StateSaveLocation={folder / 'state'}",
            f"SlurmdSpoolDir={folder / 'spool'}",
            f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
            f"SlurmdPidFile={folder / 'slurmd.pid'}",
            f"SlurmctldLogFile={folder / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={folder / 'log' / 'slurmd.log'}",
            f"NodeName={host} CPUs={os.cpu_count()} RealMemory={int(_memory_mb() * 0.9)} State=UNKNOWN",
            f"PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")
        env = {**os.environ, **cluster.env()}
        subprocess.run([DAEMONS["slurmctld"], "-f", str(cluster.conf)], check=True, capture_output=True, timeout=60, env=env)
        pids["slurmctld"] = _pid(folder / "slurmctld.pid")
        subprocess.run([DAEMONS["slurmd"], "-f", str(cluster.conf)], check=True, capture_output=True, timeout=60, env=env)
        pids["slurmd"] = _pid(folder / "slurmd.pid")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env).stdout.strip()
            if state == "idle":
                return cluster
            time.sleep(0.5)
        raise RuntimeError(f"the node never became idle (sinfo says '{state}')")
    except (subprocess.CalledProcessError, RuntimeError, subprocess.TimeoutExpired) as exc:
        logs = "\n".join(f"--- {f.name}\n{f.read_text()[-2000:]}" for f in sorted((folder / "log").glob("*.log")))
        stop(cluster)
        raise RuntimeError(f"could not start the test Slurm cluster: {exc}\n{getattr(exc, 'stderr', '') or ''}\n{logs}") from None


def stop(cluster: Cluster) -> None:
    """Cancel every job of the cluster, then stop its daemons by pid (slurmd, slurmctld, munged)."""
    env = {**os.environ, **cluster.env()}
    if "slurmctld" in cluster.pids:
        subprocess.run(["scancel", "--me"], capture_output=True, env=env, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(["squeue", "--me", "-h"], capture_output=True, text=True, env=env, timeout=60)
            if out.returncode != 0 or not out.stdout.strip():
                break
            time.sleep(0.5)
    for name in ("slurmd", "slurmctld", "munged"):
        pid = cluster.pids.get(name)
        if pid is None:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
