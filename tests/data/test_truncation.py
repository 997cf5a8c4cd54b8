"""The prior box as a truncation: the identity inside with log|det| 0, -inf outside with no
NaN, and the rejection sampler's draws lie inside with the truncated distribution."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from cnfax.data.preprocess import Box, Chain, Standardize, from_dict, to_data_units
from cnfax.data.truncation import Truncation, box_preprocessing, draw_inside

BOX = Truncation((-1.0, 0.0, None), (3.0, None, 2.0))  # a box side, a half-line each way


def test_identity_inside_minus_infinity_outside_with_no_nan():
    """Inside: y = x and log|det| = 0. Edges, beyond, NaN and infinities: log|det| = -inf
    and a finite y, so the density in data units is -inf with no NaN and no warning, in
    NumPy and JAX, also after a standardisation; the map survives to_dict."""
    x = np.array(
        [
            [0.5, 1.0, 0.0],  # inside
            [-1.0, 1.0, 0.0],  # on the lower edge
            [0.5, -0.1, 0.0],  # below the half-line
            [0.5, 1.0, 2.5],  # above the upper half-line
            [np.nan, 1.0, 0.0],
            [0.5, np.inf, 0.0],
        ]
    )
    chain = Chain((BOX, Standardize((1.0, 2.0, 0.0), (2.0, 1.0, 3.0))))
    for transform in (BOX, chain):
        for xp_x in (x, jnp.asarray(x)):
            with jax.enable_x64(True), warnings.catch_warnings():
                warnings.simplefilter("error")
                y, log_det = map(np.asarray, transform.to_flow(xp_x))
            assert np.all(np.isfinite(y))
            assert np.all(log_det[1:] == -np.inf)
            flow_log_prob = -0.5 * np.sum(y**2, -1) - 1.5 * math.log(2 * math.pi)
            log_p = to_data_units(flow_log_prob, log_det)
            assert not np.any(np.isnan(log_p)) and np.all(log_p[1:] == -np.inf)
    y, log_det = BOX.to_flow(x[:1])
    np.testing.assert_array_equal(y, x[:1])
    assert log_det[0] == 0.0
    np.testing.assert_array_equal(BOX.from_flow(np.array([[9.0, -9.0, 9.0]])), [[9.0, -9.0, 9.0]])
    assert from_dict(chain.to_dict()) == chain
    assert BOX.contains(x).tolist() == [True, False, False, False, False, False]


def test_box_preprocessing_standardises_theta_itself_or_the_logits():
    train = np.random.default_rng(0).uniform(-1, 1, size=(400, 2))
    box = Box((-1.0, -1.0), (1.0, 1.0))
    truncated = box_preprocessing(box, train, "truncation")
    assert truncated.steps[0] == Truncation.of(box)
    np.testing.assert_allclose(truncated.steps[1].mean, train.mean(0))
    assert box_preprocessing(box, train, "logit").steps[0] == box
    with pytest.raises(ValueError, match="bounded_by 'clip' \\(choose from"):
        box_preprocessing(box, train, "clip")
    with pytest.raises(ValueError, match="training row 1 .* outside the box"):
        box_preprocessing(Box((0.0,), (1.0,)), np.array([[0.5], [1.5]]), "truncation")
    with pytest.raises(ValueError, match="not below upper"):
        Truncation((1.0,), (0.0,))


def test_rejection_draws_follow_the_truncated_distribution():
    """N(0.8, 1) truncated to (-1, 1), one condition for all rows: every draw inside, and
    a Kolmogorov-Smirnov test against scipy's truncated normal at 20,000 draws (a drawn
    but unrejected sample, or one that rejects a region, has p ~ 0; the test's own false
    alarm rate is 1e-3)."""
    contains = Truncation((-1.0,), (1.0,)).contains
    draw = lambda key, rows: np.asarray(0.8 + jax.random.normal(key, (20_000, 1)), np.float64)  # noqa: E731
    x = draw_inside(draw, contains, jax.random.key(0), 20_000, None)
    assert contains(x).all()
    reference = stats.truncnorm(-1.8, 0.2, loc=0.8)
    assert stats.kstest(x[:, 0], reference.cdf).pvalue > 1e-3


def test_rejection_keeps_each_rows_own_condition_and_refuses_a_mass_outside():
    """A condition per row, alternating -0.95 and 0.95 (the draw is its row's value plus
    N(0, 0.3^2), about 43% outside (-1, 1)): each accepted draw stays within 1.5 (5 noise
    sigmas) of its own row's value, inside the box, where a draw handed to a neighbour is
    about 1.9 away; with no mass inside, the error names the acceptance rate."""
    contains = Truncation((-1.0,), (1.0,)).contains
    given = np.tile([[-0.95], [0.95]], (25, 1))

    def draw(key, rows):
        return rows + 0.3 * np.asarray(jax.random.normal(key, rows.shape), np.float64)

    x = draw_inside(draw, contains, jax.random.key(1), 50, given)
    assert contains(x).all()
    assert np.max(np.abs(x - given)) < 1.5
    outside = lambda key, rows: np.full((50, 1), 5.0)  # noqa: E731
    with pytest.raises(ValueError, match="only 0 of the flow's draws fall inside"):
        draw_inside(outside, contains, jax.random.key(2), 50, given, rounds=3)
