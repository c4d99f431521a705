"""Hostile and careless input through the command line (issue 23): generated bad arguments and files.

Every test drives ``adasched`` with input that is invalid by construction (each strategy says why) in a fresh
temporary folder, and asserts what design.md promises of bad input: a non-zero exit, at most three lines on
stderr, no traceback, and no new file anywhere in the folder (hidden ones included).  Most run
:func:`adasched.cli.main` in this process; the real console entry (``python -m adasched``) runs for a few cases,
and requests for huge sizes run in a child whose address space is capped, so a missing bound fails the test
with a ``MemoryError`` instead of exhausting the machine.
"""

import contextlib
import io
import json
import math
import os
import pickle
import resource
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from adasched import registry
from adasched.cli import main
from adasched.limits import MAX_NFE, MAX_PROBE_INTERVALS, MAX_STEPS
from adasched.models import LOADERS, PLUGINS
from adasched.samplers import SOLVERS
from adasched.schedules import Schedule, sigmas_edm
from adasched.stages import METHODS

ROOT = Path(__file__).resolve().parents[1]
#: Address-space cap of the child that runs the huge-size cases: far below what any huge request needs.
CAPPED_AS = 6 << 30
#: CPU-time cap of that child, seconds: a refusal takes a few (the imports); work that was not refused is cut off.
CAPPED_CPU = 20
MIXTURE = {"weights": [0.3, 0.7], "means": [[-1.0, 0.0], [1.0, 0.5]], "variances": [[0.01, 0.1], [0.05, 0.02]]}
KNOWN_KINDS = set(LOADERS) | set(PLUGINS)

#: Shared settings: no deadline (a shared CI machine), a fixed example stream, and no shrinking (a failure shows
#: the generated input that broke the contract; shrinking it would cost the suite tens of seconds per bug).
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True,
                phases=[Phase.explicit, Phase.generate])


# ------------------------------------------------------------------------------------------------ harness


def listing(folder: Path) -> set[str]:
    """Every file and folder under ``folder``, hidden ones included, as relative paths."""
    out = set()
    for top, dirs, files in os.walk(folder):
        out.update(os.path.relpath(os.path.join(top, n), folder) for n in dirs + files)
    return out


@contextlib.contextmanager
def fresh_folder():
    """A new empty temporary folder, also the working directory (stray relative writes would land in it)."""
    with tempfile.TemporaryDirectory() as d, contextlib.chdir(d):
        yield Path(d)


def write_inputs(folder: Path) -> dict[str, Path]:
    """The valid inputs the bad ones are combined with: a mixture file and an Euler schedule of 4 steps."""
    mixture, schedule = folder / "mixture.json", folder / "schedule.json"
    mixture.write_text(json.dumps(MIXTURE))
    Schedule(sigmas_edm(4), method="edm", solver="euler", nfe=4).save(schedule)
    return {"mixture": mixture, "schedule": schedule}


def run_in_process(argv, capsys) -> tuple[int, str]:
    """``(exit status, stderr)`` of ``adasched ARGV`` run by :func:`main` (argparse's errors: ``SystemExit``)."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def assert_refused(rc, err: str, folder: Path, before: set[str]) -> None:
    """design.md's bad-input contract: non-zero exit, a short message, no traceback, nothing written."""
    assert rc not in (0, None), f"bad input accepted (exit {rc}); stderr: {err}"
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 3, err
    assert err.strip(), "refused without saying why"
    assert listing(folder) == before, f"new files: {sorted(listing(folder) - before)}"


def refused_in_process(argv, capsys, folder: Path) -> None:
    before = listing(folder)
    rc, err = run_in_process(argv, capsys)
    assert_refused(rc, err, folder, before)


def _env() -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path)


