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

log = logging.getLogger("adasched")

EXAMPLES = {
    "schedule": """examples:
  adasched schedule --method edm --rho 7 --solver heun --nfe 35 -o edm-heun-nfe35.json
  adasched schedule --method loglinear --solver dpmpp-2m --steps 10 --sigma-min 0.002 --sigma-max 80 -o ll.json
  adasched schedule --method score-optimal --probes probes.h5 --solver heun --nfe 15 -o co.json
  adasched schedule --method solver-aware --probes probes.h5 --model gmm:mixture.json --solver ipndm --nfe 8 -o sa.json
""",
    "probe": """examples:
  adasched probe --model gmm:mixture.json --grid 200 --samples 256 -o probes.h5
  adasched probe --model gmm:mixture.json --grid 200 --samples 256 -o probes.h5     # adds 256 more
  adasched probe --model gmm:mixture.json --cost predictor --grid 100 --samples 128 -o probes-po.h5
""",
    "evaluate": """examples:
  adasched evaluate --samples samples.npz --model gmm:mixture.json -o metrics.json
  adasched evaluate --samples nfe9.npz --reference nfe511.npz -o metrics.json
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


def _solver_options(args) -> dict:
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
    p.add_argument("--method", required=True, choices=list(CLOSED_FORM) + list(PROBED_METHODS),
                   help="schedule method (score-optimal, score-optimal-po, solver-aware need --probes)")
    p.add_argument("--solver", required=True, choices=list(SOLVERS), help="solver the schedule is for")
    n = p.add_mutually_exclusive_group(required=True)
    n.add_argument("--nfe", type=_positive_int, help="network evaluations per sample (exact for the solver)")
    n.add_argument("--steps", type=_positive_int, help="number of steps (intervals, the final one to 0 included)")
    p.add_argument("--rho", type=_float, default=7.0, help="edm: polynomial exponent (default 7)")
    p.add_argument("--sigma-min", type=_float, default=SIGMA_MIN, help=f"lowest positive sigma (default {SIGMA_MIN})")
    p.add_argument("--sigma-max", type=_float, default=SIGMA_MAX, help=f"highest sigma (default {SIGMA_MAX:g})")
    p.add_argument("--probes", help="probe file (.h5 from 'adasched probe') for the probed methods")
    p.add_argument("--model", help="solver-aware: model SPEC whose own solves the schedule is fitted to")
    p.add_argument("--fit-seeds", type=_positive_int, default=64,
                   help="solver-aware: trajectories to fit on (seeds from 1000000 on; default 64)")
    p.add_argument("--fit-iterations", type=_positive_int, default=200, help="solver-aware: Adam steps (default 200)")
    p.add_argument("-o", "--output", required=True, help="schedule JSON to write")
    _add_solver_options(p, nfe_only=True)

    p = sub.add_parser("probe", help="estimate the incremental cost on a grid of noise levels into HDF5",
                       parents=[common], epilog=EXAMPLES["probe"], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model SPEC")
    p.add_argument("--data", default=None, help="data SPEC: target (default for analytic models), npz:PATH[:KEY], "
                                                "digits, model")
    p.add_argument("--grid", required=True, type=_positive_int, help="number of probe intervals K (K+1 sigmas)")
    p.add_argument("--spacing", default="log", choices=["log", "edm"], help="probe grid spacing (default log)")
    p.add_argument("--samples", required=True, type=_positive_int, help="samples to add per interval")
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
                   help="model SPEC: gmm:PATH.json, powerlaw:PATH.json, edm:NAME|URL|PATH[#sha256=HEX]")
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
    p.add_argument("--samples", required=True, help="samples NPZ (from 'adasched sample')")
    p.add_argument("--model", help="analytic model SPEC: exact ODE error and distance to the target")
    p.add_argument("--reference", help="reference samples NPZ from the same seeds (e.g. a high-NFE run)")
    p.add_argument("-o", "--output", required=True, help="metrics JSON to write")
    return parser


#: Schedule methods computed from a probe file, and the cost variant each needs.
PROBED_METHODS = {"score-optimal": "corrector", "score-optimal-po": "predictor", "solver-aware": "corrector"}


def _device(name: str) -> str:
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
    sigmas = solver_aware_schedule(model, model.shape, args.solver, base.sigmas, seeds,
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

    opts = _solver_options(args)
    if args.method in PROBED_METHODS:
        if args.sigma_min == SIGMA_MIN and args.sigma_max == SIGMA_MAX:
            args.sigma_min = args.sigma_max = None  # default to the probed range
        _probed_schedule(args, opts).save(args.output)
        return
    steps = args.steps if args.steps is not None else steps_for_nfe(args.solver, args.nfe, **opts)
    nfe = nfe_for_steps(args.solver, steps, **opts)
    params = {"sigma_min": args.sigma_min, "sigma_max": args.sigma_max}
    if args.method == "edm":
        params["rho"] = args.rho
    sigmas = CLOSED_FORM[args.method](steps, **params)
    if opts:
        params["solver_options"] = opts
    Schedule(sigmas, method=args.method, solver=args.solver, nfe=nfe, params=params,
             provenance=provenance(command="schedule")).save(args.output)


def cmd_sample(args) -> None:
    import numpy as np
    import torch

    from adasched.io import provenance, save_npz
    from adasched.models import load_model
    from adasched.samplers import generate
    from adasched.schedules import Schedule

    schedule = Schedule.load(args.schedule)
    opts = dict(schedule.params.get("solver_options", {})) if schedule.solver == args.solver else {}
    opts.update(_solver_options(args))
    if schedule.solver != args.solver:
        log.warning("schedule %s was made for %s, sampling with %s", args.schedule, schedule.solver, args.solver)
    device = _device(args.device)
    model = load_model(args.model, device=device, trust=args.trust_pickle)
    seeds = list(range(args.seed_start, args.seed_start + args.num))
    with torch.inference_mode():
        out = generate(model, schedule.sigmas, args.solver, seeds, model.shape, batch=args.batch, device=device,
                       dtype=getattr(torch, args.dtype),
                       progress=lambda k: log.info("sampled %d/%d", k, len(seeds)), **opts)
    save_npz(args.output, samples=out["samples"].numpy(), latents=out["latents"].numpy(),
             seeds=np.asarray(seeds, dtype=np.int64), sigmas=schedule.sigmas.numpy(), nfe=np.int64(out["nfe"]),
             solver=args.solver, method=schedule.method,
             provenance=json.dumps(provenance(command="sample", model=args.model, schedule=schedule.to_json(),
                                              solver_options=opts, device=str(device))))


def cmd_probe(args) -> None:
    import torch

    from adasched.data import load_data_sampler
    from adasched.models import load_model
    from adasched.probe import probe, probe_grid

    device = _device(args.device)
    model = load_model(args.model, device=device, trust=args.trust_pickle)
    analytic = callable(getattr(model, "sample", None))
    sampler = load_data_sampler(args.data or ("target" if analytic else "model"), model)
    grid = probe_grid(args.grid, args.sigma_min, args.sigma_max, spacing=args.spacing)
    probe(model, sampler, grid, args.samples, args.output, seed=args.seed, batch=args.batch,
          weighting=args.weighting, cost=args.cost, hutchinson=args.hutchinson,
          meta={"model": args.model, "model_sha256": getattr(model, "sha256", "") or "", "data": sampler.description},
          dtype=torch.float64 if analytic else torch.float32, device=device,
          callback=lambda done, todo: log.info("probed %d/%d samples per interval", done, todo))


def cmd_evaluate(args) -> None:
    from adasched.io import provenance, sha256_file, write_json
    from adasched.metrics import evaluate_samples
    from adasched.models import load_model

    model = load_model(args.model) if args.model else None
    out = evaluate_samples(args.samples, model, args.reference)
    inputs = {"samples": args.samples, "samples_sha256": sha256_file(args.samples), "model": args.model}
    if args.reference:
        inputs.update(reference=args.reference, reference_sha256=sha256_file(args.reference))
    write_json(args.output, dict(out, inputs=inputs, provenance=provenance(command="evaluate")))


COMMANDS = {"schedule": cmd_schedule, "sample": cmd_sample, "probe": cmd_probe, "evaluate": cmd_evaluate}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="adasched: %(message)s")
    try:
        COMMANDS[args.command](args)
    except AdaschedError as e:
        print(f"adasched {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"adasched {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
