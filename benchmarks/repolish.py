"""A quality table's fitted schedules polished again by the current L-BFGS stage, without rerunning the table.

``solver_aware_schedule`` ends with ``fit_schedule(optimizer="lbfgs")`` on the Adam fits' best.  When only
that stage changes (commit bafa4b9 added the Hessian-whitened rounds), a table's fits can be brought up to
date from its CSVs at a fraction of quality.py's cost: each cell's solver-aware schedule is polished again
against the model's own reference on the fit latents, and its oracle -- from the better of its old oracle and
the new solver-aware schedule on the evaluation latents -- against the exact solutions of the evaluation
latents, both by ``fit_schedule(optimizer="lbfgs")``.  Every other schedule of the row is copied.  Writes a
CSV in quality.py's format (after every cell), so ``quality.py --merge`` prints the table, and logs per cell
the fit errors before and after and the seconds.  Seconds are CPU time on one thread.

    .venv/bin/python benchmarks/repolish.py --target mix64d --csv benchmarks/results/quality-mix64d-*.csv \\
        --heldout 8192 --out benchmarks/results/repolish-mix64d.csv
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import (SEEDS, SCHEDULES, by_cell, make_targets, read_rows, row_line, schedule_row,  # noqa: E402
                     start_points, summary, write_csv)

from adasched.fitting import fit_schedule  # noqa: E402
from adasched.references import reference_solution  # noqa: E402
from adasched.metrics import rmse  # noqa: E402
from adasched.samplers import SOLVERS, latents  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True, choices=list(SEEDS))
    ap.add_argument("--csv", nargs="+", required=True, help="quality.py CSVs (a later file's cell replaces an earlier one's)")
    ap.add_argument("--cells", nargs="+", default=None, help="only these SOLVER:NFE cells (default: all in the CSVs)")
    ap.add_argument("--heldout", type=int, default=0,
                    help="also score on this many held-out latents (seeds 5000..): the table's own number, or its "
                         "held-out summary compares rows scored on different latents")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    name = args.target
    cells = by_cell(read_rows(args.csv), name)
    there = {f"{solver}:{nfe}": (solver, nfe) for solver, nfe in cells}
    missing = [c for c in args.cells or [] if c not in there]
    if missing:
        ap.error(f"no {name} rows for cell {', '.join(missing)} in {' '.join(args.csv)}; there: {' '.join(there)}")
    target = make_targets()[name]
    n_eval, n_fit = SEEDS[name]
    t0 = time.time()
    x, exact = start_points(target, range(1000, 1000 + n_eval))
    heldout = start_points(target, range(5000, 5000 + args.heldout)) if args.heldout else None
    x_fit = latents(list(range(n_fit)), target.shape).double() * 80.0
    fit_ref = reference_solution(target, x_fit, 80.0)
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()} CPU, torch {torch.__version__}, {' '.join(args.csv)}, "
          f"fit seeds 0..{n_fit - 1}, evaluation seeds 1000..{999 + n_eval}, held-out seeds 5000..{4999 + args.heldout} "
          f"(start points and reference {time.time() - t0:.0f} s)")
    out_rows = []
    log = []
    for solver, nfe in map(there.get, args.cells or there):
        fn = SOLVERS[solver].fn
        old = {k: torch.tensor([float(v) for v in cells[(solver, nfe)][k]["sigmas"].split()], dtype=torch.float64)
               for k in SCHEDULES}
        new = dict(old)
        t = time.process_time()
        new["solver-aware"] = fit_schedule(target, solver, old["solver-aware"], x_fit, fit_ref, optimizer="lbfgs",
                                           iterations=args.iterations)
        secs_sa = time.process_time() - t
        start = min((old["oracle"], new["solver-aware"]), key=lambda s: rmse(fn(target, x, s), exact))
        t = time.process_time()
        new["oracle"] = fit_schedule(target, solver, start, x, exact, optimizer="lbfgs", iterations=args.iterations)
        secs_or = time.process_time() - t
        cell = {k: schedule_row(name, solver, nfe, k, new[k], target, (x, exact), heldout)
                if k in ("solver-aware", "oracle") else dict(cells[(solver, nfe)][k]) for k in SCHEDULES}
        out_rows += cell.values()
        write_csv(out_rows, Path(args.out))
        before = {k: float(cells[(solver, nfe)][k]["rmse"]) for k in ("solver-aware", "oracle")}
        log.append(f"| {solver} | {nfe} | {before['solver-aware']:.3g} -> {float(cell['solver-aware']['rmse']):.3g} "
                   f"({secs_sa:.0f}) | {before['oracle']:.3g} -> {float(cell['oracle']['rmse']):.3g} ({secs_or:.0f}) |")
        print(row_line(solver, nfe, cell), flush=True)
    print("\nEvaluation RMSE before -> after the polish (CPU seconds):\n\n| solver | NFE | solver-aware | oracle |\n"
          "|---|---|---|---|\n" + "\n".join(log))
    print(f"\n{name}: {summary(out_rows, name)} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
