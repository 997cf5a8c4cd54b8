"""The per-point error norm: each point is held to the tolerance it would meet alone."""

import diffrax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cnfax
from cnfax import control

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
