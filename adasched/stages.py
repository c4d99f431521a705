"""The stages of adasched, one typed function each: :func:`probe`, :func:`schedule`, :func:`sample`,
:func:`evaluate`, :func:`train` (and :func:`merge_samples`, the join of a sample split into seed ranges).

Every caller shares them: the ``adasched`` command line (:mod:`adasched.cli`, one flag per keyword), the
Snakemake workflow (:func:`adasched.workflow.run_stage`, in its own process or, through
:mod:`adasched.dispatch`, as a SLURM job) and library users.  Each stage

* takes keyword-only arguments whose defaults are defined here and nowhere else (the CLI reads them from
  these signatures; :func:`bind` checks and converts a caller's options against them);
* refuses an output it cannot write before any work (:func:`adasched.io.check_output`) and writes its
  output atomically;
* resumes from its own partial work where the work is long: :func:`sample` always (finished batches wait in
  ``.<output name>.partial/`` and a rerun with the same inputs keeps them), :func:`probe` with ``resume=True``
  (the file is built there and topped up to ``total_samples``), :func:`train` from its ``checkpoint``;
* reports progress through one callback, ``progress(task, done, total)`` (:mod:`adasched.progress`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections import abc
import json
import logging
import os
import shutil
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, Union

import numpy as np
import torch

from adasched import __version__
from adasched.data import load_data_sampler
from adasched.dispatch import inputs_digest, partial_dir
from adasched.errors import AdaschedError
from adasched.fid import image_metrics
from adasched.fitting import WHITENED_ROUNDS, solver_aware_schedule
from adasched.io import atomic_path, check_output, provenance, save_npz, sha256_file, write_json
from adasched.metrics import MetricsRecord, evaluate_samples
from adasched.models import content_hash, load_model
from adasched.optimize import score_optimal_schedule
from adasched.probe import probe as probe_file
from adasched.probe import check_model, probe_grid, read_probes
from adasched.progress import Progress, report
from adasched.references import check_reference, read_reference, solve_reference, write_reference
from adasched.samplers import check_options, check_sample_memory, generate, nfe_for_steps, steps_for_nfe
from adasched.schedules import CLOSED_FORM, SIGMA_MAX, SIGMA_MIN, Schedule
from adasched.train import TrainConfig, learned_schedule, sample_model, save_grid
from adasched.train import train as train_network

__all__ = ["probe", "fit_reference", "schedule", "sample", "evaluate", "train", "merge_samples", "bind", "STAGES",
           "METHODS", "PROBED_METHODS", "DTYPES", "FIT_BUDGET", "ANALYTIC_FIT_BUDGET", "resolve_device"]

log = logging.getLogger(__name__)

#: Schedule methods computed from a probe file, and the cost variant each needs.
PROBED_METHODS = {"score-optimal": "corrector", "score-optimal-po": "predictor", "solver-aware": "corrector"}
#: Every schedule method: the closed forms, the probed ones, and the schedule learned while training.
METHODS = (*CLOSED_FORM, *PROBED_METHODS, "online")
#: Sampler state dtypes of :func:`sample`.
DTYPES = ("float64", "float32")
#: First seed of the latents a solver-aware schedule is fitted on, far from the seeds samples are drawn with.
FIT_SEED_START = 1_000_000
#: The default budget of a solver-aware fit to a network, in network evaluations (forward plus backward, each
#: latent's counted): on the default's digits model, warm-started as the workflow does, its fits' mean squared
#: error was within 0.7% of the converged fits' (ten times the budget) in three of four cells and 7% above it in
#: one, for about 17 s of one CPU core per cell (docs/benchmarks.md).  A network's fit has no exact-Hessian rounds
#: (:data:`adasched.fitting.WHITENED_ROUNDS`): there they gained nothing for a third of the budget.
FIT_BUDGET = 50_000
#: The default budget of a solver-aware fit to an analytic target, whose evaluations cost microseconds: far more,
#: enough for the converged fits of most cells of the default workflow (mix2d's took 0.4 to 2.4 million), while
#: the few that went on to 7 to 25 million (fitting below the reference's own error) stop (docs/workflow.md).
ANALYTIC_FIT_BUDGET = 2_000_000
#: Arrays of a samples NPZ with one row per sample (concatenated when batches or seed ranges are joined): those
#: :func:`adasched.samplers.generate` returns (``labels`` for a class-conditional model), and the seeds.
_ARRAYS = ("samples", "latents", "labels")
_PER_SAMPLE = (*_ARRAYS, "seeds")

PathLike = Union[str, os.PathLike]


def resolve_device(name: str) -> str:
    """A torch device name: ``auto`` is CUDA when available, else the CPU; an unusable device is one error."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    try:
        torch.empty(0, device=device)
    except (RuntimeError, ValueError) as e:
        raise AdaschedError(f"device {name!r} is not usable here: {str(e).splitlines()[0]}") from None
    return device


