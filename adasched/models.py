"""Model SPECs: ``KIND:ARGUMENT`` strings that name a denoiser.

=================  ==========================================================================
``gmm:PATH.json``  an analytic Gaussian mixture with diagonal covariances
                   (``{"weights": [...], "means": [[...]], "variances": [[...]]}``)
``powerlaw:PATH``  an analytic image-shaped Gaussian with a power-law spectrum
                   (``{"shape": [C, H, W], "alpha": 2.0, "scale": 1.0, "mean": 0.0}``, and
                   ``"eigenbasis": true`` for its DCT coordinates)
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
:func:`content_hash` names a model by what it computes, whatever SPEC or path it was loaded from.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from typing import Callable

import torch

from adasched.errors import ModelError
from adasched.io import read_json
from adasched.targets import GaussianMixture, PowerLawGaussian

__all__ = ["LOADERS", "load_model", "register", "content_hash"]

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
    return GaussianMixture.from_json(read_json(path, "mixture file"), source=path)


@register("powerlaw")
def _load_powerlaw(path: str, **_):
    return PowerLawGaussian.from_json(read_json(path, "power-law Gaussian file"), source=path)


def load_model(spec: str, **options):
    """Load the denoiser named by ``spec`` (``KIND:ARGUMENT``)."""
    kind, sep, arg = spec.partition(":")
    kinds = ", ".join(sorted(set(LOADERS) | set(PLUGINS)))
    if not sep or not arg:
        raise ModelError(f"model SPEC must look like KIND:ARGUMENT, got {spec!r}; kinds: {kinds}")
    if kind not in LOADERS and kind in PLUGINS:
        importlib.import_module(PLUGINS[kind])  # plugin loading: the module registers its loader when imported
    if kind not in LOADERS:
        raise ModelError(f"unknown model kind {kind!r} in {spec!r}; kinds: {kinds}")
    return LOADERS[kind](arg, **options)


def content_hash(model) -> str | None:
    """Hex sha256 of what ``model`` computes, independent of the SPEC, path or file it came from.

    * An analytic target (it has ``to_json()``): its class name and parameters as canonical JSON (sorted keys,
      no spaces, floats as their shortest round-trip ``repr``).
    * A network denoiser (``net``, a ``torch.nn.Module``): its class name and the ``net``'s ``state_dict``,
      every tensor's name, dtype, shape and bytes in sorted-name order, so the same weights hash alike from
      any file, and the EMA and raw weights of one checkpoint differently.  Settings kept outside the
      weights (a diffusers model's noise schedule, say) are not covered.
    * Anything else (a plain callable): ``None``, nothing to hash.
    """
    h = hashlib.sha256(type(model).__qualname__.encode() + b"\0")
    if callable(getattr(model, "to_json", None)):
        h.update(json.dumps(model.to_json(), sort_keys=True, separators=(",", ":")).encode())
        return h.hexdigest()
    net = getattr(model, "net", None)
    if not isinstance(net, torch.nn.Module):
        return None
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
