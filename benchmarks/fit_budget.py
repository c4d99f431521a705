"""How deep fit_schedule's L-BFGS stage goes with more budget, on the 8x8 power-law Gaussian against its exact solution.

The 3072-D power-law Gaussian's solver-aware fits at 15 to 20 NFE are the table cells where the optimiser's
depth decides the error (docs/benchmarks.md).  This runs the same stage on the 8x8 one (64 dimensions, 16
latents, exact ODE solutions as the target, from EDM's rho = 7 schedule) with no whitened rounds, the
default budget (:data:`adasched.fitting.WHITENED_ROUNDS` rounds of ``--iterations`` L-BFGS iterations) and
larger ones, and prints the fit MSE and CPU seconds.  Seconds are CPU time on one thread.

    .venv/bin/python benchmarks/fit_budget.py
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from adasched.fitting import WHITENED_ROUNDS, fit_schedule
from adasched.samplers import SOLVERS, latents, steps_for_nfe
from adasched.schedules import sigmas_edm
from adasched.targets import PowerLawGaussian


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", default=["ipndm:15", "ipndm:20", "dpmpp-2m:15", "dpmpp-2m:20"],
                    help="SOLVER:NFE cells")
    ap.add_argument("--iterations", type=int, default=200, help="the default budget's L-BFGS iterations per run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    target = PowerLawGaussian((1, 8, 8), alpha=2.0).in_eigenbasis()
    x = latents(range(16), target.shape).double() * 80.0
    exact = target.ode_solution(x, 80.0, 0.0)
    budgets = [(0, args.iterations), (WHITENED_ROUNDS, args.iterations), (4 * WHITENED_ROUNDS, args.iterations),
               (WHITENED_ROUNDS, 5 * args.iterations), (4 * WHITENED_ROUNDS, 5 * args.iterations)]
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()} CPU, torch {torch.__version__}, power-law Gaussian "
          f"1x8x8 alpha 2, latents of seeds 0..15, start EDM rho 7 (0.002 to 80)")
    print("| solver | NFE | " + " | ".join(f"{w} whitened rounds, {it} iterations" for w, it in budgets) + " |\n|---|---|"
          + "---|" * len(budgets))
    for cell in args.cells:
        solver, nfe = cell.split(":")
        nfe = int(nfe)
        fn = SOLVERS[solver].fn
        start = sigmas_edm(steps_for_nfe(solver, nfe), 0.002, 80.0)
        out = []
        for rounds, iterations in budgets:
            t = time.process_time()
            s = fit_schedule(target, solver, start, x, exact, iterations=iterations, optimizer="lbfgs",
                             whitened_rounds=rounds)
            out.append(f"{float((fn(target, x, s) - exact).pow(2).mean()):.3g} ({time.process_time() - t:.0f} s)")
        print(f"| {solver} | {nfe} | " + " | ".join(out) + " |", flush=True)


if __name__ == "__main__":
    main()
