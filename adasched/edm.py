"""Loading EDM network pickles (Karras et al. 2022) as adasched denoisers.

.. warning::
   **Unpickling executes code.**  An EDM pickle stores the Python *source* of the modules that
   define its networks and runs that source with ``exec`` while it is loaded, and any pickle can
   call any importable function.  A malicious file can therefore do anything you can.  Every file
   passes :func:`read_trusted_pickle`, which holds the trust rules and refuses an untrusted file
   before a single byte reaches :mod:`pickle` (``docs/security.md``).

Model SPEC: ``edm:SOURCE[#sha256=HEX]`` where SOURCE is

* a registered name, e.g. ``edm:edm-cifar10-32x32-cond-vp`` (see :func:`adasched.registry.list_models`),
  downloaded into the cache folder (:func:`default_cache_dir`) on first use;
* a URL (``https://``, ``http://``, ``file://``, ``hf://``), downloaded into the cache folder;
* a local path to a ``.pkl`` file.

The optional ``#sha256=HEX`` suffix pins the file's hash.  A download is checked against its pinned
hash, else against the hash that the cache folder's lock file (``adasched-lock.json``) recorded for
its URL; the first download of a registered but unpinned name records its hash there (trust on
first use of a curated URL).  Any other URL needs a pin, a record, or ``trust=True``, and with
``trust=True`` its hash is recorded at its first download, so later loads of that URL need no
``trust``.  A local path is trusted only by a pin (in the SPEC, or in the registry) or ``trust=True``:
no lock file makes it trusted.

The pickle format (EDM's ``torch_utils.persistence``, format version 6) is read by a small
clean-room shim, no EDM code is needed or vendored: each persistent object pickles as
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = {"type": "class", "version": 6, "module_src": SRC, "class_name": NAME, "state": STATE}``.
The shim runs ``SRC`` in a fresh module (one per distinct source), looks up ``NAME``, creates the
object without calling ``__init__`` and restores ``STATE``.  :func:`install_shim` registers the
modules that embedded sources import: ``dnnlib`` and ``dnnlib.util`` (``EasyDict``),
``torch_utils``, ``torch_utils.persistence`` (``persistent_class``, ``_reconstruct_persistent_obj``)
and ``torch_utils.misc`` (``constant``, ``const_like``, ``assert_shape``).  Where a real EDM
checkout is already imported (``torch_utils`` in :data:`sys.modules`), it is used instead.

The loaded file holds ``dict(ema=net, ...)``; :func:`load_edm` returns ``net = data["ema"]`` wrapped
in :class:`EDMDenoiser`, which follows adasched's denoiser protocol ``D(x, sigma)``.  Importing
this module registers the ``edm`` kind with :func:`adasched.models.load_model`.

Tested on pickles written in this format by the test suite (no real checkpoint can be downloaded
on the build machines); the whole pickled dict is reconstructed, so the sources of ``loss_fn`` and
``augment_pipe`` run too, and must import nothing beyond what the shim provides.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging
import os
import pickle
import re
import sys
import types
import urllib.parse
from pathlib import Path
from typing import Any

import torch

from adasched import registry
from adasched.denoisers import NetworkDenoiser
from adasched.download import fetch, lock_entry
from adasched.errors import AdaschedError, ModelError
from adasched.models import register

__all__ = ["EDMDenoiser", "load_edm", "parse_spec", "read_trusted_pickle", "install_shim",
           "default_cache_dir", "EDM_SIGMA_MIN", "EDM_SIGMA_MAX"]

logger = logging.getLogger(__name__)

#: EDM's sampler range; a net's own range (EDMPrecond: 0..inf) is clamped to it.
EDM_SIGMA_MIN = 0.002
EDM_SIGMA_MAX = 80.0

_FORMAT_VERSION = 6
_URL_SCHEMES = ("http://", "https://", "file://", "hf://")


# ----------------------------------------------------------------------------------------------
# Clean-room shim of the torch_utils.persistence pickle format


class EasyDict(dict):
    """A ``dict`` whose items are also attributes (what ``dnnlib.EasyDict`` pickles refer to)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]


_modules_by_src: dict[str, types.ModuleType] = {}
_src_by_module: dict[str, str] = {}
_decorated: dict[type, type] = {}


