"""The experiment a workflow config describes (:class:`Sweep`): which cells exist, where their files go, and
the keyword arguments of every stage a rule runs.

:class:`Sweep` reads a config that has passed ``schemas/config.schema.yaml`` and answers every question a rule
asks.  Its constructor checks what a JSON schema cannot -- an NFE a solver cannot spend exactly, an analytic
target that is not one, a probe range that does not cover the schedules, and every stage's options against
that stage's signature (:func:`adasched.stages.bind`) -- so a bad config fails while Snakemake builds its plan
(``snakemake -n`` too), before any job runs, with one line naming the key.

File layout under ``results`` (``design.md``, "Data flow"); :data:`CELL` is the one pattern of a cell file::

    <model>/model.json | model.safetensors                analytic target definition | trained network
    <model>/probes.h5, <model>/probes-po.h5               corrector / predictor cost probes
    <model>/fit-reference.h5                              the model's solves its solver-aware schedules fit
    <model>/schedules/<method>/<solver>-nfe<N>.json       schedule JSON
    <model>/samples/<method>/<solver>-nfe<N>.npz          samples NPZ
    <model>/metrics/<method>/<solver>-nfe<N>.json         metrics JSON
    summary.csv, plots/<model>-<plot>.png, report.html    what people look at
    logs/<the same paths>.log                              each job's log
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from snakemake.utils import validate

from adasched.edm import default_cache_dir, parse_spec
from adasched.errors import AdaschedError
from adasched.fid import INCEPTION_FILENAME, reference_resource
from adasched.io import read_json
from adasched.registry import MODELS, get_model
from adasched.samplers import SOLVERS as LIBRARY_SOLVERS
from adasched.samplers import steps_for_nfe
from adasched.stages import PROBED_METHODS, bind
from adasched.targets import GaussianMixture, PowerLawGaussian

__all__ = ["Sweep", "validate_config", "METHODS", "SOLVERS", "ANALYTIC_KINDS", "KINDS", "PLOTS", "CELL", "cell_path",
           "parse_cell"]

log = logging.getLogger(__name__)

#: Schedule methods the workflow sweeps (``adasched schedule --method``).
METHODS = ("edm", "loglinear", "kl-optimal", "score-optimal", "score-optimal-po", "solver-aware", "online")
#: Solvers the workflow can sweep: every solver of the library (the stochastic ones draw their noise per seed).
SOLVERS = tuple(LIBRARY_SOLVERS)
#: Model kinds whose exact solution is known (``gmm:``, ``powerlaw:`` SPECs of a ``model.json``).
ANALYTIC_KINDS = ("gmm", "powerlaw")
KINDS = ANALYTIC_KINDS + ("edm", "trained-digits")
#: The probe file of each cost, and the one each probed method reads (the predictor cost for ``-po``).
PROBE_FILES = {"corrector": "probes.h5", "predictor": "probes-po.h5"}
PROBES = {method: PROBE_FILES[cost] for method, cost in PROBED_METHODS.items()}
#: A model's reference solves of the fit latents (:func:`adasched.stages.fit_reference`), read by solver-aware cells.
REFERENCE_FILE = "fit-reference.h5"
#: Figures per model: ``plots/<model>-<name>.png``.
PLOTS = ("quality", "schedules", "lambda", "samples")
#: The one pattern of a cell's file (stage ``schedules``, ``samples`` or ``metrics``), relative to ``results``.
CELL = "{model}/{stage}/{method}/{solver}-nfe{nfe}.{ext}"
_EXT = {"schedules": "json", "samples": "npz", "metrics": "json"}
_CELL = re.compile(re.escape(CELL).replace(r"\{model\}", "(?P<model>[^/]+)")
                   .replace(r"\{stage\}", "(?P<stage>schedules|samples|metrics)")
                   .replace(r"\{method\}", "(?P<method>[^/]+)").replace(r"\{solver\}", "(?P<solver>[^/]+)")
                   .replace(r"\{nfe\}", r"(?P<nfe>\d+)").replace(r"\{ext\}", "(?:json|npz)") + "$")
#: Stages that run in a process of their own even where dispatch says local: long, Python-bound work that
#: would hold Snakemake's interpreter lock against every other job (see :func:`adasched.workflow.run_stage`).
_OWN_PROCESS = ("probe", "fit-reference", "train")


def validate_config(config: dict, schema: str | Path) -> None:
    """Check ``config`` against the workflow's JSON schema and fill in its defaults (Snakemake's ``validate``);
    a violation is one :class:`AdaschedError` line naming the key and, for an unknown key, the allowed ones."""
    rules = yaml.safe_load(Path(schema).read_text())
    error = best_match(Draft202012Validator(rules).iter_errors(config))
    if error is not None:
        where = ".".join(map(str, error.absolute_path)) or "config"
        if error.validator in ("additionalProperties", "unevaluatedProperties") and isinstance(error.instance, dict):
            allowed = list(error.schema.get("properties", {}))
            unknown = [k for k in error.instance if k not in allowed]
            raise AdaschedError(f"{where}: unknown key {', '.join(map(str, unknown))}; allowed: "
                                f"{', '.join(allowed) or 'none'}")
        raise AdaschedError(f"{where}: {error.message}")
    validate(config, str(schema))


def cell_path(results: str, stage: str, model: str, method: str, solver: str, nfe: int | str) -> str:
    """``<results>/<model>/<stage>/<method>/<solver>-nfe<N>.<json|npz>`` (wildcards such as ``{model}`` pass
    through, so this also makes the rules' patterns)."""
    return f"{results}/" + CELL.format(model=model, stage=stage, method=method, solver=solver, nfe=nfe,
                                       ext=_EXT[stage])


def parse_cell(path) -> dict:
    """``{"model", "method", "solver", "nfe"}`` of a cell file ``.../<model>/<stage>/<method>/<solver>-nfe<N>``."""
    m = _CELL.search(Path(path).as_posix())
    if not m:
        raise AdaschedError(f"{path} is not a cell file (<model>/<stage>/<method>/<solver>-nfe<N>.json|npz)")
    return {"model": m["model"], "method": m["method"], "solver": m["solver"], "nfe": int(m["nfe"])}


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
        for name, m in self.models.items():
            where = f"models.{name}"
            if m["kind"] in ANALYTIC_KINDS and (m["kind"] in m) == ("path" in m):
                raise AdaschedError(f"{where}: give the {m['kind']} target inline ({m['kind']}: ...) or as "
                                    f"path: FILE.json, exactly one of the two")
            if m["kind"] in ANALYTIC_KINDS:
                self._check_target(name)
            if m["kind"] == "trained-digits" and "train" not in m:
                raise AdaschedError(f"{where}: a trained-digits model needs a train: block")
            for solver, nfes in self.solvers(name).items():
                for nfe in nfes:
                    try:
                        steps_for_nfe(solver, nfe, **self.solver_options(solver))
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
        self._check_stage_options()

    def _check_target(self, model: str) -> None:
        """An analytic target must be one (weights summing to 1, matching dimensions, ...): checked here, so
        that the dry run refuses it, not the job that first loads it."""
        m = self.models[model]
        kind, where = m["kind"], f"models.{model}"
        if "path" in m:
            path = Path(m["path"])
            if not path.is_file():  # Snakemake names the missing input file itself
                return
            definition, source = read_json(path, f"{kind} target file"), f"{where}.path ({path})"
        else:
            definition, source = m[kind], f"{where}.{kind}"
        (GaussianMixture if kind == "gmm" else PowerLawGaussian).from_json(definition, source=source)

    def _check_stage_options(self) -> None:
        """Every option a rule will pass, bound to its stage's signature (types, names), before any job runs."""
        for model in self.models:
            for cost in self.probe_costs(model):
                self._bind("probe", self.probe_options(model, cost), f"probe (models.{model})")
            if "solver-aware" in self.methods(model):
                self._bind("fit-reference", self.reference_options(model), f"fit-reference (models.{model})")
            for method in self.methods(model):
                for solver in self.solvers(model):
                    self._bind("schedule", self.schedule_options(model, method, solver),
                               f"schedule (models.{model}, {method}, {solver})")
            for solver in self.solvers(model):
                self._bind("sample", self.sample_options(model, solver), f"sample (models.{model}, {solver})")
            self._bind("evaluate", self.evaluate_options(model), f"evaluate (models.{model})")
            if self.kind(model) == "trained-digits":
                self._bind("train", self.train_options(model), f"models.{model}.train")

    @staticmethod
    def _bind(stage: str, options: dict, where: str) -> None:
        try:
            bind(stage, options, partial=True)
        except AdaschedError as e:
            raise AdaschedError(f"{where}: {e}") from None

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
        return cell_path(self.results, stage, model, method, solver, nfe)

    def pattern(self, stage: str) -> str:
        """The rules' output pattern of a cell stage (``schedules``, ``samples``, ``metrics``), with wildcards."""
        return self.path(stage, "{model}", "{method}", "{solver}", "{nfe}")

    def log_pattern(self, stage: str) -> str:
        """The rules' log pattern of a cell stage: the cell's path under ``<results>/logs/``, ending ``.log``."""
        return cell_path(f"{self.results}/logs", stage, "{model}", "{method}", "{solver}", "{nfe}").rsplit(".", 1)[0] \
            + ".log"

    def in_thread(self, stage: str, method: str | None = None) -> bool:
        """Whether a local job of ``stage`` may run in a thread of the Snakemake process: not the long,
        Python-bound ones (probe, fit-reference, train, the solver-aware fit), which get a process of their own."""
        return stage not in _OWN_PROCESS and not (stage == "schedule" and method == "solver-aware")

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
                "checkpoint": alt(Path(p).name for p in self.edm_downloads())}

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
        source, _ = parse_spec(self.models[model]["edm"])
        stem = source[:-4] if source.endswith(".pkl") else source
        return source, stem if stem in MODELS else None

    def _edm_pickle(self, model: str) -> tuple[str, bool]:
        """``(path of the pickle, whether a rule downloads it)`` for an EDM model."""
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

    def download_folder(self) -> str:
        """Where the ``edm:`` loader caches downloads (:func:`adasched.edm.default_cache_dir`), which the
        ``download_edm`` rule fills; its files are named by the ``checkpoint`` wildcard."""
        return str(default_cache_dir())

    def download_model(self, name: str) -> str:
        """The model whose pickle the ``download_edm`` rule fetches as the file ``name`` of the download folder."""
        return {Path(p).name: m for p, m in self.edm_downloads().items()}[name]

    def trust_pickle(self, model: str) -> bool:
        return bool(self.models[model].get("trust_pickle", False))

    def _trust(self, model: str) -> dict:
        """``{"trust_pickle": True}`` for the stages that load ``model`` if the config trusts its pickle, else
        ``{}``."""
        return {"trust_pickle": True} if self.kind(model) == "edm" and self.trust_pickle(model) else {}

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
        """:func:`adasched.stages.train` options: the ``train`` block's network and learner settings as the
        stage's ``config`` (:class:`adasched.train.TrainConfig`), its ``device`` and ``threads``."""
        config = dict(self.models[model]["train"])
        run = {k: config.pop(k) for k in ("device", "threads") if k in config}
        return {"config": {"data": "digits", **config}, **run}

    # -------------------------------------------------------------------------------------------- probe

    def probe_options(self, model: str, cost: str) -> dict:
        """:func:`adasched.stages.probe` options for the ``corrector`` (``probes.h5``) or ``predictor`` cost: the
        file is built resumably (``resume``) up to ``samples`` per interval."""
        p = self.config["probe"]
        own = dict(p[cost])
        opts = {"model": self.spec(model), "data": self.data(model), "cost": cost, "grid": own.pop("grid"),
                "total_samples": own.pop("samples"), "batch": own.pop("batch", p["batch"]), **own,
                **{k: p[k] for k in ("spacing", "seed", "sigma_min", "sigma_max", "weighting", "device")},
                "resume": True}
        opts.update(self._trust(model))
        return opts

    def probe_costs(self, model: str) -> list[str]:
        """The probed costs of ``model``: always the corrector's (Lambda plot), the predictor's if swept."""
        return ["corrector"] + (["predictor"] if "score-optimal-po" in self.methods(model) else [])

    def data(self, model: str) -> str:
        m = self.models[model]
        default = {"trained-digits": "digits", "edm": "model"}.get(m["kind"], "target")
        return m.get("data", default)

    def probes_needed(self, model: str) -> list[str]:
        """Probe files of ``model``: always the corrector cost (Lambda plot), the predictor cost if swept."""
        return [f"{self.results}/{model}/{PROBE_FILES[cost]}" for cost in self.probe_costs(model)]

    # ----------------------------------------------------------------------------------------- schedule

    def reference_file(self, model: str) -> str:
        """The model's own solves of the fit latents, which its solver-aware schedules are fitted to."""
        return f"{self.results}/{model}/{REFERENCE_FILE}"

    def reference_options(self, model: str) -> dict:
        """:func:`adasched.stages.fit_reference` options of ``model``: the fit latents and range of its schedules."""
        s = self.config["schedule"]
        fit = s["solver_aware"]
        opts = {"model": self.spec(model), "fit_seeds": fit["fit_seeds"], "sigma_max": s["sigma_max"],
                "device": fit["device"], **fit["reference"]}
        opts.update(self._trust(model))
        return opts

    def schedule_inputs(self, model: str, method: str, solver: str, nfe: int | str) -> dict[str, str]:
        """Files a schedule reads: probes; for solver-aware the model, its reference solves and the solver-aware
        schedule of the next lower NFE this model sweeps for ``solver`` (a warm start), if any."""
        out = {}
        if method in PROBES:
            out["probes"] = f"{self.results}/{model}/{PROBES[method]}"
        if method in ("solver-aware", "online"):
            out["model"] = self.model_file(model)[0]
        if method == "solver-aware":
            out["reference"] = self.reference_file(model)
            lower = [n for n in self.solvers(model).get(solver, []) if n < int(nfe)]
            if lower:
                out["warm_start"] = self.path("schedules", model, method, solver, max(lower))
        return out

    @staticmethod
    def schedule_files(inputs) -> dict[str, str | None]:
        """The schedule stage's file options from a rule's named inputs (:meth:`schedule_inputs`; None if absent)."""
        return {k: inputs.get(k) for k in ("probes", "reference", "warm_start")}

    def solver_options(self, solver: str) -> dict:
        """The config's ``solver_options`` of ``solver`` (its keyword options: ``max_order``, ``S_churn``, ...)."""
        return dict(self.config.get("solver_options", {}).get(solver) or {})

    def schedule_options(self, model: str, method: str, solver: str) -> dict:
        """The :func:`adasched.stages.schedule` options that change a ``method`` schedule for ``solver``."""
        s = self.config["schedule"]
        opts: dict[str, Any] = {"solver_options": self.solver_options(solver)}
        if method == "online":  # the learned levels, their range included, come from the model file
            return {**opts, "model": self.spec(model)}
        opts.update(sigma_min=s["sigma_min"], sigma_max=s["sigma_max"])
        if method == "edm":
            opts["rho"] = s["rho"]
        if method == "solver-aware":
            fit = s["solver_aware"]
            opts.update(model=self.spec(model), device=fit["device"],
                        **{k: fit[k] for k in ("fit_seeds", "fit_iterations", "fit_budget", "fit_batch") if k in fit})
            opts.update(self._trust(model))
        return opts

    # ------------------------------------------------------------------------------------------- sample

    def sample_options(self, model: str, solver: str) -> dict:
        """The :func:`adasched.stages.sample` options of ``model``'s cells for ``solver``."""
        s = self.config["sample"]
        opts = {"model": self.spec(model), "num": s["num"], "seed_start": s["seed_start"], "dtype": s["dtype"],
                "device": s["device"], "solver_options": self.solver_options(solver)}
        opts.update({k: s[k] for k in ("batch", "class_label") if k in s})  # else the stage's defaults
        opts.update(self._trust(model))
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
        """The :func:`adasched.stages.evaluate` options for ``model`` (the rule adds the input files)."""
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

