"""adasched.dispatch: stages in this process and as real SLURM jobs (a one-node SLURM, tests/slurm_cluster.py),
through the workflow's entry (adasched.workflow.run_here) and as :class:`adasched.dispatch.Resumable` jobs.

The SLURM tests need Debian's slurm-wlm and munge (.ci/slurm-setup.sh installs them); without them they FAIL
with the install command, they are never skipped.  Interrupted jobs are compared bit for bit with
uninterrupted runs.  A job is interrupted or slowed down through its stage's progress callback: it raises
after some work, or sleeps after each batch in its first run only (``SLURM_RESTART_COUNT`` unset), so the
resumed run is quick.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from adasched import dispatch, stages
from adasched.cli import main as cli
from adasched.errors import AdaschedError
from adasched.probe import read_probes
from adasched.references import read_reference
from adasched.workflow import run_here
from slurm_cluster import slurm_cluster  # noqa: F401  (the session fixture)

TESTS = Path(__file__).resolve().parent
MIXTURE = {"weights": [0.3, 0.7], "means": [[-1.0, 0.0], [1.0, 0.5]], "variances": [[0.01, 0.1], [0.05, 0.02]]}
SAMPLE_KEYS = ("samples", "latents", "seeds", "sigmas", "nfe", "solver", "method", "provenance")
PROBE_FIELDS = ("sigmas", "count", "sum", "sumsq", "seed_start", "next_seed", "cost", "weighting", "model", "data",
                "meta")


# ------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 2-D mixture and two Heun schedules (absolute paths: SLURM jobs run them too)."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "mixture.json").write_text(json.dumps(MIXTURE))
    for nfe in (9, 11):
        assert cli(["schedule", "--method", "edm", "--solver", "heun", "--nfe", str(nfe),
                    "-o", str(d / f"heun-{nfe}.json")]) == 0
    return d


def sample_options(inputs, output, nfe=9, num=48, batch=8):
    return {"model": f"gmm:{inputs / 'mixture.json'}", "schedule": str(inputs / f"heun-{nfe}.json"),
            "solver": "heun", "num": num, "batch": batch, "device": "cpu", "output": str(output)}


def probe_options(inputs, output, samples=48, batch=8):
    """The workflow's probe: resumable, up to ``samples`` per interval."""
    return {"model": f"gmm:{inputs / 'mixture.json'}", "grid": 12, "total_samples": samples, "batch": batch,
            "device": "cpu", "resume": True, "output": str(output)}


def job(stage, options, **extra) -> dispatch.Resumable:
    """The stage as the workflow hands it to the dispatcher (``extra``: e.g. a progress callback)."""
    return dispatch.Resumable(stages.STAGES[stage], stages.bind(stage, options) | extra, options["output"])


def slurm_config(tmp_path, **slurm):
    return {"dispatch": {"executor": "slurm", "log_dir": str(tmp_path / "slurm-logs"), "poll_s": 0.5,
                         "slurm": {"gpus_per_job": 0, "cpus_per_task": 1, "mem_gb": 1, "time_min": 5,
                                   "signal_delay_s": 30, **slurm}}}


def assert_same_samples(a, b):
    with np.load(a) as x, np.load(b) as y:
        assert sorted(x.files) == sorted(SAMPLE_KEYS) == sorted(y.files)
        for k in SAMPLE_KEYS:
            assert np.array_equal(x[k], y[k]), k  # bit for bit (float arrays compared exactly)


def assert_same_probes(a, b, runs=True):
    p, q = read_probes(a), read_probes(b)
    for f in PROBE_FIELDS:
        assert np.array_equal(getattr(p, f), getattr(q, f)) if isinstance(getattr(p, f), np.ndarray) \
            else getattr(p, f) == getattr(q, f), f
    if runs:
        assert np.array_equal(p.runs, q.runs) and p.run_info == q.run_info


def covered_once(runs: np.ndarray, stop: int) -> bool:
    """The probe runs' seed ranges [first, done) tile [0, stop) without gap or overlap."""
    spans = sorted((int(a), int(b)) for a, b, _ in runs)
    return spans[0][0] == 0 and spans[-1][1] == stop and all(x[1] == y[0] for x, y in zip(spans, spans[1:]))


