"""Progress of long stages (adasched.progress): one callback, a tqdm bar on a terminal, lines in logs.

The commands are run as users meet them: in a pseudo-terminal (stderr a TTY: a bar that advances) and with
stderr to a file (progress lines, no bar redraws).
"""

import fcntl
import io
import json
import os
import pickle
import pty
import re
import select
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest

from adasched.progress import Bar, Lines, for_stream

MIXTURE = {"weights": [0.3, 0.7], "means": [[-1.0, 0.0], [1.0, 0.5]], "variances": [[0.01, 0.1], [0.05, 0.02]]}


def test_lines_every_tenth_and_the_end():
    out = io.StringIO()
    p = Lines(out)
    for done in range(0, 101, 5):
        p("sample", done, 100)
    assert out.getvalue().splitlines() == [f"sample: {k}/100 ({k}%)" for k in range(0, 101, 10)]


def test_lines_of_unknown_totals_thin_out_and_tasks_are_separate():
    out = io.StringIO()
    p = Lines(out)
    for n in range(1, 10):
        p("polish", n, None)
    p("fit", 3, 3)
    assert out.getvalue().splitlines() == ["polish: 1", "polish: 2", "polish: 4", "polish: 8", "fit: 3/3 (100%)"]


def test_lines_pickle_without_their_stream_and_then_log(caplog):
    """A job carried to SLURM takes its Lines along; there they go through logging (the job's log)."""
    p = pickle.loads(pickle.dumps(Lines(io.StringIO())))
    with caplog.at_level("INFO", logger="adasched.progress"):
        p("probe", 1, 2)
    assert p.stream is None and caplog.messages == ["probe: 1/2 (50%)"]


def test_bar_redraws_in_place_and_closes_at_the_end():
    out = io.StringIO()
    bar = Bar(out)
    for done in range(1, 5):
        bar("train", done, 4)
    text = out.getvalue()
    assert "\r" in text and re.search(r"train: +25%", text) and re.search(r"train: +100%", text)
    assert bar._bar is None  # closed once done


def test_for_stream_picks_bar_only_on_a_terminal(tmp_path):
    assert isinstance(for_stream(io.StringIO()), Lines)
    with open(tmp_path / "log", "w") as f:
        assert isinstance(for_stream(f), Lines)
    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert isinstance(for_stream(tty), Bar)
    finally:
        os.close(master)
        os.close(slave)


# ------------------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A mixture, a probe file of it, a Heun schedule, and digits-shaped samples with a quick classifier."""
    from adasched.classifier import save_classifier, train_digits_classifier
    from adasched.cli import main

    d = tmp_path_factory.mktemp("progress")
    (d / "mix.json").write_text(json.dumps(MIXTURE))
    assert main(["probe", "--model", f"gmm:{d / 'mix.json'}", "--grid", "10", "--samples", "8",
                 "-o", str(d / "p.h5")]) == 0
    assert main(["schedule", "--method", "edm", "--solver", "heun", "--nfe", "9", "-o", str(d / "s.json")]) == 0
    rng = np.random.default_rng(0)
    np.savez(d / "digits.npz", samples=rng.uniform(-1, 1, (40, 1, 8, 8)).astype(np.float32),
             seeds=np.arange(40, dtype=np.int64))
    save_classifier(train_digits_classifier(seed=0, epochs=1, width=8, outlier_weight=0.0, augment=False),
                    d / "clf.safetensors")
    return d


def commands(d):
    """The long commands, each with work in several steps (task name, adasched arguments)."""
    mix = f"gmm:{d / 'mix.json'}"
    return {
        "probe": ("probe", ["probe", "--model", mix, "--grid", "10", "--samples", "32", "--batch", "8",
                            "-o", "OUT.h5"]),
        "sample": ("sample", ["sample", "--model", mix, "--schedule", d / "s.json", "--solver", "heun",
                              "--num", "40", "--batch", "10", "-o", "OUT.npz"]),
        "schedule": ("reference solve", ["schedule", "--method", "solver-aware", "--probes", d / "p.h5",
                                         "--model", mix, "--solver", "euler", "--nfe", "4", "--fit-seeds", "2",
                                         "--fit-iterations", "3", "-o", "OUT.json"]),
        "fit-reference": ("reference solve", ["fit-reference", "--model", mix, "--fit-seeds", "2", "--max-steps", "256",
                                              "-o", "OUT.h5"]),
        "evaluate": ("digits_fd run 1/1", ["evaluate", "--samples", d / "digits.npz", "--digits-fd", "--classifier",
                                           d / "clf.safetensors", "--batch", "10", "--device", "cpu",
                                           "-o", "OUT.json"]),
        "train": ("train", ["train", "--steps", "4", "--batch", "4", "--log-every", "1", "--threads", "1",
                            "--preset", "digits", "-o", "OUT.safetensors"]),
    }


def _argv(args, out):
    return [sys.executable, "-m", "adasched", *[str(out) if a in ("OUT.h5", "OUT.npz", "OUT.json",
                                                                   "OUT.safetensors") else str(a) for a in args]]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="100")


def run_in_terminal(argv, cwd) -> tuple[int, str]:
    """``argv`` with stdout and stderr on a pseudo-terminal; returns (exit status, everything it showed)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=cwd, env=_env())
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 300)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("command", ["probe", "fit-reference", "sample", "schedule", "evaluate", "train"])
def test_long_commands_show_an_advancing_bar_on_a_terminal_and_lines_in_a_file(files, tmp_path, command):
    task, args = commands(files)[command]
    suffix = args[-1].split(".", 1)[1]
    rc, shown = run_in_terminal(_argv(args, tmp_path / f"tty.{suffix}"), tmp_path)
    assert rc == 0, shown[-2000:]
    percents = [int(p) for p in re.findall(re.escape(task) + r": +(\d+)%\|", shown)]
    assert "\r" in shown and len(set(percents)) >= 2 and percents == sorted(percents) and percents[-1] == 100, \
        shown[-2000:]

    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.run(_argv(args, tmp_path / f"file.{suffix}"), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path, env=_env(), timeout=600)
    text = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 0, text[-2000:]
    lines = [ln for ln in text.splitlines() if ln.startswith(task + ": ")]
    assert "\r" not in text and len(lines) >= 2 and lines[-1].endswith("(100%)"), text[-2000:]
    assert all(re.fullmatch(re.escape(task) + r": \d+/\d+ \(\d+%\)", ln) for ln in lines), lines
