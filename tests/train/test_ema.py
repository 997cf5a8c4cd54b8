"""The EMA of the weights against its recursion written out by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cnfax
from cnfax.train.ema import EMA, ema_decay


def _flow(value: float) -> cnfax.CNF:
    field = cnfax.ConcatSquashMLP(2, (4,), rngs=nnx.Rngs(0))
    params = nnx.state(field, nnx.Param)
    nnx.update(field, jax.tree.map(lambda a: jnp.full_like(a, value), params))
    return cnfax.CNF(field)


def _first_param(flow):
    return float(jnp.ravel(jax.tree.leaves(nnx.state(flow, nnx.Param))[0])[0])


def test_the_average_follows_its_recursion_with_the_warm_up():
    flow = _flow(0.0)
    ema = EMA(flow, decay=0.9)
    expected = 0.0
    for k, value in enumerate([1.0, 2.0, 3.0, -1.0], start=1):
        nnx.update(flow, nnx.state(_flow(value), nnx.Param))
        ema.update(flow)
        d = min(0.9, (1 + k) / (10 + k))
        expected = d * expected + (1 - d) * value
        assert _first_param(ema.flow) == pytest.approx(expected, rel=1e-6)
        assert _first_param(flow) == value  # the trained weights are untouched
    assert ema_decay(0.999, 1) == pytest.approx(2 / 11) and ema_decay(0.9, 10**6) == 0.9


def test_a_bad_decay_is_refused():
    with pytest.raises(ValueError, match="ema decay"):
        EMA(_flow(0.0), 1.0)
    assert np.isfinite(_first_param(_flow(1.0)))