def refused_by_console(argv, folder: Path) -> None:
    """The same contract for the real console entry, ``python -m adasched ARGV``, run in ``folder``."""
    before = listing(folder)
    proc = subprocess.run([sys.executable, "-m", "adasched", *map(str, argv)], cwd=folder, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout == ""
    assert_refused(proc.returncode, proc.stderr, folder, before)


#: Run each ``(folder, argv)`` of a JSON list on stdin through ``main`` in one process; print each one's exit
#: status and stderr (an escaping exception as the traceback a console would print) as a JSON list.
_CHILD = textwrap.dedent("""
    import contextlib, io, json, logging, os, sys, traceback
    from adasched.cli import main
    results = []
    for folder, argv in json.load(sys.stdin):
        os.chdir(folder)
        logging.root.handlers.clear()  # main's basicConfig binds to this case's stderr
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:
                rc = e.code
            except BaseException:
                traceback.print_exc()
                rc = 1
        results.append([rc, err.getvalue()])
    print(json.dumps(results))
""")


def _cap_resources():
    resource.setrlimit(resource.RLIMIT_AS, (CAPPED_AS, CAPPED_AS))
    resource.setrlimit(resource.RLIMIT_CPU, (CAPPED_CPU, CAPPED_CPU + 5))


def refused_in_capped_child(cases: list[tuple[Path, list]]) -> None:
    """Each ``(folder, argv)`` refused, run in one child whose address space is capped at :data:`CAPPED_AS` and
    CPU time at :data:`CAPPED_CPU` (so a size that is not refused fails the test, not the machine)."""
    before = [listing(folder) for folder, _ in cases]
    proc = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps([[str(f), list(map(str, a))]
                                                                           for f, a in cases]),
                          env=_env(), capture_output=True, text=True, timeout=300, preexec_fn=_cap_resources)
    assert proc.returncode == 0, (f"the capped child died (exit {proc.returncode}; -{int(signal.SIGXCPU)}: over its "
                                  f"CPU-time cap, the work was not refused): {proc.stderr[-2000:]}")
    for (folder, argv), listed, (rc, err) in zip(cases, before, json.loads(proc.stdout)):
        try:
            assert_refused(rc, err, folder, listed)
        except AssertionError as e:
            raise AssertionError(f"adasched {' '.join(map(str, argv))}: {e}") from None


# -------------------------------------------------------------------------------------------- bad numbers

def _parses(text: str, kind=int) -> bool:
    """Whether ``kind(text)`` accepts ``text``."""
    try:
        kind(text)
    except ValueError:
        return False
    return True


#: Text that is no integer (``int()`` refuses it): words, decimals, exponents, NaN and infinities spelled out.
not_an_int = st.one_of(
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e3", "2.5", "0x10", "", "five", "1,000", "--"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12).filter(lambda s: not _parses(s, int)),
)
#: Not a positive integer: zero, negatives (as small and as huge as 10**18), or no integer at all.
not_positive = st.one_of(st.just("0"), st.integers(-10**18, -1).map(str), not_an_int)


#: Text that is no float (``float()`` refuses it).
not_a_float = st.text(max_size=12).filter(lambda s: not _parses(s, float))


def _argv(command: str, inputs: dict, out: Path) -> list:
    """A valid ``adasched COMMAND`` call on ``inputs``; each test spoils exactly one of its values."""
    model = f"gmm:{inputs['mixture']}"
    return {
        "schedule": ["schedule", "--method", "edm", "--solver", "euler", "--nfe", "5", "-o", out],
        "sample": ["sample", "--model", model, "--schedule", inputs["schedule"], "--solver", "euler", "--num", "3",
                   "--batch", "2", "-o", out],
        "probe": ["probe", "--model", model, "--grid", "4", "--samples", "2", "--batch", "2", "-o", out],
        "evaluate": ["evaluate", "--samples", inputs.get("samples", "x.npz"), "--model", model, "--batch", "2",
                     "-o", out],
        "train": ["train", "--steps", "1", "--batch", "2", "-o", out],
        "fit-reference": ["fit-reference", "--model", model, "--fit-seeds", "2", "--max-steps", "128", "--batch", "2",
                          "-o", out],
    }[command]


def _replace(argv: list, flag: str, value) -> list:
    """``argv`` with ``flag``'s value replaced by ``value`` (or ``flag value`` appended when absent)."""
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    elif flag == "--steps" and "--nfe" in argv:  # schedule: --nfe and --steps are exclusive
        i = argv.index("--nfe")
        argv[i:i + 2] = [flag, value]
    else:
        argv[-2:-2] = [flag, value]
    return argv


#: Every flag that takes a count, by subcommand: a count must be a positive integer.
COUNT_FLAGS = [("schedule", f) for f in ("--nfe", "--steps", "--fit-seeds", "--fit-iterations", "--fit-budget",
                                         "--fit-batch")] + \
              [("fit-reference", f) for f in ("--fit-seeds", "--max-steps", "--batch")] + \
              [("sample", f) for f in ("--num", "--batch")] + \
              [("probe", f) for f in ("--grid", "--samples", "--total-samples", "--batch", "--hutchinson")] + \
              [("evaluate", f) for f in ("--num-images", "--seed-ranges", "--batch")] + \
              [("train", f) for f in ("--steps", "--batch", "--online-levels", "--online-n-min", "--log-every")]
