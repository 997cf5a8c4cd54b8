"""Fuzzing: any configuration and input ends in a clear error or a finite result."""

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import examples
from hypothesis import given, settings
from hypothesis import strategies as st

import cnfax

FIELD = cnfax.ConcatSquashMLP(2, (8,), rngs=nnx.Rngs(0))
finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=32)


def log_prob_outcome(t1, tol, max_steps, per_sample, shape, dtype, values) -> str:
    """Build a CNF and take log p of the values (resized to shape), checking that it ends
    in one of three ways; return which: "invalid" (a ValueError naming the problem),
    "max_steps" (a failed solve, raised with its step budget) or "finite" (all finite)."""
    x = np.resize(np.asarray(values, np.float32), shape)
    x = x if dtype is np.float32 else np.clip(np.nan_to_num(x), -100, 100).astype(dtype)
    try:
        flow = cnfax.CNF(
            FIELD,
            t1=t1,
            max_steps=max_steps,
            per_sample=per_sample,
            stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol),
        )
        logp = flow.log_prob(x)
        logp.block_until_ready()
    except ValueError as error:
        message = str(error)
        assert any(
            word in message for word in ("t1", "dimension", "rank", "dtype", "NaN or inf")
        ), message
        return "invalid"
    except Exception as error:  # a failed solve, raised from inside the compiled program
        assert "max_steps=2" in str(error), str(error)
        return "max_steps"
    assert jnp.all(jnp.isfinite(logp))
    assert logp.shape == x.shape[:-1]
    return "finite"


@settings(max_examples=examples(8))
@given(
    t1=st.sampled_from([-0.5, 0.0, 0.3, 1.0, float("nan")]),
    tol=st.sampled_from([1e-3, 1e-5]),
    max_steps=st.sampled_from([2, 4096]),
    per_sample=st.booleans(),
    shape=st.sampled_from([(4, 2), (4, 3), (2,), (2, 2, 2)]),
    dtype=st.sampled_from([np.float32, np.int32]),
    values=st.lists(finite_or_not | st.floats(-3, 3, width=32), min_size=8, max_size=8),
)
def test_log_prob_ends_in_a_clear_error_or_a_finite_result(
    t1, tol, max_steps, per_sample, shape, dtype, values
):
    log_prob_outcome(t1, tol, max_steps, per_sample, shape, dtype, values)


GOOD_VALUES = [0.5, -1.0, 1.5, 0.3, -2.0, 0.1, 2.5, -0.7]


@pytest.mark.parametrize(
    "case, expected",
    [
        (dict(t1=1.0, tol=1e-5, max_steps=4096, per_sample=False, shape=(4, 2)), "finite"),
        (dict(t1=0.3, tol=1e-3, max_steps=4096, per_sample=True, shape=(4, 2)), "finite"),
        (dict(t1=1.0, tol=1e-5, max_steps=2, per_sample=False, shape=(4, 2)), "max_steps"),
        (dict(t1=1.0, tol=1e-5, max_steps=2, per_sample=True, shape=(4, 2)), "max_steps"),
        (dict(t1=0.0, tol=1e-5, max_steps=4096, per_sample=False, shape=(4, 2)), "invalid"),
    ],
    ids=[
        "finite-shared",
        "finite-per-sample",
        "max-steps",
        "max-steps-per-sample",
        "invalid-t1",
    ],
)
def test_every_outcome_of_the_fuzz_test_is_reached(case, expected):
    """Under the CI profile the 4 drawn examples may all be invalid inputs: these fixed
    cases make every branch of the fuzz test's check run, and check it is the right one."""
    assert log_prob_outcome(dtype=np.float32, values=GOOD_VALUES, **case) == expected
