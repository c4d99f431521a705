"""Whether a solver-aware fit stops at the optimiser's depth: L-BFGS in Hessian-whitened coordinates.

The solver-aware fits of quality.py's power-law Gaussian stop 1.9x to 3.0x above the oracle at iPNDM 15 and
20 NFE and DPM-Solver++(2M) 20 NFE.  The error there is very ill-conditioned in the fit's parameters (the
log-gaps of :func:`adasched.fitting.fit_schedule`): the Hessian of the relative error has condition numbers
of 1e8 to 1e11.  This script takes each cell's solver-aware schedule from quality.py's CSVs and polishes it,
on the same fit latents against the current reference (:func:`adasched.fitting.reference_solution`), by
L-BFGS in the coordinates ``u`` with ``theta = theta_0 + V |E|^(-1/2) u``, where ``V E V^T`` is the exact
Hessian at ``theta_0`` (eigenvalues floored at 1e-12 of the largest), recomputed at each round's best point;
rounds go on while one gains more than 1% (at most ``--rounds``).  Scored on quality.py's evaluation latents
(and ``--heldout`` others), next to the CSV's oracle.  A measurement for a change to ``fit_schedule``, not
yet part of it.  Seconds are CPU time on one thread.

    .venv/bin/python benchmarks/whitened_polish.py --cells ipndm:15 ipndm:20 dpmpp-2m:20
    .venv/bin/python benchmarks/whitened_polish.py --target mix2d --cells ipndm:15 heun:15 --heldout 2048
"""

from __future__ import annotations

import argparse
import csv
import inspect
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import SEEDS, by_cell, make_targets, start_points  # noqa: E402

from adasched.errors import ScheduleError  # noqa: E402
from adasched.fitting import _from_params, _to_params, fit_schedule, reference_solution  # noqa: E402
from adasched.metrics import rmse  # noqa: E402
from adasched.samplers import SOLVERS, latents  # noqa: E402

FLOOR = inspect.signature(fit_schedule).parameters["sigma_floor"].default  # the shipped fits' floor


def whitened_lbfgs(loss_of, theta0: torch.Tensor, rounds: int, iterations: int = 200) -> tuple[torch.Tensor, list]:
    """Minimise ``loss_of(theta)`` from ``theta0`` by L-BFGS in Hessian-whitened coordinates; per-round log."""
    log = []
    for _ in range(rounds):
        scale = float(loss_of(theta0))
        # Column by column (one Hessian-vector product each): torch.func.hessian vmaps all p of them at once,
        # p copies of the solve's graph, which ran out of 24 GiB on the 64-D mixture at iPNDM 20 NFE.
        grad = torch.func.grad(lambda th: loss_of(th) / scale)
        basis_vectors = torch.eye(len(theta0), dtype=theta0.dtype)
        hess = torch.stack([torch.func.jvp(grad, (theta0,), (e,))[1] for e in basis_vectors])
        hess = (hess + hess.T) / 2
        e, v = torch.linalg.eigh(hess)
        cond = float(e.abs().max() / e.abs().min())
        e = e.abs().clamp_min(float(e.abs().max()) * 1e-12)
        basis = v * e.rsqrt()
        u = torch.zeros_like(theta0, requires_grad=True)
        opt = torch.optim.LBFGS([u], lr=1.0, max_iter=iterations, history_size=20, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-12, tolerance_change=1e-14)
        best = [scale, theta0]

        def closure():
            opt.zero_grad()
            theta = theta0 + basis @ u
            loss = loss_of(theta)
            if loss.item() < best[0]:
                best[:] = [loss.item(), theta.detach().clone()]
            (loss / scale).backward()
            return loss / scale

        try:
            opt.step(closure)
        except (ScheduleError, FloatingPointError, RuntimeError) as err:  # e.g. merged levels: keep the best
            print(f"  round stopped at an invalid trial point ({type(err).__name__}: {err})", file=sys.stderr)
        log.append((scale, best[0], cond))
        theta0 = best[1]
        if not best[0] < 0.99 * scale:
            break
    return theta0, log


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="powerlaw3072", choices=list(SEEDS))
    ap.add_argument("--csv", nargs="+", default=None, help="quality.py CSVs (default: quality-TARGET*.csv)")
    ap.add_argument("--cells", nargs="+", default=["ipndm:15", "ipndm:20", "dpmpp-2m:20"], help="SOLVER:NFE cells")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--heldout", type=int, default=0, help="also score on this many held-out latents (seeds 5000..)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    name = args.target
    target = make_targets()[name]
    files = args.csv or sorted(map(str, Path("benchmarks/results").glob(f"quality-{name}*.csv")))
    rows = []
    for path in files:
        with open(path, newline="") as f:
            rows += csv.DictReader(f)
    cells = by_cell(rows, name)  # a later file's cell replaces an earlier one's, as in quality.py --merge
    there = {f"{solver}:{nfe}": (solver, nfe) for solver, nfe in cells}
    missing = [c for c in args.cells if c not in there]
    if missing:
        ap.error(f"no {name} rows for cell {', '.join(missing)} in {' '.join(files) or 'no CSV'}; "
                 f"there: {' '.join(there)}")
    n_eval, n_fit = SEEDS[name]
    sets = {"evaluation": start_points(target, range(1000, 1000 + n_eval))}
    if args.heldout:
        sets["held-out"] = start_points(target, range(5000, 5000 + args.heldout))
    x_fit = latents(list(range(n_fit)), target.shape).double() * 80.0
    ref = reference_solution(target, x_fit, 80.0)
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()} CPU, torch {torch.__version__}, {' '.join(files)}, "
          f"fit seeds 0..{n_fit - 1}, evaluation seeds 1000..{999 + n_eval}, "
          f"held-out seeds 5000..{4999 + args.heldout}")
    print("| solver | NFE | latents | solver-aware | whitened polish (s) | oracle | "
          "rounds: fit MSE (Hessian condition) | before / oracle | after / oracle |\n" + "|---" * 9 + "|")
    for solver, nfe in map(there.get, args.cells):
        fn = SOLVERS[solver].fn
        sigmas = {k: torch.tensor([float(v) for v in cells[(solver, nfe)][k]["sigmas"].split()], dtype=torch.float64)
                  for k in ("solver-aware", "oracle")}
        t0 = time.process_time()
        theta, log = whitened_lbfgs(lambda th: (fn(target, x_fit, _from_params(th, 80.0, FLOOR)) - ref).pow(2).mean(),
                                    _to_params(sigmas["solver-aware"], FLOOR).detach(), args.rounds)
        secs = time.process_time() - t0
        sigmas["polished"] = _from_params(theta, 80.0, FLOOR).detach()
        rounds = "; ".join(f"{a:.3g} -> {b:.3g} ({c:.1e})" for a, b, c in log)
        for label, (x, exact) in sets.items():
            err = {k: rmse(fn(target, x, s), exact) for k, s in sigmas.items()}
            print(f"| {solver} | {nfe} | {label} | {err['solver-aware']:.3g} | {err['polished']:.3g} ({secs:.0f}) | "
                  f"{err['oracle']:.3g} | {rounds} | {err['solver-aware'] / err['oracle']:.2f} | "
                  f"{err['polished'] / err['oracle']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