# ---------------------------------------------------------------------------------------------------- probe


def probe(*, model: str, output: PathLike, grid: int, samples: int | None = None, total_samples: int | None = None,
          data: str | None = None, spacing: str = "log", seed: int | None = None, sigma_min: float = SIGMA_MIN,
          sigma_max: float = SIGMA_MAX, cost: str = "corrector", weighting: str = "lower", hutchinson: int = 1,
          batch: int = 256, device: str = "auto", trust_pickle: bool = False, resume: bool = False,
          progress: Progress | None = None) -> Path:
    """Estimate the paper's incremental cost on a grid of ``grid`` intervals into the HDF5 file ``output``.

    ``samples`` adds that many samples per interval to ``output`` (created if missing); ``total_samples``
    brings it up to that many (a rerun with the same number finishes an interrupted call).  With
    ``resume=True`` (needs ``total_samples``) the file is built in ``.<output name>.partial/`` and moved onto
    ``output`` only when complete, so ``output`` never holds part of the samples.  An analytic model is fed
    float64 and by default probed on its own exact samples (``data="target"``); a network float32, on a pool
    of its own samples (``data="model"``).  Other arguments: :func:`adasched.probe.probe`.
    """
    inputs = _inputs(locals())
    output = Path(output)
    check_output(output)
    if (samples is None) == (total_samples is None):
        raise AdaschedError("give exactly one of samples (to add per interval) or total_samples (to reach)")
    if resume and total_samples is None:
        raise AdaschedError("resume needs total_samples: a resumed probe tops its file up to a fixed number")
    device = resolve_device(device)
    net = load_model(model, device=device, trust=trust_pickle)
    dtype = _model_dtype(net)
    analytic = dtype == torch.float64
    sampler = load_data_sampler(data or ("target" if analytic else "model"), net, device=device, dtype=dtype)
    sigmas = probe_grid(grid, sigma_min, sigma_max, spacing=spacing)
    meta = {"model": model, "model_sha256": getattr(net, "sha256", "") or "", "data": sampler.description}
    options = dict(total_samples=total_samples, seed=seed, batch=batch, weighting=weighting, cost=cost,
                   hutchinson=hutchinson, dtype=dtype, device=device, meta=meta,
                   callback=lambda done, todo: report(progress, "probe", done, todo))
    if not resume:
        probe_file(net, sampler, sigmas, samples, output, **options)
        return output
    with _partial_work(output, "probe", inputs) as work:
        path = work / "probes.h5"
        if path.exists():
            log.info("probe: resuming %s at %d samples per interval", path, read_probes(path).samples)
        probe_file(net, sampler, sigmas, None, path, **options)
        _move_into_place(path, output)
    shutil.rmtree(work, ignore_errors=True)
    return output


# -------------------------------------------------------------------------------------------- fit-reference


