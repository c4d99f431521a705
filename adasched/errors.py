"""The project's error hierarchy.

Every error a user can cause is an :class:`AdaschedError`; the CLI turns one into a single line on
stderr and a non-zero exit (:func:`exit_status`).  ``assert`` is kept for internal invariants only.
"""

import sys
from typing import Callable


class AdaschedError(Exception):
    """Base class for errors caused by input, configuration or the environment."""


class ScheduleError(AdaschedError, ValueError):
    """A schedule is malformed (not strictly decreasing, not ending in 0, wrong length, ...)."""


class SolverError(AdaschedError, ValueError):
    """An unknown solver, bad solver option, or an NFE the solver cannot reach exactly."""


class ModelError(AdaschedError, ValueError):
    """A model SPEC or model file is malformed, unknown or refused."""


class DataError(AdaschedError, ValueError):
    """A data source or data file is malformed or missing."""


class DownloadError(AdaschedError, OSError):
    """A file could not be fetched or failed verification."""


class Interrupted(AdaschedError):
    """SIGTERM arrived while a file was being written (:func:`adasched.io.atomic_path` cleaned up first)."""


class LimitError(AdaschedError):
    """A requested size is beyond a documented maximum, or needs more memory than the machine has."""


def exit_status(command: str, work: Callable[[], object]) -> int:
    """Run ``work()`` for the command ``adasched COMMAND`` (the CLI, a workflow stage's own process): 0; or one
    line ``adasched COMMAND: error: ...`` on stderr and 1 for an :class:`AdaschedError`, 130 for an
    interruption.  No traceback either way: what a user can cause is said in one line."""
    try:
        work()
    except AdaschedError as e:
        print(f"adasched {command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"adasched {command}: interrupted", file=sys.stderr)
        return 130
    return 0
