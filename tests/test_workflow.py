"""The Snakemake workflow (Snakefile, rules/, scripts/, config.yaml, schemas/) and its helpers (adasched.workflow).

Fast unit tests of the helpers, dry runs of every shipped config, and one real end-to-end run of a tiny config
(1 analytic model, 2 schedules, 2 solvers, 2 NFE, 32 samples) after which three reruns are counted in
Snakemake's own plan (``snakemake -n --quiet rules``): adding one NFE, changing a probe setting, changing
nothing.  Snakemake runs as ``python -m snakemake`` with ``--cores 2`` in a temporary working directory.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from adasched.errors import AdaschedError
from adasched.probe import read_probes
from adasched.stages import bind
from adasched.workflow import run_here
from adasched.workflow import (KINDS, METHODS, PLOTS, SOLVERS, Sweep, metric_rows, parse_cell,
                               write_model_json, write_summary)

from slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)

ROOT = Path(__file__).resolve().parent.parent
SNAKEFILE = ROOT / "Snakefile"

MIX2D = {"weights": [0.2, 0.3, 0.1, 0.4], "means": [[-1.0, 0.5], [1.0, 0.8], [0.0, -1.0], [0.6, -0.2]],
         "variances": [[0.002, 0.01], [0.05, 0.02], [0.2, 0.1], [0.001, 0.004]]}
TINY = {
    "results": "results",
    "models": {"mix2d": {"kind": "gmm", "gmm": MIX2D}},
    "methods": ["edm", "score-optimal"],
    "solvers": {"euler": [3, 5], "heun": [3, 5]},
    "probe": {"corrector": {"grid": 20, "samples": 16}},
    "sample": {"num": 32, "batch": 16},
}


# ------------------------------------------------------------------------------------------------ helpers


def snakemake(workdir: Path, *args: str, config: dict | Path | None = None, check: bool = True):
    """``python -m snakemake -s Snakefile -d WORKDIR --cores 2 ARGS`` (a dict config is written to a file)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir), "--cores", "2", *args]
    if isinstance(config, dict):
        path = workdir / "config-test.yaml"
        path.write_text(yaml.safe_dump(config))
        config = path
    if config is not None:
        cmd += ["--configfile", str(config)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n"
                             f"{out.stderr[-5000:]}")
    return out


def plan(workdir: Path, config: dict | Path | None = None) -> dict[str, int]:
    """Snakemake's own plan: ``{rule: number of jobs}`` of a dry run (empty when there is nothing to do)."""
    out = snakemake(workdir, "-n", "--quiet", "rules", config=config)
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}
    block = text[text.index("Job stats:"):]
    counts = {}
    for line in block.splitlines()[3:]:
        name, _, count = line.strip().rpartition(" ")
        if not line.strip() or name.strip() == "total":
            break
        counts[name.strip()] = int(count)
    return counts


def validated(config: dict) -> dict:
    """``config`` after the workflow's schema (defaults filled in), as the Snakefile sees it."""
    from snakemake.utils import validate

    config = copy.deepcopy(config)
    validate(config, str(ROOT / "schemas" / "config.schema.yaml"))
    return config


# -------------------------------------------------------------------------------------------- unit tests


def test_every_stage_option_the_sweep_hands_a_rule_binds_to_the_stage():
    """What the rules pass (the Sweep's options plus the files and wildcards a rule adds) is exactly what the stage
    functions take: bound to their signatures, with the wildcards' text turned into numbers."""
    sweep = Sweep(validated(dict(TINY, solver_options={"ipndm": {"max_order": 3}})))
    for method in METHODS:
        got = bind("schedule", dict(method=method, solver="ipndm", nfe="5", probes="p.h5", output="o",
                                    **sweep.schedule_options("mix2d", method, "ipndm")))
        assert got["nfe"] == 5 and got["solver_options"] == {"max_order": 3}
    got = bind("sample", dict(schedule="s.json", solver="ipndm", output="o", **sweep.sample_options("mix2d", "ipndm")))
    assert got["solver_options"] == {"max_order": 3} and got["batch"] == 16
    bind("evaluate", dict(samples="s.npz", output="o", **sweep.evaluate_options("mix2d")))
    for cost in ("corrector", "predictor"):
        assert bind("probe", dict(output="o", **sweep.probe_options("mix2d", cost)))["resume"] is True
    digits = Sweep(validated(dict(TINY, models={"d": {"kind": "trained-digits", "train": {"steps": 7}}})))
    got = bind("train", dict(output="o", **digits.train_options("d")))
    assert got["config"].steps == 7 and got["config"].online_schedule is True and got["threads"] == 1
    bind("schedule", dict(method="online", solver="heun", nfe=5, output="o",
                          **digits.schedule_options("d", "online", "heun")))
    bind("evaluate", dict(samples="s.npz", output="o", classifier="c", **digits.evaluate_options("d")))


