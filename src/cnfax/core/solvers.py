"""Solver helpers: the classic RK4 tableau and a per-solve estimate of field evaluations.

Diffrax ships no classic fourth-order Runge-Kutta method; :class:`RK4` adds it as an explicit
Runge-Kutta method with a zero error estimate, so it is meant for ``ConstantStepSize``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import diffrax
import numpy as np

_rk4_tableau = diffrax.ButcherTableau(
    a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
    b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
    b_error=np.zeros(4),
    c=np.array([0.5, 0.5, 1.0]),
)


class RK4(diffrax.AbstractERK):
    """The classic 4-stage, 4th-order Runge-Kutta method (fixed steps only)."""

    tableau: ClassVar[diffrax.ButcherTableau] = _rk4_tableau
    interpolation_cls: ClassVar[Callable[..., diffrax.ThirdOrderHermitePolynomialInterpolation]] = (
        diffrax.ThirdOrderHermitePolynomialInterpolation.from_k
    )

    def order(self, terms):
        return 4


def evaluations_per_step(solver: diffrax.AbstractSolver) -> int:
    """Vector-field evaluations per step: the stages, less one for FSAL tableaus."""
    tableau = getattr(solver, "tableau", None)
    if isinstance(tableau, diffrax.ButcherTableau):
        return tableau.num_stages - (1 if tableau.fsal else 0)
    if isinstance(solver, diffrax.Euler):
        return 1
    raise NotImplementedError(f"no evaluation count known for {type(solver).__name__}")


def initial_evaluations(solver: diffrax.AbstractSolver) -> int:
    """Evaluations before the first step: f(y0) for FSAL tableaus.

    Diffrax's PID controller without dt0 would evaluate f twice more to choose the first
    step (Hairer's algorithm), but only for a bare ``ODETerm``: diffeqsolve wraps the term
    before the controller sees it, and for any other term Diffrax 0.7's
    ``_select_initial_step`` returns ds = 0.01 without evaluating the field. So those two
    evaluations never run, and the estimate leaves them out. tests/test_stats.py counts
    every evaluation directly and fails if a Diffrax upgrade starts making them.
    """
    tableau = getattr(solver, "tableau", None)
    return int(isinstance(tableau, diffrax.ButcherTableau) and tableau.fsal)
