"""The ``adasched`` command line: one subcommand per stage of :mod:`adasched.stages`, one flag per keyword.

The parser takes its defaults from the stages' signatures, and :func:`main` calls the stage; no logic lives
here.  Every error a user can cause is printed as one line on stderr with a non-zero exit, no traceback and
no output file left behind.  Long stages show their progress on stderr: a bar on a terminal, lines otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import sys

from adasched import progress, stages
from adasched.errors import exit_status
from adasched.references import REFERENCE_TOL
from adasched.samplers import SOLVERS
from adasched.stages import METHODS, PROBED_METHODS  # noqa: F401  (PROBED_METHODS: re-exported)
from adasched.train import TrainConfig

__all__ = ["main", "build_parser", "PROBED_METHODS"]

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
    "fit-reference": """examples:
  adasched fit-reference --model adasched:digits.safetensors -o reference.h5
  adasched schedule --method solver-aware --probes probes.h5 --model adasched:digits.safetensors \\
      --reference reference.h5 --solver heun --nfe 11 -o sa-heun-11.json
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


def _defaults(stage: str) -> dict:
    """The keyword defaults of a stage: the one place each default is defined."""
    return {n: p.default for n, p in inspect.signature(stages.STAGES[stage]).parameters.items()
            if p.default is not inspect.Parameter.empty}


#: Solver option flags (``--s-churn``) and the solvers' keyword names (``S_churn``).
_SOLVER_FLAGS = {"s_churn": "S_churn", "s_min": "S_min", "s_max": "S_max", "s_noise": "S_noise",
                 "langevin_steps": "langevin_steps", "langevin_eta": "langevin_eta", "max_order": "max_order"}


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


