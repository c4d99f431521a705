"""Train a small EDM-preconditioned network, optionally learning its schedule online (paper.md §3.5).

:func:`train` fits :func:`adasched.networks.build` (preset ``"digits"`` by default) to the bundled 8x8 digits
(:func:`adasched.data.digits`, no download) with EDM's loss (Karras et al. 2022, §5 and Table 1)::

    ln(sigma) ~ N(P_mean, P_std^2),       P_mean = -1.2, P_std = 1.2
    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
    loss = lambda(sigma) ||D(x0 + sigma n; sigma) - x0||^2          (mean over pixels and batch)

with Adam, a linear learning-rate warm-up (then constant, or a cosine decay) and an exponential moving average (EMA) of the weights whose half-life
grows with training as in EDM (``ema_halflife_kimg``, ``ema_rampup_ratio``); the EMA weights are the ones a
loaded model samples with.  Everything random (initialisation, batches, noise levels, noise) is drawn from
generators seeded by ``seed``: a run is reproducible on a given device and thread count, and a run resumed from
a checkpoint continues exactly as the uninterrupted run would.

With ``online_schedule=True`` an :class:`adasched.online.OnlineScheduleLearner` (the paper's Algorithm 2) runs
alongside: the first ``online_fraction`` of each batch takes its noise levels from the learner's current
schedule instead of the log-normal, and the learner observes those examples (stop-gradient; the training forward
pass is reused).  The learned schedule is saved with the model.

Files are safetensors (weights; loading runs no code) with a JSON header entry ``"adasched"`` holding the format,
network preset and options, training settings, EMA settings, data description, loss log, learned schedule and
provenance; every write is atomic (:func:`adasched.io.atomic_path`), so a killed job leaves no half-written
model.  A checkpoint is the same format plus the optimiser, raw weights and random-generator states, so it also
loads as a model.  ``adasched:PATH`` names such a file as a model SPEC (:mod:`adasched.models`): the loader
returns a denoiser in the project's protocol with ``shape``, ``sigma_min``, ``sigma_max``, ``round_sigma`` and
``learned_schedule``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from adasched.data import digits
from adasched.edm import EDMDenoiser
from adasched.errors import AdaschedError, DataError, ModelError
from adasched.io import atomic_path, provenance, sha256_file
from adasched.models import register
from adasched.networks import PRESETS, build, count_parameters
from adasched.online import OnlineScheduleLearner
from adasched.progress import Progress
from adasched.samplers import generate, nfe_for_steps
from adasched.schedules import Schedule, resample, sigmas_edm, sigmas_loglinear, validate_sigmas

__all__ = ["TrainConfig", "train", "load_trained", "TrainedDenoiser", "edm_loss", "edm_weight",
           "gaussian_baseline_loss", "evaluate_loss", "sample_model", "save_grid", "learned_schedule",
           "training_data", "DATA_CHOICES", "FORMAT"]

log = logging.getLogger(__name__)

#: Value of ``format`` in the file header.
FORMAT = "adasched-trained-model"
FORMAT_VERSION = 1
#: Training data this module knows.
DATA_CHOICES = ("digits",)
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Everything that determines a training run (saved in the model file)."""

    preset: str = "digits"
    #: Overrides of the preset, passed to :func:`adasched.networks.build` (JSON-serialisable values).
    net_options: dict = field(default_factory=dict)
    data: str = "digits"
    steps: int = 4000
    batch: int = 128
    lr: float = 2e-3
    lr_warmup: int = 200
    #: ``"constant"`` after the warm-up (EDM), or ``"cosine"``: decay to 0 at ``steps`` (then a resumed run must
    #: keep ``steps``).
    lr_schedule: str = "constant"
    #: EMA half-life in thousands of images, capped by ``ema_rampup_ratio`` times the images seen (EDM).
    ema_halflife_kimg: float = 500.0
    ema_rampup_ratio: float | None = 0.05
    P_mean: float = -1.2
    P_std: float = 1.2
    seed: int = 0
    online_schedule: bool = False
    #: Share of each batch whose noise levels come from the online learner's schedule.
    online_fraction: float = 0.5
    #: Intervals ``T`` of the learned schedule (``T + 1`` levels from ``online_sigma_min`` to ``online_sigma_max``).
    online_levels: int = 32
    online_gamma: float = 0.05
    online_n_min: int = 24
    online_substeps: int = 1
    online_sigma_min: float = 0.002
    online_sigma_max: float = 80.0
    log_every: int = 100

    def check(self) -> None:
        """Raise :class:`AdaschedError` naming the first bad setting."""
        if self.preset not in PRESETS:
            raise ModelError(f"unknown network preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        if self.data not in DATA_CHOICES:
            raise DataError(f"unknown training data {self.data!r}; valid: {', '.join(DATA_CHOICES)}")
        for name in ("steps", "batch", "log_every", "online_levels", "online_n_min", "online_substeps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise AdaschedError(f"{name} must be a positive integer, got {v!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise AdaschedError(f"unknown lr_schedule {self.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
        if not isinstance(self.lr_warmup, int) or self.lr_warmup < 0:
            raise AdaschedError(f"lr_warmup must be a non-negative integer, got {self.lr_warmup!r}")
        if not self.lr > 0 or not self.ema_halflife_kimg > 0 or not self.P_std > 0:
            raise AdaschedError("lr, ema_halflife_kimg and P_std must be positive")
        if self.ema_rampup_ratio is not None and not self.ema_rampup_ratio > 0:
            raise AdaschedError(f"ema_rampup_ratio must be positive or None, got {self.ema_rampup_ratio!r}")
        if not 0 < self.online_fraction <= 1:
            raise AdaschedError(f"online_fraction must lie in (0, 1], got {self.online_fraction!r}")
        if not 0 < self.online_gamma <= 1:
            raise AdaschedError(f"online_gamma must lie in (0, 1], got {self.online_gamma!r}")
        if not 0 < self.online_sigma_min < self.online_sigma_max:
            raise AdaschedError(f"need 0 < online_sigma_min < online_sigma_max, got {self.online_sigma_min!r} "
                                f"and {self.online_sigma_max!r}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})


# ----------------------------------------------------------------------------------------------------
# Loss, baseline and evaluation


def edm_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's loss weight ``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` (Karras et al. 2022)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def edm_loss(denoise: Callable, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
             sigma_data: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example EDM loss ``lambda(sigma) mean_pixels (D(x0 + sigma n; sigma) - x0)^2``, and ``D``.

    Returns ``(loss [B], denoised [B, ...])``; the caller averages (and may reuse ``denoised``).
    """
    s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
    denoised = denoise(x0 + s * noise, sigma)
    err = (denoised - x0).pow(2).reshape(x0.shape[0], -1).mean(1)
    return edm_weight(sigma, sigma_data) * err, denoised


def _eval_draw(n: int, P_mean: float, P_std: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, 1 << 62, (n,), generator=g)
    sigma = torch.exp(torch.randn(n, generator=g, dtype=torch.float64) * P_std + P_mean)
    return rows, sigma, g


def gaussian_baseline_loss(x0: torch.Tensor, *, sigma_data: float = 0.5, P_mean: float = -1.2, P_std: float = 1.2,
                           n: int = 4096, seed: int = 1234) -> float:
    """Expected EDM loss of the best *linear* denoiser (the Wiener filter of the data's mean and covariance).

    For data with mean ``mu`` and covariance ``Sigma = U diag(l) U^T`` the optimal linear denoiser has
    per-pixel mean squared error ``mean_k l_k sigma^2 / (l_k + sigma^2)``; this averages ``lambda(sigma)`` times
    that over ``n`` draws of EDM's log-normal sigma.  A trained network must beat it by a clear margin to have
    learnt more than second-order statistics.
    """
    x = x0.reshape(x0.shape[0], -1).to(torch.float64)
    evals = torch.linalg.eigvalsh(torch.cov(x.T)).clamp_min(0)
    _, sigma, _ = _eval_draw(n, P_mean, P_std, seed)
    s2 = sigma[:, None] ** 2
    mse = (evals[None] * s2 / (evals[None] + s2)).mean(1)
    return float((edm_weight(sigma, sigma_data) * mse).mean())


@torch.no_grad()
def evaluate_loss(denoise: Callable, x0: torch.Tensor, *, sigma_data: float = 0.5, P_mean: float = -1.2,
                  P_std: float = 1.2, n: int = 1024, seed: int = 1234, batch: int = 512) -> float:
    """EDM loss of ``denoise`` on ``n`` fixed draws (rows of ``x0``, sigma, noise from ``seed``): comparable
    across models and with :func:`gaussian_baseline_loss` at the same ``seed``."""
    rows, sigma, g = _eval_draw(n, P_mean, P_std, seed)
    rows = rows % x0.shape[0]
    noise = torch.randn((n, *x0.shape[1:]), generator=g)
    total = 0.0
    for i in range(0, n, batch):
        xb = x0[rows[i:i + batch]].to(torch.float32)
        sb = sigma[i:i + batch].to(torch.float32)
        loss, _ = edm_loss(denoise, xb, sb, noise[i:i + batch], sigma_data)
        total += float(loss.to(torch.float64).sum())
    return total / n


# ----------------------------------------------------------------------------------------------------
# Data


def training_data(name: str) -> tuple[torch.Tensor, dict]:
    """Training images ``[N, C, H, W]`` float32 and a description of them (saved with the model)."""
    if name != "digits":
        raise DataError(f"unknown training data {name!r}; valid: {', '.join(DATA_CHOICES)}")
    import sklearn  # heavy (seconds to import); only its version is recorded here

    x = digits().to(torch.float32)
    return x, {"name": "digits", "sha256": hashlib.sha256(x.numpy().tobytes()).hexdigest(), "source": "sklearn.datasets.load_digits (bundled, no download)",
               "sklearn": sklearn.__version__, "n": int(x.shape[0]), "shape": list(x.shape[1:]),
               "range": [-1.0, 1.0], "scaling": "pixel / 16 * 2 - 1"}


# ----------------------------------------------------------------------------------------------------
# File format


def _flat_state(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def _write(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write a safetensors file with ``meta`` as JSON in its header, atomically (temp file, then rename)."""
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"adasched": json.dumps(meta)})


def _read(path: str | os.PathLike, tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors (none with ``tensors=False``: the header alone) and header metadata of a file written by
    :func:`_write` (safetensors: no code runs)."""
    path = str(path)
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
        weights = load_file(path) if tensors else {}
    except FileNotFoundError:
        raise ModelError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise ModelError(f"model file {path} is a directory") from None
    except (SafetensorError, OSError) as e:
        raise ModelError(f"cannot read model file {path} (expected safetensors from 'adasched train'): "
                         f"{str(e).splitlines()[0]}") from None
    try:
        meta = json.loads(header["adasched"])
    except (KeyError, json.JSONDecodeError):
        raise ModelError(f"{path} is a safetensors file without adasched metadata (not from 'adasched train')") from None
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelError(f"{path} has format version {meta.get('format_version')}; this adasched reads up to "
                         f"{FORMAT_VERSION}")
    return weights, meta


def _sub(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _build(config: TrainConfig):
    return build(config.preset, **config.net_options)


# ----------------------------------------------------------------------------------------------------
# Training


def _ema_beta(config: TrainConfig, nimg: int) -> float:
    """EDM's EMA decay per step: half-life ``min(ema_halflife_kimg * 1000, ema_rampup_ratio * nimg)`` images."""
    half = config.ema_halflife_kimg * 1000
    if config.ema_rampup_ratio is not None:
        half = min(half, nimg * config.ema_rampup_ratio)
    return 0.5 ** (config.batch / max(half, 1e-8))


def _lr(config: TrainConfig, step: int) -> float:
    """Learning rate of step ``step`` (0-based): linear warm-up, then constant or a cosine decay to 0."""
    lr = config.lr * min(1.0, (step + 1) / max(1, config.lr_warmup))
    if config.lr_schedule == "cosine":
        lr *= 0.5 * (1 + math.cos(math.pi * min(1.0, step / config.steps)))
    return lr


def _learner(config: TrainConfig):
    init = sigmas_loglinear(config.online_levels + 1, config.online_sigma_min, config.online_sigma_max)
    return OnlineScheduleLearner(init, gamma=config.online_gamma, n_min=config.online_n_min,
                                 substeps=config.online_substeps)


def _learned_json(learner) -> dict:
    """The learned schedule for the file header: sampler form (decreasing, final 0) and the learner's state."""
    return {"sigmas": [float(v) for v in learner.sampler_sigmas()],
            "levels": [float(v) for v in learner.sigmas],
            "updates": learner.updates, "T": learner.T, "gamma": learner.gamma, "n_min": learner.n_min,
            "substeps": learner.substeps, "weighting": learner.weighting, "space": learner.space,
            "Lambda": learner.Lambda,
            "algorithm": "paper.md §3.5 Algorithm 2 (adasched.online.OnlineScheduleLearner)"}


def _learner_tensors(learner) -> dict[str, torch.Tensor]:
    st = learner.state_dict()
    out = {"online.sigmas": st["sigmas"], "online.sums": st["sums"], "online.counts": st["counts"]}
    if st["last_costs"] is not None:
        out["online.last_costs"] = st["last_costs"]
    return out


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"opt.{i}.{k}"] = torch.as_tensor(v).detach().to("cpu").contiguous().clone()
    return out


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def _meta(config, data_desc, step, losses, learner, net, elapsed, *, checkpoint: bool) -> dict:
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "kind": "checkpoint" if checkpoint else "model",
        "network": {"preset": config.preset, "options": config.net_options,
                    "config": {k: list(v) if isinstance(v, tuple) else v
                               for k, v in {**PRESETS[config.preset], **config.net_options}.items()},
                    "parameters": count_parameters(net), "precond": "EDM (Karras et al. 2022, Table 1)",
                    "sigma_data": float(net.sigma_data), "sigma_min": float(net.sigma_min),
                    "sigma_max": float(net.sigma_max), "shape": list(net.shape)},
        "weights": {"ema": "EMA of the weights (used for sampling)", "net": "raw weights at the last step"},
        "training": dict(config.to_json(), step=step, seconds=round(elapsed, 3),
                         loss="EDM: lambda(sigma) mean_pixels (D - x0)^2, ln sigma ~ N(P_mean, P_std^2)",
                         optimizer="Adam", ema="EDM half-life with ramp-up", threads=torch.get_num_threads()),
        "loss_log": losses,
        "data": data_desc,
        "learned_schedule": _learned_json(learner) if learner is not None else None,
        "provenance": provenance(command="train"),
    }


def train(config: TrainConfig, output: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
          checkpoint: str | os.PathLike | None = None, checkpoint_every: int | None = None,
          progress: Progress | None = None) -> "TrainedDenoiser":
    """Train a network as set out by ``config``; write the model to ``output`` (if given) and return it loaded.

    ``checkpoint``: a file to resume from if it exists, and to write every ``checkpoint_every`` steps (default:
    every ``log_every`` steps) and at the end; a checkpoint written with another config (other than ``log_every``,
    and ``steps`` with the constant learning rate) is refused.  ``progress("train", step, steps)``
    (:mod:`adasched.progress`) is called every ``log_every`` steps, after that step's checkpoint.  The global random state is left as it was.
    """
    config.check()
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)  # initialisation (and dropout, if the network has any)
        return _train(config, output, device, checkpoint, checkpoint_every, progress)


def _train(config, output, device, checkpoint, checkpoint_every, progress) -> "TrainedDenoiser":
    x_data, data_desc = training_data(config.data)
    x_data = x_data.to(device)
    net = _build(config).to(device)
    if tuple(net.shape) != tuple(x_data.shape[1:]):
        raise ModelError(f"network preset {config.preset!r} makes images of shape {tuple(net.shape)}, but the "
                         f"{config.data} data have shape {tuple(x_data.shape[1:])}")
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, betas=(0.9, 0.999), eps=1e-8)
    gen = torch.Generator().manual_seed(config.seed + 1)
    learner = _learner(config) if config.online_schedule else None
    step, losses, elapsed = 0, [], 0.0

    if checkpoint is not None and Path(checkpoint).exists():
        step, losses, elapsed = _resume(checkpoint, config, net, ema, opt, gen, learner)
        log.info("resumed from %s at step %d", checkpoint, step)
    every = checkpoint_every or config.log_every
    sd = float(net.sigma_data)
    n_online = max(1, round(config.online_fraction * config.batch)) if learner is not None else 0
    t0, run_sum, run_n = time.perf_counter(), 0.0, 0
    net.train()
    while step < config.steps:
        rows = torch.randint(0, x_data.shape[0], (config.batch,), generator=gen)
        sigma = torch.exp(torch.randn(config.batch, generator=gen) * config.P_std + config.P_mean)
        if learner is not None:
            s_on, idx = learner.sample_levels(n_online, generator=gen)
            sigma[:n_online] = s_on.to(sigma.dtype)
        noise = torch.randn((config.batch, *x_data.shape[1:]), generator=gen)
        x0, sigma, noise = x_data[rows.to(device)], sigma.to(device), noise.to(device)
        for group in opt.param_groups:
            group["lr"] = _lr(config, step)
        loss, denoised = edm_loss(net, x0, sigma, noise, sd)
        loss = loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if learner is not None:  # Algorithm 2, steps 2-4 on the examples drawn from the schedule (stop-grad)
            learner.observe(net, x0[:n_online], noise[:n_online], idx, denoised=denoised[:n_online].detach())
        step += 1
        beta = _ema_beta(config, step * config.batch)
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), net.parameters()):
                p_ema.lerp_(p.detach(), 1 - beta)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ModelError(f"training diverged at step {step}: loss {value}; try a lower lr (now {config.lr:g})")
        run_sum, run_n = run_sum + value, run_n + 1
        report = step % config.log_every == 0 or step == config.steps
        if report:
            now = time.perf_counter()
            mean = run_sum / run_n
            losses.append([step, mean])
            log.info("step %d/%d: loss %.4f (%.3f s/step)%s", step, config.steps, mean, (now - t0) / run_n,
                     f", schedule updates {learner.updates}" if learner is not None else "")
            elapsed, t0, run_sum, run_n = elapsed + now - t0, now, 0.0, 0
        if checkpoint is not None and (step % every == 0 or step == config.steps):
            _save(checkpoint, config, data_desc, step, losses, learner, net, ema, elapsed, opt=opt, gen=gen)
        if report and progress is not None:
            progress("train", step, config.steps)
    elapsed += time.perf_counter() - t0 if run_n else 0.0
    if output is not None:
        _save(output, config, data_desc, step, losses, learner, net, ema, elapsed)
        log.info("wrote %s (%d steps, %.1f s of training)", output, step, elapsed)
    meta = _meta(config, data_desc, step, losses, learner, net, elapsed, checkpoint=False)
    return TrainedDenoiser(ema.eval(), meta=meta, source=str(output) if output is not None else None)


