"""The DDPM++ UNet and EDM preconditioning (adasched.networks): shapes, size, formula, dtypes, gradients."""

import copy
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from adasched.errors import ModelError
from adasched.networks import PRESETS, EDMPrecond, UNet, build, count_parameters
from adasched.samplers import sample_heun
from adasched.schedules import sigmas_edm
from rounding import EPS32, float32_tolerance

#: Measured parameter count of the "ddpmpp-cifar10" preset; EDM reports 55.7 M for its DDPM++ CIFAR-10 net.
CIFAR_PARAMS = 55_733_891


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    return build("digits", init_zero=False).eval()


@pytest.fixture(scope="module")
def digits_cond():
    torch.manual_seed(0)
    return build("digits", label_dim=10, init_zero=False).eval()


class _Identity(nn.Module):
    """A stand-in network F(x, c_noise) = x that records the noise labels it sees."""

    img_resolution, in_channels, label_dim = 4, 2, 0

    def forward(self, x, noise_labels, class_labels=None):
        self.noise_labels = noise_labels
        return x


def test_presets_and_attributes(digits):
    assert set(PRESETS) >= {"ddpmpp-cifar10", "digits"}
    assert digits.shape == (1, 8, 8)
    assert (digits.sigma_min, digits.sigma_max, digits.sigma_data) == (0.002, 80.0, 0.5)
    assert digits.img_resolution == 8 and digits.img_channels == 1 and digits.label_dim == 0
    s = torch.tensor([0.3, 2.0], dtype=torch.float64)
    assert torch.equal(digits.round_sigma(s), s)
    assert count_parameters(digits) < 1_000_000


def test_digits_forward_shape_and_dtype(digits):
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        for dtype in (torch.float64, torch.float32, torch.bfloat16):
            out = digits(x.to(dtype), torch.tensor([0.01, 1.0, 80.0], dtype=dtype))
            assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
        # A scalar sigma applies to the whole batch.
        a = digits(x, torch.tensor(0.7))
        b = digits(x, torch.full((3,), 0.7, dtype=torch.float64))
    torch.testing.assert_close(a, b)


def test_cifar_preset_size_and_shapes():
    # On the meta device: no memory, no arithmetic, just the architecture.
    with torch.device("meta"):
        net = build("ddpmpp-cifar10")
        out = net(torch.empty(2, 3, 32, 32), torch.ones(2))
    n = count_parameters(net)
    assert n == CIFAR_PARAMS
    assert abs(n - 55.7e6) / 55.7e6 < 0.005
    assert out.shape == (2, 3, 32, 32)
    assert net.shape == (3, 32, 32)
    assert PRESETS["ddpmpp-cifar10"]["dropout"] == 0.13


@pytest.mark.parametrize("sigma", [0.002, 0.5, 3.0, 80.0])
def test_preconditioning_formula(sigma):
    net = EDMPrecond(_Identity())
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    s = torch.full((2,), sigma, dtype=torch.float64)
    out = net(x, s)
    sd = 0.5
    c_skip = sd**2 / (sigma**2 + sd**2)
    c_out = sigma * sd / math.sqrt(sigma**2 + sd**2)
    c_in = 1 / math.sqrt(sigma**2 + sd**2)
    torch.testing.assert_close(out, (c_skip + c_out * c_in) * x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(net.model.noise_labels, torch.full((2,), math.log(sigma) / 4), rtol=1e-6, atol=1e-7)


def test_zero_network_gives_c_skip_x():
    net = build("digits", init_zero=False)
    with torch.no_grad():
        net.model.conv_out.weight.zero_()
        net.model.conv_out.bias.zero_()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.1, 5.0], dtype=torch.float64)
    c_skip = (0.25 / (sigma**2 + 0.25)).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(net(x, sigma), c_skip * x, rtol=1e-6, atol=1e-7)


