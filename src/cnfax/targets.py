"""Targets of variational inference: log-densities log p~(z) as pure JAX functions of
draws z (n, d) -> (n,), each with its log normaliser log Z = log int p~ where known.

- ``u1`` .. ``u4``: the 2-d energies of Rezende and Mohamed (2015, Table 1),
  p~(z) = exp(-U(z)), log Z by quadrature on a fine grid (computed once, cached).
- ``funnel``: Neal's funnel in d = 10, v ~ N(0, 3^2), x_i | v ~ N(0, e^v); log Z = 0.
- ``mixture``: 8 well-separated unit Gaussians in d = 10 (``.modes``); log Z = 0.
- ``gaussian50``: a correlated Gaussian in d = 50; log Z = 0, KL(q || p) in closed form
  for a Gaussian q (:meth:`Gaussian.kl_from`).
- ``logistic``: Bayesian logistic regression on scikit-learn's breast cancer data
  (d = 31 with the intercept); log Z unknown.

:data:`TARGETS` maps each name to its constructor; :func:`resolve_target` turns a name, a
``module:function`` string or a callable into a target. A user's target is any callable
log_density(z) -> (n,). Targets are hashed by identity, so that they can be part of a
compiled step (:class:`cnfax.ReverseKL`).
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
LOG_2PI = math.log(2 * math.pi)


class Target:
    """An unnormalised log-density on R^dim. ``log_normalizer`` is log Z, or None where
    unknown."""

    name: str = "target"
    dim: int
    log_normalizer: float | None = None

    def __call__(self, z: Array) -> Array:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<target {self.name}, dim {self.dim}>"


# ------------------------------------------------------------------ Rezende & Mohamed 2015


def _w1(z):
    return jnp.sin(2 * math.pi * z[:, 0] / 4)


def _w2(z):
    return 3 * jnp.exp(-0.5 * ((z[:, 0] - 1) / 0.6) ** 2)


def _w3(z):
    return 3 * jax.nn.sigmoid((z[:, 0] - 1) / 0.3)


def _envelope(z):
    """(z_1 / 4)^8 / 2: U2-U4 as printed have the same mass in z_2 for every z_1, so
    exp(-U) is not integrable on R^2; this soft wall (0.5 at |z_1| = 4, 13 at 6, 128 at
    8) keeps their mass in the paper's [-4, 4] box and makes them densities."""
    return 0.5 * (z[:, 0] / 4) ** 8


def u1(z):
    """U1: a ring of radius 2 split in two along z_1."""
    radius = jnp.sqrt(jnp.sum(z**2, axis=-1))
    bumps = jnp.logaddexp(-0.5 * ((z[:, 0] - 2) / 0.6) ** 2, -0.5 * ((z[:, 0] + 2) / 0.6) ** 2)
    return 0.5 * ((radius - 2) / 0.4) ** 2 - bumps


def u2(z):
    """U2: a sine wave z_2 = w1(z_1), width 0.4 (with the envelope)."""
    return 0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2 + _envelope(z)


def u3(z):
    """U3: the sine wave and a copy shifted by w2 near z_1 = 1 (with the envelope)."""
    a = -0.5 * ((z[:, 1] - _w1(z)) / 0.35) ** 2
    b = -0.5 * ((z[:, 1] - _w1(z) + _w2(z)) / 0.35) ** 2
    return -jnp.logaddexp(a, b) + _envelope(z)


def u4(z):
    """U4: the sine wave and a copy shifted by the sigmoid step w3 (with the envelope)."""
    a = -0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2
    b = -0.5 * ((z[:, 1] - _w1(z) + _w3(z)) / 0.35) ** 2
    return -jnp.logaddexp(a, b) + _envelope(z)


ENERGIES = {"u1": u1, "u2": u2, "u3": u3, "u4": u4}
GRID_BOUND = 8.0  # the quadrature covers [-8, 8]^2: exp(-U) < e^-60 outside for all four
GRID_POINTS = 2000


