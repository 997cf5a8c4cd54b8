"""The compile-time accounting of cnfax.train.runtime, against the wall clock."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from cnfax.train.runtime import compile_seconds


def test_a_compile_nested_in_a_trace_is_counted_once():
    """Tracing ``outer`` evaluates ``inner`` eagerly (compile-time evaluation, as tracing a
    training step does with dtype conversions): inner's lowering and compile run inside
    outer's trace. Counted inclusively, the stages would add up to more than the call's
    wall time by inner's compile (about 0.1-0.5 s here, against a few milliseconds of
    running); counted once, they fit inside it. JAX times the stages with time.time()."""

    @jax.jit
    def inner(x):
        for _ in range(300):  # a compile long enough to stand out of the call's slack
            x = jnp.sin(x) * 1.0001
        return x

    @jax.jit
    def outer(x):
        with jax.ensure_compile_time_eval():
            shift = inner(np.full(3, 0.5, np.float32))
        return x + shift

    before = compile_seconds()
    started = time.time()
    outer(jnp.ones(3)).block_until_ready()
    wall = time.time() - started
    spent = {k: v - before[k] for k, v in compile_seconds().items()}
    assert spent["trace_seconds"] > 0 and spent["compile_seconds"] > 0, spent
    assert sum(spent.values()) <= wall, (spent, wall)
