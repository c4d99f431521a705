"""diffusers ``UNet2DModel`` checkpoints (discrete-time DDPM, VP) as adasched denoisers.

Model SPEC: ``diffusers:DIR_OR_HUB_ID[@REVISION]``

* ``diffusers:DIR`` loads a local folder written by ``save_pretrained`` (or by
  ``huggingface-cli download``): either the flat layout ``config.json``,
  ``diffusion_pytorch_model.safetensors`` and ``scheduler_config.json`` (e.g.
  ``google/ddpm-cifar10-32``), or a pipeline folder with ``unet/`` and ``scheduler/``.
* ``diffusers:OWNER/NAME@REVISION`` names a Hugging Face Hub repository.  On first use it is
  fetched with :func:`huggingface_hub.snapshot_download` at that revision (pin a commit hash:
  without ``@REVISION`` the moving ``main`` branch is used, with a warning) into
  ``CACHE/diffusers/OWNER--NAME@REVISION`` (``CACHE``: ``cache_dir=``, else
  :func:`adasched.edm.default_cache_dir`), and loaded from there exactly as a local folder is.  A complete
  folder already there is used without any network access (compute nodes, ``HF_HUB_OFFLINE=1``);
  offline, a missing one is a :class:`~adasched.errors.ModelError` naming the folder to fill by hand.

Only the UNet's weights, its ``config.json`` and the scheduler config are fetched.  Safetensors
weights load without running code.  A checkpoint that is only a pickle
(``diffusion_pytorch_model.bin``) is refused unless ``trust=True`` (CLI ``--trust-pickle``), as
:mod:`adasched.edm` refuses unpinned pickles: unpickling can run code (diffusers reads ``.bin``
with ``torch.load(weights_only=True)``, which narrows but is no guarantee).

The adapter (after k-diffusion's ``DiscreteEpsDDPMDenoiser``, re-implemented): the scheduler
config gives ``alpha_bar_t`` for the integer training times ``t = 0 .. T-1`` and the training
noise levels ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` (EDM convention, Karras et al.
2022, Table 1 "VP"); then ``D(x, sigma) = x - sigma * eps_theta(x / sqrt(1 + sigma**2), t(sigma))``
for ``prediction_type="epsilon"`` (:class:`~adasched.denoisers.EpsDenoiser`), the v-prediction
form for ``"v_prediction"`` (:class:`~adasched.denoisers.VDenoiser`, ``sigma_data = 1``) and
``D = x0_theta(...)`` for ``"sample"``.  ``t(sigma)`` interpolates linearly in ``log sigma``
between the training sigmas, a fractional time that UNet2DModel's sinusoidal embedding accepts;
outside ``[sigma_min, sigma_max]`` (the smallest and largest training sigma) it is clamped to
``0`` or ``T - 1``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
from pathlib import Path

import torch

from adasched.denoisers import EpsDenoiser, NetworkDenoiser, VDenoiser
from adasched.edm import default_cache_dir
from adasched.errors import ModelError
from adasched.io import sha256_file
from adasched.models import register

__all__ = ["DiffusersDenoiser", "load_diffusers", "training_sigmas", "resolve_source", "WEIGHTS", "PICKLE_WEIGHTS"]

logger = logging.getLogger(__name__)

WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLE_WEIGHTS = "diffusion_pytorch_model.bin"
#: What a download fetches (flat and pipeline layouts; sharded weights included, other variants not).
_SAFE_PATTERNS = ["model_index.json", "config.json", "scheduler_config.json", WEIGHTS, WEIGHTS + ".index.json",
                  "diffusion_pytorch_model-*.safetensors"]
_PICKLE_PATTERNS = [PICKLE_WEIGHTS, PICKLE_WEIGHTS + ".index.json", "diffusion_pytorch_model-*.bin"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


# ----------------------------------------------------------------------------------------------
# The schedule and the denoiser


def training_sigmas(alphas_cumprod) -> torch.Tensor:
    """``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` for ``t = 0 .. T-1``, float64."""
    ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64).reshape(-1)
    return torch.sqrt((1 - ab) / ab)


class DiffusersDenoiser(NetworkDenoiser):
    """A discrete-time VP network ``net(x_vp, t).sample`` (diffusers ``UNet2DModel``) as ``D(x, sigma)``.

    Attributes: ``sigmas`` (the ``T`` training sigmas, increasing, float64 CPU), ``sigma_min`` and
    ``sigma_max`` (their ends), ``shape`` ``(C, H, W)``, ``prediction_type``, ``label_dim``
    (``num_class_embeds``; 0 when unconditional), ``source``, ``revision`` and ``sha256`` (of the
    weights, for provenance).

    The sampler's state (float64) is cast to the net's dtype and the result back; ``t`` is passed
    as float32 whatever the net's dtype (float16 cannot hold ``t = 999.5``).  A class-conditional
    net (``num_class_embeds``) needs integer labels ``[B]`` (or one-hot rows), bound with
    :meth:`with_labels` or passed per call as ``class_labels=``; calling it without labels is an
    error.  The network is frozen and in eval mode; no ``torch.no_grad`` is applied.
    """

    def __init__(self, unet: torch.nn.Module, alphas_cumprod, *, prediction_type: str = "epsilon",
                 shape: tuple[int, ...] | None = None, class_labels=None, source: str | None = None,
                 revision: str | None = None, sha256: str | None = None):
        if prediction_type not in PREDICTION_TYPES:
            raise ModelError(f"unsupported prediction_type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}")
        config = getattr(unet, "config", None)
        cfg = (lambda k, d=None: getattr(config, k, d)) if config is not None else (lambda k, d=None: d)
        embedding = cfg("time_embedding_type", "positional")
        if embedding == "fourier":
            raise ModelError("this UNet2DModel has a Fourier time embedding (a score-SDE VE model whose time input "
                             "is sigma); only discrete-time DDPM/VP models (positional or learned embedding) are "
                             "supported")
        sigmas = training_sigmas(alphas_cumprod)
        valid = torch.isfinite(sigmas) & (sigmas > 0)
        if not bool(valid[:-1].all()):
            raise ModelError("the scheduler's alpha_bar_t must lie strictly between 0 and 1 (but for a zero "
                             "terminal SNR at the last step)")
        if not bool(valid[-1]):
            logger.warning("dropping the last training time: its sigma is infinite (zero terminal SNR)")
            sigmas = sigmas[:-1]
        if sigmas.numel() < 2 or not bool((sigmas[1:] > sigmas[:-1]).all()):
            raise ModelError(f"the training sigmas must increase strictly with t over at least 2 steps; "
                             f"found {sigmas.numel()} steps")
        self.net = unet.eval().requires_grad_(False)
        self.sigmas = sigmas
        self.log_sigmas = sigmas.log()
        self.sigma_min = float(sigmas[0])
        self.sigma_max = float(sigmas[-1])
        self.prediction_type = prediction_type
        self.quantize = embedding == "learned"  # an nn.Embedding of t accepts integers only
        if shape is None:
            size = cfg("sample_size")
            h, w = (size, size) if isinstance(size, int) else tuple(size) if size is not None else (None, None)
            shape = None if h is None or cfg("in_channels") is None else (int(cfg("in_channels")), int(h), int(w))
        self.shape = None if shape is None else tuple(int(v) for v in shape)
        self.label_dim = int(cfg("num_class_embeds") or 0) if cfg("class_embed_type") is None else 0
        self.conditional = getattr(unet, "class_embedding", None) is not None
        self.source, self.revision, self.sha256 = source, revision, sha256
        self.class_labels = None if class_labels is None else self._labels(class_labels, None)
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        if prediction_type == "epsilon":
            self._adapter = EpsDenoiser(self._net, self.sigma_to_t, self.sigma_min, self.sigma_max, self.round_sigma)
        elif prediction_type == "v_prediction":
            self._adapter = VDenoiser(self._net, self.sigma_to_t, self.sigma_min, self.sigma_max, 1.0, self.round_sigma)
        else:  # "sample": the net predicts x0 from the VP input
            self._adapter = self._sample_adapter

    # -- the noise-level table -----------------------------------------------------------------

    def _table(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._tables:
            self._tables[device] = (self.sigmas.to(device), self.log_sigmas.to(device))
        return self._tables[device]

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional training time: linear in ``log sigma`` between the training sigmas (float64).

        Exact (an integer) at the training sigmas; clamped to ``[0, T-1]`` outside their range;
        rounded to the nearest integer for a learned (``nn.Embedding``) time embedding.
        """
        sigma = torch.as_tensor(sigma)
        _, log_sigmas = self._table(sigma.device)
        ls = sigma.to(torch.float64).log().clamp(log_sigmas[0], log_sigmas[-1])
        hi = torch.searchsorted(log_sigmas, ls, right=True).clamp(1, len(log_sigmas) - 1)
        lo = hi - 1
        w = (ls - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
        t = lo.to(torch.float64) + w
        return t.round() if self.quantize else t

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """The training sigma nearest to ``sigma`` in ``log sigma``, in ``sigma``'s dtype and device."""
        sigma = torch.as_tensor(sigma)
        sigmas, log_sigmas = self._table(sigma.device)
        idx = (sigma.to(torch.float64).log()[..., None] - log_sigmas).abs().argmin(-1)
        return sigmas[idx].to(sigma.dtype)

    # -- labels ----------------------------------------------------------------------------------

    def with_labels(self, class_labels) -> "DiffusersDenoiser":
        """A wrapper of the same network with ``class_labels`` bound (``[B]`` class indices or one-hot rows)."""
        if class_labels is not None and not self.conditional:
            raise ModelError("this diffusers UNet is unconditional; it takes no class labels")
        new = copy.copy(self)
        new.class_labels = None if class_labels is None else self._labels(class_labels, None)
        new._adapter = copy.copy(self._adapter)
        if isinstance(new._adapter, EpsDenoiser):
            new._adapter.eps_model = new._net
        elif isinstance(new._adapter, VDenoiser):
            new._adapter.v_model = new._net
        else:
            new._adapter = new._sample_adapter
        return new

    def _sample_adapter(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """``D = x0_theta(x / sqrt(1 + sigma**2), t(sigma))`` for ``prediction_type="sample"``."""
        s = sigma.reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)
        return self._net(x / torch.sqrt(1 + s**2), self.sigma_to_t(sigma))

    def _labels(self, labels, batch: int | None) -> torch.Tensor:
        labels = torch.as_tensor(labels)
        if self.label_dim and labels.ndim == 2 and labels.shape[1] == self.label_dim:  # one-hot rows
            if not bool(((labels == 0) | (labels == 1)).all() and (labels.sum(1) == 1).all()):
                raise ModelError("diffusers class embeddings take class indices; soft label rows are not supported")
            labels = labels.argmax(1)
        if labels.is_floating_point() and self.label_dim:
            raise ModelError(f"class labels must be integer indices [B] or one-hot rows [B, {self.label_dim}]; "
                             f"found {labels.dtype} of shape {tuple(labels.shape)}")
        labels = labels.reshape(-1) if labels.ndim <= 1 else labels
        if self.label_dim and labels.numel() and (labels.min() < 0 or labels.max() >= self.label_dim):
            raise ModelError(f"class labels must lie in 0..{self.label_dim - 1}; found "
                             f"{labels.min().item()}..{labels.max().item()}")
        if batch is not None and labels.shape[0] not in (1, batch):
            raise ModelError(f"class labels are for a batch of {labels.shape[0]}; the input has {batch}")
        return labels

    # -- evaluation ------------------------------------------------------------------------------

    def _net(self, x_vp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The raw network on the VP input, in the caller's dtype and device."""
        dtype, device = self.dtype, self.device
        labels = self.class_labels
        if self.conditional:
            if labels is None:
                raise ModelError("this diffusers UNet is class-conditional: bind labels with D.with_labels(labels) "
                                 "or pass class_labels=")
            labels = self._labels(labels, x_vp.shape[0]).to(device).expand(x_vp.shape[0], *labels.shape[1:])
        t = t.to(device=device, dtype=torch.long if self.quantize else torch.float32)
        out = self.net(x_vp.to(device=device, dtype=dtype), t, class_labels=labels, return_dict=False)[0]
        channels = x_vp.shape[1]
        if out.shape[1] == 2 * channels:  # learned variance (iDDPM): the first half is the prediction
            out = out[:, :channels]
        elif out.shape[1] != channels:
            raise ModelError(f"the UNet returns {out.shape[1]} channels for a {channels}-channel input")
        return out.to(device=x_vp.device, dtype=x_vp.dtype)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float, class_labels=None) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        elif sigma.shape != (x.shape[0],):
            raise ModelError(f"sigma must have shape [{x.shape[0]}] or be a scalar; found {tuple(sigma.shape)}")
        if class_labels is not None:
            return self.with_labels(class_labels)(x, sigma)
        return self._adapter(x, sigma)

    def __repr__(self) -> str:
        return (f"DiffusersDenoiser({type(self.net).__name__}, source={self.source!r}, "
                f"prediction_type={self.prediction_type!r}, T={len(self.sigmas)}, dtype={self.dtype})")


# ----------------------------------------------------------------------------------------------
# Finding the files


def _layout(folder: Path) -> tuple[Path, Path] | None:
    """``(unet folder, scheduler config)`` of a flat or pipeline folder, or ``None``."""
    for unet, sched in ((folder, folder / "scheduler_config.json"),
                        (folder / "unet", folder / "scheduler" / "scheduler_config.json")):
        if (unet / "config.json").is_file() and sched.is_file():
            return unet, sched
    return None


def _weights(unet_dir: Path) -> tuple[list[Path], bool]:
    """The weight files of ``unet_dir`` and whether they are safetensors."""
    for name, safe in ((WEIGHTS, True), (PICKLE_WEIGHTS, False)):
        index = unet_dir / (name + ".index.json")
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError) as e:
                raise ModelError(f"cannot read the shard index {index}: {e}") from None
            return [unet_dir / s for s in shards], safe
        if (unet_dir / name).is_file():
            return [unet_dir / name], safe
    return [], False


def _complete(folder: Path) -> bool:
    found = _layout(folder)
    return found is not None and bool(_weights(found[0])[0]) and all(p.is_file() for p in _weights(found[0])[0])


def _expected_files() -> str:
    return f"config.json, {WEIGHTS} and scheduler_config.json (or unet/ and scheduler/ folders holding them)"


def _hub_dir(cache_dir: Path, repo_id: str, revision: str | None) -> Path:
    return cache_dir / "diffusers" / f"{repo_id.replace('/', '--')}@{revision or 'main'}"


def resolve_source(argument: str, *, cache_dir: str | os.PathLike | None = None, trust: bool = False,
                   download: bool = True) -> tuple[Path, str | None]:
    """The local folder of ``DIR_OR_HUB_ID[@REVISION]`` (downloading a hub id when needed) and the revision."""
    if Path(argument).is_dir():
        return Path(argument), None
    repo_id, _, revision = argument.rpartition("@") if "@" in argument else (argument, "", None)
    revision = revision or None
    if not _HUB_ID.match(repo_id):
        raise ModelError(f"diffusers model {argument!r} is neither a folder nor a Hugging Face Hub id "
                         f"(OWNER/NAME[@REVISION])")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    local = _hub_dir(cache, repo_id, revision)
    if _complete(local):
        return local, revision
    where = (f"download it elsewhere (huggingface-cli download {repo_id}"
             f"{f' --revision {revision}' if revision else ''} --local-dir DIR) and copy its {_expected_files()} "
             f"into {local}, or give diffusers:DIR")
    if not download:
        raise ModelError(f"diffusers model {argument}: no folder {argument} and no downloaded copy at {local}; {where}")
    try:
        import huggingface_hub  # optional: only a download from the Hub needs it
    except ImportError:
        raise ModelError(f"downloading {repo_id} needs the package huggingface_hub; or {where}") from None
    if revision is None:
        logger.warning("diffusers:%s names no revision: using the moving branch 'main'; pin a commit "
                       "(diffusers:%s@COMMIT) to make runs reproducible", repo_id, repo_id)
    patterns = _SAFE_PATTERNS + [f"{sub}/{p}" for sub in ("unet", "scheduler") for p in _SAFE_PATTERNS]
    for attempt in ("safetensors", "pickle"):
        try:
            huggingface_hub.snapshot_download(repo_id=repo_id, revision=revision, local_dir=str(local),
                                              allow_patterns=patterns)
        except Exception as e:  # the hub raises many types (connection, offline mode, not found): all fatal
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ModelError(f"cannot download the diffusers model {repo_id}@{revision or 'main'} "
                             f"({type(e).__name__}{': ' + msg if msg else ''}). Offline, {where}") from None
        if _complete(local):
            break
        found = _layout(local)
        if attempt == "pickle" or found is None:
            raise ModelError(f"the Hub repository {repo_id}@{revision or 'main'} has no UNet2DModel with a scheduler "
                             f"config: expected {_expected_files()} in {local}")
        if not trust:  # no safetensors: only a pickle could follow
            raise ModelError(f"refusing to download {repo_id}@{revision or 'main'}: it has no {WEIGHTS}, only a pickle "
                             f"checkpoint ({PICKLE_WEIGHTS}), and unpickling can run code. Convert it to safetensors, "
                             f"or pass trust=True (--trust-pickle) if you trust this repository")
        patterns = _PICKLE_PATTERNS + [f"unet/{p}" for p in _PICKLE_PATTERNS]
    return local, revision


# ----------------------------------------------------------------------------------------------
# Loading


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {what} {path}: {e}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{what} {path} should hold a JSON object")
    return data


def load_diffusers(argument: str | os.PathLike, *, device: str | torch.device = "cpu", trust: bool = False,
                   cache_dir: str | os.PathLike | None = None, download: bool = True) -> DiffusersDenoiser:
    """Load ``DIR_OR_HUB_ID[@REVISION]`` (see the module docstring) as a :class:`DiffusersDenoiser`.

    Parameters
    ----------
    argument:
        A local folder, or a Hub id with an optional ``@REVISION``; a ``diffusers:`` prefix is accepted.
    device:
        Where the network goes; nothing defaults to CUDA.
    trust:
        Load a pickle checkpoint (``.bin``) when the folder has no safetensors weights.
    cache_dir:
        Root of the download folders (default :func:`adasched.edm.default_cache_dir`).
    download:
        Allow fetching a Hub id that is not in the cache yet.
    """
    argument = os.fspath(argument)
    argument = argument[len("diffusers:"):] if argument.startswith("diffusers:") else argument
    if not argument:
        raise ModelError("empty diffusers model SPEC: expected diffusers:DIR or diffusers:OWNER/NAME[@REVISION]")
    folder, revision = resolve_source(argument, cache_dir=cache_dir, trust=trust, download=download)
    found = _layout(folder)
    if found is None:
        raise ModelError(f"{folder} is not a diffusers UNet2DModel folder: expected {_expected_files()}")
    unet_dir, sched_path = found
    config = _read_json(unet_dir / "config.json", "UNet config")
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ModelError(f"{unet_dir / 'config.json'} describes a {config['_class_name']}; the diffusers: kind "
                         f"supports pixel-space UNet2DModel networks")
    files, safe = _weights(unet_dir)
    if not files or not all(f.is_file() for f in files):
        raise ModelError(f"no UNet weights in {unet_dir}: expected {WEIGHTS} (or, trusted, {PICKLE_WEIGHTS})")
    if not safe and not trust:
        raise ModelError(f"refusing to load {files[0]}: the checkpoint is only a pickle, and unpickling can run "
                         f"code. Convert it to safetensors, or pass trust=True (--trust-pickle) if you trust this file")
    sched = _read_json(sched_path, "scheduler config")
    prediction = sched.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ModelError(f"{sched_path}: unsupported prediction_type {prediction!r}; valid: "
                         f"{', '.join(PREDICTION_TYPES)}")
    try:
        # optional and heavy: only the diffusers: model kind needs it
        from diffusers import DDPMScheduler, UNet2DModel
    except ImportError:
        raise ModelError("the diffusers: model kind needs the package diffusers (pip install diffusers)") from None
    try:
        cfg = {k: v for k, v in sched.items() if not k.startswith("_")}
        scheduler = DDPMScheduler.from_config(cfg)
        unet = UNet2DModel.from_pretrained(str(unet_dir), use_safetensors=safe, local_files_only=True,
                                           low_cpu_mem_usage=False)
    except (OSError, ValueError, TypeError, KeyError, NotImplementedError, RuntimeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelError(f"cannot load the diffusers model in {folder}: {type(e).__name__}: {msg}") from None
    # Float64 products of the (float32) betas: the same schedule, without float32 cumprod round-off.
    alphas_cumprod = torch.cumprod(1 - scheduler.betas.to(torch.float64), 0)
    digests = [sha256_file(f) for f in files]
    digest = digests[0] if len(digests) == 1 else hashlib.sha256(
        "".join(f"{f.name}:{d}\n" for f, d in zip(files, digests)).encode()).hexdigest()
    logger.info("loaded diffusers UNet2DModel from %s (%s, T=%d, weights sha256 %s)", folder, prediction,
                len(alphas_cumprod), digest)
    return DiffusersDenoiser(unet.to(device), alphas_cumprod, prediction_type=prediction, source=argument,
                             revision=revision, sha256=digest)


def _register_spec_kind() -> None:
    """Make ``diffusers:`` a kind of :func:`adasched.models.load_model`."""
    @register("diffusers")
    def _load_diffusers_spec(argument: str, *, device="cpu", trust=False, cache_dir=None, download=True, **_):
        return load_diffusers(argument, device=device, trust=trust, cache_dir=cache_dir, download=download)


_register_spec_kind()
