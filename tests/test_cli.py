"""The command line as users meet it: the interface contract of design.md, and its bad-input behaviour."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from adasched.cli import main
from clirun import run
from adasched.samplers import SOLVERS, generate, nfe_for_steps
from adasched.schedules import Schedule, sigmas_edm
from adasched.targets import GaussianMixture

MIXTURE = {"weights": [0.3, 0.7], "means": [[-1.0, 0.0], [1.0, 0.5]], "variances": [[0.01, 0.1], [0.05, 0.02]]}


@pytest.fixture
def mixture(tmp_path):
    path = tmp_path / "mixture.json"
    path.write_text(json.dumps(MIXTURE))
    return path


@pytest.mark.parametrize("method", ["edm", "loglinear", "kl-optimal", "time-uniform"])
def test_schedule_writes_contract_json(tmp_path, capsys, method):
    out = tmp_path / "s.json"
    rc, err = run(["schedule", "--method", method, "--solver", "heun", "--nfe", 35, "-o", out], capsys)
    assert rc == 0 and err == ""
    obj = json.loads(out.read_text())
    assert set(obj) == {"sigmas", "method", "solver", "nfe", "params", "provenance"}
    assert obj["method"] == method and obj["solver"] == "heun" and obj["nfe"] == 35
    assert len(obj["sigmas"]) == 19 and obj["sigmas"][-1] == 0.0
    assert obj["sigmas"][0] == 80.0 and obj["sigmas"][-2] == pytest.approx(0.002, rel=1e-12)
    assert "adasched" in obj["provenance"]


def test_schedule_steps_and_rho(tmp_path, capsys):
    out = tmp_path / "s.json"
    rc, _ = run(["schedule", "--method", "edm", "--rho", 3, "--solver", "dpmpp-2m", "--steps", 10,
                 "--sigma-min", 0.01, "--sigma-max", 10, "-o", out], capsys)
    assert rc == 0
    s = Schedule.load(out)
    assert s.nfe == 10 and s.params["rho"] == 3
    torch.testing.assert_close(s.sigmas, sigmas_edm(10, 0.01, 10, rho=3), rtol=1e-15, atol=0)


def test_schedule_pc_langevin_nfe_counts_corrector(tmp_path, capsys):
    out = tmp_path / "s.json"
    rc, _ = run(["schedule", "--method", "edm", "--solver", "pc-langevin", "--nfe", 13, "--langevin-steps", 2,
                 "-o", out], capsys)
    assert rc == 0
    s = Schedule.load(out)
    assert s.steps == 5 and s.nfe == 5 + 2 * 4
    assert s.params["solver_options"] == {"langevin_steps": 2}


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_sample_contract_npz(tmp_path, capsys, mixture, solver):
    sched, out = tmp_path / "s.json", tmp_path / "x.npz"
    assert run(["schedule", "--method", "edm", "--solver", solver, "--steps", 6, "-o", sched], capsys)[0] == 0
    rc, err = run(["sample", "--model", f"gmm:{mixture}", "--schedule", sched, "--solver", solver, "--num", 9,
                   "--seed-start", 100, "--batch", 4, "-o", out], capsys)
    assert rc == 0 and err == ""
    d = np.load(out)
    assert d["samples"].shape == (9, 2) and d["samples"].dtype == np.float32
    assert d["latents"].shape == (9, 2) and d["latents"].dtype == np.float32
    assert d["seeds"].dtype == np.int64 and d["seeds"].tolist() == list(range(100, 109))
    assert d["sigmas"].dtype == np.float64 and d["sigmas"][-1] == 0
    assert int(d["nfe"]) == nfe_for_steps(solver, 6)
    # The start point is latents * sigmas[0], and the result is what the library gives for these seeds (in the
    # same batches: the same arithmetic, so equal bit for bit on any CPU).
    ref = generate(GaussianMixture(**MIXTURE), torch.from_numpy(d["sigmas"]), solver, range(100, 109), (2,),
                   batch=4)
    assert np.array_equal(ref["latents"].numpy(), d["latents"])
    assert np.array_equal(ref["samples"].numpy(), d["samples"])


def _bad_input_cases(tmp_path, mixture):
    good = tmp_path / "good.json"
    Schedule(sigmas_edm(5), method="edm", solver="euler", nfe=5).save(good)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    increasing = tmp_path / "inc.json"
    increasing.write_text(json.dumps({"sigmas": [1.0, 2.0, 0.0], "method": "x", "solver": "euler", "nfe": 2}))
    no_zero = tmp_path / "nozero.json"
    no_zero.write_text(json.dumps({"sigmas": [2.0, 1.0], "method": "x", "solver": "euler", "nfe": 1}))
    bad_gmm = tmp_path / "badgmm.json"
    bad_gmm.write_text(json.dumps({"weights": [0.5, 0.6], "means": [[0], [1]], "variances": [[1], [1]]}))
    sample = ["sample", "--solver", "euler", "--num", 3]
    return {
        "unknown method": (["schedule", "--method", "nope", "--solver", "euler", "--nfe", 5], "edm"),
        "unknown solver": (["schedule", "--method", "edm", "--solver", "rk45", "--nfe", 5], "heun"),
        "unreachable nfe": (["schedule", "--method", "edm", "--solver", "heun", "--nfe", 10], "reachable"),
        "bad rho": (["schedule", "--method", "edm", "--rho", -1, "--solver", "euler", "--nfe", 5], "rho"),
        "inverted range": (["schedule", "--method", "loglinear", "--sigma-min", 5, "--sigma-max", 1,
                            "--solver", "euler", "--nfe", 5], "sigma_min"),
        "zero nfe": (["schedule", "--method", "edm", "--solver", "euler", "--nfe", 0], "positive integer"),
        "missing schedule": (sample + ["--model", f"gmm:{mixture}", "--schedule", tmp_path / "none.json"], "not found"),
        "malformed schedule": (sample + ["--model", f"gmm:{mixture}", "--schedule", bad_json], "not valid JSON"),
        "increasing sigmas": (sample + ["--model", f"gmm:{mixture}", "--schedule", increasing], "strictly decreasing"),
        "no final zero": (sample + ["--model", f"gmm:{mixture}", "--schedule", no_zero], "end in exactly 0"),
        "missing model": (sample + ["--model", f"gmm:{tmp_path / 'none.json'}", "--schedule", good], "not found"),
        "unknown model kind": (sample + ["--model", "foo:bar", "--schedule", good], "kinds: "),
        "malformed model": (sample + ["--model", f"gmm:{bad_gmm}", "--schedule", good], "sum to 1"),
        "bad device": (sample + ["--model", f"gmm:{mixture}", "--schedule", good, "--device", "nodevice"], "device"),
        "bad solver option": (sample + ["--model", f"gmm:{mixture}", "--schedule", good, "--s-churn", 3],
                              "takes no option"),
    }


CASES = ["unknown method", "unknown solver", "unreachable nfe", "bad rho", "inverted range", "zero nfe",
         "missing schedule", "malformed schedule", "increasing sigmas", "no final zero", "missing model",
         "unknown model kind", "malformed model", "bad device", "bad solver option"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_one_line_no_output(tmp_path, capsys, mixture, case):
    argv, needle = _bad_input_cases(tmp_path, mixture)[case]
    out = tmp_path / "out" / ("o.npz" if argv[0] == "sample" else "o.json")
    before = set(tmp_path.rglob("*"))
    try:
        rc, err = run(argv + ["-o", out], capsys)
    except SystemExit as e:  # argparse usage errors exit through SystemExit
        rc, err = e.code, capsys.readouterr().err
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert needle in lines[0] and "Traceback" not in err
    assert not out.exists()
    assert {p for p in set(tmp_path.rglob("*")) - before if p.is_file()} == set()


def test_console_script_bad_input_has_no_traceback(tmp_path):
    """The real entry point, as a user runs it: one line, non-zero exit, nothing written."""
    out = tmp_path / "o.json"
    proc = subprocess.run([sys.executable, "-m", "adasched", "schedule", "--method", "edm", "--solver", "heun",
                           "--nfe", "4", "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "cannot spend exactly 4" in proc.stderr and not out.exists()


def test_help_has_examples(capsys):
    for cmd in ("schedule", "sample"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert f"adasched {cmd} --" in capsys.readouterr().out


# ------------------------------------------------------------------ probe, probed schedules, evaluate


def test_probe_appends_and_score_optimal_schedule(tmp_path, capsys, mixture):
    h5 = tmp_path / "p.h5"
    base = ["probe", "--model", f"gmm:{mixture}", "--grid", 20, "--samples", 8, "--batch", 5, "-o", h5]
    assert run(base, capsys)[0] == 0
    assert run(base, capsys)[0] == 0  # a second run adds samples
    from adasched.probe import read_probes

    pr = read_probes(h5)
    assert (pr.count == 16).all() and pr.cost == "corrector" and pr.sigmas.size == 21
    out = tmp_path / "co.json"
    rc, err = run(["schedule", "--method", "score-optimal", "--probes", h5, "--solver", "heun", "--nfe", 9,
                   "-o", out], capsys)
    assert rc == 0 and err == ""
    s = Schedule.load(out)
    assert s.method == "score-optimal" and s.steps == 5 and s.nfe == 9
    assert float(s.sigmas[0]) == pytest.approx(80) and float(s.sigmas[-2]) == pytest.approx(0.002)
    assert s.params["probes_sha256"] and s.params["samples_per_interval"] == 16
    # --total-samples tops a file up to a count (so rerunning an interrupted probe finishes it): no more.
    top = [a if a != "--samples" else "--total-samples" for a in base]
    assert run(top, capsys)[0] == 0 and (read_probes(h5).count == 16).all()
    for _ in range(2):
        assert run(top[:-1] + [tmp_path / "t.h5"], capsys)[0] == 0
    assert run(base[:-1] + [tmp_path / "once.h5"], capsys)[0] == 0
    t = read_probes(tmp_path / "t.h5")
    assert (t.count == 8).all() and np.array_equal(t.sum, read_probes(tmp_path / "once.h5").sum)
    with pytest.raises(SystemExit):
        main([str(a) for a in base + ["--total-samples", 8]])
    # The predictor-optimised cost and its schedule.
    po = tmp_path / "po.h5"
    assert run(["probe", "--model", f"gmm:{mixture}", "--cost", "predictor", "--grid", 12, "--samples", 8,
                "-o", po], capsys)[0] == 0
    rc, err = run(["schedule", "--method", "score-optimal-po", "--probes", po, "--solver", "dpmpp-2m", "--nfe", 8,
                   "-o", tmp_path / "po.json"], capsys)
    assert rc == 0 and err == ""
    s = Schedule.load(tmp_path / "po.json")
    assert s.method == "score-optimal-po" and s.nfe == 8 and s.steps == 8 and float(s.sigmas[-1]) == 0.0
    assert float(s.sigmas[0]) == pytest.approx(80) and torch.all(s.sigmas[:-1] > s.sigmas[1:])


def test_solver_aware_schedule_beats_its_start(tmp_path, capsys, mixture):
    from adasched.metrics import ode_error
    from adasched.samplers import latents, sample_dpmpp_2m

    h5, out = tmp_path / "p.h5", tmp_path / "sa.json"
    assert run(["probe", "--model", f"gmm:{mixture}", "--grid", 40, "--samples", 32, "-o", h5], capsys)[0] == 0
    rc, err = run(["schedule", "--method", "solver-aware", "--probes", h5, "--model", f"gmm:{mixture}",
                   "--solver", "dpmpp-2m", "--nfe", 6, "--fit-seeds", 32, "--fit-iterations", 60, "-o", out], capsys)
    assert rc == 0, err
    s = Schedule.load(out)
    g = GaussianMixture(**MIXTURE)
    z = latents(range(64), (2,)).double()  # evaluation seeds differ from the fit seeds (1000000..)
    fitted = ode_error(g, sample_dpmpp_2m(g, z * 80, s.sigmas), z, 80.0)
    start = ode_error(g, sample_dpmpp_2m(g, z * 80, torch.tensor(s.params["initial_sigmas"])), z, 80.0)
    assert fitted < start


def test_solver_aware_schedule_fits_a_stored_reference_and_records_its_cost(tmp_path, capsys, mixture):
    """`adasched fit-reference` solves the fit latents once; `schedule --reference` fits to them, records what
    the fit spent, and refuses the solves of other latents in one line."""
    h5, ref, out = tmp_path / "p.h5", tmp_path / "ref.h5", tmp_path / "sa.json"
    spec = f"gmm:{mixture}"
    assert run(["probe", "--model", spec, "--grid", 40, "--samples", 32, "-o", h5], capsys)[0] == 0
    assert run(["fit-reference", "--model", spec, "--fit-seeds", 16, "-o", ref], capsys) == (0, "")
    rc, err = run(["schedule", "--method", "solver-aware", "--probes", h5, "--model", spec, "--reference", ref,
                   "--solver", "euler", "--nfe", 5, "--fit-seeds", 16, "--fit-iterations", 20,
                   "--fit-budget", 20000, "-o", out], capsys)
    assert rc == 0, err
    s = Schedule.load(out)
    cost = s.params["fit_cost"]
    assert cost["budget"] == 20000 and 0 < cost["forward"] + cost["backward"] <= 20000
    assert s.params["reference"] == str(ref) and 0 < s.params["reference_error"] < 1e-6
    assert s.params["fit_error"] < s.params["fit_start_error"]
    rc, err = run(["schedule", "--method", "solver-aware", "--probes", h5, "--model", spec, "--reference", ref,
                   "--solver", "euler", "--nfe", 5, "--fit-seeds", 8, "-o", tmp_path / "other.json"], capsys)
    assert rc == 1 and err.count("\n") == 1 and "use the same --fit-seeds" in err
    assert not (tmp_path / "other.json").exists()


def test_evaluate_writes_metrics_with_provenance(tmp_path, capsys, mixture):
    sched, lo, hi = tmp_path / "s.json", tmp_path / "lo.npz", tmp_path / "hi.npz"
    assert run(["schedule", "--method", "edm", "--solver", "heun", "--steps", 4, "-o", sched], capsys)[0] == 0
    hi_sched = tmp_path / "hi.json"
    assert run(["schedule", "--method", "edm", "--solver", "heun", "--steps", 64, "-o", hi_sched], capsys)[0] == 0
    for s, o in ((sched, lo), (hi_sched, hi)):
        assert run(["sample", "--model", f"gmm:{mixture}", "--schedule", s, "--solver", "heun", "--num", 16,
                    "-o", o], capsys)[0] == 0
    met = tmp_path / "m.json"
    rc, err = run(["evaluate", "--samples", lo, "--model", f"gmm:{mixture}", "--reference", hi, "-o", met], capsys)
    assert rc == 0, err
    m = json.loads(met.read_text())
    assert m["nfe"] == 7 and m["reference_nfe"] == 127 and m["num_samples"] == 16
    assert set(m["metrics"]) == {"ode_rmse", "target_sliced_w2", "reference_rmse"}
    assert m["metrics"]["reference_rmse"] == pytest.approx(m["metrics"]["ode_rmse"], rel=0.2)
    assert len(m["inputs"]["samples_sha256"]) == 64 and "adasched" in m["provenance"]


def test_probed_method_bad_inputs(tmp_path, capsys, mixture):
    h5 = tmp_path / "p.h5"
    assert run(["probe", "--model", f"gmm:{mixture}", "--grid", 5, "--samples", 2, "-o", h5], capsys)[0] == 0
    cases = [
        (["schedule", "--method", "score-optimal", "--solver", "euler", "--nfe", 5], "needs --probes"),
        (["schedule", "--method", "score-optimal-po", "--probes", h5, "--solver", "euler", "--nfe", 5], "'predictor'"),
        (["schedule", "--method", "solver-aware", "--probes", h5, "--solver", "euler", "--nfe", 5], "needs --model"),
        (["probe", "--model", f"gmm:{mixture}", "--grid", 7, "--samples", 2, "-o", h5], "grid"),
        (["probe", "--model", f"gmm:{mixture}", "--data", "nope", "--grid", 5, "--samples", 2], "valid:"),
        (["evaluate", "--samples", tmp_path / "none.npz", "--model", f"gmm:{mixture}"], "not found"),
    ]
    for argv, needle in cases:
        out = tmp_path / "out.x"
        if argv[0] != "probe" or "-o" not in argv:
            argv = argv + ["-o", out]
        rc, err = run(argv, capsys)
        assert rc != 0 and len(err.strip().splitlines()) == 1 and needle in err, (argv, err)
        assert not out.exists()


@pytest.mark.parametrize("where", ["a folder", "under a file"])
@pytest.mark.parametrize("command", ["schedule", "sample", "evaluate", "probe", "fit-reference", "train"])
def test_unwritable_output_is_one_line_before_any_work(tmp_path, capsys, mixture, command, where):
    """An output that cannot be written is refused up front, in one line, with nothing written."""
    good = tmp_path / "good.json"
    Schedule(sigmas_edm(5), method="edm", solver="euler", nfe=5).save(good)
    samples = tmp_path / "s.npz"
    assert main(["sample", "--solver", "euler", "--num", "3", "--model", f"gmm:{mixture}", "--schedule", str(good),
                 "-o", str(samples)]) == 0
    argv = {"schedule": ["schedule", "--method", "edm", "--solver", "euler", "--nfe", "5"],
            "sample": ["sample", "--solver", "euler", "--num", "3", "--model", f"gmm:{mixture}", "--schedule", good],
            "evaluate": ["evaluate", "--samples", samples, "--model", f"gmm:{mixture}"],
            "probe": ["probe", "--model", f"gmm:{mixture}", "--grid", "4", "--samples", "8"],
            "fit-reference": ["fit-reference", "--model", f"gmm:{mixture}", "--fit-seeds", "2"],
            "train": ["train", "--data", "digits", "--steps", "1"]}[command]
    blocker = tmp_path / "blocker"
    if where == "a folder":
        blocker.mkdir()
        out = blocker
    else:
        blocker.write_text("a file")
        out = blocker / "sub" / "o.out"
    before = set(tmp_path.rglob("*"))
    rc, err = run(argv + ["-o", out], capsys)
    assert rc == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0], err
    assert ("is a directory" if where == "a folder" else "is a file, not a folder") in lines[0]
    assert set(tmp_path.rglob("*")) == before


def test_class_label_fixes_the_class_of_every_sample(tmp_path, capsys, mixture, monkeypatch):
    """`--class-label N` (EDM's --class): every sample of a conditional model is of class N, from the same latents
    as a random-class run; a class the model does not have, or a model without classes, is one line."""
    from conditional_gaussians import ConditionalGaussians

    from adasched import models

    means = [[-20.0, 0.0], [0.0, 20.0], [20.0, 0.0]]
    monkeypatch.setitem(models.LOADERS, "condgauss", lambda arg, **kw: ConditionalGaussians(means, c=0.5))
    sched = tmp_path / "s.json"
    assert run(["schedule", "--method", "edm", "--solver", "heun", "--nfe", 9, "-o", sched], capsys)[0] == 0
    base = ["sample", "--model", "condgauss:three", "--schedule", sched, "--solver", "heun", "--num", 12,
            "--batch", 5]
    assert run(base + ["-o", tmp_path / "random.npz"], capsys) == (0, "")
    assert run(base + ["--class-label", 2, "-o", tmp_path / "two.npz"], capsys) == (0, "")
    with np.load(tmp_path / "random.npz") as r, np.load(tmp_path / "two.npz") as t:
        assert len(set(r["labels"].tolist())) > 1 and t["labels"].tolist() == [2] * 12
        np.testing.assert_array_equal(r["latents"], t["latents"])
        assert np.all(np.abs(t["samples"] - np.array(means[2])).max(axis=1) < 5.0)  # class 2's component
    for argv, needle in ((base + ["--class-label", 3], "class_label 3 is not a class of this model: it has classes "
                                                       "0 to 2"),
                         (["sample", "--model", f"gmm:{mixture}", "--schedule", sched, "--solver", "heun", "--num",
                           3, "--class-label", 0], "no classes (not class-conditional)")):
        rc, err = run(argv + ["-o", tmp_path / "bad.npz"], capsys)
        assert rc == 1 and len(err.strip().splitlines()) == 1 and needle in err, err
        assert not (tmp_path / "bad.npz").exists() and not (tmp_path / ".bad.npz.partial").exists()
