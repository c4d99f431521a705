"""Schedules fitted to a solver's actual sampling error (beyond the paper).

The score-optimal schedules of the paper equalise the corrector's work (:mod:`adasched.optimize`); they
ignore which solver runs.  Here the positive noise levels of an ``N``-step schedule are fitted, by
gradient descent through the sampler itself (samplers are plain differentiable functions), to minimise
the mean squared distance between the solver's output and a target output from the same latents:

* :func:`oracle_schedule` -- targets are the *exact* probability-flow ODE solutions of the very latents
  the schedule is evaluated on (analytic targets only).  It is the limit against which every other
  schedule is measured, not a method one can use.
* :func:`solver_aware_schedule` -- targets are a high-NFE reference solve by the *model itself* on
  latents drawn from separate probe seeds, started from a given schedule (the score-optimal one).  It
  needs only the denoiser, so it applies to any model, and it is evaluated on seeds it never saw.

``sigma_0 = sigma_max`` stays fixed; the last positive level -- where the solver stops before the final
jump to 0 -- is free, bounded below by ``sigma_floor``.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import torch

from adasched.errors import AdaschedError, ScheduleError
from adasched.progress import Progress, report
from adasched.samplers import PerSampleGenerator, get_solver, latents, with_drawn_labels
from adasched.schedules import sigmas_edm, sigmas_kl_optimal, sigmas_loglinear, validate_sigmas

__all__ = ["OPTIMIZERS", "REFERENCE_FLOOR", "candidate_schedules", "fit_schedule", "hessian", "oracle_schedule",
           "reference_solution", "solver_aware_schedule"]

log = logging.getLogger(__name__)


def _from_params(theta: torch.Tensor, sigma_max: float, floor: float) -> torch.Tensor:
    """Strictly decreasing positive sigmas from ``sigma_max`` (always above ``floor``), then 0."""
    gaps = torch.nn.functional.softplus(theta)
    log_s = math.log(sigma_max) - torch.cumsum(gaps, 0)
    # Soft lower bound: sigma = floor + (exp(log_s)), so no level can reach the floor.
    s = torch.cat([theta.new_tensor([sigma_max]), floor + torch.exp(log_s)])
    return torch.cat([s, s.new_zeros(1)])


def _to_params(sigmas: torch.Tensor, floor: float) -> torch.Tensor:
    """The inverse of :func:`_from_params`: log-gap parameters (a leaf requiring grad) of a valid schedule.

    A last positive level at the floor itself (where a fit's ``floor + exp(log_s)`` rounds to it) maps to a
    level a relative 1e-12 above the floor."""
    log_s = torch.log((sigmas[1:-1] - floor).clamp_min(floor * 1e-12))
    prev = torch.cat([sigmas.new_tensor([math.log(float(sigmas[0]))]), log_s[:-1]])
    gaps = (prev - log_s).clamp_min(1e-8)
    return torch.log(torch.expm1(gaps)).clone().requires_grad_(True)


OPTIMIZERS = ("adam", "lbfgs")

#: At most this many L-BFGS runs in a row, each from the best point of the last (:func:`fit_schedule`).  Five
#: can stop a fit of an ill-conditioned error while it still gains (power-law Gaussian, iPNDM 15 NFE: one
#: more L-BFGS call went 3x lower), but 20 made a 3072-D cell several times slower (docs/benchmarks.md):
#: five is the cost chosen; the whitened rounds below take over from there.
LBFGS_RUNS = 5

#: At most this many rounds of L-BFGS in Hessian-whitened coordinates after the plain runs
#: (:func:`fit_schedule`); they stop earlier once a round gains less than 1%.  The fit error is very
#: ill-conditioned in the log-gaps (exact Hessian condition 1e8 to 1e11 on the power-law Gaussian at 15 to
#: 20 NFE), where plain L-BFGS stops 1.9x to 3x above the oracle.  Five rounds still stopped the power-law
#: Gaussian's iPNDM 20-NFE fits 14x (solver-aware) and 7x (oracle) above where 20 converge, with no gain
#: from 40 more (docs/benchmarks.md).  Each round costs ``p`` Hessian-vector products through the whole
#: solve (``p`` the number of free levels) before its L-BFGS run.
WHITENED_ROUNDS = 20


def hessian(loss_of, theta: torch.Tensor) -> torch.Tensor:
    """The exact Hessian of the scalar ``loss_of(theta)``, one double-backward row at a time.

    ``p`` Hessian-vector products through one retained graph: a vmapped ``torch.func.hessian`` holds ``p``
    copies of the solve's graph at once, which ran out of 24 GiB on the 64-D mixture at iPNDM 20 NFE with
    2048 latents.  Plain autograd also keeps a stochastic solver's noise fixed across the rows.
    """
    theta = theta.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_of(theta), theta, create_graph=True)
    rows = [torch.autograd.grad(grad[i], theta, retain_graph=i + 1 < theta.numel())[0]
            for i in range(theta.numel())]
    h = torch.stack(rows)
    return (h + h.T) / 2


def fit_schedule(denoise, solver: str, init_sigmas, x_start: torch.Tensor, target: torch.Tensor, *,
                 iterations: int = 300, lr: float = 0.05, sigma_floor: float = 1e-4, optimizer: str = "adam",
                 generator_seeds: Sequence[int] | None = None, whitened_rounds: int = WHITENED_ROUNDS,
                 progress: Progress | None = None, task: str = "fit", **solver_options) -> torch.Tensor:
    """Minimise ``mean ||solve(x_start) - target||^2`` over the positive levels of ``init_sigmas``.

    ``x_start`` are the start points at ``init_sigmas[0]`` (``latents * sigma_max``), ``target`` the
    outputs to match.  The parameters ``theta`` are the log-gaps between levels.  ``optimizer="adam"``:
    ``iterations`` Adam steps with cosine learning-rate decay from ``lr``, which travels far from a start but
    converges slowly.  ``"lbfgs"`` (``lr`` unused) converges fast near a minimum: L-BFGS with a strong-Wolfe
    line search and at most ``iterations`` iterations, restarted from its best point while a run gains more
    than 1% (at most :data:`LBFGS_RUNS` runs); then up to ``whitened_rounds`` rounds of the same L-BFGS in
    coordinates ``u`` with ``theta = theta_0 + V |E|^(-1/2) u``, where ``V E V^T`` is the exact Hessian
    (:func:`hessian`, ``p`` Hessian-vector products) of the error at the round's start ``theta_0``, again
    while a round gains more than 1%.  The best schedule evaluated is returned.  Stochastic solvers use
    per-sample generators re-seeded at every evaluation from ``generator_seeds``.  ``progress(task, n, total)``
    (:mod:`adasched.progress`) is told the number of error evaluations so far (each is one solve and its
    gradient); ``total`` is ``iterations`` for Adam and unknown (None) for L-BFGS.
    """
    if optimizer not in OPTIMIZERS:
        raise AdaschedError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    spec = get_solver(solver)
    s0 = validate_sigmas(init_sigmas)
    if s0.numel() < 3:
        return s0
    sigma_max = float(s0[0])
    floor = float(sigma_floor)
    if float(s0[-2]) < floor:
        raise AdaschedError(f"initial schedule's last positive sigma {float(s0[-2]):g} is below the floor {floor:g}")
    x_start = x_start.detach()
    target = target.detach()
    best, best_loss = s0, math.inf
    evaluations = 0

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        nonlocal best, best_loss, evaluations
        sigmas = _from_params(theta, sigma_max, floor)
        gen = PerSampleGenerator(generator_seeds) if spec.stochastic else None
        loss = (spec.fn(denoise, x_start, sigmas, generator=gen, **solver_options) - target).pow(2).mean()
        value = loss.detach().item()
        if value < best_loss and math.isfinite(value):
            best_loss, best = value, sigmas.detach().clone()
        if evaluations % 50 == 0:
            log.info("fit %s (%s): evaluation %d, mse %.4g", solver, optimizer, evaluations, value)
        evaluations += 1
        report(progress, task, evaluations, iterations + 1 if optimizer == "adam" else None)
        return loss

    if optimizer == "adam":
        theta = _to_params(s0, floor)
        opt = torch.optim.Adam([theta], lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
        for _ in range(iterations):
            opt.zero_grad()
            loss_of(theta).backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            loss_of(theta)
        return validate_sigmas(best)

    def lbfgs(u: torch.Tensor, to_theta: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """One L-BFGS run over the leaf ``u``, the log-gaps being ``to_theta(u)``; updates ``best``."""
        scale = None

        def closure():
            nonlocal scale
            opt.zero_grad()
            try:
                loss = loss_of(to_theta(u))
            except ScheduleError:  # a trial step so long that levels merge in float64
                raise FloatingPointError from None
            if not torch.isfinite(loss):
                raise FloatingPointError
            scale = scale or max(loss.item(), 1e-300)
            loss = loss / scale  # relative, so L-BFGS's tolerances do not depend on the error's size
            loss.backward()
            return loss

        opt = torch.optim.LBFGS([u], lr=1.0, max_iter=iterations, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-12, tolerance_change=1e-14)
        try:
            opt.step(closure)
        except FloatingPointError:  # an invalid or non-finite trial point: keep the best one evaluated
            log.info("fit %s (lbfgs): stopped at an invalid trial schedule", solver)

    # One L-BFGS run can stall far above the minimum (a curvature history from far away, or an invalid
    # trial point): restarted from its best point with a fresh history, it goes on (2.4x lower error on
    # the power-law Gaussian at iPNDM 15 NFE).  Restart while a run gains more than 1%.
    for _ in range(LBFGS_RUNS):
        before = best_loss
        lbfgs(_to_params(best, floor), lambda theta: theta)
        if not best_loss < (1 - 1e-2) * before:
            break
    # Where the error is ill-conditioned, plain L-BFGS creeps; in whitened coordinates every direction has
    # unit curvature at the start.  Eigenvalues are floored (in magnitude: the Hessian can be indefinite
    # there) at 1e-12 of the largest.
    for _ in range(whitened_rounds):
        before = best_loss
        theta_0 = _to_params(best, floor).detach()
        h = hessian(lambda theta: loss_of(theta) / max(before, 1e-300), theta_0)
        if not torch.isfinite(h).all():
            log.info("fit %s (lbfgs): non-finite Hessian, no whitened round", solver)
            break
        e, v = torch.linalg.eigh(h)
        e = e.abs().clamp_min(float(e.abs().max()) * 1e-12)
        basis = v * e.rsqrt()
        lbfgs(torch.zeros_like(theta_0, requires_grad=True), lambda u: theta_0 + basis @ u)
        if not best_loss < (1 - 1e-2) * before:
            break
    return validate_sigmas(best)


#: Where :func:`reference_solution` stops before its final jump to 0 for a model exact at every sigma
#: (``sigma_min`` 0: the analytic targets).  The jump from 0.002 alone leaves 5e-5 RMSE on the power-law
#: Gaussian and 9e-5 on the 64-D mixture, as much as good 10-NFE schedules' own error; from 2e-6, with the
#: extrapolated 4096-step solve, 2.6e-10 and 2.1e-9 (benchmarks/reference_error.py, docs/benchmarks.md).
REFERENCE_FLOOR = 2e-6


def reference_solution(denoise, x_start: torch.Tensor, sigma_max: float, sigma_min: float | None = None,
                       steps: int = 4096, progress: Progress | None = None) -> torch.Tensor:
    """A high-accuracy probability-flow solve by the model itself: Richardson-extrapolated Heun.

    Heun on EDM's rho = 7 schedule with ``steps`` and with ``steps // 2`` steps (the coarse grid is every
    other level of the fine one); Heun's global error is O(h^2), so ``(4 fine - coarse) / 3`` cancels its
    leading term: 1.5x the fine solve's cost (12286 NFE by default), 75x to 490x less error on the analytic
    targets, and 7x to 8x less at each doubling of ``steps``.  2048 steps left 1.8e-9 on the power-law
    Gaussian, where its converged iPNDM 20-NFE fit is 1.0e-9 from the exact solution: a fit to that
    reference ends 2x above it (docs/benchmarks.md).  It stops at ``sigma_min``, by default the model's own
    (a network is untrained below it), or :data:`REFERENCE_FLOOR` for a model that declares 0; then the
    final jump to 0.  ``progress("reference solve", step, total)`` counts the steps of both solves.
    """
    if sigma_min is None:
        sigma_min = float(getattr(denoise, "sigma_min", 0.0)) or REFERENCE_FLOOR
    if steps < 2 or steps % 2:
        raise AdaschedError(f"reference steps must be even and at least 2, got {steps}")
    solver = get_solver("heun")
    total = steps + steps // 2

    def step_done(offset):
        return lambda i, *_: report(progress, "reference solve", offset + i + 1, total)

    with torch.no_grad():
        fine = solver.fn(denoise, x_start, sigmas_edm(steps, sigma_min, sigma_max), callback=step_done(0))
        coarse = solver.fn(denoise, x_start, sigmas_edm(steps // 2, sigma_min, sigma_max), callback=step_done(steps))
    return (4.0 * fine - coarse) / 3.0


def oracle_schedule(target, solver: str, steps: int, seeds: Sequence[int], init_sigmas=None,
                    candidates: Sequence | None = None, exact: torch.Tensor | None = None, **kw) -> torch.Tensor:
    """The schedule minimising the exact sampling error on the latents of ``seeds`` (analytic targets).

    ``target`` must provide ``shape`` and ``ode_solution(x, sigma_from, 0)``.  The same multi-start search
    as :func:`solver_aware_schedule` (from ``init_sigmas``, default EDM's rho = 7, any ``candidates`` -- pass
    every schedule it is to be compared with -- and the closed forms), but against the exact solutions of
    the very latents it is evaluated on: that is what makes it an oracle.  ``exact``: those solutions, when
    the caller has them already (they cost a numerical ODE solve for a mixture).
    """
    init = sigmas_edm(steps) if init_sigmas is None else validate_sigmas(init_sigmas)
    if exact is None:
        exact = target.ode_solution(latents(seeds, target.shape).double() * init[0], float(init[0]), 0.0)
    return solver_aware_schedule(target, target.shape, solver, init, seeds, reference=exact, candidates=candidates,
                                 **kw)


def candidate_schedules(steps: int, sigma_min: float, sigma_max: float) -> list[torch.Tensor]:
    """Closed-form starting points for :func:`solver_aware_schedule`.

    EDM's polynomial schedule for rho in (1, 2, 3, 5, 7, 10), log-linear and KL-optimal, each ending at
    ``sigma_min`` and, where larger, at 0.02 and 0.2: where a solver should stop before its final jump to
    0 depends on the solver and the NFE.
    """
    out = []
    for stop in sorted({sigma_min, max(sigma_min, 0.02), max(sigma_min, 0.2)}):
        if not stop < sigma_max:
            continue
        out += [sigmas_edm(steps, stop, sigma_max, rho=rho) for rho in (1.0, 2.0, 3.0, 5.0, 7.0, 10.0)]
        out += [sigmas_loglinear(steps, stop, sigma_max), sigmas_kl_optimal(steps, stop, sigma_max)]
    return out


def solver_aware_schedule(denoise, shape: Sequence[int], solver: str, init_sigmas, probe_seeds: Sequence[int],
                          reference: Callable | torch.Tensor | None = None, candidates: Sequence | None = None,
                          starts: int = 3, iterations: int = 200, polish: bool = True,
                          progress: Progress | None = None, **kw) -> torch.Tensor:
    """A schedule for ``solver`` fitted to the model's own high-NFE solves on ``probe_seeds``.

    The sampling error is far from convex in the noise levels, and gradient descent keeps the basin it
    starts in.  So: every starting point -- ``init_sigmas`` (the score-optimal schedule), any further
    ``candidates`` (e.g. the predictor-optimised schedule) and :func:`candidate_schedules` -- is scored by
    one solve on the probe seeds; the ``starts`` best are each refined by Adam (:func:`fit_schedule`), and
    the refined schedule with the lowest error on the probe seeds is polished by L-BFGS (skipped with
    ``polish=False``).  ``reference(x_start, sigma_max)`` gives the targets (default
    :func:`reference_solution`), or ``reference`` is the targets themselves, already computed for the start
    points of ``probe_seeds``; only the denoiser is needed.  Use probe seeds disjoint from the evaluation seeds.
    ``progress`` (:mod:`adasched.progress`) follows the reference solve and each fit.
    """
    init = validate_sigmas(init_sigmas)
    x = latents(probe_seeds, shape).double() * init[0]
    denoise = with_drawn_labels(denoise, probe_seeds, shape)  # a conditional model: the classes generate draws
    if isinstance(reference, torch.Tensor):
        ref = reference
    else:
        ref = (reference or (lambda x0, smax: reference_solution(denoise, x0, smax, progress=progress)))(
            x, float(init[0]))
    pool = [init, *map(validate_sigmas, candidates or [])]
    steps = init.numel() - 1
    if steps > 1:
        pool += candidate_schedules(steps, float(init[-2]), float(init[0]))
    spec = get_solver(solver)
    options = {k: v for k, v in kw.items() if k in spec.options}

    def error(s):
        gen = PerSampleGenerator(probe_seeds) if spec.stochastic else None
        with torch.no_grad():
            return float((spec.fn(denoise, x, s, generator=gen, **options) - ref).pow(2).mean())

    def refine(s, task, **extra):
        return fit_schedule(denoise, solver, s, x, ref, generator_seeds=probe_seeds, iterations=iterations,
                            progress=progress, task=task, **{**kw, **extra})

    ranked = sorted(pool, key=error)[:max(1, starts)]
    best = min((refine(s, f"fit start {k + 1}/{len(ranked)} (adam)") for k, s in enumerate(ranked)), key=error)
    # Adam travels from distant starts but stops short of a narrow optimum, where L-BFGS converges in a few
    # seconds (benchmarks/polish.py, docs/benchmarks.md).  Holding back a share of the probe seeds to choose
    # between starts and fits was tried and did not help (docs/benchmarks.md).
    return refine(best, "polish (lbfgs)", optimizer="lbfgs") if polish else best
