"""Fuzzing: any configuration and input ends in a clear error or a finite result."""

import diffrax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from helpers import examples
from hypothesis import given, settings
from hypothesis import strategies as st

import cnfax

FIELD = cnfax.ConcatSquashMLP(2, (8,), rngs=nnx.Rngs(0))
finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=32)


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
    except Exception as error:  # a failed solve, raised from inside the compiled program
        assert "max_steps=2" in str(error), str(error)
    else:
        assert jnp.all(jnp.isfinite(logp))
