"""cnfax: continuous normalizing flows (FFJORD) in JAX, on Diffrax and Flax NNX."""

from cnfax.control import batch_max_norm
from cnfax.fields import ConcatLinear, ConcatMLP, ConcatSquashLinear, ConcatSquashMLP
from cnfax.flow import CNF, standard_normal_log_prob
from cnfax.solvers import RK4
from cnfax.stats import SolveStats, backward_evaluations
from cnfax.trace import Divergence, Exact, Hutchinson, TraceEstimator

__all__ = [
    "CNF",
    "RK4",
    "ConcatLinear",
    "ConcatMLP",
    "ConcatSquashLinear",
    "ConcatSquashMLP",
    "Divergence",
    "Exact",
    "Hutchinson",
    "SolveStats",
    "TraceEstimator",
    "backward_evaluations",
    "batch_max_norm",
    "standard_normal_log_prob",
]

__version__ = "0.1.0"
