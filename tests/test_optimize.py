"""Algorithm 1 (UpdateSchedule) and its read-out, against the closed forms of paper.md §6 (re-derived here)."""

import logging
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.optimize import brentq

from adasched.errors import ScheduleError
from adasched.optimize import (
    blend,
    cumulative_length,
    length_stderr,
    schedule_uncertainty,
    score_optimal_sigmas,
    update_schedule,
)
from adasched.schedules import Schedule, sigmas_loglinear

SMIN, SMAX = 0.002, 80.0


def log_grid(points, lo=SMIN, hi=SMAX):
    s = np.geomspace(lo, hi, points)
    s[0], s[-1] = lo, hi
    return s


# ---------------------------------------------------------------- closed-form costs (paper.md §6), re-derived


def dirac_cost(lo, hi, d):
    """§6.1: grad log p_sigma(x) = -(x - x0)/sigma^2, x - x0 = hi eps => lo^2 (hi/lo^2 - 1/hi)^2 E|eps|^2."""
    return lo**2 * (hi / lo**2 - 1 / hi) ** 2 * d  # = d (r - 1/r)^2, r = hi/lo


def gaussian_cost(lo, hi, eigenvalues):
    """§6.2: per eigen-direction Delta = (x - mu)(1/(l+hi^2) - 1/(l+lo^2)), E (x - mu)^2 = l + hi^2."""
    lam = np.asarray(eigenvalues, dtype=np.float64)[None, :]
    lo, hi = np.asarray(lo)[:, None], np.asarray(hi)[:, None]
    return (lo**2 * (lam + hi**2) * (1 / (lam + hi**2) - 1 / (lam + lo**2)) ** 2).sum(1)


def gaussian_iso_cost(lo, hi, d, c):
    """The paper's printed form d sigma'^2 (sigma^2 - sigma'^2)^2 / ((c^2 + sigma^2)(c^2 + sigma'^2)^2)."""
    return d * lo**2 * (hi**2 - lo**2) ** 2 / ((c**2 + hi**2) * (c**2 + lo**2) ** 2)


def gaussian_iso_length(sigma, d, c):
    """§6.2: Lambda(sigma) = 2 sqrt(d) [asinh(sigma/c) - sigma / sqrt(sigma^2 + c^2)] from sigma = 0."""
    return 2 * math.sqrt(d) * (math.asinh(sigma / c) - sigma / math.hypot(sigma, c))


def exact_schedule(length, lo, hi, T):
    """Invert a continuous Lambda(sigma): sigma_i* with Lambda equal across T intervals (Theorem 3.1)."""
    a, b = length(lo), length(hi)
    out = [lo] + [brentq(lambda s: length(s) - (a + (b - a) * i / T), lo, hi, xtol=1e-13) for i in range(1, T)]
    return np.array(out + [hi])


def mixture_costs(lo, hi, w=(0.5, 0.5), mu=(-1.0, 1.0), c=(0.05, 0.05), n=4001):
    """§6.4 by 1-D trapezoid quadrature over p_hi on +-12 sd, vectorised over intervals."""
    w, mu, c = (np.asarray(v, dtype=np.float64) for v in (w, mu, c))
    lo, hi = np.atleast_1d(lo).astype(np.float64), np.atleast_1d(hi).astype(np.float64)
    sd = np.sqrt(c[None] ** 2 + hi[:, None] ** 2)
    a, b = (mu[None] - 12 * sd).min(1), (mu[None] + 12 * sd).max(1)
    x = a[:, None] + (b - a)[:, None] * np.linspace(0, 1, n)[None]

    def score_and_density(s):
        v = c[None, None] ** 2 + s[:, None, None] ** 2
        diff = x[..., None] - mu[None, None]
        logp = -0.5 * diff**2 / v - 0.5 * np.log(2 * np.pi * v) + np.log(w)
        m = logp.max(-1, keepdims=True)
        p = np.exp(logp - m)
        return (p * (-diff / v)).sum(-1) / p.sum(-1), np.exp(m[..., 0]) * p.sum(-1)

    s_hi, dens = score_and_density(hi)
    s_lo, _ = score_and_density(lo)
    return lo**2 * np.trapezoid(dens * (s_lo - s_hi) ** 2, x, axis=1)


