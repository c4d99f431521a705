"""adasched.io: atomic outputs, their file mode, where log records go."""

from __future__ import annotations

import io
import logging
import os
import stat

import pytest

from adasched.io import atomic_path, log_records_to, write_json


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
