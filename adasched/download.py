"""Fetching workflow resources (checkpoints, FID statistics) with resume, retries and hash checks.

:func:`fetch` downloads ``url`` to ``dest``:

* the bytes go to ``dest + ".part"``; an interrupted HTTP(S) transfer is resumed with a ``Range``
  request when the server supports it (otherwise it starts over), and retried with exponential
  backoff;
* the finished file is hashed and checked against the pinned ``sha256``, or, when none is pinned,
  against the hash recorded in the lock file at the first download (trust on first use);
  only a verified file is moved onto ``dest`` (:func:`os.replace`), so ``dest`` is never a truncated
  or unverified download;
* an existing ``dest`` is checked the same way on every use, so a file placed by hand (on a machine
  with no network) is accepted when it matches, and recorded in the lock file when nothing is pinned.

Supported URLs: ``https://``, ``http://``, ``file://`` and ``hf://[datasets/]OWNER/REPO[@REV]/PATH``
(Hugging Face Hub, through the optional ``huggingface_hub`` package).

The lock file is JSON, ``{"format": "adasched-lock/1", "files": {URL: {"sha256": HEX, "size": N}}}``;
commit it beside the config to make later runs check the same bytes.  A record is bound to its URL:
it verifies the download of that URL and nothing else (:mod:`adasched.edm` trusts a pickle through
a record only when the pickle is the cached download of the record's URL).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from adasched import __version__
from adasched.errors import DownloadError
from adasched.io import atomic_path, exclusive_lock, sha256_file

__all__ = ["fetch", "read_lock", "lock_entry", "record_hash", "LOCK_FORMAT"]

logger = logging.getLogger(__name__)

LOCK_FORMAT = "adasched-lock/1"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
_PROGRESS_SECONDS = 5.0


# ----------------------------------------------------------------------------------------------
# Lock file


def _check_hex(sha256: str | None, what: str) -> str | None:
    if sha256 is None:
        return None
    value = str(sha256).strip().lower()
    if not _HEX64.match(value):
        raise DownloadError(f"{what} must be 64 hex digits (a sha256), found {sha256!r}")
    return value


def read_lock(lockfile: str | os.PathLike | None) -> dict[str, dict]:
    """The entries of a lock file, ``{url: {"sha256": hex, ...}}``; a missing file has none."""
    if lockfile is None:
        return {}
    path = Path(lockfile)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        raise DownloadError(f"cannot read lock file {path}: {e}") from None
    if not isinstance(data, dict) or data.get("format") != LOCK_FORMAT \
            or not isinstance(data.get("files"), dict):
        raise DownloadError(f"lock file {path} is not an adasched lock file: expected "
                            f'{{"format": "{LOCK_FORMAT}", "files": {{...}}}}')
    return data["files"]


def lock_entry(lockfile: str | os.PathLike | None, key: str) -> str | None:
    """The sha256 recorded for ``key`` (a URL) in the lock file, or ``None``."""
    entry = read_lock(lockfile).get(key)
    if entry is None:
        return None
    return _check_hex(entry.get("sha256"), f"sha256 recorded for {key} in {lockfile}")


def record_hash(lockfile: str | os.PathLike, key: str, sha256: str, **info) -> None:
    """Record ``sha256`` for ``key`` in the lock file (read-modify-write under a file lock)."""
    sha256 = _check_hex(sha256, "sha256")
    path = Path(lockfile)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path.parent):  # the folder, not a sidecar: no second file beside a committed lock file
        files = dict(read_lock(path))
        files[key] = {"sha256": sha256, **info}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"format": LOCK_FORMAT, "files": dict(sorted(files.items()))},
                                      indent=2) + "\n")
    logger.info("recorded sha256 %s for %s in %s", sha256, key, path)


# ----------------------------------------------------------------------------------------------
# Transports: each fills ``part`` with the complete file or raises


class _Transient(Exception):
    """A failure worth retrying (connection lost, short read, server error)."""


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class _Progress:
    def __init__(self, url: str, total: int | None, start: int):
        self.url, self.total, self.done = url, total, start
        self.last = time.monotonic()
        self.last_frac = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        frac = self.done / self.total if self.total else 0.0
        if now - self.last >= _PROGRESS_SECONDS or frac - self.last_frac >= 0.1:
            self.last, self.last_frac = now, frac
            if self.total:
                logger.info("%s: %3.0f%% (%s of %s)", self.url, 100 * frac, _mib(self.done),
                            _mib(self.total))
            else:
                logger.info("%s: %s", self.url, _mib(self.done))


_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def _http_attempt(url: str, part: Path, timeout: float) -> None:
    """One HTTP(S) request: resume ``part`` with ``Range`` if it has bytes, else start over."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"adasched/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            # The partial file is as long as, or longer than, the file: start over.
            logger.info("%s: server refused to resume at byte %d; starting over", url, offset)
            part.unlink(missing_ok=True)
            raise _Transient(f"HTTP 416 at resume offset {offset}") from None
        if e.code >= 500 or e.code in (408, 429):
            raise _Transient(f"HTTP {e.code} {e.reason}") from None
        raise DownloadError(f"cannot download {url}: the server answered HTTP {e.code} {e.reason}") \
            from None
    with resp:
        total: int | None
        if offset and resp.status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if m is None or int(m.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise _Transient(f"unexpected Content-Range {resp.headers.get('Content-Range')!r} "
                                 f"for a resume at byte {offset}")
            total = None if m.group(3) == "*" else int(m.group(3))
            mode = "ab"
            logger.info("resuming %s at %s", url, _mib(offset))
        else:
            if offset:
                logger.info("%s: server does not support resuming; starting over", url)
            offset, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            total = int(length) if length is not None and length.isdigit() else None
            logger.info("downloading %s -> %s (%s)", url, part.name[:-5],
                        _mib(total) if total is not None else "size unknown")
        progress = _Progress(url, total, offset)
        with open(part, mode) as f:
            try:
                while block := resp.read(_CHUNK):
                    f.write(block)
                    progress.update(len(block))
            except (http.client.HTTPException, OSError) as e:
                raise _Transient(f"transfer interrupted after {_mib(progress.done)}: "
                                 f"{type(e).__name__}: {e}") from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Transient(f"transfer ended after {size} of {total} bytes")


def _download_http(url: str, part: Path, retries: int, timeout: float, backoff: float,
                   dest: Path) -> None:
    last = None
    for attempt in range(retries + 1):
        if attempt:
            delay = backoff * 2 ** (attempt - 1)
            logger.warning("%s: %s; retry %d of %d in %.1f s", url, last, attempt, retries, delay)
            time.sleep(delay)
        try:
            _http_attempt(url, part, timeout)
            return
        except DownloadError:  # final answers (HTTP 404, ...); DownloadError is an OSError
            raise
        except _Transient as e:
            last = str(e)
        except urllib.error.URLError as e:
            reason = e.reason
            last = f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) \
                else str(reason)
            if isinstance(reason, socket.gaierror):  # no name resolution: offline, do not retry
                break
        except (http.client.HTTPException, OSError) as e:  # timeouts, resets
            last = f"{type(e).__name__}: {e}"
    raise DownloadError(
        f"cannot download {url} ({last}) after {attempt + 1} attempt(s). On a machine without "
        f"network, download it elsewhere and put it at {dest} by hand; it is then checked against "
        f"the pinned or recorded sha256 on use.")


