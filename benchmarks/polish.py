"""Why the solver-aware search ends with L-BFGS: its error with Adam alone and with the L-BFGS polish.

For each ``SOLVER:NFE`` cell of a quality.py target, the solver-aware schedule exactly as quality.py builds
it (same probes, fit latents and reference), once with ``polish=False`` (three Adam refinements, the best
kept) and once as shipped (that best then polished by L-BFGS), scored on quality.py's evaluation latents,
next to the oracle.  Seconds are CPU time on one thread, for the whole search.

    .venv/bin/python benchmarks/polish.py --target powerlaw3072 --cells dpmpp-2m:8 dpmpp-2m:12 ipndm:10
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import SEEDS, make_targets, probe_files, start_points, unfitted_schedules  # noqa: E402

from adasched.fitting import oracle_schedule, solver_aware_schedule  # noqa: E402
from adasched.references import reference_solution  # noqa: E402
from adasched.metrics import rmse  # noqa: E402
from adasched.samplers import SOLVERS, latents, steps_for_nfe  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="powerlaw3072", choices=list(make_targets()))
    ap.add_argument("--cells", nargs="+", default=["dpmpp-2m:8", "dpmpp-2m:12", "ipndm:10"], help="SOLVER:NFE cells")
    args = ap.parse_args()
    torch.set_num_threads(1)
    target = make_targets()[args.target]
    co, po = probe_files(target, args.target, Path(tempfile.mkdtemp()))
    n_eval, n_fit = SEEDS[args.target]
    seeds = list(range(1000, 1000 + n_eval))
    x, exact = start_points(target, seeds)
    fit_seeds = list(range(n_fit))
    fit_ref = reference_solution(target, latents(fit_seeds, target.shape).double() * 80.0, 80.0)
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()} CPU, torch {torch.__version__}, target {args.target}, "
          f"evaluation seeds {seeds[0]}..{seeds[-1]}, fit seeds 0..{n_fit - 1}")
    print("| solver | NFE | Adam only (s) | Adam + L-BFGS (s) | oracle | Adam only / oracle | Adam + L-BFGS / oracle |\n"
          "|---|---|---|---|---|---|---|")
    for cell in args.cells:
        solver, nfe = cell.split(":")
        steps, fn = steps_for_nfe(solver, int(nfe)), SOLVERS[solver].fn
        pool = unfitted_schedules(co, po, steps)
        err, secs = {}, {}
        for polish in (False, True):
            t0 = time.process_time()
            s = solver_aware_schedule(target, target.shape, solver, pool["score-optimal"], fit_seeds,
                                      reference=fit_ref, candidates=[pool["score-optimal-po"]], polish=polish).sigmas
            err[polish], secs[polish] = rmse(fn(target, x, s), exact), time.process_time() - t0
        oracle = oracle_schedule(target, solver, steps, seeds, init_sigmas=s, candidates=list(pool.values()),
                                 exact=exact, starts=1)
        e_o = rmse(fn(target, x, oracle), exact)
        print(f"| {solver} | {nfe} | {err[False]:.3g} ({secs[False]:.0f}) | {err[True]:.3g} ({secs[True]:.0f}) | "
              f"{e_o:.3g} | {err[False] / e_o:.2f} | {err[True] / e_o:.2f} |", flush=True)


if __name__ == "__main__":
    main()
