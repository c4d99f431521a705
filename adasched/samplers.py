"""Samplers: pure functions ``sample_<solver>(denoise, x, sigmas, *, generator=None, callback=None)``.

Each integrates the probability-flow ODE (or an SDE with the same marginals) of the VE process
``dx/dsigma = (x - D(x, sigma)) / sigma`` from ``x ~ N(0, sigma_0^2 I)`` along a given schedule
``sigmas`` (strictly decreasing, ending in exactly 0; see :mod:`adasched.schedules`) and returns the
final state.  No schedule is built, no gradient mode chosen, no progress shown and no global random
state touched inside a sampler: stochastic solvers draw from ``generator`` (a ``torch.Generator`` or a
:class:`PerSampleGenerator`, for results that do not depend on the batch size).

The state keeps the dtype of ``x`` (float64 in tests and by default in the CLI); ``callback(i, x,
sigma, denoised)`` is called after each step.  Every sampler's NFE per sample, as a function of the
number of steps ``N = len(sigmas) - 1``, is in its docstring and in :data:`SOLVERS`, the one place that
maps NFE to steps.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from adasched.denoisers import CountingDenoiser, working_bytes
from adasched.errors import ModelError, SolverError
from adasched.limits import MAX_NFE, MAX_STEPS, array_bytes, check_memory, check_size
from adasched.schedules import validate_sigmas

__all__ = [
    "check_options",
    "check_sample_memory",
    "sample_euler",
    "sample_heun",
    "sample_dpmpp_2m",
    "sample_ipndm",
    "sample_edm_stochastic",
    "sample_pc_langevin",
    "PerSampleGenerator",
    "SOLVERS",
    "Solver",
    "get_solver",
    "nfe_for_steps",
    "steps_for_nfe",
    "latents",
    "generate",
]


class PerSampleGenerator:
    """One CPU ``torch.Generator`` per sample, seeded ``seeds[i]`` (EDM's StackedRandomGenerator idea).

    Row ``i`` of every draw comes from generator ``i`` alone, so a sample's noise does not depend on
    which batch it is in, on the batch size, or on the device.
    """

    def __init__(self, seeds: Sequence[int]):
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]

    def randn(self, shape: Sequence[int], dtype=torch.float32, device=None) -> torch.Tensor:
        """A ``[len(seeds), *shape]`` standard normal draw, made in float32 on the CPU then moved."""
        rows = [torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(rows).to(device=device, dtype=dtype)

    def randint(self, high: int) -> torch.Tensor:
        """A ``[len(seeds)]`` int64 draw, uniform on ``0 .. high - 1``, one value per generator."""
        return torch.cat([torch.randint(high, (1,), generator=g) for g in self.generators]) if self.generators \
            else torch.empty(0, dtype=torch.int64)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.generators):
            raise SolverError(f"generator has {len(self.generators)} seeds but the batch has {x.shape[0]} rows")
        return self.randn(x.shape[1:], dtype=x.dtype, device=x.device)


def latents(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Unit-variance initial noise, float32, row ``i`` drawn from seed ``seeds[i]`` alone."""
    return PerSampleGenerator(seeds).randn(shape)


def _noise_like(x: torch.Tensor, generator) -> torch.Tensor:
    if generator is None:
        raise SolverError("this solver is stochastic and needs a generator (torch.Generator or PerSampleGenerator)")
    if isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device)
    return generator.randn_like(x)


