"""What a :class:`~cnfax.run.config.Config` builds for training: the dataset, the
optimizer with its learning-rate schedule, the objective of each step and the tolerance
each step trains at. (The flow itself is built from the model's description:
:func:`cnfax.run.model.build_flow`.)"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import optax

from cnfax.data.dataset import Dataset, make_dataset
from cnfax.objectives import FlowMatching, MaximumLikelihood
from cnfax.run.target_problem import build_target
from cnfax.variational import ReverseKL

RNODE_WEIGHT = 0.01  # --kinetic-energy and --jacobian-norm when not given

if TYPE_CHECKING:
    from cnfax.run.config import Config


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
        bounds=config.bounds,
        whiten=config.whiten,
        bounded_by=config.bounded_by,
    )


# adamw and schedule are cached: an optax transformation is a pair of pure functions, and
# the optimizer is static data of every jitted step, so a new but equal chain for each
# training would make every cnfax.fit / train() in a process compile its steps again.
@functools.cache
def adamw(
    learning_rate: float | optax.Schedule, weight_decay: float, grad_clip: float
) -> optax.GradientTransformation:
    """AdamW after optional global-norm clipping (``grad_clip`` 0: none), the optimizer of
    both ``make train`` and :func:`cnfax.fit`. A non-finite gradient leaves parameters and
    optimizer state unchanged (optax.apply_if_finite); the loops count such steps and stop
    after ``max_failures`` in a row, so the wrapper's own limit (after which it would apply
    non-finite updates) is never reached."""
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    parts.append(optax.adamw(learning_rate, weight_decay=weight_decay))
    return optax.apply_if_finite(optax.chain(*parts), max_consecutive_errors=2**30)


@functools.cache
def schedule(lr: float, kind: str, warmup_steps: int, total_steps: int) -> float | optax.Schedule:
    """The learning rate as a function of the count of applied updates (which the
    optimizer's state holds and checkpoints, so a resumed run continues it exactly; the
    count is the step unless steps were rejected): a linear warm-up from 0 over
    ``warmup_steps``, then constant or cosine decay to 0 at ``total_steps``."""
    if kind == "constant" and not warmup_steps:
        return lr  # a float keeps the optimizer state of runs saved before schedules
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup_steps, max(total_steps, warmup_steps + 1)
        )
    if kind == "constant":
        return optax.linear_schedule(0.0, lr, warmup_steps)
    raise ValueError(f"learning-rate schedule {kind!r} (choose from ['constant', 'cosine'])")


def build_optimizer(config: Config) -> optax.GradientTransformation:
    """The optimizer of a Config (:func:`adamw` with :func:`learning_rate`)."""
    return adamw(learning_rate(config), config.resolved().weight_decay, config.grad_clip)


def learning_rate(config: Config) -> float | optax.Schedule:
    """--lr with --lr-schedule and --warmup-steps over --iters (:func:`schedule`)."""
    return schedule(config.lr, config.lr_schedule, config.warmup_steps, config.iters)


def build_objective(
    config: Config, step: int | None = None
) -> MaximumLikelihood | FlowMatching | ReverseKL:
    """The training objective of step ``step`` (see :mod:`cnfax.objectives`): with
    --target, the reverse KL to the target (:class:`cnfax.ReverseKL`, the same instance
    every step); with fm-then-mle, flow matching before --switch-step and maximum
    likelihood from it (also for ``step=None``, after checking the flow-matching
    options). A pure function of the step, so resume is exact."""
    if config.target is not None:
        return ReverseKL(build_target(config.target), config.estimator)
    if config.objective in ("flow-matching", "fm-then-mle"):
        matching = FlowMatching(
            sigma_min=config.sigma_min,
            coupling=config.coupling,
            time_exponent=config.time_exponent,
        )
        if config.objective == "flow-matching" or (step is not None and step < config.switch_step):
            return matching
    if config.objective in ("mle", "fm-then-mle"):
        return MaximumLikelihood(
            kinetic_energy_weight=_rnode_weight(config.kinetic_energy_weight),
            jacobian_norm_weight=_rnode_weight(config.jacobian_norm_weight),
            t1_penalty_weight=config.t1_penalty_weight,
        )
    raise ValueError(
        f"objective {config.objective!r} (choose from ['mle', 'flow-matching', 'fm-then-mle'])"
    )


def _rnode_weight(weight: float | None) -> float:
    """An RNODE weight of the command line; None (not given) is :data:`RNODE_WEIGHT`."""
    return RNODE_WEIGHT if weight is None else weight
