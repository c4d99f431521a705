"""Figures and the HTML report (adasched.report), on small results made here with the library.

The report is also rendered in headless Chromium and the screenshot is looked at: not blank, dark title text
at the top, figures with colour below.  Chromium is Debian's ``chromium`` package; where it is missing the test
installs it with apt-get when running as root, and is skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from adasched.io import write_json
from adasched.report import pivot, plot_lambda, plot_quality, plot_samples, plot_schedules, write_report
from adasched.workflow import PLOTS, metric_rows, write_summary

MIX = {"weights": [0.3, 0.7], "means": [[-1.0, 0.0], [1.0, 0.5]], "variances": [[0.01, 0.02], [0.1, 0.05]]}
METHODS = ("edm", "loglinear", "score-optimal")
SOLVERS = {"euler": (4, 8, 16), "heun": (5, 9, 17)}
PNG = b"\x89PNG\r\n\x1a\n"


def _fake_metric(method: str, solver: str, nfe: int) -> float:
    """A made-up error that falls with NFE and differs between methods (edm best at the lowest NFE)."""
    return (1.0 + METHODS.index(method) * (0.2 if nfe > min(SOLVERS[solver]) else -0.1)) / nfe


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A results folder as the workflow lays it out, for two models: a 2-D mixture and an image-shaped one."""
    from adasched.models import load_model
    from adasched.probe import probe, probe_grid, target_sampler
    from adasched.samplers import generate, steps_for_nfe
    from adasched.schedules import CLOSED_FORM, Schedule

    root = tmp_path_factory.mktemp("report") / "results"
    write_json(root / "mix" / "model.json", MIX)
    write_json(root / "img" / "model.json", {"shape": [1, 8, 8], "alpha": 2.0})
    out = {"root": root, "plots": []}
    for model, spec in (("mix", f"gmm:{root}/mix/model.json"), ("img", f"powerlaw:{root}/img/model.json")):
        target = load_model(spec)
        metrics, schedules, samples = [], [], []
        for method in METHODS:
            for solver, nfes in SOLVERS.items():
                for nfe in nfes:
                    p = root / model / "metrics" / method / f"{solver}-nfe{nfe}.json"
                    v = _fake_metric(method, solver, nfe)
                    write_json(p, {"metrics": {"ode_rmse": v, "target_sliced_w2": 2 * v}, "num_samples": 64})
                    metrics.append(p)
                solver_nfe = nfes[1]
                fn = CLOSED_FORM["edm" if method == "score-optimal" else method]
                steps = steps_for_nfe(solver, solver_nfe)
                sigmas = fn(steps) if method != "score-optimal" else fn(steps, rho=3.0)
                s = root / model / "schedules" / method / f"{solver}-nfe{solver_nfe}.json"
                Schedule(sigmas, method=method, solver=solver, nfe=solver_nfe).save(s)
                schedules.append(s)
            sigmas = CLOSED_FORM[method if method != "score-optimal" else "kl-optimal"](4)
            draw = generate(target, sigmas, "euler", range(64), target.shape)
            s = root / model / "samples" / method / "euler-nfe4.npz"
            s.parent.mkdir(parents=True, exist_ok=True)
            np.savez(s, samples=draw["samples"].numpy(), latents=draw["latents"].numpy(), seeds=np.arange(64),
                     sigmas=sigmas.numpy(), nfe=np.int64(4), solver="euler", method=method)
            samples.append(s)
        probes = root / model / "probes.h5"
        probe(target, target_sampler(target), probe_grid(12), 8, probes, dtype=torch.float64)
        plots = {name: root / "plots" / f"{model}-{name}.png" for name in PLOTS}
        plot_quality(metric_rows(metrics), plots["quality"], title=model)
        plot_schedules(schedules, plots["schedules"], title=model)
        plot_lambda([probes], plots["lambda"], title=model)
        plot_samples(samples, plots["samples"], model=spec if model == "mix" else None, title=model)
        out["plots"] += list(plots.values())
        out.setdefault("metrics", []).extend(metrics)
    write_summary(out["metrics"], root / "summary.csv")
    info = {"title": "Report test: schedules compared", "num_samples": 64,
            "models": {m: {"kind": k, "spec": f"{k}:{root}/{m}/model.json", "methods": list(METHODS),
                           "solvers": {s: list(n) for s, n in SOLVERS.items()}}
                       for m, k in (("mix", "gmm"), ("img", "powerlaw"))}}
    write_report(root / "report.html", summary=root / "summary.csv", plots=out["plots"], info=info)
    return out


