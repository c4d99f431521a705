"""The ``diffusers:`` model SPEC: tiny random UNet2DModels saved with ``save_pretrained`` (no network), the
discrete-time eps/v/x0 adapter against the raw UNet and against an exact Gaussian-mixture model, pickle policy,
the Hub path (huggingface_hub monkeypatched), and ``adasched sample`` through the CLI."""

from __future__ import annotations

import fnmatch
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402

from adasched.cli import main  # noqa: E402
from adasched.diffusers_models import DiffusersDenoiser, load_diffusers, training_sigmas  # noqa: E402
from adasched.errors import ModelError  # noqa: E402
from adasched.models import load_model  # noqa: E402
from adasched.targets import GaussianMixture  # noqa: E402

F64 = torch.float64


def _unet(channels: int = 3, seed: int = 0, **kw) -> UNet2DModel:
    torch.manual_seed(seed)
    net = UNet2DModel(sample_size=8, in_channels=channels, out_channels=channels, layers_per_block=1,
                      block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, **kw)
    with torch.no_grad():  # move away from the initialisation so that every layer matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def _save(folder, net, safe: bool = True, **scheduler):
    net.save_pretrained(folder, safe_serialization=safe)
    DDPMScheduler(num_train_timesteps=1000, **scheduler).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def eps_dir(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("eps") / "ddpm-tiny", _unet())


def _linear_sigmas() -> torch.Tensor:
    """DDPM's linear betas (1e-4 .. 0.02, 1000 steps; float32 as diffusers makes them), products in float64."""
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32).to(F64)
    ab = torch.cumprod(1 - betas, 0)
    return torch.sqrt((1 - ab) / ab)