def _sigma_batch(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Noise level as the ``[B]`` tensor the denoiser protocol takes."""
    return sigma.to(device=x.device, dtype=x.dtype).expand(x.shape[0])



def _sigmas_on(sigmas, x: torch.Tensor) -> torch.Tensor:
    """Validate, then put the schedule on ``x``'s device and dtype (keeping autograd if ``sigmas`` has it)."""
    validate_sigmas(sigmas.detach().cpu() if isinstance(sigmas, torch.Tensor) else sigmas)
    s = sigmas if isinstance(sigmas, torch.Tensor) else torch.as_tensor(sigmas, dtype=torch.float64)
    return s.to(device=x.device, dtype=x.dtype)


def sample_euler(denoise, x, sigmas, *, generator=None, callback=None):
    """Euler's method on the probability-flow ODE (EDM's Algorithm 1 without the correction).

    ``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) (x_i - D(x_i, sigma_i)) / sigma_i``; the step to 0 returns
    ``D(x_{N-1}, sigma_{N-1})``.  NFE = N.
    """
    s = _sigmas_on(sigmas, x)
    for i in range(len(s) - 1):
        denoised = denoise(x, _sigma_batch(s[i], x))
        x = x + (s[i + 1] - s[i]) * (x - denoised) / s[i]
        if callback is not None:
            callback(i, x, s[i + 1], denoised)
    return x


def _heun_step(denoise, x_hat, sigma_hat, sigma_next):
    """One step of EDM's Algorithm 1 from ``(x_hat, sigma_hat)``: Heun's correction unless ``sigma_next`` is 0."""
    denoised = denoise(x_hat, _sigma_batch(sigma_hat, x_hat))
    d = (x_hat - denoised) / sigma_hat
    x_next = x_hat + (sigma_next - sigma_hat) * d
    if sigma_next != 0:
        denoised_next = denoise(x_next, _sigma_batch(sigma_next, x_hat))
        d_next = (x_next - denoised_next) / sigma_next
        x_next = x_hat + (sigma_next - sigma_hat) * (0.5 * d + 0.5 * d_next)
    return x_next, denoised


def sample_heun(denoise, x, sigmas, *, generator=None, callback=None):
    """Heun's second-order method (EDM, Karras et al. 2022, Algorithm 1), Euler on the last step to 0.

    NFE = 2N - 1 (EDM's 18 steps cost 35).
    """
    s = _sigmas_on(sigmas, x)
    for i in range(len(s) - 1):
        x, denoised = _heun_step(denoise, x, s[i], s[i + 1])
        if callback is not None:
            callback(i, x, s[i + 1], denoised)
    return x


def sample_edm_stochastic(denoise, x, sigmas, *, generator=None, callback=None, S_churn: float = 0.0,
                          S_min: float = 0.0, S_max: float = float("inf"), S_noise: float = 1.0):
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2).

    At each step with ``S_min <= sigma_i <= S_max`` noise is added to raise the level to
    ``sigma_hat = sigma_i (1 + gamma)``, ``gamma = min(S_churn / N, sqrt(2) - 1)``, with
    ``S_noise``-scaled fresh noise; then one Heun step goes to ``sigma_{i+1}`` (Euler on the step to 0).
    ``sigma_hat`` is passed through the denoiser's ``round_sigma`` when it has one.  NFE = 2N - 1.
    """
    s = _sigmas_on(sigmas, x)
    n = len(s) - 1
    round_sigma = getattr(denoise, "round_sigma", None)
    for i in range(n):
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_min <= float(s[i].detach()) <= S_max else 0.0
        sigma_hat = s[i] * (1 + gamma)
        if gamma > 0:
            if round_sigma is not None:
                sigma_hat = round_sigma(sigma_hat.reshape(1)).reshape(()).to(s.dtype)
            x = x + torch.sqrt(sigma_hat**2 - s[i] ** 2) * S_noise * _noise_like(x, generator)
        x, denoised = _heun_step(denoise, x, sigma_hat, s[i + 1])
        if callback is not None:
            callback(i, x, s[i + 1], denoised)
    return x


def sample_dpmpp_2m(denoise, x, sigmas, *, generator=None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) in ``lambda = -log sigma``.

    First step first order; later steps extrapolate the denoised estimate linearly in ``lambda`` from
    the last two; the step to sigma = 0 returns the denoised estimate.  NFE = N.
    """
    s = _sigmas_on(sigmas, x)
    old = None
    for i in range(len(s) - 1):
        denoised = denoise(x, _sigma_batch(s[i], x))
        if s[i + 1] == 0:
            x = denoised
        else:
            h = torch.log(s[i]) - torch.log(s[i + 1])
            d = denoised
            if old is not None:
                r = (torch.log(s[i - 1]) - torch.log(s[i])) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (s[i + 1] / s[i]) * x - torch.expm1(-h) * d
        old = denoised
        if callback is not None:
            callback(i, x, s[i + 1], denoised)
    return x


