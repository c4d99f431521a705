"""Online schedule learning (the paper's Algorithm 2, paper.md §3.5) against exact quadrature truth.

Truth: the 1-D bimodal mixture of paper.md §6.4 (w = (1/2, 1/2), mu = (-1, 1), c = 0.05), whose corrector costs
are computed here by trapezoid quadrature of the exact score (``_quad_costs``).  Algorithm 1 on a 400-interval
log probe of those costs gives the offline score-optimal schedule; the test re-derives §6.4's numbers
(Lambda ~ 13.198, the T = 10 schedule) before comparing anything with them.
"""

from __future__ import annotations

import io
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from adasched.errors import AdaschedError, DataError, ModelError, ScheduleError
from adasched.online import OnlineScheduleLearner, refine_levels
from adasched.optimize import blend, update_schedule
from adasched.probe import corrector_costs
from adasched.schedules import sigmas_loglinear
from adasched.targets import GaussianMixture

F64 = torch.float64
C = 0.05
#: paper.md §6.4: the corrector-optimised T = 10 schedule from a 400-point log probe on [0.002, 80].
PAPER_T10 = np.array([0.002, 0.1165, 0.2479, 0.4877, 1.0798, 2.6933, 5.5805, 10.984, 21.346, 41.342, 80])


@pytest.fixture(scope="module")
def bimodal():
    return GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[C**2], [C**2]])


def _quad_costs(denoise, levels, weighting="lower", n=801):
    """Exact corrector costs of the intervals of increasing ``levels`` for the §6.4 mixture.

    ``v^2 E_{x ~ p_hi} |s(x, lo) - s(x, hi)|^2`` by the trapezoid rule on +-10 sd around each component of
    ``p_hi`` (the components are N(+-1, c^2 + hi^2)); ``s = (D - x) / sigma^2`` from ``denoise``.
    """
    lv = torch.as_tensor(np.asarray(levels, dtype=np.float64))
    lo, hi = lv[:-1], lv[1:]
    z = torch.linspace(-10, 10, n, dtype=F64)
    gz = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    sd = torch.sqrt(C**2 + hi**2)
    total = torch.zeros_like(lo)
    with torch.no_grad():
        for mu in (-1.0, 1.0):
            x = (mu + sd[:, None] * z[None]).reshape(-1, 1)
            slo, shi = lo.repeat_interleave(n), hi.repeat_interleave(n)
            dtype = next(iter(denoise.parameters())).dtype if isinstance(denoise, nn.Module) else F64
            s_lo = (denoise(x.to(dtype), slo.to(dtype)).to(F64) - x)[:, 0] / slo**2
            s_hi = (denoise(x.to(dtype), shi.to(dtype)).to(F64) - x)[:, 0] / shi**2
            total += 0.5 * torch.trapezoid(gz * (s_lo - s_hi).reshape(-1, n) ** 2, z, dim=1)
    v = lo if weighting == "lower" else hi
    return (v**2 * total).numpy()


def _offline(denoise, steps_T):
    """Offline score-optimal schedule (increasing, T + 1 points): Algorithm 1 on a 400-interval log probe."""
    probe = np.geomspace(0.002, 80.0, 401)
    costs = _quad_costs(denoise, probe)
    return update_schedule(probe, costs, steps_T).flip(0).numpy(), float(np.sqrt(costs).sum())


