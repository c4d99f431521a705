"""FID through clean-fid with resources the caller places, and Fréchet distances in other feature spaces.

FID (Heusel et al. 2017) is a named protocol over a pure function (``style.md`` item 6).  Every image metric
here follows one pipeline:

1. samples in the data range [-1, 1] are quantised to uint8 as EDM saves its PNGs (``x * 127.5 + 128``,
   clipped, truncated; :func:`to_uint8`); single-channel images are repeated to three channels (EDM, and
   clean-fid's ``convert("RGB")``);
2. clean-fid 0.1.35's own feature path, ``cleanfid.fid.get_model_features`` (the code behind
   ``compute_fid(gen=...)``): the protocol's resize (``cleanfid.resize.build_resizer``) per image, then
   ``cleanfid.fid.get_batch_features`` through the feature extractor, in batches on the caller's device;
3. mean and covariance in float64 (:func:`adasched.metrics.gaussian_stats`) and
   :func:`adasched.metrics.frechet_distance` against reference statistics;
4. one value per disjoint seed range, summarised by :func:`adasched.metrics.aggregate_seed_ranges` into an
   :class:`adasched.metrics.ImageMetric` that carries the protocol, image count, seed ranges, reference and
   feature extractor with their hashes.

**Protocols** (clean-fid's modes; ``anchors.md`` §4.2):

* ``legacy_tensorflow``: no resize outside the network; the TorchScript Inception resizes inside
  (``InceptionV3W(resize_inside=True)``) as TensorFlow's FID code and EDM's ``fid.py`` do.  The protocol for
  numbers compared with published ones, with EDM's reference statistics (``edm:cifar10-32x32``) or clean-fid's
  ``legacy_tensorflow`` statistics.
* ``clean``: PIL bicubic resize to 299x299 of float data per channel outside the network, then
  ``(x - 128) / 128`` (``resize_inside=False``).  Clean-FID values are not comparable with legacy ones.

**EDM's protocol** (``anchors.md`` §4.1): 50,000 images (:data:`FID_NUM_IMAGES`; fewer is an error), computed
three times on the seed ranges :data:`EDM_SEED_RANGES` with the minimum reported; the mean and the spread are
recorded beside it.

**Resources.**  clean-fid itself downloads its Inception weights to ``/tmp/inception-2015-12-05.pt`` and its
statistics into ``site-packages/cleanfid/stats``, unverified.  Here both are workflow resources fetched by
:func:`adasched.download.fetch` into a folder the caller names (``resources``) and checked against a pinned
sha256 or the hash recorded in the lock file (default ``resources/adasched-lock.json``; trust on first
download, as :mod:`adasched.registry` explains); the TorchScript network is loaded from that folder with
``InceptionV3W(path=resources, download=False)``.  clean-fid's own download helpers are never called.  Offline
(``download=False``), a missing file is a :class:`MissingResourceError` naming its path and URL.

Reference statistics SPECs: ``edm:NAME`` (EDM's ``fid-refs``, :data:`adasched.registry.FID_REFS`; only with
``legacy_tensorflow``), ``cleanfid:DATASET/RES/SPLIT`` (clean-fid's precomputed statistics for the chosen
protocol, e.g. ``cleanfid:cifar10/32/train``), or a path to an ``.npz`` holding ``mu`` and ``sigma``.

**Cost.**  clean-fid's generator path resizes one image at a time on the CPU: with the ``clean`` protocol
that PIL resize, not the network, sets the pace (about 330 images/s on the H100 machine's host, so some
150 s per 50,000 images); ``legacy_tensorflow`` runs at the network's speed (about 4,200 images/s there
for an Inception-v3-sized stand-in, batch 250).

**Offline metric** ``digits_fd``: the same pipeline with the penultimate features of the digits classifier
(:mod:`adasched.classifier`) and no resize, against the real digits of the classifier's training split.  It
is reported under its own name, never as FID (:class:`~adasched.metrics.ImageMetric` refuses that).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from adasched.classifier import DigitsClassifier, digits_split, load_classifier, train_digits_classifier
from adasched.data import digits
from adasched.download import fetch
from adasched.errors import AdaschedError, DataError, DownloadError
from adasched.io import npz_header, save_npz, sha256_file
from adasched.limits import array_bytes, check_memory
from adasched.metrics import FID_NAME, INCEPTION_EXTRACTOR, ImageMetric, frechet_distance, gaussian_stats
from adasched.progress import Progress, report
from adasched.registry import get_fid_ref, get_model

__all__ = [
    "FID_PROTOCOLS", "FID_NUM_IMAGES", "EDM_SEED_RANGES", "INCEPTION_URL", "INCEPTION_FILENAME",
    "CLEANFID_STATS_URL", "LOCK_NAME", "MissingResourceError", "Resource", "FeatureExtractor", "pick_device",
    "to_uint8", "image_features", "folder_features", "feature_stats", "ensure_resource", "inception_resource",
    "inception_extractor", "reference_resource", "load_reference", "save_stats", "frechet_runs", "compute_fid",
    "digits_extractor", "digits_reference", "compute_digits_fd", "load_runs", "image_metrics", "DIGITS_FD_NAME",
    "DIGITS_SHAPE", "check_image_shape",
]

log = logging.getLogger(__name__)

#: clean-fid modes adasched runs as FID protocols.
FID_PROTOCOLS = ("legacy_tensorflow", "clean")
#: Images per FID run (EDM's ``fid.py calc --num``; fewer is an error).
FID_NUM_IMAGES = 50_000
#: EDM's three disjoint seed ranges ("we calculated each FID three times and reported the minimum").
EDM_SEED_RANGES = ((0, 50_000), (50_000, 100_000), (100_000, 150_000))
#: The TorchScript translation of TensorFlow's inception-2015-12-05 that clean-fid (and StyleGAN2-ADA) load.
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_FILENAME = "inception-2015-12-05.pt"
#: NVIDIA publishes no checksum: ``None`` means trust on first download, recorded in the lock file.
INCEPTION_SHA256: str | None = None
CLEANFID_STATS_URL = "https://www.cs.cmu.edu/~clean-fid/stats/"
LOCK_NAME = "adasched-lock.json"
DIGITS_FD_NAME = "digits_fd"
#: The image shape the digits classifier takes, ``(C, H, W)``.
DIGITS_SHAPE = (1, 8, 8)

_RESIZE_INSIDE = {"legacy_tensorflow": True, "clean": False}  # cleanfid.features.build_feature_extractor


class MissingResourceError(DownloadError, FileNotFoundError):
    """A resource (Inception weights, reference statistics) is not in the resources folder and cannot be fetched."""


@dataclass(frozen=True)
class Resource:
    """A file the metrics need: where it comes from (``url``), its pinned hash if any, its name in the folder."""

    name: str
    url: str
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as given; ``None`` or ``"auto"``: CUDA when there is one, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _lock(resources, lockfile) -> Path:
    return Path(lockfile) if lockfile is not None else Path(resources) / LOCK_NAME


def ensure_resource(resource: Resource, resources: str | os.PathLike, *, download: bool = True,
                    lockfile: str | os.PathLike | None = None) -> Path:
    """The verified path of ``resource`` in the folder ``resources``; fetched there when missing and allowed.

    Only ``resources / resource.filename`` is looked at.  A present file is checked against the pinned or
    recorded hash (:func:`adasched.download.fetch`); a missing one is downloaded when ``download`` is true.

    Raises
    ------
    MissingResourceError
        The file is missing and ``download`` is false, or the download failed; the message names the file's
        path and URL.
    DownloadError
        A present file does not match its pinned or recorded hash.
    """
    path = Path(resources) / resource.filename
    how = (f"download {resource.url} and put it at {path} (its sha256 is then recorded in "
           f"{_lock(resources, lockfile)})")
    if not path.exists() and not download:
        raise MissingResourceError(f"{resource.name} not found: {path} does not exist and downloads are off; {how}")
    try:
        return fetch(resource.url, path, sha256=resource.sha256, lockfile=_lock(resources, lockfile))
    except DownloadError as e:
        if path.exists():
            raise
        raise MissingResourceError(f"{resource.name} not found: {path} does not exist and could not be "
                                   f"downloaded ({e}); {how}") from None


def inception_resource() -> Resource:
    return Resource("Inception weights (clean-fid TorchScript inception-2015-12-05)", INCEPTION_URL,
                    INCEPTION_SHA256)


def _check_protocol(protocol: str) -> str:
    if protocol not in FID_PROTOCOLS:
        raise AdaschedError(f"unknown FID protocol {protocol!r}; valid: {', '.join(FID_PROTOCOLS)}")
    return protocol


@dataclass(frozen=True)
class FeatureExtractor:
    """A feature map for image metrics, as clean-fid calls it.

    ``fn`` takes a float batch ``[B, 3, H, W]`` with values in [0, 255] on the metric's device (after the
    resize) and returns ``[B, d]`` features; ``mode`` is the clean-fid mode whose resize path feeds it
    (``clean`` or ``legacy_tensorflow``), unless ``resize`` (an ``[H, W, 3]`` float array to array function)
    replaces it; ``name`` and ``sha256`` identify the network (recorded in every metrics file); ``info`` is
    recorded beside them.  ``input_shape``: the one image shape ``(C, H, W)`` the network takes (``None``:
    any, the resize adapts it), checked against the images before any work.
    """

    name: str
    sha256: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    mode: str = "clean"
    resize: Callable[[np.ndarray], np.ndarray] | None = None
    info: dict = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.mode not in ("clean", "legacy_tensorflow", "legacy_pytorch"):
            raise AdaschedError(f"feature extractor {self.name!r}: unknown clean-fid mode {self.mode!r}; valid: "
                                f"clean, legacy_tensorflow, legacy_pytorch")

    def record(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, **self.info}


def inception_extractor(protocol: str, resources: str | os.PathLike, *, device=None, download: bool = True,
                        lockfile: str | os.PathLike | None = None) -> FeatureExtractor:
    """clean-fid's TorchScript Inception for ``protocol``, loaded from ``resources`` (never from ``/tmp``).

    ``legacy_tensorflow`` resizes inside the network, ``clean`` outside (the mapping of clean-fid's
    ``build_feature_extractor``); no ``DataParallel`` wrapper.
    """
    from cleanfid.inception_torchscript import InceptionV3W  # heavy: clean-fid loads only where FID is computed

    _check_protocol(protocol)
    path = ensure_resource(inception_resource(), resources, download=download, lockfile=lockfile)
    digest = sha256_file(path)
    with warnings.catch_warnings():
        # torch 2.11+ deprecates TorchScript loading (a FutureWarning or DeprecationWarning): known, see
        # ecosystem.md B; the network exists only as TorchScript.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated")
        try:
            net = InceptionV3W(path=str(path.parent), download=False, resize_inside=_RESIZE_INSIDE[protocol])
        except RuntimeError as e:
            raise DataError(f"cannot load the Inception TorchScript {path}: {str(e).splitlines()[0]}") from None
    net = net.to(pick_device(device)).eval()
    return FeatureExtractor(name=f"{INCEPTION_EXTRACTOR} (clean-fid TorchScript, "
                                 f"resize_inside={_RESIZE_INSIDE[protocol]})",
                            sha256=digest, fn=net, mode=protocol, info={"path": str(path), "url": INCEPTION_URL})


# ----------------------------------------------------------------------------------------------------------------
# Features through clean-fid's code path


def to_uint8(images) -> np.ndarray:
    """``[N, C, H, W]`` images in [-1, 1] as uint8, EDM's way (``x * 127.5 + 128``, clip, truncate); uint8 kept."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"image metrics need images [N, C, H, W] with C = 1 or 3; found shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"images must be float in [-1, 1] or uint8, found {x.dtype}")
    return np.clip(x.astype(np.float64) * 127.5 + 128, 0, 255).astype(np.uint8)