def _save(path, config, data_desc, step, losses, learner, net, ema, elapsed, *, opt=None, gen=None) -> None:
    tensors = {**_flat_state("ema", ema), **_flat_state("net", net)}
    if learner is not None:
        tensors.update(_learner_tensors(learner))
    meta = _meta(config, data_desc, step, losses, learner, net, elapsed, checkpoint=opt is not None)
    if opt is not None:
        tensors.update(_optimizer_tensors(opt))
        tensors["rng.batches"] = gen.get_state()
        tensors["rng.global"] = torch.get_rng_state()
        meta["resume"] = {"step": step, "online_updates": learner.updates if learner is not None else None}
    _write(path, tensors, meta)


def _resume(path, config, net, ema, opt, gen, learner) -> tuple[int, list, float]:
    tensors, meta = _read(path)
    if meta.get("kind") != "checkpoint" or "resume" not in meta:
        raise ModelError(f"{path} is a finished model, not a checkpoint to resume from")
    saved = TrainConfig.from_json(meta["training"]).to_json()
    want = config.to_json()
    free = ("steps", "log_every") if config.lr_schedule == "constant" else ("log_every",)
    differ = [k for k in want if k not in free and saved.get(k) != want[k]]
    if differ:
        k = differ[0]
        raise ModelError(f"checkpoint {path} was written with {k}={saved.get(k)!r}, this run has {want[k]!r}; "
                         "use another checkpoint file or the same settings")
    step = int(meta["resume"]["step"])
    if step > config.steps:
        raise ModelError(f"checkpoint {path} is at step {step}, past the {config.steps} steps asked for")
    net.load_state_dict(_sub(tensors, "net"))
    ema.load_state_dict(_sub(tensors, "ema"))
    _load_optimizer(opt, _sub(tensors, "opt"))
    gen.set_state(tensors["rng.batches"])
    torch.set_rng_state(tensors["rng.global"])
    if learner is not None:
        learner.load_state_dict({"sigmas": tensors["online.sigmas"], "sums": tensors["online.sums"],
                                 "counts": tensors["online.counts"], "last_costs": tensors.get("online.last_costs"),
                                 "updates": meta["resume"]["online_updates"], "weighting": learner.weighting,
                                 "substeps": learner.substeps})
    return step, [list(v) for v in meta.get("loss_log", [])], float(meta["training"].get("seconds", 0.0))


