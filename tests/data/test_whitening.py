"""ConditionalWhitening: w = L^{-1} (u - c W - b), checked against a hand computation,
its Jacobian, its inverse and a known regression, and stored with a run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnfax.data.preprocess import Chain, Standardize, from_dict
from cnfax.data.whitening import JITTER, ConditionalWhitening

WEIGHTS = np.array([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0]])  # condition width 3, dim 2
BIAS = np.array([0.3, -1.0])
SCALE_TRIL = np.array([[2.0, 0.0], [-0.6, 0.25]])


def _map():
    return ConditionalWhitening(
        tuple(map(tuple, WEIGHTS)), tuple(BIAS), tuple(map(tuple, SCALE_TRIL))
    )


def test_to_flow_is_the_hand_computation_and_from_flow_inverts_it():
    rng = np.random.default_rng(0)
    u, c = rng.normal(size=(5, 2)), rng.normal(size=(5, 3))
    w, log_det = _map().to_flow(u, c)
    # L^{-1} (u - m) for a 2 x 2 lower-triangular L, by forward substitution
    r = u - c @ WEIGHTS - BIAS
    first = r[:, 0] / 2.0
    second = (r[:, 1] + 0.6 * first) / 0.25
    np.testing.assert_allclose(w, np.stack([first, second], 1), rtol=1e-12)
    np.testing.assert_allclose(log_det, -np.log(2.0 * 0.25), rtol=1e-12)
    np.testing.assert_allclose(_map().from_flow(w, c), u, rtol=1e-12, atol=1e-12)
    # one condition row for every point, as TrainedModel passes a single x_o
    np.testing.assert_allclose(
        _map().to_flow(u, c[:1])[0], _map().to_flow(u, np.repeat(c[:1], 5, 0))[0]
    )


def test_log_det_is_the_log_determinant_of_the_jacobian_and_jax_agrees():
    c = jnp.asarray([0.2, -1.0, 0.7], jnp.float32)
    u = jnp.asarray([0.4, 1.5], jnp.float32)
    jacobian = jax.jacfwd(lambda v: _map().to_flow(v[None], c)[0][0])(u)
    _, log_det = _map().to_flow(u[None], c)
    np.testing.assert_allclose(log_det[0], np.linalg.slogdet(np.asarray(jacobian))[1], rtol=1e-5)
    w_numpy, _ = _map().to_flow(np.asarray(u, np.float64)[None], np.asarray(c, np.float64))
    np.testing.assert_allclose(np.asarray(_map().to_flow(u[None], c)[0]), w_numpy, rtol=1e-5)


def test_fit_recovers_a_known_regression_and_leaves_white_residuals():
    """u = c W + b + e L^T with e ~ N(0, I), 20,000 rows: each estimate's error is about
    1 / sqrt(20,000) = 0.007 times its scale, so 0.05 is a margin of 7 standard errors."""
    rng = np.random.default_rng(1)
    c = rng.normal(size=(20_000, 3))
    u = c @ WEIGHTS + BIAS + rng.normal(size=(20_000, 2)) @ SCALE_TRIL.T
    fitted = ConditionalWhitening.fit(u, c)
    np.testing.assert_allclose(np.asarray(fitted.weights), WEIGHTS, atol=0.05)
    np.testing.assert_allclose(fitted.bias, BIAS, atol=0.05)
    np.testing.assert_allclose(np.asarray(fitted.scale_tril), SCALE_TRIL, atol=0.05)
    w, _ = fitted.to_flow(u, c)
    # on the rows it was fitted on, exactly: mean 0, covariance I less the jitter's share
    # (1e-6 of a residual variance of 0.25^2: 1.6e-5), with the regression's 4 degrees of
    # freedom taken out of the divisor
    np.testing.assert_allclose(w.mean(0), 0.0, atol=1e-10)
    np.testing.assert_allclose(np.cov(w.T, ddof=4), np.eye(2), atol=2 * JITTER / 0.25**2)


def test_the_residual_covariance_is_unbiased_and_too_few_pairs_are_refused():
    """With 12 pairs and 3 condition columns the least squares leaves 12 - 4 = 8 degrees
    of freedom: the residual covariance divides by 8 (unbiased), not 12, so w^T w = 8 I on
    the fitted rows (dividing by n would make every posterior 12/8 = 1.5x too narrow in
    variance). Below 2 (3 + 1) + 2 = 10 pairs the fit is refused, naming the way out."""
    rng = np.random.default_rng(2)
    c = rng.normal(size=(12, 3))
    u = c @ WEIGHTS + BIAS + rng.normal(size=(12, 2))
    w, _ = ConditionalWhitening.fit(u, c).to_flow(u, c)
    np.testing.assert_allclose(w.T @ w, 8 * np.eye(2), atol=1e-4)
    ConditionalWhitening.fit(u[:10], c[:10])  # the fewest accepted
    with pytest.raises(ValueError, match="needs at least 10 training pairs, got 9.*--no-whiten"):
        ConditionalWhitening.fit(u[:9], c[:9])


def test_a_condition_that_determines_theta_leaves_a_finite_map():
    """u = 2 c exactly: the residuals are 0, and the jitter keeps L invertible."""
    c = np.linspace(-1, 1, 50)[:, None]
    fitted = ConditionalWhitening.fit(2 * c, c)
    w, log_det = fitted.to_flow(2 * c, c)
    assert np.all(np.isfinite(w)) and np.isfinite(log_det).all()


def test_it_needs_the_condition_and_paired_rows():
    with pytest.raises(ValueError, match="given its condition: pass condition="):
        _map().to_flow(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="paired rows"):
        ConditionalWhitening.fit(np.zeros((5, 2)), np.zeros((4, 3)))


def test_stored_and_read_back_it_is_the_same_map():
    chain = Chain((Standardize((0.0, 1.0), (2.0, 3.0)), _map()))
    assert from_dict(json.loads(json.dumps(chain.to_dict()))) == chain
