"""The offline demo (``make demo``): the whole command-line path on an analytic 2-D mixture.

It runs, with the ``adasched`` commands a user would type: ``probe`` (corrector and predictor costs), then
``schedule`` for every method, ``sample`` for each solver and NFE on the same seeds, and ``evaluate``
against the exact ODE solution; it writes every file under ``--out`` and a ``summary.csv``, and prints
the error table.  A few minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from adasched.cli import main as adasched

METHODS = ["edm", "loglinear", "kl-optimal", "score-optimal", "score-optimal-po", "solver-aware"]
RUNS = {"heun": [5, 9, 15], "dpmpp-2m": [5, 8, 12], "ipndm": [5, 8, 12]}


def run(*argv) -> None:
    rc = adasched([str(a) for a in argv])
    if rc:
        sys.exit(rc)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/demo")
    ap.add_argument("--model", default=str(Path(__file__).resolve().parent.parent / "examples" / "mixture-2d.json"))
    ap.add_argument("--num", type=int, default=256)
    args = ap.parse_args(argv)
    out, model = Path(args.out), f"gmm:{args.model}"
    co, po = out / "probes-co.h5", out / "probes-po.h5"
    if not co.exists():
        run("probe", "--model", model, "--grid", 200, "--samples", 256, "-o", co)
    if not po.exists():
        run("probe", "--model", model, "--grid", 100, "--samples", 64, "--cost", "predictor", "-o", po)
    rows = []
    for solver, nfes in RUNS.items():
        for nfe in nfes:
            for method in METHODS:
                stem = out / method / f"{solver}-nfe{nfe}"
                sched, samples, metrics = stem.with_suffix(".json"), stem.with_suffix(".npz"), Path(f"{stem}.metrics.json")
                extra = {"score-optimal": ["--probes", co], "score-optimal-po": ["--probes", po],
                         "solver-aware": ["--probes", co, "--probes-po", po, "--model", model]}.get(method, [])
                if not sched.exists():
                    run("schedule", "--method", method, "--solver", solver, "--nfe", nfe, *extra, "-o", sched)
                if not samples.exists():
                    run("sample", "--model", model, "--schedule", sched, "--solver", solver, "--num", args.num,
                        "--seed-start", 0, "-o", samples)
                if not metrics.exists():
                    run("evaluate", "--samples", samples, "--model", model, "-o", metrics)
                m = json.loads(metrics.read_text())["metrics"]
                rows.append({"solver": solver, "nfe": nfe, "method": method, **m})
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"RMSE against the exact ODE solution, {args.num} samples of {args.model} (lower is better):\n")
    print("| solver | NFE | " + " | ".join(METHODS) + " |\n|" + "---|" * (len(METHODS) + 2))
    for solver, nfes in RUNS.items():
        for nfe in nfes:
            errs = {r["method"]: r["ode_rmse"] for r in rows if r["solver"] == solver and r["nfe"] == nfe}
            best = min(errs.values())
            print(f"| {solver} | {nfe} | " + " | ".join(
                (f"**{errs[m]:.3g}**" if errs[m] == best else f"{errs[m]:.3g}") for m in METHODS) + " |")
    print(f"\nfiles: {out}/, summary: {out / 'summary.csv'}")


if __name__ == "__main__":
    main()
