"""Figures and the HTML report of a workflow run (``results/plots/*.png``, ``results/report.html``).

Plain matplotlib figures (Agg backend, imported lazily) and one static HTML page with relative links to the
PNGs and ``summary.csv``: no JavaScript, nothing fetched from the network, so the report opens from a copied
results folder.  Every function writes its file atomically (:func:`adasched.io.atomic_path`).

* :func:`plot_quality`: quality against NFE, a panel per solver (a row per metric), a line per schedule, log y;
* :func:`plot_schedules`: the schedules themselves, sigma against step, log y;
* :func:`plot_lambda`: ``Lambda(sigma)``, the cumulative length of the probed cost (paper.md §2.5, Algorithm 1),
  and the cost density it integrates;
* :func:`plot_samples`: samples of every schedule at one cell: image grids for image-shaped models, a scatter
  against exact target samples for vector-valued ones;
* :func:`write_report`: the page that puts them together with the summary as tables.
"""

from __future__ import annotations

import csv
import html
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from adasched import __version__
from adasched.errors import AdaschedError
from adasched.io import atomic_path
from adasched.models import load_model
from adasched.optimize import cumulative_length
from adasched.probe import read_probes
from adasched.schedules import Schedule

__all__ = ["plot_quality", "plot_schedules", "plot_lambda", "plot_samples", "write_report", "pivot",
           "METRIC_LABELS"]

log = logging.getLogger(__name__)

#: What each metric measures (all: lower is better).
METRIC_LABELS = {
    "ode_rmse": "RMSE against the exact probability-flow ODE solution from the same latents",
    "target_sliced_w2": "sliced 2-Wasserstein distance to as many exact target samples",
    "reference_rmse": "RMSE against high-NFE samples from the same seeds",
    "fid": "FID (Inception features, clean-fid protocol named in the metrics files)",
    "digits_fd": "Fréchet distance in the digits classifier's feature space (not FID)",
}
#: Line colours and markers per schedule method, fixed so that figures agree with each other.
_STYLE = {"edm": ("C0", "o"), "loglinear": ("C1", "s"), "kl-optimal": ("C2", "^"), "score-optimal": ("C3", "D"),
          "score-optimal-po": ("C4", "v"), "solver-aware": ("C5", "P"), "online": ("C6", "X")}


def _pyplot():
    # heavy and only for figures: matplotlib loads when the first figure is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after matplotlib.use, see above

    return plt


def _style(method: str) -> dict:
    color, marker = _STYLE.get(method, (None, "x"))
    return {"color": color, "marker": marker}


def _save(fig, path: str | os.PathLike) -> None:
    plt = _pyplot()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _ordered(values: Iterable, order: Sequence = ()) -> list:
    """Unique ``values`` in ``order`` first, then in first-seen order."""
    seen = list(dict.fromkeys(values))
    return [v for v in order if v in seen] + [v for v in seen if v not in order]


# ------------------------------------------------------------------------------------------------ quality


def plot_quality(rows: Sequence[dict], output: str | os.PathLike, *, title: str = "") -> None:
    """Quality against NFE from :func:`adasched.workflow.metric_rows` rows of one model.

    One panel per metric (rows) and solver (columns), one line per schedule method; log y where every value is
    positive.
    """
    if not rows:
        raise AdaschedError(f"no metrics to plot for {output}")
    plt = _pyplot()
    metrics = _ordered((r["metric"] for r in rows), METRIC_LABELS)
    solvers = _ordered(r["solver"] for r in rows)
    methods = _ordered((r["method"] for r in rows), _STYLE)
    fig, axes = plt.subplots(len(metrics), len(solvers), figsize=(3.6 * len(solvers), 3.0 * len(metrics) + 0.6),
                             squeeze=False, constrained_layout=True)
    for i, metric in enumerate(metrics):
        for j, solver in enumerate(solvers):
            ax = axes[i, j]
            cell = [r for r in rows if r["metric"] == metric and r["solver"] == solver]
            for method in methods:
                pts = sorted((r["nfe"], r["value"]) for r in cell if r["method"] == method)
                if pts:
                    ax.plot(*zip(*pts), label=method, **_style(method), markersize=4)
            if cell and all(r["value"] > 0 for r in cell):
                ax.set_yscale("log")
            nfes = sorted({r["nfe"] for r in cell})
            ax.set_xscale("log")
            ax.set_xticks(nfes, [str(n) for n in nfes])
            ax.set_xticks([], minor=True)
            ax.set_title(f"{solver}", fontsize=10)
            ax.set_xlabel("NFE")
            ax.grid(True, which="both", alpha=0.3)
            if j == 0:
                ax.set_ylabel(metric)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(methods), 6), fontsize=9)
    fig.suptitle(f"{title}: quality against NFE (lower is better)" if title else "quality against NFE",
                 fontsize=11)
    _save(fig, output)