#: Integer flags that any integer passes at the parser but only a range suits (a bad value is refused by the
#: stage): ``--langevin-steps`` counts corrector steps (>= 0), ``--max-order`` is 1..4.
RANGED = {("schedule", "--langevin-steps"): ("pc-langevin", st.integers(-10**18, -1)),
          ("sample", "--langevin-steps"): ("pc-langevin", st.integers(-10**18, -1)),
          ("sample", "--max-order"): ("ipndm", st.one_of(st.integers(-10**18, 0), st.integers(5, 10**18)))}


@pytest.mark.parametrize("where", COUNT_FLAGS, ids="{0[0]} {0[1]}".format)
@settings(max_examples=6, **SETTINGS)
@given(value=not_positive)
def test_counts_that_are_not_positive_integers(capsys, where, value):
    command, flag = where
    with fresh_folder() as folder:
        argv = _replace(_argv(command, write_inputs(folder), folder / "o"), flag, value)
        if command == "probe" and flag == "--total-samples":
            argv = [a for i, a in enumerate(argv) if a != "--samples" and argv[i - 1] != "--samples"]
        refused_in_process(argv, capsys, folder)


@pytest.mark.parametrize("where", sorted(RANGED), ids="{0[0]} {0[1]}".format)
@settings(max_examples=8, **SETTINGS)
@given(data=st.data())
def test_solver_counts_out_of_range(capsys, where, data):
    command, flag = where
    solver, values = RANGED[where]
    value = data.draw(st.one_of(values.map(str), not_an_int))
    with fresh_folder() as folder:
        argv = _replace(_replace(_argv(command, write_inputs(folder), folder / "o.npz"), "--solver", solver),
                        flag, value)
        refused_in_process(argv, capsys, folder)


#: Real-valued flags that are noise levels or exponents, with values none can have: not a number at all, NaN,
#: an infinity (sigmas must be finite; ``rho = inf`` makes every level 1), zero or negative.
REALS = [("schedule", "--sigma-min"), ("schedule", "--sigma-max"), ("schedule", "--rho"), ("probe", "--sigma-min"),
         ("probe", "--sigma-max"), ("train", "--lr")]
bad_reals = st.one_of(st.sampled_from(["nan", "-nan", "inf", "-inf", "0", "-1", "-0.0"]),
                      st.floats(max_value=0).map(repr), not_a_float)


@pytest.mark.parametrize("where", REALS, ids="{0[0]} {0[1]}".format)
@settings(max_examples=6, **SETTINGS)
@given(value=bad_reals)
def test_reals_that_are_not_positive_and_finite(capsys, where, value):
    command, flag = where
    with fresh_folder() as folder:
        refused_in_process(_replace(_argv(command, write_inputs(folder), folder / "o"), flag, value),
                           capsys, folder)


def _huge_cases(folder: Path, inputs: dict, n: int, shape: list) -> list[list]:
    """Calls asking for sizes over the documented caps (:mod:`adasched.limits`) or beyond any machine's
    memory: NFE and steps above ``MAX_NFE``/``MAX_STEPS``, probe intervals above ``MAX_PROBE_INTERVALS``, at
    least 10**11 samples of a 2-D mixture (their arrays alone are terabytes, in one batch or many), and a
    power-law Gaussian of ``shape``."""
    out = folder / "o"
    assert n > max(MAX_NFE, MAX_STEPS, MAX_PROBE_INTERVALS)
    num = max(n, 10**11)
    (folder / "pl.json").write_text(json.dumps({"shape": shape}))
    return [_replace(_argv("schedule", inputs, out), "--nfe", n),
            _replace(_argv("schedule", inputs, out), "--steps", n),
            _replace(_argv("probe", inputs, out), "--grid", n),
            _replace(_argv("sample", inputs, out), "--num", num),
            _replace(_replace(_argv("sample", inputs, out), "--num", num), "--batch", num),
            _replace(_argv("sample", inputs, out), "--model", f"powerlaw:{folder / 'pl.json'}"),
            _replace(_argv("probe", inputs, out), "--model", f"powerlaw:{folder / 'pl.json'}")]


#: A power-law Gaussian of at least 10**5 x 10**5 pixels: its two DCT matrices alone are 1.6 * 10**11 bytes.
huge_shapes = st.tuples(st.integers(1, 3), st.integers(10**5, 10**6), st.integers(10**5, 10**6)).map(list)


