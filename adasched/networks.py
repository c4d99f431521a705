"""Trainable networks: a DDPM++-style UNet and EDM's preconditioning around it.

Written from the published descriptions, not from any released code:

* :class:`UNet` is the DDPM++ architecture of Song et al. 2021 ("Score-Based Generative Modeling
  through Stochastic Differential Equations", Appendix H), as configured for CIFAR-10 by Karras et
  al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models", EDM, Table 7 and
  Appendix F.2): residual blocks of GroupNorm, SiLU and 3x3 convolutions, a noise embedding added
  through an affine layer in every block, self-attention at chosen resolutions, 2x2 average-pool
  down-sampling and nearest up-sampling, skip connections from encoder to decoder, residual sums
  scaled by ``1/sqrt(2)``.
* :class:`EDMPrecond` applies EDM's preconditioning (Karras et al. 2022, Table 1, "Ours")::

      c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2)
      c_out   = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2)
      c_in    = 1 / sqrt(sigma^2 + sigma_data^2)
      c_noise = ln(sigma) / 4
      D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)

  and is a denoiser in the project's protocol (:mod:`adasched.denoisers`).  Reduced precision and
  memory layout are options of the wrapper (``autocast_dtype``, ``channels_last``), so samplers stay
  pure and keep whatever state dtype the caller gives them.

:data:`PRESETS` names configurations; :func:`build` makes a preconditioned network from one.
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from adasched.errors import ModelError

__all__ = ["UNet", "EDMPrecond", "PRESETS", "build", "count_parameters"]


def _group_norm(channels: int, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or fewer for narrow layers (at least 4 channels per group)."""
    groups = min(32, max(1, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=eps)


def _zero_init(layer: nn.Module, scale: float = 1e-5) -> nn.Module:
    """Scale a layer's initial weights almost to zero and zero its bias (residual branches start as identity)."""
    with torch.no_grad():
        layer.weight.mul_(scale)
        if layer.bias is not None:
            layer.bias.zero_()
    return layer


class PositionalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of a scalar per sample: ``[cos(x w_k), sin(x w_k)]``, ``w_k`` geometric."""

    def __init__(self, channels: int, max_positions: int = 10_000):
        super().__init__()
        if channels % 2:
            raise ModelError(f"embedding channels must be even, got {channels}")
        half = channels // 2
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arg = x.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features ``[cos(2 pi x w_k), sin(2 pi x w_k)]``, ``w_k ~ N(0, scale^2)`` fixed (NCSN++)."""

    def __init__(self, channels: int, scale: float = 16.0):
        super().__init__()
        if channels % 2:
            raise ModelError(f"embedding channels must be even, got {channels}")
        self.register_buffer("freqs", torch.randn(channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arg = (2 * math.pi) * x.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map (pre-norm, 1x1 projections)."""

    def __init__(self, channels: int, num_heads: int = 1, init_zero: bool = True):
        super().__init__()
        if channels % num_heads:
            raise ModelError(f"{channels} channels do not split into {num_heads} attention heads")
        self.num_heads = num_heads
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        if init_zero:
            _zero_init(self.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = (t.transpose(-1, -2) for t in qkv.unbind(1))  # [B, heads, HW, C/heads]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class ResBlock(nn.Module):
    """DDPM++ residual block: norm, SiLU, (resample,) conv; add affine(embedding); norm, SiLU, dropout, conv.

    The skip path is a 1x1 convolution (after resampling) when channels or resolution change; the sum
    is scaled by ``skip_scale`` (``1/sqrt(2)`` in DDPM++), and optional attention follows, scaled alike.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, *, resample: str | None = None,
                 attention: bool = False, num_heads: int = 1, dropout: float = 0.0,
                 skip_scale: float = math.sqrt(0.5), init_zero: bool = True):
        super().__init__()
        if resample not in (None, "up", "down"):
            raise ModelError(f"resample must be None, 'up' or 'down', got {resample!r}")
        self.resample = resample
        self.skip_scale = skip_scale
        self.norm0 = _group_norm(in_channels)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.affine = nn.Linear(emb_channels, out_channels)
        self.norm1 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if init_zero:
            _zero_init(self.conv1)
        self.skip = (nn.Conv2d(in_channels, out_channels, 1)
                     if in_channels != out_channels or resample is not None else None)
        self.attn = SelfAttention(out_channels, num_heads, init_zero) if attention else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(self._resample(F.silu(self.norm0(x))))
        h = h + self.affine(emb)[:, :, None, None].to(h.dtype)
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        skip = self._resample(x)
        if self.skip is not None:
            skip = self.skip(skip)
        x = (h + skip) * self.skip_scale
        if self.attn is not None:
            x = (x + self.attn(x)) * self.skip_scale
        return x


class UNet(nn.Module):
    """DDPM++-style UNet ``F(x, noise_labels, class_labels) -> same shape as x`` (Song et al. 2021).

    Args:
        img_resolution: height and width of the input (a power of two times ``2**(len(channel_mult)-1)``).
        in_channels, out_channels: image channels in and out.
        model_channels: base width; level ``l`` has ``model_channels * channel_mult[l]`` channels.
        channel_mult: width multipliers per resolution level (one level per entry; each level after
            the first halves the resolution).
        channel_mult_emb: the noise embedding has ``model_channels * channel_mult_emb`` channels.
        channel_mult_noise: the sinusoidal/Fourier features have ``model_channels * channel_mult_noise``.
        num_blocks: residual blocks per level in the encoder (``num_blocks + 1`` in the decoder).
        attn_resolutions: resolutions at which blocks carry self-attention (plus one in the bottleneck).
        num_heads: attention heads.
        dropout: dropout probability inside residual blocks (training only).
        label_dim: number of classes; ``> 0`` adds a linear class embedding to the noise features.
        augment_dim: size of EDM-style augmentation labels (0 = none), embedded like class labels.
        embedding: ``"positional"`` (DDPM++) or ``"fourier"`` (NCSN++) noise features.
        init_zero: start the last layer of every residual branch and the output layer with weights
            scaled by 1e-5 (blocks start as identities, ``F ~ 0`` so ``D ~ c_skip x``: the usual start
            for training).  ``False`` keeps PyTorch's default initialisation everywhere, a random
            network with ``F = O(1)`` (for speed and precision benchmarks).
    """

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, *, model_channels: int = 128,
                 channel_mult: Sequence[int] = (1, 2, 2, 2), channel_mult_emb: int = 4,
                 channel_mult_noise: int = 1, num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,),
                 num_heads: int = 1, dropout: float = 0.10, label_dim: int = 0, augment_dim: int = 0,
                 embedding: str = "positional", init_zero: bool = True):
        super().__init__()
        if img_resolution % (2 ** (len(channel_mult) - 1)):
            raise ModelError(f"img_resolution {img_resolution} is not divisible by 2**{len(channel_mult) - 1}")
        self.img_resolution = int(img_resolution)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.label_dim, self.augment_dim = int(label_dim), int(augment_dim)
        noise_ch = model_channels * channel_mult_noise
        emb_ch = model_channels * channel_mult_emb
        if embedding == "positional":
            self.map_noise = PositionalEmbedding(noise_ch)
        elif embedding == "fourier":
            self.map_noise = FourierEmbedding(noise_ch)
        else:
            raise ModelError(f"unknown embedding {embedding!r}; valid: positional, fourier")
        self.map_label = nn.Linear(label_dim, noise_ch) if label_dim else None
        self.map_augment = nn.Linear(augment_dim, noise_ch, bias=False) if augment_dim else None
        self.map0 = nn.Linear(noise_ch, emb_ch)
        self.map1 = nn.Linear(emb_ch, emb_ch)

        block = dict(emb_channels=emb_ch, num_heads=num_heads, dropout=dropout, init_zero=init_zero)
        attn_res = set(int(r) for r in attn_resolutions)
        self.conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        self.enc = nn.ModuleList()
        skips = [model_channels]
        cout = model_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level > 0:
                self.enc.append(ResBlock(cout, cout, resample="down", **block))
                skips.append(cout)
            for _ in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc.append(ResBlock(cin, cout, attention=res in attn_res, **block))
                skips.append(cout)
        self.mid = nn.ModuleList([ResBlock(cout, cout, attention=True, **block), ResBlock(cout, cout, **block)])
        self.dec = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level < len(channel_mult) - 1:
                self.dec.append(ResBlock(cout, cout, resample="up", **block))
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec.append(ResBlock(cin, cout, attention=(i == num_blocks and res in attn_res), **block))
        assert not skips
        self.norm_out = _group_norm(cout)
        self.conv_out = nn.Conv2d(cout, out_channels, 3, padding=1)
        if init_zero:
            _zero_init(self.conv_out)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None = None,
                augment_labels: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[B, C, H, W]``, ``noise_labels`` ``[B]`` (EDM: ``ln(sigma)/4``), labels ``[B, label_dim]``."""
        emb = self.map_noise(noise_labels)
        if self.map_label is not None:
            if class_labels is None:
                raise ModelError(f"this network is class-conditional (label_dim={self.label_dim}); pass class_labels")
            emb = emb + self.map_label(class_labels.to(emb.dtype))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels.to(emb.dtype))
        emb = F.silu(self.map1(F.silu(self.map0(emb))))

        h = self.conv_in(x)
        hs = [h]
        for blk in self.enc:
            h = blk(h, emb)
            hs.append(h)
        for blk in self.mid:
            h = blk(h, emb)
        for blk in self.dec:
            if blk.resample != "up":
                h = torch.cat([h, hs.pop()], dim=1)
            h = blk(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


class EDMPrecond(nn.Module):
    """EDM preconditioning around a network ``F``: ``D(x; sigma) = c_skip x + c_out F(c_in x; ln(sigma)/4)``.

    Karras et al. 2022, Table 1 and Eq. 7.  ``forward(x, sigma, class_labels=None)`` takes ``sigma`` of
    shape ``[B]`` (or a scalar), returns ``D`` in ``x``'s dtype (samplers keep float64 state), and runs
    the preconditioning and the network in the parameters' dtype (float32 as built; float64 after
    ``.double()``, the reference that float32 results are checked against) or, with ``autocast_dtype``,
    the network under ``torch.autocast`` in that dtype.  ``channels_last`` stores the network's weights
    and input in NHWC layout (faster convolutions on recent GPUs).  Both can be changed later with
    :meth:`set_precision`.

    Class labels are one-hot (or soft) rows ``[B, label_dim]`` or integer class indices ``[B]``; a
    conditional network called without labels is an error.
    """

    sigma_min = 0.002
    sigma_max = 80.0

    def __init__(self, model: UNet, *, sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 autocast_dtype: torch.dtype | None = None, channels_last: bool = False):
        super().__init__()
        self.model = model
        self.sigma_data = float(sigma_data)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.img_resolution = model.img_resolution
        self.img_channels = model.in_channels
        self.label_dim = model.label_dim
        self.autocast_dtype: torch.dtype | None = None
        self.channels_last = False
        self.set_precision(autocast_dtype=autocast_dtype, channels_last=channels_last)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one sample, ``(C, H, W)``."""
        return (self.img_channels, self.img_resolution, self.img_resolution)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the parameters, in which the preconditioning runs (float32 unless converted)."""
        p = next(self.model.parameters(), None)
        return p.dtype if p is not None else torch.float32

    def set_precision(self, *, autocast_dtype: torch.dtype | None = None, channels_last: bool = False) -> "EDMPrecond":
        """Choose the network's autocast dtype (``None``: the parameters' own) and memory layout; returns ``self``."""
        if autocast_dtype not in (None, torch.float32, torch.float16, torch.bfloat16):
            raise ModelError(f"autocast_dtype must be None, float32, float16 or bfloat16, got {autocast_dtype!r}")
        self.autocast_dtype = None if autocast_dtype == torch.float32 else autocast_dtype
        self.channels_last = bool(channels_last)
        self.model.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return self

    def round_sigma(self, sigma):
        """EDM's networks take any continuous sigma: the identity."""
        return torch.as_tensor(sigma)

    def _labels(self, class_labels, batch: int, device) -> torch.Tensor | None:
        if self.label_dim == 0:
            if class_labels is not None:
                raise ModelError("class_labels given to an unconditional network (label_dim=0)")
            return None
        if class_labels is None:
            raise ModelError(f"this network is class-conditional (label_dim={self.label_dim}); pass class_labels")
        c = torch.as_tensor(class_labels, device=device)
        if not c.is_floating_point():
            c = F.one_hot(c.long().reshape(-1), self.label_dim)
        c = c.to(self.compute_dtype).reshape(-1, self.label_dim)
        return c.expand(batch, -1) if c.shape[0] == 1 else c

    def forward(self, x: torch.Tensor, sigma, class_labels=None, **model_kwargs) -> torch.Tensor:
        dtype, ct = x.dtype, self.compute_dtype
        x_ct = x.to(ct)
        sigma = torch.as_tensor(sigma, device=x.device).to(ct).reshape(-1, 1, 1, 1)
        if sigma.shape[0] == 1 and x.shape[0] != 1:
            sigma = sigma.expand(x.shape[0], 1, 1, 1)
        labels = self._labels(class_labels, x.shape[0], x.device)
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sigma**2 + sd**2).sqrt()
        c_noise = sigma.log().flatten() / 4
        x_in = c_in * x_ct
        if self.channels_last:
            x_in = x_in.contiguous(memory_format=torch.channels_last)
        # No weight-cast cache: each weight is used once per call anyway, and a cache would not survive
        # CUDA-graph capture.
        amp = (torch.autocast(x.device.type, dtype=self.autocast_dtype, cache_enabled=False)
               if self.autocast_dtype is not None else contextlib.nullcontext())
        with amp:
            F_x = self.model(x_in, c_noise, labels, **model_kwargs)
        D = c_skip * x_ct + c_out * F_x.to(ct)
        return D.to(dtype)


