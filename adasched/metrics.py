"""Metrics: the Fréchet distance, and exact errors for analytic targets.

``frechet_distance`` is the pure function under FID (Heusel et al. 2017); which features feed it, and so
which name the number may carry ("FID" only for Inception features under a named protocol), is decided
by the caller.  The sampler errors here compare a solver's output with the exact probability-flow ODE
solution from the same latents, the quantity schedule-optimisation papers report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from adasched.errors import AdaschedError, DataError, ModelError
from adasched.io import npz_header, write_json
from adasched.limits import array_bytes, check_memory

__all__ = ["frechet_distance", "gaussian_stats", "rmse", "ode_error", "sliced_wasserstein", "load_samples",
           "evaluate_samples"]

log = logging.getLogger(__name__)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    if w.min() < -1e-8 * max(1.0, abs(w.max())):
        log.warning("covariance has a negative eigenvalue %.3g; clipped to 0", w.min())
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """``||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 (cov1^(1/2) cov2 cov1^(1/2))^(1/2))``.

    The squared 2-Wasserstein distance between two Gaussians.  The trace term is computed from symmetric
    eigendecompositions, so there is no complex part to discard and a singular covariance needs no
    regularising offset (it is logged).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not match: mu {mu1.shape} / {mu2.shape}, cov {cov1.shape} / {cov2.shape}")
    if min(np.linalg.eigvalsh(cov1).min(), np.linalg.eigvalsh(cov2).min()) < 1e-12 * max(1.0, np.abs(cov1).max()):
        log.info("a covariance is singular; the symmetric square-root form handles it without an offset")
    s1 = _psd_sqrt(cov1)
    cross = np.linalg.eigvalsh(s1 @ cov2 @ s1)
    trace_term = np.sqrt(np.clip(cross, 0, None)).sum()
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * trace_term)
    return max(value, 0.0)


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of ``[N, d]`` features, accumulated in float64."""
    f = np.asarray(features, np.float64).reshape(len(features), -1)
    return f.mean(0), np.cov(f, rowvar=False)


def rmse(a, b) -> float:
    """Root mean squared difference over every coordinate of every sample."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).pow(2).mean().sqrt())


def ode_error(target, samples, latents, sigma_max: float) -> float:
    """RMSE of ``samples`` against the exact ODE solution of ``target`` from ``latents * sigma_max``."""
    x = torch.as_tensor(latents, dtype=torch.float64) * sigma_max
    return rmse(samples, target.ode_solution(x, float(sigma_max), 0.0))


