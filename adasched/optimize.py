"""Score-optimal schedules from incremental-cost estimates (paper.md §2.5, §3.1; the paper's Algorithm 1).

Conventions used throughout this module:

* A **probe grid** is a strictly *increasing* float64 sequence of noise levels
  ``sigma_0 < sigma_1 < ... < sigma_K`` (low noise to high noise, the paper's ``t_0 < ... < t_T``).
* ``costs[i]`` is the incremental cost ``L_hat(t_{i+1}, t_i)`` of the interval between ``sigma_i`` (lower
  noise) and ``sigma_{i+1}`` (higher noise), ``i = 0..K-1``: the backward step ``sigma_{i+1} -> sigma_i``
  (paper.md §3.2; :func:`adasched.probe.probe` writes them in this order).
* Outputs meant for samplers are *decreasing* float64 ``torch`` tensors (sigma_max first), as everywhere in
  :mod:`adasched.schedules`; ``score_optimal_sigmas`` appends the final ``0``.

Algorithm 1 (UpdateSchedule), generalised to read out any number of points (paper.md §3.1, [G]):

1. ``Lambda_hat(sigma_0) = 0``, ``Lambda_hat(sigma_i) = sum_{j<i} sqrt(L_hat_j)`` (:func:`cumulative_length`);
2. ``Lambda_hat = Lambda_hat(sigma_K)``, the length of the diffusion path (§2.5);
3. ``Lambda_hat^{-1}`` = monotone cubic (Fritsch–Carlson, ``scipy.interpolate.PchipInterpolator``) through
   ``(Lambda_hat(sigma_i), log sigma_i)``;
4. ``sigma_i* = exp(Lambda_hat^{-1}(i Lambda_hat / T))``, ``i = 0..T``, endpoints pinned exactly.

By Theorem 3.1 (paper.md §2.5) the points so placed travel the path at constant speed in the local metric,
equalising the incremental costs, which minimises the total cost ``~ Lambda^2 / T``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adasched.errors import ScheduleError
from adasched.io import provenance, sha256_file
from adasched.limits import MAX_STEPS, check_size
from adasched.probe import as_grid, probe, probe_grid, read_probes
from adasched.samplers import nfe_for_steps, steps_for_nfe
from adasched.schedules import Schedule, validate_sigmas

__all__ = [
    "cumulative_length",
    "update_schedule",
    "score_optimal_sigmas",
    "blend",
    "ScheduleUncertainty",
    "schedule_uncertainty",
    "length_stderr",
    "score_optimal_from_probes",
    "score_optimal_schedule",
    "COST_FLOOR",
    "refine_schedule",
    "refine_levels",
    "as_levels",
    "Refinement",
]

log = logging.getLogger(__name__)

#: Relative floor on each interval cost, so that ``Lambda_hat`` is strictly increasing (paper.md §5.4).
COST_FLOOR = 1e-12


def _as_costs(costs: Any, intervals: int | None = None, what: str = "costs") -> np.ndarray:
    """Check per-interval costs: 1-D, finite, non-negative, ``intervals`` long when given."""
    try:
        c = np.asarray(costs.cpu() if isinstance(costs, torch.Tensor) else costs, dtype=np.float64)
    except (TypeError, ValueError):
        raise ScheduleError(f"{what} must be a list of numbers") from None
    if c.ndim != 1 or c.size < 1:
        raise ScheduleError(f"{what} must be a non-empty 1-D list, got shape {c.shape}")
    if intervals is not None and c.size != intervals:
        raise ScheduleError(f"need one {what[:-1] if what.endswith('s') else what} per interval: "
                            f"{intervals} for {intervals + 1} probe sigmas, got {c.size}")
    if not np.isfinite(c).all():
        raise ScheduleError(f"{what} must be finite, got {int((~np.isfinite(c)).sum())} non-finite value(s)")
    if (c < 0).any():
        i = int(np.nonzero(c < 0)[0][0])
        raise ScheduleError(f"{what} must be non-negative, got {what}[{i}]={c[i]:g}")
    return c


def cumulative_length(costs: Any, floor: float = COST_FLOOR) -> np.ndarray:
    """``Lambda_hat`` at the probe points: Algorithm 1 step 1 (paper.md §3.1).

    ``costs[i]`` is the cost of the interval ``(sigma_i, sigma_{i+1})`` of an increasing probe grid (see the
    module docstring).  Returns the ``K + 1`` values ``0, sqrt(c_0), sqrt(c_0) + sqrt(c_1), ...``, each cost
    first floored at ``floor * max(costs)`` so the result is strictly increasing (paper.md §5.4).  When every
    cost is 0 the result is all zeros (no information; see :func:`update_schedule` for the guard).
    """
    c = _as_costs(costs)
    if not floor >= 0:
        raise ScheduleError(f"floor must be non-negative, got {floor!r}")
    c = np.maximum(c, floor * c.max())
    return np.concatenate([[0.0], np.cumsum(np.sqrt(c))])


def _inverse(probe_sigmas: np.ndarray, costs: np.ndarray, floor: float):
    """``(Lambda_hat at the probe points, PCHIP Lambda -> log sigma)``, with the zero-cost guard."""
    # heavy: scipy.interpolate would slow every start; loaded at the first read-out
    from scipy.interpolate import PchipInterpolator

    if costs.max() == 0:
        log.warning("all %d interval costs are 0: the cost carries no information; falling back to equal "
                    "costs, i.e. the probe grid's own spacing (log-linear for a log-spaced grid)", costs.size)
        costs = np.ones_like(costs)
    lam = cumulative_length(costs, floor)
    return lam, PchipInterpolator(lam, np.log(probe_sigmas))


def _range(s: np.ndarray, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
    lo = float(s[0]) if sigma_min is None else float(sigma_min)
    hi = float(s[-1]) if sigma_max is None else float(sigma_max)
    tol = 1e-9
    if not (s[0] * (1 - tol) <= lo < hi <= s[-1] * (1 + tol)):
        raise ScheduleError(
            f"need probe sigma_min <= sigma_min < sigma_max <= probe sigma_max, i.e. a range inside the "
            f"probed [{s[0]:g}, {s[-1]:g}], got [{lo:g}, {hi:g}]")
    return min(max(lo, s[0]), s[-1]), min(max(hi, s[0]), s[-1])


def update_schedule(probe_sigmas: Any, costs: Any, T: int | None = None, *, floor: float = COST_FLOOR,
                    sigma_min: float | None = None, sigma_max: float | None = None) -> torch.Tensor:
    """Algorithm 1 (UpdateSchedule, paper.md §3.1), read out at ``T + 1`` points.

    ``probe_sigmas``: ``K + 1`` strictly increasing noise levels; ``costs``: the ``K`` interval costs in the
    same order (module docstring).  Returns the ``T + 1`` positive noise levels
    ``sigma_max = sigma_0* > ... > sigma_T* = sigma_min`` (float64 tensor, *decreasing*, no final 0) with
    ``Lambda_hat`` equal across the ``T`` intervals: ``t_i* = Lambda_hat^{-1}(i Lambda_hat / T)`` (Theorem
    3.1), ``Lambda_hat^{-1}`` the monotone PCHIP (Fritsch–Carlson) inverse in ``u = log sigma``.

    ``T`` defaults to ``K`` (the paper's Algorithm 1, whose fixed points are equal-cost grids).  With
    ``sigma_min`` / ``sigma_max`` inside the probed range, the same construction is restricted to that range
    (its ends are placed on the ``Lambda_hat`` curve by inverting the interpolant).  Endpoints are pinned
    exactly.  Zero-cost guard: if every cost is 0 (e.g. VP with ``N(0, I)`` data, paper.md §6.3) a warning is
    logged and all intervals are treated as equally costly, which returns the probe grid itself for
    ``T = K`` and a shape-preserving resampling of it otherwise (log-linear for a log-spaced probe grid).
    """
    s = as_grid(probe_sigmas)
    c = _as_costs(costs, s.size - 1)
    T = s.size - 1 if T is None else T
    if not isinstance(T, (int, np.integer)) or isinstance(T, bool) or T < 1:
        raise ScheduleError(f"number of output intervals T must be a positive integer, got {T!r}")
    check_size("number of output intervals T", int(T), MAX_STEPS, "adasched.limits.MAX_STEPS")
    lo, hi = _range(s, sigma_min, sigma_max)
    lam, inv = _inverse(s, c, floor)
    lam_lo, lam_hi = _lambda_at(lam, inv, s, lo), _lambda_at(lam, inv, s, hi)
    u = inv(lam_lo + (lam_hi - lam_lo) * np.arange(T + 1) / T)
    out = np.exp(u)
    out[0], out[-1] = lo, hi
    out = out[::-1].copy()
    if not (np.diff(out) < 0).all():
        raise ScheduleError(
            f"cannot place {T + 1} distinct points on [{lo:g}, {hi:g}]: the cost curve is too concentrated "
            "for float64 (raise the floor or lower T)")
    return torch.from_numpy(out)


def _lambda_at(lam: np.ndarray, inv, s: np.ndarray, sigma: float) -> float:
    """``Lambda_hat(sigma)`` consistent with the interpolant: solve ``inv(Lambda) = log sigma``."""
    # heavy: scipy.optimize would slow every start; loaded at the first read-out
    from scipy.optimize import brentq

    if sigma == s[0]:
        return 0.0
    if sigma == s[-1]:
        return float(lam[-1])
    k = int(np.searchsorted(s, sigma))  # s[k-1] < sigma < s[k] (exact grid points are hit exactly)
    if s[k] == sigma:
        return float(lam[k])
    u = math.log(sigma)
    return brentq(lambda x: float(inv(x)) - u, lam[k - 1], lam[k], xtol=1e-14 * max(1.0, lam[-1]), rtol=1e-15)


def score_optimal_sigmas(probe_sigmas: Any, costs: Any, steps: int, *, floor: float = COST_FLOOR,
                         sigma_min: float | None = None, sigma_max: float | None = None) -> torch.Tensor:
    """The corrector-optimised schedule for an ``steps``-step sampler (paper.md §3.6 step 3).

    An ``N``-step schedule has ``N`` positive points ``sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min``
    followed by the final 0 (:mod:`adasched.schedules`), so the positive points are read out from
    Algorithm 1 with ``T = N - 1`` equal-``Lambda_hat`` intervals; the last step to 0 is not part of the
    optimised schedule (paper.md §5.8).  A one-step schedule is ``[sigma_max, 0]``.  Returns ``steps + 1``
    float64 values, strictly decreasing, ending in exactly 0 (valid for :class:`~adasched.schedules.Schedule`).
    How many NFE a solver spends on ``steps`` is :func:`adasched.samplers.nfe_for_steps`.
    """
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ScheduleError(f"number of steps must be a positive integer, got {steps!r}")
    if steps == 1:
        s = as_grid(probe_sigmas)
        _as_costs(costs, s.size - 1)
        hi = _range(s, sigma_min, sigma_max)[1]
        return validate_sigmas([hi, 0.0])
    pos = update_schedule(probe_sigmas, costs, int(steps) - 1, floor=floor, sigma_min=sigma_min,
                          sigma_max=sigma_max)
    return validate_sigmas(torch.cat([pos, pos.new_zeros(1)]))


def blend(sigmas_old: Any, sigmas_new: Any, gamma: float, *, space: str = "log") -> torch.Tensor:
    """Algorithm 2 step 4 (paper.md §3.5): ``t_i <- gamma t_i* + (1 - gamma) t_i`` for every ``i``.

    ``space="log"`` (default) blends ``log sigma`` (a geometric mean of the two schedules);
    ``space="linear"`` blends sigma itself (the paper's ``t`` for EDM, where ``t = sigma``).  Both keep a
    common ordering and common endpoints, since a convex combination of two strictly monotone sequences is
    strictly monotone.  The schedules must have the same length and either both end in 0 (kept as 0) or be
    both positive.  ``gamma`` in ``[0, 1]``; the paper uses 0.05-0.1, its released code 0.01 (§3.5).
    """
    if not (isinstance(gamma, (int, float, np.floating)) and 0 <= gamma <= 1):
        raise ScheduleError(f"gamma must be a number in [0, 1], got {gamma!r}")
    if space not in ("log", "linear"):
        raise ScheduleError(f"unknown blend space {space!r}; valid: log, linear")
    try:
        a = np.asarray(sigmas_old.cpu() if isinstance(sigmas_old, torch.Tensor) else sigmas_old, dtype=np.float64)
        b = np.asarray(sigmas_new.cpu() if isinstance(sigmas_new, torch.Tensor) else sigmas_new, dtype=np.float64)
    except (TypeError, ValueError):
        raise ScheduleError("schedules to blend must be lists of numbers") from None
    if a.ndim != 1 or a.shape != b.shape or a.size < 2:
        raise ScheduleError(f"schedules to blend must be 1-D with the same length (>= 2), got shapes "
                            f"{a.shape} and {b.shape}")
    zero = a[-1] == 0
    if zero != (b[-1] == 0):
        raise ScheduleError("either both schedules end in 0 or neither does, got "
                            f"last values {a[-1]:g} and {b[-1]:g}")
    pa, pb = (a[:-1], b[:-1]) if zero else (a, b)
    for name, p in (("old", pa), ("new", pb)):
        if not np.isfinite(p).all() or (p <= 0).any():
            raise ScheduleError(f"{name} schedule must be finite and positive (apart from a final 0)")
    da, db = np.diff(pa), np.diff(pb)
    if pa.size > 1 and not (((da < 0).all() and (db < 0).all()) or ((da > 0).all() and (db > 0).all())):
        raise ScheduleError("schedules to blend must be strictly monotone in the same direction")
    if space == "log":
        out = np.exp(gamma * np.log(pb) + (1 - gamma) * np.log(pa))
    else:
        out = gamma * pb + (1 - gamma) * pa
    # Common endpoints stay exactly where they are (exp/log round trips can move them by an ulp).
    for j in (0, -1):
        if pa[j] == pb[j]:
            out[j] = pa[j]
    if gamma in (0, 1):
        out = (pb if gamma == 1 else pa).copy()
    if zero:
        return validate_sigmas(np.append(out, 0.0))
    return torch.from_numpy(out)


def length_stderr(costs: Any, stderr: Any) -> float:
    """Delta-method standard error of ``Lambda_hat = sum_i sqrt(c_i)``: ``sqrt(sum_i se_i^2 / (4 c_i))``.

    Intervals with zero cost and zero error contribute nothing; zero cost with a positive error makes the
    first-order approximation meaningless and returns ``inf``.
    """
    c = _as_costs(costs)
    se = _as_costs(stderr, c.size, "standard errors")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(se == 0, 0.0, se**2 / (4 * c))
    return float(np.sqrt(terms.sum()))


@dataclass(frozen=True)
class ScheduleUncertainty:
    """A score-optimal schedule with its Monte-Carlo uncertainty (see :func:`schedule_uncertainty`).

    ``sigmas``: the point estimate (``steps + 1`` values ending in 0); ``std``: standard deviation of each
    point over the bootstrap (0 for pinned endpoints and the final 0); ``log_std``: the same for
    ``log sigma`` (relative error; 0 at the final 0); ``Lambda``, ``Lambda_std``: ``Lambda_hat`` and its
    delta-method standard error (:func:`length_stderr`); ``n_boot``: bootstrap replicates.
    """

    sigmas: torch.Tensor
    std: np.ndarray
    log_std: np.ndarray
    Lambda: float
    Lambda_std: float
    n_boot: int


def schedule_uncertainty(probe_sigmas: Any, costs: Any, stderr: Any, steps: int, *, n_boot: int = 256,
                         seed: int = 0, floor: float = COST_FLOOR, sigma_min: float | None = None,
                         sigma_max: float | None = None) -> ScheduleUncertainty:
    """Parametric bootstrap of :func:`score_optimal_sigmas` under the cost estimates' sampling error.

    Each replicate draws ``c_i + se_i z_i`` (``z_i`` i.i.d. standard normal from a ``numpy`` generator seeded
    ``seed``; intervals are estimated independently by :func:`adasched.probe.probe`), clips at 0 and reruns
    Algorithm 1; the per-point standard deviations over ``n_boot`` replicates are returned together with the
    point estimate.  ``stderr`` is the standard error of each cost estimate (``ProbeResult.stderr``).
    """
    s = as_grid(probe_sigmas)
    c = _as_costs(costs, s.size - 1)
    se = _as_costs(stderr, s.size - 1, "standard errors")
    if not isinstance(n_boot, int) or n_boot < 2:
        raise ScheduleError(f"n_boot must be an integer >= 2, got {n_boot!r}")
    kw = dict(floor=floor, sigma_min=sigma_min, sigma_max=sigma_max)
    point = score_optimal_sigmas(s, c, steps, **kw)
    rng = np.random.default_rng(seed)
    reps = np.empty((n_boot, point.numel() - 1))
    for b in range(n_boot):
        cb = np.maximum(c + se * rng.standard_normal(c.size), 0.0)
        reps[b] = score_optimal_sigmas(s, cb, steps, **kw)[:-1].numpy()
    fixed = np.ptp(reps, axis=0) == 0  # pinned endpoints: exactly 0, not a rounding residue of the mean
    std = np.append(np.where(fixed, 0.0, reps.std(axis=0, ddof=1)), 0.0)
    log_std = np.append(np.where(fixed, 0.0, np.log(reps).std(axis=0, ddof=1)), 0.0)
    return ScheduleUncertainty(sigmas=point, std=std, log_std=log_std, Lambda=float(cumulative_length(c, floor)[-1]),
                               Lambda_std=length_stderr(c, se), n_boot=n_boot)


def score_optimal_from_probes(path: str | os.PathLike, steps: int, *, sigma_min: float | None = None,
                              sigma_max: float | None = None, floor: float = COST_FLOOR) -> torch.Tensor:
    """``steps + 1`` score-optimal sigmas (ending in 0) from a probe file written by :func:`adasched.probe.probe`.

    Uses the mean corrector cost per interval (paper.md §3.2) and :func:`score_optimal_sigmas`; the range
    defaults to the probed one.
    """
    pr = read_probes(path)
    return score_optimal_sigmas(pr.sigmas, pr.mean, steps, floor=floor, sigma_min=sigma_min, sigma_max=sigma_max)


def score_optimal_schedule(path: str | os.PathLike, solver: str, *, nfe: int | None = None,
                           steps: int | None = None, sigma_min: float | None = None,
                           sigma_max: float | None = None, solver_options: dict | None = None,
                           n_boot: int = 256, method: str = "score-optimal") -> Schedule:
    """A :class:`~adasched.schedules.Schedule` (the design's schedule JSON) from a probe file.

    Give exactly one of ``nfe`` (mapped to steps by :func:`adasched.samplers.steps_for_nfe`; an unreachable
    NFE is a :class:`~adasched.errors.SolverError`) or ``steps``.  ``params`` records the probe file's
    sha256, grid, sample counts, weighting, ``Lambda_hat`` with its delta-method standard error, and the
    bootstrap standard deviation of every sigma (:func:`schedule_uncertainty`; omitted with fewer than
    2 samples per interval); ``provenance`` adds the package versions and the probe file's provenance.
    """
    if (nfe is None) == (steps is None):
        raise ScheduleError("give exactly one of nfe or steps")
    opts = dict(solver_options or {})
    if steps is None:
        steps = steps_for_nfe(solver, nfe, **opts)
    else:
        nfe = nfe_for_steps(solver, steps, **opts)
    pr = read_probes(path)
    kw = dict(sigma_min=sigma_min, sigma_max=sigma_max)
    params: dict[str, Any] = {
        "probes": os.fspath(path),
        "probes_sha256": sha256_file(path),
        "cost": pr.cost,
        "weighting": pr.weighting,
        "probe_intervals": pr.intervals,
        "probe_sigma_min": float(pr.sigmas[0]),
        "probe_sigma_max": float(pr.sigmas[-1]),
        "samples_per_interval": int(pr.count.min()),
        "steps": int(steps),
        "Lambda": float(cumulative_length(pr.mean)[-1]),
    }
    if solver_options:
        params["solver_options"] = opts
    if pr.count.min() >= 2:
        unc = schedule_uncertainty(pr.sigmas, pr.mean, pr.stderr, steps, n_boot=n_boot, **kw)
        sigmas = unc.sigmas
        params.update(Lambda_stderr=unc.Lambda_std, sigma_std=[float(v) for v in unc.std],
                      bootstrap=unc.n_boot)
    else:
        sigmas = score_optimal_sigmas(pr.sigmas, pr.mean, steps, **kw)
    return Schedule(sigmas=sigmas, method=method, solver=solver, nfe=int(nfe), params=params,
                    provenance=provenance(probes_provenance=pr.provenance))


def as_levels(sigmas: Any) -> torch.Tensor:
    """Increasing float64 levels from increasing positive levels or a sampler schedule (decreasing, final 0)."""
    try:
        s = torch.as_tensor(np.asarray(sigmas.cpu() if isinstance(sigmas, torch.Tensor) else sigmas,
                                       dtype=np.float64))
    except (TypeError, ValueError):
        raise ScheduleError("initial sigmas must be a list of numbers") from None
    if s.ndim == 1 and s.numel() >= 2 and s[-1] == 0:  # a sampler schedule: sigma_max ... sigma_min, 0
        s = validate_sigmas(s)[:-1].flip(0)
    if s.ndim != 1 or s.numel() < 2:
        raise ScheduleError(f"need at least 2 noise levels (T >= 1 intervals) in a 1-D list, "
                            f"got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all() or (s <= 0).any():
        raise ScheduleError("noise levels must be finite and positive (a sampler schedule may end in one 0)")
    if not (s[1:] > s[:-1]).all():
        i = int(torch.nonzero(s[1:] <= s[:-1])[0])
        raise ScheduleError(
            f"noise levels must be strictly increasing (sigma_min .. sigma_max) or a sampler schedule "
            f"(strictly decreasing, ending in 0), but levels[{i}]={s[i].item():g} >= "
            f"levels[{i + 1}]={s[i + 1].item():g}")
    return s.clone()


def refine_levels(sigmas: Any, substeps: int) -> torch.Tensor:
    """Split each interval of increasing ``sigmas`` into ``substeps`` intervals uniform in ``log sigma``.

    Returns ``T * substeps + 1`` increasing float64 levels that contain the original ones exactly
    (``out[i * substeps] == sigmas[i]``).  ``substeps = 1`` returns a copy of ``sigmas``.
    """
    s = as_levels(sigmas)
    if not isinstance(substeps, int) or isinstance(substeps, bool) or substeps < 1:
        raise ScheduleError(f"substeps must be a positive integer, got {substeps!r}")
    u = torch.log(s)
    r = torch.arange(substeps + 1, dtype=torch.float64) / substeps
    sub = torch.exp(u[:-1, None] + r[None] * (u[1:] - u[:-1])[:, None])  # [T, substeps + 1]
    sub[:, 0], sub[:, -1] = s[:-1], s[1:]
    return torch.cat([sub[:, :-1].reshape(-1), s[-1:]])


@dataclass(frozen=True)
class Refinement:
    """Result of :func:`refine_schedule`: the final schedule and, per round, the probe file and movement."""

    sigmas: torch.Tensor
    rounds: list
    converged: bool


def refine_schedule(denoise, data_sampler, steps: int, workdir: str | os.PathLike, *, intervals: int = 100,
                    samples: int = 128, substeps: int = 8, tol: float = 0.01, max_rounds: int = 5,
                    sigma_min: float = 0.002, sigma_max: float = 80.0, **probe_options) -> Refinement:
    """Fixed-point refinement of the score-optimal schedule (paper.md §3.6 step 4, optional).

    Round 0 probes a log-spaced grid of ``intervals`` intervals and reads out the ``steps``-step schedule;
    each further round probes a new grid made of the current schedule's points, each interval split into
    ``substeps`` log-uniform sub-intervals (so the probes concentrate where the schedule is dense), and
    reads the schedule out again.  It stops when no point moves by more than ``tol`` in relative terms
    (``converged``) or after ``max_rounds`` rounds.  Probe files are ``workdir/round<r>.h5``; more samples
    on the same grid are added by running again (see :func:`adasched.probe.probe`).
    """
    workdir = Path(workdir)
    grid = probe_grid(intervals, sigma_min, sigma_max)
    current, rounds = None, []
    for r in range(max_rounds + 1):
        res = probe(denoise, data_sampler, grid, None, workdir / f"round{r}.h5", total_samples=samples,
                    **probe_options)
        new = score_optimal_sigmas(res.sigmas, res.mean, steps)
        move = None if current is None else float((new[:-1] / current[:-1] - 1).abs().max())
        rounds.append({"probes": str(workdir / f"round{r}.h5"), "grid_points": int(res.sigmas.size),
                       "max_relative_move": move, "Lambda": float(cumulative_length(res.mean)[-1])})
        log.info("refine round %d: %d probe points, max relative move %s", r, res.sigmas.size, move)
        current = new
        if move is not None and move < tol:
            return Refinement(current, rounds, True)
        grid = refine_levels(current[:-1].flip(0), substeps).numpy()
    return Refinement(current, rounds, False)
