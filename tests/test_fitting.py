"""Schedules fitted through the sampler (adasched.fitting) against exact truth."""

from __future__ import annotations

import math

import pytest
import scipy.optimize
import torch

from adasched.errors import AdaschedError
from adasched.fitting import candidate_schedules, fit_schedule, oracle_schedule, solver_aware_schedule
from adasched.samplers import SOLVERS, latents, steps_for_nfe
from adasched.schedules import sigmas_edm, sigmas_kl_optimal, sigmas_loglinear
from adasched.targets import GaussianMixture

F64 = torch.float64


def _euler_gain(s1: float, s0: float, var: float) -> float:
    """Euler on N(0, var) from s0 via s1 to 0 multiplies x by this (dx/dsigma = x sigma / (var + sigma^2))."""
    return (1 + (s1 - s0) * s0 / (var + s0**2)) * var / (var + s1**2)


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_fit_schedule_finds_the_euler_optimum_of_a_gaussian(optimizer):
    var, s0 = 1.0, 5.0
    exact_gain = math.sqrt(var / (var + s0**2))  # the probability-flow ODE's exact map from s0 to 0
    best = scipy.optimize.minimize_scalar(lambda s: (_euler_gain(s, s0, var) - exact_gain) ** 2,
                                          bounds=(1e-3, s0 - 1e-3), method="bounded", options={"xatol": 1e-10})
    g = GaussianMixture([1.0], [[0.0]], [[var]])
    x = latents(range(8), (1,)).double() * s0
    init = torch.tensor([s0, 3.0, 0.0], dtype=F64)
    fitted = fit_schedule(g, "euler", init, x, x * exact_gain, iterations=300, lr=0.1, optimizer=optimizer)
    assert fitted[0] == s0 and fitted[-1] == 0 and fitted.numel() == 3
    assert float(fitted[1]) == pytest.approx(best.x, rel=0.02)
    loss = (_euler_gain(float(fitted[1]), s0, var) - exact_gain) ** 2
    assert loss <= best.fun * (1 + 1e-4) + 1e-18
    assert (_euler_gain(3.0, s0, var) - exact_gain) ** 2 > 1.5 * best.fun  # the start was not already there


def test_fit_schedule_starts_from_a_fit_pinned_at_the_floor_and_refuses_one_below_it():
    """A fit that drove its last level to the floor (``floor + exp(log_s)`` rounds to it) is a valid start."""
    g = GaussianMixture([1.0], [[0.0]], [[1.0]])
    x = latents(range(8), (1,)).double() * 5.0
    at_floor = torch.tensor([5.0, 1.0, 1e-4, 0.0], dtype=F64)
    fitted = fit_schedule(g, "euler", at_floor, x, x * 0.2, iterations=20, optimizer="lbfgs")
    assert fitted.numel() == 4 and float(fitted[-2]) >= 1e-4
    with pytest.raises(AdaschedError, match="last positive sigma 5e-05 is below the floor 0.0001"):
        fit_schedule(g, "euler", torch.tensor([5.0, 1.0, 5e-5, 0.0], dtype=F64), x, x * 0.2, optimizer="lbfgs")


def test_fit_schedule_names_the_valid_optimizers():
    with pytest.raises(AdaschedError, match="unknown optimizer 'sgd'; valid: adam, lbfgs"):
        fit_schedule(None, "euler", sigmas_edm(4), torch.zeros(1, 1), torch.zeros(1, 1), optimizer="sgd")


MIX = GaussianMixture([0.3, 0.7], [[-1.0, 0.0], [1.0, 0.5]], [[0.01, 0.1], [0.05, 0.02]])


def _error(solver, sigmas, x, exact):
    return float((SOLVERS[solver].fn(MIX, x, sigmas) - exact).pow(2).mean())


@pytest.mark.parametrize("solver", ["dpmpp-2m", "ipndm"])
def test_oracle_schedule_is_no_worse_than_any_schedule_it_is_compared_with(solver):
    steps, seeds = steps_for_nfe(solver, 6), list(range(24))
    x = latents(seeds, (2,)).double() * 80.0
    exact = MIX.ode_solution(x, 80.0, 0.0)
    given = [sigmas_loglinear(steps), sigmas_kl_optimal(steps), sigmas_edm(steps, rho=3.0)]
    oracle = oracle_schedule(MIX, solver, steps, seeds, candidates=given, iterations=30)
    assert oracle[0] == 80.0 and oracle[-1] == 0 and torch.all(oracle[:-1] > oracle[1:])
    err = _error(solver, oracle, x, exact)
    assert all(err <= _error(solver, s, x, exact) for s in [sigmas_edm(steps), *given])
    assert err < 0.8 * min(_error(solver, s, x, exact) for s in [sigmas_edm(steps), *given])