def fit_reference(*, model: str, output: PathLike, fit_seeds: int = 64, sigma_max: float = SIGMA_MAX,
                  sigma_min: float | None = None, tol: float | None = None, max_steps: int = 4096, batch: int = 64,
                  device: str = "auto", trust_pickle: bool = False, progress: Progress | None = None) -> Path:
    """The model's own high-accuracy solves of the ``fit_seeds`` latents of seeds :data:`FIT_SEED_START` on,
    from ``sigma_max`` to 0, into the HDF5 file ``output``: the targets every solver-aware schedule of this
    model is fitted to (:func:`schedule` with ``reference``).

    Heun's steps double until the Richardson estimate of the error is at most ``tol`` times the targets' RMS
    (default :data:`adasched.references.REFERENCE_TOL`: 1e-4 in float32 for a network, 1e-7 in float64 for an
    analytic target) or ``max_steps`` is reached; the solve stops at ``sigma_min`` (default the model's own)
    before its jump to 0.  Each level's solve is kept in ``.<output name>.partial/``, so an interrupted call
    resumes at the next level.
    """
    inputs = _inputs(locals())
    output = Path(output)
    check_output(output)
    if fit_seeds < 1 or batch < 1:
        raise AdaschedError(f"fit_seeds and batch must be positive integers, got {fit_seeds} and {batch}")
    device = resolve_device(device)
    net = load_model(model, device=device, trust=trust_pickle)
    dtype = _model_dtype(net)
    seeds = range(FIT_SEED_START, FIT_SEED_START + fit_seeds)
    with _partial_work(output, "fit-reference", inputs) as work:
        levels = {int(p.stem.split("-")[1]): torch.from_numpy(np.load(p, allow_pickle=False))
                  for p in work.glob("level-*.npy")}
        if levels:
            log.info("fit-reference: resuming %s with the solves of %s steps", output, sorted(levels))

        def keep(steps: int, fine: torch.Tensor) -> None:
            path = work / f"level-{steps}.npy"
            with atomic_path(path, suffix=".tmp.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, fine.numpy(), allow_pickle=False)

        ref = solve_reference(net, net.shape, seeds, sigma_max, sigma_min=sigma_min, tol=tol, max_steps=max_steps,
                              batch=batch, device=device, dtype=dtype, levels=levels, on_level=keep,
                              progress=progress)
        write_reference(output, ref, model=model, model_hash=content_hash(net))
    shutil.rmtree(work, ignore_errors=True)
    return output


def _model_dtype(net) -> torch.dtype:
    """What a model is probed and fitted in: float64 for an analytic target (it has ``sample``; cheap, and
    compared exactly), float32 for a network."""
    return torch.float64 if callable(getattr(net, "sample", None)) else torch.float32


# ------------------------------------------------------------------------------------------------- schedule


def schedule(*, method: str, solver: str, output: PathLike, nfe: int | None = None, steps: int | None = None,
             rho: float = 7.0, sigma_min: float | None = None, sigma_max: float | None = None,
             probes: PathLike | None = None, probes_po: PathLike | None = None, model: str | None = None,
             reference: PathLike | None = None, warm_start: PathLike | None = None, fit_seeds: int = 64,
             fit_iterations: int = 200, fit_budget: int | None = None, fit_batch: int | None = None,
             device: str = "auto", trust_pickle: bool = False, solver_options: dict | None = None,
             progress: Progress | None = None) -> Path:
    """A schedule JSON for ``solver`` at ``nfe`` network evaluations (or ``steps`` steps) by ``method``.

    Closed forms (:data:`adasched.schedules.CLOSED_FORM`; ``rho`` for ``edm``) span ``[sigma_min, sigma_max]``,
    by default 0.002 to 80.  The probed methods (:data:`PROBED_METHODS`) read ``probes`` and span the probed
    range unless a range is given.  ``online`` reads out the schedule learned while training ``model``
    (``adasched:PATH``).  ``solver_options`` are the solver's keyword options; they change its NFE
    (``pc-langevin``) and are recorded in the schedule.

    ``solver-aware`` fits the score-optimal schedule to ``model``'s own high-accuracy solves of ``fit_seeds``
    latents from seed :data:`FIT_SEED_START` on (:func:`adasched.fitting.solver_aware_schedule`): those of the
    file ``reference`` (made by :func:`fit_reference` for this model, seeds and ``sigma_max``) or, without one,
    solved here.  More starts: ``probes_po`` (the predictor-cost schedule) and ``warm_start`` (a solver-aware
    schedule at another NFE, resampled, scored first; then the closed-form starts are skipped).  The fit
    spends at most ``fit_budget`` network evaluations, forward plus backward (default :data:`FIT_BUDGET` for a
    network, without exact-Hessian rounds; :data:`ANALYTIC_FIT_BUDGET` for an analytic target), at most
    ``fit_iterations`` Adam steps per start; the model runs on ``device`` (float32 for a network, float64 for an
    analytic target), ``fit_batch`` latents at a time (default all).  What it spent is recorded in the schedule
    (``params.fit_cost``).  ``trust_pickle``: load an unpinned model pickle (as :func:`probe`).
    """
    output = Path(output)
    check_output(output)
    opts = check_options(solver, solver_options or {})
    if method not in METHODS:
        raise AdaschedError(f"unknown schedule method {method!r}; valid: {', '.join(METHODS)}")
    if (nfe is None) == (steps is None):
        raise AdaschedError("give exactly one of nfe or steps")
    if method in PROBED_METHODS:
        fit = dict(model=model, reference=reference, warm_start=warm_start, fit_seeds=fit_seeds,
                   fit_iterations=fit_iterations, fit_budget=fit_budget, fit_batch=fit_batch, device=device,
                   trust_pickle=trust_pickle)
        made = _probed_schedule(method, solver, nfe=nfe, steps=steps, sigma_min=sigma_min, sigma_max=sigma_max,
                                probes=probes, probes_po=probes_po, opts=opts, progress=progress, **fit)
        made.save(output)
        return output
    steps = steps if steps is not None else steps_for_nfe(solver, nfe, **opts)
    nfe = nfe_for_steps(solver, steps, **opts)
    if method == "online":
        kind, _, path = (model or "").partition(":")
        if kind != "adasched" or not path:
            raise AdaschedError("--method online needs --model adasched:PATH, a model trained with --online-schedule")
        learned_schedule(path, solver, steps).save(output)  # a missing file: ModelError, one line
        return output
    params: dict[str, Any] = {"sigma_min": SIGMA_MIN if sigma_min is None else sigma_min,
                              "sigma_max": SIGMA_MAX if sigma_max is None else sigma_max}
    if method == "edm":
        params["rho"] = rho
    sigmas = CLOSED_FORM[method](steps, **params)
    if opts:
        params["solver_options"] = opts
    Schedule(sigmas, method=method, solver=solver, nfe=nfe, params=params,
             provenance=provenance(command="schedule")).save(output)
    return output


def _probed_schedule(method, solver, *, nfe, steps, sigma_min, sigma_max, probes, probes_po, model, reference,
                     warm_start, fit_seeds, fit_iterations, fit_budget, fit_batch, device, trust_pickle, opts,
                     progress) -> Schedule:
    if not probes:
        raise AdaschedError(f"method {method} needs --probes FILE.h5 (made by 'adasched probe')")
    if method == "solver-aware" and not model:
        raise AdaschedError("method solver-aware needs --model SPEC: it is fitted to the model's own solves")
    want, have = PROBED_METHODS[method], read_probes(probes).cost
    if have != want:
        raise AdaschedError(f"method {method} needs a probe file of the {want!r} cost; {probes} holds the {have!r} "
                            f"cost (adasched probe --cost {want})")
    given = {"sigma_min": sigma_min, "sigma_max": sigma_max}
    base = score_optimal_schedule(probes, solver, nfe=nfe, steps=steps, solver_options=opts or None, method=method,
                                  **given)
    if method != "solver-aware":
        return base
    if fit_seeds < 1 or (fit_batch is not None and fit_batch < 1) or (fit_budget is not None and fit_budget < 1):
        raise AdaschedError(f"fit_seeds, fit_batch and fit_budget must be positive integers, got {fit_seeds}, "
                            f"{fit_batch} and {fit_budget}")
    device = resolve_device(device)
    net = load_model(model, device=device, trust=trust_pickle)
    check_model(probes, net, model)  # the probes must be this model's (by content, not by SPEC)
    dtype = _model_dtype(net)
    seeds = list(range(FIT_SEED_START, FIT_SEED_START + fit_seeds))
    extra = []
    if probes_po:
        if check_model(probes_po, net, model).cost != "predictor":
            raise AdaschedError(f"--probes-po {probes_po} does not hold the 'predictor' cost")
        extra.append(score_optimal_schedule(probes_po, solver, steps=base.steps, **given).sigmas)
    targets = None
    if reference:
        targets = read_reference(reference)
        check_reference(targets, net, model, seeds=seeds, sigma_max=float(base.sigmas[0]), shape=net.shape)
    warm = Schedule.load(warm_start) if warm_start else None  # any schedule: it is one more start, scored first
    network = dtype == torch.float32
    budget = fit_budget if fit_budget is not None else FIT_BUDGET if network else ANALYTIC_FIT_BUDGET
    fit = solver_aware_schedule(net, net.shape, solver, base.sigmas, seeds, reference=targets, candidates=extra,
                                warm_start=None if warm is None else warm.sigmas, iterations=fit_iterations,
                                budget=budget, whitened_rounds=0 if network else WHITENED_ROUNDS, chunk=fit_batch,
                                device=device, dtype=dtype, progress=progress, **opts)
    params = dict(base.params, model=model, fit_seeds=[seeds[0], seeds[-1] + 1], fit_iterations=fit_iterations,
                  initial_sigmas=[float(v) for v in base.sigmas], fit_error=fit.error, fit_start_error=fit.start_error,
                  fit_cost=fit.cost, reference=None if reference is None else os.fspath(reference),
                  reference_error=fit.reference_error, warm_start=None if warm is None else os.fspath(warm_start))
    params.pop("sigma_std", None)
    return Schedule(fit.sigmas, method=method, solver=solver, nfe=base.nfe, params=params, provenance=base.provenance)


# --------------------------------------------------------------------------------------------------- sample


def sample(*, model: str, schedule: PathLike, solver: str, num: int, output: PathLike, seed_start: int = 0,
           batch: int = 256, device: str = "auto", dtype: str = "float64", trust_pickle: bool = False,
           solver_options: dict | None = None, class_label: int | None = None,
           progress: Progress | None = None) -> Path:
    """``num`` samples of ``model`` along ``schedule`` with ``solver`` into a samples NPZ (design.md's keys).

    Sample ``i`` starts from the latent of seed ``seed_start + i`` (common random numbers); the seeds run in
    batches of ``batch``.  Each finished batch is kept in ``.<output name>.partial/``, so a run that was
    killed resumes after its last complete batch, with the arrays an uninterrupted run writes, bit for bit
    (work made from other inputs is discarded).  ``solver_options`` override those the schedule was made
    with (used when it was made for the same solver).  ``nfe`` in the file is the counted number of
    denoiser evaluations per sample.  ``class_label``: every sample of a class-conditional model of this class
    (default: a random class per seed, drawn as EDM does).
    """
    inputs = _inputs(locals())
    output = Path(output)
    check_output(output)
    if dtype not in DTYPES:
        raise AdaschedError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if num < 1 or batch < 1:
        raise AdaschedError(f"num and batch must be positive integers, got num {num} and batch {batch}")
    sched = Schedule.load(schedule)
    opts = dict(sched.params.get("solver_options", {})) if sched.solver == solver else {}
    opts.update(check_options(solver, solver_options or {}))
    if sched.solver != solver:
        log.warning("schedule %s was made for %s, sampling with %s", schedule, sched.solver, solver)
    device = resolve_device(device)
    chunks = _SeedBatches(seed_start, num, batch)
    with _partial_work(output, "sample", inputs) as work:
        done = _complete_batches(work, chunks)
        if done:
            log.info("sample: resuming %s after %d of %d batches", output, done, len(chunks))
        if done < len(chunks):
            net = load_model(model, device=device, trust=trust_pickle)
            check_sample_memory(net, num, net.shape, batch, getattr(torch, dtype))
        for k in range(done, len(chunks)):
            with torch.inference_mode():
                out = generate(net, sched.sigmas, solver, chunks[k], net.shape, batch=batch, device=device,
                               dtype=getattr(torch, dtype), class_label=class_label, **opts)
            save_npz(_batch_file(work, k), **{key: out[key].numpy() for key in _ARRAYS if key in out},
                     seeds=np.asarray(chunks[k], dtype=np.int64), nfe=np.int64(out["nfe"]))
            report(progress, "sample", chunks[k].stop - seed_start, num)
        parts = []
        for k in range(len(chunks)):
            with np.load(_batch_file(work, k)) as z:
                parts.append({key: z[key] for key in z.files})
        _write_samples(output, parts, sigmas=sched.sigmas.numpy(), solver=solver, method=sched.method,
                       provenance=json.dumps(provenance(command="sample", model=model, schedule=sched.to_json(),
                                                        solver_options=opts, device=str(device))))
    shutil.rmtree(work, ignore_errors=True)
    return output


def merge_samples(parts: Sequence[PathLike], output: PathLike) -> Path:
    """Join samples NPZs of consecutive seed ranges of one cell (a sample split into shards) into ``output``:
    the arrays :func:`sample` writes for the whole range, bit for bit.  The parts must agree on the schedule,
    the solver, the method and the NFE; the provenance is the first part's."""
    loaded = []
    for p in parts:
        with np.load(p) as z:
            loaded.append({key: z[key] for key in z.files})
    first = loaded[0]
    for key in ("sigmas", "nfe", "solver", "method"):
        if any(not np.array_equal(z[key], first[key]) for z in loaded[1:]):
            raise AdaschedError(f"sample shards of {output} disagree on {key}")
    _write_samples(output, loaded, sigmas=first["sigmas"], solver=str(first["solver"]), method=str(first["method"]),
                   provenance=str(first["provenance"]))
    return Path(output)


def _write_samples(output: Path, parts: list[dict], *, sigmas, solver: str, method: str, provenance: str) -> None:
    """The one writer of samples NPZs: the per-sample arrays of ``parts`` joined in order, the counted NFE
    (which every part must agree on), and the schedule's record."""
    nfes = {int(p["nfe"]) for p in parts}
    if len(nfes) != 1:
        raise AdaschedError(f"parts of {output} counted different NFE: {sorted(nfes)}")
    arrays = {key: np.concatenate([p[key] for p in parts]) for key in _PER_SAMPLE if key in parts[0]}
    save_npz(output, **arrays, sigmas=np.asarray(sigmas, dtype=np.float64), nfe=np.int64(nfes.pop()), solver=solver,
             method=method, provenance=provenance)


class _SeedBatches(abc.Sequence):
    """The seeds ``start .. start + num - 1`` in batches of ``batch``, each a ``range``, made when asked for (a
    huge ``num`` is refused by its memory check, not by building its list of seeds first)."""

    def __init__(self, start: int, num: int, batch: int):
        self.start, self.stop, self.batch = start, start + num, batch

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch)

    def __getitem__(self, k):
        if not 0 <= k < len(self):
            raise IndexError(k)
        a = self.start + k * self.batch
        return range(a, min(a + self.batch, self.stop))


