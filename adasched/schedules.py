"""Discretisation schedules: validated values, closed-form constructors, resampling.

A schedule is a strictly decreasing float64 sequence of noise levels ``sigma_0 > ... > sigma_{N-1} > 0``
followed by exactly ``sigma_N = 0``; it has ``N`` steps.  Constructors ``sigmas_<name>(n, ...)`` return
``n + 1`` values (``n`` steps) in that form.  Which NFE a schedule costs depends on the solver; that
mapping lives in :mod:`adasched.samplers` (``SOLVERS``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from adasched.denoisers import VPLinearBeta
from adasched.errors import ScheduleError
from adasched.io import read_json, write_json
from adasched.limits import MAX_STEPS, check_size

__all__ = [
    "Schedule",
    "validate_sigmas",
    "sigmas_edm",
    "sigmas_loglinear",
    "sigmas_kl_optimal",
    "sigmas_time_uniform",
    "resample",
    "CLOSED_FORM",
    "SIGMA_MIN",
    "SIGMA_MAX",
]

#: EDM's default noise range (Karras et al. 2022).
SIGMA_MIN = 0.002
SIGMA_MAX = 80.0


#: What a NumPy dtype kind that is not a real number holds, for validate_sigmas' error message.
_NOT_NUMBERS = {"b": "booleans", "U": "strings", "S": "bytes", "c": "complex numbers"}


def validate_sigmas(sigmas: Any) -> torch.Tensor:
    """Return ``sigmas`` as a float64 CPU tensor after checking the schedule invariants.

    The result is a copy (it never aliases ``sigmas``, so a validated value cannot change afterwards);
    tensors on any device, and tensors that require grad, are read through ``detach().cpu()``.
    """
    if isinstance(sigmas, torch.Tensor):
        if sigmas.dtype == torch.bool or sigmas.is_complex():
            raise ScheduleError(f"sigmas must be real numbers, found a {sigmas.dtype} tensor")
        s = sigmas.detach().to(device="cpu", dtype=torch.float64, copy=True)
    else:
        try:
            array = np.asarray(sigmas)
        except ValueError:  # ragged nesting
            raise ScheduleError("sigmas must be a 1-D list of numbers, found nested lists of unequal "
                                "lengths") from None
        if array.dtype.kind not in "iuf":  # no strings, booleans, complex numbers or objects
            found = _NOT_NUMBERS.get(array.dtype.kind, "values that are not numbers")
            raise ScheduleError(f"sigmas must be a list of numbers, found {found}")
        s = torch.from_numpy(array.astype(np.float64))  # astype copies
    if s.ndim != 1 or s.numel() < 2:
        raise ScheduleError(f"sigmas must be a 1-D list of at least 2 values, got shape {tuple(s.shape)}")
    check_size("number of steps of a schedule", s.numel() - 1, MAX_STEPS, "adasched.limits.MAX_STEPS")
    if not torch.isfinite(s).all():
        i = int(torch.nonzero(~torch.isfinite(s))[0])
        raise ScheduleError(f"sigmas must be finite, found sigmas[{i}]={s[i].item()}")
    if s[-1] != 0:
        raise ScheduleError(f"sigmas must end in exactly 0, got last value {s[-1].item():g}")
    if (s[:-1] <= 0).any():
        raise ScheduleError("sigmas before the final 0 must be positive")
    if not (s[1:] < s[:-1]).all():
        i = int(torch.nonzero(s[1:] >= s[:-1])[0])
        raise ScheduleError(
            f"sigmas must be strictly decreasing, but sigmas[{i}]={s[i].item():g} "
            f"<= sigmas[{i + 1}]={s[i + 1].item():g}")
    return s


_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"), ((list, tuple), "array"),
               (dict, "object"))


def _found(value: Any) -> str:
    """``value`` with the name of its JSON type, for error messages (``float 35.0``, ``string '80'``)."""
    if value is None:
        return "null"
    kind = next((name for types, name in _JSON_TYPES if isinstance(value, types)), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


#: The keys of a schedule file (design.md's schedule JSON); ``params`` and ``provenance`` may be left out.
_JSON_KEYS = ("sigmas", "method", "solver", "nfe", "params", "provenance")


@dataclass(frozen=True)
class Schedule:
    """A validated schedule with what made it (the design's schedule JSON, as a value).

    ``sigmas`` is float64 and ends in 0; ``nfe`` is the true number of denoiser evaluations per
    sample that ``solver`` spends on it; ``method`` and ``solver`` are strings, ``params`` and
    ``provenance`` dicts (copied).
    """

    sigmas: torch.Tensor
    method: str
    solver: str
    nfe: int
    params: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "sigmas", validate_sigmas(self.sigmas))
        for key, kind, what in (("method", str, "a string"), ("solver", str, "a string"),
                                ("params", dict, "an object"), ("provenance", dict, "an object")):
            if not isinstance(getattr(self, key), kind):
                raise ScheduleError(f"{key} must be {what}, found {_found(getattr(self, key))}")
        if not isinstance(self.nfe, int) or isinstance(self.nfe, bool) or self.nfe < 1:
            raise ScheduleError(f"nfe must be a positive integer, found {_found(self.nfe)}")
        object.__setattr__(self, "params", dict(self.params))
        object.__setattr__(self, "provenance", dict(self.provenance))

    @property
    def steps(self) -> int:
        return self.sigmas.numel() - 1

    def to_json(self) -> dict:
        return {
            "sigmas": [float(v) for v in self.sigmas.tolist()],
            "method": self.method,
            "solver": self.solver,
            "nfe": self.nfe,
            "params": self.params,
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, obj: Any, source: str = "schedule") -> "Schedule":
        """The schedule in ``obj``, a parsed schedule file, type-checked strictly.

        ``obj`` must be an object with the keys ``sigmas``, ``method``, ``solver``, ``nfe``, ``params``
        and ``provenance`` and no others (``params`` and ``provenance`` may be missing): ``sigmas`` an
        array of numbers (no strings, booleans or nested arrays), finite, positive and strictly
        decreasing, ending in exactly 0; ``method`` and ``solver`` strings; ``nfe`` a positive integer
        (not a float or boolean); ``params`` and ``provenance`` objects.  A violation is a
        :class:`ScheduleError`, one line that starts with ``source`` and names the key, the expected
        type and what was found.
        """
        try:
            if not isinstance(obj, dict):
                raise ScheduleError(f"expected a JSON object with keys {', '.join(_JSON_KEYS)}, "
                                    f"found {_found(obj)}")
            unknown = [k for k in obj if k not in _JSON_KEYS]
            if unknown:
                raise ScheduleError(f"unknown key(s) {', '.join(map(repr, unknown))}; valid keys: "
                                    f"{', '.join(_JSON_KEYS)}")
            missing = [k for k in ("sigmas", "method", "solver", "nfe") if k not in obj]
            if missing:
                raise ScheduleError(f"missing key(s) {', '.join(missing)}")
            sigmas = obj["sigmas"]
            if not isinstance(sigmas, list):
                raise ScheduleError(f"sigmas must be an array of numbers, found {_found(sigmas)}")
            for i, v in enumerate(sigmas):
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    raise ScheduleError(f"sigmas must be an array of numbers, found {_found(v)} at "
                                        f"sigmas[{i}]")
            return cls(sigmas=sigmas, method=obj["method"], solver=obj["solver"], nfe=obj["nfe"],
                       params=obj.get("params", {}), provenance=obj.get("provenance", {}))
        except ScheduleError as e:
            raise ScheduleError(f"{source}: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Schedule":
        return cls.from_json(read_json(path, "schedule file"), source=str(path))


def _check_steps(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ScheduleError(f"number of steps must be a positive integer, got {n!r}")
    check_size("number of steps", n, MAX_STEPS, "adasched.limits.MAX_STEPS")


def _check_range(n: int, sigma_min: float, sigma_max: float) -> None:
    _check_steps(n)
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ScheduleError(f"need 0 < sigma_min < sigma_max, got {sigma_min:g} and {sigma_max:g}")


def _with_zero(s: torch.Tensor, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Pin the endpoints exactly (rounding in the formulas moves them by an ulp or so) and append 0."""
    s = s.to(torch.float64).clone()
    s[0] = sigma_max
    if s.numel() > 1:
        s[-1] = sigma_min
    return torch.cat([s, s.new_zeros(1)])


def _ramp(n: int) -> torch.Tensor:
    """``n`` points from 0 to 1 (a single point is 0: a one-step schedule starts at sigma_max)."""
    return torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)


