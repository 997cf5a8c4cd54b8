"""Input checks made before any solve: points, conditions, end times, condition widths.

Every check raises a ``ValueError`` that names the problem. Under ``jit`` values are not
known, so NaN and inf become a runtime error (``eqx.error_if``) with the same message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cnfax.core.fields import check_condition_dim, condition_dim_of

Array = jax.Array


def check_points(x, dim: int, name: str, what: str = "dimension") -> Array:
    """Validate user points before any solve; return them as a JAX array."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"{name} must have a floating dtype, got {x.dtype}; convert it first, "
            f"e.g. {name}.astype(jnp.float32)"
        )
    if x.ndim not in (1, 2):
        raise ValueError(
            f"{name} must have shape (n, {dim}) or ({dim},), got rank {x.ndim} shape {x.shape}"
        )
    if x.shape[-1] != dim:
        raise ValueError(
            f"{name} has last dimension {x.shape[-1]}, but the flow's {what} is {dim} "
            f"(shape {x.shape})"
        )
    message = f"{name} contains NaN or inf values"
    if isinstance(x, jax.core.Tracer):
        x = eqx.error_if(x, ~jnp.all(jnp.isfinite(x)), message)
    else:
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(np.asarray(x))))
        if bad:
            raise ValueError(f"{message} ({bad} of {x.size} entries)")
    return x


def check_condition(condition, width: int, batch_shape: tuple[int, ...]) -> Array | None:
    """Validate a condition for points of batch shape ``()`` (one point) or ``(n,)``.

    ``width`` is the flow's raw condition width (0: unconditional). A condition of shape
    (width,) applies to every point; one of shape (n, width) gives each point its own.
    """
    if not width:
        if condition is not None:
            raise ValueError(
                "this CNF is unconditional (its field has no condition_dim): "
                f"it takes no condition, got one of shape {jnp.shape(condition)}"
            )
        return None
    if condition is None:
        raise ValueError(
            f"this CNF is conditional (condition width {width}): pass condition= of shape "
            f"({width},) for every point or (n, {width}) for one per point"
        )
    y = check_points(condition, width, "condition", what="condition width")
    if y.ndim == 2 and (y.shape[0],) != tuple(batch_shape):
        points = "a single point" if not batch_shape else f"{batch_shape[0]} points"
        raise ValueError(
            f"condition has batch size {y.shape[0]} (shape {y.shape}), but there are "
            f"{points}; pass one row per point, or shape ({width},) for all of them"
        )
    return y


def check_end_time(t1) -> None:
    """Raise ValueError unless t1 is a positive finite number."""
    if not isinstance(t1, (int, float)) or not t1 > 0 or not math.isfinite(t1):
        raise ValueError(f"t1 must be a positive finite number, got {t1!r}")


def _in_features(module) -> int | None:
    """The input width of an ``nnx.Linear``-like module or of a Sequential's first layer."""
    if isinstance(module, nnx.Sequential) and len(module.layers):
        module = module.layers[0]
    return getattr(module, "in_features", None)


def condition_width(
    blocks: Sequence[nnx.Module], embedding: nnx.Module | None, condition_dim: int | None
) -> int:
    """The raw condition width c of a flow (0: unconditional), checked against its parts.

    The fields' features have width e = ``condition_dim`` of each block (all equal). Without
    an embedding, c = e. With one, c is ``condition_dim`` or else the embedding's
    ``in_features`` (its first layer's for ``nnx.Sequential``), and the embedding must map
    (1, c) to (1, e), which is checked here by tracing it (no computation).
    """
    widths = {condition_dim_of(block) for block in blocks}
    if len(widths) > 1:
        raise ValueError(f"all blocks must share one condition_dim, got {sorted(widths)}")
    features = widths.pop()
    given = None if condition_dim is None else check_condition_dim(condition_dim)
    if embedding is None:
        if given is not None and given != features:
            raise ValueError(
                f"condition_dim={given} but the field takes conditions of width {features} "
                "(condition_dim of the field); without an embedding they must agree"
            )
        return features
    if not features:
        raise ValueError(
            "an embedding was given, but the field is unconditional: build it with "
            "condition_dim= (the embedding's output width)"
        )
    width = given if given is not None else _in_features(embedding)
    if not isinstance(width, int) or width < 1:
        raise ValueError(
            "cannot tell the raw condition width of this embedding (it has no in_features): "
            "pass condition_dim= to CNF"
        )
    graphdef, state = nnx.split(embedding)
    dummy = jax.ShapeDtypeStruct((1, width), jnp.result_type(float))
    try:
        out = jax.eval_shape(lambda s, y: nnx.merge(graphdef, s)(y), state, dummy)
    except Exception as problem:  # any failure to trace is a width mismatch to the user
        raise ValueError(
            f"the embedding does not accept conditions of width {width}: {problem}"
        ) from None
    if getattr(out, "shape", None) != (1, features):
        raise ValueError(
            f"the embedding maps conditions (1, {width}) to shape {getattr(out, 'shape', out)}, "
            f"but the field takes condition features of width {features}: need (1, {features})"
        )
    return width