#: What a requeued run logs.  Usually it resumes; but submitit leaves through SystemExit raised in its
#: signal handler, which Python swallows when the signal lands in a weakref callback or __del__ ("Exception
#: ignored in ..."): the first run then goes on until SLURM kills it (KillWait) and may finish everything,
#: and the requeued run finds the output with its record and stops.  Both end with the same output.
RESUMED = re.compile(r"(probe|sample): resuming|is already made from the same inputs")


def batches_on_disk(output) -> int:
    return len(list(dispatch.partial_dir(output).glob("batch-*.npz")))


class Interrupted(Exception):
    pass


class StopAfter:
    """A progress callback that raises once ``n`` samples are done, as a killed job would stop (in this process)."""

    def __init__(self, n=16):
        self.n = n

    def __call__(self, task, done, total):
        if done >= self.n:
            raise Interrupted(f"stopped after {done}")


class Slow:
    """A progress callback that logs and sleeps after each batch in a job's first run, so that a test can
    interrupt it mid-way (picklable: SLURM jobs import it from tests/)."""

    def __init__(self, delay=0.5):
        self.delay = delay

    def __call__(self, task, done, total):
        logging.getLogger("adasched").info("%s: %d/%d", task, done, total)
        if not os.environ.get("SLURM_RESTART_COUNT"):
            time.sleep(self.delay)


def write_output(item):
    """A map shard for the tests: note the call in ``calls_dir/calls.txt``, write ``item['out']`` atomically.

    (The calls file is named through its folder: a file an item names is an input, hashed into its digest.)
    """
    from adasched.io import write_json

    with open(Path(item["calls_dir"]) / "calls.txt", "a") as f:
        f.write(f"{item['x']}\n")
    write_json(item["out"], {"x": item["x"], "input": Path(item["input"]).read_text()})
    return item["x"]


def square(x):
    return x * x


# --------------------------------------------------------------------------------- options and config


def test_slurm_options_are_checked_and_mapped():
    with pytest.raises(AdaschedError, match=r"dispatch.slurm: unknown key\(s\) gpus; valid: partition"):
        dispatch.SlurmOptions.from_dict({"gpus": 1})
    with pytest.raises(AdaschedError, match="signal_delay_s .120. must be shorter than the time limit"):
        dispatch.SlurmOptions.from_dict({"time_min": 2})
    with pytest.raises(AdaschedError, match="setup: expected a list of shell lines"):
        dispatch.SlurmOptions.from_dict({"setup": "module load cuda"})
    p = dispatch.SlurmOptions.from_dict({"partition": "gpu", "gpus_per_job": 2, "time_min": 30,
                                         "setup": ["module load x"], "array_parallelism": 3,
                                         "additional": {"qos": "high"}}).executor_parameters("n")
    assert p["slurm_partition"] == "gpu" and p["gpus_per_node"] == 2 and p["timeout_min"] == 30
    assert p["slurm_setup"] == ["export HDF5_USE_FILE_LOCKING=FALSE", "module load x"]
    assert p["slurm_additional_parameters"] == {"requeue": True, "qos": "high"} and p["slurm_array_parallelism"] == 3
    assert "gpus_per_node" not in dispatch.SlurmOptions(gpus_per_job=0).executor_parameters("n")


def test_dispatcher_from_config():
    assert dispatch.Dispatcher.from_config({"results": "res"}).executor == "local"
    cfg = {"results": "res", "dispatch": {"executor": "slurm", "slurm": {"time_min": 240},
                                          "stages": {"sample": {"time_min": 30}, "schedule": {"executor": "local"}}}}
    d = dispatch.Dispatcher.from_config(cfg, stage="sample")
    assert (d.executor, d.slurm.time_min, d.log_dir) == ("slurm", 30, Path("res/logs/slurm").absolute())
    assert dispatch.Dispatcher.from_config(cfg, stage="schedule").executor == "local"
    assert dispatch.Dispatcher.from_config(cfg, stage="probe").slurm.time_min == 240
    with pytest.raises(AdaschedError, match="dispatch.executor: unknown executor 'pbs'; valid: local, slurm, debug"):
        dispatch.Dispatcher.from_config({"dispatch": {"executor": "pbs"}})
    with pytest.raises(AdaschedError, match=r"dispatch: unknown key\(s\) partition"):
        dispatch.Dispatcher.from_config({"dispatch": {"partition": "gpu"}})


# ------------------------------------------------------------------------------------ in this process


