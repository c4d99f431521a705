"""Metrics against exact truth."""

import numpy as np
import pytest
import scipy.linalg
import torch

from adasched.metrics import frechet_distance, gaussian_stats, ode_error, rmse, sliced_wasserstein
from adasched.samplers import latents, sample_heun
from adasched.schedules import sigmas_edm
from adasched.targets import GaussianMixture


def _random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d


def test_frechet_commuting_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    l1, l2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    c1, c2 = (q * l1) @ q.T, (q * l2) @ q.T  # same eigenvectors: they commute
    exact = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(l1) - np.sqrt(l2)) ** 2).sum()
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("d", [2, 16, 64])
def test_frechet_random_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    c1, c2 = _random_cov(rng, d), _random_cov(rng, d)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    independent = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean)
    got = frechet_distance(mu1, c1, mu2, c2)
    assert got == pytest.approx(independent, rel=1e-6)
    assert got == pytest.approx(frechet_distance(mu2, c2, mu1, c1), rel=1e-9)  # symmetric


def test_frechet_zero_for_identical_and_singular_ok():
    rng = np.random.default_rng(1)
    mu, c = rng.standard_normal(8), _random_cov(rng, 8, rank=3)  # singular
    assert frechet_distance(mu, c, mu, c) == pytest.approx(0.0, abs=1e-7)
    assert frechet_distance(mu, c, mu, c + np.eye(8)) > 0.1


def test_gaussian_stats_and_rmse():
    f = np.arange(12.0).reshape(4, 3)
    mu, cov = gaussian_stats(f)
    assert np.allclose(mu, f.mean(0)) and np.allclose(cov, np.cov(f.T))
    assert rmse(np.zeros(4), np.full(4, 2.0)) == 2.0


def test_ode_error_falls_to_zero_with_nfe():
    g = GaussianMixture([0.4, 0.6], [[-1.0, 0.3], [1.0, -0.2]], [[0.02, 0.1], [0.05, 0.03]])
    z = latents(range(32), (2,)).double()
    errors = [ode_error(g, sample_heun(g, z * 80, sigmas_edm(n)), z, 80.0) for n in (8, 16, 32, 64, 128)]
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-3


def test_sliced_wasserstein_1d_exact_and_detects_shift():
    x = torch.linspace(-1, 1, 101, dtype=torch.float64)[:, None]
    assert sliced_wasserstein(x, x + 0.5) == pytest.approx(0.5, rel=1e-12)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, 3, generator=g), torch.randn(2000, 3, generator=g)
    assert sliced_wasserstein(a, b) < 0.1 < sliced_wasserstein(a, b + 1.0)