@settings(max_examples=2, **SETTINGS)
@given(n=st.integers(MAX_NFE + 1, 10**18), shape=huge_shapes)
@example(n=10**18, shape=[3, 10**6, 10**6])
def test_huge_sizes_are_refused_in_bounded_memory(n, shape):
    with fresh_folder() as folder:
        refused_in_capped_child([(folder, argv) for argv in _huge_cases(folder, write_inputs(folder), n, shape)])


def test_huge_list_of_sigmas_is_refused_in_bounded_memory():
    """A schedule file of more steps than ``MAX_STEPS`` (strictly decreasing, ending in 0, otherwise valid)
    is refused like ``--steps`` above the cap, before any sampling."""
    with fresh_folder() as folder:
        inputs = write_inputs(folder)
        steps = MAX_STEPS + 1
        sigmas = np.append(np.geomspace(80.0, 0.002, steps), 0.0).tolist()
        (folder / "long.json").write_text(json.dumps({"sigmas": sigmas, "method": "edm", "solver": "euler",
                                                      "nfe": steps}))
        refused_in_capped_child([(folder, _replace(_argv("sample", inputs, folder / "o.npz"), "--schedule",
                                                   folder / "long.json"))])


# ------------------------------------------------------------------------------------------ schedule files

def _no_json(data) -> bool:
    """Whether ``data`` (text or bytes) is no JSON document."""
    try:
        json.loads(data)
    except ValueError:  # UnicodeDecodeError included
        return True
    return False


#: Bytes as binary files hold them (images, archives, pickles): at least one byte above 0x7f, and no JSON.
binary_garbage = st.tuples(st.binary(max_size=32), st.integers(0x80, 0xFF), st.binary(max_size=32)).map(
    lambda t: t[0] + bytes([t[1]]) + t[2]).filter(_no_json)

_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8))
_json_value = st.recursive(_json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=4)), max_leaves=12)
_positive = st.floats(min_value=1e-3, max_value=100.0)


def _ends_in_zero(values):
    return sorted(values, reverse=True) + [0.0]


#: Sigma lists that are no schedule, each for the reason in its comment.
bad_sigmas = st.one_of(
    # not an array at all
    _json_scalar, st.dictionaries(st.text(max_size=4), _json_scalar, max_size=3),
    # an array holding something that is not a number: strings, booleans, null, nested arrays, objects
    st.lists(_positive, max_size=5).flatmap(lambda v: st.tuples(
        st.just(v), st.integers(0, len(v)),
        st.one_of(st.text(max_size=5), st.booleans(), st.none(), st.lists(_positive, min_size=1, max_size=3),
                  st.dictionaries(st.text(max_size=3), _positive, max_size=2)))).map(
        lambda t: _ends_in_zero(t[0])[:t[1]] + [t[2]] + _ends_in_zero(t[0])[t[1]:]),
    # fewer than 2 values
    st.lists(st.floats(0, 100), max_size=1),
    # not ending in exactly 0 (positive or negative last value)
    st.lists(_positive, min_size=1, max_size=6).map(lambda v: sorted(v, reverse=True)),
    st.lists(_positive, min_size=1, max_size=6).map(lambda v: sorted(v, reverse=True) + [-1e-3]),
    # not strictly decreasing: a repeated value, or a rise somewhere before the final 0
    st.lists(_positive, min_size=1, max_size=5).map(lambda v: _ends_in_zero(v + [v[0]])),
    st.lists(_positive, min_size=2, max_size=5, unique=True).map(lambda v: sorted(v) + [0.0]),
    # a non-positive value before the final 0
    st.lists(_positive, max_size=4).map(lambda v: sorted(v, reverse=True) + [0.0, 0.0]),
    st.lists(_positive, max_size=4).map(lambda v: sorted(v, reverse=True) + [-1.0, 0.0]),
    # NaN or an infinity (written as the NaN/Infinity literals Python's json reads)
    st.lists(_positive, max_size=4).flatmap(lambda v: st.sampled_from([math.nan, math.inf, -math.inf]).map(
        lambda bad: [bad] + _ends_in_zero(v))),
    # huge and still broken: 2 * MAX_STEPS values, rising
    st.just(list(range(1, 2 * MAX_STEPS)) + [0]),
)

_GOOD = {"method": "edm", "solver": "euler", "nfe": 4}


#: Schedule file contents (bytes) that are no valid schedule.
_SIGMAS = {"sigmas": [2.0, 1.0, 0.0], **_GOOD}


def _schedule_json(**changes) -> bytes:
    return json.dumps({**_SIGMAS, **changes}).encode()


