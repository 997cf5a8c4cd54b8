"""Preprocessing: every map's log-determinant equals log |det| of its Jacobian computed by
autodiff, the maps invert, and bits/dim converts nats as it should."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from cnfax.data.preprocess import (
    Box,
    Chain,
    Dequantize,
    Identity,
    Logit,
    Standardize,
    bits_per_dim,
    box_then_standardize,
    from_dict,
    to_data_units,
)

DIM = 3
levels = st.integers(2, 256)
alphas = st.floats(1e-6, 0.1)
scales = st.lists(st.floats(0.1, 10.0), min_size=DIM, max_size=DIM)
means = st.lists(st.floats(-5.0, 5.0), min_size=DIM, max_size=DIM)


def autodiff_log_det(transform, x):
    """log |det d to_flow / dx| of one row, from the full Jacobian."""
    jacobian = jax.jacfwd(lambda row: transform.to_flow(row[None])[0][0])(x)
    return jnp.linalg.slogdet(jacobian)[1]


def check(transform, x):
    with jax.enable_x64(True):
        x = jnp.asarray(x, jnp.float64)
        y, log_det = transform.to_flow(x)
        expected = jax.vmap(lambda row: autodiff_log_det(transform, row))(x)
        np.testing.assert_allclose(log_det, expected, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(transform.from_flow(y), x, rtol=1e-9, atol=1e-9)
        assert from_dict(transform.to_dict()) == transform


@settings(max_examples=examples(25), deadline=None)
@given(mean=means, scale=scales, seed=st.integers(0, 2**16))
def test_standardize_log_det_and_inverse(mean, scale, seed):
    x = np.random.default_rng(seed).normal(size=(5, DIM)) * 3
    check(Standardize(tuple(mean), tuple(scale)), x)


@settings(max_examples=examples(25), deadline=None)
@given(k=levels, alpha=alphas, seed=st.integers(0, 2**16))
def test_logit_log_det_and_inverse(k, alpha, seed):
    rng = np.random.default_rng(seed)
    v = Dequantize().randomize(rng.integers(0, k, size=(5, DIM)).astype(np.float64), rng)
    assert np.all((v >= 0) & (v < k))
    check(Logit(k, alpha), v)


@settings(max_examples=examples(10), deadline=None)
@given(k=levels, mean=means, scale=scales, seed=st.integers(0, 2**16))
def test_chained_log_dets_add(k, mean, scale, seed):
    rng = np.random.default_rng(seed)
    v = Dequantize().randomize(rng.integers(0, k, size=(5, DIM)).astype(np.float64), rng)
    check(Chain((Logit(k), Standardize(tuple(mean), tuple(scale)))), v)


def test_identity_and_standardize_fit():
    # spreads below and above 1, so a rule such as "scale only if std > 1" shows
    x = np.random.default_rng(0).normal(size=(100, DIM)) * [0.3, 2.0, 0.0] + 4
    fitted = Standardize.fit(x)
    y, log_det = fitted.to_flow(x)
    np.testing.assert_allclose(y[:, :2].mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(y[:, :2].std(0), 1, atol=1e-9)
    assert fitted.scale[2] == 1.0  # a constant column is left unscaled, not divided by 0
    np.testing.assert_allclose(log_det, -math.log(x[:, 0].std() * x[:, 1].std()))
    identity_log_det = Identity().to_flow(x)[1]
    assert identity_log_det.shape == (100,) and identity_log_det.dtype == x.dtype
    np.testing.assert_array_equal(identity_log_det, np.zeros(100))


def test_standardize_fits_float32_input_in_float64():
    """float32 rows of a timestamp-like column (1.6e9 + 3600 N(0, 1)): the fitted mean and
    scale are those of the same values in float64 (a float32 accumulation is off by
    thousands in the mean)."""
    x = (1.6e9 + 3600 * np.random.default_rng(1).normal(size=(500, 1))).astype(np.float32)
    fitted = Standardize.fit(x)
    reference = x.astype(np.float64)
    np.testing.assert_allclose(fitted.mean, reference.mean(0), rtol=1e-12)
    np.testing.assert_allclose(fitted.scale, reference.std(0), rtol=1e-9)


def test_bits_per_dim_by_hand():
    # 64 dimensions, 100 nats per point: 100 / (64 ln 2) = 2.2542 bits per dimension
    assert math.isclose(bits_per_dim(100.0, 64), 100 / (64 * 0.6931471805599453))
    assert math.isclose(bits_per_dim(64 * math.log(2), 64), 1.0)


# --------------------------------------------------------------------------- Box

# one column of each kind: (-1, 3), (0, inf), (-inf, 2), (-inf, inf)
MIXED = Box((-1.0, 0.0, None, None), (3.0, None, 2.0, None))


def test_box_log_det_by_hand():
    """At x = (0, 2, -2, 7): column 0 (lo -1, hi 3) y = log 1 - log 3, log dy/dx =
    log 4 - log 1 - log 3; column 1 (lo 0) y = log 2, -log 2; column 2 (hi 2)
    y = -log 4, -log 4; column 3 y = 7, 0. Sum: log(4/3) - log 2 - log 4 = -log 6.
    And the scaled logit on [-10, 10] at 5: p = 0.75, y = logit 0.75 = log 3,
    log|det| = -log 20 - log 0.75 - log 0.25 = -log 3.75."""
    y, log_det = MIXED.to_flow(np.array([[0.0, 2.0, -2.0, 7.0]]))
    np.testing.assert_allclose(y[0], [-math.log(3), math.log(2), -math.log(4), 7.0], rtol=1e-12)
    np.testing.assert_allclose(log_det, [-math.log(6)], rtol=1e-12)
    y, log_det = Box((-10.0,), (10.0,)).to_flow(np.array([[5.0], [-5.0]]))
    np.testing.assert_allclose(y[:, 0], [math.log(3), -math.log(3)], rtol=1e-12)
    np.testing.assert_allclose(log_det, [-math.log(3.75)] * 2, rtol=1e-12)


def test_box_log_det_matches_a_finite_difference_jacobian():
    """Central differences (h = 1e-6 in float64: truncation ~h^2 times the third
    derivative plus rounding ~1e-16 / h, below 1e-8 at points at least 0.1 from an edge)
    of y = g(x) at random interior points: log|det| of that Jacobian agrees with the
    map's to 1e-6."""
    rng = np.random.default_rng(3)
    box = Box((-1.0, 0.0, None, None, -10.0), (3.0, None, 2.0, None, 10.0))
    x = np.stack(
        [
            rng.uniform(-0.9, 2.9, 20),
            rng.uniform(0.1, 5.0, 20),
            rng.uniform(-5.0, 1.9, 20),
            rng.normal(size=20),
            rng.uniform(-9.5, 9.5, 20),
        ],
        1,
    )
    h = 1e-6
    for row in x:
        steps = np.eye(5) * h
        jacobian = (box.to_flow(row + steps)[0] - box.to_flow(row - steps)[0]).T / (2 * h)
        expected = np.linalg.slogdet(jacobian)[1]
        assert abs(box.to_flow(row[None])[1][0] - expected) < 1e-6


