"""Schedule quality on analytic targets: the sampling error of every schedule, solver and NFE.

For each target (a 2-D mixture, a 64-D mixture with components of very different widths, a power-law
Gaussian in 3x32x32 = 3072 dimensions), each solver (euler, heun, dpmpp-2m, ipndm) and NFE from 5 to
20, the RMSE of the solver's output against the exact probability-flow ODE solution from the same
latents (evaluation seeds 1000..), for the schedules

  edm (rho 7), loglinear, kl-optimal            closed forms
  score-optimal, score-optimal-po               the paper's CO and PO costs, probed (200 / 100 intervals)
  solver-aware                                  the best of CO, PO and closed-form starts, refined
                                                against the model's own extrapolated 6142-NFE solves on
                                                separate seeds (adasched.fitting.solver_aware_schedule)
  oracle                                        the same search from every schedule of the row, fitted
                                                to the exact solutions of the evaluation latents
                                                (adasched.fitting.oracle_schedule)

The oracle is fitted in-sample, so it is a limit for the evaluation latents.  At high NFE the per-latent
error on the mixtures is heavy-tailed: a few latents carry most of it, so with few latents every fit
follows noise.  Hence, per target, 1024 evaluation latents for the mixtures and 512 fit latents for the
2-D one, 2048 for the 64-D one (512 left its fits following a handful of latents); the power-law
Gaussian's error sums 3072 independent coordinates per latent and concentrates, so 128 of each do there
(``SEEDS``).  ``--heldout N`` also scores every schedule on N latents (seeds 5000..) none was fitted to.

Writes a CSV (after every cell) and prints a Markdown table per target; runs over separate ``--cells``
in parallel processes are joined by ``--merge``:

    .venv/bin/python benchmarks/quality.py --targets mix2d --out benchmarks/results/quality-mix2d.csv
    .venv/bin/python benchmarks/quality.py --merge a.csv b.csv
"""

from __future__ import annotations

import argparse
import csv
import platform
import tempfile
import time
from pathlib import Path

import torch

from adasched.fitting import oracle_schedule, solver_aware_schedule
from adasched.references import reference_solution
from adasched.metrics import rmse
from adasched.optimize import score_optimal_from_probes
from adasched.probe import probe, probe_grid, target_sampler
from adasched.samplers import SOLVERS, latents, steps_for_nfe
from adasched.schedules import sigmas_edm, sigmas_kl_optimal, sigmas_loglinear
from adasched.targets import GaussianMixture, PowerLawGaussian

NFES = {"euler": [5, 6, 8, 10, 12, 15, 20], "dpmpp-2m": [5, 6, 8, 10, 12, 15, 20],
        "ipndm": [5, 6, 8, 10, 12, 15, 20], "heun": [5, 7, 9, 11, 15, 19]}
SCHEDULES = ["edm", "loglinear", "kl-optimal", "score-optimal", "score-optimal-po", "solver-aware", "oracle"]
RECOMMENDED = "solver-aware"
SEEDS = {"mix2d": (1024, 512), "mix64d": (1024, 2048), "powerlaw3072": (128, 128)}  # (evaluation, fit) latents


def make_targets():
    g = torch.Generator().manual_seed(0)
    mix2 = GaussianMixture([0.2, 0.3, 0.1, 0.4], [[-1.0, 0.5], [1.0, 0.8], [0.0, -1.0], [0.6, -0.2]],
                           [[0.002, 0.01], [0.05, 0.02], [0.2, 0.1], [0.001, 0.004]])
    k, d = 8, 64
    means = torch.randn(k, d, generator=g, dtype=torch.float64) * 0.5
    widths = torch.logspace(-4, 0, k, dtype=torch.float64)  # component variances from 1e-4 to 1
    var = widths[:, None] * torch.exp(0.5 * torch.randn(k, d, generator=g, dtype=torch.float64))
    mix64 = GaussianMixture([1 / k] * k, means.tolist(), var.tolist())
    # Solved in its DCT eigenbasis: the same errors in distribution (targets.PowerLawGaussian.in_eigenbasis),
    # and an O(d) denoiser makes the 3072-D fits affordable on a CPU.
    powerlaw = PowerLawGaussian((3, 32, 32), alpha=2.0, scale=1.0).in_eigenbasis()
    return {"mix2d": mix2, "mix64d": mix64, "powerlaw3072": powerlaw}