def _src_to_module(src: str) -> types.ModuleType:
    """Run ``src`` in a fresh module, once per distinct source."""
    module = _modules_by_src.get(src)
    if module is None:
        name = "_adasched_edm_persistent_" + hashlib.sha256(src.encode()).hexdigest()[:16]
        module = types.ModuleType(name)
        module.__file__ = f"<EDM pickle module {name}>"
        sys.modules[name] = module  # dataclasses, typing and pickling look classes up here
        _src_by_module[name] = src
        try:
            exec(compile(src, module.__file__, "exec"), module.__dict__)  # noqa: S102 (see docstring)
        except Exception as e:
            del sys.modules[name]
            raise ModelError(f"the module source embedded in the EDM pickle failed to run: "
                             f"{type(e).__name__}: {e}; the shim provides dnnlib.EasyDict and "
                             f"torch_utils.{{persistence,misc}} (constant, const_like, "
                             f"assert_shape)") from e
        _modules_by_src[src] = module
    return module


def persistent_class(orig_class: type) -> type:
    """Class decorator of the persistence format: instances pickle with their module's source."""
    if getattr(orig_class, "_adasched_persistent", False):
        return orig_class
    if orig_class in _decorated:
        return _decorated[orig_class]

    class Persistent(orig_class):  # type: ignore[misc, valid-type]
        _adasched_persistent = True
        _orig_class_name = orig_class.__name__

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_args = copy.deepcopy(args)
            self._init_kwargs = copy.deepcopy(kwargs)

        @property
        def init_args(self) -> tuple:
            return copy.deepcopy(getattr(self, "_init_args", ()))

        @property
        def init_kwargs(self) -> EasyDict:
            return EasyDict(copy.deepcopy(getattr(self, "_init_kwargs", {})))

        def __reduce__(self):
            meta = dict(type="class", version=_FORMAT_VERSION, module_src=_module_src(orig_class),
                        class_name=orig_class.__name__, state=dict(self.__dict__))
            return _reconstruct_persistent_obj, (meta,)

    Persistent.__name__ = orig_class.__name__
    Persistent.__qualname__ = orig_class.__qualname__
    Persistent.__module__ = orig_class.__module__
    Persistent.__doc__ = orig_class.__doc__
    _decorated[orig_class] = Persistent
    return Persistent


def _module_src(cls: type) -> str:
    src = _src_by_module.get(cls.__module__)
    if src is None:
        src = inspect.getsource(sys.modules[cls.__module__])
    return src


def _reconstruct_persistent_obj(meta: dict) -> Any:
    """The reduce function that every persistent object in an EDM pickle names."""
    meta = EasyDict(meta)
    if meta.get("version") != _FORMAT_VERSION:
        raise ModelError(f"EDM persistence format version {meta.get('version')!r} is not supported; "
                         f"expected {_FORMAT_VERSION}")
    if meta.get("type") != "class":
        raise ModelError(f"EDM persistent object of type {meta.get('type')!r} is not supported; "
                         f"expected 'class'")
    module = _src_to_module(meta["module_src"])
    try:
        cls = persistent_class(module.__dict__[meta["class_name"]])
    except KeyError:
        raise ModelError(f"EDM pickle names class {meta['class_name']!r}, which its embedded module "
                         f"source does not define") from None
    obj = cls.__new__(cls)
    state = EasyDict(meta.get("state") or {})
    setstate = getattr(obj, "__setstate__", None)
    if callable(setstate):
        setstate(state)
    else:
        obj.__dict__.update(state)
    return obj


def _constant(value, shape=None, dtype=None, device=None, memory_format=None) -> torch.Tensor:
    """A tensor of ``value`` broadcast to ``shape`` (what ``torch_utils.misc.constant`` returns)."""
    tensor = torch.as_tensor(value, dtype=dtype if dtype is not None else torch.get_default_dtype(),
                             device=device)
    if shape is not None:
        tensor = tensor.broadcast_to(shape)
    tensor = tensor.contiguous(memory_format=memory_format or torch.contiguous_format)
    return tensor


