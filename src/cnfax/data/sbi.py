"""Simulation-based inference tasks (sbibm; Lueckmann et al. 2021) and their reference
posteriors, computed here from closed forms.

A task has a prior p(theta) and a simulator x ~ p(x | theta); a conditional flow learns the
posterior p(theta | x) from simulated pairs.

- :class:`TwoMoons`: theta ~ U[-1, 1]^2, a ~ U(-pi/2, pi/2), r ~ N(0.1, 0.01^2),
  x = (r cos a + 0.25, r sin a) + (-|theta_1 + theta_2| / sqrt 2, (-theta_1 + theta_2) / sqrt 2).
  With u = x - m(theta) - (0.25, 0), the point u = r (cos a, sin a) is in polar form, so

      p(x | theta) = N(|u|; 0.1, 0.01^2) / (pi |u|)   for u_1 > 0, else 0

  (the 1/|u| is the polar Jacobian; r < 0 has probability below 1e-22 and is ignored).
  The posterior is that likelihood on [-1, 1]^2, normalised on a fine grid: two thin arcs.
- :class:`GaussianLinear`: theta ~ N(0, 0.1 I_10), x ~ N(theta, 0.1 I_10); the posterior
  is N(x / 2, 0.05 I) (precisions add: 10 + 10 = 20, mean (10 x) / 20).
- :class:`GaussianMixture`: theta ~ U[-10, 10]^2, x ~ 0.5 N(theta, I) + 0.5 N(theta, 0.1^2 I)
  (sbibm's scales 1.0 and 0.1 are standard deviations). The likelihood is symmetric in x
  and theta, so the posterior is the same mixture around x truncated to the box:

      p(theta | x) = sum_k w_k N(theta; x, s_k^2 I) 1[theta in box] / Z(x),
      Z(x) = sum_k w_k prod_d [Phi((10 - x_d) / s_k) - Phi((-10 - x_d) / s_k)],

  sampled exactly (a component k with probability w_k Z_k(x) / Z(x), then a truncated
  normal per coordinate), as sbibm's rejection sampler of that mixture does.
- :class:`SLCP` (simple likelihood, complex posterior): theta ~ U[-3, 3]^5, x is 4 i.i.d.
  draws from N(m, S) in 2-d, flattened to 8 as (draw, coordinate), with m = (theta_1,
  theta_2), s_1 = theta_3^2, s_2 = theta_4^2, rho = tanh(theta_5) and
  S = [[s_1^2 + 1e-6, rho s_1 s_2], [rho s_1 s_2, s_2^2 + 1e-6]]. Its posterior has no
  closed form (sbibm's reference is a rejection sampler on a flow proposal), and cnfax has
  none of its own: ``has_reference`` is False and the reference methods raise
  :class:`NoReferencePosterior` (compare with sbibm's samples instead,
  experiments/sbibm_reference.py and :mod:`cnfax.evaluation.c2st`).

Every task has ``log_likelihood(x, theta)``, log p(x | theta_i) for each row of theta, and
``prior_box``, the prior's support as a :class:`~cnfax.data.preprocess.Box` (None for a
Gaussian prior).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import ClassVar

import numpy as np
from scipy import special, stats

from cnfax.data.preprocess import Box


class NoReferencePosterior(ValueError):
    """The task has no reference posterior in cnfax (SLCP), so no KL to it either."""


class SBITask(abc.ABC):
    """A prior, a simulator and a reference posterior; theta has ``theta_dim`` entries and
    an observation x has ``x_dim``."""

    theta_dim: int
    x_dim: int
    has_reference: ClassVar[bool] = True  # reference_log_posterior and _samples exist

    @property
    def prior_box(self) -> Box | None:
        """The prior's support as a :class:`~cnfax.data.preprocess.Box` when it is a box
        (a uniform prior), else None (a prior on all of R^d)."""
        return None

    def require_reference(self) -> None:
        """Raise :class:`NoReferencePosterior` unless the task has a reference posterior."""
        if not self.has_reference:
            raise NoReferencePosterior(
                f"{type(self).__name__} has no reference posterior in cnfax (its posterior "
                "has no closed form), so no KL to it: compare with sbibm's reference "
                "samples instead (experiments/sbibm_reference.py, cnfax.evaluation.c2st)"
            )

    @abc.abstractmethod
    def prior(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n draws of theta, float64 (n, theta_dim)."""

    @abc.abstractmethod
    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One x per row of theta, float64 (n, x_dim)."""

    @abc.abstractmethod
    def log_likelihood(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """log p(x | theta_i) for each row of theta; x is one observation (x_dim,) or one
        per row (n, x_dim)."""

    @abc.abstractmethod
    def reference_log_posterior(self, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        """log p(theta_i | x) of each row of theta, for one observation x (x_dim,)."""

    @abc.abstractmethod
    def reference_samples(self, x: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
        """n draws from p(theta | x) for one observation x."""

    def joint(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n pairs (theta, x) from p(theta) p(x | theta)."""
        theta = self.prior(rng, n)
        return theta, self.simulate(theta, rng)


