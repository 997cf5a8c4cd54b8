"""Time-dependent vector fields f(t, z) or f(t, z, y) as Flax NNX modules.

A field is any NNX module with ``__call__(t, z) -> dz/dt`` where ``t`` is a scalar and
``z`` has shape ``(..., dim)``; rows must not interact (no batch statistics), since the
CNF's divergence is taken row by row. The two fields here are FFJORD's:

- :class:`ConcatSquashMLP`: every layer is h -> (W h + b) * sigmoid(a t + c) + e t,
  so time gates and shifts each unit (FFJORD's ``concatsquash`` layer).
- :class:`ConcatMLP`: every layer sees [t, h] (FFJORD's ``concat`` layer).

Conditional fields. A field is *conditional* exactly when it has an integer attribute
``condition_dim`` > 0; it is then called ``f(t, z, y)`` with condition features ``y`` of
shape ``(..., condition_dim)`` (row i of ``y`` belongs to row i of ``z``; a single row
broadcasts). A field without the attribute, or with ``condition_dim`` 0, is unconditional
and called ``f(t, z)``. Any NNX module following this rule works in :class:`cnfax.CNF`.
In the two MLPs here the condition enters every layer together with the time:

- ConcatSquash: h -> (W h + b) * sigmoid(A [t, y] + c) + E [t, y], gate and shift from (t, y);
- Concat: every layer sees [t, y, h].

With ``condition_dim=0`` (the default) the parameters are exactly the unconditional ones
(same names, shapes and initial values), so existing checkpoints load unchanged.
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


def _context(t, y: Array | None, x: Array, condition_dim: int) -> Array:
    """The features a layer is conditioned on: [t] alone (shape (1,), broadcasting over
    the batch) or [t, y] per row, shape (..., 1 + condition_dim)."""
    t = _time_row(t, x.dtype)
    if not condition_dim:
        if y is not None:
            raise ValueError("this layer is unconditional (condition_dim=0): call it without y")
        return t
    if y is None:
        raise ValueError(
            f"this layer is conditional (condition_dim={condition_dim}): call it as f(t, z, y)"
        )
    if y.shape[-1] != condition_dim:
        raise ValueError(
            f"the condition has last dimension {y.shape[-1]}, but condition_dim={condition_dim}"
        )
    batch = jnp.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    t = jnp.broadcast_to(t, (*batch, 1))
    y = jnp.broadcast_to(jnp.asarray(y, x.dtype), (*batch, condition_dim))
    return jnp.concatenate([t, y], axis=-1)


def condition_dim_of(field) -> int:
    """The condition width of a field: its ``condition_dim`` attribute, 0 when absent
    (an unconditional field). Raises ValueError for anything but a non-negative int."""
    try:
        return check_condition_dim(getattr(field, "condition_dim", 0))
    except ValueError as problem:
        raise ValueError(f"{type(field).__name__}: {problem}") from None


def _kernel_init(zero: bool):
    return nnx.initializers.zeros_init() if zero else nnx.initializers.lecun_normal()


class ConcatSquashLinear(nnx.Module):
    """FFJORD's ConcatSquashLinear: out = (W x + b) * sigmoid(A c + a) + E c, where the
    context c is [t], or [t, y] with ``condition_dim`` > 0 (called with a condition y)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        condition_dim: int = 0,
        zero_init: bool = False,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        kernel_init = _kernel_init(zero_init)
        self.condition_dim = condition_dim
        self.linear = nnx.Linear(
            in_features, out_features, kernel_init=kernel_init, param_dtype=param_dtype, rngs=rngs
        )
        context = 1 + condition_dim
        self.gate = nnx.Linear(context, out_features, param_dtype=param_dtype, rngs=rngs)
        self.hyper_bias = nnx.Linear(
            context,
            out_features,
            use_bias=False,
            kernel_init=kernel_init,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, t, x: Array, y: Array | None = None) -> Array:
        context = _context(t, y, x, self.condition_dim)
        return self.linear(x) * jax.nn.sigmoid(self.gate(context)) + self.hyper_bias(context)


