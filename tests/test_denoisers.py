"""Denoiser protocol and adapters: VP eps- and v-prediction models written independently in VP coordinates
must give the analytic VE denoiser, and the same samples, as the exact targets."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch

from adasched.denoisers import CountingDenoiser, Denoiser, EpsDenoiser, VDenoiser, VPLinearBeta, score
from adasched.samplers import sample_dpmpp_2m, sample_euler, sample_heun
from adasched.schedules import sigmas_edm
from adasched.targets import GaussianMixture, PowerLawGaussian

F64 = torch.float64
BETA_MIN, BETA_D = 0.1, 19.9


def _mixture(d: int, k: int, seed: int) -> GaussianMixture:
    g = np.random.default_rng(seed)
    return GaussianMixture(g.dirichlet(np.ones(k)).tolist(), g.normal(0, 1.5, (k, d)).tolist(),
                           g.uniform(0.05, 1.2, (k, d)).tolist())


def _batch_sigma(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=F64)


# --------------------------------------------------------------------------------------------------
# Independent VP-coordinate models (Song et al. 2021; Salimans & Ho 2022), written from alpha_bar(t)


def _alpha_bar(t: torch.Tensor, beta_min=BETA_MIN, beta_d=BETA_D) -> torch.Tensor:
    """``alpha_bar(t) = exp(-int_0^t beta)`` for ``beta(t) = beta_min + beta_d t``."""
    return torch.exp(-(0.5 * beta_d * t**2 + beta_min * t))


def _vp_gmm_score(z: torch.Tensor, a: torch.Tensor, w, mu, v) -> torch.Tensor:
    """Score of the VP marginal ``z = a x0 + sqrt(1 - a^2) eps`` of a diagonal mixture: components
    ``N(a mu_k, a^2 v_k + 1 - a^2)``."""
    a = a.reshape(-1, 1, 1)
    var = a**2 * v[None] + (1 - a**2)
    diff = z[:, None, :] - a * mu[None]
    logp = torch.log(w)[None] - 0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)
    r = torch.softmax(logp, dim=1)
    return -(r[:, :, None] * diff / var).sum(1)


def _eps_model(m: GaussianMixture, data_scale: float = 1.0, beta_min=BETA_MIN, beta_d=BETA_D):
    """Exact eps-prediction ``eps_hat(z, t) = -sqrt(1 - alpha_bar) score_vp(z, t)`` for data ``x0 / data_scale``."""
    w, mu, v = m.weights, m.means / data_scale, m.variances / data_scale**2

    def eps(z, t):
        ab = _alpha_bar(t, beta_min, beta_d)
        return -torch.sqrt(1 - ab)[:, None] * _vp_gmm_score(z, torch.sqrt(ab), w, mu, v)

    return eps


def _v_model(m: GaussianMixture, data_scale: float = 1.0):
    """Exact v-prediction ``v = alpha eps_hat - sigma_vp x0_hat`` (Salimans & Ho 2022) for data ``x0 / data_scale``."""
    eps_model = _eps_model(m, data_scale)

    def v(z, t):
        ab = _alpha_bar(t)
        alpha, sigma_vp = torch.sqrt(ab)[:, None], torch.sqrt(1 - ab)[:, None]
        eps = eps_model(z, t)
        x0 = (z - sigma_vp * eps) / alpha
        return alpha * eps - sigma_vp * x0

    return v


# --------------------------------------------------------------------------------------------------
# VPLinearBeta


def test_vp_sigma_and_t_are_inverse():
    vp = VPLinearBeta(BETA_MIN, BETA_D)
    t = torch.cat([torch.logspace(-9, -1, 20, dtype=F64), torch.linspace(0.1, 1.0, 30, dtype=F64)])
    torch.testing.assert_close(vp.t(vp.sigma(t)), t, rtol=1e-12, atol=0)
    sigma = torch.logspace(-6, 3, 60, dtype=F64)
    torch.testing.assert_close(vp.sigma(vp.t(sigma)), sigma, rtol=1e-12, atol=0)
    # sigma(t)^2 = 1 / alpha_bar(t) - 1
    torch.testing.assert_close(vp.sigma(t) ** 2, 1 / _alpha_bar(t) - 1, rtol=1e-9, atol=1e-15)
    # the usual VP range: t in [1e-5, 1] is sigma in about [0.001, 152]
    assert 1e-3 < float(vp.sigma(_batch_sigma(1e-5))) < 1.01e-3
    assert 150 < float(vp.sigma(_batch_sigma(1.0))) < 153
    assert float(vp.t(_batch_sigma(0.0))) == 0.0


@pytest.mark.parametrize("beta_min,beta_d", [(0.1, 0.0), (0.0, 10.0), (1.0, 2.0)])
def test_vp_other_betas_are_inverse(beta_min, beta_d):
    vp = VPLinearBeta(beta_min, beta_d)
    sigma = torch.logspace(-5, 2, 30, dtype=F64)
    torch.testing.assert_close(vp.sigma(vp.t(sigma)), sigma, rtol=1e-12, atol=0)
    t = vp.t(sigma)
    torch.testing.assert_close(vp.sigma(t) ** 2, 1 / _alpha_bar(t, beta_min, beta_d) - 1, rtol=1e-9, atol=1e-15)
    assert float(vp.t(_batch_sigma(0.0))) == 0.0


# --------------------------------------------------------------------------------------------------
# eps- and v-prediction adapters against the analytic VE denoiser

SIGMAS = [0.002, 0.05, 0.6, 3.0, 80.0]


def _points(m: GaussianMixture, sig: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return m.sample(len(sig), generator=g) + sig[:, None] * torch.randn(len(sig), m.shape[0], generator=g, dtype=F64)


@pytest.mark.parametrize("d,k", [(1, 1), (2, 3), (64, 4)])
def test_eps_denoiser_is_exact(d, k):
    m = _mixture(d, k, seed=d)
    vp = VPLinearBeta(BETA_MIN, BETA_D)
    D = EpsDenoiser(_eps_model(m), sigma_to_t=vp.t, sigma_min=0.002, sigma_max=80.0)
    sig = _batch_sigma(SIGMAS)
    x = _points(m, sig, 0)
    torch.testing.assert_close(D(x, sig), m(x, sig), rtol=1e-10, atol=1e-10)
    assert isinstance(D, Denoiser) and D.sigma_min == 0.002 and D.sigma_max == 80.0


@pytest.mark.parametrize("d,k", [(1, 1), (2, 3), (64, 4)])
def test_v_denoiser_vp_is_exact(d, k):
    m = _mixture(d, k, seed=100 + d)
    vp = VPLinearBeta(BETA_MIN, BETA_D)
    D = VDenoiser(_v_model(m), sigma_to_t=vp.t, sigma_min=0.002, sigma_max=80.0)
    sig = _batch_sigma(SIGMAS)
    x = _points(m, sig, 1)
    torch.testing.assert_close(D(x, sig), m(x, sig), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sigma_data", [0.5, 2.0])
def test_v_denoiser_general_sigma_data_is_exact(sigma_data):
    """v-prediction on data scaled by 1/sigma_data: input ``x / sqrt(sigma^2 + sigma_data^2)``, model time at
    ``sigma / sigma_data``; the adapter's c_skip, c_out, c_in must recover the VE denoiser of the unscaled data."""
    m = _mixture(3, 2, seed=7)
    vp = VPLinearBeta(BETA_MIN, BETA_D)
    D = VDenoiser(_v_model(m, data_scale=sigma_data), sigma_to_t=lambda s: vp.t(s / sigma_data),
                  sigma_min=0.002, sigma_max=80.0, sigma_data=sigma_data)
    sig = _batch_sigma(SIGMAS)
    x = _points(m, sig, 2)
    torch.testing.assert_close(D(x, sig), m(x, sig), rtol=1e-10, atol=1e-10)
    # the VP parametrisation (sigma_data = 1) of the same scaled model is a different, wrong, denoiser
    wrong = VDenoiser(_v_model(m, data_scale=sigma_data), sigma_to_t=lambda s: vp.t(s / sigma_data),
                      sigma_min=0.002, sigma_max=80.0)
    assert (wrong(x, sig) - m(x, sig)).abs().max() > 1e-2


