"""Solver-aware schedules on the default run's digits model: digits_fd over seed ranges, and the fit budget (issue 20).

Reads a finished default run (``make run``: ``results/digits/``, the model, its schedules, probes and
reference solves, ``results/summary.csv``) and measures two things on the CPU:

* ``--cells``: digits_fd of every method's schedule on ``--ranges`` further seed ranges of 256 samples (seeds
  256.., disjoint from the run's own 0..255 and from the fit latents), next to the run's own value: the spread
  of digits_fd between seed ranges is the noise any difference between schedules must beat;
* ``--budget-cells``: the solver-aware fit again with the default budget (:data:`adasched.stages.FIT_BUDGET`)
  and with ``--factor`` times it, from the same starts as the run (its warm start included): the error on the
  fit latents, network evaluations and CPU seconds of each;
* ``--hessian-cells``: from the run's fitted schedule, the L-BFGS polish again without and with exact-Hessian
  (whitened) rounds, to see what those rounds buy on a network and at what cost.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/solver_aware_digits.py --results results

Prints markdown tables (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from adasched import stages
from adasched.schedules import Schedule
from adasched.workflow import cell_path

METHODS = ("edm", "loglinear", "kl-optimal", "score-optimal", "score-optimal-po", "online", "solver-aware")


def _summary(results: Path) -> dict:
    out = {}
    with open(results / "summary.csv") as f:
        for r in csv.DictReader(f):
            if r["model"] == "digits":
                out[(r["metric"], r["method"], r["solver"], int(r["nfe"]))] = float(r["value"])
    return out


def digits_fd_spread(results: Path, cells: list[tuple[str, int]], ranges: int, work: Path) -> None:
    summary = _summary(results)
    model = f"adasched:{results}/digits/model.safetensors"
    classifier = results / "digits-classifier.safetensors"
    print(f"\ndigits_fd over seed ranges of 256 samples: the run's range (seeds 0..255), then {ranges} more "
          f"(seeds 256..{256 * (ranges + 1) - 1}); mean [min, max] over all {ranges + 1}; the last column: mean ± "
          "standard error of the difference\n")
    reference = cell_path(str(results), "schedules", "digits", "edm", "heun", 255)
    samples = work / "reference.npz"
    stages.sample(model=model, schedule=reference, solver="heun", num=256 * (ranges + 1), output=samples,
                  dtype="float64", device="cpu")
    stages.evaluate(samples=[samples], output=work / "reference.json", digits_fd=True, classifier=classifier,
                    num_images=256, seed_ranges=ranges + 1, device="cpu")
    values = json.loads((work / "reference.json").read_text())["image_metrics"]["digits_fd"]["values"]
    print(f"The reference samples themselves (EDM's schedule, Heun, 255 NFE: close to the model's exact ODE "
          f"solution), the same {ranges + 1} ranges: {statistics.mean(values):.2f} [{min(values):.2f}, "
          f"{max(values):.2f}]\n")
    print("| solver | NFE | " + " | ".join(METHODS) + " | solver-aware minus the best other, paired by range |\n"
          "|---|---|" + "---|" * (len(METHODS) + 1))
    for solver, nfe in cells:
        row, by_method = [], {}
        for method in METHODS:
            schedule = cell_path(str(results), "schedules", "digits", method, solver, nfe)
            samples = work / f"{method}-{solver}-{nfe}.npz"
            stages.sample(model=model, schedule=schedule, solver=solver, num=256 * ranges, output=samples,
                          seed_start=256, dtype="float64", device="cpu")
            metrics = work / f"{method}-{solver}-{nfe}.json"
            stages.evaluate(samples=[samples], output=metrics, digits_fd=True, classifier=classifier,
                            num_images=256, seed_ranges=ranges, device="cpu")
            per_range = json.loads(metrics.read_text())["image_metrics"]["digits_fd"]["values"]
            values = [summary[("digits_fd", method, solver, nfe)], *per_range]
            by_method[method] = values
            row.append(f"{statistics.mean(values):.2f} [{min(values):.2f}, {max(values):.2f}]")
        # common random numbers: every method's range k starts from the same latents, so differences pair up
        best = min((m for m in METHODS if m != "solver-aware"), key=lambda m: statistics.mean(by_method[m]))
        diff = [a - b for a, b in zip(by_method["solver-aware"], by_method[best])]
        row.append(f"{statistics.mean(diff):+.2f} ± {statistics.stdev(diff) / len(diff) ** 0.5:.2f} ({best})")
        print(f"| {solver} | {nfe} | " + " | ".join(row) + " |", flush=True)


def budget(results: Path, cells: list[tuple[str, int]], factor: int, work: Path) -> None:
    print(f"\nThe solver-aware fit with the default budget ({stages.FIT_BUDGET} network evaluations) and {factor}x it, "
          "from the run's starts: mean squared error on the 64 fit latents, network evaluations (forward + "
          "backward), CPU seconds\n")
    print(f"| solver | NFE | default: mse | evaluations | s | {factor}x: mse | evaluations | s | "
          f"default / {factor}x |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for solver, nfe in cells:
        ran = Schedule.load(cell_path(str(results), "schedules", "digits", "solver-aware", solver, nfe))
        options = dict(method="solver-aware", solver=solver, nfe=nfe, probes=results / "digits/probes.h5",
                       model=ran.params["model"], reference=results / "digits/fit-reference.h5",
                       warm_start=ran.params.get("warm_start"), device="cpu")
        cols, errors = [], []
        for b in (stages.FIT_BUDGET, factor * stages.FIT_BUDGET):
            out = work / f"sa-{solver}-{nfe}-{b}.json"
            t = time.process_time()
            stages.schedule(output=out, fit_budget=b, **options)
            p = Schedule.load(out).params
            errors.append(p["fit_error"])
            cols += [f"{p['fit_error']:.4g}", str(p["fit_cost"]["forward"] + p["fit_cost"]["backward"]),
                     f"{time.process_time() - t:.0f}"]
        print(f"| {solver} | {nfe} | " + " | ".join(cols) + f" | {errors[0] / errors[1]:.3f} |", flush=True)


def hessian_rounds(results: Path, cells: list[tuple[str, int]]) -> None:
    """From each cell's fitted schedule: the L-BFGS polish again without and with exact-Hessian (whitened) rounds,
    unbounded: what the rounds add to the error's fall and to the cost."""
    from adasched.fitting import Objective, refine
    from adasched.models import load_model
    from adasched.references import read_reference, start_chunks

    print("\nExact-Hessian (whitened) rounds on the network: from the run's solver-aware schedule, L-BFGS runs "
          "without and with up to 20 rounds (no budget): mse on the fit latents and network evaluations\n")
    print("| solver | NFE | run's fit: mse | L-BFGS: mse | evaluations | + whitened rounds: mse | evaluations |\n"
          "|---|---|---|---|---|---|---|")
    for solver, nfe in cells:
        ran = Schedule.load(cell_path(str(results), "schedules", "digits", "solver-aware", solver, nfe))
        net = load_model(ran.params["model"], device="cpu")
        ref = read_reference(results / "digits/fit-reference.h5")
        (model, x, seeds), = start_chunks(net, net.shape, ref.seeds, ref.sigma_max, batch=len(ref.seeds),
                                          dtype=torch.float32)
        cols = [f"{ran.params['fit_error']:.4g}"]
        for rounds in (0, 20):
            objective = Objective([(model, x, ref.target, seeds)], solver)
            _, error = refine(objective, ran.sigmas, iterations=200, optimizer="lbfgs", whitened_rounds=rounds)
            cols += [f"{error:.4g}", str(objective.spent)]
        print(f"| {solver} | {nfe} | " + " | ".join(cols) + " |", flush=True)