def _const_like(ref: torch.Tensor, value, shape=None, dtype=None, device=None,
                memory_format=None) -> torch.Tensor:
    """:func:`_constant` with ``ref``'s dtype and device unless given."""
    return _constant(value, shape=shape, dtype=ref.dtype if dtype is None else dtype,
                     device=ref.device if device is None else device, memory_format=memory_format)


def _assert_shape(tensor: torch.Tensor, ref_shape) -> None:
    """Check ``tensor.shape`` against ``ref_shape``, where ``None`` matches any size."""
    if tensor.ndim != len(ref_shape) or any(
            r is not None and int(r) != int(s) for s, r in zip(tensor.shape, ref_shape)):
        raise AssertionError(f"expected shape {tuple(ref_shape)}, found {tuple(tensor.shape)}")


def install_shim() -> None:
    """Register the shim's ``dnnlib`` and ``torch_utils`` modules in :data:`sys.modules`.

    Idempotent.  Modules already present (a real EDM or EDM2 checkout) are left alone.
    """
    def module(name: str, **attrs) -> types.ModuleType:
        if name in sys.modules:
            return sys.modules[name]
        m = types.ModuleType(name, f"adasched clean-room shim of {name} (see adasched.edm)")
        m.__dict__.update(attrs, __adasched_shim__=True)
        sys.modules[name] = m
        return m

    util = module("dnnlib.util", EasyDict=EasyDict)
    dnnlib = module("dnnlib", EasyDict=EasyDict, util=util)
    if getattr(dnnlib, "__adasched_shim__", False):
        dnnlib.util = util
    persistence = module("torch_utils.persistence", persistent_class=persistent_class,
                         _reconstruct_persistent_obj=_reconstruct_persistent_obj,
                         is_persistent=lambda obj: getattr(obj, "_adasched_persistent", False))
    misc = module("torch_utils.misc", constant=_constant, const_like=_const_like,
                  assert_shape=_assert_shape)
    tu = module("torch_utils", persistence=persistence, misc=misc)
    if getattr(tu, "__adasched_shim__", False):
        tu.persistence, tu.misc = persistence, misc
    if not getattr(persistence, "__adasched_shim__", False):
        logger.info("using the already imported EDM torch_utils.persistence (%s), not the shim",
                    getattr(persistence, "__file__", "?"))


# ----------------------------------------------------------------------------------------------
# Trust check, then unpickle


def _sha256_handle(f) -> str:
    h = hashlib.sha256()
    while block := f.read(1 << 20):
        h.update(block)
    return h.hexdigest()


