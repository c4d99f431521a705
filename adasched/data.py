"""Data SPECs for probing and reference statistics: where the clean samples ``x0`` come from.

=========================  ==================================================================
``target``                 the analytic model's own exact sampler (``gmm:``, ``powerlaw:`` models)
``npz:PATH[:KEY]``         an array ``[N, ...]`` in an NPZ file (key ``KEY``, default the first
                           array); ``uint8`` arrays are 8-bit pixels, scaled to [-1, 1] as
                           images are; an integer array ``labels`` ``[N]`` in the same file
                           gives class labels
``digits``                 scikit-learn's bundled 8x8 digits, scaled to [-1, 1], shape
                           ``[1, 8, 8]``, with their labels 0..9
``images:PATH``            a folder (searched recursively) or a ``.zip`` of PNG/JPEG images
                           (also BMP, WebP), all of one size, in the order of their sorted
                           relative paths; 8-bit pixels ``p`` become ``p / 127.5 - 1``
                           (grey-level images one channel, others RGB); labels from a
                           ``dataset.json`` beside them in EDM's format
                           (``{"labels": [["NAME", CLASS], ...]}``)
``cifar10[:train|test]``   CIFAR-10 (default ``train``, 50,000 images ``[3, 32, 32]``, labels
                           0..9) through torchvision, downloaded into ``ROOT/cifar10`` on first
                           use (``ROOT``: ``root=``, else ``$ADASCHED_DATA_DIR``, else
                           ``resources/data``)
``model[:POOL]``            the model's own samples, for models with no data at hand: a pool of
                           ``POOL`` (default 1024) drawn once per run by Heun on EDM's rho = 7
                           schedule, 128 steps (255 NFE each), seeds 0..POOL-1, a conditional
                           model's classes drawn per seed; then sampled like a dataset
=========================  ==================================================================

Each SPEC gives a data sampler ``seeds -> x0`` that is deterministic per seed
(:mod:`adasched.probe`).  Samplers over a dataset (every kind but ``target``; ``model`` is one over its pool) are
:class:`LabelledSampler` objects: ``sampler.labels(seeds)`` gives the class labels ``[len(seeds)]``
(int64) of exactly the rows ``sampler(seeds)`` returns, or ``None`` when the source has none;
:func:`sample_labels` asks any sampler.  A class-conditional model is then called as
``D.with_labels(sampler.labels(seeds))``.

:func:`load_dataset` gives the whole dataset in its fixed order (for reference statistics):
images stay 8-bit (``uint8`` ``[N, C, H, W]``) in :attr:`Dataset.data`, :meth:`Dataset.x0`
scales them.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from adasched.errors import DataError
from adasched.io import npz_header
from adasched.limits import array_bytes, check_memory
from adasched.probe import DatasetSampler, target_sampler
from adasched.samplers import generate
from adasched.schedules import sigmas_edm

__all__ = ["load_data_sampler", "load_dataset", "Dataset", "LabelledSampler", "sample_labels", "digits",
           "digit_labels", "load_images", "cifar10", "default_data_dir", "ModelSampler", "DATA_KINDS",
           "IMAGE_SUFFIXES"]

logger = logging.getLogger(__name__)

DATA_KINDS = ("target", "npz:PATH[:KEY]", "digits", "images:PATH", "cifar10[:train|test]", "model[:POOL]")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_GREY_MODES = ("1", "L", "LA")
_COLOUR_MODES = ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


def default_data_dir() -> Path:
    """``$ADASCHED_DATA_DIR``, else ``resources/data`` under the working directory."""
    return Path(os.environ.get("ADASCHED_DATA_DIR", "resources/data"))


# ----------------------------------------------------------------------------------------------
# Datasets and their samplers


def _to_x0(data: torch.Tensor) -> torch.Tensor:
    """Float64 model-space values: 8-bit pixels ``p`` become ``p / 127.5 - 1`` (EDM's scaling)."""
    if data.dtype == torch.uint8:
        return data.to(torch.float64) / 127.5 - 1
    return data.to(torch.float64) if not data.is_floating_point() else data


@dataclass(frozen=True)
class Dataset:
    """A whole dataset in its fixed order: ``data`` ``[N, ...]`` (``uint8`` pixels, or float values as
    stored), class ``labels`` ``[N]`` int64 or ``None``, and a ``description`` (the SPEC)."""

    data: torch.Tensor
    labels: torch.Tensor | None
    description: str
    num_classes: int | None = None

    def __post_init__(self):
        if self.data.ndim < 2 or self.data.shape[0] < 1:
            raise DataError(f"{self.description}: a dataset must have shape [N, ...] with N >= 1 and at least one "
                            f"data axis, got {tuple(self.data.shape)}")
        if self.labels is not None and tuple(self.labels.shape) != (self.data.shape[0],):
            raise DataError(f"{self.description}: {self.data.shape[0]} items but labels of shape "
                            f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one item."""
        return tuple(self.data.shape[1:])

    def x0(self, index=None) -> torch.Tensor:
        """Rows ``index`` (default all) as float64 model-space values (``uint8`` pixels to [-1, 1])."""
        return _to_x0(self.data if index is None else self.data[index])

    def sampler(self) -> "LabelledSampler":
        return LabelledSampler(self.data, self.labels, description=self.description, num_classes=self.num_classes)


class LabelledSampler(DatasetSampler):
    """:class:`adasched.probe.DatasetSampler` (row ``j`` is ``data[h(seeds[j]) mod N]``) plus labels.

    ``uint8`` data (8-bit images) are kept as they are and scaled to [-1, 1] per draw, which keeps
    CIFAR-10's 50,000 images at 150 MB instead of 1.2 GB.  :meth:`labels` returns the labels of the
    same rows as ``self(seeds)``, or ``None`` when there are none.
    """

    def __init__(self, data, labels=None, description: str | None = None, num_classes: int | None = None):
        data = data if isinstance(data, torch.Tensor) else torch.as_tensor(np.asarray(data))
        if data.dtype == torch.uint8:
            if data.ndim < 2 or data.shape[0] < 1:
                raise DataError(f"dataset must have shape [N, ...] with N >= 1 and at least one data axis, "
                                f"got {tuple(data.shape)}")
            self.data = data
            self.description = description if description is not None else f"dataset:{tuple(data.shape)}"
        else:
            super().__init__(data, description)
        if labels is not None:
            labels = torch.as_tensor(np.asarray(labels)).to(torch.int64).reshape(-1)
            if labels.shape[0] != self.data.shape[0]:
                raise DataError(f"{self.description}: {self.data.shape[0]} items but {labels.shape[0]} labels")
            if num_classes is None and labels.numel():
                num_classes = int(labels.max()) + 1
        self.label_values = labels
        self.num_classes = num_classes if labels is not None else None

    def __call__(self, seeds: Sequence[int]) -> torch.Tensor:
        return _to_x0(self.data[torch.from_numpy(self.indices(seeds))])

    def labels(self, seeds: Sequence[int]) -> torch.Tensor | None:
        """Class labels ``[len(seeds)]`` (int64) of the rows ``self(seeds)`` returns; ``None`` if unlabelled."""
        if self.label_values is None:
            return None
        return self.label_values[torch.from_numpy(self.indices(seeds))]


def sample_labels(sampler, seeds: Sequence[int]) -> torch.Tensor | None:
    """The labels a data sampler gives for ``seeds`` (``None`` for samplers without labels)."""
    labels = getattr(sampler, "labels", None)
    return labels(seeds) if callable(labels) else None


# ----------------------------------------------------------------------------------------------
# Sources


def digits() -> torch.Tensor:
    """The 1797 bundled 8x8 digits as ``[N, 1, 8, 8]`` float64 in [-1, 1] (no download)."""
    # heavy: scikit-learn takes seconds to import; only the digits need it
    from sklearn.datasets import load_digits

    x = load_digits().images.astype(np.float64) / 16.0 * 2 - 1
    return torch.from_numpy(x[:, None])


def digit_labels() -> torch.Tensor:
    """The classes 0..9 of :func:`digits`, ``[N]`` int64, in the same order."""
    # heavy: scikit-learn takes seconds to import; only the digits need it
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().target.astype(np.int64))


def _decode(raw: bytes, name: str) -> np.ndarray:
    """One image file as ``uint8`` ``[C, H, W]`` (C = 1 for grey levels, else 3)."""
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            if img.mode in _GREY_MODES:
                img = img.convert("L")
            elif img.mode in _COLOUR_MODES:
                img = img.convert("RGB")
            else:
                raise DataError(f"image {name} has mode {img.mode!r}; expected 8-bit grey-level or colour images "
                                f"({', '.join(_GREY_MODES + _COLOUR_MODES)})")
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
        raise DataError(f"cannot read image {name}: {e}") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _image_labels(meta: bytes | None, names: list[str], where: str) -> torch.Tensor | None:
    """Labels from EDM's ``dataset.json`` (``{"labels": [[name, class], ...]}`` or ``null``), in ``names`` order."""
    if meta is None:
        return None
    try:
        pairs = json.loads(meta).get("labels")
        if pairs is None:
            return None
        table = {str(n): int(c) for n, c in pairs}
    except (ValueError, TypeError, AttributeError) as e:
        raise DataError(f"cannot read the labels in {where}: expected {{\"labels\": [[\"NAME\", CLASS], ...]}} "
                        f"({type(e).__name__}: {e})") from None
    missing = [n for n in names if n not in table]
    if missing:
        raise DataError(f"{where} gives no label for {len(missing)} image(s), e.g. {missing[0]}")
    return torch.tensor([table[n] for n in names], dtype=torch.int64)


def load_images(path: str | os.PathLike) -> Dataset:
    """The images of a folder (recursively) or a ``.zip``, sorted by relative path, as ``uint8`` ``[N, C, H, W]``.

    Image files are those ending in one of :data:`IMAGE_SUFFIXES` (any case); other files are ignored,
    but for ``dataset.json`` at the top, which gives labels (EDM's ``dataset_tool.py`` format).  All
    images must have one size and channel count.
    """
    path = Path(path)
    is_image = lambda name: name.lower().endswith(IMAGE_SUFFIXES)  # noqa: E731
    if path.is_dir():
        files = {p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file() and is_image(p.name)}
        names = sorted(files)
        read = lambda n: files[n].read_bytes()  # noqa: E731
        meta_file = path / "dataset.json"
        meta = meta_file.read_bytes() if meta_file.is_file() else None
        archive = None
    elif path.is_file():
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise DataError(f"{path} is neither a folder nor a readable zip file: {e}") from None
        entries = [n for n in archive.namelist() if not n.endswith("/") and not n.startswith("__MACOSX/")]
        names = sorted(n for n in entries if is_image(n))
        read = archive.read
        meta = archive.read("dataset.json") if "dataset.json" in entries else None
    else:
        raise DataError(f"image folder or zip file not found: {path}")
    try:
        if not names:
            raise DataError(f"no images in {path}: expected files ending in {', '.join(IMAGE_SUFFIXES)}")
        first = _decode(read(names[0]), f"{path}/{names[0]}")
        check_memory(f"{len(names)} images of {_chw(first.shape)} in {path}",
                     array_bytes(len(names), *first.shape, itemsize=1), "8-bit pixels, C x H x W of the first image")
        out = np.empty((len(names), *first.shape), dtype=np.uint8)
        out[0] = first
        for i, name in enumerate(names[1:], 1):
            img = _decode(read(name), f"{path}/{name}")
            if img.shape != first.shape:
                raise DataError(f"images in {path} differ in size: {names[0]} is {_chw(first.shape)}, {name} is "
                                f"{_chw(img.shape)} (C x H x W); resize them to one size first")
            out[i] = img
        labels = _image_labels(meta, names, f"{path}/dataset.json")
    finally:
        if archive is not None:
            archive.close()
    logger.info("read %d images %s from %s", len(names), _chw(first.shape), path)
    return Dataset(torch.from_numpy(out), labels, f"images:{path}")


def _chw(shape) -> str:
    return "x".join(str(v) for v in shape)


def cifar10(split: str = "train", root: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """CIFAR-10 (``train``: 50,000 images; ``test``: 10,000) as ``uint8`` ``[N, 3, 32, 32]`` with labels 0..9.

    Read by torchvision from ``ROOT/cifar10`` (see :func:`default_data_dir`), which checks the files'
    MD5 sums before it unpickles them; downloaded there first when missing and ``download`` is true.
    Offline, a :class:`DataError` names the archive and the folder to put it in.
    """
    if split not in ("train", "test"):
        raise DataError(f"unknown CIFAR-10 split {split!r}; valid: train, test")
    try:
        # heavy: torchvision.datasets takes seconds to import; only CIFAR-10 needs it
        from torchvision.datasets import CIFAR10
    except ImportError:
        raise DataError("CIFAR-10 needs the package torchvision (pip install torchvision)") from None
    folder = (Path(root) if root is not None else default_data_dir()) / "cifar10"
    url = getattr(CIFAR10, "url", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
    by_hand = (f"download {url} elsewhere and put it into {folder} (the archive "
               f"{getattr(CIFAR10, 'filename', 'cifar-10-python.tar.gz')}, or its extracted folder "
               f"{getattr(CIFAR10, 'base_folder', 'cifar-10-batches-py')}/)")
    try:
        ds = CIFAR10(str(folder), train=split == "train", download=False)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        if not download:
            raise DataError(f"CIFAR-10 is not in {folder}; {by_hand}") from None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            ds = CIFAR10(str(folder), train=split == "train", download=True)
        except Exception as e:  # URLError, timeouts, HTTP errors, a corrupt archive: all "not fetched"
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise DataError(f"cannot download CIFAR-10 ({type(e).__name__}{': ' + msg if msg else ''}); "
                            f"offline, {by_hand}") from None
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2)))
    return Dataset(x, torch.as_tensor(np.asarray(ds.targets, dtype=np.int64)), f"cifar10:{split}", num_classes=10)


def _load_npz(path: str, key: str) -> Dataset:
    try:
        with np.load(path) as f:
            if not f.files:
                raise DataError(f"NPZ file {path} holds no arrays")
            key = key or f.files[0]
            if key not in f.files:
                raise DataError(f"NPZ file {path} has no array {key!r}; it has: {', '.join(f.files)}")
            shape, dtype = npz_header(f, key)
            as_float = dtype != np.uint8 and not np.issubdtype(dtype, np.floating)
            check_memory(f"NPZ data {path}:{key} of shape {shape} ({dtype})",
                         array_bytes(1, *shape, itemsize=dtype.itemsize + 8 * as_float),
                         "the array as stored" + (", and its float64 copy" if as_float else ""))
            arr = f[key]
            labels = f["labels"] if key != "labels" and "labels" in f.files else None
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read NPZ file {path}: {e}") from None
    if labels is not None and (labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer)
                               or arr.ndim < 1 or labels.shape[0] != arr.shape[0]):
        raise DataError(f"NPZ file {path}: 'labels' must be integers [N] for {key!r} of shape {arr.shape}; found "
                        f"{labels.dtype} of shape {labels.shape}")
    data = torch.as_tensor(arr)
    return Dataset(data, None if labels is None else torch.as_tensor(labels.astype(np.int64)),
                   f"npz:{path}" + (f":{key}" if key else ""))