@functools.cache
def grid_log_normalizer(name: str, points: int = GRID_POINTS, bound: float = GRID_BOUND):
    """log int exp(-U) over [-bound, bound]^2 by the midpoint rule on points^2 cells, in
    float64, with logsumexp (no overflow): log Z = logsumexp(-U(c_ij)) + 2 log h. For a
    smooth integrand that vanishes at the box's edge the midpoint rule converges faster
    than any power of h; the tests check that refining the grid moves log Z by < 1e-4."""
    energy = ENERGIES[name]
    h = 2 * bound / points
    centres = -bound + h * (np.arange(points) + 0.5)
    with jax.enable_x64(True):
        chunks = []
        for rows in np.array_split(centres, max(1, points // 250)):
            z1, z2 = np.meshgrid(rows, centres, indexing="ij")
            z = jnp.asarray(np.stack([z1.ravel(), z2.ravel()], -1), jnp.float64)
            chunks.append(jax.scipy.special.logsumexp(-energy(z)))
        total = jax.scipy.special.logsumexp(jnp.stack(chunks))
    return float(total) + 2 * math.log(h)


class Energy2D(Target):
    """p~(z) = exp(-U(z)) for one of Rezende and Mohamed's energies U1-U4 (module
    docstring); log Z by :func:`grid_log_normalizer`, computed on first use."""

    dim = 2

    def __init__(self, name: str):
        if name not in ENERGIES:
            raise ValueError(f"unknown energy {name!r}: one of {sorted(ENERGIES)}")
        self.name = name
        self.energy = ENERGIES[name]

    @property
    def log_normalizer(self) -> float:
        return grid_log_normalizer(self.name)

    def __call__(self, z):
        return -self.energy(z)


# ------------------------------------------------------------------ normalised targets


def normal_log_pdf(x, log_scale):
    """log N(x; 0, e^(2 log_scale)), elementwise."""
    return -0.5 * x**2 * jnp.exp(-2 * log_scale) - log_scale - 0.5 * LOG_2PI


class Funnel(Target):
    """Neal's funnel: v = z_1 ~ N(0, 3^2), z_i | v ~ N(0, e^v) for i = 2..d (variance
    e^v, scale e^(v/2)). Normalised: log Z = 0."""

    name, log_normalizer = "funnel", 0.0

    def __init__(self, dim: int = 10, scale: float = 3.0):
        self.dim, self.scale = dim, scale

    def __call__(self, z):
        v = z[:, 0]
        log_v = normal_log_pdf(v, math.log(self.scale))
        return log_v + jnp.sum(normal_log_pdf(z[:, 1:], 0.5 * v[:, None]), axis=-1)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n exact draws (float64)."""
        v = self.scale * rng.standard_normal(n)
        x = np.exp(v / 2)[:, None] * rng.standard_normal((n, self.dim - 1))
        return np.column_stack([v, x])


class GaussianMixture(Target):
    """An equal-weight mixture of unit-variance Gaussians centred at ``modes`` (k, d);
    by default the 8 modes +-6 e_i, i = 1..4, in d = 10: every pair is at least
    6 sqrt(2) = 8.5 standard deviations apart. Normalised: log Z = 0."""

    name, log_normalizer = "mixture", 0.0

    def __init__(self, modes: np.ndarray | None = None):
        if modes is None:
            modes = np.concatenate([6 * np.eye(10)[:4], -6 * np.eye(10)[:4]])
        self.modes = np.asarray(modes, np.float64)
        self.dim = self.modes.shape[1]

    def __call__(self, z):
        modes = jnp.asarray(self.modes, z.dtype)
        sq = jnp.sum((z[:, None, :] - modes[None]) ** 2, axis=-1)  # (n, k)
        log_each = -0.5 * sq - 0.5 * self.dim * LOG_2PI - math.log(len(self.modes))
        return jax.scipy.special.logsumexp(log_each, axis=-1)

    def nearest_mode(self, z) -> np.ndarray:
        """The index of each draw's nearest mode, shape (n,)."""
        z = np.asarray(z, np.float64)
        return np.argmin(np.sum((z[:, None] - self.modes[None]) ** 2, -1), axis=-1)

    def mode_counts(self, z) -> np.ndarray:
        """How many of the draws z fall nearest each mode, shape (k,)."""
        return np.bincount(self.nearest_mode(z), minlength=len(self.modes))


class Gaussian(Target):
    """N(mean, covariance); by default d = 50, mean 0.5 (-1)^i, covariance
    D^(1/2) R D^(1/2) with AR(1) correlations R_ij = 0.8^|i-j| and variances D
    log-spaced over [0.1, 10]. Normalised: log Z = 0."""

    name, log_normalizer = "gaussian50", 0.0

    def __init__(self, mean=None, covariance=None, dim: int = 50):
        if covariance is None:
            lag = np.abs(np.subtract.outer(np.arange(dim), np.arange(dim)))
            sd = np.sqrt(np.logspace(-1, 1, dim))
            covariance = sd[:, None] * 0.8**lag * sd[None, :]
        self.covariance = np.asarray(covariance, np.float64)
        self.dim = len(self.covariance)
        if mean is None:
            mean = 0.5 * (-1.0) ** np.arange(self.dim)
        self.mean = np.asarray(mean, np.float64)
        self.cholesky = np.linalg.cholesky(self.covariance)
        self.log_det = 2 * float(np.sum(np.log(np.diag(self.cholesky))))

    def __call__(self, z):
        chol = jnp.asarray(self.cholesky, z.dtype)
        white = jax.scipy.linalg.solve_triangular(chol, (z - self.mean).T, lower=True)
        return -0.5 * jnp.sum(white**2, axis=0) - 0.5 * self.log_det - 0.5 * self.dim * LOG_2PI

    def kl_from(self, mean_q, covariance_q) -> float:
        """KL(N(mean_q, covariance_q) || this Gaussian), in closed form:
        (tr(S^-1 C) + (m - mu)^T S^-1 (m - mu) - d + log det S - log det C) / 2."""
        mean_q = np.asarray(mean_q, np.float64)
        cov_q = np.asarray(covariance_q, np.float64)
        inv = np.linalg.inv(self.covariance)
        diff = self.mean - mean_q
        log_det_q = np.linalg.slogdet(cov_q)[1]
        quad = float(diff @ inv @ diff)
        return 0.5 * (np.trace(inv @ cov_q) + quad - self.dim + self.log_det - log_det_q)


class LogisticRegression(Target):
    """The posterior of Bayesian logistic regression on scikit-learn's breast cancer data
    (569 rows, 30 features standardised to mean 0 and variance 1, plus an intercept:
    d = 31), with prior beta ~ N(0, prior_scale^2 I):

        log p~(beta) = sum_i [y_i log s(x_i . beta) + (1 - y_i) log s(-x_i . beta)]
                       + log N(beta; 0, prior_scale^2 I),   s the logistic function.

    log Z (the marginal likelihood) is unknown."""

    name = "logistic"

    def __init__(self, prior_scale: float = 1.0):
        from sklearn.datasets import load_breast_cancer  # bundled with scikit-learn

        data = load_breast_cancer()
        x = (data.data - data.data.mean(0)) / data.data.std(0)
        self.features = np.column_stack([np.ones(len(x)), x])
        self.labels = data.target.astype(np.float64)
        self.dim = self.features.shape[1]
        self.prior_scale = prior_scale

    def __call__(self, z):
        logits = z @ jnp.asarray(self.features, z.dtype).T  # (n, rows)
        y = jnp.asarray(self.labels, z.dtype)
        likelihood = jnp.sum(
            y * jax.nn.log_sigmoid(logits) + (1 - y) * jax.nn.log_sigmoid(-logits), -1
        )
        prior = jnp.sum(normal_log_pdf(z, math.log(self.prior_scale)), axis=-1)
        return likelihood + prior


TARGETS: dict[str, Callable[[], Target]] = {
    **{name: functools.partial(Energy2D, name) for name in ENERGIES},
    "funnel": Funnel,
    "mixture": GaussianMixture,
    "gaussian50": Gaussian,
    "logistic": LogisticRegression,
}


def resolve_target(spec) -> Callable[[Array], Array]:
    """A target from ``spec``: a callable as it is, a name of :data:`TARGETS` (a new
    instance), or ``"module:function"``, the callable ``function`` of an importable
    module (a class or factory there is called with no arguments only if it is a
    :class:`Target` subclass)."""
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a target is a callable, a name or 'module:function', got {spec!r}")
    if spec in TARGETS:
        return TARGETS[spec]()
    if ":" not in spec:
        raise ValueError(f"unknown target {spec!r}: one of {sorted(TARGETS)}, or 'module:function'")
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"target {spec!r} is not of the form 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"target {spec!r}: cannot import module {module_name!r} ({error})"
        ) from None
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"target {spec!r}: module {module_name!r} has no {attribute!r}") from None
    if isinstance(found, type) and issubclass(found, Target):
        found = found()
    if not callable(found):
        raise ValueError(f"target {spec!r}: {attribute!r} is not callable ({type(found).__name__})")
    return found