def read_trusted_pickle(path: str | os.PathLike, *, pinned: str | None = None, recorded: str | None = None,
                        trust: bool = False) -> tuple[Any, str]:
    """Unpickle ``path`` only if a trust rule admits it; return ``(object, sha256)``.

    Unpickling runs code, so this is the one gate of every EDM pickle, and these are all the rules.
    The file is opened once, hashed, and unpickled from the same handle only when

    1. its sha256 equals ``pinned``, the hash pinned by the SPEC suffix ``#sha256=HEX``, by
       ``sha256=`` or, for a registered URL, by :mod:`adasched.registry`; a file with another hash is
       refused, ``trust`` or not;
    2. its sha256 is pinned in :mod:`adasched.registry` (the file is then that published checkpoint,
       wherever it lies);
    3. its sha256 equals ``recorded``, the hash that the lock file of the cache folder recorded for
       the URL or registered name that ``path`` is the cached download of (:func:`load_edm` passes it
       for such a download only, never for a local path, so no lock file, wherever it lies and
       whatever it records, makes a local file trusted); a download with another hash is refused;
    4. or ``trust`` is true (CLI ``--trust-pickle``): the caller vouches for the file.

    Anything else is refused before a byte reaches :mod:`pickle`, with one line naming the file, its
    sha256 and the ways to trust it.
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise ModelError(f"EDM pickle not found: {path}") from None
    except OSError as e:
        raise ModelError(f"cannot read EDM pickle {path}: {e.strerror}") from None
    with f:
        actual = _sha256_handle(f)
        if pinned is not None and actual != pinned:
            raise ModelError(f"refusing to unpickle {path}: its sha256 is {actual}, expected the "
                             f"pinned {pinned}")
        if pinned is None and recorded is not None and actual != recorded:
            raise ModelError(f"refusing to unpickle {path}: its sha256 is {actual}, expected "
                             f"{recorded}, recorded for its download")
        if pinned is None and recorded is None and actual not in registry.pinned_hashes():
            if not trust:
                raise ModelError(
                    f"refusing to unpickle {path} (sha256 {actual}): unpickling runs code, and the "
                    f"file is neither pinned nor a recorded download. Trust it by pinning its hash "
                    f"(SPEC suffix #sha256=HEX), by passing --trust-pickle (trust=True) if you trust "
                    f"its source, or by loading it by registered name or URL (edm:NAME, edm:URL) so "
                    f"that its download is checked against the cache folder's lock file")
            logger.warning("unpickling %s (sha256 %s), which is not pinned: trust=True", path, actual)
        f.seek(0)
        install_shim()
        try:
            obj = pickle.Unpickler(f).load()
        except AdaschedError:
            raise
        except Exception as e:
            raise ModelError(f"cannot unpickle {path} as an EDM pickle: {type(e).__name__}: {e}") \
                from e
    return obj, actual


# ----------------------------------------------------------------------------------------------
# SPEC resolution


def default_cache_dir() -> Path:
    """The cache folder of downloaded models and of their lock file ``adasched-lock.json``.

    ``$ADASCHED_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/adasched``, else ``~/.cache/adasched``;
    never a folder found under the working directory, where a project could ship a lock file and a
    "cached" checkpoint that trust its own pickles.
    """
    configured = os.environ.get("ADASCHED_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "adasched"


_PIN = re.compile(r"#sha256=([0-9a-fA-F]{64})$")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split ``[edm:]SOURCE[#sha256=HEX]`` into ``(SOURCE, HEX or None)``."""
    source = spec[4:] if spec.startswith("edm:") else spec
    pinned = None
    m = _PIN.search(source)
    if m:
        source, pinned = source[:m.start()], m.group(1).lower()
    elif "#sha256=" in source:
        raise ModelError(f"malformed pin in model SPEC {spec!r}: expected #sha256= and 64 hex digits")
    if not source:
        raise ModelError(f"empty model SPEC {spec!r}: expected edm:NAME, edm:URL or edm:PATH")
    return source, pinned


def _resolve(source: str, pinned: str | None, *, trust: bool, cache_dir: Path,
             lockfile: Path) -> tuple[Path, str | None, str | None]:
    """``(local path, pinned hash, recorded hash)`` of ``source``, downloading it when needed.

    The recorded hash is the lock file's record for the URL a download came from; a local path has
    none, whatever any lock file holds (:func:`read_trusted_pickle`).
    """
    stem = source[:-4] if source.endswith(".pkl") else source
    downloaded = source.startswith(_URL_SCHEMES) or (stem in registry.MODELS and not Path(source).exists())
    if not downloaded:
        if not Path(source).exists():
            raise ModelError(f"EDM pickle not found: {source} is neither a file, a URL nor a registered "
                             f"name; registered models: {', '.join(registry.list_models())}")
        return Path(source), pinned, None
    url = source if source.startswith(_URL_SCHEMES) else registry.get_model(stem).url
    curated = url in {m.url for m in registry.MODELS.values()}
    pinned = pinned or registry.pinned_sha256(url)
    if not (pinned or curated or trust or lock_entry(lockfile, url)):
        # Refuse before downloading: recording the hash of an arbitrary URL at its first
        # download would otherwise make it trusted.
        raise ModelError(f"refusing to load {url}: unpickling runs code, and its sha256 is neither "
                         f"pinned nor recorded for this URL in {lockfile}. Pin it (SPEC suffix "
                         f"#sha256=HEX), or pass --trust-pickle (trust=True) to record it at its first "
                         f"download")
    name = urllib.parse.urlparse(url).path.rsplit("/", 1)[-1] or "model.pkl"
    path = fetch(url, cache_dir / name, sha256=pinned, lockfile=lockfile)
    # fetch verified the bytes against the pin or the record for this URL (or recorded them).
    return path, pinned, lock_entry(lockfile, url)


