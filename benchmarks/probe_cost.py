"""What a score-optimal schedule costs to estimate: precision against the number of probe samples.

For an analytic target, probe the corrector cost on the quality table's log grid (``--intervals``, default
200, 0.002 to 80), doubling the samples per interval (appending to one file, so each count extends the
previous), ``--repeats`` times on disjoint seeds, and report for each count: the denoiser evaluations spent
(``2 K n``), ``Lambda_hat`` and its relative standard error (delta method), the largest relative move of the
``--steps``-step schedule's levels against the converged schedule (median and worst over the repeats), and
what the probe's own standard errors predict for it (the largest ``log_std`` of
:func:`adasched.optimize.schedule_uncertainty`, median over repeats).  "Converged" is exact where the cost is
known in closed form (the power-law Gaussian, paper.md §6.2), otherwise the schedule of all repeats' samples
at the largest count pooled.  The rows answer: how many evaluations buy a schedule within 1% of converged.
Seconds are wall time on one thread.

    .venv/bin/python benchmarks/probe_cost.py --target mix2d --max-samples 4096
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import make_targets  # noqa: E402

from adasched.optimize import cumulative_length, length_stderr, schedule_uncertainty, score_optimal_sigmas  # noqa: E402
from adasched.probe import probe, probe_grid, target_sampler  # noqa: E402
from adasched.targets import PowerLawGaussian  # noqa: E402


def gaussian_costs(sigmas: np.ndarray, eigenvalues: np.ndarray) -> np.ndarray:
    """paper.md §6.2: the corrector cost of a Gaussian, summed over its covariance's eigenvalues."""
    lo, hi, lam = sigmas[:-1, None], sigmas[1:, None], eigenvalues[None, :]
    return (lo**2 * (lam + hi**2) * (1 / (lam + hi**2) - 1 / (lam + lo**2)) ** 2).sum(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="mix2d", choices=list(make_targets()))
    ap.add_argument("--intervals", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--max-samples", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3, help="independent probes, on disjoint seeds")
    args = ap.parse_args()
    torch.set_num_threads(1)
    target = make_targets()[args.target]
    grid = probe_grid(args.intervals)
    counts = [8 * 2**k for k in range(20) if 8 * 2**k <= args.max_samples]
    t0 = time.time()
    runs = []  # per repeat, per count: (Lambda_hat, its s.e., schedule, predicted largest log-std)
    sums = np.zeros(args.intervals)
    for r in range(args.repeats):
        path = Path(tempfile.mkdtemp()) / "probe.h5"
        rows = []
        for n in counts:
            res = probe(target, target_sampler(target), grid, None, path, total_samples=n, seed=r * 10**7,
                        dtype=torch.float64, batch=512)
            unc = schedule_uncertainty(res.sigmas, res.mean, res.stderr, args.steps)
            rows.append((float(cumulative_length(res.mean)[-1]), length_stderr(res.mean, res.stderr),
                         score_optimal_sigmas(res.sigmas, res.mean, args.steps), float(unc.log_std.max())))
        sums += res.sum
        runs.append(rows)
    if isinstance(target, PowerLawGaussian):
        exact = gaussian_costs(grid, target.eigenvalues.reshape(-1).numpy())
        converged, what = score_optimal_sigmas(grid, exact, args.steps), "exact (closed-form cost)"
        lam_conv = float(cumulative_length(exact)[-1])
    else:
        pooled = sums / (args.repeats * counts[-1])
        converged = score_optimal_sigmas(grid, pooled, args.steps)
        what = f"pooled ({args.repeats} x {counts[-1]} samples)"
        lam_conv = float(cumulative_length(pooled)[-1])
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()} CPU, torch {torch.__version__}, target "
          f"{args.target}, {args.intervals} intervals, {args.steps}-step schedule, {args.repeats} repeats, "
          f"converged: {what}, Lambda {lam_conv:.4f}, {time.time() - t0:.0f} s")
    print("| samples/interval | evaluations | Lambda_hat (median) | rel. s.e. | max rel. move vs converged, "
          "median (worst) | predicted by the bootstrap |")
    print("|---|---|---|---|---|---|")
    for k, n in enumerate(counts):
        lam = np.median([run[k][0] for run in runs])
        se = np.median([run[k][1] / run[k][0] for run in runs])
        moves = [float((run[k][2][:-1] / converged[:-1] - 1).abs().max()) for run in runs]
        predicted = np.median([run[k][3] for run in runs])
        print(f"| {n} | {2 * args.intervals * n} | {lam:.4f} | {se:.2%} | {np.median(moves):.2%} "
              f"({max(moves):.2%}) | {predicted:.2%} |")


if __name__ == "__main__":
    main()