# ----------------------------------------------------------------------------------------------------
# Loading: the ``adasched:`` model SPEC


class TrainedDenoiser(EDMDenoiser):
    """A network trained by :func:`train` as a denoiser ``D(x, sigma)`` (float64 in, float64 out).

    Like :class:`adasched.edm.EDMDenoiser` (the network is frozen and in eval mode; no ``no_grad`` is applied),
    plus ``meta`` (the file's header: config, training, data, provenance) and :attr:`learned_schedule`.
    """

    def __init__(self, net, *, meta: dict, source: str | None = None, sha256: str | None = None):
        super().__init__(net, source=source, sha256=sha256)
        self.meta = meta

    @property
    def learned_schedule(self) -> torch.Tensor | None:
        """The schedule learned online during training (decreasing, ending in 0, float64), or ``None``."""
        ls = self.meta.get("learned_schedule")
        if not ls:
            return None
        return validate_sigmas(ls["sigmas"])

    def __repr__(self) -> str:
        return f"TrainedDenoiser(source={self.source!r}, step={self.meta['training']['step']})"


def load_trained(path: str | os.PathLike, *, device: str | torch.device = "cpu", key: str = "ema") -> TrainedDenoiser:
    """Load a file from :func:`train` (model or checkpoint) as a denoiser; ``key``: ``"ema"`` (default) or ``"net"``.

    The file is read as safetensors (no pickle, no code runs); the network is rebuilt from the preset and
    options in its header.
    """
    if key not in ("ema", "net"):
        raise ModelError(f"unknown weights {key!r}; valid: ema, net")
    tensors, meta = _read(path)
    try:
        config = TrainConfig.from_json(meta["training"])
        net = _build(config)
        net.load_state_dict(_sub(tensors, key))
    except (KeyError, TypeError, RuntimeError, AdaschedError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"model file {path} does not match its header: {msg}") from None
    return TrainedDenoiser(net.to(device), meta=meta, source=str(path), sha256=sha256_file(path))