def sliced_wasserstein(x, y, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size samples (exact in 1-D), from random directions."""
    x = torch.as_tensor(x, dtype=torch.float64).flatten(1)
    y = torch.as_tensor(y, dtype=torch.float64).flatten(1)
    if x.shape != y.shape:
        raise ValueError(f"need samples of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[1] == 1:
        dirs = torch.ones(1, 1, dtype=torch.float64)
    else:
        dirs = torch.randn(projections, x.shape[1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        dirs /= dirs.norm(dim=1, keepdim=True)
    px, _ = torch.sort(x @ dirs.T, dim=0)
    py, _ = torch.sort(y @ dirs.T, dim=0)
    return float((px - py).pow(2).mean().sqrt())


def load_samples(path, what: str = "samples file") -> dict:
    """Every array of a samples NPZ, after checking that they fit in memory (sizes from the headers)."""
    try:
        with open(path, "rb") as raw:
            f = np.load(raw)
            if not isinstance(f, np.lib.npyio.NpzFile):  # an .npy file loads as one array
                raise DataError(f"{what} {path} is not an NPZ archive of named arrays (adasched sample writes one)")
            sizes = [npz_header(f, k) for k in f.files]
            check_memory(f"{what} {path}", sum(array_bytes(1, *shape, itemsize=dt.itemsize) for shape, dt in sizes),
                         "its arrays as stored")
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as e:  # EOFError: an empty file
        raise DataError(f"cannot read {what} {path}: {e or 'it is empty'}") from None


#: Sample-sized float64 arrays the analytic metrics hold at once (start points, ODE solution, exact target
#: samples, the RMSE's operands and difference, the sliced distance's flattened copies).
EVAL_COPIES = 8


def evaluate_samples(samples_npz, model=None, reference_npz=None, projections: int = 256) -> dict:
    """Metrics of a samples NPZ (the design's format) with what they were measured against.

    * ``ode_rmse``: RMSE against the exact ODE solution from the same latents (analytic ``model``);
    * ``target_sliced_w2``: sliced 2-Wasserstein distance to as many exact target samples (analytic), from
      ``projections`` random directions;
    * ``reference_rmse``: RMSE against a reference samples NPZ made from the same seeds (any model, e.g. a
      high-NFE run), the quantity schedule-optimisation papers report.

    Where arrays meet, their shapes must agree (samples, latents and seeds; samples and the model's sample
    shape; samples and the reference's); a mismatch is one error naming both shapes.
    """
    d = load_samples(samples_npz)
    missing = [k for k in ("samples", "latents", "seeds", "sigmas", "nfe") if k not in d]
    if missing:
        raise DataError(f"{samples_npz} is not a samples file: missing {', '.join(missing)}")
    shape, n = tuple(d["samples"].shape), d["seeds"].size
    if d["latents"].shape != d["samples"].shape or d["seeds"].shape != (n,) or not shape or shape[0] != n:
        raise DataError(f"{samples_npz}: samples of shape {shape}, latents of shape {d['latents'].shape} and seeds "
                        f"of shape {d['seeds'].shape} disagree; need [N, ...], [N, ...] and [N]")
    if n == 0:
        raise DataError(f"{samples_npz} holds no samples")
    if d["nfe"].shape != () or not np.issubdtype(d["nfe"].dtype, np.integer):
        raise DataError(f"{samples_npz}: nfe must be one integer, found {d['nfe'].dtype} of shape {d['nfe'].shape}")
    out: dict = {"num_samples": n, "seeds": [int(d["seeds"].min()), int(d["seeds"].max()) + 1] if n else [],
                 "nfe": int(d["nfe"]), "solver": str(d.get("solver", "")), "method": str(d.get("method", ""))}
    metrics: dict = {}
    if model is not None and callable(getattr(model, "ode_solution", None)):
        model_shape = tuple(getattr(model, "shape", shape[1:]))
        if shape[1:] != model_shape:
            raise ModelError(f"{samples_npz} holds samples of shape {shape[1:]}, but the model's samples have shape "
                             f"{model_shape}")
        check_memory(f"exact errors of {n} samples of shape {shape[1:]}",
                     array_bytes(EVAL_COPIES * n, *shape[1:]) + array_bytes(4 * n, projections),
                     f"{EVAL_COPIES} float64 copies of the samples and 4 of their {projections} projections")
        metrics["ode_rmse"] = ode_error(model, d["samples"], d["latents"], float(d["sigmas"][0]))
        truth = model.sample(n, generator=torch.Generator().manual_seed(0x5EED))
        metrics["target_sliced_w2"] = sliced_wasserstein(d["samples"], truth, projections)
    if reference_npz is not None:
        r = load_samples(reference_npz, "reference samples file")
        if "samples" not in r or "seeds" not in r:
            raise DataError(f"{reference_npz} is not a samples file: needs arrays samples and seeds")
        if r["seeds"].shape != d["seeds"].shape or not np.array_equal(r["seeds"], d["seeds"]):
            raise DataError(f"reference {reference_npz} was not drawn from the same seeds as {samples_npz} "
                            f"(seeds of shape {r['seeds'].shape} and {d['seeds'].shape})")
        if r["samples"].shape != d["samples"].shape:
            raise DataError(f"reference {reference_npz} holds samples of shape {r['samples'].shape}, {samples_npz} "
                            f"of shape {shape}")
        metrics["reference_rmse"] = rmse(d["samples"], r["samples"])
        out["reference_nfe"] = int(r["nfe"])
    if not metrics:
        raise DataError("nothing to measure: give an analytic model (gmm:, powerlaw:) or --reference REF.npz")
    out["metrics"] = metrics
    return out


# ----------------------------------------------------------------------------------------------------------------
# Image metrics: seed-range aggregation and the metrics record (a metrics file cannot lose its provenance)

#: Metric names that are Fréchet distances of image features and so need :class:`ImageMetric` provenance.
#: ``fid`` is reserved for Inception features under a named clean-fid protocol; any other feature space gets
#: its own name ending in ``_fd`` (e.g. ``digits_fd``).
FID_NAME = "fid"
INCEPTION_EXTRACTOR = "inception-2015-12-05"
METRICS_FORMAT = "adasched-metrics/1"

__all__ += ["aggregate_seed_ranges", "ImageMetric", "MetricsRecord", "MetricsRecordError", "FID_NAME",
            "METRICS_FORMAT", "is_image_metric"]


class MetricsRecordError(AdaschedError, ValueError):
    """A metrics record lacks a provenance field, or names a metric it may not (e.g. "fid" for non-Inception)."""


def is_image_metric(name: str) -> bool:
    """Whether ``name`` is a Fréchet distance of image features (``fid``, ``fid_*`` or ``*_fd``)."""
    return name == FID_NAME or name.startswith(FID_NAME + "_") or name.endswith("_fd")


def _ranges(seed_ranges) -> list[list[int]]:
    out = []
    for r in seed_ranges:
        try:
            start, stop = (int(v) for v in r)
        except (TypeError, ValueError):
            raise MetricsRecordError(f"a seed range is [start, stop), found {r!r}") from None
        if stop <= start:
            raise MetricsRecordError(f"empty seed range [{start}, {stop})")
        out.append([start, stop])
    for i, a in enumerate(out):
        for b in out[i + 1:]:
            if a[0] < b[1] and b[0] < a[1]:
                raise MetricsRecordError(f"seed ranges {a} and {b} overlap; runs must use disjoint seeds")
    return out


def aggregate_seed_ranges(values, seed_ranges, aggregate: str = "min") -> dict:
    """Summarise one metric measured on disjoint seed ranges (EDM: 0-49999, 50000-99999, 100000-149999).

    Returns ``{"value", "aggregate", "values", "seed_ranges", "min", "max", "mean", "std", "spread"}`` where
    ``value`` is the headline number: the minimum over the runs (EDM's "best of 3"), their ``mean``, or the
    only run's value (``aggregate`` is then ``"single"``); ``spread`` is ``max - min``, ``std`` the sample
    standard deviation (0 for one run).
    """
    values = [float(v) for v in values]
    ranges = _ranges(seed_ranges)
    if not values or len(values) != len(ranges):
        raise MetricsRecordError(f"need one value per seed range: {len(values)} values, {len(ranges)} ranges")
    if not all(np.isfinite(values)):
        raise MetricsRecordError(f"non-finite metric values {values}")
    if aggregate not in ("min", "mean"):
        raise MetricsRecordError(f"unknown aggregate {aggregate!r}; valid: min, mean")
    v = np.asarray(values)
    head = float(v.min() if aggregate == "min" else v.mean())
    return {"value": head, "aggregate": aggregate if len(v) > 1 else "single", "values": values,
            "seed_ranges": ranges, "min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()),
            "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "spread": float(v.max() - v.min())}


def _hex64(value, what: str) -> str:
    s = str(value or "").lower()
    if len(s) != 64 or any(c not in "0123456789abcdef" for c in s):
        raise MetricsRecordError(f"{what} must be a sha256 (64 hex digits), found {value!r}")
    return s


def _text(value, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MetricsRecordError(f"{what} is required (a non-empty string), found {value!r}")
    return value


@dataclass(frozen=True)
class ImageMetric:
    """One Fréchet distance of image features, with what makes the number meaningful (``style.md`` item 6).

    ``name``: ``fid`` (Inception features under a clean-fid ``protocol``) or ``<space>_fd`` for any other
    feature space; ``values`` and ``seed_ranges``: one run per disjoint seed range, each on ``num_images``
    images; ``reference`` and ``feature_extractor``: ``{"name", "sha256", ...}`` (for a reference file also its
    ``path`` and ``url``).  Construction validates every field.
    """

    name: str
    protocol: str
    num_images: int
    values: tuple
    seed_ranges: tuple
    reference: dict
    feature_extractor: dict
    aggregate: str = "min"

    def __post_init__(self):
        _text(self.name, "metric name")
        if not is_image_metric(self.name):
            raise MetricsRecordError(f"image metric name {self.name!r} must be 'fid' or end in '_fd'")
        _text(self.protocol, f"{self.name}: protocol")
        if not isinstance(self.num_images, (int, np.integer)) or self.num_images < 1:
            raise MetricsRecordError(f"{self.name}: num_images must be a positive integer, found {self.num_images!r}")
        for what, d in (("reference", self.reference), ("feature_extractor", self.feature_extractor)):
            if not isinstance(d, dict):
                raise MetricsRecordError(f"{self.name}: {what} must be a dict with name and sha256, found {d!r}")
            _text(d.get("name"), f"{self.name}: {what} name")
            _hex64(d.get("sha256"), f"{self.name}: {what} sha256")
        inception = str(self.feature_extractor["name"]).startswith(INCEPTION_EXTRACTOR)
        if (self.name == FID_NAME or self.name.startswith(FID_NAME + "_")) and not inception:
            raise MetricsRecordError(f"{self.name!r} is reserved for Inception ({INCEPTION_EXTRACTOR}) features; "
                                     f"a Fréchet distance in the space of {self.feature_extractor['name']!r} needs "
                                     f"its own name ending in '_fd'")
        summary = aggregate_seed_ranges(self.values, self.seed_ranges, self.aggregate)
        object.__setattr__(self, "values", tuple(summary["values"]))
        object.__setattr__(self, "seed_ranges", tuple(tuple(r) for r in summary["seed_ranges"]))

    @property
    def value(self) -> float:
        """The headline number (minimum over seed ranges by default)."""
        return aggregate_seed_ranges(self.values, self.seed_ranges, self.aggregate)["value"]

    def to_json(self) -> dict:
        summary = aggregate_seed_ranges(self.values, self.seed_ranges, self.aggregate)
        return {"protocol": self.protocol, "num_images": int(self.num_images), **summary,
                "reference": dict(self.reference), "feature_extractor": dict(self.feature_extractor)}

    @classmethod
    def from_json(cls, name: str, d: dict) -> "ImageMetric":
        try:
            return cls(name=name, protocol=d["protocol"], num_images=d["num_images"], values=d["values"],
                       seed_ranges=d["seed_ranges"], reference=d["reference"],
                       feature_extractor=d["feature_extractor"],
                       aggregate="min" if d.get("aggregate", "min") == "single" else d["aggregate"])
        except KeyError as e:
            raise MetricsRecordError(f"image metric {name!r} lacks the field {e.args[0]!r}") from None


@dataclass
class MetricsRecord:
    """The content of a metrics JSON; :meth:`to_json` and :meth:`write` refuse a record without provenance.

    Required: the scalar ``metrics``; ``num_samples`` and ``seeds`` (``[start, stop)``, or a list of such
    ranges); the ``package_version``; and, for every image metric (``fid``, ``*_fd``), an :class:`ImageMetric`
    in ``image_metrics`` (protocol, image count, seed ranges, reference name and hash, feature extractor name
    and hash) whose headline value is the one in ``metrics``.  ``extra`` holds further top-level fields
    (``inputs``, ``provenance``, ``nfe``, ...).
    """

    metrics: dict
    num_samples: int
    seeds: list
    package_version: str
    image_metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if not isinstance(self.metrics, dict) or not self.metrics:
            raise MetricsRecordError("a metrics record needs at least one metric")
        for k, v in self.metrics.items():
            if not isinstance(v, (int, float, np.floating, np.integer)) or not np.isfinite(v):
                raise MetricsRecordError(f"metric {k!r} must be a finite number, found {v!r}")
        _text(self.package_version, "package_version")
        if not isinstance(self.num_samples, (int, np.integer)) or self.num_samples < 1:
            raise MetricsRecordError(f"num_samples must be a positive integer, found {self.num_samples!r}")
        seeds = self.seeds
        if not isinstance(seeds, (list, tuple)) or not seeds:
            raise MetricsRecordError(f"seeds must be [start, stop) or a list of ranges, found {seeds!r}")
        _ranges([seeds] if not isinstance(seeds[0], (list, tuple)) else seeds)
        for name in self.metrics:
            if is_image_metric(name) and name not in self.image_metrics:
                raise MetricsRecordError(f"metric {name!r} is a Fréchet distance of image features: it needs its "
                                         f"provenance (protocol, image count, seeds, reference and feature extractor "
                                         f"with hashes) in image_metrics")
        for name, im in self.image_metrics.items():
            if not isinstance(im, ImageMetric) or im.name != name:
                raise MetricsRecordError(f"image_metrics[{name!r}] must be an ImageMetric named {name!r}")
            if name not in self.metrics or float(self.metrics[name]) != im.value:
                raise MetricsRecordError(f"metrics[{name!r}] must be the headline value {im.value!r} of its runs")
        clash = {"format", "adasched_version", "metrics", "num_samples", "seeds", "image_metrics"} & set(self.extra)
        if clash:
            raise MetricsRecordError(f"extra fields {sorted(clash)} would overwrite the record's own fields")

    def to_json(self) -> dict:
        self.validate()
        return {"format": METRICS_FORMAT, "adasched_version": self.package_version,
                "num_samples": int(self.num_samples), "seeds": self.seeds, **self.extra,
                "metrics": {k: float(v) for k, v in self.metrics.items()},
                "image_metrics": {k: v.to_json() for k, v in self.image_metrics.items()}}

    def write(self, path) -> None:
        """Validate, then write the JSON atomically (nothing is written when a field is missing)."""
        write_json(path, self.to_json())

    @classmethod
    def from_json(cls, d: dict) -> "MetricsRecord":
        """The record of a metrics JSON (validated: a file without provenance is refused on reading too)."""
        d = dict(d)
        try:
            rec = cls(metrics=d.pop("metrics"), num_samples=d.pop("num_samples"), seeds=d.pop("seeds"),
                      package_version=d.pop("adasched_version"),
                      image_metrics={k: ImageMetric.from_json(k, v) for k, v in d.pop("image_metrics", {}).items()})
        except KeyError as e:
            raise MetricsRecordError(f"metrics file lacks the field {e.args[0]!r}") from None
        d.pop("format", None)
        rec.extra = d
        rec.validate()
        return rec
