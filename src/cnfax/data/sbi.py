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
"""

from __future__ import annotations

import abc
import dataclasses
import math

import numpy as np

from cnfax.data.preprocess import Box


class SBITask(abc.ABC):
    """A prior, a simulator and a reference posterior; theta has ``theta_dim`` entries and
    an observation x has ``x_dim``."""

    theta_dim: int
    x_dim: int

    @property
    def prior_box(self) -> Box | None:
        """The prior's support as a :class:`~cnfax.data.preprocess.Box` when it is a box
        (a uniform prior), else None (a prior on all of R^d)."""
        return None

    @abc.abstractmethod
    def prior(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n draws of theta, float64 (n, theta_dim)."""

    @abc.abstractmethod
    def simulate(self, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One x per row of theta, float64 (n, x_dim)."""

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


SBI_TASKS = {"sbi-two-moons": TwoMoons(), "sbi-gaussian-linear": GaussianLinear()}


def observations(task: SBITask, seed: int, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """n fixed (theta*, x) pairs for evaluation, from their own stream of (seed)."""
    return task.joint(np.random.default_rng([seed, 11]), n)
