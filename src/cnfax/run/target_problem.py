"""What a ``make train --target`` run trains on: an unnormalised density p~ instead of data.

A variational run fits q to p~ / Z by the reverse KL (:class:`cnfax.ReverseKL`). There
are no data rows: step k's batch is ``--batch-size`` base draws z0 ~ N(0, I) from the
generator seeded by (seed, k), as the loop seeds flow matching's base draws, so a resumed
run repeats the uninterrupted one exactly. The held-out sets are fixed base draws from
their own streams (validation: (seed, 1), test: (seed, 2), as toy datasets keep theirs):
the same draws score every evaluation, so evaluations differ only by the weights.

:class:`TargetProblem` stands where a :class:`cnfax.data.dataset.Dataset` stands in
:func:`cnfax.train.setup.set_up`: it has the parts that training and the run directory
read (``dim``, ``condition_dim``, ``preprocessing``, ``train_batch``, ``held_out``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from cnfax.data.preprocess import Identity, Preprocessing
from cnfax.targets import TARGETS, resolve_target
from cnfax.variational import target_log_density

_SPLIT_STREAM = {"validation": 1, "test": 2}


@functools.cache
def build_target(spec: str) -> Callable:
    """The target that ``--target spec`` names (:func:`cnfax.targets.resolve_target`), one
    instance per spec in a process: a target is hashed by identity, so each step's
    :class:`cnfax.ReverseKL` is then the same static argument and compiles once."""
    return resolve_target(spec)


def target_dim(spec: str) -> int:
    """The dimension of the target ``spec``: its ``dim`` attribute (every
    :data:`cnfax.targets.TARGETS` target has one; a ``module:function`` target must carry
    one, e.g. ``log_density.dim = 3``)."""
    dim = getattr(build_target(spec), "dim", None)
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise ValueError(
            f"target {spec!r} has no positive integer 'dim' attribute (got {dim!r}): the "
            f"flow is built with the target's dimension; give the function one (e.g. "
            f"log_density.dim = 3), or pick one of {sorted(TARGETS)}"
        )
    return int(dim)


def check_target(spec: str) -> None:
    """Refuse a target that cannot be trained on, before anything is written: an unknown
    name, no ``dim``, or a log-density that fails on two draws or does not return one
    value per draw (ValueError naming ``spec`` and the problem)."""
    dim = target_dim(spec)
    try:
        target_log_density(build_target(spec), jnp.zeros((2, dim), jnp.result_type(float)))
    except Exception as error:  # a user's function can raise anything
        raise ValueError(
            f"target {spec!r} fails on two draws of shape (2, {dim}): {error}"
        ) from None


@dataclasses.dataclass(frozen=True)
class TargetProblem:
    """The target of a variational run, its dimension, and its draws (module docstring)."""

    spec: str  # what --target named
    target: Callable
    dim: int
    seed: int
    preprocessing: Preprocessing = Identity()  # the flow's space is the target's space
    condition_dim: int = 0
    condition_preprocessing: Preprocessing = Identity()

    @property
    def name(self) -> str:
        return self.spec

    @property
    def log_normalizer(self) -> float | None:
        """log Z where the target knows it, else None."""
        value = getattr(self.target, "log_normalizer", None)
        return None if value is None else float(value)

    def train_batch(self, step: int, n: int) -> tuple[int, int]:
        """The shape (n, dim) of step ``step``'s batch: what :meth:`ReverseKL.make_batch`
        takes in place of data rows, and draws from the loop's (seed, step) generator."""
        return (n, self.dim)

    def held_out(self, split: str, size: int) -> tuple[np.ndarray, None]:
        """``size`` fixed base draws of ``split`` ("validation" or "test"), float32, and no
        log-determinant (there is no preprocessing)."""
        if split not in _SPLIT_STREAM:
            raise ValueError(f"split {split!r} (choose from {sorted(_SPLIT_STREAM)})")
        rng = np.random.default_rng([self.seed, _SPLIT_STREAM[split]])
        return rng.standard_normal((int(size), self.dim)).astype(np.float32), None


def build_problem(spec: str, seed: int) -> TargetProblem:
    """The :class:`TargetProblem` of ``--target spec --seed seed`` (a bad spec: ValueError
    naming it)."""
    return TargetProblem(spec, build_target(spec), target_dim(spec), seed)