def load_dataset(spec: str, *, root: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """The whole dataset named by ``spec`` (``npz:``, ``digits``, ``images:``, ``cifar10``), in its fixed order."""
    if spec == "digits":
        return Dataset(digits(), digit_labels(), "digits", num_classes=10)
    if spec.startswith("npz:"):
        path, _, key = spec[4:].partition(":")
        ds = _load_npz(path, key)
        return Dataset(ds.data, ds.labels, spec)
    if spec.startswith("images:"):
        if not spec[7:]:
            raise DataError("empty data SPEC images: expected images:FOLDER or images:FILE.zip")
        return load_images(spec[7:])
    if spec == "cifar10" or spec.startswith("cifar10:"):
        return cifar10(spec.partition(":")[2] or "train", root=root, download=download)
    valid = ", ".join(k for k in DATA_KINDS if k not in ("target", "model"))
    raise DataError(f"unknown dataset SPEC {spec!r}; valid: {valid}")


#: Model samples drawn for ``--data model`` when no pool size is given: 1024 x 255 NFE, once per run, where
#: a fresh sample per probe draw cost 255 NFE per sample and interval (4096 samples, 1M NFE, for a 64 x 64
#: probe); the pool's own Monte-Carlo error is that of a 1024-image dataset.
MODEL_POOL = 1024


class ModelSampler:
    """Data sampler over a pool of the model's own samples: a :class:`LabelledSampler` over them.

    The pool -- ``pool`` samples of seeds ``0 .. pool - 1``, Heun on EDM's rho = 7 schedule with ``steps``
    steps (:func:`adasched.samplers.generate`, which also draws a conditional model's class per seed) -- is
    drawn at the first call, on ``device`` in ``dtype``; row ``j`` of a draw is then pool row
    ``h(seeds[j]) mod pool`` and :meth:`labels` its class.
    """

    def __init__(self, denoise, shape, *, pool: int = MODEL_POOL, steps: int = 128, batch: int = 256,
                 device="cpu", dtype=torch.float64):
        if not isinstance(pool, int) or isinstance(pool, bool) or pool < 1:
            raise DataError(f"model sample pool must be a positive integer, got {pool!r}")
        self.denoise, self.shape, self.pool, self.steps = denoise, tuple(shape), pool, steps
        self.batch, self.device, self.dtype = batch, device, dtype
        self.description = f"model:{pool}"
        self._sampler = None

    def pooled(self) -> LabelledSampler:
        """The sampler over the pool, drawing the pool at the first call."""
        if self._sampler is None:
            lo = max(float(getattr(self.denoise, "sigma_min", 0.002)), 0.002)
            hi = min(float(getattr(self.denoise, "sigma_max", 80.0)), 80.0)
            logger.info("drawing the model's sample pool: %d samples, %d NFE each", self.pool, 2 * self.steps - 1)
            with torch.no_grad():
                out = generate(self.denoise, sigmas_edm(self.steps, lo, hi), "heun", range(self.pool), self.shape,
                               batch=self.batch, device=self.device, dtype=self.dtype)
            self._sampler = LabelledSampler(out["samples"].to(torch.float64), out.get("labels"),
                                            description=self.description,
                                            num_classes=int(getattr(self.denoise, "label_dim", 0) or 0) or None)
        return self._sampler

    def __call__(self, seeds):
        return self.pooled()(seeds)

    def labels(self, seeds):
        return self.pooled().labels(seeds)


def load_data_sampler(spec: str, model, *, root: str | os.PathLike | None = None, download: bool = True,
                      device="cpu", dtype=torch.float64):
    """The data sampler named by ``spec`` for ``model`` (see the module docstring).

    ``root`` and ``download`` apply to ``cifar10`` (the data folder, and whether a missing dataset
    may be downloaded); ``device`` and ``dtype`` to ``model`` (where and how its pool is drawn).
    """
    if spec == "target":
        if not callable(getattr(model, "sample", None)):
            raise DataError("--data target needs an analytic model (gmm:, powerlaw:); "
                            f"give one of: {', '.join(DATA_KINDS)}")
        return target_sampler(model, description="target")
    if spec == "model" or spec.startswith("model:"):
        pool = spec.partition(":")[2]
        if pool and not pool.isdigit():
            raise DataError(f"data SPEC {spec!r}: the pool size must be a positive integer (model:POOL)")
        return ModelSampler(model, model.shape, pool=int(pool or MODEL_POOL), device=device, dtype=dtype)
    if spec == "digits" or spec.startswith(("npz:", "images:", "cifar10:")) or spec == "cifar10":
        return load_dataset(spec, root=root, download=download).sampler()
    raise DataError(f"unknown data SPEC {spec!r}; valid: {', '.join(DATA_KINDS)}")
