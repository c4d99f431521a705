"""Schedules fitted to a solver's actual sampling error (beyond the paper).

The score-optimal schedules of the paper equalise the corrector's work (:mod:`adasched.optimize`); they
ignore which solver runs.  Here the positive noise levels of an ``N``-step schedule are fitted, by
gradient descent through the sampler itself (samplers are plain differentiable functions), to minimise
the mean squared distance between the solver's output and a target output from the same latents:

* :func:`oracle_schedule` -- targets are the *exact* probability-flow ODE solutions of the very latents
  the schedule is evaluated on (analytic targets only).  It is the limit against which every other
  schedule is measured, not a method one can use.
* :func:`solver_aware_schedule` -- targets are high-accuracy solves by the *model itself*
  (:mod:`adasched.references`) of latents drawn from separate probe seeds, started from a given schedule
  (the score-optimal one).  It needs only the denoiser, so it applies to any model, and it is evaluated on
  seeds it never saw.  Its cost is counted in network evaluations (:class:`Objective`) and can be bounded
  by a budget.

``sigma_0 = sigma_max`` stays fixed; the last positive level -- where the solver stops before the final
jump to 0 -- is free, bounded below by ``sigma_floor``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from adasched.denoisers import CountingDenoiser
from adasched.errors import AdaschedError, ScheduleError
from adasched.progress import Progress, report
from adasched.references import Reference, solve_reference, start_chunks
from adasched.samplers import PerSampleGenerator, get_solver, latents
from adasched.schedules import resample, sigmas_edm, sigmas_kl_optimal, sigmas_loglinear, validate_sigmas

__all__ = ["ADAM_SHARE", "SCORE_SHARE", "OPTIMIZERS", "BudgetSpent", "Fit", "Objective", "candidate_schedules",
           "fit_schedule", "hessian", "oracle_schedule", "refine", "solver_aware_schedule"]

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


class BudgetSpent(Exception):
    """Raised by :class:`Objective` before an evaluation the fit's budget cannot pay for."""