def test_a_sample_option_travels_from_the_config_to_the_stage():
    """sample.class_label: schema -> Sweep -> the stage's keyword (the four places a sample option lives)."""
    sweep = Sweep(validated(dict(TINY, sample={"num": 8, "batch": 4, "class_label": 1})))
    got = bind("sample", dict(schedule="s.json", solver="heun", output="o", **sweep.sample_options("mix2d", "heun")))
    assert (got["class_label"], got["batch"], got["num"]) == (1, 4, 8)
    unset = bind("sample", dict(schedule="s.json", solver="heun", output="o",
                                **Sweep(validated(dict(TINY, sample={"num": 8}))).sample_options("mix2d", "heun")))
    assert unset["class_label"] is None and unset["batch"] == 256  # not in the config: the stage's defaults


def test_train_runs_through_the_rule_entry_with_its_own_config(tmp_path):
    """The train rule passes the stage's own ``config`` (a TrainConfig as a mapping) beside the workflow's config,
    in this process and as JSON to a process of its own (what the default's digits model takes)."""
    from adasched.train import load_trained
    from adasched.workflow.run import _to_json, main

    digits = Sweep(validated(dict(TINY, models={"d": {"kind": "trained-digits",
                                                      "train": {"steps": 2, "batch": 4, "log_every": 1}}})))
    options = {**digits.train_options("d"), "output": str(tmp_path / "here.safetensors")}
    assert run_here("train", tmp_path / "here.log", {}, **options) == options["output"]
    child = dict(options, output=str(tmp_path / "child.safetensors"))
    assert main(["train", str(tmp_path / "child.log"), "{}", _to_json(bind("train", child))]) == 0
    assert load_trained(tmp_path / "child.safetensors").meta["training"]["step"] == 2
    assert "train: 2/2 (100%)" in (tmp_path / "child.log").read_text()


def test_bind_refuses_what_the_stage_does_not_take():
    with pytest.raises(AdaschedError, match=r"^sample: unknown option bacth; valid: model, schedule"):
        bind("sample", {"bacth": 3}, partial=True)
    with pytest.raises(AdaschedError, match=r"^schedule: option nfe expects int or nothing \(null\), got 'five'$"):
        bind("schedule", {"nfe": "five"}, partial=True)
    with pytest.raises(AdaschedError, match=r"^sample: option batch expects int, got True$"):
        bind("sample", {"batch": True}, partial=True)
    with pytest.raises(AdaschedError, match=r"^probe: missing option output"):
        bind("probe", {"model": "gmm:m.json", "grid": 3})


def test_schema_lists_the_library_choices():
    from adasched.samplers import SOLVERS as LIBRARY_SOLVERS
    from adasched.stages import METHODS as STAGE_METHODS

    schema = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
    assert schema["$defs"]["method"]["enum"] == list(METHODS)
    assert set(METHODS) <= set(STAGE_METHODS)
    assert schema["$defs"]["solver"]["enum"] == list(SOLVERS)
    options = schema["properties"]["solver_options"]["properties"]
    assert list(options) == list(LIBRARY_SOLVERS)
    for name, solver in LIBRARY_SOLVERS.items():  # each solver's keyword options, no more, no fewer
        assert list(options[name].get("properties", {})) == list(solver.options), name
    assert schema["$defs"]["model"]["properties"]["kind"]["enum"] == list(KINDS)
    assert set(SOLVERS) <= set(LIBRARY_SOLVERS)


