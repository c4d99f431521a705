"""How exact is the model's own reference solve?  RMSE of references.reference_solution against the exact ODE solution.

The solver-aware schedule is fitted to the model's own high-NFE solve (adasched.references.reference_solution);
where a schedule's error is as small as the reference's, the fit chases the reference's error.  For each analytic
target of quality.py, Heun on EDM's rho = 7 schedule with ``steps`` steps down to ``sigma_min``, then the jump to
0, alone and Richardson-extrapolated with the solve on half the steps (what reference_solution returns).

    .venv/bin/python benchmarks/reference_error.py [--steps 1024 2048 4096]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import make_targets  # noqa: E402

from adasched.references import reference_solution  # noqa: E402
from adasched.metrics import rmse  # noqa: E402
from adasched.samplers import SOLVERS, latents  # noqa: E402
from adasched.schedules import sigmas_edm  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", nargs="+", type=int, default=[1024, 2048, 4096], help="Heun steps of the fine solve")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()} CPU, torch {torch.__version__}, 32 latents (seeds 0..31)")
    print("| target | steps | sigma_min | Heun alone (NFE) | extrapolated (NFE) |\n|---|---|---|---|---|")
    for name, target in make_targets().items():
        x = latents(range(32), target.shape).double() * 80.0
        exact = target.ode_solution(x, 80.0, 0.0)
        for steps in args.steps:
            for sigma_min in (0.002, 2e-5, 2e-6):
                alone = rmse(SOLVERS["heun"].fn(target, x, sigmas_edm(steps, sigma_min, 80.0)), exact)
                extrapolated = rmse(reference_solution(target, x, 80.0, sigma_min=sigma_min, steps=steps), exact)
                print(f"| {name} | {steps} | {sigma_min:g} | {alone:.3g} ({2 * steps - 1}) | {extrapolated:.3g} "
                      f"({3 * steps - 2}) |", flush=True)


if __name__ == "__main__":
    main()
