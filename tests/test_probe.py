"""The corrector-cost estimator (paper.md §3.2) against §6 closed forms, and its HDF5 store."""

import errno
import json
import os

import h5py
import numpy as np
import pytest
import torch

import adasched
from adasched.errors import AdaschedError, DataError, SolverError
from adasched.io import exclusive_lock
from adasched.models import content_hash
from adasched.optimize import cumulative_length, schedule_uncertainty, score_optimal_from_probes, \
    score_optimal_schedule, score_optimal_sigmas
from adasched.probe import (
    corrector_costs,
    dataset_sampler,
    derive_seeds,
    interval_inputs,
    check_model,
    probe,
    probe_grid,
    read_probes,
    target_sampler,
)
from adasched.schedules import Schedule
from adasched.targets import GaussianMixture
from child_process import full_disk, python, run
from test_optimize import exact_schedule, gaussian_cost, gaussian_iso_cost, gaussian_iso_length, log_grid, \
    mixture_costs

F64 = torch.float64


def gaussian(mean, variances):
    return GaussianMixture([1.0], [list(mean)], [list(variances)])


class FastGaussian:
    """``mu + sqrt(var) * z`` with ``z`` from a per-seed CPU generator (a quicker stand-in for TargetSampler)."""

    def __init__(self, mean, variances):
        self.mean, self.sd = torch.tensor(mean, dtype=F64), torch.tensor(variances, dtype=F64).sqrt()
        self.description = "fast-gaussian"

    def __call__(self, seeds):
        g = torch.Generator()
        return torch.stack([self.mean + self.sd * torch.randn(self.mean.numel(), generator=g.manual_seed(int(s)),
                                                              dtype=F64) for s in seeds])


def within(result, expected, k=4.0):
    """Estimated mean within ``k`` standard errors of the expectation."""
    z = (result.mean - expected) / result.stderr
    assert np.all(np.abs(z) < k), f"z-scores {z}"


# --------------------------------------------------------------------------------------- the estimator


