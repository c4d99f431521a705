"""The ``adasched`` command line: a thin layer over the library (no logic lives here).

Every error a user can cause is printed as one line on stderr with a non-zero exit, no traceback and no
output file left behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from adasched.errors import AdaschedError
from adasched.io import check_output

log = logging.getLogger("adasched")

EXAMPLES = {
    "train": """examples:
  adasched train --data digits --steps 4000 --batch 128 --seed 0 -o digits.safetensors
  adasched train --data digits --steps 4000 --online-schedule --schedule-out learned.json -o digits-online.safetensors
  adasched train --data digits --steps 4000 --checkpoint ck.safetensors -o digits.safetensors   # resumes ck if present
  adasched train --data digits --steps 200 --grid samples.png -v -o quick.safetensors
  adasched sample --model adasched:digits.safetensors --schedule edm-heun-nfe35.json --solver heun --num 64 -o x.npz
""",
    "schedule": """examples:
  adasched schedule --method edm --rho 7 --solver heun --nfe 35 -o edm-heun-nfe35.json
  adasched schedule --method loglinear --solver dpmpp-2m --steps 10 --sigma-min 0.002 --sigma-max 80 -o ll.json
  adasched schedule --method score-optimal --probes probes.h5 --solver heun --nfe 15 -o co.json
  adasched schedule --method solver-aware --probes probes.h5 --model gmm:mixture.json --solver ipndm --nfe 8 -o sa.json
""",
    "probe": """examples:
  adasched probe --model gmm:mixture.json --grid 200 --samples 256 -o probes.h5
  adasched probe --model gmm:mixture.json --grid 200 --samples 256 -o probes.h5     # adds 256 more
  adasched probe --model gmm:mixture.json --grid 200 --total-samples 1024 -o probes.h5   # tops up to 1024
  adasched probe --model gmm:mixture.json --cost predictor --grid 100 --samples 128 -o probes-po.h5
""",
    "evaluate": """examples:
  adasched evaluate --samples samples.npz --model gmm:mixture.json -o metrics.json
  adasched evaluate --samples nfe9.npz --reference nfe511.npz -o metrics.json
  # EDM's protocol: three files of 50k samples (seeds 0-49999, 50000-99999, 100000-149999), minimum reported
  adasched evaluate --samples s0.npz s1.npz s2.npz --fid legacy_tensorflow --fid-ref edm:cifar10-32x32 -o m.json
  adasched evaluate --samples s.npz --fid clean --fid-ref cleanfid:cifar10/32/train --num-images 10000 -o m.json
  adasched evaluate --samples digits.npz --digits-fd --seed-ranges 3 --num-images 500 -o m.json   # offline
""",
    "sample": """examples:
  adasched sample --model gmm:mixture.json --schedule edm-heun-nfe35.json --solver heun --num 1000 -o samples.npz
  adasched sample --model gmm:mixture.json --schedule s.json --solver edm-stochastic --s-churn 40 --num 64 -o out.npz