# ------------------------------------------------------------------------------------------- §6.1 Dirac


def test_dirac_cost_reference():
    assert dirac_cost(1.0, 2.0, 5) == pytest.approx(11.25, rel=1e-15)  # d (r - 1/r)^2, d=5, r=2
    lo, hi = 0.3, 0.7
    assert dirac_cost(lo, hi, 3) == pytest.approx(dirac_cost(hi / 10, lo / 10 * (hi / lo) ** 2, 3))  # scale-free


def test_dirac_gives_geometric_schedule():
    s = log_grid(50)
    c = dirac_cost(s[:-1], s[1:], 3)
    lam = cumulative_length(c)
    assert lam[0] == 0 and np.all(np.diff(lam) > 0)
    assert lam[-1] == pytest.approx(36.99, abs=5e-3)  # paper.md §6.1
    assert lam[-1] > 2 * math.sqrt(3) * math.log(SMAX / SMIN) == pytest.approx(36.71, abs=5e-3)
    out = update_schedule(s, c, 10).numpy()
    assert out[0] == SMAX and out[-1] == SMIN
    ratios = out[:-1] / out[1:]
    np.testing.assert_allclose(ratios, (SMAX / SMIN) ** 0.1, rtol=1e-10)
    assert ratios[0] == pytest.approx(2.8854, abs=1e-4)
    # Read out for a sampler: N positive points are N - 1 equal-Lambda intervals, then 0 (= LogLinear).
    for steps in (1, 2, 5, 18):
        np.testing.assert_allclose(score_optimal_sigmas(s, c, steps).numpy(), sigmas_loglinear(steps).numpy(),
                                   rtol=1e-10)


# ---------------------------------------------------------------------------------------- §6.2 Gaussian


def test_gaussian_costs_reference():
    lo, hi = np.array([1.5]), np.array([2.0])
    assert gaussian_iso_cost(1.5, 2.0, 5, 0.5) == pytest.approx(1.29706, abs=5e-6)
    assert gaussian_iso_cost(7.0, 10.0, 5, 1.0) == pytest.approx(2.52374, abs=5e-6)
    assert gaussian_cost(lo, hi, [0.25] * 5)[0] == pytest.approx(gaussian_iso_cost(1.5, 2.0, 5, 0.5), rel=1e-13)


def test_gaussian_length_converges_as_probe_is_refined():
    exact = gaussian_iso_length(SMAX, 5, 0.5) - gaussian_iso_length(SMIN, 5, 0.5)
    assert exact == pytest.approx(21.3247, abs=1e-4)
    errors = []
    for points in (201, 1001, 5001):
        s = log_grid(points)
        errors.append(abs(cumulative_length(gaussian_iso_cost(s[:-1], s[1:], 5, 0.5))[-1] - exact))
    assert errors[0] > errors[1] > errors[2]
    assert errors[0] / errors[2] > 15  # first order in the probe spacing
    assert errors[2] / exact < 1e-4


def test_gaussian_T18_schedule():
    d, c = 5, 0.5
    ref = [0.002, 0.6226, 0.9730, 1.3721, 1.8618, 2.4807, 3.2737, 4.2973, 5.6242, 7.3479, 9.5903, 12.5097,
           16.3120, 21.2658, 27.7207, 36.1323, 47.0944, 61.3808, 80]
    exact = exact_schedule(lambda s: gaussian_iso_length(s, d, c), SMIN, SMAX, 18)
    np.testing.assert_allclose(exact, ref, rtol=1e-4)  # paper.md §6.2, re-derived
    s = log_grid(200)
    got = score_optimal_sigmas(s, gaussian_iso_cost(s[:-1], s[1:], d, c), 19).numpy()
    assert got[-1] == 0 and got[0] == SMAX and got[-2] == SMIN
    np.testing.assert_allclose(got[:-1][::-1], exact, rtol=1e-2)
    Schedule(torch.from_numpy(got), "score-optimal", "euler", 19)  # a valid schedule


