"""Step-size control for batched CNF solves.

A batch solved as one ODE state shares its step sizes. Diffrax's default error norm is the
RMS over the whole state, so one hard point's local error is divided by sqrt(batch size)
and its log-density comes out less accurate than if it had been solved alone: log p(x_i)
would depend on which points share its batch. :func:`batch_max_norm` takes, instead, the
RMS over each point's own (z_i, delta_logp_i) and the maximum over the batch, so every
point meets the tolerance it would meet alone.

Only ``z`` and ``delta_logp`` are error-controlled. Other entries of the augmented state
(RNODE's regulariser integrals) are left out, as in RNODE, which sets their tolerances to
infinity. In the backward solve of ``BacksolveAdjoint`` the state is
``(y, a_y, a_args, a_terms)``; the parameter adjoints ``a_args`` and ``a_terms`` are left
out too: the seminorm of Kidger, Chen & Lyons (2021), which they show saves backward steps
without hurting the gradient.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax.numpy as jnp
import optimistix as optx

CONTROLLED_KEYS = ("z", "delta_logp")


def _row_sum_squares(state: dict) -> tuple[jnp.ndarray, int]:
    """Per-point sum of squares over the controlled entries, and how many entries."""
    z = state["z"]
    total = jnp.sum(jnp.square(z), axis=-1)
    count = z.shape[-1]
    if "delta_logp" in state:
        total = total + jnp.square(state["delta_logp"])
        count += 1
    return total, count


def batch_max_norm(x) -> jnp.ndarray:
    """max over points i of RMS(z_i, delta_logp_i), the scaled error of each point.

    Accepts the augmented state of the forward solve (a dict) or the 4-tuple state of
    BacksolveAdjoint's backward solve, where it is a seminorm over (y, a_y).
    """
    if isinstance(x, tuple) and len(x) == 4:
        y, a_y, _, _ = x
        sq_y, n_y = _row_sum_squares(y)
        sq_a, n_a = _row_sum_squares(a_y)
        mean_sq = (sq_y + sq_a) / (n_y + n_a)
    else:
        sq, n = _row_sum_squares(x)
        mean_sq = sq / n
    worst = jnp.max(mean_sq)
    # sqrt has an infinite derivative at 0; keep any differentiation through it finite.
    positive = worst > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, worst, 1.0)), 0.0)


def with_batch_norm(controller: diffrax.AbstractStepSizeController):
    """Give a PID controller the per-point norm, unless it was given a norm of its own."""
    if isinstance(controller, diffrax.PIDController) and controller.norm is optx.rms_norm:
        return eqx.tree_at(lambda c: c.norm, controller, batch_max_norm)
    return controller


def prepare_adjoint(adjoint: diffrax.AbstractAdjoint, controller) -> diffrax.AbstractAdjoint:
    """Set up BacksolveAdjoint's backward solve, keeping what the user chose.

    The backward solve gets the forward controller with the per-point seminorm, and
    ``throw=True``: a backward solve that runs out of steps must raise, never return a
    gradient computed from an unfinished solve.
    """
    if not isinstance(adjoint, diffrax.BacksolveAdjoint):
        return adjoint
    kwargs = dict(adjoint.kwargs)
    if "stepsize_controller" not in kwargs and isinstance(controller, diffrax.PIDController):
        if controller.norm is optx.rms_norm or controller.norm is batch_max_norm:
            kwargs["stepsize_controller"] = eqx.tree_at(
                lambda c: c.norm, controller, batch_max_norm
            )
    kwargs.setdefault("throw", True)
    return diffrax.BacksolveAdjoint(**kwargs)
