"""Conditional whitening: theta's linear regression on its condition, taken out before
the flow.

A conditional flow of theta given c (both already in the flow's units: z-scored, theta
after its box map) starts from N(0, I) for every c. Most posteriors are far from that:
their centre moves with c and their spread is a fraction of the prior's. The least-squares
fit on the training pairs

    u ~ c W + b,    r = u - c W - b,    Sigma = r^T r / (n - e - 1) = L L^T

is the best conditional Gaussian with a linear mean and a fixed covariance (the baseline
of :mod:`cnfax.evaluation.baselines`), and the map

    w = L^{-1} (u - c W - b),    log |det dw/du| = -sum_i log L_ii

hands the flow what that Gaussian does not explain: an untrained flow *is* the
least-squares Gaussian, and the field spends its capacity on the shape. On Gaussian
linear the map alone is the exact model family. The map is affine in u for each c, so
it is invertible with a constant log-determinant; ``condition`` (the flow-space
condition, one row per point or one for all) is required in both directions.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cnfax.data.preprocess import Preprocessing, _xp

# Added to the residual covariance's diagonal before its Cholesky factor (theta is
# z-scored, so its variances are about 1): a theta column that the condition determines
# exactly would otherwise leave Sigma singular.
JITTER = 1e-6


def minimum_pairs(dim: int, condition_width: int) -> int:
    """The fewest pairs :meth:`ConditionalWhitening.fit` accepts: residual degrees of
    freedom n - (e + 1) at least the e + 1 coefficients plus theta's dim d. With
    n <= e + 1 the least-squares fit interpolates, every residual is 0 and the flow
    would be handed a point mass; just above it the map is a fit to noise."""
    return 2 * (condition_width + 1) + dim


def _matrix(rows) -> tuple[tuple[float, ...], ...]:
    """A matrix as nested tuples of floats (hashable, comparable, stored as JSON)."""
    return tuple(tuple(map(float, row)) for row in np.asarray(rows, np.float64))


@dataclasses.dataclass(frozen=True)
class ConditionalWhitening(Preprocessing, kind="conditional-whitening"):
    """w = L^{-1} (u - c W - b) given the condition c (module docstring).

    weights: W, shape (condition width, dim); bias: b, (dim,); scale_tril: L, (dim, dim),
    lower triangular with a positive diagonal. Stored in float64."""

    weights: tuple[tuple[float, ...], ...]
    bias: tuple[float, ...]
    scale_tril: tuple[tuple[float, ...], ...]

    @classmethod
    def fit(cls, u: np.ndarray, condition: np.ndarray) -> ConditionalWhitening:
        """Least squares of u (n, d) on [condition, 1] (n, e + 1), in float64, and the
        Cholesky factor of the residuals' covariance, unbiased (divided by n - e - 1),
        plus :data:`JITTER` I. Fewer than :func:`minimum_pairs` rows are refused."""
        u = np.asarray(u, np.float64)
        c = np.asarray(condition, np.float64)
        if u.ndim != 2 or c.ndim != 2 or len(u) != len(c):
            raise ValueError(
                f"conditional whitening needs paired rows, got shapes {u.shape} and {c.shape}"
            )
        (n, dim), width = u.shape, c.shape[1]
        fewest = minimum_pairs(dim, width)
        if n < fewest:
            raise ValueError(
                f"conditional whitening of {dim} theta columns given {width} condition "
                f"columns needs at least {fewest} training pairs, got {n}: "
                "simulate more, or turn it off (--no-whiten, whiten=False)"
            )
        design = np.concatenate([c, np.ones((n, 1))], axis=1)
        coefficients, *_ = np.linalg.lstsq(design, u, rcond=None)
        residuals = u - design @ coefficients
        covariance = residuals.T @ residuals / (n - width - 1) + JITTER * np.eye(dim)
        return cls(
            _matrix(coefficients[:-1]),
            tuple(map(float, coefficients[-1])),
            _matrix(np.linalg.cholesky(covariance)),
        )

    @classmethod
    def from_fields(cls, spec: dict) -> ConditionalWhitening:
        """From ``to_dict``'s JSON (nested lists back to the tuples of the fields)."""
        return cls(_matrix(spec["weights"]), tuple(spec["bias"]), _matrix(spec["scale_tril"]))

    @property
    def log_det(self) -> float:
        """log |det dw/du| = -sum_i log L_ii, the same for every point."""
        return -float(np.sum(np.log(np.diag(np.asarray(self.scale_tril)))))

    def _parts(self, x, condition):
        if condition is None:
            raise ValueError(
                "conditional whitening maps theta given its condition: pass condition="
            )
        xp = _xp(x)
        condition = xp.asarray(condition, x.dtype)
        weights = xp.asarray(self.weights, x.dtype).reshape(-1, x.shape[-1])
        mean = condition @ weights + xp.asarray(self.bias, x.dtype)
        return xp, mean, xp.asarray(self.scale_tril, x.dtype)

    def to_flow(self, x, condition=None):
        xp, mean, scale_tril = self._parts(x, condition)
        # w = L^{-1} (u - m) row by row, i.e. (u - m) L^{-T}, for any leading shape
        w = (x - mean) @ xp.linalg.inv(scale_tril).T
        return w, xp.full(w.shape[:-1], self.log_det, x.dtype)

    def from_flow(self, y, condition=None):
        xp, mean, scale_tril = self._parts(y, condition)
        return mean + y @ scale_tril.T
