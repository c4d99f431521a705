"""Python child processes, for what only another process shows: signals, a full disk, concurrent writers."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def full_disk(limit: int) -> str:
    """Code that makes every later write past byte ``limit`` of a file fail as on a full disk, with EFBIG ("File
    too large") where a full disk gives ENOSPC: ``RLIMIT_FSIZE`` with ``SIGXFSZ`` ignored, which any user may
    set on any Linux (no tmpfs, no root)."""
    return ("import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n")


def python(code: str, **popen) -> subprocess.Popen:
    """Start ``python -c code`` (dedented) with this checkout first on the path; text pipes for both outputs."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=dict(os.environ, PYTHONPATH=path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def run(code: str) -> subprocess.CompletedProcess:
    """Run ``python -c code`` to the end (at most 5 minutes, against a hang); its exit status and outputs."""
    p = python(code)
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)
