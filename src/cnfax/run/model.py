"""The model's description: what a run's flow is, and all that loading it needs.

:class:`ModelSpec` is the part of a run's ``config.json`` that rebuilds its flow (the
field, the end time, the trace and the solve) and says what it models (the dataset and
its condition). The command line's other options (data files, the optimizer, the loop)
live in :class:`cnfax.run.config.Config`, which loading never imports, so ``cnfax.load``
needs neither the CLI parser nor the optimizer library.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

import diffrax
from flax import nnx

from cnfax.core import fields, residual_field
from cnfax.core.fields import ConcatSquashMLP
from cnfax.core.flow import CNF
from cnfax.core.trace import Exact, Hutchinson

SOLVERS = {
    "dopri5": diffrax.Dopri5,
    "tsit5": diffrax.Tsit5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
}
ADJOINTS = {
    "backsolve": diffrax.BacksolveAdjoint,
    "checkpoint": diffrax.RecursiveCheckpointAdjoint,
}
# The fields a description can name, and the activations each takes.
FIELDS = {"concatsquash": fields.ACTIVATIONS, "residual": residual_field.ACTIVATIONS}
CONFIG = "config.json"  # the run directory's file that holds the description
# Fields that change the model's parameters: a run directory must be resumed with the same.
COMPATIBILITY_FIELDS = (
    "dataset",
    "field",
    "hidden",
    "frequencies",
    "activation",
    "num_blocks",
    "learn_t1",
    "conditional",
    "condition_columns",
    "target",
)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a run's flow is. The defaults are FFJORD's toy model."""

    dataset: str = "8gaussians"
    target: str | None = None  # a variational run's target (then the dataset is unused)
    conditional: bool = False
    condition_columns: tuple[str, ...] = ()
    field: Literal["concatsquash", "residual"] = "concatsquash"
    hidden: tuple[int, ...] = (64, 64, 64)
    frequencies: int = 16
    activation: str = "tanh"
    num_blocks: int = 1
    t1: float = 0.5
    learn_t1: bool = False
    trace: Literal["exact", "hutchinson"] = "exact"
    noise: Literal["rademacher", "gaussian"] = "rademacher"
    probes: int = 1
    solver: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    adjoint: Literal["backsolve", "checkpoint"] = "backsolve"
    max_steps: int = 4096
    count_backward: bool = True
    seed: int = 0

    @classmethod
    def from_dict(cls, raw: dict) -> ModelSpec:
        """The description inside a saved config (any version: other keys are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {name: value for name, value in raw.items() if name in known}
        for name in ("hidden", "condition_columns"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)

    @classmethod
    def load(cls, run_dir: str | Path) -> ModelSpec:
        """The description in ``run_dir/config.json``."""
        return cls.from_dict(json.loads((Path(run_dir) / CONFIG).read_text()))


def build_trace(spec) -> Exact | Hutchinson:
    """The divergence estimator used in training (``spec``: a ModelSpec or a Config)."""
    if spec.trace == "exact":
        return Exact()
    if spec.trace == "hutchinson":
        return Hutchinson(spec.noise, spec.probes)
    raise ValueError(f"trace {spec.trace!r} (choose from ['exact', 'hutchinson'])")


def build_field(spec, dim: int, condition_dim: int, rngs: nnx.Rngs):
    """One block's field: FFJORD's ConcatSquash MLP with the widths ``hidden``, or the
    residual field (:mod:`cnfax.core.residual_field`) of width ``hidden[0]`` with
    ``len(hidden)`` blocks, its time features periodic on [0, 2 t1]."""
    if spec.field == "residual":
        if len(set(spec.hidden)) != 1:
            raise ValueError(
                f"the residual field has one width: give --hidden W W ..., got {spec.hidden}"
            )
        return residual_field.ResidualField(
            dim,
            spec.hidden[0],
            len(spec.hidden),
            frequencies=spec.frequencies,
            t_max=spec.t1,
            activation=spec.activation,
            condition_dim=condition_dim,
            rngs=rngs,
        )
    if spec.field == "concatsquash":
        return ConcatSquashMLP(
            dim, spec.hidden, activation=spec.activation, condition_dim=condition_dim, rngs=rngs
        )
    raise ValueError(f"field {spec.field!r} (choose from {sorted(FIELDS)})")


def build_flow(spec: ModelSpec, dim: int, condition_dim: int = 0) -> CNF:
    """The CNF a description gives (``spec``: a ModelSpec, or a Config, which holds every
    field of one), for training (its trace, throw=False, backward counting
    as described) at its tolerance --rtol/--atol (``cnfax.run.builders.training_tolerance``
    gives the one a step trains at)."""
    rngs = nnx.Rngs(spec.seed)
    blocks = [build_field(spec, dim, condition_dim, rngs) for _ in range(spec.num_blocks)]
    return CNF(
        blocks,
        t1=spec.t1,
        learn_t1=spec.learn_t1,
        trace=build_trace(spec),
        solver=SOLVERS[spec.solver](),
        stepsize_controller=diffrax.PIDController(rtol=spec.rtol, atol=spec.atol),
        adjoint=ADJOINTS[spec.adjoint](),
        max_steps=spec.max_steps,
        throw=False,  # a failed solve is a NaN loss, and the step is skipped
        count_backward=spec.count_backward,
    )
