"""Variational inference with a CNF: fit q to an unnormalised density p~(z) = Z p(z) by
minimising the reverse KL divergence (the negative ELBO).

With z = T_theta(z0), z0 ~ N(0, I), the flow's forward map, and log q_theta(z) carried
along the same solve of the augmented ODE (:meth:`cnfax.CNF.forward_log_prob_and_stats`,
log q(z) = log N(z0) - int_0^T tr(df/dz) dt),

    L(theta) = E_z0 [log q_theta(z) - log p~(z)] = KL(q_theta || p) - log Z = -ELBO,

so L >= -log Z, with equality exactly when q = p. The loss of a batch is the mean over
its n base draws; its gradient goes through the solve with the flow's adjoint.

Sticking the landing (Roeder, Wu and Duvenaud 2017). The derivative of one draw's term is

    d/dtheta [log q_theta(z) - log p~(z)]
        = (d log q_theta / d theta)(z)                              (score term)
        + grad_z [log q_theta(z) - log p~(z)] . dT_theta(z0)/dtheta  (path term),

and the score term has mean zero: E_q[d log q_theta / d theta] = d/dtheta int q_theta = 0.
``estimator="stl"`` drops it, which leaves an unbiased gradient whose variance vanishes
at the optimum: where q = p, grad_z (log q - log p~) = -grad_z log Z = 0 at every z, so
every draw's gradient is zero, while the score term's variance is q's Fisher information.

A CNF's forward solve gives log q as a function of (theta, z0), whose derivative is the
total one, score term included. The path term alone needs log q_theta'(z) as a function
of z at frozen parameters theta' = stop_gradient(theta): z = T_theta(z0) comes from a
plain forward solve (differentiable in theta), and log q_theta'(z) from an inverse solve
of the augmented ODE from z with the stopped parameters (differentiable in z only;
:meth:`cnfax.CNF.log_prob_and_stats`). Its value is the standard estimator's log q up to
the solver's tolerance (the inverse solve retraces the forward path), so the loss value
is the same; the cost is a second solve.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cnfax.core.flow import CNF

Array = jax.Array

ESTIMATORS = ("standard", "stl")


def frozen(flow: CNF) -> CNF:
    """The same flow with every parameter (fields, embedding, learned end times) behind
    ``stop_gradient``: a function of its inputs only, for differentiation."""
    graphdef, params, rest = nnx.split(flow, nnx.Param, ...)
    return nnx.merge(graphdef, jax.lax.stop_gradient(params), rest)


def target_log_density(target: Callable, z: Array) -> Array:
    """log p~(z) of the draws z (n, d), checked to be one value per draw: shape (n,)."""
    logp = jnp.asarray(target(z))
    if logp.shape != z.shape[:1]:
        raise ValueError(
            f"the target log-density must return one value per draw, shape "
            f"({z.shape[0]},) for draws of shape {tuple(z.shape)}; got shape {logp.shape}"
        )
    return logp.astype(z.dtype)


@dataclasses.dataclass(frozen=True)
class ReverseKL:
    """The negative ELBO, mean over draws of log q(z) - log p~(z) (module docstring).

    Args:
        target: the unnormalised log-density, a pure JAX function z (n, d) -> (n,)
            (e.g. a :mod:`cnfax.targets` target). It is part of the compiled step: it
            must be hashable (any function, or an object hashed by identity).
        estimator: "standard" (the gradient of the loss as computed, through one
            forward solve) or "stl" (sticking the landing: the score term dropped).

    A batch is n base draws z0 ~ N(0, I), shape (n, d), made on the host by
    :meth:`make_batch`, so that the step is a pure function of (parameters, batch, key);
    the key only drives a Hutchinson trace estimator. A target that is NaN or +inf at a
    draw makes the loss non-finite, and :class:`cnfax.train.step.Steps` rejects the step.
    """

    target: Callable[[Array], Array]
    estimator: Literal["standard", "stl"] = "standard"

    def __post_init__(self):
        if not callable(self.target):
            raise TypeError(f"the target must be a callable z -> log p~(z), got {self.target!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")

    def make_batch(self, shape: tuple[int, int], rng: np.random.Generator, dtype=None):
        """n draws of the base N(0, I_d) for ``shape`` = (n, d), in JAX's default float
        unless ``dtype`` is given."""
        n, d = shape
        if int(n) != n or n < 1 or int(d) != d or d < 1:
            raise ValueError(f"the batch shape must be (draws, dim) > 0, got {shape!r}")
        dtype = jnp.result_type(float) if dtype is None else dtype
        return rng.standard_normal((int(n), int(d))).astype(dtype)

    def log_weights_and_stats(self, flow: CNF, z0: Array, key: Array | None):
        """(log p~(z) - log q(z) of each draw z = T(z0), solve statistics), by this
        estimator's solves (the gradient of their mean is the estimator's)."""
        if jnp.ndim(z0) != 2:
            raise ValueError(f"the base draws must have shape (n, d), got {jnp.shape(z0)}")
        if self.estimator == "standard":
            z, log_q, stats = flow.forward_log_prob_and_stats(z0, key=key)
        else:
            z, forward_stats = flow.forward_and_stats(z0)
            log_q, inverse_stats = frozen(flow).log_prob_and_stats(z, key=key)
            stats = forward_stats + inverse_stats
        return target_log_density(self.target, z) - log_q, stats

    def __call__(self, flow: CNF, batch, key: Array | None):
        log_w, stats = self.log_weights_and_stats(flow, batch, key)
        loss = -jnp.mean(log_w)
        return loss, (stats, {"batch_elbo": -loss})  # the held-out one is logged as "elbo"
