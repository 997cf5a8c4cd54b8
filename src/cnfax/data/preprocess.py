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
- :class:`Box`: a parameter with a bounded support (an SBI prior's box [lo, hi]^d) to
  R^d, per column y = log(x - lo) - log(hi - x) = logit((x - lo) / (hi - lo)) (both bounds),
  log(x - lo) (lower bound only), -log(hi - x) (upper only) or x (unbounded); points
  outside the open box get log|det| = -inf, hence log-density -inf in data units.
- :class:`~cnfax.data.whitening.ConditionalWhitening` (its own module): theta given its
  condition, less its least-squares regression on it, whitened.
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
    def to_flow(self, x, condition=None):
        """(y = g(x), log |det dg/dx| per row). ``condition``: the flow-space condition of
        conditional data (rows of x's leading shape, or one row for all); only a map of x
        given it (:class:`~cnfax.data.whitening.ConditionalWhitening`) reads it."""

    @abc.abstractmethod
    def from_flow(self, y, condition=None):
        """x = g^{-1}(y) (given ``condition``, as in :meth:`to_flow`)."""

    def randomize(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Training data as the model sees it (dequantisation noise); x itself by default."""
        return x

    def check_support(self, x: np.ndarray, condition=None) -> None:  # noqa: B027 (all of R^D)
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
    def to_flow(self, x, condition=None):
        """y = x, log|det| = 0."""
        return x, _xp(x).zeros(x.shape[:-1], x.dtype)

    def from_flow(self, y, condition=None):
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

    def to_flow(self, x, condition=None):
        return x, _xp(x).zeros(x.shape[:-1], x.dtype)

    def from_flow(self, y, condition=None):
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

    def to_flow(self, x, condition=None):
        xp = _xp(x)
        mean, scale = xp.asarray(self.mean, x.dtype), xp.asarray(self.scale, x.dtype)
        log_det = -float(np.sum(np.log(self.scale)))
        return (x - mean) / scale, xp.full(x.shape[:-1], log_det, x.dtype)

    def from_flow(self, y, condition=None):
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

    def to_flow(self, v, condition=None):
        xp = _xp(v)
        p = self.alpha + (1 - 2 * self.alpha) * v / self.levels
        log_p, log_1mp = xp.log(p), xp.log1p(-p)
        per_dim = math.log(1 - 2 * self.alpha) - math.log(self.levels) - log_p - log_1mp
        return log_p - log_1mp, xp.sum(per_dim, axis=-1)

    def from_flow(self, y, condition=None):
        xp = _xp(y)
        p = 1 / (1 + xp.exp(-y))
        return (p - self.alpha) / (1 - 2 * self.alpha) * self.levels

    def check_support(self, x, condition=None):
        x = np.asarray(x)
        where = _first_outside(x, (x >= 0) & (x < self.levels))
        if where is not None:
            raise ValueError(
                f"x{list(where)} = {x[where]:g} lies outside this model's support "
                f"[0, {self.levels}) (dequantised {self.levels}-level data)"
            )


@dataclasses.dataclass(frozen=True)
class Box(Preprocessing, kind="box"):
    """The open box prod_i (lo_i, hi_i) to R^d, column by column (None: no bound):

        both bounds    y = log(x - lo) - log(hi - x) = logit((x - lo) / (hi - lo)),
                       dy/dx = 1 / (x - lo) + 1 / (hi - x) = (hi - lo) / ((x - lo)(hi - x)),
                       log dy/dx = log(hi - lo) - log(x - lo) - log(hi - x);
        lower only     y = log(x - lo),       log dy/dx = -log(x - lo);
        upper only     y = -log(hi - x),      log dy/dx = -log(hi - x);
        neither        y = x,                 log dy/dx = 0.

    The Jacobian is diagonal, so log|det dy/dx| is the sum over columns. With
    p = (x - lo) / (hi - lo), logit p = log(x - lo) - log(hi - x) and
    -log(hi - lo) - log p - log(1 - p) is the two-sided line above; written in x - lo and
    hi - x, both keep their precision next to either edge.

    A row with any entry outside the open box (on an edge, beyond it, or NaN) gets
    log|det| = -inf and a finite y (each such entry replaced by a point inside its
    column before the logs), so that its density in data units,
    log p_flow(y) + log|det|, is -inf with no NaN and no error (:meth:`check_support`
    accepts every point). :meth:`from_flow` clips its result into the open box, so that
    float rounding of the sigmoid (or of exp) never lands a draw on an edge.

    Compose with standardisation after it, Chain((box, Standardize.fit(logits))) (see
    :func:`box_then_standardize`), so that the flow sees z-scored logits.
    """

    lower: tuple[float | None, ...]
    upper: tuple[float | None, ...]

    def __post_init__(self):
        lower = tuple(_bound(v, -math.inf) for v in self.lower)
        upper = tuple(_bound(v, math.inf) for v in self.upper)
        if len(lower) != len(upper) or not lower:
            raise ValueError(
                f"a box needs one lower and one upper bound per column, got {len(lower)} "
                f"lower and {len(upper)} upper bounds"
            )
        for i, (lo, hi) in enumerate(zip(lower, upper, strict=True)):
            if lo is not None and hi is not None and not lo < hi:
                raise ValueError(f"box column {i}: lower bound {lo:g} is not below upper {hi:g}")
        # None for an infinite bound: the stored form (JSON has no infinity)
        object.__setattr__(self, "lower", tuple(None if math.isinf(v) else v for v in lower))
        object.__setattr__(self, "upper", tuple(None if math.isinf(v) else v for v in upper))

    @property
    def dim(self) -> int:
        return len(self.lower)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) as float64 arrays, -inf / +inf where a column is unbounded."""
        lo = np.array([-np.inf if v is None else v for v in self.lower])
        hi = np.array([np.inf if v is None else v for v in self.upper])
        return lo, hi

    def contains(self, x) -> np.ndarray:
        """Whether each row lies in the open box (NaN entries do not)."""
        lo, hi = self.bounds()
        x = np.asarray(x)
        return np.all((x > lo) & (x < hi), axis=-1)

    def _parts(self, xp, dtype):
        lo, hi = self.bounds()
        has_lo, has_hi = np.isfinite(lo), np.isfinite(hi)
        lo_safe, hi_safe = np.where(has_lo, lo, 0.0), np.where(has_hi, hi, 0.0)
        # a point inside each column, standing in for entries outside the box
        inner = np.select(
            [has_lo & has_hi, has_lo, has_hi], [(lo_safe + hi_safe) / 2, lo_safe + 1, hi_safe - 1]
        )
        log_width = float(np.sum(np.log(hi[has_lo & has_hi] - lo[has_lo & has_hi])))
        as_xp = lambda a: xp.asarray(a, dtype)  # noqa: E731
        return (
            as_xp(lo),
            as_xp(hi),
            xp.asarray(has_lo),
            xp.asarray(has_hi),
            as_xp(lo_safe),
            as_xp(hi_safe),
            as_xp(inner),
            log_width,
        )

    def to_flow(self, x, condition=None):
        xp = _xp(x)
        self._check_width(x)
        lo, hi, has_lo, has_hi, lo_s, hi_s, inner, log_width = self._parts(xp, x.dtype)
        inside = (x > lo) & (x < hi)
        row_inside = xp.all(inside, axis=-1)
        x_safe = xp.where(inside, x, inner)  # no log of a non-positive number below
        log_above = xp.where(has_lo, xp.log(xp.where(has_lo, x_safe - lo_s, 1.0)), 0.0)
        log_below = xp.where(has_hi, xp.log(xp.where(has_hi, hi_s - x_safe, 1.0)), 0.0)
        bounded = has_lo | has_hi
        y = xp.where(bounded, log_above - log_below, x_safe)
        log_det = log_width - xp.sum(log_above + log_below, axis=-1)
        return y, xp.where(row_inside, log_det, -xp.inf).astype(x.dtype)

    def from_flow(self, y, condition=None):
        xp = _xp(y)
        self._check_width(y)
        lo, hi, has_lo, has_hi, lo_s, hi_s, _, _ = self._parts(xp, y.dtype)
        both = has_lo & has_hi
        width = xp.where(both, hi_s - lo_s, 1.0)
        with np.errstate(over="ignore"):
            e = xp.exp(-xp.abs(y))
            tail = width * e / (1 + e)  # width * sigmoid(-|y|), no overflow
            two_sided = xp.where(y <= 0, lo_s + tail, hi_s - tail)
            lower_only = lo_s + xp.exp(y)
            upper_only = hi_s - xp.exp(-y)
        x = xp.where(both, two_sided, xp.where(has_lo, lower_only, xp.where(has_hi, upper_only, y)))
        lo64, hi64 = self.bounds()
        dtype = np.dtype(y.dtype)
        return xp.clip(x, xp.asarray(_inward(lo64, 1, dtype)), xp.asarray(_inward(hi64, -1, dtype)))

    def _check_width(self, x):
        if x.shape[-1] != self.dim:
            raise ValueError(f"a {self.dim}-column box got points of {x.shape[-1]} columns")


def _inward(bound: np.ndarray, direction: int, dtype) -> np.ndarray:
    """The representable value of ``dtype`` next to each bound on the box's side
    (``direction`` +1 above a lower bound, -1 below an upper one); the largest finite
    value's negative (or itself) for an infinite bound. A subnormal neighbour (of a bound
    at 0) becomes the smallest normal number: XLA flushes subnormals to zero, which
    would land the point on the edge."""
    near = np.nextafter(np.asarray(bound, dtype), np.asarray(direction * np.inf, dtype))
    tiny = np.finfo(dtype).tiny
    return np.where((near != 0) & (np.abs(near) < tiny), direction * tiny, near).astype(dtype)


def _bound(value, missing: float) -> float:
    """A bound as a float (``missing``, an infinity, for None); NaN is refused."""
    if value is None:
        return missing
    if math.isnan(float(value)):
        raise ValueError("a box bound is NaN; use None (or an infinity) for no bound")
    return float(value)


def rows_inside(box: Box, train) -> np.ndarray:
    """The training rows as float64, refused (naming the first) where one leaves the box."""
    train = np.asarray(train, np.float64)
    inside = box.contains(train)
    if not np.all(inside):
        row = int(np.argmin(inside))
        raise ValueError(f"training row {row} = {train[row].tolist()} lies outside the box")
    return train


def box_then_standardize(box: Box, train: np.ndarray) -> Chain:
    """Box's map, then standardisation fitted on the training rows' logits (float64)."""
    train = rows_inside(box, train)
    y, _ = box.to_flow(train)
    return Chain((box, Standardize.fit(y)))


@dataclasses.dataclass(frozen=True)
class Chain(Preprocessing, kind="chain"):
    """Maps applied in order; log-determinants add (the chain rule)."""

    steps: tuple[Preprocessing, ...]

    def to_flow(self, x, condition=None):
        total = 0.0
        for step in self.steps:
            x, log_det = step.to_flow(x, condition)
            total = total + log_det
        return x, total

    def from_flow(self, y, condition=None):
        for step in reversed(self.steps):
            y = step.from_flow(y, condition)
        return y

    def randomize(self, x, rng):
        for step in self.steps:  # randomising maps come first (dequantisation)
            x = step.randomize(x, rng)
        return x

    def check_support(self, x, condition=None):
        # Each map's support is stated in its own input units.
        for step in self.steps:
            step.check_support(x, condition)
            x, _ = step.to_flow(x, condition)

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