def _batch_file(work: Path, k: int) -> Path:
    return work / f"batch-{k:06d}.npz"


def _complete_batches(work: Path, chunks: Sequence[range]) -> int:
    """How many leading batch files in ``work`` are complete and hold the expected seeds (later ones are removed)."""
    for k, chunk in enumerate(chunks):
        try:
            with np.load(_batch_file(work, k)) as d:
                ok = d["seeds"].tolist() == list(chunk) and d["samples"].shape[0] == len(chunk) and "nfe" in d.files
        except (OSError, KeyError, ValueError):
            ok = False
        if not ok:
            for stale in work.glob("batch-*.npz"):
                if int(stale.stem.split("-")[1]) >= k:
                    stale.unlink()
            return k
    return len(chunks)


# ------------------------------------------------------------------------------------------------- evaluate


def evaluate(*, samples: PathLike | Sequence[PathLike], output: PathLike, model: str | None = None,
             reference: PathLike | None = None, fid: str | None = None, fid_ref: str | None = None,
             digits_fd: bool = False, classifier: PathLike | None = None, num_images: int | None = None,
             seed_ranges: int | None = None, resources: PathLike = "resources/fid", lockfile: PathLike | None = None,
             offline: bool = False, device: str = "auto", batch: int = 100,
             progress: Progress | None = None) -> Path:
    """A metrics JSON for samples NPZs: the exact ODE error and sliced W2 to the target (an analytic
    ``model``), the error against ``reference`` samples from the same seeds, FID under the clean-fid protocol
    ``fid`` against ``fid_ref`` (resources in ``resources``, never downloaded with ``offline``) and the offline
    ``digits_fd`` (with ``classifier``, else one trained with seed 0).  Several ``samples`` files are the seed
    ranges of an image metric (or ``seed_ranges`` splits one file into ranges of ``num_images``)."""
    output = Path(output)
    check_output(output)
    samples = [samples] if isinstance(samples, (str, os.PathLike)) else list(samples)
    image = bool(fid or digits_fd)
    if len(samples) > 1 and (model or reference or not image):
        raise AdaschedError("--model and --reference measure one --samples file; several files are the seed ranges "
                            "of --fid or --digits-fd")
    out: dict = {"metrics": {}}
    images: dict = {}
    if model or reference or not image:
        out = evaluate_samples(samples[0], load_model(model) if model else None, reference)
    if image:
        images, runs = image_metrics(samples, fid=fid, fid_ref=fid_ref, digits_fd=digits_fd, classifier=classifier,
                                     num_images=num_images, seed_ranges=seed_ranges, resources=resources,
                                     lockfile=lockfile, download=not offline, device=resolve_device(device),
                                     batch_size=batch, progress=progress)
        out = {**runs, **out, "metrics": {**out["metrics"], **{k: m.value for k, m in images.items()}}}
    one = len(samples) == 1
    hashes = [sha256_file(s) for s in samples]
    names = [os.fspath(s) for s in samples]
    inputs = {"samples": names[0] if one else names, "samples_sha256": hashes[0] if one else hashes, "model": model}
    if reference:
        inputs.update(reference=os.fspath(reference), reference_sha256=sha256_file(reference))
    MetricsRecord(metrics=out.pop("metrics"), num_samples=out.pop("num_samples"), seeds=out.pop("seeds"),
                  package_version=__version__, image_metrics=images,
                  extra=dict(out, inputs=inputs, provenance=provenance(command="evaluate"))).write(output)
    return output