def test_dirac_cost_is_exact_per_sample():
    # Dirac data: Delta = eps hi (1/hi^2 - 1/lo^2), so cost = (r - 1/r)^2 |eps|^2 sample by sample,
    # whose expectation is d (r - 1/r)^2 = 11.25 for d = 5, r = 2 (paper.md §6.1).
    dirac = gaussian([0.5, -1, 2, 0, 3], [0.0] * 5)
    x0 = dirac.means.expand(64, 5).clone()
    eps = torch.randn(64, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    c = corrector_costs(dirac, x0, eps, 1.0, 2.0)
    torch.testing.assert_close(c, 2.25 * (eps**2).sum(1), rtol=1e-13, atol=0)
    # The cost is symmetric under swapping sigma and sigma' together with the marginal (paper.md §6.1), but
    # the weighting choice does matter: v = hi gives (1 - r^2)^2 |eps|^2 = r^2 times the paper's v = lo.
    torch.testing.assert_close(corrector_costs(dirac, x0, eps, 1.0, 2.0, weighting="upper"), 4 * c, rtol=1e-13,
                               atol=0)


def test_dirac_probe(tmp_path):
    dirac = gaussian([0.5, -1, 2, 0, 3], [0.0] * 5)
    r = probe(dirac, target_sampler(dirac), [1.0, 2.0], 3000, tmp_path / "p.h5", batch=1000, dtype=F64)
    within(r, 11.25)
    assert r.stderr[0] / r.mean[0] < 0.015
    # The stored sum is exactly (r - 1/r)^2 sum |eps|^2 over the very noise the probe drew.
    eps2 = sum(float((interval_inputs(target_sampler(dirac), list(range(b, b + 1000)), 0)[1] ** 2).sum())
               for b in range(0, 3000, 1000))
    assert r.sum[0] == pytest.approx(2.25 * eps2, rel=1e-12)


def test_isotropic_gaussian_matches_closed_form(tmp_path):
    # paper.md §6.2: d = 5, (2.0 -> 1.5, c = 0.5) = 1.29706 and (10 -> 7, c = 1) = 2.52374.
    for c, (lo, hi), ref in ((0.5, (1.5, 2.0), 1.29706), (1.0, (7.0, 10.0), 2.52374)):
        target = gaussian([1.0, -2.0, 0.0, 0.5, 3.0], [c**2] * 5)  # the mean is irrelevant in VE
        r = probe(target, FastGaussian(target.means[0].tolist(), [c**2] * 5), [lo, hi], 4000,
                  tmp_path / f"g{c}.h5", batch=2000, dtype=F64)
        assert gaussian_iso_cost(lo, hi, 5, c) == pytest.approx(ref, abs=5e-6)
        within(r, gaussian_iso_cost(lo, hi, 5, c))
        assert r.stderr[0] / r.mean[0] < 0.015
        up = probe(target, FastGaussian(target.means[0].tolist(), [c**2] * 5), [lo, hi], 4000,
                   tmp_path / f"u{c}.h5", batch=4000, dtype=F64, weighting="upper")
        # Same seeds, so the 'upper' estimate is the 'lower' one times (hi/lo)^2, to rounding.
        assert up.sum[0] == pytest.approx(r.sum[0] * (hi / lo) ** 2, rel=1e-12)


def test_anisotropic_gaussian_matches_closed_form(tmp_path):
    lam = [0.01, 0.1, 1.0, 4.0]
    target = gaussian([0.0] * 4, lam)
    s = [0.05, 0.07, 0.5, 0.7, 2.0, 3.0]
    r = probe(target, target_sampler(target), s, 2500, tmp_path / "a.h5", batch=2500, dtype=F64)
    within(r, gaussian_cost(np.array(s[:-1]), np.array(s[1:]), lam))
    assert np.all(r.stderr / r.mean < 0.03)


def test_mixture_matches_reference(tmp_path):
    # paper.md §6.4 mixture, four reference steps (in between: extra intervals that are also checked).
    mix = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[0.0025], [0.0025]])
    s = np.array([0.04, 0.05, 0.25, 0.3, 0.8, 1.0, 4.0, 5.0])
    r = probe(mix, target_sampler(mix), s, 5000, tmp_path / "m.h5", batch=2500, dtype=F64)
    exact = mixture_costs(s[:-1], s[1:])
    np.testing.assert_allclose(exact[::2], [0.0154194, 0.121615, 0.107179, 0.174178], rtol=2e-5)
    within(r, exact)
    assert np.all(r.stderr / r.mean < 0.05)


def test_gaussian_T18_schedule_from_estimated_costs(tmp_path):
    # paper.md §6.2 with Monte-Carlo costs: 200-point log probe, 200 samples per interval.
    d, c = 5, 0.5
    target = gaussian([0.3] * d, [c**2] * d)
    s = log_grid(200)
    r = probe(target, FastGaussian([0.3] * d, [c**2] * d), s, 200, tmp_path / "g.h5", batch=200, dtype=F64)
    exact_cost = gaussian_iso_cost(s[:-1], s[1:], d, c)
    u = schedule_uncertainty(r.sigmas, r.mean, r.stderr, 19, n_boot=100)
    assert abs(u.Lambda - cumulative_length(exact_cost)[-1]) < 4 * u.Lambda_std
    assert u.Lambda_std / u.Lambda < 0.005
    from_exact = score_optimal_sigmas(s, exact_cost, 19).numpy()
    z = (u.sigmas.numpy() - from_exact)[1:-2] / u.std[1:-2]
    assert np.all(np.abs(z) < 5), z
    exact = exact_schedule(lambda x: gaussian_iso_length(x, d, c), 0.002, 80.0, 18)
    np.testing.assert_allclose(u.sigmas.numpy()[:-1][::-1], exact, rtol=0.04)


# --------------------------------------------------------------------------------------------- samplers


