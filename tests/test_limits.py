"""Issue 23, items 1 and 2: sizes are checked before anything is allocated, shapes where arrays meet.

The memory bounds run in a child process whose address space is capped (``RLIMIT_AS``) at 4 GiB above
its baseline after the imports.  Every case is one that, unchecked, would run for hours or allocate far
beyond the cap (a ``MemoryError`` traceback); checked, it is one ``AdaschedError`` line, and the child's
peak resident memory grows by well under the cap.
"""

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adasched import limits
from adasched.data import load_images
from adasched.errors import DataError, LimitError, ModelError, SolverError
from adasched.fid import FeatureExtractor, compute_digits_fd, image_features
from adasched.metrics import evaluate_samples
from adasched.probe import dataset_sampler, probe, probe_grid
from adasched.samplers import generate, nfe_for_steps, steps_for_nfe
from adasched.schedules import sigmas_edm

GiB = 1 << 30
ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------------
# The capped child
# --------------------------------------------------------------------------------------------------

CHILD = """
import resource, sys
{imports}
from adasched.errors import AdaschedError

def vmsize():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

cap = vmsize() + {above}
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
{body}
except AdaschedError as e:
    print(f"{{type(e).__name__}}: {{e}}", file=sys.stderr)
    sys.exit(1)
finally:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak)  # KiB of new peak resident memory
"""


def run_capped(body: str, imports: str = "import torch", cwd=None) -> subprocess.CompletedProcess:
    """Run ``body`` in a child whose address space is capped 4 GiB above its size after ``imports``."""
    script = CHILD.format(imports=imports, above=4 * GiB, body=textwrap.indent(textwrap.dedent(body), "    "))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd or ROOT, env=env)