def learned_schedule(path: str | os.PathLike, solver: str = "heun", steps: int | None = None):
    """The schedule learned online in a model file, as a :class:`adasched.schedules.Schedule` for ``solver``.

    Its ``T + 1`` levels (plus the final jump to 0: ``T + 1`` steps) as learned; with ``steps``, read out at
    that many steps by :func:`adasched.schedules.resample`.  The learned levels split Lambda into equal parts
    (Algorithm 2's fixed point), so step index is proportional to Lambda and resampling in the step index is
    Algorithm 1's read-out of the learned Lambda curve at another number of steps.
    """
    _, meta = _read(path, tensors=False)
    ls = meta.get("learned_schedule")
    if not ls:
        raise ModelError(f"{path} holds no learned schedule (train with --online-schedule)")
    sigmas = torch.tensor(ls["sigmas"], dtype=torch.float64)
    if steps is not None:
        sigmas = resample(sigmas, steps)
    params = {k: ls[k] for k in ("T", "gamma", "n_min", "updates", "substeps", "weighting", "space")}
    return Schedule(sigmas, method="online", solver=solver, nfe=nfe_for_steps(solver, len(sigmas) - 1),
                    params=dict(params, model=str(path)), provenance=provenance(command="learned_schedule"))


def _register_spec_kind() -> None:
    """Make ``adasched:PATH`` a kind of :func:`adasched.models.load_model`."""
    @register("adasched")
    def _load_adasched_spec(argument: str, *, device="cpu", key="ema", **_):
        return load_trained(argument, device=device, key=key)