def _x(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --------------------------------------------------------------------------------------------------
# Loading a saved folder; the adapter against the raw UNet


def test_folder_loads_with_ddpm_sigmas(eps_dir):
    D = load_model(f"diffusers:{eps_dir}")
    assert isinstance(D, DiffusersDenoiser) and D.shape == (3, 8, 8) and D.prediction_type == "epsilon"
    torch.testing.assert_close(D.sigmas, _linear_sigmas(), rtol=1e-12, atol=0)
    assert D.sigma_min == float(D.sigmas[0]) and D.sigma_max == float(D.sigmas[-1])
    assert 0.0099 < D.sigma_min < 0.0101 and 157 < D.sigma_max < 158  # ecosystem.md C3
    assert len(D.sha256) == 64 and D.source == str(eps_dir)


def test_eps_adapter_is_the_eps_to_x0_formula(eps_dir):
    D = load_model(f"diffusers:{eps_dir}")
    raw = UNet2DModel.from_pretrained(str(eps_dir), use_safetensors=True, low_cpu_mem_usage=False).eval()
    s = D.sigmas
    idx = [0, 10, 500, 999]
    between = math.sqrt(float(s[10] * s[11]))  # log-midpoint: t = 10.5
    sigma = torch.tensor([float(s[i]) for i in idx] + [between, 1.0], dtype=F64)
    t = torch.tensor([float(i) for i in idx] + [10.5, float(D.sigma_to_t(torch.tensor([1.0], dtype=F64)))])
    x = _x((6, 3, 8, 8)) * sigma.reshape(-1, 1, 1, 1)
    with torch.no_grad():
        out = D(x, sigma)
        eps = raw((x / torch.sqrt(1 + sigma**2).reshape(-1, 1, 1, 1)).float(), t.float()).sample.double()
    assert out.dtype == F64 and eps.abs().mean() > 0.05
    ref = x - sigma.reshape(-1, 1, 1, 1) * eps
    torch.testing.assert_close((x - out) / sigma.reshape(-1, 1, 1, 1), eps, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[:3], ref[:3], rtol=1e-6, atol=1e-6)
    # a scalar sigma is broadcast over the batch; a float32 state comes back as float32
    torch.testing.assert_close(D(x[:2].float(), 2.0), D(x[:2], torch.full((2,), 2.0, dtype=F64)).float(),
                               rtol=1e-5, atol=1e-5)


def test_sigma_to_t_is_exact_at_the_training_sigmas(eps_dir):
    D = load_model(f"diffusers:{eps_dir}")
    assert torch.equal(D.sigma_to_t(D.sigmas), torch.arange(1000, dtype=F64))
    mid = torch.sqrt(D.sigmas[1:] * D.sigmas[:-1])
    torch.testing.assert_close(D.sigma_to_t(mid), torch.arange(999, dtype=F64) + 0.5, rtol=0, atol=1e-9)
    # outside the trained range the time is clamped to 0 or T - 1
    assert D.sigma_to_t(torch.tensor([1e-4, 1e4], dtype=F64)).tolist() == [0.0, 999.0]


def test_round_sigma_returns_trained_sigmas(eps_dir):
    D = load_model(f"diffusers:{eps_dir}")
    trained = set(D.sigmas.tolist())
    q = torch.exp(torch.empty(200, dtype=F64).uniform_(math.log(0.005), math.log(300),
                                                        generator=torch.Generator().manual_seed(1)))
    r = D.round_sigma(q)
    assert r.dtype == F64 and set(r.tolist()) <= trained
    nearest = D.sigmas[(q.log()[:, None] - D.sigmas.log()).abs().argmin(1)]
    assert torch.equal(r, nearest)
    assert torch.equal(D.round_sigma(D.sigmas), D.sigmas)
    one = D.round_sigma(torch.tensor(3.0, dtype=torch.float32))
    assert one.dtype == torch.float32 and one.ndim == 0 and float(one) in {float(v) for v in D.sigmas.float()}


def test_v_prediction_folder(tmp_path):
    folder = _save(tmp_path / "v", _unet(seed=1), prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2")
    D = load_diffusers(folder)
    raw = UNet2DModel.from_pretrained(str(folder), low_cpu_mem_usage=False).eval()
    assert D.prediction_type == "v_prediction"
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    exact = training_sigmas(torch.cumprod(1 - sched.betas.double(), 0))
    torch.testing.assert_close(D.sigmas, exact, rtol=1e-12, atol=0)
    ab32 = sched.alphas_cumprod.double()  # diffusers' float32 products differ by round-off only
    torch.testing.assert_close(D.sigmas, torch.sqrt((1 - ab32) / ab32), rtol=1e-3, atol=0)
    sigma = D.sigmas[[3, 400, 990]]
    x = _x((3, 3, 8, 8), seed=2)
    s = sigma.reshape(-1, 1, 1, 1)
    with torch.no_grad():
        v = raw((x / torch.sqrt(1 + s**2)).float(), torch.tensor([3.0, 400.0, 990.0])).sample.double()
        out = D(x, sigma)
    torch.testing.assert_close(out, x / (1 + s**2) - s / torch.sqrt(1 + s**2) * v, rtol=1e-6, atol=1e-6)


def test_class_conditional_unet(tmp_path):
    folder = _save(tmp_path / "cond", _unet(channels=1, seed=3, num_class_embeds=3))
    D = load_diffusers(folder)
    raw = UNet2DModel.from_pretrained(str(folder), low_cpu_mem_usage=False).eval()
    assert D.label_dim == 3 and D.shape == (1, 8, 8)
    x, sigma = _x((2, 1, 8, 8), seed=4), D.sigmas[[100, 100]]
    with pytest.raises(ModelError, match="class-conditional"):
        D(x, sigma)
    with torch.no_grad():
        out = D.with_labels(torch.tensor([0, 2]))(x, sigma)
        eps = raw((x / torch.sqrt(1 + sigma**2).reshape(-1, 1, 1, 1)).float(), torch.tensor([100.0, 100.0]),
                  class_labels=torch.tensor([0, 2])).sample.double()
        assert torch.equal(D(x, sigma, class_labels=torch.tensor([0, 2])), out)
        assert torch.equal(D(x, sigma, class_labels=torch.eye(3)[[0, 2]]), out)  # one-hot rows
        assert not torch.equal(D(x, sigma, class_labels=torch.tensor([1, 1])), out)
    torch.testing.assert_close(out, x - sigma.reshape(-1, 1, 1, 1) * eps, rtol=1e-6, atol=1e-6)
    with pytest.raises(ModelError, match="0..2"):
        D.with_labels(torch.tensor([3]))
    with pytest.raises(ModelError, match="unconditional"):
        load_diffusers(_save(tmp_path / "u", _unet(channels=1))).with_labels(torch.tensor([0]))


# --------------------------------------------------------------------------------------------------
# The discrete-time adapter against exact truth: a Gaussian mixture's exact eps / v / x0 in VP form


class _ExactVPNet(torch.nn.Module):
    """A discrete-time VP "network" for a Gaussian mixture: sigma(t) is the log-linear interpolant of its own
    table of training sigmas (written here with numpy), and the prediction is exact at that sigma."""

    def __init__(self, mixture: GaussianMixture, sigmas: np.ndarray, prediction_type: str):
        super().__init__()
        self.m, self.table, self.kind = mixture, np.log(sigmas), prediction_type
        self.anchor = torch.nn.Parameter(torch.zeros((), dtype=F64))  # makes the net's dtype float64

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        assert class_labels is None and timestep.dtype == torch.float32
        s = torch.from_numpy(np.exp(np.interp(timestep.double().numpy(), np.arange(len(self.table)), self.table)))
        s = s[:, None]
        x = sample * torch.sqrt(1 + s**2)  # back to VE coordinates
        x0 = self.m(x, s[:, 0])
        eps = (x - x0) / s
        alpha, sigma_vp = 1 / torch.sqrt(1 + s**2), s / torch.sqrt(1 + s**2)
        out = {"epsilon": eps, "v_prediction": alpha * eps - sigma_vp * x0, "sample": x0}[self.kind]
        return (out,)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_discrete_adapter_is_exact_for_a_mixture(mixture_2d, prediction_type):
    ab = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    sig = np.sqrt((1 - ab) / ab)
    D = DiffusersDenoiser(_ExactVPNet(mixture_2d, sig, prediction_type), torch.from_numpy(ab),
                          prediction_type=prediction_type)
    assert D.shape is None and D.sigma_min == pytest.approx(sig[0], rel=1e-12)
    # trained sigmas give integer times (exact in float32); the others are fractional, which float32 rounds:
    # the check is then against the interpolated sigma the net actually saw
    trained = D.sigmas[[0, 7, 123, 640, 999]]
    x = mixture_2d.sample(5, generator=torch.Generator().manual_seed(0)) + trained[:, None] * _x((5, 2), seed=1)
    torch.testing.assert_close(D(x, trained), mixture_2d(x, trained), rtol=1e-10, atol=1e-10)
    between = torch.tensor([0.05, 0.6, 3.0, 80.0], dtype=F64)
    seen = torch.from_numpy(np.exp(np.interp(D.sigma_to_t(between).float().double().numpy(),
                                             np.arange(1000), np.log(sig))))
    torch.testing.assert_close(seen, between, rtol=1e-4, atol=0)
    x = mixture_2d.sample(4, generator=torch.Generator().manual_seed(2)) + between[:, None] * _x((4, 2), seed=3)
    if prediction_type == "epsilon":  # D = x - sigma * eps(x_vp, t): exact with the sigma the net saw
        xs = x * torch.sqrt((1 + seen**2) / (1 + between**2))[:, None]
        expected = x - between[:, None] * (xs - mixture_2d(xs, seen)) / seen[:, None]
        torch.testing.assert_close(D(x, between), expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(D(x, between), mixture_2d(x, between), rtol=2e-3, atol=2e-3)


def test_bad_schedules_and_embeddings_are_refused(mixture_2d):
    net = _ExactVPNet(mixture_2d, np.ones(3), "epsilon")
    with pytest.raises(ModelError, match="strictly"):
        DiffusersDenoiser(net, torch.tensor([1.0, 0.5, 0.5, 0.1], dtype=F64))
    with pytest.raises(ModelError, match="prediction_type"):
        DiffusersDenoiser(net, torch.tensor([0.9, 0.5], dtype=F64), prediction_type="score")
    zero_snr = DiffusersDenoiser(net, torch.tensor([0.9, 0.5, 0.1, 0.0], dtype=F64))  # last step dropped
    assert len(zero_snr.sigmas) == 3 and math.isfinite(zero_snr.sigma_max)


# --------------------------------------------------------------------------------------------------
# Refusals: pickles, wrong folders


def test_pickle_only_checkpoint_needs_trust(tmp_path, eps_dir):
    folder = _save(tmp_path / "bin", _unet(), safe=False)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.bin",
                                                        "scheduler_config.json"]
    with pytest.raises(ModelError, match=r"only a pickle.*trust=True"):
        load_model(f"diffusers:{folder}")
    D, ref = load_model(f"diffusers:{folder}", trust=True), load_model(f"diffusers:{eps_dir}")
    x, sigma = _x((2, 3, 8, 8)), torch.tensor([0.5, 20.0], dtype=F64)
    with torch.no_grad():
        assert torch.equal(D(x, sigma), ref(x, sigma))


def test_bad_folders(tmp_path, eps_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="scheduler_config.json"):
        load_model(f"diffusers:{tmp_path / 'empty'}")
    with pytest.raises(ModelError, match="neither a folder nor a Hugging Face Hub id"):
        load_model(f"diffusers:{tmp_path / 'no' / 'such' / 'dir'}")
    broken = tmp_path / "broken"
    shutil.copytree(eps_dir, broken)
    (broken / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelError, match="no UNet weights"):
        load_model(f"diffusers:{broken}")
    cfg = json.loads((eps_dir / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps(dict(cfg, _class_name="UNet2DConditionModel")))
    with pytest.raises(ModelError, match="UNet2DConditionModel"):
        load_model(f"diffusers:{broken}")


# --------------------------------------------------------------------------------------------------
# Hub ids: snapshot_download monkeypatched (the same folder loader runs after the download step)


def _fake_hub(monkeypatch, repos: dict, calls: list):
    import huggingface_hub

    def snapshot_download(repo_id, revision=None, local_dir=None, allow_patterns=None, **kw):
        calls.append(dict(repo_id=repo_id, revision=revision, local_dir=local_dir, allow_patterns=allow_patterns))
        if repo_id not in repos:
            raise ConnectionError(f"Failed to resolve 'huggingface.co' ({repo_id})")
        for f in repos[repo_id].rglob("*"):
            rel = f.relative_to(repos[repo_id]).as_posix()
            if f.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                dest = Path(local_dir) / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, dest)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)


def test_hub_id_downloads_into_the_cache_then_works_offline(tmp_path, eps_dir, monkeypatch):
    repo = tmp_path / "remote"
    shutil.copytree(eps_dir, repo)
    (repo / "README.md").write_text("not fetched")
    (repo / "diffusion_pytorch_model.fp16.safetensors").write_text("not fetched either")
    calls = []
    _fake_hub(monkeypatch, {"someone/ddpm-tiny": repo}, calls)
    D = load_model("diffusers:someone/ddpm-tiny@0123abc", cache_dir=tmp_path / "cache")
    local = tmp_path / "cache" / "diffusers" / "someone--ddpm-tiny@0123abc"
    assert calls == [dict(repo_id="someone/ddpm-tiny", revision="0123abc", local_dir=str(local),
                          allow_patterns=calls[0]["allow_patterns"])]
    assert sorted(p.name for p in local.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors",
                                                       "scheduler_config.json"]
    assert D.revision == "0123abc" and D.sha256 == load_model(f"diffusers:{eps_dir}").sha256
    # a complete cached copy loads without the network
    _fake_hub(monkeypatch, {}, calls)
    again = load_model("diffusers:someone/ddpm-tiny@0123abc", cache_dir=tmp_path / "cache")
    assert len(calls) == 1 and torch.equal(again.sigmas, D.sigmas)


def test_hub_id_offline_is_one_clear_error(tmp_path, monkeypatch, capsys):
    calls = []
    _fake_hub(monkeypatch, {}, calls)
    with pytest.raises(ModelError) as e:
        load_model("diffusers:google/ddpm-cifar10-32@abc", cache_dir=tmp_path)
    msg = str(e.value)
    assert "google/ddpm-cifar10-32@abc" in msg and "ConnectionError" in msg
    assert str(tmp_path / "diffusers" / "google--ddpm-cifar10-32@abc") in msg and "scheduler_config.json" in msg
    with pytest.raises(ModelError, match="no downloaded copy"):
        load_model("diffusers:google/ddpm-cifar10-32@abc", cache_dir=tmp_path, download=False)
    # through the CLI: one line, non-zero exit, no output file
    monkeypatch.setenv("ADASCHED_CACHE_DIR", str(tmp_path))
    sched = tmp_path / "s.json"
    assert main(["schedule", "--method", "edm", "--solver", "euler", "--nfe", "2", "-o", str(sched)]) == 0
    out = tmp_path / "o.npz"
    rc = main(["sample", "--model", "diffusers:google/ddpm-cifar10-32@abc", "--schedule", str(sched),
               "--solver", "euler", "--num", "1", "--device", "cpu", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err and "google/ddpm-cifar10-32" in err and not out.exists()


def test_hub_repo_with_only_a_pickle_is_refused_before_downloading_it(tmp_path, monkeypatch):
    repo = _save(tmp_path / "remote", _unet(), safe=False)
    calls = []
    _fake_hub(monkeypatch, {"someone/old": repo}, calls)
    with pytest.raises(ModelError, match="only a pickle"):
        load_model("diffusers:someone/old@r1", cache_dir=tmp_path / "cache")
    assert len(calls) == 1
    D = load_model("diffusers:someone/old@r1", cache_dir=tmp_path / "cache", trust=True)
    assert len(calls) == 3 and any(p.endswith(".bin") for p in calls[2]["allow_patterns"])
    assert not any(p.endswith(".bin") for c in calls[:2] for p in c["allow_patterns"])
    assert D.shape == (3, 8, 8)
    with pytest.raises(ModelError, match="only a pickle"):  # the cached pickle still needs trust
        load_model("diffusers:someone/old@r1", cache_dir=tmp_path / "cache")


# --------------------------------------------------------------------------------------------------
# The CLI


def test_cli_sample_writes_the_contract_npz(tmp_path, eps_dir):
    sched, out = tmp_path / "s.json", tmp_path / "samples.npz"
    assert main(["schedule", "--method", "edm", "--solver", "heun", "--nfe", "5", "--sigma-min", "0.02",
                 "--sigma-max", "80", "-o", str(sched)]) == 0
    rc = main(["sample", "--model", f"diffusers:{eps_dir}", "--schedule", str(sched), "--solver", "heun",
               "--num", "3", "--batch", "2", "--seed-start", "5", "--device", "cpu", "-o", str(out)])
    assert rc == 0
    with np.load(out) as f:
        assert f["samples"].shape == f["latents"].shape == (3, 3, 8, 8) and f["samples"].dtype == np.float32
        assert f["seeds"].tolist() == [5, 6, 7] and int(f["nfe"]) == 5 and f["sigmas"][-1] == 0.0
        assert np.isfinite(f["samples"]).all() and json.loads(str(f["provenance"]))["model"] == f"diffusers:{eps_dir}"
