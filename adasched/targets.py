"""Analytic targets with exact denoisers, scores, densities, samples and ODE solutions.

* :class:`GaussianMixture` -- a mixture of Gaussians with diagonal covariances in any dimension
  (model SPEC ``gmm:PATH.json``).  Noised by ``N(0, sigma^2 I)`` it stays a diagonal mixture, so
  ``D(x, sigma) = E[x0 | x]`` is exact.
* :class:`PowerLawGaussian` -- an image-shaped Gaussian whose covariance is diagonal in the orthonormal
  2-D DCT basis with a power-law spectrum ``lambda(f) = scale * (1 + |f|)^(-alpha)``, like natural
  images (model SPEC ``powerlaw:PATH.json``).

For a single Gaussian the probability-flow ODE ``dx/dsigma = (x - D(x, sigma))/sigma`` has the closed
form ``x(sigma) - mu = (x(sigma') - mu) sqrt((lambda + sigma^2) / (lambda + sigma'^2))`` per eigen-
direction; for mixtures :meth:`GaussianMixture.ode_solution` integrates it to high accuracy.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from adasched.errors import ModelError
from adasched.limits import array_bytes, check_memory

__all__ = ["GaussianMixture", "PowerLawGaussian", "dct_matrix"]


def _col(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)


class GaussianMixture:
    """``sum_k w_k N(mu_k, diag(v_k))`` in ``d`` dimensions; samples have shape ``[B, d]``.

    All computations are in the dtype of the input (float64 for exact work).
    """

    sigma_min = 0.0
    sigma_max = math.inf

    def __init__(self, weights: Sequence[float], means: Sequence[Sequence[float]],
                 variances: Sequence[Sequence[float]], source: str = "gmm"):
        self.weights, self.means, self.variances = self._validate(weights, means, variances, source)
        self.shape = (self.means.shape[1],)

    @staticmethod
    def _validate(weights, means, variances, source):
        def is_number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        def vector(name, value):
            if not isinstance(value, (list, tuple)) or not value:
                raise ModelError(f"{source}: '{name}' must be a non-empty list of K numbers, "
                                 f"got {type(value).__name__}")
            bad = [v for v in value if not is_number(v)]
            if bad:
                raise ModelError(f"{source}: '{name}' must contain only numbers, found {bad[0]!r}")
            return torch.tensor(value, dtype=torch.float64)

        def matrix(name, value):
            if not isinstance(value, (list, tuple)) or not value or not all(isinstance(r, (list, tuple)) for r in value):
                raise ModelError(f"{source}: '{name}' must be a non-empty list of K lists of d numbers")
            lengths = {len(r) for r in value}
            if len(lengths) != 1:
                raise ModelError(f"{source}: '{name}' is ragged: its rows have lengths {sorted(lengths)}")
            if lengths == {0}:
                raise ModelError(f"{source}: '{name}' rows are empty; need d >= 1 numbers per row")
            bad = [v for r in value for v in r if not is_number(v)]
            if bad:
                raise ModelError(f"{source}: '{name}' must contain only numbers, found {bad[0]!r}")
            return torch.tensor(value, dtype=torch.float64)

        w = vector("weights", weights)
        mu, var = matrix("means", means), matrix("variances", variances)
        for name, t in (("means", mu), ("variances", var)):
            if t.shape[0] != w.numel():
                raise ModelError(f"{source}: '{name}' has {t.shape[0]} rows but 'weights' has {w.numel()} entries; "
                                 f"need one row per component")
        if mu.shape != var.shape:
            raise ModelError(f"{source}: 'means' rows have dimension {mu.shape[1]} but 'variances' rows {var.shape[1]}")
        for name, t in (("weights", w), ("means", mu), ("variances", var)):
            if not torch.isfinite(t).all():
                raise ModelError(f"{source}: '{name}' must be finite, found {float(t[~torch.isfinite(t)][0])}")
        if (w < 0).any():
            raise ModelError(f"{source}: 'weights' must be non-negative, found {float(w.min()):.6g}")
        if abs(float(w.sum()) - 1) > 1e-6:
            raise ModelError(f"{source}: 'weights' must sum to 1, they sum to {float(w.sum()):.9g}")
        if (var < 0).any():
            raise ModelError(f"{source}: 'variances' must be non-negative, found {float(var.min()):.6g}")
        # Renormalise away the accepted rounding so that the density integrates to 1 exactly.
        return w / w.sum(), mu, var

    @classmethod
    def from_json(cls, obj: Any, source: str = "gmm") -> "GaussianMixture":
        if not isinstance(obj, dict):
            raise ModelError(f"{source}: expected a JSON object with keys weights, means, variances")
        missing = [k for k in ("weights", "means", "variances") if k not in obj]
        unknown = sorted(set(obj) - {"weights", "means", "variances"})
        if missing:
            raise ModelError(f"{source}: missing key(s) {', '.join(missing)}; need weights, means, variances")
        if unknown:
            raise ModelError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: weights, means, variances")
        return cls(obj["weights"], obj["means"], obj["variances"], source=source)

    def to_json(self) -> dict:
        return {"weights": self.weights.tolist(), "means": self.means.tolist(), "variances": self.variances.tolist()}

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma

    def working_bytes(self, batch: int, dtype: torch.dtype) -> int:
        """Bytes a call on ``batch`` points allocates: :meth:`_posterior`'s ``[B, K, d]`` tensors (about five)."""
        return array_bytes(5 * batch, *self.means.shape, itemsize=dtype.itemsize)

    def _posterior(self, x: torch.Tensor, sigma: torch.Tensor):
        """Per-component noised variances ``[B, K, d]`` and responsibilities ``[B, K]``."""
        mu, v, w = (t.to(device=x.device, dtype=x.dtype) for t in (self.means, self.variances, self.weights))
        var = v[None] + sigma.to(x.dtype).reshape(-1, 1, 1) ** 2
        diff = x[:, None, :] - mu[None]
        logp = -0.5 * ((diff**2 / var) + torch.log(2 * math.pi * var)).sum(-1) + torch.log(w)[None]
        return var, diff, logp

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Exact denoiser ``E[x0 | x0 + sigma n = x]``."""
        var, diff, logp = self._posterior(x, sigma)
        r = torch.softmax(logp, dim=1)
        v = self.variances.to(device=x.device, dtype=x.dtype)
        return x - (r[:, :, None] * diff * (1 - v[None] / var)).sum(1)

    def score(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Exact score ``grad log p_sigma(x)``."""
        var, diff, logp = self._posterior(x, sigma)
        r = torch.softmax(logp, dim=1)
        return -(r[:, :, None] * diff / var).sum(1)

    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """Exact ``log p_sigma(x)`` (``sigma = 0``: the target itself)."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return torch.logsumexp(self._posterior(x, sigma)[2], dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
        """``n`` exact samples of the target (CPU)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.shape[0], generator=generator, dtype=torch.float64)
        return (self.means[k] + self.variances[k].sqrt() * z).to(dtype)

    def ode_solution(self, x: torch.Tensor, sigma_from: float, sigma_to: float = 0.0,
                     rtol: float = 1e-10, atol: float = 1e-12) -> torch.Tensor:
        """Probability-flow ODE state at ``sigma_to`` from ``x`` at ``sigma_from``.

        Closed form for a single component; otherwise DOP853 in ``log sigma`` (where ``dx/dlog sigma = x - D``
        is smooth down to sigma = 0), down to ``sigma_to`` or, for ``sigma_to = 0``, to a level where the
        remaining move is below ``atol`` (``~ sigma^2 / v_min``; ``~ sigma`` for point masses), then the
        exact jump ``D``.
        """
        if self.weights.numel() == 1:
            mu, v = self.means[0].to(x), self.variances[0].to(x)
            return mu + (x - mu) * torch.sqrt((v + sigma_to**2) / (v + sigma_from**2))
        # heavy: scipy.integrate would slow every start; only the mixture's ODE needs it
        from scipy.integrate import solve_ivp

        # Below ``end`` the remaining move is ~ sigma^2 / v per component with variance v >= atol, and at
        # most ~ sigma for narrower ones (point masses, v = 0, included), so the jump D is within atol.
        vmin = float(self.variances.min())
        end = sigma_to if sigma_to > 0 else 1e-2 * max(math.sqrt(atol * vmin), atol)
        shape = x.shape

        def f(u, y):
            xt = torch.from_numpy(y).reshape(shape)
            sig = torch.full((shape[0],), math.exp(u), dtype=torch.float64)
            return (xt - self(xt, sig)).reshape(-1).numpy()

        sol = solve_ivp(f, (math.log(sigma_from), math.log(end)), x.detach().cpu().double().reshape(-1).numpy(),
                        method="DOP853", rtol=rtol, atol=atol)
        if not sol.success:  # pragma: no cover - scipy reports its own failure
            raise RuntimeError(f"reference ODE solve failed: {sol.message}")
        out = torch.from_numpy(sol.y[:, -1]).reshape(shape)
        if sigma_to == 0:
            out = self(out, torch.full((shape[0],), end, dtype=torch.float64))
        return out.to(x)


