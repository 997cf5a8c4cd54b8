"""The per-point error norm: each point is held to the tolerance it would meet alone."""

import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from helpers import LinearField, examples, linear_flow_log_prob
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cnfax
from cnfax.core import norms as control

errors = hnp.arrays(np.float64, (6, 3), elements=st.floats(-10, 10))
logp_errors = hnp.arrays(np.float64, (6,), elements=st.floats(-10, 10))


@given(z=errors, dlogp=logp_errors)
def test_batch_norm_is_the_worst_single_point_norm(z, dlogp):
    state = {"z": jnp.asarray(z), "delta_logp": jnp.asarray(dlogp)}
    alone = [
        control.batch_max_norm(
            {"z": state["z"][i : i + 1], "delta_logp": state["delta_logp"][i : i + 1]}
        )
        for i in range(6)
    ]
    np.testing.assert_allclose(control.batch_max_norm(state), max(alone), rtol=1e-6)
    # and a point's norm alone is Diffrax's RMS norm of that point
    np.testing.assert_allclose(
        alone[0], optx.rms_norm((state["z"][0], state["delta_logp"][0])), rtol=1e-6
    )


@given(z=errors, dlogp=logp_errors)
def test_batch_norm_never_dilutes_a_point_as_rms_does(z, dlogp):
    state = {"z": jnp.asarray(z), "delta_logp": jnp.asarray(dlogp)}
    assert control.batch_max_norm(state) >= optx.rms_norm(state) * (1 - 1e-6)


def test_regulariser_states_and_parameter_adjoints_are_not_controlled():
    z = jnp.ones((4, 2))
    base = {"z": z, "delta_logp": jnp.zeros(4)}
    with_reg = dict(base, kinetic=1e6 * jnp.ones(4))
    assert control.batch_max_norm(with_reg) == control.batch_max_norm(base)
    backward = (base, base, {"w": 1e6 * jnp.ones(10)}, None)
    assert control.batch_max_norm(backward) == control.batch_max_norm(base)


def test_default_pid_gets_the_batch_norm_and_a_custom_norm_is_kept():
    field_flow = cnfax.CNF
    from flax import nnx

    field = cnfax.ConcatSquashMLP(2, (4,), rngs=nnx.Rngs(0))
    flow = field_flow(field)
    assert flow.options.stepsize_controller.norm is control.batch_max_norm
    backward = flow.options.adjoint.kwargs["stepsize_controller"]
    assert backward.norm is control.batch_max_norm and backward.rtol == 1e-5
    assert flow.options.adjoint.kwargs["throw"] is True

    def mine(x):
        return optx.max_norm(x)

    custom = field_flow(
        field, stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-3, norm=mine)
    )
    assert custom.options.stepsize_controller.norm is mine
    assert "stepsize_controller" not in custom.options.adjoint.kwargs


def rms_norm(x):
    """Diffrax's default RMS norm, wrapped: the CNF keeps a norm it is given."""
    return optx.rms_norm(x)


# A fast spiral: f = A z with A = 0.5 I + 3 J rotates points 3 radians and grows them by
# e^0.5 over T = 1. Its error is proportional to |z|, so a point at radius 2 to 4 is hard
# and points at radius ~1e-3 (where atol dominates the scale) are easy.
SPIRAL = [[0.5, -3.0], [3.0, 0.5]]
EASY = 1023


@settings(max_examples=examples(3))
@given(
    radius=st.floats(2.0, 4.0),
    angle=st.floats(0.0, 2 * math.pi),
    where=st.integers(0, EASY),
)
def test_one_hard_point_among_easy_ones_meets_its_own_tolerance(radius, angle, where):
    """One hard point among 1023 easy ones, solved as one batch at rtol = atol = 1e-6,
    against the closed form log N(e^{-AT} x) - T tr A.

    With the per-point norm the batch takes the hard point's own steps: its error equals
    its error alone, measured 0.64 to 1.22 tol (1 + |log p|) over radii 2 to 4 and four
    angles. Bound: 4 tol (1 + |log p|), 3.3x above the worst. Diffrax's RMS norm divides
    the hard point's local error by about sqrt(1024) = 32, and its error grows to 21 to
    47 tol (1 + |log p|): the last lines check that this example tells the two apart
    (RMS must miss the bound by more than 3x)."""
    tol = 1e-6
    with jax.enable_x64(True):
        a = jnp.asarray(SPIRAL, jnp.float64)
        hard = radius * jnp.array([[math.cos(angle), math.sin(angle)]], jnp.float64)
        easy = 1e-3 * jax.random.normal(jax.random.key(0), (EASY, 2), jnp.float64)
        batch = jnp.concatenate([easy[:where], hard, easy[where:]])
        exact = linear_flow_log_prob([a], 1.0, hard)[0]
        bound = 4 * tol * (1 + abs(float(exact)))

        flow = cnfax.CNF(
            LinearField(a), t1=1.0, stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol)
        )
        in_batch = float(flow.log_prob(batch)[where])
        alone = float(flow.log_prob(hard)[0])
        assert abs(in_batch - exact) <= bound, (abs(in_batch - exact), bound)
        # the same answer as alone, to far below the tolerance: the steps are its own
        assert abs(in_batch - alone) <= 1e-3 * bound, (in_batch, alone)

        diluted = flow.replace(
            stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol, norm=rms_norm)
        )
        rms_error = abs(float(diluted.log_prob(batch)[where]) - exact)
        assert rms_error > 3 * bound, "the example no longer separates RMS from per-point"
