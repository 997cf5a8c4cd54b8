"""A vector field for today's training: Fourier features of time, a residual MLP with the
time (and condition) entering every block, and a zero-initialised output.

    e(t)   = [cos(pi k t / T), sin(pi k t / T)]_{k = 1..K}           (2K features)
    h_0    = W_in z
    h_l+1  = h_l + W_2 act(W_1 act(LN(h_l)) + U e(t) + V y)            (l < depth)
    f(t,z) = W_out act(LN(h_depth)),  W_out = 0 at initialisation.

With W_out = 0 the initial flow is the identity, so training starts from the base
density's log-likelihood, and every block can only add to it (as in the FMPE field of
sbi's ``VectorFieldMLP`` and zuko's/lampe's FMPE networks, which this follows). The time
features are periodic on [0, 2T], so frequencies k = 1..K resolve structure down to
T / K over the whole path t in [0, T] (T is the CNF's end time, given here as ``t_max``).
LayerNorm normalises each row on its own: rows never interact, as the CNF's row-by-row
divergence requires. The activation is smooth (SiLU by default), so the field's Jacobian
and its divergence are continuous, which adaptive solvers of the log-density need.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from cnfax.core.fields import check_condition_dim

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
    "tanh": jnp.tanh,
}


def fourier_time_features(t, frequencies: int, t_max: float, dtype) -> jax.Array:
    """e(t) = [cos(pi k t / t_max), sin(pi k t / t_max)] for k = 1..frequencies, shape
    (2 frequencies,) for a scalar t."""
    k = jnp.arange(1, frequencies + 1, dtype=dtype)
    angle = math.pi * k * jnp.asarray(t, dtype) / t_max
    return jnp.concatenate([jnp.cos(angle), jnp.sin(angle)])


class ResidualField(nnx.Module):
    """The field above: ``ResidualField(dim, width=128, depth=3, frequencies=16,
    t_max=0.5, activation="silu", condition_dim=0, rngs=...)``; called ``f(t, z)`` or, when
    ``condition_dim`` > 0, ``f(t, z, y)`` with y of shape (..., condition_dim)."""

    def __init__(
        self,
        dim: int,
        width: int = 128,
        depth: int = 3,
        *,
        frequencies: int = 16,
        t_max: float = 0.5,
        activation: str = "silu",
        condition_dim: int = 0,
        rngs: nnx.Rngs,
    ):
        for name, value in (("dim", dim), ("width", width), ("depth", depth)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if int(frequencies) != frequencies or frequencies < 1:
            raise ValueError(f"frequencies must be a positive integer, got {frequencies!r}")
        if not t_max > 0:
            raise ValueError(f"t_max must be positive, got {t_max!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} (choose from {sorted(ACTIVATIONS)})")
        self.dim = int(dim)
        self.condition_dim = check_condition_dim(condition_dim)
        self.frequencies = int(frequencies)
        self.t_max = float(t_max)
        self.activation = activation
        self.input = nnx.Linear(dim, width, rngs=rngs)
        self.norms = nnx.List([nnx.LayerNorm(width, rngs=rngs) for _ in range(depth)])
        self.hidden = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(depth)])
        self.time = nnx.List(
            [nnx.Linear(2 * frequencies, width, use_bias=False, rngs=rngs) for _ in range(depth)]
        )
        self.condition = nnx.List(
            [
                nnx.Linear(self.condition_dim, width, use_bias=False, rngs=rngs)
                for _ in range(depth if self.condition_dim else 0)
            ]
        )
        self.mix = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(depth)])
        self.final_norm = nnx.LayerNorm(width, rngs=rngs)
        zeros = nnx.initializers.zeros_init()
        self.output = nnx.Linear(width, dim, kernel_init=zeros, bias_init=zeros, rngs=rngs)

    def __call__(self, t, z: jax.Array, y: jax.Array | None = None) -> jax.Array:
        if self.condition_dim and y is None:
            raise ValueError(
                f"this field is conditional (condition_dim={self.condition_dim}): "
                "call it as f(t, z, y)"
            )
        if not self.condition_dim and y is not None:
            raise ValueError("this field is unconditional (condition_dim=0): call it without y")
        act = ACTIVATIONS[self.activation]
        e = fourier_time_features(t, self.frequencies, self.t_max, z.dtype)
        h = self.input(z)
        for block in range(len(self.hidden)):
            u = self.hidden[block](act(self.norms[block](h))) + self.time[block](e)
            if self.condition_dim:
                u = u + self.condition[block](y)
            h = h + self.mix[block](act(u))
        return self.output(act(self.final_norm(h)))
