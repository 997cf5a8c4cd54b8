"""Solver statistics: the NFE estimate equals a direct count; backward evaluations are counted."""

import diffrax
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import cnfax


class CountingField(nnx.Module):
    """Wraps a field and counts its forward evaluations on the host."""

    calls = 0

    def __init__(self, inner):
        self.inner = inner
        self.dim = inner.dim

    def __call__(self, t, z):
        jax.debug.callback(CountingField._tick)
        return self.inner(t, z)

    @staticmethod
    def _tick():
        CountingField.calls += 1


SOLVERS = {
    "dopri5": dict(),
    "tsit5": dict(solver=diffrax.Tsit5()),
    "dopri8": dict(solver=diffrax.Dopri8()),
    "heun-adaptive": dict(
        solver=diffrax.Heun(), stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-3)
    ),
    "euler-fixed": dict(
        solver=diffrax.Euler(), stepsize_controller=diffrax.ConstantStepSize(), dt0=0.05
    ),
    "rk4-fixed": dict(solver=cnfax.RK4(), stepsize_controller=diffrax.ConstantStepSize(), dt0=0.05),
}


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("trace", ["exact", "none"])
def test_nfe_estimate_equals_counted_evaluations(solver, trace):
    field = CountingField(cnfax.ConcatSquashMLP(2, (8,), rngs=nnx.Rngs(0)))
    # The vmapped exact trace calls the field once per evaluation of the augmented field
    # (the unrolled form traces one call per JVP, which XLA merges into one computation).
    flow = cnfax.CNF(field, t1=0.5, trace=cnfax.Exact(unroll_up_to=0), **SOLVERS[solver])
    x = jax.random.normal(jax.random.key(0), (8, 2))
    CountingField.calls = 0
    if trace == "exact":
        _, stats = flow.log_prob_and_stats(x)
    else:
        _, _, _, stats = flow._transform(x, -1, with_logp=False)
    jax.effects_barrier()
    # Each evaluation of the augmented field calls the inner field once (the vmapped
    # exact trace linearises it once and reuses the linear map for all d columns).
    assert int(stats.nfe) == CountingField.calls > 0
    assert int(stats.steps) == int(stats.accepted) + int(stats.rejected)


def test_backward_evaluations_are_counted_exactly_for_fixed_steps():
    """RecursiveCheckpointAdjoint with RK4 at 10 fixed steps makes 4 x 10 VJPs of the field."""
    field = cnfax.ConcatSquashMLP(2, (8,), rngs=nnx.Rngs(0))
    flow = cnfax.CNF(
        field,
        t1=0.5,
        solver=cnfax.RK4(),
        dt0=0.05,
        stepsize_controller=diffrax.ConstantStepSize(),
        adjoint=diffrax.RecursiveCheckpointAdjoint(),
        count_backward=True,
    )
    x = jax.random.normal(jax.random.key(0), (8, 2))
    cnfax.backward_evaluations.reset()
    nnx.grad(lambda f: -jnp.mean(f.log_prob(x)))(flow)
    assert cnfax.backward_evaluations.count == 40


def test_backsolve_backward_evaluations_are_counted():
    field = cnfax.ConcatSquashMLP(2, (8,), rngs=nnx.Rngs(0))
    flow = cnfax.CNF(field, t1=0.5, count_backward=True)
    x = jax.random.normal(jax.random.key(0), (8, 2))
    cnfax.backward_evaluations.reset()
    _, stats = flow.log_prob_and_stats(x)
    assert cnfax.backward_evaluations.count == 0, "a forward solve makes no VJPs"
    nnx.grad(lambda f: -jnp.mean(f.log_prob(x)))(flow)
    # One Dopri5 backward solve: f(y0) once, then 6 VJPs per step. (It may take fewer
    # steps than the forward solve: the parameter adjoints are not error-controlled.)
    count = cnfax.backward_evaluations.count
    assert count >= 7 and count % 6 == 1