#: Named configurations: UNet keyword arguments plus EDMPrecond's ``sigma_data``.
PRESETS: dict[str, dict] = {
    # EDM's DDPM++ for CIFAR-10 (Karras et al. 2022, Table 7 / Appendix F.2): 32x32x3, 128 channels,
    # multipliers (2, 2, 2), 4 blocks per resolution, attention at 16x16, dropout 0.13, 9 augment labels.
    "ddpmpp-cifar10": dict(img_resolution=32, in_channels=3, out_channels=3, model_channels=128,
                           channel_mult=(2, 2, 2), channel_mult_emb=4, channel_mult_noise=1, num_blocks=4,
                           attn_resolutions=(16,), dropout=0.13, augment_dim=9, embedding="positional",
                           sigma_data=0.5),
    # A compact net for scikit-learn's 8x8 digits (pixel range [-1, 1]); trains on a CPU in minutes.
    "digits": dict(img_resolution=8, in_channels=1, out_channels=1, model_channels=24, channel_mult=(1, 2),
                   channel_mult_emb=4, channel_mult_noise=1, num_blocks=2, attn_resolutions=(4,), dropout=0.0,
                   embedding="positional", sigma_data=0.5),
}


def build(preset: str, **overrides) -> EDMPrecond:
    """An :class:`EDMPrecond` around a :class:`UNet` configured by ``PRESETS[preset]`` updated with ``overrides``.

    Overrides may be any :class:`UNet` argument, ``label_dim``, or an :class:`EDMPrecond` option
    (``sigma_data``, ``sigma_min``, ``sigma_max``, ``autocast_dtype``, ``channels_last``).
    """
    if preset not in PRESETS:
        raise ModelError(f"unknown network preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    cfg = {**PRESETS[preset], **overrides}
    precond_keys = ("sigma_data", "sigma_min", "sigma_max", "autocast_dtype", "channels_last")
    precond = {k: cfg.pop(k) for k in precond_keys if k in cfg}
    try:
        model = UNet(**cfg)
    except TypeError as e:
        raise ModelError(f"bad option for network preset {preset!r}: {e}") from None
    return EDMPrecond(model, **precond)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