def _copy_file(url: str, part: Path) -> None:
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise DownloadError(f"file:// URL {url} names host {parsed.netloc!r}; expected "
                            f"file:///absolute/path")
    src = Path(urllib.request.url2pathname(parsed.path))
    try:
        with open(src, "rb") as fin, open(part, "wb") as fout:
            shutil.copyfileobj(fin, fout, _CHUNK)
    except FileNotFoundError:
        raise DownloadError(f"cannot fetch {url}: {src} does not exist") from None
    except OSError as e:
        raise DownloadError(f"cannot fetch {url}: {e.strerror}") from None


_HF = re.compile(r"^hf://(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?"
                 r"/(?P<path>.+)$")


def _download_hf(url: str, part: Path) -> None:
    """``hf://[datasets/]OWNER/REPO[@REVISION]/PATH`` through ``huggingface_hub.hf_hub_download``."""
    m = _HF.match(url)
    if m is None:
        raise DownloadError(f"malformed Hugging Face URL {url}; expected "
                            f"hf://[datasets/]OWNER/REPO[@REVISION]/PATH")
    try:
        import huggingface_hub  # optional: only hf:// URLs need it
    except ImportError:
        raise DownloadError(f"fetching {url} needs the optional package huggingface_hub "
                            f"(pip install huggingface_hub)") from None
    repo_type = {"datasets": "dataset", "spaces": "space"}.get(m["type"] or "", "model")
    if m["rev"] is None:
        logger.warning("%s names no revision; pin one (hf://OWNER/REPO@REVISION/PATH) to make the "
                       "download reproducible", url)
    try:
        cached = huggingface_hub.hf_hub_download(repo_id=m["repo"], filename=m["path"],
                                                 revision=m["rev"], repo_type=repo_type)
    except Exception as e:  # the hub raises many types; all mean "not fetched"
        raise DownloadError(f"cannot download {url}: {type(e).__name__}: {e}") from None
    shutil.copyfile(cached, part)


