"""A trained run as a density in data units: ``cnfax.load(run_dir)``.

    model = cnfax.load("runs/digits")
    model.log_prob(x)            # log p(x) of raw rows, preprocessing Jacobian included
    model.sample(key, 100)       # samples in data units
    model.bits_per_dim(images, key)   # discrete data (e.g. the digits)

log p_x(x) = log p_flow(g(x)) + log |det dg/dx| for the run's preprocessing g
(:mod:`cnfax.data.preprocess`), applied in float64 on the host before the flow. For
discrete data with K levels, ``log_prob`` is the density of the dequantised variable
v = x + u, u ~ U[0, 1)^D, whose support is [0, K)^D: points outside it are refused. A
posterior whose prior's box is a truncation (:mod:`cnfax.data.truncation`, the SBI
default) rejects draws outside the box, answers -inf there, and inside answers the
flow's density restricted to the box, whose mass is :meth:`TrainedModel.support_mass`.

Loading reads the run directory (:mod:`cnfax.run.directory`) and the model's description
(:mod:`cnfax.run.model`) only: never the training loop, the command line, the optimizer,
the evaluation or the pictures. Inputs of any number of rows go through
:func:`cnfax.scoring.log_prob_in_chunks` (a few padded bucket sizes, so a stream of
ragged batches compiles a handful of times, not once per size).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cnfax.core.checks import check_condition, check_points
from cnfax.core.flow import CNF
from cnfax.data.preprocess import (
    Identity,
    Logit,
    Preprocessing,
    bits_per_dim,
    find_step,
    to_data_units,
)
from cnfax.data.truncation import Truncation, draw_inside
from cnfax.run.directory import read_data_spec, restore_flow
from cnfax.run.model import ModelSpec
from cnfax.scoring import evaluation_flow, log_prob_in_chunks


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A trained flow with its preprocessing: a density in data units, of x, or of x given
    a condition y (``condition_preprocessing`` maps y to the flow's condition space; it
    has no log-determinant, since y is given, not modelled). ``cnfax.load`` returns one
    for a run directory, ``cnfax.fit_posterior`` for a posterior fitted on arrays."""

    flow: CNF  # exact trace, raises on a failed solve
    preprocessing: Preprocessing
    spec: ModelSpec | None  # what the flow is (the run's model description; None: a fit)
    step: int | None  # the checkpoint's training step (None: cnfax.fit_posterior's result)
    condition_preprocessing: Preprocessing = Identity()

    @property
    def dim(self) -> int:
        return self.flow.dim

    @property
    def condition_dim(self) -> int:
        return self.flow.condition_dim

    def _condition(self, condition, n: int) -> np.ndarray | None:
        """The condition in the flow's space (float64), one row per point, or None."""
        if condition is None or not self.condition_dim:
            if condition is not None or self.condition_dim:
                check_condition(condition, self.condition_dim, (n,))  # names the problem
            return None
        check_condition(condition, self.condition_dim, (n,))
        y = np.asarray(condition, np.float64).reshape(-1, self.condition_dim)
        y, _ = self.condition_preprocessing.to_flow(y)
        return np.broadcast_to(y, (n, self.condition_dim))

    def _flow_log_prob(self, y: np.ndarray, condition: np.ndarray | None) -> np.ndarray:
        """log p_flow of each row (float64), through chunked, padded compiled solves."""
        return log_prob_in_chunks(self.flow, y, condition)[0]

    def log_prob(self, x, condition=None) -> jax.Array:
        """log p(x) (or log p(x | condition)) of each row of x (n, dim), or of one point
        (dim,), in data units. A condition of shape (c,) applies to every row, (n, c) gives
        each row its own."""
        check_points(np.zeros((1, self.dim), np.float32) if _is_traced(x) else x, self.dim, "x")
        if _is_traced(x):  # inside a user's jit: the preprocessing runs in JAX
            if condition is not None:
                condition, _ = self.condition_preprocessing.to_flow(condition)
            y, log_det = self.preprocessing.to_flow(x, condition)
            return to_data_units(self.flow.log_prob(y, condition=condition), log_det)
        x = np.asarray(x, np.float64)
        single = x.ndim == 1
        x = x.reshape(-1, self.dim)
        given = self._condition(condition, len(x))
        self.preprocessing.check_support(x, given)
        y, log_det = self.preprocessing.to_flow(x, given)
        logp = to_data_units(self._flow_log_prob(y, given), log_det)
        return jnp.asarray((logp[0] if single else logp).astype(jnp.result_type(float)))

    def sample(self, key: jax.Array, n: int, condition=None) -> np.ndarray:
        """n samples in data units (float64), shape (n, dim); with a condition of shape
        (c,), n draws given it; of shape (n, c), one draw per row. With a prior box as a
        truncation (:mod:`cnfax.data.truncation`), draws outside it are rejected and
        drawn again, so every draw lies inside."""
        given = self._condition(condition, n)
        truncation = find_step(self.preprocessing, Truncation)
        if truncation is None:
            return self._draw(key, n, given)
        draw = lambda k, rows: self._draw(k, n, rows)  # noqa: E731
        return draw_inside(draw, truncation.contains, key, n, given)

    def _draw(self, key: jax.Array, n: int, given: np.ndarray | None) -> np.ndarray:
        """n of the flow's draws in data units, none rejected."""
        features = None if given is None else jnp.asarray(given.astype(jnp.result_type(float)))
        y = np.asarray(self.flow.sample(key, n, condition=features), np.float64)
        return self.preprocessing.from_flow(y, given)

    def support_mass(self, key: jax.Array, condition=None, n: int = 10_000) -> float:
        """Z(x): the flow's probability of the prior's box given one condition (c,), the
        fraction of n draws inside it (standard error sqrt(Z (1 - Z) / n)); 1.0 without a
        truncation. log_prob - log Z is the normalised density of a truncated model."""
        truncation = find_step(self.preprocessing, Truncation)
        if truncation is None:
            return 1.0
        if condition is not None and np.ndim(condition) != 1:
            shape = np.shape(condition)
            raise ValueError(f"support_mass takes one condition (c,), got shape {shape}")
        draws = self._draw(key, n, self._condition(condition, n))
        return float(np.mean(truncation.contains(draws)))

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
    held-out NLL; a --target run's: by held-out ELBO, with no preprocessing) or latest
    checkpoint (an unreadable one falls back to the previous, with
    a warning). A directory that holds no usable run (missing, no config.json, a damaged
    config.json or data.json, no checkpoint, none that restores) raises
    :class:`cnfax.run.directory.RunDirectoryError`, a ValueError whose one-line message
    says what was expected."""
    spec, flow, step = restore_flow(run_dir, which)
    data = read_data_spec(run_dir)
    flow = evaluation_flow(flow)
    return TrainedModel(flow, data.preprocessing, spec, step, data.condition_preprocessing)
