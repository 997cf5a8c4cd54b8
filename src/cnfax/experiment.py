"""An experiment's configuration, and the flow and optimizer it describes.

``Config`` is a plain dataclass: experiments/train.py turns it into a command line with
tyro (``--help`` lists every option and its default), and the run directory keeps it as
``config.json``, so that evaluation rebuilds exactly the trained model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

import diffrax
import optax
from flax import nnx

from cnfax.data.toy import TOY_DATASETS
from cnfax.fields import ACTIVATIONS, ConcatSquashMLP
from cnfax.flow import CNF
from cnfax.objectives import FlowMatching, MaximumLikelihood
from cnfax.trace import Exact, Hutchinson

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
DATASETS = [*TOY_DATASETS, "digits", "tabular"]
# Options that change the model's parameters: a run directory must be resumed with the same.
MODEL_FIELDS = ("dataset", "hidden", "activation", "num_blocks", "learn_t1")


@dataclasses.dataclass(frozen=True)
class Config:
    """Train a CNF on a 2-D toy density (FFJORD's toy set-up by default)."""

    dataset: str = "8gaussians"
    """a 2-D toy (8gaussians, checkerboard, 2spirals, pinwheel, swissroll, circles, moons,
    rings), digits (scikit-learn's 8x8 images), or tabular (with --data)"""
    data: str | None = None
    """a .npy or .csv matrix (rows are samples) to train on; implies --dataset tabular"""
    iters: int = 1500
    """training iterations"""
    batch_size: int = 256
    lr: float = 3e-3
    seed: int = 0
    run_dir: str = "runs/default"
    """where config, metrics, checkpoints and pictures go; an existing run is resumed"""
    hidden: tuple[int, ...] = (64, 64, 64)
    activation: str = "tanh"
    t1: float = 0.5
    learn_t1: bool = False
    objective: Literal["mle", "flow-matching"] = "mle"
    """maximum likelihood through the solve, or simulation-free flow matching"""
    kinetic_energy: float = 0.0
    """RNODE weight on int |f|^2 dt (maximum likelihood only)"""
    jacobian_norm: float = 0.0
    """RNODE weight on int ||df/dz||_F^2 dt (maximum likelihood only)"""
    t1_penalty: float = 0.0
    """weight on the sum of learned end times (with --learn-t1)"""
    sigma_min: float = 1e-4
    """flow matching: width of the path's end around each data point"""
    coupling: Literal["independent", "ot"] = "independent"
    """flow matching: independent pairs, or minibatch optimal-transport pairs"""
    trace: Literal["exact", "hutchinson"] = "exact"
    """divergence in training (evaluation always uses the exact trace)"""
    noise: Literal["rademacher", "gaussian"] = "rademacher"
    probes: int = 1
    """Hutchinson noise vectors per point, averaged"""
    solver: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    adjoint: Literal["backsolve", "checkpoint"] = "backsolve"
    num_blocks: int = 1
    weight_decay: float = 1e-5
    grad_clip: float = 10.0
    """clip the global gradient norm to this (0 disables)"""
    eval_every: int = 250
    ckpt_every: int = 250
    keep: int = 3
    """checkpoints kept (the best by test NLL is kept as well)"""
    eval_size: int = 2000
    """held-out points for the test NLL logged during training"""
    log_every: int = 10
    max_steps: int = 4096
    """step budget of each solve; a solve that runs out fails its training step"""
    max_failures: int = 10
    """stop after this many consecutive failed steps (non-finite loss or failed solve)"""
    pictures: bool = True

    def validate(self) -> Config:
        """Raise ValueError naming each bad option and the valid choices; return self."""
        problems = []
        if self.dataset not in DATASETS:
            problems.append(f"dataset {self.dataset!r} (choose from {DATASETS})")
        if (self.dataset == "tabular") != bool(self.data):
            problems.append("--data PATH goes with dataset 'tabular' (and only with it)")
        if self.solver not in SOLVERS:
            problems.append(f"solver {self.solver!r} (choose from {sorted(SOLVERS)})")
        if self.adjoint not in ADJOINTS:
            problems.append(f"adjoint {self.adjoint!r} (choose from {sorted(ADJOINTS)})")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} (choose from {sorted(ACTIVATIONS)})")
        if self.trace not in ("exact", "hutchinson"):
            problems.append(f"trace {self.trace!r} (choose from ['exact', 'hutchinson'])")
        if self.objective not in ("mle", "flow-matching"):
            problems.append(f"objective {self.objective!r} (choose from ['mle', 'flow-matching'])")
        if self.coupling not in ("independent", "ot"):
            problems.append(f"coupling {self.coupling!r} (choose from ['independent', 'ot'])")
        for name in ("kinetic_energy", "jacobian_norm", "t1_penalty", "sigma_min"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must be non-negative, got {getattr(self, name)}")
        if not self.sigma_min < 1:
            problems.append(f"sigma_min must be below 1, got {self.sigma_min}")
        if self.objective == "flow-matching":
            if self.learn_t1 or self.num_blocks != 1:
                problems.append("flow-matching trains one block with a fixed end time")
            if self.kinetic_energy or self.jacobian_norm or self.t1_penalty:
                problems.append(
                    "kinetic_energy, jacobian_norm and t1_penalty apply to --objective mle"
                )
        if self.t1_penalty and not self.learn_t1:
            problems.append("t1_penalty needs --learn-t1")
        for name in (
            "iters",
            "batch_size",
            "num_blocks",
            "eval_every",
            "ckpt_every",
            "keep",
            "eval_size",
            "log_every",
            "max_steps",
            "probes",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("lr", "t1", "rtol", "atol"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            problems.append("weight_decay and grad_clip must be non-negative")
        if not self.hidden or any(h < 1 for h in self.hidden):
            problems.append(f"hidden widths must be positive, got {self.hidden}")
        if problems:
            raise ValueError("invalid config: " + "; ".join(problems))
        return self

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Config:
        raw = json.loads(text)
        raw["hidden"] = tuple(raw["hidden"])
        return cls(**raw)

    @classmethod
    def load(cls, run_dir: str | Path) -> Config:
        return cls.from_json((Path(run_dir) / "config.json").read_text())


def build_flow(config: Config, dim: int) -> CNF:
    """The CNF a config describes, for training (its trace, throw=False, counting on)."""
    rngs = nnx.Rngs(config.seed)
    fields = [
        ConcatSquashMLP(dim, config.hidden, activation=config.activation, rngs=rngs)
        for _ in range(config.num_blocks)
    ]
    trace = Exact() if config.trace == "exact" else Hutchinson(config.noise, config.probes)
    return CNF(
        fields,
        t1=config.t1,
        learn_t1=config.learn_t1,
        trace=trace,
        solver=SOLVERS[config.solver](),
        stepsize_controller=diffrax.PIDController(rtol=config.rtol, atol=config.atol),
        adjoint=ADJOINTS[config.adjoint](),
        max_steps=config.max_steps,
        throw=False,  # a failed solve is a NaN loss, and the step is skipped
        count_backward=True,
    )


def build_optimizer(config: Config) -> optax.GradientTransformation:
    """AdamW with optional global-norm clipping. A non-finite gradient leaves parameters and
    optimizer state unchanged (optax.apply_if_finite); the training loop counts such steps
    and stops the run after ``max_failures`` in a row, so the wrapper's own limit (after
    which it would apply non-finite updates) is never reached."""
    parts = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip > 0 else []
    parts.append(optax.adamw(config.lr, weight_decay=config.weight_decay))
    return optax.apply_if_finite(optax.chain(*parts), max_consecutive_errors=2**30)


def build_objective(config: Config) -> MaximumLikelihood | FlowMatching:
    """The training objective a config names (see :mod:`cnfax.objectives`)."""
    if config.objective == "flow-matching":
        return FlowMatching(sigma_min=config.sigma_min, coupling=config.coupling)
    return MaximumLikelihood(
        kinetic_energy=config.kinetic_energy,
        jacobian_norm=config.jacobian_norm,
        t1_penalty=config.t1_penalty,
    )
