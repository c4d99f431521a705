"""adasched.edm: EDM pickles through the clean-room persistence shim, and the refusal of untrusted ones.

No EDM code and no real checkpoint are used.  The tests write pickles in the
``torch_utils.persistence`` format themselves (``_write_edm_pickle``): each object of a class from
the network source pickles as ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = dict(type="class", version=6, module_src=SRC, class_name=..., state=obj.__dict__)``, the
layout EDM's pickles have.  The stand-in ``torch_utils``/``dnnlib`` modules the writer needs exist
only while it writes.
"""

import contextlib
import copy
import dataclasses
import functools
import hashlib
import http.server
import importlib.util
import pickle
import sys
import threading
import types

import pytest
import torch

from adasched import edm, registry
from adasched.download import lock_entry, record_hash
from adasched.edm import EDMDenoiser, load_edm, parse_spec
from adasched.errors import AdaschedError, DownloadError, ModelError
from adasched.models import load_model

# A tiny network with EDM's preconditioning (Karras et al. 2022, Table 1), written for this test.
SRC = '''
import torch
from torch_utils import persistence, misc


@persistence.persistent_class
class TinyNet(torch.nn.Module):
    def __init__(self, channels, label_dim, hidden=8):
        super().__init__()
        self.conv_in = torch.nn.Conv2d(channels, hidden, 3, padding=1)
        self.emb = torch.nn.Linear(1 + label_dim, hidden)
        self.conv_out = torch.nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, x, c_noise, class_labels):
        emb = c_noise.reshape(-1, 1)
        if class_labels is not None:
            emb = torch.cat([emb, class_labels], dim=1)
        h = torch.nn.functional.silu(self.conv_in(x) + self.emb(emb)[:, :, None, None])
        return self.conv_out(h)


@persistence.persistent_class
class TinyPrecond(torch.nn.Module):
    def __init__(self, img_resolution, img_channels, label_dim=0, sigma_data=0.5):
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.sigma_data = sigma_data
        self.sigma_min = 0
        self.sigma_max = float("inf")
        self.model = TinyNet(img_channels, label_dim)

    def forward(self, x, sigma, class_labels=None):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = misc.const_like(x, 0, shape=[1, self.label_dim])
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        sd = misc.const_like(x, self.sigma_data)
        c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
        c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
        c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        F_x = self.model(c_in * x, c_noise.flatten(), class_labels)
        return c_skip * x + c_out * F_x.to(torch.float32)

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)
'''

_EDM_NAMES = ("torch_utils", "dnnlib")


def _edm_modules():
    return {k for k in sys.modules if k.split(".")[0] in _EDM_NAMES}


@contextlib.contextmanager
def _stand_in_edm_modules():
    """Stand-ins for EDM's ``torch_utils`` and ``dnnlib``, present only inside the block."""
    saved = {k: sys.modules.pop(k) for k in _edm_modules()}

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("only the writer's stand-in; loading must use adasched's shim")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"

    def const_like(ref, value, shape=None):
        t = torch.as_tensor(value, dtype=ref.dtype, device=ref.device)
        return t if shape is None else t.broadcast_to(shape).contiguous()

    mods = {
        "torch_utils.persistence": dict(persistent_class=lambda c: c,
                                        _reconstruct_persistent_obj=_reconstruct_persistent_obj),
        "torch_utils.misc": dict(const_like=const_like),
        "dnnlib.util": dict(EasyDict=EasyDict),
    }
    for name, attrs in mods.items():
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
    sys.modules["torch_utils"] = types.ModuleType("torch_utils")
    sys.modules["torch_utils"].persistence = sys.modules["torch_utils.persistence"]
    sys.modules["torch_utils"].misc = sys.modules["torch_utils.misc"]
    sys.modules["dnnlib"] = types.ModuleType("dnnlib")
    sys.modules["dnnlib"].util = sys.modules["dnnlib.util"]
    try:
        yield types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)
    finally:
        for k in _edm_modules():
            del sys.modules[k]
        sys.modules.update(saved)


