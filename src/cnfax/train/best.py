"""The best weights seen by a fit: a copy of the EMA flow's parameters at the best held-out
score so far, and the evaluations since then (early stopping's count). Both doors of
:func:`cnfax.fit` (data by validation NLL, targets by held-out ELBO) keep them the same way."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cnfax.core.flow import CNF


class BestWeights:
    """Call :meth:`offer` after each evaluation; :meth:`restore` at the end."""

    def __init__(self, flow: CNF):
        self.flow = flow  # the (EMA) flow whose parameters are evaluated
        self.state = None
        self.since = 0  # evaluations since the best

    @property
    def empty(self) -> bool:
        return self.state is None

    def offer(self, improved: bool) -> None:
        """Keep a copy of the current parameters if this evaluation ``improved``."""
        if improved:
            self.state = jax.tree.map(jnp.array, nnx.state(self.flow, nnx.Param))  # a copy
            self.since = 0
        else:
            self.since += 1

    def restore(self) -> CNF:
        """The flow with the kept parameters written back (there must be some)."""
        nnx.update(self.flow, self.state)
        return self.flow