#: Schedule file contents (bytes) that are no valid schedule, by kind of defect (each kind is tried).
BAD_SCHEDULE_FILES = {
    "bad sigmas": bad_sigmas.map(lambda s: _schedule_json(sigmas=s)),
    # a required key missing
    "missing key": st.sampled_from(["sigmas", "method", "solver", "nfe"]).map(
        lambda k: json.dumps({kk: v for kk, v in _SIGMAS.items() if kk != k}).encode()),
    # a key of the wrong type: method/solver not strings, nfe not a positive integer, params/provenance not objects
    "wrong type": st.one_of(
        st.tuples(st.sampled_from(["method", "solver"]), _json_value.filter(lambda v: not isinstance(v, str))),
        st.tuples(st.just("nfe"), _json_value.filter(lambda v: not (isinstance(v, int) and not isinstance(v, bool)
                                                                    and v >= 1))),
        st.tuples(st.sampled_from(["params", "provenance"]), _json_value.filter(lambda v: not isinstance(v, dict))),
    ).map(lambda t: _schedule_json(**{t[0]: t[1]})),
    # an unknown key
    "unknown key": st.text(min_size=1, max_size=8).filter(lambda k: k not in (*_SIGMAS, "params", "provenance")).map(
        lambda k: _schedule_json(**{k: 1})),
    # JSON, but not an object
    "not an object": _json_value.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
    # not JSON at all: empty, truncated JSON, prose
    "not json": st.one_of(st.just(b""), st.just(b'{"sigmas": [2.0, 1.0, 0.0'),
                          st.text(max_size=30).filter(_no_json).map(str.encode)),
    "binary": binary_garbage,
}
bad_schedule_files = st.one_of(*BAD_SCHEDULE_FILES.values())


@pytest.mark.parametrize("kind", BAD_SCHEDULE_FILES)
@settings(max_examples=10, **SETTINGS)
@given(data=st.data())
def test_bad_schedule_files(capsys, kind, data):
    content = data.draw(BAD_SCHEDULE_FILES[kind])
    with fresh_folder() as folder:
        inputs = write_inputs(folder)
        (folder / "bad.json").write_bytes(content)
        refused_in_process(_replace(_argv("sample", inputs, folder / "o.npz"), "--schedule", folder / "bad.json"),
                           capsys, folder)


@settings(max_examples=2, **SETTINGS)
@given(content=bad_schedule_files)
def test_bad_schedule_files_through_the_console(content):
    with fresh_folder() as folder:
        inputs = write_inputs(folder)
        (folder / "bad.json").write_bytes(content)
        refused_by_console(_replace(_argv("sample", inputs, folder / "o.npz"), "--schedule", "bad.json"), folder)


# --------------------------------------------------------------------------------------------- model files

def _mixture(**changes):
    return {**MIXTURE, **changes}


#: JSON values that are no number: text, null, arrays (and booleans, which the mixture refuses explicitly).
_not_number = st.one_of(st.text(max_size=4), st.none(), st.lists(st.integers(), max_size=2))

#: Mixture files that are no mixture, each for the reason in its comment.
bad_mixtures = st.one_of(
    # weights that do not sum to 1 (off by more than the accepted 1e-6 rounding)
    st.lists(st.floats(0, 1), min_size=2, max_size=2).filter(lambda w: abs(sum(w) - 1) > 1e-3).map(
        lambda w: _mixture(weights=w)),
    # a negative weight or variance
    st.floats(max_value=-1e-9, min_value=-1e9).map(lambda v: _mixture(weights=[1 - v, v])),
    st.floats(max_value=-1e-9, min_value=-1e9).map(lambda v: _mixture(variances=[[v, 0.1], [0.05, 0.02]])),
    # means and variances of other dimensions, or as many rows as there are no weights
    st.integers(1, 5).filter(lambda d: d != 2).map(lambda d: _mixture(means=[[0.0] * d, [1.0] * d])),
    st.integers(1, 5).filter(lambda d: d != 2).map(lambda d: _mixture(variances=[[1.0] * d, [1.0] * d])),
    st.integers(0, 5).filter(lambda k: k != 2).map(lambda k: _mixture(means=[[0.0, 0.0]] * k)),
    # a value of the wrong type somewhere, or a whole field of the wrong type
    st.tuples(st.sampled_from(["weights", "means", "variances"]), st.one_of(_not_number, st.booleans())).map(
        lambda t: _mixture(**{t[0]: [t[1], t[1]] if t[0] == "weights" else [[t[1], 0.0], [0.0, 1.0]]})),
    st.tuples(st.sampled_from(["weights", "means", "variances"]), _json_scalar).map(lambda t: _mixture(**{t[0]: t[1]})),
    # NaN or an infinity
    st.sampled_from([math.nan, math.inf, -math.inf]).map(lambda v: _mixture(means=[[v, 0.0], [1.0, 0.5]])),
    # a key missing, or one too many
    st.sampled_from(["weights", "means", "variances"]).map(lambda k: {kk: v for kk, v in MIXTURE.items() if kk != k}),
    st.just(_mixture(covariances=[[1.0]])),
    # no object
    _json_value.filter(lambda v: not isinstance(v, dict)),
).map(lambda obj: json.dumps(obj).encode())

