"""FID through clean-fid's code path (offline: stand-in feature extractors), resources, records, digits_fd."""

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cleanfid
import cleanfid.downloads_helper
import cleanfid.features
import cleanfid.inception_torchscript
from cleanfid import fid as cfid

from adasched import fid
from adasched.cli import main
from adasched.errors import AdaschedError
from adasched.metrics import (ImageMetric, MetricsRecord, MetricsRecordError, aggregate_seed_ranges,
                              frechet_distance, gaussian_stats)
from adasched.samplers import generate
from adasched.schedules import sigmas_edm

CLEANFID_STATS = Path(cleanfid.__file__).parent / "stats"
TMP_INCEPTION = Path("/tmp/inception-2015-12-05.pt")
HEX = "ab" * 32


def _state(p: Path):
    if not p.exists():
        return None
    return sorted((str(q), q.stat().st_mtime_ns, q.stat().st_size) for q in [p, *p.rglob("*")]) if p.is_dir() \
        else (p.stat().st_mtime_ns, p.stat().st_size)


@pytest.fixture(scope="module", autouse=True)
def no_cleanfid_side_channels():
    """Nothing here may reach clean-fid's own download helpers, /tmp or site-packages/cleanfid/stats."""
    before = _state(TMP_INCEPTION), _state(CLEANFID_STATS)

    def refuse(*a, **k):
        raise AssertionError(f"clean-fid's download helper was called with {a} {k}")

    mp = pytest.MonkeyPatch()
    for mod in (cleanfid.downloads_helper, cleanfid.inception_torchscript, cleanfid.features):
        for name in ("check_download_inception", "check_download_url"):
            if hasattr(mod, name):
                mp.setattr(mod, name, refuse)
    yield
    mp.undo()
    assert (_state(TMP_INCEPTION), _state(CLEANFID_STATS)) == before, "something wrote where clean-fid caches"


# --------------------------------------------------------------------------------------------------- stand-ins


class Projection(torch.nn.Module):
    """A fixed random feature map: 8x8 average pool of the [0, 255] image, then a random projection to 16-d."""

    def __init__(self, seed=0, dim=16):
        super().__init__()
        self.w = torch.randn(3 * 64, dim, generator=torch.Generator().manual_seed(seed)) / (64 * 192 ** 0.5)

    def forward(self, x):
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.float() - 128, 8).flatten(1)
        return torch.tanh(pooled @ self.w.to(x.device))


class _FakeLayers(torch.nn.Module):
    def forward(self, x):
        b = x.shape[0]
        f = torch.zeros(b, 2048)
        flat = x.reshape(b, -1)
        f[:, 0] = float(x.shape[-1])
        f[:, 1] = 2.0  # marker: called as `layers` (clean-fid's resize outside the network)
        f[:, 2] = flat.min(1).values
        f[:, 3] = flat.max(1).values
        return f.reshape(b, 2048, 1, 1)


class _FakeInception(torch.nn.Module):
    """TorchScript with the interface of clean-fid's Inception (``layers``, ``forward(x, return_features)``)."""

    def __init__(self):
        super().__init__()
        self.layers = _FakeLayers()

    def forward(self, x, return_features: bool = False):
        f = self.layers(x.to(torch.float32)).reshape(x.shape[0], 2048)
        f[:, 1] = 1.0  # marker: the whole network (resize inside)
        return f


@pytest.fixture(scope="module")
def fake_resources(tmp_path_factory):
    d = tmp_path_factory.mktemp("resources")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(_FakeInception()).save(str(d / fid.INCEPTION_FILENAME))
    return d


def _images(seed, n=48, size=16):
    g = np.random.default_rng(seed)
    base = g.integers(0, 256, (1, 3, size, size))
    return np.clip(base + g.normal(0, 40 + 10 * seed, (n, 3, size, size)), 0, 255).astype(np.uint8)


def _folder(root, images):
    root.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im.transpose(1, 2, 0)).save(root / f"{i:05d}.png")
    return root


