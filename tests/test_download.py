"""adasched.download.fetch against a local HTTP server on 127.0.0.1 (no network needed).

The server speaks HTTP/1.1 with Range requests, and can be told to cut the first transfer after
half its bytes, to ignore Range, or to change a file, so that resume, retry, hash verification and
the lock file are checked end to end.
"""

import hashlib
import http.server
import json
import logging
import re
import socket
import sys
import threading
import types

import pytest

from adasched.download import fetch, lock_entry, read_lock, record_hash
from adasched.errors import AdaschedError, DownloadError

PAYLOAD = bytes(range(256)) * 1024 + b"tail"  # 256 KiB + 4 B, not a multiple of the chunk size
OTHER = b"a different file" * 1000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep the test output quiet
        pass

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        data = srv.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        if rng and srv.ranges:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.interrupts > 0:
            # Promise the whole body, send half, and drop the connection.
            srv.interrupts -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files = {"/model.pkl": PAYLOAD}
    srv.requests = []
    srv.ranges = True
    srv.interrupts = 0
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs=dict(poll_interval=0.02), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


FAST = dict(timeout=5, backoff=0.0)


def test_plain_download_verifies_pinned_hash_and_logs(server, tmp_path, caplog):
    dest = tmp_path / "models" / "model.pkl"
    with caplog.at_level(logging.INFO, logger="adasched.download"):
        out = fetch(server.base + "/model.pkl", dest, sha256=sha(PAYLOAD).upper(), **FAST)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.pkl"]  # no .part, no lock
    assert "downloading" in caplog.text and sha(PAYLOAD) in caplog.text
    # A second call verifies the file in place without any request.
    fetch(server.base + "/model.pkl", dest, sha256=sha(PAYLOAD), **FAST)
    assert len(server.requests) == 1