class ConcatLinear(nnx.Module):
    """FFJORD's ConcatLinear: out = W [t, x] + b, or W [t, y, x] + b with a condition y."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        condition_dim: int = 0,
        zero_init: bool = False,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.condition_dim = condition_dim
        self.linear = nnx.Linear(
            in_features + 1 + condition_dim,
            out_features,
            kernel_init=_kernel_init(zero_init),
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, t, x: Array, y: Array | None = None) -> Array:
        context = _context(t, y, x, self.condition_dim)
        batch = jnp.broadcast_shapes(x.shape[:-1], context.shape[:-1])
        context = jnp.broadcast_to(context, (*batch, context.shape[-1]))
        x = jnp.broadcast_to(x, (*batch, x.shape[-1]))
        return self.linear(jnp.concatenate([context, x], axis=-1))


def check_widths(dim: int, hidden: Sequence[int]) -> tuple[int, ...]:
    """Raise ValueError unless dim and the hidden widths are positive integers."""
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    hidden = tuple(hidden)
    if any((not isinstance(h, int)) or h < 1 for h in hidden):
        raise ValueError(f"hidden widths must be positive integers, got {hidden!r}")
    return hidden


def check_condition_dim(condition_dim: int | None) -> int:
    """The condition width as an int (None meaning 0, unconditional); ValueError unless
    it is a non-negative integer."""
    condition_dim = 0 if condition_dim is None else condition_dim
    if isinstance(condition_dim, bool) or not isinstance(condition_dim, int) or condition_dim < 0:
        raise ValueError(f"condition_dim must be a non-negative integer, got {condition_dim!r}")
    return condition_dim


class _TimeMLP(nnx.Module):
    """An MLP of time-conditioned (and optionally condition-conditioned) layers:
    layer, activation, ..., layer. Called f(t, z), or f(t, z, y) when conditional."""

    layer_type: type[nnx.Module]

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64, 64),
        *,
        activation: str = "tanh",
        condition_dim: int | None = 0,
        zero_init_last: bool = False,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        hidden = check_widths(dim, hidden)
        condition_dim = check_condition_dim(condition_dim)
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}"
            )
        self.dim = dim
        self.hidden = hidden
        self.activation = activation
        self.condition_dim = condition_dim
        widths = (dim, *hidden, dim)
        last = len(widths) - 2
        self.layers = nnx.List(
            [
                self.layer_type(
                    w_in,
                    w_out,
                    condition_dim=condition_dim,
                    zero_init=zero_init_last and i == last,
                    param_dtype=param_dtype,
                    rngs=rngs,
                )
                for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True))
            ]
        )

    def __call__(self, t, z: Array, y: Array | None = None) -> Array:
        act = ACTIVATIONS[self.activation]
        h = z
        for layer in self.layers[:-1]:
            h = act(layer(t, h, y))
        return self.layers[-1](t, h, y)


class ConcatSquashMLP(_TimeMLP):
    """FFJORD's default field: a stack of ConcatSquashLinear layers.

    Args:
        dim: data dimension d (input and output width).
        hidden: hidden widths, e.g. (64, 64, 64) as in FFJORD's toy experiments.
        activation: one of "tanh", "softplus", "swish", "elu".
        condition_dim: width c of the condition features y; 0 or None (default) for an
            unconditional field f(t, z). With c > 0 the field is f(t, z, y) and every
            layer's gate and shift are functions of (t, y).
        zero_init_last: start with a zero last layer, so the flow starts as the identity.
        param_dtype: dtype of the parameters (float64 for high-precision work).
        rngs: NNX random streams for initialisation.
    """

    layer_type = ConcatSquashLinear


class ConcatMLP(_TimeMLP):
    """An MLP whose every layer sees the time (and, with ``condition_dim`` = c > 0, the
    condition y) as extra input features: layer(h) = W [t, y, h] + b. Arguments as for
    :class:`ConcatSquashMLP`."""

    layer_type = ConcatLinear
