"""A real single-node SLURM (Debian's slurm-wlm and munge) and a real PostgreSQL, started by the
tests in temporary folders and stopped by the PIDs they started.

Where the binaries are missing the tests skip with one line, unless HARNESS_REQUIRE_CLUSTER=1
(.ci/run sets it after installing them): then they fail, so CI never skips them silently.
"""

import contextlib
import getpass
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import free_port

REQUIRED = os.environ.get("HARNESS_REQUIRE_CLUSTER") == "1"


def need(what: str, *binaries: str) -> None:
    missing = [b for b in binaries if not (shutil.which(b) or Path(b).exists())]
    reason = f"needs {what}: {', '.join(missing)} missing (apt-get install slurm-wlm munge postgresql)" if missing \
        else f"needs {what}: runs as root only" if os.geteuid() != 0 else None
    if reason:
        if REQUIRED:
            pytest.fail(reason)
        pytest.skip(reason)


def shared_folder(prefix: str) -> Path:
    """A temporary folder the daemons' own users (munge, postgres) can reach too."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    folder.chmod(0o755)
    return folder


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


def stop_pids(pidfiles: list) -> None:
    """SIGTERM each daemon, and SIGKILL one still there after 10 s."""
    for pidfile in pidfiles:
        try:
            pid = int(Path(pidfile).read_text())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            continue
        for _ in range(40):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.25)
        else:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


class Slurm:
    """munged (its own socket), slurmctld and slurmd for this host, in one folder."""

    def __init__(self, cpus: int = 8):
        need("SLURM", "/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "sbatch", "scontrol")
        self.folder = shared_folder("slurm-")
        for sub in ("state", "spool", "munge"):
            (self.folder / sub).mkdir()
        shutil.chown(self.folder / "munge", "munge", "munge")
        self.socket = self.folder / "munge" / "munge.socket"
        self.conf = self.folder / "slurm.conf"
        host = socket.gethostname()
        ports = (free_port(), free_port())
        while ports[0] == ports[1]:
            ports = (ports[0], free_port())
        memory_mb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1]) // 1024
        f = self.folder
        self.conf.write_text("\n".join([
            "ClusterName=harness", f"SlurmctldHost={host}", f"SlurmctldPort={ports[0]}", f"SlurmdPort={ports[1]}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=cred_expire=10,socket={self.socket}",
            "SlurmUser=root", "SlurmdUser=root", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            # more CPUs than the machine has, so that 8 small jobs run at once; trust the file
            "SlurmdParameters=config_overrides", "ReturnToService=2",
            # without these a requeued job waits about 150 s, with them about 17 s
            "SchedulerParameters=bf_interval=1,sched_interval=2", "KillWait=5", "MinJobAge=3600", "MpiDefault=none",
            f"StateSaveLocation={f}/state", f"SlurmdSpoolDir={f}/spool",
            f"SlurmctldPidFile={f}/slurmctld.pid", f"SlurmdPidFile={f}/slurmd.pid",
            f"SlurmctldLogFile={f}/slurmctld.log", f"SlurmdLogFile={f}/slurmd.log",
            f"NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        try:
            subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged", f"--socket={self.socket}",
                            f"--pid-file={self.folder}/munge/munged.pid", f"--seed-file={self.folder}/munge/seed",
                            f"--log-file={self.folder}/munge/munged.log"], check=True)
            for daemon in ("/usr/sbin/slurmctld", "/usr/sbin/slurmd"):
                subprocess.run([daemon, "-f", str(self.conf)], env=self.env, check=True)
            wait_until(lambda: "idle" in self.run("sinfo", "-h", "-o", "%T").stdout, 60, "the SLURM node")
        except BaseException:
            self._stop_daemons()  # whatever did start
            raise

    def run(self, *command) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)

    def jobs(self) -> list:
        """[(job id, state)] of the jobs the controller knows."""
        lines = self.run("squeue", "-h", "-o", "%i %T").stdout.split("\n")
        return [tuple(line.split()) for line in lines if line.strip()]

    def stop(self) -> None:
        """Cancel every job and wait (killing slurmd leaves jobs running), then stop the daemons."""
        self.run("scancel", "--user", getpass.getuser())
        try:
            wait_until(lambda: not self.jobs(), 60, "the jobs to end")
        finally:
            self._stop_daemons()

    def _stop_daemons(self) -> None:
        stop_pids([self.folder / "slurmd.pid", self.folder / "slurmctld.pid", self.folder / "munge/munged.pid"])
        shutil.rmtree(self.folder, ignore_errors=True)


class Postgres:
    """A PostgreSQL server on 127.0.0.1 with a database `mlflow`, its data in a temporary folder."""

    def __init__(self):
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        need("PostgreSQL", *(f"{binaries[-1]}/{b}" for b in ("initdb", "pg_ctl")) if binaries else ["initdb"])
        self.bin = Path(binaries[-1])
        self.folder = shared_folder("postgres-")
        shutil.chown(self.folder, "postgres", "postgres")
        self.port = free_port()
        data = self.folder / "data"
        self.as_postgres(self.bin / "initdb", "-D", data, "-U", "postgres", "--auth=trust")
        self.as_postgres(self.bin / "pg_ctl", "-D", data, "-l", self.folder / "server.log", "-w", "start",
                         "-o", f"-p {self.port} -h 127.0.0.1 -k {self.folder}")
        try:
            self.as_postgres(self.bin / "createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", "mlflow")
        except BaseException:
            self.stop()
            raise
        self.uri = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/mlflow"

    def as_postgres(self, *command) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *map(str, command)], check=True, capture_output=True,
                       timeout=120, cwd=self.folder)

    def stop(self) -> None:
        self.as_postgres(self.bin / "pg_ctl", "-D", self.folder / "data", "-m", "fast", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)
