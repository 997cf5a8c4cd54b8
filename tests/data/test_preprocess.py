"""Preprocessing: every map's log-determinant equals log |det| of its Jacobian computed by
autodiff, the maps invert, and bits/dim converts nats as it should."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from helpers import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from cnfax.data.preprocess import (
    Chain,
    Dequantize,
    Identity,
    Logit,
    Standardize,
    bits_per_dim,
    from_dict,
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