# ---------------------------------------------------------------------------------------------------- train


def train(*, output: PathLike, config: TrainConfig | None = None, checkpoint: PathLike | None = None,
          checkpoint_every: int | None = None, schedule_out: PathLike | None = None, grid: PathLike | None = None,
          device: str = "auto", threads: int | None = None, progress: Progress | None = None) -> Path:
    """Train the network ``config`` describes (default :class:`~adasched.train.TrainConfig`) and write it to
    ``output`` (safetensors).  ``checkpoint`` is resumed from if it exists and rewritten every
    ``checkpoint_every`` steps; ``schedule_out`` also writes the schedule learned online (needs
    ``config.online_schedule``), ``grid`` a PNG of 64 samples (Heun, 35 NFE); ``threads`` sets torch's CPU
    threads."""
    config = config if config is not None else TrainConfig()
    outputs = [Path(p) for p in (output, checkpoint, schedule_out, grid) if p]
    for p in outputs:
        check_output(p)
    if len({p.absolute() for p in outputs}) < len(outputs):
        raise AdaschedError("-o, --checkpoint, --schedule-out and --grid must be different files")
    if schedule_out and not config.online_schedule:
        raise AdaschedError("--schedule-out needs --online-schedule (there is no learned schedule otherwise)")
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(device)
    net = train_network(config, output, device=device, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                        progress=progress)
    if schedule_out:
        learned_schedule(output).save(schedule_out)
    if grid:
        save_grid(sample_model(net, 64, device=device), grid)
    return Path(output)


