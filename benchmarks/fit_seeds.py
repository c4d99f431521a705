"""How many latents the solver-aware schedule needs: its error against the number it is fitted on.

At high NFE the per-latent sampling error on the mixtures is heavy-tailed, so a fit on few latents
follows the few that dominate.  For each ``SOLVER:NFE`` cell this fits the solver-aware schedule (as
quality.py does: probed and closed-form starts, refined against the model's own extrapolated solves) on
``--fit-seeds`` latents each, and scores it on ``--eval`` latents none was fitted to (seeds 5000..),
next to the best unfitted schedule and the oracle (fitted to the exact solutions of those evaluation
latents: the limit).  Fit seconds are CPU time on one thread.  The last column is the share of the
oracle's squared error carried by the worst 1% of the evaluation latents: how heavy the tail is.

    .venv/bin/python benchmarks/fit_seeds.py --target mix64d --cells ipndm:12 ipndm:15
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
from quality import make_targets, probe_files, start_points, unfitted_schedules  # noqa: E402

from adasched.fitting import oracle_schedule, solver_aware_schedule  # noqa: E402
from adasched.metrics import rmse  # noqa: E402
from adasched.samplers import SOLVERS, steps_for_nfe  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="mix64d", choices=list(make_targets()))
    ap.add_argument("--cells", nargs="+", default=["ipndm:12", "ipndm:15"], help="SOLVER:NFE cells")
    ap.add_argument("--fit-seeds", nargs="+", type=int, default=[64, 128, 512, 2048])
    ap.add_argument("--eval", type=int, default=2048, help="evaluation latents (seeds 5000..)")
    ap.add_argument("--iterations", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    target = make_targets()[args.target]
    co, po = probe_files(target, args.target, Path(tempfile.mkdtemp()))
    seeds = list(range(5000, 5000 + args.eval))
    x, exact = start_points(target, seeds)
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()} CPU, torch {torch.__version__}, target "
          f"{args.target}, evaluation seeds {seeds[0]}..{seeds[-1]}, fit seeds 0..N-1, iterations {args.iterations}")
    print("| solver | NFE | best unfitted | " + " | ".join(f"solver-aware {n} (fit s)" for n in args.fit_seeds)
          + " | oracle | worst 1% share |\n|" + "---|" * (len(args.fit_seeds) + 5))
    for cell in args.cells:
        solver, nfe = cell.split(":")
        steps, fn = steps_for_nfe(solver, int(nfe)), SOLVERS[solver].fn
        pool = unfitted_schedules(co, po, steps)
        best = min(pool, key=lambda k: rmse(fn(target, x, pool[k]), exact))
        cells = [f"{rmse(fn(target, x, pool[best]), exact):.3g} ({best})"]
        fitted = []
        for n in args.fit_seeds:
            t0 = time.process_time()
            s = solver_aware_schedule(target, target.shape, solver, pool["score-optimal"], list(range(n)),
                                      candidates=[pool["score-optimal-po"]], iterations=args.iterations).sigmas
            fitted.append(s)
            cells.append(f"{rmse(fn(target, x, s), exact):.3g} ({time.process_time() - t0:.0f})")
        oracle = oracle_schedule(target, solver, steps, seeds, init_sigmas=min(
            fitted, key=lambda s: rmse(fn(target, x, s), exact)), candidates=list(pool.values()), exact=exact,
            starts=1, iterations=args.iterations)
        with torch.no_grad():
            per_latent = (fn(target, x, oracle) - exact).pow(2).flatten(1).sum(1).sort(descending=True).values
        share = float(per_latent[:max(1, len(seeds) // 100)].sum() / per_latent.sum())
        cells += [f"{rmse(fn(target, x, oracle), exact):.3g}", f"{share:.0%}"]
        print(f"| {solver} | {nfe} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
