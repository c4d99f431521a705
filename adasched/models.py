"""Model SPECs: ``KIND:ARGUMENT`` strings that name a denoiser.

=================  ==========================================================================
``gmm:PATH.json``  an analytic Gaussian mixture with diagonal covariances
                   (``{"weights": [...], "means": [[...]], "variances": [[...]]}``)
``powerlaw:PATH``  an analytic image-shaped Gaussian with a power-law spectrum
                   (``{"shape": [C, H, W], "alpha": 2.0, "scale": 1.0, "mean": 0.0}``)
``edm:SOURCE``      an EDM network pickle: a registered name, URL or path (:mod:`adasched.edm`;
                   refused unless its hash is pinned or ``trust=True``)
``adasched:PATH``  a network trained by ``adasched train`` (:mod:`adasched.train`): safetensors weights
                   (EMA by default, ``key="net"`` for the raw ones) with a JSON header; no code runs
``diffusers:SRC``  a diffusers ``UNet2DModel`` DDPM (eps-, v- or x0-prediction) with its scheduler
                   config; SRC is a folder or a Hub id ``OWNER/NAME[@REVISION]``
                   (:mod:`adasched.diffusers_models`; ``.bin`` pickles refused unless ``trust=True``)
=================  ==========================================================================

Every loader returns a denoiser in the project's protocol (:mod:`adasched.denoisers`) with a
``shape`` attribute, the shape of one sample.  Further kinds register themselves in :data:`LOADERS`.
"""

from __future__ import annotations

from typing import Callable

from adasched.errors import ModelError
from adasched.io import read_json

__all__ = ["LOADERS", "load_model", "register"]

#: SPEC kind -> loader taking the argument after ``KIND:`` (and keyword options).
LOADERS: dict[str, Callable] = {}

#: Kinds whose module registers its loader when imported (kept lazy: they pull in heavy code).
PLUGINS = {"edm": "adasched.edm", "adasched": "adasched.train", "diffusers": "adasched.diffusers_models"}


def register(kind: str):
    """Decorator: make ``loader(argument, **options)`` the loader of ``kind:`` SPECs."""

    def deco(fn):
        LOADERS[kind] = fn
        return fn

    return deco


@register("gmm")
def _load_gmm(path: str, **_):
    from adasched.targets import GaussianMixture

    return GaussianMixture.from_json(read_json(path, "mixture file"), source=path)


@register("powerlaw")
def _load_powerlaw(path: str, **_):
    from adasched.targets import PowerLawGaussian

    return PowerLawGaussian.from_json(read_json(path, "power-law Gaussian file"), source=path)


def load_model(spec: str, **options):
    """Load the denoiser named by ``spec`` (``KIND:ARGUMENT``)."""
    import importlib

    kind, sep, arg = spec.partition(":")
    kinds = ", ".join(sorted(set(LOADERS) | set(PLUGINS)))
    if not sep or not arg:
        raise ModelError(f"model SPEC must look like KIND:ARGUMENT, got {spec!r}; kinds: {kinds}")
    if kind not in LOADERS and kind in PLUGINS:
        importlib.import_module(PLUGINS[kind])
    if kind not in LOADERS:
        raise ModelError(f"unknown model kind {kind!r} in {spec!r}; kinds: {kinds}")
    return LOADERS[kind](arg, **options)