def test_samplers_are_deterministic_per_seed():
    mix = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 2.0]], [[0.1, 0.2], [0.3, 0.4]])
    ts = target_sampler(mix)
    torch.testing.assert_close(ts([5, 6, 7])[1:], ts([6, 7]), rtol=0, atol=0)
    data = np.arange(40.0).reshape(20, 2)
    ds = dataset_sampler(data)
    torch.testing.assert_close(ds([3, 9, 11])[1:], ds([9, 11]), rtol=0, atol=0)
    idx = ds.indices(range(2000))
    assert idx.min() == 0 and idx.max() == 19 and len(np.unique(idx[:200])) == 20
    for seeds in ([1, 2, 3], [2, 3, 4]):
        x0 = ds(seeds)
        assert all(any(torch.equal(row, torch.as_tensor(d)) for d in data) for row in x0)
    a, b = derive_seeds([0, 1, 2], 3, 0), derive_seeds([0, 1, 2], 3, 1)
    assert len(set(a.tolist()) | set(b.tolist())) == 6 and np.all(a >= 0)


def test_dataset_sampler_with_one_point_is_dirac(tmp_path):
    ds = dataset_sampler(np.array([[0.0, 1.0, 2.0]]), "one point")
    r = probe(gaussian([0.0, 1.0, 2.0], [0.0] * 3), ds, [1.0, 2.0], 3000, tmp_path / "d.h5", batch=3000,
              dtype=F64)
    within(r, 3 * 2.25)
    assert r.data == "one point"


# -------------------------------------------------------------------------------------------- the store


MIX = GaussianMixture([0.3, 0.7], [[-1.0, 0.0], [1.0, 0.5]], [[0.01, 0.1], [0.05, 0.02]])
GRID = probe_grid(4, 0.01, 10.0)


def quick(path, n=None, **kw):
    kw.setdefault("batch", 8)
    kw.setdefault("meta", {"model": "gmm:test"})
    return probe(MIX, target_sampler(MIX), kw.pop("sigmas", GRID), n, path, dtype=F64, **kw)


def same(a, b):
    return (np.array_equal(a.count, b.count) and np.array_equal(a.sum, b.sum)
            and np.array_equal(a.sumsq, b.sumsq) and a.next_seed == b.next_seed)


def test_probe_grid():
    g = probe_grid(4, 0.01, 10.0)
    assert g[0] == 0.01 and g[-1] == 10.0 and g.size == 5
    np.testing.assert_allclose(np.diff(np.log(g)), np.log(1000) / 4, rtol=1e-12)
    e = probe_grid(10, spacing="edm")
    assert e[0] == 0.002 and e[-1] == 80.0 and np.all(np.diff(e) > 0)
    np.testing.assert_allclose(np.diff(e ** (1 / 7)), np.diff(e ** (1 / 7))[0], rtol=1e-10)
    with pytest.raises(AdaschedError, match="spacing"):
        probe_grid(4, spacing="cosine")


def test_append_adds_samples_and_equals_one_longer_run(tmp_path):
    a = quick(tmp_path / "a.h5", 30)
    assert a.samples == 30 and a.next_seed == 30
    a = quick(tmp_path / "a.h5", 20, batch=7)
    b = quick(tmp_path / "b.h5", 50, batch=16)
    assert a.samples == 50 and same(a, b) and same(read_probes(tmp_path / "a.h5"), b)
    np.testing.assert_array_equal(read_probes(tmp_path / "a.h5").runs, [[0, 30, 30], [30, 50, 50]])
    # total_samples tops up (and is a no-op when reached).
    c = quick(tmp_path / "c.h5", total_samples=30)
    c = quick(tmp_path / "c.h5", total_samples=50)
    assert same(c, b)
    assert same(quick(tmp_path / "c.h5", total_samples=40), b)
    # The grid of an existing file is reused when none is given.
    assert quick(tmp_path / "c.h5", 1, sigmas=None).samples == 51


def test_mismatch_is_refused_and_file_unchanged(tmp_path):
    path = tmp_path / "p.h5"
    quick(path, 10)
    before = path.read_bytes()
    with pytest.raises(DataError, match="grid of 5 points on \\[0.01, 10\\].*6 points"):
        quick(path, 10, sigmas=probe_grid(5, 0.01, 10.0))
    with pytest.raises(DataError, match="weighted by the 'lower' sigma.*'upper'"):
        quick(path, 10, weighting="upper")
    other = GaussianMixture([0.3, 0.7], [[-1.0, 0.0], [1.0, 0.5]], [[0.01, 0.1], [0.05, 0.03]])  # one variance
    with pytest.raises(DataError, match=f"made with model gmm:test \\(content {content_hash(MIX)[:12]}\\), not with "
                                        f"gmm:test \\(content {content_hash(other)[:12]}\\)"):
        probe(other, target_sampler(other), GRID, 10, path, batch=8, dtype=F64, meta={"model": "gmm:test"})
    with pytest.raises(DataError, match="seeds from 0"):
        quick(path, 10, seed=5)
    assert path.read_bytes() == before


