"""Time-dependent vector fields f(t, z) as Flax NNX modules.

A field is any NNX module with ``__call__(t, z) -> dz/dt`` where ``t`` is a scalar and
``z`` has shape ``(..., dim)``; rows must not interact (no batch statistics), since the
CNF's divergence is taken row by row. The two fields here are FFJORD's:

- :class:`ConcatSquashMLP`: every layer is h -> (W h + b) * sigmoid(a t + c) + e t,
  so time gates and shifts each unit (FFJORD's ``concatsquash`` layer).
- :class:`ConcatMLP`: every layer sees [t, h] (FFJORD's ``concat`` layer).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

ACTIVATIONS = {
    "tanh": jnp.tanh,
    "softplus": jax.nn.softplus,
    "swish": jax.nn.swish,
    "elu": jax.nn.elu,
}


def _time_row(t, dtype) -> Array:
    """A scalar time as a length-1 feature vector (broadcasts over any batch)."""
    return jnp.reshape(jnp.asarray(t, dtype), (1,))


def _kernel_init(zero: bool):
    return nnx.initializers.zeros_init() if zero else nnx.initializers.lecun_normal()


class ConcatSquashLinear(nnx.Module):
    """FFJORD's ConcatSquashLinear: y = (W x + b) * sigmoid(a t + c) + e t."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        zero_init: bool = False,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kernel_init = _kernel_init(zero_init)
        self.linear = nnx.Linear(
            in_features, out_features, kernel_init=kernel_init, param_dtype=param_dtype, rngs=rngs
        )
        self.gate = nnx.Linear(1, out_features, param_dtype=param_dtype, rngs=rngs)
        self.hyper_bias = nnx.Linear(
            1,
            out_features,
            use_bias=False,
            kernel_init=kernel_init,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, t, x: Array) -> Array:
        t = _time_row(t, x.dtype)
        return self.linear(x) * jax.nn.sigmoid(self.gate(t)) + self.hyper_bias(t)


class ConcatLinear(nnx.Module):
    """FFJORD's ConcatLinear: y = W [t, x] + b."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        zero_init: bool = False,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.linear = nnx.Linear(
            in_features + 1,
            out_features,
            kernel_init=_kernel_init(zero_init),
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, t, x: Array) -> Array:
        t = jnp.broadcast_to(_time_row(t, x.dtype), (*x.shape[:-1], 1))
        return self.linear(jnp.concatenate([t, x], axis=-1))


def check_widths(dim: int, hidden: Sequence[int]) -> tuple[int, ...]:
    """Raise ValueError unless dim and the hidden widths are positive integers."""
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    hidden = tuple(hidden)
    if any((not isinstance(h, int)) or h < 1 for h in hidden):
        raise ValueError(f"hidden widths must be positive integers, got {hidden!r}")
    return hidden


class _TimeMLP(nnx.Module):
    """An MLP of time-conditioned layers: layer, activation, ..., layer."""

    layer_type: type[nnx.Module]

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64, 64),
        *,
        activation: str = "tanh",
        zero_init_last: bool = False,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        hidden = check_widths(dim, hidden)
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}"
            )
        self.dim = dim
        self.hidden = hidden
        self.activation = activation
        widths = (dim, *hidden, dim)
        last = len(widths) - 2
        self.layers = nnx.List(
            [
                self.layer_type(
                    w_in,
                    w_out,
                    zero_init=zero_init_last and i == last,
                    param_dtype=param_dtype,
                    rngs=rngs,
                )
                for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True))
            ]
        )

    def __call__(self, t, z: Array) -> Array:
        act = ACTIVATIONS[self.activation]
        h = z
        for layer in self.layers[:-1]:
            h = act(layer(t, h))
        return self.layers[-1](t, h)


class ConcatSquashMLP(_TimeMLP):
    """FFJORD's default field: a stack of ConcatSquashLinear layers.

    Args:
        dim: data dimension d (input and output width).
        hidden: hidden widths, e.g. (64, 64, 64) as in FFJORD's toy experiments.
        activation: one of "tanh", "softplus", "swish", "elu".
        zero_init_last: start with a zero last layer, so the flow starts as the identity.
        param_dtype: dtype of the parameters (float64 for high-precision work).
        rngs: NNX random streams for initialisation.
    """

    layer_type = ConcatSquashLinear


class ConcatMLP(_TimeMLP):
    """An MLP whose every layer sees the time as an extra input feature."""

    layer_type = ConcatLinear