def test_solver_aware_against_the_exact_solution_is_the_oracle():
    """One search, two references: the model's own high-NFE solve, or (oracle) the exact solution."""
    steps, seeds = steps_for_nfe("euler", 5), list(range(16))
    init = sigmas_edm(steps)
    solutions = MIX.ode_solution(latents(seeds, (2,)).double() * 80.0, 80.0, 0.0)
    exact = solver_aware_schedule(MIX, (2,), "euler", init, seeds, iterations=20, reference=solutions).sigmas
    torch.testing.assert_close(exact, oracle_schedule(MIX, "euler", steps, seeds, iterations=20), rtol=0, atol=0)


def test_lbfgs_restarts_from_its_best_point_until_it_stops_gaining(monkeypatch):
    """A single L-BFGS run stalls far above the minimum on a Gaussian's iPNDM error; restarted with a fresh
    curvature history it goes on (exact truth: the closed-form ODE solution as the target)."""
    import adasched.fitting
    from adasched.targets import PowerLawGaussian

    pl = PowerLawGaussian((1, 8, 8), alpha=2.0).in_eigenbasis()
    x = latents(range(16), pl.shape).double() * 80.0
    exact = pl.ode_solution(x, 80.0, 0.0)
    start = sigmas_edm(steps_for_nfe("ipndm", 15), 0.002, 80.0)

    def fitted_error():  # plain runs only: the whitened rounds would hide what the restarts do
        s = fit_schedule(pl, "ipndm", start, x, exact, iterations=200, optimizer="lbfgs", whitened_rounds=0)
        return float((SOLVERS["ipndm"].fn(pl, x, s) - exact).pow(2).mean())

    restarted = fitted_error()
    monkeypatch.setattr(adasched.fitting, "LBFGS_RUNS", 1)
    assert restarted < 0.1 * fitted_error()


def test_lbfgs_keeps_the_best_schedule_when_a_trial_step_is_invalid():
    """A line-search trial can merge two levels (the sampler refuses the schedule): the fit stops there and
    returns the best schedule it evaluated instead of failing."""
    from adasched.errors import ScheduleError

    calls = 0

    def denoise(x, sigma):
        nonlocal calls
        calls += 1
        if calls > 12:
            raise ScheduleError("sigmas must be strictly decreasing")
        return MIX(x, sigma)

    steps, seeds = steps_for_nfe("euler", 4), list(range(8))
    x = latents(seeds, (2,)).double() * 80.0
    exact = MIX.ode_solution(x, 80.0, 0.0)
    start = sigmas_edm(steps)
    # (plain runs only: this denoiser would also refuse the whitened rounds' Hessian at a valid schedule)
    fitted = fit_schedule(denoise, "euler", start, x, exact, iterations=50, optimizer="lbfgs", whitened_rounds=0)
    assert calls > 12 and fitted.numel() == start.numel()
    assert _error("euler", fitted, x, exact) <= _error("euler", start, x, exact) * (1 + 1e-12)


STOCHASTIC = {"edm-stochastic": {"S_churn": 10.0}, "pc-langevin": {"langevin_eta": 0.5}}


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_hessian_of_the_fit_error_matches_finite_differences_of_its_gradient(solver):
    """Double backward through every solver, stochastic ones with their noise fixed by the per-sample
    generators, against central differences of the autograd gradient."""
    from adasched.fitting import _from_params, _to_params, hessian
    from adasched.samplers import PerSampleGenerator

    seeds = list(range(8))
    x = latents(seeds, (2,)).double() * 80.0
    exact = MIX.ode_solution(x, 80.0, 0.0)
    options = STOCHASTIC.get(solver, {})

    def loss_of(theta):
        gen = PerSampleGenerator(seeds) if SOLVERS[solver].stochastic else None
        out = SOLVERS[solver].fn(MIX, x, _from_params(theta, 80.0, 1e-4), generator=gen, **options)
        return (out - exact).pow(2).mean()

    def grad(theta):
        theta = theta.detach().clone().requires_grad_(True)
        return torch.autograd.grad(loss_of(theta), theta)[0]

    theta = _to_params(sigmas_edm(5), 1e-4).detach()
    h = hessian(loss_of, theta)
    eps = 1e-5
    basis = torch.eye(len(theta), dtype=F64)
    fd = torch.stack([(grad(theta + eps * e) - grad(theta - eps * e)) / (2 * eps) for e in basis])
    torch.testing.assert_close(h, (fd + fd.T) / 2, rtol=1e-5, atol=1e-7 * float(h.abs().max()))
    assert float(h.abs().max()) > 0