def dct_matrix(n: int, dtype=torch.float64) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``C`` (``C @ x`` transforms, ``C.T @ y`` inverts)."""
    k = torch.arange(n, dtype=dtype)[:, None]
    i = torch.arange(n, dtype=dtype)[None]
    c = torch.cos(math.pi * (i + 0.5) * k / n) * math.sqrt(2 / n)
    c[0] /= math.sqrt(2)
    return c


class PowerLawGaussian:
    """Image-shaped Gaussian ``N(mean, U diag(lambda) U^T)`` with ``U`` the 2-D orthonormal DCT.

    ``lambda(f_y, f_x) = scale * (1 + sqrt(f_y^2 + f_x^2))^(-alpha)`` for every channel; samples have
    shape ``[B, C, H, W]``.  Its denoiser, score and ODE solution are exact.  With ``eigenbasis=True``
    the same Gaussian is expressed in the DCT coordinates (see :meth:`in_eigenbasis`).
    """

    sigma_min = 0.0
    sigma_max = math.inf

    def __init__(self, shape: Sequence[int] = (3, 32, 32), alpha: float = 2.0, scale: float = 1.0,
                 mean: float = 0.0, source: str = "powerlaw", eigenbasis: bool = False):
        if len(shape) != 3 or any(int(s) != s or s < 1 for s in shape):
            raise ModelError(f"{source}: 'shape' must be three positive integers [C, H, W], got {list(shape)}")
        if not (alpha >= 0 and scale > 0 and math.isfinite(mean)):
            raise ModelError(f"{source}: need alpha >= 0, scale > 0 and a finite mean")
        self.shape = tuple(int(s) for s in shape)
        self.alpha, self.scale, self.mean = float(alpha), float(scale), float(mean)
        c, h, w = self.shape
        check_memory(f"{source}: a power-law Gaussian of shape {list(self.shape)}",
                     array_bytes(2, c, h, w) + array_bytes(3, h, w) + array_bytes(3, h * h + w * w),
                     "float64 eigenvalues and mean image, their [H, W] temporaries, DCT matrices with theirs")
        fy = torch.arange(h, dtype=torch.float64)[:, None]
        fx = torch.arange(w, dtype=torch.float64)[None]
        self.eigenvalues = (scale * (1 + torch.sqrt(fy**2 + fx**2)) ** (-alpha)).expand(c, h, w).clone()
        self._ch, self._cw = dct_matrix(h), dct_matrix(w)
        self.eigenbasis = bool(eigenbasis)
        # In the eigenbasis the mean image (constant per channel) is all in the zero-frequency coefficient.
        self._spectral_mean = torch.zeros(self.shape, dtype=torch.float64)
        self._spectral_mean[:, 0, 0] = self.mean * math.sqrt(h * w)

    def in_eigenbasis(self) -> "PowerLawGaussian":
        """The same Gaussian in its eigenbasis: coordinates ``U^T x``, a diagonal covariance.

        Every solver here combines ``x`` and ``D(x)`` with scalar coefficients, and ``D`` commutes with the
        rotation, so a solve in these coordinates is the rotated solve; isotropic latents are rotation
        invariant, so sampling errors (norms) have the same distribution.  The denoiser costs O(d) instead
        of O(d sqrt(d)): this is how benchmarks afford many 3072-D solves on a CPU.
        """
        return PowerLawGaussian(self.shape, self.alpha, self.scale, self.mean, eigenbasis=True)

    @classmethod
    def from_json(cls, obj: Any, source: str = "powerlaw") -> "PowerLawGaussian":
        valid = {"shape", "alpha", "scale", "mean", "eigenbasis"}
        if not isinstance(obj, dict):
            raise ModelError(f"{source}: expected a JSON object with keys {', '.join(sorted(valid))}")
        unknown = sorted(set(obj) - valid)
        if unknown:
            raise ModelError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
        if not isinstance(obj.get("eigenbasis", False), bool):
            raise ModelError(f"{source}: 'eigenbasis' must be true or false, got {obj['eigenbasis']!r}")
        shape = obj.get("shape", [3, 32, 32])
        if not (isinstance(shape, list) and len(shape) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
            raise ModelError(f"{source}: 'shape' must be three positive integers [C, H, W], got {shape!r}")
        for key in ("alpha", "scale", "mean"):
            v = obj.get(key, 0.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ModelError(f"{source}: '{key}' must be a finite number, got {v!r}")
        try:
            return cls(source=source, **obj)
        except TypeError:
            raise ModelError(f"{source}: 'shape' must be a list of 3 integers and the rest numbers") from None

    def to_json(self) -> dict:
        """The file form (:meth:`from_json`); ``eigenbasis`` only when set."""
        out = {"shape": list(self.shape), "alpha": self.alpha, "scale": self.scale, "mean": self.mean}
        return {**out, "eigenbasis": True} if self.eigenbasis else out

    def round_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma

    def working_bytes(self, batch: int, dtype: torch.dtype) -> int:
        """Bytes a call on ``batch`` images allocates: about four image-sized temporaries of the transforms."""
        return array_bytes(4 * batch, *self.shape, itemsize=dtype.itemsize)

    def to_spectral(self, x: torch.Tensor) -> torch.Tensor:
        """Centred DCT coefficients of ``x``: independent, with variances ``eigenvalues``."""
        if self.eigenbasis:
            return x - self._spectral_mean.to(x)
        ch, cw = self._ch.to(x), self._cw.to(x)
        return ch @ (x - self.mean) @ cw.T

    def _unrotate(self, y: torch.Tensor) -> torch.Tensor:
        if self.eigenbasis:
            return y
        ch, cw = self._ch.to(y), self._cw.to(y)
        return ch.T @ y @ cw

    def from_spectral(self, y: torch.Tensor) -> torch.Tensor:
        return self._unrotate(y) + (self._spectral_mean.to(y) if self.eigenbasis else self.mean)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        lam = self.eigenvalues.to(x)
        return self.from_spectral(self.to_spectral(x) * lam / (lam + _col(sigma, x) ** 2))

    def score(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        lam = self.eigenvalues.to(x)
        return -self._unrotate(self.to_spectral(x) / (lam + _col(sigma, x) ** 2))

    def log_prob(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        var = self.eigenvalues.to(x) + sigma.reshape(-1, 1, 1, 1) ** 2
        y = self.to_spectral(x)
        return -0.5 * (y**2 / var + torch.log(2 * math.pi * var)).flatten(1).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
        z = torch.randn(n, *self.shape, generator=generator, dtype=torch.float64)
        return self.from_spectral(z * self.eigenvalues.sqrt()).to(dtype)

    def ode_solution(self, x: torch.Tensor, sigma_from: float, sigma_to: float = 0.0, **_) -> torch.Tensor:
        lam = self.eigenvalues.to(x)
        return self.from_spectral(self.to_spectral(x) * torch.sqrt((lam + sigma_to**2) / (lam + sigma_from**2)))


