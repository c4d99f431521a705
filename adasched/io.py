"""Atomic file output, file locks, provenance, and where log records go.

Every file adasched writes goes to a temporary name in the target folder and is moved into place with
:func:`os.replace` (:func:`atomic_path`), so a crash never leaves a half-written output behind:

* a write that fails (full disk, quota, permission) is one :class:`~adasched.errors.AdaschedError` line naming
  the output and the errno; the temporary file is removed and the previous output stays as it was;
* SIGTERM and SIGINT during a write remove the temporary files in flight (SIGTERM then ends the write with
  :class:`~adasched.errors.Interrupted`, so the CLI prints one line and exits 1; SIGINT goes on to the
  previous handler, by default a ``KeyboardInterrupt``).  The handlers are installed for the duration of the
  write, from the main thread only;
* a temporary file is named ``.NAME.HOST-PID-RANDOM.SUFFIX``: one that a killed run (SIGKILL) left behind is
  recognised by its name, this host and a PID that no longer runs, and removed by the next write to ``NAME``.

:func:`exclusive_lock` is the one way to serialise writers across processes (``fcntl.flock``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import platform
import re
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from adasched import __version__
from adasched.errors import AdaschedError, Interrupted

__all__ = ["atomic_path", "check_output", "exclusive_lock", "write_json", "read_json", "save_npz", "npz_header",
           "provenance", "sha256_file", "log_records_to", "logging_to"]

log = logging.getLogger(__name__)


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it before Python 3.13; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


#: This host in temporary file names (``.NAME.HOST-PID-RANDOM.SUFFIX``), reduced to characters safe in a name.
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
#: Temporary files of writes in flight in this process (any thread); the signal handler removes them.
_LIVE: set[Path] = set()
_LIVE_LOCK = threading.Lock()
#: While a write runs in the main thread: how many are nested, and the handlers ours replaced.
_SIGNALS = {"depth": 0, "previous": {}}
_CAUGHT = (signal.SIGTERM, signal.SIGINT)


def _remove_live() -> None:
    with _LIVE_LOCK:
        for tmp in _LIVE:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _on_signal(signum: int, frame) -> None:
    """Do what the replaced handler would have done, removing the temporary files in flight if that ends the
    write; SIG_DFL (or a handler installed outside Python) would end the process without a clean-up, so
    that becomes :class:`~adasched.errors.Interrupted`."""
    previous = _SIGNALS["previous"].get(signum, signal.SIG_DFL)
    if previous == signal.SIG_IGN:
        return
    if not callable(previous):
        _remove_live()
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}")
    try:
        previous(signum, frame)  # e.g. SIGINT's default_int_handler: KeyboardInterrupt
    except BaseException:
        _remove_live()
        raise


@contextlib.contextmanager
def _signals_clean_up() -> Iterator[None]:
    """Have SIGTERM and SIGINT remove the temporary files in flight while the block runs (main thread only:
    Python runs signal handlers there and nowhere else)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _SIGNALS["depth"] == 0:
        _SIGNALS["previous"] = {sig: signal.signal(sig, _on_signal) for sig in _CAUGHT}
    _SIGNALS["depth"] += 1
    try:
        yield
    finally:
        _SIGNALS["depth"] -= 1
        if _SIGNALS["depth"] == 0:
            for sig, previous in _SIGNALS["previous"].items():
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_stale(path: Path) -> None:
    """Remove the temporary files of earlier writes to ``path`` from this host whose process is gone."""
    ours = re.compile(rf"\.{re.escape(path.name)}\.{re.escape(_HOST)}-(\d+)-[a-z0-9_]{{8}}\..*")
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            m = ours.fullmatch(entry.name)
            if m and not _pid_runs(int(m.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    log.info("removed %s, left behind by process %s that no longer runs", entry.path, m.group(1))


def _cannot(what: str, path: Path, e: OSError) -> AdaschedError:
    return AdaschedError(f"cannot {what} {path}: " + (f"[Errno {e.errno}] {e.strerror}" if e.errno else str(e)))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``, else delete it.

    An ``OSError`` about the temporary file (or about no file in particular, as a full disk's from a writer
    that does not say which file) becomes one :class:`AdaschedError` line, ``cannot write PATH: [Errno N]
    ...``.  See the module docstring for signals and the temporary files of killed runs.
    """
    path = Path(path)
    check_output(path)
    with _signals_clean_up():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale(path)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}-",
                                       suffix=suffix or path.suffix + ".tmp", dir=path.parent)
        except OSError as e:
            raise _cannot("write", path, e) from None
        os.close(fd)
        tmp = Path(tmp)
        with _LIVE_LOCK:
            _LIVE.add(tmp)
        try:
            try:
                yield tmp
                # mkstemp makes the file private (0600); give it the mode a plain open() would (0666 less the
                # umask), so results are readable by whoever may read the folder (a shared cluster filesystem).
                os.chmod(tmp, 0o666 & ~_UMASK)
                os.replace(tmp, path)
            except OSError as e:
                if e.filename not in (None, str(tmp), str(path)):
                    raise
                raise _cannot("write", path, e) from None
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(tmp)
            tmp.unlink(missing_ok=True)


def check_output(path: str | os.PathLike) -> None:
    """Refuse an output path that cannot be written -- a directory, or a name under a file -- with one
    :class:`~adasched.errors.AdaschedError` line; the CLI checks its outputs so before any work."""
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


#: ``flock`` errors that mean the filesystem has no locks (Lustre mounted without ``flock``, some NFS setups).
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, busy: AdaschedError | None = None) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` for the block: a directory, or a sidecar lock file.

    A lock file is created if missing and removed on release (while still held: a process that opened the old
    one finds it gone and takes the new one).  While another process holds the lock, wait for it (with a log
    line), or with ``busy`` given raise that error at once.  A filesystem without locks gets a warning and no
    lock.  The kernel drops the lock of a killed process, so a stale lock file never blocks anyone.
    """
    path = Path(path)
    directory = path.is_dir()
    if not directory:
        path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_RDONLY if directory else os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise _cannot("lock", path, e) from None
        try:
            locked = _flock(fd, path, busy)
        except BaseException:
            os.close(fd)
            raise
        if directory or not locked or _same_file(fd, path):
            break
        os.close(fd)  # the holder before us removed this lock file: take the current one
    try:
        yield
    finally:
        if not directory:
            with contextlib.suppress(OSError):
                os.unlink(path)
        os.close(fd)  # releases the lock


def _flock(fd: int, path: Path, busy: AdaschedError | None) -> bool:
    """Lock ``fd`` exclusively, at once or (unless ``busy``) after waiting; ``False`` if the filesystem cannot."""
    for flags in (fcntl.LOCK_EX | fcntl.LOCK_NB, fcntl.LOCK_EX):
        try:
            fcntl.flock(fd, flags)
            return True
        except BlockingIOError:
            if busy is not None:
                raise busy from None
            log.info("waiting for %s: another process holds it", path)
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                raise _cannot("lock", path, e) from None
            log.warning("cannot lock %s, this filesystem has no file locks ([Errno %d] %s): going on unlocked",
                        path, e.errno, e.strerror)
            return False
    raise AssertionError("a blocking flock returned neither the lock nor an error")


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Read a JSON file; a missing or malformed file is a :class:`~adasched.errors.AdaschedError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AdaschedError(f"{what} not found: {path}") from None
    except OSError as e:
        raise AdaschedError(f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise AdaschedError(f"{what} {path} is not JSON: byte {e.start} is not UTF-8 text") from None
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
    # heavy (seconds to import): the base floor loads torch only where its version is recorded
    import torch

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


@contextlib.contextmanager
def logging_to(log_path: str | os.PathLike, append: bool = False) -> Iterator[Any]:
    """Send this thread's ``adasched`` log records (INFO and up) to ``log_path`` for a job's duration, and
    stderr too when the job has the process to itself (its main thread: a workflow script); a job running in
    a thread of the Snakemake process leaves the shared stderr alone.  Yields the open log file."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    own_process = threading.current_thread() is threading.main_thread()
    with open(log_path, "a" if append else "w") as f, log_records_to(f):
        with contextlib.redirect_stderr(f) if own_process else contextlib.nullcontext():
            yield f