def test_the_model_is_known_by_content_not_by_spec(tmp_path):
    """The same mixture saved under another path (another SPEC) adds to the file; the file records the hash."""
    path = tmp_path / "p.h5"
    quick(path, 10, meta={"model": "gmm:a.json"})
    again = GaussianMixture(*(MIX.to_json()[k] for k in ("weights", "means", "variances")))  # a fresh load
    res = probe(again, target_sampler(again), GRID, 6, path, batch=8, dtype=F64, meta={"model": "gmm:copy/b.json"})
    assert res.samples == 16 and res.model == "gmm:a.json" and res.meta["model_hash"] == content_hash(MIX)
    assert read_probes(path).meta["model_hash"] == content_hash(again)


def test_check_model_for_a_fit_on_the_probed_model(tmp_path):
    path = tmp_path / "p.h5"
    quick(path, 4, meta={"model": "gmm:a.json"})
    assert check_model(path, MIX, "gmm:elsewhere.json").samples == 4  # same content, any SPEC
    assert check_model(read_probes(path), MIX, "gmm:a.json").path == str(path)
    other = GaussianMixture([0.3, 0.7], [[-1.0, 0.0], [1.0, 0.6]], [[0.01, 0.1], [0.05, 0.02]])
    with pytest.raises(DataError, match=f"made with model gmm:a.json \\(content {content_hash(MIX)[:12]}\\), "
                                        f"not with gmm:a.json \\(content {content_hash(other)[:12]}\\)"):
        check_model(path, other, "gmm:a.json")


def test_a_file_without_the_model_hash_is_checked_by_spec_with_a_warning(tmp_path, caplog):
    """Files written before the content hash was recorded: the old SPEC (and file sha256) comparison."""
    path = tmp_path / "p.h5"
    quick(path, 4, meta={"model": "gmm:a.json"})
    with h5py.File(path, "r+", locking=False) as f:  # as an older adasched wrote it
        meta = json.loads(f.attrs["meta"])
        del meta["model_hash"]
        f.attrs["meta"] = json.dumps(meta)
    with pytest.raises(DataError, match="model='gmm:a.json', this run has model='gmm:b.json'"):
        check_model(path, MIX, "gmm:b.json")
    with caplog.at_level("WARNING", logger="adasched.probe"):
        assert quick(path, 2, meta={"model": "gmm:a.json"}).samples == 6
    assert "records no model content hash" in caplog.text and "gmm:a.json" in caplog.text
    with pytest.raises(DataError, match="model='gmm:a.json', this run has model='gmm:b.json'"):
        quick(path, 2, meta={"model": "gmm:b.json"})


def test_content_hash_follows_the_parameters_not_the_object():
    from adasched.targets import PowerLawGaussian

    twin = GaussianMixture.from_json(json.loads(json.dumps(MIX.to_json())), source="elsewhere.json")
    assert content_hash(twin) == content_hash(MIX)
    nudged = MIX.to_json()
    nudged["means"][1][1] = np.nextafter(0.5, 1.0)  # one ulp
    assert content_hash(GaussianMixture.from_json(nudged)) != content_hash(MIX)
    pl = PowerLawGaussian((1, 4, 4), alpha=2.0)
    assert content_hash(PowerLawGaussian.from_json(pl.to_json())) == content_hash(pl)
    assert len({content_hash(pl), content_hash(pl.in_eigenbasis()),
                content_hash(GaussianMixture([1.0], [[0.0] * 16], [[1.0] * 16]))}) == 3
    assert content_hash(lambda x, sigma: x) is None  # nothing to hash: probe falls back to the SPEC


