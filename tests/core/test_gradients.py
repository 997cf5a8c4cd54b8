"""Gradients through the solve: BacksolveAdjoint agrees with RecursiveCheckpointAdjoint,
the Hutchinson noise is held fixed through the backward solve, a learned end time gets the
closed-form gradient of a time-dependent field, and gradients through several blocks of a
neural field (learned end times included) agree with central finite differences of the
log-likelihood itself."""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from helpers import TimeLinearField, elapsed, examples, linear_flow_log_prob
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.flatten_util import ravel_pytree

import cnfax

seeds = st.integers(0, 2**16)
TOL = diffrax.PIDController(rtol=1e-8, atol=1e-8)


@nnx.jit
def nll_grad(flow, x, key=None):
    """d(-mean log p(x))/d(parameters), as a flat vector. One jitted function with the
    data and the key as arguments: flows built alike (Hypothesis' examples, two keys)
    share one compilation."""
    grads = nnx.grad(lambda f: -jnp.mean(f.log_prob(x, key=key)))(flow)
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
        # Measured: at most 1.4e-7 over 5 seeds (the two adjoints differ by the backward
        # solve's own error at rtol = atol = 1e-8). Bound: 70x that.
        assert relative_error(g_back, g_ckpt) <= 1e-5


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
        # Measured 1.4e-7 over 3 seeds; bound 70x that. Other noise: 0.7 to 1.3.
        assert relative_error(g_back, g_ckpt) <= 1e-5
        g_other_key = nll_grad(checkpoint, x, jax.random.key(8))
        assert relative_error(g_other_key, g_ckpt) > 1e-2, "the key should matter"


@nnx.jit
def total_log_prob_grad(flow, x):
    """d(sum log p(x))/d(parameters), one compilation for every example alike."""
    return nnx.grad(lambda f: jnp.sum(f.log_prob(x)))(flow)


matrices = hnp.arrays(np.float64, (2, 2), elements=st.floats(-1.0, 1.0))


@settings(max_examples=examples(3))
@given(a=matrices, t1=st.floats(0.2, 1.5))
def test_learned_end_time_gradient_matches_closed_form(a, t1):
    """For f = (1 + t) A z, z(T) = e^{A c(T)} z(0) with c(T) = T + T^2 / 2, so
    log p(x) = log N(e^{-A c(T)} x) - c(T) tr A, and d log p / d sqrt_T follows by the
    chain rule through T = sqrt_T^2. The field depends on t, so T enters both the speed
    T f and the time t = T s at which f is evaluated: a gradient that misses the second
    (e.g. t = stop_gradient(T) s) is off by tens of percent here.

    Measured relative error at rtol = atol = 1e-10: <= 4e-10 (T) and 1e-10 (A). Bound:
    rtol 1e-6 (over 1000x margin, kept loose: the solve is not what is under test)."""
    with jax.enable_x64(True):
        x = jnp.array([[0.5, -1.0], [1.5, 0.3]])
        flow = cnfax.CNF(
            TimeLinearField(a),
            t1=t1,
            learn_t1=True,
            stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10),
        )

        grads = total_log_prob_grad(flow, x)
        closed = jax.grad(
            lambda s: jnp.sum(linear_flow_log_prob([jnp.asarray(a)], elapsed(s**2), x))
        )(jnp.asarray(np.sqrt(t1)))
        np.testing.assert_allclose(grads["sqrt_t1"][...][0], closed, rtol=1e-6, atol=1e-8)
        # and the field's matrix gets its closed-form gradient too
        closed_a = jax.grad(lambda m: jnp.sum(linear_flow_log_prob([m], elapsed(t1), x)))(
            jnp.asarray(a)
        )
        np.testing.assert_allclose(
            grads["blocks"][0]["matrix"][...], closed_a, rtol=1e-6, atol=1e-8
        )


def _mean_nll_at(theta, graphdef, times, weights, rest, x):
    """-mean log p(x) of the flow (graphdef, times, weights, rest) with its end times and
    weights replaced by the flat vector theta (laid out as ravel_pytree lays them out)."""
    times, weights = ravel_pytree((times, weights))[1](theta)
    return -jnp.mean(nnx.merge(graphdef, times, weights, rest).log_prob(x))


# Module-level jits, the flow's structure static: the examples of a test share them.
_mean_nll = jax.jit(_mean_nll_at, static_argnames="graphdef")
_mean_nll_grad = jax.jit(jax.grad(_mean_nll_at), static_argnames="graphdef")