def _sub(sub, common, name: str, help: str):
    return sub.add_parser(name, help=help, parents=[common], epilog=EXAMPLES[name],
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log progress and details")
    parser = _Parser(prog="adasched", description="Score-optimal sampling schedules for diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = _defaults("schedule")
    p = _sub(sub, common, "schedule", "compute a sampling schedule for a solver and NFE")
    p.add_argument("--method", required=True, choices=list(METHODS),
                   help="schedule method (score-optimal, score-optimal-po, solver-aware need --probes; online: the "
                        "schedule learned while training the --model adasched:PATH, read out at this NFE)")
    p.add_argument("--solver", required=True, choices=list(SOLVERS), help="solver the schedule is for")
    n = p.add_mutually_exclusive_group(required=True)
    n.add_argument("--nfe", type=_positive_int, help="network evaluations per sample (exact for the solver)")
    n.add_argument("--steps", type=_positive_int, help="number of steps (intervals, the final one to 0 included)")
    p.add_argument("--rho", type=_float, default=d["rho"], help=f"edm: polynomial exponent (default {d['rho']:g})")
    p.add_argument("--sigma-min", type=_float, help="lowest positive sigma (default 0.002, or the probed range)")
    p.add_argument("--sigma-max", type=_float, help="highest sigma (default 80, or the probed range)")
    p.add_argument("--probes", help="probe file (.h5 from 'adasched probe') for the probed methods")
    p.add_argument("--probes-po", help="solver-aware: predictor-cost probe file, its schedule is one more start")
    p.add_argument("--model", help="solver-aware: model SPEC whose own solves the schedule is fitted to; "
                                   "online: the adasched:PATH model trained with --online-schedule")
    p.add_argument("--fit-seeds", type=_positive_int, default=d["fit_seeds"],
                   help=f"solver-aware: trajectories to fit on (seeds from {stages.FIT_SEED_START} on; default "
                        f"{d['fit_seeds']})")
    p.add_argument("--fit-iterations", type=_positive_int, default=d["fit_iterations"],
                   help="solver-aware: Adam steps per start, and at most as many L-BFGS iterations per run of "
                        f"the polish of the best (default {d['fit_iterations']})")
    p.add_argument("--reference", help="solver-aware: the model's solves of the fit latents (.h5 from 'adasched "
                                       "fit-reference'; default: solved here)")
    p.add_argument("--warm-start", help="solver-aware: a solver-aware schedule of this model at another NFE, one more "
                                        "start (the closed-form starts are then skipped)")
    p.add_argument("--fit-budget", type=_positive_int,
                   help="solver-aware: network evaluations (forward plus backward, per latent) the fit may spend "
                        f"(default {stages.FIT_BUDGET} for a network, {stages.ANALYTIC_FIT_BUDGET} for an analytic "
                        "model)")
    p.add_argument("--fit-batch", type=_positive_int,
                   help="solver-aware: fit latents per network call, gradients accumulated (default all)")
    _add_device(p, d)
    _add_trust(p)
    p.add_argument("-o", "--output", required=True, help="schedule JSON to write")
    _add_solver_options(p, nfe_only=True)

    d = _defaults("fit-reference")
    p = _sub(sub, common, "fit-reference", "solve the fit latents of solver-aware schedules accurately, once per "
                                           "model, into HDF5")
    p.add_argument("--model", required=True, help="model SPEC")
    p.add_argument("--fit-seeds", type=_positive_int, default=d["fit_seeds"],
                   help=f"latents to solve (seeds from {stages.FIT_SEED_START} on; default {d['fit_seeds']}, as "
                        "'adasched schedule')")
    p.add_argument("--sigma-max", type=_float, default=d["sigma_max"],
                   help=f"where the solves start, the schedules' highest sigma (default {d['sigma_max']:g})")
    p.add_argument("--sigma-min", type=_float, help="where they stop before the jump to 0 (default the model's own)")
    tol = {str(k).removeprefix("torch."): v for k, v in REFERENCE_TOL.items()}
    p.add_argument("--tol", type=_float, help="Richardson error estimate to reach, a share of the solutions' RMS "
                                              f"(default {tol['float32']:g} for a network, solved in float32; "
                                              f"{tol['float64']:g} for an analytic model, in float64)")
    p.add_argument("--max-steps", type=_positive_int, default=d["max_steps"],
                   help=f"most Heun steps of the finest solve (default {d['max_steps']})")
    p.add_argument("--batch", type=_positive_int, default=d["batch"],
                   help=f"latents per network call (default {d['batch']})")
    _add_device(p, d)
    _add_trust(p)
    p.add_argument("-o", "--output", required=True,
                   help="reference file to write (finished levels wait in .NAME.partial/; the same command resumes)")

    d = _defaults("probe")
    p = _sub(sub, common, "probe", "estimate the incremental cost on a grid of noise levels into HDF5")
    p.add_argument("--model", required=True, help="model SPEC")
    p.add_argument("--data", help="data SPEC: target (default for analytic models), npz:PATH[:KEY], digits, "
                                  "images:PATH, cifar10[:train|test], model[:POOL] (default for networks: a pool of "
                                  "POOL, default 1024, of the model's own 255-NFE samples)")
    p.add_argument("--grid", required=True, type=_positive_int, help="number of probe intervals K (K+1 sigmas)")
    p.add_argument("--spacing", default=d["spacing"], choices=["log", "edm"],
                   help=f"probe grid spacing (default {d['spacing']})")
    count = p.add_mutually_exclusive_group(required=True)
    count.add_argument("--samples", type=_positive_int, help="samples to add per interval")
    count.add_argument("--total-samples", type=_positive_int,
                       help="bring the file up to this many samples per interval (rerun an interrupted probe with "
                            "the same number to finish it)")
    p.add_argument("--seed", type=int, help="first seed of a new file (default 0; an existing file continues after "
                                            "its last seed)")
    p.add_argument("--sigma-min", type=_float, default=d["sigma_min"],
                   help=f"lowest probe sigma (default {d['sigma_min']})")
    p.add_argument("--sigma-max", type=_float, default=d["sigma_max"],
                   help=f"highest probe sigma (default {d['sigma_max']:g})")
    p.add_argument("--cost", default=d["cost"], choices=["corrector", "predictor"],
                   help="corrector-optimised (paper's workhorse) or predictor-optimised cost")
    p.add_argument("--weighting", default=d["weighting"], choices=["lower", "upper"],
                   help="v = sigma of the lower-noise end (paper) or of the upper end")
    p.add_argument("--hutchinson", type=_positive_int, default=d["hutchinson"],
                   help="predictor cost: trace probes per sample")
    p.add_argument("--batch", type=_positive_int, default=d["batch"],
                   help=f"samples per denoiser call (default {d['batch']})")
    _add_device(p, d)
    _add_trust(p)
    p.add_argument("-o", "--output", required=True, help="probe file to create or add samples to")

    d = _defaults("sample")
    p = _sub(sub, common, "sample", "draw samples along a schedule with a solver (a killed run resumes)")
    p.add_argument("--model", required=True,
                   help="model SPEC: gmm:PATH.json, powerlaw:PATH.json, edm:NAME|URL|PATH[#sha256=HEX], "
                        "adasched:PATH (from 'adasched train')")
    p.add_argument("--schedule", required=True, help="schedule JSON (from 'adasched schedule')")
    p.add_argument("--solver", required=True, choices=list(SOLVERS), help="solver")
    p.add_argument("--num", required=True, type=_positive_int, help="number of samples")
    p.add_argument("--seed-start", type=int, default=d["seed_start"],
                   help=f"sample i uses seed SEED_START + i (default {d['seed_start']})")
    p.add_argument("--batch", type=_positive_int, default=d["batch"],
                   help=f"samples per denoiser call (default {d['batch']})")
    _add_device(p, d)
    p.add_argument("--dtype", default=d["dtype"], choices=list(stages.DTYPES),
                   help=f"sampler state dtype (default {d['dtype']})")
    p.add_argument("--class-label", type=int, help="a class-conditional model's class for every sample (default: a "
                                                   "random class per seed)")
    _add_trust(p)
    p.add_argument("-o", "--output", required=True,
                   help="samples NPZ to write (finished batches wait in .NAME.partial/ until it is complete; "
                        "the same command again resumes there)")
    _add_solver_options(p)

    d = _defaults("evaluate")
    p = _sub(sub, common, "evaluate", "measure samples: exact errors (analytic models), error against a reference")
    p.add_argument("--samples", required=True, nargs="+",
                   help="samples NPZ (from 'adasched sample'); for --fid/--digits-fd, one file per seed range")
    p.add_argument("--model", help="analytic model SPEC: exact ODE error and distance to the target")
    p.add_argument("--reference", help="reference samples NPZ from the same seeds (e.g. a high-NFE run)")
    p.add_argument("-o", "--output", required=True, help="metrics JSON to write")
    g = p.add_argument_group("image metrics (adasched.fid: FID through clean-fid; offline digits_fd)")
    g.add_argument("--fid", choices=["legacy_tensorflow", "clean"],
                   help="FID with this clean-fid protocol (legacy_tensorflow: comparable with published numbers)")
    g.add_argument("--fid-ref", help="FID reference statistics: edm:NAME (EDM fid-refs, legacy_tensorflow only), "
                                     "cleanfid:DATASET/RES/SPLIT, or an .npz with mu and sigma "
                                     "(default: the edm: model's own, from the samples' provenance)")
    g.add_argument("--digits-fd", action="store_true",
                   help="Fréchet distance in the digits classifier's feature space (offline; named digits_fd, "
                        "not FID)")
    g.add_argument("--classifier", help="digits classifier .safetensors (default: train one, seed 0)")
    g.add_argument("--num-images", type=_positive_int,
                   help="images per seed range (default 50000 for --fid, fewer is an error; all for --digits-fd)")
    g.add_argument("--seed-ranges", type=_positive_int,
                   help="split one samples file into K consecutive, disjoint seed ranges of --num-images each")
    g.add_argument("--resources", default=d["resources"],
                   help=f"folder of the Inception weights and reference statistics (default {d['resources']})")
    g.add_argument("--lockfile", help="lock file of resource hashes (default RESOURCES/adasched-lock.json)")
    g.add_argument("--offline", action="store_true",
                   help="never download: a missing resource is an error naming its path and URL")
    _add_device(g, d)
    g.add_argument("--batch", type=_positive_int, default=d["batch"],
                   help=f"images per feature batch (default {d['batch']})")

    d, c = _defaults("train"), TrainConfig()
    p = _sub(sub, common, "train", "train a small network (EDM loss) on bundled data, optionally learning its "
                                   "schedule online (paper's Algorithm 2)")
    p.add_argument("--data", default=c.data, choices=["digits"],
                   help=f"training data (default {c.data}: scikit-learn's bundled 8x8 digits, no download)")
    p.add_argument("--preset", default=c.preset, help=f"network preset of adasched.networks (default {c.preset})")
    p.add_argument("--steps", type=_positive_int, default=c.steps, help=f"optimiser steps (default {c.steps})")
    p.add_argument("--batch", type=_positive_int, default=c.batch, help=f"images per step (default {c.batch})")
    p.add_argument("--seed", type=int, default=c.seed,
                   help=f"seed of initialisation, batches and noise (default {c.seed})")
    p.add_argument("--lr", type=_float, default=c.lr, help=f"Adam learning rate (default {c.lr:g})")
    p.add_argument("--lr-warmup", type=int, default=c.lr_warmup, help=f"linear warm-up steps (default {c.lr_warmup})")
    p.add_argument("--online-schedule", action="store_true",
                   help="learn a schedule during training (Algorithm 2) and save it with the model")
    p.add_argument("--online-levels", type=_positive_int, default=c.online_levels,
                   help=f"intervals T of the learned schedule (default {c.online_levels})")
    p.add_argument("--online-gamma", type=_float, default=c.online_gamma,
                   help=f"blend weight gamma of each schedule update (default {c.online_gamma:g})")
    p.add_argument("--online-fraction", type=_float, default=c.online_fraction,
                   help=f"share of each batch trained at the learned schedule's levels (default {c.online_fraction:g})")
    p.add_argument("--online-n-min", type=_positive_int, default=c.online_n_min,
                   help=f"samples every interval needs before a schedule update (default {c.online_n_min})")
    p.add_argument("--online-substeps", type=_positive_int, default=c.online_substeps,
                   help=f"cost estimates per interval, on log-equal sub-intervals (default {c.online_substeps}, the "
                        "paper's; more move the learned schedule to the offline one, see adasched.online)")
    p.add_argument("--schedule-out", help="with --online-schedule: also write the learned schedule as schedule JSON")
    p.add_argument("--checkpoint",
                   help="checkpoint file: resumed from if it exists, rewritten every --checkpoint-every steps")
    p.add_argument("--checkpoint-every", type=_positive_int, help="steps between checkpoints (default --log-every)")
    p.add_argument("--log-every", type=_positive_int, default=c.log_every,
                   help=f"steps between loss reports (-v shows them; default {c.log_every})")
    p.add_argument("--grid", help="also write a PNG grid of 64 samples (Heun, 18 steps = 35 NFE, seeds 0..63)")
    _add_device(p, d)
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    return parser


def _add_device(p, defaults: dict) -> None:
    p.add_argument("--device", default=defaults["device"],
                   help="torch device, or 'auto': CUDA when available (default)")


def _add_trust(p) -> None:
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a model pickle whose sha256 is not pinned (unpickling runs the file's code)")


def stage_options(args: argparse.Namespace) -> dict:
    """The keyword arguments of the stage ``args.command`` from parsed flags: solver flags become
    ``solver_options`` and ``train``'s network and online-learner flags its :class:`TrainConfig`."""
    options = {k: v for k, v in vars(args).items() if k not in ("command", "verbose")}
    flags = {_SOLVER_FLAGS[k]: options.pop(k) for k in list(options) if k in _SOLVER_FLAGS}
    if args.command in ("schedule", "sample"):
        options["solver_options"] = {k: v for k, v in flags.items() if v is not None}
    if args.command == "train":
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        options["config"] = TrainConfig(**{k: options.pop(k) for k in list(options) if k in fields})
    return options


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="adasched: %(message)s")
    shown = progress.for_stream(sys.stderr)
    status = exit_status(args.command,
                         lambda: stages.STAGES[args.command](**stage_options(args), progress=shown))
    if isinstance(shown, progress.Bar):
        shown.close()
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