# --------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow"])
def test_same_number_as_cleanfid_compute_fid(tmp_path, mode):
    a, b = _images(1), _images(2)
    da, db = _folder(tmp_path / "a", a), _folder(tmp_path / "b", b)
    net = Projection()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # clean-fid's sqrtm(disp=...) on SciPy 1.17
        theirs = cfid.compute_fid(str(da), str(db), mode=mode, custom_feat_extractor=net, device=torch.device("cpu"),
                                  num_workers=0, batch_size=16, verbose=False, use_dataparallel=False)
    ext = fid.FeatureExtractor(name="random-projection", sha256=HEX, fn=net, mode=mode)
    fa = fid.image_features(a, ext, batch_size=20, device="cpu")  # 48 = 2 x 20 + a padded batch
    fb_folder = fid.folder_features(db, ext, num_workers=0, device="cpu")
    fb = fid.image_features(b, ext, batch_size=64, device="cpu")
    np.testing.assert_allclose(fb, fb_folder, rtol=0, atol=1e-5)  # array path == clean-fid's folder path
    ours = frechet_distance(*gaussian_stats(fa), *gaussian_stats(fb_folder))
    assert ours == pytest.approx(float(theirs), rel=1e-6) and ours > 0.01
    run = fid.frechet_runs("proj_fd", [(np.arange(48), a)], ext, *gaussian_stats(fb_folder),
                           {"name": "b", "sha256": HEX}, protocol=mode)
    assert run.value == pytest.approx(float(theirs), rel=1e-6) and run.num_images == 48


def test_protocol_selects_cleanfid_resize_path(fake_resources, monkeypatch):
    x = _images(3, n=4, size=32)
    seen = {}

    class Recorder(torch.nn.Module):
        def __init__(self, path, download=True, resize_inside=False):
            super().__init__()
            seen["resize_inside"] = resize_inside

    monkeypatch.setattr(cleanfid.features, "InceptionV3W", Recorder)
    for mode in fid.FID_PROTOCOLS:
        ext = fid.inception_extractor(mode, fake_resources, download=False, device="cpu")
        cleanfid.features.build_feature_extractor(mode, device=torch.device("cpu"), use_dataparallel=False)
        assert ext.fn.resize_inside == seen["resize_inside"]  # the mapping clean-fid defines
        f = fid.image_features(x, ext, device="cpu")
        if mode == "legacy_tensorflow":  # raw 32x32 in [0, 255] into the network, which resizes inside
            assert (f[:, 0] == 32).all() and (f[:, 1] == 1).all() and f[:, 3].max() > 100
        else:  # PIL bicubic to 299 outside, then (x - 128) / 128 into the layers
            assert (f[:, 0] == 299).all() and (f[:, 1] == 2).all() and f[:, 2].min() >= -1 and f[:, 3].max() <= 1
    lock = json.loads((fake_resources / fid.LOCK_NAME).read_text())
    assert fid.INCEPTION_URL in lock["files"]  # verified, trust on first use recorded beside the file


def test_missing_inception_is_one_clear_error(tmp_path, monkeypatch):
    empty = tmp_path / "res"
    want = str(empty / fid.INCEPTION_FILENAME)
    with pytest.raises(fid.MissingResourceError) as e:
        fid.inception_extractor("clean", empty, download=False, device="cpu")
    assert isinstance(e.value, AdaschedError) and want in str(e.value) and fid.INCEPTION_URL in str(e.value)
    monkeypatch.setattr(fid, "INCEPTION_URL", f"file://{tmp_path}/nowhere/{fid.INCEPTION_FILENAME}")
    with pytest.raises(fid.MissingResourceError, match="could not be downloaded") as e:
        fid.inception_extractor("legacy_tensorflow", empty, download=True, device="cpu")
    assert want in str(e.value) and "nowhere" in str(e.value)
    assert not (empty / fid.INCEPTION_FILENAME).exists()


def test_reference_specs(tmp_path):
    r = fid.reference_resource("cleanfid:CIFAR10/32/train", "legacy_tensorflow")
    assert r.url == fid.CLEANFID_STATS_URL + "cifar10_legacy_tensorflow_train_32.npz"
    assert fid.reference_resource("edm:cifar10-32x32", "legacy_tensorflow").filename == "cifar10-32x32.npz"
    with pytest.raises(AdaschedError, match="legacy_tensorflow"):
        fid.reference_resource("edm:cifar10-32x32", "clean")
    with pytest.raises(fid.MissingResourceError) as e:
        fid.load_reference("edm:cifar10-32x32", "legacy_tensorflow", tmp_path, download=False)
    assert str(tmp_path / "cifar10-32x32.npz") in str(e.value) and "nvlabs-fi-cdn" in str(e.value)
    fid.save_stats(tmp_path / "cifar10-32x32.npz", np.zeros(3), np.eye(3))  # placed by hand
    mu, sigma, info = fid.load_reference("edm:cifar10-32x32", "legacy_tensorflow", tmp_path, download=False)
    assert sigma.shape == (3, 3) and len(info["sha256"]) == 64 and info["url"].endswith("cifar10-32x32.npz")


