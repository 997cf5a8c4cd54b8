"""Gradients through the solve: BacksolveAdjoint agrees with RecursiveCheckpointAdjoint,
the Hutchinson noise is held fixed through the backward solve, and a learned end time
gets the closed-form gradient."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from helpers import LinearField, examples, linear_flow_log_prob
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cnfax

seeds = st.integers(0, 2**16)
TOL = diffrax.PIDController(rtol=1e-8, atol=1e-8)


def nll_grad(flow, x, key=None):
    """d(-mean log p(x))/d(parameters), under jit, as a flat vector."""

    def loss(flow):
        return -jnp.mean(flow.log_prob(x, key=key))

    grads = nnx.jit(nnx.grad(loss))(flow)
    return jnp.concatenate([jnp.ravel(g) for g in jax.tree.leaves(grads)])


def relative_error(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@settings(max_examples=examples(2))
@given(seed=seeds)
def test_backsolve_gradients_match_recursive_checkpoint(seed):
    with jax.enable_x64(True):
        field = cnfax.ConcatSquashMLP(2, (16, 16), param_dtype=jnp.float64, rngs=nnx.Rngs(seed))
        x = 1.5 * jax.random.normal(jax.random.key(seed + 1), (32, 2), jnp.float64)
        backsolve = cnfax.CNF(field, t1=0.5, learn_t1=True, stepsize_controller=TOL)
        checkpoint = backsolve.replace(adjoint=diffrax.RecursiveCheckpointAdjoint())
        g_back, g_ckpt = nll_grad(backsolve, x), nll_grad(checkpoint, x)
        assert jnp.linalg.norm(g_ckpt) > 0
        assert relative_error(g_back, g_ckpt) <= 1e-3


def test_hutchinson_noise_is_fixed_through_the_backward_solve():
    """With one key, Backsolve and RecursiveCheckpoint differentiate the same estimator.
    Resampling noise during the backward solve would make them disagree by O(1)."""
    with jax.enable_x64(True):
        field = cnfax.ConcatSquashMLP(2, (16, 16), param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        x = jax.random.normal(jax.random.key(1), (32, 2), jnp.float64)
        trace = cnfax.Hutchinson("gaussian", probes=2)
        backsolve = cnfax.CNF(field, t1=0.5, trace=trace, stepsize_controller=TOL)
        checkpoint = backsolve.replace(adjoint=diffrax.RecursiveCheckpointAdjoint())
        key = jax.random.key(7)
        g_back, g_ckpt = nll_grad(backsolve, x, key), nll_grad(checkpoint, x, key)
        assert relative_error(g_back, g_ckpt) <= 1e-3
        g_other_key = nll_grad(checkpoint, x, jax.random.key(8))
        assert relative_error(g_other_key, g_ckpt) > 1e-2, "the key should matter"


matrices = hnp.arrays(np.float64, (2, 2), elements=st.floats(-1.0, 1.0))


@settings(max_examples=examples(3))
@given(a=matrices, t1=st.floats(0.2, 1.5))
def test_learned_end_time_gradient_matches_closed_form(a, t1):
    """For f = A z: d log p(x) / d sqrt_T = 2 sqrt_T d/dT [log N(e^{-AT} x) - T tr A]."""
    with jax.enable_x64(True):
        x = jnp.array([[0.5, -1.0], [1.5, 0.3]])
        flow = cnfax.CNF(
            LinearField(a),
            t1=t1,
            learn_t1=True,
            stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10),
        )

        def total_log_prob(flow):
            return jnp.sum(flow.log_prob(x))

        grads = nnx.jit(nnx.grad(total_log_prob))(flow)
        sqrt_t = np.sqrt(t1)
        closed = jax.grad(lambda s: jnp.sum(linear_flow_log_prob([jnp.asarray(a)], s**2, x)))(
            jnp.asarray(sqrt_t)
        )
        np.testing.assert_allclose(grads["sqrt_t1"][...][0], closed, rtol=1e-5, atol=1e-7)
        # and the field's matrix gets its closed-form gradient too
        closed_a = jax.grad(lambda m: jnp.sum(linear_flow_log_prob([m], t1, x)))(jnp.asarray(a))
        np.testing.assert_allclose(
            grads["blocks"][0]["matrix"][...], closed_a, rtol=1e-5, atol=1e-7
        )


def test_gradient_through_blocks_and_float32_defaults_is_finite_and_nonzero():
    fields = [cnfax.ConcatSquashMLP(2, (8,), rngs=nnx.Rngs(i)) for i in range(2)]
    flow = cnfax.CNF(fields, t1=0.5, trace=cnfax.Hutchinson(), learn_t1=True)
    x = jax.random.normal(jax.random.key(0), (16, 2))
    g = nll_grad(flow, x, jax.random.key(1))
    assert jnp.all(jnp.isfinite(g)) and jnp.linalg.norm(g) > 0


def test_learned_end_time_with_fixed_steps_under_backsolve():
    """dt0 depends on T (a step in s units is dt0 / T): it must not block the gradient."""
    with jax.enable_x64(True):
        a = np.array([[0.3, -0.5], [0.2, 0.1]])
        x = jnp.array([[0.5, -1.0], [1.5, 0.3]])
        flow = cnfax.CNF(
            LinearField(a),
            t1=0.8,
            learn_t1=True,
            solver=cnfax.RK4(),
            stepsize_controller=diffrax.ConstantStepSize(),
            dt0=0.01,
        )
        grads = nnx.grad(lambda f: jnp.sum(f.log_prob(x)))(flow)
        closed = jax.grad(lambda s: jnp.sum(linear_flow_log_prob([jnp.asarray(a)], s**2, x)))(
            jnp.sqrt(0.8)
        )
        np.testing.assert_allclose(grads["sqrt_t1"][...][0], closed, rtol=1e-6)
