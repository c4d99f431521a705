"""Metrics: the Fréchet distance, and exact errors for analytic targets.

``frechet_distance`` is the pure function under FID (Heusel et al. 2017); which features feed it, and so
which name the number may carry ("FID" only for Inception features under a named protocol), is decided
by the caller.  The sampler errors here compare a solver's output with the exact probability-flow ODE
solution from the same latents, the quantity schedule-optimisation papers report.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

__all__ = ["frechet_distance", "gaussian_stats", "rmse", "ode_error", "sliced_wasserstein", "evaluate_samples"]

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


def evaluate_samples(samples_npz, model=None, reference_npz=None) -> dict:
    """Metrics of a samples NPZ (the design's format) with what they were measured against.

    * ``ode_rmse``: RMSE against the exact ODE solution from the same latents (analytic ``model``);
    * ``target_sliced_w2``: sliced 2-Wasserstein distance to as many exact target samples (analytic);
    * ``reference_rmse``: RMSE against a reference samples NPZ made from the same seeds (any model, e.g. a
      high-NFE run), the quantity schedule-optimisation papers report.
    """
    from adasched.errors import DataError

    def load(path):
        try:
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        except FileNotFoundError:
            raise DataError(f"samples file not found: {path}") from None
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read samples file {path}: {e}") from None

    d = load(samples_npz)
    missing = [k for k in ("samples", "latents", "seeds", "sigmas", "nfe") if k not in d]
    if missing:
        raise DataError(f"{samples_npz} is not a samples file: missing {', '.join(missing)}")
    out: dict = {"num_samples": int(len(d["seeds"])), "seeds": [int(d["seeds"].min()), int(d["seeds"].max()) + 1],
                 "nfe": int(d["nfe"]), "solver": str(d.get("solver", "")), "method": str(d.get("method", ""))}
    metrics: dict = {}
    if model is not None and callable(getattr(model, "ode_solution", None)):
        metrics["ode_rmse"] = ode_error(model, d["samples"], d["latents"], float(d["sigmas"][0]))
        n = len(d["samples"])
        truth = model.sample(n, generator=torch.Generator().manual_seed(0x5EED))
        metrics["target_sliced_w2"] = sliced_wasserstein(d["samples"], truth)
    if reference_npz is not None:
        r = load(reference_npz)
        if "seeds" not in r or not np.array_equal(r["seeds"], d["seeds"]):
            raise DataError(f"reference {reference_npz} was not drawn from the same seeds as {samples_npz}")
        metrics["reference_rmse"] = rmse(d["samples"], r["samples"])
        out["reference_nfe"] = int(r["nfe"])
    if not metrics:
        raise DataError("nothing to measure: give an analytic model (gmm:, powerlaw:) or --reference REF.npz")
    out["metrics"] = metrics
    return out
