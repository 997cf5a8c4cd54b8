"""Bad input raises a ValueError that names the problem, before any solve; a solve that
runs out of steps never returns a silently wrong number."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

import cnfax


@pytest.fixture(scope="module")
def flow():
    return cnfax.CNF(cnfax.ConcatSquashMLP(2, (8,), rngs=nnx.Rngs(0)), t1=0.5)


BAD_INPUTS = {
    "last dimension": jnp.zeros((4, 3)),
    "rank": jnp.zeros((2, 4, 2)),
    "floating dtype": jnp.zeros((4, 2), jnp.int32),
    "NaN or inf": jnp.array([[0.0, 1.0], [jnp.nan, 0.0]]),
}


@pytest.mark.parametrize("problem", sorted(BAD_INPUTS))
@pytest.mark.parametrize("method", ["log_prob", "inverse", "forward"])
def test_bad_input_raises_a_value_error_naming_the_problem(flow, problem, method):
    with pytest.raises(ValueError, match=problem):
        getattr(flow, method)(BAD_INPUTS[problem])


@given(position=st.integers(0, 7), value=st.sampled_from([np.inf, -np.inf, np.nan]))
def test_any_non_finite_entry_is_caught(flow, position, value):
    x = np.zeros((4, 2), np.float32)
    x.flat[position] = value
    with pytest.raises(ValueError, match="NaN or inf"):
        flow.log_prob(x)


def test_non_finite_input_under_jit_is_an_error_not_a_number(flow):
    x = jnp.array([[0.0, jnp.inf]])
    with pytest.raises(Exception, match="NaN or inf"):
        nnx.jit(lambda f, x: f.log_prob(x))(flow, x).block_until_ready()


def test_bad_options_raise(flow):
    field = cnfax.ConcatSquashMLP(2, (8,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="t1"):
        cnfax.CNF(field, t1=-1.0)
    with pytest.raises(ValueError, match="max_steps"):
        cnfax.CNF(field, max_steps=0)
    with pytest.raises(ValueError, match="dt0"):
        cnfax.CNF(field, stepsize_controller=diffrax.ConstantStepSize())
    with pytest.raises(ValueError, match="PRNG key"):
        flow.replace(trace=cnfax.Hutchinson()).log_prob(jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="n must be"):
        flow.sample(jax.random.key(0), 0)
    with pytest.raises(TypeError, match="unknown options"):
        flow.replace(tolerance=1e-3)


def _starved(throw):
    field = cnfax.ConcatSquashMLP(2, (8,), rngs=nnx.Rngs(0))
    ctrl = diffrax.PIDController(rtol=1e-9, atol=1e-9)
    return cnfax.CNF(field, t1=1.0, max_steps=3, stepsize_controller=ctrl, throw=throw)


def test_running_out_of_steps_raises_naming_max_steps_and_tolerances():
    x = jnp.ones((4, 2))
    with pytest.raises(Exception, match=r"max_steps=3.*rtol=1e-09, atol=1e-09"):
        _starved(throw=True).log_prob(x).block_until_ready()
    with pytest.raises(Exception, match="max_steps=3"):
        nnx.jit(lambda f, x: f.log_prob(x))(_starved(throw=True), x).block_until_ready()


def test_without_throw_a_failed_solve_is_nan_and_flagged():
    x = jnp.ones((4, 2))
    logp, stats = nnx.jit(lambda f, x: f.log_prob_and_stats(x))(_starved(throw=False), x)
    assert jnp.all(jnp.isnan(logp))
    assert not bool(stats.success)
    assert int(stats.steps) == 3
    per_sample = _starved(throw=False).replace(per_sample=True)
    logp, stats = per_sample.log_prob_and_stats(x)
    assert jnp.all(jnp.isnan(logp)) and not bool(stats.success)