def sigmas_edm(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
               rho: float = 7.0) -> torch.Tensor:
    """EDM's polynomial schedule (Karras et al. 2022, Eq. 5; the score-optimal paper's Eq. 22).

    ``sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``, plus 0.
    """
    _check_range(n, sigma_min, sigma_max)
    if not rho > 0:
        raise ScheduleError(f"rho must be positive, got {rho:g}")
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return _with_zero((a + _ramp(n) * (b - a)) ** rho, sigma_min, sigma_max)


def sigmas_loglinear(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX) -> torch.Tensor:
    """Uniform in log sigma, i.e. uniform in logSNR (Lu et al. 2022), plus 0."""
    _check_range(n, sigma_min, sigma_max)
    return _with_zero(torch.exp(math.log(sigma_max) + _ramp(n) * (math.log(sigma_min) - math.log(sigma_max))),
                      sigma_min, sigma_max)


def sigmas_kl_optimal(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX) -> torch.Tensor:
    """KL-optimal schedule for Euler/DDIM on unit-variance Gaussian data (Sabour et al. 2024, App. A.1).

    ``arctan(sigma_i)`` is linear in ``i``, plus 0.
    """
    _check_range(n, sigma_min, sigma_max)
    a, b = math.atan(sigma_max), math.atan(sigma_min)
    return _with_zero(torch.tan(a + _ramp(n) * (b - a)), sigma_min, sigma_max)


