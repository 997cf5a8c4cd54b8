"""SolveOptions compare by value: equal options are one cache key of every jitted
function (so an equal flow reuses compiled code), and any difference in solver,
controller, adjoint or the scalar options keeps them apart (so no flow runs another's
compiled solve)."""

import diffrax
import jax.numpy as jnp
import pytest

from cnfax.core.augmented import SolveOptions


def test_options_built_alike_are_equal_and_hash_alike():
    a, b = SolveOptions.create(), SolveOptions.create()
    assert a is not b
    assert a == b and hash(a) == hash(b)
    tight = dict(stepsize_controller=diffrax.PIDController(rtol=1e-7, atol=1e-7))
    assert SolveOptions.create(**tight) == SolveOptions.create(**tight)
    assert a.replace(max_steps=4096) == a


@pytest.mark.parametrize(
    "change",
    [
        dict(solver=diffrax.Tsit5()),
        dict(stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-6)),
        dict(stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-5, pcoeff=0.3)),
        dict(adjoint=diffrax.RecursiveCheckpointAdjoint()),
        dict(max_steps=100),
        dict(per_sample=True),
        dict(throw=False),
        dict(count_backward=True),
        dict(solver=diffrax.Euler(), stepsize_controller=diffrax.ConstantStepSize(), dt0=0.1),
    ],
)
def test_any_difference_keeps_options_apart(change):
    assert SolveOptions.create() != SolveOptions.create(**change)


def test_an_unhashable_leaf_falls_back_to_identity():
    """An array tolerance cannot be hashed by value: such options equal only themselves."""
    controller = diffrax.PIDController(rtol=jnp.asarray(1e-5), atol=1e-5)
    a = SolveOptions.create(stepsize_controller=controller)
    b = SolveOptions.create(stepsize_controller=controller)
    assert a == a and hash(a) == hash(a)
    assert a != b