def _cells(texts: list[str]) -> list[tuple[str, int]]:
    return [(t.split(":")[0], int(t.split(":")[1])) for t in texts]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="results", help="a finished default run's results folder")
    ap.add_argument("--cells", nargs="*", default=["dpmpp-2m:20", "dpmpp-2m:35", "heun:21", "heun:35"])
    ap.add_argument("--ranges", type=int, default=3, help="further seed ranges of 256 samples per schedule")
    ap.add_argument("--budget-cells", nargs="*", default=["dpmpp-2m:10", "dpmpp-2m:20", "heun:11", "heun:21"])
    ap.add_argument("--factor", type=int, default=10, help="the larger budget, as a multiple of the default")
    ap.add_argument("--hessian-cells", nargs="*", default=["dpmpp-2m:10", "heun:11"])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = Path(args.results)
    print(f"# {datetime.date.today()}, {platform.machine()} CPU, one thread, torch {torch.__version__}, "
          f"results of {results}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.cells:
            digits_fd_spread(results, _cells(args.cells), args.ranges, Path(tmp))
        if args.budget_cells:
            budget(results, _cells(args.budget_cells), args.factor, Path(tmp))
    if args.hessian_cells:
        hessian_rounds(results, _cells(args.hessian_cells))


if __name__ == "__main__":
    main()