# ---------------------------------------------------------------------------------------------- the options

#: The stages by name, as the CLI's subcommands and the workflow's rules call them.
STAGES: dict[str, Callable[..., Path]] = {"probe": probe, "fit-reference": fit_reference, "schedule": schedule,
                                          "sample": sample, "evaluate": evaluate, "train": train}


def bind(stage: str, options: dict, *, partial: bool = False) -> dict:
    """``options`` of ``stage`` checked against its signature, converted and completed with its defaults.

    An unknown option, a missing required one (unless ``partial``) or a value of the wrong type is one
    :class:`AdaschedError` naming the stage and the option.  Text that spells a number where a number is
    expected is converted (Snakemake's wildcards arrive as text), and a mapping where a dataclass is expected
    (``train``'s ``config``) becomes one; so options can travel as JSON.
    """
    if stage not in STAGES:
        raise AdaschedError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
    fn = STAGES[stage]
    sig = inspect.signature(fn)
    unknown = sorted(set(options) - set(sig.parameters))
    if unknown:
        raise AdaschedError(f"{stage}: unknown option {', '.join(unknown)}; valid: {', '.join(sig.parameters)}")
    hints = typing.get_type_hints(fn)
    out = {}
    for name, value in options.items():
        ok, converted = _convert(value, hints[name])
        if not ok:
            raise AdaschedError(f"{stage}: option {name} expects {_describe(hints[name])}, got {value!r}")
        out[name] = converted
    if partial:
        return out
    missing = [n for n, p in sig.parameters.items() if p.default is inspect.Parameter.empty and n not in out]
    if missing:
        raise AdaschedError(f"{stage}: missing option {', '.join(missing)}")
    bound = sig.bind(**out)
    bound.apply_defaults()
    return dict(bound.arguments)


