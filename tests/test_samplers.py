"""Samplers against exact truth: convergence orders, NFE accounting, common random numbers, and a
second, independent implementation of every solver (tests/reference_solvers.py)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import reference_solvers as ref
from adasched.denoisers import CountingDenoiser
from adasched.errors import SolverError
from adasched.samplers import SOLVERS, PerSampleGenerator, generate, get_solver, latents, nfe_for_steps, steps_for_nfe
from adasched.schedules import sigmas_edm, sigmas_kl_optimal, sigmas_loglinear, sigmas_time_uniform

F64 = torch.float64
DETERMINISTIC = ["euler", "heun", "dpmpp-2m", "ipndm"]


def _run(solver, denoise, seeds, shape, sigmas, **opts):
    """Sample the given seeds as one batch: unit latents scaled to sigma_0, per-seed noise generators."""
    z = latents(seeds, shape).to(F64)
    gen = PerSampleGenerator(seeds) if SOLVERS[solver].stochastic else None
    return SOLVERS[solver].fn(denoise, z * sigmas[0], sigmas, generator=gen, **opts)


def _rmse(a, b):
    return ((a - b) ** 2).mean().sqrt().item()


def _observed_order(steps, errors):
    """Minus the least-squares slope of log error against log steps."""
    slope, _ = np.polyfit(np.log(np.asarray(steps, float)), np.log(np.asarray(errors, float)), 1)
    return -slope


# --------------------------------------------------------------------------------------------------
# 1. Convergence orders on Gaussian data (closed-form probability-flow ODE solution)
# --------------------------------------------------------------------------------------------------

def _edm7(n):
    return sigmas_edm(n, 0.002, 80.0, rho=7.0)


def _loglinear(n):
    return sigmas_loglinear(n, 0.002, 80.0)


def _uniform_to_zero(n, sigma_max=20.0):
    """Equal steps in sigma all the way down, the last one included: sigma_i = sigma_max (1 - i/n).

    This is EDM's schedule with rho = 1 and sigma_min = sigma_max / n, so sigma_min shrinks with the step.
    """
    s = sigmas_edm(n, sigma_max / n, sigma_max, rho=1.0)
    assert torch.allclose(s[:-1] - s[1:], torch.full((n,), sigma_max / n, dtype=F64), rtol=1e-9)
    return s


# Why these schedules and ranges (gaussian_8d: per-axis data variances lambda = 0.25..1):
#  * EDM rho=7 and log-linear on 0.002..80 are the schedules people use.  The last step to sigma=0 is a
#    denoiser jump for euler, heun (Euler on the last step) and dpmpp-2m, leaving an error floor
#    ~ sigma_min^2 / (2 lambda) |x - mu| (2.6e-6 RMSE here) that does not shrink with N; over 32..256
#    steps the errors (Euler 7e-2..8e-3, Heun / DPM++ 1e-2..1e-4) stay well above it, while below ~32
#    steps the second-order methods are still pre-asymptotic (local slopes 1.3..2.4 from 8 to 32 steps).
#  * iPNDM takes Adams-Bashforth steps with the weights of EQUAL steps.  On a grid sigma_i = g(i / N)
#    with g'' != 0 (EDM, log-linear) those weights are only consistent to second order: per step the
#    method misses the exact increment by ~ g'' phi' h^3 / 12, so its global order there is 2 (measured
#    2.0-2.1 over 32..256 steps on EDM rho=7 and log-linear, at a smaller constant than Heun's) and we
#    only ask for >= 1.8.  Its design order shows on equal steps in sigma: with the last step to 0 of the
#    same size (no sigma_min floor) it is Adams-Bashforth 4 after a 3-step warm start.  The error is then
#    ~ C4 h^4 + C2 h^2 with h = sigma_max / N: C4 is set near sigma ~ sqrt(lambda) (at large sigma
#    nothing happens), while C2, from the Euler first step at sigma_max, is ~ lambda^1.5 / sigma_max^2
#    and tiny, so h^4 dominates for h >= ~0.005 (errors above ~1e-9).  sigma_max = 20 with 512..4096
#    steps (h = 0.04..0.005) is in that regime: local slopes 3.92, 3.99, 4.01.  (At sigma_max = 10,
#    4096 steps, the h^2 term shows: the local slope drops to 3.5 near an error of 2e-10.)
CONVERGENCE = [
    # solver, schedule name, schedule, step counts, (lowest, highest) accepted order
    ("euler", "edm7", _edm7, (32, 64, 128, 256), (0.85, 1.2)),
    ("euler", "loglinear", _loglinear, (32, 64, 128, 256), (0.85, 1.2)),
    ("heun", "edm7", _edm7, (32, 64, 128, 256), (1.8, 2.3)),
    ("heun", "loglinear", _loglinear, (32, 64, 128, 256), (1.8, 2.3)),
    ("dpmpp-2m", "edm7", _edm7, (32, 64, 128, 256), (1.8, 2.3)),
    ("dpmpp-2m", "loglinear", _loglinear, (32, 64, 128, 256), (1.8, 2.3)),
    ("ipndm", "edm7", _edm7, (32, 64, 128, 256), (1.8, 4.4)),
    ("ipndm", "uniform-to-0", _uniform_to_zero, (512, 1024, 2048, 4096), (2.9, 4.4)),
]


@pytest.mark.parametrize("solver,name,schedule,steps,bounds", CONVERGENCE,
                         ids=[f"{c[0]}-{c[1]}" for c in CONVERGENCE])
def test_convergence_order_on_gaussian(gaussian_8d, solver, name, schedule, steps, bounds):
    errors = []
    for n in steps:
        s = schedule(n)
        x = latents(range(32), (8,)).to(F64) * s[0]
        exact = gaussian_8d.ode_solution(x, float(s[0]), 0.0)
        errors.append(_rmse(SOLVERS[solver].fn(gaussian_8d, x, s), exact))
    order = _observed_order(steps, errors)
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:])), errors
    assert bounds[0] <= order <= bounds[1], f"{solver} on {name}: order {order:.3f}, errors {errors}"


def test_closed_form_is_what_the_samplers_converge_to(gaussian_8d):
    """Guard against a wrong 'exact' solution: it is the textbook formula, a fine solve lands on it
    (iPNDM, 1024 equal steps: error ~3e-8) and a coarse one does not."""
    s = _uniform_to_zero(1024, 10.0)
    x = latents(range(8), (8,)).to(F64) * s[0]
    exact = gaussian_8d.ode_solution(x, float(s[0]), 0.0)
    mu, lam = gaussian_8d.means[0], gaussian_8d.variances[0]
    # x(sigma) - mu scales like sqrt(lambda + sigma^2) along each axis
    torch.testing.assert_close(exact, mu + (x - mu) * torch.sqrt(lam / (lam + 100.0)), rtol=1e-14, atol=1e-14)
    assert _rmse(SOLVERS["ipndm"].fn(gaussian_8d, x, s), exact) < 2e-7
    assert _rmse(SOLVERS["ipndm"].fn(gaussian_8d, x, _uniform_to_zero(8, 10.0)), exact) > 1e-3


# --------------------------------------------------------------------------------------------------
# 2. Gaussian mixtures: error against the high-accuracy ODE reference falls with NFE
# --------------------------------------------------------------------------------------------------

def _reachable_nfe(solver, target):
    """The smallest NFE >= target that the solver can spend exactly."""
    for nfe in range(target, 2 * target + 2):
        try:
            steps_for_nfe(solver, nfe)
            return nfe
        except SolverError:
            continue
    raise AssertionError(f"{solver} reaches no NFE in [{target}, {2 * target + 1}]")


@pytest.mark.parametrize("mixture,num", [("mixture_2d", 64), ("mixture_64d", 32)])
def test_mixture_error_falls_with_nfe(request, mixture, num):
    gmm = request.getfixturevalue(mixture)
    d = gmm.shape[0]
    x = latents(range(num), (d,)).to(F64) * 80.0
    exact = gmm.ode_solution(x, 80.0, 0.0)  # every EDM schedule below starts at sigma_max = 80
    for solver in DETERMINISTIC:
        nfes = [_reachable_nfe(solver, t) for t in (8, 16, 32, 64)]
        assert nfes == ([9, 17, 33, 65] if solver == "heun" else [8, 16, 32, 64])
        errors = []
        for nfe in nfes:
            s = sigmas_edm(steps_for_nfe(solver, nfe))
            counting = CountingDenoiser(gmm)
            out = SOLVERS[solver].fn(counting, x, s)
            assert counting.nfe == nfe
            errors.append(_rmse(out, exact))
        assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:])), f"{mixture} {solver}: {errors}"
        # and not by a trifle: an 8x NFE increase buys >= 4x (first order) or >= 30x (higher order)
        assert errors[-1] < errors[0] / (4 if solver == "euler" else 30), f"{mixture} {solver}: {errors}"
    # the reference is what a fine solve converges to (Heun, 1023 NFE: ~3e-5, the sigma_min floor ~1e-5)
    assert _rmse(SOLVERS["heun"].fn(gmm, x, sigmas_edm(512)), exact) < 1e-4


# --------------------------------------------------------------------------------------------------
# 3. NFE accounting: counted evaluations == formula; steps_for_nfe is its exact inverse
# --------------------------------------------------------------------------------------------------

NFE_CASES = [
    ("euler", {}),
    ("heun", {}),
    ("dpmpp-2m", {}),
    ("ipndm", {}),
    ("ipndm", {"max_order": 2}),
    ("edm-stochastic", {}),
    ("edm-stochastic", {"S_churn": 40.0, "S_min": 0.05, "S_max": 50.0, "S_noise": 1.007}),
    ("pc-langevin", {"langevin_steps": 0}),
    ("pc-langevin", {"langevin_steps": 1}),
    ("pc-langevin", {"langevin_steps": 3}),
]
NFE_IDS = [f"{s}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for s, o in NFE_CASES]


def _formula(solver, n, opts):
    """The NFE formulas as the docs state them, written out independently of SOLVERS."""
    if solver in ("euler", "dpmpp-2m", "ipndm"):
        return n
    if solver in ("heun", "edm-stochastic"):
        return 2 * n - 1
    if solver == "pc-langevin":
        return n + opts.get("langevin_steps", 1) * (n - 1)
    raise AssertionError(solver)


def test_every_solver_is_covered():
    assert {s for s, _ in NFE_CASES} == set(SOLVERS) == {"euler", "heun", "dpmpp-2m", "ipndm", "edm-stochastic",
                                                         "pc-langevin"}
    assert nfe_for_steps("heun", 18) == 35  # EDM: 18 Heun steps cost 35 evaluations


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 18])
@pytest.mark.parametrize("solver,opts", NFE_CASES, ids=NFE_IDS)
def test_counted_nfe_equals_formula(mixture_2d, solver, opts, steps):
    counting = CountingDenoiser(mixture_2d)
    out = _run(solver, counting, [3, 4, 5], (2,), sigmas_edm(steps), **opts)
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    expected = nfe_for_steps(solver, steps, **opts)
    assert expected == _formula(solver, steps, opts)
    assert counting.nfe == expected
    assert counting.evaluations == 3 * expected


@pytest.mark.parametrize("solver,opts", NFE_CASES, ids=NFE_IDS)
def test_steps_for_nfe_is_exact_inverse(solver, opts):
    reachable = {nfe_for_steps(solver, n, **opts): n for n in range(1, 80)}
    for n in range(1, 40):
        assert steps_for_nfe(solver, nfe_for_steps(solver, n, **opts), **opts) == n
    for nfe in range(1, 60):  # every NFE either maps to the exact step count or is refused
        if nfe in reachable:
            assert steps_for_nfe(solver, nfe, **opts) == reachable[nfe]
        else:
            with pytest.raises(SolverError):
                steps_for_nfe(solver, nfe, **opts)


@pytest.mark.parametrize("solver,opts,nfe,below,above", [
    ("heun", {}, 2, 1, 3),
    ("heun", {}, 10, 9, 11),
    ("heun", {}, 36, 35, 37),
    ("edm-stochastic", {}, 20, 19, 21),
    ("pc-langevin", {"langevin_steps": 1}, 8, 7, 9),
    ("pc-langevin", {"langevin_steps": 3}, 7, 5, 9),
    ("pc-langevin", {"langevin_steps": 3}, 2, 1, 5),
])
def test_unreachable_nfe_is_an_error_naming_reachable_ones(solver, opts, nfe, below, above):
    with pytest.raises(SolverError) as info:
        steps_for_nfe(solver, nfe, **opts)
    msg = str(info.value)
    assert "\n" not in msg and solver in msg and str(nfe) in msg
    named = [int(v) for v in re.findall(r"\d+", msg.split("reachable")[-1])]
    assert below in named and above in named and nfe not in named, msg


def test_bad_solver_steps_and_nfe_are_errors():
    with pytest.raises(SolverError, match="euler.*heun.*dpmpp-2m.*ipndm.*edm-stochastic.*pc-langevin"):
        get_solver("rk45")
    for bad in (0, -3, 2.5):
        with pytest.raises(SolverError):
            nfe_for_steps("euler", bad)
        with pytest.raises(SolverError):
            steps_for_nfe("euler", bad)
    with pytest.raises(SolverError):
        steps_for_nfe("rk45", 10)


# --------------------------------------------------------------------------------------------------
# 4. Common random numbers: results do not depend on the batch a seed is in
# --------------------------------------------------------------------------------------------------

CRN_CASES = [
    ("euler", {}),
    ("heun", {}),
    ("dpmpp-2m", {}),
    ("ipndm", {}),
    ("edm-stochastic", {"S_churn": 30.0, "S_min": 0.01, "S_max": 50.0, "S_noise": 1.007}),
    ("pc-langevin", {"langevin_steps": 2, "langevin_eta": 0.2}),
]


@pytest.mark.parametrize("mixture", ["mixture_3d", "mixture_64d"])
@pytest.mark.parametrize("solver,opts", CRN_CASES, ids=[c[0] for c in CRN_CASES])
def test_common_random_numbers_bitwise_across_batch_sizes(request, mixture, solver, opts):
    gmm = request.getfixturevalue(mixture)
    shape, s, seeds = gmm.shape, sigmas_edm(12), list(range(64))
    whole = _run(solver, gmm, seeds, shape, s, **opts)
    by_seven = torch.cat([_run(solver, gmm, seeds[i:i + 7], shape, s, **opts) for i in range(0, 64, 7)])
    one_by_one = torch.cat([_run(solver, gmm, [seed], shape, s, **opts) for seed in seeds])
    assert whole.dtype == F64 and whole.shape == (64, *shape)
    assert torch.equal(whole, by_seven)
    assert torch.equal(whole, one_by_one)
    assert torch.equal(whole, _run(solver, gmm, seeds, shape, s, **opts))  # and reruns are identical


@pytest.mark.parametrize("solver,opts", CRN_CASES[4:], ids=[c[0] for c in CRN_CASES[4:]])
def test_stochastic_noise_comes_from_each_rows_own_seed(mixture_3d, solver, opts):
    """Changing one row's noise seed (latents fixed) changes that row only, and does change it."""
    s, seeds = sigmas_edm(12), [10, 11, 12, 13]
    x = latents(seeds, (3,)).to(F64) * s[0]
    fn = SOLVERS[solver].fn
    base = fn(mixture_3d, x, s, generator=PerSampleGenerator(seeds), **opts)
    other = fn(mixture_3d, x, s, generator=PerSampleGenerator([10, 11, 999, 13]), **opts)
    changed = (base != other).any(dim=1)
    assert changed.tolist() == [False, False, True, False]
    with pytest.raises(SolverError, match="generator"):
        fn(mixture_3d, x, s, generator=None, **opts)


