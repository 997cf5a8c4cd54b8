"""An exponential moving average (EMA) of a flow's parameters: the weights that are
evaluated, selected, checkpointed and loaded, while the optimizer trains the raw ones.

After the optimizer's k-th accepted update (k = 1, 2, ...),

    ema <- d_k ema + (1 - d_k) theta,   d_k = min(decay, (1 + k) / (10 + k)),

starting from ema = theta at initialisation. The warm-up of d_k (as in TensorFlow's and
timm's EMA) keeps a short run's average from being dominated by the untrained initial
weights: with decay 0.999 alone, after 1,000 steps 37% of the average would still be
the initialisation. A rejected step updates neither theta nor the average.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cnfax.core.flow import CNF


@nnx.jit
def _update(average: CNF, flow: CNF, decay: jax.Array) -> None:
    mean = nnx.state(average, nnx.Param)
    now = nnx.state(flow, nnx.Param)

    def mix(a, b):
        d = decay.astype(a.dtype)
        return d * a + (1 - d) * b

    nnx.update(average, jax.tree.map(mix, mean, now))


def ema_decay(decay: float, updates: int) -> float:
    """d_k after ``updates`` = k accepted updates (the warm-up above)."""
    return min(decay, (1 + updates) / (10 + updates))


class EMA:
    """The average of ``flow``'s parameters: ``.flow`` is a CNF of the same structure
    (the same options: replace its trace or tolerance for evaluation as for any CNF)."""

    def __init__(self, flow: CNF, decay: float):
        if not 0 <= decay < 1:
            raise ValueError(f"ema decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.updates = 0
        self.flow = nnx.clone(flow)

    def update(self, flow: CNF) -> None:
        """Fold in the parameters after one more accepted optimizer update."""
        self.updates += 1
        decay = ema_decay(self.decay, self.updates)
        _update(self.flow, flow, jnp.asarray(decay, jnp.result_type(float)))
