"""The model's own reference solves (adasched.references) against exact Gaussian ODE solutions."""

from __future__ import annotations

import h5py
import pytest
import torch

from adasched.errors import AdaschedError, DataError
from adasched.models import content_hash
from adasched.references import (REFERENCE_FLOOR, check_reference, read_reference, reference_solution,
                                 solve_reference, write_reference)
from adasched.samplers import SOLVERS, generate, latents
from adasched.schedules import sigmas_edm
from adasched.targets import GaussianMixture, PowerLawGaussian

PL = PowerLawGaussian((1, 8, 8), alpha=2.0).in_eigenbasis()  # sigma_min 0: exact at every sigma
SEEDS = list(range(100, 108))


def _rms(a: torch.Tensor) -> float:
    return float(a.pow(2).mean().sqrt())


def test_reference_solution_stops_at_the_models_floor():
    pl = PowerLawGaussian((1, 8, 8), alpha=2.0).in_eigenbasis()  # sigma_min 0: exact at every sigma
    x = latents(range(4), pl.shape).double() * 80.0
    exact = pl.ode_solution(x, 80.0, 0.0)
    err = (reference_solution(pl, x, 80.0) - exact).pow(2).mean().sqrt()
    coarse = (reference_solution(pl, x, 80.0, sigma_min=0.002) - exact).pow(2).mean().sqrt()
    assert err < 1e-7 and coarse > 1e-5

    seen = []

    class Net:  # a trained network: untrained below its sigma_min, which the reference must respect
        sigma_min = 0.01

        def __call__(self, x, sigma):
            seen.append(float(sigma.min()))
            return pl(x, sigma)

    reference_solution(Net(), x, 80.0, steps=16)
    assert min(seen) == pytest.approx(0.01) and 0 < REFERENCE_FLOOR < 0.01


def test_reference_solution_is_richardson_extrapolated_heun():
    """Heun's global error is O(h^2): combining the solves on N and N/2 steps of the same schedule cancels
    that term, so the reference is far more accurate than the finer solve alone (exact truth: a Gaussian's
    closed-form ODE solution)."""
    pl = PowerLawGaussian((1, 8, 8), alpha=2.0).in_eigenbasis()
    x = latents(range(4), pl.shape).double() * 80.0
    exact = pl.ode_solution(x, 80.0, 0.0)

    def rms(a):
        return float((a - exact).pow(2).mean().sqrt())

    alone = {n: rms(SOLVERS["heun"].fn(pl, x, sigmas_edm(n, REFERENCE_FLOOR, 80.0))) for n in (128, 256)}
    extrapolated = {n: rms(reference_solution(pl, x, 80.0, steps=n)) for n in (128, 256)}
    assert alone[256] > alone[128] / 5  # second order: halving the step quarters the error
    assert extrapolated[256] < extrapolated[128] / 6  # third order: an eighth
    assert extrapolated[256] < 0.05 * alone[256]
    with pytest.raises(AdaschedError, match="even"):
        reference_solution(pl, x, 80.0, steps=15)


@pytest.mark.parametrize("tol", [1e-5, 1e-7])
def test_solve_reference_doubles_until_its_error_estimate_meets_tol(tol):
    """The Richardson estimate bounds the true error (exact: the Gaussian's closed-form ODE solution), the
    doubling stops at the first level that meets ``tol`` and no later, and a tighter ``tol`` costs more steps."""
    ref = solve_reference(PL, PL.shape, SEEDS, 80.0, tol=tol, start_steps=8)
    exact = PL.ode_solution(latents(SEEDS, PL.shape).double() * 80.0, 80.0, 0.0)
    assert ref.converged and ref.error <= tol * ref.rms
    assert ref.rms == pytest.approx(_rms(exact), rel=tol)
    assert _rms(ref.target - exact) <= ref.error  # the estimate is an upper bound
    steps = [s for s, _ in ref.history]
    assert steps[-1] == ref.steps and steps == [8 * 2 ** (k + 2) for k in range(len(steps))]
    assert all(e > tol * ref.rms for _, e in ref.history[:-1])  # no level finer than needed
    assert ref.evaluations == sum(2 * s - 1 for s in [8, 16, *steps])
    if tol == 1e-7:
        assert ref.steps > solve_reference(PL, PL.shape, SEEDS, 80.0, tol=1e-5, start_steps=8).steps


