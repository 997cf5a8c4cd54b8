"""Vector fields: shapes, time dependence, zero initialisation, row independence, bad options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

import cnfax

FIELDS = [cnfax.ConcatSquashMLP, cnfax.ConcatMLP]


@pytest.mark.parametrize("field_type", FIELDS)
@pytest.mark.parametrize("activation", sorted(cnfax.fields.ACTIVATIONS))
def test_field_maps_batches_and_single_points_to_the_same_values(field_type, activation):
    field = field_type(3, (8, 8), activation=activation, rngs=nnx.Rngs(0))
    z = jax.random.normal(jax.random.key(1), (4, 3))
    out = field(0.2, z)
    assert out.shape == (4, 3)
    np.testing.assert_allclose(field(0.2, z[1]), out[1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(field(0.9, z), out), "the field should depend on time"


@pytest.mark.parametrize("field_type", FIELDS)
@given(seed=st.integers(0, 1000), t=st.floats(0, 2))
def test_zero_initialised_last_layer_gives_the_zero_field(field_type, seed, t):
    field = field_type(2, (8,), zero_init_last=True, rngs=nnx.Rngs(seed))
    z = jax.random.normal(jax.random.key(seed), (5, 2))
    assert jnp.all(field(t, z) == 0)


@pytest.mark.parametrize("field_type", FIELDS)
def test_rows_do_not_interact(field_type):
    """The Jacobian of the batched map is block-diagonal, as the row-wise trace assumes."""
    field = field_type(2, (8,), rngs=nnx.Rngs(0))
    z = jax.random.normal(jax.random.key(2), (3, 2))
    jac = jax.jacfwd(lambda z: field(0.5, z))(z)  # (3, 2, 3, 2)
    for i in range(3):
        for j in range(3):
            if i != j:
                assert jnp.all(jac[i, :, j, :] == 0)


def test_field_rejects_bad_options():
    with pytest.raises(ValueError, match="activation"):
        cnfax.ConcatSquashMLP(2, (8,), activation="relu6", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="hidden"):
        cnfax.ConcatSquashMLP(2, (8, 0), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dim"):
        cnfax.ConcatMLP(0, (8,), rngs=nnx.Rngs(0))