# ---------------------------------------------------------------------------------------------- schedules


def plot_schedules(paths: Iterable[str | os.PathLike], output: str | os.PathLike, *, title: str = "") -> None:
    """Sigma against step index (log y; the final 0 left out) of schedule JSON files, a panel per solver."""
    plt = _pyplot()
    scheds = [Schedule.load(p) for p in paths]
    solvers = _ordered(s.solver for s in scheds)
    fig, axes = plt.subplots(1, len(solvers), figsize=(3.6 * len(solvers), 3.4), squeeze=False,
                             constrained_layout=True)
    for ax, solver in zip(axes[0], solvers):
        mine = [s for s in scheds if s.solver == solver]
        for s in sorted(mine, key=lambda s: list(_STYLE).index(s.method) if s.method in _STYLE else 99):
            sig = s.sigmas[:-1].numpy()
            ax.plot(np.arange(sig.size), sig, label=s.method, **_style(s.method), markersize=3)
        ax.set_yscale("log")
        ax.set_title(f"{solver}, NFE {mine[0].nfe} ({mine[0].steps} steps)", fontsize=10)
        ax.set_xlabel("step i")
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].set_ylabel("sigma_i")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), fontsize=9)
    fig.suptitle(f"{title}: schedules" if title else "schedules", fontsize=11)
    _save(fig, output)


# ------------------------------------------------------------------------------------------------- Lambda