def probe_files(target, name: str, folder: Path) -> tuple[Path, Path]:
    """The corrector- and predictor-optimised cost probes of a target, as every table row uses them."""
    sampler = target_sampler(target, name)
    co, po = folder / f"{name}-co.h5", folder / f"{name}-po.h5"
    probe(target, sampler, probe_grid(200), 256, co, dtype=torch.float64, batch=256)
    probe(target, sampler, probe_grid(100), 64, po, cost="predictor", dtype=torch.float64, batch=64)
    return co, po


def start_points(target, seeds) -> tuple[torch.Tensor, torch.Tensor]:
    """The start points ``latents * 80`` of ``seeds`` and their exact ODE solutions."""
    x = latents(list(seeds), target.shape).double() * 80.0
    return x, target.ode_solution(x, 80.0, 0.0)


def unfitted_schedules(co: Path, po: Path, steps: int) -> dict:
    """The closed forms and the paper's two probed schedules for ``steps`` steps."""
    return {"edm": sigmas_edm(steps), "loglinear": sigmas_loglinear(steps), "kl-optimal": sigmas_kl_optimal(steps),
            "score-optimal": score_optimal_from_probes(co, steps), "score-optimal-po": score_optimal_from_probes(po, steps)}


def by_cell(rows: list[dict], name: str) -> dict:
    """``{(solver, nfe): {schedule: row}}`` for one target, in the order of ``NFES``."""
    cells = {}
    for r in rows:
        if r["target"] == name:
            cells.setdefault((r["solver"], int(r["nfe"])), {})[r["schedule"]] = r
    order = [(solver, nfe) for solver, nfes in NFES.items() for nfe in nfes]
    return dict(sorted(cells.items(), key=lambda kv: order.index(kv[0])))


def lowest_non_oracle(err: dict) -> bool:
    """Whether the recommended schedule's error is the lowest of all but the oracle's (``{schedule: error}``)."""
    return err[RECOMMENDED] <= min(v for k, v in err.items() if k not in ("oracle", RECOMMENDED))


def row_line(solver: str, nfe: int, cell: dict) -> str:
    """One Markdown row: every schedule's error on the evaluation latents, the recommended one in bold where it
    is the lowest non-oracle one, and recommended / oracle (also held out, when scored)."""
    err = {k: float(cell[k]["rmse"]) for k in SCHEDULES}
    cells = []
    for k in SCHEDULES:
        text = f"{err[k]:.3g}"
        if k == RECOMMENDED:
            text = f"**{text}**" if lowest_non_oracle(err) else f"{text} (miss)"
        cells.append(text)
    line = f"| {solver} | {nfe} | " + " | ".join(cells) + f" | {err[RECOMMENDED] / err['oracle']:.2f} |"
    if cell[RECOMMENDED]["rmse_heldout"] != "":
        line += f" {float(cell[RECOMMENDED]['rmse_heldout']) / float(cell['oracle']['rmse_heldout']):.2f} |"
    return line


def header(heldout: bool) -> str:
    extra = " rec./oracle held-out |" if heldout else ""
    return ("| solver | NFE | " + " | ".join(SCHEDULES) + " | rec./oracle |" + extra + "\n|"
            + "---|" * (len(SCHEDULES) + 3 + heldout))


def summary(rows: list[dict], name: str) -> str:
    """Counts of the cells where the recommended schedule is the lowest non-oracle one and within 1.5x of the
    oracle, on the evaluation latents and (when scored) the held-out ones."""
    cells = by_cell(rows, name)
    out = []
    for col, label in (("rmse", "evaluation"), ("rmse_heldout", "held-out")):
        if any(c[RECOMMENDED][col] == "" for c in cells.values()):
            continue
        err = [{k: float(v[col]) for k, v in c.items()} for c in cells.values()]
        lowest = sum(map(lowest_non_oracle, err))
        within = sum(e[RECOMMENDED] <= 1.5 * e["oracle"] for e in err)
        out.append(f"{label} latents: lowest non-oracle in {lowest} of {len(cells)} cells, "
                   f"within 1.5x of the oracle in {within} of {len(cells)}")
    return "; ".join(out)


def write_csv(rows: list[dict], out: Path) -> None:
    """Rewritten after every cell (through a temporary file), so a run cut short keeps what it finished."""
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(out)


def read_rows(paths: list[str]) -> list[dict]:
    """The rows of CSVs written by :func:`write_csv`, in file order (in :func:`by_cell` a later file's cell
    replaces an earlier one's)."""
    rows = []
    for p in paths:
        with open(p, newline="") as f:
            rows += csv.DictReader(f)
    return rows


