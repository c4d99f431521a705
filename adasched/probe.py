"""Monte-Carlo estimation of the incremental costs (paper.md §2.3, §3.2, §3.4), stored in HDF5.

For a probe grid ``sigma_0 < ... < sigma_K`` (increasing, as in :mod:`adasched.optimize`) and each interval
``i`` between ``sigma_i`` (lower noise, the step's target ``t'``) and ``sigma_{i+1}`` (higher noise, ``t``)::

    x0 ~ data,  eps ~ N(0, I),  x = x0 + sigma_{i+1} eps           # x ~ p_{sigma_{i+1}}, the "from" marginal
    Delta = score(x, sigma_i) - score(x, sigma_{i+1})                # score = (D(x, sigma) - x) / sigma^2
    L_c   = v^2 ||Delta||^2  (summed over all coordinates)           # v = sigma_i (paper, default) or sigma_{i+1}

whose mean over samples estimates ``L_c(t, t') = v(t')^2 E_{p_t} ||grad log p_t' - grad log p_t||^2``
(paper.md §2.3, the Fisher divergence of Eqs. 13–15 weighted by ``v = sigma``, §3.3).  Costs 2 denoiser
evaluations per sample and interval, no gradients.  The predictor-optimised cost ``L_p`` (``cost="predictor"``,
:func:`predictor_costs`) replaces the identity predictor by an Euler probability-flow step and needs
Jacobian-vector products and a Hutchinson trace estimate.

Determinism (design.md, common random numbers): sample ``j`` of a probe uses seed ``seed_start + j``; its
data point and noise for interval ``i`` come from two 63-bit seeds derived from ``(seed, i)`` by a
splitmix64 hash, drawn on the CPU per sample, so every interval gets an independent ``(x0, eps)`` and no
result depends on the batch size, the device or on where a run was interrupted.  Per-interval count, sum and
sum of squares are accumulated sample by sample in seed order (sequential float64 adds), so one run of
``n + m`` samples and a run of ``n`` followed by ``m`` more give bit-identical accumulators.

Storage: after every batch the whole (small) file is built in memory, written to a temporary name, fsync'ed
and moved into place with :func:`os.replace` (:func:`adasched.io.atomic_path`), so a killed probe loses at
most the batch in flight and never leaves a torn file, and a failed write (full disk) is one error line:
HDF5 itself never writes to disk (its failed writes crash the interpreter at exit).  HDF5 file locking is
off (``locking=False``) for NFS/Lustre (ecosystem.md E); instead :func:`probe` holds an ``flock`` on the
sidecar ``PATH.lock`` (:func:`adasched.io.exclusive_lock`) from reading the file to its last write, so a
second probe of the same file waits, then continues with the next unused seeds.

Model identity: a file records its model's content hash (``meta["model_hash"]``,
:func:`adasched.models.content_hash`), and samples from a model of other content are refused, whatever its
SPEC; the same model under another SPEC or path is accepted.  A file written before the hash was recorded
(or a model with nothing to hash, a plain callable) is checked by the SPEC string and file sha256 instead,
with a warning for the old file.  :func:`check_model` applies the same check for a schedule fitted to a model.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np
import torch

from adasched.denoisers import working_bytes
from adasched.errors import AdaschedError, DataError, ModelError, ScheduleError
from adasched.io import atomic_path, check_output, exclusive_lock, provenance
from adasched.limits import MAX_PROBE_INTERVALS, array_bytes, check_memory, check_size
from adasched.models import content_hash

__all__ = [
    "probe",
    "read_probes",
    "check_model",
    "ProbeResult",
    "probe_grid",
    "as_grid",
    "corrector_costs",
    "predictor_costs",
    "COSTS",
    "derive_seeds",
    "interval_inputs",
    "target_sampler",
    "dataset_sampler",
    "TargetSampler",
    "DatasetSampler",
    "WEIGHTINGS",
    "FORMAT",
    "FORMAT_VERSION",
]

log = logging.getLogger(__name__)

#: Which end of an interval gives the velocity ``v`` (paper.md §3.2, §5.1): ``lower`` is the paper's
#: ``v(t')``, the lower-noise target level; ``upper`` is the higher-noise level (as in [R2]).
WEIGHTINGS = ("lower", "upper")
#: Cost variants (paper.md §2.3): the corrector-optimised cost (identity predictor) and the
#: predictor-optimised cost (Euler probability-flow predictor, §3.4).
COSTS = ("corrector", "predictor")
FORMAT = "adasched-probes"
FORMAT_VERSION = 1
#: Keys of ``meta`` that identify what was probed; a file refuses samples whose identity differs.  The model is
#: known by ``model_hash`` (its content) where the file and the run have one, else by ``model`` (the SPEC) and
#: ``model_sha256`` (its file's bytes).
IDENTITY_KEYS = ("model", "model_sha256", "model_hash", "data")

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


# ----------------------------------------------------------------------------------------------- seeds


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele, Lea & Flood 2014), elementwise on ``uint64`` (wrapping)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _as_seeds(seeds: Sequence[int]) -> np.ndarray:
    s = np.asarray(list(seeds) if not isinstance(seeds, np.ndarray) else seeds)
    if s.ndim != 1 or (s.size and not np.issubdtype(s.dtype, np.integer)):
        raise DataError(f"seeds must be a 1-D list of integers, got {s.dtype} array of shape {s.shape}")
    if s.size and s.min() < 0:
        raise DataError(f"seeds must be non-negative, got {int(s.min())}")
    return s.astype(np.uint64)


def derive_seeds(seeds: Sequence[int], interval: int, stream: int) -> np.ndarray:
    """63-bit seeds for ``(sample seed, interval, stream)``; stream 0 draws data, stream 1 draws noise.

    A pure function of its arguments (splitmix64 mixing), so the inputs of a sample do not depend on the
    batch it is processed in.  Returned as ``int64`` (non-negative).
    """
    s = _as_seeds(seeds)
    h = _splitmix64(_splitmix64(_splitmix64(s) ^ np.uint64(interval)) ^ np.uint64(stream))
    return (h >> np.uint64(1)).astype(np.int64)


def _noise(seeds: np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    """Standard normal ``[len(seeds), *shape]`` float64, row ``j`` from a CPU generator seeded ``seeds[j]``."""
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
            for s in seeds]
    return torch.stack(rows) if rows else torch.empty(0, *shape, dtype=torch.float64)


# ------------------------------------------------------------------------------------------ data samplers


class TargetSampler:
    """Data sampler for an analytic target: row ``j`` is ``target.sample(1, generator)`` seeded ``seeds[j]``.

    Works for any object with ``sample(n, generator=..., dtype=...)`` (e.g.
    :class:`~adasched.targets.GaussianMixture`, :class:`~adasched.targets.PowerLawGaussian`).
    """

    def __init__(self, target: Any, description: str | None = None):
        if not callable(getattr(target, "sample", None)):
            raise DataError(f"target {type(target).__name__} has no sample(n, generator) method")
        self.target = target
        self.description = description if description is not None else f"target:{type(target).__name__}"

    def __call__(self, seeds: Sequence[int]) -> torch.Tensor:
        rows = [self.target.sample(1, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
                for s in np.asarray(seeds).tolist()]
        return torch.cat(rows)


class DatasetSampler:
    """Data sampler over an in-memory dataset ``[N, ...]``: row ``j`` is ``data[h(seeds[j]) mod N]``.

    ``h`` is the splitmix64 hash, so consecutive seeds give well-spread indices; the choice is with
    replacement and deterministic per seed.
    """

    def __init__(self, data: Any, description: str | None = None):
        arr = data if isinstance(data, torch.Tensor) else torch.as_tensor(np.asarray(data))
        if arr.ndim < 2 or arr.shape[0] < 1:
            raise DataError(f"dataset must have shape [N, ...] with N >= 1 and at least one data axis, "
                            f"got {tuple(arr.shape)}")
        if not arr.is_floating_point():
            arr = arr.to(torch.float64)
        self.data = arr
        self.description = description if description is not None else f"dataset:{tuple(arr.shape)}"

    def indices(self, seeds: Sequence[int]) -> np.ndarray:
        return (_splitmix64(_as_seeds(seeds)) % np.uint64(self.data.shape[0])).astype(np.int64)

    def __call__(self, seeds: Sequence[int]) -> torch.Tensor:
        return self.data[torch.from_numpy(self.indices(seeds))]


def target_sampler(target: Any, description: str | None = None) -> TargetSampler:
    """A data sampler ``seeds -> x0`` drawing exact samples of an analytic target (see :class:`TargetSampler`)."""
    return TargetSampler(target, description)


def dataset_sampler(data: Any, description: str | None = None) -> DatasetSampler:
    """A data sampler ``seeds -> x0`` over an in-memory array (see :class:`DatasetSampler`)."""
    return DatasetSampler(data, description)


# ------------------------------------------------------------------------------------------ the estimator


def as_grid(probe_sigmas: Any) -> np.ndarray:
    """Check a probe grid: 1-D, at least 2 points, finite, positive, strictly increasing."""
    try:
        s = np.asarray(probe_sigmas.cpu() if isinstance(probe_sigmas, torch.Tensor) else probe_sigmas,
                       dtype=np.float64)
    except (TypeError, ValueError):
        raise ScheduleError("probe sigmas must be a list of numbers") from None
    if s.ndim != 1 or s.size < 2:
        raise ScheduleError(f"probe sigmas must be a 1-D list of at least 2 values, got shape {s.shape}")
    if not np.isfinite(s).all() or (s <= 0).any():
        raise ScheduleError("probe sigmas must be finite and positive (the final 0 is not a probe point)")
    if not (np.diff(s) > 0).all():
        i = int(np.nonzero(np.diff(s) <= 0)[0][0])
        raise ScheduleError(
            f"probe sigmas must be strictly increasing (low to high noise), but sigmas[{i}]={s[i]:g} "
            f">= sigmas[{i + 1}]={s[i + 1]:g}")
    return s


def probe_grid(intervals: int, sigma_min: float = 0.002, sigma_max: float = 80.0, spacing: str = "log",
               rho: float = 7.0) -> np.ndarray:
    """``intervals + 1`` increasing probe sigmas on ``[sigma_min, sigma_max]`` (paper.md §3.6 step 1).

    ``spacing="log"``: uniform in ``log sigma``; ``"edm"``: uniform in ``sigma^(1/rho)`` (EDM's Eq. 5 grid,
    dense at low noise).  Endpoints are exact.
    """
    if not isinstance(intervals, (int, np.integer)) or isinstance(intervals, bool) or intervals < 1:
        raise ScheduleError(f"number of probe intervals must be a positive integer, got {intervals!r}")
    check_size("number of probe intervals", int(intervals), MAX_PROBE_INTERVALS, "adasched.limits.MAX_PROBE_INTERVALS")
    if not (0 < sigma_min < sigma_max < math.inf):
        raise ScheduleError(f"need 0 < sigma_min < sigma_max, got {sigma_min:g} and {sigma_max:g}")
    r = np.linspace(0.0, 1.0, int(intervals) + 1)
    if spacing == "log":
        s = np.exp(math.log(sigma_min) + r * (math.log(sigma_max) - math.log(sigma_min)))
    elif spacing == "edm":
        if not rho > 0:
            raise ScheduleError(f"rho must be positive, got {rho:g}")
        a, b = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        s = (a + r * (b - a)) ** rho
    else:
        raise ScheduleError(f"unknown probe grid spacing {spacing!r}; valid: log, edm")
    s[0], s[-1] = sigma_min, sigma_max
    return s


def corrector_costs(denoise: Callable, x0: torch.Tensor, eps: torch.Tensor, sigma_lo: float, sigma_hi: float,
                    *, weighting: str = "lower", dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per-sample corrector-optimised cost ``v^2 ||score(x, sigma_lo) - score(x, sigma_hi)||^2`` (§3.2).

    ``x = x0 + sigma_hi * eps`` is formed in float64, cast to ``dtype`` (default: ``x0``'s) for the
    denoiser, which is called twice on the whole batch with ``sigma`` of shape ``[B]``; the scores
    ``(D - x) / sigma^2`` and the squared norm over all coordinates are float64.  ``v = sigma_lo`` for
    ``weighting="lower"`` (the paper's ``v(t')``), ``sigma_hi`` for ``"upper"``.  Returns ``[B]`` float64.
    """
    if weighting not in WEIGHTINGS:
        raise AdaschedError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
    if not (0 < sigma_lo < sigma_hi):
        raise ScheduleError(f"need 0 < sigma_lo < sigma_hi, got {sigma_lo:g} and {sigma_hi:g}")
    if x0.shape != eps.shape:
        raise DataError(f"data batch has shape {tuple(x0.shape)} but the noise {tuple(eps.shape)}")
    dtype = dtype or x0.dtype
    x_in = (x0.to(torch.float64) + sigma_hi * eps.to(device=x0.device, dtype=torch.float64)).to(dtype)
    x = x_in.to(torch.float64)
    b = x.shape[0]
    sig_lo = torch.full((b,), sigma_lo, dtype=dtype, device=x.device)
    sig_hi = torch.full((b,), sigma_hi, dtype=dtype, device=x.device)
    d_lo = denoise(x_in, sig_lo).to(torch.float64)
    d_hi = denoise(x_in, sig_hi).to(torch.float64)
    delta = (d_lo - x) / sigma_lo**2 - (d_hi - x) / sigma_hi**2
    v = sigma_lo if weighting == "lower" else sigma_hi
    return v**2 * delta.reshape(b, -1).pow(2).sum(1)