#: Power-law Gaussian files that are none, each for the reason in its comment.
bad_powerlaws = st.one_of(
    # a shape that is not three positive integers: other lengths, zero or negative, fractions, words, NaN,
    # infinities, booleans, null
    st.lists(st.integers(1, 4), max_size=5).filter(lambda s: len(s) != 3).map(lambda s: {"shape": s}),
    st.tuples(st.integers(0, 2), st.one_of(st.integers(-10**6, 0), st.sampled_from(
        [1.5, "abc", "3", math.nan, math.inf, None, [2]]))).map(
        lambda t: {"shape": [2, 2, 2][:t[0]] + [t[1]] + [2, 2, 2][t[0] + 1:]}),
    _json_scalar.map(lambda v: {"shape": v}),
    # alpha negative, scale not positive, mean not finite, or one of them not a number
    st.floats(max_value=-1e-9).map(lambda a: {"shape": [1, 2, 2], "alpha": a}),
    st.floats(max_value=0).map(lambda s: {"shape": [1, 2, 2], "scale": s}),
    st.sampled_from([math.nan, math.inf, -math.inf]).map(lambda m: {"shape": [1, 2, 2], "mean": m}),
    st.tuples(st.sampled_from(["alpha", "scale", "mean"]), _not_number).map(
        lambda t: {"shape": [1, 2, 2], t[0]: t[1]}),
    # eigenbasis not a boolean, an unknown key
    _json_scalar.filter(lambda v: not isinstance(v, bool)).map(lambda v: {"shape": [1, 2, 2], "eigenbasis": v}),
    st.just({"shape": [1, 2, 2], "spectrum": "pink"}),
).map(lambda obj: json.dumps(obj).encode())

#: Bytes that are not JSON (so no model file of any kind).
garbage = st.one_of(st.just(b""), binary_garbage)


@pytest.mark.parametrize("command", ["sample", "probe", "evaluate"])
@pytest.mark.parametrize("kind, contents", [("gmm", "bad_mixtures"), ("gmm", "garbage"), ("powerlaw", "bad_powerlaws"),
                                            ("powerlaw", "garbage")])
@settings(max_examples=8, **SETTINGS)
@given(data=st.data())
def test_bad_model_files(capsys, kind, contents, command, data):
    content = data.draw(globals()[contents])
    with fresh_folder() as folder:
        inputs = write_inputs(folder)
        if command == "evaluate":
            inputs["samples"] = folder / "x.npz"
            np.savez(inputs["samples"], samples=np.zeros((3, 2), np.float32), latents=np.zeros((3, 2), np.float32),
                     seeds=np.arange(3), sigmas=sigmas_edm(4).numpy(), nfe=np.int64(4))
        (folder / "model.json").write_bytes(content)
        argv = _replace(_argv(command, inputs, folder / "o"), "--model", f"{kind}:{folder / 'model.json'}")
        refused_in_process(argv, capsys, folder)


# --------------------------------------------------------------------------------------------- model SPECs

#: SPECs that name no model: no ``KIND:`` at all, an unknown kind, or a known file kind whose file is missing.
bad_specs = st.one_of(
    st.text(max_size=12).filter(lambda s: ":" not in s),
    st.tuples(st.text(min_size=1, max_size=8).filter(lambda k: k not in KNOWN_KINDS and ":" not in k),
              st.text(max_size=8)).map(lambda t: f"{t[0]}:{t[1]}"),
    st.tuples(st.sampled_from(["gmm", "powerlaw", "adasched"]), st.sampled_from(["", "missing.json", "no/such/file"])
              ).map(lambda t: f"{t[0]}:{t[1]}"),
    # a name that is neither a file here nor a registered EDM model (no URL: nothing may be downloaded)
    st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True).filter(lambda n: n not in registry.MODELS).map(
        lambda n: f"edm:{n}.pkl"),
)


