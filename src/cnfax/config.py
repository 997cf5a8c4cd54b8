"""An experiment's configuration, and the flow and optimizer it describes.

``Config`` is a plain dataclass: experiments/train.py turns it into a command line with
tyro (``--help`` lists every option and its default), and the run directory keeps it as
``config.json``, so that evaluation rebuilds exactly the trained model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Literal

import diffrax
import optax
import tyro
from flax import nnx

from cnfax.augmented import SolveOptions
from cnfax.data.dataset import Dataset, make_dataset
from cnfax.data.sbi import SBI_TASKS
from cnfax.data.toy import TOY_DATASETS
from cnfax.fields import ACTIVATIONS, ConcatSquashMLP, check_widths
from cnfax.flow import CNF
from cnfax.inputs import check_end_time
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
DATASETS = [*TOY_DATASETS, "digits", "tabular", *SBI_TASKS]
_RENAMED = ("kinetic_energy", "jacobian_norm", "t1_penalty")
# Options that change the model's parameters: a run directory must be resumed with the same.
MODEL_FIELDS = (
    "dataset",
    "hidden",
    "activation",
    "num_blocks",
    "learn_t1",
    "conditional",
    "condition_columns",
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Train a CNF on a toy density, the digits or a user's matrix (FFJORD's 2-D toy set-up
    by default). Fields named ``*_weight`` weigh a regulariser; the integrals themselves
    (``kinetic_energy``, ``jacobian_frobenius``) are metrics."""

    dataset: str = "8gaussians"
    """a 2-D toy (8gaussians, checkerboard, 2spirals, pinwheel, swissroll, circles, moons,
    rings), digits (scikit-learn's 8x8 images), or tabular (with --data)"""
    data: str | None = None
    """a .npy or .csv matrix (rows are samples) to train on; implies --dataset tabular"""
    dequantize: bool = False
    """with --data: add uniform noise U[0, 1) to integer-valued columns (counts, categories),
    whose likelihood is otherwise unbounded; the model is then a density of x + u"""
    condition_columns: tuple[str, ...] = ()
    """with --data: columns (header names or 0-based indices) to condition on; the model is
    p(other columns | these)"""
    conditional: bool = False
    """with --dataset digits: model p(image | label), the label one-hot"""
    simulations: int = 10_000
    """with an sbi-* dataset: simulated (theta, x) pairs to learn p(theta | x) from"""
    iters: int = 1500
    """training iterations"""
    batch_size: int = 256
    lr: float = 3e-3
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """constant, or cosine decay to 0 at --iters (after the warm-up)"""
    warmup_steps: int = 0
    """linear warm-up of the learning rate from 0 over this many steps"""
    seed: int = 0
    run_dir: str = "runs/default"
    """where config, metrics, checkpoints and pictures go; an existing run is resumed"""
    hidden: tuple[int, ...] = (64, 64, 64)
    activation: str = "tanh"
    t1: float = 0.5
    learn_t1: bool = False
    objective: Literal["mle", "flow-matching", "fm-then-mle"] = "mle"
    """maximum likelihood through the solve, simulation-free flow matching, or flow
    matching for the first --switch-step steps and maximum likelihood after them"""
    switch_step: int = 400
    """with --objective fm-then-mle: the step at which maximum likelihood takes over"""
    kinetic_energy_weight: Annotated[float, tyro.conf.arg(name="kinetic-energy")] = 0.0
    """RNODE weight on int |f|^2 dt (maximum likelihood only)"""
    jacobian_norm_weight: Annotated[float, tyro.conf.arg(name="jacobian-norm")] = 0.0
    """RNODE weight on int ||df/dz||_F^2 dt (maximum likelihood only)"""
    t1_penalty_weight: Annotated[float, tyro.conf.arg(name="t1-penalty")] = 0.0
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
    loose_tol: float | None = None
    """train at rtol = atol = loose_tol before --tight-step, then at --rtol/--atol: a young
    model needs no tight solve (each tolerance is one more compiled step)"""
    tight_step: int = 0
    """with --loose-tol: the step from which training uses --rtol/--atol"""
    eval_tol: float | None = None
    """rtol = atol of the held-out NLL logged during training (default: --rtol/--atol);
    make evaluate always uses its own, 1e-6"""
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
    count_backward: bool = True
    """count the backward solve's field evaluations (logged as nfe_backward); the count is a
    host callback, which keeps the compiled step out of the compilation cache"""
    compilation_cache: str = ""
    """directory of JAX's persistent compilation cache ("" for none): a repeated or resumed
    run loads its compiled steps from there instead of compiling them again"""

    def validate(self) -> Config:
        """Raise ValueError naming each bad option (and the valid choices); return self.

        Here live the rules across options and the names looked up in tables; the values
        that the flow, trace, solver options and objective check themselves are checked by
        building those objects, so each rule is written once."""
        problems = []
        for name, table in (
            ("dataset", DATASETS),
            ("solver", SOLVERS),
            ("adjoint", ADJOINTS),
            ("activation", ACTIVATIONS),
        ):
            if getattr(self, name) not in table:
                problems.append(f"{name} {getattr(self, name)!r} (choose from {sorted(table)})")
        if (self.dataset == "tabular") != bool(self.data):
            problems.append("--data PATH goes with dataset 'tabular' (and only with it)")
        if self.condition_columns and not self.data:
            problems.append("--condition-columns goes with --data")
        if self.conditional and self.dataset != "digits":
            problems.append("--conditional goes with --dataset digits (p(image | label))")
        if self.simulations < 10:
            problems.append(f"simulations must be at least 10, got {self.simulations}")
        if self.is_conditional and self.coupling == "ot" and self.objective != "mle":
            problems.append(
                "coupling 'ot' cannot take a condition: minibatch OT pairs ignore y and bias "
                "the base distribution given y; use --coupling independent"
            )
        if self.dequantize and not self.data:
            problems.append("--dequantize goes with --data (the digits are always dequantised)")
        if self.objective in ("flow-matching", "fm-then-mle"):
            if self.learn_t1 or self.num_blocks != 1:
                problems.append(f"{self.objective} trains one block with a fixed end time")
        if self.objective == "flow-matching":
            if self.kinetic_energy_weight or self.jacobian_norm_weight or self.t1_penalty_weight:
                problems.append(
                    "kinetic_energy, jacobian_norm and t1_penalty apply to --objective mle"
                )
        if self.t1_penalty_weight and not self.learn_t1:
            problems.append("t1_penalty needs --learn-t1")
        if self.objective == "fm-then-mle" and not 0 <= self.switch_step < self.iters:
            problems.append(
                f"switch_step must be in [0, iters) with fm-then-mle, got {self.switch_step}"
            )
        if self.loose_tol is None and self.tight_step:
            problems.append("--tight-step goes with --loose-tol")
        if self.loose_tol is not None and not 0 <= self.tight_step <= self.iters:
            problems.append(f"tight_step must be in [0, iters], got {self.tight_step}")
        # The loop's own settings, which no object checks.
        counts = ("iters", "batch_size", "num_blocks", "eval_every", "ckpt_every", "keep")
        if not 0 <= self.warmup_steps < self.iters:
            problems.append(f"warmup_steps must be in [0, iters), got {self.warmup_steps}")
        for name in (*counts, "eval_size", "log_every", "max_failures"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("lr", "rtol", "atol", "loose_tol", "eval_tol"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            problems.append("weight_decay and grad_clip must be non-negative")
        # The objects' own checks, collected rather than restated.
        for check in (
            build_objective,
            build_trace,
            lambda c: check_end_time(c.t1),
            lambda c: SolveOptions.create(max_steps=c.max_steps),
            lambda c: check_widths(1, c.hidden),
        ):
            try:
                check(self)
            except ValueError as problem:
                problems.append(str(problem))
        if problems:
            raise ValueError("invalid config: " + "; ".join(problems))
        return self

    @property
    def is_conditional(self) -> bool:
        """Whether the data comes with conditions (the flow models p(x | y))."""
        return bool(self.condition_columns) or self.conditional or self.dataset in SBI_TASKS

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Config:
        raw = json.loads(text)
        raw["hidden"] = tuple(raw["hidden"])
        raw["condition_columns"] = tuple(raw.get("condition_columns", ()))
        for old in _RENAMED:  # runs saved before the weights were named as weights
            if old in raw:
                raw[f"{old}_weight"] = raw.pop(old)
        return cls(**raw)

    @classmethod
    def load(cls, run_dir: str | Path) -> Config:
        return cls.from_json((Path(run_dir) / "config.json").read_text())


# Named starting points for a Config: "default" is Config() itself; "ffjord" is FFJORD's
# recipe as cnfax trained it before the time-to-NLL work (docs/benchmark.md): maximum
# likelihood at 1e-5 throughout, a constant learning rate, backward evaluations counted,
# no compilation cache.
RECIPES = {
    "default": {},
    "ffjord": dict(
        objective="mle",
        iters=1500,
        batch_size=256,
        lr=3e-3,
        lr_schedule="constant",
        warmup_steps=0,
        rtol=1e-5,
        atol=1e-5,
        loose_tol=None,
        tight_step=0,
        eval_tol=None,
        count_backward=True,
        compilation_cache="",
    ),
}


def recipe(name: str, **changes) -> Config:
    """The Config of a named recipe (:data:`RECIPES`), with ``changes`` on top."""
    if name not in RECIPES:
        raise ValueError(f"recipe {name!r} (choose from {sorted(RECIPES)})")
    return dataclasses.replace(Config(), **{**RECIPES[name], **changes})


def build_flow(config: Config, dim: int, condition_dim: int = 0) -> CNF:
    """The CNF a config describes, for training (its trace, throw=False, backward counting
    as configured); its tolerance is --rtol/--atol (:func:`training_tolerance` gives the
    one a step trains at)."""
    rngs = nnx.Rngs(config.seed)
    fields = [
        ConcatSquashMLP(
            dim,
            config.hidden,
            activation=config.activation,
            condition_dim=condition_dim,
            rngs=rngs,
        )
        for _ in range(config.num_blocks)
    ]
    return CNF(
        fields,
        t1=config.t1,
        learn_t1=config.learn_t1,
        trace=build_trace(config),
        solver=SOLVERS[config.solver](),
        stepsize_controller=diffrax.PIDController(rtol=config.rtol, atol=config.atol),
        adjoint=ADJOINTS[config.adjoint](),
        max_steps=config.max_steps,
        throw=False,  # a failed solve is a NaN loss, and the step is skipped
        count_backward=config.count_backward,
    )


def training_tolerance(config: Config, step: int) -> tuple[float, float]:
    """(rtol, atol) of the solves of training step ``step`` (0-based): --loose-tol before
    --tight-step, then --rtol/--atol. A pure function of the step, so resume is exact."""
    if config.loose_tol is not None and step < config.tight_step:
        return config.loose_tol, config.loose_tol
    return config.rtol, config.atol


def build_dataset(config: Config) -> Dataset:
    """The data a config names, with its preprocessing (unusable data: DataError)."""
    return make_dataset(
        config.dataset,
        config.seed,
        config.data,
        config.dequantize,
        condition_columns=config.condition_columns,
        simulations=config.simulations,
        conditional=config.conditional,
    )


def build_trace(config: Config) -> Exact | Hutchinson:
    """The divergence estimator used in training."""
    if config.trace == "exact":
        return Exact()
    if config.trace == "hutchinson":
        return Hutchinson(config.noise, config.probes)
    raise ValueError(f"trace {config.trace!r} (choose from ['exact', 'hutchinson'])")


def build_optimizer(config: Config) -> optax.GradientTransformation:
    """AdamW with optional global-norm clipping. A non-finite gradient leaves parameters and
    optimizer state unchanged (optax.apply_if_finite); the training loop counts such steps
    and stops the run after ``max_failures`` in a row, so the wrapper's own limit (after
    which it would apply non-finite updates) is never reached."""
    parts = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip > 0 else []
    parts.append(optax.adamw(learning_rate(config), weight_decay=config.weight_decay))
    return optax.apply_if_finite(optax.chain(*parts), max_consecutive_errors=2**30)


def learning_rate(config: Config) -> float | optax.Schedule:
    """--lr, or its schedule: a function of the count of applied updates, which the
    optimizer's state holds (and checkpoints), so a resumed run continues it exactly. The
    count is the step unless steps were rejected (a rejected step applies no update)."""
    if config.lr_schedule == "constant" and not config.warmup_steps:
        return config.lr  # a float keeps the optimizer state of runs saved before schedules
    if config.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, config.lr, config.warmup_steps, max(config.iters, config.warmup_steps + 1)
        )
    return optax.linear_schedule(0.0, config.lr, config.warmup_steps)


def build_objective(config: Config, step: int | None = None) -> MaximumLikelihood | FlowMatching:
    """The training objective of step ``step`` (see :mod:`cnfax.objectives`): with
    fm-then-mle, flow matching before --switch-step and maximum likelihood from it (also
    for ``step=None``, after checking the flow-matching options). A pure function of the
    step, so resume is exact."""
    if config.objective in ("flow-matching", "fm-then-mle"):
        matching = FlowMatching(sigma_min=config.sigma_min, coupling=config.coupling)
        if config.objective == "flow-matching" or (step is not None and step < config.switch_step):
            return matching
    if config.objective in ("mle", "fm-then-mle"):
        return MaximumLikelihood(
            kinetic_energy_weight=config.kinetic_energy_weight,
            jacobian_norm_weight=config.jacobian_norm_weight,
            t1_penalty_weight=config.t1_penalty_weight,
        )
    raise ValueError(
        f"objective {config.objective!r} (choose from ['mle', 'flow-matching', 'fm-then-mle'])"
    )