@settings(max_examples=examples(25), deadline=None)
@given(lo=st.floats(-5.0, 5.0), width=st.floats(0.01, 20.0), seed=st.integers(0, 2**16))
def test_box_log_det_and_inverse_by_autodiff(lo, width, seed):
    """The shared check (autodiff log-det, inverse, stored form) on random boxes."""
    rng = np.random.default_rng(seed)
    box = Box((lo, lo, None), (lo + width, None, lo))
    x = np.stack(
        [
            lo + width * rng.uniform(0.01, 0.99, 5),
            lo + rng.exponential(size=5) + 1e-3,
            lo - rng.exponential(size=5) - 1e-3,
        ],
        1,
    )
    check(box, x)


def test_box_points_outside_or_on_the_edge_have_log_density_minus_infinity():
    """Edges, points beyond them, NaN and infinities: log|det| = -inf and a finite y, so
    log p_flow(y) + log|det| is -inf, with no NaN and no warning, in NumPy and in JAX,
    also through Chain((box, Standardize)); the inside point's value is finite."""
    x = np.array(
        [
            [-1.0, 1.0, 0.0, 0.0],  # lower edge of column 0
            [3.0, 1.0, 0.0, 0.0],  # upper edge of column 0
            [0.0, 0.0, 0.0, 0.0],  # the half-line's edge
            [0.0, 1.0, 2.0, 0.0],  # the upper half-line's edge
            [5.0, -1.0, 3.0, 0.0],  # beyond
            [np.nan, 1.0, 0.0, 0.0],
            [0.0, np.inf, 0.0, 0.0],
            [0.0, 1.0, 0.0, 1.0],  # inside
        ]
    )
    chain = Chain((MIXED, Standardize((0.5, 0.0, 1.0, 0.0), (2.0, 1.0, 3.0, 1.0))))
    for transform in (MIXED, chain):
        for xp_x in (x, jnp.asarray(x)):
            with jax.enable_x64(True), warnings.catch_warnings():
                warnings.simplefilter("error")  # e.g. NumPy's "invalid value in log"
                y, log_det = transform.to_flow(xp_x)
                y, log_det = np.asarray(y), np.asarray(log_det)
            assert np.all(np.isfinite(y))
            assert np.all(log_det[:-1] == -np.inf) and np.isfinite(log_det[-1])
            flow_log_prob = -0.5 * np.sum(y**2, -1) - 2 * math.log(2 * math.pi)
            log_p = to_data_units(flow_log_prob, log_det)
            assert not np.any(np.isnan(log_p))
            assert np.all(log_p[:-1] == -np.inf) and np.isfinite(log_p[-1])
    MIXED.check_support(x)  # no error: the density answers -inf instead


