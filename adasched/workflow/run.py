"""The one entry of every workflow rule that runs a stage: :func:`run_stage`.

A rule names its stage of :mod:`adasched.stages` and passes that stage's keyword arguments (its ``params``,
its files and wildcards).  :func:`run_stage` binds them to the stage's signature in the Snakemake process --
so a wrong option is one error before anything runs or is submitted, and wildcards arrive as numbers -- then
runs the stage as a :class:`adasched.dispatch.Resumable` job where the config's ``dispatch`` block says: in a
thread of the Snakemake process, in a process of its own, or as SLURM jobs (a sample split into seed shards
runs as one job array and is joined by :func:`adasched.stages.merge_samples`).  Progress, SLURM job ids and
log files go to the rule's log.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

import torch

from adasched.dispatch import Dispatcher, Resumable
from adasched.errors import AdaschedError, exit_status
from adasched.io import logging_to
from adasched.progress import Lines
from adasched.stages import STAGES, bind, merge_samples

__all__ = ["run_stage", "run_here", "main"]

log = logging.getLogger(__name__)


def run_stage(name: str, log_path: str | os.PathLike, config: dict, /, *, in_thread: bool = True, **options) -> str:
    """Run the stage ``name`` with ``options`` for a rule whose log is ``log_path``; return its output.
    (``config`` is the workflow's config; ``options`` may hold the stage's own ``config``, as train's does.)

    There are hundreds of cell jobs, most of them milliseconds of work on an analytic target, while a new
    Python with torch costs about 2 s of CPU; so a local job runs right here, in a thread of the Snakemake
    process (``--force-use-threads``, which the workflow profile ``profiles/default`` sets), with one torch
    thread, as Snakemake counts it.  A job gets a process of its own (started through Snakemake's ``shell``,
    like a script job) when ``in_thread`` is false (long, Python-bound work that would hold the interpreter
    lock against every other job: :meth:`adasched.workflow.Sweep.in_thread`) and when it is dispatched to
    SLURM, so that stopping Snakemake interrupts the wait and cancels the jobs.
    """
    options = bind(name, options)
    if Dispatcher.from_config(config, stage=name).executor == "local" and in_thread:
        torch.set_num_threads(1)
        return run_here(name, log_path, config, **options)
    from snakemake.shell import shell  # only ever called inside a Snakemake job

    block = {"results": config.get("results", ""), "dispatch": config.get("dispatch") or {}}
    argv = [sys.executable, "-m", "adasched.workflow", name, str(log_path), json.dumps(block), _to_json(options)]
    # shell() formats its command with the job's variables: the JSON's braces are doubled to stay literal.
    shell(" ".join(map(shlex.quote, argv)).replace("{", "{{").replace("}", "}}"))
    return str(options["output"])


def _to_json(options: dict) -> str:
    """A stage's options as JSON (:func:`adasched.stages.bind` turns them back: dataclasses from mappings)."""
    def encode(v):
        if dataclasses.is_dataclass(v):
            return dataclasses.asdict(v)
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        raise TypeError(f"option value {v!r} cannot travel as JSON")

    return json.dumps({k: v for k, v in options.items() if k != "progress"}, default=encode)


def run_here(name: str, log_path: str | os.PathLike, config: dict, /, **options) -> str:
    """The stage ``name`` as :func:`run_stage` runs it, from this process: bound to its signature, then run
    here or waited for on SLURM as the config's ``dispatch`` block says, with progress lines, SLURM job ids and
    log files in ``log_path`` (started afresh).  A failure is one :class:`AdaschedError` naming the log."""
    options = bind(name, options)
    d = Dispatcher.from_config(config, stage=name)
    shards = d.sample_shards if name == "sample" else 1
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    Path(log_path).write_text(f"adasched {name} {options['output']}  [executor: {d.executor}"
                              + (f", {shards} seed shards" if shards > 1 else "") + "]\n")
    options["progress"] = options["progress"] or Lines()
    output = str(options["output"])
    with logging_to(log_path, append=True):
        try:
            if shards > 1:
                return _sample_in_shards(d, options, shards)
            return d.run_all([Resumable(STAGES[name], options, output)], name=f"{name} {output}")[0]
        except AdaschedError as e:
            log.error("%s", e)
            if d.executor != "local":
                raise
            raise AdaschedError(f"adasched {name} failed: {e} (log: {log_path})") from None


def _sample_in_shards(d: Dispatcher, options: dict, shards: int) -> str:
    """The sample ``options`` ask for as ``shards`` contiguous seed ranges, ONE job array, joined into its output.

    The ranges are cut between the unsharded run's batches, so each shard computes exactly the batches that
    run would, and the joined file holds its arrays bit for bit, on any CPU.  Shards live in
    ``.<output name>.shards/`` beside the output; a shard finished from the same inputs is not run again (a
    rerun after a failed or cancelled array only submits the rest), and the folder is removed once the joined
    output is in place.
    """
    out = Path(options["output"])
    num, start, batch = options["num"], options["seed_start"], options["batch"]
    batches = -(-num // batch)
    if shards > batches:
        raise AdaschedError(f"dispatch.sample_shards ({shards}) is more than the {batches} batches of {batch} "
                            f"samples of {out} (sample.batch)")
    whole = Resumable(STAGES["sample"], options, out)
    if whole.done():
        log.info("sample: %s is already made from the same inputs", out)
        return str(out)
    folder = out.parent / f".{out.name}.shards"
    bounds = [start + min(num, batch * ((batches * k) // shards)) for k in range(shards + 1)]
    parts = [Resumable(STAGES["sample"], {**options, "seed_start": a, "num": b - a, "output": str(part)}, part)
             for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])) for part in [folder / f"shard-{k:04d}.npz"]]
    d.run_all(parts, name=f"sample {out}")
    merge_samples([p.output for p in parts], out)
    whole.mark_done()
    shutil.rmtree(folder, ignore_errors=True)
    return str(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m adasched.workflow STAGE LOG CONFIG_JSON OPTIONS_JSON``: the process of its own that
    :func:`run_stage` starts; exit 1 with one line on stderr on failure."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 4:
        print("usage: python -m adasched.workflow STAGE LOG CONFIG_JSON OPTIONS_JSON", file=sys.stderr)
        return 2
    name, log_path, config, options = argv[0], argv[1], json.loads(argv[2]), json.loads(argv[3])
    return exit_status(name, lambda: run_here(name, log_path, config, **options))
