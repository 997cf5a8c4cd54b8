"""cnfax: continuous normalizing flows (FFJORD) in JAX, on Diffrax and Flax NNX.

The package's layers, one way down (each imports only those below it):

- :mod:`cnfax.core`: the CNF's mathematics (fields, trace, augmented ODE, flow, norms,
  solvers, statistics, input checks);
- :mod:`cnfax.objectives`, :mod:`cnfax.parallel`, :mod:`cnfax.scoring`: training
  objectives, data parallelism over devices, log-densities of many rows in chunks;
- :mod:`cnfax.data`: datasets, simulators and preprocessing;
- :mod:`cnfax.run`: what a run is (model description, options, builders, run directory,
  checkpoints);
- :mod:`cnfax.loading`: ``cnfax.load``, a run as a density in data units;
- :mod:`cnfax.train`: the training loop; :mod:`cnfax.evaluation`: reports, audits,
  baselines, posterior checks and pictures.
"""

from importlib.metadata import PackageNotFoundError, version

from cnfax.core.fields import ConcatLinear, ConcatMLP, ConcatSquashLinear, ConcatSquashMLP
from cnfax.core.flow import CNF, Regularizers, standard_normal_log_prob
from cnfax.core.norms import batch_max_norm
from cnfax.core.residual_field import ResidualField
from cnfax.core.solvers import RK4
from cnfax.core.stats import SolveStats, backward_evaluations
from cnfax.core.trace import Divergence, Exact, Hutchinson, TraceEstimator
from cnfax.objectives import (
    FlowMatching,
    MaximumLikelihood,
    conditional_batch,
    optimal_transport_pairs,
)
from cnfax.variational import ReverseKL

try:
    __version__ = version("cnfax")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"


def load(run_dir, which: str = "best"):
    """A training run's flow with its preprocessing, as a density in data units
    (:class:`TrainedModel`): ``load(run).log_prob(x)``, ``.sample(key, n)``. Imported on
    first use: it brings in Orbax."""
    from cnfax.loading import load as load_trained

    return load_trained(run_dir, which)


def fit(flow, x=None, **options):
    """Train a copy of ``flow`` on the rows of ``x`` (``condition=`` for p(x | y)), or
    to an unnormalised density ``target=`` log p~ by variational inference, and return
    ``(trained flow, history)``: :func:`cnfax.train.fit.fit`, whose two paths document
    the options. Imported on first use: it brings in Optax and the training steps."""
    from cnfax.train.fit import fit as fit_arrays

    return fit_arrays(flow, x, **options)


def fit_posterior(flow, theta, x, **options):
    """A posterior p(theta | x) from simulated pairs (theta, x): z-scoring (after the box
    map of ``bounds=(lo, hi)``, the prior's support) and :func:`fit`, returning
    ``(posterior, history)``, the posterior a :class:`TrainedModel` in the user's units:
    :func:`cnfax.train.fit_posterior.fit_posterior`. Imported on first use, like fit."""
    from cnfax.train.fit_posterior import fit_posterior as fit_simulations

    return fit_simulations(flow, theta, x, **options)


def __getattr__(name):
    if name == "TrainedModel":  # lazily, like load: it imports the run directory's code
        from cnfax.loading import TrainedModel

        return TrainedModel
    raise AttributeError(f"module 'cnfax' has no attribute {name!r}")


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
    "ResidualField",
    "ReverseKL",
    "SolveStats",
    "TraceEstimator",
    "TrainedModel",
    "backward_evaluations",
    "batch_max_norm",
    "conditional_batch",
    "fit",
    "fit_posterior",
    "load",
    "optimal_transport_pairs",
    "standard_normal_log_prob",
]