def test_box_draws_mapped_back_lie_inside_the_open_box():
    """Flow-space values far out (|y| up to 1e4), where the sigmoid and exp round to the
    edges (float32 sigmoid(40) is 1), come back strictly inside, in float32 and float64,
    NumPy and JAX; moderate values round-trip."""
    y = np.array([[40.0, -200.0, 40.0, 0.0], [-40.0, 1e4, -1e4, 5.0], [1e4, -1e4, 1e4, -5.0]])
    for dtype in (np.float32, np.float64):
        for values in (y.astype(dtype), jnp.asarray(y.astype(np.float32))):
            x = np.asarray(MIXED.from_flow(values))
            assert MIXED.contains(x).all(), x
    x = np.array([[0.5, 1.0, 1.0, 3.0], [2.999, 1e-3, -10.0, -3.0]])
    np.testing.assert_allclose(MIXED.from_flow(MIXED.to_flow(x)[0]), x, rtol=1e-9)


def test_box_then_standardize_feeds_the_flow_z_scored_logits():
    """The chain's y has mean 0 and std 1 on the training rows, and its log|det| is the
    box's minus sum log scale (the chain rule)."""
    train = np.random.default_rng(4).uniform(-1.0, 1.0, size=(500, 2))
    box = Box((-1.0, -1.0), (1.0, 1.0))
    chain = box_then_standardize(box, train)
    y, log_det = chain.to_flow(train)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-9)
    scale = chain.steps[1].scale
    np.testing.assert_allclose(log_det, box.to_flow(train)[1] - np.sum(np.log(scale)))
    assert from_dict(chain.to_dict()) == chain


def test_box_refuses_bad_bounds_and_points_with_a_clear_message():
    with pytest.raises(ValueError, match="one lower and one upper bound per column"):
        Box((0.0, 0.0), (1.0,))
    with pytest.raises(ValueError, match="column 1: lower bound 2 is not below upper 1"):
        Box((0.0, 2.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="NaN"):
        Box((math.nan,), (1.0,))
    with pytest.raises(ValueError, match="a 4-column box got points of 2 columns"):
        MIXED.to_flow(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="training row 1 .* outside the box"):
        box_then_standardize(Box((0.0,), (1.0,)), np.array([[0.5], [1.5]]))
    assert Box((-math.inf,), (math.inf,)) == Box((None,), (None,))