def test_adapters_round_sigma():
    vp = VPLinearBeta()
    m = _mixture(1, 1, 0)
    plain = EpsDenoiser(_eps_model(m), vp.t, 0.002, 80.0)
    s = _batch_sigma([0.123])
    assert plain.round_sigma(s) is s
    rounded = EpsDenoiser(_eps_model(m), vp.t, 0.002, 80.0, round_sigma=lambda v: torch.round(v * 10) / 10)
    assert float(rounded.round_sigma(s)) == pytest.approx(0.1)
    vd = VDenoiser(_v_model(m), vp.t, 0.002, 80.0, round_sigma=lambda v: v * 0 + 7.0)
    assert float(vd.round_sigma(s)) == 7.0


# --------------------------------------------------------------------------------------------------
# VP and VE forms give the same samples


def _latents(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("sampler", [sample_heun, sample_dpmpp_2m, sample_euler])
@pytest.mark.parametrize("parametrisation", ["eps", "v"])
def test_vp_and_ve_give_the_same_samples(sampler, parametrisation):
    m = _mixture(2, 3, seed=11)
    vp = VPLinearBeta(BETA_MIN, BETA_D)
    model = _eps_model(m) if parametrisation == "eps" else _v_model(m)
    adapter = EpsDenoiser if parametrisation == "eps" else VDenoiser
    D = adapter(model, sigma_to_t=vp.t, sigma_min=0.002, sigma_max=80.0)
    sigmas = sigmas_edm(10, 0.002, 80.0)
    x = _latents(32, 2) * sigmas[0]
    ve = sampler(m, x, sigmas)
    via_vp = sampler(D, x, sigmas)
    torch.testing.assert_close(via_vp, ve, rtol=1e-10, atol=1e-10)
    # samples moved far from the start (the test is not trivially passing on x)
    assert (ve - x).abs().min() > 1e-3


def _ddim_vp(eps_model, z, ts: torch.Tensor, callback=None):
    """Deterministic DDIM (eta = 0, Song et al. 2021) in VP time: ``z' = sqrt(ab') x0_hat + sqrt(1 - ab') eps_hat``."""
    for i in range(len(ts) - 1):
        t = ts[i].expand(z.shape[0])
        ab, ab_next = _alpha_bar(ts[i]), _alpha_bar(ts[i + 1])
        eps = eps_model(z, t)
        x0 = (z - torch.sqrt(1 - ab) * eps) / torch.sqrt(ab)
        z = torch.sqrt(ab_next) * x0 + torch.sqrt(1 - ab_next) * eps
        if callback is not None:
            callback(i, z, ab_next)
    return z


@pytest.mark.parametrize("d,k,n", [(2, 3, 12), (64, 4, 7)])
def test_ddim_in_vp_is_euler_in_ve(d, k, n):
    """DDIM in VP coordinates is Euler in ``x = z / sqrt(alpha_bar)`` (Karras et al. 2022, Sec. 4), step by step."""
    m = _mixture(d, k, seed=20 + d)
    vp = VPLinearBeta(BETA_MIN, BETA_D)
    eps_model = _eps_model(m)
    sigmas = sigmas_edm(n, 0.002, 80.0)
    ts = vp.t(sigmas)
    assert float(ts[-1]) == 0.0
    lat = _latents(16, d, seed=3)
    x = lat * sigmas[0]
    z = lat * sigmas[0] * torch.sqrt(_alpha_bar(ts[0]))

    ddim_states, euler_states = [], []
    z_end = _ddim_vp(eps_model, z, ts, callback=lambda i, zi, ab: ddim_states.append(zi / torch.sqrt(ab)))
    D = EpsDenoiser(eps_model, sigma_to_t=vp.t, sigma_min=0.002, sigma_max=80.0)
    x_end = sample_euler(D, x, sigmas, callback=lambda i, xi, s, den: euler_states.append(xi))
    assert len(ddim_states) == len(euler_states) == n
    for a, b in zip(ddim_states, euler_states):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(z_end, x_end, rtol=1e-10, atol=1e-10)  # alpha_bar(0) = 1: coordinates coincide
    torch.testing.assert_close(sample_euler(m, x, sigmas), x_end, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# CountingDenoiser and score


def test_counting_denoiser_counts_calls_and_evaluations():
    m = _mixture(2, 2, seed=0)
    c = CountingDenoiser(m)
    x = _latents(6, 2) * 80
    out = sample_heun(c, x, sigmas_edm(5))
    assert c.nfe == 2 * 5 - 1 and c.evaluations == 6 * (2 * 5 - 1)
    torch.testing.assert_close(out, sample_heun(m, x, sigmas_edm(5)), rtol=0, atol=0)
    c2 = CountingDenoiser(m)
    sig = torch.full((6,), 1.0, dtype=F64)
    full = c2(x, sig)
    c2(x[:2], sig[:2])
    c2(x[2:], sig[2:])
    assert c2.nfe == 3 and c2.evaluations == 12 and c2.evaluations / 6 == 2
    torch.testing.assert_close(full, m(x, sig), rtol=0, atol=0)
    # attributes are those of the wrapped denoiser, and the wrapper satisfies the protocol
    assert c.sigma_min == m.sigma_min and c.sigma_max == m.sigma_max and c.shape == m.shape
    assert isinstance(c, Denoiser)
    with pytest.raises(AttributeError):
        c.no_such_attribute


def test_counting_denoiser_copies_and_pickles():
    c = CountingDenoiser(_mixture(1, 2, seed=1))
    x, sig = _latents(3, 1), torch.ones(3, dtype=F64)
    c(x, sig)
    for clone in (copy.copy(c), copy.deepcopy(c), pickle.loads(pickle.dumps(c))):
        assert clone.nfe == 1 and clone.evaluations == 3
        torch.testing.assert_close(clone(x, sig), c.inner(x, sig), rtol=0, atol=0)


@pytest.mark.parametrize("sigma", [0.05, 0.5, 5.0, 80.0])
def test_score_function_is_the_exact_score(sigma):
    m = _mixture(3, 3, seed=5)
    sig = torch.full((8,), sigma, dtype=F64)
    x = _points(m, sig, 4)
    torch.testing.assert_close(score(m, x, sig), m.score(x, sig), rtol=1e-9, atol=1e-9)
    pl = PowerLawGaussian((1, 4, 4), alpha=2.0, scale=1.0, mean=0.1)
    y = pl.sample(8, generator=torch.Generator().manual_seed(0)) + sigma * torch.randn(8, 1, 4, 4, dtype=F64)
    torch.testing.assert_close(score(pl, y, sig), pl.score(y, sig), rtol=1e-9, atol=1e-9)
    # through an adapter, too
    vp = VPLinearBeta()
    D = EpsDenoiser(_eps_model(m), vp.t, 0.002, 80.0)
    torch.testing.assert_close(score(D, x, sig), m.score(x, sig), rtol=1e-8, atol=1e-8)