def _build(src, module_name, **kwargs):
    """Run ``src`` as module ``module_name`` (under the stand-ins) and build a seeded TinyPrecond."""
    with _stand_in_edm_modules():
        module = types.ModuleType(module_name)
        exec(compile(src, module_name, "exec"), module.__dict__)
        torch.manual_seed(0)
        return module.TinyPrecond(**kwargs)


def _write_edm_pickle(path, src, data):
    """Pickle ``data`` in the persistence format: objects of ``src``'s classes carry ``src``."""
    with _stand_in_edm_modules() as stand_in:
        module_names = {type(v).__module__ for v in data.values() if isinstance(v, torch.nn.Module)}

        class Writer(pickle.Pickler):
            def reducer_override(self, obj):
                if type(obj).__module__ in module_names:
                    meta = dict(type="class", version=6, module_src=src,
                                class_name=type(obj).__name__, state=dict(obj.__dict__))
                    return stand_in.reconstruct, (meta,)
                return NotImplemented

        kwargs = stand_in.EasyDict(class_name="training.networks.TinyPrecond")
        with open(path, "wb") as f:
            Writer(f, protocol=pickle.HIGHEST_PROTOCOL).dump({**data, "network_kwargs": kwargs})
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _RunsCode:
    """Pickles as a call that leaves a file behind when it is unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.fixture
def no_edm_code(monkeypatch):
    """No EDM code on sys.path, and no EDM modules, real or shim, imported before the test."""
    for k in _edm_modules():
        monkeypatch.delitem(sys.modules, k)
    assert importlib.util.find_spec("torch_utils") is None
    assert importlib.util.find_spec("dnnlib") is None
    yield


@pytest.fixture
def uncond(tmp_path, no_edm_code):
    net = _build(SRC, "tiny_uncond", img_resolution=8, img_channels=3)
    path = tmp_path / "net.pkl"
    digest = _write_edm_pickle(path, SRC, dict(ema=net))
    return net, path, digest


def _inputs(batch=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 8, 8, generator=g, dtype=torch.float64).to(dtype)
    sigma = torch.tensor([0.002, 0.5, 3.0, 80.0][:batch], dtype=dtype)
    return x, sigma


def test_loads_through_shim_bit_identical(uncond, tmp_path):
    net, path, digest = uncond
    assert not _edm_modules()
    D = load_edm(f"edm:{path}#sha256={digest}", cache_dir=tmp_path / "cache")
    assert isinstance(D, EDMDenoiser) and D.sha256 == digest
    assert sys.modules["torch_utils.persistence"].__adasched_shim__
    assert type(D.net).__name__ == "TinyPrecond" and type(D.net) is not type(net)

    x, sigma = _inputs()
    with torch.no_grad():
        ref = net(x, sigma)
        out = D(x, sigma)
        assert out.dtype == torch.float32 and torch.equal(out, ref)
        # Float64 sampler state goes in as float32 and comes back as float64.
        out64 = D(x.double(), sigma.double())
        assert out64.dtype == torch.float64 and torch.equal(out64, ref.double())
        assert torch.equal(D(x, 0.5), net(x, torch.full([4], 0.5)))

    assert D.sigma_min == edm.EDM_SIGMA_MIN and D.sigma_max == edm.EDM_SIGMA_MAX
    assert (D.net_sigma_min, D.net_sigma_max) == (0.0, float("inf"))
    assert D.round_sigma(torch.tensor([0.3], dtype=torch.float64)).dtype == torch.float64
    assert (D.img_resolution, D.img_channels, D.label_dim, D.sigma_data) == (8, 3, 0, 0.5)
    assert D.shape == (3, 8, 8)
    assert not any(p.requires_grad for p in D.net.parameters())

    # Gradients flow to the input (schedules are optimised through samplers).
    xg = x.double().requires_grad_()
    D(xg, sigma.double()).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0

    # The loaded net pickles again in the same format (deepcopy, multiprocessing).
    again = pickle.loads(pickle.dumps(D.net))
    with torch.no_grad():
        assert torch.equal(again(x, sigma), ref) and torch.equal(copy.deepcopy(D.net)(x, sigma), ref)


def test_untrusted_pickle_is_refused_before_any_code_runs(tmp_path, no_edm_code, monkeypatch):
    marker_src = tmp_path / "module-source-ran"
    marker_reduce = tmp_path / "reduce-ran"
    evil_src = f"open({str(marker_src)!r}, 'w').write('ran')\n" + SRC
    net = _build(SRC, "tiny_evil", img_resolution=8, img_channels=3)
    path = tmp_path / "evil.pkl"
    digest = _write_edm_pickle(path, evil_src, dict(first=_RunsCode(marker_reduce), ema=net))
    cache = tmp_path / "cache"

    class NoUnpickling:
        def __init__(self, *args, **kwargs):
            raise AssertionError("bytes reached pickle")

    with monkeypatch.context() as m:
        m.setattr(edm.pickle, "Unpickler", NoUnpickling)
        m.setattr(pickle, "loads", NoUnpickling)
        m.setattr(pickle, "load", NoUnpickling)
        with pytest.raises(ModelError, match="neither pinned nor a recorded download") as e:
            load_edm(f"edm:{path}", cache_dir=cache)
        assert digest in str(e.value) and "trust=True" in str(e.value)
        wrong = "ab" * 32
        with pytest.raises(ModelError, match=f"{digest}, expected the pinned {wrong}"):
            load_edm(f"edm:{path}#sha256={wrong}", cache_dir=cache)
        with pytest.raises(ModelError, match="expected the pinned"):
            load_edm(path, sha256=wrong, cache_dir=cache, trust=True)  # trust never overrides a pin
        # An unpinned URL is refused before it is even downloaded.
        with pytest.raises(ModelError, match="refusing to load file://"):
            load_edm(f"edm:{path.as_uri()}", cache_dir=cache)
        assert not cache.exists()
    assert not marker_src.exists() and not marker_reduce.exists()
    assert not _edm_modules()  # the shim is not even installed before the check passes

    # The payload is real: trusting the file runs both pieces of code.
    load_edm(path, trust=True, cache_dir=cache)
    assert marker_src.exists() and marker_reduce.exists()


def test_recorded_hash_of_changed_url_is_refused_without_running_code(tmp_path, no_edm_code):
    good = _build(SRC, "tiny_good", img_resolution=8, img_channels=3)
    served = tmp_path / "served" / "net.pkl"
    served.parent.mkdir()
    digest = _write_edm_pickle(served, SRC, dict(ema=good))
    cache, lock = tmp_path / "cache", tmp_path / "lock.json"
    url = served.as_uri()

    # trust=True on first use records the hash; later loads need no trust.
    load_edm(f"edm:{url}", trust=True, cache_dir=cache, lockfile=lock)
    assert lock_entry(lock, url) == digest
    load_edm(f"edm:{url}", cache_dir=cache, lockfile=lock)

    # The file behind the URL changes to a payload; a fresh download is refused.
    marker = tmp_path / "ran"
    evil_src = f"open({str(marker)!r}, 'w').write('ran')\n" + SRC
    _write_edm_pickle(served, evil_src, dict(first=_RunsCode(marker), ema=good))
    (cache / "net.pkl").unlink()
    with pytest.raises(DownloadError, match=f"expected {digest}"):
        load_edm(f"edm:{url}", cache_dir=cache, lockfile=lock)
    assert not marker.exists() and not (cache / "net.pkl").exists()


def test_trust_loads_unpinned_file(uncond, tmp_path, caplog):
    net, path, _ = uncond
    D = load_model(f"edm:{path}", trust=True, cache_dir=tmp_path / "cache")
    x, sigma = _inputs()
    with torch.no_grad():
        assert torch.equal(D(x, sigma), net(x, sigma))
    assert "not pinned: trust=True" in caplog.text


def test_conditional_model_takes_class_labels(tmp_path, no_edm_code):
    net = _build(SRC, "tiny_cond", img_resolution=8, img_channels=3, label_dim=4)
    path = tmp_path / "cond.pkl"
    digest = _write_edm_pickle(path, SRC, dict(ema=net))
    D = load_edm(path, sha256=digest, cache_dir=tmp_path / "cache")
    assert D.label_dim == 4
    x, sigma = _inputs()
    classes = torch.tensor([0, 3, 1, 3])
    onehot = torch.nn.functional.one_hot(classes, 4).float()
    with torch.no_grad():
        ref = net(x, sigma, onehot)
        assert torch.equal(D.with_labels(classes)(x.double(), sigma.double()), ref.double())
        assert torch.equal(D.with_labels(onehot)(x, sigma), ref)
        assert torch.equal(D(x, sigma, class_labels=onehot), ref)
        # One label for the whole batch.
        assert torch.equal(D.with_labels(torch.tensor(2))(x, sigma),
                           net(x, sigma, torch.nn.functional.one_hot(torch.full([4], 2), 4).float()))
        assert not torch.equal(D.with_labels(classes.flip(0))(x, sigma), ref)
    with pytest.raises(ModelError, match="class-conditional.*with_labels"):
        D(x, sigma)
    with pytest.raises(ModelError, match="batch of 2; the input has 4"):
        D.with_labels(classes[:2])(x, sigma)
    with pytest.raises(ModelError, match=r"0\.\.3"):
        D.with_labels(torch.tensor([4]))
    with pytest.raises(ModelError, match=r"shape \[B, 4\]"):
        D.with_labels(torch.ones(4, 5))
    assert D.class_labels is None  # with_labels returns a new wrapper


def test_unconditional_model_rejects_labels(uncond, tmp_path):
    _, path, digest = uncond
    D = load_edm(path, sha256=digest, cache_dir=tmp_path / "cache")
    with pytest.raises(ModelError, match="unconditional"):
        D.with_labels(torch.tensor([1]))
    with pytest.raises(ModelError, match=r"sigma must have shape \[4\]"):
        D(*_inputs()[:1], torch.ones(3))


def test_registry_name_with_file_placed_by_hand(uncond, tmp_path):
    """``edm:NAME`` of an unpinned registry entry: the hash is recorded at first use, then checked."""
    _, path, digest = uncond
    entry = registry.get_model("edm-cifar10-32x32-cond-vp.pkl")
    assert entry.sha256 is None  # nothing published to pin
    cache, lock = tmp_path / "cache", tmp_path / "cache" / "adasched-lock.json"
    cache.mkdir()
    (cache / entry.filename).write_bytes(path.read_bytes())
    D = load_edm(f"edm:{entry.name}", cache_dir=cache)
    assert D.sha256 == digest and lock_entry(lock, entry.url) == digest
    (cache / entry.filename).write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DownloadError, match=f"expected {digest}"):
        load_edm(f"edm:{entry.name}", cache_dir=cache)


def test_registry_contents():
    assert len(registry.list_models()) == 9
    cond = registry.get_model("edm-cifar10-32x32-cond-vp")
    assert cond.url == "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-cond-vp.pkl"
    assert (cond.resolution, cond.channels, cond.label_dim, cond.conditional) == (32, 3, 10, True)
    adm = registry.get_model("edm-imagenet-64x64-cond-adm")
    assert (adm.resolution, adm.label_dim) == (64, 1000)
    assert registry.get_model("edm-ffhq-64x64-uncond-ve").label_dim == 0
    assert registry.get_fid_ref(adm.fid_ref).url == \
        "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/imagenet-64x64.npz"
    assert {registry.get_model(n).fid_ref for n in registry.list_models()} == set(registry.FID_REFS)
    with pytest.raises(ModelError, match="registered models: edm-afhqv2"):
        registry.get_model("edm-mnist")
    assert registry.pinned_hashes() == set()


def test_parse_spec_and_bad_files(tmp_path):
    h = "AB" * 32
    assert parse_spec(f"edm:/a/b.pkl#sha256={h}") == ("/a/b.pkl", h.lower())
    assert parse_spec("edm:edm-ffhq-64x64-uncond-vp") == ("edm-ffhq-64x64-uncond-vp", None)
    with pytest.raises(ModelError, match="malformed pin"):
        parse_spec("edm:x.pkl#sha256=12")
    with pytest.raises(ModelError, match="not found.*registered models: edm-afhqv2"):
        load_edm(tmp_path / "missing.pkl", trust=True, cache_dir=tmp_path)
    notdict = tmp_path / "list.pkl"
    notdict.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ModelError, match="dict with key 'ema'"):
        load_edm(notdict, trust=True, cache_dir=tmp_path)
    # A wrong format version is a clear error, not a crash.
    v5 = tmp_path / "v5.pkl"
    with _stand_in_edm_modules() as stand_in:
        v5.write_bytes(pickle.dumps({"ema": _Meta(stand_in.reconstruct, 5)}))
    with pytest.raises(AdaschedError, match="version 5 is not supported; expected 6"):
        load_edm(v5, trust=True, cache_dir=tmp_path)


class _Meta:
    def __init__(self, reconstruct, version):
        self.reconstruct, self.version = reconstruct, version

    def __reduce__(self):
        return self.reconstruct, (dict(type="class", version=self.version, module_src="",
                                       class_name="X", state={}),)


def test_cli_samples_an_edm_pickle(uncond, tmp_path, capsys, monkeypatch):
    """`adasched sample --model edm:...` goes through the same CLI as analytic models; unpinned is refused."""
    import numpy as np

    from adasched.cli import main
    from adasched.samplers import generate
    from adasched.schedules import sigmas_edm

    net, path, digest = uncond
    monkeypatch.setenv("ADASCHED_CACHE_DIR", str(tmp_path / "cache"))
    sched, out = tmp_path / "s.json", tmp_path / "x.npz"
    assert main(["schedule", "--method", "edm", "--solver", "heun", "--nfe", "5", "-o", str(sched)]) == 0
    argv = ["sample", "--schedule", str(sched), "--solver", "heun", "--num", "3", "--device", "cpu", "-o", str(out)]
    assert main(argv + ["--model", f"edm:{path}"]) == 1
    assert "sha256" in capsys.readouterr().err and not out.exists()
    assert main(argv + ["--model", f"edm:{path}#sha256={digest}"]) == 0
    d = np.load(out)
    assert d["samples"].shape == (3, 3, 8, 8) and int(d["nfe"]) == 5
    # The same computation as the CLI's (one batch of 3, float64 state, the net in float32): equal to the bit.
    ref = generate(lambda x, s: net(x.float(), s.float()).double(), sigmas_edm(3), "heun", range(3), (3, 8, 8))
    np.testing.assert_array_equal(d["samples"], ref["samples"].numpy())


def test_cli_samples_and_probes_a_conditional_edm_pickle(tmp_path, no_edm_code, monkeypatch):
    """A class-conditional network goes through `adasched sample` (a class per seed, kept in the NPZ) and
    `adasched probe` on its own samples (the default data of a network), as EDM's CIFAR-10 model would."""
    import numpy as np

    from adasched.cli import main
    from adasched.probe import read_probes

    net = _build(SRC, "tiny_cond", img_resolution=8, img_channels=3, label_dim=4)
    path = tmp_path / "cond.pkl"
    digest = _write_edm_pickle(path, SRC, dict(ema=net))
    monkeypatch.setenv("ADASCHED_CACHE_DIR", str(tmp_path / "cache"))
    model = f"edm:{path}#sha256={digest}"
    sched, out = tmp_path / "s.json", tmp_path / "x.npz"
    assert main(["schedule", "--method", "edm", "--solver", "heun", "--nfe", "5", "-o", str(sched)]) == 0
    assert main(["sample", "--model", model, "--schedule", str(sched), "--solver", "heun", "--num", "6",
                 "--device", "cpu", "-o", str(out)]) == 0
    d = np.load(out)
    assert d["samples"].shape == (6, 3, 8, 8) and d["labels"].shape == (6,) and d["labels"].max() < 4
    assert main(["probe", "--model", model, "--grid", "3", "--samples", "4", "--device", "cpu",
                 "-o", str(tmp_path / "p.h5")]) == 0
    r = read_probes(tmp_path / "p.h5")
    assert r.data == "model:1024" and r.samples == 4 and np.all(np.isfinite(r.mean))


