"""adasched.io: atomic outputs (failed, interrupted, killed), their file mode, file locks, where log records go."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import signal
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from adasched.errors import AdaschedError, DownloadError
from adasched.io import atomic_path, exclusive_lock, log_records_to, save_npz, write_json
from child_process import full_disk, python, run


def test_atomic_path_leaves_nothing_when_the_write_fails(tmp_path):
    out = tmp_path / "sub" / "x.json"
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("died mid-write")
    assert list((tmp_path / "sub").iterdir()) == []
    write_json(out, {"a": 1})
    assert out.read_text() == '{\n  "a": 1\n}\n' and [p.name for p in (tmp_path / "sub").iterdir()] == ["x.json"]


def test_outputs_get_the_mode_of_a_plain_open(tmp_path):
    """mkstemp's private 0600 is not kept: results on a shared filesystem are readable as the umask allows."""
    write_json(tmp_path / "x.json", {})
    (tmp_path / "plain").write_text("")
    mode = stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    assert mode & stat.S_IRGRP or os.umask(os.umask(0)) & 0o040  # group-readable unless the umask forbids it


def test_log_records_to_a_stream_for_the_duration():
    stream = io.StringIO()
    logger = logging.getLogger("adasched.some_module")
    with log_records_to(stream):
        logger.info("inside")
    logger.info("outside")
    assert stream.getvalue() == "adasched: inside\n"


def test_log_records_to_keeps_threads_apart():
    """Jobs in threads of one process (cell rules under Snakemake) each log only their own records."""
    import threading

    logger = logging.getLogger("adasched.some_module")
    streams = [io.StringIO(), io.StringIO()]
    inside = threading.Barrier(2)

    def job(k):
        with log_records_to(streams[k]):
            inside.wait()
            logger.info("job %d", k)
            inside.wait()

    threads = [threading.Thread(target=job, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [s.getvalue() for s in streams] == ["adasched: job 0\n", "adasched: job 1\n"]
    assert logging.getLogger("adasched").propagate and logging.getLogger("adasched").level == logging.NOTSET


# ------------------------------------------------------------------------- failed and interrupted writes


@pytest.mark.parametrize("name, call", [("x.json", "write_json(out, {'a': list(range(100_000))})"),
                                        ("x.npz", "save_npz(out, samples=np.zeros(100_000, np.float32))")])
def test_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, name, call):
    out = tmp_path / name
    write_json(out, {"old": 1}) if name.endswith(".json") else save_npz(out, old=np.ones(3))
    before = out.read_bytes()
    r = run(full_disk(4096) + f"""
import numpy as np
from adasched.errors import AdaschedError
from adasched.io import save_npz, write_json
out = {str(out)!r}
try:
    {call}
except AdaschedError as e:
    print(e)
    raise SystemExit(3)
""")
    assert r.returncode == 3 and r.stderr == ""  # no traceback, nothing chained
    assert r.stdout == f"cannot write {out}: [Errno {errno.EFBIG}] {os.strerror(errno.EFBIG)}\n"
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [name]


SLOW_WRITE = """
import signal, sys, time
from adasched.errors import Interrupted
from adasched.io import atomic_path
# Ctrl-C as in a terminal: a process started in the background by a shell (as CI may start the tests) inherits
# SIGINT ignored, and atomic_path rightly keeps an ignored signal ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    with atomic_path({out!r}) as tmp:
        tmp.write_text("half")
        print(tmp, flush=True)
        time.sleep(600)  # a slow write, until the signal comes
except Interrupted as e:
    print(e)
    sys.exit(3)
except KeyboardInterrupt:
    print("KeyboardInterrupt")
    sys.exit(4)
"""


@pytest.mark.parametrize("sig, status, line", [(signal.SIGTERM, 3, "interrupted by SIGTERM"),
                                               (signal.SIGINT, 4, "KeyboardInterrupt")])
def test_a_signal_mid_write_removes_the_temporary_file(tmp_path, sig, status, line):
    out = tmp_path / "x.json"
    write_json(out, {"old": 1})
    before = out.read_bytes()
    p = python(SLOW_WRITE.format(out=str(out)))
    tmp = Path(p.stdout.readline().strip())
    assert tmp.exists() and tmp.parent == tmp_path and f"-{p.pid}-" in tmp.name
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=300)
    assert (p.returncode, stdout, stderr) == (status, line + "\n", "")
    assert not tmp.exists() and out.read_bytes() == before and [q.name for q in tmp_path.iterdir()] == ["x.json"]


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    """SIGKILL runs no handler: the next write to the same output removes what the dead process left, and only
    that (not a running process's, nor one from another host, whose PIDs mean nothing here)."""
    out = tmp_path / "x.json"
    p = python(SLOW_WRITE.format(out=str(out)))
    tmp = Path(p.stdout.readline().strip())
    p.kill()
    p.communicate(timeout=300)
    assert tmp.exists()
    running = tmp.with_name(tmp.name.replace(f"-{p.pid}-", f"-{os.getpid()}-"))
    elsewhere = tmp.with_name(tmp.name.replace(".x.json.", ".x.json.otherhost", 1))
    running.write_text("in flight")
    elsewhere.write_text("in flight")
    write_json(out, {"new": 1})
    assert not tmp.exists() and running.exists() and elsewhere.exists() and json.loads(out.read_text()) == {"new": 1}


def test_the_signal_handlers_chain_and_are_restored(tmp_path):
    """During a write SIGTERM runs the handler that was there before: the temporary file goes if that ends the
    write, and stays for the write to finish if it returns (as submitit's SIGTERM handler does)."""
    seen = []

    def handler(signum, frame):
        seen.append(signum)
        if len(seen) == 1:
            raise Handled(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with pytest.raises(Handled):
            with atomic_path(tmp_path / "x.json") as tmp:
                tmp.write_text("half")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(60)  # not reached: the handler runs first
        assert list(tmp_path.iterdir()) == [] and signal.getsignal(signal.SIGTERM) is handler
        with atomic_path(tmp_path / "x.json") as tmp:
            os.kill(os.getpid(), signal.SIGTERM)
            tmp.write_text("whole")
        assert (tmp_path / "x.json").read_text() == "whole" and seen == [signal.SIGTERM] * 2
    finally:
        signal.signal(signal.SIGTERM, previous)


class Handled(Exception):
    pass


def test_exclusive_lock(tmp_path):
    """flock conflicts between two opens of a file even in one process: a busy lock raises the given error."""
    lock = tmp_path / "f.lock"
    with exclusive_lock(lock):
        assert lock.exists()
        with pytest.raises(DownloadError, match="someone writes f"):  # an OSError, raised as it is
            with exclusive_lock(lock, busy=DownloadError("someone writes f")):
                pass
    assert not lock.exists()  # removed on release
    with exclusive_lock(tmp_path), pytest.raises(AdaschedError, match="busy folder"):  # a folder is locked itself
        with exclusive_lock(tmp_path, busy=AdaschedError("busy folder")):
            pass
