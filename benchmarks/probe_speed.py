"""Probe throughput: denoiser evaluations per second of ``adasched.probe.probe`` against raw network calls.

On the ``ddpmpp-cifar10`` network (random weights) with a random stand-in dataset ``[N, 3, 32, 32]``,
time one ``probe`` call (``--intervals`` intervals, ``--samples`` samples each, ``--batch`` per call:
``2 * intervals * samples`` evaluations, plus the per-seed CPU draws of data and noise and one HDF5
rewrite per batch), and the same number of bare forward calls at the same batch.  Prints the device,
versions, evaluations/s of both and their ratio.

    PYTHONPATH=. python benchmarks/probe_speed.py --device cuda --batch 512 --samples 2048 --intervals 4
    PYTHONPATH=. python benchmarks/probe_speed.py --quick
"""

from __future__ import annotations

import argparse
import datetime
import platform
import tempfile
import time
from pathlib import Path

import torch

from adasched.networks import build
from adasched.probe import dataset_sampler, probe, probe_grid


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--intervals", type=int, default=4)
    ap.add_argument("--precision", default="tf32", choices=["fp32", "tf32", "fp16"])
    ap.add_argument("--quick", action="store_true", help="tiny CPU smoke run")
    args = ap.parse_args()
    if args.quick:
        args.device, args.batch, args.samples, args.intervals = "cpu", 4, 8, 2
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.precision != "fp32"
    net = build("ddpmpp-cifar10", init_zero=False, dropout=0.0,
                autocast_dtype=torch.float16 if args.precision == "fp16" else None).to(device).eval()
    data = dataset_sampler(torch.rand(1000, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1, "random")
    grid = probe_grid(args.intervals, 0.002, 80.0)
    n_eval = 2 * args.intervals * args.samples
    print(f"# {datetime.date.today()}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, precision {args.precision}, batch {args.batch}, {n_eval} evaluations")
    with tempfile.TemporaryDirectory() as tmp:
        probe(net, data, grid, args.batch, Path(tmp) / "warm.h5", batch=args.batch, device=device)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        probe(net, data, grid, args.samples, Path(tmp) / "p.h5", batch=args.batch, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_probe = time.perf_counter() - t0
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    s = torch.full((args.batch,), 1.0, device=device)
    calls = n_eval // args.batch
    with torch.no_grad():
        net(x, s)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            net(x, s)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t_raw = (time.perf_counter() - t0) * n_eval / (calls * args.batch)
    print("| what | evaluations/s | seconds |\n|---|---|---|")
    print(f"| probe | {n_eval / t_probe:,.0f} | {t_probe:.2f} |")
    print(f"| raw network calls | {n_eval / t_raw:,.0f} | {t_raw:.2f} |")
    print(f"| ratio probe / raw time | {t_probe / t_raw:.2f} | |")


if __name__ == "__main__":
    main()