def test_local_stages_write_what_the_cli_writes(inputs, tmp_path):
    so, po = sample_options(inputs, tmp_path / "s.npz"), probe_options(inputs, tmp_path / "p.h5")
    assert cli(["sample", *[f"--{k.replace('_', '-')}={v}" for k, v in so.items() if k != "output"],
                "-o", str(tmp_path / "cli.npz")]) == 0
    assert cli(["probe", "--model", po["model"], "--grid", "12", "--samples", "48", "--batch", "8", "--device", "cpu",
                "-o", str(tmp_path / "cli.h5")]) == 0
    assert run_here("sample", tmp_path / "s.log", {}, **so) == str(tmp_path / "s.npz")
    run_here("probe", tmp_path / "p.log", {"dispatch": {"executor": "local"}}, **po)
    assert_same_samples(tmp_path / "cli.npz", tmp_path / "s.npz")
    assert_same_probes(tmp_path / "cli.h5", tmp_path / "p.h5")
    assert "running in this process" in (tmp_path / "s.log").read_text()
    assert not any(dispatch.partial_dir(tmp_path / f).exists() for f in ("s.npz", "p.h5"))


def test_sample_in_seed_shards_is_the_unsharded_sample(inputs, tmp_path):
    """dispatch.sample_shards splits a sample into seed ranges and merges them into the unsharded file; a
    rerun after a failed shard runs only the shards that are missing."""
    so = sample_options(inputs, tmp_path / "whole.npz", num=50)
    job("sample", so)()
    cfg = {"dispatch": {"executor": "local", "sample_shards": 3}}
    out = tmp_path / "sharded.npz"
    assert run_here("sample", tmp_path / "s.log", cfg, **(so | {"output": str(out)})) == str(out)
    assert_same_samples(tmp_path / "whole.npz", out)
    log_text = (tmp_path / "s.log").read_text()
    assert "3 seed shards" in log_text and "running 3 shard(s) in this process" in log_text
    assert not (tmp_path / ".sharded.npz.shards").exists()
    # A finished output is recognised; a shard folder left by a failed array is resumed shard by shard.
    run_here("sample", tmp_path / "s.log", cfg, **(so | {"output": str(out)}))
    assert "already made from the same inputs" in (tmp_path / "s.log").read_text()
    out2 = tmp_path / "again.npz"
    job("sample", so | {"seed_start": 0, "num": 16, "output": str(tmp_path / ".again.npz.shards/shard-0000.npz")})()
    run_here("sample", tmp_path / "s2.log", cfg, **(so | {"output": str(out2)}))
    assert "1 of 3 shards already done" in (tmp_path / "s2.log").read_text()
    assert_same_samples(tmp_path / "whole.npz", out2)
    with pytest.raises(AdaschedError, match=r"sample_shards \(60\) is more than the 7 batches of 8 samples"):
        run_here("sample", tmp_path / "s3.log", {"dispatch": {"sample_shards": 60}},
                 **(so | {"output": str(tmp_path / "x.npz")}))
    assert not (tmp_path / "x.npz").exists()


def test_interrupted_sample_resumes_bit_identical(inputs, tmp_path, caplog):
    ref, out = tmp_path / "ref.npz", tmp_path / "out.npz"
    job("sample", sample_options(inputs, ref))()
    with pytest.raises(Interrupted):
        job("sample", sample_options(inputs, out), progress=StopAfter(16))()
    assert not out.exists() and batches_on_disk(out) == 2  # nothing half-written as the output
    with caplog.at_level(logging.INFO, logger="adasched"):
        job("sample", sample_options(inputs, out))()
    assert "resuming" in caplog.text and "after 2 of 6 batches" in caplog.text
    assert_same_samples(ref, out)
    assert not dispatch.partial_dir(out).exists()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="adasched"):  # e.g. requeued after it had finished
        job("sample", sample_options(inputs, out))()
    assert "already made from the same inputs" in caplog.text


def test_work_from_other_inputs_is_discarded(inputs, tmp_path, caplog):
    out = tmp_path / "out.npz"
    with pytest.raises(Interrupted):
        job("sample", sample_options(inputs, out, nfe=11), progress=StopAfter(16))()
    with caplog.at_level(logging.INFO, logger="adasched"):
        job("sample", sample_options(inputs, out))()
    assert "discarding work" in caplog.text and "resuming" not in caplog.text
    job("sample", sample_options(inputs, tmp_path / "ref.npz"))()
    assert_same_samples(tmp_path / "ref.npz", out)


