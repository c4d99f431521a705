"""Shared fixtures: small analytic targets with exact denoisers (float64, CPU, built deterministically), and a
short-trained digits network."""

import pytest
import torch

from adasched.targets import GaussianMixture


@pytest.fixture(scope="session")
def gaussian_8d():
    """One Gaussian in 8-D, per-axis variances 0.25..1 and a non-zero mean: closed-form ODE solution."""
    var = torch.linspace(0.25, 1.0, 8, dtype=torch.float64)
    mu = torch.linspace(-0.5, 0.5, 8, dtype=torch.float64)
    return GaussianMixture([1.0], [mu.tolist()], [var.tolist()])


@pytest.fixture(scope="session")
def mixture_2d():
    """Three well separated 2-D components whose widths differ by a factor of 10 (variances 0.01..1)."""
    return GaussianMixture([0.3, 0.5, 0.2], [[-1.5, 0.0], [1.0, 0.8], [0.3, -1.2]],
                           [[0.01, 0.04], [0.25, 0.5], [1.0, 0.09]])


@pytest.fixture(scope="session")
def mixture_64d():
    """Five 64-D components, typical variances 0.01 to 1 (log-spaced) with per-axis jitter, fixed seed."""
    g = torch.Generator().manual_seed(0)
    k, d = 5, 64
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    mu = torch.randn(k, d, generator=g, dtype=torch.float64)
    scale = torch.logspace(-2, 0, k, dtype=torch.float64)
    var = scale[:, None] * torch.exp(0.3 * torch.randn(k, d, generator=g, dtype=torch.float64))
    return GaussianMixture((w / w.sum()).tolist(), mu.tolist(), var.tolist())


@pytest.fixture(scope="session")
def mixture_3d():
    """A small 3-D mixture (unequal weights and widths) for cross-checks that run one sample at a time."""
    return GaussianMixture([0.2, 0.45, 0.35], [[-1.0, 0.5, 0.0], [0.8, -0.3, 1.2], [0.1, 1.5, -0.7]],
                           [[0.02, 0.3, 0.1], [0.5, 0.05, 0.8], [0.15, 1.0, 0.04]])


@pytest.fixture(scope="session")
def short_run(tmp_path_factory):
    """A slimmed digits net (16 channels) trained 400 steps of 64 images with the online schedule learner (16
    levels, 8 substeps each, gamma 0.2; about 70 s on one CPU thread), the file it was saved to, and the
    initial net for comparison: ``(config, path, model, init)``."""
    from adasched.train import TrainConfig, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = tmp_path_factory.mktemp("short") / "model.safetensors"
        config = TrainConfig(steps=400, batch=64, lr=3e-3, lr_warmup=20, log_every=100, seed=0,
                             net_options=dict(model_channels=16), online_schedule=True, online_levels=16,
                             online_substeps=8, online_gamma=0.2, online_n_min=16)
        init = train(TrainConfig(**{**config.to_json(), "steps": 1, "lr": 1e-12, "online_schedule": False}))
        model = train(config, path)
    finally:
        torch.set_num_threads(threads)
    return config, path, model, init