def assert_refused(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """One error line naming every fragment, exit 1, and no more than 1 GiB of new peak memory."""
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert int(proc.stdout.split()[-1]) < GiB // 1024, proc.stdout
    return lines[0]


def test_the_cap_is_what_the_checks_see():
    proc = run_capped("""
        from adasched.limits import available_memory
        have, source = available_memory()
        print(have, source, sep=",", file=sys.stderr)
    """, "import torch, adasched.limits")
    assert proc.returncode == 0, proc.stderr
    have, source = proc.stderr.strip().split(",")
    assert int(have) <= 4 * GiB  # the least source: the cap's headroom, or less on a smaller machine
    assert not source.startswith("RLIMIT_AS") or int(have) > 3 * GiB  # headroom above what the imports mapped


def test_cli_schedule_huge_nfe_one_line_no_file(tmp_path):
    """``python -m adasched schedule ... --nfe 1000000000`` (once 23.6 GB, then killed) under the cap."""
    for flag in ("--nfe", "--steps"):
        out = tmp_path / "o.json"
        proc = run_capped(f"""
            import runpy
            sys.argv = ["adasched", "schedule", "--method", "edm", "--solver", "euler", "{flag}", "1000000000",
                        "-o", "{out}"]
            runpy.run_module("adasched", run_name="__main__")
        """, "import torch, adasched.cli, adasched.samplers, adasched.schedules, adasched.io", cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
        assert proc.stderr.startswith("adasched schedule: error: ") and "1000000000" in proc.stderr
        assert "100,000" in proc.stderr and not out.exists()


@pytest.mark.parametrize("name,body,fragments", [
    ("nfe", "from adasched.samplers import steps_for_nfe\nsteps_for_nfe('heun', 10**9)",
     ["nfe 1000000000", "maximum 100,000"]),
    ("steps", "from adasched.schedules import sigmas_loglinear\nsigmas_loglinear(10**9)",
     ["number of steps 1000000000", "maximum 100,000"]),
    ("grid", "from adasched.probe import probe_grid\nprobe_grid(10**9)",
     ["probe intervals 1000000000", "maximum 100,000"]),
    # 2 x 1e9 x 2 float32 = 15 GiB of samples and latents, which the unchecked loop would fill for hours
    ("num", """
        from adasched.samplers import generate
        from adasched.schedules import sigmas_edm
        from adasched.targets import GaussianMixture
        gmm = GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 1.0]])
        generate(gmm, sigmas_edm(2), "euler", range(10**9), (2,))
     """, ["1000000000 samples of shape (2,)", "GiB available ("]),
    # a 1000-component, 1000-D mixture on a batch of 256: five [256, 1000, 1000] float64 posteriors, 9.5 GiB
    ("batch", """
        from adasched.samplers import generate
        from adasched.schedules import sigmas_edm
        from adasched.targets import GaussianMixture
        k, d = 1000, 1000
        gmm = GaussianMixture([1 / k] * k, [[0.0] * d] * k, [[1.0] * d] * k)
        generate(gmm, sigmas_edm(2), "euler", range(256), (d,), batch=256)
     """, ["256 samples of shape (1000,) in batches of 256", "model's working set"]),
    ("powerlaw", """
        from adasched.targets import PowerLawGaussian
        PowerLawGaussian.from_json({"shape": [3, 100000, 100000]})
     """, ["power-law Gaussian of shape [3, 100000, 100000]", "GiB available"]),
    # 3 x 256 x 256 images in batches of 4096: eight float64 batches are 48 GiB
    ("probe", """
        from adasched.probe import probe, probe_grid, target_sampler
        from adasched.targets import PowerLawGaussian
        model = PowerLawGaussian((3, 256, 256)).in_eigenbasis()
        try:
            probe(model, target_sampler(model), probe_grid(8), 4096, "p.h5", batch=4096)
        finally:
            import os
            assert not os.path.exists("p.h5")
     """, ["probing 8 intervals in batches of 4096 samples of shape (3, 256, 256)", "GiB available"]),
])
def test_sizes_refused_under_a_capped_address_space(tmp_path, name, body, fragments):
    assert_refused(run_capped(body, "import torch, scipy, adasched.samplers, adasched.probe", cwd=tmp_path),
                   "LimitError: ", *fragments)


def _npz_claiming(path: Path, shape: tuple, **real) -> Path:
    """An NPZ whose ``samples`` header claims ``shape`` float32 (only a few bytes follow), plus ``real`` arrays."""
    np.savez(path, **real)
    with zipfile.ZipFile(path, "a") as z, z.open("samples.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        f.write(b"\0" * 64)
    return path


@pytest.mark.parametrize("reader,fragment", [
    ("from adasched.data import load_data_sampler\nload_data_sampler('npz:{path}:samples', None)",
     "NPZ data {path}:samples of shape (1000000, 1000000)"),
    ("from adasched.metrics import evaluate_samples\nevaluate_samples('{path}')", "samples file {path}"),
    ("from adasched.fid import load_runs\nload_runs(['{path}'])", "samples file {path} of shape (1000000, 1000000)"),
])
def test_npz_sizes_come_from_the_header_before_loading(tmp_path, reader, fragment):
    """A 3.6 TiB array claimed by a header: unchecked, numpy allocates it first (MemoryError under the cap)."""
    path = _npz_claiming(tmp_path / "big.npz", (10**6, 10**6), seeds=np.arange(3))
    assert_refused(run_capped(reader.format(path=path), "import torch, adasched.data, adasched.metrics, adasched.fid"),
                   "LimitError: ", fragment.format(path=path), "3.73e+03 GiB")


# --------------------------------------------------------------------------------------------------
# The pieces in process
# --------------------------------------------------------------------------------------------------


def test_check_memory_and_check_size_messages(monkeypatch):
    monkeypatch.setattr(limits, "available_memory", lambda: (4 * GiB, "a test limit"))
    limits.check_memory("a thing", 4 * GiB, "counted")  # exactly what there is: accepted
    with pytest.raises(LimitError) as e:
        limits.check_memory("a thing of 10 rows", 6 * GiB, "10 rows of 0.6 GiB")
    assert str(e.value) == ("a thing of 10 rows needs about 6 GiB (10 rows of 0.6 GiB), more than the 4 GiB "
                            "available (a test limit)")
    limits.check_size("nfe", 100_000, limits.MAX_NFE)
    with pytest.raises(LimitError, match=r"^nfe 100001 is above the maximum 100,000 \(why\)$"):
        limits.check_size("nfe", 100_001, limits.MAX_NFE, "why")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_cgroup_headroom_counts_file_cache_as_free(tmp_path, version):
    d = tmp_path if version == "v2" else tmp_path / "memory"
    d.mkdir(exist_ok=True)
    names = (("memory.max", "memory.current", "inactive_file") if version == "v2" else
             ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))
    (d / names[0]).write_text(f"{8 * GiB}\n")
    (d / names[1]).write_text(f"{5 * GiB}\n")
    (d / "memory.stat").write_text(f"active_file 7\n{names[2]} {2 * GiB}\n")
    assert limits._cgroup_headroom(tmp_path) == 5 * GiB  # 8 - (5 - 2)
    (d / names[0]).write_text("max\n" if version == "v2" else "9223372036854771712\n")  # no limit
    assert limits._cgroup_headroom(tmp_path) is None


def test_available_memory_is_the_least_source(monkeypatch):
    monkeypatch.setattr(limits, "_meminfo_available", lambda: 9 * GiB)
    monkeypatch.setattr(limits, "_address_space_headroom", lambda: None)
    monkeypatch.setattr(limits, "_cgroup_headroom", lambda root=None: 3 * GiB)
    assert limits.available_memory() == (3 * GiB, "memory cgroup limit less its usage")


@pytest.mark.parametrize("solver,opts,k", [("euler", {}, 1), ("heun", {}, 2),
                                           ("pc-langevin", {"langevin_steps": 3}, 4)])
def test_steps_for_nfe_closed_form_at_the_cap(solver, opts, k):
    """The inverse far beyond what the enumerating version could reach, and its nearest neighbours only."""
    top = (limits.MAX_NFE - 1) // k * k + 1  # the largest reachable NFE within the cap
    assert steps_for_nfe(solver, top, **opts) == (top - 1) // k + 1
    assert nfe_for_steps(solver, steps_for_nfe(solver, top, **opts), **opts) == top
    if k > 1:
        with pytest.raises(SolverError) as e:
            steps_for_nfe(solver, top - 1, **opts)
        assert str(e.value).endswith(f"nearby reachable NFE: {top - k}, {top}")
    with pytest.raises(LimitError):
        nfe_for_steps(solver, limits.MAX_STEPS + 1, **opts)


def test_generate_refuses_a_shape_that_is_not_the_models(mixture_2d):
    with pytest.raises(ModelError, match=r"shape \(3,\) asked of a model whose samples have shape \(2,\)"):
        generate(mixture_2d, sigmas_edm(2), "euler", range(4), (3,))


def test_generate_fills_preallocated_outputs_like_batches(mixture_2d):
    """Outputs are written in place batch by batch: identical for any batch size, ragged last batch included."""
    a = generate(mixture_2d, sigmas_edm(3), "heun", range(10, 17), (2,), batch=3)
    b = generate(mixture_2d, sigmas_edm(3), "heun", range(10, 17), (2,), batch=7)
    assert torch.equal(a["samples"], b["samples"]) and torch.equal(a["latents"], b["latents"])
    assert a["samples"].shape == (7, 2) and a["seeds"] == list(range(10, 17)) and a["nfe"] == 5


def _samples_npz(path, samples, seeds=None, latents=None):
    seeds = np.arange(len(samples)) if seeds is None else seeds
    np.savez(path, samples=samples, latents=samples if latents is None else latents, seeds=seeds,
             sigmas=np.array([80.0, 1.0, 0.0]), nfe=np.int64(2))
    return path


def test_evaluate_shapes_where_they_meet(tmp_path, mixture_64d, mixture_2d):
    two = _samples_npz(tmp_path / "two.npz", np.zeros((5, 2), np.float32))
    with pytest.raises(ModelError, match=r"samples of shape \(2,\), but the model's samples have shape \(64,\)"):
        evaluate_samples(two, mixture_64d)
    three = _samples_npz(tmp_path / "three.npz", np.zeros((5, 3), np.float32))
    with pytest.raises(DataError, match=r"holds samples of shape \(5, 3\), .*two.npz of shape \(5, 2\)"):
        evaluate_samples(two, None, three)
    other = _samples_npz(tmp_path / "other.npz", np.zeros((5, 2), np.float32), seeds=np.arange(5) + 1)
    with pytest.raises(DataError, match="not drawn from the same seeds"):
        evaluate_samples(two, None, other)
    bad = _samples_npz(tmp_path / "bad.npz", np.zeros((5, 2), np.float32), latents=np.zeros((4, 2), np.float32))
    with pytest.raises(DataError, match=r"samples of shape \(5, 2\), latents of shape \(4, 2\)"):
        evaluate_samples(bad, mixture_2d)
    assert evaluate_samples(two, mixture_2d)["metrics"]["ode_rmse"] > 0  # matching shapes are measured


def test_probe_refuses_data_of_another_shape_before_writing(tmp_path, mixture_2d):
    data = dataset_sampler(np.zeros((10, 3)), description="npz:three.npz")
    with pytest.raises(ModelError, match=r"npz:three.npz\) have samples of shape \(3,\) but the model takes samples "
                                         r"of shape \(2,\)"):
        probe(mixture_2d, data, probe_grid(4), 8, tmp_path / "p.h5")
    assert not (tmp_path / "p.h5").exists()


def test_feature_extractor_input_shape_is_checked_before_any_work(tmp_path):
    def never(x):
        raise AssertionError("the network must not run")

    extractor = FeatureExtractor(name="net", sha256="0" * 64, fn=never, input_shape=(1, 8, 8))
    with pytest.raises(DataError, match=r"^net takes images of shape \(1, 8, 8\); the samples have shape "
                                        r"\(3, 32, 32\)$"):
        image_features(np.zeros((4, 3, 32, 32), np.float32), extractor)
    # digits_fd: refused before a classifier is trained or loaded (this one does not exist)
    with pytest.raises(DataError, match=r"digits_fd takes images of shape \(1, 8, 8\); .* \(3, 32, 32\)"):
        compute_digits_fd([(np.arange(4), np.zeros((4, 3, 32, 32), np.float32))],
                          classifier=tmp_path / "missing.safetensors")


def test_image_folder_size_is_checked_before_decoding_all(tmp_path, monkeypatch):
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    assert load_images(tmp_path).data.shape == (3, 3, 8, 8)
    monkeypatch.setattr(limits, "available_memory", lambda: (575, "a test limit"))  # 3 x 3 x 8 x 8 = 576 bytes
    with pytest.raises(LimitError, match=r"^3 images of 3x8x8 in .* needs about .* GiB \(8-bit pixels.*"
                                         r"\(a test limit\)$"):
        load_images(tmp_path)
