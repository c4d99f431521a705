"""The model's own high-accuracy solves that solver-aware schedules are fitted to, one file per model.

A solver-aware schedule (:mod:`adasched.fitting`) is fitted to targets: probability-flow ODE solutions, by the
model itself, of fit latents drawn from their own seeds.  They do not depend on the solver or the NFE being
fitted, so they are computed once per model and fit latents (:func:`solve_reference`), stored in HDF5
(:func:`write_reference`, :func:`read_reference`) beside the probes, and read by every schedule fit.

Their accuracy is chosen by measurement, not by a fixed step count: Heun on EDM's rho = 7 grid with
``N = start_steps, 2 start_steps, 4 start_steps, ...`` steps (``F_N``), each level Richardson-extrapolated
with the one before, ``R_N = (4 F_N - F_{N/2}) / 3`` (Heun's global error is O(h^2), so this cancels its
leading term).  ``rms(R_N - R_{N/2})`` estimates the error of ``R_{N/2}``, an upper bound for that of
``R_N`` (which was 7x to 8x smaller again on the analytic targets, docs/benchmarks.md).  The doubling stops at
the first level whose estimate is at most ``tol`` times the targets' RMS, or at ``max_steps``, where the
estimate is recorded as it is, with a warning.  A fit then compares its own error with the reference's
(:func:`adasched.fitting.solver_aware_schedule`): targets as wrong as the schedule is cannot fit it.

Resuming: ``levels`` hands :func:`solve_reference` the fine solves ``F_N`` of an earlier, interrupted call
and ``on_level`` is told each new one, so the stage (:func:`adasched.stages.fit_reference`) keeps them on disk
and a rerun continues at the next level.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import h5py
import numpy as np
import torch

from adasched.errors import AdaschedError, DataError
from adasched.io import atomic_path, provenance
from adasched.models import content_hash
from adasched.progress import Progress, report
from adasched.samplers import get_solver, latents, with_drawn_labels
from adasched.schedules import sigmas_edm

__all__ = ["REFERENCE_FLOOR", "REFERENCE_TOL", "FORMAT", "FORMAT_VERSION", "Reference", "reference_solution",
           "solve_reference", "start_chunks", "write_reference", "read_reference", "check_reference"]

log = logging.getLogger(__name__)

#: Where a reference solve stops before its final jump to 0 for a model exact at every sigma (``sigma_min`` 0:
#: the analytic targets).  The jump from 0.002 alone leaves 5e-5 RMSE on the power-law Gaussian and 9e-5 on the
#: 64-D mixture, as much as good 10-NFE schedules' own error; from 2e-6, with the extrapolated 4096-step solve,
#: 2.6e-10 and 2.1e-9 (benchmarks/reference_error.py, docs/benchmarks.md).
REFERENCE_FLOOR = 2e-6

#: The default accuracy of :func:`solve_reference`: the Richardson error estimate at most this share of the
#: targets' RMS, per dtype.  float32 solves stop near their rounding floor; float64 (the analytic targets,
#: cheap) go far below any fitted schedule's error there (docs/benchmarks.md).
REFERENCE_TOL = {torch.float32: 1e-4, torch.float64: 1e-7}

FORMAT = "adasched-reference"
FORMAT_VERSION = 1


def reference_solution(denoise, x_start: torch.Tensor, sigma_max: float, sigma_min: float | None = None,
                       steps: int = 4096, progress: Progress | None = None) -> torch.Tensor:
    """One fixed-accuracy probability-flow solve by the model itself: Richardson-extrapolated Heun.

    Heun on EDM's rho = 7 schedule with ``steps`` and with ``steps // 2`` steps (the coarse grid is every
    other level of the fine one), combined as ``(4 fine - coarse) / 3``: 1.5x the fine solve's cost (12286 NFE
    by default), 75x to 490x less error on the analytic targets, and 7x to 8x less at each doubling of
    ``steps``.  It stops at ``sigma_min``, by default the model's own (a network is untrained below it), or
    :data:`REFERENCE_FLOOR` for a model that declares 0; then the final jump to 0.  ``progress("reference
    solve", step, total)`` counts the steps of both solves.  :func:`solve_reference` chooses ``steps`` by
    measurement instead.
    """
    sigma_min = _stop(denoise, sigma_min)
    if steps < 2 or steps % 2:
        raise AdaschedError(f"reference steps must be even and at least 2, got {steps}")
    total = steps + steps // 2
    with torch.no_grad():
        fine = _heun(denoise, x_start, steps, sigma_min, sigma_max, progress, 0, total)
        coarse = _heun(denoise, x_start, steps // 2, sigma_min, sigma_max, progress, steps, total)
    return (4.0 * fine - coarse) / 3.0


def _stop(denoise, sigma_min: float | None) -> float:
    if sigma_min is None:
        sigma_min = float(getattr(denoise, "sigma_min", 0.0)) or REFERENCE_FLOOR
    return float(sigma_min)


def _heun(denoise, x, steps, sigma_min, sigma_max, progress, offset, total):
    def done(i, *_):
        report(progress, "reference solve", offset + i + 1, total)

    return get_solver("heun").fn(denoise, x, sigmas_edm(steps, sigma_min, sigma_max), callback=done)


@dataclass
class Reference:
    """Targets of a solver-aware fit: the model's solves of ``latents(seeds) * sigma_max`` down to 0.

    ``target`` ([len(seeds), *shape], on the CPU, in the dtype it was solved in); ``steps`` the fine Heun
    solve's steps (the extrapolation also used the solve with half as many); ``error`` the Richardson estimate
    of its RMS error and ``rms`` the targets' RMS; ``history`` each level's ``(steps, error)``;
    ``evaluations`` the network evaluations it took (per latent, all levels).
    """

    target: torch.Tensor
    seeds: list[int]
    sigma_max: float
    sigma_min: float
    steps: int
    error: float
    rms: float
    tol: float
    evaluations: int
    history: list[tuple[int, float]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def converged(self) -> bool:
        return self.error <= self.tol * self.rms


def start_chunks(denoise, shape: Sequence[int], seeds: Sequence[int], sigma_max: float, *, batch: int,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64) -> list[tuple]:
    """The fit latents of ``seeds`` as start points ``latents * sigma_max`` on ``device`` in ``dtype``, ``batch``
    at a time: ``(denoiser, x, seeds)`` per chunk, a class-conditional model bound to the classes
    :func:`adasched.samplers.generate` draws for the chunk's seeds (the solves and the fits of a reference)."""
    seeds = [int(s) for s in seeds]
    return [(with_drawn_labels(denoise, chunk, shape),
             latents(chunk, shape).to(device=device, dtype=dtype) * sigma_max, chunk)
            for chunk in (seeds[lo:lo + batch] for lo in range(0, len(seeds), batch))]


def _rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


def solve_reference(denoise, shape: Sequence[int], seeds: Sequence[int], sigma_max: float, *,
                    sigma_min: float | None = None, tol: float | None = None, start_steps: int = 32,
                    max_steps: int = 4096, batch: int = 64, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float64, levels: Mapping[int, torch.Tensor] | None = None,
                    on_level: Callable[[int, torch.Tensor], None] | None = None,
                    progress: Progress | None = None) -> Reference:
    """Solve ``latents(seeds, shape) * sigma_max`` to 0 with the model, doubling Heun's steps until the
    Richardson estimate of the extrapolated solve's error is at most ``tol`` (default :data:`REFERENCE_TOL` of
    ``dtype``) times the targets' RMS, or ``max_steps`` is reached (module docstring).

    Latents go through the model ``batch`` at a time on ``device`` in ``dtype``; a class-conditional model
    solves each latent with the class :func:`adasched.samplers.generate` draws for its seed.  ``levels``: fine
    solves already made (steps -> tensor), reused; ``on_level(steps, fine)`` is told each new one.
    """
    if start_steps < 1 or max_steps < 4 * start_steps:
        raise AdaschedError(f"max_steps {max_steps} leaves fewer than the three levels one error estimate needs: "
                            f"it must be at least {4 * max(1, start_steps)} (four times start_steps {start_steps})")
    if batch < 1:
        raise AdaschedError(f"batch must be a positive integer, got {batch}")
    tol = REFERENCE_TOL.get(dtype, REFERENCE_TOL[torch.float32]) if tol is None else float(tol)
    if not tol > 0:
        raise AdaschedError(f"reference tol must be positive, got {tol}")
    seeds = [int(s) for s in seeds]
    stop = _stop(denoise, sigma_min)
    ladder = [start_steps]
    while 2 * ladder[-1] <= max_steps:
        ladder.append(2 * ladder[-1])
    total = sum(ladder)
    known = dict(levels or {})
    fine: dict[int, torch.Tensor] = {}
    history: list[tuple[int, float]] = []
    done_steps, previous, error, rms = 0, None, math.inf, math.nan
    evaluations = 0
    chunks = start_chunks(denoise, shape, seeds, sigma_max, batch=batch, device=device, dtype=dtype)
    for steps in ladder:
        if steps in known:
            fine[steps] = known[steps].to("cpu", dtype)
        else:
            parts = []
            for k, (model, x, _) in enumerate(chunks):
                with torch.no_grad():
                    # the first chunk reports the level's steps; the others repeat them
                    parts.append(_heun(model, x, steps, stop, sigma_max, progress if k == 0 else None,
                                       done_steps, total).to("cpu"))
            fine[steps] = torch.cat(parts)
            if on_level is not None:
                on_level(steps, fine[steps])
        evaluations += 2 * steps - 1
        done_steps += steps
        half = steps // 2
        if half not in fine:
            continue
        extrapolated = (4.0 * fine[steps] - fine[half]) / 3.0
        rms = _rms(extrapolated)
        if previous is not None:
            error = _rms(extrapolated - previous)
            history.append((steps, error))
            log.info("reference: %d steps, Richardson error estimate %.3g (%.3g of the targets' RMS)", steps, error,
                     error / rms)
            if error <= tol * rms:
                break
        previous = extrapolated
        fine.pop(half // 2, None)
    else:
        log.warning("reference: %d steps reached with error estimate %.3g (%.3g of the targets' RMS), above the "
                    "tolerance %.3g; it is kept, and recorded", ladder[-1], error, error / rms, tol)
    if done_steps < total:  # the doubling stopped before max_steps: the solve is done all the same
        report(progress, "reference solve", total, total)
    return Reference(target=extrapolated, seeds=seeds, sigma_max=float(sigma_max), sigma_min=stop, steps=steps,
                     error=error, rms=rms, tol=tol, evaluations=evaluations, history=history,
                     meta={"dtype": str(dtype).removeprefix("torch."), "device": str(device)})


def write_reference(path: str | os.PathLike, ref: Reference, *, model: str, model_hash: str | None) -> Path:
    """Write ``ref`` as HDF5 (built in memory, then moved into place atomically, as probe files are)."""
    path = Path(path)
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["model"] = model
        f.attrs["model_hash"] = model_hash or ""
        for key in ("sigma_max", "sigma_min", "error", "rms", "tol"):
            f.attrs[key] = float(getattr(ref, key))
        f.attrs["steps"] = int(ref.steps)
        f.attrs["evaluations"] = int(ref.evaluations)
        f.attrs["meta"] = json.dumps({**ref.meta, "provenance": provenance(command="fit-reference")}, sort_keys=True)
        f.create_dataset("target", data=ref.target.numpy())
        f.create_dataset("seeds", data=np.asarray(ref.seeds, dtype=np.int64))
        f.create_dataset("history", data=np.asarray(ref.history, dtype=np.float64).reshape(-1, 2))
    with atomic_path(path, suffix=".tmp.h5") as tmp, open(tmp, "wb") as out:
        out.write(image.getbuffer())
        out.flush()
        os.fsync(out.fileno())
    return path


def read_reference(path: str | os.PathLike) -> Reference:
    """Read a file of :func:`write_reference`; a missing or foreign file is one :class:`DataError`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"reference file not found: {path}")

    def fail(why: str) -> DataError:
        return DataError(f"{path} is not a readable adasched reference file ({FORMAT} v{FORMAT_VERSION}): {why}")

    try:
        with h5py.File(path, "r", locking=False) as f:
            if f.attrs.get("format") != FORMAT or int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
                raise fail(f"format {f.attrs.get('format')!r} v{f.attrs.get('format_version')}")
            try:
                history = f["history"][()]
                ref = Reference(
                    target=torch.from_numpy(np.ascontiguousarray(f["target"][()])),
                    seeds=[int(s) for s in f["seeds"][()]],
                    steps=int(f.attrs["steps"]), evaluations=int(f.attrs["evaluations"]),
                    history=[(int(s), float(e)) for s, e in history],
                    meta={**json.loads(f.attrs["meta"]), "model": str(f.attrs["model"]),
                          "model_hash": str(f.attrs["model_hash"]), "path": str(path)},
                    **{k: float(f.attrs[k]) for k in ("sigma_max", "sigma_min", "error", "rms", "tol")})
            except (KeyError, ValueError, TypeError) as e:
                raise fail(f"missing or malformed {e}") from None
    except OSError as e:
        raise fail(str(e)) from None
    if ref.target.shape[:1] != (len(ref.seeds),):
        raise fail(f"{len(ref.seeds)} seeds but targets of shape {tuple(ref.target.shape)}")
    return ref


def check_reference(ref: Reference, model: Any, spec: str, *, seeds: Sequence[int], sigma_max: float,
                    shape: Sequence[int]) -> None:
    """Refuse targets that are not ``model``'s solves (by content hash, else by SPEC) of these fit latents."""
    where = ref.meta.get("path", "the reference")
    have, want = ref.meta.get("model_hash", ""), content_hash(model) or ""
    if (have and want and have != want) or (not (have and want) and ref.meta.get("model") != spec):
        raise DataError(f"{where} holds the solves of model {ref.meta.get('model')!r}, not of {spec!r}; make one "
                        "for this model with 'adasched fit-reference'")
    if list(ref.seeds) != [int(s) for s in seeds]:
        raise DataError(f"{where} holds the solves of seeds {ref.seeds[0]}..{ref.seeds[-1]} ({len(ref.seeds)}), "
                        f"the fit asks for {seeds[0]}..{seeds[-1]} ({len(seeds)}); use the same --fit-seeds")
    if not math.isclose(ref.sigma_max, sigma_max, rel_tol=1e-12):
        raise DataError(f"{where} starts its solves at sigma_max {ref.sigma_max:g}, the schedule at {sigma_max:g}")
    if tuple(ref.target.shape[1:]) != tuple(shape):
        raise DataError(f"{where} holds targets of shape {tuple(ref.target.shape[1:])}, the model's samples have "
                        f"shape {tuple(shape)}")