def test_interrupted_probe_resumes_bit_identical(inputs, tmp_path):
    ref, out = tmp_path / "ref.h5", tmp_path / "out.h5"
    job("probe", probe_options(inputs, ref))()
    with pytest.raises(Interrupted):
        job("probe", probe_options(inputs, out), progress=StopAfter(16))()
    assert not out.exists()
    job("probe", probe_options(inputs, out))()
    assert_same_probes(ref, out, runs=False)  # the estimates are bit-identical ...
    p = read_probes(out)
    assert p.runs.shape[0] == 2 and covered_once(p.runs, 48) and p.complete  # ... and the record shows the resume


def test_map_skips_shards_done_with_the_same_inputs(tmp_path):
    calls = tmp_path / "calls.txt"
    ins = [tmp_path / f"in{i}.txt" for i in range(3)]
    for i, p in enumerate(ins):
        p.write_text(f"input {i}")
    items = [{"x": i, "input": str(ins[i]), "calls_dir": str(tmp_path), "out": str(tmp_path / f"out{i}.json")}
             for i in range(3)]
    outs = [it["out"] for it in items]
    merged = []
    assert dispatch.map(write_output, items, outputs=outs, merge=merged.extend) == outs == merged
    assert calls.read_text().split() == ["0", "1", "2"]
    dispatch.map(write_output, items, outputs=outs)
    assert calls.read_text().split() == ["0", "1", "2"]  # nothing run again
    ins[1].write_text("input 1, changed")  # the content of a file an item names is part of its digest
    Path(outs[2]).unlink()
    dispatch.map(write_output, items, outputs=outs)
    assert calls.read_text().split() == ["0", "1", "2", "1", "2"]
    assert json.loads(Path(outs[1]).read_text())["input"] == "input 1, changed"
    assert dispatch.map(square, [1, 2, 3]) == [1, 4, 9]
    items[0]["input"] = str(tmp_path / "missing.txt")  # shard 0 fails; the others still run
    Path(outs[1]).unlink()
    with pytest.raises(AdaschedError, match=r"^test_dispatch.write_output: 1 of 2 shards failed; first: shard 0 "
                                            r"failed: FileNotFoundError: .*missing.txt'$"):
        dispatch.map(write_output, items, outputs=outs)
    assert Path(outs[1]).exists()  # made again although shard 0 failed


def test_debug_executor_runs_through_submitit(tmp_path):
    assert dispatch.run(square, 7, executor="debug", log_dir=tmp_path) == 49
    assert dispatch.map(square, [2, 3], executor="debug", log_dir=tmp_path) == [4, 9]


def test_local_failure_is_one_line_and_leaves_no_output(inputs, tmp_path):
    opts = sample_options(inputs, tmp_path / "x.npz") | {"schedule": str(tmp_path / "missing.json")}
    with pytest.raises(AdaschedError) as e:
        run_here("sample", tmp_path / "x.log", {}, **opts)
    msg = str(e.value)
    assert "\n" not in msg and "schedule file not found" in msg and str(tmp_path / "x.log") in msg
    assert not (tmp_path / "x.npz").exists()
    assert "schedule file not found" in (tmp_path / "x.log").read_text()


# -------------------------------------------------------------------------------------- a real SLURM


def in_background(fn, *args, **kwargs):
    """Run ``fn`` in a thread; returns (thread, box) where box holds its 'result' or 'error'."""
    box = {}

    def target():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def finish(thread, box, timeout=150.0):
    thread.join(timeout)
    assert not thread.is_alive(), f"the job did not finish within {timeout:g} s"
    assert "error" not in box, box["error"] if "error" in box else ""
    return box["result"]