#: Adams-Bashforth coefficients with fixed (uniform-step) weights, newest derivative first.
_AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def sample_ipndm(denoise, x, sigmas, *, generator=None, callback=None, max_order: int = 4):
    """Improved PNDM (Zhang & Chen 2023, as used by the diff-sampler line of work on EDM models).

    A linear multistep method on ``dx/dsigma = (x - D)/sigma``: step ``i`` uses the Adams-Bashforth
    formula of order ``min(i + 1, max_order)`` with uniform-step weights over the last derivatives.
    Warm-started with lower orders, so no extra evaluations.  NFE = N.
    """
    if max_order not in _AB:
        raise SolverError(f"ipndm max_order must be one of 1, 2, 3, 4, got {max_order!r}")
    s = _sigmas_on(sigmas, x)
    history: list[torch.Tensor] = []
    for i in range(len(s) - 1):
        denoised = denoise(x, _sigma_batch(s[i], x))
        history.insert(0, (x - denoised) / s[i])
        del history[max_order:]
        coef = _AB[len(history)]
        x = x + (s[i + 1] - s[i]) * sum(c * d for c, d in zip(coef, history))
        if callback is not None:
            callback(i, x, s[i + 1], denoised)
    return x


def sample_pc_langevin(denoise, x, sigmas, *, generator=None, callback=None, langevin_steps: int = 1,
                       langevin_eta: float = 0.1):
    """Predictor-corrector sampler: an Euler probability-flow step, then Langevin corrector steps.

    After the predictor moves to ``sigma_{i+1}``, ``langevin_steps`` unadjusted Langevin steps target the
    marginal ``p_{sigma_{i+1}}``: ``x += h score(x) + sqrt(2 h) z``, with step ``h = langevin_eta *
    v(sigma)^2`` in units of the paper's velocity ``v(sigma) = sigma`` (score-optimal paper, Sections 2.1
    and 3.3), so the corrector explores the same proportion of the marginal at every level.  No
    corrector follows the final step to 0.  NFE = N + langevin_steps (N - 1).
    """
    _check_langevin_steps(langevin_steps)
    if not langevin_eta > 0:
        raise SolverError(f"langevin_eta must be positive, got {langevin_eta!r}")
    s = _sigmas_on(sigmas, x)
    for i in range(len(s) - 1):
        denoised = denoise(x, _sigma_batch(s[i], x))
        x = x + (s[i + 1] - s[i]) * (x - denoised) / s[i]
        if s[i + 1] != 0:
            h = langevin_eta * s[i + 1] ** 2
            for _ in range(int(langevin_steps)):
                score = (denoise(x, _sigma_batch(s[i + 1], x)) - x) / s[i + 1] ** 2
                x = x + h * score + torch.sqrt(2 * h) * _noise_like(x, generator)
        if callback is not None:
            callback(i, x, s[i + 1], denoised)
    return x


def _check_langevin_steps(langevin_steps) -> int:
    """``langevin_steps`` as an ``int`` (a whole number such as 2 or 2.0 from a config), else a SolverError."""
    try:
        if langevin_steps >= 0 and int(langevin_steps) == langevin_steps:
            return int(langevin_steps)
    except (TypeError, ValueError, OverflowError):
        pass
    raise SolverError(f"langevin_steps must be a non-negative integer, got {langevin_steps!r}")


@dataclass(frozen=True)
class Solver:
    """A solver's sampler function and its NFE accounting.

    Every solver here spends ``evaluations_per_step(**options)`` denoiser evaluations on each step but the
    last, and one on the step to 0, so ``NFE = k (N - 1) + 1`` (:meth:`nfe`; ``nfe_formula`` is the same in
    the docstrings' words), which :func:`steps_for_nfe` inverts in closed form.
    """

    name: str
    fn: Callable
    nfe_formula: str
    evaluations_per_step: Callable[..., int]
    stochastic: bool = False
    options: tuple[str, ...] = ()

    def nfe(self, steps: int, **options) -> int:
        """True denoiser evaluations per sample for ``steps`` steps."""
        return self.evaluations_per_step(**options) * (steps - 1) + 1


