"""Registry of pretrained models and FID reference statistics that adasched knows by name.

The EDM checkpoints (Karras et al. 2022, https://github.com/NVlabs/edm; code and weights under
CC BY-NC-SA 4.0, so nothing of EDM is vendored here, only the public download addresses) and the
FID reference statistics EDM's ``fid.py`` compares against (``mu``/``sigma`` arrays in an ``.npz``).

``sha256`` is the pinned hash of a file, or ``None`` where no trustworthy published hash is known.
``None`` means *trust on first download*: :func:`adasched.download.fetch` records the hash of the
first download in the lock file and checks every later use against it.  NVIDIA does not publish
checksums for these files, so every entry starts unpinned; pin one by editing its entry once a
download you trust has been recorded.

Model names are the file stems (``edm-cifar10-32x32-cond-vp``); the ``.pkl`` suffix is accepted too.
In EDM's naming, ``vp`` and ``ve`` name the network of the VP and VE columns of the paper's tables
(DDPM++ and NCSN++), trained with EDM's preconditioning and loss; ``adm`` is the ADM network.
"""

from __future__ import annotations

from dataclasses import dataclass

from adasched.errors import ModelError

__all__ = [
    "EDM_BASE_URL",
    "FID_REF_BASE_URL",
    "ModelEntry",
    "FidRef",
    "MODELS",
    "FID_REFS",
    "get_model",
    "get_fid_ref",
    "list_models",
    "pinned_sha256",
    "pinned_hashes",
]

EDM_BASE_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/"
FID_REF_BASE_URL = "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/"


@dataclass(frozen=True)
class FidRef:
    """FID reference statistics (EDM's ``fid.py`` format: ``mu`` and ``sigma`` in an ``.npz``)."""

    name: str
    url: str
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ModelEntry:
    """One pretrained checkpoint.

    ``label_dim`` is the number of classes of a class-conditional model (0: unconditional);
    ``resolution`` and ``channels`` describe the images (``channels x resolution x resolution``);
    ``fid_ref`` names the matching entry of :data:`FID_REFS`.
    """

    name: str
    url: str
    dataset: str
    resolution: int
    channels: int
    label_dim: int
    network: str
    fid_ref: str
    sha256: str | None = None
    format: str = "edm-pickle"

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def conditional(self) -> bool:
        return self.label_dim > 0


def _edm(stem: str, dataset: str, resolution: int, label_dim: int, network: str,
         fid_ref: str) -> ModelEntry:
    return ModelEntry(name=stem, url=EDM_BASE_URL + stem + ".pkl", dataset=dataset,
                      resolution=resolution, channels=3, label_dim=label_dim, network=network,
                      fid_ref=fid_ref)


FID_REFS: dict[str, FidRef] = {
    name: FidRef(name=name, url=f"{FID_REF_BASE_URL}{name}.npz")
    for name in ("cifar10-32x32", "ffhq-64x64", "afhqv2-64x64", "imagenet-64x64")
}

MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        _edm("edm-cifar10-32x32-cond-vp", "cifar10", 32, 10, "ddpmpp", "cifar10-32x32"),
        _edm("edm-cifar10-32x32-cond-ve", "cifar10", 32, 10, "ncsnpp", "cifar10-32x32"),
        _edm("edm-cifar10-32x32-uncond-vp", "cifar10", 32, 0, "ddpmpp", "cifar10-32x32"),
        _edm("edm-cifar10-32x32-uncond-ve", "cifar10", 32, 0, "ncsnpp", "cifar10-32x32"),
        _edm("edm-ffhq-64x64-uncond-vp", "ffhq", 64, 0, "ddpmpp", "ffhq-64x64"),
        _edm("edm-ffhq-64x64-uncond-ve", "ffhq", 64, 0, "ncsnpp", "ffhq-64x64"),
        _edm("edm-afhqv2-64x64-uncond-vp", "afhqv2", 64, 0, "ddpmpp", "afhqv2-64x64"),
        _edm("edm-afhqv2-64x64-uncond-ve", "afhqv2", 64, 0, "ncsnpp", "afhqv2-64x64"),
        _edm("edm-imagenet-64x64-cond-adm", "imagenet", 64, 1000, "adm", "imagenet-64x64"),
    ]
}


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(MODELS)


def get_model(name: str) -> ModelEntry:
    """The entry named ``name`` (``.pkl`` suffix optional); unknown names list the valid ones."""
    key = name[:-4] if name.endswith(".pkl") else name
    try:
        return MODELS[key]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") \
            from None


def get_fid_ref(name: str) -> FidRef:
    """The FID reference statistics named ``name`` (``.npz`` suffix optional)."""
    key = name[:-4] if name.endswith(".npz") else name
    try:
        return FID_REFS[key]
    except KeyError:
        raise ModelError(f"unknown FID reference {name!r}; registered: {', '.join(sorted(FID_REFS))}") \
            from None


def pinned_sha256(url: str) -> str | None:
    """The pinned hash of a registered URL, or ``None`` (unregistered, or registered unpinned)."""
    for entry in (*MODELS.values(), *FID_REFS.values()):
        if entry.url == url:
            return entry.sha256
    return None


def pinned_hashes() -> set[str]:
    """Every hash pinned in the registry."""
    return {e.sha256 for e in (*MODELS.values(), *FID_REFS.values()) if e.sha256}