def test_seed_range_aggregation():
    s = aggregate_seed_ranges([2.5, 2.1, 2.3], fid.EDM_SEED_RANGES)
    assert s["value"] == s["min"] == 2.1 and s["aggregate"] == "min"
    assert s["spread"] == pytest.approx(0.4) and s["mean"] == pytest.approx(2.3) and s["std"] == pytest.approx(0.2)
    assert aggregate_seed_ranges([3.0], [(0, 10)])["aggregate"] == "single"
    assert aggregate_seed_ranges([1.0, 3.0], [(0, 5), (5, 10)], "mean")["value"] == 2.0
    with pytest.raises(MetricsRecordError, match="overlap"):
        aggregate_seed_ranges([1, 2], [(0, 50_000), (49_999, 100_000)])
    with pytest.raises(MetricsRecordError, match="one value per"):
        aggregate_seed_ranges([1, 2], [(0, 5)])


def test_metrics_record_refuses_missing_provenance(tmp_path):
    good = dict(name="digits_fd", protocol="p", num_images=10, values=[1.0, 2.0], seed_ranges=[(0, 10), (10, 20)],
                reference={"name": "ref", "sha256": HEX}, feature_extractor={"name": "clf", "sha256": HEX})
    im = ImageMetric(**good)
    rec = MetricsRecord(metrics={"digits_fd": 1.0}, num_samples=20, seeds=[[0, 10], [10, 20]],
                        package_version="0.1.0", image_metrics={"digits_fd": im})
    rec.write(tmp_path / "ok.json")
    back = MetricsRecord.from_json(json.loads((tmp_path / "ok.json").read_text()))
    assert back.image_metrics["digits_fd"].to_json()["spread"] == 1.0
    for change, needle in [({"protocol": ""}, "protocol"), ({"reference": {"name": "ref"}}, "sha256"),
                           ({"feature_extractor": {"sha256": HEX}}, "name"), ({"name": "fid"}, "reserved"),
                           ({"seed_ranges": [(0, 10)]}, "one value per")]:
        with pytest.raises(MetricsRecordError, match=needle):
            ImageMetric(**{**good, **change})
    bad = [dict(image_metrics={}), dict(package_version=""), dict(metrics={"digits_fd": 1.5}), dict(seeds=[])]
    for change in bad:
        r = MetricsRecord(**{**rec.__dict__, **change})
        with pytest.raises(MetricsRecordError):
            r.write(tmp_path / "bad.json")
        assert not (tmp_path / "bad.json").exists()
    with pytest.raises(MetricsRecordError, match="image_metrics"):
        MetricsRecord.from_json({**json.loads((tmp_path / "ok.json").read_text()), "image_metrics": {}})


def _samples_npz(path, samples, seeds):
    np.savez(path, samples=np.asarray(samples, np.float32), latents=np.zeros_like(samples, np.float32),
             seeds=np.asarray(seeds, np.int64), sigmas=np.array([80.0, 0.0]), nfe=np.int64(1))


