"""Baselines: the Gaussians are maximum-likelihood fits, and the mixture's number of
components is chosen on validation data."""

import numpy as np
from scipy.stats import multivariate_normal

from cnfax.evaluation import baselines


def test_gaussians_match_their_closed_forms():
    rng = np.random.default_rng(0)
    covariance = np.array([[2.0, 0.8], [0.8, 1.0]])
    train = rng.multivariate_normal([1.0, -2.0], covariance, size=5000)
    test = rng.multivariate_normal([1.0, -2.0], covariance, size=2000)
    full = baselines.full_gaussian_log_prob(train, test)
    fitted = multivariate_normal(train.mean(0), np.cov(train, rowvar=False, bias=True))
    np.testing.assert_allclose(full, fitted.logpdf(test), rtol=1e-10)
    # the fitted full Gaussian's test NLL is close to the true entropy; 2000 points give
    # a standard error of about 0.02 nats, so 0.1 is a 5-sigma bound
    entropy = multivariate_normal([1.0, -2.0], covariance).entropy()
    assert abs(-full.mean() - entropy) < 0.1
    diagonal = baselines.diagonal_gaussian_log_prob(train, test)
    independent = sum(
        multivariate_normal(train[:, i].mean(), train[:, i].var()).logpdf(test[:, i])
        for i in range(2)
    )
    np.testing.assert_allclose(diagonal, independent, rtol=1e-10)
    assert diagonal.mean() < full.mean()  # correlated data: the diagonal fit is worse


def test_the_mixture_size_is_chosen_on_validation():
    rng = np.random.default_rng(1)

    def draw(n):
        centres = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])
        return centres[rng.integers(0, 3, n)] + 0.5 * rng.standard_normal((n, 2))

    model, scores = baselines.gaussian_mixture(draw(1500), draw(500), components=(1, 2, 4, 8))
    assert set(scores) == {1, 2, 4, 8}
    assert model.n_components == max(scores, key=scores.get)
    assert scores[model.n_components] > scores[1] + 1.0  # three clusters: one Gaussian is poor
