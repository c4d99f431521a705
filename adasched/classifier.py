"""A small digits classifier: logits for sample-quality checks, penultimate features for a Fréchet distance.

Offline, image models trained on scikit-learn's bundled 8x8 digits (:func:`adasched.data.digits`) have no
Inception network to score them.  :class:`DigitsClassifier` is a tiny CNN trained on the real digits in a few
seconds on a CPU (:func:`train_digits_classifier`, deterministic given its seed, with a held-out test split).

* ``model(x)`` gives the 10 class logits; :func:`confidence` summarises how confidently samples are labelled
  (the fraction with max softmax above a threshold, the mean max probability and the label histogram);
* ``model.features(x)`` gives the penultimate activations (``FEATURE_DIM`` values per image), whose Fréchet
  distance between two image sets is a "digits-FD".  It is its own protocol, never to be reported as FID.

Inputs are ``[B, 1, 8, 8]`` (or ``[B, 64]``) in the data range [-1, 1], any float dtype and device.  Models are
saved as safetensors with their settings and test accuracy in the header (:func:`save_classifier`,
:func:`load_classifier`): loading runs no code.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from adasched.data import digits
from adasched.errors import ModelError
from adasched.io import atomic_path, provenance

__all__ = ["DigitsClassifier", "train_digits_classifier", "digits_split", "save_classifier", "load_classifier",
           "confidence", "FEATURE_DIM"]

log = logging.getLogger(__name__)

#: Length of the feature vector from :meth:`DigitsClassifier.features`.
FEATURE_DIM = 64

_FORMAT = "adasched-digits-classifier"


class DigitsClassifier(nn.Module):
    """Conv(32) - Conv(64) - pool - Conv(64) - Linear(``FEATURE_DIM``) - Linear(10), SiLU activations."""

    def __init__(self, width: int = 32, feature_dim: int = FEATURE_DIM, num_classes: int = 10):
        super().__init__()
        self.width, self.feature_dim, self.num_classes = int(width), int(feature_dim), int(num_classes)
        w = self.width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.SiLU(),
            nn.AvgPool2d(2),                                        # 8x8 -> 4x4
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU(),
            nn.Flatten(),
            nn.Linear(2 * w * 16, feature_dim), nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)
        #: Accuracies and settings from training (filled by :func:`train_digits_classifier` or the loader).
        self.info: dict[str, Any] = {}

    def config(self) -> dict:
        return {"width": self.width, "feature_dim": self.feature_dim, "num_classes": self.num_classes}

    @property
    def test_accuracy(self) -> float | None:
        """Accuracy on the held-out test split of the real digits (``None`` for an untrained model)."""
        return self.info.get("test_accuracy")

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.ndim == 2 and x.shape[1] == 64:
            x = x.reshape(-1, 1, 8, 8)
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ModelError(f"the digits classifier takes images of shape [B, 1, 8, 8] (or [B, 64]) in [-1, 1]; "
                             f"found {tuple(x.shape)}")
        p = next(self.parameters())
        return x.to(device=p.device, dtype=p.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``[B, FEATURE_DIM]`` (float32), the representation for a digits-FD."""
        return self.body(self._input(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, 10]``."""
        return self.head(self.features(x))

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``[B, 10]``."""
        return torch.softmax(self(x), dim=1)


def digits_split(test_fraction: float = 0.2, split_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, test)`` into :func:`adasched.data.digits`: a fixed random split (sorted index lists)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    n = 1797
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(split_seed)))
    n_test = int(round(n * test_fraction))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translations by up to one pixel, padding with the background value -1 (augmentation)."""
    b = x.shape[0]
    padded = nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    dy = torch.randint(0, 3, (b,), generator=g)
    dx = torch.randint(0, 3, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(8))[:, :, None].expand(b, 8, 8)
    cols = (dx[:, None] + torch.arange(8))[:, None, :].expand(b, 8, 8)
    idx = torch.arange(b)[:, None, None].expand(b, 8, 8)
    return padded[idx, 0, rows, cols][:, None]


@torch.no_grad()
def _accuracy(model: DigitsClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1).cpu() == y).to(torch.float64).mean())


def train_digits_classifier(seed: int = 0, *, epochs: int = 25, batch: int = 64, lr: float = 2e-3,
                            test_fraction: float = 0.2, split_seed: int = 0, augment: bool = True,
                            width: int = 24, outlier_weight: float = 0.25) -> DigitsClassifier:
    """Train :class:`DigitsClassifier` on the real digits' training split; return it in eval mode.

    Deterministic given ``seed`` (initialisation, batch order and augmentation draw from generators seeded by
    it; the global RNG state is left as it was) on a given device and thread count.  The test split
    (``test_fraction`` of the 1797 images, :func:`digits_split` with ``split_seed``) is never trained on; its
    accuracy is logged and kept in ``model.info["test_accuracy"]``.  A few seconds on one CPU thread.
    """
    x = digits().to(torch.float32)
    y = torch.from_numpy(_digit_labels())
    train_idx, test_idx = digits_split(test_fraction, split_seed)
    xtr, ytr, xte, yte = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    mean = xtr.mean(0, keepdim=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier(width=width)
    g = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-len(xtr) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(xtr), generator=g)
        total = 0.0
        for k in range(steps_per_epoch):
            rows = perm[k * batch:(k + 1) * batch]
            xb = _shift(xtr[rows], g) if augment else xtr[rows]
            target = nn.functional.one_hot(ytr[rows], 10).to(xb.dtype)
            if outlier_weight:
                # Outlier exposure (Hendrycks et al. 2019): a uniform label on images that are no digit, and
                # the mixed label on even blends of two digits, so that "confident" means "looks like a digit".
                n = len(rows)
                other = torch.randint(0, len(xtr), (n,), generator=g)
                lam = 0.35 + 0.3 * torch.rand(n, generator=g)
                blend = lam[:, None, None, None] * xb + (1 - lam[:, None, None, None]) * xtr[other]
                mixed = lam[:, None] * target + (1 - lam[:, None]) * nn.functional.one_hot(ytr[other], 10)
                xb = torch.cat([xb, blend, _outliers(n, g, mean)])
                target = torch.cat([target, mixed, torch.full((n, 10), 0.1)])
                weight = torch.cat([torch.ones(n), torch.full((2 * n,), outlier_weight)])
            else:
                weight = torch.ones(len(rows))
            loss = (weight * nn.functional.cross_entropy(model(xb), target, reduction="none")).sum() / weight.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(rows)
        log.debug("classifier epoch %d/%d: loss %.4f", epoch + 1, epochs, total / len(xtr))
    model.eval()
    model.info = {
        "seed": seed, "epochs": epochs, "batch": batch, "lr": lr, "augment": augment, "outlier_weight": outlier_weight,
        "test_fraction": test_fraction, "split_seed": split_seed, "n_train": len(xtr), "n_test": len(xte),
        "train_accuracy": _accuracy(model, xtr, ytr), "test_accuracy": _accuracy(model, xte, yte),
    }
    log.info("digits classifier: test accuracy %.4f (%d images), train accuracy %.4f",
             model.info["test_accuracy"], len(xte), model.info["train_accuracy"])
    return model


def _outliers(b: int, g: torch.Generator, mean: torch.Tensor) -> torch.Tensor:
    """Images that are no digit: pixel noise (Gaussian or uniform) or the data's mean image, at random contrast."""
    gauss = torch.randn(b, 1, 8, 8, generator=g).clamp(-1, 1)
    unif = torch.rand(b, 1, 8, 8, generator=g) * 2 - 1
    kind = torch.randint(0, 3, (b, 1, 1, 1), generator=g)
    img = torch.where(kind == 0, gauss, torch.where(kind == 1, unif, mean.expand(b, 1, 8, 8)))
    scale = torch.rand(b, 1, 1, 1, generator=g)
    return img * scale + (scale - 1) * torch.rand(b, 1, 1, 1, generator=g)


