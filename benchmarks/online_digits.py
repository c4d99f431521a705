"""Does the online schedule learner (Algorithm 2), run while training the digits net, find the net's offline
score-optimal schedule?  And how does that depend on its substeps?

For each ``--substeps`` value: train the slimmed digits net (16 channels, batches of 64) for ``--steps`` steps
with the learner on half of each batch (``--levels`` levels, blend weight ``--gamma``); then probe the
trained net offline (corrector cost, a 256-interval log grid, 64 digits per interval) and run Algorithm 1
on it at the same number of levels.  Reported: the largest and the median relative deviation of the learned
levels from the offline ones, where the largest sits, the learner's updates and the training time.

    .venv/bin/python benchmarks/online_digits.py --steps 800 --levels 16 --substeps 1 2 4 8
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from adasched.data import load_data_sampler
from adasched.optimize import score_optimal_sigmas
from adasched.probe import probe, probe_grid, read_probes
from adasched.train import TrainConfig, train


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--levels", type=int, default=16)
    ap.add_argument("--gamma", type=float, default=0.1)
    ap.add_argument("--n-min", type=int, default=16)
    ap.add_argument("--substeps", type=int, nargs="+", default=[1, 2, 4, 8])
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.machine()} CPU, torch {torch.__version__}, 1 thread; digits "
          f"net 16 channels, {args.steps} steps of 64, learner on half of each batch, T = {args.levels}, "
          f"gamma {args.gamma:g}, n_min {args.n_min}; offline: 256-interval probe, 64 samples per interval")
    print(f"{'substeps':>8} {'updates':>7} {'train s':>7} {'max dev':>8} {'at sigma':>9} {'median dev':>10}")
    for m in args.substeps:
        config = TrainConfig(steps=args.steps, batch=64, lr=3e-3, lr_warmup=20, log_every=10**9, seed=0,
                             net_options=dict(model_channels=16), online_schedule=True, online_levels=args.levels,
                             online_substeps=m, online_gamma=args.gamma, online_n_min=args.n_min)
        t0 = time.perf_counter()
        model = train(config)
        seconds = time.perf_counter() - t0
        learned = np.sort(np.asarray(model.meta["learned_schedule"]["levels"]))
        path = Path(tempfile.mkdtemp()) / "probe.h5"
        probe(model, load_data_sampler("digits", model), probe_grid(256), 64, path, seed=0, batch=512)
        p = read_probes(path)
        offline = np.asarray(score_optimal_sigmas(p.sigmas, p.mean, args.levels + 1))
        offline = np.sort(offline[offline > 0])
        dev = np.abs(learned / offline - 1)
        print(f"{m:>8} {model.meta['learned_schedule']['updates']:>7} {seconds:>7.0f} {dev.max():>8.3f} "
              f"{learned[dev.argmax()]:>9.4f} {np.median(dev):>10.3f}", flush=True)


if __name__ == "__main__":
    main()
