"""The training loop: maximum likelihood with Optax, Orbax checkpoints, resume, metrics.

Every step is a pure function of (parameters, optimizer state, base key, step index): the
batch is ``train_batch(dataset, seed, step)`` and the Hutchinson key is
``fold_in(key, step)``. A run interrupted at step k and resumed from its checkpoint
therefore repeats exactly the steps an uninterrupted run takes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import diffrax
import equinox
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache
from jax.sharding import Mesh
from tqdm import tqdm

from cnfax.checkpoint import Checkpointer
from cnfax.config import (
    Config,
    build_dataset,
    build_flow,
    build_objective,
    build_optimizer,
    training_tolerance,
)
from cnfax.evaluation import evaluation_flow, held_out_nll
from cnfax.flow import CNF
from cnfax.objectives import FlowMatching, MaximumLikelihood
from cnfax.parallel import (
    check_divisible,
    data_mesh,
    data_parallel_loss_and_grad,
    local_rows,
    replicate,
    shard_batch,
)
from cnfax.run import (
    CONFIG,
    METRICS,
    check_compatible,
    checkpoint_tree,
    restore_training_state,
    write_data_spec,
)
from cnfax.stats import backward_evaluations

CACHE_BYTES = 2**30  # the compilation cache's size limit


@functools.partial(nnx.jit, static_argnames=("objective", "mesh"))
def train_step(flow: CNF, optimizer: nnx.Optimizer, batch, key, mesh: Mesh, objective=None):
    """One optimizer step on the objective (maximum likelihood by default) over the
    sharded batch; returns (loss, solve statistics, the objective's metrics)."""
    objective = MaximumLikelihood() if objective is None else objective
    loss, stats, metrics, grads = data_parallel_loss_and_grad(objective, flow, batch, key, mesh)
    # A non-finite loss can come with finite gradients (an overflowing log-density, say):
    # poison them, so that apply_if_finite rejects the whole update.
    ok = jnp.isfinite(loss) & stats.success
    grads = jax.tree.map(lambda g: jnp.where(ok, g, jnp.nan), grads)
    optimizer.update(flow, grads)
    return loss, stats, metrics


def enable_compilation_cache(directory: str) -> None:
    """Keep compiled functions in JAX's persistent compilation cache under ``directory``
    (user home expanded), so that a repeated or resumed run loads them instead of compiling
    them; "" leaves JAX's own setting alone. XLA refuses to cache an executable holding a
    host callback: see :func:`_errors_without_callbacks` and ``Config.count_backward``."""
    if not directory:
        return
    path = Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != str(path):
        # JAX opens its cache once per process: reopen it where this run asks.
        compilation_cache.reset_cache()
        jax.config.update("jax_compilation_cache_dir", str(path))
    # Steps compile in seconds; tiny helpers (about 0.1 s) are not worth a file each.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
    jax.config.update("jax_compilation_cache_max_size", CACHE_BYTES)  # least recently used go


@contextlib.contextmanager
def _errors_without_callbacks(enabled: bool):
    """Trace Equinox's runtime checks (``eqx.error_if``: a solve that ran out of steps, a
    non-finite input) as NaNs rather than as a raising host callback, which would keep the
    executable out of the compilation cache. A NaN loss or gradient rejects the step like
    the error did (``apply_if_finite``; the loop names the cause). Only tracing reads the
    mode, so entering this around every call costs nothing."""
    errors = getattr(equinox, "_errors", None)
    if not enabled or not hasattr(errors, "EQX_ON_ERROR"):
        yield
        return
    previous, errors.EQX_ON_ERROR = errors.EQX_ON_ERROR, "nan"
    try:
        yield
    finally:
        errors.EQX_ON_ERROR = previous


def _describe(error: RuntimeError, config: Config) -> str:
    """A one-line cause for an error raised inside a training step."""
    text = str(error)
    if "maximum number of solver steps" in text or "max_steps" in text:
        return (
            f"a solve reached max_steps={config.max_steps} (rtol={config.rtol}, atol={config.atol})"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:200]


class _StopOnInterrupt:
    """Turn the first Ctrl-C into a request that the loop honours between steps.

    A KeyboardInterrupt raised wherever the signal lands could fall inside a host callback
    of the compiled step, where XLA reports it as a RuntimeError (a failed step) instead of
    an interruption. A second Ctrl-C interrupts at once.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class TrainingFailed(RuntimeError):
    """Too many consecutive failed steps; the message names the cause and last checkpoint."""


def train(config: Config, *, stop_at: int | None = None) -> dict:
    """Train (or resume) the run in ``config.run_dir``; returns the final metrics.

    ``stop_at`` ends the run early after that step, with a checkpoint, as an interruption
    would (used by the resume test).
    """
    config.validate()
    run_dir = Path(config.run_dir)
    check_compatible(run_dir, config)
    dataset = build_dataset(config)  # bad data: stop here
    run_dir.mkdir(parents=True, exist_ok=True)
    lead = jax.process_index() == 0  # one process writes config, metrics and the bar
    if lead:
        write_data_spec(run_dir, dataset)
        (run_dir / CONFIG).write_text(config.to_json())

    enable_compilation_cache(config.compilation_cache)
    flow = build_flow(config, dataset.dim, getattr(dataset, "condition_dim", 0))
    optimizer = nnx.Optimizer(flow, build_optimizer(config), wrt=nnx.Param)
    # A failed evaluation solve is a NaN in the metrics, not the end of the run.
    evaluator = evaluation_flow(flow, tol=config.eval_tol, throw=False)
    # One training flow per tolerance (sharing the parameters), one objective per phase:
    # each pair is one compiled step, made once and reused.
    flows = {(config.rtol, config.atol): flow}
    no_callbacks = not config.count_backward
    checkpointer = Checkpointer(run_dir, keep=config.keep)
    key = jax.random.key(config.seed)
    start, elapsed = 0, 0.0
    if checkpointer.latest_step() is not None:
        like = checkpoint_tree(flow, optimizer, key, 0, 0.0)
        _, tree = checkpointer.restore(like)
        key, start, elapsed = restore_training_state(flow, optimizer, tree)
        print(f"resumed {run_dir} at step {start}")
    mesh = data_mesh()
    check_divisible(config.batch_size, mesh)
    replicate(flow, mesh)  # parameters on every device, like the batches they meet
    replicate(optimizer, mesh)
    devices = mesh.shape["data"]
    if lead:
        platform = jax.devices()[0].platform
        print(
            f"training on {devices} device{'s' * (devices > 1)} ({platform}), "
            f"{config.batch_size // devices} points per device"
        )
    # Held-out NLL in data units: the flow's NLL less the preprocessing's log-determinant.
    # Finite datasets hold out their validation split (the test split is for evaluation).
    held_out, held_out_log_det = dataset.held_out("validation", config.eval_size)
    end = config.iters if stop_at is None else min(stop_at, config.iters)

    metrics_path = run_dir / METRICS if lead else Path(os.devnull)
    metrics_file = open(metrics_path, "a")  # noqa: SIM115 (closed below)
    # get_terminal_size falls back to 80 columns where a pty reports width 0.
    bar = tqdm(
        range(start, end),
        initial=start,
        total=config.iters,
        desc=config.dataset,
        ncols=shutil.get_terminal_size().columns,
        disable=None if lead else True,
    )
    clock = time.perf_counter()
    completed = start
    last = {}
    failures = rejected_total = 0
    called = set()
    stop = _StopOnInterrupt()
    try:
        for step in bar:
            if stop.requested:
                raise KeyboardInterrupt
            data = dataset.train_batch(step, config.batch_size)
            objective = build_objective(config, step)
            # Flow matching makes no solve: one compiled step, whatever the tolerance.
            matching = isinstance(objective, FlowMatching)
            tol = (config.rtol, config.atol) if matching else training_tolerance(config, step)
            if tol not in flows:
                controller = diffrax.PIDController(rtol=tol[0], atol=tol[1])
                flows[tol] = flow.replace(stepsize_controller=controller)
            # Host-side randomness of the objective (flow matching's base samples) is a
            # pure function of (seed, step) too, so resumed runs repeat it.
            batch = objective.make_batch(data, np.random.default_rng([config.seed, step, 1]))
            batch = shard_batch(local_rows(batch), mesh)
            backward_evaluations.reset()
            started = time.perf_counter()
            try:
                with _errors_without_callbacks(no_callbacks):
                    loss, stats, metrics = train_step(
                        flows[tol], optimizer, batch, jax.random.fold_in(key, step), mesh, objective
                    )
                loss, cause = float(loss), None
                if not bool(stats.success):
                    cause = f"forward solve reached max_steps={config.max_steps}"
                elif not math.isfinite(loss):
                    cause = f"non-finite loss {loss}"
                elif not bool(optimizer.opt_state.last_finite[...]):
                    cause = "non-finite gradient (a backward solve that ran out of steps, say)"
            except RuntimeError as error:  # e.g. the backward solve ran out of steps
                # nnx.jit writes state back only on success: nothing was updated.
                loss, stats, cause = float("nan"), None, _describe(error, config)
            completed = done = step + 1
            if cause is not None:
                # apply_if_finite left parameters and optimizer state unchanged.
                failures += 1
                rejected_total += 1
                metrics_file.write(json.dumps({"step": done, "rejected_step": cause}) + "\n")
                if failures >= config.max_failures:
                    good = checkpointer.latest_step()
                    raise TrainingFailed(
                        f"{failures} consecutive failed steps (last: {cause}); last good "
                        f"checkpoint: step {good} in {run_dir / 'checkpoints/latest'}"
                    )
                continue
            failures = 0
            step_seconds = time.perf_counter() - started
            row = {
                "step": done,
                "train_loss": loss,
                "nfe_forward": int(stats.nfe),
                **({"nfe_backward": backward_evaluations.count} if config.count_backward else {}),
                "rejected": int(stats.rejected),
                "t1": float(jnp.sum(flow.end_times)),
                "rejected_steps_total": rejected_total,
                "devices": devices,
                **{name: float(value) for name, value in metrics.items()},
            }
            nfe = f"{row['nfe_forward']}/{row.get('nfe_backward', '-')}"
            bar.set_postfix(loss=f"{loss:.3f}", nfe=nfe)
            evaluate_now = done % config.eval_every == 0 or done == end
            if evaluate_now:
                started = time.perf_counter()
                with _errors_without_callbacks(no_callbacks):
                    row["test_nll"], row["test_nfe"] = held_out_nll(
                        evaluator, held_out, held_out_log_det, mesh
                    )
                row["eval_seconds"] = time.perf_counter() - started
            row["wall_time"] = elapsed + time.perf_counter() - clock
            # The step's own time (the first of a process, of a phase or of a tolerance
            # includes compiling it), and the clock, for timing from a command's start.
            row["step_seconds"] = step_seconds
            row["unix_time"] = time.time()
            if (objective, tol) not in called:
                row["first_call"] = True  # of this step function in this run: it compiles
                called.add((objective, tol))
            if evaluate_now or "first_call" in row or done % config.log_every == 0:
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
            if done % config.ckpt_every == 0 or done == end:
                checkpointer.save(
                    done,
                    checkpoint_tree(flow, optimizer, key, done, row["wall_time"]),
                    test_nll=row.get("test_nll"),
                )
            last = row
    except KeyboardInterrupt:
        # Save the last completed step, so that the next run resumes where this one stopped.
        checkpointer.save(
            completed,
            checkpoint_tree(flow, optimizer, key, completed, elapsed + time.perf_counter() - clock),
        )
        print(f"\ninterrupted: saved a checkpoint at step {completed} in {run_dir}")
        raise
    finally:
        stop.restore()
        bar.close()
        metrics_file.close()
        checkpointer.close()
    return last
