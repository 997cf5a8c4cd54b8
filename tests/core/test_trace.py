"""Divergence estimators: Exact equals the Jacobian's trace; Hutchinson is unbiased."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

import cnfax

DIM = 3
BATCH = 5


def _field_fn(seed):
    field = cnfax.ConcatSquashMLP(DIM, (16, 16), activation="softplus", rngs=nnx.Rngs(seed))
    return lambda z: field(0.3, z)


@pytest.mark.parametrize("unroll_up_to", [16, 0], ids=["unrolled", "vmapped"])
@given(seed=st.integers(0, 2**16), point_seed=st.integers(0, 2**16))
def test_exact_trace_equals_trace_of_jacfwd(unroll_up_to, seed, point_seed):
    fn = _field_fn(seed)
    z = jax.random.normal(jax.random.key(point_seed), (BATCH, DIM))
    div = cnfax.Exact(unroll_up_to=unroll_up_to)(fn, z)
    jacobians = jax.vmap(jax.jacfwd(lambda row: fn(row[None])[0]))(z)  # (n, d, d)
    np.testing.assert_allclose(div.value, fn(z), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        div.trace, jnp.trace(jacobians, axis1=1, axis2=2), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        div.frobenius_sq, jnp.sum(jacobians**2, (1, 2)), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("unroll_up_to", [16, 0], ids=["unrolled", "vmapped"])
def test_exact_trace_on_a_single_unbatched_point(unroll_up_to):
    fn = _field_fn(0)
    z = jnp.array([0.1, -0.4, 0.7])
    jac = jax.jacfwd(lambda row: fn(row[None])[0])(z)
    trace = cnfax.Exact(unroll_up_to=unroll_up_to)(fn, z).trace
    np.testing.assert_allclose(trace, jnp.trace(jac), rtol=1e-5)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
@given(seed=st.integers(0, 2**16), key_seed=st.integers(0, 2**16))
def test_hutchinson_is_unbiased(noise, seed, key_seed):
    """The mean of k single-probe estimates is within 5 standard errors of the exact trace.

    Each row's estimates are i.i.d. with finite variance, so by the CLT the mean's error
    exceeds 5 sigma/sqrt(k) with probability about 6e-7 per row; sigma is the sample
    standard deviation of the same k estimates (k = 20000, so its own error is ~0.5%).
    """
    probes = 20_000
    fn = _field_fn(seed)
    z = jax.random.normal(jax.random.key(seed + 1), (BATCH, DIM))
    estimator = cnfax.Hutchinson(noise=noise, probes=1)
    eps = estimator.sample_noise(jax.random.key(key_seed), (probes, BATCH, DIM), z.dtype)[0]
    single = jax.vmap(lambda e: estimator(fn, z, e[None]).trace)(eps)  # (k, n)
    exact = cnfax.Exact()(fn, z).trace
    standard_error = jnp.std(single, axis=0) / np.sqrt(probes)
    assert jnp.all(jnp.abs(jnp.mean(single, axis=0) - exact) <= 5 * standard_error + 1e-6)
    # Several probes average the same estimates: the multi-probe estimator is their mean.
    multi = cnfax.Hutchinson(noise=noise, probes=probes)(fn, z, eps).trace
    np.testing.assert_allclose(multi, jnp.mean(single, axis=0), rtol=1e-4, atol=1e-5)


def test_rademacher_noise_is_plus_minus_one_and_gaussian_is_not():
    shape = (2, 4, DIM)
    rad = cnfax.Hutchinson("rademacher", probes=3).sample_noise(
        jax.random.key(0), shape, jnp.float32
    )
    assert rad.shape == (3, *shape)
    assert set(np.unique(np.asarray(rad))) == {-1.0, 1.0}
    gauss = cnfax.Hutchinson("gaussian").sample_noise(jax.random.key(0), shape, jnp.float32)
    assert len(np.unique(np.asarray(gauss))) == gauss.size


def test_hutchinson_rejects_bad_options_and_missing_key():
    with pytest.raises(ValueError, match="noise"):
        cnfax.Hutchinson(noise="uniform")
    with pytest.raises(ValueError, match="probes"):
        cnfax.Hutchinson(probes=0)
    with pytest.raises(ValueError, match="PRNG key"):
        cnfax.Hutchinson().sample_noise(None, (2, DIM), jnp.float32)
