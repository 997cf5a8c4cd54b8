"""Posterior estimates scored against the truth: KL to the reference posterior and C2ST
against its draws (expected coverage: :mod:`cnfax.evaluation.posterior_coverage`; the
conditional-Gaussian baseline and the reference posterior as a model are
in :mod:`cnfax.evaluation.baselines`, the digits' generative classifier in
:mod:`cnfax.evaluation.generative_classifier`).

Every function takes any ``model`` with the conditional-density interface

    model.log_prob(theta, condition=x) -> (n,)      theta (n, d); x (c,) or (n, c)
    model.sample(key, n, condition=x)  -> (n, d)    x (c,): n draws given x; (n, c): one each

in data units (``cnfax.load(run)``, a :class:`cnfax.CNF`, the baselines), answering
numpy or JAX arrays. Calls are batched: the condition goes in as (rows, c), at most
``chunk`` rows per call. Everything else is numpy float64.

**KL(reference || model)** (:func:`kl_to_reference`), per observation x_o:

- Monte Carlo (Gaussian linear, Gaussian mixture, any task with ``reference_samples``
  and ``has_reference``; SLCP has no reference, and KL raises
  :class:`cnfax.data.sbi.NoReferencePosterior` for it): with theta_k drawn
  from the reference, KL = mean_k [log p(theta_k | x_o) - log q(theta_k | x_o)], standard
  error std_k / sqrt(samples). For small differences Var[log p - log q] ~ 2 KL, so at
  KL = 0.05 and 1,000 samples the standard error is about 0.01 nats.
- Grid (two moons, any task with ``posterior_grid``): KL = sum_cells p_ref dA
  (log p_ref - log q) over the reference grid's cell centres, keeping only the most
  massive cells that hold all but ``tail`` (1e-6) of the reference mass (~15,000 of the
  10^6 cells per observation; the dropped cells move KL by about tail x |log p - log q|
  there). The reference itself scores exactly 0. Against the continuous KL, the error
  is the reference's own: its normaliser log Z, a midpoint sum, is off by up to ~0.01
  nats at 1000^2 (measured 0.0000-0.009 over the ten evaluation observations of seed 0,
  0.0005 on their mean), because the likelihood jumps to zero across the moons' ends
  (u_1 = 0), a first-order quadrature error. ``grid_error`` estimates it per
  observation (log Z re-integrated on 8x finer cells around the kept ones, minus the
  grid's): KL_grid - grid_error is within 5e-4 of closed-form KLs (the moon's radius
  shifted or widened, tests/test_posterior_checks.py), and log Z + grid_error agrees
  with an exact sampler's acceptance rate. The grid KL is reported as is; grid_error is
  its error bar (and correction).

A model truncated to the prior's box (:mod:`cnfax.data.truncation`) answers the density
restricted to the box, of mass Z(x_o) <= 1 there; both KLs score the normalised q / Z,
with Z from 10,000 of its draws per observation (``support_mass``; its standard error
sqrt((1 - Z) / (Z n)) in log Z is below 0.003 nats for Z above 0.9).

**C2ST** (:func:`c2st_to_reference`): per observation x_o, sbibm's classifier
two-sample test (:func:`cnfax.evaluation.c2st.c2st`) of ``draws`` model draws against as
many draws of the task's reference posterior (a task with ``has_reference``; SLCP raises
:class:`cnfax.data.sbi.NoReferencePosterior`: compare it with sbibm's reference samples,
experiments/sbibm_reference.py). 0.5: the classifier cannot tell them apart. sbibm's
protocol is 10 observations x 10,000 draws; ``make evaluate`` defaults to 3 x 2,000,
where a classifier's accuracy on 4,000 points has a binomial standard error of about
sqrt(0.25 / 4000) = 0.008 per observation, on top of the classifier's own variability.

Expected coverage: :mod:`cnfax.evaluation.posterior_coverage`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from cnfax.data.sbi import SBI_TASKS, SBITask
from cnfax.scoring import as_rows, batched_log_prob, batched_sample

CHUNK = 20_000  # rows per model call (see cnfax.scoring.batched_log_prob)
TAIL = 1e-6  # reference mass left out of the two moons' grid KL


# --------------------------------------------------------------------------- helpers


def sbi_task(task: SBITask | str) -> SBITask:
    """A task, or the task of a dataset name (a key of SBI_TASKS: "sbi-two-moons",
    "sbi-gaussian-linear", "sbi-gaussian-mixture", "sbi-slcp")."""
    if isinstance(task, str):
        if task not in SBI_TASKS:
            raise ValueError(f"unknown SBI task {task!r}; known: {sorted(SBI_TASKS)}")
        return SBI_TASKS[task]
    return task


# --------------------------------------------------------------------------- KL


@dataclasses.dataclass(frozen=True)
class KLResult:
    """KL(reference || model) in nats for each observation and their mean.

    ``standard_error``: the Monte Carlo standard error of each observation's estimate
    (zeros for the grid, whose error is the quadrature's; module docstring).
    ``dropped_mass``: reference mass of the cells left out (grid), per observation.
    ``grid_error``: the estimated error KL_grid - KL of each observation (grid, tasks
    with ``log_likelihood``): log Z on finer cells minus the grid's log Z.
    """

    per_observation: np.ndarray
    standard_error: np.ndarray
    method: str  # "monte carlo" or "grid"
    evaluations: int  # model log-density evaluations
    samples: int | None = None  # reference draws per observation (Monte Carlo)
    dropped_mass: np.ndarray | None = None
    grid_error: np.ndarray | None = None

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_observation))

    @property
    def mean_standard_error(self) -> float:
        """sqrt(sum of squared standard errors) / m: the observations are independent."""
        return float(np.sqrt(np.sum(self.standard_error**2)) / len(self.standard_error))

    def as_dict(self) -> dict:
        out = {
            "method": self.method,
            "kl_mean": self.mean,
            "kl_mean_standard_error": self.mean_standard_error,
            "kl_per_observation": self.per_observation.tolist(),
            "kl_standard_error": self.standard_error.tolist(),
            "model_evaluations": self.evaluations,
        }
        if self.samples is not None:
            out["reference_samples_per_observation"] = self.samples
        if self.dropped_mass is not None:
            out["dropped_reference_mass"] = self.dropped_mass.tolist()
        if self.grid_error is not None:
            out["kl_grid_error"] = self.grid_error.tolist()
            out["kl_mean_grid_error"] = float(np.mean(self.grid_error))
        return out


def kl_to_reference(
    task: SBITask | str,
    model,
    observations_x,
    *,
    method: str | None = None,
    samples: int = 1000,
    seed: int = 0,
    tail: float = TAIL,
    chunk: int = CHUNK,
) -> KLResult:
    """KL(reference || model) in nats for each observation x_o (rows of ``observations_x``).

    ``method``: "grid" (default for tasks with ``posterior_grid``, i.e. two moons) or
    "monte carlo" (default otherwise) with ``samples`` reference draws per observation
    from the stream (seed); ``tail``: reference mass the grid may leave out. All model
    evaluations go through one batched pass (module docstring). A task without a
    reference posterior (``has_reference`` False: SLCP) raises
    :class:`cnfax.data.sbi.NoReferencePosterior` before any model evaluation."""
    task = sbi_task(task)
    task.require_reference()
    xs = as_rows(observations_x, task.x_dim, "observations_x")
    method = method or ("grid" if hasattr(task, "posterior_grid") else "monte carlo")
    if method == "grid":
        return _grid_kl(task, model, xs, tail, chunk)
    if method == "monte carlo":
        return _monte_carlo_kl(task, model, xs, samples, seed, chunk)
    raise ValueError(f"method must be 'grid' or 'monte carlo', got {method!r}")


def _monte_carlo_kl(task, model, xs, samples, seed, chunk) -> KLResult:
    if samples < 2:
        raise ValueError(f"samples must be at least 2 for a standard error, got {samples}")
    rng = np.random.default_rng([seed, 14])
    theta = [task.reference_samples(x, rng, samples) for x in xs]
    log_p = np.stack([task.reference_log_posterior(t, x) for t, x in zip(theta, xs, strict=True)])
    log_q = batched_log_prob(
        model, np.concatenate(theta), np.repeat(xs, samples, axis=0), chunk
    ).reshape(len(xs), samples)
    ratio = log_p - (log_q - _log_support_mass(model, xs, seed)[:, None])
    return KLResult(
        per_observation=ratio.mean(1),
        standard_error=ratio.std(1, ddof=1) / math.sqrt(samples),
        method="monte carlo",
        evaluations=ratio.size,
        samples=samples,
    )


def _log_support_mass(model, xs: np.ndarray, seed: int) -> np.ndarray:
    """log Z(x_o) per observation of a model truncated to the prior's box (module
    docstring); 0 for a model without ``support_mass`` (one normalised already)."""
    support_mass = getattr(model, "support_mass", None)
    if support_mass is None:
        return np.zeros(len(xs))
    key = jax.random.key(seed)
    return np.log([support_mass(jax.random.fold_in(key, i), x) for i, x in enumerate(xs)])


def heavy_cells(log_density: np.ndarray, cell_area: float, tail: float) -> np.ndarray:
    """Indices of the fewest cells holding all but ``tail`` of the mass, heaviest first."""
    mass = np.exp(log_density) * cell_area
    order = np.argsort(mass)[::-1]
    held = np.cumsum(mass[order])
    count = min(len(order), int(np.searchsorted(held, held[-1] - tail)) + 1)
    return order[:count]


def refined_log_normaliser(task, x, cells: np.ndarray, factor: int = 8) -> float:
    """log Z of the unnormalised posterior p(x | theta) on the prior's box, with the cells
    ``cells`` (flat indices of the task's grid) and their 8 neighbours integrated on a
    ``factor`` times finer grid, and every other cell by its centre as in
    ``posterior_grid``. The likelihood jumps to zero across the moons' ends (u_1 = 0),
    where the midpoint rule's error is first order in the cell size."""
    grid = task.grid
    h = 2.0 / grid
    centres, log_density, log_norm = task.posterior_grid(x)
    i, j = np.divmod(np.asarray(cells), grid)
    steps = np.arange(-1, 2)
    i = np.clip(i[:, None, None] + steps[None, :, None], 0, grid - 1)
    j = np.clip(j[:, None, None] + steps[None, None, :], 0, grid - 1)
    near = np.unique((i * grid + j).ravel())
    coarse = float(np.sum(np.exp(log_density[near]))) * h * h  # in units of Z_grid
    offsets = (np.arange(factor) + 0.5) / factor * h - h / 2
    sub = np.stack(np.meshgrid(offsets, offsets, indexing="ij"), -1).reshape(-1, 2)
    fine = 0.0
    for start in range(0, len(near), 4096):
        points = (centres[near[start : start + 4096], None, :] + sub[None]).reshape(-1, 2)
        fine += float(np.sum(np.exp(task.log_likelihood(x, points) - log_norm)))
    fine *= h * h / factor**2
    return log_norm + math.log1p(fine - coarse)


def _grid_kl(task, model, xs, tail, chunk) -> KLResult:
    cells, log_p, masses, dropped, errors = [], [], [], [], []
    for x in xs:
        centres, log_density, log_norm = task.posterior_grid(x)
        area = (2.0 / task.grid) ** 2  # the grid covers the prior's box [-1, 1]^2
        keep = heavy_cells(log_density, area, tail)
        mass = np.exp(log_density) * area
        cells.append(centres[keep])
        log_p.append(log_density[keep])
        masses.append(mass[keep])
        dropped.append(max(0.0, 1.0 - float(mass[keep].sum())))
        if hasattr(task, "log_likelihood"):
            errors.append(refined_log_normaliser(task, x, keep) - log_norm)
    counts = [len(c) for c in cells]
    log_q = batched_log_prob(model, np.concatenate(cells), np.repeat(xs, counts, axis=0), chunk)
    pieces = np.split(log_q, np.cumsum(counts)[:-1])
    pieces = [q - z for q, z in zip(pieces, _log_support_mass(model, xs, 0), strict=True)]
    kl = [float(np.sum(m * (lp - lq))) for m, lp, lq in zip(masses, log_p, pieces, strict=True)]
    return KLResult(
        per_observation=np.asarray(kl),
        standard_error=np.zeros(len(xs)),
        method="grid",
        evaluations=int(sum(counts)),
        dropped_mass=np.asarray(dropped),
        grid_error=np.asarray(errors) if errors else None,
    )


# --------------------------------------------------------------------------- C2ST


@dataclasses.dataclass(frozen=True)
class C2STResult:
    """sbibm's C2ST of model draws against reference posterior draws, per observation."""

    per_observation: np.ndarray
    draws: int  # model draws and reference draws per observation

    @property
    def mean(self) -> float:
        return float(np.mean(self.per_observation))

    def as_dict(self) -> dict:
        return {
            "c2st_mean": self.mean,
            "c2st_per_observation": self.per_observation.tolist(),
            "observations": len(self.per_observation),
            "draws": self.draws,
        }


def c2st_to_reference(
    task: SBITask | str,
    model,
    observations_x,
    *,
    draws: int = 2000,
    seed: int = 0,
    chunk: int = CHUNK,
) -> C2STResult:
    """C2ST of ``draws`` model draws against ``draws`` reference posterior draws for each
    observation x_o (rows of ``observations_x``), the reference from the stream (seed),
    the model's from a key of (seed) (module docstring). A task without a reference
    posterior raises :class:`cnfax.data.sbi.NoReferencePosterior` before any draw."""
    from cnfax.evaluation.c2st import c2st  # scikit-learn, imported on first use

    task = sbi_task(task)
    task.require_reference()
    xs = as_rows(observations_x, task.x_dim, "observations_x")
    if draws < 10:
        raise ValueError(f"C2ST needs at least 10 draws per observation, got {draws}")
    rng = np.random.default_rng([seed, 15])
    reference = [task.reference_samples(x, rng, draws) for x in xs]
    key = jax.random.fold_in(jax.random.key(seed), 15)
    samples = batched_sample(model, key, np.repeat(xs, draws, axis=0), chunk)
    scores = [
        c2st(ref, got, seed=seed + 1)
        for ref, got in zip(reference, np.split(samples, len(xs)), strict=True)
    ]
    return C2STResult(per_observation=np.asarray(scores), draws=draws)