# ----------------------------------------------------------------------------------------------


def fetch(url: str, dest: str | os.PathLike, sha256: str | None = None,
          lockfile: str | os.PathLike | None = None, retries: int = 3, timeout: float = 60.0,
          *, backoff: float = 1.0) -> Path:
    """Download ``url`` to ``dest``, verified; return ``dest`` as a :class:`~pathlib.Path`.

    Parameters
    ----------
    url:
        ``https://``, ``http://``, ``file://`` or ``hf://[datasets/]OWNER/REPO[@REV]/PATH``.
    dest:
        Where the verified file goes.  An existing ``dest`` is verified, not downloaded again.
    sha256:
        Pinned hex sha256.  When ``None``, the hash recorded for ``url`` in ``lockfile`` is used;
        when neither exists, the hash is recorded there (trust on first download).
    lockfile:
        JSON lock file (see the module docstring); ``None`` records and checks nothing beyond
        ``sha256``.
    retries:
        How many times a failed HTTP transfer is retried after the first attempt; each retry
        resumes the partial file ``dest + ".part"`` where the server allows it.
    timeout:
        Seconds without progress on the connection before an attempt fails.
    backoff:
        Delay before the first retry, doubled for each further one.

    Raises
    ------
    DownloadError
        The transfer failed after all retries (the message names ``url`` and ``dest`` for a copy by
        hand), or the file's hash differs from the pinned or recorded one (the file is removed and
        the message names ``url``, the expected and the actual hash).
    """
    dest = Path(dest)
    pinned = _check_hex(sha256, f"sha256 for {url}")
    recorded = lock_entry(lockfile, url)
    if pinned and recorded and pinned != recorded:
        logger.warning("%s: pinned sha256 %s differs from %s recorded in %s; the pinned one wins",
                       url, pinned, recorded, lockfile)
    expected = pinned or recorded
    source = "pinned" if pinned else f"recorded in {lockfile}"

    if dest.exists():
        actual = sha256_file(dest)
        if expected and actual != expected:
            raise DownloadError(f"{dest} (for {url}) has sha256 {actual}, expected {expected} "
                                f"({source}); delete it to download it again")
        _remember(lockfile, url, actual, dest.stat().st_size, recorded, pinned)
        logger.debug("%s is present and verified", dest)
        return dest

    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in ("http", "https", "file", "hf"):
        raise DownloadError(f"cannot fetch {url}: unsupported URL scheme {scheme!r}; expected one "
                            f"of https, http, file, hf")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    lock = dest.with_name(dest.name + ".part.lock")
    with exclusive_lock(lock, busy=DownloadError(f"another process is downloading to the same file (it holds "
                                                 f"{lock}); wait for it to finish")):
        if scheme in ("http", "https"):
            _download_http(url, part, max(int(retries), 0), timeout, backoff, dest)
        elif scheme == "file":
            _copy_file(url, part)
        else:
            _download_hf(url, part)
        actual = sha256_file(part)
        if expected and actual != expected:
            part.unlink(missing_ok=True)
            raise DownloadError(f"sha256 mismatch for {url}: expected {expected} ({source}), "
                                f"got {actual}; the download was removed")
        _remember(lockfile, url, actual, part.stat().st_size, recorded, pinned)
        os.replace(part, dest)
    logger.info("fetched %s -> %s (sha256 %s)", url, dest, actual)
    return dest


def _remember(lockfile, url: str, actual: str, size: int, recorded: str | None,
              pinned: str | None) -> None:
    if lockfile is None:
        if not pinned:
            logger.warning("%s is not pinned and no lock file is given: its sha256 %s is not "
                           "checked", url, actual)
        return
    if recorded != actual:
        if not pinned:
            logger.warning("%s is not pinned: recording its sha256 %s at first use (trust on "
                           "first use)", url, actual)
        record_hash(lockfile, url, actual, size=size)