# --------------------------------------------------------------------------------------------------
# 5. Agreement with an independent plain implementation of each published algorithm
# --------------------------------------------------------------------------------------------------

REF_SCHEDULES = {
    "edm7-1": sigmas_edm(1),
    "edm7-2": sigmas_edm(2),
    "edm7-6": sigmas_edm(6),
    "edm3-13": sigmas_edm(13, 0.002, 80.0, rho=3.0),
    "loglinear-9": sigmas_loglinear(9, 0.01, 50.0),
    "kl-optimal-7": sigmas_kl_optimal(7),
    "time-uniform-11": sigmas_time_uniform(11),
    "irregular-9": torch.tensor([80.0, 31.0, 30.0, 7.5, 2.0, 1.1, 0.3, 0.05, 0.002, 0.0], dtype=F64),
}

REF_CASES = [
    ("euler", {}),
    ("heun", {}),
    ("dpmpp-2m", {}),
    ("ipndm", {}),
    ("ipndm", {"max_order": 3}),
    # S_churn / N below sqrt(2) - 1 for N >= 7; churn only for sigma_i in [S_min, S_max]
    ("edm-stochastic", {"S_churn": 2.5, "S_min": 0.05, "S_max": 10.0, "S_noise": 1.007}),
    ("edm-stochastic", {"S_churn": 80.0}),  # gamma capped at sqrt(2) - 1, churn on every step
    ("pc-langevin", {"langevin_steps": 0}),
    ("pc-langevin", {"langevin_steps": 1}),
    ("pc-langevin", {"langevin_steps": 3, "langevin_eta": 0.3}),
]

