"""Data SPECs: image folders and zips (written here), NPZ arrays, digits with labels, CIFAR-10 (offline: errors
and a stand-in for torchvision's class), and the labels of dataset samplers."""

from __future__ import annotations

import io
import json
import urllib.error
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from adasched.data import (DATA_KINDS, Dataset, LabelledSampler, cifar10, digit_labels, digits, load_data_sampler,
                           load_dataset, load_images, sample_labels)
from adasched.errors import DataError
from adasched.probe import dataset_sampler, target_sampler

SEEDS = list(range(40))


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _grey(seed: int, h: int = 5, w: int = 4) -> np.ndarray:
    a = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    a[0, 0], a[-1, -1] = 0, 255  # both ends of the range
    return a


def _rgb(seed: int, h: int = 6, w: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------------
# Folders and zips


def test_folder_order_and_scaling_are_exact(tmp_path):
    # written out of order, nested, with a capital letter and a file that is no image
    names = ["b.png", "sub/c.png", "A.PNG", "a.png", "sub/deeper/0.png"]
    arrays = {n: _grey(i) for i, n in enumerate(names)}
    for n, a in arrays.items():
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_bytes(_png(a))
    (tmp_path / "notes.txt").write_text("ignored")
    ds = load_images(tmp_path)
    order = ["A.PNG", "a.png", "b.png", "sub/c.png", "sub/deeper/0.png"]  # sorted relative paths (code points)
    assert ds.data.dtype == torch.uint8 and ds.shape == (1, 5, 4) and len(ds) == 5 and ds.labels is None
    expected = np.stack([arrays[n][None] for n in order])
    assert np.array_equal(ds.data.numpy(), expected)
    x0 = ds.x0()
    assert x0.dtype == torch.float64 and torch.equal(x0, torch.from_numpy(expected).double() / 127.5 - 1)
    assert x0.min() == -1.0 and x0.max() == 1.0
    # the same folder through the SPEC, as a sampler: deterministic per seed, rows of the dataset
    s = load_data_sampler(f"images:{tmp_path}", None)
    assert s.description == f"images:{tmp_path}"
    assert torch.equal(s(SEEDS), x0[s.indices(SEEDS)])
    assert torch.equal(s(SEEDS[::-1]), s(SEEDS).flip(0))
    assert s.labels(SEEDS) is None and sample_labels(s, SEEDS) is None


def test_zip_of_colour_images_with_edm_labels(tmp_path):
    arrays = {"z.png": _rgb(0), "m/a.png": _rgb(1), "k.png": _rgb(2)}
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as z:
        for n, a in arrays.items():
            z.writestr(n, _png(a))
        rgba = np.concatenate([_rgb(3), np.full((6, 6, 1), 7, np.uint8)], axis=2)
        z.writestr("q.png", _png(rgba))  # RGBA: the alpha channel is dropped
        z.writestr("m/", b"")
        z.writestr("__MACOSX/._z.png", b"resource fork")
        z.writestr("dataset.json", json.dumps({"labels": [["z.png", 2], ["m/a.png", 0], ["k.png", 1], ["q.png", 1]]}))
    ds = load_dataset(f"images:{path}")
    order = ["k.png", "m/a.png", "q.png", "z.png"]
    arrays["q.png"] = _rgb(3)
    assert ds.shape == (3, 6, 6)
    assert np.array_equal(ds.data.numpy(), np.stack([arrays[n].transpose(2, 0, 1) for n in order]))
    assert ds.labels.tolist() == [1, 0, 1, 2]
    s = ds.sampler()
    idx = s.indices(SEEDS)
    assert torch.equal(s.labels(SEEDS), ds.labels[idx]) and torch.equal(s(SEEDS), ds.x0(idx))
    assert s.num_classes == 3


def test_jpeg_and_palette_images(tmp_path):
    a = _rgb(5, 8, 8)
    (tmp_path / "x.jpg").write_bytes(_png(a, "JPEG"))
    Image.fromarray(a).convert("P").save(tmp_path / "y.png")
    ds = load_images(tmp_path)
    want_jpg = np.asarray(Image.open(tmp_path / "x.jpg").convert("RGB")).transpose(2, 0, 1)
    want_p = np.asarray(Image.open(tmp_path / "y.png").convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(ds.data.numpy(), np.stack([want_jpg, want_p]))


def test_image_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"no images in .*\.png"):
        load_images(tmp_path / "empty")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr("readme.txt", "x")
    with pytest.raises(DataError, match="no images"):
        load_data_sampler(f"images:{tmp_path / 'empty.zip'}", None)
    (tmp_path / "notzip.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="neither a folder nor a readable zip"):
        load_images(tmp_path / "notzip.zip")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.png").write_bytes(_png(_grey(0, 8, 8)))
    (mixed / "b.png").write_bytes(_png(_grey(1, 8, 9)))
    with pytest.raises(DataError, match=r"differ in size: a.png is 1x8x8, b.png is 1x8x9"):
        load_images(mixed)
    (mixed / "b.png").write_bytes(_png(_rgb(1, 8, 8)))  # same size, other channel count
    with pytest.raises(DataError, match=r"a.png is 1x8x8, b.png is 3x8x8"):
        load_images(mixed)
    (mixed / "b.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="cannot read image .*b.png"):
        load_images(mixed)
    (mixed / "b.png").write_bytes(_png(_grey(1, 8, 8)))
    (mixed / "dataset.json").write_text(json.dumps({"labels": [["a.png", 0]]}))
    with pytest.raises(DataError, match="no label for 1 image"):
        load_images(mixed)
    (mixed / "dataset.json").write_text(json.dumps({"labels": None}))  # EDM writes null when unlabelled
    assert load_images(mixed).labels is None
    with pytest.raises(DataError, match="images:FOLDER"):
        load_data_sampler("images:", None)


# --------------------------------------------------------------------------------------------------
# Digits, NPZ, the other kinds


def test_digits_have_labels_and_unchanged_samples():
    from sklearn.datasets import load_digits

    s = load_data_sampler("digits", None)
    assert isinstance(s, LabelledSampler) and s.num_classes == 10 and s.description == "digits"
    assert torch.equal(s(SEEDS), dataset_sampler(digits())(SEEDS))  # the same rows as before labels existed
    assert torch.equal(digit_labels(), torch.from_numpy(load_digits().target).long())
    assert torch.equal(s.labels(SEEDS), digit_labels()[s.indices(SEEDS)])
    assert torch.equal(sample_labels(s, SEEDS), s.labels(SEEDS))
    idx = torch.from_numpy(s.indices(SEEDS))  # images and labels of the same rows
    assert torch.equal(s(SEEDS), digits()[idx]) and torch.equal(s.labels(SEEDS), digit_labels()[idx])


def test_npz_arrays_and_labels(tmp_path):
    x = np.random.default_rng(0).normal(size=(7, 2, 3)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=x, labels=np.arange(7) % 3, other=np.zeros(2))
    s = load_data_sampler(f"npz:{tmp_path / 'a.npz'}", None)
    assert s(SEEDS).dtype == torch.float32 and torch.equal(s(SEEDS), torch.from_numpy(x)[s.indices(SEEDS)])
    assert torch.equal(s.labels(SEEDS), torch.from_numpy(np.arange(7) % 3)[s.indices(SEEDS)])
    assert torch.equal(load_data_sampler(f"npz:{tmp_path / 'a.npz'}:x", None).labels(SEEDS), s.labels(SEEDS))
    np.savez(tmp_path / "nolabels.npz", x=x)
    assert load_data_sampler(f"npz:{tmp_path / 'nolabels.npz'}", None).labels(SEEDS) is None
    np.savez(tmp_path / "u8.npz", images=np.array([[[0, 255]], [[51, 204]]], dtype=np.uint8))
    u8 = load_dataset(f"npz:{tmp_path / 'u8.npz'}")
    assert u8.x0().tolist() == [[[-1.0, 1.0]], [[51 / 127.5 - 1, 204 / 127.5 - 1]]]
    with pytest.raises(DataError, match="no array 'y'; it has: x, labels, other"):
        load_data_sampler(f"npz:{tmp_path / 'a.npz'}:y", None)
    np.savez(tmp_path / "bad.npz", x=x, labels=np.arange(3))
    with pytest.raises(DataError, match="'labels' must be integers"):
        load_data_sampler(f"npz:{tmp_path / 'bad.npz'}", None)
    with pytest.raises(DataError, match="not found"):
        load_data_sampler(f"npz:{tmp_path / 'missing.npz'}", None)


def test_other_kinds_and_unknown_specs(gaussian_8d):
    t = load_data_sampler("target", gaussian_8d)
    assert sample_labels(t, SEEDS) is None and sample_labels(target_sampler(gaussian_8d), SEEDS) is None
    with pytest.raises(DataError) as e:
        load_data_sampler("nope", gaussian_8d)
    assert all(k in str(e.value) for k in DATA_KINDS)
    with pytest.raises(DataError, match="labels of shape"):
        Dataset(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), "x")


# --------------------------------------------------------------------------------------------------
# CIFAR-10 without network


def test_cifar10_offline_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def offline(*a, **k):
        raise urllib.error.URLError(OSError("[Errno -3] Temporary failure in name resolution"))

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as e:
        load_data_sampler("cifar10", None, root=tmp_path)
    msg = str(e.value)
    assert "cannot download CIFAR-10 (URLError" in msg and str(tmp_path / "cifar10") in msg
    assert "cifar-10-python.tar.gz" in msg and "cifar-10-batches-py" in msg and "\n" not in msg
    with pytest.raises(DataError, match=r"CIFAR-10 is not in .*cifar10; download https://"):
        cifar10("test", root=tmp_path, download=False)
    monkeypatch.setenv("ADASCHED_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(DataError, match=str(tmp_path / "env" / "cifar10")):
        load_dataset("cifar10:test", download=False)
    with pytest.raises(DataError, match="valid: train, test"):
        load_dataset("cifar10:val")


def test_cifar10_layout_and_labels(tmp_path, monkeypatch):
    """torchvision's class replaced by a stand-in with its attributes (HWC uint8 ``data``, ``targets``)."""
    import torchvision.datasets

    seen = []

    class FakeCIFAR10:
        url, filename, base_folder = "https://example.invalid/c.tar.gz", "c.tar.gz", "c-py"

        def __init__(self, root, train=True, download=False):
            seen.append((root, train, download))
            n = 5 if train else 3
            self.data = np.arange(n * 32 * 32 * 3, dtype=np.int64).reshape(n, 32, 32, 3).astype(np.uint8)
            self.targets = list(range(n))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    ds = load_dataset("cifar10:test", root=tmp_path)
    assert seen == [(str(tmp_path / "cifar10"), False, False)]
    assert ds.data.shape == (3, 3, 32, 32) and ds.data.dtype == torch.uint8 and ds.num_classes == 10
    assert torch.equal(ds.data, torch.from_numpy(FakeCIFAR10(".", False).data).permute(0, 3, 1, 2))
    assert ds.labels.tolist() == [0, 1, 2] and ds.description == "cifar10:test"
    s = load_data_sampler("cifar10", None, root=tmp_path)
    assert s.description == "cifar10:train" and seen[-1][1] is True
    assert s(SEEDS).dtype == torch.float64 and s(SEEDS).abs().max() <= 1
    assert torch.equal(s.labels(SEEDS), torch.from_numpy(s.indices(SEEDS)))


# --------------------------------------------------------------------------------------------------
# The model's own samples


def test_model_pool_is_drawn_once_and_sampled_like_a_dataset():
    from conditional_gaussians import ConditionalGaussians

    from adasched.samplers import generate
    from adasched.schedules import sigmas_edm

    model = ConditionalGaussians([[-20.0, 0.0], [0.0, 20.0], [20.0, 0.0]], c=0.5)
    sampler = load_data_sampler("model:16", model)
    assert sampler.description == "model:16" and model.evaluations == 0  # drawn at the first call
    x, y = sampler(SEEDS), sampler.labels(SEEDS)
    assert model.evaluations == 16 * 255
    sampler(SEEDS[:5]), sampler.labels(SEEDS)
    assert model.evaluations == 16 * 255
    pool = generate(model, sigmas_edm(128, 0.002, 80.0), "heun", range(16), model.shape)
    rows = torch.from_numpy(dataset_sampler(torch.zeros(16, 1)).indices(SEEDS))
    assert torch.allclose(x, pool["samples"][rows].double()) and torch.equal(y, pool["labels"][rows])
    assert torch.equal(torch.cdist(x, model.means).argmin(1), y)
    assert load_data_sampler("model", model).pool == 1024
    for bad in ("model:x", "model:0", "model:-3"):
        with pytest.raises(DataError, match="pool"):
            load_data_sampler(bad, model)


def test_probe_of_a_conditional_model_on_its_own_samples_has_the_exact_cost(tmp_path):
    """Each pool row is probed with its own class bound: then every class is an isotropic Gaussian and the
    cost is the closed form of paper.md §6.2; with another class bound it would be far larger."""
    from conditional_gaussians import ConditionalGaussians
    from test_optimize import gaussian_iso_cost

    from adasched.probe import probe

    model = ConditionalGaussians([[-3.0, 0.0, 1.0], [0.0, 3.0, -1.0], [3.0, 0.0, 0.0]], c=0.5)
    sigmas = [0.2, 0.3, 1.0, 1.5]
    r = probe(model, load_data_sampler("model:512", model), sigmas, 2000, tmp_path / "p.h5", batch=1000,
              dtype=torch.float64)
    exact = np.array([gaussian_iso_cost(lo, hi, 3, 0.5) for lo, hi in zip(sigmas[:-1], sigmas[1:])])
    assert r.data == "model:512"
    assert np.all(np.abs(r.mean - exact) < 5 * r.stderr + 0.02 * exact)