def test_anisotropic_gaussian():
    lam = np.array([0.01, 0.1, 1.0, 4.0])

    def length(sig):  # delta = 4 sigma^4 sum_k (lam_k + sigma^2)^-3; integrate sqrt(delta) in log sigma
        f = lambda u: 2 * math.exp(3 * u) * math.sqrt(float(((lam + math.exp(2 * u)) ** -3).sum()))
        return quad(f, math.log(SMIN), math.log(sig), epsabs=1e-12, epsrel=1e-12, limit=200)[0]

    s = log_grid(4001)
    c = gaussian_cost(s[:-1], s[1:], lam)
    assert cumulative_length(c)[-1] == pytest.approx(length(SMAX), rel=2e-4)
    exact = exact_schedule(length, SMIN, SMAX, 10)
    np.testing.assert_allclose(update_schedule(s, c, 10).numpy()[::-1], exact, rtol=2e-3)


# -------------------------------------------------------------------------------- §6.4 1-D mixture


def test_mixture_reference_costs_by_quadrature():
    got = mixture_costs(np.array([0.8, 0.25, 0.04, 4.0]), np.array([1.0, 0.3, 0.05, 5.0]))
    np.testing.assert_allclose(got, [0.107179, 0.121615, 0.0154194, 0.174178], rtol=2e-5)
    assert mixture_costs(0.8, 1.0, n=20001)[0] == pytest.approx(got[0], rel=1e-9)  # quadrature converged


def test_mixture_length_and_T10_schedule():
    s = log_grid(400)
    c = mixture_costs(s[:-1], s[1:])
    assert cumulative_length(c)[-1] == pytest.approx(13.198, abs=1e-3)
    ref = [0.002, 0.1165, 0.2479, 0.4877, 1.0798, 2.6933, 5.5805, 10.984, 21.346, 41.342, 80]
    np.testing.assert_allclose(update_schedule(s, c, 10).numpy()[::-1], ref, rtol=5e-4)


# ---------------------------------------------------------------------------- Algorithm 1 properties


def test_equal_costs_are_a_fixed_point():
    rng = np.random.default_rng(1)
    s = np.sort(np.exp(rng.uniform(-6, 4, 30)))
    out = update_schedule(s, np.full(29, 0.37)).numpy()
    np.testing.assert_allclose(out[::-1], s, rtol=1e-12)
    assert out[0] == s[-1] and out[-1] == s[0]


def test_endpoints_stay_fixed():
    rng = np.random.default_rng(2)
    s = log_grid(40)
    for _ in range(5):
        out = update_schedule(s, rng.exponential(size=39) ** 3, int(rng.integers(1, 30))).numpy()
        assert out[0] == SMAX and out[-1] == SMIN and np.all(np.diff(out) < 0)


def test_concentrated_cost_pulls_points_in():
    s = log_grid(101, 0.01, 100.0)
    c = np.ones(100)
    mid = (s[:-1] >= 1.0) & (s[1:] <= 2.0)
    c[mid] = 100.0
    out = update_schedule(s, c, 20).numpy()
    inside = ((out >= 1.0) & (out <= 2.0)).sum()
    base = update_schedule(s, np.ones(100), 20).numpy()
    assert ((base >= 1.0) & (base <= 2.0)).sum() <= 2 and inside >= 6
    # Costs equalised: every output interval carries about the same Lambda_hat (piecewise-linear check).
    lam = np.interp(np.log(out[::-1]), np.log(s), cumulative_length(c))
    np.testing.assert_allclose(np.diff(lam), lam[-1] / 20, rtol=0.2)


