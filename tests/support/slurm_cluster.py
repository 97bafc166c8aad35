"""A real one-node Slurm cluster on loopback, for the whole test session.

`SlurmCluster` starts, from Debian's `slurm-wlm` and `munge` (installed here when missing
and the tests run as root; scripts/test installs them too):

- `munged` with a throwaway key and its own socket (slurm.conf's `AuthInfo=socket=` points
  the daemons and the client commands at it);
- `slurmctld` and `slurmd` (both as root, in the foreground, our children) with a
  configuration written into a temp dir: one node on 127.0.0.1 declaring 8 CPUs, 64 GB and
  four GPUs (`Gres=gpu:4`) it does not have (`SlurmdParameters=config_overrides`),
  select/cons_tres, proctrack/linuxproc and task/none (no cgroups in a container), no
  accounting (`accounting_storage/none`: sacct has nothing to say, so the runner reads
  squeue and the run dir), one default partition `main` with `MaxTime=60`.

The GPUs: Slurm 22.05's gres/gpu plugin drops a GPU without `File=` ("Removing file-less
GPU"), so gres.conf names four character devices made in the temp dir as copies of
/dev/null (`mknod c 1 3`). No job opens them; they only give the count Slurm schedules
by, so a job asking for more GPUs than are free really waits ("Resources"), and Slurm
sets CUDA_VISIBLE_DEVICES to the indices it handed out.

Tests use `env` (SLURM_CONF) for the service, and `scontrol(...)` to act as an admin
would (requeue a job, let it start at once).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_WAIT_S = 60.0
NODE = "testnode"
GPUS = 4
TOOLS = {
    "/usr/sbin/slurmctld": "slurmctld",
    "/usr/sbin/slurmd": "slurmd",
    "/usr/sbin/munged": "munge",
    "/usr/bin/sbatch": "slurm-client",
}


def missing_tools() -> list[str]:
    return sorted({pkg for path, pkg in TOOLS.items() if not os.access(path, os.X_OK)})


def install_missing() -> None:
    """apt-get the cluster's packages as root; a failure says what to install."""
    missing = missing_tools()
    if not missing:
        return
    if os.geteuid() != 0:
        pytest.fail(f"Slurm is missing ({', '.join(missing)}): apt-get install slurm-wlm munge")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "slurm-wlm", "munge"],
        check=True,
        env=env,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SlurmCluster:
    def __init__(self) -> None:
        # short: munge's socket path must fit a unix socket's 107 bytes
        self.root = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
        self.conf = self.root / "slurm.conf"
        self.host = socket.gethostname()
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        """What a client command (and the service) needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def scontrol(self, *args: str) -> str:
        return self.command("scontrol", *args)

    def command(self, *argv: str) -> str:
        done = subprocess.run(
            argv, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout

    def requeue(self, job_id: str) -> None:
        """`scontrol requeue`, then let it start as soon as it can.

        A requeued job is held until its BeginTime (about two minutes ahead); an admin's
        `StartTime=now` lifts that, as a test cannot wait for it.
        """
        self.scontrol("requeue", job_id)
        deadline = time.monotonic() + 30
        while "JobState=PENDING" not in self.scontrol("show", "job", job_id):
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} was not pending after its requeue")
            time.sleep(0.2)
        self.scontrol("update", f"JobId={job_id}", "StartTime=now")

    def cancel_all(self) -> None:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            self.command("scancel", "--full", "--user=root")

    def drain(self, timeout: float = 15) -> None:
        """Cancel every job and wait until the queue is empty: the next test starts clean."""
        self.cancel_all()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.command("squeue", "--noheader").strip():
                    return
            except (AssertionError, subprocess.TimeoutExpired):
                return
            time.sleep(0.3)

    # ---- start and stop -------------------------------------------------------------------

    def start(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir()
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        gpu_files = []
        for index in range(GPUS):
            dev = self.root / f"gpu{index}"
            os.mknod(dev, 0o600 | 0o020000, os.makedev(1, 3))  # a character device like /dev/null
            gpu_files.append(dev)
        self._write_config()
        self._spawn(
            "munged",
            [
                "/usr/sbin/munged",
                "--foreground",
                "--force",
                f"--socket={self.root / 'munge.sock'}",
                f"--key-file={key}",
                f"--pid-file={self.root / 'munged.pid'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
                f"--seed-file={self.root / 'munge.seed'}",
            ],
        )
        self._wait("munged's socket", lambda: (self.root / "munge.sock").exists())
        self._spawn("slurmctld", ["/usr/sbin/slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait("slurmctld to answer", self._controller_up)
        self._spawn("slurmd", ["/usr/sbin/slurmd", "-D", "-N", NODE, "-f", str(self.conf)])
        self._wait("the node to be idle", self._node_idle)

    def _write_config(self) -> None:
        r = self.root
        (r / "gres.conf").write_text(f"NodeName={NODE} Name=gpu File={r}/gpu[0-{GPUS - 1}]\n")
        lines = [
            "ClusterName=assistanttest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={r / 'munge.sock'}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "DefMemPerCPU=256",
            "SchedulerType=sched/builtin",
            "GresTypes=gpu",
            "MpiDefault=none",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "KillWait=5",
            "MinJobAge=300",
            "JobRequeue=1",
            "InactiveLimit=0",
            f"NodeName={NODE} NodeHostname={self.host} NodeAddr=127.0.0.1 CPUs=8"
            f" RealMemory=64000 Gres=gpu:{GPUS} State=UNKNOWN",
            f"PartitionName=main Nodes={NODE} Default=YES MaxTime=60 State=UP",
            "",
        ]
        self.conf.write_text("\n".join(lines))

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = (self.root / "log" / f"{name}.out").open("wb")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        out.close()
        self._procs.append(proc)

    def _wait(self, what: str, ready: object) -> None:
        deadline = time.monotonic() + START_WAIT_S
        while not ready():  # type: ignore[operator]
            for proc in self._procs:
                if proc.poll() is not None:
                    raise AssertionError(f"{proc.args[0]} exited; logs in {self.root / 'log'}")
            if time.monotonic() > deadline:
                raise AssertionError(f"waiting for {what}: logs in {self.root / 'log'}")
            time.sleep(0.2)

    def _controller_up(self) -> bool:
        try:
            return "UP" in self.scontrol("ping")
        except (AssertionError, subprocess.TimeoutExpired):
            return False

    def _node_idle(self) -> bool:
        try:
            out = self.command("sinfo", "--noheader", "--Node", "--Format=StateLong")
        except (AssertionError, subprocess.TimeoutExpired):
            return False
        return out.strip() == "idle"

    def close(self) -> None:
        self.drain()
        for proc in reversed(self._procs):  # slurmd, slurmctld, munged
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        keep = os.environ.get("ASSISTANT_TEST_SLURM_LOGS")  # where to keep the daemons' logs
        if keep:
            shutil.copytree(self.root / "log", keep, dirs_exist_ok=True)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The cluster for the whole session (see the module docstring).

    Missing packages are installed (as root) or a failure, never a skip; set
    ASSISTANT_TEST_NO_SLURM=1 to skip the Slurm tests on purpose.
    """
    if os.environ.get("ASSISTANT_TEST_NO_SLURM"):
        pytest.skip("ASSISTANT_TEST_NO_SLURM is set")
    install_missing()
    cluster = SlurmCluster()
    try:
        cluster.start()
    except BaseException:
        cluster.close()
        raise
    try:
        yield cluster
    finally:
        cluster.close()