SOLVERS: dict[str, Solver] = {
    s.name: s
    for s in [
        Solver("euler", sample_euler, "N", lambda **o: 1),
        Solver("heun", sample_heun, "2N - 1", lambda **o: 2),
        Solver("dpmpp-2m", sample_dpmpp_2m, "N", lambda **o: 1),
        Solver("ipndm", sample_ipndm, "N", lambda **o: 1, options=("max_order",)),
        Solver("edm-stochastic", sample_edm_stochastic, "2N - 1", lambda **o: 2, stochastic=True,
               options=("S_churn", "S_min", "S_max", "S_noise")),
        Solver("pc-langevin", sample_pc_langevin, "N + langevin_steps (N - 1)",
               lambda langevin_steps=1, **o: 1 + _check_langevin_steps(langevin_steps), stochastic=True,
               options=("langevin_steps", "langevin_eta")),
    ]
}


def get_solver(name: str) -> Solver:
    try:
        return SOLVERS[name]
    except KeyError:
        raise SolverError(f"unknown solver {name!r}; valid solvers: {', '.join(SOLVERS)}") from None


def nfe_for_steps(solver: str, steps: int, **options) -> int:
    """True denoiser evaluations per sample for ``steps`` steps of ``solver``."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise SolverError(f"steps must be a positive integer, got {steps!r}")
    check_size("steps", steps, MAX_STEPS, "adasched.limits.MAX_STEPS")
    return get_solver(solver).nfe(steps, **options)


def steps_for_nfe(solver: str, nfe: int, **options) -> int:
    """The number of steps at which ``solver`` costs exactly ``nfe``; an unreachable NFE is an error.

    Closed form: ``NFE = k (N - 1) + 1`` gives ``N = (NFE - 1) / k + 1`` when ``k`` divides ``NFE - 1``; the
    error names the reachable NFE on either side.
    """
    spec = get_solver(solver)
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise SolverError(f"nfe must be a positive integer, got {nfe!r}")
    check_size("nfe", nfe, MAX_NFE, "adasched.limits.MAX_NFE")
    k = spec.evaluations_per_step(**options)
    steps, rest = divmod(nfe - 1, k)
    if rest == 0:
        return steps + 1
    below = k * steps + 1
    raise SolverError(
        f"solver {solver!r} cannot spend exactly {nfe} evaluations (NFE = {spec.nfe_formula}); "
        f"nearby reachable NFE: {below}, {below + k}")


def check_options(solver: str, options: dict) -> dict:
    """``options`` if ``solver`` takes every one of them; else one :class:`SolverError` naming the valid ones."""
    spec = get_solver(solver)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise SolverError(f"solver {solver!r} takes no option(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(spec.options) or 'none'}")
    return dict(options)


def draws_labels(denoise) -> bool:
    """Whether ``denoise`` is a class-conditional model (``label_dim > 0``) with no labels bound."""
    return int(getattr(denoise, "label_dim", 0) or 0) > 0 and getattr(denoise, "class_labels", None) is None


def with_drawn_labels(denoise, seeds: Sequence[int], shape: Sequence[int]):
    """``denoise`` with the classes :func:`generate` draws for ``seeds`` bound (as it is, if it draws none):
    solving from ``latents(seeds, shape)`` with it is what :func:`generate` does."""
    if not draws_labels(denoise):
        return denoise
    gen = PerSampleGenerator(seeds)
    gen.randn(shape)
    return denoise.with_labels(gen.randint(denoise.label_dim))


def _sample_shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(operator.index(v) for v in shape)
    except TypeError:
        out = ()
    if not out or min(out) < 1:
        raise SolverError(f"sample shape must be positive integers, got {tuple(shape)}")
    return out


#: State-sized tensors a solver keeps alive at once (state, denoised, derivatives, next state, noise; iPNDM
#: keeps four derivatives): the working-set estimate of :func:`generate` counts this many per batch row.
STATE_COPIES = 8


def check_sample_memory(denoise, num: int, shape: Sequence[int], batch: int, dtype: torch.dtype) -> None:
    """Refuse (one :class:`~adasched.errors.LimitError` line) ``num`` samples of ``shape`` drawn in batches of
    ``batch`` when the memory they need -- the samples and latents (float32) with their seeds and classes, and
    one batch's working set -- is more than the machine has (:func:`adasched.limits.check_memory`)."""
    rows = min(batch, num)
    labels = draws_labels(denoise)
    check_memory(f"{num} samples of shape {tuple(shape)} in batches of {batch}",
                 array_bytes(2 * num, *shape, itemsize=4) + array_bytes(num, itemsize=36 + 8 * labels)
                 + array_bytes(STATE_COPIES * rows, *shape, itemsize=dtype.itemsize)
                 + working_bytes(denoise, rows, dtype),
                 f"samples and latents float32, seeds as Python ints{', labels int64' if labels else ''}, "
                 f"{STATE_COPIES} {dtype} states of a batch of {rows} and the model's working set")


