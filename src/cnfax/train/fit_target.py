"""``cnfax.fit(flow, target=log_density, key=key)``: variational inference, training a
copy of a CNF q to an unnormalised density p~ by the reverse KL divergence
(:class:`cnfax.ReverseKL`, the negative ELBO).

There is no data: each step draws a fresh batch of base points on the host. The steps
are those of ``make train`` and of the data path of :func:`cnfax.fit`
(:class:`cnfax.train.step.Steps`: the same rejection of a failed solve or a non-finite
loss or gradient, the same AdamW, schedule and EMA).

Selection. Every ``eval_every`` steps (and after the last) the EMA weights are scored on
one fixed held-out batch of base draws, with the exact trace at ``rtol = atol =
eval_tol``: ELBO, log Z_hat and its standard error, and the ESS fraction
(:mod:`cnfax.importance`), and KL(q || p) = log Z - ELBO where log Z is known. The
weights returned are the EMA weights of the evaluation with the highest held-out ELBO:
the same draws every time, so that evaluations differ only by the weights (common random
numbers), and the ELBO is the objective itself, a bound that only a better q raises.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from cnfax.core.flow import CNF
from cnfax.importance import VariationalDiagnostics, diagnose
from cnfax.parallel import data_mesh, gather, replicate, shard_batch
from cnfax.run.builders import adamw, schedule
from cnfax.scoring import evaluation_flow, numpy_rng
from cnfax.targets import resolve_target
from cnfax.train.best import BestWeights
from cnfax.train.ema import EMA
from cnfax.train.fit import FitFailed
from cnfax.train.step import Steps
from cnfax.variational import ReverseKL, target_log_density


@dataclasses.dataclass
class TargetFitHistory:
    """Per evaluation: the step count it followed, the mean training loss (negative ELBO)
    of the accepted steps since the previous one, and the EMA weights' held-out
    diagnostics; which evaluation was kept, and the held-out base draws."""

    step: list[int] = dataclasses.field(default_factory=list)
    train_loss: list[float] = dataclasses.field(default_factory=list)
    diagnostics: list[VariationalDiagnostics] = dataclasses.field(default_factory=list)
    best_index: int = -1
    held_out: np.ndarray | None = None  # the base draws of every evaluation
    stopped_early: bool = False
    rejected_steps: int = 0
    seconds: float = 0.0

    @property
    def elbo(self) -> list[float]:
        return [d.elbo for d in self.diagnostics]

    @property
    def ess_fraction(self) -> list[float]:
        return [d.ess_fraction for d in self.diagnostics]

    @property
    def kl(self) -> list[float | None]:
        return [d.kl for d in self.diagnostics]

    @property
    def best(self) -> VariationalDiagnostics:
        return self.diagnostics[self.best_index]


@functools.partial(nnx.jit, static_argnames=("target",))
def _held_out_log_densities(flow: CNF, z0, target: Callable):
    z, log_q, stats = flow.forward_log_prob_and_stats(z0)
    return target_log_density(target, z), log_q, stats.success


def held_out_diagnostics(
    evaluator: CNF, target, z0, log_z: float | None = None
) -> VariationalDiagnostics:
    """The diagnostics of the draws T(z0) of ``evaluator`` (a sharded batch of base
    draws); all NaN if its solve failed."""
    log_target, log_q, success = _held_out_log_densities(evaluator, z0, target)
    log_target, log_q = gather(log_target), gather(log_q)
    if not bool(success):
        log_q = np.full_like(log_q, np.nan)
    return diagnose(log_target, log_q, log_z)


def _positive_int(name, value):
    if value is None or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def fit_target(
    flow: CNF,
    target,
    *,
    key: jax.Array,
    steps: int = 1000,
    batch_size: int = 256,
    estimator: str = "standard",
    learning_rate: float = 1e-3,
    warmup_steps: int = 100,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    ema_decay: float = 0.999,
    eval_every: int = 100,
    validation_size: int = 1024,
    patience: int | None = None,
    eval_tol: float = 1e-5,
    train_tol: float = 1e-3,
    log_normalizer: float | None = None,
    max_failures: int = 10,
    progress: bool = True,
) -> tuple[CNF, TargetFitHistory]:
    """Train a copy of ``flow`` as q ~ p~ / Z and return it with its
    :class:`TargetFitHistory`.

    Args:
        target: log p~, a callable z (n, d) -> (n,), a :data:`cnfax.targets.TARGETS`
            name or a ``module:function`` string (:func:`cnfax.targets.resolve_target`).
        steps, batch_size: optimizer steps, each on ``batch_size`` fresh base draws
            (rounded down to a multiple of the device count), solved at
            ``rtol = atol = train_tol``.
        estimator: "standard" or "stl" (sticking the landing; :class:`cnfax.ReverseKL`).
        learning_rate, warmup_steps, weight_decay, grad_clip, ema_decay: as in the data
            path of :func:`cnfax.fit` (cosine decay to 0 at ``steps``).
        eval_every, validation_size: the held-out evaluation's period (in steps) and its
            number of base draws (module docstring).
        patience: stop after this many evaluations without a higher held-out ELBO
            (default: never; all ``steps`` run).
        log_normalizer: log Z, for KL(q || p) in the history; by default the target's
            ``log_normalizer`` attribute, where it has one.
        max_failures: consecutive rejected steps before :class:`FitFailed`.
    """
    target = resolve_target(target)
    objective = ReverseKL(target, estimator)
    steps = _positive_int("steps", steps)
    batch_size = _positive_int("batch_size", batch_size)
    eval_every = _positive_int("eval_every", eval_every)
    validation_size = _positive_int("validation_size", validation_size)
    max_failures = _positive_int("max_failures", max_failures)
    if patience is not None:
        patience = _positive_int("patience", patience)
    if flow.condition_dim:
        raise ValueError("fitting a target trains an unconditional flow (no condition)")
    log_z = getattr(target, "log_normalizer", None) if log_normalizer is None else log_normalizer
    mesh = data_mesh()
    devices = mesh.shape["data"]
    batch_size -= batch_size % devices
    validation_size = max(2 * devices, validation_size - validation_size % devices)
    if batch_size == 0:
        raise ValueError(f"batch_size must be at least the device count {devices}")
    rng = numpy_rng(key)
    held_out = objective.make_batch((validation_size, flow.dim), rng)
    target_log_density(target, jnp.asarray(held_out[:2]))  # the shape check, before a step

    throw = flow.options.throw
    flow = nnx.clone(flow).replace(throw=False)  # a failed solve is a rejected step
    lr = schedule(learning_rate, "cosine", min(warmup_steps, steps - 1), steps)
    optimizer = nnx.Optimizer(flow, adamw(lr, weight_decay, grad_clip), wrt=nnx.Param)
    replicate(flow, mesh)
    replicate(optimizer, mesh)
    trainer = Steps(flow, optimizer, mesh, callbacks=False)
    ema = EMA(flow, ema_decay)
    evaluator = evaluation_flow(ema.flow, tol=eval_tol, throw=False)
    held_out_sharded = shard_batch(held_out, mesh)
    history = TargetFitHistory(held_out=held_out)
    best, losses = BestWeights(ema.flow), []
    started = time.perf_counter()
    bar = tqdm(range(steps), disable=not progress, desc="fit", unit="step")
    for step in bar:
        batch = shard_batch(objective.make_batch((batch_size, flow.dim), rng), mesh)
        outcome = trainer.run(
            objective, (train_tol, train_tol), batch, jax.random.fold_in(key, step)
        )
        if outcome.cause is not None:
            if trainer.consecutive_failures >= max_failures:
                raise FitFailed(f"{max_failures} consecutive failed steps (last: {outcome.cause})")
        else:
            ema.update(flow)
            losses.append(outcome.loss)
        if (step + 1) % eval_every and step + 1 != steps:
            continue
        found = held_out_diagnostics(evaluator, target, held_out_sharded, log_z)
        history.step.append(step + 1)
        history.train_loss.append(float(np.mean(losses)) if losses else math.nan)
        history.diagnostics.append(found)
        losses = []
        improved = math.isfinite(found.elbo) and (best.empty or found.elbo > history.best.elbo)
        if improved:
            history.best_index = len(history.diagnostics) - 1
        best.offer(improved)
        bar.set_postfix(elbo=f"{found.elbo:.3f}", ess=f"{found.ess_fraction:.2f}")
        if patience is not None and best.since >= patience:
            history.stopped_early = True
            break
    bar.close()
    history.rejected_steps = trainer.rejected_total
    history.seconds = time.perf_counter() - started
    if best.empty:
        raise FitFailed("no evaluation reached a finite held-out ELBO")
    return best.restore().replace(throw=throw), history
