"""Progress of long stages: one callback protocol, two renderings.

Every long stage of :mod:`adasched.stages` (probe, the reference solves and fits of a schedule, sample,
evaluate, train) takes ``progress``, a callable ``progress(task, done, total)``: ``task`` names the work
(``"sample"``, ``"reference solve"``, ``"fit 2/3 (adam)"``), ``done`` counts units finished so far and
``total`` is the number of units, or ``None`` when it is not known in advance.  Library functions call it
and never print; the caller picks the rendering:

* :class:`Bar`: a tqdm bar per task on a terminal (what the CLI uses when stderr is a TTY);
* :class:`Lines`: a line at the start and end of each task and at every 10% of it in between, for logs
  (the CLI with stderr redirected, Snakemake rule logs, SLURM job logs).  It is picklable, so a SLURM job
  carries it along.

:func:`for_stream` picks one of the two for a stream.
"""

from __future__ import annotations

import logging
import shutil
import sys
from typing import Callable, Optional, TextIO

__all__ = ["Progress", "Bar", "Lines", "for_stream", "report"]

log = logging.getLogger(__name__)

#: ``progress(task, done, total)``; ``total`` is None when the amount of work is not known in advance.
Progress = Callable[[str, int, Optional[int]], None]


def report(progress: Progress | None, task: str, done: int, total: int | None) -> None:
    """``progress(task, done, total)`` when a callback was given (the one line library code needs)."""
    if progress is not None:
        progress(task, done, total)


class Lines:
    """Progress as log lines: ``TASK: DONE/TOTAL (P%)`` when a task starts, at every further 10% and when it ends.

    ``stream=None`` (the default, and the picklable form) sends the lines through the ``adasched.progress``
    logger at INFO, so they land wherever the job's log records go; a stream gets them written directly.
    """

    def __init__(self, stream: TextIO | None = None, step: float = 0.1):
        self.stream = stream
        self.step = step
        self._last: dict[str, float] = {}

    def __getstate__(self):  # a stream does not pickle; a job in another process logs instead
        return {"stream": None, "step": self.step, "_last": {}}

    def __call__(self, task: str, done: int, total: int | None) -> None:
        if total:
            frac = done / total
            bucket = float("inf") if done >= total else int(frac / self.step + 1e-9)
            last = self._last.get(task)
            if last is not None and bucket <= last:
                return
            self._last[task] = bucket
            text = f"{task}: {done}/{total} ({100 * frac:.0f}%)"
        else:
            count = int(self._last.get(task, 0)) + 1
            self._last[task] = count
            if count & (count - 1):  # indeterminate work: the 1st, 2nd, 4th, 8th, ... call
                return
            text = f"{task}: {done}"
        if self.stream is None:
            log.info("%s", text)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()


class Bar:
    """Progress as tqdm bars on a terminal, one per task (a new task closes the previous bar)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self._task: str | None = None
        self._bar = None

    def __call__(self, task: str, done: int, total: int | None) -> None:
        from tqdm import tqdm  # a terminal-only dependency, loaded when a bar is first drawn

        if task != self._task or self._bar is None:
            self.close()
            self._task = task
            # The terminal's size at the bar's start; one that reports none (0 x 0, as some pseudo-terminals do,
            # which tqdm would take for "no room": no bar at all) counts as 80 x 24.
            size = shutil.get_terminal_size()
            self._bar = tqdm(total=total, desc=task, file=self.stream, ncols=size.columns, nrows=size.lines,
                             leave=True, mininterval=0.1)
        self._bar.n = done
        self._bar.refresh()
        if total is not None and done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._task = None


def for_stream(stream: TextIO) -> Bar | Lines:
    """A :class:`Bar` when ``stream`` is a terminal, else :class:`Lines` written to it."""
    isatty = getattr(stream, "isatty", None)
    return Bar(stream) if callable(isatty) and isatty() else Lines(stream)
