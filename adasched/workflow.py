"""Helpers the Snakemake workflow's rules and scripts call (``Snakefile``, ``rules/*.smk``, ``scripts/``).

The workflow's own logic lives here so that it is unit-tested; rules only wire files and scripts only unpack
``snakemake.input``/``params`` and call one function.  :class:`Sweep` reads a config that has passed
``schemas/config.schema.yaml`` and answers every question a rule asks: which cells (model, schedule method,
solver, NFE) exist, where their files go, which inputs and ``params`` each job has.  Its constructor checks what
a JSON schema cannot (an NFE a solver cannot spend exactly, a target given both inline and as a file, a probe
range that does not cover the schedules), so a bad config fails before any job runs, with one line naming the
problem.

File layout under ``results`` (``design.md``, "Data flow")::

    <model>/model.json | model.safetensors                analytic target definition | trained network
    <model>/probes.h5, <model>/probes-po.h5               corrector / predictor cost probes
    <model>/schedules/<method>/<solver>-nfe<N>.json       schedule JSON
    <model>/samples/<method>/<solver>-nfe<N>.npz          samples NPZ
    <model>/metrics/<method>/<solver>-nfe<N>.json         metrics JSON
    summary.csv, plots/<model>-<plot>.png, report.html    what people look at
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Iterable

from adasched.errors import AdaschedError

__all__ = ["Sweep", "run_stage", "logging_to", "write_model_json", "metric_rows", "write_summary", "read_summary",
           "parse_cell", "METHODS", "SOLVERS", "ANALYTIC_KINDS", "KINDS", "PLOTS", "SUMMARY_FIELDS"]

log = logging.getLogger(__name__)

#: Schedule methods the workflow sweeps (``adasched schedule --method``).
METHODS = ("edm", "loglinear", "kl-optimal", "score-optimal", "score-optimal-po", "solver-aware", "online")
#: Solvers the workflow sweeps (deterministic ones: every schedule is compared on the same ODE).
SOLVERS = ("euler", "heun", "dpmpp-2m", "ipndm")
#: Model kinds whose exact solution is known (``gmm:``, ``powerlaw:`` SPECs of a ``model.json``).
ANALYTIC_KINDS = ("gmm", "powerlaw")
KINDS = ANALYTIC_KINDS + ("edm", "trained-digits")
#: The probe file each probed method reads (the corrector cost, or the predictor cost for ``-po``).
PROBES = {"score-optimal": "probes.h5", "solver-aware": "probes.h5", "score-optimal-po": "probes-po.h5"}
#: Figures per model: ``plots/<model>-<name>.png``.
PLOTS = ("quality", "schedules", "lambda", "samples")
SUMMARY_FIELDS = ("model", "method", "solver", "nfe", "metric", "value", "num_samples")

_CELL = re.compile(r"(?P<model>[^/]+)/(?P<stage>schedules|samples|metrics)/(?P<method>[^/]+)/"
                   r"(?P<solver>[^/]+)-nfe(?P<nfe>\d+)\.(?:json|npz)$")


class Sweep:
    """The experiment a validated config describes: models x methods x solvers x NFE, and every job's inputs.

    ``config`` must have passed the workflow's JSON schema (defaults filled in); further checks raise
    :class:`~adasched.errors.AdaschedError` with the offending key named.
    """

    def __init__(self, config: dict):
        self.config = config
        self.results = str(config["results"]).rstrip("/") or "."
        self.models: dict[str, dict] = dict(config["models"])
        self._check()

    # ------------------------------------------------------------------------------------------- checks

    def _check(self) -> None:
        from adasched.samplers import steps_for_nfe

        for name, m in self.models.items():
            where = f"models.{name}"
            if m["kind"] in ANALYTIC_KINDS and (m["kind"] in m) == ("path" in m):
                raise AdaschedError(f"{where}: give the {m['kind']} target inline ({m['kind']}: ...) or as "
                                    f"path: FILE.json, exactly one of the two")
            if m["kind"] == "trained-digits" and "train" not in m:
                raise AdaschedError(f"{where}: a trained-digits model needs a train: block")
            for solver, nfes in self.solvers(name).items():
                for nfe in nfes:
                    try:
                        steps_for_nfe(solver, nfe)
                    except AdaschedError as e:
                        key = f"{where}.solvers" if "solvers" in m else "solvers"
                        raise AdaschedError(f"{key}.{solver}: {e}") from None
        p, s = self.config["probe"], self.config["schedule"]
        if not p["sigma_min"] <= s["sigma_min"] < s["sigma_max"] <= p["sigma_max"]:
            raise AdaschedError(f"schedule range [{s['sigma_min']:g}, {s['sigma_max']:g}] must lie inside the "
                                f"probed range [{p['sigma_min']:g}, {p['sigma_max']:g}] (probe.sigma_min/max)")
        for name, m in self.models.items():
            if "online" in self.methods(name) and not (m["kind"] == "trained-digits" and m["train"]["online_schedule"]):
                raise AdaschedError(f"models.{name}: method online needs a model trained with the online learner "
                                    "(kind trained-digits, train.online_schedule: true)")
        cell = self.config["report"].get("samples")
        if cell:
            for name in self.models:
                if cell["nfe"] not in self.solvers(name).get(cell["solver"], []):
                    raise AdaschedError(f"report.samples: {cell['solver']} at NFE {cell['nfe']} is not in the "
                                        f"sweep of model {name}")
        ref = self.config["evaluate"].get("reference")
        if ref:
            try:
                steps_for_nfe(ref["solver"], ref["nfe"])
            except AdaschedError as e:
                raise AdaschedError(f"evaluate.reference: {e}") from None
        if any(m["kind"] == "edm" for m in self.models.values()) and not self.config["evaluate"].get("fid"):
            log.warning("EDM models without evaluate.fid get no image metric")

    # -------------------------------------------------------------------------------------------- sweep

    def methods(self, model: str) -> list[str]:
        return list(self.models[model].get("methods") or self.config["methods"])

    def solvers(self, model: str) -> dict[str, list[int]]:
        return {k: list(v) for k, v in (self.models[model].get("solvers") or self.config["solvers"]).items()}

    def cells(self, model: str) -> list[tuple[str, str, int]]:
        """``(method, solver, nfe)`` of every cell of ``model``, in config order."""
        return [(method, solver, nfe) for method in self.methods(model)
                for solver, nfes in self.solvers(model).items() for nfe in nfes]

    def path(self, stage: str, model: str, method: str, solver: str, nfe: int | str) -> str:
        """``<results>/<model>/<stage>/<method>/<solver>-nfe<N>.<json|npz>`` for stage schedules, samples, metrics."""
        ext = "npz" if stage == "samples" else "json"
        return f"{self.results}/{model}/{stage}/{method}/{solver}-nfe{nfe}.{ext}"

    def metric_files(self, model: str | None = None) -> list[str]:
        models = [model] if model else list(self.models)
        return [self.path("metrics", m, *cell) for m in models for cell in self.cells(m)]

    def plot(self, model: str, name: str) -> str:
        return f"{self.results}/plots/{model}-{name}.png"

    def plots(self) -> list[str]:
        return [self.plot(m, name) for m in self.models for name in PLOTS]

    def targets(self) -> list[str]:
        """What ``rule all`` asks for: the summary, every plot and the report."""
        return [f"{self.results}/summary.csv", *self.plots(), f"{self.results}/report.html"]

    def wildcard_constraints(self) -> dict[str, str]:
        alt = lambda names: "|".join(re.escape(n) for n in names)  # noqa: E731
        return {"model": alt(self.models), "method": alt(METHODS), "solver": alt(SOLVERS), "nfe": r"\d+",
                "checkpoint": alt(self.edm_downloads())}

    # ------------------------------------------------------------------------------------------- models

    def kind(self, model: str) -> str:
        return self.models[model]["kind"]

    def kind_models(self, kind: str) -> list[str]:
        return [m for m in self.models if self.kind(m) == kind]

    def model_file(self, model: str) -> list[str]:
        """The file a model's SPEC points at (made by a rule, or an EDM pickle given as a path)."""
        kind = self.kind(model)
        if kind in ANALYTIC_KINDS:
            return [f"{self.results}/{model}/model.json"]
        if kind == "trained-digits":
            return [f"{self.results}/{model}/model.safetensors"]
        return [self.checkpoint(model)]

    def checkpoint(self, model: str) -> str:
        """An EDM model's pickle: a local path as given, else where the ``edm:`` loader caches the download
        (:func:`adasched.edm.default_cache_dir`), which the ``download_edm`` rule fills."""
        path, _ = self._edm_pickle(model)
        return path

    def _edm_source(self, model: str) -> tuple[str, str | None]:
        """``(source, registry name or None)`` of an EDM model's ``edm:`` SPEC (pin stripped)."""
        from adasched.edm import parse_spec
        from adasched.registry import MODELS

        source, _ = parse_spec(self.models[model]["edm"])
        stem = source[:-4] if source.endswith(".pkl") else source
        return source, stem if stem in MODELS else None

    def _edm_pickle(self, model: str) -> tuple[str, bool]:
        """``(path of the pickle, whether a rule downloads it)`` for an EDM model."""
        from adasched.edm import default_cache_dir
        from adasched.registry import get_model

        source, name = self._edm_source(model)
        if "://" in source:
            return str(default_cache_dir() / (source.rstrip("/").rsplit("/", 1)[-1] or "model.pkl")), True
        if name and not Path(source).exists():
            return str(default_cache_dir() / get_model(name).filename), True
        return source, False

    def edm_downloads(self) -> dict[str, str]:
        """``{checkpoint path: model}`` of the EDM pickles a rule downloads (registered names and URLs)."""
        out = {}
        for model in self.models:
            if self.kind(model) == "edm":
                path, downloaded = self._edm_pickle(model)
                if downloaded:
                    out[path] = model
        return out

    def spec(self, model: str) -> str:
        """The model SPEC every ``adasched`` command of ``model`` is given."""
        kind = self.kind(model)
        if kind in ANALYTIC_KINDS:
            return f"{kind}:{self.model_file(model)[0]}"
        if kind == "trained-digits":
            return f"adasched:{self.model_file(model)[0]}"
        return f"edm:{self.models[model]['edm'].removeprefix('edm:')}"

    def target_definition(self, model: str) -> dict | None:
        """The inline definition of an analytic target (``None`` when it comes from ``path``)."""
        m = self.models[model]
        return m.get(m["kind"])

    def target_path(self, model: str) -> list[str]:
        m = self.models[model]
        return [m["path"]] if "path" in m else []

    def train_options(self, model: str) -> dict:
        return dict(self.models[model]["train"])

    # -------------------------------------------------------------------------------------------- probe

    def probe_options(self, model: str, cost: str) -> dict:
        """``adasched probe`` options for the ``corrector`` (``probes.h5``) or ``predictor`` cost."""
        p = self.config["probe"]
        own = dict(p[cost])
        opts = {"model": self.spec(model), "data": self.data(model), "cost": cost, "grid": own.pop("grid"),
                "samples": own.pop("samples"), "batch": own.pop("batch", p["batch"]), **own,
                **{k: p[k] for k in ("spacing", "seed", "sigma_min", "sigma_max", "weighting", "device")}}
        if self.kind(model) == "edm" and self.models[model].get("trust_pickle"):
            opts["trust_pickle"] = True
        return opts

    def data(self, model: str) -> str:
        m = self.models[model]
        default = {"trained-digits": "digits", "edm": "model"}.get(m["kind"], "target")
        return m.get("data", default)

    def probes_needed(self, model: str) -> list[str]:
        """Probe files of ``model``: always the corrector cost (Lambda plot), the predictor cost if swept."""
        out = [f"{self.results}/{model}/probes.h5"]
        if "score-optimal-po" in self.methods(model):
            out.append(f"{self.results}/{model}/probes-po.h5")
        return out

    # ----------------------------------------------------------------------------------------- schedule

    def schedule_inputs(self, model: str, method: str) -> dict[str, str]:
        out = {}
        if method in PROBES:
            out["probes"] = f"{self.results}/{model}/{PROBES[method]}"
        if method in ("solver-aware", "online"):
            out["model"] = self.model_file(model)[0]
        return out

    def schedule_options(self, model: str, method: str) -> dict:
        """The ``adasched schedule`` options that change a ``method`` schedule (and nothing else)."""
        s = self.config["schedule"]
        if method == "online":  # the learned levels, their range included, come from the model file
            return {"model": self.spec(model)}
        opts: dict[str, Any] = {"sigma_min": s["sigma_min"], "sigma_max": s["sigma_max"]}
        if method == "edm":
            opts["rho"] = s["rho"]
        if method == "solver-aware":
            opts.update(model=self.spec(model), fit_seeds=s["solver_aware"]["fit_seeds"],
                        fit_iterations=s["solver_aware"]["fit_iterations"])
        return opts

    # ------------------------------------------------------------------------------------------- sample

    def sample_options(self, model: str) -> dict:
        s = self.config["sample"]
        opts = {"model": self.spec(model), "num": s["num"], "seed_start": s["seed_start"], "batch": s["batch"],
                "dtype": s["dtype"], "device": s["device"]}
        if self.kind(model) == "edm" and self.models[model].get("trust_pickle"):
            opts["trust_pickle"] = True
        return opts

    def keep_samples(self) -> bool:
        return bool(self.config["sample"]["keep"])

    # ----------------------------------------------------------------------------------------- evaluate

    def reference_samples(self, model: str) -> list[str]:
        """High-NFE samples from the same seeds, for models with no exact solution (``evaluate.reference``)."""
        ref = self.config["evaluate"].get("reference")
        if not ref or self.kind(model) in ANALYTIC_KINDS:
            return []
        return [self.path("samples", model, ref["method"], ref["solver"], ref["nfe"])]

    def classifier(self) -> str:
        return f"{self.results}/digits-classifier.safetensors"

    def fid_resources(self, model: str) -> list[str]:
        """Inception weights and reference statistics an EDM model's FID needs (fetched by a rule)."""
        fid = self.config["evaluate"].get("fid")
        if not fid or self.kind(model) != "edm":
            return []
        from adasched.fid import INCEPTION_FILENAME, reference_resource

        res = reference_resource(self.fid_ref(model), fid["protocol"])
        folder = fid["resources"].rstrip("/")
        return [f"{folder}/{INCEPTION_FILENAME}"] + ([f"{folder}/{res.filename}"] if res else [])

    def fid_refs(self) -> list[str]:
        """Reference statistics SPECs of every EDM model's FID (empty without ``evaluate.fid``)."""
        if not self.config["evaluate"].get("fid"):
            return []
        return sorted({self.fid_ref(m) for m in self.models if self.kind(m) == "edm"})

    def fid_files(self) -> list[str]:
        """Every file under ``evaluate.fid.resources`` that some FID needs (what ``fid_resources`` fetches)."""
        return sorted({f for m in self.models for f in self.fid_resources(m)})

    def fid_ref(self, model: str) -> str:
        """The model's ``fid_ref``, or the reference statistics the registry names for a registered EDM model."""
        from adasched.registry import get_model

        if "fid_ref" in self.models[model]:
            return self.models[model]["fid_ref"]
        _, name = self._edm_source(model)
        if name is None:
            raise AdaschedError(f"models.{model}: give fid_ref (edm:NAME, cleanfid:DATASET/RES/SPLIT or an .npz) "
                                f"for an unregistered EDM pickle")
        return f"edm:{get_model(name).fid_ref}"

    def exact_model(self, model: str) -> list[str]:
        """The ``model.json`` of an analytic target (its exact solution and samples); empty for other kinds."""
        return self.model_file(model) if self.kind(model) in ANALYTIC_KINDS else []

    def evaluate_inputs(self, model: str) -> dict[str, str | list[str]]:
        """Named inputs of an evaluate job besides the samples: only those the model's metrics need."""
        out: dict[str, str | list[str]] = {}
        if self.exact_model(model):
            out["model"] = self.exact_model(model)[0]
        if self.reference_samples(model):
            out["reference"] = self.reference_samples(model)[0]
        if self.kind(model) == "trained-digits":
            out["classifier"] = self.classifier()
        if self.fid_resources(model):
            out["resources"] = self.fid_resources(model)
        return out

    def evaluate_options(self, model: str) -> dict:
        """The ``adasched evaluate`` options for ``model`` (input files are added by the script)."""
        kind, ev = self.kind(model), self.config["evaluate"]
        if kind in ANALYTIC_KINDS:
            return {"model": self.spec(model)}
        opts: dict[str, Any] = {"device": ev["device"]}
        if kind == "trained-digits":
            opts["digits_fd"] = True
        fid = ev.get("fid")
        if kind == "edm" and fid:
            opts.update(fid=fid["protocol"], fid_ref=self.fid_ref(model), num_images=fid["num_images"],
                        seed_ranges=fid["seed_ranges"], resources=fid["resources"], batch=fid["batch"],
                        offline=True)
        return opts

    # --------------------------------------------------------------------------------------------- plots

    def report_cell(self, model: str) -> tuple[str, int]:
        """``(solver, nfe)`` whose samples the samples figure shows (default: the first solver at the middle NFE
        of its sweep, where schedules differ visibly and samples are already recognisable)."""
        cell = self.config["report"].get("samples")
        if cell:
            return cell["solver"], int(cell["nfe"])
        solver, nfes = next(iter(self.solvers(model).items()))
        return solver, _middle(nfes)

    def schedule_plot_files(self, model: str) -> list[str]:
        """The schedules the schedules figure draws: every method at the middle NFE of each solver's sweep."""
        out = []
        for solver, nfes in self.solvers(model).items():
            nfe = _middle(nfes)
            out += [self.path("schedules", model, method, solver, nfe) for method in self.methods(model)]
        return out

    def sample_plot_files(self, model: str) -> list[str]:
        solver, nfe = self.report_cell(model)
        return [self.path("samples", model, method, solver, nfe) for method in self.methods(model)]

    def report_info(self) -> dict:
        """What the report says about the run besides the files: title, models and their SPECs, the sweep."""
        return {"title": self.config["report"]["title"],
                "models": {m: {"kind": self.kind(m), "spec": self.spec(m), "methods": self.methods(m),
                               "solvers": self.solvers(m)} for m in self.models},
                "num_samples": self.config["sample"]["num"]}