def _digit_labels():
    # heavy: scikit-learn takes seconds to import; only the digits need it
    from sklearn.datasets import load_digits

    return load_digits().target.astype("int64")


def save_classifier(model: DigitsClassifier, path: str | os.PathLike) -> None:
    """Write ``model`` as safetensors (weights) with its config and ``info`` as JSON in the header, atomically."""
    meta = {"format": _FORMAT, "config": model.config(), "info": model.info, "provenance": provenance()}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"adasched": json.dumps(meta)})


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> DigitsClassifier:
    """Load a :func:`save_classifier` file (safetensors: no code runs); the model is in eval mode."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        meta = json.loads(header.get("adasched", "{}"))
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise ModelError(f"classifier file not found: {path}") from None
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read classifier file {path}: {e}") from None
    if meta.get("format") != _FORMAT:
        raise ModelError(f"{path} is not a digits classifier file (format {meta.get('format')!r})")
    model = DigitsClassifier(**meta["config"])
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise ModelError(f"classifier file {path} does not match its config: {str(e).splitlines()[0]}") from None
    model.info = meta.get("info", {})
    return model.to(device).eval()


@torch.no_grad()
def confidence(model: DigitsClassifier, x: torch.Tensor, threshold: float = 0.9, batch: int = 1024) -> dict:
    """How confidently ``model`` labels images ``x``: a quick sample-quality check for digits models.

    Returns ``{"n", "threshold", "frac_confident"`` (max softmax > threshold), ``"mean_max_prob"``,
    ``"label_counts"`` (argmax histogram, 10 ints: a collapsed model shows up here)``}``.
    """
    probs = torch.cat([model.predict_proba(x[i:i + batch]).cpu().to(torch.float64)
                       for i in range(0, len(x), batch)])
    top = probs.max(1).values
    counts = torch.bincount(probs.argmax(1), minlength=model.num_classes)
    return {"n": len(x), "threshold": threshold, "frac_confident": float((top > threshold).to(torch.float64).mean()),
            "mean_max_prob": float(top.mean()), "label_counts": [int(c) for c in counts]}
