"""Network and sampler speed of the DDPM++ CIFAR-10 net under precision/compile options (issue 8).

For each option (reduced precision, memory layout, ``torch.compile``, CUDA graphs), on the
``ddpmpp-cifar10`` network (55.7 M parameters, random weights unless ``--weights``):

* raw network throughput: images/s of one preconditioned forward ``D(x, sigma)`` at ``--batch``;
* sampler throughput: ``sample_heun`` on EDM's rho = 7 schedule with 18 steps (35 NFE), images/s and
  NFE-images/s, with float64 and float32 sampler state, and the sampler's overhead ratio
  ``t_sampler / (NFE * t_forward)`` over the raw calls it makes (goal: 1.02 or less);
* error: RMSE of the final samples against the reference option (fp32 with TF32 off, float64 state)
  from the same latents, next to the yardstick: the RMSE between two schedules (EDM rho = 7 and
  log-linear, same NFE, reference precision) from the same latents.  An option whose error is not
  well below that is not acceptable as a default.

Option names are ``BASE[+cl][+compile][+graph]``: BASE is ``fp32`` (TF32 off, the reference),
``tf32`` (TF32 on for convolutions and matmuls), ``bf16`` or ``fp16`` (autocast; TF32 on for what
stays in float32); ``cl`` = channels_last; ``compile`` = ``torch.compile`` of the UNet
(``--compile-mode``); ``graph`` = the whole denoiser call captured in a CUDA graph per input dtype
and replayed by the (unchanged, eager) sampler.  Precision options live in the model wrapper
(:meth:`adasched.networks.EDMPrecond.set_precision`); samplers stay pure.

Run on a GPU (about 5.5 minutes on one H100, three compiles included; ``--budget`` skips options that
would start late), and on a CPU as a smoke test (about 30 s)::

    PYTHONPATH=. python benchmarks/gpu_speed.py --device cuda --out gpu_speed.json
    PYTHONPATH=. python benchmarks/gpu_speed.py --quick --out /tmp/gpu_speed_quick.json

Prints the machine, versions and date, then a markdown table; writes every number to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

from adasched.networks import build, count_parameters
from adasched.samplers import latents, sample_heun
from adasched.schedules import sigmas_edm, sigmas_loglinear

BASES = {"fp32": (False, None), "tf32": (True, None), "bf16": (True, torch.bfloat16), "fp16": (True, torch.float16)}
MODIFIERS = ("cl", "compile", "graph")
GPU_OPTIONS = ["fp32", "tf32", "bf16", "fp16", "tf32+cl", "bf16+cl", "bf16+cl+graph", "bf16+cl+compile",
               "bf16+cl+compile+graph", "fp16+cl+compile", "tf32+cl+compile"]
CPU_OPTIONS = ["fp32", "bf16", "fp32+cl"]
QUICK_OPTIONS = ["fp32", "bf16+cl"]
STATES = {"fp64": torch.float64, "fp32": torch.float32}


def parse_option(name: str) -> dict:
    """``"bf16+cl+compile"`` -> ``{tf32, autocast, cl, compile, graph}``; unknown parts are an error."""
    base, *mods = name.split("+")
    if base not in BASES or any(m not in MODIFIERS for m in mods) or len(set(mods)) != len(mods):
        raise SystemExit(f"bad option {name!r}: expected BASE[+cl][+compile][+graph] with BASE one of "
                         f"{', '.join(BASES)}")
    tf32, autocast = BASES[base]
    return dict(name=name, tf32=tf32, autocast=autocast, cl="cl" in mods, compile="compile" in mods,
                graph="graph" in mods)


def set_tf32(on: bool) -> None:
    """TF32 for cuDNN convolutions and cuBLAS matmuls (new API where torch has it, else the legacy flags)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv"):
        matmul.fp32_precision = "tf32" if on else "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32" if on else "ieee"
    else:
        matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


class GraphedDenoiser:
    """A denoiser whose whole call ``D(x, sigma)`` is captured once per input shape and dtype in a CUDA graph.

    Each call copies ``x`` and ``sigma`` into the graph's static inputs, replays it and returns a copy of
    the static output; the sampler calling it is unchanged.  Only for fixed shapes (a sampling loop).
    """

    def __init__(self, net):
        self.net = net
        self.graphs: dict = {}
        for attr in ("sigma_min", "sigma_max", "sigma_data", "shape", "round_sigma"):
            setattr(self, attr, getattr(net, attr))

    def _capture(self, x, sigma):
        static_x, static_sigma = x.clone(), sigma.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.net(static_x, static_sigma)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.net(static_x, static_sigma)
        return graph, static_x, static_sigma, static_out

    def __call__(self, x, sigma):
        key = (tuple(x.shape), x.dtype, sigma.dtype)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x, sigma)
        graph, static_x, static_sigma, static_out = self.graphs[key]
        static_x.copy_(x)
        static_sigma.copy_(sigma)
        graph.replay()
        return static_out.clone()


