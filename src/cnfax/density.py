"""A trained run as a density in data units: ``cnfax.load(run_dir)``.

    model = cnfax.load("runs/digits")
    model.log_prob(x)            # log p(x) of raw rows, preprocessing Jacobian included
    model.sample(key, 100)       # samples in data units
    model.bits_per_dim(images, key)   # discrete data (e.g. the digits)

log p_x(x) = log p_flow(g(x)) + log |det dg/dx| for the run's preprocessing g
(:mod:`cnfax.data.preprocess`), applied in float64 on the host before the flow. For
discrete data with K levels, ``log_prob`` is the density of the dequantised variable
v = x + u, u ~ U[0, 1)^D, whose support is [0, K)^D: points outside it are refused.

Loading needs the run directory (:mod:`cnfax.run`) only, never the training loop. Inputs
of any number of rows are padded to a few bucket sizes (powers of two up to
:data:`CHUNK`, then chunks of it), so a stream of ragged batches compiles a handful of
times, not once per size.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cnfax.config import Config
from cnfax.data.preprocess import Logit, Preprocessing, bits_per_dim, find_step
from cnfax.evaluation import evaluation_flow, to_data_units
from cnfax.flow import CNF
from cnfax.inputs import check_points
from cnfax.run import read_data_spec, restore_flow

CHUNK = 1024  # the largest bucket: bigger inputs go through in chunks of this many rows


def bucket_size(n: int) -> int:
    """The padded size of a batch of n <= CHUNK rows: the next power of two."""
    return min(CHUNK, 1 << max(0, (n - 1).bit_length()))


@nnx.jit
def _flow_log_prob(flow: CNF, y: jax.Array) -> jax.Array:
    return flow.log_prob(y)


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    flow: CNF  # exact trace, raises on a failed solve
    preprocessing: Preprocessing
    config: Config
    step: int

    @property
    def dim(self) -> int:
        return self.flow.dim

    def _flow_log_prob(self, y: np.ndarray) -> np.ndarray:
        """log p_flow of each row, through bucket-sized compiled solves."""
        out = []
        for i in range(0, len(y), CHUNK):
            part = y[i : i + CHUNK]
            size = bucket_size(len(part))
            padded = np.concatenate([part, np.repeat(part[:1], size - len(part), axis=0)])
            # Cast on the host: a device-side cast would compile once per input size.
            logp = _flow_log_prob(self.flow, jnp.asarray(padded.astype(jnp.result_type(float))))
            out.append(np.asarray(logp, np.float64)[: len(part)])
        return np.concatenate(out)

    def log_prob(self, x) -> jax.Array:
        """log p(x) of each row of x (n, dim), or of one point (dim,), in data units."""
        check_points(np.zeros((1, self.dim), np.float32) if _is_traced(x) else x, self.dim, "x")
        if _is_traced(x):  # inside a user's jit: the preprocessing runs in JAX
            y, log_det = self.preprocessing.to_flow(x)
            return to_data_units(self.flow.log_prob(y), log_det)
        x = np.asarray(x, np.float64)
        single = x.ndim == 1
        x = x.reshape(-1, self.dim)
        self.preprocessing.check_support(x)
        y, log_det = self.preprocessing.to_flow(x)
        logp = to_data_units(self._flow_log_prob(y), log_det)
        return jnp.asarray((logp[0] if single else logp).astype(jnp.result_type(float)))

    def sample(self, key: jax.Array, n: int) -> np.ndarray:
        """n samples in data units (float64), shape (n, dim)."""
        y = np.asarray(self.flow.sample(key, n), np.float64)
        return self.preprocessing.from_flow(y)

    @property
    def levels(self) -> int | None:
        logit = find_step(self.preprocessing, Logit)
        return None if logit is None else logit.levels

    def bits_per_dim(self, x: np.ndarray, key: jax.Array) -> float:
        """Bits per dimension of integer-valued rows x: -log p(x + u) / (D log 2) averaged
        over the rows, with one uniform dequantisation u per row drawn from ``key``."""
        if self.levels is None:
            raise ValueError("bits per dimension needs discrete data (a logit preprocessing)")
        x = np.asarray(x, np.float64)
        v = x + np.asarray(jax.random.uniform(key, x.shape), np.float64)
        return bits_per_dim(-float(jnp.mean(self.log_prob(v))), self.dim)


def _is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def load(run_dir: str | Path, which: str = "best") -> TrainedModel:
    """The flow of a training run, with its preprocessing, restored from its best (by
    held-out NLL) or latest checkpoint."""
    config, flow, step = restore_flow(run_dir, which)
    _, preprocessing = read_data_spec(run_dir)
    return TrainedModel(evaluation_flow(flow), preprocessing, config, step)