def test_zero_cost_guard(caplog):
    s = log_grid(21)
    with caplog.at_level(logging.WARNING, logger="adasched.optimize"):
        out = update_schedule(s, np.zeros(20))
    assert "all 20 interval costs are 0" in caplog.text
    np.testing.assert_allclose(out.numpy()[::-1], s, rtol=1e-12)  # the input schedule
    np.testing.assert_allclose(score_optimal_sigmas(s, np.zeros(20), 7).numpy(), sigmas_loglinear(7).numpy(),
                               rtol=1e-10)
    # Some zero costs are floored (1e-12 of the max): still a valid, strictly decreasing schedule.
    c = np.zeros(20)
    c[5] = 1.0
    out = score_optimal_sigmas(s, c, 10)
    Schedule(out, "score-optimal", "euler", 10)
    assert ((out[:-1] >= s[5]) & (out[:-1] <= s[6])).sum() >= 8


def test_sub_range_readout():
    s = log_grid(50)
    c = dirac_cost(s[:-1], s[1:], 3)
    got = score_optimal_sigmas(s, c, 8, sigma_min=0.01, sigma_max=10.0)
    np.testing.assert_allclose(got.numpy(), sigmas_loglinear(8, 0.01, 10.0).numpy(), rtol=1e-9)
    assert got[0] == 10.0 and got[-2] == 0.01
    with pytest.raises(ScheduleError, match="inside the probed"):
        score_optimal_sigmas(s, c, 8, sigma_min=0.001)
    with pytest.raises(ScheduleError, match="inside the probed"):
        score_optimal_sigmas(s, c, 8, sigma_max=100.0)


@pytest.mark.parametrize("sigmas, costs, match", [
    ([1.0, 2.0, 3.0], [1.0], "one cost per interval: 2"),
    ([3.0, 2.0, 1.0], [1.0, 1.0], "strictly increasing"),
    ([0.0, 2.0, 3.0], [1.0, 1.0], "positive"),
    ([1.0, 2.0, 3.0], [1.0, -1.0], "non-negative"),
    ([1.0, 2.0, 3.0], [1.0, float("nan")], "finite"),
])
def test_bad_input(sigmas, costs, match):
    with pytest.raises(ScheduleError, match=match):
        update_schedule(sigmas, costs, 4)


def test_bad_steps():
    with pytest.raises(ScheduleError, match="positive integer"):
        score_optimal_sigmas([1.0, 2.0], [1.0], 0)
    with pytest.raises(ScheduleError, match="positive integer"):
        update_schedule([1.0, 2.0], [1.0], 0)


# ---------------------------------------------------------------------------------- Algorithm 2 blend


def test_blend_is_convex_and_monotone():
    old = sigmas_loglinear(12)
    new = score_optimal_sigmas(log_grid(40), np.linspace(1, 5, 39) ** 2, 12)
    for g in (0.0, 0.05, 0.3, 1.0):
        out = blend(old, new, g)
        Schedule(out, "blend", "euler", 12)  # strictly decreasing, ends in 0
        assert out[0] == SMAX and out[-2] == SMIN and out[-1] == 0
        lo, hi = torch.minimum(old, new), torch.maximum(old, new)
        assert torch.all(out >= lo * (1 - 1e-14)) and torch.all(out <= hi * (1 + 1e-14))
        np.testing.assert_allclose(out[:-1].log().numpy(), (g * new[:-1].log() + (1 - g) * old[:-1].log()).numpy(),
                                   rtol=1e-12, atol=1e-12)
    assert torch.equal(blend(old, new, 0.0), old) and torch.equal(blend(old, new, 1.0), new)
    lin = blend(old, new, 0.25, space="linear")
    np.testing.assert_allclose(lin.numpy(), (0.25 * new + 0.75 * old).numpy(), rtol=1e-12)
    pos = blend(old[:-1], new[:-1], 0.5)  # positive-only schedules too (no final 0)
    assert pos.numel() == 12 and pos[-1] == SMIN


