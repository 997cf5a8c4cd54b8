"""Solver statistics for logging: steps, rejections and field evaluations.

Diffrax reports steps, not field evaluations, and nothing at all for the backward solve of
``BacksolveAdjoint`` (it runs inside a custom VJP). Forward NFE is therefore estimated from
the steps and the solver's tableau (``cnfax.core.solvers``), which tests check against a direct
count. Backward evaluations are counted, when asked for, by a host callback that fires in
the VJP of the augmented field: exact, but a host round trip per evaluation, so it is off
by default (``CNF(count_backward=True)``).
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class SolveStats(NamedTuple):
    """Statistics of one transform (all blocks of a CNF, summed).

    ``nfe`` counts batched evaluations of the augmented field: one evaluation covers the
    whole batch, or, in per-sample mode, one iteration of the vmapped solver loop.
    """

    steps: Array
    accepted: Array
    rejected: Array
    nfe: Array
    success: Array  # False where a solve failed (max_steps reached, or step size collapsed)

    @staticmethod
    def zero() -> SolveStats:
        z = jnp.zeros((), jnp.int32)
        return SolveStats(z, z, z, z, jnp.ones((), bool))

    def __add__(self, other: SolveStats) -> SolveStats:  # type: ignore[override]
        return SolveStats(
            self.steps + other.steps,
            self.accepted + other.accepted,
            self.rejected + other.rejected,
            self.nfe + other.nfe,
            jnp.logical_and(self.success, other.success),
        )


class _BackwardCounter:
    """Host-side count of backward (VJP) evaluations of augmented fields."""

    def __init__(self):
        self._lock = threading.Lock()
        self._count = 0

    def reset(self) -> None:
        with self._lock:
            self._count = 0

    def _tick(self) -> None:
        with self._lock:
            self._count += 1

    @property
    def count(self) -> int:
        """Evaluations since the last reset; call after the gradient is ready."""
        jax.effects_barrier()
        with self._lock:
            return self._count


backward_evaluations = _BackwardCounter()


@jax.custom_vjp
def count_backward(x):
    """Identity whose VJP ticks :data:`backward_evaluations` once per call."""
    return x


def _count_backward_fwd(x):
    return x, None


def _count_backward_bwd(_, cotangent):
    jax.debug.callback(backward_evaluations._tick)
    return (cotangent,)


count_backward.defvjp(_count_backward_fwd, _count_backward_bwd)
