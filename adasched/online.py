"""Online schedule learning during training: the paper's Algorithm 2 (AdaptiveScheduleTraining, paper.md §3.5).

Algorithm 2 alternates, for every batch, (1) a training step of the score model on noise levels drawn from the
current schedule, (2) a stop-gradient estimate of the corrector-optimised incremental costs on that schedule
(paper.md §3.2), (3) Algorithm 1 (UpdateSchedule, :func:`adasched.optimize.update_schedule`) on the estimated
costs and (4) the convex blend ``t_i <- gamma t_i* + (1 - gamma) t_i`` (:func:`adasched.optimize.blend`).
:class:`OnlineScheduleLearner` is steps 2-4 as a component any training loop can call::

    learner = OnlineScheduleLearner(sigmas_loglinear(T + 1))        # T + 1 levels, sigma_min .. sigma_max
    for x0 in loader:
        sigma, idx = learner.sample_levels(x0.shape[0], generator=g)  # step 1: levels from the schedule
        eps = torch.randn_like(x0)
        denoised = net(x0 + sigma.to(x0)[:, None] * eps, sigma.to(x0))
        loss = edm_weight(sigma) * (denoised - x0).pow(2) ...; loss.backward(); opt.step()
        learner.observe(net, x0, eps, idx, denoised=denoised)        # steps 2-4 (no gradients)

Cadence, as in the paper's released code (paper.md §3.5, [R1]): the per-interval costs of each batch are added
to running sums and counts; once every interval holds at least ``n_min`` samples (the released code's
``n_l_min = 24``), Algorithm 1 and the blend run once and the sums are reset.  ``gamma`` defaults to 0.05 (the
paper states 0.05-0.1; the released CIFAR-10 code uses 0.01 with 1000 levels).

Conventions: the learner's levels are *increasing* (``sigma_0 = sigma_min < ... < sigma_T = sigma_max``, the
paper's ``t_0 < ... < t_T`` and :mod:`adasched.optimize`'s probe-grid order); interval ``i`` lies between
``sigma_i`` (lower noise, the step's target ``t'``) and ``sigma_{i+1}``.  VE/EDM noise ``x = x0 + sigma eps``;
the model is the project's denoiser ``D(x, sigma)`` with ``score = (D - x) / sigma^2`` (:mod:`adasched.denoisers`).

Known limitation (paper.md §6.2, measured in ``tests/test_online.py``): the estimator measures each interval of
the *training* schedule, whose intervals are wide where the cost is small.  The fixed point of Algorithm 2 is the
schedule whose ``T`` coarse costs are equal, which for small ``T`` can be far from the schedule Algorithm 1 reads
out of a fine probe grid (:mod:`adasched.probe`): with the paper's weighting ``v(t') = sigma_i`` the first
interval above ``sigma_min = 0.002`` is weighted by ``0.002^2`` and the fixed point pushes ``sigma_1`` up by
an order of magnitude on the 1-D bimodal target of paper.md §6.4 (0.1165 -> 1.41 for T = 10; even with T = 100
levels, every 10th level is up to 130% off the fine-probe T = 10 schedule).  ``substeps > 1`` (our extension,
[G]) splits every interval geometrically into ``substeps`` sub-intervals, estimates each one, and runs
Algorithm 1 on that finer grid; the bias shrinks like ``1 / substeps`` (T = 100 with ``substeps = 8``: within
1.5%) at ``2 * substeps`` denoiser evaluations per observed sample.  ``substeps=1`` is the paper's algorithm.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from adasched.errors import DataError, ModelError, ScheduleError
from adasched.optimize import as_levels, blend, cumulative_length, refine_levels, update_schedule
from adasched.probe import WEIGHTINGS
from adasched.schedules import validate_sigmas

__all__ = ["OnlineScheduleLearner", "refine_levels"]

log = logging.getLogger(__name__)

_BLEND_SPACES = ("log", "linear")


class OnlineScheduleLearner:
    """The paper's Algorithm 2 (AdaptiveScheduleTraining, paper.md §3.5) as a training-loop component.

    Holds a schedule of ``T + 1`` increasing noise levels (``sigmas``, float64; endpoints ``sigma_min`` and
    ``sigma_max`` never move), draws training levels from it (:meth:`sample_levels`), accumulates per-interval
    sums and counts of the corrector cost estimates ``v^2 ||s(x, sigma_i) - s(x, sigma_{i+1})||^2`` with
    ``x = x0 + sigma_{i+1} eps`` (paper.md §3.2; :meth:`observe`) and, once every interval has ``n_min``
    samples, runs Algorithm 1 on the mean costs and blends (:meth:`update`).

    Args:
        sigmas: initial levels, increasing and positive (``sigma_min .. sigma_max``), or a sampler schedule
            (strictly decreasing, ending in 0, e.g. ``sigmas_loglinear(T + 1)``), which is reversed and
            stripped of its 0.
        gamma: blend weight of the new schedule in ``(0, 1]``; paper 0.05-0.1, released CIFAR code 0.01.
        n_min: samples every interval needs before a resample (the released code's ``n_l_min = 24``).
        weighting: ``"lower"`` (default): ``v = sigma_i``, the paper's ``v(t') = sigma(t')`` of the lower-noise
            end; ``"upper"``: ``v = sigma_{i+1}`` (as [R2]); names as in :data:`adasched.probe.WEIGHTINGS`.
        substeps: sub-intervals per interval for the cost estimate (module docstring); 1 is the paper's
            algorithm.
        space: blend ``"log"`` sigma (default) or ``"linear"`` sigma (the paper's ``t`` for EDM).

    Under data parallelism every rank must hold the same schedule: all-reduce :attr:`sums` and :attr:`counts`
    (call :meth:`observe` with ``update=False``, reduce, then :meth:`update`), or run the learner on one rank
    and broadcast :attr:`sigmas`.
    """

    def __init__(self, sigmas: Any, *, gamma: float = 0.05, n_min: int = 24, weighting: str = "lower",
                 substeps: int = 1, space: str = "log"):
        self._sigmas = as_levels(sigmas)
        if not (isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and 0 < gamma <= 1):
            raise ScheduleError(f"gamma must be a number in (0, 1], got {gamma!r}")
        if not isinstance(n_min, int) or isinstance(n_min, bool) or n_min < 1:
            raise ScheduleError(f"n_min must be a positive integer, got {n_min!r}")
        if weighting not in WEIGHTINGS:
            raise ScheduleError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
        if not isinstance(substeps, int) or isinstance(substeps, bool) or substeps < 1:
            raise ScheduleError(f"substeps must be a positive integer, got {substeps!r}")
        if space not in _BLEND_SPACES:
            raise ScheduleError(f"unknown blend space {space!r}; valid: {', '.join(_BLEND_SPACES)}")
        self.gamma = float(gamma)
        self.n_min = n_min
        self.weighting = weighting
        self.substeps = substeps
        self.space = space
        #: Number of schedule updates (Algorithm 1 + blend) so far.
        self.updates = 0
        #: Mean costs per (sub-)interval used by the last update (``T * substeps``), or ``None``.
        self.last_costs: torch.Tensor | None = None
        self._reset()
        self._set_levels()

    def __repr__(self) -> str:
        return (f"OnlineScheduleLearner(T={self.T}, sigma_min={self._sigmas[0].item():g}, "
                f"sigma_max={self._sigmas[-1].item():g}, gamma={self.gamma:g}, n_min={self.n_min}, "
                f"weighting={self.weighting!r}, substeps={self.substeps}, updates={self.updates})")

    # ------------------------------------------------------------------------------------------ state

    @property
    def T(self) -> int:
        """Number of intervals; the schedule has ``T + 1`` levels."""
        return self._sigmas.numel() - 1

    @property
    def sigmas(self) -> torch.Tensor:
        """The current ``T + 1`` increasing noise levels (float64 CPU tensor; a copy)."""
        return self._sigmas.clone()

    @property
    def sums(self) -> torch.Tensor:
        """Running sums of the cost estimates, ``[T, substeps]`` float64 (the live accumulator)."""
        return self._sums

    @property
    def counts(self) -> torch.Tensor:
        """Samples accumulated per interval since the last update, ``[T]`` int64 (the live accumulator)."""
        return self._counts

    @property
    def ready(self) -> bool:
        """Whether every interval holds at least ``n_min`` samples, so that :meth:`update` will resample."""
        return bool((self._counts >= self.n_min).all())

    @property
    def Lambda(self) -> float | None:
        """``Lambda_hat`` (paper.md §2.5) of the costs used by the last update, or ``None`` before the first."""
        return None if self.last_costs is None else float(cumulative_length(self.last_costs)[-1])

    def mean_costs(self) -> torch.Tensor:
        """Current mean cost per (sub-)interval, ``T * substeps`` float64 (NaN where no sample yet)."""
        return (self._sums / self._counts[:, None].to(torch.float64)).reshape(-1)

    def sampler_sigmas(self) -> torch.Tensor:
        """The current levels as a sampler schedule: ``sigma_max .. sigma_min, 0`` (``T + 2`` values, float64)."""
        return validate_sigmas(torch.cat([self._sigmas.flip(0), self._sigmas.new_zeros(1)]))

    def _reset(self) -> None:
        self._sums = torch.zeros(self.T, self.substeps, dtype=torch.float64)
        self._counts = torch.zeros(self.T, dtype=torch.int64)

    def _set_levels(self) -> None:
        self._levels = refine_levels(self._sigmas, self.substeps).reshape(-1)
        # [T, substeps + 1] sub-levels of every interval (a view on the refined grid).
        self._sub = self._levels.unfold(0, self.substeps + 1, self.substeps)

    # --------------------------------------------------------------------------------------- training

    def sample_levels(self, batch: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training noise levels: each example draws one of the ``T + 1`` levels uniformly (paper.md §3.5 [G]).

        Returns ``(sigma, idx)``, both ``[batch]`` CPU tensors: ``sigma`` float64 (cast it to the model's
        dtype and device), ``idx`` int64, the interval whose *upper* end ``sigma`` is: ``sigma =
        sigmas[idx + 1]``.  Examples drawn at ``sigma_min`` have no interval below them and get ``idx = -1``;
        :meth:`observe` skips them.  ``generator`` (a CPU generator) makes the draw reproducible.
        """
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise DataError(f"batch must be a positive integer, got {batch!r}")
        j = torch.randint(0, self.T + 1, (batch,), generator=generator)
        return self._sigmas[j], j - 1

    @torch.no_grad()
    def observe(self, denoise: Callable, x0: torch.Tensor, eps: torch.Tensor, idx: Any, *,
                denoised: torch.Tensor | None = None, update: bool = True) -> bool:
        """Algorithm 2 steps 2-4 (paper.md §3.5): accumulate cost estimates of a batch; resample when ready.

        ``x0``: the clean training batch ``[B, ...]``; ``eps``: its noise (same shape); ``idx``: the interval
        indices from :meth:`sample_levels` (``-1`` entries are skipped).  For every sample ``x = x0 +
        sigma_{i+1} eps`` (formed in float64, cast to ``x0``'s dtype for the model) and the estimate
        ``v^2 ||s(x, sigma_i) - s(x, sigma_{i+1})||^2`` (paper.md §3.2, summed over all coordinates, float64)
        is added to interval ``i``; with ``substeps = m`` the same is done on each of the ``m`` sub-intervals
        with ``x = x0 + sigma_{i,k+1} eps``.  ``denoise`` is ``D(x, sigma)`` with ``sigma`` of shape ``[B]``,
        evaluated without gradients (stop-grad).  ``denoised``: the training forward ``D(x, sigma_{i+1})``
        on the same batch, reused (detached) to save one evaluation per sample; it must come from the current
        schedule, i.e. from the :meth:`sample_levels` call of this batch.

        Returns whether the schedule was updated (see :meth:`update`; never with ``update=False``).
        """
        if not isinstance(x0, torch.Tensor) or not isinstance(eps, torch.Tensor):
            raise DataError("x0 and eps must be tensors")
        if x0.shape != eps.shape or x0.ndim < 1:
            raise DataError(f"x0 and eps must have the same shape [B, ...], got {tuple(x0.shape)} and "
                            f"{tuple(eps.shape)}")
        idx = torch.as_tensor(idx).cpu()
        if idx.dtype.is_floating_point or idx.dtype == torch.bool or idx.shape != (x0.shape[0],):
            raise DataError(f"idx must be {x0.shape[0]} integer interval indices (one per sample), got "
                            f"{idx.dtype} of shape {tuple(idx.shape)}")
        idx = idx.long()
        if idx.numel() and (idx.min() < -1 or idx.max() >= self.T):
            raise DataError(f"interval indices must lie in -1..{self.T - 1} (T = {self.T}), got "
                            f"{int(idx.min())}..{int(idx.max())}")
        if denoised is not None and denoised.shape != x0.shape:
            raise DataError(f"denoised must have the data's shape {tuple(x0.shape)}, got {tuple(denoised.shape)}")
        keep = idx >= 0
        if keep.any():
            self._accumulate(denoise, x0, eps, idx, keep, denoised)
        return self.update() if update else False

    def _accumulate(self, denoise, x0, eps, idx, keep, denoised) -> None:
        dev, dtype = x0.device, x0.dtype
        rows = keep.nonzero().squeeze(1)
        i = idx[rows]
        x0 = x0[rows.to(dev)].to(torch.float64)
        eps = eps[rows.to(dev)].to(torch.float64)
        b, m = i.numel(), self.substeps
        shape = (m, b) + (1,) * (x0.ndim - 1)
        s_lo = self._sub[i, :m].T.to(dev)  # [m, b]: sub-interval k of sample j is [s_lo[k, j], s_hi[k, j]]
        s_hi = self._sub[i, 1:].T.to(dev)
        x_in = (x0 + s_hi.reshape(shape) * eps).to(dtype)  # [m, b, ...]: x = x0 + s_hi eps on every sub-interval
        # One call for every evaluation of the batch (2m - 1 per sample with the training forward reused):
        # the network sees [x at s_lo for all k; x at s_hi for all k (but the last, if given)].
        n_hi = m - 1 if denoised is not None else m
        flat = x_in.reshape(m * b, *x0.shape[1:])
        out = denoise(torch.cat([flat, flat[:n_hi * b]]),
                      torch.cat([s_lo.reshape(-1), s_hi[:n_hi].reshape(-1)]).to(dtype)).to(torch.float64)
        d_lo = out[:m * b].reshape(m, b, *x0.shape[1:])
        d_hi = out[m * b:].reshape(n_hi, b, *x0.shape[1:])
        if denoised is not None:
            last = denoised.detach()[rows.to(denoised.device)].to(device=dev, dtype=torch.float64)
            d_hi = torch.cat([d_hi, last[None]])
        x = x_in.to(torch.float64)
        delta = (d_lo - x) / s_lo.reshape(shape) ** 2 - (d_hi - x) / s_hi.reshape(shape) ** 2
        v = s_lo if self.weighting == "lower" else s_hi
        cost = (v**2 * delta.reshape(m, b, -1).pow(2).sum(2)).cpu()  # [m, b]
        if not torch.isfinite(cost).all():
            k = int((~torch.isfinite(cost)).any(1).nonzero()[0])
            raise ModelError(f"the denoiser gave {int((~torch.isfinite(cost)).sum())} non-finite cost "
                             f"estimate(s), first on sub-interval {k} of the batch; the accumulators keep their "
                             "previous samples")
        new = torch.zeros(self.T, m, dtype=torch.float64)
        new.index_add_(0, i, cost.T)
        self._sums += new
        self._counts.index_add_(0, i, torch.ones_like(i))

    def update(self) -> bool:
        """Algorithm 2 steps 3-4 (paper.md §3.5), when every interval holds ``n_min`` samples.

        Runs Algorithm 1 (:func:`adasched.optimize.update_schedule`) on the mean costs, read out at the same
        ``T + 1`` levels, blends ``t <- gamma t* + (1 - gamma) t`` (:func:`adasched.optimize.blend`, in log
        sigma by default; the endpoints stay fixed and the levels strictly increasing) and resets the
        accumulators.  Returns ``False`` and does nothing if some interval has fewer than ``n_min`` samples.
        """
        if not self.ready:
            return False
        costs = self.mean_costs()
        target = update_schedule(self._levels, costs, self.T).flip(0)  # increasing, endpoints pinned
        new = blend(self._sigmas, target, self.gamma, space=self.space)
        assert new[0] == self._sigmas[0] and new[-1] == self._sigmas[-1] and (new[1:] > new[:-1]).all()
        self._sigmas = new
        self.last_costs = costs
        self.updates += 1
        log.debug("schedule update %d: Lambda_hat %.6g from %d samples (min per interval %d)", self.updates,
                  self.Lambda, int(self._counts.sum()), int(self._counts.min()))
        self._reset()
        self._set_levels()
        return True

    # --------------------------------------------------------------------------------- checkpointing

    def state_dict(self) -> dict:
        """The learner's state for a checkpoint (tensors and plain values only, ``torch.save``-able)."""
        return {
            "sigmas": self._sigmas.clone(),
            "sums": self._sums.clone(),
            "counts": self._counts.clone(),
            "updates": self.updates,
            "last_costs": None if self.last_costs is None else self.last_costs.clone(),
            "weighting": self.weighting,
            "substeps": self.substeps,
            "gamma": self.gamma,
            "n_min": self.n_min,
            "space": self.space,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output.

        The schedule, accumulators, update count and last costs are restored.  ``T``, ``weighting`` and
        ``substeps`` must match this learner (the accumulated sums depend on them); ``gamma``, ``n_min`` and
        ``space`` are hyperparameters and keep this learner's values, like a learning rate on resume.
        """
        missing = [k for k in ("sigmas", "sums", "counts", "updates", "weighting", "substeps") if k not in state]
        if missing:
            raise ScheduleError(f"learner state lacks key(s) {', '.join(missing)}")
        sigmas = as_levels(state["sigmas"])
        if sigmas.numel() != self.T + 1:
            raise ScheduleError(f"learner state has {sigmas.numel()} levels, this learner {self.T + 1}")
        for key in ("weighting", "substeps"):
            if state[key] != getattr(self, key):
                raise ScheduleError(f"learner state has {key}={state[key]!r}, this learner {getattr(self, key)!r}")
        sums = torch.as_tensor(state["sums"], dtype=torch.float64).cpu()
        counts = torch.as_tensor(state["counts"]).cpu()
        if sums.shape != (self.T, self.substeps) or counts.shape != (self.T,):
            raise ScheduleError(f"learner state accumulators have shapes {tuple(sums.shape)} and "
                                f"{tuple(counts.shape)}, expected {(self.T, self.substeps)} and {(self.T,)}")
        if counts.dtype.is_floating_point or (counts < 0).any() or not torch.isfinite(sums).all() or (sums < 0).any():
            raise ScheduleError("learner state accumulators must be non-negative, finite, with integer counts")
        last = state.get("last_costs")
        self._sigmas = sigmas
        self._sums = sums.clone()
        self._counts = counts.long().clone()
        self.updates = int(state["updates"])
        self.last_costs = None if last is None else torch.as_tensor(last, dtype=torch.float64).clone()
        self._set_levels()