def _middle(nfes: list[int]) -> int:
    """The middle NFE of a sweep (the lower of the two middle ones), where the figures look at one cell."""
    return sorted(nfes)[(len(nfes) - 1) // 2]


# ------------------------------------------------------------------------------------------------ scripts


def run_stage(command: str, log_path: str | os.PathLike, config: dict, **options) -> None:
    """What the cell rules' ``run:`` blocks (schedule, sample, evaluate) call: :func:`adasched.dispatch.stage`.

    There are hundreds of cell jobs, most of them milliseconds of work on an analytic target, while a new
    Python with torch costs about 2 s of CPU; so local work runs right here, in the Snakemake process (a
    thread of it under ``--force-use-threads``, which the workflow profile ``profiles/default`` sets).  Two
    kinds of job get a child process instead, started through Snakemake's ``shell`` like a script job:
    work dispatched elsewhere (SLURM), so that stopping Snakemake interrupts the wait and cancels the jobs;
    and the solver-aware fit, seconds of Python-bound optimisation that would hold the interpreter lock
    against every other job.
    """
    import json
    import shlex
    import sys

    from adasched.dispatch import Dispatcher, stage

    local = Dispatcher.from_config(config, stage=command).executor == "local"
    if local and not (command == "schedule" and options.get("method") == "solver-aware"):
        import torch

        # One intra-op thread per job, as Snakemake counts them (threads: 1; it sets OMP_NUM_THREADS for the
        # processes it starts, which it cannot do for a thread): --cores N runs N such jobs side by side.
        torch.set_num_threads(1)
        stage(command, log_path, config, **options)
        return
    from snakemake.shell import shell

    block = {"results": config.get("results", ""), "dispatch": config.get("dispatch") or {}}
    args = [sys.executable, "-m", "adasched.dispatch", command, str(log_path), json.dumps(block),
            json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in options.items()})]
    # shell() formats its command with the job's variables: the JSON's braces are doubled to stay literal.
    shell(" ".join(map(shlex.quote, args)).replace("{", "{{").replace("}", "}}"))


