"""cnfax: continuous normalizing flows (FFJORD) in JAX, on Diffrax and Flax NNX."""

from cnfax.control import batch_max_norm
from cnfax.fields import ConcatLinear, ConcatMLP, ConcatSquashLinear, ConcatSquashMLP
from cnfax.flow import CNF, Regularizers, standard_normal_log_prob
from cnfax.objectives import (
    FlowMatching,
    MaximumLikelihood,
    conditional_batch,
    optimal_transport_pairs,
)
from cnfax.solvers import RK4
from cnfax.stats import SolveStats, backward_evaluations
from cnfax.trace import Divergence, Exact, Hutchinson, TraceEstimator


def load(run_dir, which: str = "best"):
    """A training run's flow with its preprocessing, as a density in data units
    (:class:`cnfax.density.TrainedModel`): ``load(run).log_prob(x)``, ``.sample(key, n)``.
    Imported on first use, since it brings in Orbax and the evaluation code."""
    from cnfax.density import load as load_trained

    return load_trained(run_dir, which)


__all__ = [
    "CNF",
    "RK4",
    "ConcatLinear",
    "ConcatMLP",
    "ConcatSquashLinear",
    "ConcatSquashMLP",
    "Divergence",
    "Exact",
    "FlowMatching",
    "Hutchinson",
    "MaximumLikelihood",
    "Regularizers",
    "SolveStats",
    "TraceEstimator",
    "backward_evaluations",
    "conditional_batch",
    "load",
    "optimal_transport_pairs",
    "batch_max_norm",
    "standard_normal_log_prob",
]

__version__ = "0.1.0"