def test_schema_is_strict_everywhere():
    """Every object schema names its keys and refuses others (maps of user names refuse bad names).

    The one shared fragment, ``$defs.slurm_keys`` (the SLURM options, used both as ``dispatch.slurm`` and, with
    ``executor`` added, as an entry of ``dispatch.stages``), is open on its own and closed where it is used, by
    ``unevaluatedProperties: false``.
    """
    schema = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
    fragment = "#/$defs/slurm_keys"
    uses = []

    def walk(node, where):
        if isinstance(node, dict):
            if node.get("$ref") == fragment:
                uses.append(where)
                assert node.get("unevaluatedProperties") is False, f"{where} uses {fragment} without closing it"
            elif where != "schema.$defs.slurm_keys" and (node.get("type") == "object" or "properties" in node):
                assert "additionalProperties" in node, f"{where} lacks additionalProperties"
                if node["additionalProperties"] is not False:
                    assert "propertyNames" in node, f"{where}: open object without propertyNames"
            for k, v in node.items():
                if k != "if":  # a condition (kind == ...), not a definition
                    walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(schema, "schema")
    assert len(uses) == 2, uses


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(extra=1), "'extra' was unexpected"),
    (lambda c: c["probe"].update(grids=3), "'grids' was unexpected"),
    (lambda c: c["models"]["mix2d"].update(train={}), "'train' is not one of"),
    (lambda c: c.update(methods=["edm", "karras"]), "'karras' is not one of"),
    (lambda c: c["solvers"].update(heun=["5"]), "'5' is not of type 'integer'"),
    (lambda c: c.update(dispatch={"executor": "slurm", "slurm": {"gpus": 1}}), "'gpus' was unexpected"),
    (lambda c: c.update(dispatch={"stages": {"sample": {"executor": "cloud"}}}), "'cloud' is not one of"),
    (lambda c: c.update(dispatch={"stages": {"sample": {"mem": 3}}}), "'mem' was unexpected"),
    (lambda c: c.update(dispatch={"stages": {"plot": {}}}), "'plot' is not one of"),
])
def test_schema_refuses(change, message):
    from snakemake.exceptions import WorkflowError

    config = copy.deepcopy(TINY)
    change(config)
    with pytest.raises(WorkflowError) as e:
        validated(config)
    assert message in str(e.value.args[1] if len(e.value.args) > 1 else e.value)


def test_sweep_refuses_an_unreachable_nfe():
    config = validated(dict(TINY, solvers={"euler": [3], "heun": [4]}))
    with pytest.raises(AdaschedError, match=r"solvers\.heun: solver 'heun' cannot spend exactly 4 .*3, 5"):
        Sweep(config)
    config = validated(dict(TINY, models={"m": {"kind": "gmm", "gmm": MIX2D, "solvers": {"heun": [6]}}}))
    with pytest.raises(AdaschedError, match=r"models\.m\.solvers\.heun: .*exactly 6"):
        Sweep(config)


def test_sweep_refuses_ambiguous_targets_and_ranges():
    with pytest.raises(AdaschedError, match="exactly one of the two"):
        Sweep(validated(dict(TINY, models={"m": {"kind": "gmm", "gmm": MIX2D, "path": "m.json"}})))
    with pytest.raises(AdaschedError, match="exactly one of the two"):
        Sweep(validated(dict(TINY, models={"m": {"kind": "powerlaw"}})))
    with pytest.raises(AdaschedError, match="inside the probed range"):
        Sweep(validated(dict(TINY, schedule={"sigma_max": 100.0})))
    with pytest.raises(AdaschedError, match="report.samples: heun at NFE 7 is not in the sweep"):
        Sweep(validated(dict(TINY, report={"samples": {"solver": "heun", "nfe": 7}})))
    with pytest.raises(AdaschedError, match="models.mix2d: method online needs a model trained with the online"):
        Sweep(validated(dict(TINY, methods=["edm", "online"])))
    with pytest.raises(AdaschedError, match="models.d: method online needs"):
        Sweep(validated(dict(TINY, methods=["online"],
                             models={"d": {"kind": "trained-digits", "train": {"online_schedule": False}}})))