def test_whitened_rounds_go_far_below_where_plain_lbfgs_stops():
    """The power-law Gaussian's iPNDM error is very ill-conditioned in the log-gaps: plain L-BFGS (with its
    restarts) stops far above where the whitened rounds go (exact truth: the closed-form ODE solution as
    the target; 4.6e-15 against 6.7e-17 when written)."""
    from adasched.targets import PowerLawGaussian

    pl = PowerLawGaussian((1, 8, 8), alpha=2.0).in_eigenbasis()
    x = latents(range(16), pl.shape).double() * 80.0
    exact = pl.ode_solution(x, 80.0, 0.0)
    start = sigmas_edm(steps_for_nfe("ipndm", 20), 0.002, 80.0)

    def error(s):
        return float((SOLVERS["ipndm"].fn(pl, x, s) - exact).pow(2).mean())

    plain = fit_schedule(pl, "ipndm", start, x, exact, iterations=200, optimizer="lbfgs", whitened_rounds=0)
    whitened = fit_schedule(pl, "ipndm", start, x, exact, iterations=200, optimizer="lbfgs", whitened_rounds=5)
    assert error(whitened) < 0.1 * error(plain)


def test_solver_aware_schedule_of_a_conditional_model_fits_the_classes_generate_draws():
    """A class-conditional model is fitted with the classes `generate` draws for the fit seeds: its own
    solves, and so the fitted schedule's error in `generate`, are those of the right class."""
    from conditional_gaussians import ConditionalGaussians

    from adasched.samplers import generate

    model = ConditionalGaussians([[-2.0, 0.0], [0.0, 2.0], [2.0, 0.0]], c=0.3)
    steps, seeds = steps_for_nfe("euler", 5), list(range(1000, 1032))
    init = sigmas_edm(steps)
    fitted = solver_aware_schedule(model, model.shape, "euler", init, seeds, iterations=20).sigmas

    def error(s):  # against the exact solution of each sample's class: mu + (x_T - mu) c / sqrt(c^2 + 80^2)
        out = generate(model, s, "euler", seeds, model.shape)
        mu = model.means[out["labels"]]
        exact = mu + (out["latents"].double() * 80.0 - mu) * 0.3 / (0.3**2 + 80.0**2) ** 0.5
        return float((out["samples"].double() - exact).pow(2).mean().sqrt())

    assert error(fitted) < 0.5 * error(init)


def test_objective_in_chunks_is_the_whole_objective_and_counts_its_evaluations():
    """Gradients accumulated over chunks of latents are the gradient over all of them (float64, up to the
    order of summation), and every network evaluation, forward and backward, is counted per latent."""
    from adasched.fitting import Objective, _from_params, _to_params

    seeds = list(range(10))
    x = latents(seeds, (2,)).double() * 80.0
    target = MIX.ode_solution(x, 80.0, 0.0)
    init = sigmas_edm(steps_for_nfe("heun", 7))
    results = []
    for chunk in (10, 3):
        parts = [(MIX, x[lo:lo + chunk], target[lo:lo + chunk], seeds[lo:lo + chunk]) for lo in range(0, 10, chunk)]
        objective = Objective(parts, "heun")
        theta = _to_params(init, 1e-4)
        value, sigmas = objective(lambda: _from_params(theta, 80.0, 1e-4), gradient=True)
        assert (objective.forward, objective.backward) == (7 * 10, 7 * 10)  # NFE 7 for each of 10 latents
        objective(lambda: sigmas)
        assert (objective.forward, objective.backward) == (2 * 7 * 10, 7 * 10)  # no gradient: forward only
        results.append((value, theta.grad.clone()))
    (v1, g1), (v2, g2) = results
    assert v1 == pytest.approx(_error("heun", init, x, target), rel=1e-12)
    assert v2 == pytest.approx(v1, rel=1e-12)
    torch.testing.assert_close(g2, g1, rtol=1e-10, atol=0)