""",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``adasched CMD: error: ...``) and exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def solver_options(args) -> dict:
    """Solver keyword options given on the command line (only those the user set)."""
    names = {"s_churn": "S_churn", "s_min": "S_min", "s_max": "S_max", "s_noise": "S_noise",
             "langevin_steps": "langevin_steps", "langevin_eta": "langevin_eta", "max_order": "max_order"}
    return {key: getattr(args, attr) for attr, key in names.items() if getattr(args, attr, None) is not None}


def _add_solver_options(p, nfe_only: bool = False):
    g = p.add_argument_group("solver options")
    g.add_argument("--langevin-steps", type=int, help="pc-langevin: corrector steps per level (default 1)")
    if nfe_only:
        return
    g.add_argument("--langevin-eta", type=_float, help="pc-langevin: Langevin step in units of sigma^2 (default 0.1)")
    g.add_argument("--s-churn", type=_float, help="edm-stochastic: S_churn (default 0)")
    g.add_argument("--s-min", type=_float, help="edm-stochastic: S_min (default 0)")
    g.add_argument("--s-max", type=_float, help="edm-stochastic: S_max (default inf)")
    g.add_argument("--s-noise", type=_float, help="edm-stochastic: S_noise (default 1)")
    g.add_argument("--max-order", type=int, help="ipndm: highest multistep order, 1 to 4 (default 4)")


def build_parser() -> argparse.ArgumentParser:
    from adasched.samplers import SOLVERS
    from adasched.schedules import CLOSED_FORM, SIGMA_MAX, SIGMA_MIN

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log progress and details")
    parser = _Parser(prog="adasched", description="Score-optimal sampling schedules for diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("schedule", help="compute a sampling schedule for a solver and NFE",
                       parents=[common], epilog=EXAMPLES["schedule"], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=list(CLOSED_FORM) + list(PROBED_METHODS) + ["online"],
                   help="schedule method (score-optimal, score-optimal-po, solver-aware need --probes; online: the "
                        "schedule learned while training the --model adasched:PATH, read out at this NFE)")
    p.add_argument("--solver", required=True, choices=list(SOLVERS), help="solver the schedule is for")
    n = p.add_mutually_exclusive_group(required=True)
    n.add_argument("--nfe", type=_positive_int, help="network evaluations per sample (exact for the solver)")
    n.add_argument("--steps", type=_positive_int, help="number of steps (intervals, the final one to 0 included)")
    p.add_argument("--rho", type=_float, default=7.0, help="edm: polynomial exponent (default 7)")
    p.add_argument("--sigma-min", type=_float, default=SIGMA_MIN, help=f"lowest positive sigma (default {SIGMA_MIN})")
    p.add_argument("--sigma-max", type=_float, default=SIGMA_MAX, help=f"highest sigma (default {SIGMA_MAX:g})")
    p.add_argument("--probes", help="probe file (.h5 from 'adasched probe') for the probed methods")
    p.add_argument("--probes-po", help="solver-aware: predictor-cost probe file, its schedule is one more start")
    p.add_argument("--model", help="solver-aware: model SPEC whose own solves the schedule is fitted to; "
                                   "online: the adasched:PATH model trained with --online-schedule")
    p.add_argument("--fit-seeds", type=_positive_int, default=64,
                   help="solver-aware: trajectories to fit on (seeds from 1000000 on; default 64)")
    p.add_argument("--fit-iterations", type=_positive_int, default=200,
                   help="solver-aware: Adam steps per start, and at most as many L-BFGS iterations per run of "
                        "the polish of the best (default 200)")
    p.add_argument("-o", "--output", required=True, help="schedule JSON to write")
    _add_solver_options(p, nfe_only=True)

    p = sub.add_parser("probe", help="estimate the incremental cost on a grid of noise levels into HDF5",
                       parents=[common], epilog=EXAMPLES["probe"], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model SPEC")
    p.add_argument("--data", default=None, help="data SPEC: target (default for analytic models), npz:PATH[:KEY], "
                                                "digits, images:PATH, cifar10[:train|test], model[:POOL] (default "
                                                "for networks: a pool of POOL, default 1024, of the model's own "
                                                "255-NFE samples)")
    p.add_argument("--grid", required=True, type=_positive_int, help="number of probe intervals K (K+1 sigmas)")
    p.add_argument("--spacing", default="log", choices=["log", "edm"], help="probe grid spacing (default log)")
    count = p.add_mutually_exclusive_group(required=True)
    count.add_argument("--samples", type=_positive_int, help="samples to add per interval")
    count.add_argument("--total-samples", type=_positive_int,
                       help="bring the file up to this many samples per interval (rerun an interrupted probe with "
                            "the same number to finish it)")
    p.add_argument("--seed", type=int, default=None, help="first seed of a new file (default 0; an existing file "
                                                          "continues after its last seed)")
    p.add_argument("--sigma-min", type=_float, default=SIGMA_MIN, help=f"lowest probe sigma (default {SIGMA_MIN})")
    p.add_argument("--sigma-max", type=_float, default=SIGMA_MAX, help=f"highest probe sigma (default {SIGMA_MAX:g})")
    p.add_argument("--cost", default="corrector", choices=["corrector", "predictor"],
                   help="corrector-optimised (paper's workhorse) or predictor-optimised cost")
    p.add_argument("--weighting", default="lower", choices=["lower", "upper"],
                   help="v = sigma of the lower-noise end (paper) or of the upper end")
    p.add_argument("--hutchinson", type=_positive_int, default=1, help="predictor cost: trace probes per sample")
    p.add_argument("--batch", type=_positive_int, default=256, help="samples per denoiser call (default 256)")
    p.add_argument("--device", default="auto", help="torch device, or 'auto': CUDA when available (default)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a model pickle whose sha256 is not pinned (unpickling runs the file's code)")
    p.add_argument("-o", "--output", required=True, help="probe file to create or add samples to")

    p = sub.add_parser("sample", help="draw samples along a schedule with a solver",
                       parents=[common], epilog=EXAMPLES["sample"], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="model SPEC: gmm:PATH.json, powerlaw:PATH.json, edm:NAME|URL|PATH[#sha256=HEX], "
                        "adasched:PATH (from 'adasched train')")
    p.add_argument("--schedule", required=True, help="schedule JSON (from 'adasched schedule')")
    p.add_argument("--solver", required=True, choices=list(SOLVERS), help="solver")
    p.add_argument("--num", required=True, type=_positive_int, help="number of samples")
    p.add_argument("--seed-start", type=int, default=0, help="sample i uses seed SEED_START + i (default 0)")
    p.add_argument("--batch", type=_positive_int, default=64, help="samples per denoiser call (default 64)")
    p.add_argument("--device", default="auto", help="torch device, or 'auto': CUDA when available (default)")
    p.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="sampler state dtype")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a model pickle whose sha256 is not pinned (unpickling runs the file's code)")
    p.add_argument("-o", "--output", required=True, help="samples NPZ to write")
    _add_solver_options(p)

    p = sub.add_parser("evaluate", help="measure samples: exact errors (analytic models), error against a reference",
                       parents=[common], epilog=EXAMPLES["evaluate"], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", required=True, nargs="+",
                   help="samples NPZ (from 'adasched sample'); for --fid/--digits-fd, one file per seed range")
    p.add_argument("--model", help="analytic model SPEC: exact ODE error and distance to the target")
    p.add_argument("--reference", help="reference samples NPZ from the same seeds (e.g. a high-NFE run)")
    p.add_argument("-o", "--output", required=True, help="metrics JSON to write")
    _add_image_metric_options(p)
    _add_train_parser(sub, common)
    return parser


def _add_train_parser(sub, common) -> None:
    from adasched.train import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a small network (EDM loss) on bundled data, optionally learning its "
                                     "schedule online (paper's Algorithm 2)",
                       parents=[common], epilog=EXAMPLES["train"], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=d.data, choices=["digits"], help=f"training data (default {d.data}: "
                                                                      "scikit-learn's bundled 8x8 digits, no download)")
    p.add_argument("--preset", default=d.preset, help=f"network preset of adasched.networks (default {d.preset})")
    p.add_argument("--steps", type=_positive_int, default=d.steps, help=f"optimiser steps (default {d.steps})")
    p.add_argument("--batch", type=_positive_int, default=d.batch, help=f"images per step (default {d.batch})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of initialisation, batches and noise (default {d.seed})")
    p.add_argument("--lr", type=_float, default=d.lr, help=f"Adam learning rate (default {d.lr:g})")
    p.add_argument("--lr-warmup", type=int, default=d.lr_warmup, help=f"linear warm-up steps (default {d.lr_warmup})")
    p.add_argument("--online-schedule", action="store_true",
                   help="learn a schedule during training (Algorithm 2) and save it with the model")
    p.add_argument("--online-levels", type=_positive_int, default=d.online_levels,
                   help=f"intervals T of the learned schedule (default {d.online_levels})")
    p.add_argument("--online-gamma", type=_float, default=d.online_gamma,
                   help=f"blend weight gamma of each schedule update (default {d.online_gamma:g})")
    p.add_argument("--online-fraction", type=_float, default=d.online_fraction,
                   help=f"share of each batch trained at the learned schedule's levels (default {d.online_fraction:g})")
    p.add_argument("--online-n-min", type=_positive_int, default=d.online_n_min,
                   help=f"samples every interval needs before a schedule update (default {d.online_n_min})")
    p.add_argument("--online-substeps", type=_positive_int, default=d.online_substeps,
                   help=f"cost estimates per interval, on log-equal sub-intervals (default {d.online_substeps}, the "
                        "paper's; more move the learned schedule to the offline one, see adasched.online)")
    p.add_argument("--schedule-out", help="with --online-schedule: also write the learned schedule as schedule JSON")
    p.add_argument("--checkpoint", help="checkpoint file: resumed from if it exists, rewritten every --checkpoint-every steps")
    p.add_argument("--checkpoint-every", type=_positive_int, help="steps between checkpoints (default --log-every)")
    p.add_argument("--log-every", type=_positive_int, default=d.log_every,
                   help=f"steps between loss reports (-v shows them; default {d.log_every})")
    p.add_argument("--grid", help="also write a PNG grid of 64 samples (Heun, 18 steps = 35 NFE, seeds 0..63)")
    p.add_argument("--device", default="auto", help="torch device, or 'auto': CUDA when available (default)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")


def _add_image_metric_options(p):
    g = p.add_argument_group("image metrics (adasched.fid: FID through clean-fid; offline digits_fd)")
    g.add_argument("--fid", choices=["legacy_tensorflow", "clean"],
                   help="FID with this clean-fid protocol (legacy_tensorflow: comparable with published numbers)")
    g.add_argument("--fid-ref", help="FID reference statistics: edm:NAME (EDM fid-refs, legacy_tensorflow only), "
                                     "cleanfid:DATASET/RES/SPLIT, or an .npz with mu and sigma "
                                     "(default: the edm: model's own, from the samples' provenance)")
    g.add_argument("--digits-fd", action="store_true",
                   help="Fréchet distance in the digits classifier's feature space (offline; named digits_fd, not FID)")
    g.add_argument("--classifier", help="digits classifier .safetensors (default: train one, seed 0)")
    g.add_argument("--num-images", type=_positive_int,
                   help="images per seed range (default 50000 for --fid, fewer is an error; all for --digits-fd)")
    g.add_argument("--seed-ranges", type=_positive_int,
                   help="split one samples file into K consecutive, disjoint seed ranges of --num-images each")
    g.add_argument("--resources", default="resources/fid",
                   help="folder of the Inception weights and reference statistics (default resources/fid)")
    g.add_argument("--lockfile", help="lock file of resource hashes (default RESOURCES/adasched-lock.json)")
    g.add_argument("--offline", action="store_true",
                   help="never download: a missing resource is an error naming its path and URL")
    g.add_argument("--device", default="auto", help="torch device, or 'auto': CUDA when available (default)")
    g.add_argument("--batch", type=_positive_int, default=100, help="images per feature batch (default 100)")


#: Schedule methods computed from a probe file, and the cost variant each needs.
PROBED_METHODS = {"score-optimal": "corrector", "score-optimal-po": "predictor", "solver-aware": "corrector"}


def resolve_device(name: str) -> str:
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    try:
        torch.empty(0, device=device)
    except (RuntimeError, ValueError) as e:
        raise AdaschedError(f"device {name!r} is not usable here: {str(e).splitlines()[0]}") from None
    return device


def _probed_schedule(args, opts):
    from adasched.fitting import solver_aware_schedule
    from adasched.models import load_model
    from adasched.optimize import score_optimal_schedule
    from adasched.probe import read_probes
    from adasched.schedules import Schedule

    if not args.probes:
        raise AdaschedError(f"method {args.method} needs --probes FILE.h5 (made by 'adasched probe')")
    if args.method == "solver-aware" and not args.model:
        raise AdaschedError("method solver-aware needs --model SPEC: it is fitted to the model's own solves")
    want = PROBED_METHODS[args.method]
    have = read_probes(args.probes).cost
    if have != want:
        raise AdaschedError(f"method {args.method} needs a probe file of the {want!r} cost; "
                            f"{args.probes} holds the {have!r} cost (adasched probe --cost {want})")
    given = {"sigma_min": args.sigma_min, "sigma_max": args.sigma_max}
    base = score_optimal_schedule(args.probes, args.solver, nfe=args.nfe, steps=args.steps,
                                  solver_options=opts or None, method=args.method, **given)
    if args.method != "solver-aware":
        return base
    model = load_model(args.model, device="cpu", trust=False)
    seeds = list(range(1_000_000, 1_000_000 + args.fit_seeds))
    extra = []
    if args.probes_po:
        if read_probes(args.probes_po).cost != "predictor":
            raise AdaschedError(f"--probes-po {args.probes_po} does not hold the 'predictor' cost")
        extra.append(score_optimal_schedule(args.probes_po, args.solver, steps=base.steps, **given).sigmas)
    sigmas = solver_aware_schedule(model, model.shape, args.solver, base.sigmas, seeds, candidates=extra,
                                   iterations=args.fit_iterations, **opts)
    params = dict(base.params, model=args.model, fit_seeds=[seeds[0], seeds[-1] + 1],
                  fit_iterations=args.fit_iterations, initial_sigmas=[float(v) for v in base.sigmas])
    params.pop("sigma_std", None)
    return Schedule(sigmas, method=args.method, solver=args.solver, nfe=base.nfe, params=params,
                    provenance=base.provenance)


def cmd_schedule(args) -> None:
    from adasched.io import provenance
    from adasched.samplers import nfe_for_steps, steps_for_nfe
    from adasched.schedules import CLOSED_FORM, SIGMA_MAX, SIGMA_MIN, Schedule

    opts = solver_options(args)
    if args.method in PROBED_METHODS:
        if args.sigma_min == SIGMA_MIN and args.sigma_max == SIGMA_MAX:
            args.sigma_min = args.sigma_max = None  # default to the probed range
        _probed_schedule(args, opts).save(args.output)
        return
    steps = args.steps if args.steps is not None else steps_for_nfe(args.solver, args.nfe, **opts)
    nfe = nfe_for_steps(args.solver, steps, **opts)
    if args.method == "online":
        from adasched.train import learned_schedule

        kind, _, path = (args.model or "").partition(":")
        if kind != "adasched" or not path:
            raise AdaschedError("--method online needs --model adasched:PATH, a model trained with --online-schedule")
        learned_schedule(path, args.solver, steps).save(args.output)  # a missing file: ModelError, one line
        return
    params = {"sigma_min": args.sigma_min, "sigma_max": args.sigma_max}
    if args.method == "edm":
        params["rho"] = args.rho
    sigmas = CLOSED_FORM[args.method](steps, **params)
    if opts:
        params["solver_options"] = opts
    Schedule(sigmas, method=args.method, solver=args.solver, nfe=nfe, params=params,
             provenance=provenance(command="schedule")).save(args.output)


def sample_arrays(out: dict) -> dict:
    """The per-sample arrays of a samples NPZ from :func:`adasched.samplers.generate`'s result: ``samples``,
    ``latents`` and, for a class-conditional model, ``labels``."""
    keys = ("samples", "latents", "labels") if "labels" in out else ("samples", "latents")
    return {k: out[k].numpy() for k in keys}


def cmd_sample(args) -> None:
    import numpy as np
    import torch

    from adasched.io import provenance, save_npz
    from adasched.models import load_model
    from adasched.samplers import generate
    from adasched.schedules import Schedule

    schedule = Schedule.load(args.schedule)
    opts = dict(schedule.params.get("solver_options", {})) if schedule.solver == args.solver else {}
    opts.update(solver_options(args))
    if schedule.solver != args.solver:
        log.warning("schedule %s was made for %s, sampling with %s", args.schedule, schedule.solver, args.solver)
    device = resolve_device(args.device)
    model = load_model(args.model, device=device, trust=args.trust_pickle)
    seeds = list(range(args.seed_start, args.seed_start + args.num))
    with torch.inference_mode():
        out = generate(model, schedule.sigmas, args.solver, seeds, model.shape, batch=args.batch, device=device,
                       dtype=getattr(torch, args.dtype),
                       progress=lambda k: log.info("sampled %d/%d", k, len(seeds)), **opts)
    save_npz(args.output, **sample_arrays(out), seeds=np.asarray(seeds, dtype=np.int64),
             sigmas=schedule.sigmas.numpy(), nfe=np.int64(out["nfe"]), solver=args.solver, method=schedule.method,
             provenance=json.dumps(provenance(command="sample", model=args.model, schedule=schedule.to_json(),
                                              solver_options=opts, device=str(device))))


def probe_inputs(args) -> tuple:
    """``(model, data sampler, probe sigmas, keyword arguments of adasched.probe.probe)`` for ``adasched probe``
    options (also the resuming probe job's, :class:`adasched.dispatch.ProbeJob`).  An analytic model is fed
    float64 and by default probed on its own exact samples; a network float32, on its own samples' pool."""
    import torch

    from adasched.data import load_data_sampler
    from adasched.models import load_model
    from adasched.probe import probe_grid

    device = resolve_device(args.device)
    model = load_model(args.model, device=device, trust=args.trust_pickle)
    analytic = callable(getattr(model, "sample", None))
    dtype = torch.float64 if analytic else torch.float32
    sampler = load_data_sampler(args.data or ("target" if analytic else "model"), model, device=device, dtype=dtype)
    grid = probe_grid(args.grid, args.sigma_min, args.sigma_max, spacing=args.spacing)
    options = dict(seed=args.seed, batch=args.batch, weighting=args.weighting, cost=args.cost,
                   hutchinson=args.hutchinson, dtype=dtype, device=device,
                   meta={"model": args.model, "model_sha256": getattr(model, "sha256", "") or "",
                         "data": sampler.description})
    return model, sampler, grid, options


def cmd_probe(args) -> None:
    from adasched.probe import probe

    model, sampler, grid, options = probe_inputs(args)
    probe(model, sampler, grid, args.samples, args.output, total_samples=args.total_samples,
          callback=lambda done, todo: log.info("probed %d/%d samples per interval", done, todo), **options)


def cmd_evaluate(args) -> None:
    from adasched import __version__
    from adasched.io import provenance, sha256_file
    from adasched.metrics import MetricsRecord, evaluate_samples
    from adasched.models import load_model

    image = bool(args.fid or args.digits_fd)
    if len(args.samples) > 1 and (args.model or args.reference or not image):
        raise AdaschedError("--model and --reference measure one --samples file; several files are the seed "
                            "ranges of --fid or --digits-fd")
    out, images = {"metrics": {}}, {}
    if args.model or args.reference or not image:
        model = load_model(args.model) if args.model else None
        out = evaluate_samples(args.samples[0], model, args.reference)
    if image:
        from adasched.fid import image_metrics

        images, runs = image_metrics(args.samples, fid=args.fid, fid_ref=args.fid_ref, digits_fd=args.digits_fd,
                                     classifier=args.classifier, num_images=args.num_images,
                                     seed_ranges=args.seed_ranges, resources=args.resources, lockfile=args.lockfile,
                                     download=not args.offline, device=resolve_device(args.device), batch_size=args.batch)
        out = {**runs, **out, "metrics": {**out["metrics"], **{k: m.value for k, m in images.items()}}}
    one = len(args.samples) == 1
    hashes = [sha256_file(s) for s in args.samples]
    inputs = {"samples": args.samples[0] if one else args.samples, "samples_sha256": hashes[0] if one else hashes,
              "model": args.model}
    if args.reference:
        inputs.update(reference=args.reference, reference_sha256=sha256_file(args.reference))
    MetricsRecord(metrics=out.pop("metrics"), num_samples=out.pop("num_samples"), seeds=out.pop("seeds"),
                  package_version=__version__, image_metrics=images,
                  extra=dict(out, inputs=inputs, provenance=provenance(command="evaluate"))).write(args.output)


def cmd_train(args) -> None:
    import os

    import torch

    from adasched.train import TrainConfig, learned_schedule, sample_model, save_grid, train

    if args.schedule_out and not args.online_schedule:
        raise AdaschedError("--schedule-out needs --online-schedule (there is no learned schedule otherwise)")
    outputs = output_files(args)
    if len({os.path.abspath(f) for f in outputs}) < len(outputs):
        raise AdaschedError("-o, --checkpoint, --schedule-out and --grid must be different files")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(preset=args.preset, data=args.data, steps=args.steps, batch=args.batch, seed=args.seed,
                         lr=args.lr, lr_warmup=args.lr_warmup, online_schedule=args.online_schedule,
                         online_levels=args.online_levels, online_gamma=args.online_gamma,
                         online_fraction=args.online_fraction, online_n_min=args.online_n_min,
                         online_substeps=args.online_substeps, log_every=args.log_every)
    device = resolve_device(args.device)
    model = train(config, args.output, device=device, checkpoint=args.checkpoint,
                  checkpoint_every=args.checkpoint_every)
    if args.schedule_out:
        learned_schedule(args.output).save(args.schedule_out)
    if args.grid:
        save_grid(sample_model(model, 64, device=device), args.grid)


COMMANDS = {"schedule": cmd_schedule, "sample": cmd_sample, "probe": cmd_probe, "evaluate": cmd_evaluate,
            "train": cmd_train}


def cli_argv(command: str, options: dict) -> list[str]:
    """``adasched`` arguments from keyword options: ``seed_start=0`` -> ``--seed-start 0``; ``True`` is a bare
    flag, ``False``/``None`` are left out, lists repeat values after one flag; ``output`` becomes ``-o``."""
    argv = [command]
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "-o" if key == "output" else "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def output_files(args) -> list[str]:
    """The files ``adasched COMMAND`` will write (``train`` also writes a checkpoint, a schedule and a grid)."""
    names = ("output", "checkpoint", "schedule_out", "grid") if args.command == "train" else ("output",)
    return [str(getattr(args, n)) for n in names if getattr(args, n, None)]


def exit_status(command: str, work) -> int:
    """Run ``work()`` for ``adasched COMMAND``: 0; or one line on stderr and 1 for an :class:`AdaschedError`,
    130 for an interruption (no traceback either way)."""
    try:
        work()
    except AdaschedError as e:
        print(f"adasched {command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"adasched {command}: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="adasched: %(message)s")

    def work():
        for f in output_files(args):  # before any work: a long run must not fail at its last line
            check_output(f)
        COMMANDS[args.command](args)

    return exit_status(args.command, work)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
