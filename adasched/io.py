"""Atomic file output, provenance, and where log records go.

Every file adasched writes goes to a temporary name in the target folder and is moved into place with
:func:`os.replace`, so a crash never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["atomic_path", "check_output", "write_json", "read_json", "save_npz", "npz_header", "provenance",
           "sha256_file", "log_records_to"]


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it before Python 3.13; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``, else delete it."""
    from adasched.errors import AdaschedError

    path = Path(path)
    check_output(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix + ".tmp",
                                   dir=path.parent)
    except OSError as e:
        raise AdaschedError(f"cannot write {path}: {e.strerror}") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the mode a plain open() would (0666 less the umask),
        # so results are readable by whoever may read the folder (a shared cluster filesystem).
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_output(path: str | os.PathLike) -> None:
    """Refuse an output path that cannot be written -- a directory, or a name under a file -- with one
    :class:`~adasched.errors.AdaschedError` line; the CLI checks its outputs so before any work."""
    from adasched.errors import AdaschedError

    path = Path(path)
    if path.is_dir():
        raise AdaschedError(f"output {path} is a directory; give a file name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise AdaschedError(f"output {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise AdaschedError(f"output {path}: no permission to write in {folder}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read a JSON file; a missing or malformed file is a :class:`~adasched.errors.AdaschedError`."""
    from adasched.errors import AdaschedError

    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise AdaschedError(f"{what} not found: {path}") from None
    except OSError as e:
        raise AdaschedError(f"cannot read {what} {path}: {e.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AdaschedError(f"{what} {path} is not valid JSON: {e.msg} at line {e.lineno}") from None


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """``numpy.savez`` to ``path``, atomically."""
    with atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez(tmp, **arrays)


def npz_header(npz: np.lib.npyio.NpzFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of array ``key`` of an open NPZ, read from its header without loading the array
    (so that its size can be checked first).  A malformed header raises ``ValueError``, as ``np.load`` does."""
    name = key + ".npy" if key + ".npy" in npz.zip.namelist() else key
    with npz.zip.open(name) as fp:
        version = np.lib.format.read_magic(fp)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fp)
    return tuple(int(v) for v in shape), np.dtype(dtype)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def provenance(**extra: Any) -> dict:
    """What produced an output: package versions and platform, plus ``extra`` (config slice, hashes)."""
    import torch

    from adasched import __version__

    out = {
        "adasched": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    out.update(extra)
    return out


_CAPTURES = {"active": 0, "saved": None}
_CAPTURE_LOCK = threading.Lock()


@contextlib.contextmanager
def log_records_to(stream) -> Iterator[None]:
    """Send the ``adasched`` loggers' records (INFO and up) logged BY THIS THREAD to ``stream`` for the
    duration, as ``adasched: MSG``.

    Thread-safe: jobs running side by side in threads of one process (the workflow's cell rules under
    Snakemake) each get their own records only.  While any capture is active the ``adasched`` logger is at
    INFO and does not propagate to the root logger (whose handlers would print the records a second time).
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("adasched: %(message)s"))
    ident = threading.get_ident()
    handler.addFilter(lambda record: record.thread == ident)
    logger = logging.getLogger("adasched")
    with _CAPTURE_LOCK:
        if _CAPTURES["active"] == 0:
            _CAPTURES["saved"] = (logger.level, logger.propagate)
            logger.setLevel(logging.INFO)
            logger.propagate = False
        _CAPTURES["active"] += 1
        logger.addHandler(handler)
    try:
        yield
    finally:
        with _CAPTURE_LOCK:
            logger.removeHandler(handler)
            _CAPTURES["active"] -= 1
            if _CAPTURES["active"] == 0:
                logger.level, logger.propagate = _CAPTURES["saved"]