def wait_for(predicate, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def running_job(cluster, tmp_path):
    """The id of the job this test submitted (its log folder is the only one), once SLURM runs it."""
    folders = [p.name for p in (tmp_path / "slurm-logs").glob("[0-9]*")]
    if len(folders) == 1 and (folders[0], "RUNNING") in cluster.squeue():
        return folders[0]
    return None


def job_log(tmp_path, job_id) -> str:
    return "".join(p.read_text() for p in sorted((tmp_path / "slurm-logs" / str(job_id)).glob("*_log.*")))


@pytest.fixture
def job_env(monkeypatch):
    """Jobs unpickle this module's slow job classes: put tests/ on the jobs' PYTHONPATH (sbatch exports it)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_slurm_gives_the_local_results(slurm_cluster, inputs, tmp_path, job_env):
    cfg = slurm_config(tmp_path)
    run_here("sample", tmp_path / "s.log", {}, **sample_options(inputs, tmp_path / "local.npz"))
    run_here("probe", tmp_path / "p.log", {}, **probe_options(inputs, tmp_path / "local.h5"))
    run_here("sample", tmp_path / "s.log", cfg, **sample_options(inputs, tmp_path / "slurm.npz"))
    run_here("probe", tmp_path / "p.log", cfg, **probe_options(inputs, tmp_path / "slurm.h5"))
    assert_same_samples(tmp_path / "local.npz", tmp_path / "slurm.npz")
    assert_same_probes(tmp_path / "local.h5", tmp_path / "slurm.h5")
    # the fit reference, a GPU stage like the probe: the same solves from a SLURM job
    ref = dict(model=probe_options(inputs, tmp_path / "unused.h5")["model"], fit_seeds=4, max_steps=128, device="cpu")
    run_here("fit-reference", tmp_path / "r.log", {}, **ref, output=tmp_path / "local-ref.h5")
    run_here("fit-reference", tmp_path / "r.log", cfg, **ref, output=tmp_path / "slurm-ref.h5")
    local_ref, slurm_ref = read_reference(tmp_path / "local-ref.h5"), read_reference(tmp_path / "slurm-ref.h5")
    assert np.array_equal(local_ref.target.numpy(), slurm_ref.target.numpy()) and local_ref.steps == slurm_ref.steps
    rule_log = (tmp_path / "s.log").read_text()  # the rule's log names the job and its log files
    job = re.search(r"submitted SLURM job (\d+); stdout (\S+), stderr (\S+)", rule_log)
    assert job and Path(job[2]).is_file() and Path(job[3]).is_file() and f"SLURM job {job[1]} finished" in rule_log
    assert "sample: 48/48 (100%)" in rule_log  # the job's own log (its progress lines), appended
    submission = (tmp_path / "slurm-logs" / job[1] / f"{job[1]}_submission.sh").read_text()
    assert "export HDF5_USE_FILE_LOCKING=FALSE" in submission and "#SBATCH --requeue" in submission
    # plain functions with arguments, through the module-level API
    assert dispatch.run(math.fsum, [0.1] * 10, executor="slurm", slurm=cfg["dispatch"]["slurm"],
                        log_dir=tmp_path / "slurm-logs", poll_s=0.5) == 1.0


def test_slurm_failure_is_one_line_naming_job_and_log(slurm_cluster, inputs, tmp_path, job_env):
    opts = sample_options(inputs, tmp_path / "x.npz") | {"schedule": str(tmp_path / "missing.json")}
    with pytest.raises(AdaschedError) as e:
        run_here("sample", tmp_path / "x.log", slurm_config(tmp_path), **opts)
    msg = str(e.value)
    m = re.fullmatch(r"SLURM job (\d+) \(sample .*x\.npz\) failed: AdaschedError: schedule file not found: "
                     r"\S+missing\.json; log: (\S+_log\.err)", msg)
    assert m, msg
    assert "schedule file not found" in Path(m[2]).read_text()
    assert not (tmp_path / "x.npz").exists()
    assert msg in (tmp_path / "x.log").read_text()
    with pytest.raises(AdaschedError, match=r"^test_dispatch.square: submitting to slurm failed: invalid partition "
                                            r"specified: nope; Batch job submission failed: Invalid partition name "
                                            r"specified$"):
        dispatch.run(square, 2, executor="slurm", slurm={"partition": "nope", "gpus_per_job": 0},
                     log_dir=tmp_path / "slurm-logs")


@pytest.mark.slow
def test_cancelled_job_fails_with_one_line(slurm_cluster, inputs, tmp_path, job_env, monkeypatch):
    monkeypatch.setattr(dispatch, "_RESULT_GRACE_S", 1.0)
    out = tmp_path / "out.npz"
    d = dispatch.Dispatcher.from_config(slurm_config(tmp_path))
    t, box = in_background(d.run, job("sample", sample_options(inputs, out, num=192), progress=Slow()), name="cancelled")
    wait_for(lambda: batches_on_disk(out) >= 1, what="a batch")
    job_id = running_job(slurm_cluster, tmp_path)
    subprocess.run(["scancel", job_id], check=True)
    t.join(60)
    assert not t.is_alive() and isinstance(box.get("error"), AdaschedError)
    assert re.fullmatch(rf"SLURM job {job_id} \(cancelled\) failed: ended CANCELLED without a result; "
                        r"log: \S+_log\.err", str(box["error"])), box["error"]
    assert not out.exists() and batches_on_disk(out) >= 1  # the work so far is kept for a rerun to resume


def test_interrupted_waiting_cancels_the_job(slurm_cluster, inputs, tmp_path, job_env):
    """SIGTERM to the waiting process (Snakemake stopping the rule) cancels the job it waits for."""
    out = tmp_path / "out.npz"
    d = dispatch.Dispatcher.from_config(slurm_config(tmp_path))

    def terminate_when_running():
        wait_for(lambda: running_job(slurm_cluster, tmp_path), what="the job to start")
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:  # never kill pytest itself
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_when_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        d.run(job("sample", sample_options(inputs, out, num=192), progress=Slow()), name="terminated")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    job_id = next((tmp_path / "slurm-logs").glob("[0-9]*")).name
    state = wait_for(lambda: dict(slurm_cluster.squeue()).get(job_id) in ("CANCELLED", None), timeout=30,
                     what="the job to be cancelled")
    assert state and not out.exists()


@pytest.mark.slow
def test_scontrol_requeue_resumes_without_loss_or_duplicates(slurm_cluster, inputs, tmp_path, job_env):
    """SLURM kills and requeues the job (as after a node failure or `scontrol requeue`); it starts again
    from the submitted pickle and resumes from the batches on disk."""
    ref, out = tmp_path / "ref.npz", tmp_path / "out.npz"
    job("sample", sample_options(inputs, ref, num=192))()
    d = dispatch.Dispatcher.from_config(slurm_config(tmp_path))
    t, box = in_background(d.run, job("sample", sample_options(inputs, out, num=192), progress=Slow()),
                           name="requeue")
    wait_for(lambda: batches_on_disk(out) >= 3, what="three batches")
    job_id = running_job(slurm_cluster, tmp_path)
    slurm_cluster.scontrol("requeue", job_id)
    finish(t, box)
    text = job_log(tmp_path, job_id)
    k = int(re.search(r"resuming \S+ after (\d+) of 24 batches", text)[1])
    assert 3 <= k < 24  # SLURM stops the first run within a few seconds (KillWait)
    assert_same_samples(ref, out)
    assert not dispatch.partial_dir(out).exists()


@pytest.mark.slow
def test_preempted_probe_checkpoints_requeues_and_resumes(slurm_cluster, inputs, tmp_path, job_env):
    """submitit's preemption: SIGTERM then USR2 (what `job._interrupt()` sends); the job checkpoints
    (DelayedSubmission of itself), requeues itself and resumes from the probe file it topped up."""
    ref, out = tmp_path / "ref.h5", tmp_path / "out.h5"
    job("probe", probe_options(inputs, ref, samples=64))()
    d = dispatch.Dispatcher.from_config(slurm_config(tmp_path))
    t, box = in_background(d.run, job("probe", probe_options(inputs, out, samples=64), progress=Slow()), name="preempt")
    h5 = dispatch.partial_dir(out) / "probes.h5"
    wait_for(lambda: h5.exists() and read_probes(h5).samples >= 16, what="two probe batches")
    job_id = running_job(slurm_cluster, tmp_path)
    subprocess.run(["scancel", job_id, "--signal", "SIGTERM"], check=True)  # bypassed by submitit
    time.sleep(1)  # in order: a TERM arriving during submitit's `scontrol requeue` would kill that instead
    subprocess.run(["scancel", job_id, "--signal", "USR2"], check=True)
    finish(t, box)
    text = job_log(tmp_path, job_id)
    assert "Calling checkpoint method" in text and "Requeued job" in text
    assert RESUMED.search(text), text[-3000:]
    assert_same_probes(ref, out, runs=False)
    p = read_probes(out)
    assert covered_once(p.runs, 64)  # every seed once, in one run or more


@pytest.mark.slow
def test_time_limit_checkpoints_requeues_and_resumes(slurm_cluster, inputs, tmp_path, job_env):
    """A job with a 1-minute limit gets SLURM's USR2 `signal_delay_s` before it, checkpoints, requeues and
    finishes the rest in its next run.  SLURM checks every 30 s and signals at the first check less than
    `signal_delay_s` + 30 s before the limit: with 20 s, 10 to 40 s after the start (after Python's start-up;
    a USR2 before submitit's handler is installed would kill the job).  The first run lasts over 45 s."""
    ref, out = tmp_path / "ref.npz", tmp_path / "out.npz"
    job("sample", sample_options(inputs, ref, num=448))()
    cfg = slurm_config(tmp_path, time_min=1, signal_delay_s=20, max_num_timeout=4)
    d = dispatch.Dispatcher.from_config(cfg)
    t, box = in_background(d.run, job("sample", sample_options(inputs, out, num=448), progress=Slow(0.75)),
                           name="timeout")
    job_id = wait_for(lambda: running_job(slurm_cluster, tmp_path), what="the job to start")
    finish(t, box)
    text = job_log(tmp_path, job_id)
    assert "Caught signal SIGUSR2" in text and "this job is timed-out" in text and "Requeued job" in text
    assert RESUMED.search(text), text[-3000:]
    assert_same_samples(ref, out)


@pytest.mark.slow
def test_sweep_is_one_array_with_the_configured_parallelism(slurm_cluster, inputs, tmp_path, job_env):
    cfg = slurm_config(tmp_path, array_parallelism=1)
    d = dispatch.Dispatcher.from_config(cfg)
    outs = [tmp_path / f"nfe{n}-{s}.npz" for n, s in ((9, 0), (11, 0), (9, 1))]
    jobs = [job("sample", sample_options(inputs, o, nfe=n, num=24) | {"seed_start": 100 * s})
            for o, (n, s) in zip(outs, ((9, 0), (11, 0), (9, 1)))]
    seen = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(sum(s == "RUNNING" and "_" in j for j, s in slurm_cluster.squeue()))  # array tasks
            time.sleep(0.2)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    try:
        assert d.run_all(jobs, name="sweep") == [str(o) for o in outs]
    finally:
        stop.set()
        w.join()
    assert max(seen) == 1  # the node has 2 CPUs: without %1 two tasks would run at once
    array = re.search(r"#SBATCH --array=(\S+)", next((tmp_path / "slurm-logs").glob("*/*_submission.sh")).read_text())
    assert array[1] == "0-2%1"
    for o, j in zip(outs, jobs):
        job("sample", j.kwargs | {"output": str(tmp_path / "ref.npz")})()
        assert_same_samples(tmp_path / "ref.npz", o)
    # A second run with the same inputs submits nothing; a changed input reruns its shard only.
    n_logs = len(list((tmp_path / "slurm-logs").iterdir()))
    assert d.run_all(jobs, name="sweep") == [str(o) for o in outs]
    assert len(list((tmp_path / "slurm-logs").iterdir())) == n_logs
    jobs[2] = job("sample", jobs[2].kwargs | {"num": 16})
    d.run_all(jobs, name="sweep")
    with np.load(outs[2]) as z:
        assert z["samples"].shape[0] == 16


def test_class_labels_of_a_conditional_model_survive_batches_and_shards(inputs, tmp_path, monkeypatch):
    """A conditional model's drawn classes are kept in the NPZ by the CLI, the resumable job and the shard merge."""
    from conditional_gaussians import ConditionalGaussians

    from adasched import models

    monkeypatch.setitem(models.LOADERS, "condgauss",
                        lambda arg, **kw: ConditionalGaussians([[-20.0, 0.0], [0.0, 20.0], [20.0, 0.0]], c=0.5))
    so = sample_options(inputs, tmp_path / "job.npz", num=20) | {"model": "condgauss:three"}
    assert cli(["sample", *[f"--{k.replace('_', '-')}={v}" for k, v in so.items() if k != "output"],
                "-o", str(tmp_path / "cli.npz")]) == 0
    job("sample", so)()
    sharded = tmp_path / "sharded.npz"
    run_here("sample", tmp_path / "s.log", {"dispatch": {"executor": "local", "sample_shards": 3}},
             **(so | {"output": str(sharded)}))
    with np.load(tmp_path / "cli.npz") as ref:
        assert set(ref["labels"]) == {0, 1, 2} and ref["labels"].shape == (20,)
        for f in (tmp_path / "job.npz", sharded):
            with np.load(f) as z:
                assert sorted(z.files) == sorted(ref.files)
                np.testing.assert_array_equal(z["labels"], ref["labels"])
                np.testing.assert_array_equal(z["samples"], ref["samples"])