def load_edm(spec: str | os.PathLike, *, device: str | torch.device = "cpu", trust: bool = False,
             sha256: str | None = None, cache_dir: str | os.PathLike | None = None,
             lockfile: str | os.PathLike | None = None, key: str = "ema") -> "EDMDenoiser":
    """Load an EDM pickle given by a model SPEC (see the module docstring) as an :class:`EDMDenoiser`.

    Parameters
    ----------
    spec:
        ``edm:NAME``, ``edm:URL`` or ``edm:PATH``, optionally with ``#sha256=HEX``; the ``edm:``
        prefix is optional here.
    device:
        Where the network goes; nothing defaults to CUDA.
    trust:
        Unpickle even when the file's hash is neither pinned nor recorded (CLI ``--trust-pickle``).
        Unpickling runs code.
    sha256:
        Pin the file's hash (as the SPEC suffix does).
    cache_dir, lockfile:
        Where downloads go (default :func:`default_cache_dir`) and the lock file of the hashes
        recorded for their URLs (default ``cache_dir / "adasched-lock.json"``); a record trusts only
        the download of its URL, never a local path (:func:`read_trusted_pickle`).
    key:
        Which network of the pickled dict to use (EDM: ``"ema"``).
    """
    source, pinned = parse_spec(os.fspath(spec))
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if pinned is not None and pinned != sha256:
            raise ModelError(f"model SPEC {spec!r} pins sha256 {pinned}, but sha256={sha256} was "
                             f"passed")
        pinned = sha256
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    lock = Path(lockfile) if lockfile is not None else cache / "adasched-lock.json"
    path, pinned, recorded = _resolve(source, pinned, trust=trust, cache_dir=cache, lockfile=lock)
    data, digest = read_trusted_pickle(path, pinned=pinned, recorded=recorded, trust=trust)
    if not isinstance(data, dict) or key not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ModelError(f"EDM pickle {path} should hold a dict with key {key!r}; found {found}")
    net = data[key]
    if not isinstance(net, torch.nn.Module):
        raise ModelError(f"{path}[{key!r}] should be a torch.nn.Module; found {type(net).__name__}")
    logger.info("loaded EDM network %s from %s (sha256 %s)", type(net).__name__, path, digest)
    return EDMDenoiser(net.to(device), source=str(source), sha256=digest)


def _register_spec_kind() -> None:
    """Make ``edm:`` a kind of :func:`adasched.models.load_model` (options: those of load_edm)."""

    @register("edm")
    def _load_edm_spec(argument: str, *, device="cpu", trust=False, sha256=None, cache_dir=None,
                       lockfile=None, key="ema", **_):
        return load_edm(argument, device=device, trust=trust, sha256=sha256, cache_dir=cache_dir,
                        lockfile=lockfile, key=key)


# ----------------------------------------------------------------------------------------------
# The denoiser wrapper


