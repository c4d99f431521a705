"""A real one-node SLURM cluster for tests: munged, slurmctld and slurmd in a private folder.

Debian's ``slurm-wlm`` and ``munge`` packages (``apt-get install -y slurm-wlm munge``; SLURM 22.05 on
Debian 12).  Everything the cluster needs lives under one folder: its own MUNGE key and socket, a generated
``slurm.conf`` on free TCP ports, state and spool folders, pid and log files.  Nothing in ``/etc`` is
touched and the system's default ports and MUNGE socket are not used, so it coexists with another
cluster on the same machine.  Clients find it through ``SLURM_CONF``, which :attr:`SlurmCluster.env`
gives and the :func:`slurm_cluster` fixture sets for the test session.

The node is the machine itself (``NodeName=localhost``, ``CPUs`` and ``RealMemory`` as measured); there
is no accounting database (``sacct`` answers "accounting storage is disabled"), jobs are tracked with
``squeue``.  Requeue is enabled (``JobRequeue=1``) and a requeued job may start again after
``cred_expire`` seconds (5 here; SLURM accepts no less; SLURM's default is 120).

In pytest::

    from slurm_cluster import slurm_cluster   # the session fixture; fails (never skips) without SLURM

By hand (e.g. to try ``adasched.dispatch`` interactively)::

    python tests/slurm_cluster.py start /tmp/myslurm    # prints: export SLURM_CONF=/tmp/myslurm/slurm.conf
    python tests/slurm_cluster.py stop /tmp/myslurm

Needs root (slurmd starts jobs as their user; munged's key and socket are private).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

#: Programs the cluster needs; a missing one fails the test session with an install hint.
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
INSTALL_HINT = "install them with: apt-get update && apt-get install -y slurm-wlm munge  (CI: .ci/slurm-setup.sh)"
PARTITION = "debug"


def _sbin_path() -> str:
    """``PATH`` with the sbin folders (daemons live in ``/usr/sbin``, not always on a user's PATH)."""
    parts = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(parts + [p for p in ("/usr/sbin", "/sbin", "/usr/local/sbin") if p not in parts])


def missing_programs() -> list[str]:
    path = _sbin_path()
    return [p for p in PROGRAMS if shutil.which(p, path=path) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    """Total memory as ``free -m`` reports it, less 5% so slurmd never finds less than configured."""
    try:
        out = subprocess.run(["free", "-m"], capture_output=True, text=True, check=True).stdout
        total = int(next(line.split()[1] for line in out.splitlines() if line.startswith("Mem:")))
    except (OSError, subprocess.CalledProcessError, StopIteration, ValueError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return max(256, int(total * 0.95))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class SlurmClusterError(RuntimeError):
    """The cluster could not be started; the message names the log to read."""


class SlurmCluster:
    """A one-node SLURM under ``root``; :meth:`start`, then clients with :attr:`env`; :meth:`stop`.

    Args:
        root: folder for everything (created); must be on a local filesystem (the MUNGE socket lives here).
        cpus: CPUs of the node (default: this machine's).
        mem_mb: ``RealMemory`` of the node (default: ``free -m`` total less 5%).
        partition: name of the one (default) partition.
        cred_expire: seconds before a requeued job may start again (SLURM's default is 120).
    """

    def __init__(self, root: str | os.PathLike, *, cpus: int | None = None, mem_mb: int | None = None,
                 partition: str = PARTITION, cred_expire: int = 5):
        self.root = Path(root).resolve()
        self.cpus = cpus or os.cpu_count() or 1
        self.mem_mb = mem_mb or _memory_mb()
        self.partition = partition
        self.cred_expire = cred_expire
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self._path = _sbin_path()

    # ------------------------------------------------------------------------------------------ paths

    @property
    def env(self) -> dict[str, str]:
        """Environment additions for SLURM clients (``sbatch``, ``squeue``, submitit) to use this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def log(self, daemon: str) -> Path:
        return self.root / "log" / f"{daemon}.log"

    def _pidfile(self, daemon: str) -> Path:
        return self.root / "run" / f"{daemon}.pid"

    # ----------------------------------------------------------------------------------------- config

    def write_config(self) -> None:
        for sub in ("munge", "state", "spool", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        ctld_port, d_port = _free_port(), _free_port()
        while d_port == ctld_port:
            d_port = _free_port()
        r = self.root
        lines = [
            "# Generated by tests/slurm_cluster.py: a private one-node cluster.",
            f"ClusterName=adasched-test-{os.getpid()}",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={d_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "SwitchType=switch/none",
            "SchedulerType=sched/backfill",
            # Schedule within a second or two of a submission, completion or requeue (defaults: 60 s, 30 s).
            "SchedulerParameters=sched_interval=2,bf_interval=1",
            "SlurmctldParameters=preempt_send_user_signal",
            "JobRequeue=1",
            "ReturnToService=2",
            "MinJobAge=30",
            "KillWait=2",
            "InactiveLimit=0",
            "SlurmdTimeout=60",
            "MessageTimeout=10",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={self._pidfile('slurmctld')}",
            f"SlurmdPidFile={self._pidfile('slurmd')}",
            f"SlurmctldLogFile={self.log('slurmctld')}",
            f"SlurmdLogFile={self.log('slurmd')}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        # slurmd reads cgroup.conf only with cgroup plugins; an empty one silences a warning.
        (self.root / "cgroup.conf").write_text("")

    # ---------------------------------------------------------------------------------------- daemons

    def _run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.env, "PATH": self._path}
        return subprocess.run(list(cmd), capture_output=True, text=True, check=check, env=env, timeout=timeout)

    def _start_daemon(self, name: str, cmd: list[str]) -> None:
        try:
            self._run(*cmd)
        except subprocess.CalledProcessError as e:
            raise SlurmClusterError(f"{name} did not start (exit {e.returncode}): "
                                    f"{(e.stderr or e.stdout).strip()[-500:]}; log: {self.log(name)}") from None

    def start(self, timeout: float = 60) -> "SlurmCluster":
        """Start munged, slurmctld and slurmd and wait until ``sinfo`` shows the node idle."""
        missing = missing_programs()
        if missing:
            raise SlurmClusterError(f"SLURM programs not found: {', '.join(missing)}; {INSTALL_HINT}")
        if os.geteuid() != 0:
            raise SlurmClusterError("a test SLURM cluster needs root (slurmd starts jobs as their user)")
        self.write_config()
        m = self.root / "munge"
        self._start_daemon("munged", ["munged", "--force", f"--socket={self.munge_socket}",
                                      f"--key-file={m / 'munge.key'}", f"--pid-file={self._pidfile('munged')}",
                                      f"--log-file={self.log('munged')}", f"--seed-file={m / 'munge.seed'}"])
        self._start_daemon("slurmctld", ["slurmctld", "-c", "-f", str(self.conf)])
        self._start_daemon("slurmd", ["slurmd", "-N", "localhost", "-f", str(self.conf)])
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            r = self._run("sinfo", "-h", "-N", "-o", "%T", check=False)
            state = r.stdout.strip()
            if r.returncode == 0 and state in ("idle", "mixed", "allocated"):
                return self
            if state.startswith(("drain", "down", "inval")) and time.monotonic() > deadline - timeout + 10:
                self._run("scontrol", "update", "NodeName=localhost", "State=RESUME", check=False)
            time.sleep(0.5)
        self.stop()
        raise SlurmClusterError(f"node not idle after {timeout:g} s (sinfo: {state or r.stderr.strip()!r}); "
                                f"logs: {self.log('slurmctld')}, {self.log('slurmd')}")

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (together) and wait for them to exit."""
        daemons = {}
        for name in ("slurmd", "slurmctld", "munged"):
            try:
                pid = int(self._pidfile(name).read_text().split()[0])
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if name.encode() in cmdline:  # a stale pid file may name a reused pid: never signal another program
                daemons[name] = pid
        if "slurmctld" in daemons and _alive(daemons["slurmctld"]):
            try:
                self._run("scancel", "--user", str(os.getuid()), check=False, timeout=10)
                end = time.monotonic() + 15  # let cancelled jobs end (KillWait) before slurmd goes
                while time.monotonic() < end and any(st in ("RUNNING", "COMPLETING", "PENDING", "CONFIGURING")
                                                     for _, st in self.squeue()):
                    time.sleep(0.2)
            except subprocess.TimeoutExpired:
                pass
        pids = []
        for name, pid in daemons.items():
            try:
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
            except OSError:
                pass
            self._pidfile(name).unlink(missing_ok=True)
        deadline = time.monotonic() + 15
        for pid in pids:
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        for pid in self._stepds():  # job step daemons outliving slurmd (a job still ending): only ours
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def _stepds(self) -> list[int]:
        """slurmstepd processes of this cluster (their working directory is inside ``root``)."""
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (entry / "comm").read_text().strip() != "slurmstepd":
                    continue
                cwd = os.readlink(entry / "cwd").removesuffix(" (deleted)")
            except OSError:
                continue
            if cwd == str(self.root) or cwd.startswith(str(self.root) + os.sep):
                out.append(int(entry.name))
        return out

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------------------------------- queries

    def squeue(self, job_id: str | None = None) -> list[tuple[str, str]]:
        """``(job id, state)`` of every job this controller remembers (array tasks one per line)."""
        cmd = ["squeue", "-h", "-r", "--states=all", "-o", "%i %T"]
        if job_id is not None:
            cmd += ["-j", str(job_id)]
        r = self._run(*cmd, check=False)
        return [tuple(line.split()[:2]) for line in r.stdout.splitlines() if line.strip()]

    def scontrol(self, *args: str) -> str:
        return self._run("scontrol", *args).stdout


def _fixture():
    import pytest

    @pytest.fixture(scope="session")
    def slurm_cluster(tmp_path_factory):
        """A running one-node SLURM for the session, with ``SLURM_CONF`` set; fails (does not skip) without it."""
        missing = missing_programs()
        if missing:
            pytest.fail(f"SLURM tests need a local SLURM but {', '.join(missing)} are missing; {INSTALL_HINT}",
                        pytrace=False)
        # A short root: slurmd's and munged's socket paths must stay under the 108-byte limit.
        root = Path(tmp_path_factory.mktemp("slurm"))
        cluster = SlurmCluster(root)
        try:
            cluster.start()
        except SlurmClusterError as e:
            pytest.fail(str(e), pytrace=False)
        old = os.environ.get("SLURM_CONF")
        os.environ.update(cluster.env)
        try:
            yield cluster
        finally:
            cluster.stop()
            if old is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old

    return slurm_cluster


try:
    slurm_cluster = _fixture()
except ImportError:  # used as a script without pytest
    pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python tests/slurm_cluster.py start|stop DIR", file=sys.stderr)
        return 2
    cluster = SlurmCluster(argv[1])
    if argv[0] == "stop":
        cluster.stop()
        return 0
    try:
        cluster.start()
    except SlurmClusterError as e:
        print(f"slurm_cluster: error: {e}", file=sys.stderr)
        return 1
    print(f"export SLURM_CONF={cluster.conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