def test_sweep_cells_paths_and_params():
    sweep = Sweep(validated(TINY))
    assert sweep.cells("mix2d") == [(m, s, n) for m in ("edm", "score-optimal") for s in ("euler", "heun")
                                    for n in (3, 5)]
    assert sweep.path("samples", "mix2d", "edm", "heun", 5) == "results/mix2d/samples/edm/heun-nfe5.npz"
    assert sweep.spec("mix2d") == "gmm:results/mix2d/model.json"
    # A schedule's params hold what changes it, and only that: rho reaches edm only, probes never closed forms.
    assert sweep.schedule_options("mix2d", "edm", "heun")["rho"] == 7.0
    assert "rho" not in sweep.schedule_options("mix2d", "score-optimal", "heun")
    assert sweep.pattern("samples") == "results/{model}/samples/{method}/{solver}-nfe{nfe}.npz"
    assert sweep.log_pattern("metrics") == "results/logs/{model}/metrics/{method}/{solver}-nfe{nfe}.log"
    assert parse_cell(sweep.path("metrics", "mix2d", "edm", "heun", 5)) == \
        {"model": "mix2d", "method": "edm", "solver": "heun", "nfe": 5}
    assert sweep.schedule_inputs("mix2d", "edm", "euler", 3) == {}
    assert sweep.schedule_inputs("mix2d", "score-optimal-po", "euler", 3) == {"probes": "results/mix2d/probes-po.h5"}
    solver_aware = {"probes": "results/mix2d/probes.h5", "model": "results/mix2d/model.json",
                    "reference": "results/mix2d/fit-reference.h5"}
    # the lowest NFE of a solver starts from scratch; each higher one from the solver-aware schedule below it
    assert sweep.schedule_inputs("mix2d", "solver-aware", "euler", "3") == solver_aware
    assert sweep.schedule_inputs("mix2d", "solver-aware", "euler", "5") == \
        {**solver_aware, "warm_start": "results/mix2d/schedules/solver-aware/euler-nfe3.json"}
    assert sweep.reference_options("mix2d") == {"model": "gmm:results/mix2d/model.json", "fit_seeds": 64,
                                                "sigma_max": 80.0, "device": "auto"}
    assert sweep.probes_needed("mix2d") == ["results/mix2d/probes.h5"]
    assert sweep.evaluate_inputs("mix2d") == {"model": "results/mix2d/model.json"}
    assert sweep.report_cell("mix2d") == ("euler", 3)
    assert sweep.targets()[0] == "results/summary.csv" and len(sweep.plots()) == len(PLOTS)


def test_sweep_non_analytic_models():
    config = validated({
        "models": {"digits": {"kind": "trained-digits", "train": {"steps": 10}},
                   "cifar": {"kind": "edm", "edm": "edm-cifar10-32x32-cond-vp"}},
        "methods": ["edm"], "solvers": {"heun": [35]},
        "evaluate": {"reference": {"solver": "heun", "nfe": 63}, "fid": {"resources": "res/fid"}},
    })
    sweep = Sweep(config)
    assert sweep.spec("digits") == "adasched:results/digits/model.safetensors"
    assert sweep.data("digits") == "digits" and sweep.data("cifar") == "model"
    assert sweep.evaluate_inputs("digits") == {"reference": "results/digits/samples/edm/heun-nfe63.npz",
                                               "classifier": "results/digits-classifier.safetensors"}
    assert sweep.evaluate_options("digits")["digits_fd"] is True
    opts = sweep.evaluate_options("cifar")
    assert (opts["fid"], opts["fid_ref"], opts["num_images"], opts["offline"]) == \
        ("legacy_tensorflow", "edm:cifar10-32x32", 50000, True)
    assert sweep.fid_files() == ["res/fid/cifar10-32x32.npz", "res/fid/inception-2015-12-05.pt"]
    assert sweep.checkpoint("cifar").endswith("edm-cifar10-32x32-cond-vp.pkl")
    assert list(sweep.edm_downloads().values()) == ["cifar"]


def test_write_model_json_validates(tmp_path):
    out = tmp_path / "m.json"
    write_model_json("gmm", out, definition=MIX2D)
    assert json.loads(out.read_text())["weights"] == MIX2D["weights"]
    write_model_json("powerlaw", out, definition={"shape": [1, 4, 4], "alpha": 2.0})
    with pytest.raises(AdaschedError, match="must sum to 1"):
        write_model_json("gmm", tmp_path / "bad.json", definition=dict(MIX2D, weights=[0.5, 0.3, 0.1, 0.4]))
    assert not (tmp_path / "bad.json").exists()