def predictor_costs(denoise: Callable, x0: torch.Tensor, eps: torch.Tensor, sigma_lo: float, sigma_hi: float,
                    probes: torch.Tensor, *, weighting: str = "lower", dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per-sample predictor-optimised cost ``v^2 ||score(y, sigma_lo) - grad log F#p(y)||^2`` (paper.md §3.4).

    The predictor is one Euler step of the probability-flow ODE, ``F(x) = x + h u(x)`` with
    ``u = dx/dsigma = -sigma_hi score(x, sigma_hi)`` and ``h = sigma_lo - sigma_hi``, from
    ``x = x0 + sigma_hi eps``.  The score of the pushed-forward marginal at ``y = F(x)`` is taken to first
    order in ``h`` from the change of variables (paper.md §3.4)::

        grad log F#p(y) ~= s(x) - h [ (grad u)^T s(x) + grad (div u)(x) ]
                         = s(x) + h sigma_hi [ (grad s)^T s + grad tr(grad s) ](x)

    ``(grad s)^T s`` is a vector-Jacobian product; ``grad tr(grad s)`` comes from Hutchinson's estimator
    ``tr A ~= xi^T A xi`` with the given ``probes`` (``[n_probe, B, ...]`` Rademacher vectors), differentiated
    once more by autograd (so the denoiser must be twice differentiable in ``x``).  Evaluations: one forward
    at ``sigma_hi`` with ``1 + n_probe`` backward passes (each a double backward), one forward at ``sigma_lo``.

    With the exact score the first-order terms cancel (paper.md §2.4), so this cost is of higher order in
    ``h`` than the corrector's; Algorithm 1 equalises it all the same.  Experimental, as in the paper.
    """
    if weighting not in WEIGHTINGS:
        raise AdaschedError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
    if not (0 < sigma_lo < sigma_hi):
        raise ScheduleError(f"need 0 < sigma_lo < sigma_hi, got {sigma_lo:g} and {sigma_hi:g}")
    if x0.shape != eps.shape or probes.shape[1:] != x0.shape:
        raise DataError(f"data {tuple(x0.shape)}, noise {tuple(eps.shape)} and probes {tuple(probes.shape)} disagree")
    dtype = dtype or x0.dtype
    b = x0.shape[0]
    h = sigma_lo - sigma_hi
    sig_hi = torch.full((b,), sigma_hi, dtype=dtype, device=x0.device)
    sig_lo = torch.full((b,), sigma_lo, dtype=dtype, device=x0.device)
    x64 = x0.to(torch.float64) + sigma_hi * eps.to(device=x0.device, dtype=torch.float64)
    with torch.enable_grad():
        x = x64.to(dtype).requires_grad_(True)
        s = (denoise(x, sig_hi) - x) / sigma_hi**2
        (jts,) = torch.autograd.grad(s, x, grad_outputs=s.detach(), retain_graph=True)
        grad_div = torch.zeros_like(x64)
        for xi in probes.to(device=x.device, dtype=dtype):
            (j_xi,) = torch.autograd.grad(s, x, grad_outputs=xi, create_graph=True, retain_graph=True)
            if j_xi.requires_grad:  # else the score is linear in x (a Gaussian): grad tr(grad s) = 0
                (g,) = torch.autograd.grad((j_xi * xi).sum(), x, retain_graph=True)
                grad_div += g.to(torch.float64) / probes.shape[0]
    s64 = s.detach().to(torch.float64)
    y = x64 - h * sigma_hi * s64
    pushed = s64 + h * sigma_hi * (jts.detach().to(torch.float64) + grad_div)
    with torch.no_grad():
        target = (denoise(y.to(dtype), sig_lo).to(torch.float64) - y) / sigma_lo**2
    v = sigma_lo if weighting == "lower" else sigma_hi
    return v**2 * (target - pushed).reshape(b, -1).pow(2).sum(1)


def rademacher(seeds: np.ndarray, shape: Sequence[int], n_probe: int) -> torch.Tensor:
    """``[n_probe, len(seeds), *shape]`` Rademacher (+-1) vectors, row ``j`` from seed ``seeds[j]`` alone."""
    rows = []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        rows.append(torch.randint(0, 2, (n_probe, *shape), generator=g).to(torch.float64) * 2 - 1)
    return torch.stack(rows, dim=1) if rows else torch.empty(n_probe, 0, *shape, dtype=torch.float64)


def interval_inputs(data_sampler: Callable, seeds: Sequence[int], interval: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(x0, eps)`` a probe uses for ``seeds`` on interval ``interval`` (float64, CPU).

    ``x0 = data_sampler(derive_seeds(seeds, interval, 0))`` and ``eps`` standard normal from
    ``derive_seeds(seeds, interval, 1)``, one CPU generator per row.
    """
    x0 = data_sampler(derive_seeds(seeds, interval, 0).tolist())
    if not isinstance(x0, torch.Tensor):
        x0 = torch.as_tensor(np.asarray(x0))
    n = len(seeds)
    if x0.ndim < 2 or x0.shape[0] != n:
        raise DataError(f"data sampler returned shape {tuple(x0.shape)} for {n} seeds; expected [{n}, ...]")
    x0 = x0.detach().to("cpu", torch.float64)
    return x0, _noise(derive_seeds(seeds, interval, 1), x0.shape[1:])


# ---------------------------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class ProbeResult:
    """The contents of a probe file (:func:`read_probes`), with per-interval statistics.

    ``sigmas``: ``K + 1`` increasing probe sigmas; ``count``, ``sum``, ``sumsq``: per-interval accumulators
    (interval ``i`` between ``sigmas[i]`` and ``sigmas[i+1]``); ``runs``: ``[R, 3]`` int64 rows
    ``(first seed, next seed, requested next seed)`` of each probe call, so the seeds used are
    ``seed_start .. next_seed - 1``; ``run_info``: per-call provenance (package versions, batch, dtype,
    device, meta); ``meta``: the first call's meta.
    """

    path: str
    sigmas: np.ndarray
    count: np.ndarray
    sum: np.ndarray
    sumsq: np.ndarray
    cost: str
    weighting: str
    model: str
    data: str
    meta: dict
    seed_start: int
    next_seed: int
    runs: np.ndarray
    run_info: list = field(default_factory=list)

    @property
    def intervals(self) -> int:
        return int(self.sigmas.size - 1)

    @property
    def samples(self) -> int:
        """Samples per interval (the minimum over intervals)."""
        return int(self.count.min()) if self.count.size else 0

    @property
    def mean(self) -> np.ndarray:
        """Estimated cost per interval (``nan`` where no samples)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sum / self.count

    @property
    def variance(self) -> np.ndarray:
        """Unbiased sample variance of the per-sample cost per interval (``nan`` below 2 samples)."""
        n = self.count.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            v = (self.sumsq - self.sum**2 / n) / (n - 1)
        return np.where(n >= 2, np.maximum(v, 0.0), np.nan)

    @property
    def stderr(self) -> np.ndarray:
        """Standard error of :attr:`mean` (``nan`` below 2 samples)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.sqrt(self.variance / self.count)

    @property
    def provenance(self) -> list:
        return self.run_info

    @property
    def complete(self) -> bool:
        """Whether the last probe call finished (``False`` after an interrupted call)."""
        return bool(self.runs.size == 0 or self.runs[-1, 1] >= self.runs[-1, 2])


def _fail_read(path: Path, why: str) -> DataError:
    return DataError(f"{path} is not a readable adasched probe file ({FORMAT} v{FORMAT_VERSION}): {why}")


def read_probes(path: str | os.PathLike) -> ProbeResult:
    """Read a probe file written by :func:`probe` (locking off); a missing or foreign file is a DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"probe file not found: {path}")
    try:
        with h5py.File(path, "r", locking=False) as f:
            if f.attrs.get("format") != FORMAT:
                raise _fail_read(path, f"attribute format={f.attrs.get('format')!r}, expected {FORMAT!r}")
            version = int(f.attrs.get("format_version", -1))
            if version != FORMAT_VERSION:
                raise _fail_read(path, f"format_version {version}, this adasched reads {FORMAT_VERSION}")
            try:
                out = ProbeResult(
                    path=str(path),
                    sigmas=f["sigmas"][()].astype(np.float64),
                    count=f["count"][()].astype(np.int64),
                    sum=f["sum"][()].astype(np.float64),
                    sumsq=f["sumsq"][()].astype(np.float64),
                    cost=str(f.attrs["cost"]),
                    weighting=str(f.attrs["weighting"]),
                    model=str(f.attrs["model"]),
                    data=str(f.attrs["data"]),
                    meta=json.loads(f.attrs["meta"]),
                    seed_start=int(f.attrs["seed_start"]),
                    next_seed=int(f.attrs["next_seed"]),
                    runs=f["runs"][()].astype(np.int64).reshape(-1, 3),
                    run_info=json.loads(f.attrs["run_info"]),
                )
            except KeyError as e:
                raise _fail_read(path, f"missing {e.args[0]!r}") from None
    except OSError as e:
        raise _fail_read(path, str(e)) from None
    k = out.sigmas.size - 1
    if k < 1 or any(a.shape != (k,) for a in (out.count, out.sum, out.sumsq)):
        raise _fail_read(path, f"{out.sigmas.size} sigmas but accumulators of shapes "
                               f"{out.count.shape}, {out.sum.shape}, {out.sumsq.shape}")
    return out


def _write(path: Path, st: ProbeResult) -> None:
    """Write the whole store to a temporary file, fsync it and move it onto ``path`` (crash-safe).

    The HDF5 image is built in memory and written by Python: a full disk is then an ``OSError`` that
    :func:`~adasched.io.atomic_path` turns into one line, where HDF5 writing the file itself would leave
    an unclosable file behind and the interpreter segfaulting at exit.
    """
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["cost"] = st.cost
        f.attrs["weighting"] = st.weighting
        f.attrs["model"] = st.model
        f.attrs["data"] = st.data
        f.attrs["meta"] = json.dumps(st.meta, sort_keys=True)
        f.attrs["seed_start"] = st.seed_start
        f.attrs["next_seed"] = st.next_seed
        f.attrs["run_info"] = json.dumps(st.run_info, sort_keys=True)
        f.create_dataset("sigmas", data=st.sigmas, dtype="f8")
        f.create_dataset("count", data=st.count, dtype="i8")
        f.create_dataset("sum", data=st.sum, dtype="f8")
        f.create_dataset("sumsq", data=st.sumsq, dtype="f8")
        f.create_dataset("runs", data=st.runs.reshape(-1, 3), dtype="i8")
    with atomic_path(path, suffix=".tmp.h5") as tmp, open(tmp, "wb") as out:
        out.write(image.getbuffer())
        out.flush()
        os.fsync(out.fileno())


def _describe_grid(s: np.ndarray) -> str:
    return f"{s.size} points on [{s[0]:g}, {s[-1]:g}]"


def _check_same(path: Path, st: ProbeResult, sigmas: np.ndarray | None, cost: str, weighting: str,
                identity: dict, seed: int | None) -> None:
    """Refuse to add samples that would estimate something else than the file holds."""
    if sigmas is not None and (sigmas.shape != st.sigmas.shape
                               or not np.allclose(sigmas, st.sigmas, rtol=1e-12, atol=0)):
        raise DataError(f"probe file {path} holds a grid of {_describe_grid(st.sigmas)}, but this run asks for "
                        f"{_describe_grid(sigmas)}; use another output file or the file's grid")
    if st.cost != cost:
        raise DataError(f"probe file {path} holds the {st.cost!r} cost, this run asks for {cost!r}; "
                        "use another output file")
    if weighting != st.weighting:
        raise DataError(f"probe file {path} was weighted by the {st.weighting!r} sigma, this run asks for "
                        f"{weighting!r}")
    _check_model(path, st, identity["model"], identity["model_hash"], identity["model_sha256"])
    if str(identity["data"]) != st.data:
        raise DataError(f"probe file {path} was made with data={st.data!r}, this run has data={identity['data']!r}; "
                        "use another output file")
    if seed is not None and seed != st.seed_start:
        raise DataError(f"probe file {path} uses seeds from {st.seed_start} on (next: {st.next_seed}); "
                        f"got seed={seed}; omit the seed to add samples with new seeds")


def _check_model(path: Path, st: ProbeResult, spec: str, model_hash: str | None, model_sha256: str = "") -> None:
    """Refuse a file made with another model: by content hash where both have one, else by SPEC and file sha256."""
    have = st.meta.get("model_hash")
    if have and model_hash:
        if have != model_hash:
            raise DataError(f"probe file {path} was made with model {st.model or '(unnamed)'} (content {have[:12]}), "
                            f"not with {spec or 'this model'} (content {model_hash[:12]}); probe this model into "
                            "another file")
        return
    if model_hash:
        log.warning("probe file %s records no model content hash (written by an older adasched); its model is "
                    "checked by the SPEC %r only", path, st.model)
    for key, value, recorded in (("model", spec, st.model),
                                 ("model_sha256", model_sha256, st.meta.get("model_sha256", ""))):
        if str(value) != str(recorded):
            raise DataError(f"probe file {path} was made with {key}={recorded!r}, this run has {key}={value!r}; "
                            "use another output file")


def check_model(probes: str | os.PathLike | ProbeResult, model: Any, spec: str) -> ProbeResult:
    """Refuse a probe file made with another model than ``model`` (loaded from ``spec``), as :func:`probe`
    refuses to add to one: by content (:func:`adasched.models.content_hash`), or for a file without the hash by
    ``spec`` and the model's file ``sha256``.  Returns the file's contents."""
    st = probes if isinstance(probes, ProbeResult) else read_probes(probes)
    _check_model(Path(st.path), st, spec, content_hash(model), getattr(model, "sha256", "") or "")
    return st


def _conditioned(denoise: Callable, data_sampler: Callable, data_seeds: Sequence[int]) -> Callable:
    """A class-conditional model (``label_dim > 0``) bound to the labels of the data rows it is probed on.

    Labels come from the data sampler's ``labels(seeds)`` (labelled sources, :mod:`adasched.data`); a
    conditional model probed on unlabelled data is an error, never silently unconditional.
    """
    if not getattr(denoise, "label_dim", 0):
        return denoise
    labels = getattr(data_sampler, "labels", None)
    labels = labels(data_seeds) if callable(labels) else None
    if labels is None:
        raise DataError("the model is class-conditional but the probe data has no labels; "
                        "use a labelled source (digits, cifar10, npz with 'labels', images with dataset.json)")
    return denoise.with_labels(labels)


#: Data-sized float64 tensors :func:`corrector_costs` and :func:`interval_inputs` keep alive at once (x0, eps,
#: the noised input in two dtypes, two denoised batches, the score difference and a temporary).
DATA_COPIES = 8


def _check_request(denoise: Callable, data_sampler: Callable, seed: int, intervals: int, rows: int, cost: str,
                   hutchinson: int, dtype: torch.dtype) -> None:
    """Before a probe's first batch: the data's shape against the model's, and the memory a batch needs.

    One data row (``seed`` on interval 0) gives the data shape; a model with a ``shape`` must take it.  The
    memory estimate counts the per-batch cost table and its accumulation (``3 (rows + 1) K`` float64), the
    data-sized tensors of one interval (:data:`DATA_COPIES`, plus two per Hutchinson probe for the predictor
    cost) and two denoiser calls' working sets (:func:`adasched.denoisers.working_bytes`).
    """
    check_size("number of probe intervals", intervals, MAX_PROBE_INTERVALS, "adasched.limits.MAX_PROBE_INTERVALS")
    data_shape = tuple(interval_inputs(data_sampler, [seed], 0)[0].shape[1:])
    model_shape = getattr(denoise, "shape", None)
    if model_shape is not None and tuple(model_shape) != data_shape:
        raise ModelError(f"the data ({getattr(data_sampler, 'description', 'data sampler')}) have samples of shape "
                         f"{data_shape} but the model takes samples of shape {tuple(model_shape)}")
    copies = DATA_COPIES + (2 * hutchinson if cost == "predictor" else 0)
    check_memory(f"probing {intervals} intervals in batches of {rows} samples of shape {data_shape}",
                 array_bytes(3 * (rows + 1), intervals) + array_bytes(copies * rows, *data_shape)
                 + 2 * working_bytes(denoise, rows, dtype),
                 f"float64 cost table and accumulators, {copies} float64 batches of data size, two model calls' "
                 f"working sets")


def probe(denoise: Callable, data_sampler: Callable, probe_sigmas: Any, num_samples: int | None,
          path: str | os.PathLike, *, total_samples: int | None = None, seed: int | None = None,
          batch: int = 256, weighting: str = "lower", cost: str = "corrector", hutchinson: int = 1,
          meta: dict | None = None,
          dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
          callback: Callable[[int, int], None] | None = None) -> ProbeResult:
    """Estimate the corrector-optimised cost on every interval of a probe grid into an HDF5 file (§3.2).

    Args:
        denoise: ``D(x, sigma) -> x0_hat`` with ``sigma`` of shape ``[B]`` (:mod:`adasched.denoisers`).
        data_sampler: ``seeds -> x0`` batch ``[len(seeds), ...]``, deterministic per seed
            (:func:`target_sampler`, :func:`dataset_sampler`, or any such callable).
        probe_sigmas: ``K + 1`` strictly increasing noise levels (e.g. :func:`probe_grid`); ``None`` to use
            the grid of an existing ``path``.
        num_samples: samples to *add* per interval (exactly one of ``num_samples``, ``total_samples``).
        path: the ``.h5`` store; created if missing, otherwise samples are added to it.
        total_samples: bring the file up to this many samples per interval (0 added if already there):
            re-running an interrupted call with the same ``total_samples`` completes it.
        seed: first seed of a new file (default 0).  An existing file continues with its next unused seed;
            an explicit ``seed`` must equal the file's first seed.
        batch: samples per denoiser call (each call sees one sigma, shape ``[batch]``).
        weighting: ``"lower"`` (``v = sigma_i``, the paper's ``v(t')``) or ``"upper"`` (``v = sigma_{i+1}``).
        cost: ``"corrector"`` (:func:`corrector_costs`, the paper's workhorse) or ``"predictor"``
            (:func:`predictor_costs`, with ``hutchinson`` Rademacher probes per sample, drawn per seed).
        meta: JSON-serialisable description recorded in the file; its keys ``model`` (SPEC),
            ``model_sha256`` and ``data`` (default: the sampler's ``description``) name what is probed.  The
            model's content hash is added as ``model_hash``, and an existing file's must match it (see the
            module docstring); ``data`` must match too.
        dtype, device: what the denoiser is fed (the statistics are float64 regardless).
        callback: ``callback(done, todo)`` after every batch (e.g. for progress display by the caller).

    Returns:
        The file's contents after the call, as :func:`read_probes` would return them.

    Each batch costs ``2 K`` denoiser calls; after each one the file is replaced atomically, so an
    interrupted call loses at most the batch in flight, and the final accumulators do not depend on the
    batch size or on interruptions.  The file is locked for the whole call: a second call on it waits, then
    adds the next unused seeds (see the module docstring).
    """
    path = Path(path)
    if weighting not in WEIGHTINGS:
        raise AdaschedError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
    if cost not in COSTS:
        raise AdaschedError(f"unknown cost {cost!r}; valid: {', '.join(COSTS)}")
    if not isinstance(hutchinson, int) or hutchinson < 1:
        raise AdaschedError(f"hutchinson must be a positive integer, got {hutchinson!r}")
    if (num_samples is None) == (total_samples is None):
        raise AdaschedError("give exactly one of num_samples (samples to add) or total_samples")
    n_req = num_samples if num_samples is not None else total_samples
    if not isinstance(n_req, (int, np.integer)) or isinstance(n_req, bool) or n_req < 0:
        raise AdaschedError(f"number of samples must be a non-negative integer, got {n_req!r}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise AdaschedError(f"batch must be a positive integer, got {batch!r}")
    if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
        raise AdaschedError(f"seed must be a non-negative integer, got {seed!r}")
    meta = dict(meta or {})
    meta.setdefault("data", getattr(data_sampler, "description", ""))
    meta.setdefault("model", getattr(denoise, "description", ""))
    model_hash = content_hash(denoise)
    if model_hash is not None:
        meta["model_hash"] = model_hash
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise AdaschedError(f"meta must be JSON-serialisable: {e}") from None
    identity = {k: meta.get(k, "") for k in IDENTITY_KEYS}

    sigmas = None
    if probe_sigmas is not None:
        sigmas = as_grid(probe_sigmas)

    check_output(path)
    with exclusive_lock(path.with_name(path.name + ".lock")):  # from reading the file to its last write
        if path.exists():
            st = read_probes(path)
            _check_same(path, st, sigmas, cost, weighting, identity, seed)
        else:
            if sigmas is None:
                raise AdaschedError(f"probe file {path} does not exist: give the probe sigmas to start it")
            k = sigmas.size - 1
            start = 0 if seed is None else int(seed)
            st = ProbeResult(path=str(path), sigmas=sigmas, count=np.zeros(k, np.int64), sum=np.zeros(k),
                             sumsq=np.zeros(k), cost=cost, weighting=weighting, model=str(identity["model"]),
                             data=str(identity["data"]), meta=meta, seed_start=start, next_seed=start,
                             runs=np.zeros((0, 3), np.int64), run_info=[])

        first = st.next_seed
        todo = int(n_req) if num_samples is not None else max(0, int(n_req) - st.samples)
        stop = first + todo
        if todo == 0:
            log.info("probe file %s already has %d samples per interval; nothing to add", path, st.samples)
            if not path.exists():
                _write(path, st)
            return st
        _check_request(denoise, data_sampler, first, st.sigmas.size - 1, min(batch, todo), cost, hutchinson, dtype)

        info = provenance(seed_start=first, seed_stop=stop, batch=batch, dtype=str(dtype), device=str(device),
                          weighting=weighting, cost=cost, hutchinson=hutchinson, meta=meta)
        runs = np.concatenate([st.runs, [[first, first, stop]]]).astype(np.int64)
        run_info = st.run_info + [info]
        sigmas = st.sigmas
        count, acc, acc2 = st.count.copy(), st.sum.copy(), st.sumsq.copy()
        k = sigmas.size - 1
        log.info("probe: %d samples per interval on %d intervals (%s), seeds %d..%d, batch %d, into %s",
                 todo, k, _describe_grid(sigmas), first, stop - 1, batch, path)
        with torch.no_grad():
            for b0 in range(first, stop, batch):
                seeds = list(range(b0, min(b0 + batch, stop)))
                costs = np.empty((len(seeds), k))
                for i in range(k):
                    x0, eps = interval_inputs(data_sampler, seeds, i)
                    model = _conditioned(denoise, data_sampler, derive_seeds(seeds, i, 0).tolist())
                    if cost == "corrector":
                        c = corrector_costs(model, x0.to(device), eps.to(device), float(sigmas[i]),
                                            float(sigmas[i + 1]), weighting=weighting, dtype=dtype)
                    else:
                        xi = rademacher(derive_seeds(seeds, i, 2), x0.shape[1:], hutchinson)
                        c = predictor_costs(model, x0.to(device), eps.to(device), float(sigmas[i]),
                                            float(sigmas[i + 1]), xi.to(device), weighting=weighting, dtype=dtype)
                    costs[:, i] = c.cpu().numpy()
                if not np.isfinite(costs).all():
                    bad = np.argwhere(~np.isfinite(costs))[0]
                    raise DataError(f"non-finite cost for seed {seeds[bad[0]]} on interval "
                                    f"[{sigmas[bad[1]]:g}, {sigmas[bad[1] + 1]:g}]: check the denoiser at these sigmas")
                # Sequential (sample-by-sample) float64 accumulation: independent of batching and interruptions.
                acc = np.add.accumulate(np.vstack([acc, costs]), axis=0)[-1]
                acc2 = np.add.accumulate(np.vstack([acc2, costs**2]), axis=0)[-1]
                count = count + len(seeds)
                runs[-1, 1] = seeds[-1] + 1
                st = ProbeResult(path=str(path), sigmas=sigmas, count=count, sum=acc, sumsq=acc2, cost=st.cost,
                                 weighting=st.weighting, model=st.model, data=st.data, meta=st.meta,
                                 seed_start=st.seed_start, next_seed=seeds[-1] + 1, runs=runs.copy(), run_info=run_info)
                _write(path, st)
                log.debug("probe: seeds up to %d done (%d of %d)", seeds[-1], seeds[-1] + 1 - first, todo)
                if callback is not None:
                    callback(seeds[-1] + 1 - first, todo)
        log.info("probe: %s now has %d samples per interval", path, st.samples)
        return st