@contextlib.contextmanager
def logging_to(log_path: str | os.PathLike, append: bool = False):
    """Send this thread's ``adasched`` log records (INFO and up) to ``log_path`` for a job's duration, and
    stderr too when the job has the process to itself (its main thread: a script); a job running in a thread
    of the Snakemake process leaves the shared stderr alone."""
    from adasched.io import log_records_to

    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    own_process = threading.current_thread() is threading.main_thread()
    with open(log_path, "a" if append else "w") as f, log_records_to(f):
        with contextlib.redirect_stderr(f) if own_process else contextlib.nullcontext():
            yield f


def write_model_json(kind: str, output: str | os.PathLike, definition: dict | None = None,
                     path: str | os.PathLike | None = None) -> None:
    """Validate an analytic target (inline ``definition`` or the JSON file at ``path``) and write it to ``output``
    in the form its SPEC reads (``gmm:`` / ``powerlaw:``)."""
    from adasched.io import read_json, write_json
    from adasched.targets import GaussianMixture, PowerLawGaussian

    if (definition is None) == (path is None):
        raise AdaschedError("give exactly one of an inline definition or a path")
    obj = definition if definition is not None else read_json(path, f"{kind} target file")
    source = str(path) if path is not None else f"inline {kind} target"
    if kind == "gmm":
        out = GaussianMixture.from_json(obj, source=source).to_json()
    elif kind == "powerlaw":
        PowerLawGaussian.from_json(obj, source=source)
        out = dict(obj)
    else:
        raise AdaschedError(f"not an analytic kind: {kind!r}; valid: {', '.join(ANALYTIC_KINDS)}")
    write_json(output, out)