def test_figures_are_pngs(results):
    import matplotlib.image

    for p in results["plots"]:
        assert p.read_bytes()[:8] == PNG, p
        img = matplotlib.image.imread(p)
        assert img.shape[0] > 200 and img.shape[1] > 300 and img[..., :3].std() > 0.05, p


def test_pivot_orders_the_sweep(results):
    from adasched.workflow import read_summary

    rows = read_summary(results["root"] / "summary.csv")  # sorted alphabetically
    methods, cells = pivot(rows, "mix", "ode_rmse")
    assert methods == list(METHODS)
    assert [(s, n) for s, n, _ in cells] == [(s, n) for s, nfes in SOLVERS.items() for n in nfes]
    assert cells[0][2]["loglinear"] == pytest.approx(_fake_metric("loglinear", "euler", 4))
    methods, cells = pivot(rows, "mix", "ode_rmse", methods=["score-optimal", "edm"], solvers=["heun", "euler"])
    assert methods == ["score-optimal", "edm", "loglinear"] and [c[:2] for c in cells[:2]] == [("heun", 5), ("heun", 9)]


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.tables, self.bold = [], [], [], 0
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        elif tag == "a":
            self.links.append(a.get("href"))
        elif tag == "table":
            self.tables.append(a.get("id"))
        elif tag == "td" and a.get("class") == "best":
            self.bold += 1
        self._in_title = tag == "h1"

    def handle_data(self, data):
        if self._in_title:
            self.title += data

    def handle_endtag(self, tag):
        self._in_title = False


def test_report_references_every_plot_and_the_summary(results):
    root = results["root"]
    page = _Page()
    page.feed((root / "report.html").read_text())
    assert page.title == "Report test: schedules compared"
    assert sorted(page.images) == sorted(p.relative_to(root).as_posix() for p in results["plots"])
    assert all((root / src).is_file() for src in page.images)
    assert "summary.csv" in page.links and "#model-mix" in page.links
    assert sorted(page.tables) == sorted(f"summary-{m}-{k}" for m in ("mix", "img")
                                         for k in ("ode_rmse", "target_sliced_w2"))
    # one best cell per (solver, NFE) row of each table (no ties in the made-up numbers)
    assert page.bold == 2 * 2 * sum(len(n) for n in SOLVERS.values())
    text = (root / "report.html").read_text()
    assert "<script" not in text and "http" not in text.replace("http-equiv", "")


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() == 0 and shutil.which("apt-get"):  # CI installs these in .ci/run; this is the fallback
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "fonts-liberation"], capture_output=True,
                       env=env, timeout=900)
        if shutil.which("chromium"):
            return shutil.which("chromium")
    pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium fonts-liberation)")


def test_report_renders_in_chromium(results, tmp_path):
    import matplotlib.image

    shot = tmp_path / "report.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2400",
           f"--screenshot={shot}", (results["root"] / "report.html").resolve().as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=dict(os.environ, HOME=str(tmp_path)))
    assert shot.is_file(), f"no screenshot ({out.returncode}): {out.stderr[-2000:]}"
    img = matplotlib.image.imread(shot)[..., :3]  # float RGB in [0, 1], [H, W, 3]
    lum = img.mean(axis=2)
    assert img.shape[:2] == (2400, 1200)
    assert lum.std() > 0.05, "blank screenshot"
    # The title: dark text on white in the top band (the page is centred, 1180 px wide).
    top = lum[:90]
    assert (top < 0.35).mean() > 0.01 and (top > 0.9).mean() > 0.5
    # The figures: coloured lines and points (saturated pixels), in more than one place down the page.
    sat = img.max(axis=2) - img.min(axis=2)
    coloured_rows = np.nonzero((sat > 0.3).sum(axis=1) > 3)[0]
    assert coloured_rows.size > 100, "no coloured figure content"
    assert coloured_rows.max() - coloured_rows.min() > 600, "figures missing below the first"
    assert len(np.unique((img[120:] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 200


def test_every_workflow_method_has_its_own_line_style():
    from adasched.report import _STYLE
    from adasched.workflow import METHODS as WORKFLOW_METHODS

    assert set(_STYLE) == set(WORKFLOW_METHODS)
    assert len({c for c, _ in _STYLE.values()}) == len({m for _, m in _STYLE.values()}) == len(_STYLE)