_register_spec_kind()


# ----------------------------------------------------------------------------------------------------
# Sampling and pictures


def sample_model(denoise, num: int, *, steps: int = 18, solver: str = "heun", seed_start: int = 0,
                 sigmas: torch.Tensor | None = None, batch: int = 256, device: str | torch.device = "cpu",
                 rho: float = 7.0) -> torch.Tensor:
    """``num`` samples (float32 CPU, ``[num, *shape]``, seeds ``seed_start ..``) on EDM's rho schedule with
    ``steps`` steps over the model's range (default: Heun, 18 steps = 35 NFE), or on ``sigmas`` if given.

    Sample ``i`` is drawn from seed ``seed_start + i`` alone (:func:`adasched.samplers.generate`), and the
    sampler state has the network's dtype.  With a float64 network (``denoise.net.double()``) the samples are
    therefore the same for any ``batch`` up to float64 rounding; with a float32 one (as trained) only up to
    float32 rounding, whose pattern depends on the batch size and the CPU through the order in which the
    convolution kernels sum (about 1e-5 on the digits net after 4 Heun steps from sigma 80).
    """
    if sigmas is None:
        sigmas = sigmas_edm(steps, float(denoise.sigma_min), float(denoise.sigma_max), rho=rho)
    with torch.inference_mode():
        out = generate(denoise, sigmas, solver, range(seed_start, seed_start + num), denoise.shape, batch=batch,
                       device=device, dtype=getattr(denoise, "dtype", torch.float32))
    return out["samples"]


