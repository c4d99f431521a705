"""Is quality.py's oracle a fair limit?  The recommended (solver-aware) schedule and the oracle on held-out noise.

quality.py's oracle is fitted to the exact solutions of its own 128 evaluation latents (seeds 1000..1127) and
scored on them: an in-sample number.  Here both schedules are built exactly as quality.py builds them and
scored twice: on those 128 evaluation seeds, and on ``--heldout`` latents neither was fitted to (seeds
2000..).  Where the in-sample ratio is large but the held-out one is not, the oracle's advantage is fitted
noise (a few of 128 latents dominate the RMSE at high NFE), not a better schedule.

    .venv/bin/python benchmarks/oracle_heldout.py --target mix2d --cells dpmpp-2m:15 dpmpp-2m:20 ipndm:10 ipndm:20
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
from quality import make_targets  # noqa: E402

from adasched.fitting import fit_schedule, solver_aware_schedule  # noqa: E402
from adasched.metrics import rmse  # noqa: E402
from adasched.optimize import score_optimal_from_probes  # noqa: E402
from adasched.probe import probe, probe_grid, target_sampler  # noqa: E402
from adasched.samplers import SOLVERS, latents, steps_for_nfe  # noqa: E402
from adasched.schedules import sigmas_edm, sigmas_kl_optimal, sigmas_loglinear  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="mix2d", choices=list(make_targets()))
    ap.add_argument("--cells", nargs="+", default=["dpmpp-2m:15", "dpmpp-2m:20", "ipndm:10", "ipndm:20"],
                    help="SOLVER:NFE cells")
    ap.add_argument("--heldout", type=int, default=512)
    ap.add_argument("--iterations", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    target = make_targets()[args.target]
    tmp = Path(tempfile.mkdtemp())
    sampler = target_sampler(target, args.target)
    co, po = tmp / "co.h5", tmp / "po.h5"
    probe(target, sampler, probe_grid(200), 256, co, dtype=torch.float64, batch=256)
    probe(target, sampler, probe_grid(100), 64, po, cost="predictor", dtype=torch.float64, batch=64)

    def exact(seeds):
        x = latents(seeds, target.shape).double() * 80.0
        return x, target.ode_solution(x, 80.0, 0.0)

    xe, ee = exact(list(range(1000, 1128)))
    xh, eh = exact(list(range(2000, 2000 + args.heldout)))
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()} CPU, torch {torch.__version__}, target "
          f"{args.target}, fit seeds 0..127, eval seeds 1000..1127, held-out seeds 2000..{1999 + args.heldout}")
    print("| solver | NFE | solver-aware eval | oracle eval | ratio eval | solver-aware held-out | oracle held-out "
          "| ratio held-out |\n|---|---|---|---|---|---|---|---|")
    for cell in args.cells:
        solver, nfe = cell.split(":")
        nfe = int(nfe)
        fn = SOLVERS[solver].fn
        steps = steps_for_nfe(solver, nfe)
        pool = {"edm": sigmas_edm(steps), "loglinear": sigmas_loglinear(steps), "kl-optimal": sigmas_kl_optimal(steps),
                "score-optimal": score_optimal_from_probes(co, steps),
                "score-optimal-po": score_optimal_from_probes(po, steps)}
        pool["solver-aware"] = solver_aware_schedule(target, target.shape, solver, pool["score-optimal"],
                                                     list(range(128)), candidates=[pool["score-optimal-po"]],
                                                     iterations=args.iterations)
        with torch.no_grad():
            start = min(pool, key=lambda k: rmse(fn(target, xe, pool[k]), ee))
        oracle = fit_schedule(target, solver, pool[start], xe, ee, iterations=args.iterations)
        with torch.no_grad():
            e = [rmse(fn(target, x, s), t) for x, t in ((xe, ee), (xh, eh)) for s in (pool["solver-aware"], oracle)]
        print(f"| {solver} | {nfe} | {e[0]:.3g} | {e[1]:.3g} | {e[0] / e[1]:.2f} | {e[2]:.3g} | {e[3]:.3g} "
              f"| {e[2] / e[3]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
