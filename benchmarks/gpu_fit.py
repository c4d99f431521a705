"""Solver-aware fits of a CIFAR-10-sized network on one GPU: reference time, fit time, peak memory (issue 20).

The network is ``adasched.networks.build("ddpmpp-cifar10")`` (EDM's DDPM++, 55.7 M parameters) with random
weights: the numbers are time and memory, the schedules mean nothing.  For each ``SOLVER:NFE`` cell (default
DPM-Solver++(2M) at 10 NFE and Heun at 35 NFE):

* the reference: :func:`adasched.references.solve_reference` of ``--fit-seeds`` latents in float32, Heun's steps
  doubling from 32 to ``--max-steps`` (its tolerance is met or not; random weights make no promise), once;
* the fit: :func:`adasched.fitting.solver_aware_schedule` from EDM's rho = 7 schedule with the default budget
  (:data:`adasched.stages.FIT_BUDGET` network evaluations) or ``--budget``, no exact-Hessian rounds (as the
  schedule stage fits a network), ``--chunk`` latents per network call (gradients accumulated), float32 on
  ``--device``;
* peak GPU memory (``torch.cuda.max_memory_allocated``) of each.

Goal (issue 20): the whole fit in 2 minutes or less per cell on one H100, inside 40 GB.

    PYTHONPATH=. python benchmarks/gpu_fit.py --device cuda --out gpu_fit.json
    PYTHONPATH=. python benchmarks/gpu_fit.py --tiny --out /tmp/gpu_fit_tiny.json   # a CPU smoke test, seconds

Prints the machine, versions and date, then a markdown table; writes every number to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time

import torch

from adasched.fitting import solver_aware_schedule
from adasched.networks import build, count_parameters
from adasched.references import solve_reference
from adasched.samplers import steps_for_nfe
from adasched.schedules import sigmas_edm
from adasched.stages import FIT_BUDGET, FIT_SEED_START

#: ``--tiny``: a CIFAR-shaped DDPM++ shrunk to run on a CPU in seconds (the test of this script).
TINY = dict(img_resolution=8, model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
    ap.add_argument("--cells", nargs="+", default=None,
                    help="SOLVER:NFE cells (default dpmpp-2m:10 heun:35; dpmpp-2m:4 heun:5 with --tiny)")
    ap.add_argument("--fit-seeds", type=int, default=None, help="fit latents (default 64; 4 with --tiny)")
    ap.add_argument("--chunk", type=int, default=None, help="latents per network call (default 16; 2 with --tiny)")
    ap.add_argument("--budget", type=int, default=None,
                    help=f"fit budget in network evaluations (default {FIT_BUDGET}; 1000 with --tiny)")
    ap.add_argument("--max-steps", type=int, default=None, help="reference: most Heun steps (default 512; 16 --tiny)")
    ap.add_argument("--tiny", action="store_true", help="a small network, few latents: a smoke test on the CPU")
    ap.add_argument("--out", required=True, help="JSON file for every number")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    n = args.fit_seeds or (4 if args.tiny else 64)
    chunk = args.chunk or (2 if args.tiny else 16)
    budget = args.budget or (1000 if args.tiny else FIT_BUDGET)
    cells = args.cells or (["dpmpp-2m:4", "heun:5"] if args.tiny else ["dpmpp-2m:10", "heun:35"])
    max_steps = args.max_steps or (16 if args.tiny else 512)
    torch.manual_seed(0)
    net = build("ddpmpp-cifar10", **(TINY if args.tiny else {})).to(device).eval()
    parameters = count_parameters(net)
    for p in net.parameters():
        p.requires_grad_(False)
    shape = net.shape
    seeds = list(range(FIT_SEED_START, FIT_SEED_START + n))
    header = {"date": datetime.date.today().isoformat(), "machine": platform.machine(),
              "python": sys.version.split()[0],
              "torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
              else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
              "parameters": parameters, "shape": list(shape), "fit_seeds": n, "chunk": chunk,
              "budget": budget, "max_steps": max_steps, "command": " ".join(sys.argv)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    ref = solve_reference(net, shape, seeds, 80.0, start_steps=min(32, max_steps // 4), max_steps=max_steps,
                          batch=max(chunk, 64), device=device, dtype=torch.float32)
    _sync(device)
    reference = {"seconds": time.perf_counter() - t0, "steps": ref.steps, "error": ref.error, "rms": ref.rms,
                 "evaluations": ref.evaluations * n, "peak_gb": _peak_gb(device)}
    rows = []
    for cell in cells:
        solver, nfe = cell.split(":")
        steps = steps_for_nfe(solver, int(nfe))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        t0 = time.perf_counter()
        fit = solver_aware_schedule(net, shape, solver, sigmas_edm(steps), seeds, reference=ref, budget=budget,
                                    whitened_rounds=0, chunk=chunk, device=device, dtype=torch.float32)
        _sync(device)
        rows.append({"solver": solver, "nfe": int(nfe), "fit_seconds": time.perf_counter() - t0,
                     "forward": fit.cost["forward"], "backward": fit.cost["backward"], "peak_gb": _peak_gb(device),
                     "fit_error": fit.error, "start_error": fit.start_error})
    result = {**header, "reference": reference, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    gb = (lambda v: "-" if v is None else f"{v:.1f}")
    print(f"# {header['date']}, {header['device']}, torch {header['torch']}, DDPM++ {header['parameters'] / 1e6:.3g} M "
          f"parameters{' (tiny)' if args.tiny else ''}, {n} fit latents in chunks of {chunk}, budget {budget}")
    print(f"reference: {reference['seconds']:.1f} s, {ref.steps} Heun steps, {reference['evaluations']} network "
          f"evaluations, peak {gb(reference['peak_gb'])} GB")
    print("| solver | NFE | fit s | forward | backward | peak GB | fit mse / start mse |\n"
          "|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['solver']} | {r['nfe']} | {r['fit_seconds']:.1f} | {r['forward']} | {r['backward']} | "
              f"{gb(r['peak_gb'])} | {r['fit_error'] / r['start_error']:.3g} |")
    return result


if __name__ == "__main__":
    main()
