"""Sampler loop overhead over the raw denoiser calls it makes.

For each solver, time ``sample_<solver>`` on a small conv net (EDM-style preconditioned, random weights)
and time the same number of bare ``net(x, sigma)`` calls on the same inputs; report the ratio.  The
goal (issue 2, issue 8) is 1.05 or less.  Run:

    .venv/bin/python benchmarks/sampler_overhead.py [--device cpu] [--batch 64] [--nfe 35] [--repeats 5]

Prints one row per solver; paste the output, device and date into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch import nn

from adasched.samplers import SOLVERS, steps_for_nfe
from adasched.schedules import sigmas_edm


class SmallConvDenoiser(nn.Module):
    """A few 3x3 conv layers with EDM's preconditioning; random weights (speed only)."""

    sigma_min, sigma_max, sigma_data = 0.002, 80.0, 0.5

    def __init__(self, channels: int = 3, width: int = 64, depth: int = 4):
        super().__init__()
        layers = [nn.Conv2d(channels + 1, width, 3, padding=1), nn.SiLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
        layers += [nn.Conv2d(width, channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def round_sigma(self, sigma):
        return sigma

    def forward(self, x, sigma):
        dtype = x.dtype
        x = x.float()
        s = sigma.float().reshape(-1, 1, 1, 1)
        sd = self.sigma_data
        c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
        c_in, c_noise = 1 / (s**2 + sd**2).sqrt(), s.log() / 4
        h = torch.cat([c_in * x, c_noise.expand(x.shape[0], 1, *x.shape[2:])], dim=1)
        return (c_skip * x + c_out * self.net(h)).to(dtype)


def _time(fn, device, repeats):
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--nfe", type=int, default=35)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="sampler state dtype")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    net = SmallConvDenoiser().to(device).eval()
    x0 = torch.randn(args.batch, 3, 32, 32, device=device, dtype=dtype) * 80
    print(f"# device={device} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"threads={torch.get_num_threads()}, batch={args.batch}, state={args.dtype}")
    print(f"{'solver':16s} {'NFE':>4s} {'sampler s':>10s} {'raw s':>10s} {'ratio':>6s}")
    with torch.inference_mode():
        for name, solver in SOLVERS.items():
            steps = steps_for_nfe(name, args.nfe) if (args.nfe % 2 or solver.nfe(2) == 2) else None
            if steps is None:
                continue
            sigmas = sigmas_edm(steps)
            opts = {"generator": torch.Generator(device="cpu").manual_seed(0)} if solver.stochastic else {}
            calls = []

            def record(x, sigma):
                calls.append((x.clone(), sigma.clone()))
                return net(x, sigma)

            solver.fn(record, x0, sigmas, **opts)
            assert len(calls) == args.nfe
            # Interleaved, best of N: on a shared machine both arms see the same background load.
            t_sampler = t_raw = float("inf")
            for _ in range(args.repeats):
                t_sampler = min(t_sampler, _time(lambda: solver.fn(net, x0, sigmas, **opts), device, 1))
                t_raw = min(t_raw, _time(lambda: [net(x, s) for x, s in calls], device, 1))
            print(f"{name:16s} {args.nfe:4d} {t_sampler:10.4f} {t_raw:10.4f} {t_sampler / t_raw:6.3f}")


if __name__ == "__main__":
    main()