def test_content_hash_of_a_network_is_its_weights():
    """The same weights hash alike in any denoiser object; one changed weight or a dtype changes the hash."""
    from adasched.edm import EDMDenoiser

    class Precond(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

    torch.manual_seed(0)
    a = Precond()
    b = Precond()
    b.load_state_dict(a.state_dict())
    assert content_hash(EDMDenoiser(a, source="x.pkl")) == content_hash(EDMDenoiser(b, source="y.pkl"))
    with torch.no_grad():
        b.lin.bias[0] += 1e-6
    assert content_hash(EDMDenoiser(b)) != content_hash(EDMDenoiser(a))
    b.load_state_dict(a.state_dict())
    assert content_hash(EDMDenoiser(b.to(torch.bfloat16))) != content_hash(EDMDenoiser(a))


class Crash(RuntimeError):
    pass


class CrashingDenoiser:
    """Raise on the ``after``-th call, as a killed job would stop (mid-batch)."""

    def __init__(self, inner, after):
        self.inner, self.after, self.calls = inner, after, 0

    def __call__(self, x, sigma):
        self.calls += 1
        if self.calls > self.after:
            raise Crash("killed")
        return self.inner(x, sigma)


def test_crash_then_resume_is_exact(tmp_path):
    path = tmp_path / "p.h5"
    k = GRID.size - 1
    with pytest.raises(Crash):  # each batch of 8 costs 2 K calls; die inside the third batch
        probe(CrashingDenoiser(MIX, 2 * 2 * k + 3), target_sampler(MIX), GRID, 40, path, batch=8,
              dtype=F64, meta={"model": "gmm:test"})
    mid = read_probes(path)
    assert mid.samples == 16 and mid.next_seed == 16 and not mid.complete
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind
    done = quick(path, total_samples=40)
    ref = quick(tmp_path / "ref.h5", 40)
    assert same(done, ref) and same(read_probes(path), ref) and read_probes(path).complete
    np.testing.assert_array_equal(read_probes(path).runs, [[0, 16, 40], [16, 40, 40]])


def child_probe(path, n):
    """Code for a child process: ``quick(path, n)``, printing an AdaschedError's line and exiting 3."""
    return f"""
import logging, sys
import torch
from adasched.errors import AdaschedError
from adasched.probe import probe, probe_grid, target_sampler
from adasched.targets import GaussianMixture
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
MIX = GaussianMixture.from_json({MIX.to_json()!r})
try:
    probe(MIX, target_sampler(MIX), probe_grid(4, 0.01, 10.0), {n}, {str(path)!r}, batch=8, dtype=torch.float64,
          meta={{"model": "gmm:test"}})
except AdaschedError as e:
    print(e)
    sys.exit(3)
"""


def test_a_full_disk_is_one_line_and_keeps_the_old_probe_file(tmp_path):
    """HDF5 writing a file on a full disk crashed the interpreter at exit; now one line, the old file kept."""
    path = tmp_path / "p.h5"
    quick(path, 8)
    before = path.read_bytes()
    r = run(full_disk(len(before) // 2) + child_probe(path, 8))
    assert (r.returncode, r.stdout) == (3, f"cannot write {path}: [Errno {errno.EFBIG}] {os.strerror(errno.EFBIG)}\n")
    assert "Traceback" not in r.stderr and "HDF5" not in r.stderr
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["p.h5"]


def test_two_processes_appending_to_one_file_lose_no_samples(tmp_path):
    """While one probe holds the file the other waits, then continues with the next seeds: the file ends with
    both runs on disjoint seeds, bit-identical to one run of all the samples."""
    path, n = tmp_path / "p.h5", 24
    with exclusive_lock(path.with_name(path.name + ".lock")):  # both start while the file is held
        children = [python(child_probe(path, n)) for _ in range(2)]
        for c in children:
            while "waiting for" not in (line := c.stderr.readline()):
                assert line, f"child exited without waiting: {c.communicate()}"
    for c in children:
        out, err = c.communicate(timeout=300)
        assert c.returncode == 0, out + err
    res = read_probes(path)
    np.testing.assert_array_equal(res.runs, [[0, n, n], [n, 2 * n, 2 * n]])
    assert res.samples == 2 * n and same(res, quick(tmp_path / "one.h5", 2 * n))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.h5", "p.h5"]  # no lock or temporary file left


def test_non_finite_denoiser_output_is_an_error(tmp_path):
    path = tmp_path / "p.h5"
    bad = lambda x, sigma: torch.full_like(x, float("nan"))
    with pytest.raises(DataError, match="non-finite cost for seed 0"):
        probe(bad, target_sampler(MIX), GRID, 10, path, batch=4, dtype=F64)
    assert not path.exists()


def test_provenance_and_layout(tmp_path):
    path = tmp_path / "p.h5"
    quick(path, 12, meta={"model": "gmm:test", "note": "hello"})
    quick(path, 5)
    with h5py.File(path, "r", locking=False) as f:
        assert f.attrs["format"] == "adasched-probes" and f.attrs["format_version"] == 1
        assert f.attrs["cost"] == "corrector" and f.attrs["weighting"] == "lower"
        assert f.attrs["model"] == "gmm:test" and f.attrs["data"] == "target:GaussianMixture"
        assert f["sum"].dtype == np.float64 and f["sumsq"].dtype == np.float64 and f["count"].dtype == np.int64
        np.testing.assert_array_equal(f["sigmas"][()], GRID)
        info = json.loads(f.attrs["run_info"])
        assert json.loads(f.attrs["meta"])["note"] == "hello"
    assert [i["adasched"] for i in info] == [adasched.__version__] * 2
    assert [(i["seed_start"], i["seed_stop"], i["batch"]) for i in info] == [(0, 12, 8), (12, 17, 8)]
    r = read_probes(path)
    assert r.cost == "corrector" and r.intervals == 4 and r.samples == 17 and r.seed_start == 0
    assert r.mean.shape == r.stderr.shape == (4,) and np.all(r.stderr > 0)


def test_read_probes_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_probes(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(DataError, match="not a readable adasched probe file"):
        read_probes(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(DataError, match="format=None"):
        read_probes(tmp_path / "other.h5")
    with pytest.raises(DataError, match="not a readable"):  # refuses to add to a foreign file
        quick(tmp_path / "other.h5", 4)


def test_bad_arguments(tmp_path):
    with pytest.raises(AdaschedError, match="exactly one of num_samples"):
        quick(tmp_path / "p.h5", 4, total_samples=4)
    with pytest.raises(AdaschedError, match="weighting"):
        quick(tmp_path / "p.h5", 4, weighting="middle")
    with pytest.raises(AdaschedError, match="give the probe sigmas"):
        quick(tmp_path / "p.h5", 4, sigmas=None)
    with pytest.raises(DataError, match="returned shape \\(2, 2\\) for 1 seeds"):  # the first row is checked first
        probe(MIX, lambda seeds: torch.zeros(2, 2), GRID, 3, tmp_path / "p.h5", batch=3)


def test_schedule_from_probe_file(tmp_path):
    path = tmp_path / "p.h5"
    quick(path, 40, sigmas=probe_grid(12, 0.002, 80.0))
    sched = score_optimal_schedule(path, "heun", nfe=9, n_boot=20)
    assert isinstance(sched, Schedule) and sched.steps == 5 and sched.nfe == 9
    assert sched.sigmas[0] == 80.0 and sched.sigmas[-2] == 0.002 and sched.sigmas[-1] == 0
    torch.testing.assert_close(sched.sigmas, score_optimal_from_probes(path, 5))
    p = sched.params
    assert p["samples_per_interval"] == 40 and p["probe_intervals"] == 12 and len(p["sigma_std"]) == 6
    assert Schedule.from_json(json.loads(json.dumps(sched.to_json()))).nfe == 9
    assert score_optimal_schedule(path, "euler", steps=7).nfe == 7
    with pytest.raises(SolverError, match="cannot spend exactly 10"):
        score_optimal_schedule(path, "heun", nfe=10)


# ------------------------------------------------------------------------ predictor-optimised cost (§3.4)

from adasched.probe import predictor_costs, rademacher  # noqa: E402


def test_predictor_cost_gaussian_closed_form_per_sample():
    """Isotropic Gaussian N(mu, c^2 I): grad s = -I/a is constant, so the cost is exact per sample:
    v^2 k^2 ||x - mu||^2 with k = (1 + h sigma/a_hi)/a_lo - (1 - h sigma/a_hi)/a_hi."""
    d, c2, lo, hi = 4, 0.3, 1.2, 2.0
    mu = [0.5, -1.0, 0.0, 2.0]
    g = GaussianMixture([1.0], [mu], [[c2] * d])
    gen = torch.Generator().manual_seed(0)
    x0 = g.sample(64, gen)
    eps = torch.randn(64, d, generator=gen, dtype=torch.float64)
    xi = rademacher(np.arange(64), (d,), 2)
    got = predictor_costs(g, x0, eps, lo, hi, xi)
    a_hi, a_lo, h = c2 + hi**2, c2 + lo**2, lo - hi
    k = (1 + h * hi / a_hi) / a_lo - (1 - h * hi / a_hi) / a_hi
    x = x0 + hi * eps
    want = lo**2 * k**2 * (x - torch.tensor(mu, dtype=torch.float64)).pow(2).sum(1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
    up = predictor_costs(g, x0, eps, lo, hi, xi, weighting="upper")
    torch.testing.assert_close(up, want * (hi / lo) ** 2, rtol=1e-10, atol=0)


def test_predictor_cost_mixture_matches_finite_differences():
    """1-D mixture (Hutchinson is exact in 1-D): pushed score s + h sigma (s' s + s'') from finite differences."""
    g = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[0.05], [0.05]])
    lo, hi = 0.4, 0.5
    gen = torch.Generator().manual_seed(1)
    x0 = g.sample(32, gen)
    eps = torch.randn(32, 1, generator=gen, dtype=torch.float64)
    got = predictor_costs(g, x0, eps, lo, hi, rademacher(np.arange(32), (1,), 1))
    x = x0 + hi * eps
    sh = torch.full((32,), hi, dtype=torch.float64)
    e = 1e-4
    s = g.score(x, sh)
    s1 = (g.score(x + e, sh) - g.score(x - e, sh)) / (2 * e)
    s2 = (g.score(x + e, sh) - 2 * s + g.score(x - e, sh)) / e**2
    h = lo - hi
    y = x - h * hi * s
    pushed = s + h * hi * (s1 * s + s2)
    want = lo**2 * (g.score(y, torch.full((32,), lo, dtype=torch.float64)) - pushed).pow(2).sum(1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-9)


def test_predictor_cost_is_higher_order_than_corrector():
    """With the exact score the predictor removes the first-order term (paper.md §2.4): halving the step
    divides the corrector cost by about 4 and the predictor cost by much more.  In 1-D, where Hutchinson's
    estimate is exact; in higher dimension its noise adds an O(h^2) term (see the next test)."""
    g = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[0.05], [0.1]])
    gen = torch.Generator().manual_seed(2)
    x0 = g.sample(256, gen)
    eps = torch.randn(256, 1, generator=gen, dtype=torch.float64)
    xi = rademacher(np.arange(256), (1,), 1)
    ratios = {}
    for name, fn in (("c", lambda lo: corrector_costs(g, x0, eps, lo, 1.0)),
                     ("p", lambda lo: predictor_costs(g, x0, eps, lo, 1.0, xi))):
        ratios[name] = float(fn(0.9).mean() / fn(0.95).mean())
    assert 3.0 < ratios["c"] < 5.0
    assert ratios["p"] > 10.0


def test_hutchinson_noise_makes_predictor_cost_second_order_in_higher_dimension():
    """In d > 1 one Rademacher probe leaves an O(1) error in grad tr(grad s), which enters at O(h):
    the estimated cost then falls like h^2, and more probes lower it."""
    g = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.5]], [[0.05, 0.1], [0.1, 0.05]])
    gen = torch.Generator().manual_seed(2)
    x0 = g.sample(256, gen)
    eps = torch.randn(256, 2, generator=gen, dtype=torch.float64)
    one, many = rademacher(np.arange(256), (2,), 1), rademacher(np.arange(256), (2,), 16)
    ratio = float(predictor_costs(g, x0, eps, 0.9, 1.0, one).mean()
                  / predictor_costs(g, x0, eps, 0.95, 1.0, one).mean())
    assert 3.0 < ratio < 6.0
    assert predictor_costs(g, x0, eps, 0.9, 1.0, many).mean() < 0.5 * predictor_costs(g, x0, eps, 0.9, 1.0, one).mean()