def fetch_fid_resources(refs: Iterable[str], protocol: str, folder: str | os.PathLike) -> list[Path]:
    """Fetch (or verify) the Inception weights and the downloadable reference statistics into ``folder``
    (:func:`adasched.fid.ensure_resource`: hash-checked, recorded in the folder's lock file)."""
    from adasched.fid import ensure_resource, inception_resource, reference_resource

    resources = [inception_resource()] + [r for r in (reference_resource(ref, protocol) for ref in refs) if r]
    out = []
    for r in resources:
        log.info("fetching %s", r.name)
        out.append(ensure_resource(r, folder))
    return out


# -------------------------------------------------------------------------------------------------- summary


def parse_cell(path: str | os.PathLike) -> dict:
    """``{"model", "method", "solver", "nfe"}`` of a cell file ``.../<model>/<stage>/<method>/<solver>-nfe<N>``."""
    m = _CELL.search(Path(path).as_posix())
    if not m:
        raise AdaschedError(f"{path} is not a cell file (<model>/<stage>/<method>/<solver>-nfe<N>.json|npz)")
    return {"model": m["model"], "method": m["method"], "solver": m["solver"], "nfe": int(m["nfe"])}


def metric_rows(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """One row per (model, method, solver, NFE, metric) of the metrics JSONs at ``paths``."""
    from adasched.io import read_json

    rows = []
    for p in paths:
        cell, d = parse_cell(p), read_json(p, "metrics file")
        for name, value in d["metrics"].items():
            rows.append({**cell, "metric": name, "value": float(value), "num_samples": int(d["num_samples"])})
    return rows


def write_summary(paths: Iterable[str | os.PathLike], output: str | os.PathLike) -> None:
    """``summary.csv``: :func:`metric_rows` sorted by model, metric, method, solver and NFE (atomic)."""
    from adasched.io import atomic_path

    rows = sorted(metric_rows(paths), key=lambda r: (r["model"], r["metric"], r["method"], r["solver"], r["nfe"]))
    with atomic_path(output) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({**r, "value": repr(r["value"])})


def read_summary(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="") as f:
        return [{**r, "nfe": int(r["nfe"]), "value": float(r["value"]), "num_samples": int(r["num_samples"])}
                for r in csv.DictReader(f)]

