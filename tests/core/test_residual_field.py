"""The residual field: identity flow at initialisation (zero output layer), the Fourier
time features, conditions in every block, and invertibility once its output is not zero."""

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import cnfax
from cnfax.core.residual_field import ResidualField, fourier_time_features


def _perturbed(field: ResidualField, seed: int, scale: float = 0.3) -> ResidualField:
    """The field with a random (non-zero) output layer, so that the flow moves points."""
    key = jax.random.key(seed)
    kernel = field.output.kernel
    kernel[...] = scale * jax.random.normal(key, kernel[...].shape, kernel[...].dtype)
    return field


def test_fourier_features_by_hand():
    e = fourier_time_features(0.25, 3, 0.5, jnp.float32)
    angles = math.pi * np.arange(1, 4) * 0.25 / 0.5
    np.testing.assert_allclose(e, np.concatenate([np.cos(angles), np.sin(angles)]), atol=1e-6)


def test_a_new_field_is_zero_so_the_flow_is_the_base_density():
    """Zero-initialised output: f = 0, the flow is the identity, and log p is N(0, I)."""
    field = ResidualField(3, 16, 2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (8, 3))
    assert float(jnp.max(jnp.abs(field(0.3, x)))) == 0.0
    flow = cnfax.CNF(field, t1=0.5)
    np.testing.assert_allclose(flow.log_prob(x), cnfax.standard_normal_log_prob(x), atol=1e-5)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_inverse_undoes_forward_with_a_nonzero_output(seed):
    field = _perturbed(ResidualField(2, 16, 2, rngs=nnx.Rngs(seed)), seed)
    # The audit's bound (cnfax.evaluation.audit): 1e-3 relative to max(1, |z|) at 1e-6.
    controller = diffrax.PIDController(rtol=1e-6, atol=1e-6)
    flow = cnfax.CNF(field, t1=0.5, stepsize_controller=controller)
    z = jax.random.normal(jax.random.key(seed), (16, 2))
    assert float(jnp.max(jnp.abs(field(0.1, z)))) > 0  # the flow moves points
    error = jnp.abs(flow.inverse(flow.forward(z)) - z) / jnp.maximum(1.0, jnp.abs(z))
    assert float(jnp.max(error)) <= 1e-3


def test_the_time_and_the_condition_change_the_field():
    field = _perturbed(ResidualField(2, 16, 2, condition_dim=3, rngs=nnx.Rngs(0)), 0)
    z = jnp.ones((4, 2))
    y = jnp.zeros((4, 3))
    base = field(0.1, z, y)
    assert float(jnp.max(jnp.abs(field(0.4, z, y) - base))) > 1e-4
    assert float(jnp.max(jnp.abs(field(0.1, z, y + 1.0) - base))) > 1e-4
    rows = jnp.stack([z[0], z[0] + 1.0])  # rows do not interact (LayerNorm is per row)
    np.testing.assert_allclose(field(0.1, rows, y[:2])[0], base[0], atol=1e-6)


def test_bad_options_and_calls_are_refused():
    with pytest.raises(ValueError, match="width must be a positive integer"):
        ResidualField(2, 0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="activation 'relu'"):
        ResidualField(2, activation="relu", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="t_max must be positive"):
        ResidualField(2, t_max=0.0, rngs=nnx.Rngs(0))
    conditional = ResidualField(2, 8, 1, condition_dim=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="conditional"):
        conditional(0.1, jnp.ones((1, 2)))