def test_blend_refuses_bad_input():
    a, b = sigmas_loglinear(5), sigmas_loglinear(6)
    with pytest.raises(ScheduleError, match="same length"):
        blend(a, b, 0.5)
    with pytest.raises(ScheduleError, match=r"\[0, 1\]"):
        blend(a, a, 1.5)
    with pytest.raises(ScheduleError, match="both schedules end in 0"):
        blend(a, torch.cat([a[:-1], a[-2:-1] / 2]), 0.5)
    with pytest.raises(ScheduleError, match="same direction"):
        blend(a[:-1], a[:-1].flip(0), 0.5)


# ---------------------------------------------------------------------------------------- uncertainty


def test_uncertainty():
    s = log_grid(60)
    c = gaussian_iso_cost(s[:-1], s[1:], 5, 0.5)
    zero = schedule_uncertainty(s, c, np.zeros_like(c), 10, n_boot=8)
    assert np.all(zero.std == 0)
    assert zero.Lambda_std == 0
    torch.testing.assert_close(zero.sigmas, score_optimal_sigmas(s, c, 10))
    u1 = schedule_uncertainty(s, c, 0.01 * c, 10, n_boot=200, seed=3)
    u2 = schedule_uncertainty(s, c, 0.02 * c, 10, n_boot=200, seed=3)
    assert u1.std[0] == u1.std[-2] == u1.std[-1] == 0  # pinned endpoints and the final 0
    assert np.all(u1.std[1:-2] > 0)
    np.testing.assert_allclose(u2.std[1:-2] / u1.std[1:-2], 2.0, rtol=0.1)  # linear in the cost error
    assert np.all(u1.log_std[1:-2] < 0.01)  # 1% cost errors move points by well under 1%
    again = schedule_uncertainty(s, c, 0.01 * c, 10, n_boot=200, seed=3)
    assert np.array_equal(again.std, u1.std)
    # Delta method for Lambda_hat = sum sqrt(c_i): se_i / (2 sqrt(c_i)) per interval, added in quadrature.
    assert u1.Lambda_std == pytest.approx(math.sqrt(((0.01 * c) ** 2 / (4 * c)).sum()), rel=1e-12)
    assert length_stderr(c, 0.01 * c) == u1.Lambda_std
    rng = np.random.default_rng(0)
    boot = [np.sqrt(np.maximum(c + 0.01 * c * rng.standard_normal(c.size), 0)).sum() for _ in range(2000)]
    assert np.std(boot) == pytest.approx(u1.Lambda_std, rel=0.1)


def test_fixed_point_refinement_forgets_its_starting_grid(tmp_path):
    """paper.md §3.6 step 4: re-probing on grids built from the current schedule converges, to the same
    schedule from a coarse and a finer starting grid, close to the fine-probe optimum of §6.4."""
    from adasched.optimize import refine_schedule
    from adasched.probe import target_sampler
    from adasched.targets import GaussianMixture

    g = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[0.0025], [0.0025]])
    ref = torch.tensor([0.002, 0.1165, 0.2479, 0.4877, 1.0798, 2.6933, 5.5805, 10.984, 21.346, 41.342, 80.0])
    out = []
    for k in (10, 20):
        r = refine_schedule(g, target_sampler(g), 11, tmp_path / f"k{k}", intervals=k, samples=256,
                            dtype=torch.float64, tol=0.005)
        assert r.converged and r.rounds[-1]["max_relative_move"] < 0.005
        assert all(x["grid_points"] == 81 for x in r.rounds[1:])  # 10 intervals x 8 substeps
        out.append(r.sigmas)
    assert float((out[0][:-1] / out[1][:-1] - 1).abs().max()) < 0.01
    # 8 substeps per schedule interval leave ~6% of discretisation bias (measured with 512 samples) and 256
    # samples a few % of Monte-Carlo error: within 10% of the 400-point-probe optimum.
    assert float((out[0][:-1] / ref.flip(0) - 1).abs().max()) < 0.10