def test_probe_file_keeps_cost_variants_apart(tmp_path):
    g = GaussianMixture([1.0], [[0.0, 0.0]], [[0.2, 0.3]])
    path = tmp_path / "po.h5"
    sig = probe_grid(4, 0.1, 10.0)
    res = probe(g, target_sampler(g, "g"), sig, 8, path, cost="predictor", batch=3, dtype=torch.float64)
    assert res.cost == "predictor" and (res.count == 8).all() and np.isfinite(res.sum).all()
    with pytest.raises(DataError, match="predictor"):
        probe(g, target_sampler(g, "g"), sig, 8, path, cost="corrector", dtype=torch.float64)
    # per-seed determinism holds for the predictor cost too: one call of 8 == batches of 3
    again = probe(g, target_sampler(g, "g"), sig, 8, tmp_path / "po2.h5", cost="predictor", batch=8,
                  dtype=torch.float64)
    np.testing.assert_array_equal(res.sum, again.sum)


def test_predictor_cost_power_law_gaussian_closed_form():
    """An image-shaped Gaussian, whose score is linear in x (so the Hessian's trace has no gradient):
    per eigendirection k_l = (1 + h sigma/a_hi)/a_lo - (1 - h sigma/a_hi)/a_hi with a = lambda + sigma^2."""
    from adasched.targets import PowerLawGaussian

    p = PowerLawGaussian((2, 4, 4), alpha=1.5, scale=0.7, mean=0.1)
    gen = torch.Generator().manual_seed(3)
    x0 = p.sample(8, gen)
    eps = torch.randn(8, 2, 4, 4, generator=gen, dtype=torch.float64)
    lo, hi = 0.6, 0.9
    got = predictor_costs(p, x0, eps, lo, hi, rademacher(np.arange(8), (2, 4, 4), 1))
    lam = p.eigenvalues
    a_hi, a_lo, h = lam + hi**2, lam + lo**2, lo - hi
    k = (1 + h * hi / a_hi) / a_lo - (1 - h * hi / a_hi) / a_hi
    y = p.to_spectral(x0 + hi * eps)
    torch.testing.assert_close(got, lo**2 * (k**2 * y**2).flatten(1).sum(1), rtol=1e-10, atol=0)


