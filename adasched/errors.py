"""The project's error hierarchy.

Every error a user can cause is an :class:`AdaschedError`; the CLI turns one into a single line on
stderr and a non-zero exit.  ``assert`` is kept for internal invariants only.
"""


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
