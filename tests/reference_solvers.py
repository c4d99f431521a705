"""Plain reference implementations of the samplers, written from the papers, for cross-checking.

Everything here is NumPy float64 and works on ONE sample at a time (``x`` of shape ``[d]``) with an
explicit Python loop over the steps, in the papers' notation.  Nothing is imported from adasched: the
point is a second, independent implementation of each published algorithm, so that a slip in the
batched torch code (an index, a sign, a ratio) shows up as a disagreement.

A denoiser here is a function ``D(x, sigma) -> x0_hat`` of one sample ``x`` (shape ``[d]``) and a
Python float ``sigma``.  Schedules ``t`` are sequences ``t_0 > t_1 > ... > t_{N-1} > t_N = 0`` (EDM
writes ``t`` for ``sigma``; VE with ``s(t) = 1``, ``sigma(t) = t``).

Where a solver needs noise, the caller passes the standard-normal draws explicitly (``noise``), so that
the reference consumes exactly the numbers the implementation under test drew.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "gmm_denoiser",
    "euler",
    "heun",
    "edm_stochastic",
    "dpmpp_2m",
    "ipndm",
    "pc_langevin",
]


def gmm_denoiser(weights, means, variances):
    """Exact posterior mean ``E[x0 | x0 + sigma n = x]`` of ``sum_k w_k N(mu_k, diag(v_k))``, one sample.

    Bayes' rule: ``x | k ~ N(mu_k, diag(v_k + sigma^2))``, so the responsibilities are
    ``r_k ∝ w_k N(x; mu_k, v_k + sigma^2)`` and, per component, ``E[x0 | x, k] = mu_k + v_k / (v_k +
    sigma^2) (x - mu_k)`` (the Gaussian conditional, i.e. a Wiener filter).
    """
    w = np.asarray(weights, dtype=np.float64)
    mu = np.asarray(means, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)

    def D(x, sigma):
        x = np.asarray(x, dtype=np.float64)
        total_var = v + sigma * sigma  # [K, d]
        log_lik = np.empty(len(w))
        for k in range(len(w)):
            r = x - mu[k]
            log_lik[k] = math.log(w[k]) - 0.5 * np.sum(r * r / total_var[k] + np.log(2 * math.pi * total_var[k]))
        resp = np.exp(log_lik - log_lik.max())
        resp /= resp.sum()
        out = np.zeros_like(x)
        for k in range(len(w)):
            out += resp[k] * (mu[k] + v[k] / total_var[k] * (x - mu[k]))
        return out

    return D


def _d(D, x, t):
    """The probability-flow ODE's right-hand side ``dx/dt = (x - D(x; t)) / t`` (EDM Eq. 3 with s = 1, sigma = t)."""
    return (x - D(x, t)) / t


def euler(D, x, t):
    """Euler's method on ``dx/dt = (x - D(x; t)) / t``: ``x_{i+1} = x_i + (t_{i+1} - t_i) d_i``."""
    x = np.array(x, dtype=np.float64)
    for i in range(len(t) - 1):
        x = x + (t[i + 1] - t[i]) * _d(D, x, t[i])
    return x


def heun(D, x, t):
    """EDM's deterministic sampler (Karras et al. 2022, Algorithm 1), with s(t) = 1, sigma(t) = t.

    ``d_i = (x_i - D(x_i; t_i)) / t_i``, Euler to ``x_{i+1}``, then if ``t_{i+1} != 0`` the second-order
    correction ``x_{i+1} = x_i + (t_{i+1} - t_i)(d_i / 2 + d'_i / 2)``.
    """
    x = np.array(x, dtype=np.float64)
    N = len(t) - 1
    for i in range(N):
        d_i = _d(D, x, t[i])
        x_next = x + (t[i + 1] - t[i]) * d_i
        if t[i + 1] != 0:
            d_prime = _d(D, x_next, t[i + 1])
            x_next = x + (t[i + 1] - t[i]) * (0.5 * d_i + 0.5 * d_prime)
        x = x_next
    return x