class EDMDenoiser(NetworkDenoiser):
    """An EDM network ``net(x, sigma, class_labels)`` as adasched's denoiser ``D(x, sigma)``.

    EDM's networks apply their preconditioning (``c_skip``, ``c_out``, ``c_in``, ``c_noise``)
    themselves and return ``D(x; sigma)`` directly (Karras et al. 2022, Eq. 7).  The wrapper

    * casts the sampler's state (float64) and ``sigma`` (shape ``[B]``, or a scalar) to the net's
      dtype, and the result back to the dtype of ``x``;
    * passes class labels to conditional nets (``label_dim > 0``).  Labels are bound with
      :meth:`with_labels`, which returns a new wrapper sharing the network::

          D = load_edm("edm:edm-cifar10-32x32-cond-vp").with_labels(torch.tensor([3, 5]))
          x0 = D(x, sigma)          # a sampler sees the plain protocol

      or passed per call, ``D(x, sigma, class_labels=...)``.  Labels are one-hot (or soft) rows of
      shape ``[B, label_dim]``, or integer class indices of shape ``[B]``; one row (``[label_dim]``,
      ``[1, label_dim]``, or a scalar class) applies to the whole batch.  A conditional net called
      without labels is an error, never a silent all-zero label;
    * exposes ``sigma_min``/``sigma_max``: the net's own range clamped to EDM's sampler range
      [0.002, 80] (EDMPrecond itself declares 0 and inf); ``round_sigma`` is the net's (discrete for
      iDDPM-preconditioned nets), returned in the caller's dtype and device.

    The network is put in eval mode with its parameters frozen; gradients still flow to ``x`` and
    ``sigma``.  No ``torch.no_grad`` is applied: the caller chooses.
    """

    def __init__(self, net: torch.nn.Module, *, class_labels: torch.Tensor | None = None,
                 source: str | None = None, sha256: str | None = None):
        self.net = net.eval().requires_grad_(False)
        self.source = source
        self.sha256 = sha256
        self.label_dim = int(getattr(net, "label_dim", 0) or 0)
        self.img_resolution = getattr(net, "img_resolution", None)
        self.img_channels = getattr(net, "img_channels", None)
        self.sigma_data = float(getattr(net, "sigma_data", 0.5))
        self.net_sigma_min = float(getattr(net, "sigma_min", 0.0))
        self.net_sigma_max = float(getattr(net, "sigma_max", float("inf")))
        self.sigma_min = max(self.net_sigma_min, EDM_SIGMA_MIN)
        self.sigma_max = min(self.net_sigma_max, EDM_SIGMA_MAX)
        self.class_labels = None if class_labels is None else self._labels(class_labels, None)

    @property
    def shape(self) -> tuple[int, ...] | None:
        """Shape of one sample, ``(img_channels, img_resolution, img_resolution)``, when known."""
        if self.img_channels is None or self.img_resolution is None:
            return None
        return (int(self.img_channels), int(self.img_resolution), int(self.img_resolution))

    def with_labels(self, class_labels: torch.Tensor | None) -> "EDMDenoiser":
        """A wrapper of the same network with ``class_labels`` bound (see the class docstring)."""
        if class_labels is not None and self.label_dim == 0:
            raise ModelError("this EDM network is unconditional (label_dim 0); it takes no class labels")
        new = copy.copy(self)
        new.class_labels = None if class_labels is None else self._labels(class_labels, None)
        return new

    def _labels(self, labels, batch: int | None) -> torch.Tensor:
        labels = torch.as_tensor(labels)
        if not labels.is_floating_point() and labels.ndim <= 1:  # class indices
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.label_dim):
                raise ModelError(f"class labels must lie in 0..{self.label_dim - 1}; found "
                                 f"{labels.min().item()}..{labels.max().item()}")
            labels = torch.nn.functional.one_hot(labels.reshape(-1).long(), self.label_dim)
        labels = labels.to(torch.float32) if not labels.is_floating_point() else labels
        if labels.ndim == 1:
            labels = labels.reshape(1, -1)
        if labels.ndim != 2 or labels.shape[1] != self.label_dim:
            raise ModelError(f"class labels must have shape [B, {self.label_dim}]; found "
                             f"{tuple(labels.shape)}")
        if batch is not None and labels.shape[0] not in (1, batch):
            raise ModelError(f"class labels are for a batch of {labels.shape[0]}; the input has "
                             f"{batch}")
        return labels

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float,
                 class_labels: torch.Tensor | None = None) -> torch.Tensor:
        dtype, device = self.dtype, self.device
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(batch)
        elif sigma.shape != (batch,):
            raise ModelError(f"sigma must have shape [{batch}] or be a scalar; found "
                             f"{tuple(sigma.shape)}")
        labels = class_labels if class_labels is not None else self.class_labels
        if self.label_dim:
            if labels is None:
                raise ModelError(f"this EDM network is class-conditional (label_dim "
                                 f"{self.label_dim}): bind labels with D.with_labels(labels) or "
                                 f"pass class_labels=")
            labels = self._labels(labels, batch).to(device=device, dtype=dtype).expand(batch, -1)
        elif labels is not None:
            raise ModelError("this EDM network is unconditional (label_dim 0); it takes no class labels")
        out = self.net(x.to(device=device, dtype=dtype), sigma.to(device=device, dtype=dtype),
                       labels)
        return out.to(device=x.device, dtype=x.dtype)

    def round_sigma(self, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        rounder = getattr(self.net, "round_sigma", None)
        if rounder is None:
            return sigma
        return torch.as_tensor(rounder(sigma)).to(device=sigma.device, dtype=sigma.dtype)

    def __repr__(self) -> str:
        return (f"EDMDenoiser({type(self.net).__name__}, source={self.source!r}, "
                f"label_dim={self.label_dim}, dtype={self.dtype})")


_register_spec_kind()