#: Plain float64 on both sides: the two implementations agree to ~1e-14 relative.  The bar asked for is
#: 1e-6; we hold them to 1e-9, which still leaves 10^4 of slack but would catch float32 leaking in.
REF_RTOL = 1e-9


class RecordingGenerator:
    """A PerSampleGenerator that keeps every draw it hands out, to replay them to the reference."""

    def __init__(self, seeds):
        self.inner = PerSampleGenerator(seeds)
        self.draws = []

    def randn_like(self, x):
        z = self.inner.randn_like(x)
        self.draws.append(z.clone())
        return z


def _reference(solver, opts, D, x, t, step_draws):
    """Run the reference solver for one sample; ``step_draws[i]`` lists that sample's draws in step i."""
    if solver == "euler":
        return ref.euler(D, x, t)
    if solver == "heun":
        return ref.heun(D, x, t)
    if solver == "dpmpp-2m":
        return ref.dpmpp_2m(D, x, t)
    if solver == "ipndm":
        return ref.ipndm(D, x, t, **opts)
    if solver == "edm-stochastic":
        noise = [draws[0] if draws else None for draws in step_draws]
        return ref.edm_stochastic(D, x, t, noise, **opts)
    if solver == "pc-langevin":
        return ref.pc_langevin(D, x, t, step_draws, **opts)
    raise AssertionError(solver)