def test_class_labels(digits_cond):
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    s = torch.tensor([1.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        a = digits_cond(x, s, class_labels=torch.tensor([0, 0]))
        b = digits_cond(x, s, class_labels=torch.tensor([7, 7]))
        onehot = digits_cond(x, s, class_labels=nn.functional.one_hot(torch.tensor([7, 7]), 10).float())
        one_row = digits_cond(x, s, class_labels=torch.tensor([7]))
    assert (a - b).abs().max() > 1e-4
    torch.testing.assert_close(b, onehot)
    torch.testing.assert_close(b, one_row)
    with pytest.raises(ModelError, match="class-conditional"):
        digits_cond(x, s)


def test_unconditional_refuses_labels(digits):
    with pytest.raises(ModelError, match="unconditional"):
        digits(torch.zeros(1, 1, 8, 8), torch.ones(1), class_labels=torch.tensor([1]))


def test_gradients_reach_latents_through_sampler(digits):
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    out = sample_heun(digits, x * 80, sigmas_edm(4))
    assert out.dtype == torch.float64
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_float64_copy_runs_in_float64(digits):
    """``.double()`` makes the whole net, preconditioning included, compute in float64: its output is the float32
    output up to float32 rounding (measured 1.0-1.3 float32 steps of the largest output), and not equal to it."""
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2
    s = torch.tensor([0.05, 0.5, 2.0, 20.0], dtype=torch.float64)
    net64 = copy.deepcopy(digits).double()
    assert net64.compute_dtype == torch.float64 and digits.compute_dtype == torch.float32
    with torch.no_grad():
        out32, out64 = digits(x, s), net64(x, s)
        assert out64.dtype == torch.float64
        assert torch.equal(digits(x, s.float()), out32)  # sigma's dtype does not matter: computed in float32
    # A few float32 steps of the largest output (20 layers deep, each rounding relative to its own scale).
    assert 0 < (out32 - out64).abs().max() < 16 * EPS32 * out64.abs().max()


def test_reduced_precision_and_channels_last_are_close(digits):
    """channels_last reorders the convolutions' sums: equal to the contiguous layout up to float32 rounding, sized
    from the float64 twin.  bfloat16 autocast: within two bfloat16 steps (2^-7) of the largest output (measured
    0.3), and not equal (autocast took effect)."""
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2
    s = torch.tensor([0.05, 0.5, 2.0, 20.0], dtype=torch.float64)
    with torch.no_grad():
        ref = digits(x, s)
        tol = float32_tolerance(ref, copy.deepcopy(digits).double()(x, s))
        try:
            digits.set_precision(channels_last=True)
            assert (digits(x, s) - ref).abs().max() <= tol
            digits.set_precision(autocast_dtype=torch.bfloat16, channels_last=True)
            out = digits(x, s)
            assert out.dtype == torch.float64
            assert 0 < (out - ref).abs().max() < 2 * torch.finfo(torch.bfloat16).eps * ref.abs().max()
        finally:
            digits.set_precision()
    assert digits.autocast_dtype is None and not digits.channels_last
    with pytest.raises(ModelError, match="autocast_dtype"):
        digits.set_precision(autocast_dtype=torch.int8)


def test_fourier_embedding_and_training_step():
    torch.manual_seed(0)
    net = build("digits", embedding="fourier", dropout=0.1, attn_resolutions=())
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    y = torch.rand(8, 1, 8, 8) * 2 - 1
    sigma = (torch.randn(8) * 1.2 - 1.2).exp()
    loss = (net(y + sigma.reshape(-1, 1, 1, 1) * torch.randn_like(y), sigma) - y).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    opt.step()


def test_bad_configs():
    with pytest.raises(ModelError, match="valid presets: .*digits"):
        build("nope")
    with pytest.raises(ModelError, match="bad option"):
        build("digits", not_an_option=1)
    with pytest.raises(ModelError, match="divisible"):
        UNet(img_resolution=6, in_channels=1, out_channels=1, channel_mult=(1, 2, 2))
    with pytest.raises(ModelError, match="embedding"):
        build("digits", embedding="learned")


def test_init_zero_starts_near_c_skip_x():
    x = torch.randn(2, 1, 8, 8)
    sigma = torch.tensor([0.5, 2.0])
    c_skip = (0.25 / (sigma**2 + 0.25)).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        assert (build("digits")(x, sigma) - c_skip * x).abs().max() < 1e-3
        assert (build("digits", init_zero=False)(x, sigma) - c_skip * x).abs().max() > 1e-2


def test_import_is_light():
    code = ("import sys, adasched.networks, adasched.samplers, adasched.schedules; "
            "heavy = [m for m in ('h5py', 'snakemake', 'cleanfid', 'submitit', 'matplotlib', 'diffusers') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def _gpu_speed_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_speed.py"
    spec = importlib.util.spec_from_file_location("gpu_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_speed_benchmark_smoke(tmp_path):
    out = _gpu_speed_module().main(["--device", "cuda", "--batch", "4", "--steps", "3", "--reps", "1",
                                    "--options", "fp32,bf16+cl,fp16+cl+graph", "--out", str(tmp_path / "r.json")])
    assert [r["option"] for r in out["rows"]] == ["fp32", "bf16+cl", "fp16+cl+graph"]
    assert all("skipped" not in r for r in out["rows"])
    assert out["rows"][2]["rmse_fp64"] < 0.1 * out["schedule_rmse"]
