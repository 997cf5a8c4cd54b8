"""Classical density baselines, fitted and scored in the flow's space like a CNF.

Each is fitted on the preprocessed training split and scored on preprocessed held-out
points; the caller adds the preprocessing's log-determinant to get data units, exactly as
for the flow (experiments/evaluate.py).

- diagonal Gaussian and full-covariance Gaussian (maximum likelihood);
- scikit-learn's GaussianMixture (full covariances), the number of components chosen by
  validation log-likelihood.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture


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
