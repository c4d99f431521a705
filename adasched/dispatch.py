"""Run a GPU stage in this process or as SLURM jobs through submitit (design.md, "SLURM").

One entry point for every GPU stage of the workflow::

    run(fn, *args, executor="local" | "slurm" | "debug", slurm={...}, log_dir=..., name=...)   # one job
    map(fn, items, ..., outputs=[...], merge=...)                                               # one job array

``executor="local"`` calls ``fn`` in this process.  ``"slurm"`` submits it with
``submitit.AutoExecutor(folder=log_dir/"%j", cluster="slurm")`` (the cluster is always named: submitit
picks SLURM whenever ``srun`` is on ``PATH``), waits and returns its result; ``"debug"`` is submitit's
in-process DebugExecutor (pdb works).  A sweep given to :func:`map` becomes ONE SLURM job array whose
``%N`` is ``array_parallelism``; results come back in the order of the items.  Submission runs inside
``submitit.helpers.clean_env()`` (so a stage started inside an allocation does not inherit its
``SLURM_*`` variables; ``SLURM_CONF`` is kept), and every job exports ``HDF5_USE_FILE_LOCKING=FALSE``.
Job ids and log files are logged (``logging``, logger ``adasched.dispatch``) as they are submitted, so a
rule's log names them.  Jobs are followed with ``squeue`` (``sacct`` is not needed: many clusters, and
the test cluster, run without accounting).

Failures: a job that raises, is cancelled, killed or runs out of requeues raises ONE
:class:`~adasched.errors.AdaschedError` whose one-line message names the job id, the reason and its
stderr log.  Outputs are only ever written atomically, so nothing half-written is left as an output.

Preemption and time limits (ecosystem.md D): a :class:`Resumable` job (a function that writes one output
atomically and resumes from its own partial work) has a ``checkpoint`` method returning
``DelayedSubmission(self)``, so submitit requeues it on SLURM's warning signal (``USR2``, ``signal_delay_s``
before the time limit, or at preemption with ``preempt_send_user_signal``), and a job requeued by SLURM
itself (``scontrol requeue``, node failure) simply starts again; either way it resumes from what it wrote.
:meth:`Dispatcher.run_all` runs such jobs, skipping those whose output was already made from the same
inputs (the record ``.<output name>.dispatch.json`` beside it); :meth:`Dispatcher.map` does the same for a
plain function over items with ``outputs``.

This module knows nothing of adasched's stages: the workflow (:func:`adasched.workflow.run_stage`) wraps a
stage of :mod:`adasched.stages` in a :class:`Resumable` and hands it here; docs/slurm.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from adasched import __version__
from adasched.errors import AdaschedError
from adasched.io import log_records_to, sha256_file, write_json

__all__ = ["run", "map", "Dispatcher", "SlurmOptions", "Resumable", "inputs_digest", "partial_dir", "EXECUTORS"]

log = logging.getLogger(__name__)

#: ``local``: in this process; ``slurm``: submitit SLURM jobs; ``debug``: submitit's in-process DebugExecutor.
EXECUTORS = ("local", "slurm", "debug")
#: SLURM job states in which a job may still produce its result.
_ACTIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "COMPLETING", "CONFIGURING",
                     "SUSPENDED", "PREEMPTED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"})
#: Seconds a job may be finished (or unknown to squeue) before its missing result counts as a failure.
_RESULT_GRACE_S = 15.0


# ------------------------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class SlurmOptions:
    """What every SLURM job of a stage asks for (config block ``dispatch.slurm``).

    Attributes:
        partition, account, qos, constraint: ``sbatch -p``, ``-A``, ``--qos``, ``-C`` (None: the site default).
        gpus_per_job: GPUs per job (``--gpus-per-node``; 0 asks for none).
        cpus_per_task, mem_gb: ``--cpus-per-task``, ``--mem``.
        time_min: time limit per run of a job, minutes (a requeued job gets it again).
        array_parallelism: most tasks of one array running at once (the ``%N`` of ``--array``).
        signal_delay_s: SLURM sends ``USR2`` this long before the time limit; the job checkpoints and requeues.
        max_num_timeout: requeues after a time-out before the job fails (preemptions do not count).
        setup: shell lines run before the job (``module load cuda``, ``source venv/bin/activate``).
        additional: further ``sbatch`` options, ``{"gres": "gpu:a100:1", "mail-type": "FAIL"}``.
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_job: int = 1
    cpus_per_task: int = 4
    mem_gb: float = 16
    time_min: int = 60
    array_parallelism: int = 8
    signal_delay_s: int = 120
    max_num_timeout: int = 3
    setup: tuple[str, ...] = ()
    additional: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "dispatch.slurm") -> "SlurmOptions":
        """Checked options from a config mapping; an unknown key or bad value is an :class:`AdaschedError`."""
        d = {k: v for k, v in dict(d or {}).items() if v is not None}  # null: the default (schema-filled configs)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise AdaschedError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(names)}")
        if "setup" in d:
            if isinstance(d["setup"], str) or not all(isinstance(s, str) for s in d["setup"] or ()):
                raise AdaschedError(f"{where}.setup: expected a list of shell lines, got {d['setup']!r}")
            d["setup"] = tuple(d["setup"] or ())
        if "additional" in d and not isinstance(d["additional"] or {}, dict):
            raise AdaschedError(f"{where}.additional: expected a mapping of sbatch options, got {d['additional']!r}")
        d["additional"] = dict(d.get("additional") or {})
        for key, low in (("gpus_per_job", 0), ("cpus_per_task", 1), ("time_min", 1), ("array_parallelism", 1),
                         ("signal_delay_s", 1), ("max_num_timeout", 0)):
            v = d.get(key, getattr(cls, key))
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise AdaschedError(f"{where}.{key}: expected an integer >= {low}, got {v!r}")
        mem = d.get("mem_gb", cls.mem_gb)
        if isinstance(mem, bool) or not isinstance(mem, (int, float)) or mem <= 0:
            raise AdaschedError(f"{where}.mem_gb: expected a positive number, got {mem!r}")
        out = cls(**d)
        if out.signal_delay_s >= 60 * out.time_min:
            raise AdaschedError(f"{where}: signal_delay_s ({out.signal_delay_s}) must be shorter than the time limit "
                                f"(time_min {out.time_min} = {60 * out.time_min} s)")
        return out

    def replace(self, **changes) -> "SlurmOptions":
        return SlurmOptions.from_dict({**dataclasses.asdict(self), **changes})

    def executor_parameters(self, job_name: str) -> dict:
        """``submitit.AutoExecutor.update_parameters`` keywords for these options."""
        p: dict[str, Any] = {"name": job_name, "timeout_min": self.time_min, "cpus_per_task": self.cpus_per_task,
                             "mem_gb": self.mem_gb, "slurm_array_parallelism": self.array_parallelism,
                             "slurm_signal_delay_s": self.signal_delay_s,
                             # Requeue on preemption or node failure even where the site default is JobRequeue=0.
                             "slurm_additional_parameters": {"requeue": True, **self.additional},
                             "slurm_setup": ["export HDF5_USE_FILE_LOCKING=FALSE", *self.setup]}
        if self.gpus_per_job:
            p["gpus_per_node"] = self.gpus_per_job
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key) is not None:
                p[f"slurm_{key}"] = getattr(self, key)
        return p