def flat_loss(flow, x):
    """theta = (sqrt_T of each block, weights), flat; -mean log p(x) as a function of
    theta, and its gradient (both jitted)."""
    graphdef, times, weights, rest = nnx.split(flow, nnx.PathContains("sqrt_t1"), nnx.Param, ...)
    theta = ravel_pytree((times, weights))[0]
    parts = dict(graphdef=graphdef, times=times, weights=weights, rest=rest, x=x)
    return theta, functools.partial(_mean_nll, **parts), functools.partial(_mean_nll_grad, **parts)


def central_differences(loss, theta, directions, step):
    """(L(theta + h v) - L(theta - h v)) / 2h along each direction v (rows)."""
    return jnp.stack(
        [(loss(theta + step * v) - loss(theta - step * v)) / (2 * step) for v in directions]
    )


@settings(max_examples=examples(2))
@given(seed=seeds)
def test_gradients_through_several_blocks_match_central_differences(seed):
    """Two ConcatSquash blocks (whose gates depend on t), learned end times, the exact
    trace and BacksolveAdjoint: the directional derivatives of -mean log p(x) along each
    block's sqrt_T and along two random unit directions over all parameters equal central
    finite differences of the same loss, in float64.

    The reference differentiates nothing: it solves forward with another solver, RK4 at
    fixed steps of about 0.005 (no step-size decisions that could jump between the two
    evaluations; its round-trip error is ~1e-15), so it checks the adjoint solve, the chain
    through several blocks and T's double role (speed and time). Its error is O(h^2)
    (h = 1e-5: ~1e-10) plus round-off over h. Measured: |AD - FD| <= 1.1e-9 |grad| over
    8 seeds (AD at rtol = atol = 1e-10). Bound: 1e-7 |grad| (90x). Dropping T from the
    field's time makes the T derivatives tens of percent wrong (0.64 |grad| here)."""
    with jax.enable_x64(True):
        blocks = [
            cnfax.ConcatSquashMLP(2, (8, 8), param_dtype=jnp.float64, rngs=nnx.Rngs(seed + b))
            for b in range(2)
        ]
        flow = cnfax.CNF(
            blocks,
            t1=0.6,
            learn_t1=True,
            stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10),
        )
        x = 1.5 * jax.random.normal(jax.random.key(seed + 10), (8, 2), jnp.float64)
        # T / dt0 = 122.4 steps: a perturbation of 1e-5 never changes their number.
        reference = flow.replace(
            solver=cnfax.RK4(), stepsize_controller=diffrax.ConstantStepSize(), dt0=0.0049
        )

        theta, _, loss_grad = flat_loss(flow, x)
        np.testing.assert_allclose(theta[:2], np.sqrt(0.6))  # the end times come first
        grad = loss_grad(theta)
        random = jax.random.normal(jax.random.key(seed + 20), (2, theta.size), jnp.float64)
        directions = jnp.concatenate(
            [jnp.eye(2, theta.size), random / jnp.linalg.norm(random, axis=1, keepdims=True)]
        )
        same_theta, reference_loss, _ = flat_loss(reference, x)
        np.testing.assert_array_equal(same_theta, theta)
        finite = central_differences(reference_loss, theta, directions, 1e-5)
        error = jnp.abs(directions @ grad - finite) / jnp.linalg.norm(grad)
        assert jnp.max(error) <= 1e-7, (directions @ grad, finite, error)


def test_gradient_through_blocks_and_float32_defaults_is_finite_and_nonzero():
    fields = [cnfax.ConcatSquashMLP(2, (8,), rngs=nnx.Rngs(i)) for i in range(2)]
    flow = cnfax.CNF(fields, t1=0.5, trace=cnfax.Hutchinson(), learn_t1=True)
    x = jax.random.normal(jax.random.key(0), (16, 2))
    g = nll_grad(flow, x, jax.random.key(1))
    assert jnp.all(jnp.isfinite(g)) and jnp.linalg.norm(g) > 0


def test_learned_end_time_with_fixed_steps_under_backsolve():
    """dt0 depends on T (a step in s units is dt0 / T): it must not block the gradient.
    Field f = (1 + t) A z, closed form as above."""
    with jax.enable_x64(True):
        a = np.array([[0.3, -0.5], [0.2, 0.1]])
        x = jnp.array([[0.5, -1.0], [1.5, 0.3]])
        flow = cnfax.CNF(
            TimeLinearField(a),
            t1=0.8,
            learn_t1=True,
            solver=cnfax.RK4(),
            stepsize_controller=diffrax.ConstantStepSize(),
            dt0=0.01,
        )
        grads = nnx.grad(lambda f: jnp.sum(f.log_prob(x)))(flow)
        closed = jax.grad(
            lambda s: jnp.sum(linear_flow_log_prob([jnp.asarray(a)], elapsed(s**2), x))
        )(jnp.sqrt(0.8))
        np.testing.assert_allclose(grads["sqrt_t1"][...][0], closed, rtol=1e-6)
