"""Invertible preprocessing between data units and the flow's space, with log-determinants.

A flow models y = g(x). The density of the data is then

    log p_x(x) = log p_flow(g(x)) + log |det dg/dx|,

so each map returns, with y, its log |det dg/dx| per row. The maps work on NumPy and JAX
arrays alike, and are stored with a run (``to_dict`` / ``from_dict``) so that a trained
model answers in data units.

- :class:`Identity`: the toy densities.
- :class:`Standardize`: users' tabular data, y = (x - mean) / scale.
- :class:`Logit`: FFJORD's image preprocessing for dequantised data v in [0, K)^D (K grey
  levels; v = x + u with u ~ U[0, 1)^D, see :func:`dequantize`):
  y = logit(alpha + (1 - 2 alpha) v / K).
- :class:`Chain`: maps in sequence (the digits use Logit, then Standardize, so that an
  untrained flow starts from the diagonal Gaussian rather than from N(0, I)).

Bits per dimension of discrete data: for integer x and v = x + u, the model's probability
of x is at least exp(E_u log p_v(x + u)) (Jensen over the unit bin), so
bits/dim = -log p_v(v) / (D log 2) bounds -log2 P(x) / D from above, on average over u
(Theis et al. 2016). :func:`bits_per_dim` computes it from a data-unit NLL.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np


def _xp(x):
    """NumPy for NumPy input (host preprocessing), jax.numpy otherwise."""
    return np if isinstance(x, np.ndarray) else jnp


@dataclasses.dataclass(frozen=True)
class Identity:
    def to_flow(self, x):
        """y = x, log|det| = 0."""
        return x, _xp(x).zeros(x.shape[:-1], x.dtype)

    def from_flow(self, y):
        return y

    def to_dict(self) -> dict:
        return {"kind": "identity"}


@dataclasses.dataclass(frozen=True)
class Standardize:
    """y = (x - mean) / scale, log|det dy/dx| = -sum_i log scale_i."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardize:
        """Mean and standard deviation of each column; a constant column gets scale 1."""
        std = x.std(axis=0)
        return cls(
            tuple(map(float, x.mean(axis=0))), tuple(float(s) if s > 0 else 1.0 for s in std)
        )

    def to_flow(self, x):
        xp = _xp(x)
        mean, scale = xp.asarray(self.mean, x.dtype), xp.asarray(self.scale, x.dtype)
        log_det = -float(np.sum(np.log(self.scale)))
        return (x - mean) / scale, xp.full(x.shape[:-1], log_det, x.dtype)

    def from_flow(self, y):
        xp = _xp(y)
        return y * xp.asarray(self.scale, y.dtype) + xp.asarray(self.mean, y.dtype)

    def to_dict(self) -> dict:
        return {"kind": "standardize", "mean": list(self.mean), "scale": list(self.scale)}


@dataclasses.dataclass(frozen=True)
class Logit:
    """y = logit(p), p = alpha + (1 - 2 alpha) v / K, for v in [0, K)^D.

    log|det dy/dv| = sum_i [log(1 - 2 alpha) - log K - log p_i - log(1 - p_i)].
    alpha keeps p away from 0 and 1 (FFJORD uses 1e-6 for MNIST, RealNVP 0.05).
    """

    levels: int
    alpha: float = 0.05

    def to_flow(self, v):
        xp = _xp(v)
        p = self.alpha + (1 - 2 * self.alpha) * v / self.levels
        log_p, log_1mp = xp.log(p), xp.log1p(-p)
        per_dim = math.log(1 - 2 * self.alpha) - math.log(self.levels) - log_p - log_1mp
        return log_p - log_1mp, xp.sum(per_dim, axis=-1)

    def from_flow(self, y):
        xp = _xp(y)
        p = 1 / (1 + xp.exp(-y))
        return (p - self.alpha) / (1 - 2 * self.alpha) * self.levels

    def to_dict(self) -> dict:
        return {"kind": "logit", "levels": self.levels, "alpha": self.alpha}


@dataclasses.dataclass(frozen=True)
class Chain:
    """Maps applied in order; log-determinants add (the chain rule)."""

    steps: tuple

    def to_flow(self, x):
        total = 0.0
        for step in self.steps:
            x, log_det = step.to_flow(x)
            total = total + log_det
        return x, total

    def from_flow(self, y):
        for step in reversed(self.steps):
            y = step.from_flow(y)
        return y

    def to_dict(self) -> dict:
        return {"kind": "chain", "steps": [step.to_dict() for step in self.steps]}


Preprocessing = Identity | Standardize | Logit | Chain


def from_dict(spec: dict) -> Preprocessing:
    kind = spec["kind"]
    if kind == "chain":
        return Chain(tuple(from_dict(step) for step in spec["steps"]))
    if kind == "identity":
        return Identity()
    if kind == "standardize":
        return Standardize(tuple(spec["mean"]), tuple(spec["scale"]))
    if kind == "logit":
        return Logit(int(spec["levels"]), float(spec["alpha"]))
    raise ValueError(f"unknown preprocessing {kind!r}")


def dequantize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform dequantisation v = x + u, u ~ U[0, 1)^D, of integer-valued data."""
    return (x + rng.random(x.shape)).astype(np.float32)


def bits_per_dim(nll_nats: float, dim: int) -> float:
    """A per-point NLL in nats (of dequantised data, in data units) as bits per dimension."""
    return nll_nats / (dim * math.log(2))