# ----------------------------------------------------------------------------------------------
# Trust rules (read_trusted_pickle): a lock-file record trusts only the download of its URL


REGISTERED = "edm-cifar10-32x32-cond-vp"


def _payload(path, marker):
    """A pickle whose unpickling creates ``marker``; returns its sha256."""
    path.write_bytes(pickle.dumps({"ema": _RunsCode(marker)}))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _serve(folder):
    """Serve ``folder`` over HTTP on 127.0.0.1; yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


@pytest.mark.parametrize("where", ["working-directory", "cache"])
@pytest.mark.parametrize("key", ["random-url", "registered-url", "registered-name", "own-file-url"])
def test_lock_file_never_trusts_a_local_pickle(tmp_path, no_edm_code, monkeypatch, capsys, where, key):
    """The attack of issue 23: a folder ships model.pkl and a lock file recording its hash.

    Neither a lock file in ``./resources/models`` (the old default cache) nor one in the configured
    cache folder makes a local path trusted, under whatever URL it records the hash; ``edm:PATH``
    through load_model and through ``adasched sample`` is refused in one line and the payload never
    runs.  Pinned, the same file does run (the payload is real)."""
    from adasched.cli import main

    work, cache = tmp_path / "project", tmp_path / "cache"
    work.mkdir()
    monkeypatch.chdir(work)
    if where == "working-directory":  # the default cache folder, which used to be ./resources/models
        monkeypatch.delenv("ADASCHED_CACHE_DIR", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(cache.parent / "xdg"))
    else:
        monkeypatch.setenv("ADASCHED_CACHE_DIR", str(cache))
    marker = tmp_path / "payload-ran"
    digest = _payload(work / "model.pkl", marker)
    url = {"random-url": "https://example.org/f3a9/model.pkl",
           "registered-url": registry.get_model(REGISTERED).url, "registered-name": REGISTERED,
           "own-file-url": (work / "model.pkl").as_uri()}[key]
    lock_dir = work / "resources" / "models" if where == "working-directory" else cache
    record_hash(lock_dir / "adasched-lock.json", url, digest)

    with pytest.raises(ModelError) as e:
        load_model("edm:model.pkl")
    message = str(e.value)
    assert "\n" not in message and "model.pkl" in message and digest in message
    assert "#sha256=" in message and "--trust-pickle" in message and "edm:NAME" in message
    assert not marker.exists()

    assert main(["schedule", "--method", "edm", "--solver", "euler", "--nfe", "3", "-o", "s.json"]) == 0
    capsys.readouterr()
    out = work / "x.npz"
    assert main(["sample", "--model", "edm:model.pkl", "--schedule", "s.json", "--solver", "euler",
                 "--num", "2", "--device", "cpu", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("adasched sample: error: refusing to unpickle model.pkl") and err.count("\n") == 1
    assert digest in err and not out.exists() and not marker.exists()

    # A local file named like a registered checkpoint is a local path too.
    (work / f"{REGISTERED}.pkl").write_bytes((work / "model.pkl").read_bytes())
    with pytest.raises(ModelError, match=f"refusing to unpickle {REGISTERED}.pkl .sha256 {digest}"):
        load_model(f"edm:{REGISTERED}.pkl")
    assert not marker.exists()

    with pytest.raises(ModelError, match="should be a torch.nn.Module"):  # the payload returns None
        load_model(f"edm:model.pkl#sha256={digest}")
    assert marker.exists()


def test_registered_name_is_fetched_into_the_user_cache_not_the_working_directory(tmp_path, no_edm_code,
                                                                                   monkeypatch):
    """``edm:NAME`` reads the cache folder the user configured (default ``$XDG_CACHE_HOME/adasched``):
    a checkpoint and lock file shipped in ``./resources/models`` are never looked at, the checkpoint
    is downloaded (here from a loopback server) and recorded for its URL, and later loads are checked
    against that record."""
    served = tmp_path / "served"
    served.mkdir()
    good = _build(SRC, "tiny_served", img_resolution=8, img_channels=3)
    entry = registry.get_model(REGISTERED)
    digest = _write_edm_pickle(served / entry.filename, SRC, dict(ema=good))

    work = tmp_path / "project"
    shipped = work / "resources" / "models"  # the old default cache, relative to the working directory
    shipped.mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    evil = _payload(shipped / entry.filename, marker)
    monkeypatch.chdir(work)
    monkeypatch.delenv("ADASCHED_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    cache = tmp_path / "xdg" / "adasched"
    assert edm.default_cache_dir() == cache

    with _serve(served) as base:
        url = base + entry.filename
        monkeypatch.setitem(registry.MODELS, REGISTERED, dataclasses.replace(entry, url=url))
        record_hash(shipped / "adasched-lock.json", url, evil)  # what the old default cache would have trusted
        D = load_model(f"edm:{REGISTERED}")
        assert D.sha256 == digest and lock_entry(cache / "adasched-lock.json", url) == digest
        assert (cache / entry.filename).read_bytes() == (served / entry.filename).read_bytes()
        x, sigma = _inputs()
        with torch.no_grad():
            assert torch.equal(D(x, sigma), good(x, sigma))
        # The cached download is checked against its record: changed bytes are refused.
        (cache / entry.filename).write_bytes((shipped / entry.filename).read_bytes())
        with pytest.raises(DownloadError, match=f"expected {digest}"):
            load_model(f"edm:{REGISTERED}")
    assert not marker.exists()


def test_url_recorded_at_first_download_trusts_that_download_only(tmp_path, no_edm_code):
    """``trust=True`` records a URL's hash at its first download (loopback HTTP); later loads of that
    URL need no trust, but the same bytes given as a local path, even the cached file itself, do."""
    served = tmp_path / "served"
    served.mkdir()
    net = _build(SRC, "tiny_url", img_resolution=8, img_channels=3)
    digest = _write_edm_pickle(served / "net.pkl", SRC, dict(ema=net))
    cache = tmp_path / "cache"
    lock = cache / "adasched-lock.json"
    with _serve(served) as base:
        url = base + "net.pkl"
        with pytest.raises(ModelError, match=f"refusing to load {url}: .* neither pinned nor recorded"):
            load_edm(f"edm:{url}", cache_dir=cache)
        assert not (cache / "net.pkl").exists()
        load_edm(f"edm:{url}", trust=True, cache_dir=cache)
        assert lock_entry(lock, url) == digest
        assert load_edm(f"edm:{url}", cache_dir=cache).sha256 == digest
    for local in (cache / "net.pkl", served / "net.pkl"):
        with pytest.raises(ModelError, match=f"sha256 {digest}.*neither pinned nor a recorded download"):
            load_edm(f"edm:{local}", cache_dir=cache)


def test_read_trusted_pickle_rules(tmp_path, no_edm_code):
    """The gate itself: pin, record and trust admit a file; a mismatching pin or record refuses it,
    whatever else is given; nothing at all refuses it; the payload runs only when admitted."""
    marker = tmp_path / "ran"
    path = tmp_path / "p.pkl"
    digest = _payload(path, marker)
    other = "cd" * 32
    for kwargs in (dict(), dict(pinned=other, trust=True), dict(recorded=other, trust=True),
                   dict(pinned=other, recorded=digest)):
        with pytest.raises(ModelError, match=f"refusing to unpickle {path}"):
            edm.read_trusted_pickle(path, **kwargs)
        assert not marker.exists()
    for kwargs in (dict(pinned=digest), dict(recorded=digest), dict(trust=True),
                   dict(pinned=digest, recorded=other)):
        assert edm.read_trusted_pickle(path, **kwargs) == ({"ema": None}, digest)
        assert marker.exists()
        marker.unlink()


def test_default_cache_dir(tmp_path, monkeypatch):
    """``$ADASCHED_CACHE_DIR``, else ``$XDG_CACHE_HOME/adasched`` (absolute only), else ``~/.cache/adasched``."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ADASCHED_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert edm.default_cache_dir() == tmp_path / "home" / ".cache" / "adasched"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec ignores relative paths
    assert edm.default_cache_dir() == tmp_path / "home" / ".cache" / "adasched"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert edm.default_cache_dir() == tmp_path / "xdg" / "adasched"
    monkeypatch.setenv("ADASCHED_CACHE_DIR", str(tmp_path / "mine"))
    assert edm.default_cache_dir() == tmp_path / "mine"