def sigmas_time_uniform(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                        beta_min: float = 0.1, beta_d: float = 19.9) -> torch.Tensor:
    """Uniform in the time of the linear-beta VP process (Song et al. 2021), mapped to sigma, plus 0."""
    _check_range(n, sigma_min, sigma_max)
    vp = VPLinearBeta(beta_min, beta_d)
    lo, hi = vp.t(torch.tensor(sigma_min, dtype=torch.float64)), vp.t(torch.tensor(sigma_max, dtype=torch.float64))
    return _with_zero(vp.sigma(hi + _ramp(n) * (lo - hi)), sigma_min, sigma_max)


#: The closed-form schedules, by method name (as used in schedule files and on the command line).
CLOSED_FORM: dict[str, Callable[..., torch.Tensor]] = {
    "edm": sigmas_edm,
    "loglinear": sigmas_loglinear,
    "kl-optimal": sigmas_kl_optimal,
    "time-uniform": sigmas_time_uniform,
}


def resample(sigmas: Any, n: int) -> torch.Tensor:
    """Read a schedule out at ``n`` steps, keeping its endpoints and its shape.

    The positive part is treated as a monotone function of the normalised step index ``u in [0, 1]``,
    interpolated in log sigma with a monotone cubic (PCHIP, Fritsch & Carlson 1980); ``n + 1`` values
    ending in 0 are returned.  Resampling to the original step count returns the input.
    """
    # heavy: scipy.interpolate would slow every start; only resampling needs it
    from scipy.interpolate import PchipInterpolator

    _check_steps(n)
    full = validate_sigmas(sigmas)
    s = full[:-1].numpy()
    if n == s.size:
        return full  # the input exactly (a copy): exp(log(sigma)) would move values by an ulp
    if s.size == 1:
        raise ScheduleError(f"cannot resample a one-step schedule to {n} steps: it has no shape to keep")
    u = np.linspace(0, 1, s.size)
    f = PchipInterpolator(u, np.log(s))
    out = np.exp(f(np.linspace(0, 1, n))) if n > 1 else s[:1]
    out[0] = s[0]
    if n > 1:
        out[-1] = s[-1]
    return validate_sigmas(np.append(out, 0.0))