def test_summary_rows_come_from_the_paths(tmp_path):
    from adasched.io import write_json

    files = []
    for method, nfe, value in (("edm", 5, 0.5), ("loglinear", 5, 0.25), ("edm", 3, 1.0)):
        p = tmp_path / "results" / "m" / "metrics" / method / f"heun-nfe{nfe}.json"
        write_json(p, {"metrics": {"ode_rmse": value, "target_sliced_w2": value / 2}, "num_samples": 8})
        files.append(p)
    assert parse_cell(files[0]) == {"model": "m", "method": "edm", "solver": "heun", "nfe": 5}
    with pytest.raises(AdaschedError, match="not a cell file"):
        parse_cell(tmp_path / "x.json")
    assert len(metric_rows(files)) == 6
    write_summary(files, tmp_path / "summary.csv")
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [(r["metric"], r["method"], r["nfe"]) for r in rows[:3]] == \
        [("ode_rmse", "edm", "3"), ("ode_rmse", "edm", "5"), ("ode_rmse", "loglinear", "5")]
    assert float(rows[0]["value"]) == 1.0 and rows[0]["num_samples"] == "8"


# --------------------------------------------------------------------------------------------- dry runs


def _expected_plan(config: dict) -> dict[str, int]:
    sweep = Sweep(validated(config))
    cells = sum(len(sweep.cells(m)) for m in sweep.models)
    analytic = [m for m in sweep.models if sweep.exact_model(m)]
    trained = sweep.kind_models("trained-digits")
    references = {f for m in sweep.models for f in sweep.reference_samples(m)}  # extra high-NFE cells
    return {"model_json": len(analytic), "train": len(trained), "classifier": min(1, len(trained)),
            "probe_corrector": len(sweep.models),
            "probe_predictor": sum(len(sweep.probes_needed(m)) - 1 for m in sweep.models),
            "fit_reference": sum("solver-aware" in sweep.methods(m) for m in sweep.models),
            "schedule": cells + len(references), "sample": cells + len(references), "evaluate": cells,
            "summary": 1, "report": 1, "all": 1, **{f"plot_{p}": len(sweep.models) for p in PLOTS}}


def test_dry_run_default_config(tmp_path):
    """`snakemake` from the repository root: the embedded default plans every cell of config.yaml."""
    (tmp_path / "config").symlink_to(ROOT / "config")  # the default's relative path: config/mixture-64d.json
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    got = plan(tmp_path)  # no --configfile: the Snakefile loads config.yaml itself
    want = {k: v for k, v in _expected_plan(config).items() if v}
    assert got == want and want["train"] == 1  # the digits model is part of the default


def test_dry_run_edm_configs(tmp_path):
    """The GPU configs (network needed to run them) plan downloads, FID resources and FID evaluation."""
    from concurrent.futures import ThreadPoolExecutor

    paths = sorted((ROOT / "config").glob("edm-*.yaml"))
    assert {p.stem for p in paths} >= {"edm-cifar10", "edm-ffhq-64", "edm-afhqv2-64", "edm-imagenet-64"}
    dirs = [tmp_path / p.stem for p in paths]
    for d in dirs:
        d.mkdir()
    with ThreadPoolExecutor(2) as pool:  # two dry runs at a time, one per core
        plans = list(pool.map(plan, dirs, paths))
    for path, got in zip(paths, plans):
        config = yaml.safe_load(path.read_text())
        sweep = Sweep(validated(config))
        cells = sum(len(sweep.cells(m)) for m in sweep.models)
        assert got["download_edm"] == len(sweep.models) and got["fid_resources"] == 1, path.name
        assert got["sample"] == got["evaluate"] == cells, path.name
        assert config["sample"]["num"] >= 50000
        for m in sweep.models:
            opts = sweep.evaluate_options(m)
            assert (opts["fid"], opts["num_images"], opts["offline"]) == ("legacy_tensorflow", 50000, True)


def test_dry_run_digits_model(tmp_path):
    """A trained-digits model slots in: train and classifier jobs, digits data, reference samples."""
    config = dict(TINY, models={"digits": {"kind": "trained-digits", "train": {"steps": 20}}},
                  evaluate={"reference": {"solver": "heun", "nfe": 35}})
    got = plan(tmp_path, config)
    assert got["train"] == 1 and got["classifier"] == 1 and "model_json" not in got
    assert got["sample"] == 8 + 1  # the sweep and the 35-NFE reference


