"""A resumable ``adasched sample`` (issue 23, item 10; issue 19): a killed run resumes from its completed
batches, bit-identical to an uninterrupted run; work from other inputs is discarded; and the samples file
records the denoiser evaluations per sample counted by the run that made the batches."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import adasched.models
from adasched import stages
from adasched.cli import main
from adasched.dispatch import partial_dir
from adasched.samplers import nfe_for_steps
from adasched.schedules import Schedule, sigmas_edm
from adasched.targets import GaussianMixture

ROOT = Path(__file__).resolve().parents[1]
MIXTURE = {"weights": [0.3, 0.7], "means": [[-1.0, 0.0], [1.0, 0.5]], "variances": [[0.01, 0.1], [0.05, 0.02]]}


def _wide_mixture(path: Path) -> Path:
    """Four components in 1000-D (fixed seed): each batch of two samples takes a noticeable fraction of a second,
    so a run of many batches can be killed in the middle by polling its folder of finished batches."""
    rng = np.random.default_rng(0)
    k, d = 4, 1000
    path.write_text(json.dumps({"weights": [1 / k] * k, "means": rng.normal(size=(k, d)).round(3).tolist(),
                                "variances": rng.uniform(0.05, 1.0, size=(k, d)).round(3).tolist()}))
    return path


def _adasched(argv, cwd: Path, **popen) -> subprocess.Popen:
    """``python -m adasched ARGV`` in ``cwd`` with this checkout first on the path; text pipes for its outputs."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.Popen([sys.executable, "-m", "adasched", *map(str, argv)], cwd=cwd,
                            env=dict(os.environ, PYTHONPATH=path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def _arrays(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_killed_sample_resumes_bit_identical(tmp_path):
    """SIGKILL once two batches are on disk; the same command again resumes after them and writes the arrays
    of an uninterrupted run, bit for bit (pc-langevin: its corrector noise too), and removes its work folder."""
    model = _wide_mixture(tmp_path / "wide.json")
    Schedule(sigmas_edm(8), method="edm", solver="pc-langevin", nfe=nfe_for_steps("pc-langevin", 8)).save(
        tmp_path / "s.json")
    num, batch = 24, 2
    argv = ["sample", "--model", f"gmm:{model}", "--schedule", "s.json", "--solver", "pc-langevin", "--num", num,
            "--batch", batch, "--seed-start", 7, "-v"]
    work = partial_dir(tmp_path / "out.npz")

    proc = _adasched(argv + ["-o", "out.npz"], tmp_path)
    try:
        while proc.poll() is None and len(list(work.glob("batch-*.npz"))) < 2:
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = len(list(work.glob("batch-*.npz")))
    assert 2 <= done < num // batch and not (tmp_path / "out.npz").exists()

    rc, err = _finish(_adasched(argv + ["-o", "out.npz"], tmp_path))
    assert rc == 0, err
    found = re.search(r"resuming \S*out\.npz after (\d+) of (\d+) batches", err)
    assert found, err
    assert done <= int(found.group(1)) < int(found.group(2)) == num // batch  # a batch half-written is redone
    assert not work.exists()

    rc, err = _finish(_adasched(argv + ["-o", "ref.npz"], tmp_path))
    assert rc == 0 and "resuming" not in err, err
    resumed, whole = _arrays(tmp_path / "out.npz"), _arrays(tmp_path / "ref.npz")
    assert sorted(resumed) == sorted(whole)
    for key in whole:
        assert np.array_equal(resumed[key], whole[key]), key
    assert resumed["seeds"].tolist() == list(range(7, 7 + num))


class _Stop(Exception):
    """Raised by a progress callback to interrupt a stage after its first batch."""


def _stop_after_first_batch(task, done, total):
    if done < total:
        raise _Stop


def _schedule(tmp_path: Path, solver: str = "euler", steps: int = 5, **options) -> Path:
    path = tmp_path / f"{solver}.json"
    params = {"solver_options": options} if options else {}
    Schedule(sigmas_edm(steps), method="edm", solver=solver, nfe=nfe_for_steps(solver, steps, **options),
             params=params).save(path)
    return path


def test_other_seed_start_discards_stale_work(tmp_path, capsys, caplog):
    """Batches left by a run with other inputs (another --seed-start) are discarded, not resumed: the output is
    what a fresh run with the new inputs writes."""
    mixture = tmp_path / "m.json"
    mixture.write_text(json.dumps(MIXTURE))
    sched = _schedule(tmp_path)
    common = dict(model=f"gmm:{mixture}", schedule=sched, solver="euler", num=6, batch=2, device="cpu")
    with pytest.raises(_Stop):
        stages.sample(**common, seed_start=0, output=tmp_path / "out.npz", progress=_stop_after_first_batch)
    work = partial_dir(tmp_path / "out.npz")
    assert [p.name for p in work.glob("batch-*.npz")] == ["batch-000000.npz"]

    caplog.set_level(logging.INFO, logger="adasched")
    argv = ["sample", "--model", f"gmm:{mixture}", "--schedule", sched, "--solver", "euler", "--num", 6, "--batch", 2,
            "--device", "cpu", "--seed-start", 100, "-v"]
    assert main([str(a) for a in argv + ["-o", tmp_path / "out.npz"]]) == 0
    assert "discarding work" in caplog.text and "resuming" not in caplog.text, caplog.text
    assert not work.exists()
    assert main([str(a) for a in argv + ["-o", tmp_path / "fresh.npz"]]) == 0
    out, fresh = _arrays(tmp_path / "out.npz"), _arrays(tmp_path / "fresh.npz")
    assert out["seeds"].tolist() == list(range(100, 106))
    for key in fresh:
        assert np.array_equal(out[key], fresh[key]), key


class _CountingTarget:
    """An analytic mixture's exact denoiser that adds ``rows`` of every call to ``counter["evaluations"]``."""

    def __init__(self, target: GaussianMixture, counter: dict):
        self.target, self.counter = target, counter
        self.shape, self.sigma_min, self.sigma_max = target.shape, target.sigma_min, target.sigma_max

    def round_sigma(self, sigma):
        return sigma

    def __call__(self, x, sigma):
        self.counter["evaluations"] += x.shape[0]
        return self.target(x, sigma)


@pytest.mark.parametrize("solver, options, formula", [
    ("euler", {}, lambda n: n),
    ("heun", {}, lambda n: 2 * n - 1),
    ("pc-langevin", {"langevin_steps": 2}, lambda n: n + 2 * (n - 1)),
])
def test_resumed_sample_records_counted_nfe(tmp_path, monkeypatch, solver, options, formula):
    """A run interrupted after its first batch and the run that resumes it: the file's ``nfe`` is the
    evaluations per sample each of them counted on its own batches (N, 2N - 1, N + 2 (N - 1))."""
    counter = {"evaluations": 0}
    target = GaussianMixture(**MIXTURE)
    monkeypatch.setitem(adasched.models.LOADERS, "counting",
                        lambda argument, **_: _CountingTarget(target, counter))
    steps, num, batch = 5, 5, 2
    sched = _schedule(tmp_path, solver, steps, **options)
    common = dict(model="counting:mixture", schedule=sched, solver=solver, num=num, batch=batch, device="cpu",
                  output=tmp_path / "out.npz")
    with pytest.raises(_Stop):
        stages.sample(**common, progress=_stop_after_first_batch)
    first = counter["evaluations"]
    counter["evaluations"] = 0
    stages.sample(**common)
    rest = counter["evaluations"]

    nfe = int(_arrays(tmp_path / "out.npz")["nfe"])
    assert first % batch == 0 and rest % (num - batch) == 0
    assert nfe == first // batch == rest // (num - batch) == formula(steps)
    assert nfe == (first + rest) / num


def test_interrupted_fit_reference_resumes_at_its_next_level(tmp_path):
    """The levels a killed `fit-reference` finished stay in its work folder; the rerun solves only the rest and
    writes the file an uninterrupted run writes."""
    from adasched.references import read_reference

    model = f"gmm:{_wide_mixture(tmp_path / 'mix.json')}"
    whole = stages.fit_reference(model=model, output=tmp_path / "whole.h5", fit_seeds=6, tol=1e-5, device="cpu")
    steps = read_reference(whole).steps
    assert steps >= 128
    out = tmp_path / "ref.h5"

    def stop_in_the_last_level(task, done, total):
        if done > total - steps // 2:  # inside the finest level, all others kept
            raise _Stop

    with pytest.raises(_Stop):
        stages.fit_reference(model=model, output=out, fit_seeds=6, tol=1e-5, device="cpu", max_steps=steps,
                             progress=stop_in_the_last_level)
    assert not out.exists()
    kept = sorted(int(p.stem.split("-")[1]) for p in partial_dir(out).glob("level-*.npy"))
    assert kept == [32 * 2**k for k in range(len(kept))] and kept[-1] == steps // 2
    seen = []
    stages.fit_reference(model=model, output=out, fit_seeds=6, tol=1e-5, device="cpu", max_steps=steps,
                         progress=lambda task, done, total: seen.append(done))
    assert min(seen) > total_before(steps) and not partial_dir(out).exists()
    a, b = read_reference(whole), read_reference(out)
    assert np.array_equal(a.target.numpy(), b.target.numpy()) and a.history == b.history


def total_before(steps: int) -> int:
    """Steps of the levels below ``steps`` (32, 64, ...): what a resumed solve does not report again."""
    return sum(32 * 2**k for k in range(steps.bit_length()) if 32 * 2**k < steps)