def schedule_row(name: str, solver: str, nfe: int, schedule: str, sigmas: torch.Tensor, target, start, heldout) -> dict:
    """One CSV row: the schedule's RMSE from the evaluation ``start = (x, exact)``, from the held-out ones
    (``heldout``, or ``None``: left empty) and its sigmas at full precision."""
    fn = SOLVERS[solver].fn
    return {"target": name, "solver": solver, "nfe": nfe, "schedule": schedule,
            "rmse": rmse(fn(target, start[0], sigmas), start[1]),
            "rmse_heldout": rmse(fn(target, heldout[0], sigmas), heldout[1]) if heldout else "",
            "sigmas": " ".join(map(repr, sigmas.tolist()))}


def merge(paths: list[str]) -> None:
    """Print the tables and summaries of CSVs written by runs over separate cells (``--cells``)."""
    rows = read_rows(paths)
    for name in dict.fromkeys(r["target"] for r in rows):
        cells = by_cell(rows, name)
        print(f"\n## {name}\n\n" + header(all(c[RECOMMENDED]["rmse_heldout"] != "" for c in cells.values())))
        for (solver, nfe), cell in cells.items():
            print(row_line(solver, nfe, cell))
        print(f"\n{name}: {summary(rows, name)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/quality.csv")
    ap.add_argument("--eval-seeds", type=int, default=None, help="evaluation latents (default per target, SEEDS)")
    ap.add_argument("--fit-seeds", type=int, default=None, help="solver-aware fit latents (default per target)")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--targets", nargs="*", default=None, choices=list(SEEDS), help="default: all")
    ap.add_argument("--solvers", nargs="*", default=None, choices=list(NFES), help="default: all")
    ap.add_argument("--cells", nargs="*", default=None, help="only these SOLVER:NFE cells (default: all)")
    ap.add_argument("--heldout", type=int, default=0, help="also score every schedule on this many held-out latents")
    ap.add_argument("--merge", nargs="+", metavar="CSV", help="print the tables of CSVs from earlier runs, and stop")
    args = ap.parse_args()
    if args.merge:
        return merge(args.merge)
    known = [f"{solver}:{nfe}" for solver, nfes in NFES.items() for nfe in nfes]
    unknown = [c for c in args.cells or [] if c not in known]
    if unknown:
        ap.error(f"unknown cell {', '.join(unknown)}; valid: {' '.join(known)}")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()} CPU, torch {torch.__version__}, "
          f"iterations {args.iterations}")
    rows = []
    tmp = Path(tempfile.mkdtemp())
    for name, target in make_targets().items():
        if args.targets and name not in args.targets:
            continue
        todo = [(solver, nfe) for solver, nfes in NFES.items() for nfe in nfes
                if (not args.solvers or solver in args.solvers) and (not args.cells or f"{solver}:{nfe}" in args.cells)]
        if not todo:
            continue
        t0 = time.time()
        co, po = probe_files(target, name, tmp)
        seeds = list(range(1000, 1000 + (args.eval_seeds or SEEDS[name][0])))
        fit_seeds = list(range(args.fit_seeds or SEEDS[name][1]))
        # The model's own accurate solve of the fit latents, the same in every cell (references.reference_solution).
        fit_ref = reference_solution(target, latents(fit_seeds, target.shape).double() * 80.0, 80.0)
        print(f"\n## {name} (probes and reference {time.time() - t0:.0f} s; evaluation seeds {seeds[0]}..{seeds[-1]}, "
              f"fit seeds {fit_seeds[0]}..{fit_seeds[-1]})")
        x, exact = start_points(target, seeds)
        heldout = start_points(target, range(5000, 5000 + args.heldout)) if args.heldout else None
        print(header(bool(args.heldout)))
        for solver, nfe in todo:
            steps = steps_for_nfe(solver, nfe)
            sched = unfitted_schedules(co, po, steps)
            # Fitted to the model's own extrapolated Heun solves on the fit seeds, never to the exact solution.
            sched["solver-aware"] = solver_aware_schedule(
                target, target.shape, solver, sched["score-optimal"], fit_seeds,
                reference=fit_ref, candidates=[sched["score-optimal-po"]], iterations=args.iterations).sigmas
            # One refinement, from the best schedule of the row on the evaluation latents: never worse than any.
            sched["oracle"] = oracle_schedule(target, solver, steps, seeds, init_sigmas=sched[RECOMMENDED],
                                              candidates=list(sched.values()), exact=exact, starts=1,
                                              iterations=args.iterations)
            cell = {k: schedule_row(name, solver, nfe, k, sched[k], target, (x, exact), heldout) for k in SCHEDULES}
            rows += cell.values()
            write_csv(rows, out)
            print(row_line(solver, nfe, cell), flush=True)
        print(f"\n{name}: {summary(rows, name)} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