def _convert(value: Any, hint: Any) -> tuple[bool, Any]:
    """``(True, value as hint)`` if ``value`` is (or unambiguously spells) a ``hint``, else ``(False, None)``."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        if value is None:
            return type(None) in typing.get_args(hint), None
        for arg in typing.get_args(hint):
            ok, converted = _convert(value, arg)
            if ok:
                return True, converted
        return False, None
    if hint is Any:
        return True, value
    if hint is type(None):
        return value is None, None
    if hint is bool:
        return isinstance(value, bool), value
    if hint in (int, float):
        if isinstance(value, bool):
            return False, None
        if isinstance(value, str):
            try:
                value = int(value) if hint is int else float(value)
            except ValueError:
                return False, None
        if not isinstance(value, (int, np.integer) if hint is int else (int, float, np.number)):
            return False, None
        return True, hint(value)
    if hint is str:
        return isinstance(value, str), value
    if hint is os.PathLike:
        return isinstance(value, os.PathLike), value
    if hint is dict or origin is dict:
        return isinstance(value, dict), dict(value) if isinstance(value, dict) else None
    if origin in (abc.Sequence, list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            return False, None
        (item,) = typing.get_args(hint) or (Any,)
        items = [_convert(v, item) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return True, value
        if isinstance(value, dict):
            names = {f.name for f in dataclasses.fields(hint)}
            if set(value) <= names:
                return True, hint(**value)
        return False, None
    if origin is not None and callable(value):  # Callable[...]: the progress callback
        return True, value
    return isinstance(value, hint), value


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "nothing (null)"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# -------------------------------------------------------------------------------------------- partial work


def _inputs(arguments: dict) -> dict:
    """A stage's arguments as they decide its output: ``progress`` and ``resume`` do not."""
    return {k: v for k, v in arguments.items() if k not in ("progress", "resume")}