def test_solver_aware_fit_keeps_to_its_budget_and_says_what_it_spent():
    steps, seeds = steps_for_nfe("dpmpp-2m", 6), list(range(200, 216))
    x = latents(seeds, (2,)).double() * 80.0
    exact = MIX.ode_solution(x, 80.0, 0.0)
    init = sigmas_edm(steps)
    one_solve = 6 * len(seeds)
    fit = solver_aware_schedule(MIX, (2,), "dpmpp-2m", init, seeds, reference=exact, budget=200 * one_solve)
    assert fit.cost["forward"] + fit.cost["backward"] <= 200 * one_solve == fit.cost["budget"]
    assert fit.cost["backward"] > 0 and fit.cost["seconds"] >= 0
    assert fit.error == pytest.approx(_error("dpmpp-2m", fit.sigmas, x, exact), rel=1e-12)
    assert fit.error < 0.5 * fit.start_error <= _error("dpmpp-2m", init, x, exact)
    assert fit.reference_error is None  # targets given as a tensor: no estimate
    unbounded = solver_aware_schedule(MIX, (2,), "dpmpp-2m", init, seeds, reference=exact)
    assert unbounded.cost["forward"] > fit.cost["forward"] and unbounded.error <= fit.error * (1 + 1e-9)
    with pytest.raises(AdaschedError, match="does not pay for one solve of 16 latents at 6 NFE"):
        solver_aware_schedule(MIX, (2,), "dpmpp-2m", init, seeds, reference=exact, budget=one_solve - 1)


def test_a_warm_start_replaces_the_closed_form_starts():
    """A schedule fitted at another NFE, resampled, is a start; the closed-form family is then not scored."""
    seeds = list(range(300, 316))
    x = latents(seeds, (2,)).double() * 80.0
    exact = MIX.ode_solution(x, 80.0, 0.0)
    low = solver_aware_schedule(MIX, (2,), "euler", sigmas_edm(6), seeds, reference=exact, iterations=40)
    init = sigmas_edm(8)
    cold = solver_aware_schedule(MIX, (2,), "euler", init, seeds, reference=exact, iterations=0, polish=False)
    warm = solver_aware_schedule(MIX, (2,), "euler", init, seeds, reference=exact, warm_start=low.sigmas,
                                 iterations=0, polish=False)
    solve = 8 * len(seeds)
    assert warm.cost["forward"] == (2 + 2) * solve  # scored: the warm start and init; each "refined" once
    assert cold.cost["forward"] == (1 + len(candidate_schedules(8, 0.002, 80.0)) + 3) * solve
    assert warm.start_error < _error("euler", init, x, exact)


def test_solver_aware_fit_in_float32():
    """A network's fit runs in float32 (the model's dtype); the schedule stays float64 and valid."""
    seeds = list(range(400, 416))
    x = latents(seeds, (2,)).double() * 80.0
    exact = MIX.ode_solution(x, 80.0, 0.0)
    init = sigmas_edm(steps_for_nfe("heun", 7))
    fit = solver_aware_schedule(MIX, (2,), "heun", init, seeds, reference=exact.float(), dtype=torch.float32,
                                iterations=30, chunk=5)
    assert fit.sigmas.dtype == torch.float64 and fit.sigmas[0] == 80.0 and fit.sigmas[-1] == 0
    assert _error("heun", fit.sigmas, x, exact) < 0.5 * _error("heun", init, x, exact)


def test_gpu_fit_benchmark_runs_tiny_on_the_cpu(tmp_path):
    """benchmarks/gpu_fit.py, ready for a GPU, runs end to end on a shrunk DDPM++ here: both cells fitted
    within the budget, in chunks, with the reference recorded."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_fit.py"
    spec = importlib.util.spec_from_file_location("gpu_fit", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--tiny", "--device", "cpu", "--out", str(tmp_path / "r.json")])
    assert [(r["solver"], r["nfe"]) for r in out["rows"]] == [("dpmpp-2m", 4), ("heun", 5)]
    assert out["shape"] == [3, 8, 8] and out["chunk"] == 2 and out["parameters"] > 0
    for r in out["rows"]:
        assert 0 < r["forward"] + r["backward"] <= out["budget"] and r["backward"] > 0
        assert r["fit_error"] <= r["start_error"] and r["peak_gb"] is None
    assert out["reference"]["steps"] == 16 and out["reference"]["evaluations"] == 4 * (7 + 15 + 31)