def _run_exact(learner, target, batch, batches, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        x0 = target.sample(batch, generator=g)
        _, idx = learner.sample_levels(batch, generator=g)
        learner.observe(target, x0, torch.randn(batch, 1, generator=g, dtype=F64), idx)


def _maxdev(a, b):
    return float(np.max(np.abs(np.asarray(a) / np.asarray(b) - 1)))


# ------------------------------------------------------------------------------- the estimator


def test_reference_costs_and_offline_schedule(bimodal):
    """The quadrature reproduces paper.md §6.4 (costs, Lambda, T = 10 schedule), so it can serve as truth."""
    got = _quad_costs(bimodal, [0.8, 1.0]), _quad_costs(bimodal, [0.25, 0.3]), _quad_costs(bimodal, [4.0, 5.0])
    assert np.allclose(np.concatenate(got), [0.107179, 0.121615, 0.174178], rtol=1e-4)
    sched, lam = _offline(bimodal, 10)
    assert lam == pytest.approx(13.198, abs=2e-3)
    assert _maxdev(sched, PAPER_T10) < 1e-3


@pytest.mark.parametrize("weighting", ["lower", "upper"])
def test_observe_estimates_the_paper_cost(bimodal, weighting):
    """Monte-Carlo mean of observe() on one interval matches §6.4's 1.0 -> 0.8 cost (weighted by v^2)."""
    learner = OnlineScheduleLearner([0.8, 1.0], n_min=10**9, weighting=weighting)
    _run_exact(learner, bimodal, 50_000, 4, seed=0)
    assert 90_000 < int(learner.counts.sum()) < 110_000 and learner.updates == 0  # half drew sigma_min
    expected = 0.107179 * (1.0 if weighting == "lower" else (1.0 / 0.8) ** 2)
    assert learner.mean_costs().item() == pytest.approx(expected, rel=0.02)  # MC error ~0.6% at 1e5 samples


def test_observe_agrees_with_probe_estimator(mixture_2d):
    """One estimator, two call sites: per-sample costs equal adasched.probe.corrector_costs on a fixed level."""
    g = torch.Generator().manual_seed(1)
    x0 = mixture_2d.sample(64, generator=g)
    eps = torch.randn(64, 2, generator=g, dtype=F64)
    learner = OnlineScheduleLearner([0.3, 0.7, 2.0], n_min=10**9)
    learner.observe(mixture_2d, x0, eps, torch.full((64,), 1))
    expected = corrector_costs(mixture_2d, x0, eps, 0.7, 2.0).sum()
    assert learner.sums[1, 0].item() == pytest.approx(expected.item(), rel=1e-12)
    assert learner.sums[0, 0] == 0 and learner.counts.tolist() == [0, 64]


def test_denoised_reuse_matches_fresh_evaluation(bimodal):
    g = torch.Generator().manual_seed(2)
    a = OnlineScheduleLearner(sigmas_loglinear(6), n_min=10**9, substeps=2)
    b = OnlineScheduleLearner(sigmas_loglinear(6), n_min=10**9, substeps=2)
    x0 = bimodal.sample(256, generator=g)
    sigma, idx = a.sample_levels(256, generator=g)
    eps = torch.randn(256, 1, generator=g, dtype=F64)
    calls = []

    def counting(x, s):
        calls.append(x.shape[0])
        return bimodal(x, s)

    a.observe(counting, x0, eps, idx)
    n_fresh = sum(calls)
    calls.clear()
    b.observe(counting, x0, eps, idx, denoised=bimodal(x0 + sigma[:, None] * eps, sigma))
    kept = int((idx >= 0).sum())
    assert n_fresh == 4 * kept and sum(calls) == 3 * kept  # 2 evaluations per sub-interval, one reused
    assert torch.allclose(a.sums, b.sums, rtol=1e-10)


def test_sample_levels_uniform_over_schedule():
    learner = OnlineScheduleLearner(sigmas_loglinear(5))
    sigma, idx = learner.sample_levels(40_000, generator=torch.Generator().manual_seed(0))
    assert sigma.dtype == F64 and idx.dtype == torch.int64
    assert torch.equal(sigma, learner.sigmas[idx + 1])
    freq = torch.bincount(idx + 1, minlength=5).to(F64) / 40_000
    assert torch.allclose(freq, torch.full((5,), 0.2, dtype=F64), atol=0.01)
    again, _ = learner.sample_levels(40_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sigma, again)


def test_refine_levels_is_log_uniform_and_keeps_levels():
    s = torch.tensor([0.002, 0.1, 3.0, 80.0], dtype=F64)
    r = refine_levels(s, 4)
    assert r.numel() == 13 and torch.equal(r[::4], s)
    assert torch.allclose(torch.diff(torch.log(r)).reshape(3, 4), torch.diff(torch.log(s))[:, None].expand(3, 4) / 4)
    assert torch.equal(refine_levels(s, 1), s)


# ------------------------------------------------------------------------------------ the cadence


def _manual_batch(learner, target, counts, seed=0):
    """Observe exactly ``counts[i]`` samples of interval ``i``."""
    idx = torch.cat([torch.full((n,), i) for i, n in enumerate(counts)])
    g = torch.Generator().manual_seed(seed)
    x0 = target.sample(idx.numel(), generator=g)
    return learner.observe(target, x0, torch.randn(idx.numel(), 1, generator=g, dtype=F64), idx)


def test_no_update_until_every_interval_has_n_min_then_reset(bimodal):
    learner = OnlineScheduleLearner(sigmas_loglinear(5), n_min=24)  # T = 4
    start = learner.sigmas
    assert not _manual_batch(learner, bimodal, [100, 100, 23, 100])
    assert learner.updates == 0 and torch.equal(learner.sigmas, start) and learner.Lambda is None
    assert learner.counts.tolist() == [100, 100, 23, 100] and not learner.ready
    empty = torch.zeros(0, 1, dtype=F64)
    assert not learner.observe(bimodal, empty, empty, torch.zeros(0, dtype=torch.int64))  # still waiting
    costs = learner.mean_costs()
    assert _manual_batch(learner, bimodal, [0, 0, 1, 0], seed=1)
    assert learner.updates == 1 and learner.Lambda is not None and learner.Lambda > 0
    # Accumulators reset; the last costs are kept for inspection.
    assert learner.counts.tolist() == [0, 0, 0, 0] and torch.all(learner.sums == 0)
    assert torch.isnan(learner.mean_costs()).all()
    assert learner.last_costs.shape == (4,) and torch.allclose(learner.last_costs[[0, 1, 3]], costs[[0, 1, 3]])
    assert not torch.equal(learner.sigmas, start)


def test_update_is_the_gamma_blend_of_algorithm_1(bimodal):
    learner = OnlineScheduleLearner(sigmas_loglinear(6), n_min=5, gamma=0.07)
    before = learner.sigmas
    _manual_batch(learner, bimodal, [5, 6, 7, 8, 9])
    target = update_schedule(before, learner.last_costs).flip(0)
    assert torch.allclose(learner.sigmas, blend(before, target, 0.07), rtol=1e-14)
    assert torch.allclose(torch.log(learner.sigmas), 0.07 * torch.log(target) + 0.93 * torch.log(before))


@pytest.mark.parametrize("gamma", [0.05, 0.5, 1.0])
def test_updates_keep_endpoints_and_monotonicity(gamma):
    """Adversarial costs (one interval 1e6 times the rest, random, zero) never break the schedule."""
    learner = OnlineScheduleLearner(sigmas_loglinear(9), n_min=1, gamma=gamma, substeps=2)
    lo, hi = learner.sigmas[0].item(), learner.sigmas[-1].item()
    g = torch.Generator().manual_seed(0)
    for step in range(40):
        # Score -x h(sigma) with h random and piecewise constant in log sigma, one bin 1e6 times the rest.
        h = torch.rand(60, generator=g, dtype=F64)
        h[step % 60] = 1e6

        def fake(x, s, h=h):
            k = (torch.log(s.to(F64)) * 4).floor().long() % 60
            return x * (1 - s[:, None] ** 2 * h[k][:, None])

        learner.observe(fake, torch.zeros(8, 1, dtype=F64), torch.ones(8, 1, dtype=F64), torch.arange(8))
        s = learner.sigmas
        assert s[0].item() == lo and s[-1].item() == hi
        assert (s[1:] > s[:-1]).all()
    assert learner.updates == 40


def test_zero_costs_leave_the_schedule(caplog):
    """Zero-cost guard (paper.md §5.4): a score that does not depend on sigma carries no information."""
    learner = OnlineScheduleLearner(sigmas_loglinear(5), n_min=2, substeps=3)
    start = learner.sigmas
    with caplog.at_level(logging.WARNING, logger="adasched.optimize"):
        updated = learner.observe(lambda x, s: x, torch.randn(16, 1, dtype=F64),
                                  torch.randn(16, 1, dtype=F64), torch.arange(16) % 4)
    assert updated and "all 12 interval costs are 0" in caplog.text
    assert torch.allclose(learner.sigmas, start, rtol=1e-12)


def test_non_finite_model_is_an_error_and_keeps_the_accumulators(bimodal):
    learner = OnlineScheduleLearner(sigmas_loglinear(5), n_min=100)
    _manual_batch(learner, bimodal, [3, 3, 3, 3])
    sums, counts = learner.sums.clone(), learner.counts.clone()
    with pytest.raises(ModelError, match="non-finite"):
        learner.observe(lambda x, s: x * float("nan"), torch.zeros(4, 1, dtype=F64), torch.ones(4, 1, dtype=F64),
                        torch.arange(4))
    assert torch.equal(learner.sums, sums) and torch.equal(learner.counts, counts)


def test_bad_input_raises_adasched_errors():
    with pytest.raises(ScheduleError, match="strictly increasing"):
        OnlineScheduleLearner([0.1, 0.05, 1.0])
    with pytest.raises(ScheduleError, match="gamma"):
        OnlineScheduleLearner([0.1, 1.0], gamma=0)
    with pytest.raises(ScheduleError, match="valid: lower, upper"):
        OnlineScheduleLearner([0.1, 1.0], weighting="middle")
    with pytest.raises(ScheduleError, match="n_min"):
        OnlineScheduleLearner([0.1, 1.0], n_min=0)
    learner = OnlineScheduleLearner([0.1, 0.5, 1.0])
    x = torch.zeros(3, 1, dtype=F64)
    with pytest.raises(DataError, match=r"-1\.\.1"):
        learner.observe(lambda x, s: x, x, x, torch.tensor([0, 1, 2]))
    with pytest.raises(DataError, match="same shape"):
        learner.observe(lambda x, s: x, x, torch.zeros(3, 2), torch.tensor([0, 1, 1]))
    with pytest.raises(DataError, match="integer"):
        learner.observe(lambda x, s: x, x, x, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(AdaschedError):
        learner.sample_levels(0)


def test_sampler_schedule_round_trip():
    s = sigmas_loglinear(11)  # a sampler schedule: 11 levels from 80 down to 0.002, then 0
    learner = OnlineScheduleLearner(s)
    assert learner.T == 10 and learner.sigmas[0].item() == 0.002 and learner.sigmas[-1].item() == 80.0
    assert torch.equal(learner.sampler_sigmas(), s)


def test_state_dict_round_trip(bimodal):
    a = OnlineScheduleLearner(sigmas_loglinear(6), n_min=30, gamma=0.2, substeps=2)
    _run_exact(a, bimodal, 100, 3, seed=3)
    _run_exact(a, bimodal, 10, 1, seed=5)  # some updates and a partly filled accumulator
    assert a.updates >= 1 and a.counts.sum() > 0
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = OnlineScheduleLearner(sigmas_loglinear(6), n_min=30, gamma=0.2, substeps=2)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for name in ("sigmas", "sums", "counts", "last_costs"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert b.updates == a.updates and b.Lambda == a.Lambda
    _run_exact(a, bimodal, 100, 5, seed=4)
    _run_exact(b, bimodal, 100, 5, seed=4)
    assert torch.equal(a.sigmas, b.sigmas) and torch.equal(a.sums, b.sums) and a.updates == b.updates
    with pytest.raises(ScheduleError, match="substeps"):
        OnlineScheduleLearner(sigmas_loglinear(6), substeps=3).load_state_dict(a.state_dict())
    with pytest.raises(ScheduleError, match="levels"):
        OnlineScheduleLearner(sigmas_loglinear(7), substeps=2).load_state_dict(a.state_dict())


# -------------------------------------------------------------------- convergence, exact score


def test_paper_algorithm2_converges_to_its_equal_cost_fixed_point(bimodal):
    """Exact score, T = 10, substeps = 1 (the paper's algorithm), from a log-linear start.

    Target: the fixed point of Algorithm 1 on the *exact* costs of the schedule's own 10 intervals
    (iterated by quadrature), i.e. the schedule with 10 equal incremental costs.  Measured: max relative
    deviation 1.2% after 300 updates (MC noise of ~190 samples per interval per update, averaged by the
    gamma = 0.05 blend); tolerance 4%.

    This fixed point is NOT the offline schedule of a fine probe (paper.md §6.2 weighting pitfall): the first
    interval is weighted by sigma_min^2 = 0.002^2, so its coarse cost is tiny and Algorithm 2 pushes sigma_1
    from 0.1165 (§6.4) to ~1.4.  The test pins that down too, so that the limitation stays documented.
    """
    fixed = np.geomspace(0.002, 80.0, 11)
    for _ in range(150):
        fixed = blend(fixed, update_schedule(fixed, _quad_costs(bimodal, fixed)).flip(0), 0.5).numpy()
    costs = _quad_costs(bimodal, fixed)
    assert costs.max() / costs.min() - 1 < 1e-6  # equal costs: the fixed point
    learner = OnlineScheduleLearner(sigmas_loglinear(11))
    _run_exact(learner, bimodal, 2048, 300, seed=0)
    assert learner.updates >= 280
    assert _maxdev(learner.sigmas, fixed) < 0.04
    assert learner.sigmas[1] > 5 * PAPER_T10[1]


def test_substeps_converge_to_the_offline_score_optimal_schedule(bimodal):
    """Exact score, T = 100 levels, substeps = 8, log-linear start, gamma = 0.1.

    Target: the offline score-optimal schedule (Algorithm 1 on exact costs of a 400-interval probe).  Every
    10th learned level is compared with §6.4's T = 10 schedule (the same Lambda fractions i/10); the whole
    T = 100 schedule with the offline T = 100 one.  Measured: 1.5% and 5.8% (the latter at sigma_1, whose
    interval stays wide because the cost is tiny there; the exact-cost fixed point of the same algorithm is
    1.2% / 6.4% away, the rest is MC noise).  Tolerances 3% and 10%.
    """
    offline100, _ = _offline(bimodal, 100)
    learner = OnlineScheduleLearner(sigmas_loglinear(101), gamma=0.1, substeps=8)
    _run_exact(learner, bimodal, 4096, 150, seed=1)
    assert learner.updates >= 100
    assert _maxdev(learner.sigmas[::10], PAPER_T10) < 0.03
    assert _maxdev(learner.sigmas, offline100) < 0.10
    assert learner.Lambda == pytest.approx(13.198, rel=0.03)


# ------------------------------------------------------------------ convergence, trained model


class _TinyEDM(nn.Module):
    """A 3-layer MLP with EDM preconditioning (Karras et al. 2022, Table 1): D = c_skip x + c_out F(c_in x, c_noise)."""

    def __init__(self, sigma_data: float, width: int = 64):
        super().__init__()
        self.sigma_data = sigma_data
        self.f = nn.Sequential(nn.Linear(2, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                               nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 1))

    def precond(self, sigma):
        s, sd = sigma[:, None], self.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / torch.sqrt(s**2 + sd**2)
        c_in = 1 / torch.sqrt(s**2 + sd**2)
        return c_skip, c_out, c_in, torch.log(s) / 4

    def raw(self, x, sigma):
        c_skip, c_out, c_in, c_noise = self.precond(sigma)
        return self.f(torch.cat([c_in * x, c_noise], 1)), c_skip, c_out

    def forward(self, x, sigma):
        F, c_skip, c_out = self.raw(x, sigma.to(x.dtype))
        return c_skip * x + c_out * F


@pytest.mark.slow
def test_training_with_the_learner_finds_the_offline_schedule(bimodal):
    """A tiny EDM-preconditioned MLP trained by denoising score matching on levels drawn by the learner.

    T = 100 levels, substeps = 4, gamma = 0.1, observe() on every 4th batch (6000 batches of 256, float32,
    ~13 s on one quiet CPU thread).  Measured over seeds 0-3: every 10th learned level is 8-11% (seed 0: 8.2%)
    from the exact-score offline T = 10 schedule (§6.4), always worst at sigma_1 (learned ~0.105 against
    0.1165).  That gap is the *model's*, not the learner's: the offline schedule computed from the trained
    network's own score (same 400-interval quadrature) is 9-13% from §6.4 in the same place, and the online
    schedule is within 1.4-5.4% of it.  At low sigma the true cost is tiny while the network's error enters
    the score as err(F) / sigma (EDM's c_out ~ sigma), so a 1-D model trained for seconds over-costs
    sigma < 0.1.  Tolerances: 20% against the exact-score schedule (loose, for that reason), 8% against the
    model's own offline schedule.
    """
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = _TinyEDM(sigma_data=math.sqrt(1 + C**2))
    steps, batch = 6000, 256
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    lr = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    learner = OnlineScheduleLearner(sigmas_loglinear(101), gamma=0.1, substeps=4)
    for step in range(steps):
        x0 = bimodal.sample(batch, generator=g, dtype=torch.float32)
        sigma, idx = learner.sample_levels(batch, generator=g)
        sigma = sigma.float()
        eps = torch.randn(batch, 1, generator=g)
        x = x0 + sigma[:, None] * eps
        F, c_skip, c_out = net.raw(x, sigma)
        loss = (F - (x0 - c_skip * x) / c_out).pow(2).mean()  # EDM loss: lambda(sigma) |D - x0|^2
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr.step()
        if step % 4 == 0:
            learner.observe(net, x0, eps, idx, denoised=(c_skip * x + c_out * F).detach())
    assert learner.updates >= 80
    learned = learner.sigmas.numpy()
    model_offline, _ = _offline(net, 100)
    assert _maxdev(learned[::10], PAPER_T10) < 0.20
    assert _maxdev(learned[::10], model_offline[::10]) < 0.08