def test_hash_mismatch_removes_file_and_names_url_expected_actual(server, tmp_path):
    dest = tmp_path / "model.pkl"
    wrong = "0" * 64
    url = server.base + "/model.pkl"
    with pytest.raises(DownloadError) as e:
        fetch(url, dest, sha256=wrong, **FAST)
    msg = str(e.value)
    assert url in msg and wrong in msg and sha(PAYLOAD) in msg
    assert list(tmp_path.iterdir()) == []


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    server.interrupts = 1
    dest = tmp_path / "model.pkl"
    fetch(server.base + "/model.pkl", dest, sha256=sha(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [None, f"bytes={len(PAYLOAD) // 2}-"]
    assert not (tmp_path / "model.pkl.part").exists()


def test_interrupted_transfer_never_leaves_truncated_dest_and_resumes_later(server, tmp_path):
    server.interrupts = 1
    dest = tmp_path / "model.pkl"
    url = server.base + "/model.pkl"
    with pytest.raises(DownloadError, match="ended after"):
        fetch(url, dest, retries=0, **FAST)  # unpinned, no lock: only the length can tell
    assert not dest.exists()
    part = tmp_path / "model.pkl.part"
    assert part.stat().st_size == len(PAYLOAD) // 2
    fetch(url, dest, sha256=sha(PAYLOAD), retries=0, **FAST)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests[-1][1] == f"bytes={len(PAYLOAD) // 2}-"


def test_interrupted_transfer_without_range_support_starts_over(server, tmp_path):
    server.interrupts = 1
    server.ranges = False
    dest = tmp_path / "model.pkl"
    fetch(server.base + "/model.pkl", dest, sha256=sha(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 2


def test_stale_complete_part_is_refetched(server, tmp_path):
    (tmp_path / "model.pkl.part").write_bytes(OTHER + PAYLOAD)  # longer than the file: HTTP 416
    dest = tmp_path / "model.pkl"
    fetch(server.base + "/model.pkl", dest, sha256=sha(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD


def test_offline_gives_one_clear_error_naming_url_and_manual_path(tmp_path):
    with socket.socket() as s:  # a port that nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/edm.pkl"
    dest = tmp_path / "models" / "edm.pkl"
    with pytest.raises(DownloadError) as e:
        fetch(url, dest, retries=2, **FAST)
    msg = str(e.value)
    assert url in msg and str(dest) in msg and "by hand" in msg and "3 attempt" in msg
    assert "Connection" in msg
    assert isinstance(e.value, AdaschedError) and e.value.__cause__ is None
    assert not dest.exists()


def test_http_404_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.base + "/missing.pkl", tmp_path / "x.pkl", retries=3, **FAST)
    assert len(server.requests) == 1


def test_lock_file_records_first_download_and_refuses_a_changed_file(server, tmp_path):
    lock = tmp_path / "adasched-lock.json"
    url = server.base + "/model.pkl"
    dest = tmp_path / "models" / "model.pkl"
    fetch(url, dest, lockfile=lock, **FAST)
    assert lock_entry(lock, url) == sha(PAYLOAD)
    assert json.loads(lock.read_text())["files"][url]["size"] == len(PAYLOAD)

    # Later uses verify the file in place ...
    fetch(url, dest, lockfile=lock, **FAST)
    dest.write_bytes(OTHER)
    with pytest.raises(DownloadError, match=sha(PAYLOAD)):
        fetch(url, dest, lockfile=lock, **FAST)

    # ... and a fresh download of a file that changed on the server is refused.
    dest.unlink()
    server.files["/model.pkl"] = OTHER
    with pytest.raises(DownloadError) as e:
        fetch(url, dest, lockfile=lock, **FAST)
    msg = str(e.value)
    assert url in msg and sha(PAYLOAD) in msg and sha(OTHER) in msg and str(lock) in msg
    assert not dest.exists() and not (dest.parent / "model.pkl.part").exists()
    assert lock_entry(lock, url) == sha(PAYLOAD)  # the record is kept


def test_file_placed_by_hand_is_recorded_then_checked(server, tmp_path):
    lock = tmp_path / "lock.json"
    url = server.base + "/model.pkl"
    dest = tmp_path / "model.pkl"
    dest.write_bytes(PAYLOAD)
    fetch(url, dest, lockfile=lock, **FAST)
    assert server.requests == [] and lock_entry(lock, url) == sha(PAYLOAD)
    with pytest.raises(DownloadError, match="delete it"):
        fetch(url, dest, sha256=sha(OTHER), **FAST)


def test_file_urls(tmp_path):
    src = tmp_path / "src dir" / "stats.npz"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    lock = tmp_path / "lock.json"
    dest = fetch(src.as_uri(), tmp_path / "out" / "stats.npz", lockfile=lock)
    assert dest.read_bytes() == PAYLOAD and read_lock(lock)[src.as_uri()]["sha256"] == sha(PAYLOAD)
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        fetch(src.as_uri(), tmp_path / "other.npz", sha256=sha(OTHER))
    assert not (tmp_path / "other.npz").exists()
    with pytest.raises(DownloadError, match="does not exist"):
        fetch((tmp_path / "nope.npz").as_uri(), tmp_path / "nope.npz")


def test_hf_urls_go_through_huggingface_hub(tmp_path, monkeypatch):
    cached = tmp_path / "hub-cache.bin"
    cached.write_bytes(PAYLOAD)
    calls = []

    def hf_hub_download(**kw):
        calls.append(kw)
        return str(cached)

    monkeypatch.setitem(sys.modules, "huggingface_hub",
                        types.SimpleNamespace(hf_hub_download=hf_hub_download))
    dest = fetch("hf://google/ddpm-cifar10-32@abc123/unet/model.bin", tmp_path / "m.bin",
                 sha256=sha(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert calls == [dict(repo_id="google/ddpm-cifar10-32", filename="unet/model.bin",
                          revision="abc123", repo_type="model")]
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
    with pytest.raises(DownloadError, match="pip install huggingface_hub"):
        fetch("hf://google/ddpm-cifar10-32/model.bin", tmp_path / "n.bin")


def test_bad_inputs(tmp_path):
    with pytest.raises(DownloadError, match="unsupported URL scheme 'ftp'.*https, http, file, hf"):
        fetch("ftp://example.org/x", tmp_path / "x")
    with pytest.raises(DownloadError, match="64 hex digits"):
        fetch("file:///x", tmp_path / "x", sha256="abc")
    bad = tmp_path / "lock.json"
    bad.write_text("[]")
    with pytest.raises(DownloadError, match="not an adasched lock file"):
        fetch("file:///x", tmp_path / "x", lockfile=bad)
    record_hash(tmp_path / "ok.json", "k", sha(b"x"))
    assert lock_entry(tmp_path / "ok.json", "k") == sha(b"x")
