"""A class-conditional analytic model for tests: class ``k`` is ``N(means[k], c^2 I)``, its denoiser exact.

It has the conditional-model protocol of adasched's networks (:class:`adasched.edm.EDMDenoiser`):
``label_dim``, ``class_labels`` (``None`` until bound) and ``with_labels(labels)``, which returns a bound
copy; called unbound, it raises.  ``evaluations`` counts (sample, call) pairs over all its bound copies.
"""

from __future__ import annotations

import torch

from adasched.errors import ModelError


class ConditionalGaussians:
    def __init__(self, means, c: float, class_labels=None, _counter=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.c = float(c)
        self.label_dim = self.means.shape[0]
        self.shape = tuple(self.means.shape[1:])
        self.class_labels = None if class_labels is None else torch.as_tensor(class_labels).reshape(-1)
        self._counter = _counter if _counter is not None else [0]

    @property
    def evaluations(self) -> int:
        return self._counter[0]

    def with_labels(self, labels) -> "ConditionalGaussians":
        return ConditionalGaussians(self.means, self.c, labels, self._counter)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.class_labels is None:
            raise ModelError("class-conditional: bind labels with with_labels")
        self._counter[0] += x.shape[0]
        mu = self.means[self.class_labels].to(x.dtype).expand(x.shape[0], *self.shape)
        s2 = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * len(self.shape))) ** 2
        return mu + self.c**2 / (self.c**2 + s2) * (x - mu)
