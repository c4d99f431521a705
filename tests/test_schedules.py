"""Schedules: closed forms computed independently, the Schedule value and its JSON, validation, resampling."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from adasched.errors import AdaschedError, ScheduleError
from adasched.schedules import (CLOSED_FORM, SIGMA_MAX, SIGMA_MIN, Schedule, resample, sigmas_edm,
                                sigmas_kl_optimal, sigmas_loglinear, sigmas_time_uniform, validate_sigmas)

F64 = torch.float64
RANGES = [(SIGMA_MIN, SIGMA_MAX), (0.01, 10.0), (1e-4, 157.0), (0.3, 7.77)]
STEPS = [1, 2, 3, 10, 18, 257]

# (name, extra keyword arguments): EDM with several rho, and every other closed form
CONSTRUCTORS = [("edm", {"rho": r}) for r in (1.0, 3.0, 7.0, 10.5)] + [
    ("loglinear", {}), ("kl-optimal", {}), ("time-uniform", {})]
CONSTRUCTOR_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}".rstrip("-") for n, kw in CONSTRUCTORS]


def test_closed_form_registry_is_complete():
    assert set(CLOSED_FORM) == {"edm", "loglinear", "kl-optimal", "time-uniform"}
    assert CLOSED_FORM["edm"] is sigmas_edm and CLOSED_FORM["loglinear"] is sigmas_loglinear
    assert CLOSED_FORM["kl-optimal"] is sigmas_kl_optimal and CLOSED_FORM["time-uniform"] is sigmas_time_uniform
    assert (SIGMA_MIN, SIGMA_MAX) == (0.002, 80.0)


# --------------------------------------------------------------------------------------------------
# Shape, endpoints, order
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kw", CONSTRUCTORS, ids=CONSTRUCTOR_IDS)
@pytest.mark.parametrize("n", STEPS)
@pytest.mark.parametrize("lo,hi", RANGES)
def test_constructor_invariants(name, kw, n, lo, hi):
    s = CLOSED_FORM[name](n, lo, hi, **kw)
    assert isinstance(s, torch.Tensor) and s.dtype == F64 and s.device.type == "cpu"
    assert s.shape == (n + 1,)
    assert s[-1].item() == 0.0
    assert s[0].item() == hi  # exactly: the start point is latents * sigma_max
    if n > 1:
        assert s[-2].item() == lo
    assert (s[1:] < s[:-1]).all()
    assert torch.equal(validate_sigmas(s), s)


@pytest.mark.parametrize("name,kw", CONSTRUCTORS, ids=CONSTRUCTOR_IDS)
def test_constructor_defaults_are_edm_range(name, kw):
    s = CLOSED_FORM[name](18, **kw)
    assert s[0].item() == 80.0 and s[-2].item() == 0.002 and s.numel() == 19


@pytest.mark.parametrize("name,kw", CONSTRUCTORS, ids=CONSTRUCTOR_IDS)
def test_constructor_bad_arguments(name, kw):
    f = CLOSED_FORM[name]
    for n in (0, -1, 2.5, "10", None):
        with pytest.raises(ScheduleError, match="steps"):
            f(n, **kw)
    for lo, hi in ((1.0, 1.0), (2.0, 1.0), (0.0, 80.0), (-0.1, 80.0), (0.002, math.inf), (math.nan, 80.0)):
        with pytest.raises(ScheduleError, match="sigma_min"):
            f(10, lo, hi, **kw)


def test_edm_bad_rho():
    for rho in (0.0, -7.0, math.nan):
        with pytest.raises(ScheduleError, match="rho"):
            sigmas_edm(10, rho=rho)


# --------------------------------------------------------------------------------------------------
# Closed forms, computed independently
# --------------------------------------------------------------------------------------------------

def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


@pytest.mark.parametrize("rho", [1.0, 2.0, 3.0, 7.0, 10.5])
@pytest.mark.parametrize("n", [2, 5, 18, 64])
@pytest.mark.parametrize("lo,hi", RANGES)
def test_edm_formula(rho, n, lo, hi):
    """Karras et al. 2022, Eq. 5: sigma_i = (hi^(1/rho) + i/(n-1) (lo^(1/rho) - hi^(1/rho)))^rho."""
    want = [(hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(n)]
    s = sigmas_edm(n, lo, hi, rho=rho)
    # (the formula itself cancels near sigma_min when rho is small: ~1e-14 absolute on values ~1e-3)
    assert _rel(s[:-1], want) < 1e-10


def test_edm_rho_one_is_linear_and_large_rho_tends_to_loglinear():
    s = sigmas_edm(11, 0.5, 10.5, rho=1.0)[:-1]
    assert _rel(s[:-1] - s[1:], np.full(10, 1.0)) < 1e-12
    # (a + u (b - a))^rho -> a^(1-u) b^u as rho -> infinity: geometric spacing
    assert _rel(sigmas_edm(9, rho=1e6)[:-1], sigmas_loglinear(9)[:-1]) < 1e-4
    assert _rel(sigmas_edm(9, rho=7.0)[:-1], sigmas_loglinear(9)[:-1]) > 0.1


@pytest.mark.parametrize("n", [2, 3, 10, 100])
@pytest.mark.parametrize("lo,hi", RANGES)
def test_loglinear_has_constant_ratio(n, lo, hi):
    s = sigmas_loglinear(n, lo, hi)[:-1].numpy()
    ratio = (lo / hi) ** (1 / (n - 1))
    assert _rel(s[1:] / s[:-1], np.full(n - 1, ratio)) < 1e-12
    assert _rel(s, hi * ratio ** np.arange(n)) < 1e-12


@pytest.mark.parametrize("n", [2, 3, 10, 100])
@pytest.mark.parametrize("lo,hi", RANGES)
def test_kl_optimal_is_linear_in_arctan(n, lo, hi):
    """Sabour et al. 2024: arctan(sigma_i) = arctan(hi) + i/(n-1) (arctan(lo) - arctan(hi))."""
    s = sigmas_kl_optimal(n, lo, hi)[:-1].numpy()
    a = np.arctan(s)
    step = (math.atan(lo) - math.atan(hi)) / (n - 1)
    np.testing.assert_allclose(np.diff(a), step, rtol=1e-10, atol=0)
    # (tan of a sum that cancels down to arctan(lo) ~ lo: ~1e-16 absolute on values ~1e-4)
    assert _rel(s, np.tan(math.atan(hi) + np.arange(n) * step)) < 1e-10


def _vp_t(sigma, beta_min, beta_d):
    """Time of the linear-beta VP process (Song et al. 2021) at EDM noise level sigma: the positive root
    of beta_d t^2 / 2 + beta_min t = log(1 + sigma^2) (EDM's sigma_inv), written as c / (b + sqrt(b^2 +
    2 a c)) form so that it does not cancel at small sigma; the root is checked against the equation."""
    c = math.log1p(sigma**2)
    t = 2 * c / (beta_min + math.sqrt(beta_min**2 + 2 * beta_d * c))
    assert abs(0.5 * beta_d * t * t + beta_min * t - c) <= 1e-14 * c
    return t


def _vp_sigma(t, beta_min, beta_d):
    return math.sqrt(math.expm1(0.5 * beta_d * t * t + beta_min * t))


@pytest.mark.parametrize("beta", [(0.1, 19.9), (0.5, 5.0)])
@pytest.mark.parametrize("n", [2, 3, 10, 100])
@pytest.mark.parametrize("lo,hi", RANGES)
def test_time_uniform_is_uniform_in_vp_time(beta, n, lo, hi):
    b0, bd = beta
    s = sigmas_time_uniform(n, lo, hi, beta_min=b0, beta_d=bd)[:-1].tolist()
    t_hi, t_lo = _vp_t(hi, b0, bd), _vp_t(lo, b0, bd)
    # end points t(hi), t(lo) map back exactly (pinned; checked above); the interior follows the ramp in t
    want = [hi] + [_vp_sigma(t_hi + i / (n - 1) * (t_lo - t_hi), b0, bd) for i in range(1, n - 1)] + [lo]
    assert _rel(s, want) < 1e-12
    t = np.array([_vp_t(v, b0, bd) for v in s])
    np.testing.assert_allclose(np.diff(t), (t_lo - t_hi) / (n - 1), rtol=1e-8, atol=0)


def test_schedules_differ_from_each_other():
    """The closed forms are really different schedules (so the tests above are not vacuous)."""
    outs = {name: f(10) for name, f in CLOSED_FORM.items()}
    for a in outs:
        for b in outs:
            if a < b:
                assert _rel(outs[a][1:-2], outs[b][1:-2]) > 0.05, (a, b)


# --------------------------------------------------------------------------------------------------
# The Schedule value and its JSON
# --------------------------------------------------------------------------------------------------

def _schedule(**over):
    kw = dict(sigmas=sigmas_edm(18), method="edm", solver="heun", nfe=35, params={"rho": 7.0},
              provenance={"adasched": "0.1.0", "nested": {"a": [1, 2]}})
    kw.update(over)
    return Schedule(**kw)


def test_schedule_json_round_trip_is_exact(tmp_path):
    # awkward floats: thirds, tiny and huge values, values that need all 17 digits
    sigmas = torch.tensor([157.0 / 3, 1 / 3, 0.1 + 0.2, 1e-7 * math.pi, 5e-300, 0.0], dtype=F64)
    sched = _schedule(sigmas=sigmas, method="score-optimal", nfe=9)
    obj = sched.to_json()
    assert set(obj) == {"sigmas", "method", "solver", "nfe", "params", "provenance"}
    assert obj["sigmas"][-1] == 0.0 and all(type(v) is float for v in obj["sigmas"])
    back = Schedule.from_json(json.loads(json.dumps(obj)))
    assert torch.equal(back.sigmas, sigmas) and back.sigmas.dtype == F64
    assert back.to_json() == obj and back.steps == 5
    path = tmp_path / "sub" / "s.json"
    sched.save(path)
    loaded = Schedule.load(path)
    assert torch.equal(loaded.sigmas, sigmas)
    assert (loaded.method, loaded.solver, loaded.nfe) == ("score-optimal", "heun", 9)
    assert loaded.params == {"rho": 7.0} and loaded.provenance == sched.provenance
    assert [p.name for p in path.parent.iterdir()] == ["s.json"]  # no temporary file left behind


def test_schedule_round_trip_of_every_closed_form(tmp_path):
    for name, f in CLOSED_FORM.items():
        s = Schedule(sigmas=f(13), method=name, solver="euler", nfe=13)
        s.save(tmp_path / f"{name}.json")
        assert torch.equal(Schedule.load(tmp_path / f"{name}.json").sigmas, f(13))


def test_schedule_is_a_copy_of_its_input():
    sigmas = sigmas_edm(5)
    sched = _schedule(sigmas=sigmas, nfe=9)
    sigmas[1] = 1000.0  # mutating the caller's tensor must not change the validated value
    assert sched.sigmas[1].item() < 80.0
    assert torch.equal(sched.sigmas, sigmas_edm(5))
    array = sigmas_edm(5).numpy().copy()
    checked = validate_sigmas(array)
    array[1] = 1000.0
    assert torch.equal(checked, sigmas_edm(5))


def test_schedule_accepts_lists_arrays_and_tensors():
    want = sigmas_loglinear(4)
    for form in (want.tolist(), tuple(want.tolist()), want.numpy(), want.clone().requires_grad_(True)):
        s = _schedule(sigmas=form, nfe=4)
        assert torch.equal(s.sigmas, want) and s.sigmas.dtype == F64 and not s.sigmas.requires_grad
    single = want.to(torch.float32)
    assert torch.equal(_schedule(sigmas=single, nfe=4).sigmas, single.to(F64))


BAD_SIGMAS = {
    "increasing": [1.0, 2.0, 0.0],
    "repeated": [80.0, 10.0, 10.0, 0.0],
    "not ending in 0": [80.0, 1.0, 0.5],
    "ending in tiny": [80.0, 1.0, 1e-300],
    "negative": [80.0, -1.0, 0.0],
    "negative tail": [1.0, 0.0, -1.0],
    "zero inside": [80.0, 0.0, 0.0],
    "nan": [80.0, math.nan, 0.0],
    "inf": [math.inf, 1.0, 0.0],
    "too short": [0.0],
    "empty": [],
    "2-D": [[80.0, 0.0], [1.0, 0.0]],
    "scalar": 0.0,
    "strings": ["80", "x", "0"],
    "numeric strings": ["80", "1", "0"],
    "booleans": [True, False],
    "complex": [80 + 1j, 0j],
    "nulls": [None, None],
    "ragged": [[80.0], [1.0, 0.0]],
}


@pytest.mark.parametrize("case", list(BAD_SIGMAS))
def test_bad_sigmas_are_schedule_errors(case):
    with pytest.raises(ScheduleError):
        validate_sigmas(BAD_SIGMAS[case])
    with pytest.raises(ScheduleError):
        _schedule(sigmas=BAD_SIGMAS[case])
    with pytest.raises(ScheduleError, match="schedule"):
        Schedule.from_json({**_schedule().to_json(), "sigmas": BAD_SIGMAS[case]})


def test_bad_sigmas_messages_name_the_problem():
    with pytest.raises(ScheduleError, match=r"strictly decreasing.*sigmas\[1\]=10.*sigmas\[2\]=10"):
        validate_sigmas([80.0, 10.0, 10.0, 0.0])
    with pytest.raises(ScheduleError, match="end in exactly 0.*0.5"):
        validate_sigmas([80.0, 1.0, 0.5])
    with pytest.raises(ScheduleError, match="finite"):
        validate_sigmas([80.0, math.nan, 0.0])
    with pytest.raises(ScheduleError, match="positive"):
        validate_sigmas([80.0, -1.0, 0.0])
    with pytest.raises(ScheduleError, match="at least 2"):
        validate_sigmas([0.0])


def test_bad_sigma_types_are_named():
    for sigmas, found in ((["80", "1", "0"], "strings"), ([True, False], "booleans"),
                          (np.array([1, 0], dtype=bool), "booleans"), (torch.tensor([True, False]), "torch.bool"),
                          ([80.0, "0"], "strings"), ([None, 0.0], "not numbers")):
        with pytest.raises(ScheduleError, match=f"sigmas must be (a list of )?(real )?numbers, found .*{found}"):
            validate_sigmas(sigmas)


@pytest.mark.parametrize("nfe", [0, -5, 2.5, 35.0, True, "35", None])
def test_bad_nfe_is_a_schedule_error(nfe):
    with pytest.raises(ScheduleError, match="nfe"):
        _schedule(nfe=nfe)
    with pytest.raises(ScheduleError, match="nfe"):
        Schedule.from_json({**_schedule().to_json(), "nfe": nfe})


def test_malformed_schedule_json(tmp_path):
    good = _schedule().to_json()
    for key in ("sigmas", "method", "solver", "nfe"):
        with pytest.raises(ScheduleError, match=f"missing key.*{key}"):
            Schedule.from_json({k: v for k, v in good.items() if k != key})
    for obj in ([1.0, 0.0], "x", None):
        with pytest.raises(ScheduleError, match="JSON object"):
            Schedule.from_json(obj)
    assert Schedule.from_json({k: good[k] for k in ("sigmas", "method", "solver", "nfe")}).params == {}
    with pytest.raises(AdaschedError, match="not found"):
        Schedule.load(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('{"sigmas": [1.0, 0.0],')
    with pytest.raises(AdaschedError, match="not valid JSON"):
        Schedule.load(tmp_path / "broken.json")
    (tmp_path / "bad.json").write_text(json.dumps({**good, "sigmas": [1.0, 2.0, 0.0]}))
    with pytest.raises(ScheduleError, match="bad.json.*strictly decreasing"):
        Schedule.load(tmp_path / "bad.json")


# Schedule files with the wrong types: the JSON text of the bad value (NaN and Infinity as Python's json
# reads them), and what the one-line error must say.
BAD_FILES = {
    "sigmas as strings": ('"sigmas": ["80", "1", "0"]',
                          r"sigmas must be an array of numbers, found string '80' at sigmas\[0\]"),
    "one sigma a string": ('"sigmas": [80.0, "1.0", 0.0]', r"found string '1.0' at sigmas\[1\]"),
    "sigmas as booleans": ('"sigmas": [true, false]', r"found boolean True at sigmas\[0\]"),
    "one sigma a boolean": ('"sigmas": [80, true, 0]', r"found boolean True at sigmas\[1\]"),
    "a sigma null": ('"sigmas": [80.0, null, 0.0]', r"found null at sigmas\[1\]"),
    "nested sigmas": ('"sigmas": [[80.0, 1.0, 0.0]]', r"found array \[80.0, 1.0, 0.0\] at sigmas\[0\]"),
    "sigmas a string": ('"sigmas": "80 1 0"', r"sigmas must be an array of numbers, found string '80 1 0'"),
    "sigmas an object": ('"sigmas": {"0": 80.0}', r"sigmas must be an array of numbers, found object"),
    "NaN": ('"sigmas": [80.0, NaN, 0.0]', r"sigmas must be finite, found sigmas\[1\]=nan"),
    "Infinity": ('"sigmas": [Infinity, 1.0, 0.0]', r"sigmas must be finite, found sigmas\[0\]=inf"),
    "-Infinity": ('"sigmas": [80.0, 1.0, -Infinity]', r"sigmas must be finite, found sigmas\[2\]=-inf"),
    "increasing": ('"sigmas": [1.0, 2.0, 0.0]', r"strictly decreasing, but sigmas\[0\]=1 <= sigmas\[1\]=2"),
    "repeated": ('"sigmas": [80.0, 10.0, 10.0, 0.0]', r"strictly decreasing, but sigmas\[1\]=10"),
    "not ending in 0": ('"sigmas": [80.0, 1.0, 0.5]', r"end in exactly 0, got last value 0.5"),
    "nfe a float": ('"nfe": 35.0', r"nfe must be a positive integer, found float 35.0"),
    "nfe a boolean": ('"nfe": true', r"nfe must be a positive integer, found boolean True"),
    "nfe a string": ('"nfe": "35"', r"nfe must be a positive integer, found string '35'"),
    "nfe null": ('"nfe": null', r"nfe must be a positive integer, found null"),
    "nfe zero": ('"nfe": 0', r"nfe must be a positive integer, found integer 0"),
    "method a number": ('"method": 3', r"method must be a string, found integer 3"),
    "solver null": ('"solver": null', r"solver must be a string, found null"),
    "solver an array": ('"solver": ["heun"]', r"solver must be a string, found array \['heun'\]"),
    "params an array": ('"params": [["rho", 7.0]]', r"params must be an object, found array"),
    "provenance a string": ('"provenance": "adasched 0.1"', r"provenance must be an object, found string"),
    "unknown key": ('"sigma": [80.0, 0.0]', r"unknown key\(s\) 'sigma'; valid keys: sigmas, method, solver, nfe, "
                    r"params, provenance"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_schedule_file_types_are_checked_strictly(tmp_path, case):
    """Each wrong type or value is one line that starts with the file and names the key, what is expected
    and what was found; before the check, strings and booleans went through as numbers."""
    text, message = BAD_FILES[case]
    good = json.dumps(_schedule(sigmas=sigmas_edm(3), nfe=5).to_json())
    key = text.split(":", 1)[0]
    obj = json.loads(good)
    obj.pop(json.loads(key), None)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(obj)[:-1] + ", " + text + "}")
    with pytest.raises(ScheduleError) as e:
        Schedule.load(path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    assert re.search(message, str(e.value)), str(e.value)


def test_schedule_file_missing_keys_and_wrong_top_level(tmp_path):
    good = _schedule().to_json()
    for missing in (["nfe"], ["sigmas", "solver"]):
        with pytest.raises(ScheduleError, match=f"^schedule: missing key\\(s\\) {', '.join(missing)}$"):
            Schedule.from_json({k: v for k, v in good.items() if k not in missing})
    with pytest.raises(ScheduleError, match="expected a JSON object with keys sigmas, .*found array"):
        Schedule.from_json([good])


def test_schedule_file_round_trip_is_unchanged(tmp_path):
    """A good file loads and saves back to the same bytes; ``params`` and ``provenance`` may be left out."""
    path, again = tmp_path / "s.json", tmp_path / "again.json"
    _schedule(sigmas=torch.tensor([80.0, 1 / 3, 0.0], dtype=F64), nfe=3).save(path)
    Schedule.load(path).save(again)
    assert again.read_bytes() == path.read_bytes()
    bare = {k: v for k, v in json.loads(path.read_text()).items() if k in ("sigmas", "method", "solver", "nfe")}
    sched = Schedule.from_json(bare)
    assert (sched.params, sched.provenance, sched.nfe) == ({}, {}, 3) and sched.sigmas[1].item() == 1 / 3


def test_cli_refuses_a_schedule_with_string_sigmas(tmp_path, capsys):
    from adasched.cli import main

    bad, out = tmp_path / "s.json", tmp_path / "x.npz"
    bad.write_text(json.dumps({**_schedule(sigmas=sigmas_edm(3), nfe=5).to_json(), "sigmas": ["80", "1", "0"]}))
    mixture = Path(__file__).resolve().parents[1] / "examples" / "mixture-2d.json"
    assert main(["sample", "--model", f"gmm:{mixture}", "--schedule", str(bad), "--solver", "heun", "--num", "2",
                 "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == (f"adasched sample: error: {bad}: sigmas must be an array of numbers, found string '80' at "
                   f"sigmas[0]\n")
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------------

def _irregular(seed, n):
    """A strictly decreasing schedule with very uneven steps."""
    g = np.random.default_rng(seed)
    gaps = g.exponential(1.0, n - 1) + 1e-3
    pos = 80.0 * np.exp(-np.concatenate([[0.0], np.cumsum(gaps)]) / gaps.sum() * math.log(80.0 / 0.002))
    return torch.tensor(np.append(pos, 0.0), dtype=F64)


RESAMPLE_INPUTS = {
    **{f"{name}-18": f(18) for name, f in CLOSED_FORM.items()},
    "edm-2": sigmas_edm(2),
    "irregular-7": _irregular(0, 7),
    "irregular-40": _irregular(1, 40),
}


@pytest.mark.parametrize("name", list(RESAMPLE_INPUTS))
def test_resample_keeps_endpoints_and_order(name):
    s = RESAMPLE_INPUTS[name]
    for n in (1, 2, 3, 5, 17, 18, 19, 40, 200):
        r = resample(s, n)
        assert r.dtype == F64 and r.shape == (n + 1,) and r[-1].item() == 0.0
        assert r[0].item() == s[0].item()
        if n > 1:
            assert r[-2].item() == s[-2].item()
        assert (r[1:] < r[:-1]).all()
        assert r[:-1].min() >= s[-2] and r[:-1].max() <= s[0]


@pytest.mark.parametrize("name", list(RESAMPLE_INPUTS))
def test_resample_at_same_count_is_identity(name):
    s = RESAMPLE_INPUTS[name]
    r = resample(s, s.numel() - 1)
    assert torch.equal(r, s)
    r[1] = -1.0  # a copy, not a view of the input
    assert s[1] > 0
    assert torch.equal(resample(s.tolist(), s.numel() - 1), s)


@pytest.mark.parametrize("n0", [2, 5, 18])
@pytest.mark.parametrize("n1", [1, 2, 3, 7, 18, 35, 100])
def test_resampled_loglinear_is_loglinear(n0, n1):
    r, want = resample(sigmas_loglinear(n0), n1), sigmas_loglinear(n1)
    assert r.shape == want.shape
    assert _rel(r[:-1], want[:-1]) < 1e-12


def test_resample_keeps_the_shape_of_a_smooth_schedule():
    # EDM's rho = 7 curve read out at another count stays close to EDM at that count (PCHIP in log sigma)
    assert _rel(resample(sigmas_edm(18), 40)[:-1], sigmas_edm(40)[:-1]) < 1e-2
    assert _rel(resample(sigmas_edm(40), 18)[:-1], sigmas_edm(18)[:-1]) < 1e-4
    assert _rel(resample(sigmas_edm(18), 40)[:-1], sigmas_loglinear(40)[:-1]) > 0.1


def test_resample_refuses_bad_input():
    for n in (0, -1, 2.5, True):
        with pytest.raises(ScheduleError, match="steps"):
            resample(sigmas_edm(10), n)
    with pytest.raises(ScheduleError, match="one-step"):
        resample(sigmas_edm(1), 5)
    assert torch.equal(resample(sigmas_edm(1), 1), sigmas_edm(1))
    with pytest.raises(ScheduleError, match="strictly decreasing"):
        resample([1.0, 2.0, 0.0], 4)