def save_grid(samples: Any, path: str | os.PathLike, *, nrow: int | None = None, scale: int = 4,
              value_range: tuple[float, float] = (-1.0, 1.0)) -> None:
    """Write images ``[N, C, H, W]`` (C = 1 or 3; values in ``value_range``, clipped) as one PNG grid, atomically.

    ``nrow`` images per row (default: about square); each pixel becomes ``scale x scale``; tiles are separated
    by a one-pixel (scaled) gap.
    """
    import matplotlib.image  # heavy and only for pictures: loaded when the first grid is saved

    x = np.asarray(samples.detach().cpu() if isinstance(samples, torch.Tensor) else samples, dtype=np.float64)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 1:
        raise DataError(f"save_grid needs images [N, C, H, W] with C = 1 or 3 and N >= 1, got shape {x.shape}")
    lo, hi = value_range
    x = np.clip((x - lo) / (hi - lo), 0, 1)
    n, c, h, w = x.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    pad = 1
    grid = np.ones((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c))
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = \
            x[i].transpose(1, 2, 0)
    grid = np.kron(grid, np.ones((scale, scale, 1)))
    img = grid[..., 0] if c == 1 else grid
    with atomic_path(path, suffix=".tmp.png") as tmp:
        matplotlib.image.imsave(tmp, img, cmap="gray", vmin=0.0, vmax=1.0, format="png")
