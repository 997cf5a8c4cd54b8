"""A trained run as a density in data units: ``cnfax.load(run_dir)``.

    model = cnfax.load("runs/digits")
    model.log_prob(x)            # log p(x) of raw rows, preprocessing Jacobian included
    model.sample(key, 100)       # samples in data units
    model.bits_per_dim(images, key)   # discrete data (e.g. the digits)

log p_x(x) = log p_flow(g(x)) + log |det dg/dx| for the run's preprocessing g
(:mod:`cnfax.data.preprocess`). For discrete data, ``log_prob`` is the density of the
dequantised variable v = x + u in [0, K)^D.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cnfax.data.preprocess import Chain, Logit, Preprocessing, bits_per_dim
from cnfax.experiment import Config
from cnfax.flow import CNF, _check_points
from cnfax.trace import Exact
from cnfax.train import load_run, read_data_spec


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    flow: CNF  # exact trace, raises on a failed solve
    preprocessing: Preprocessing
    config: Config
    step: int

    @property
    def dim(self) -> int:
        return self.flow.dim

    def log_prob(self, x) -> jax.Array:
        """log p(x) of each row of x (n, dim) in data units."""
        x = _check_points(x, self.dim, "x")
        y, log_det = self.preprocessing.to_flow(x)
        if not isinstance(y, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(y))):
            raise ValueError(
                "x lies outside the data's support for this model's preprocessing "
                f"({self.preprocessing.to_dict()['kind']}): e.g. values outside [0, K) "
                "for a logit transform of K-level data"
            )
        return self.flow.log_prob(y) + log_det

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """n samples in data units."""
        return self.preprocessing.from_flow(self.flow.sample(key, n))

    @property
    def levels(self) -> int | None:
        steps = self.preprocessing.steps if isinstance(self.preprocessing, Chain) else ()
        for step in (self.preprocessing, *steps):
            if isinstance(step, Logit):
                return step.levels
        return None

    def bits_per_dim(self, x: np.ndarray, key: jax.Array) -> float:
        """Bits per dimension of integer-valued rows x: -log p(x + u) / (D log 2) averaged
        over the rows, with one uniform dequantisation u per row drawn from ``key``."""
        if self.levels is None:
            raise ValueError("bits per dimension needs discrete data (a logit preprocessing)")
        x = jnp.asarray(x, jnp.float32)
        v = x + jax.random.uniform(key, x.shape, x.dtype)
        return bits_per_dim(-float(jnp.mean(self.log_prob(v))), self.dim)


def load(run_dir: str | Path, which: str = "best") -> TrainedModel:
    """The flow of a training run, with its preprocessing, restored from its best (by
    held-out NLL) or latest checkpoint."""
    config, flow, step = load_run(run_dir, which)
    _, preprocessing = read_data_spec(run_dir)
    flow = flow.replace(trace=Exact(), count_backward=False, throw=True)
    return TrainedModel(flow, preprocessing, config, step)