def plot_lambda(paths: Iterable[str | os.PathLike], output: str | os.PathLike, *, title: str = "") -> None:
    """``Lambda(sigma) / Lambda`` of probe files (left) and the cost density ``sqrt(L_i) / dlog sigma`` (right)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.6), constrained_layout=True)
    for path in paths:
        pr = read_probes(path)
        lam = cumulative_length(pr.mean)
        label = f"{pr.cost} cost (Lambda = {lam[-1]:.3g}, {pr.samples} samples/interval)"
        left.plot(pr.sigmas, lam / lam[-1], label=label)
        density = np.sqrt(np.maximum(pr.mean, 0)) / np.diff(np.log(pr.sigmas))
        mid = np.sqrt(pr.sigmas[1:] * pr.sigmas[:-1])
        right.plot(mid, np.maximum(density, 1e-12 * density.max()), label=pr.cost)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("sigma")
        ax.grid(True, which="both", alpha=0.3)
    left.set_ylabel("Lambda(sigma) / Lambda")
    left.legend(fontsize=8)
    right.set_yscale("log")
    right.set_ylabel("sqrt(L) per unit log sigma")
    fig.suptitle(f"{title}: path length from the probes" if title else "path length from the probes", fontsize=11)
    _save(fig, output)


# ------------------------------------------------------------------------------------------------ samples


def _load_samples(path) -> tuple[dict, np.ndarray]:
    with np.load(path) as f:
        return {"method": str(f["method"]) if "method" in f.files else Path(path).parent.name,
                "solver": str(f["solver"]) if "solver" in f.files else "", "nfe": int(f["nfe"])}, f["samples"]


def _grid(x: np.ndarray, n: int, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """The first ``n`` images ``[N, C, H, W]`` tiled about square, as ``[H', W', C]`` in [0, 1] (``[lo, hi]``
    mapped to [0, 1] and clipped; ``C`` squeezed to 2-D for one channel)."""
    x = np.clip((x[:n].astype(np.float64) - lo) / (hi - lo), 0, 1)
    k, c, h, w = x.shape
    cols = int(math.ceil(math.sqrt(k)))
    rows = int(math.ceil(k / cols))
    out = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c))
    for i in range(k):
        r, q = divmod(i, cols)
        out[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = x[i].transpose(1, 2, 0)
    return out[..., 0] if c == 1 else out


def plot_samples(paths: Iterable[str | os.PathLike], output: str | os.PathLike, *, model: str | None = None,
                 title: str = "", max_images: int = 36, max_points: int = 2000) -> None:
    """One panel per samples file (a schedule at the same solver and NFE).

    Image-shaped samples ``[N, C, H, W]`` (C = 1 or 3) give a grid of the first ``max_images``, every panel with
    the same grey levels (the 0.5 and 99.5 percentiles of all shown pixels); other samples a scatter of their
    first two coordinates over as many exact samples of the analytic ``model`` SPEC (when given), the points of
    every panel from the same seeds.
    """
    plt = _pyplot()
    loaded = [_load_samples(p) for p in paths]
    images = [x[:max_images] for _, x in loaded if x.ndim == 4 and x.shape[1] in (1, 3)]
    lo, hi = np.percentile(np.concatenate([x.ravel() for x in images]), [0.5, 99.5]) if images else (-1, 1)
    truth = None
    if model and loaded and loaded[0][1].ndim == 2:
        n = min(len(loaded[0][1]), max_points)
        truth = load_model(model).sample(n, generator=torch.Generator().manual_seed(0x5EED)).numpy()
    k = len(loaded)
    cols = min(k, 3)
    rows = int(math.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.4 * rows + 0.4), squeeze=False,
                             constrained_layout=True)
    for ax in axes.flat[k:]:
        ax.axis("off")
    for ax, (meta, x) in zip(axes.flat, loaded):
        ax.set_title(meta["method"], fontsize=10)
        if x.ndim == 4 and x.shape[1] in (1, 3):
            ax.imshow(_grid(x, max_images, lo, hi if hi > lo else lo + 1), cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        x = x.reshape(len(x), -1)[:max_points]
        if x.shape[1] == 1:
            ax.hist(x[:, 0], bins=50, alpha=0.7, label="samples")
            if truth is not None:
                ax.hist(truth[:, 0], bins=50, histtype="step", color="k", label="target")
            continue
        if truth is not None:
            ax.scatter(truth[:, 0], truth[:, 1], s=3, c="0.6", label="target", rasterized=True)
        ax.scatter(x[:, 0], x[:, 1], s=3, c=_style(meta["method"])["color"] or "C0", label="samples",
                   rasterized=True)
        if truth is not None:  # the target's extent, so that samples far off do not shrink it to a dot
            lo, hi = truth[:, :2].min(0), truth[:, :2].max(0)
            lo, hi = lo - 0.25 * (hi - lo), hi + 0.25 * (hi - lo)
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            off = int((((x[:, :2] < lo) | (x[:, :2] > hi)).any(axis=1)).sum())
            if off:
                ax.set_title(f"{meta['method']} ({off} of {len(x)} outside)", fontsize=10)
        if x.shape[1] > 2:
            ax.set_xlabel("x[0]")
            ax.set_ylabel("x[1]")
    if truth is not None:
        axes.flat[0].legend(fontsize=8, loc="best", markerscale=3)
    meta = loaded[0][0] if loaded else {"solver": "", "nfe": 0}
    fig.suptitle(f"{title}: samples, {meta['solver']} at NFE {meta['nfe']}", fontsize=11)
    _save(fig, output)


# ------------------------------------------------------------------------------------------------- report


def pivot(rows: Sequence[dict], model: str, metric: str, methods: Sequence[str] = (),
          solvers: Sequence[str] = ()) -> tuple[list[str], list[tuple[str, int, dict]]]:
    """``(methods, [(solver, nfe, {method: value})])`` of one model and metric; methods and solvers in the given
    order first (the sweep's), NFE increasing."""
    mine = [r for r in rows if r["model"] == model and r["metric"] == metric]
    methods = _ordered((r["method"] for r in mine), list(methods) or list(_STYLE))
    cells: dict = defaultdict(dict)
    for r in mine:
        cells[(r["solver"], r["nfe"])][r["method"]] = r["value"]
    solvers = _ordered((r["solver"] for r in mine), solvers)
    keys = sorted(cells, key=lambda k: (solvers.index(k[0]), k[1]))
    return methods, [(s, n, cells[(s, n)]) for s, n in keys]


def _table(rows: Sequence[dict], model: str, metric: str, sweep: dict) -> str:
    methods, cells = pivot(rows, model, metric, sweep["methods"], list(sweep["solvers"]))
    e = html.escape
    wins = dict.fromkeys(methods, 0)
    body = []
    for solver, nfe, vals in cells:
        best = min(vals.values())
        tds = []
        for m in methods:
            v = vals.get(m)
            if v is None:
                tds.append("<td></td>")
            elif v == best:
                wins[m] += 1
                tds.append(f'<td class="best">{v:.3g}</td>')
            else:
                tds.append(f"<td>{v:.3g}</td>")
        body.append(f"<tr><th>{e(solver)}</th><th>{nfe}</th>{''.join(tds)}</tr>")
    head = "".join(f"<th>{e(m)}</th>" for m in methods)
    foot = "".join(f"<td>{wins[m]}</td>" for m in methods)
    return (f"<h3>{e(metric)}</h3><p>{e(METRIC_LABELS.get(metric, metric))}; lower is better, the best schedule "
            f"of each row in bold.</p>"
            f'<table class="summary" id="summary-{e(model)}-{e(metric)}">'
            f"<thead><tr><th>solver</th><th>NFE</th>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
            f'<tfoot><tr><th colspan="2">best in</th>{foot}</tr></tfoot></table>')


_CSS = """
body { font-family: "Liberation Sans", "DejaVu Sans", Arial, sans-serif; color: #111; background: #fff;
       margin: 1.5em auto; max-width: 1180px; padding: 0 1em; line-height: 1.4; }
h1 { font-size: 1.9em; margin: 0 0 0.3em 0; }
h2 { border-bottom: 2px solid #333; padding-bottom: 0.2em; margin-top: 1.8em; }
h3 { margin: 1em 0 0.2em 0; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ccc; }
figcaption { color: #444; font-size: 0.9em; }
table.summary { border-collapse: collapse; margin: 0.8em 0 1.2em 0; font-size: 0.9em; }
table.summary th, table.summary td { border: 1px solid #bbb; padding: 0.15em 0.5em; text-align: right; }
table.summary thead th { background: #eee; }
td.best { font-weight: bold; background: #e3f1e3; }
.meta { color: #333; font-size: 0.95em; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""

_CAPTIONS = {
    "quality": "Quality against NFE, one panel per solver (and metric), one line per schedule; log scale.",
    "schedules": "The schedules: sigma against step (log scale), every method at the middle NFE of each solver.",
    "lambda": "Lambda(sigma): cumulative length of the probed cost (the score-optimal schedule spaces its steps "
              "evenly in Lambda), and the cost density it integrates.",
    "samples": "Samples of every schedule at one solver and NFE, from the same seeds (grey: exact target "
               "samples where the model is analytic).",
}


def read_summary(path: str | os.PathLike) -> list[dict]:
    """The rows of a ``summary.csv`` (the workflow's :func:`adasched.workflow.write_summary`), typed."""
    with open(path, newline="") as f:
        return [{**r, "nfe": int(r["nfe"]), "value": float(r["value"]), "num_samples": int(r["num_samples"])}
                for r in csv.DictReader(f)]


def write_report(output: str | os.PathLike, *, summary: str | os.PathLike, plots: Iterable[str | os.PathLike],
                 info: dict) -> None:
    """The HTML report: per model its figures (relative links) and a table per metric from ``summary``.

    ``info`` is :meth:`adasched.workflow.Sweep.report_info`: ``title``, ``models`` (kind, spec, methods,
    solvers with their NFE) and ``num_samples``.  A figure is matched to its model by its name
    ``<model>-<figure>.png``.
    """
    e = html.escape
    out_dir = Path(output).parent
    rows = read_summary(summary)
    rel = lambda p: Path(os.path.relpath(p, out_dir)).as_posix()  # noqa: E731
    figures: dict = defaultdict(list)
    for p in plots:
        stem = Path(p).stem
        for model in sorted(info["models"], key=len, reverse=True):
            if stem.startswith(model + "-"):
                figures[model].append((stem[len(model) + 1:], rel(p)))
                break
    title = info["title"]
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<header><h1>{e(title)}</h1><p class=\"meta\">adasched {e(__version__)}; "
             f"{len(info['models'])} model(s), {info['num_samples']} samples per cell (common random numbers); "
             f"all numbers in <a href=\"{e(rel(summary))}\">summary.csv</a> (one row per model, schedule, solver, "
             f"NFE and metric).</p></header>",
             "<nav><ul>" + "".join(f'<li><a href="#model-{e(m)}">{e(m)}</a> ({e(d["kind"])})</li>'
                                   for m, d in info["models"].items()) + "</ul></nav>"]
    for model, d in info["models"].items():
        sweep = "; ".join(f"{e(s)}: NFE {', '.join(map(str, n))}" for s, n in d["solvers"].items())
        parts.append(f'<section id="model-{e(model)}"><h2>{e(model)}</h2>'
                     f'<p class="meta">model <code>{e(d["spec"])}</code>; schedules {e(", ".join(d["methods"]))}; '
                     f"{sweep}</p>")
        metrics = _ordered((r["metric"] for r in rows if r["model"] == model), METRIC_LABELS)
        tables = [_table(rows, model, metric, d) for metric in metrics]
        for name, src in figures.get(model, []):
            parts.append(f'<figure><img src="{e(src)}" alt="{e(model)}: {e(name)}">'
                         f"<figcaption>{e(_CAPTIONS.get(name, name))}</figcaption></figure>")
            if name == "quality":
                parts += tables
                tables = []
        parts += tables
        parts.append("</section>")
    parts.append("</body></html>\n")
    with atomic_path(output) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    log.info("wrote %s (%d models, %d figures)", output, len(info["models"]), sum(map(len, figures.values())))