@pytest.mark.parametrize("change, line", [
    ({"solvers": {"heun": [4]}}, "solvers.heun: solver 'heun' cannot spend exactly 4 evaluations"),
    ({"sample": {"nmu": 3}},
     "sample: unknown key nmu; allowed: num, seed_start, batch, class_label, dtype, device, keep"),
    ({"sample": {"batch": "many"}}, "sample.batch: 'many' is not of type 'integer'"),
    ({"sample": {"class_label": -1}}, "sample.class_label: -1 is less than the minimum of 0"),
    ({"solver_options": {"ipndm": {"max_ordr": 3}}}, "solver_options.ipndm: unknown key max_ordr; allowed: max_order"),
    ({"solver_options": {"ipndm": {"max_order": "3"}}}, "solver_options.ipndm.max_order: '3' is not of type 'integer'"),
    ({"solver_options": {"heun": {"S_churn": 1}}}, "solver_options.heun: unknown key S_churn; allowed: none"),
    ({"bogus": 1}, "config: unknown key bogus; allowed: results, gpus, models"),
    ({"models": {"m": {"kind": "gmm", "gmm": dict(MIX2D, weights=[0.2, 0.3, 0.1, 0.5])}}},
     "models.m.gmm: 'weights' must sum to 1"),
])
def test_config_errors_stop_the_dry_run_in_one_line(tmp_path, change, line):
    """A bad config fails `snakemake -n` with one line naming the key, before any job: the schema's errors, the
    stages' options and the analytic targets are all checked while the plan is built."""
    out = snakemake(tmp_path, "-n", config=dict(TINY, **change), check=False)
    assert out.returncode != 0
    errors = [ln for ln in (out.stdout + out.stderr).splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith("adasched: config error: ") and line in errors[0], errors
    assert "Traceback" not in out.stderr and not (tmp_path / "results").exists()


def test_lint(tmp_path):
    """`snakemake --lint`: the only lint left is "Specify a conda environment or container for each rule" (of the
    script rules; `run:` rules cannot have one), justified in the Snakefile (the workflow runs in the project's pip
    venv; see docs/workflow.md)."""
    out = snakemake(tmp_path, "--lint", config=dict(TINY, models={
        "m": {"kind": "gmm", "gmm": MIX2D}, "d": {"kind": "trained-digits", "train": {}},
        "e": {"kind": "edm", "edm": "edm-cifar10-32x32-cond-vp"}}, evaluate={"fid": {}}), check=False)
    text = out.stdout + out.stderr
    assert "Lints for rule classifier" in text and "Lints for rule download_edm" in text  # every rule was linted
    lints = set(re.findall(r"^\s+\* (.+?):$", text, flags=re.M))
    assert lints <= {"Specify a conda environment or container for each rule."}, text[-3000:]


# ----------------------------------------------------------------------------- a real run, then reruns


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real end-to-end run of the tiny config (about a minute on 2 cores)."""
    workdir = tmp_path_factory.mktemp("tiny")
    snakemake(workdir, config=TINY)
    return workdir


def test_end_to_end_outputs(tiny_run):
    results = tiny_run / "results"
    rows = list(csv.DictReader(open(results / "summary.csv")))
    assert {(r["method"], r["solver"], int(r["nfe"])) for r in rows} == \
        {(m, s, n) for m in TINY["methods"] for s in TINY["solvers"] for n in (3, 5)}
    assert {r["metric"] for r in rows} == {"ode_rmse", "target_sliced_w2"}
    assert all(float(r["value"]) > 0 and r["num_samples"] == "32" for r in rows)
    for plot in PLOTS:
        assert (results / "plots" / f"mix2d-{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (results / "report.html").read_text()
    assert all(f"plots/mix2d-{p}.png" in report for p in PLOTS) and 'href="summary.csv"' in report
    schedule = json.loads((results / "mix2d/schedules/score-optimal/heun-nfe5.json").read_text())
    assert schedule["nfe"] == 5 and schedule["sigmas"][-1] == 0.0 and schedule["params"]["probe_intervals"] == 20
    # Long stages log their progress into the rules' log files, which name the executor.
    probe_log = (results / "logs/mix2d/probes.log").read_text()
    assert "[executor: local]" in probe_log and "now has 16 samples per interval" in probe_log
    assert "probe: 16/16 (100%)" in probe_log
    assert "sample: 32/32 (100%)" in (results / "logs/mix2d/samples/edm/euler-nfe3.log").read_text()


def test_rerun_nothing_changed(tiny_run):
    assert plan(tiny_run, TINY) == {}


AGGREGATES = {"summary", "plot_quality", "plot_schedules", "plot_samples", "plot_lambda", "report", "all"}


def test_rerun_one_more_nfe(tiny_run):
    """Adding one NFE schedules only that NFE's schedule, sample and metric jobs, plus the aggregates."""
    config = copy.deepcopy(TINY)
    config["solvers"]["euler"].append(7)
    got = plan(tiny_run, config)
    n = len(TINY["methods"])
    assert {k: got.pop(k) for k in ("schedule", "sample", "evaluate")} == {"schedule": n, "sample": n, "evaluate": n}
    assert set(got) <= AGGREGATES and "plot_lambda" not in got
    # The samples figure shows the middle NFE of the sweep: it is redone exactly when that cell moved.
    moved = Sweep(validated(config)).report_cell("mix2d") != Sweep(validated(TINY)).report_cell("mix2d")
    assert moved and got.get("plot_samples") == 1
    assert got["summary"] == got["report"] == 1


def test_rerun_probe_setting(tiny_run):
    """Changing a probe setting reruns the probe and what depends on it (score-optimal cells), nothing else."""
    config = copy.deepcopy(TINY)
    config["probe"]["corrector"]["samples"] = 24
    got = plan(tiny_run, config)
    probed = sum(len(v) for v in TINY["solvers"].values())  # score-optimal cells: every solver and NFE
    assert {k: got.pop(k) for k in ("probe_corrector", "schedule", "sample", "evaluate")} == \
        {"probe_corrector": 1, "schedule": probed, "sample": probed, "evaluate": probed}
    assert set(got) <= AGGREGATES and "model_json" not in got


def test_slurm_executor_gives_the_local_results(tiny_run, slurm_cluster, tmp_path):
    """The tiny config with `dispatch: {executor: slurm}` on the test cluster: probe, sample and evaluate run as
    SLURM jobs (each sample as a 2-task array of seed shards), schedule stays local; every sample, probe and
    metric is the local run's, bit for bit, and each rule's log names its SLURM jobs."""
    config = copy.deepcopy(TINY)
    config["dispatch"] = {"executor": "slurm", "log_dir": str(tmp_path / "slurm-logs"), "poll_s": 0.5,
                          "sample_shards": 2,
                          "slurm": {"gpus_per_job": 0, "cpus_per_task": 1, "mem_gb": 1, "time_min": 5,
                                    "signal_delay_s": 30},
                          "stages": {"schedule": {"executor": "local"}}}
    snakemake(tmp_path, config=config)
    local, slurm = tiny_run / "results", tmp_path / "results"

    def values(results):
        return {(r["model"], r["method"], r["solver"], r["nfe"], r["metric"]): r["value"]
                for r in csv.DictReader(open(results / "summary.csv"))}

    assert values(slurm) == values(local) and len(values(local)) == 16
    for f in sorted(local.glob("mix2d/samples/*/*.npz")):
        with np.load(f) as a, np.load(slurm / f.relative_to(local)) as b:
            assert sorted(a.files) == sorted(b.files)
            assert all(np.array_equal(a[k], b[k]) for k in a.files if k != "provenance"), f
    p, q = read_probes(local / "mix2d/probes.h5"), read_probes(slurm / "mix2d/probes.h5")
    assert np.array_equal(p.sum, q.sum) and np.array_equal(p.sumsq, q.sumsq) and np.array_equal(p.count, q.count)
    probe_log = (slurm / "logs/mix2d/probes.log").read_text()
    assert "[executor: slurm]" in probe_log and re.search(r"submitted SLURM job \d+; stdout \S+", probe_log)
    sample_log = (slurm / "logs/mix2d/samples/edm/heun-nfe5.log").read_text()
    assert re.search(r"submitted SLURM job array \d+ \(2 tasks", sample_log), sample_log
    assert "[executor: local]" in (slurm / "logs/mix2d/schedules/edm/heun-nfe5.log").read_text()
    assert not list(slurm.glob("mix2d/samples/*/.*.shards"))