def test_cli_fid_offline_error_and_record(tmp_path, capsys, fake_resources):
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    s = tmp_path / "s.npz"
    _samples_npz(s, x, range(6))
    ref = tmp_path / "ref.npz"
    fid.save_stats(ref, np.zeros(3), np.eye(3))
    out = tmp_path / "m.json"
    rc = main(["evaluate", "--samples", str(s), "--fid", "clean", "--fid-ref", str(ref), "--num-images", "6",
               "--resources", str(tmp_path / "empty"), "--offline", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1 and not out.exists()
    assert str(tmp_path / "empty" / fid.INCEPTION_FILENAME) in err and fid.INCEPTION_URL in err
    rc = main(["evaluate", "--samples", str(s), "--fid", "clean", "--fid-ref", str(ref), "--resources",
               str(fake_resources), "--offline", "-o", str(out)])  # default: 50,000 images per seed range
    assert rc == 1 and "needs 50000" in capsys.readouterr().err and not out.exists()


@pytest.fixture(scope="module")
def classifier():
    from adasched.classifier import train_digits_classifier

    # A quick model (a few seconds on one thread); the default one (seed 0, 30 epochs) takes about a minute.
    return train_digits_classifier(seed=0, epochs=4, width=16, outlier_weight=0.0, augment=False)


def test_digits_fd_ranks_real_below_model_below_noise(classifier, short_run, tmp_path, capsys):
    """Held-out digits < samples of the digits model trained here (short_run: 400 steps) < uniform noise, on
    the reported aggregate (EDM's min over three seed ranges) and on the mean, each with its spread."""
    from adasched.classifier import digits_split, save_classifier
    from adasched.data import digits

    _, path, model, _ = short_run
    _, test = digits_split()
    real = digits()[test].float()
    n = len(real) // 3  # three disjoint seed ranges of as many images as the held-out digits allow
    seeds = np.arange(3 * n) + 1000
    with torch.inference_mode():  # Heun at 35 NFE on EDM's rho = 7 schedule, the samples the CLI writes
        samples = generate(model, sigmas_edm(18, 0.002, 80.0, 7.0), "heun", seeds.tolist(), model.shape,
                           batch=3 * n, dtype=torch.float32)["samples"].float()
    noise = torch.rand(real.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    result = {}
    for name, imgs in (("real", real), ("model", samples), ("noise", noise)):
        runs = [(np.arange(i * n, (i + 1) * n), imgs[i * n:(i + 1) * n]) for i in range(3)]
        result[name] = fid.compute_digits_fd(runs, classifier=classifier, device="cpu").to_json()
    for r in result.values():
        assert r["aggregate"] == "min" and r["min"] == min(r["values"]) and r["num_images"] == n
        assert r["spread"] == max(r["values"]) - min(r["values"]) > 0
    # Measured: min 9.6 (spread 8.9) for real digits, 28.2 (3.2) for the model, 419 (12.6) for noise.
    print({k: (round(r["min"], 2), round(r["spread"], 2)) for k, r in result.items()}, file=sys.stderr)
    assert result["real"]["min"] < result["model"]["min"] < result["noise"]["min"]
    mean = {k: np.mean(r["values"]) for k, r in result.items()}
    assert mean["real"] < mean["model"] < mean["noise"]
    assert max(result["model"]["values"]) < 0.2 * min(result["noise"]["values"])

    # The CLI, on the model's samples as `adasched sample` writes them, gives the same numbers under the
    # metric's own name, with the full record.  It is the same computation (one batch of 3n float32 samples,
    # features in batches of 256), so the same numbers to the bit: with other batch sizes the float32 samples
    # and features would differ in their rounding, by amounts that depend on the CPU.
    clf, s, out = tmp_path / "clf.safetensors", tmp_path / "samples.npz", tmp_path / "m.json"
    save_classifier(classifier, clf)
    assert main(["schedule", "--method", "edm", "--solver", "heun", "--nfe", "35", "-o", str(tmp_path / "s.json")]) == 0
    assert main(["sample", "--model", f"adasched:{path}", "--schedule", str(tmp_path / "s.json"), "--solver", "heun",
                 "--num", str(3 * n), "--batch", str(3 * n), "--seed-start", "1000", "--dtype", "float32",
                 "-o", str(s)]) == 0, \
        capsys.readouterr().err
    rc = main(["evaluate", "--samples", str(s), "--digits-fd", "--classifier", str(clf), "--seed-ranges", "3",
               "--num-images", str(n), "--batch", "256", "--device", "cpu", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    m = json.loads(out.read_text())
    assert set(m["metrics"]) == {"digits_fd"} and "fid" not in m["image_metrics"]
    d = m["image_metrics"]["digits_fd"]
    assert d["values"] == result["model"]["values"]
    assert d["seed_ranges"] == [[1000 + i * n, 1000 + (i + 1) * n] for i in range(3)] and m["seeds"] == d["seed_ranges"]
    assert len(d["reference"]["sha256"]) == 64 and len(d["feature_extractor"]["sha256"]) == 64
    assert m["adasched_version"] and m["num_samples"] == 3 * n and len(m["inputs"]["samples_sha256"]) == 64
    MetricsRecord.from_json(m)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_features_on_gpu_match_cpu(fake_resources):
    x = _images(4, n=70, size=32)
    proj = fid.FeatureExtractor(name="random-projection", sha256=HEX, fn=Projection().cuda(), mode="clean")
    cpu = fid.FeatureExtractor(name="random-projection", sha256=HEX, fn=Projection(), mode="clean")
    np.testing.assert_allclose(fid.image_features(x, proj, batch_size=32, device="cuda"),
                               fid.image_features(x, cpu, batch_size=32, device="cpu"), rtol=1e-4, atol=1e-5)
    assert fid.pick_device(None).type == "cuda"
    for mode in fid.FID_PROTOCOLS:
        g = fid.image_features(x, fid.inception_extractor(mode, fake_resources, download=False, device="cuda"),
                               device="cuda")
        c = fid.image_features(x, fid.inception_extractor(mode, fake_resources, download=False, device="cpu"),
                               device="cpu")
        np.testing.assert_allclose(g, c, rtol=1e-5, atol=1e-5)
