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
@pytest.mark.parametrize("activation", sorted(cnfax.core.fields.ACTIVATIONS))
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


# ----------------------------------------------------------------------------- conditions


def _tree(module):
    """Parameter paths, shapes and values of a module, as checkpoints store them."""
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(module)))[0]
    return {jax.tree_util.keystr(path): np.asarray(value) for path, value in leaves}


# Names, shapes and a fingerprint sum_k k v_k of each parameter of the fields (2, (8,)) at
# nnx.Rngs(0), from fields.py before conditions were added (commit 23baa71, flax 0.12.8):
# what existing checkpoints hold, and what a seed gave.
UNCONDITIONAL_TREES = {
    "ConcatSquashMLP": {
        "['layers'][0]['gate']['bias']": ((8,), 0.0),
        "['layers'][0]['gate']['kernel']": ((1, 8), -0.407793),
        "['layers'][0]['hyper_bias']['kernel']": ((1, 8), 3.844538),
        "['layers'][0]['linear']['bias']": ((8,), 0.0),
        "['layers'][0]['linear']['kernel']": ((2, 8), -4.341073),
        "['layers'][1]['gate']['bias']": ((2,), 0.0),
        "['layers'][1]['gate']['kernel']": ((1, 2), -3.096564),
        "['layers'][1]['hyper_bias']['kernel']": ((1, 2), -0.561542),
        "['layers'][1]['linear']['bias']": ((2,), 0.0),
        "['layers'][1]['linear']['kernel']": ((8, 2), 9.878933),
    },
    "ConcatMLP": {
        "['layers'][0]['linear']['bias']": ((8,), 0.0),
        "['layers'][0]['linear']['kernel']": ((3, 8), 19.051606),
        "['layers'][1]['linear']['bias']": ((2,), 0.0),
        "['layers'][1]['linear']['kernel']": ((9, 2), -2.970212),
    },
}


@pytest.mark.parametrize("field_type", FIELDS)
@pytest.mark.parametrize("condition_dim", ["absent", 0, None])
def test_no_condition_keeps_the_unconditional_parameters(field_type, condition_dim):
    """Without a condition (condition_dim absent, 0 or None) the parameters have the names,
    shapes and initial values of the fields before conditions existed, so existing
    checkpoints load and seeds give the same fields."""
    kwargs = {} if condition_dim == "absent" else {"condition_dim": condition_dim}
    field = field_type(2, (8,), rngs=nnx.Rngs(0), **kwargs)
    tree = _tree(field)
    expected = UNCONDITIONAL_TREES[field_type.__name__]
    assert sorted(tree) == sorted(expected)
    for name, (shape, fingerprint) in expected.items():
        value = np.asarray(tree[name], np.float64)
        assert value.shape == shape, name
        weighted = float(np.sum(value * np.arange(1, value.size + 1).reshape(shape)))
        assert abs(weighted - fingerprint) <= 1e-5, (name, weighted, fingerprint)
    assert field.condition_dim == 0


@given(seed=st.integers(0, 1000), t=st.floats(0, 2))
def test_layers_compute_ffjords_formulas_from_their_named_parameters(seed, t):
    """A checkpoint's parameters keep their meaning: ConcatSquashLinear is
    (x W + b) * sigmoid(c A + a) + c E and ConcatLinear [c, x] W + b, with the context
    c = [t] (unconditional) or [t, y]."""
    x = jax.random.normal(jax.random.key(seed), (4, 3))
    y = jax.random.normal(jax.random.key(seed + 1), (4, 2))
    for condition_dim, context in [(0, jnp.full((4, 1), t)), (2, jnp.c_[jnp.full((4, 1), t), y])]:
        args = (t, x) if condition_dim == 0 else (t, x, y)
        squash = cnfax.ConcatSquashLinear(3, 5, condition_dim=condition_dim, rngs=nnx.Rngs(seed))
        lin, gate, shift = squash.linear, squash.gate, squash.hyper_bias
        expected = (x @ lin.kernel[...] + lin.bias[...]) * jax.nn.sigmoid(
            context @ gate.kernel[...] + gate.bias[...]
        ) + context @ shift.kernel[...]
        np.testing.assert_allclose(squash(*args), expected, rtol=1e-5, atol=1e-6)
        concat = cnfax.ConcatLinear(3, 5, condition_dim=condition_dim, rngs=nnx.Rngs(seed))
        inputs = jnp.concatenate([context, x], axis=-1)
        expected = inputs @ concat.linear.kernel[...] + concat.linear.bias[...]
        np.testing.assert_allclose(concat(*args), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("field_type", FIELDS)
@given(seed=st.integers(0, 1000), t=st.floats(0, 2))
def test_conditional_field_rows_see_their_own_condition(field_type, seed, t):
    """Row i of f(t, z, y) is f(t, z_i, y_i); a single y broadcasts to every row; the
    value depends on y; and rows still do not interact (Jacobian in z block-diagonal)."""
    field = field_type(2, (8, 8), condition_dim=3, rngs=nnx.Rngs(seed))
    z = jax.random.normal(jax.random.key(seed), (4, 2))
    y = jax.random.normal(jax.random.key(seed + 1), (4, 3))
    out = field(t, z, y)
    assert out.shape == (4, 2)
    for i in range(4):
        np.testing.assert_allclose(field(t, z[i], y[i]), out[i], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        field(t, z, y[0]), field(t, z, jnp.tile(y[0], (4, 1))), rtol=1e-6, atol=1e-6
    )
    assert not np.allclose(field(t, z, y[::-1]), out, atol=1e-4), "the field should use y"
    jac = jax.jacfwd(lambda z: field(t, z, y))(z)
    for i in range(4):
        for j in range(4):
            if i != j:
                assert jnp.all(jac[i, :, j, :] == 0)


@pytest.mark.parametrize("field_type", FIELDS)
def test_condition_enters_every_layer(field_type):
    """The gate and shift (ConcatSquash) or the input (Concat) of each layer has c more
    inputs; with a zero last layer the field is still zero for every y."""
    field = field_type(2, (8, 8), condition_dim=3, rngs=nnx.Rngs(0))
    tree = _tree(field)
    for layer, width in enumerate((2, 8, 8)):
        if field_type is cnfax.ConcatSquashMLP:
            assert tree[f"['layers'][{layer}]['gate']['kernel']"].shape[0] == 1 + 3
            assert tree[f"['layers'][{layer}]['hyper_bias']['kernel']"].shape[0] == 1 + 3
        else:
            assert tree[f"['layers'][{layer}]['linear']['kernel']"].shape[0] == width + 1 + 3
    zero = field_type(2, (8,), condition_dim=3, zero_init_last=True, rngs=nnx.Rngs(0))
    assert jnp.all(zero(0.3, jnp.ones((5, 2)), jnp.ones((5, 3))) == 0)


def test_conditional_fields_check_the_condition():
    field = cnfax.ConcatSquashMLP(2, (8,), condition_dim=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"conditional \(condition_dim=3\)"):
        field(0.0, jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="last dimension 2, but condition_dim=3"):
        field(0.0, jnp.zeros((4, 2)), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="unconditional"):
        cnfax.ConcatMLP(2, (8,), rngs=nnx.Rngs(0))(0.0, jnp.zeros((4, 2)), jnp.zeros((4, 3)))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="condition_dim must be a non-negative integer"):
            cnfax.ConcatMLP(2, (8,), condition_dim=bad, rngs=nnx.Rngs(0))
