"""Invertible preprocessing between data units and the flow's space, with log-determinants.

A flow models y = g(x). The density of the data is then

    log p_x(x) = log p_flow(g(x)) + log |det dg/dx|,

so each map returns, with y, its log |det dg/dx| per row. The maps work on NumPy and JAX
arrays alike, and are stored with a run (``to_dict`` / ``from_dict``) so that a trained
model answers in data units.

Each map is a subclass of :class:`Preprocessing`, registered under its ``kind`` for
``from_dict``. A map may also randomise training data (:meth:`Preprocessing.randomize`:
the uniform dequantisation noise) and refuse points outside its support
(:meth:`Preprocessing.check_support`).

- :class:`Identity`: the toy densities.
- :class:`Dequantize`: integer-valued data v = x + u, u ~ U[0, 1) on the chosen columns
  (the density is then that of v; the map itself is the identity).
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

import abc
import dataclasses
import math
from typing import ClassVar

import jax.numpy as jnp
import numpy as np


def _xp(x):
    """NumPy for NumPy input (host preprocessing), jax.numpy otherwise."""
    return np if isinstance(x, np.ndarray) else jnp


class Preprocessing(abc.ABC):
    """An invertible map g from data units to the flow's space, with log |det dg/dx|.

    Subclasses are frozen dataclasses declared with ``kind="name"``, which registers them
    for :func:`from_dict`; their fields are what ``to_dict`` stores.
    """

    kind: ClassVar[str]
    _registry: ClassVar[dict[str, type[Preprocessing]]] = {}

    def __init_subclass__(cls, kind: str, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.kind = kind
        Preprocessing._registry[kind] = cls

    @abc.abstractmethod
    def to_flow(self, x):
        """(y = g(x), log |det dg/dx| per row)."""

    @abc.abstractmethod
    def from_flow(self, y):
        """x = g^{-1}(y)."""

    def randomize(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Training data as the model sees it (dequantisation noise); x itself by default."""
        return x

    def check_support(self, x: np.ndarray) -> None:  # noqa: B027 (all of R^D by default)
        """Raise ValueError, naming the first offending entry, for x outside the support."""

    def to_dict(self) -> dict:
        fields = {
            f.name: list(v) if isinstance(v, tuple) else v
            for f in dataclasses.fields(self)
            for v in [getattr(self, f.name)]
        }
        return {"kind": self.kind, **fields}

    @classmethod
    def from_fields(cls, spec: dict) -> Preprocessing:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


def from_dict(spec: dict) -> Preprocessing:
    """The map ``to_dict`` stored."""
    spec = dict(spec)
    kind = spec.pop("kind")
    if kind not in Preprocessing._registry:
        raise ValueError(f"unknown preprocessing {kind!r}")
    return Preprocessing._registry[kind].from_fields(spec)


@dataclasses.dataclass(frozen=True)
class Identity(Preprocessing, kind="identity"):
    def to_flow(self, x):
        """y = x, log|det| = 0."""
        return x, _xp(x).zeros(x.shape[:-1], x.dtype)

    def from_flow(self, y):
        return y


def _first_outside(x: np.ndarray, inside: np.ndarray) -> tuple[int, ...] | None:
    bad = np.argwhere(~inside)
    return None if len(bad) == 0 else tuple(int(i) for i in bad[0])


@dataclasses.dataclass(frozen=True)
class Dequantize(Preprocessing, kind="dequantize"):
    """v = x + u with u ~ U[0, 1) on ``columns`` (all when None), in :meth:`randomize`.

    The model is a density of v, so the map is the identity with log|det| = 0."""

    columns: tuple[int, ...] | None = None

    def randomize(self, x, rng):
        noise = rng.random(x.shape)
        if self.columns is not None:
            mask = np.zeros(x.shape[-1], bool)
            mask[list(self.columns)] = True
            noise = noise * mask
        return x + noise.astype(x.dtype)

    def to_flow(self, x):
        return x, _xp(x).zeros(x.shape[:-1], x.dtype)

    def from_flow(self, y):
        return y


@dataclasses.dataclass(frozen=True)
class Standardize(Preprocessing, kind="standardize"):
    """y = (x - mean) / scale, log|det dy/dx| = -sum_i log scale_i.

    Fitted and stored in float64: a column such as 1.6e9 + 3600 N(0, 1) (a timestamp)
    has a float32 mean off by thousands."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardize:
        """Mean and standard deviation of each column, in float64; a constant column gets
        scale 1 (tabular data refuses constant columns before this)."""
        x = np.asarray(x, np.float64)
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


@dataclasses.dataclass(frozen=True)
class Logit(Preprocessing, kind="logit"):
    """y = logit(p), p = alpha + (1 - 2 alpha) v / K, for v in [0, K)^D.

    log|det dy/dv| = sum_i [log(1 - 2 alpha) - log K - log p_i - log(1 - p_i)].
    alpha keeps p away from 0 and 1 (FFJORD uses 1e-6 for MNIST, RealNVP 0.05). The map
    itself is defined on a wider interval; the model's support is [0, K)^D, which
    :meth:`check_support` enforces.
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

    def check_support(self, x):
        x = np.asarray(x)
        where = _first_outside(x, (x >= 0) & (x < self.levels))
        if where is not None:
            raise ValueError(
                f"x{list(where)} = {x[where]:g} lies outside this model's support "
                f"[0, {self.levels}) (dequantised {self.levels}-level data)"
            )


@dataclasses.dataclass(frozen=True)
class Chain(Preprocessing, kind="chain"):
    """Maps applied in order; log-determinants add (the chain rule)."""

    steps: tuple[Preprocessing, ...]

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

    def randomize(self, x, rng):
        for step in self.steps:  # randomising maps come first (dequantisation)
            x = step.randomize(x, rng)
        return x

    def check_support(self, x):
        # Each map's support is stated in its own input units.
        for step in self.steps:
            step.check_support(x)
            x, _ = step.to_flow(x)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "steps": [step.to_dict() for step in self.steps]}

    @classmethod
    def from_fields(cls, spec):
        return cls(tuple(from_dict(step) for step in spec["steps"]))


def find_step(preprocessing: Preprocessing, kind: type[Preprocessing]) -> Preprocessing | None:
    """The first map of type ``kind`` in ``preprocessing`` (itself or a chain's step)."""
    steps = preprocessing.steps if isinstance(preprocessing, Chain) else (preprocessing,)
    return next((step for step in steps if isinstance(step, kind)), None)


def to_data_units(flow_log_prob, log_det):
    """The change of variables of a preprocessing g: a flow models y = g(x), so
    log p_x(x) = log p_flow(g(x)) + log |det dg/dx|, per point."""
    return flow_log_prob + log_det


def bits_per_dim(nll_nats: float, dim: int) -> float:
    """A per-point NLL in nats (of dequantised data, in data units) as bits per dimension."""
    return nll_nats / (dim * math.log(2))