@pytest.mark.parametrize("command", ["sample", "probe"])
@settings(max_examples=20, **SETTINGS)
@given(spec=bad_specs)
def test_bad_model_specs(capsys, command, spec):
    with fresh_folder() as folder:
        argv = _replace(_argv(command, write_inputs(folder), folder / "o"), "--model", spec)
        refused_in_process(argv, capsys, folder)


class _WritesAFile:
    """Unpickling this calls ``open(path, "w")``: a pickle whose payload creates a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@settings(max_examples=15, **SETTINGS)
@given(content=st.one_of(garbage, st.binary(min_size=1, max_size=256)))
def test_edm_file_that_is_not_a_pickle(capsys, content):
    with fresh_folder() as folder:
        (folder / "net.pkl").write_bytes(content)
        argv = _replace(_argv("sample", write_inputs(folder), folder / "o.npz"), "--model", f"edm:{folder / 'net.pkl'}")
        refused_in_process(argv, capsys, folder)


def test_edm_pickle_with_a_payload_never_runs(capsys):
    """An unpinned pickle is refused before unpickling (no ``--trust-pickle``): its payload never makes its
    file, in this process or through the console."""
    with fresh_folder() as folder:
        (folder / "net.pkl").write_bytes(pickle.dumps({"ema": _WritesAFile(folder / "PWNED")}))
        argv = _replace(_argv("sample", write_inputs(folder), folder / "o.npz"), "--model", f"edm:{folder / 'net.pkl'}")
        refused_in_process(argv, capsys, folder)
        refused_by_console(argv, folder)
        assert not (folder / "PWNED").exists()


# --------------------------------------------------------------------------------------------- samples NPZ

def _savez(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


_SAMPLES = {"samples": np.zeros((3, 2), np.float32), "latents": np.zeros((3, 2), np.float32),
            "seeds": np.arange(3, dtype=np.int64), "sigmas": np.array([2.0, 1.0, 0.0]), "nfe": np.int64(3)}

#: Samples files ``evaluate --model gmm:`` (2-D mixture) must refuse, each for the reason in its comment.
bad_samples = st.one_of(
    # a key missing
    st.sampled_from(sorted(_SAMPLES)).map(lambda k: {kk: v for kk, v in _SAMPLES.items() if kk != k}),
    # samples of another dimension than the model's 2 (latents to match, so only the model disagrees)
    st.lists(st.integers(1, 4), min_size=0, max_size=3).filter(lambda s: s != [2]).map(
        lambda s: {**_SAMPLES, "samples": np.zeros((3, *s), np.float32), "latents": np.zeros((3, *s), np.float32)}),
    # samples, latents and seeds of disagreeing lengths, or seeds that are not one row per sample
    st.integers(0, 6).filter(lambda n: n != 3).map(lambda n: {**_SAMPLES, "latents": np.zeros((n, 2), np.float32)}),
    st.integers(0, 6).filter(lambda n: n != 3).map(lambda n: {**_SAMPLES, "seeds": np.arange(n)}),
    st.sampled_from([np.int64(0), np.zeros((3, 1), np.int64)]).map(lambda s: {**_SAMPLES, "seeds": s}),
    # an nfe that is not one integer
    st.sampled_from([np.array([3, 4]), np.zeros((0,), np.int64), np.array("three")]).map(
        lambda v: {**_SAMPLES, "nfe": v}),
    # no samples at all (an RMSE over no samples is undefined)
    st.just({**_SAMPLES, "samples": np.zeros((0, 2), np.float32), "latents": np.zeros((0, 2), np.float32),
             "seeds": np.zeros(0, np.int64)}),
).map(_savez)


#: Files that are no samples NPZ: garbage, a plain ``.npy`` array, a pickled object array.
not_npz = st.one_of(garbage, st.just(_npy(np.zeros(3))), st.just(_npy(np.array([{"samples": 1}], dtype=object))))


@pytest.mark.parametrize("contents", [bad_samples, not_npz], ids=["bad_samples", "not_npz"])
@settings(max_examples=15, **SETTINGS)
@given(data=st.data())
def test_bad_samples_files(capsys, contents, data):
    content = data.draw(contents)
    with fresh_folder() as folder:
        inputs = write_inputs(folder)
        inputs["samples"] = folder / "x.npz"
        inputs["samples"].write_bytes(content)
        refused_in_process(_argv("evaluate", inputs, folder / "m.json"), capsys, folder)


# ------------------------------------------------------------------------------------ solvers and methods

#: ``(solver, flag)`` pairs where the solver takes no such option (e.g. ``--max-order`` on euler).
_OPTION_OF = {"--s-churn": "S_churn", "--s-min": "S_min", "--s-max": "S_max", "--s-noise": "S_noise",
              "--langevin-steps": "langevin_steps", "--langevin-eta": "langevin_eta", "--max-order": "max_order"}
FOREIGN_OPTIONS = [(s, f) for s in SOLVERS for f, o in _OPTION_OF.items() if o not in SOLVERS[s].options]


@pytest.mark.parametrize("solver, flag", FOREIGN_OPTIONS)
def test_solver_options_the_solver_does_not_take(capsys, solver, flag):
    with fresh_folder() as folder:
        argv = _replace(_replace(_argv("sample", write_inputs(folder), folder / "o.npz"), "--solver", solver),
                        flag, "2")
        refused_in_process(argv, capsys, folder)


@pytest.mark.parametrize("command, flag", [("schedule", "--solver"), ("sample", "--solver"), ("schedule", "--method"),
                                           ("probe", "--cost"), ("probe", "--spacing"), ("sample", "--dtype")])
@settings(max_examples=5, **SETTINGS)
@given(name=st.text(max_size=12))
def test_unknown_names(capsys, command, flag, name):
    valid = {"--solver": set(SOLVERS), "--method": set(METHODS), "--cost": {"corrector", "predictor"},
             "--spacing": {"log", "edm"}, "--dtype": {"float64", "float32"}}[flag]
    if name in valid:
        name += "?"  # a valid name with a character added is none
    with fresh_folder() as folder:
        refused_in_process(_replace(_argv(command, write_inputs(folder), folder / "o"), flag, name), capsys, folder)


# ---------------------------------------------------------------------------------------- output folders


@pytest.mark.parametrize("command", ["schedule", "sample", "probe", "evaluate"])
@settings(max_examples=4, **SETTINGS)
@given(depth=st.integers(1, 3), spec=st.sampled_from(["gmm:missing.json", "nokind:x", "gmm:"]))
def test_refused_run_makes_no_output_folders(capsys, command, depth, spec):
    """An output in folders that do not exist yet: a refused run (a model SPEC that names no model; for
    ``schedule``, an NFE Heun cannot reach) leaves none of those folders behind."""
    with fresh_folder() as folder:
        inputs = write_inputs(folder)
        inputs["samples"] = folder / "x.npz"
        inputs["samples"].write_bytes(_savez(_SAMPLES))
        out = folder.joinpath(*[f"new{i}" for i in range(depth)], "o")
        argv = _argv(command, inputs, out)
        argv = _replace(argv, "--model", spec) if command != "schedule" else \
            _replace(_replace(argv, "--solver", "heun"), "--nfe", "4")
        refused_in_process(argv, capsys, folder)


#: Careless inputs as users make them, each once: a schedule saved in a binary format, power-law shapes written
#: as words or infinities, a plain ``.npy`` array given as a samples NPZ, an empty samples file, a samples file
#: whose seeds are one number or whose nfe is several.
CARELESS = {
    "binary schedule": ("schedule", b"\xff\xfe\x00garbage"),
    "shape word": ("powerlaw", b'{"shape": [1, "abc", 2]}'),
    "shape infinity": ("powerlaw", b'{"shape": [1, Infinity, 2]}'),
    "shape nan": ("powerlaw", b'{"shape": [1, NaN, 2]}'),
    "shape string": ("powerlaw", b'{"shape": "abc"}'),
    "npy samples": ("samples", _npy(np.zeros(3))),
    "empty samples": ("samples", b""),
    "scalar seeds": ("samples", _savez({**_SAMPLES, "seeds": np.int64(0)})),
    "nfe array": ("samples", _savez({**_SAMPLES, "nfe": np.array([3, 4])})),
}


@pytest.mark.parametrize("case", CARELESS)
def test_careless_inputs(capsys, case):
    which, content = CARELESS[case]
    with fresh_folder() as folder:
        inputs = write_inputs(folder)
        bad = folder / "bad"
        bad.write_bytes(content)
        if which == "samples":
            argv = _argv("evaluate", {**inputs, "samples": bad}, folder / "m.json")
        elif which == "schedule":
            argv = _replace(_argv("sample", inputs, folder / "o.npz"), "--schedule", bad)
        else:
            argv = _replace(_argv("sample", inputs, folder / "o.npz"), "--model", f"powerlaw:{bad}")
        refused_in_process(argv, capsys, folder)
