"""Data SPECs for probing: where the clean samples ``x0`` of the cost estimator come from.

===================  ========================================================================
``target``           the analytic model's own exact sampler (``gmm:``, ``powerlaw:`` models)
``npz:PATH[:KEY]``   an array ``[N, ...]`` in an NPZ file (key ``KEY``, default the first array)
``digits``           scikit-learn's bundled 8x8 digits, scaled to [-1, 1], shape ``[1, 8, 8]``
``model``            the model's own samples: Heun on EDM's rho = 7 schedule, 128 steps, one
                     seed per sample (costly: for models with no data at hand)
===================  ========================================================================

Each SPEC gives a data sampler ``seeds -> x0`` that is deterministic per seed (:mod:`adasched.probe`).
"""

from __future__ import annotations

import numpy as np
import torch

from adasched.errors import DataError

__all__ = ["load_data_sampler", "digits", "ModelSampler", "DATA_KINDS"]

DATA_KINDS = ("target", "npz:PATH[:KEY]", "digits", "model")


def digits() -> torch.Tensor:
    """The 1797 bundled 8x8 digits as ``[N, 1, 8, 8]`` float64 in [-1, 1] (no download)."""
    from sklearn.datasets import load_digits

    x = load_digits().images.astype(np.float64) / 16.0 * 2 - 1
    return torch.from_numpy(x[:, None])


class ModelSampler:
    """Data sampler from the model's own high-NFE samples (row ``j`` from a generator seeded ``seeds[j]``)."""

    def __init__(self, denoise, shape, steps: int = 128, description: str = "model"):
        self.denoise, self.shape, self.steps, self.description = denoise, tuple(shape), steps, description

    def __call__(self, seeds):
        from adasched.samplers import generate
        from adasched.schedules import sigmas_edm

        lo = max(float(getattr(self.denoise, "sigma_min", 0.002)), 0.002)
        hi = min(float(getattr(self.denoise, "sigma_max", 80.0)), 80.0)
        with torch.no_grad():
            out = generate(self.denoise, sigmas_edm(self.steps, lo, hi), "heun", list(seeds), self.shape,
                           batch=max(1, len(seeds)))
        return out["samples"].to(torch.float64)


def load_data_sampler(spec: str, model):
    """The data sampler named by ``spec`` for ``model`` (see the module docstring)."""
    from adasched.probe import dataset_sampler, target_sampler

    if spec == "target":
        if not callable(getattr(model, "sample", None)):
            raise DataError("--data target needs an analytic model (gmm:, powerlaw:); "
                            f"give one of: {', '.join(DATA_KINDS)}")
        return target_sampler(model, description="target")
    if spec == "digits":
        return dataset_sampler(digits(), description="digits")
    if spec == "model":
        return ModelSampler(model, model.shape)
    if spec.startswith("npz:"):
        path, _, key = spec[4:].partition(":")
        try:
            with np.load(path) as f:
                if not f.files:
                    raise DataError(f"NPZ file {path} holds no arrays")
                key = key or f.files[0]
                if key not in f.files:
                    raise DataError(f"NPZ file {path} has no array {key!r}; it has: {', '.join(f.files)}")
                arr = f[key]
        except FileNotFoundError:
            raise DataError(f"data file not found: {path}") from None
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read NPZ file {path}: {e}") from None
        return dataset_sampler(arr, description=spec)
    raise DataError(f"unknown data SPEC {spec!r}; valid: {', '.join(DATA_KINDS)}")
