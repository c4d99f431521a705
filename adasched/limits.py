"""Resource limits: sizes a user gives are checked before anything is allocated.

Two kinds of bound, both raising :class:`~adasched.errors.LimitError` with one line that names the number:

* sanity caps where memory is not the question (:data:`MAX_NFE`, :data:`MAX_STEPS`,
  :data:`MAX_PROBE_INTERVALS`): far beyond any useful value, low enough that everything sized by them is
  small (a 100,000-step schedule is 800 KB) -- :func:`check_size`;
* memory: an estimate of the bytes a request allocates, against :func:`available_memory`, the least of
  the kernel's ``MemAvailable``, the address-space headroom under ``RLIMIT_AS`` and the headroom in the
  process's memory cgroup -- :func:`check_memory`.  Estimates count the arrays a function itself makes
  from the user's sizes, so they are lower bounds; they are there to turn a request that cannot fit into
  one line instead of a ``MemoryError`` traceback or the kernel's OOM killer.
"""

from __future__ import annotations

import math
import resource
from pathlib import Path

from adasched.errors import LimitError

__all__ = ["MAX_NFE", "MAX_STEPS", "MAX_PROBE_INTERVALS", "available_memory", "check_memory", "check_size",
           "array_bytes"]

#: Most network evaluations per sample a solver may be asked for: 12x the 8,191 NFE of the finest solve the
#: project makes (4096 Heun steps, :func:`adasched.references.reference_solution`); 50k CIFAR-10 samples at
#: 100,000 NFE are about 20 days on one H100 (design.md's 2,885 NFE img/s).
MAX_NFE = 100_000
#: Most steps of a schedule (every solver spends at least one evaluation per step, so NFE >= steps).
MAX_STEPS = MAX_NFE
#: Most probe intervals K: 500x the quality tables' 200; each costs 2 evaluations per sample.
MAX_PROBE_INTERVALS = 100_000

GiB = 1 << 30
#: cgroup v1 reports "no limit" as a page-rounded 2^63 - 1; anything at or above this is no limit.
_NO_LIMIT = 1 << 60


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _address_space_headroom() -> int | None:
    """``RLIMIT_AS`` less the address space already mapped (``VmSize``), or ``None`` without a limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                used = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max(0, soft - used)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_headroom(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory cgroup's limit less its usage (reclaimable file cache not counted as used), if limited.

    Reads the cgroup as mounted in this process's view: v2 (``memory.max``) or v1 (``memory.limit_in_bytes``).
    """
    for limit_file, usage_file, stat_key, d in (("memory.max", "memory.current", "inactive_file", root),
                                                ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                 "total_inactive_file", root / "memory")):
        limit = _read_int(d / limit_file)
        if limit is None or limit >= _NO_LIMIT:
            continue
        usage = _read_int(d / usage_file) or 0
        return max(0, limit - max(0, usage - _stat(d / "memory.stat", stat_key)))
    return None


def available_memory() -> tuple[int, str]:
    """``(bytes, what limits it)``: the least of MemAvailable, the RLIMIT_AS headroom and the cgroup headroom."""
    found = [(v, name) for v, name in ((_meminfo_available(), "MemAvailable"),
                                       (_address_space_headroom(), "RLIMIT_AS less the mapped address space"),
                                       (_cgroup_headroom(), "memory cgroup limit less its usage"))
             if v is not None]
    return min(found) if found else (math.inf, "no limit found")


def array_bytes(count: int, *shape: int, itemsize: int = 8) -> int:
    """Bytes of ``count`` arrays of ``shape`` with ``itemsize``-byte items (Python integers: no overflow)."""
    return int(count) * math.prod(int(s) for s in shape) * int(itemsize)


def check_memory(what: str, nbytes: int, estimate: str) -> None:
    """Refuse (:class:`LimitError`) a request estimated at ``nbytes`` when more than the available memory.

    ``what`` names the request with its numbers, ``estimate`` how ``nbytes`` was counted; both go into the
    one-line message: "WHAT needs about N GiB (ESTIMATE), more than the M GiB available (LIMIT)".
    """
    have, source = available_memory()
    if nbytes > have:
        raise LimitError(f"{what} needs about {nbytes / GiB:.3g} GiB ({estimate}), more than the "
                         f"{have / GiB:.3g} GiB available ({source})")


def check_size(what: str, value: int, maximum: int, why: str = "") -> None:
    """Refuse (:class:`LimitError`) ``value`` above the documented ``maximum`` of ``what``."""
    if value > maximum:
        raise LimitError(f"{what} {value} is above the maximum {maximum:,}" + (f" ({why})" if why else ""))
