"""cnfax.fit_posterior: a posterior from (theta, x) arrays, z-scored (restricted to the
prior's box, or after its logit map, when bounds are given), trained by cnfax.fit,
answering in the user's units."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cnfax
from cnfax.data.preprocess import Box
from cnfax.data.truncation import Truncation

FAST = dict(validation_size=128, eval_tol=1e-4, progress=False, batch_size=64)


def _flow(dim=2, condition_dim=2, seed=0):
    field = cnfax.ResidualField(dim, 32, 2, condition_dim=condition_dim, rngs=nnx.Rngs(seed))
    return cnfax.CNF(field, t1=0.5)


def _box_pairs(n=400, seed=0):
    """theta ~ U(-1, 1) x Exp(1) (a box and a half-line), x = (theta_1 + theta_2, theta_2)
    + 0.1 noise, in units far from z-scored ones (x scaled by 100)."""
    rng = np.random.default_rng(seed)
    theta = np.stack([rng.uniform(-1, 1, n), rng.exponential(size=n)], 1)
    x = 100 * (np.stack([theta.sum(1), theta[:, 1]], 1) + 0.1 * rng.normal(size=(n, 2)))
    return theta, x


@pytest.mark.parametrize("whiten", [False, True])
def test_draws_lie_inside_the_bounds_and_log_prob_is_the_hand_computation(whiten):
    """The box by its logit map. Two epochs: the flow is rough, but the maps are exact.
    log p(theta | x) in the user's units is the flow's log-density of z = (g(theta) - m) / s given
    c = (x - m_x) / s_x plus log|det dg/dtheta| - sum log s, with g = (logit of
    (theta_1 + 1) / 2, log theta_2) written out here; -inf outside the bounds. Whitened,
    the flow sees L^{-1} (z - [c, 1] B) instead, B the least-squares coefficients of the
    training z on [c, 1] and L L^T their residuals' covariance (+ 1e-6 I), and the
    log-density gains -log det L."""
    theta, x = _box_pairs()
    bounds = (np.array([-1.0, 0.0]), np.array([1.0, np.inf]))
    posterior, history = cnfax.fit_posterior(
        _flow(),
        theta,
        x,
        key=jax.random.key(0),
        bounds=bounds,
        bounded_by="logit",
        whiten=whiten,
        max_epochs=2,
        **FAST,
    )
    assert isinstance(posterior, cnfax.TrainedModel) and history.epochs == 2
    assert posterior.preprocessing.steps[0] == Box((-1.0, 0.0), (1.0, None))
    x_o = x[0]
    draws = posterior.sample(jax.random.key(1), 2000, condition=x_o)
    assert np.all(np.abs(draws[:, 0]) < 1) and np.all(draws[:, 1] > 0)
    points = np.array([[0.3, 0.5], [-0.9, 2.0], [0.0, 0.01]])
    g = np.stack([np.log1p(points[:, 0]) - np.log1p(-points[:, 0]), np.log(points[:, 1])], 1)
    log_dg = np.log(2.0) - np.log1p(points[:, 0]) - np.log1p(-points[:, 0]) - np.log(points[:, 1])
    g_train = np.stack([np.log1p(theta[:, 0]) - np.log1p(-theta[:, 0]), np.log(theta[:, 1])], 1)
    m, s = g_train.mean(0), g_train.std(0)
    c = (x_o - x.mean(0)) / x.std(0)
    z, log_det = (g - m) / s, log_dg - np.sum(np.log(s))
    if whiten:
        design = np.c_[(x - x.mean(0)) / x.std(0), np.ones(len(x))]
        z_train = (g_train - m) / s
        coefficients = np.linalg.lstsq(design, z_train, rcond=None)[0]
        residuals = z_train - design @ coefficients
        # the unbiased covariance: n less the design's columns (x's and the intercept)
        covariance = residuals.T @ residuals / (len(x) - design.shape[1])
        scale = np.linalg.cholesky(covariance + 1e-6 * np.eye(2))
        z = np.linalg.solve(scale, (z - np.r_[c, 1.0] @ coefficients).T).T
        log_det = log_det - np.sum(np.log(np.diag(scale)))
    flow_log_p = posterior.flow.log_prob(
        jnp.asarray(z, jnp.float32), condition=jnp.asarray(np.tile(c, (3, 1)), jnp.float32)
    )
    by_hand = np.asarray(flow_log_p, np.float64) + log_det
    got = np.asarray(posterior.log_prob(points, condition=x_o))
    np.testing.assert_allclose(got, by_hand, rtol=1e-4, atol=1e-4)
    if whiten:  # inside a user's jit the maps run in JAX, the whitening given x_o too
        traced = jax.jit(lambda theta: posterior.log_prob(theta, condition=jnp.asarray(x_o)))
        np.testing.assert_allclose(np.asarray(traced(jnp.asarray(points))), got, rtol=1e-4)
    outside = np.array([[1.0, 0.5], [0.2, -0.1], [-3.0, 1.0]])
    assert np.all(np.asarray(posterior.log_prob(outside, condition=x_o)) == -np.inf)


def test_a_truncated_posterior_rejects_draws_outside_and_log_prob_is_the_hand_computation():
    """The box as a truncation (the default). Two epochs: the flow models theta itself
    z-scored, so a rough flow puts mass below theta_2 = 0 (the half-line's edge), which
    the sampler rejects: every draw lies inside, and support_mass, the fraction of the
    flow's draws inside, is below 1. log p(theta | x) is the flow's log-density of
    z = (theta - m) / s given c = (x - m_x) / s_x, less sum log s, with no log|det| of a
    map (the whitening's hand computation is the test above); -inf outside the bounds."""
    theta, x = _box_pairs()
    bounds = (np.array([-1.0, 0.0]), np.array([1.0, np.inf]))
    key = jax.random.key(0)
    posterior, _ = cnfax.fit_posterior(
        _flow(), theta, x, key=key, bounds=bounds, whiten=False, max_epochs=2, **FAST
    )
    assert posterior.preprocessing.steps[0] == Truncation((-1.0, 0.0), (1.0, None))
    x_o = x[0]
    draws = posterior.sample(jax.random.key(1), 2000, condition=x_o)
    assert np.all(np.abs(draws[:, 0]) < 1) and np.all(draws[:, 1] > 0)
    per_row = posterior.sample(jax.random.key(2), 50, condition=x[:50])
    assert np.all(np.abs(per_row[:, 0]) < 1) and np.all(per_row[:, 1] > 0)
    mass = posterior.support_mass(jax.random.key(3), x_o, n=4000)
    assert 0.0 < mass < 0.99, mass  # a rough flow leaks; 0.99 is 3 standard errors in
    points = np.array([[0.3, 0.5], [-0.9, 2.0], [0.0, 0.01]])
    m, s = theta.mean(0), theta.std(0)
    c = (x_o - x.mean(0)) / x.std(0)
    flow_log_p = posterior.flow.log_prob(
        jnp.asarray((points - m) / s, jnp.float32),
        condition=jnp.asarray(np.tile(c, (3, 1)), jnp.float32),
    )
    by_hand = np.asarray(flow_log_p, np.float64) - np.sum(np.log(s))
    got = np.asarray(posterior.log_prob(points, condition=x_o))
    np.testing.assert_allclose(got, by_hand, rtol=1e-4, atol=1e-4)
    outside = np.array([[1.0, 0.5], [0.2, -0.1], [-3.0, 1.0]])
    assert np.all(np.asarray(posterior.log_prob(outside, condition=x_o)) == -np.inf)


def test_bad_input_is_refused_naming_the_problem():
    theta, x = _box_pairs(50)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="needs a conditional CNF"):
        cnfax.fit_posterior(_flow(condition_dim=0), theta, x, key=key)
    with pytest.raises(ValueError, match="rows of simulated pairs"):
        cnfax.fit_posterior(_flow(), theta, x[:40], key=key)
    with pytest.raises(ValueError, match=r"training row \d+ = .* lies outside the box"):
        cnfax.fit_posterior(_flow(), theta, x, key=key, bounds=([-1, 0.5], [1, None]))
    with pytest.raises(ValueError, match="bounds hi has 3 values, theta has 2 columns"):
        cnfax.fit_posterior(_flow(), theta, x, key=key, bounds=(-1, [1, 2, 3]))
    with pytest.raises(ValueError, match="the flow's condition width is 2"):
        cnfax.fit_posterior(_flow(), theta, x[:, :1], key=key)


def test_a_gaussian_posterior_mean_and_spread_match_the_closed_form():
    """theta ~ N(m0, 4 I) with m0 = (3, -2), x = theta + N(0, I): the posterior is
    N(0.8 (m0 / 4 + x), 0.8 I) (precisions 1/4 + 1 add). At x_o = (4, -1) its mean is
    (3.8, -1.2) and its standard deviation 0.894. 2,000 model draws estimate the mean to
    0.02 per coordinate; the rest is the model's error after a short fit (12 epochs of
    1,800 pairs), which we bound by 0.25 in distance (0.28 posterior standard deviations;
    a model that ignored x, or z-scoring undone in the wrong units, is off by more than 1)
    and the spread by 25% (this stream: mean off by 0.10, standard deviations 0.89, 0.83)."""
    rng = np.random.default_rng(5)
    m0 = np.array([3.0, -2.0])
    theta = m0 + 2 * rng.normal(size=(2000, 2))
    x = theta + rng.normal(size=theta.shape)
    posterior, _ = cnfax.fit_posterior(
        _flow(seed=1),
        theta,
        x,
        key=jax.random.key(2),
        max_epochs=12,
        learning_rate=1e-2,
        warmup_steps=20,
        **FAST,
    )
    x_o = np.array([4.0, -1.0])
    draws = posterior.sample(jax.random.key(3), 2000, condition=x_o)
    exact_mean = 0.8 * (m0 / 4 + x_o)
    error = float(np.linalg.norm(draws.mean(0) - exact_mean))
    assert error < 0.25, (draws.mean(0), exact_mean)
    np.testing.assert_allclose(draws.std(0), np.sqrt(0.8), rtol=0.25)