def test_reference_gmm_denoiser_matches(mixture_3d):
    D = ref.gmm_denoiser(mixture_3d.weights.tolist(), mixture_3d.means.tolist(), mixture_3d.variances.tolist())
    g = torch.Generator().manual_seed(1)
    for sigma in (0.002, 0.1, 1.0, 80.0):
        x = torch.randn(16, 3, generator=g, dtype=F64) * (1 + sigma)
        got = mixture_3d(x, torch.full((16,), sigma, dtype=F64)).numpy()
        want = np.stack([D(row, sigma) for row in x.numpy()])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * (1 + sigma))


@pytest.mark.parametrize("schedule", list(REF_SCHEDULES))
@pytest.mark.parametrize("solver,opts", REF_CASES,
                         ids=[f"{s}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for s, o in REF_CASES])
def test_matches_independent_reference(mixture_3d, solver, opts, schedule):
    s = REF_SCHEDULES[schedule]
    seeds = [21, 22, 23, 24]
    x = latents(seeds, (3,)).to(F64) * s[0]
    gen = RecordingGenerator(seeds) if SOLVERS[solver].stochastic else None
    marks = []

    def callback(i, x_i, sigma, denoised):
        assert i == len(marks) and float(sigma) == float(s[i + 1])
        marks.append(len(gen.draws) if gen is not None else 0)

    got = SOLVERS[solver].fn(mixture_3d, x, s, generator=gen, callback=callback, **opts)
    n = len(s) - 1
    assert len(marks) == n
    windows = [(marks[i - 1] if i else 0, marks[i]) for i in range(n)]

    # the noise was drawn where the algorithm needs it, and nowhere else
    t = s.tolist()
    if solver == "edm-stochastic":
        churn = opts.get("S_churn", 0.0) > 0
        want = [int(churn and opts.get("S_min", 0.0) <= t[i] <= opts.get("S_max", math.inf)) for i in range(n)]
        assert [b - a for a, b in windows] == want
        if schedule == "edm7-6" and "S_min" in opts:
            assert 0 < sum(want) < n  # this case mixes churned and plain steps
    elif solver == "pc-langevin":
        k = opts.get("langevin_steps", 1)
        assert [b - a for a, b in windows] == [k if t[i + 1] > 0 else 0 for i in range(n)]

    D = ref.gmm_denoiser(mixture_3d.weights.tolist(), mixture_3d.means.tolist(), mixture_3d.variances.tolist())
    for b in range(len(seeds)):
        step_draws = [[gen.draws[k][b].numpy() for k in range(lo, hi)] if gen is not None else [] for lo, hi in windows]
        want = _reference(solver, opts, D, x[b].numpy(), t, step_draws)
        err = np.linalg.norm(got[b].numpy() - want) / np.linalg.norm(want)
        assert err <= REF_RTOL, f"sample {b}: relative difference {err:.3g}"


def test_reference_and_samplers_differ_between_solvers(mixture_3d):
    """The cross-check has teeth: the solvers really do differ from each other on these schedules."""
    s = REF_SCHEDULES["irregular-9"]
    x = latents([1, 2], (3,)).to(F64) * s[0]
    outs = {name: SOLVERS[name].fn(mixture_3d, x, s) for name in DETERMINISTIC}
    for a in DETERMINISTIC:
        for b in DETERMINISTIC:
            if a < b:
                assert (outs[a] - outs[b]).norm() > 1e-4 * outs[a].norm(), (a, b)


# --------------------------------------------------------------------------------------------------
# Sampler protocol: callbacks, dtype, autograd through the schedule, schedule validation
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", DETERMINISTIC)
def test_gradient_flows_to_the_schedule(mixture_3d, solver):
    """No no_grad inside a sampler: d(output)/d(sigma_i) matches a central finite difference."""
    base = sigmas_edm(6)
    x = latents([5, 6], (3,)).to(F64) * base[0]
    s = base.clone().requires_grad_(True)
    out = SOLVERS[solver].fn(mixture_3d, x, s).sum()
    (grad,) = torch.autograd.grad(out, s)
    i, eps = 3, 1e-6 * float(base[3])
    plus, minus = base.clone(), base.clone()
    plus[i] += eps
    minus[i] -= eps
    fd = (SOLVERS[solver].fn(mixture_3d, x, plus).sum() - SOLVERS[solver].fn(mixture_3d, x, minus).sum()) / (2 * eps)
    assert abs(float(grad[i]) - float(fd)) <= 1e-5 * abs(float(fd)) and float(fd) != 0


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_samplers_validate_the_schedule(mixture_3d, solver):
    x = torch.zeros(2, 3, dtype=F64)
    gen = PerSampleGenerator([0, 1])
    for bad in ([80.0, 1.0, 0.5], [80.0, 80.0, 0.0], [1.0, 2.0, 0.0], [80.0, float("nan"), 0.0]):
        with pytest.raises(Exception) as info:
            SOLVERS[solver].fn(mixture_3d, x, torch.tensor(bad, dtype=F64), generator=gen)
        assert type(info.value).__name__ == "ScheduleError"


def test_generate_draws_a_class_per_seed_for_a_conditional_model():
    """One class per seed, right after the latent, whatever the batch; each sample from its own class."""
    from conditional_gaussians import ConditionalGaussians

    model = ConditionalGaussians([[-20.0, 0.0], [0.0, 20.0], [20.0, 0.0]], c=0.5)
    s = sigmas_edm(32, 0.002, 80.0)
    seeds = list(range(100, 160))
    a = generate(model, s, "heun", seeds, model.shape, batch=7)
    b = generate(model, s, "heun", seeds, model.shape, batch=60)
    assert a["labels"].dtype == torch.int64 and set(a["labels"].tolist()) == {0, 1, 2}
    assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["samples"], b["samples"])
    gen = PerSampleGenerator(seeds)  # the latent first, then the class
    assert torch.equal(gen.randn(model.shape), a["latents"]) and torch.equal(gen.randint(3), a["labels"])
    nearest = torch.cdist(a["samples"].double(), model.means).argmin(1)
    assert torch.equal(nearest, a["labels"])
    # Bound labels are kept, and none are drawn.
    bound = generate(model.with_labels(torch.tensor(1)), s, "heun", seeds, model.shape)
    assert "labels" not in bound and torch.equal(torch.cdist(bound["samples"].double(), model.means).argmin(1),
                                                 torch.ones(60, dtype=torch.int64))
