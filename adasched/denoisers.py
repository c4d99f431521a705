"""The one denoiser protocol, and adapters from other parametrisations at the edge.

Everything in adasched talks to a denoiser ``D(x, sigma) -> x0_hat`` in EDM's convention
(Karras et al. 2022): ``x = x0 + sigma * n`` with ``n ~ N(0, I)``, ``sigma`` a tensor of shape
``[B]``, and ``D(x, sigma) ~= E[x0 | x]``.  The score is ``(D(x, sigma) - x) / sigma**2``.

Variance-preserving (VP) models, whose input is ``x_vp = s * (x0 + sigma * n)`` with
``s = 1 / sqrt(1 + sigma**2)``, and which predict the noise (eps) or the velocity (v), are wrapped
by :class:`EpsDenoiser` and :class:`VDenoiser`.
"""

from __future__ import annotations


from typing import Callable, Protocol, runtime_checkable

import torch

__all__ = [
    "Denoiser",
    "score",
    "CountingDenoiser",
    "working_bytes",
    "EpsDenoiser",
    "VDenoiser",
    "VPLinearBeta",
    "NetworkDenoiser",
]


@runtime_checkable
class Denoiser(Protocol):
    """``D(x, sigma) -> x0_hat`` with ``sigma`` of shape ``[B]`` (EDM's ``EDMPrecond`` interface)."""

    sigma_min: float
    sigma_max: float

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor: ...


def _expand(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a ``[B]`` sigma against ``x`` of shape ``[B, ...]``."""
    return sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


def score(denoise: Callable, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Score ``grad log p_sigma(x) = (D(x, sigma) - x) / sigma**2`` of the noised marginal."""
    return (denoise(x, sigma) - x) / _expand(sigma, x) ** 2


def working_bytes(denoise: Callable, batch: int, dtype: torch.dtype) -> int:
    """Bytes one call of ``denoise`` on a batch of ``batch`` allocates beyond its input and output.

    A model that knows its working set (e.g. :class:`~adasched.targets.GaussianMixture`, ``[B, K, d]`` per
    call) has a method ``working_bytes(batch, dtype)``; 0 for one that does not say.
    """
    estimate = getattr(denoise, "working_bytes", None)
    return int(estimate(batch, dtype)) if callable(estimate) else 0


class CountingDenoiser:
    """Wrap a denoiser and count its evaluations per sample (the true NFE).

    ``nfe`` is the number of calls; ``evaluations`` is the number of (sample, call) pairs, so that
    ``evaluations / batch`` is the NFE per sample even when a caller splits a batch.  ``gradient_evaluations``
    counts the pairs whose output carries a gradient: each will cost one backward pass through the network
    when the result is differentiated (:mod:`adasched.fitting` counts its budget so).
    """

    def __init__(self, inner: Callable):
        self.inner = inner
        self.nfe = 0
        self.evaluations = 0
        self.gradient_evaluations = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        self.evaluations += x.shape[0]
        out = self.inner(x, sigma)
        if out.requires_grad:
            self.gradient_evaluations += x.shape[0]
        return out

    def __getattr__(self, name):
        # Only reached for attributes not found normally; guard ``inner`` and dunders so that copy and
        # pickle (which look these up on an instance without ``inner``) do not recurse forever.
        if name == "inner" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)


class VPLinearBeta:
    """The continuous VP process with linear beta (Song et al. 2021): ``beta(t) = beta_min + beta_d t``.

    ``alpha_bar(t) = exp(-beta_d t**2 / 2 - beta_min t)`` and the EDM noise level is
    ``sigma(t) = sqrt(1 / alpha_bar(t) - 1)``; :meth:`t` inverts it exactly.
    """

    def __init__(self, beta_min: float = 0.1, beta_d: float = 19.9):
        self.beta_min = float(beta_min)
        self.beta_d = float(beta_d)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t))

    def t(self, sigma: torch.Tensor) -> torch.Tensor:
        # Solve beta_d/2 t^2 + beta_min t - log(1 + sigma^2) = 0 for t >= 0, in the form without
        # cancellation at small sigma (and valid for beta_d = 0, constant beta).
        c = torch.log1p(sigma**2)
        denom = torch.sqrt(self.beta_min**2 + 2 * self.beta_d * c) + self.beta_min
        return 2 * c / denom.clamp_min(torch.finfo(c.dtype).tiny)  # t(0) = 0 also when beta_min = 0


class EpsDenoiser:
    """Adapt a VP eps-prediction model ``eps(x_vp, t)`` to ``D(x, sigma)``.

    With ``x_vp = x / sqrt(1 + sigma**2)`` the VP input and ``t = sigma_to_t(sigma)`` the model's time,
    ``D(x, sigma) = x - sigma * eps(x_vp, t)``.
    """

    def __init__(self, eps_model: Callable, sigma_to_t: Callable, sigma_min: float,
                 sigma_max: float, round_sigma: Callable | None = None):
        self.eps_model = eps_model
        self.sigma_to_t = sigma_to_t
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._round = round_sigma

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma if self._round is None else self._round(sigma)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = _expand(sigma, x)
        eps = self.eps_model(x / torch.sqrt(1 + s**2), self.sigma_to_t(sigma))
        return x - s * eps.to(x.dtype)


class VDenoiser:
    """Adapt a v-prediction model ``v(c_in x, t)`` (Salimans & Ho 2022) to ``D(x, sigma)``.

    ``D = c_skip x + c_out v`` with ``c_skip = sd^2/(sigma^2+sd^2)``, ``c_out = -sigma sd/sqrt(sigma^2+sd^2)``,
    ``c_in = 1/sqrt(sigma^2+sd^2)`` and ``sd = sigma_data`` (1 for VP models).
    """

    def __init__(self, v_model: Callable, sigma_to_t: Callable, sigma_min: float, sigma_max: float,
                 sigma_data: float = 1.0, round_sigma: Callable | None = None):
        self.v_model = v_model
        self.sigma_to_t = sigma_to_t
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sigma_data = float(sigma_data)
        self._round = round_sigma

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma if self._round is None else self._round(sigma)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = _expand(sigma, x)
        sd = self.sigma_data
        norm = torch.sqrt(s**2 + sd**2)
        v = self.v_model(x / norm, self.sigma_to_t(sigma)).to(x.dtype)
        return (sd**2 / norm**2) * x - (s * sd / norm) * v




class NetworkDenoiser:
    """Base of denoisers that wrap a ``torch.nn.Module`` as ``self.net``: its parameters' dtype and device."""

    net: torch.nn.Module

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.net.parameters(), None)
        return p.dtype if p is not None else torch.float32

    @property
    def device(self) -> torch.device:
        p = next(self.net.parameters(), None)
        return p.device if p is not None else torch.device("cpu")