def check_image_shape(shape: Sequence[int], expected: Sequence[int] | None, name: str) -> None:
    """Images of ``shape`` (``[N, C, H, W]``) against the shape ``name`` takes (``None``: any): one error naming both."""
    if expected is not None and tuple(shape[1:]) != tuple(expected):
        raise DataError(f"{name} takes images of shape {tuple(expected)}; the samples have shape {tuple(shape[1:])}")


def image_features(images, extractor: FeatureExtractor, *, batch_size: int = 100, device=None,
                   progress: Progress | None = None, task: str = "features") -> np.ndarray:
    """Features ``[N, d]`` of ``images`` (float in [-1, 1] or uint8, ``[N, C, H, W]``) via clean-fid.

    The images go through ``cleanfid.fid.get_model_features`` as a "generator" that returns them batch by
    batch (the last batch padded, then cut), so the resize and feature code is clean-fid's own; the latent
    noise clean-fid draws for a generator is drawn under a forked RNG, leaving the global state untouched.
    ``progress(task, images done, N)`` (:mod:`adasched.progress`) follows the batches.
    """
    from cleanfid import fid as cfid  # heavy: clean-fid loads only where FID is computed

    shape = np.shape(images)
    check_image_shape(shape, extractor.input_shape, extractor.name)
    check_memory(f"features of images [N, C, H, W] = {list(shape)}", array_bytes(1, *shape, itemsize=9),
                 "a float64 copy and the 8-bit images")
    u8 = torch.from_numpy(np.ascontiguousarray(to_uint8(images)))
    if u8.shape[1] == 1:
        u8 = u8.expand(-1, 3, -1, -1)
    n, batch_size = len(u8), int(batch_size)
    if n == 0:
        raise DataError("no images to measure")
    cursor = [0]

    def gen(z):
        i = cursor[0]
        cursor[0] += batch_size
        report(progress, task, min(i, n), n)
        b = u8[i:i + batch_size]
        if len(b) < batch_size:
            b = torch.cat([b, b[:1].expand(batch_size - len(b), -1, -1, -1)])
        return b.to(torch.float32)  # values 0..255, as clean-fid's folder loader gives them

    with torch.random.fork_rng(devices=[]):
        feats = cfid.get_model_features(gen, extractor.fn, mode=extractor.mode, z_dim=1, num_gen=n,
                                        batch_size=batch_size, device=pick_device(device), verbose=False,
                                        custom_fn_resize=extractor.resize)
    assert cursor[0] >= n and len(feats) == n
    report(progress, task, n, n)
    return np.asarray(feats, dtype=np.float64).reshape(n, -1)