def make_denoiser(base_net, opt: dict, compile_mode: str):
    net = copy.deepcopy(base_net)
    net.set_precision(autocast_dtype=opt["autocast"], channels_last=opt["cl"])
    if opt["compile"]:
        torch._dynamo.reset()
        net.model = torch.compile(net.model, mode=compile_mode)
    return GraphedDenoiser(net) if opt["graph"] else net


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).square().mean().sqrt())


def machine_info(device: torch.device) -> dict:
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "device": str(device), "threads": torch.get_num_threads(),
            "host": platform.processor() or platform.machine()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def run_option(opt, base_net, z, sigmas, args, device, ref):
    """Time one option; return its row, its float64-state samples and its denoiser.

    With ``ref`` None (the reference option) the float32-state run is compared with this option's own
    float64-state run.
    """
    row = {"option": opt["name"], **{k: (str(v) if k == "autocast" else v) for k, v in opt.items() if k != "name"}}
    set_tf32(opt["tf32"])
    t0 = time.perf_counter()
    D = make_denoiser(base_net, opt, args.compile_mode)
    B = z.shape[0]
    nfe = 2 * (len(sigmas) - 1) - 1
    samples = None
    for state, dtype in STATES.items():
        x = (z * float(sigmas[0])).to(device=device, dtype=dtype)
        sig = torch.full((B,), 2.0, device=device, dtype=dtype)
        D(x, sig)  # first call: compiles / captures / selects kernels
        sync(device)
        if state == "fp64":
            row["setup_s"] = time.perf_counter() - t0
        for _ in range(args.warmup):
            D(x, sig)
        t_fwd = statistics.median(timed(lambda: D(x, sig), device, args.reps))
        out = {}

        def run():
            out["x"] = sample_heun(D, x, sigmas)

        t_samp = min(timed(run, device, args.sampler_reps))
        final = out["x"].to("cpu", torch.float64)
        row[f"forward_s_{state}"] = t_fwd
        row[f"sampler_s_{state}"] = t_samp
        row[f"sampler_img_s_{state}"] = B / t_samp
        row[f"sampler_nfe_img_s_{state}"] = nfe * B / t_samp
        row[f"overhead_{state}"] = t_samp / (nfe * t_fwd)
        row[f"finite_{state}"] = bool(torch.isfinite(final).all())
        if state == "fp64":
            samples = final
        against = samples if ref is None else ref
        row[f"rmse_{state}"] = rmse(final, against) if row[f"finite_{state}"] else math.inf
    row["net_img_s"] = B / row["forward_s_fp32"]
    return row, samples, D


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def markdown(rows, ref_row, schedule_rmse, args) -> str:
    head = ("| option | net img/s | x ref | sampler img/s (fp64 state) | NFE·img/s | overhead fp64 | "
            "overhead fp32 state | RMSE vs ref (fp64 / fp32 state) | / schedule RMSE | setup s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    ref_speed = ref_row["net_img_s"] if ref_row else None
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['option']} | skipped: {r['skipped']} |" + " |" * 8)
            continue
        r64, r32 = r.get("rmse_fp64", 0.0), r.get("rmse_fp32", 0.0)
        ratio = max(r64, r32) / schedule_rmse if schedule_rmse else None
        lines.append(
            f"| {r['option']} | {r['net_img_s']:.1f} | {fmt(r['net_img_s'] / ref_speed if ref_speed else None, '.2f')} "
            f"| {r['sampler_img_s_fp64']:.2f} | {r['sampler_nfe_img_s_fp64']:.0f} | {r['overhead_fp64']:.3f} "
            f"| {r['overhead_fp32']:.3f} | {r64:.2e} / {r32:.2e} | {fmt(ratio, '.3f')} | {r['setup_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="examples:\n  PYTHONPATH=. python benchmarks/gpu_speed.py --device cuda --out r.json\n"
                                        "  PYTHONPATH=. python benchmarks/gpu_speed.py --quick --out /tmp/q.json")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: 512 on GPU, 4 on CPU, 1 --quick)")
    ap.add_argument("--steps", type=int, default=None, help="Heun steps (default 18 = 35 NFE; 3 with --quick)")
    ap.add_argument("--options", default=None, help="comma-separated options (default: all on GPU; a few on CPU)")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode for +compile options (e.g. default, max-autotune-no-cudagraphs)")
    ap.add_argument("--reps", type=int, default=None, help="timed forward calls per option and state dtype (3; 1 --quick)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed forward calls after the first (1; 0 --quick)")
    ap.add_argument("--sampler-reps", type=int, default=1, help="timed sampler runs (the fastest is kept)")
    ap.add_argument("--budget", type=float, default=420.0, help="skip options that would start after this many seconds")
    ap.add_argument("--weights", default=None, help="state dict of the UNet (else random weights, init_zero off)")
    ap.add_argument("--seed-start", type=int, default=0)
    ap.add_argument("--quick", action="store_true",
                    help="CPU smoke run: batch 1, 3 steps (5 NFE), options fp32 and bf16+cl, one timed call each")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.quick else "cpu"))
    batch = args.batch or (1 if args.quick else 512 if device.type == "cuda" else 4)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.warmup is None:
        args.warmup = 0 if args.quick else 1
    steps = args.steps or (3 if args.quick else 18)
    names = (args.options.split(",") if args.options else
             QUICK_OPTIONS if args.quick else GPU_OPTIONS if device.type == "cuda" else CPU_OPTIONS)
    opts = [parse_option(n) for n in names]
    if opts[0]["name"] != "fp32":
        opts.insert(0, parse_option("fp32"))
    if device.type != "cuda" and any(o["graph"] for o in opts):
        raise SystemExit("+graph options need a CUDA device")

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as EDM's generate.py; the first call per option tunes
    info = machine_info(device)
    nfe = 2 * steps - 1
    print(f"# gpu_speed: {info['date']}  device={info.get('device_name', info['host'])} ({device})  "
          f"python {info['python']}  torch {info['torch']}  CUDA {info['cuda']}  cuDNN {info['cudnn']}  "
          f"threads={info['threads']}")
    torch.manual_seed(0)
    base = build("ddpmpp-cifar10", dropout=0.0, init_zero=False)  # random weights with F = O(1)
    if args.weights:
        base.model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    base = base.to(device).eval().requires_grad_(False)
    print(f"# ddpmpp-cifar10: {count_parameters(base.model) if args.weights else sum(p.numel() for p in base.parameters()):,} "
          f"parameters, {'weights ' + args.weights if args.weights else 'random weights'}; batch {batch}; "
          f"heun {steps} steps = {nfe} NFE; compile mode {args.compile_mode}")

    z = latents(range(args.seed_start, args.seed_start + batch), base.shape).to(device)
    sigmas = sigmas_edm(steps)
    rows, ref, ref_row, schedule_rmse = [], None, None, None
    with torch.inference_mode():
        for opt in opts:
            elapsed = time.perf_counter() - t_start
            if ref is not None and elapsed > args.budget:
                rows.append({"option": opt["name"], "skipped": f"time budget ({elapsed:.0f} s > {args.budget:.0f} s)"})
                print(f"# {opt['name']}: skipped (time budget)", file=sys.stderr)
                continue
            try:
                row, samples, D = run_option(opt, base, z, sigmas, args, device, ref)
            except Exception as e:  # one failing option (e.g. a compile error) must not lose the others
                rows.append({"option": opt["name"], "skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"})
                print(f"# {opt['name']}: failed: {e!r}", file=sys.stderr)
                continue
            if ref is None:  # the yardstick: another schedule, same NFE, latents and precision
                ref, ref_row = samples, row
                x64 = (z * float(sigmas[0])).to(dtype=torch.float64)
                schedule_rmse = rmse(sample_heun(D, x64, sigmas_loglinear(steps)).cpu(), ref)
            del D
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.append(row)
            print(f"# {row['option']}: net {row['net_img_s']:.1f} img/s, sampler {row['sampler_img_s_fp64']:.2f} img/s, "
                  f"overhead {row['overhead_fp64']:.3f} (fp64) {row['overhead_fp32']:.3f} (fp32), "
                  f"rmse {row['rmse_fp64']:.2e} / {row['rmse_fp32']:.2e}, setup {row['setup_s']:.1f} s "
                  f"[{time.perf_counter() - t_start:.0f} s]", file=sys.stderr)

    print(f"\nSchedule yardstick: RMSE(EDM rho=7 vs log-linear, {nfe} NFE, fp32 TF32 off, fp64 state) = "
          f"{schedule_rmse:.3e}; an option's RMSE vs the reference should stay well below it.\n")
    print(markdown(rows, ref_row, schedule_rmse, args))
    total = time.perf_counter() - t_start
    print(f"\n# total {total:.0f} s")
    result = {"machine": info, "args": vars(args), "batch": batch, "steps": steps, "nfe": nfe,
              "params": sum(p.numel() for p in base.parameters()), "schedule_rmse": schedule_rmse,
              "rows": rows, "total_s": total}
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1, default=str)
        os.replace(tmp, args.out)
    return result


if __name__ == "__main__":
    main()
