"""Diagnostics of a variational fit from n draws z_i ~ q: the importance weights
w_i = p~(z_i) / q(z_i), all in log space (numpy float64; no weight is ever exponentiated
unnormalised, so log weights of +-1000 neither overflow nor underflow).

- ELBO = mean_i log w_i <= log Z (Jensen).
- log Z_hat = log mean_i w_i = logsumexp(log w) - log n, an unbiased estimate of Z in
  Z's own units (biased low in log space, by about var / 2).
- Its standard error by the delta method: se(log Z_hat) = se(mean w) / mean w
  = sd(r) / sqrt(n), with r_i = w_i / mean w = exp(log w_i - log Z_hat), which has
  mean 1 and lies in [0, n]: safe to exponentiate.
- Kish's effective sample size as a fraction of n: (sum w)^2 / (n sum w^2)
  = exp(2 logsumexp(log w) - log n - logsumexp(2 log w)), in (0, 1]; 1 when q = p.
- Where log Z is known: |log Z_hat - log Z|, and KL(q || p) = log Z - ELBO.

Kept apart from :mod:`cnfax.evaluation` (whose package imports the plotting code), so
that :func:`cnfax.fit` can use it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.special import logsumexp


def log_weights(log_target, log_q) -> np.ndarray:
    """log w = log p~ - log q of each draw, float64 (n,)."""
    log_target = np.asarray(log_target, np.float64)
    log_q = np.asarray(log_q, np.float64)
    if log_target.shape != log_q.shape or log_target.ndim != 1:
        raise ValueError(
            f"log p~ and log q must be one value per draw, of the same shape (n,); got "
            f"{log_target.shape} and {log_q.shape}"
        )
    return log_target - log_q


def log_mean_exp(log_w) -> float:
    """log mean_i exp(log_w_i), without overflow."""
    log_w = np.asarray(log_w, np.float64)
    return float(logsumexp(log_w) - math.log(log_w.size))


def log_normalizer_estimate(log_w) -> tuple[float, float]:
    """(log Z_hat, its delta-method standard error); module docstring."""
    log_w = np.asarray(log_w, np.float64)
    n = log_w.size
    if n < 2:
        raise ValueError(f"log Z_hat's standard error needs at least 2 draws, got {n}")
    log_z = log_mean_exp(log_w)
    ratios = np.exp(log_w - log_z)  # mean 1, each at most n
    return log_z, float(np.std(ratios, ddof=1) / math.sqrt(n))


def ess_fraction(log_w) -> float:
    """Kish's effective sample size over n: (sum w)^2 / (n sum w^2), in log space."""
    log_w = np.asarray(log_w, np.float64)
    log_ess = 2 * logsumexp(log_w) - logsumexp(2 * log_w) - math.log(log_w.size)
    return float(np.exp(log_ess))


@dataclasses.dataclass(frozen=True)
class VariationalDiagnostics:
    """The diagnostics of n draws from q (module docstring). ``log_z`` is the true log
    normaliser where known, else None (and so are the errors that need it)."""

    n: int
    elbo: float
    log_z_hat: float
    log_z_hat_se: float
    ess_fraction: float
    log_z: float | None = None

    @property
    def log_z_error(self) -> float | None:
        """|log Z_hat - log Z|."""
        return None if self.log_z is None else abs(self.log_z_hat - self.log_z)

    @property
    def kl(self) -> float | None:
        """KL(q || p) = log Z - ELBO (an estimate: the ELBO is a mean over the draws)."""
        return None if self.log_z is None else self.log_z - self.elbo


def diagnose(log_target, log_q, log_z: float | None = None) -> VariationalDiagnostics:
    """The diagnostics of draws z_i ~ q from their log p~(z_i) and log q(z_i). Non-finite
    log weights are kept: they make the estimates NaN or infinite, as they should (a
    target that is -inf where q has mass is infinitely far from q in KL(q || p))."""
    log_w = log_weights(log_target, log_q)
    log_z_hat, se = log_normalizer_estimate(log_w)
    return VariationalDiagnostics(
        n=log_w.size,
        elbo=float(np.mean(log_w)),
        log_z_hat=log_z_hat,
        log_z_hat_se=se,
        ess_fraction=ess_fraction(log_w),
        log_z=None if log_z is None else float(log_z),
    )
