"""What a score-optimal schedule costs to estimate: precision against the number of probe samples.

For an analytic target, probe the corrector cost on a log grid of ``K`` intervals, doubling the samples
per interval (appending to one file, so each count extends the previous), and report after each doubling:
``Lambda_hat``, its relative standard error (delta method), the largest relative move of the
``steps``-step schedule against the converged one (the largest count), and the denoiser evaluations
spent (``2 K n``).  The last column answers: how many evaluations buy a schedule within 1% of converged.

    .venv/bin/python benchmarks/probe_cost.py --target mix2d --intervals 100 --steps 10 --max-samples 4096
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

from adasched.optimize import cumulative_length, length_stderr, score_optimal_sigmas  # noqa: E402
from adasched.probe import probe, probe_grid, target_sampler  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="mix2d", choices=list(make_targets()))
    ap.add_argument("--intervals", type=int, default=100)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--max-samples", type=int, default=4096)
    args = ap.parse_args()
    torch.set_num_threads(1)
    target = make_targets()[args.target]
    path = Path(tempfile.mkdtemp()) / "probe.h5"
    grid = probe_grid(args.intervals)
    counts, results = [], []
    n = 8
    t0 = time.time()
    while n <= args.max_samples:
        res = probe(target, target_sampler(target), grid, None, path, total_samples=n, dtype=torch.float64,
                    batch=512)
        counts.append(n)
        results.append((float(cumulative_length(res.mean)[-1]), length_stderr(res.mean, res.stderr),
                        score_optimal_sigmas(res.sigmas, res.mean, args.steps)))
        n *= 2
    final = results[-1][2]
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()} CPU, target {args.target}, {args.intervals} "
          f"intervals, {args.steps}-step schedule, {time.time() - t0:.0f} s")
    print("| samples/interval | evaluations | Lambda_hat | rel. s.e. | max rel. move vs converged |")
    print("|---|---|---|---|---|")
    for n, (lam, se, s) in zip(counts, results):
        move = float((s[:-1] / final[:-1] - 1).abs().max())
        print(f"| {n} | {2 * args.intervals * n} | {lam:.4f} | {se / lam:.2%} | {move:.2%} |")


if __name__ == "__main__":
    main()
