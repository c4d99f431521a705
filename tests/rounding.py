"""Tolerances for float32 results, derived from the float32 rounding they check rather than from one machine.

Two float32 computations of the same quantity that differ only in the order of their operations (batch size,
memory layout, CPU kernel, thread count) both carry rounding errors whose pattern depends on the machine.  Their
difference is bounded by the size of those errors, which the same computation run in float64 (its "twin": same
code, inputs, batch and layout, a network converted with ``.double()``) measures on the machine at hand.
"""

import torch

#: float32 machine epsilon, 2^-23: the spacing of float32 numbers at 1.
EPS32 = torch.finfo(torch.float32).eps


def float32_tolerance(result: torch.Tensor, twin: torch.Tensor, k: float = 8.0) -> float:
    """Largest difference allowed between ``result`` and another float32 computation of it in another order.

    ``k`` times the float32 error of ``result`` against its float64 ``twin``, and at least ``k`` roundings of the
    largest value of ``twin``.  Both float32 results are off the float64 value by errors of about that size, so
    they differ by about twice that.  Measured on the digits net (channels_last against the contiguous layout,
    40 inputs of 256 outputs, under four CPU kernel choices): at most 2.2 times the reference's error, median
    1.4; ``k = 8`` leaves a factor 3.6 above the largest.

    A bug in ``result``'s own path also changes its twin (same code), so it is not caught by this tolerance:
    compare the twins, or ``result`` with an independent truth, for that.
    """
    err = float((result.double() - twin.double()).abs().max())
    return k * max(err, EPS32 * float(twin.abs().max()))