def generate(denoise, sigmas, solver: str, seeds: Sequence[int], shape: Sequence[int], *, batch: int = 64,
             device="cpu", dtype=torch.float64, progress: Callable[[int], None] | None = None,
             class_label: int | None = None, **options):
    """Draw one sample per seed with common random numbers; return samples, latents and the counted NFE.

    Sample ``i`` uses one CPU generator seeded ``seeds[i]``: first its unit-variance latent (float32,
    so the start point is ``latents * sigmas[0]``); for a class-conditional model (``label_dim > 0``) with
    no labels bound, then its class, uniform on ``0 .. label_dim - 1`` (EDM's random labels); then any
    noise a stochastic solver needs.  Results therefore do not depend on ``batch`` or ``device``.
    ``class_label``: every sample of a class-conditional model is of this class (EDM's ``--class``); the
    random classes are drawn all the same, so a stochastic solver's noise is that of a random-class run.
    ``progress(n_done)`` is called after each batch.  ``seeds`` may be a ``range``: it is read batch by
    batch, after the memory the request needs (the returned arrays, and a batch's working set) has been
    checked against what the machine has (:func:`adasched.limits.check_memory`); ``shape`` must be the
    model's ``shape`` when it has one.

    Returns a dict with ``samples`` and ``latents`` (float32 CPU, ``[len(seeds), *shape]``), ``nfe``
    (evaluations per sample, counted), ``seeds``, and for drawn classes ``labels`` (int64 ``[len(seeds)]``).
    """
    spec = get_solver(solver)
    check_options(solver, options)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise SolverError(f"batch must be a positive integer, got {batch!r}")
    shape = _sample_shape(shape)
    model_shape = getattr(denoise, "shape", None)
    if model_shape is not None and tuple(model_shape) != shape:
        raise ModelError(f"samples of shape {shape} asked of a model whose samples have shape {tuple(model_shape)}")
    s = validate_sigmas(sigmas)
    num = len(seeds)
    draw_labels = draws_labels(denoise)
    if class_label is not None:
        classes = int(denoise.label_dim) if draw_labels else 0
        if not 0 <= class_label < classes:
            raise ModelError(f"class_label {class_label} is not a class of this model: it has " +
                             (f"classes 0 to {classes - 1}" if classes else "no classes (not class-conditional)"))
    check_sample_memory(denoise, num, shape, batch, dtype)
    samples, lat = torch.empty(num, *shape), torch.empty(num, *shape)
    labels = torch.empty(num, dtype=torch.int64) if draw_labels else None
    evaluations = 0
    for start in range(0, num, batch):
        chunk = [int(v) for v in seeds[start:start + batch]]
        stop = start + len(chunk)
        gen = PerSampleGenerator(chunk)
        z = gen.randn(shape)
        if draw_labels:
            drawn = gen.randint(denoise.label_dim)
            labels[start:stop] = drawn if class_label is None else class_label
        counting = CountingDenoiser(denoise.with_labels(labels[start:stop]) if draw_labels else denoise)
        x = z.to(device=device, dtype=dtype) * s[0].to(dtype)
        out = spec.fn(counting, x, s, generator=gen if spec.stochastic else None, **options)
        evaluations += counting.evaluations
        samples[start:stop] = out.detach().to("cpu", torch.float32)
        lat[start:stop] = z
        if progress is not None:
            progress(stop)
    nfe = evaluations // max(1, num)
    expected = spec.nfe(len(s) - 1, **options)
    assert not num or nfe == expected, f"{solver}: counted NFE {nfe} != formula {expected}"
    result = {"samples": samples, "latents": lat, "nfe": expected, "seeds": [int(v) for v in seeds]}
    if draw_labels:
        result["labels"] = labels
    return result