@contextlib.contextmanager
def _partial_work(output: Path, stage: str, inputs: dict) -> Iterator[Path]:
    """The stage's folder of partial work beside ``output``, emptied first if it holds work for other inputs.

    A folder this call made is removed again when the work fails before any of it is on disk (a bad model
    SPEC must leave nothing behind); work that is on disk stays for the next call to resume from.
    """
    work = partial_dir(output)
    digest = inputs_digest({"stage": stage, "options": inputs}, exclude=[output])
    stamp = work / "inputs.json"
    if work.exists():
        try:
            same = json.loads(stamp.read_text()).get("inputs_digest") == digest
        except (OSError, ValueError, AttributeError):
            same = False
        if not same:
            log.info("%s: discarding work in %s made from other inputs", stage, work)
            shutil.rmtree(work)
    made = [p for p in (work, *work.parents) if not p.exists()]  # the folders this call makes, deepest first
    if made:
        work.mkdir(parents=True)
        write_json(stamp, {"inputs_digest": digest, "stage": stage})
    try:
        yield work
    except BaseException:
        if made and [p.name for p in work.iterdir()] == [stamp.name]:
            shutil.rmtree(work, ignore_errors=True)
            for folder in made[1:]:  # and the output's folders it made, while empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
        raise


def _move_into_place(src: Path, dst: Path) -> None:
    """fsync ``src`` and rename it onto ``dst`` (same filesystem: the work folder sits beside ``dst``)."""
    fd = os.open(src, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
