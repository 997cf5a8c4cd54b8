"""``cnfax.fit``: train a CNF on arrays in Python, with a validation split, an EMA of the
weights, warm-up and cosine decay, gradient clipping and early stopping.

    flow, history = cnfax.fit(flow, x, key=key)                      # p(x), x: (n, d)
    flow, history = cnfax.fit(flow, theta, condition=xs, key=key)    # p(theta | x)
    flow, history = cnfax.fit(flow, target=log_p, key=key, steps=n)  # q ~ p~ (VI)

The last is variational inference (:mod:`cnfax.train.fit_target`); the rest of this
module is the data path.

It runs the steps of ``make train`` (:class:`cnfax.train.step.Steps`: the same jitted
step, the same rejection of a failed solve or a non-finite loss or gradient, the same
optimizer :func:`cnfax.run.builders.adamw` and schedule, the same EMA and the same
validation NLL, on every JAX device), over epochs of a finite sample instead of a run
directory's named dataset. The weights returned are the EMA weights of the epoch with
the lowest validation NLL (exact trace); the flow-matching loss is never the criterion,
since it is not a reliable proxy for the density.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from cnfax.core.checks import check_condition, check_points
from cnfax.core.flow import CNF
from cnfax.objectives import FlowMatching, MaximumLikelihood, conditional_batch
from cnfax.parallel import data_mesh, replicate, shard_batch
from cnfax.run.builders import adamw, schedule
from cnfax.scoring import evaluation_flow, held_out_nll, numpy_rng
from cnfax.train.best import BestWeights
from cnfax.train.ema import EMA
from cnfax.train.step import Steps


@dataclasses.dataclass
class FitHistory:
    """Per epoch the mean training loss; per validation (every ``validate_every`` epochs)
    the EMA weights' validation NLL (nats; of theta given its condition for conditional
    data) and its epoch; which epoch was kept, and why the training ended."""

    train_loss: list[float] = dataclasses.field(default_factory=list)
    validation_nll: list[float] = dataclasses.field(default_factory=list)
    validation_epochs: list[int] = dataclasses.field(default_factory=list)  # 0-based
    best_epoch: int = -1  # 0-based index into train_loss; one of validation_epochs
    validation_index: np.ndarray | None = None  # rows of x held out (NLL on the first
    # validation_size of them)
    stopped_early: bool = False
    rejected_steps: int = 0
    seconds: float = 0.0

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    @property
    def best_validation_nll(self) -> float:
        return self.validation_nll[self.validation_epochs.index(self.best_epoch)]


class FitFailed(RuntimeError):
    """Too many consecutive failed steps."""


def _split(n: int, validation_fraction: float, rng: np.random.Generator):
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    order = rng.permutation(n)
    held = max(1, int(round(validation_fraction * n)))
    if n - held < 1:
        raise ValueError(f"{n} rows leave none to train on after the validation split")
    return order[held:], order[:held]


def fit(flow: CNF, x=None, *, key: jax.Array, target=None, **options):
    """Density estimation on rows ``x`` (:func:`fit_data`), or variational inference of
    an unnormalised density ``target=`` log p~ (:func:`cnfax.train.fit_target.fit_target`:
    ``steps=`` instead of epochs, no ``x``); ``options`` are theirs."""
    if target is not None:
        if x is not None:
            raise ValueError(
                "pass either rows x (density estimation) or target= (variational "
                "inference), not both"
            )
        from cnfax.train.fit_target import fit_target

        return fit_target(flow, target, key=key, **options)
    if x is None:
        raise ValueError("fit needs rows x to fit, or target= log p~ for variational inference")
    return fit_data(flow, x, key=key, **options)


def fit_data(
    flow: CNF,
    x,
    *,
    key: jax.Array,
    condition=None,
    objective: FlowMatching | MaximumLikelihood | None = None,
    max_epochs: int = 200,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    warmup_steps: int = 100,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    ema_decay: float = 0.999,
    validation_fraction: float = 0.1,
    validation_size: int = 2048,
    patience: int = 20,
    validate_every: int = 1,
    eval_tol: float = 1e-5,
    train_tol: float = 1e-3,
    max_failures: int = 10,
    progress: bool = True,
) -> tuple[CNF, FitHistory]:
    """Train a copy of ``flow`` on the rows of ``x`` (n, d) (given ``condition`` (n, c)
    for a conditional flow), and return it with its :class:`FitHistory`.

    Args:
        objective: ``cnfax.FlowMatching(sigma_min=1e-3)`` by default (simulation-free: no
            solve in training); or ``cnfax.MaximumLikelihood()``, trained through the
            solve at ``rtol = atol = train_tol``.
        max_epochs, batch_size: passes over the training rows, in batches of a fixed
            size (the last incomplete batch of each epoch's shuffle is dropped, so one
            shape compiles; it is in the next epoch's shuffle).
        learning_rate, warmup_steps, weight_decay, grad_clip: AdamW with linear warm-up
            and cosine decay to 0 at ``max_epochs``, after global-norm clipping.
            ``weight_decay`` is decoupled (AdamW's): each step shrinks a weight by
            ``learning_rate * weight_decay`` of itself, so 1e-4 at lr 1e-3 is 1e-7 a
            step; it is off by default.
        ema_decay: the weights evaluated and returned are an EMA of the trained ones
            (:mod:`cnfax.train.ema`; 0 keeps the raw weights).
        validation_fraction, validation_size: a random held-out share of the rows; the
            validation NLL (exact trace, ``rtol = atol = eval_tol``) of the EMA weights is
            computed on up to ``validation_size`` of them after every ``validate_every``
            epochs and after the last. A flow-matching step costs no solve, so for it the
            validation solve, not the training, dominates an epoch of a small sample:
            validating every few epochs is what makes hundreds of epochs affordable.
        patience: stop after this many validations without a lower validation NLL; the
            best validated epoch's weights are returned.
        max_failures: consecutive rejected steps (a failed solve, a non-finite loss or
            gradient; nothing is updated by them) before :class:`FitFailed`.
    """
    x = np.asarray(x)
    check_points(x, flow.dim, "x")
    if x.ndim != 2:
        raise ValueError(f"x must have shape (n, {flow.dim}), got {x.shape}")
    dtype = jnp.result_type(float)  # JAX's default float, cast once on the host
    x = x.astype(dtype)
    if condition is not None or flow.condition_dim:
        check_condition(condition, flow.condition_dim, (len(x),))
        condition = np.asarray(condition).astype(dtype).reshape(-1, flow.condition_dim)
        condition = np.broadcast_to(condition, (len(x), flow.condition_dim))
    for name, value in (
        ("max_epochs", max_epochs),
        ("batch_size", batch_size),
        ("patience", patience),
        ("max_failures", max_failures),
        ("validation_size", validation_size),
        ("validate_every", validate_every),
    ):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    objective = FlowMatching(sigma_min=1e-3) if objective is None else objective
    if isinstance(objective, FlowMatching):
        objective.check_model(flow.num_blocks, condition is not None, flow.learn_t1)
    rng = numpy_rng(key)
    train_rows, held_rows = _split(len(x), validation_fraction, rng)
    batch_size = min(batch_size, len(train_rows))
    mesh = data_mesh()
    devices = mesh.shape["data"]
    batch_size -= batch_size % devices  # one shape that divides over the devices
    if batch_size == 0:
        rows = len(train_rows)
        raise ValueError(f"{rows} training rows cannot fill one batch on {devices} devices")
    steps_per_epoch = len(train_rows) // batch_size
    total = steps_per_epoch * max_epochs

    def rows(index):
        return x[index] if condition is None else conditional_batch(x[index], condition[index])

    validation = rows(held_rows[:validation_size])

    throw = flow.options.throw
    flow = nnx.clone(flow)
    if not isinstance(objective, FlowMatching):
        flow = flow.replace(throw=False)  # a failed solve is a rejected step, not an error
    lr = schedule(learning_rate, "cosine", min(warmup_steps, total - 1), total)
    optimizer = nnx.Optimizer(flow, adamw(lr, weight_decay, grad_clip), wrt=nnx.Param)
    replicate(flow, mesh)
    replicate(optimizer, mesh)
    steps = Steps(flow, optimizer, mesh, callbacks=False)
    ema = EMA(flow, ema_decay)
    # Built once: it shares the average's parameters (and a new one would compile again).
    evaluator = evaluation_flow(ema.flow, tol=eval_tol, throw=False)
    history = FitHistory(validation_index=held_rows)
    best = BestWeights(ema.flow)
    started = time.perf_counter()
    bar = tqdm(range(max_epochs), disable=not progress, desc="fit", unit="epoch")
    for epoch in bar:
        order = train_rows[rng.permutation(len(train_rows))]
        losses = []
        for b in range(steps_per_epoch):
            data = rows(order[b * batch_size : (b + 1) * batch_size])
            batch = shard_batch(objective.make_batch(data, rng), mesh)
            step_key = jax.random.fold_in(key, epoch * steps_per_epoch + b)
            outcome = steps.run(objective, (train_tol, train_tol), batch, step_key)
            if outcome.cause is not None:
                if steps.consecutive_failures >= max_failures:
                    raise FitFailed(
                        f"{max_failures} consecutive failed steps (last: {outcome.cause})"
                    )
                continue
            ema.update(flow)
            losses.append(outcome.loss)
        history.train_loss.append(float(np.mean(losses)) if losses else math.nan)
        if (epoch + 1) % validate_every and epoch + 1 < max_epochs:
            continue
        nll, _ = held_out_nll(evaluator, validation, mesh=mesh)
        history.validation_nll.append(nll)
        history.validation_epochs.append(epoch)
        improved = math.isfinite(nll) and (best.empty or nll < history.best_validation_nll)
        if improved:
            history.best_epoch = epoch
        best.offer(improved)
        bar.set_postfix(loss=f"{history.train_loss[-1]:.3f}", val_nll=f"{nll:.3f}")
        if best.since >= patience:
            history.stopped_early = True
            break
    bar.close()
    history.rejected_steps = steps.rejected_total
    history.seconds = time.perf_counter() - started
    if best.empty:
        raise FitFailed("no epoch reached a finite validation NLL")
    return best.restore().replace(throw=throw), history