class Objective:
    """The fit error ``mean ||solve(x) - target||^2`` of a schedule, its network evaluations counted.

    ``parts`` are ``(denoise, x, target, seeds)`` tuples, one per chunk of fit latents (``seeds`` re-seed a
    stochastic solver's noise at every evaluation; a conditional model comes with its chunk's classes bound):
    a gradient is accumulated part by part, so memory is bounded by the largest part, not by the number of
    latents.  Each denoiser is wrapped in a :class:`~adasched.denoisers.CountingDenoiser`: ``forward`` counts
    network evaluations (one per latent and call), ``backward`` the backward passes through the network (one
    per latent and call made with a gradient; a Hessian row, :meth:`hessian`, counts two).  With a ``budget``
    (forward plus backward), an evaluation it cannot pay for raises :class:`BudgetSpent` before it starts.
    """

    def __init__(self, parts, solver: str, options: dict | None = None, budget: int | None = None):
        self.spec = get_solver(solver)
        self.options = {k: v for k, v in (options or {}).items() if k in self.spec.options}
        self.parts = [(CountingDenoiser(d), x.detach(), t.detach(), s) for d, x, t, s in parts]
        self.size = sum(x.numel() for _, x, _, _ in self.parts)
        self.latents = sum(x.shape[0] for _, x, _, _ in self.parts)
        self.budget = budget
        self.extra_backward = 0
        self.started = time.perf_counter()

    @property
    def forward(self) -> int:
        return sum(d.evaluations for d, *_ in self.parts)

    @property
    def backward(self) -> int:
        return sum(d.gradient_evaluations for d, *_ in self.parts) + self.extra_backward

    @property
    def spent(self) -> int:
        return self.forward + self.backward

    def cost(self, steps: int, gradient: bool) -> int:
        """Network evaluations (forward plus backward) of one evaluation of a ``steps``-step schedule."""
        return self.spec.nfe(steps, **self.options) * self.latents * (2 if gradient else 1)

    def affordable(self, steps: int, gradient: bool, share: float = 1.0) -> int | None:
        """How many evaluations ``share`` of the budget left pays for (None: no budget)."""
        if self.budget is None:
            return None
        return max(0, int(share * (self.budget - self.spent)) // self.cost(steps, gradient))

    def _pay(self, cost: int) -> None:
        if self.budget is not None and self.spent + cost > self.budget:
            raise BudgetSpent

    def _part_loss(self, part, sigmas: torch.Tensor) -> torch.Tensor:
        denoise, x, target, seeds = part
        gen = PerSampleGenerator(seeds) if self.spec.stochastic else None
        out = self.spec.fn(denoise, x, sigmas, generator=gen, **self.options)
        return (out - target).pow(2).sum() / self.size

    def __call__(self, make_sigmas: Callable[[], torch.Tensor], gradient: bool = False,
                 pay: bool = True) -> tuple[float, torch.Tensor]:
        """The error of the schedule ``make_sigmas()`` and that schedule (detached); with ``gradient``, the
        error's gradient is accumulated into the leaves ``make_sigmas`` builds it from (called once per part,
        so each part's graph is freed before the next is built).  ``pay=False``: counted, but not refused when
        beyond the budget."""
        sigmas = make_sigmas()
        if pay:
            self._pay(self.cost(sigmas.numel() - 1, gradient))
        total = 0.0
        for part in self.parts:
            if gradient:
                loss = self._part_loss(part, sigmas)
                loss.backward()
                sigmas = make_sigmas()
            else:
                with torch.no_grad():
                    loss = self._part_loss(part, sigmas)
            total += float(loss.detach())
        return total, sigmas.detach().clone()

    def hessian(self, make_sigmas: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor,
                scale: float) -> torch.Tensor:
        """The exact Hessian of ``error(make_sigmas(theta)) / scale`` (:func:`hessian`, summed over parts)."""
        steps = make_sigmas(theta).numel() - 1
        p = theta.numel()
        self._pay(self.cost(steps, True) + 2 * p * self.cost(steps, False))
        h = sum(hessian(lambda t: self._part_loss(part, make_sigmas(t)) / scale, theta) for part in self.parts)
        self.extra_backward += 2 * p * self.cost(steps, False)
        return h

    def report(self) -> dict:
        """The evaluations counted so far, and the seconds since this objective was made."""
        return {"forward": self.forward, "backward": self.backward, "budget": self.budget,
                "seconds": round(time.perf_counter() - self.started, 3)}


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
    outputs to match; stochastic solvers use per-sample generators re-seeded at every evaluation from
    ``generator_seeds``.  The search itself is :func:`refine` on an :class:`Objective` of one part.
    """
    objective = Objective([(denoise, x_start, target, generator_seeds)], solver, solver_options)
    return refine(objective, init_sigmas, iterations=iterations, lr=lr, sigma_floor=sigma_floor,
                  optimizer=optimizer, whitened_rounds=whitened_rounds, progress=progress, task=task)[0]


def refine(objective: Objective, init_sigmas, *, iterations: int = 300, lr: float = 0.05, sigma_floor: float = 1e-4,
           optimizer: str = "adam", whitened_rounds: int = WHITENED_ROUNDS, progress: Progress | None = None,
           task: str = "fit") -> tuple[torch.Tensor, float]:
    """The schedule with the lowest ``objective`` found from ``init_sigmas``, varying its positive levels, and
    that error.

    The parameters ``theta`` are the log-gaps between levels.  ``optimizer="adam"``: ``iterations`` Adam steps
    with cosine learning-rate decay from ``lr``, which travels far from a start but converges slowly.
    ``"lbfgs"`` (``lr`` unused) converges fast near a minimum: L-BFGS with a strong-Wolfe line search and at
    most ``iterations`` iterations, restarted from its best point while a run gains more than 1% (at most
    :data:`LBFGS_RUNS` runs); then up to ``whitened_rounds`` rounds of the same L-BFGS in coordinates ``u``
    with ``theta = theta_0 + V |E|^(-1/2) u``, where ``V E V^T`` is the exact Hessian (``p`` Hessian-vector
    products) of the error at the round's start ``theta_0``, again while a round gains more than 1%.  The best
    schedule evaluated is returned; when the objective's budget runs out (:class:`BudgetSpent`), so far.
    ``progress(task, n, total)`` (:mod:`adasched.progress`) is told the number of error evaluations so far;
    ``total`` is ``iterations`` for Adam and unknown (None) for L-BFGS.
    """
    if optimizer not in OPTIMIZERS:
        raise AdaschedError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    s0 = validate_sigmas(init_sigmas)
    if s0.numel() < 3:
        return s0, objective(lambda: s0)[0]
    sigma_max = float(s0[0])
    floor = float(sigma_floor)
    if float(s0[-2]) < floor:
        raise AdaschedError(f"initial schedule's last positive sigma {float(s0[-2]):g} is below the floor {floor:g}")
    best, best_loss = s0, math.inf
    evaluations = 0
    solver = objective.spec.name

    def loss_of(make_sigmas: Callable[[], torch.Tensor], gradient: bool = True) -> float:
        nonlocal best, best_loss, evaluations
        value, sigmas = objective(make_sigmas, gradient)
        if value < best_loss and math.isfinite(value):
            best_loss, best = value, sigmas
        if evaluations % 50 == 0:
            log.info("fit %s (%s): evaluation %d, mse %.4g", solver, optimizer, evaluations, value)
        evaluations += 1
        report(progress, task, evaluations, iterations + 1 if optimizer == "adam" else None)
        return value

    try:
        if optimizer == "adam":
            theta = _to_params(s0, floor)
            opt = torch.optim.Adam([theta], lr=lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, iterations))
            for _ in range(iterations):
                opt.zero_grad()
                loss_of(lambda: _from_params(theta, sigma_max, floor))
                opt.step()
                sched.step()
            loss_of(lambda: _from_params(theta.detach(), sigma_max, floor), gradient=False)
            return validate_sigmas(best), best_loss
        _lbfgs_search(loss_of, objective, best_sigmas=lambda: best, best_loss=lambda: best_loss,
                      floor=floor, sigma_max=sigma_max, iterations=iterations, whitened_rounds=whitened_rounds,
                      solver=solver)
    except BudgetSpent:
        log.info("fit %s (%s): budget of %s network evaluations spent", solver, optimizer, objective.budget)
    if not math.isfinite(best_loss):  # the budget ran out before the first evaluation
        best_loss = objective(lambda: s0, pay=False)[0]
    return validate_sigmas(best), best_loss


def _lbfgs_search(loss_of, objective: Objective, *, best_sigmas, best_loss, floor: float, sigma_max: float,
                  iterations: int, whitened_rounds: int, solver: str) -> None:
    """:func:`refine`'s L-BFGS runs, then its whitened rounds; the best point is kept by ``loss_of``."""

    def lbfgs(u: torch.Tensor, to_theta: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """One L-BFGS run over the leaf ``u``, the log-gaps being ``to_theta(u)``."""
        scale = None

        def closure():
            nonlocal scale
            opt.zero_grad()
            try:
                value = loss_of(lambda: _from_params(to_theta(u), sigma_max, floor))
            except ScheduleError:  # a trial step so long that levels merge in float64
                raise FloatingPointError from None
            if not math.isfinite(value):
                raise FloatingPointError
            scale = scale or max(value, 1e-300)
            u.grad /= scale  # relative, so L-BFGS's tolerances do not depend on the error's size
            return torch.tensor(value / scale, dtype=u.dtype)

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
        before = best_loss()
        lbfgs(_to_params(best_sigmas(), floor), lambda theta: theta)
        if not best_loss() < (1 - 1e-2) * before:
            break
    # Where the error is ill-conditioned, plain L-BFGS creeps; in whitened coordinates every direction has
    # unit curvature at the start.  Eigenvalues are floored (in magnitude: the Hessian can be indefinite
    # there) at 1e-12 of the largest.
    for _ in range(whitened_rounds):
        before = best_loss()
        theta_0 = _to_params(best_sigmas(), floor).detach()
        h = objective.hessian(lambda theta: _from_params(theta, sigma_max, floor), theta_0, max(before, 1e-300))
        if not torch.isfinite(h).all():
            log.info("fit %s (lbfgs): non-finite Hessian, no whitened round", solver)
            break
        e, v = torch.linalg.eigh(h)
        e = e.abs().clamp_min(float(e.abs().max()) * 1e-12)
        basis = v * e.rsqrt()
        lbfgs(torch.zeros_like(theta_0, requires_grad=True), lambda u: theta_0 + basis @ u)
        if not best_loss() < (1 - 1e-2) * before:
            break


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
                                 **kw).sigmas


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


@dataclass
class Fit:
    """A solver-aware schedule, its error on the fit latents (mean squared, as fitted), the error of the best
    starting schedule, the Richardson error estimate of the targets (RMS; None when not known) and the fit's
    cost (:meth:`Objective.report`: network evaluations forward and backward, the budget, seconds)."""

    sigmas: torch.Tensor
    error: float
    start_error: float
    reference_error: float | None
    cost: dict = field(default_factory=dict)


#: Most of a budget that scoring the starts may take (:func:`solver_aware_schedule`): the first starts in its
#: order (the warm start, ``init_sigmas``, the given candidates, the closed forms) that this share pays for.
SCORE_SHARE = 0.25
#: Share of a budget left after scoring the starts that their Adam refinement gets (split between the starts);
#: the L-BFGS polish gets the rest (:func:`solver_aware_schedule`).
ADAM_SHARE = 0.5


def solver_aware_schedule(denoise, shape: Sequence[int], solver: str, init_sigmas, probe_seeds: Sequence[int],
                          reference: Reference | torch.Tensor | None = None, candidates: Sequence | None = None,
                          warm_start=None, starts: int = 3, iterations: int = 200, polish: bool = True,
                          budget: int | None = None, whitened_rounds: int = WHITENED_ROUNDS, chunk: int | None = None,
                          device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64,
                          progress: Progress | None = None, **kw) -> Fit:
    """A schedule for ``solver`` fitted to the model's own high-accuracy solves of the latents of ``probe_seeds``.

    The sampling error is far from convex in the noise levels, and gradient descent keeps the basin it
    starts in.  So: every starting point -- ``init_sigmas`` (the score-optimal schedule), any further
    ``candidates`` (e.g. the predictor-optimised schedule), and either ``warm_start`` (a schedule fitted at
    another NFE, resampled to this one: :func:`adasched.schedules.resample`) or, without one,
    :func:`candidate_schedules` -- is scored by one solve; the ``starts`` best are each refined by Adam
    (:func:`refine`), and the refined schedule with the lowest error is polished by L-BFGS (skipped with
    ``polish=False``).  Use probe seeds disjoint from the evaluation seeds.

    ``reference``: the targets, a :class:`~adasched.references.Reference` for these seeds or a tensor of
    solutions; by default they are solved here (:func:`~adasched.references.solve_reference`).

    Cost: ``budget`` bounds the network evaluations (forward plus backward, counted per latent) of the whole
    search after the targets: the scoring first (at most :data:`SCORE_SHARE` of it: the first starts in the
    order above that it pays for), then the Adam starts get :data:`ADAM_SHARE` of what is left
    (``iterations`` at most each), the polish the rest, its ``whitened_rounds`` included (each pays for its
    Hessian first; the search stops where the budget does).  ``chunk`` latents go
    through the network at a time, gradients accumulated over chunks, so memory does not grow with the number
    of latents.  The latents are solved on ``device`` in ``dtype`` (the model must be there already).
    """
    init = validate_sigmas(init_sigmas)
    steps = init.numel() - 1
    seeds = [int(v) for v in probe_seeds]
    sigma_max = float(init[0])
    reference_error = None
    if reference is None:
        reference = solve_reference(denoise, shape, seeds, sigma_max, batch=chunk or max(1, len(seeds)),
                                    device=device, dtype=dtype, progress=progress)
    if isinstance(reference, Reference):
        reference_error, reference = reference.error, reference.target
    target = reference.to(device=device, dtype=dtype)
    if target.shape != (len(seeds), *shape):
        raise AdaschedError(f"targets of shape {tuple(target.shape)} for {len(seeds)} latents of shape {tuple(shape)}")
    chunks = start_chunks(denoise, shape, seeds, sigma_max, batch=chunk or max(1, len(seeds)), device=device,
                          dtype=dtype)
    targets = target.split([len(part) for *_, part in chunks])
    objective = Objective([(model, x, t, part) for (model, x, part), t in zip(chunks, targets)], solver, kw, budget)

    pool = [init, *map(validate_sigmas, candidates or [])]
    if warm_start is not None:
        pool.insert(0, resample(warm_start, steps))
    elif steps > 1:
        pool += candidate_schedules(steps, float(init[-2]), sigma_max)
    scores = []
    affordable = objective.affordable(steps, False, SCORE_SHARE)
    if affordable is not None and affordable < len(pool):
        log.info("fit %s at %d steps: the budget scores %d of %d starts", solver, steps, max(1, affordable), len(pool))
        pool = pool[:max(1, affordable)]
    try:
        for s in pool:
            scores.append((objective(lambda: s)[0], s))
    except BudgetSpent:
        raise AdaschedError(f"a fit budget of {budget} network evaluations does not pay for one solve of "
                            f"{len(seeds)} latents at {objective.cost(steps, False) // len(seeds)} NFE") from None
    scores.sort(key=lambda pair: pair[0])
    ranked = [s for _, s in scores[:max(1, starts)]]
    start_error = scores[0][0]
    share = ADAM_SHARE if polish else 1.0
    fits = []
    for k, s in enumerate(ranked):
        affordable = objective.affordable(steps, True, share / (len(ranked) - k))
        n = iterations if affordable is None else min(iterations, max(0, affordable - 1))
        fits.append(refine(objective, s, iterations=n, optimizer="adam", progress=progress,
                           task=f"fit start {k + 1}/{len(ranked)} (adam)", **_fit_options(kw)))
    best, best_error = min(fits, key=lambda pair: pair[1])
    # Adam travels from distant starts but stops short of a narrow optimum, where L-BFGS converges in a few
    # seconds (benchmarks/polish.py, docs/benchmarks.md).  Holding back a share of the probe seeds to choose
    # between starts and fits was tried and did not help (docs/benchmarks.md).
    if polish:
        polished = refine(objective, best, iterations=iterations, optimizer="lbfgs", whitened_rounds=whitened_rounds,
                          progress=progress, task="polish (lbfgs)", **_fit_options(kw))
        best, best_error = min([(best, best_error), polished], key=lambda pair: pair[1])
    cost = objective.report()
    log.info("fit %s at %d steps: mse %.4g (best start %.4g), %d forward and %d backward network evaluations, "
             "%.1f s", solver, steps, best_error, start_error, cost["forward"], cost["backward"], cost["seconds"])
    if reference_error is not None and reference_error > 0.3 * math.sqrt(best_error):
        log.warning("the targets' error estimate %.3g is not well below the fitted schedule's RMS error %.3g: a "
                    "more accurate reference (lower tol) may fit it better", reference_error, math.sqrt(best_error))
    return Fit(best, best_error, start_error, reference_error, cost)


def _fit_options(kw: dict) -> dict:
    """The options of :func:`refine` among a caller's keywords (the others are the solver's)."""
    return {k: v for k, v in kw.items() if k in ("lr", "sigma_floor")}
