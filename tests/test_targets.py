"""Analytic targets against independent truth: autograd, scipy densities, dense linear algebra, RK4."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.fft
import scipy.integrate
import scipy.special
import scipy.stats
import torch

from adasched.errors import AdaschedError, ModelError
from adasched.targets import GaussianMixture, PowerLawGaussian, dct_matrix

F64 = torch.float64


def _mixture_params(d: int, k: int, seed: int):
    g = np.random.default_rng(seed)
    return g.dirichlet(np.ones(k)), g.normal(0.0, 2.0, (k, d)), g.uniform(0.05, 1.5, (k, d))


def _mixture(d: int, k: int = 3, seed: int = 0) -> GaussianMixture:
    w, mu, v = _mixture_params(d, k, seed)
    return GaussianMixture(w.tolist(), mu.tolist(), v.tolist())


def _points(m: GaussianMixture, n: int, sigma: float, seed: int) -> torch.Tensor:
    """Points where the noised density has mass, plus a few far out."""
    g = torch.Generator().manual_seed(seed)
    x = m.sample(n, generator=g) + sigma * torch.randn(n, m.shape[0], generator=g, dtype=F64)
    x[:2] *= 3.0
    return x


def _autograd_score(m, x: torch.Tensor, sigma) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(m.log_prob(x, sigma).sum(), x)
    return grad


def _scipy_mixture_logpdf(x: np.ndarray, w, mu, v, sigma) -> np.ndarray:
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (x.shape[0],))
    out = np.empty(x.shape[0])
    for b in range(x.shape[0]):
        comps = [np.log(w[k]) + scipy.stats.multivariate_normal(mu[k], np.diag(v[k] + sig[b] ** 2)).logpdf(x[b])
                 for k in range(len(w))]
        out[b] = scipy.special.logsumexp(comps)
    return out


DIMS = [1, 2, 64]
SIGMAS = [0.003, 0.1, 1.0, 7.0, 80.0]


# --------------------------------------------------------------------------------------------------
# GaussianMixture: denoiser, score, density, samples


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("sigma", SIGMAS)
def test_gmm_denoiser_is_tweedie_and_score_is_autograd(d, sigma):
    m = _mixture(d, k=3, seed=d)
    x = _points(m, 6, sigma, seed=1)
    sig = torch.full((6,), sigma, dtype=F64)
    grad = _autograd_score(m, x, sig)
    tweedie = x + sigma**2 * grad
    torch.testing.assert_close(m(x, sig), tweedie, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(m.score(x, sig), grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("d", DIMS)
def test_gmm_per_row_sigma(d):
    """Each row uses its own sigma: batch results equal row-by-row results and autograd."""
    m = _mixture(d, k=4, seed=10 + d)
    sig = torch.tensor(SIGMAS, dtype=F64)
    x = _points(m, len(SIGMAS), 1.0, seed=2) + sig[:, None] * 0.5
    rows = torch.cat([m(x[i:i + 1], sig[i:i + 1]) for i in range(len(SIGMAS))])
    torch.testing.assert_close(m(x, sig), rows, rtol=0, atol=1e-13)
    torch.testing.assert_close(m(x, sig), x + sig[:, None] ** 2 * _autograd_score(m, x, sig), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("sigma", [0.0, 0.7])
def test_gmm_log_prob_matches_scipy(d, sigma):
    w, mu, v = _mixture_params(d, 3, seed=d)
    m = GaussianMixture(w.tolist(), mu.tolist(), v.tolist())
    x = _points(m, 5, sigma, seed=3)
    ref = _scipy_mixture_logpdf(x.numpy(), w, mu, v, sigma)
    np.testing.assert_allclose(m.log_prob(x, sigma).numpy(), ref, rtol=1e-11, atol=1e-11)
    # sigma as a [B] tensor of different levels
    sig = torch.linspace(0.0, 2.0, 5, dtype=F64)
    ref = _scipy_mixture_logpdf(x.numpy(), w, mu, v, sig.numpy())
    np.testing.assert_allclose(m.log_prob(x, sig).numpy(), ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_gmm_density_integrates_to_one_1d(sigma):
    m = _mixture(1, k=3, seed=4)

    def pdf(t):
        return math.exp(float(m.log_prob(torch.tensor([[t]], dtype=F64), sigma)))

    mass, err = scipy.integrate.quad(pdf, -np.inf, np.inf, epsabs=1e-13, epsrel=1e-12, limit=200)
    assert abs(mass - 1) < 1e-9
    first, _ = scipy.integrate.quad(lambda t: t * pdf(t), -np.inf, np.inf, epsabs=1e-13, limit=200)
    assert abs(first - float(m.weights @ m.means[:, 0])) < 1e-8


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_gmm_density_integrates_to_one_2d(sigma):
    m = _mixture(2, k=3, seed=5)
    t = torch.linspace(-14.0, 14.0, 701, dtype=F64)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    p = m.log_prob(grid, sigma).exp().reshape(701, 701)
    h = float(t[1] - t[0])
    assert abs(float(p.sum()) * h * h - 1) < 1e-9
    mean = (p[..., None] * grid.reshape(701, 701, 2)).sum((0, 1)) * h * h
    torch.testing.assert_close(mean, m.weights @ m.means, rtol=0, atol=1e-8)


def _mixture_moments(m: GaussianMixture):
    w, mu, v = m.weights[:, None], m.means, m.variances
    mean = (w * mu).sum(0)
    var = (w * (v + mu**2)).sum(0) - mean**2
    a = mu - mean
    m4 = (w * (a**4 + 6 * a**2 * v + 3 * v**2)).sum(0)  # 4th central moment per coordinate
    return mean, var, m4


@pytest.mark.parametrize("d,n", [(1, 200_000), (2, 200_000), (64, 40_000)])
def test_gmm_sample_moments(d, n):
    m = _mixture(d, k=3, seed=20 + d)
    x = m.sample(n, generator=torch.Generator().manual_seed(123))
    assert x.shape == (n, d) and x.dtype == F64
    mean, var, m4 = _mixture_moments(m)
    # Fixed generator, so deterministic; 6 standard errors would almost never be exceeded by chance.
    se_mean = (var / n).sqrt()
    se_var = ((m4 - var**2) / n).sqrt()
    assert ((x.mean(0) - mean).abs() < 6 * se_mean).all()
    assert ((x.var(0) - var).abs() < 6 * se_var).all()


def test_gmm_sample_distribution_1d_and_reproducible():
    w, mu, v = _mixture_params(1, 3, seed=30)
    m = GaussianMixture(w.tolist(), mu.tolist(), v.tolist())
    x = m.sample(50_000, generator=torch.Generator().manual_seed(7))[:, 0].numpy()

    def cdf(t):
        return sum(w[k] * scipy.stats.norm.cdf(t, mu[k, 0], math.sqrt(v[k, 0])) for k in range(3))

    assert scipy.stats.kstest(x, cdf).pvalue > 1e-3
    # a wrong mixture (swapped weights) is rejected by the same test, so the test has power
    wrong = lambda t: sum(w[::-1][k] * scipy.stats.norm.cdf(t, mu[k, 0], math.sqrt(v[k, 0])) for k in range(3))
    assert scipy.stats.kstest(x, wrong).pvalue < 1e-6
    again = m.sample(50_000, generator=torch.Generator().manual_seed(7), dtype=torch.float32)
    assert again.dtype == torch.float32
    np.testing.assert_array_equal(again[:, 0].numpy(), x.astype(np.float32))


def test_gmm_sample_per_component_moments():
    """Well-separated components (the sign tells them apart): weights, means and variances of each."""
    m = GaussianMixture([0.3, 0.7], [[-6.0, 1.0], [6.0, -2.0]], [[0.5, 2.0], [0.25, 1.0]])
    x = m.sample(1_000_000, generator=torch.Generator().manual_seed(11))
    left = x[:, 0] < 0
    n0 = int(left.sum())
    assert abs(n0 / 1e6 - 0.3) < 6 * math.sqrt(0.3 * 0.7 / 1e6)
    for k, rows in enumerate([x[left], x[~left]]):
        n, mu, v = rows.shape[0], m.means[k], m.variances[k]
        assert ((rows.mean(0) - mu).abs() < 6 * (v / n).sqrt()).all()
        assert ((rows.var(0) - v).abs() < 6 * v * math.sqrt(2 / n)).all()


def test_gmm_zero_weight_component_is_never_sampled():
    m = GaussianMixture([0.0, 1.0], [[100.0], [0.0]], [[1.0], [1.0]])
    x = m.sample(10_000, generator=torch.Generator().manual_seed(0))
    assert x.abs().max() < 10
    d = m(torch.tensor([[100.0]], dtype=F64), torch.tensor([1.0], dtype=F64))
    torch.testing.assert_close(d, torch.tensor([[50.0]], dtype=F64), rtol=1e-12, atol=0)


def test_gmm_json_round_trip_and_renormalised_weights():
    m = GaussianMixture.from_json({"weights": [0.3333334, 0.3333333, 0.3333333], "means": [[0.0], [1.0], [2.0]],
                                   "variances": [[1.0], [1.0], [2.0]]})
    assert abs(float(m.weights.sum()) - 1) < 1e-15
    again = GaussianMixture.from_json(m.to_json())
    for a, b in [(m.weights, again.weights), (m.means, again.means), (m.variances, again.variances)]:
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert m.shape == (1,) and m.round_sigma(torch.tensor([0.5])).item() == 0.5


# --------------------------------------------------------------------------------------------------
# GaussianMixture: malformed input

GOOD = {"weights": [0.25, 0.75], "means": [[0.0, 1.0], [2.0, 3.0]], "variances": [[1.0, 1.0], [0.5, 0.5]]}


def _with(**changes):
    obj = dict(GOOD)
    obj.update(changes)
    return obj


BAD = [
    ("sum", _with(weights=[0.3, 0.6]), "weights"),
    ("negative weight", _with(weights=[1.5, -0.5]), "weights"),
    ("negative variance", _with(variances=[[1.0, -1.0], [0.5, 0.5]]), "variances"),
    ("ragged means", _with(means=[[0.0, 1.0], [2.0]]), "means"),
    ("ragged variances", _with(variances=[[1.0], [0.5, 0.5]]), "variances"),
    ("K means", _with(means=[[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]), "means"),
    ("K variances", _with(variances=[[1.0, 1.0]]), "variances"),
    ("K weights", _with(weights=[1.0]), "weights"),
    ("dimension", _with(variances=[[1.0, 1.0, 1.0], [0.5, 0.5, 0.5]]), "variances"),
    ("string weight", _with(weights=["0.25", 0.75]), "weights"),
    ("null mean", _with(means=[[0.0, None], [2.0, 3.0]]), "means"),
    ("bool variance", _with(variances=[[True, 1.0], [0.5, 0.5]]), "variances"),
    ("nested weights", _with(weights=[[0.25], [0.75]]), "weights"),
    ("deep means", _with(means=[[[0.0], [1.0]], [[2.0], [3.0]]]), "means"),
    ("flat means", _with(means=[0.0, 2.0]), "means"),
    ("weights not a list", _with(weights="0.25 0.75"), "weights"),
    ("empty weights", _with(weights=[]), "weights"),
    ("empty rows", {"weights": [1.0], "means": [[]], "variances": [[]]}, "means"),
    ("nan mean", _with(means=[[0.0, float("nan")], [2.0, 3.0]]), "means"),
    ("inf variance", _with(variances=[[1.0, float("inf")], [0.5, 0.5]]), "variances"),
    ("missing", {"weights": [1.0], "means": [[0.0]]}, "variances"),
    ("unknown", _with(covariances=[[1.0]]), "covariances"),
]


@pytest.mark.parametrize("obj,key", [(o, k) for _, o, k in BAD], ids=[n for n, _, _ in BAD])
def test_gmm_malformed_input(obj, key):
    with pytest.raises(ModelError) as info:
        GaussianMixture.from_json(obj, source="mix.json")
    msg = str(info.value)
    assert isinstance(info.value, AdaschedError)
    assert "\n" not in msg and msg.startswith("mix.json: ")
    assert key in msg


@pytest.mark.parametrize("obj", [[GOOD], "weights", 3.0, None])
def test_gmm_non_object_json(obj):
    with pytest.raises(ModelError, match="expected a JSON object"):
        GaussianMixture.from_json(obj)


def test_gmm_accepts_good_input_and_zero_variance():
    GaussianMixture.from_json(GOOD)
    m = GaussianMixture.from_json(_with(variances=[[0.0, 1.0], [0.5, 0.0]]))
    assert m.shape == (2,)


# --------------------------------------------------------------------------------------------------
# GaussianMixture: probability-flow ODE solution

W2 = np.array([0.35, 0.65])
MU2 = np.array([[-1.5, 0.5], [1.0, -0.8]])
V2 = np.array([[0.3, 0.15], [0.1, 0.4]])


def _np_denoise(x, sigma, w, mu, v):
    """Independent numpy mixture denoiser: responsibilities times per-component posterior means."""
    var = v[None] + sigma**2
    diff = x[:, None, :] - mu[None]
    logp = np.log(w)[None] - 0.5 * np.sum(diff**2 / var + np.log(2 * np.pi * var), -1)
    r = np.exp(logp - logp.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return np.einsum("bk,bkd->bd", r, mu[None] + v[None] / var * diff)


def _rk4_log_sigma(x, s0, s1, n, w, mu, v):
    """Classical RK4 on dx/du = x - D(x, e^u), u = log sigma, with n uniform steps."""
    u0, h = math.log(s0), (math.log(s1) - math.log(s0)) / n

    def f(u, y):
        return y - _np_denoise(y, math.exp(u), w, mu, v)

    for i in range(n):
        u = u0 + i * h
        k1 = f(u, x)
        k2 = f(u + h / 2, x + h / 2 * k1)
        k3 = f(u + h / 2, x + h / 2 * k2)
        k4 = f(u + h, x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def _start(n, d, sigma, seed):
    return sigma * torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_ode_single_component_closed_form():
    mu, v = np.array([[0.5, -2.0, 1.0]]), np.array([[0.2, 1.0, 3.0]])
    m = GaussianMixture([1.0], mu.tolist(), v.tolist())
    x = _start(4, 3, 80.0, 0)
    for s_to in [0.0, 0.4, 5.0]:
        closed = mu + (x.numpy() - mu) * np.sqrt((v + s_to**2) / (v + 80.0**2))
        np.testing.assert_allclose(m.ode_solution(x, 80.0, s_to).numpy(), closed, rtol=1e-13, atol=1e-13)
    # the closed form agrees with an independent RK4 integration
    rk = _rk4_log_sigma(x.numpy(), 80.0, 0.4, 1500, np.array([1.0]), mu, v)
    np.testing.assert_allclose(m.ode_solution(x, 80.0, 0.4).numpy(), rk, rtol=1e-10, atol=1e-10)
    # and the numerical path (two identical components) reproduces it
    twin = GaussianMixture([0.5, 0.5], np.vstack([mu, mu]).tolist(), np.vstack([v, v]).tolist())
    for s_to in [0.0, 0.4]:
        torch.testing.assert_close(twin.ode_solution(x, 80.0, s_to), m.ode_solution(x, 80.0, s_to),
                                   rtol=1e-8, atol=1e-8)


def test_ode_two_component_2d_against_fine_rk4():
    m = GaussianMixture(W2.tolist(), MU2.tolist(), V2.tolist())
    x = _start(16, 2, 80.0, 1)
    # to sigma = 0: RK4 down to 1e-6, where the remaining move (~ sigma^2 / v) is ~ 1e-12, then D
    rk = _rk4_log_sigma(x.numpy(), 80.0, 1e-6, 3000, W2, MU2, V2)
    rk0 = _np_denoise(rk, 1e-6, W2, MU2, V2)
    out = m.ode_solution(x, 80.0, 0.0)
    np.testing.assert_allclose(out.numpy(), rk0, rtol=0, atol=1e-9)
    # the end points are not all near one mode: both components are reached
    near = np.argmin(((out.numpy()[:, None, :] - MU2[None]) ** 2).sum(-1), 1)
    assert set(near.tolist()) == {0, 1}
    # to an intermediate level
    rk = _rk4_log_sigma(x.numpy(), 80.0, 0.3, 2000, W2, MU2, V2)
    np.testing.assert_allclose(m.ode_solution(x, 80.0, 0.3).numpy(), rk, rtol=0, atol=1e-9)


def test_ode_back_and_forth_and_semigroup():
    m = GaussianMixture(W2.tolist(), MU2.tolist(), V2.tolist())
    x = _start(8, 2, 80.0, 2)
    low = m.ode_solution(x, 80.0, 0.01)
    back = m.ode_solution(low, 0.01, 80.0)
    torch.testing.assert_close(back, x, rtol=1e-7, atol=1e-7)
    # the flow from 80 to 0 equals the flow 80 -> 1 followed by 1 -> 0
    direct = m.ode_solution(x, 80.0, 0.0)
    torch.testing.assert_close(m.ode_solution(m.ode_solution(x, 80.0, 1.0), 1.0, 0.0), direct, rtol=0, atol=1e-9)
    # the end point is a fixed point of the flow's last stretch: the denoiser at a tiny level keeps it
    torch.testing.assert_close(m(direct, torch.full((8,), 1e-7, dtype=F64)), direct, rtol=0, atol=1e-12)
    # a zero-length solve is the identity
    torch.testing.assert_close(m.ode_solution(x, 3.0, 3.0), x, rtol=0, atol=0)


def test_ode_point_masses():
    """Zero variances (atoms): the flow lands exactly on an atom, on the side the ODE keeps (order in 1-D)."""
    m = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[0.0], [0.0]])
    x = torch.tensor([[-30.0], [-0.5], [0.7], [45.0]], dtype=F64)
    out = m.ode_solution(x, 80.0, 0.0)
    torch.testing.assert_close(out, torch.sign(x), rtol=0, atol=1e-9)
    twin = GaussianMixture([0.5, 0.5], [[2.0, 3.0], [2.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]])
    out = twin.ode_solution(_start(3, 2, 80.0, 3), 80.0, 0.0)
    torch.testing.assert_close(out, torch.tensor([[2.0, 3.0]] * 3, dtype=F64), rtol=0, atol=1e-9)


def test_ode_64d_mixture_matches_rk4_coarse():
    w, mu, v = _mixture_params(64, 3, seed=40)
    m = GaussianMixture(w.tolist(), mu.tolist(), v.tolist())
    x = _start(3, 64, 80.0, 4)
    rk = _rk4_log_sigma(x.numpy(), 80.0, 0.05, 1500, w, mu, v)
    np.testing.assert_allclose(m.ode_solution(x, 80.0, 0.05).numpy(), rk, rtol=0, atol=1e-8)


# --------------------------------------------------------------------------------------------------
# PowerLawGaussian

SHAPE = (2, 4, 4)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_dct_matrix_orthonormal_and_matches_scipy(n):
    c = dct_matrix(n)
    assert c.dtype == F64 and c.shape == (n, n)
    torch.testing.assert_close(c @ c.T, torch.eye(n, dtype=F64), rtol=0, atol=1e-14)
    np.testing.assert_allclose(c.numpy(), scipy.fft.dct(np.eye(n), axis=0, norm="ortho"), rtol=0, atol=1e-14)


def _dense(pl: PowerLawGaussian):
    """Dense covariance ``sum_f lambda_f b_f b_f^T`` with ``b_f`` the 2-D inverse-DCT basis images (scipy)."""
    c, h, w = pl.shape
    n = c * h * w
    basis = scipy.fft.idctn(np.eye(n).reshape(n, c, h, w), axes=(-2, -1), norm="ortho").reshape(n, n)
    fy, fx = np.arange(h)[:, None], np.arange(w)[None]
    lam = np.broadcast_to(pl.scale * (1 + np.sqrt(fy**2 + fx**2)) ** (-pl.alpha), (c, h, w)).reshape(n)
    return basis.T @ np.diag(lam) @ basis, lam


@pytest.fixture(scope="module")
def pl():
    return PowerLawGaussian(SHAPE, alpha=1.5, scale=2.0, mean=0.3)


def _pl_points(pl, n, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    return pl.sample(n, generator=g) + sigma * torch.randn(n, *pl.shape, generator=g, dtype=F64)


def test_powerlaw_spectral_transform_is_scipy_dctn(pl):
    x = _pl_points(pl, 3, 0.5, 0)
    y = pl.to_spectral(x)
    np.testing.assert_allclose(y.numpy(), scipy.fft.dctn(x.numpy() - 0.3, axes=(-2, -1), norm="ortho"),
                               rtol=0, atol=1e-13)
    torch.testing.assert_close(pl.from_spectral(y), x, rtol=0, atol=1e-13)
    _, lam = _dense(pl)
    np.testing.assert_allclose(pl.eigenvalues.reshape(-1).numpy(), lam, rtol=1e-15, atol=0)


@pytest.mark.parametrize("sigma", [0.01, 0.5, 3.0, 80.0])
def test_powerlaw_denoiser_is_dense_formula(pl, sigma):
    cov, _ = _dense(pl)
    x = _pl_points(pl, 4, sigma, 1)
    sig = torch.full((4,), sigma, dtype=F64) * torch.tensor([1.0, 0.5, 2.0, 1.3], dtype=F64)
    xf = x.reshape(4, -1).numpy()
    ref = np.stack([0.3 + cov @ np.linalg.solve(cov + s**2 * np.eye(32), xi - 0.3) for xi, s in zip(xf, sig.numpy())])
    np.testing.assert_allclose(pl(x, sig).reshape(4, -1).numpy(), ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("sigma", [0.0, 0.2, 4.0])
def test_powerlaw_log_prob_and_score(pl, sigma):
    cov, _ = _dense(pl)
    x = _pl_points(pl, 3, sigma, 2)
    dist = scipy.stats.multivariate_normal(np.full(32, 0.3), cov + sigma**2 * np.eye(32))
    ref = dist.logpdf(x.reshape(3, -1).numpy())
    np.testing.assert_allclose(pl.log_prob(x, sigma).numpy(), ref, rtol=1e-11, atol=1e-10)
    if sigma > 0:
        sig = torch.full((3,), sigma, dtype=F64)
        grad = _autograd_score(pl, x, sig)
        torch.testing.assert_close(pl.score(x, sig), grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(pl(x, sig), x + sigma**2 * grad, rtol=1e-10, atol=1e-10)


def test_powerlaw_sample_moments(pl):
    n = 100_000
    x = pl.sample(n, generator=torch.Generator().manual_seed(5)).reshape(n, -1).numpy()
    cov, _ = _dense(pl)
    diag = np.diag(cov)
    assert np.all(np.abs(x.mean(0) - 0.3) < 6 * np.sqrt(diag / n))
    se = np.sqrt((np.outer(diag, diag) + cov**2) / n)
    assert np.all(np.abs(np.cov(x.T) - cov) < 6 * se)
    # the sample covariance tells the spectrum apart from a flat one of the same total variance
    assert np.abs(np.cov(x.T) - np.eye(32) * diag.mean()).max() > 20 * se.max()


def test_powerlaw_ode_solution_closed_form_and_ode(pl):
    cov, _ = _dense(pl)
    e, q = np.linalg.eigh(cov)
    x = 0.3 + 80.0 * torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(9), dtype=F64)
    for s_to in [0.0, 0.05, 1.0]:
        op = q @ np.diag(np.sqrt((e + s_to**2) / (e + 80.0**2))) @ q.T
        ref = 0.3 + (x.reshape(2, -1).numpy() - 0.3) @ op.T
        np.testing.assert_allclose(pl.ode_solution(x, 80.0, s_to).reshape(2, -1).numpy(), ref, rtol=1e-11, atol=1e-11)
    # dx/dsigma = (x - D(x, sigma)) / sigma, by central differences along the solution
    for s in [0.2, 2.0, 20.0]:
        h = 1e-4 * s
        xs = pl.ode_solution(x, 80.0, s)
        fd = (pl.ode_solution(x, 80.0, s + h) - pl.ode_solution(x, 80.0, s - h)) / (2 * h)
        rhs = (xs - pl(xs, torch.full((2,), s, dtype=F64))) / s
        torch.testing.assert_close(fd, rhs, rtol=1e-6, atol=1e-7)
    # back and forth
    torch.testing.assert_close(pl.ode_solution(pl.ode_solution(x, 80.0, 0.01), 0.01, 80.0), x, rtol=1e-10, atol=1e-10)


def test_powerlaw_json_round_trip(pl):
    """The file form holds the eigenbasis flag too, so a model is rebuilt (and content-hashed) exactly."""
    for model in (pl, pl.in_eigenbasis()):
        back = PowerLawGaussian.from_json(json.loads(json.dumps(model.to_json())))
        assert (back.shape, back.alpha, back.scale, back.mean, back.eigenbasis) == \
            (model.shape, model.alpha, model.scale, model.mean, model.eigenbasis)
    assert "eigenbasis" not in pl.to_json()
    with pytest.raises(ModelError, match="'eigenbasis' must be true or false, got 'yes'"):
        PowerLawGaussian.from_json({"shape": [1, 4, 4], "eigenbasis": "yes"})


def test_powerlaw_in_eigenbasis_is_the_rotated_target(pl):
    """Denoiser, density, ODE solution and every deterministic solver commute with the DCT rotation."""
    from adasched.samplers import SOLVERS
    from adasched.schedules import sigmas_edm

    pe = pl.in_eigenbasis()
    assert pe.eigenbasis and not pl.eigenbasis

    def rotate(x):  # pixel coordinates -> the eigenbasis's coordinates (the plain DCT, mean included)
        return torch.from_numpy(scipy.fft.dctn(x.numpy(), axes=(-2, -1), norm="ortho"))

    x = _pl_points(pl, 3, 0.7, 11)
    sig = torch.tensor([0.7, 0.1, 5.0], dtype=F64)
    torch.testing.assert_close(pe(rotate(x), sig), rotate(pl(x, sig)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pe.log_prob(rotate(x), 0.7), pl.log_prob(x, 0.7), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(pe.score(rotate(x), sig), _autograd_score(pe, rotate(x), sig), rtol=1e-10, atol=1e-12)
    xs = 80.0 * torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=F64)
    torch.testing.assert_close(pe.ode_solution(rotate(xs), 80.0, 0.0), rotate(pl.ode_solution(xs, 80.0, 0.0)),
                               rtol=1e-11, atol=1e-11)
    sigmas = sigmas_edm(6)
    for name, spec in SOLVERS.items():
        if spec.stochastic:
            continue
        torch.testing.assert_close(spec.fn(pe, rotate(xs), sigmas), rotate(spec.fn(pl, xs, sigmas)),
                                   rtol=1e-10, atol=1e-10, msg=name)
    # its samples are the rotated distribution: zero-frequency mean, diagonal covariance = eigenvalues
    y = pe.sample(50_000, generator=torch.Generator().manual_seed(4)).reshape(50_000, -1)
    mean = torch.zeros(SHAPE, dtype=F64)
    mean[:, 0, 0] = 0.3 * 4
    assert (y.mean(0) - mean.reshape(-1)).abs().max() < 6 * math.sqrt(2.0 / 50_000)
    torch.testing.assert_close(y.var(0), pl.eigenvalues.reshape(-1), rtol=0.05, atol=0)


@pytest.mark.parametrize("obj,key", [
    ({"shape": [4, 4]}, "shape"),
    ({"shape": [1, 4, 4.5]}, "shape"),
    ({"alpha": -1.0}, "alpha"),
    ({"scale": 0.0}, "scale"),
    ({"shape": [1, 4, 4], "beta": 1.0}, "beta"),
    ({"alpha": "two"}, "'alpha' must be a finite number, got 'two'"),
    ({"shape": [1, "abc", 2]}, "'shape' must be three positive integers"),
    ({"shape": "abc"}, "'shape' must be three positive integers"),
    ({"mean": float("nan")}, "'mean' must be a finite number"),
])
def test_powerlaw_malformed_input(obj, key):
    with pytest.raises(ModelError) as info:
        PowerLawGaussian.from_json(obj, source="pl.json")
    assert key in str(info.value) and str(info.value).startswith("pl.json: ")


def test_powerlaw_from_json_and_non_object():
    pl = PowerLawGaussian.from_json({"shape": [1, 3, 5], "alpha": 1.0, "scale": 0.5, "mean": -1.0})
    assert pl.shape == (1, 3, 5) and pl.eigenvalues.shape == (1, 3, 5)
    assert float(pl.eigenvalues[0, 0, 0]) == 0.5
    with pytest.raises(ModelError, match="expected a JSON object"):
        PowerLawGaussian.from_json([1, 3, 5])