_DISPATCH_KEYS = ("executor", "log_dir", "poll_s", "sample_shards", "slurm", "stages")


@dataclass(frozen=True)
class Dispatcher:
    """Where and how stages run: an executor, its SLURM options, the submitit log folder.

    ``log_dir`` must be on a filesystem the compute nodes share (never ``/tmp`` of the submitting host);
    job ``J`` logs to ``log_dir/J/J_0_log.out`` and ``.err`` (array task ``A_i``: ``log_dir/A_i/A_i_0_log.*``).
    ``poll_s`` is the interval between ``squeue`` calls while waiting; ``sample_shards`` the seed ranges
    :func:`stage` splits a ``sample`` into (one job array).
    """

    executor: str = "local"
    log_dir: Path = Path("logs/slurm")
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    poll_s: float = 15.0
    sample_shards: int = 1

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise AdaschedError(f"unknown executor {self.executor!r}; valid: {', '.join(EXECUTORS)}")
        if not (isinstance(self.poll_s, (int, float)) and self.poll_s > 0):
            raise AdaschedError(f"poll_s must be a positive number of seconds, got {self.poll_s!r}")
        n = self.sample_shards
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise AdaschedError(f"dispatch.sample_shards: expected an integer >= 1, got {n!r}")
        object.__setattr__(self, "log_dir", Path(self.log_dir).absolute())
        if isinstance(self.slurm, dict):
            object.__setattr__(self, "slurm", SlurmOptions.from_dict(self.slurm))

    @classmethod
    def from_config(cls, config: dict | None, stage: str | None = None) -> "Dispatcher":
        """The dispatcher a workflow config asks for (its ``dispatch`` block; a missing block means ``local``).

        ``config`` is the whole workflow config (``snakemake.config``) or the ``dispatch`` block itself::

            dispatch:
              executor: slurm            # local (default) | slurm | debug
              log_dir: results/logs/slurm  # default: <results>/logs/slurm; on a shared filesystem
              poll_s: 15                 # seconds between squeue calls
              sample_shards: 1           # > 1: each sample job as this many seed ranges, one array (stage())
              slurm: {partition: gpu, gpus_per_job: 1, cpus_per_task: 8, mem_gb: 32, time_min: 240,
                      array_parallelism: 16, setup: ["module load cuda/12.4"], additional: {qos: normal}}
              stages:                    # per-stage changes (stage = adasched command), incl. executor
                sample: {time_min: 120}
                schedule: {executor: local}

        ``stage`` picks the entry of ``stages`` that applies.
        """
        config = dict(config or {})
        block = config.get("dispatch", config if "executor" in config or "slurm" in config else {}) or {}
        if not isinstance(block, dict):
            raise AdaschedError(f"dispatch: expected a mapping, got {block!r}")
        unknown = sorted(set(block) - set(_DISPATCH_KEYS))
        if unknown:
            raise AdaschedError(f"dispatch: unknown key(s) {', '.join(unknown)}; valid: {', '.join(_DISPATCH_KEYS)}")
        slurm = dict(block.get("slurm") or {})
        executor = block.get("executor") or "local"
        stages = block.get("stages") or {}
        if not isinstance(stages, dict):
            raise AdaschedError(f"dispatch.stages: expected a mapping of stage -> options, got {stages!r}")
        if stage is not None and stages.get(stage):
            own = dict(stages[stage])
            executor = own.pop("executor", None) or executor
            slurm.update(own)
        where = f"dispatch.stages.{stage}" if stage is not None and stages.get(stage) else "dispatch.slurm"
        results = str(config.get("results", "")).rstrip("/")
        log_dir = block.get("log_dir") or (f"{results}/logs/slurm" if results else "logs/slurm")
        if executor not in EXECUTORS:
            raise AdaschedError(f"dispatch.executor: unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
        return cls(executor=executor, log_dir=Path(log_dir), slurm=SlurmOptions.from_dict(slurm, where),
                   poll_s=block.get("poll_s") or 15.0, sample_shards=block.get("sample_shards") or 1)

    # ---------------------------------------------------------------------------------------------- run

    def run(self, fn: Callable, *args, name: str | None = None, **kwargs) -> Any:
        """``fn(*args, **kwargs)`` where this dispatcher says; its result, or one :class:`AdaschedError`."""
        name = name or _callable_name(fn)
        if self.executor == "local":
            log.info("%s: running in this process", name)
            return fn(*args, **kwargs)
        outcome = self._run_jobs(name, [_bind(fn, args, kwargs)])[0]
        return outcome.value()

    def run_all(self, jobs: Sequence["Resumable"], name: str | None = None) -> list[str]:
        """Run every :class:`Resumable` job whose output is not yet made from the same inputs: here, one after
        the other, or as ONE SLURM job (one job) or job array (several); return their outputs in order.

        A failure is one :class:`AdaschedError` naming the job and its log (a job here raises its own error);
        outputs of jobs that finished are kept and skipped next time.  The stderr log of a single SLURM job is
        copied into this process's log records when it ends, so a rule's log shows what the job did.
        """
        jobs = list(jobs)
        name = name or (_callable_name(jobs[0].fn) if jobs else "jobs")
        todo = [j for j in jobs if not j.done()]
        if len(todo) < len(jobs):
            log.info("%s: %d of %d shards already done with the same inputs; not run again",
                     name, len(jobs) - len(todo), len(jobs))
        if not todo:
            return [j.output for j in jobs]
        if self.executor == "local":
            if len(todo) == 1:
                log.info("%s: running in this process", name)
                todo[0]()
            else:
                log.info("%s: running %d shard(s) in this process", name, len(todo))
                _run_here(name, todo)
            return [j.output for j in jobs]
        outcomes = self._run_jobs(name, todo)
        if len(outcomes) == 1 and self.executor == "slurm":
            log.info("---- SLURM job %s: %s ----\n%s", outcomes[0].job_id, outcomes[0].stderr,
                     _tail(outcomes[0].stderr).rstrip("\n"))
        _raise_failures(name, outcomes)
        return [j.output for j in jobs]

    def map(self, fn: Callable, items: Iterable, *, outputs: Sequence[str | os.PathLike] | None = None,
            merge: Callable[[list], Any] | None = None, name: str | None = None) -> list:
        """``[fn(item) for item in items]`` as ONE job array (at most ``array_parallelism`` at a time).

        Args:
            fn: a module-level function (or picklable callable) of one item.
            items: the shards; pass small values (file paths, options), not models: each is pickled.
            outputs: the file each item's call writes (atomically).  An item whose output exists together
                with a record of the same input digest (:func:`inputs_digest` of ``fn`` and the item,
                which covers the content of the files the item names) is not run again; the record is
                written by the shard itself after ``fn`` returns.  With ``outputs`` the result is the list
                of output paths, else the list of ``fn``'s return values, in the order of ``items``.
            merge: called once with that list after every shard succeeded (write its output atomically).
            name: label for logs and the SLURM job name.

        A failing shard fails the whole call with one :class:`AdaschedError` naming it and its log, after
        every other shard has finished (their outputs are kept and will be skipped next time).
        """
        items = list(items)
        name = name or _callable_name(fn)
        if outputs is not None:
            outputs = [Path(o) for o in outputs]
            if len(outputs) != len(items):
                raise AdaschedError(f"{name}: {len(items)} items but {len(outputs)} outputs")
            if len(set(outputs)) != len(outputs):
                raise AdaschedError(f"{name}: two items write the same output file")
        shards, todo = [], []
        for i, item in enumerate(items):
            if outputs is None:
                shards.append(_Shard(fn, item))
                todo.append(i)
                continue
            digest = inputs_digest({"fn": _callable_name(fn), "item": item}, exclude=[outputs[i]])
            if _shard_done(outputs[i], digest):
                continue
            cls = _ResumableShard if _checkpointable(fn) or _checkpointable(item) else _Shard
            shards.append(cls(fn, item, str(outputs[i]), digest))
            todo.append(i)
        if outputs is not None and len(todo) < len(items):
            log.info("%s: %d of %d shards already done with the same inputs; not run again",
                     name, len(items) - len(todo), len(items))
        values: list = [None] * len(items)
        if shards:
            if self.executor == "local":
                log.info("%s: running %d shard(s) in this process", name, len(shards))
                got = _run_here(name, shards)
            else:
                got = [o.value() for o in _raise_failures(name, self._run_jobs(name, shards))]
            for i, v in zip(todo, got):
                values[i] = v
        result = [str(o) for o in outputs] if outputs is not None else values
        if merge is not None:
            merge(result)
        return result

    # ----------------------------------------------------------------------------------------- submitit

    def _executor(self, name: str):
        import submitit  # optional at import time: only jobs on a cluster need it

        self.log_dir.mkdir(parents=True, exist_ok=True)
        # The cluster is always explicit: AutoExecutor would choose SLURM wherever srun is installed.
        ex = submitit.AutoExecutor(folder=self.log_dir / "%j", cluster=self.executor,
                                   slurm_max_num_timeout=self.slurm.max_num_timeout)
        ex.update_parameters(**self.slurm.executor_parameters(_job_name(name)))
        return ex

    def _run_jobs(self, name: str, callables: list) -> list["_Outcome"]:
        ex = self._executor(name)
        submitted = time.time()
        try:
            with _clean_env():
                if len(callables) == 1 and not isinstance(callables[0], _Shard):  # one job, not an array
                    jobs = [ex.submit(callables[0])]
                else:
                    jobs = ex.submit_array(callables)
        except Exception as e:  # sbatch refused (unknown partition, account, too much memory, ...)
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            errors = list(dict.fromkeys(ln.split("error:", 1)[1].strip() for ln in lines if "error:" in ln))
            why = "; ".join(errors) or (lines[-1] if lines else repr(e))
            raise AdaschedError(f"{name}: submitting to {self.executor} failed: {why}") from None
        what = "SLURM" if self.executor == "slurm" else self.executor
        for j in jobs:  # a job id used before with this log_dir (a reset or another cluster): drop its result
            with contextlib.suppress(OSError):
                if j.paths.result_pickle.stat().st_mtime < submitted - 1:
                    log.warning("%s: removing %s, left by an earlier job with the same id", name, j.paths.result_pickle)
                    j.paths.result_pickle.unlink()
        if len(jobs) == 1:
            log.info("%s: submitted %s job %s; stdout %s, stderr %s", name, what, jobs[0].job_id,
                     jobs[0].paths.stdout, jobs[0].paths.stderr)
        else:
            base = jobs[0].job_id.split("_")[0]
            log.info("%s: submitted %s job array %s (%d tasks, at most %d at a time); logs %s",
                     name, what, base, len(jobs), min(len(jobs), self.slurm.array_parallelism),
                     self.log_dir / f"{base}_<task>" / f"{base}_<task>_0_log.{{out,err}}")
        if self.executor == "debug":
            return [_Outcome.of(j, "DEBUG", name, what="debug") for j in jobs]
        return _wait(name, jobs, self.poll_s)


def _run_here(name: str, shards: list) -> list:
    """Call every shard in this process; then raise one error for the failures, as an array would."""
    got, failed = [], []
    for k, shard in enumerate(shards):
        try:
            got.append(shard())
        except Exception as e:
            got.append(None)
            failed.append(f"shard {k} failed: {e}" if isinstance(e, AdaschedError) else
                          f"shard {k} failed: {type(e).__name__}: {e}")
            log.error("%s: %s", name, failed[-1])
    if failed:
        raise AdaschedError(failed[0] if len(shards) == 1 else
                            f"{name}: {len(failed)} of {len(shards)} shards failed; first: {failed[0]}")
    return got


def run(fn: Callable, *args, executor: str = "local", slurm: dict | SlurmOptions | None = None,
        log_dir: str | os.PathLike = "logs/slurm", name: str | None = None, poll_s: float = 15.0, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` in this process (``local``), as one SLURM job (``slurm``), or through submitit's
    DebugExecutor (``debug``); returns its result.  ``slurm`` holds :class:`SlurmOptions` keys.  The keywords
    ``executor``, ``slurm``, ``log_dir``, ``name`` and ``poll_s`` are this function's; others go to ``fn``."""
    return _dispatcher(executor, slurm, log_dir, poll_s).run(fn, *args, name=name, **kwargs)


def map(fn: Callable, items: Iterable, *, executor: str = "local", slurm: dict | SlurmOptions | None = None,
        log_dir: str | os.PathLike = "logs/slurm", name: str | None = None, poll_s: float = 15.0,
        outputs: Sequence[str | os.PathLike] | None = None, merge: Callable[[list], Any] | None = None) -> list:
    """``fn`` over ``items`` as one job array; see :meth:`Dispatcher.map`."""
    return _dispatcher(executor, slurm, log_dir, poll_s).map(fn, items, outputs=outputs, merge=merge, name=name)


def _dispatcher(executor, slurm, log_dir, poll_s) -> Dispatcher:
    opts = slurm if isinstance(slurm, SlurmOptions) else SlurmOptions.from_dict(slurm)
    return Dispatcher(executor=executor, log_dir=Path(log_dir), slurm=opts, poll_s=poll_s)


# ------------------------------------------------------------------------------------- waiting, errors


@dataclass
class _Outcome:
    """How one submitted job ended: its result or a one-line failure."""

    job_id: str
    name: str
    state: str
    stderr: Path
    ok: bool = False
    result: Any = None
    reason: str = ""
    what: str = "SLURM"

    @classmethod
    def of(cls, job, state: str, name: str = "", what: str = "SLURM") -> "_Outcome":
        out = cls(job_id=str(job.job_id), name=name, state=state, stderr=Path(job.paths.stderr), what=what)
        if not job.paths.result_pickle.exists() and state != "DEBUG":
            out.reason = ("vanished from the queue without a result" if state == "GONE"
                          else f"ended {state} without a result")
            return out
        try:
            out.result, out.ok = job.result(), True
        except Exception as e:  # submitit re-raises the job's exception as FailedJobError (with the traceback)
            out.reason = _last_error_line(e)
        return out

    def message(self) -> str:
        return f"{self.what} job {self.job_id} ({self.name}) failed: {self.reason}; log: {self.stderr}"

    def value(self) -> Any:
        if not self.ok:
            raise AdaschedError(self.message())
        return self.result


def _raise_failures(name: str, outcomes: list[_Outcome]) -> list[_Outcome]:
    bad = [o for o in outcomes if not o.ok]
    if bad and len(outcomes) > 1:
        raise AdaschedError(f"{name}: {len(bad)} of {len(outcomes)} array tasks failed; first: {bad[0].message()}")
    if bad:
        raise AdaschedError(bad[0].message())
    return outcomes


def _last_error_line(e: BaseException) -> str:
    """``Type: message`` of the job's exception, from submitit's ``FailedJobError`` text (its traceback)."""
    text = str(e)
    lines = [ln.strip() for ln in text.split("-" * 22)[1].splitlines()] if "Traceback" in text else text.splitlines()
    lines = [ln for ln in lines if ln and not ln.startswith("-")]
    if not lines:
        return type(e).__name__
    last = lines[-1]
    head, sep, rest = last.partition(": ")
    if sep and "." in head and " " not in head:  # adasched.errors.AdaschedError: ... -> AdaschedError: ...
        last = f"{head.rsplit('.', 1)[1]}: {rest}"
    return last


def _squeue() -> dict[str, str] | None:
    """``{job id: state}`` of this user's jobs the controller remembers (array tasks expanded); None if
    squeue failed (the controller busy or unreachable: try again later)."""
    try:
        r = subprocess.run(["squeue", "--me", "-h", "-r", "--states=all", "-o", "%i|%T"], capture_output=True,
                           text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        _warn_throttled(f"squeue failed ({e}); retrying")
        return None
    if r.returncode:
        _warn_throttled(f"squeue failed: {(r.stderr or r.stdout).strip()[:200]}; retrying")
        return None
    out = {}
    for line in r.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        if jid:
            out[jid] = state.split()[0] if state else "UNKNOWN"
    return out


_LAST_WARNING = [0.0]


def _warn_throttled(message: str, every_s: float = 60.0) -> None:
    if time.monotonic() - _LAST_WARNING[0] >= every_s:
        _LAST_WARNING[0] = time.monotonic()
        log.warning("%s", message)


class _Terminated(KeyboardInterrupt):
    """SIGTERM while waiting (e.g. Snakemake stopping the rule): cancel the jobs, then stop."""


@contextlib.contextmanager
def _sigterm_raises():
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _wait(name: str, jobs: list, poll_s: float) -> list[_Outcome]:
    """Wait for every job: done when its result file exists, or when squeue shows it ended (or forgot it)
    for longer than a grace period without one.  Logs every change of state.  On an interruption of this
    process (Ctrl-C, SIGTERM) the jobs still queued or running are cancelled."""
    pending = {str(j.job_id): j for j in jobs}
    states: dict[str, str] = {}
    ended: dict[str, float] = {}
    final: dict[str, str] = {}
    summary = None
    try:
        with _sigterm_raises():
            while pending:
                for jid, j in list(pending.items()):
                    if j.paths.result_pickle.exists():
                        final[jid] = "DONE"
                        del pending[jid]
                if not pending:
                    break
                queue = _squeue()
                if queue is not None:
                    now = time.monotonic()
                    for jid in list(pending):
                        state = queue.get(jid, "GONE")
                        if state != states.get(jid) and len(jobs) == 1:
                            log.info("%s: SLURM job %s is %s", name, jid, state)
                        states[jid] = state
                        if state in _ACTIVE:
                            ended.pop(jid, None)
                        elif now - ended.setdefault(jid, now) > _RESULT_GRACE_S:
                            final[jid] = state
                            del pending[jid]
                    if len(jobs) > 1:  # an array: one line whenever the counts change
                        counts: dict[str, int] = {}
                        for jid in pending:
                            counts[states[jid]] = counts.get(states[jid], 0) + 1
                        line = ", ".join(f"{n} {st}" for st, n in sorted(counts.items())) + f", {len(final)} ended"
                        if line != summary:
                            log.info("%s: array %s: %s", name, jobs[0].job_id.split("_")[0], line)
                            summary = line
                if pending:
                    time.sleep(poll_s)
    except BaseException:
        _cancel(name, list(pending.values()))
        raise
    outcomes = [_Outcome.of(j, final[str(j.job_id)], name) for j in jobs]
    for o in outcomes:
        log.info("%s: SLURM job %s %s", name, o.job_id, "finished" if o.ok else f"failed ({o.reason})")
    return outcomes


def _cancel(name: str, jobs: list) -> None:
    if not jobs:
        return
    log.warning("%s: interrupted; cancelling SLURM job(s) %s", name, ", ".join(str(j.job_id) for j in jobs))
    for j in jobs:
        with contextlib.suppress(Exception):
            j.cancel(check=False)


@contextlib.contextmanager
def _clean_env():
    """``submitit.helpers.clean_env()`` (drops ``SLURM_*``/``SUBMITIT_*`` of an enclosing job), keeping
    ``SLURM_CONF``: it says which cluster to talk to, not which job we are in."""
    import submitit  # optional at import time: only jobs on a cluster need it

    conf = os.environ.get("SLURM_CONF")
    with submitit.helpers.clean_env():
        if conf is not None:
            os.environ["SLURM_CONF"] = conf
        yield


# ---------------------------------------------------------------------------------------- shards, digests


def _callable_name(fn: Any) -> str:
    f = getattr(fn, "func", fn)
    mod = getattr(f, "__module__", None) or type(f).__module__
    qual = getattr(f, "__qualname__", None) or type(f).__qualname__
    return f"{mod}.{qual}"


def _job_name(name: str) -> str:
    """A SLURM job name from a label: ``sample results/m/x.npz`` -> ``adasched-sample-x.npz``."""
    words = name.split()
    short = "-".join([words[0]] + [os.path.basename(words[-1])] * (len(words) > 1)) if words else "job"
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in short)
    return f"adasched-{safe}"[:64]


def _checkpointable(obj: Any) -> bool:
    return callable(getattr(obj, "checkpoint", None))


@dataclass
class _Bound:
    """``fn`` with its arguments, as one picklable callable."""

    func: Callable
    args: tuple
    kwargs: dict

    def __call__(self):
        return self.func(*self.args, **self.kwargs)


class _ResumableBound(_Bound):
    """The same for an ``fn`` with a ``checkpoint`` method, which it hands on.  (A callable without one must
    not get one: submitit requeues preempted jobs without ``checkpoint``, but not those whose ``checkpoint``
    returns None.)"""

    def checkpoint(self, *args, **kwargs):
        return self.func.checkpoint(*self.args, **self.kwargs)


def _bind(fn: Callable, args: tuple, kwargs: dict) -> Callable:
    if not args and not kwargs:
        return fn
    return (_ResumableBound if _checkpointable(fn) else _Bound)(fn, args, kwargs)


@dataclass
class _Shard:
    """One item of :meth:`Dispatcher.map`; records its input digest beside its output when done."""

    fn: Callable
    item: Any
    output: str | None = None
    digest: str | None = None

    def __call__(self):
        value = self.fn(self.item)
        if self.output is not None:
            if not Path(self.output).exists():
                raise AdaschedError(f"{_callable_name(self.fn)} returned but did not write its output {self.output}")
            _write_marker(self.output, self.digest, _callable_name(self.fn))
            return self.output
        return value


class _ResumableShard(_Shard):
    """A shard whose work resumes from disk: requeued as is after a preemption or time-out."""

    def checkpoint(self, *args, **kwargs):
        import submitit  # optional at import time: only jobs on a cluster need it

        return submitit.helpers.DelayedSubmission(self)


def _marker(output: str | os.PathLike) -> Path:
    p = Path(output)
    return p.parent / f".{p.name}.dispatch.json"


def _write_marker(output: str | os.PathLike, digest: str | None, what: str) -> None:
    write_json(_marker(output), {"inputs_digest": digest, "made_by": what})


def _shard_done(output: Path, digest: str) -> bool:
    if not output.exists():
        return False
    try:
        rec = json.loads(_marker(output).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and rec.get("inputs_digest") == digest


_FILE_HASHES: dict[tuple, str] = {}


def _file_sha256(path: str) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = sha256_file(path)
    return _FILE_HASHES[key]


def inputs_digest(obj: Any, exclude: Iterable[str | os.PathLike] = ()) -> str:
    """sha256 over a canonical JSON form of ``obj`` and the content of every existing file it names.

    Strings and paths that name a regular file (or a model SPEC ``KIND:PATH`` whose ``PATH`` does) add the
    file's sha256, so a changed input file changes the digest; ``exclude`` lists files left out (the
    output itself).  Dataclasses, mappings and sequences are walked; the adasched version is included.
    """
    skip = {os.path.abspath(p) for p in exclude}
    files: dict[str, str] = {}

    def note(s: str) -> None:
        for cand in (s, s.partition(":")[2]):
            if cand and len(cand) < 4096 and os.path.isfile(cand) and os.path.abspath(cand) not in skip:
                files[cand] = _file_sha256(cand)

    def canon(x: Any) -> Any:
        if isinstance(x, (bool, int, float)) or x is None:
            return x
        if isinstance(x, (str, os.PathLike)):
            s = os.fspath(x)
            note(s)
            return s
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return {"__class__": f"{type(x).__module__}.{type(x).__qualname__}",
                    **{f.name: canon(getattr(x, f.name)) for f in dataclasses.fields(x)}}
        if isinstance(x, dict):
            return {str(k): canon(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
        if isinstance(x, (list, tuple)):
            return [canon(v) for v in x]
        if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:  # numpy / torch scalars
            return x.item()
        if callable(x):
            return _callable_name(x)
        return repr(x)

    payload = json.dumps({"adasched": __version__, "value": canon(obj), "files": files}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


# -------------------------------------------------------------------------------------------- the jobs


def partial_dir(output: str | os.PathLike) -> Path:
    """The hidden folder beside ``output`` that holds a job's work in progress."""
    p = Path(output)
    return p.parent / f".{p.name}.partial"


@contextlib.contextmanager
def _job_logging():
    """In a SLURM job nothing handles ``adasched`` log records: send them to stderr (the job's ``.err``)."""
    if logging.getLogger("adasched").handlers or logging.getLogger().handlers:
        yield
        return
    with log_records_to(sys.stderr):
        yield


@dataclass
class Resumable:
    """``fn(**kwargs)``, a function that writes the file ``output`` atomically and resumes from its own partial
    work when called again with the same arguments, as one picklable job.

    Calling it runs ``fn`` unless ``output`` was already made from the same inputs (:meth:`done`: the record
    ``.<output name>.dispatch.json`` holds the digest of ``fn``, ``kwargs`` and the files they name), then
    writes that record.  ``checkpoint`` returns ``DelayedSubmission(self)``, so after a preemption or time-out
    submitit requeues the same job and ``fn`` resumes.  The keyword ``progress``, a progress callback that does
    not change the output, is left out of the digest.
    """

    fn: Callable
    kwargs: dict
    output: str

    def __post_init__(self):
        self.output = os.fspath(self.output)

    def digest(self) -> str:
        inputs = {k: v for k, v in self.kwargs.items() if k != "progress"}
        return inputs_digest({"fn": _callable_name(self.fn), "kwargs": inputs}, exclude=[self.output])

    def done(self) -> bool:
        """Whether ``output`` exists and was made from these inputs."""
        return _shard_done(Path(self.output), self.digest())

    def mark_done(self) -> None:
        _write_marker(self.output, self.digest(), _callable_name(self.fn))

    def __call__(self) -> str:
        with _job_logging():
            if self.done():  # e.g. a job requeued after it had finished, or run again with the same inputs
                log.info("%s is already made from the same inputs", self.output)
                return self.output
            self.fn(**self.kwargs)
            if not Path(self.output).exists():
                raise AdaschedError(f"{_callable_name(self.fn)} returned but did not write its output {self.output}")
            self.mark_done()
        return self.output

    def checkpoint(self, *args, **kwargs):
        import submitit  # optional at import time: only jobs on a cluster need it

        log.info("checkpoint of %s; the requeued job resumes from its partial work", self.output)
        return submitit.helpers.DelayedSubmission(self)


def _tail(path: Path, max_bytes: int = 200_000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})\n"
    return text if text.endswith("\n") or not text else text + "\n"