def folder_features(fdir: str | os.PathLike, extractor: FeatureExtractor, *, batch_size: int = 100, device=None,
                    num_workers: int = 2, num: int | None = None) -> np.ndarray:
    """Features of the images in a folder or ``.zip`` (PNG, JPEG, ...; ``cleanfid.fid.get_folder_features``)."""
    from cleanfid import fid as cfid  # heavy: clean-fid loads only where FID is computed

    if not Path(fdir).exists():
        raise DataError(f"image folder not found: {fdir}")
    feats = cfid.get_folder_features(str(fdir), extractor.fn, num_workers=int(num_workers), num=num,
                                     batch_size=int(batch_size), device=pick_device(device), mode=extractor.mode,
                                     custom_fn_resize=extractor.resize, verbose=False)
    return np.asarray(feats, dtype=np.float64)


def feature_stats(images, extractor: FeatureExtractor, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of the features of ``images`` (:func:`image_features`)."""
    return gaussian_stats(image_features(images, extractor, **kwargs))


def save_stats(path: str | os.PathLike, mu, sigma) -> None:
    """Write reference statistics as an ``.npz`` with ``mu`` and ``sigma`` (EDM's and clean-fid's format)."""
    save_npz(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


# ----------------------------------------------------------------------------------------------------------------
# Reference statistics


def reference_resource(spec: str, protocol: str) -> Resource | None:
    """The downloadable resource named by a reference SPEC, or ``None`` for a local ``.npz`` path."""
    _check_protocol(protocol)
    kind, _, arg = spec.partition(":")
    if kind == "edm" and arg:
        if protocol != "legacy_tensorflow":
            raise AdaschedError(f"EDM's reference statistics ({spec}) were made by EDM's fid.py (TensorFlow "
                                f"Inception, resize inside the network): use them with the legacy_tensorflow "
                                f"protocol, or clean-fid's {protocol!r} statistics (cleanfid:DATASET/RES/SPLIT)")
        ref = get_fid_ref(arg)
        return Resource(f"EDM FID reference statistics {ref.name}", ref.url, ref.sha256)
    if kind == "cleanfid" and arg:
        parts = arg.split("/")
        if len(parts) != 3 or not all(parts):
            raise AdaschedError(f"malformed reference {spec!r}; expected cleanfid:DATASET/RES/SPLIT, "
                                f"e.g. cleanfid:cifar10/32/train")
        name, res, split = parts
        return Resource(f"clean-fid statistics {name} {res}px {split} ({protocol})",
                        f"{CLEANFID_STATS_URL}{name}_{protocol}_{split}_{res}.npz".lower())
    return None


def _load_npz_stats(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as f:
            if "mu" not in f.files or "sigma" not in f.files:
                raise DataError(f"{path} holds no reference statistics: expected arrays mu and sigma, "
                                f"found {', '.join(f.files) or 'none'}")
            return np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
    except FileNotFoundError:
        raise DataError(f"reference statistics not found: {path}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read reference statistics {path}: {e}") from None


def load_reference(spec: str, protocol: str, resources: str | os.PathLike, *, download: bool = True,
                   lockfile: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(mu, sigma, info)`` of a reference SPEC; ``info`` (name, path, url, sha256) goes into the metrics file."""
    resource = reference_resource(spec, protocol)
    if resource is None:
        path = Path(spec)
        if path.suffix != ".npz":
            raise AdaschedError(f"unknown reference {spec!r}; expected edm:NAME, cleanfid:DATASET/RES/SPLIT "
                                f"or a path to an .npz with mu and sigma")
        log.warning("reference %s is a local file: its statistics must have been made with the %s protocol",
                    path, protocol)
        url = None
    else:
        path = ensure_resource(resource, resources, download=download, lockfile=lockfile)
        url = resource.url
    mu, sigma = _load_npz_stats(path)
    return mu, sigma, {"name": spec, "path": str(path), "url": url, "sha256": sha256_file(path)}


# ----------------------------------------------------------------------------------------------------------------
# Runs over seed ranges


def _take(seeds, images, num_images: int | None, what: str):
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    if len(seeds) != len(images):
        raise DataError(f"{what}: {len(seeds)} seeds for {len(images)} images")
    if num_images is not None:
        if len(seeds) < num_images:
            raise DataError(f"{what} holds {len(seeds)} images; the metric needs {num_images} per seed range "
                            f"(pass a smaller --num-images to measure fewer, which is not comparable with "
                            f"published numbers)")
        seeds, images = seeds[:num_images], images[:num_images]
    if len(np.unique(seeds)) != len(seeds):
        raise DataError(f"{what} repeats seeds")
    return seeds, images


def frechet_runs(name: str, runs: Sequence, extractor: FeatureExtractor, ref_mu, ref_sigma, reference: dict, *,
                 protocol: str, num_images: int | None = None, batch_size: int = 100, device=None,
                 aggregate: str = "min", progress: Progress | None = None) -> ImageMetric:
    """The Fréchet distance of each run's features to the reference statistics, as an :class:`ImageMetric`.

    ``runs``: ``(seeds, images)`` pairs on disjoint seeds; each is cut to its first ``num_images`` images (all
    when ``None``; then every run must have as many).  The pipeline is the module's (uint8, clean-fid's feature
    path, :func:`~adasched.metrics.gaussian_stats`, :func:`~adasched.metrics.frechet_distance`).
    """
    values, ranges, counts = [], [], set()
    for k, (seeds, images) in enumerate(runs):
        seeds, images = _take(seeds, images, num_images, f"run {k}")
        mu, sigma = feature_stats(images, extractor, batch_size=batch_size, device=device, progress=progress,
                                  task=f"{name} run {k + 1}/{len(runs)}")
        values.append(frechet_distance(mu, sigma, ref_mu, ref_sigma))
        ranges.append((int(seeds.min()), int(seeds.max()) + 1))
        counts.add(len(seeds))
        log.info("%s run %d (seeds %d..%d, %d images): %.6g", name, k, ranges[-1][0], ranges[-1][1] - 1,
                 len(seeds), values[-1])
    if len(counts) != 1:
        raise DataError(f"{name}: runs have different image counts {sorted(counts)}; give num_images")
    return ImageMetric(name=name, protocol=protocol, num_images=counts.pop(), values=values, seed_ranges=ranges,
                       reference=reference, feature_extractor=extractor.record(), aggregate=aggregate)


def compute_fid(runs: Sequence, reference: str, *, protocol: str, resources: str | os.PathLike,
                num_images: int | None = FID_NUM_IMAGES, download: bool = True,
                lockfile: str | os.PathLike | None = None, batch_size: int = 100, device=None,
                extractor: FeatureExtractor | None = None, progress: Progress | None = None) -> ImageMetric:
    """FID of each run against ``reference`` under ``protocol``; the minimum over runs is the headline.

    ``extractor`` replaces the Inception network (tests); its name must still be Inception's for the result
    to be called FID.
    """
    _check_protocol(protocol)
    mu, sigma, ref = load_reference(reference, protocol, resources, download=download, lockfile=lockfile)
    if extractor is None:
        extractor = inception_extractor(protocol, resources, device=device, download=download, lockfile=lockfile)
    return frechet_runs(FID_NAME, runs, extractor, mu, sigma, ref, protocol=protocol, num_images=num_images,
                        batch_size=batch_size, device=device, progress=progress)


# ----------------------------------------------------------------------------------------------------------------
# The offline metric: digits_fd


def _state_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def digits_extractor(model, *, device=None) -> FeatureExtractor:
    """The digits classifier's penultimate features as a :class:`FeatureExtractor` (no resize)."""
    model = model.to(pick_device(device)).eval()

    def fn(x: torch.Tensor) -> torch.Tensor:
        return model.features(x[:, :1] / 127.5 - 1)  # uint8 0..255 back to the data range [-1, 1]

    info = {k: model.info[k] for k in ("seed", "epochs", "test_accuracy", "split_seed", "test_fraction")
            if k in getattr(model, "info", {})}
    return FeatureExtractor(name="adasched-digits-classifier (penultimate features)", sha256=_state_sha256(model),
                            fn=fn, mode="clean", resize=_identity, info=info, input_shape=DIGITS_SHAPE)


def _identity(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32)


def _digits_split(model):
    info = getattr(model, "info", {})
    return digits_split(info.get("test_fraction", 0.2), info.get("split_seed", 0))


def digits_reference(extractor: FeatureExtractor, model, *, batch_size: int = 256,
                     device=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Statistics of the real digits the classifier was trained on (its training split), and their record."""
    train, _ = _digits_split(model)
    images = to_uint8(digits()[train])
    mu, sigma = feature_stats(images, extractor, batch_size=batch_size, device=device)
    info = getattr(model, "info", {})
    name = (f"sklearn-digits training split (test_fraction={info.get('test_fraction', 0.2)}, "
            f"split_seed={info.get('split_seed', 0)}, {len(train)} images)")
    return mu, sigma, {"name": name, "sha256": hashlib.sha256(images.tobytes()).hexdigest(),
                       "num_images": int(len(train))}


def _load_classifier(classifier, device):
    if isinstance(classifier, DigitsClassifier):
        return classifier
    if classifier is None:
        log.info("training the digits classifier (seed 0)")
        return train_digits_classifier(seed=0)
    return load_classifier(classifier, device=pick_device(device))


def compute_digits_fd(runs: Sequence, *, classifier=None, num_images: int | None = None, batch_size: int = 256,
                      device=None, progress: Progress | None = None) -> ImageMetric:
    """``digits_fd``: Fréchet distance of each run to the real digits in the digits classifier's feature space.

    ``classifier``: a :class:`~adasched.classifier.DigitsClassifier`, a path to a saved one, or ``None`` to
    train one (seed 0).  Offline; never called FID.
    """
    for _, images in runs:  # before the classifier is trained or loaded
        check_image_shape(np.shape(images), DIGITS_SHAPE, DIGITS_FD_NAME)
    model = _load_classifier(classifier, device)
    extractor = digits_extractor(model, device=device)
    mu, sigma, ref = digits_reference(extractor, model, batch_size=batch_size, device=device)
    return frechet_runs(DIGITS_FD_NAME, runs, extractor, mu, sigma, ref, protocol="digits-classifier-features",
                        num_images=num_images, batch_size=batch_size, device=device, progress=progress)


# ----------------------------------------------------------------------------------------------------------------
# From samples files (the CLI's entry)


def load_runs(paths: Sequence, *, num_images: int | None = None, seed_ranges: int | None = None) -> list:
    """``(seeds, samples)`` runs from samples NPZ files: one run per file, or ``seed_ranges`` consecutive chunks
    of ``num_images`` from a single file."""
    runs = []
    for path in paths:
        try:
            with np.load(path) as f:
                if "samples" not in f.files or "seeds" not in f.files:
                    raise DataError(f"{path} is not a samples file: needs arrays samples and seeds")
                (shape, dtype), (n, seed_dtype) = npz_header(f, "samples"), npz_header(f, "seeds")
                check_memory(f"samples file {path} of shape {shape}", array_bytes(1, *shape, itemsize=dtype.itemsize)
                             + array_bytes(1, *n, itemsize=seed_dtype.itemsize), "its samples and seeds as stored")
                runs.append((f["seeds"], f["samples"]))
        except FileNotFoundError:
            raise DataError(f"samples file not found: {path}") from None
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read samples file {path}: {e}") from None
    if seed_ranges is not None and seed_ranges > 1:
        if len(runs) != 1 or num_images is None:
            raise DataError("splitting into seed ranges takes one samples file and an image count per range")
        seeds, samples = runs[0]
        if len(seeds) < seed_ranges * num_images:
            raise DataError(f"{paths[0]} holds {len(seeds)} samples; {seed_ranges} seed ranges of {num_images} "
                            f"need {seed_ranges * num_images}")
        runs = [(seeds[k * num_images:(k + 1) * num_images], samples[k * num_images:(k + 1) * num_images])
                for k in range(seed_ranges)]
    seen: set = set()
    for k, (seeds, _) in enumerate(runs):
        s = set(np.asarray(seeds[:num_images] if num_images else seeds).tolist())
        if seen & s:
            raise DataError(f"seed ranges overlap: run {k} ({paths[min(k, len(paths) - 1)]}) reuses seeds; "
                            f"each run needs its own seeds (EDM: 0-49999, 50000-99999, 100000-149999)")
        seen |= s
    return runs


def _infer_reference(paths, protocol: str) -> str:
    """The FID reference of the model that made the samples (``edm:`` models), from the file's provenance."""
    try:
        with np.load(paths[0]) as f:
            prov = json.loads(str(f["provenance"])) if "provenance" in f.files else {}
        spec = str(prov.get("model", ""))
        if spec.startswith("edm:"):
            ref = f"edm:{get_model(spec[4:].split('#')[0]).fid_ref}"
            if protocol == "legacy_tensorflow":
                return ref
    except (AdaschedError, ValueError, OSError, KeyError):
        pass
    raise AdaschedError("FID needs reference statistics: --fid-ref edm:NAME (legacy_tensorflow), "
                        "cleanfid:DATASET/RES/SPLIT, or an .npz with mu and sigma")


def image_metrics(paths: Sequence, *, fid: str | None = None, fid_ref: str | None = None, digits_fd: bool = False,
                  classifier=None, num_images: int | None = None, seed_ranges: int | None = None,
                  resources: str | os.PathLike | None = None, lockfile: str | os.PathLike | None = None,
                  download: bool = True, device=None, batch_size: int = 100,
                  progress: Progress | None = None) -> tuple[dict, dict]:
    """Image metrics of samples NPZ files: ``({name: ImageMetric}, {"num_samples", "seeds"})``.

    ``fid``: a protocol of :data:`FID_PROTOCOLS` (``num_images`` defaults to :data:`FID_NUM_IMAGES`), with
    reference statistics ``fid_ref`` (inferred for samples of ``edm:`` models under ``legacy_tensorflow``) and
    resources in the folder ``resources``; ``digits_fd``: the offline digits metric (``num_images`` defaults to
    every sample).
    """
    if not fid and not digits_fd:
        raise AdaschedError("no image metric requested: give fid=PROTOCOL or digits_fd=True")
    out: dict = {}
    used: list = []
    if fid:
        _check_protocol(fid)
        if resources is None:
            raise AdaschedError("FID needs a resources folder for the Inception weights and reference statistics")
        n = num_images or FID_NUM_IMAGES
        runs = load_runs(paths, num_images=n, seed_ranges=seed_ranges)
        out[FID_NAME] = compute_fid(runs, fid_ref or _infer_reference(paths, fid), protocol=fid,
                                    resources=resources, num_images=n, download=download, lockfile=lockfile,
                                    batch_size=batch_size, device=device, progress=progress)
        used.append(out[FID_NAME])
    if digits_fd:
        runs = load_runs(paths, num_images=num_images, seed_ranges=seed_ranges)
        if num_images is None and len({len(s) for s, _ in runs}) > 1:
            num_images = min(len(s) for s, _ in runs)
        out[DIGITS_FD_NAME] = compute_digits_fd(runs, classifier=classifier, num_images=num_images,
                                                batch_size=batch_size, device=device, progress=progress)
        used.append(out[DIGITS_FD_NAME])
    first = used[0]
    ranges = [list(r) for r in first.seed_ranges]
    return out, {"num_samples": int(first.num_images * len(ranges)),
                 "seeds": ranges[0] if len(ranges) == 1 else ranges}