@dataclasses.dataclass(frozen=True)
class GaussianLinear(SBITask):
    dim: int = 10
    prior_variance: float = 0.1
    noise_variance: float = 0.1

    @property
    def theta_dim(self) -> int:
        return self.dim

    @property
    def x_dim(self) -> int:
        return self.dim

    def prior(self, rng, n):
        return rng.normal(scale=math.sqrt(self.prior_variance), size=(n, self.dim))

    def simulate(self, theta, rng):
        return theta + rng.normal(scale=math.sqrt(self.noise_variance), size=theta.shape)

    def log_likelihood(self, x, theta):
        """log N(x; theta, 0.1 I)."""
        var = self.noise_variance
        squares = np.sum((np.asarray(x) - theta) ** 2, -1)
        return -0.5 * squares / var - 0.5 * self.dim * math.log(2 * math.pi * var)

    def posterior(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """Mean and (isotropic) variance of p(theta | x)."""
        precision = 1 / self.prior_variance + 1 / self.noise_variance
        return np.asarray(x) / self.noise_variance / precision, 1 / precision

    def reference_log_posterior(self, theta, x):
        mean, var = self.posterior(x)
        return -0.5 * np.sum((theta - mean) ** 2, -1) / var - 0.5 * self.dim * math.log(
            2 * math.pi * var
        )

    def reference_samples(self, x, rng, n):
        mean, var = self.posterior(x)
        return mean + math.sqrt(var) * rng.standard_normal((n, self.dim))


@dataclasses.dataclass(frozen=True)
class TwoMoons(SBITask):
    theta_dim: int = 2
    x_dim: int = 2
    grid: int = 1000  # cells per axis of the reference grid over [-1, 1]^2

    @property
    def prior_box(self) -> Box:
        """U[-1, 1]^2's support."""
        return Box((-1.0, -1.0), (1.0, 1.0))

    def prior(self, rng, n):
        return rng.uniform(-1.0, 1.0, size=(n, 2))

    def simulate(self, theta, rng):
        a = rng.uniform(-math.pi / 2, math.pi / 2, size=len(theta))
        r = rng.normal(0.1, 0.01, size=len(theta))
        p = np.stack([r * np.cos(a) + 0.25, r * np.sin(a)], -1)
        return p + self._shift(theta)

    @staticmethod
    def _shift(theta):
        s = math.sqrt(2)
        return np.stack(
            [-np.abs(theta[..., 0] + theta[..., 1]) / s, (-theta[..., 0] + theta[..., 1]) / s], -1
        )

    def log_likelihood(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        """log p(x | theta_i) for each row of theta (module docstring)."""
        u = np.asarray(x) - self._shift(theta) - np.array([0.25, 0.0])
        radius = np.linalg.norm(u, axis=-1)
        log_normal = -0.5 * ((radius - 0.1) / 0.01) ** 2 - math.log(0.01 * math.sqrt(2 * math.pi))
        with np.errstate(divide="ignore"):
            value = log_normal - math.log(math.pi) - np.log(radius)
        return np.where(u[..., 0] > 0, value, -np.inf)

    def grid_centres(self) -> np.ndarray:
        """Cell centres (grid^2, 2) of the reference grid over [-1, 1]^2."""
        edges = np.linspace(-1.0, 1.0, self.grid + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        return np.stack(np.meshgrid(centres, centres, indexing="ij"), -1).reshape(-1, 2)

    def posterior_grid(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Cell centres, the posterior's log-density there (normalised so that the cells'
        masses sum to 1), and the log normaliser log Z = log sum_cells p(x | theta) dA."""
        theta = self.grid_centres()
        log_like = self.log_likelihood(x, theta)
        cell = (2.0 / self.grid) ** 2
        peak = np.max(log_like)
        log_norm = peak + math.log(np.sum(np.exp(log_like - peak)) * cell)
        return theta, log_like - log_norm, log_norm

    def reference_log_posterior(self, theta, x):
        _, _, log_norm = self.posterior_grid(x)
        inside = np.all(np.abs(theta) <= 1, axis=-1)
        return np.where(inside, self.log_likelihood(x, theta) - log_norm, -np.inf)

    def reference_samples(self, x, rng, n):
        """Draws from the grid posterior: a cell by its mass, then uniform within it."""
        theta, log_density, _ = self.posterior_grid(x)
        mass = np.exp(log_density - np.max(log_density))
        cells = rng.choice(len(theta), size=n, p=mass / mass.sum())
        half = 1.0 / self.grid
        return theta[cells] + rng.uniform(-half, half, size=(n, 2))


def _uniform_box(bound: float, dim: int) -> Box:
    return Box((-bound,) * dim, (bound,) * dim)


def _log_box_mass(x: np.ndarray, scale: float, bound: float) -> float:
    """log prod_d P(|x_d + scale z| <= bound), z ~ N(0, 1): each factor as a difference of
    normal CDFs, taken in the tail where it is small (no cancellation for x off the box)."""
    upper, lower = (bound - x) / scale, (-bound - x) / scale
    # Phi(u) - Phi(l) = Phi(-l) - Phi(-u); the second form is exact when l > 0
    flip = lower > 0
    mass = np.where(
        flip, special.ndtr(-lower) - special.ndtr(-upper), special.ndtr(upper) - special.ndtr(lower)
    )
    with np.errstate(divide="ignore"):
        return float(np.sum(np.log(mass)))


@dataclasses.dataclass(frozen=True)
class GaussianMixture(SBITask):
    """sbibm's gaussian_mixture (module docstring): x ~ sum_k w_k N(theta, s_k^2 I)."""

    dim: int = 2
    bound: float = 10.0
    scales: tuple[float, ...] = (1.0, 0.1)  # standard deviations of the components
    weights: tuple[float, ...] = (0.5, 0.5)

    @property
    def theta_dim(self) -> int:
        return self.dim

    @property
    def x_dim(self) -> int:
        return self.dim

    @property
    def prior_box(self) -> Box:
        return _uniform_box(self.bound, self.dim)

    def prior(self, rng, n):
        return rng.uniform(-self.bound, self.bound, size=(n, self.dim))

    def simulate(self, theta, rng):
        component = rng.choice(len(self.weights), size=len(theta), p=self.weights)
        scale = np.asarray(self.scales)[component, None]
        return theta + scale * rng.standard_normal(theta.shape)

    def log_likelihood(self, x, theta):
        """log sum_k w_k N(x; theta, s_k^2 I)."""
        squares = np.sum((np.asarray(x) - theta) ** 2, -1)
        terms = [
            math.log(w) - 0.5 * squares / s**2 - self.dim * math.log(s * math.sqrt(2 * math.pi))
            for w, s in zip(self.weights, self.scales, strict=True)
        ]
        return np.logaddexp.reduce(np.stack(terms), axis=0)

    def _log_component_masses(self, x) -> np.ndarray:
        """log w_k Z_k(x): each component's weight times its mass inside the box."""
        x = np.asarray(x, np.float64)
        return np.array(
            [
                math.log(w) + _log_box_mass(x, s, self.bound)
                for w, s in zip(self.weights, self.scales, strict=True)
            ]
        )

    def log_normaliser(self, x) -> float:
        """log Z(x) = log sum_k w_k Z_k(x) (module docstring)."""
        return float(np.logaddexp.reduce(self._log_component_masses(x)))

    def reference_log_posterior(self, theta, x):
        inside = np.all(np.abs(theta) < self.bound, axis=-1)
        value = self.log_likelihood(x, theta) - self.log_normaliser(x)
        return np.where(inside, value, -np.inf)

    def reference_samples(self, x, rng, n):
        """Exact draws: a component by its mass in the box, then a truncated normal."""
        x = np.asarray(x, np.float64)
        log_mass = self._log_component_masses(x)
        probability = np.exp(log_mass - np.logaddexp.reduce(log_mass))
        component = rng.choice(len(self.scales), size=n, p=probability)
        out = np.empty((n, self.dim))
        for k, s in enumerate(self.scales):
            rows = component == k
            a, b = (-self.bound - x) / s, (self.bound - x) / s
            size = (int(rows.sum()), self.dim)
            out[rows] = stats.truncnorm.rvs(a, b, loc=x, scale=s, size=size, random_state=rng)
        return out


@dataclasses.dataclass(frozen=True)
class SLCP(SBITask):
    """sbibm's slcp (module docstring): 4 draws of N(m(theta), S(theta)) in 2-d."""

    theta_dim: int = 5
    x_dim: int = 8
    draws: int = 4
    bound: float = 3.0
    eps: float = 1e-6  # added to S's diagonal, as sbibm does
    has_reference: ClassVar[bool] = False

    @property
    def prior_box(self) -> Box:
        return _uniform_box(self.bound, self.theta_dim)

    def prior(self, rng, n):
        return rng.uniform(-self.bound, self.bound, size=(n, self.theta_dim))

    def simulate(self, theta, rng):
        """x = m + L z per draw, L the Cholesky factor of S written out: L_11 = sqrt(S_11),
        L_21 = S_12 / L_11, L_22 = sqrt(S_22 - L_21^2). (The likelihood uses S itself, so
        the two are separate computations that the tests compare.)"""
        theta = np.asarray(theta, np.float64)
        m = theta[:, :2]
        s1 = theta[:, 2] ** 2
        s2 = theta[:, 3] ** 2
        rho = np.tanh(theta[:, 4])
        l11 = np.sqrt(s1**2 + self.eps)
        l21 = rho * s1 * s2 / l11
        l22 = np.sqrt(s2**2 + self.eps - l21**2)
        z = rng.standard_normal((len(theta), self.draws, 2))
        first = m[:, None, 0] + l11[:, None] * z[..., 0]
        second = m[:, None, 1] + l21[:, None] * z[..., 0] + l22[:, None] * z[..., 1]
        return np.stack([first, second], -1).reshape(len(theta), self.x_dim)

    def mean_and_covariance(self, theta) -> tuple[np.ndarray, np.ndarray]:
        """m (n, 2) and S (n, 2, 2) of each row of theta."""
        theta = np.asarray(theta, np.float64)
        s1, s2, rho = theta[..., 2] ** 2, theta[..., 3] ** 2, np.tanh(theta[..., 4])
        off = rho * s1 * s2
        cov = np.stack([s1**2 + self.eps, off, off, s2**2 + self.eps], -1)
        return theta[..., :2], cov.reshape(*theta.shape[:-1], 2, 2)

    def log_likelihood(self, x, theta):
        """sum over the 4 draws of log N(x_j; m, S), with S^-1 and det S in closed form:
        det = S_11 S_22 - S_12^2, d^T S^-1 d = (S_22 d_1^2 - 2 S_12 d_1 d_2 + S_11 d_2^2) / det."""
        m, cov = self.mean_and_covariance(theta)
        d = np.asarray(x, np.float64).reshape(-1, self.draws, 2) - m[:, None, :]
        a, b, c = cov[:, 0, 0, None], cov[:, 0, 1, None], cov[:, 1, 1, None]
        det = a * c - b**2
        quad = (c * d[..., 0] ** 2 - 2 * b * d[..., 0] * d[..., 1] + a * d[..., 1] ** 2) / det
        return np.sum(-0.5 * quad - 0.5 * np.log(det) - math.log(2 * math.pi), -1)

    def reference_log_posterior(self, theta, x):
        self.require_reference()

    def reference_samples(self, x, rng, n):
        self.require_reference()


SBI_TASKS = {
    "sbi-two-moons": TwoMoons(),
    "sbi-gaussian-linear": GaussianLinear(),
    "sbi-gaussian-mixture": GaussianMixture(),
    "sbi-slcp": SLCP(),
}


def observations(task: SBITask, seed: int, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """n fixed (theta*, x) pairs for evaluation, from their own stream of (seed)."""
    return task.joint(np.random.default_rng([seed, 11]), n)