def test_solve_reference_keeps_and_resumes_its_levels_and_batches_do_not_matter():
    kept = {}
    whole = solve_reference(PL, PL.shape, SEEDS, 80.0, tol=1e-6, start_steps=8,
                            on_level=lambda steps, fine: kept.setdefault(steps, fine.clone()))
    assert sorted(kept) == [8 * 2**k for k in range(len(kept))] and max(kept) == whole.steps
    counted = []

    class Counting:  # the analytic target, counting the evaluations a resumed solve still makes
        sigma_min = 0.0

        def __call__(self, x, sigma):
            counted.append(x.shape[0])
            return PL(x, sigma)

    last = max(kept)
    resumed = solve_reference(Counting(), PL.shape, SEEDS, 80.0, tol=1e-6, start_steps=8, batch=3,
                              levels={s: f for s, f in kept.items() if s != last})
    torch.testing.assert_close(resumed.target, whole.target, rtol=0, atol=0)
    assert resumed.history == whole.history
    assert sum(counted) == (2 * last - 1) * len(SEEDS)  # only the missing level was solved


def test_solve_reference_warns_and_records_when_max_steps_stop_it(caplog):
    ref = solve_reference(PL, PL.shape, SEEDS, 80.0, tol=1e-14, start_steps=4, max_steps=32)
    assert ref.steps == 32 and not ref.converged and ref.error > 1e-14 * ref.rms
    assert "above the tolerance" in caplog.text
    with pytest.raises(AdaschedError, match="max_steps 32 leaves fewer than the three levels .* at least 64"):
        solve_reference(PL, PL.shape, SEEDS, 80.0, start_steps=16, max_steps=32)


def test_solve_reference_of_a_conditional_model_solves_each_latent_in_its_drawn_class():
    """Each latent is solved with the class `generate` draws for its seed, whatever the batch it is in:
    exact truth, class k's Gaussian N(mu_k, c^2 I) maps x_T to mu + (x_T - mu) c / sqrt(c^2 + 80^2)."""
    from conditional_gaussians import ConditionalGaussians

    model = ConditionalGaussians([[-2.0, 0.0], [0.0, 2.0], [2.0, 0.0]], c=0.3)
    seeds = list(range(1000, 1010))
    ref = solve_reference(model, model.shape, seeds, 80.0, tol=1e-7, batch=4)
    drawn = generate(model, sigmas_edm(4), "euler", seeds, model.shape)
    mu = model.means[drawn["labels"]]
    exact = mu + (drawn["latents"].double() * 80.0 - mu) * 0.3 / (0.3**2 + 80.0**2) ** 0.5
    assert _rms(ref.target - exact) <= max(ref.error, 1e-6)  # the floor's jump to 0: c^2 / (c^2 + 4e-12)


def test_reference_file_round_trip_and_refusals(tmp_path):
    ref = solve_reference(PL, PL.shape, SEEDS, 80.0, tol=1e-5, start_steps=8)
    path = write_reference(tmp_path / "ref.h5", ref, model="powerlaw:pl.json", model_hash=content_hash(PL))
    back = read_reference(path)
    torch.testing.assert_close(back.target, ref.target, rtol=0, atol=0)
    assert (back.seeds, back.steps, back.error, back.history) == (ref.seeds, ref.steps, ref.error, ref.history)
    assert back.meta["dtype"] == "float64" and back.meta["provenance"]["command"] == "fit-reference"
    check_reference(back, PL, "powerlaw:elsewhere.json", seeds=SEEDS, sigma_max=80.0, shape=PL.shape)  # same content
    other = PowerLawGaussian((1, 8, 8), alpha=1.5).in_eigenbasis()
    refusals = [((other, "powerlaw:pl.json", SEEDS, 80.0, PL.shape), "solves of model 'powerlaw:pl.json'"),
                ((PL, "x", SEEDS[:4], 80.0, PL.shape), "the fit asks for 100..103 \\(4\\)"),
                ((PL, "x", SEEDS, 40.0, PL.shape), "sigma_max 80, the schedule at 40"),
                ((PL, "x", SEEDS, 80.0, (64,)), "targets of shape \\(1, 8, 8\\)")]
    for (model, spec, seeds, smax, shape), message in refusals:
        with pytest.raises(DataError, match=message):
            check_reference(back, model, spec, seeds=seeds, sigma_max=smax, shape=shape)
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f.attrs["format"] = "something-else"
    for bad, message in ((tmp_path / "foreign.h5", "not a readable adasched reference file"),
                         (tmp_path / "missing.h5", "reference file not found")):
        with pytest.raises(DataError, match=message):
            read_reference(bad)


def test_a_mixture_reference_is_as_accurate_as_it_says():
    """A 2-D mixture (its exact ODE solution is itself a numerical solve, to 1e-10): float64 targets within
    the reported estimate."""
    mix = GaussianMixture([0.3, 0.7], [[-1.0, 0.0], [1.0, 0.5]], [[0.01, 0.1], [0.05, 0.02]])
    ref = solve_reference(mix, (2,), SEEDS, 80.0)
    exact = mix.ode_solution(latents(SEEDS, (2,)).double() * 80.0, 80.0, 0.0)
    assert ref.converged and _rms(ref.target - exact) <= ref.error + 1e-9