def edm_stochastic(D, x, t, noise, S_churn=0.0, S_min=0.0, S_max=math.inf, S_noise=1.0):
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2), with s(t) = 1, sigma(t) = t.

    ``gamma_i = min(S_churn / N, sqrt(2) - 1)`` if ``t_i in [S_min, S_max]`` else 0; ``eps_i ~ N(0, S_noise^2
    I)``; ``t_hat = t_i + gamma_i t_i``; ``x_hat = x_i + sqrt(t_hat^2 - t_i^2) eps_i``; then one step of
    Algorithm 1 from ``(x_hat, t_hat)`` to ``t_{i+1}`` (Euler when ``t_{i+1} = 0``).

    ``noise[i]`` is the standard-normal draw ``z`` behind ``eps_i = S_noise z``; it is only read when
    ``gamma_i > 0`` (where ``gamma_i = 0`` the added noise is multiplied by 0), and may be ``None`` there.
    """
    x = np.array(x, dtype=np.float64)
    N = len(t) - 1
    for i in range(N):
        gamma = min(S_churn / N, math.sqrt(2) - 1) if S_min <= t[i] <= S_max else 0.0
        t_hat = t[i] + gamma * t[i]
        if gamma > 0:
            eps = S_noise * np.asarray(noise[i], dtype=np.float64)
            x_hat = x + math.sqrt(t_hat**2 - t[i] ** 2) * eps
        else:
            x_hat = x
        d = _d(D, x_hat, t_hat)
        x_next = x_hat + (t[i + 1] - t_hat) * d
        if t[i + 1] != 0:
            d_prime = _d(D, x_next, t[i + 1])
            x_next = x_hat + (t[i + 1] - t_hat) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


def dpmpp_2m(D, x, t):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), for VE data prediction.

    With ``alpha = 1``, ``sigma = t`` and ``lambda = log(alpha / sigma) = -log t``:
    ``h_i = lambda_{t_i} - lambda_{t_{i-1}}``; the first step is first order,
    ``x_1 = (sigma_1 / sigma_0) x_0 - alpha_1 (e^{-h_1} - 1) x_theta(x_0, t_0)``; later steps use
    ``r_i = h_{i-1} / h_i``, ``D_i = (1 + 1/(2 r_i)) x_theta(x_{i-1}) - 1/(2 r_i) x_theta(x_{i-2})`` and
    ``x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^{-h_i} - 1) D_i``.  The step to ``t = 0``
    (``lambda = inf``) would need ``h = inf``; as usual it returns the data prediction there.

    Indices here follow the paper: the schedule is ``t_0 > ... > t_M`` and step ``i`` goes ``t_{i-1} ->
    t_i``.
    """
    x = np.array(x, dtype=np.float64)
    M = len(t) - 1
    lam = [(-math.log(ti) if ti > 0 else math.inf) for ti in t]
    x_theta_prev = None  # x_theta(x_{i-2}, t_{i-2})
    for i in range(1, M + 1):
        x_theta = D(x, t[i - 1])  # x_theta(x_{i-1}, t_{i-1})
        if t[i] == 0:
            x = x_theta
        else:
            h = lam[i] - lam[i - 1]
            if x_theta_prev is None:
                D_i = x_theta
            else:
                r = (lam[i - 1] - lam[i - 2]) / h
                D_i = (1 + 1 / (2 * r)) * x_theta - 1 / (2 * r) * x_theta_prev
            x = (t[i] / t[i - 1]) * x - 1.0 * (math.exp(-h) - 1) * D_i
        x_theta_prev = x_theta
    return x


#: Adams-Bashforth weights for equal steps, newest slope first (order 1 to 4).
AB_WEIGHTS = {
    1: [1.0],
    2: [3 / 2, -1 / 2],
    3: [23 / 12, -16 / 12, 5 / 12],
    4: [55 / 24, -59 / 24, 37 / 24, -9 / 24],
}


def ipndm(D, x, t, max_order=4):
    """Improved PNDM (Zhang & Chen 2023): Adams-Bashforth in ``t`` with equal-step weights.

    ``x_{i+1} = x_i + (t_{i+1} - t_i) sum_j b_j d_{i-j}`` with ``d_k = (x_k - D(x_k; t_k)) / t_k`` and the
    order ``min(i + 1, max_order)`` weights of :data:`AB_WEIGHTS` (lower orders warm-start the method, so
    there is one evaluation per step).
    """
    x = np.array(x, dtype=np.float64)
    slopes = []  # d_0, d_1, ..., oldest first
    for i in range(len(t) - 1):
        slopes.append(_d(D, x, t[i]))
        order = min(i + 1, max_order)
        b = AB_WEIGHTS[order]
        increment = np.zeros_like(x)
        for j in range(order):
            increment += b[j] * slopes[i - j]
        x = x + (t[i + 1] - t[i]) * increment
    return x


def pc_langevin(D, x, t, noise, langevin_steps=1, langevin_eta=0.1):
    """Predictor-corrector: an Euler step of the probability-flow ODE, then unadjusted Langevin steps.

    After the predictor reaches ``t_{i+1} > 0``, ``langevin_steps`` ULA steps target ``p_{t_{i+1}}``:
    ``x <- x + h grad log p(x) + sqrt(2 h) z`` with ``grad log p(x) = (D(x; t) - x) / t^2`` and
    ``h = langevin_eta t_{i+1}^2``.  No corrector after the final step to 0.

    ``noise[i][j]`` is the standard-normal ``z`` of corrector step ``j`` after predictor step ``i``.
    """
    x = np.array(x, dtype=np.float64)
    for i in range(len(t) - 1):
        x = x + (t[i + 1] - t[i]) * _d(D, x, t[i])
        if t[i + 1] > 0:
            sigma = t[i + 1]
            h = langevin_eta * sigma**2
            for j in range(langevin_steps):
                grad_log_p = (D(x, sigma) - x) / sigma**2
                x = x + h * grad_log_p + math.sqrt(2 * h) * np.asarray(noise[i][j], dtype=np.float64)
    return x