def test_conditional_model_is_probed_with_the_labels_of_its_data_rows(tmp_path):
    """A class-conditional model sees, for every row, the label of the data row that was noised."""
    from adasched.data import LabelledSampler

    data = torch.arange(20, dtype=torch.float64).reshape(20, 1) / 10
    labels = torch.arange(20) % 4
    sampler = LabelledSampler(data, labels=labels, num_classes=4, description="toy")

    class Conditional:
        label_dim = 4
        seen: list = []

        def __init__(self, bound=None):
            self.bound = bound

        def with_labels(self, lab):
            return Conditional(lab)

        def __call__(self, x, sigma):
            assert self.bound is not None and len(self.bound) == len(x)
            Conditional.seen.append(self.bound.clone())
            return torch.zeros_like(x)

    res = probe(Conditional(), sampler, probe_grid(2, 0.1, 1.0), 6, tmp_path / "c.h5", dtype=torch.float64)
    assert (res.count == 6).all() and Conditional.seen
    for i in range(2):  # labels equal those of the rows the data sampler drew for this interval
        rows = sampler.indices(derive_seeds(list(range(6)), i, 0).tolist())
        assert torch.equal(Conditional.seen[2 * i], labels[torch.from_numpy(rows)])
    with pytest.raises(DataError, match="no labels"):
        probe(Conditional(), target_sampler(GaussianMixture([1.0], [[0.0]], [[1.0]]), "g"), probe_grid(2, 0.1, 1.0),
              2, tmp_path / "d.h5", dtype=torch.float64)
