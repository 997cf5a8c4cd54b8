"""Classical density baselines, fitted and scored in the flow's space like a CNF.

Each is fitted on the preprocessed training split and scored on preprocessed held-out
points; the caller adds the preprocessing's log-determinant to get data units, exactly as
for the flow (experiments/evaluate.py).

- diagonal Gaussian and full-covariance Gaussian (maximum likelihood);
- scikit-learn's GaussianMixture (full covariances), the number of components chosen by
  validation log-likelihood.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from scipy.linalg import solve_triangular
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture

from cnfax.data.sbi import SBITask
from cnfax.evaluation.posterior_checks import sbi_task
from cnfax.scoring import as_rows, numpy_rng


def diagonal_gaussian_log_prob(train: np.ndarray, x: np.ndarray) -> np.ndarray:
    mean, var = train.mean(0), train.var(0)
    return -0.5 * np.sum((x - mean) ** 2 / var + np.log(2 * np.pi * var), axis=-1)


def full_gaussian_log_prob(train: np.ndarray, x: np.ndarray) -> np.ndarray:
    covariance = np.cov(train, rowvar=False, bias=True)
    return multivariate_normal(train.mean(0), covariance, allow_singular=False).logpdf(x)


def gaussian_mixture(
    train: np.ndarray,
    validation: np.ndarray,
    components=(1, 2, 4, 8, 16, 32),
    seed: int = 0,
) -> tuple[GaussianMixture, dict[int, float]]:
    """The mixture with the best validation log-likelihood, and every candidate's score
    (mean validation log-likelihood per point, by number of components)."""
    scores, best = {}, None
    for k in components:
        if k > len(train):
            break
        model = GaussianMixture(k, covariance_type="full", reg_covar=1e-6, random_state=seed)
        model.fit(train)
        scores[k] = float(model.score(validation))
        if best is None or scores[k] > scores[best.n_components]:
            best = model
    return best, scores


@dataclasses.dataclass(frozen=True)
class ConditionalGaussian:
    """theta | x ~ N(W x + b, Sigma), fitted by least squares (:meth:`fit`); the baseline
    that every posterior estimate is scored next to, with the same interface."""

    weight: np.ndarray  # W, (d, c)
    bias: np.ndarray  # b, (d,)
    covariance: np.ndarray  # Sigma, (d, d)

    @classmethod
    def fit(cls, theta, x) -> ConditionalGaussian:
        """Least squares of theta (n, d) on [x, 1] (n, c + 1); Sigma is the residuals'
        covariance (maximum likelihood, divided by n). Together, the maximum-likelihood
        conditional Gaussian, which is the exact posterior of a linear-Gaussian joint."""
        theta = np.asarray(theta, np.float64)
        x = np.asarray(x, np.float64)
        if theta.ndim != 2 or x.ndim != 2 or len(theta) != len(x):
            raise ValueError(
                f"theta (n, d) and x (n, c) must pair up, got {theta.shape}, {x.shape}"
            )
        if len(x) <= x.shape[1] + 1:
            raise ValueError(f"{len(x)} pairs cannot fit {x.shape[1] + 1} coefficients per output")
        design = np.concatenate([x, np.ones((len(x), 1))], axis=1)
        coefficients, *_ = np.linalg.lstsq(design, theta, rcond=None)
        residuals = theta - design @ coefficients
        covariance = residuals.T @ residuals / len(x)
        np.linalg.cholesky(covariance)  # LinAlgError if the residuals are degenerate
        return cls(coefficients[:-1].T.copy(), coefficients[-1].copy(), covariance)

    @property
    def dim(self) -> int:
        return len(self.bias)

    @property
    def condition_dim(self) -> int:
        return self.weight.shape[1]

    @functools.cached_property
    def _cholesky(self) -> np.ndarray:
        return np.linalg.cholesky(self.covariance)

    def mean(self, condition) -> np.ndarray:
        """W x + b for each row of the condition, (m, d)."""
        return as_rows(condition, self.condition_dim, "condition") @ self.weight.T + self.bias

    def log_prob(self, theta, *, condition) -> np.ndarray:
        theta = np.asarray(theta, np.float64)
        single = theta.ndim == 1
        theta = as_rows(theta, self.dim, "theta")
        mean = self.mean(condition)
        if len(mean) not in (1, len(theta)):
            raise ValueError(f"{len(theta)} points but {len(mean)} conditions")
        z = solve_triangular(self._cholesky, (theta - mean).T, lower=True)
        log_det = np.sum(np.log(np.diag(self._cholesky)))
        logp = -0.5 * np.sum(z**2, 0) - log_det - 0.5 * self.dim * math.log(2 * math.pi)
        return logp[0] if single else logp

    def sample(self, key, n: int, *, condition) -> np.ndarray:
        mean = self.mean(condition)
        if len(mean) not in (1, n):
            raise ValueError(f"{n} draws but {len(mean)} conditions")
        noise = numpy_rng(key).standard_normal((n, self.dim))
        return mean + noise @ self._cholesky.T


class ReferencePosterior:
    """The task's reference posterior as a model (for checks and pictures): log_prob by
    ``reference_log_posterior``, sample by ``reference_samples``, per distinct condition."""

    def __init__(self, task: SBITask | str):
        self.task = sbi_task(task)
        self.task.require_reference()  # SLCP: NoReferencePosterior, not a later crash
        self.dim = self.task.theta_dim
        self.condition_dim = self.task.x_dim

    def _groups(self, condition, n: int):
        rows = as_rows(condition, self.condition_dim, "condition")
        if len(rows) not in (1, n):
            raise ValueError(f"{n} points but {len(rows)} conditions")
        rows = np.broadcast_to(rows, (n, self.condition_dim))
        unique, inverse = np.unique(rows, axis=0, return_inverse=True)
        return unique, inverse.reshape(-1)

    def log_prob(self, theta, *, condition) -> np.ndarray:
        theta = as_rows(theta, self.dim, "theta")
        unique, inverse = self._groups(condition, len(theta))
        out = np.empty(len(theta))
        for i, x in enumerate(unique):
            where = inverse == i
            out[where] = self.task.reference_log_posterior(theta[where], x)
        return out

    def sample(self, key, n: int, *, condition) -> np.ndarray:
        rng = numpy_rng(key)
        unique, inverse = self._groups(condition, n)
        out = np.empty((n, self.dim))
        for i, x in enumerate(unique):
            where = inverse == i
            out[where] = self.task.reference_samples(x, rng, int(where.sum()))
        return out
