"""The training loop of ``make train``: Optax steps, the validation NLL, Orbax
checkpoints, resume, metrics, on every device of every host.

Every step is a pure function of (parameters, optimizer state, base key, step index): the
batch is ``dataset.train_batch(step, n)``, the objective's host-side randomness (flow
matching's base draws) comes from (seed, step), and the step's key is
``fold_in(key, step)``. A run interrupted at step k and resumed from its checkpoint
therefore repeats exactly the steps an uninterrupted run takes. The objective of each
step (maximum likelihood, flow matching, or flow matching then maximum likelihood) and
its tolerance are functions of the step too (:mod:`cnfax.run.builders`).

A --target run (variational inference) takes the same steps on the reverse KL: its batch
is --batch-size base draws from the (seed, step) generator
(:mod:`cnfax.run.target_problem`), and its validation is the importance diagnostics of a
fixed held-out set of base draws (:func:`target_validation`): ELBO, log Z_hat with its
standard error, ESS fraction, and |log Z_hat - log Z| and KL(q || p) where log Z is known.
The checkpoint kept as best, and early stopping, follow the lowest
:func:`selection_criterion`: the validation NLL, or a --target run's -ELBO (its
``negative_elbo``: the ELBO is the objective itself, a bound that only a better q raises).
"""

from __future__ import annotations

import shutil
import time

import jax
import numpy as np
from tqdm import tqdm

from cnfax.importance import diagnose
from cnfax.parallel import local_rows, shard_batch
from cnfax.run.builders import build_objective, training_tolerance
from cnfax.run.config import Config
from cnfax.run.directory import METRICS
from cnfax.scoring import forward_log_densities_in_chunks, held_out_nll
from cnfax.train.metrics import MetricsLog, step_row
from cnfax.train.runtime import StopOnInterrupt, errors_without_callbacks
from cnfax.train.setup import TrainingRun, set_up


class TrainingFailed(RuntimeError):
    """Too many consecutive failed steps; the message names the cause and last checkpoint."""


def train(config: Config, *, stop_at: int | None = None) -> dict:
    """Train (or resume) the run in ``config.run_dir``; returns the last logged metrics.

    ``stop_at`` ends the run early after that step, with a checkpoint, as an interruption
    would (used by the resume test).
    """
    run = set_up(config)
    if run.lead:
        platform = jax.devices()[0].platform
        print(
            f"training on {run.devices} device{'s' * (run.devices > 1)} ({platform}), "
            f"{config.batch_size // run.devices} points per device"
        )
    end = config.iters if stop_at is None else min(stop_at, config.iters)
    log = MetricsLog(run.run_dir / METRICS, lead=run.lead)
    bar = tqdm(  # get_terminal_size falls back to 80 columns where a pty reports width 0
        range(run.start, end),
        initial=run.start,
        total=config.iters,
        desc=config.target or config.dataset,
        ncols=shutil.get_terminal_size().columns,
        disable=None if run.lead else True,
    )
    clock, completed, last = time.perf_counter(), run.start, {}
    best, since_best = float("inf"), 0  # early stopping (counts from this process's start)
    eval_every, patience = config.schedule(run.dataset_rows)
    stop = StopOnInterrupt()
    try:
        for step in bar:
            if stop.requested:
                raise KeyboardInterrupt
            row = _one_step(run, step, log)
            completed = done = step + 1
            if row is None:
                continue
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", nfe=row["nfe_forward"])
            evaluate = done % eval_every == 0 or done == end
            improved = False
            criterion = None
            if evaluate:
                row.update(_validation(run))
                criterion = selection_criterion(row)
                improved = criterion < best  # False for NaN: a failed evaluation
                best, since_best = (criterion, 0) if improved else (best, since_best + 1)
            stopping = bool(patience) and since_best >= patience
            row["wall_time"] = run.elapsed + time.perf_counter() - clock
            if evaluate or "first_call" in row or done % config.log_every == 0:
                log.write(row)
            # With early stopping, a new best is saved when it is seen, so that it is kept.
            keep_best = improved and bool(patience)
            if done % config.ckpt_every == 0 or done == end or stopping or keep_best:
                run.checkpoint(done, row["wall_time"], criterion)
            last = row
            if stopping:
                name = "validation NLL" if config.target is None else "-ELBO"
                print(
                    f"\nstopped early at step {done}: no lower {name} in "
                    f"{patience} evaluations (best {best:.4f}, kept as best)"
                )
                break
    except KeyboardInterrupt:
        # Save the last completed step, so that the next run resumes where this one stopped.
        run.checkpoint(completed, run.elapsed + time.perf_counter() - clock)
        print(f"\ninterrupted: saved a checkpoint at step {completed} in {run.run_dir}")
        raise
    finally:
        stop.restore()
        bar.close()
        log.close()
        run.checkpointer.close()
        run.release()  # the run directory's lock
    return last


def _one_step(run: TrainingRun, step: int, log: MetricsLog) -> dict | None:
    """Take training step ``step`` (0-based): its metrics row, or None when it was
    rejected (logged; too many in a row end the run)."""
    config = run.config
    objective = build_objective(config, step)
    data = run.dataset.train_batch(step, config.batch_size)
    batch = objective.make_batch(data, np.random.default_rng([config.seed, step, 1]))
    batch = shard_batch(local_rows(batch), run.mesh)
    key = jax.random.fold_in(run.key, step)
    outcome = run.steps.run(objective, training_tolerance(config, step), batch, key)
    if outcome.cause is None and run.ema is not None:
        run.ema.update(run.flow)
    if outcome.cause is not None:
        log.write({"step": step + 1, "rejected_step": outcome.cause})
        failures = run.steps.consecutive_failures
        if failures >= config.max_failures:
            good = run.checkpointer.latest_step()
            raise TrainingFailed(
                f"{failures} consecutive failed steps (last: {outcome.cause}); last good "
                f"checkpoint: step {good} in {run.run_dir / 'checkpoints/latest'}"
            )
        return None
    return step_row(
        step + 1,
        outcome,
        run.flow,
        counted=config.count_backward,
        rejected_total=run.steps.rejected_total,
        devices=run.devices,
    )


def selection_criterion(row: dict) -> float:
    """What selects the best checkpoint and drives early stopping, lowest best: the
    validation NLL, or a --target run's -ELBO on its held-out base draws."""
    return row["validation_nll"] if "validation_nll" in row else row["negative_elbo"]


def _validation(run: TrainingRun) -> dict:
    """The validation NLL in data units (exact trace at --eval-tol) and its cost; for a
    --target run, :func:`target_validation`."""
    if run.config.target is not None:
        return target_validation(run)
    started = time.perf_counter()
    with errors_without_callbacks(not run.config.count_backward):
        nll, nfe = held_out_nll(run.evaluator, run.validation, run.validation_log_det, run.mesh)
    return {
        "validation_nll": nll,
        "validation_nfe": nfe,
        "eval_seconds": time.perf_counter() - started,
    }


def target_validation(run: TrainingRun) -> dict:
    """A --target run's validation: the importance diagnostics (:func:`cnfax.importance.
    diagnose`) of the evaluator's draws T(z0) of the held-out base draws z0 (exact trace
    at --eval-tol), with ``negative_elbo`` = -ELBO, the selection criterion, and the cost.
    A failed solve or a non-finite target makes them NaN: never a selected checkpoint."""
    started = time.perf_counter()
    problem = run.dataset
    with errors_without_callbacks(not run.config.count_backward):
        _, log_q, log_p, nfe = forward_log_densities_in_chunks(
            run.evaluator, problem.target, run.validation, mesh=run.mesh
        )
    found = diagnose(log_p, log_q, problem.log_normalizer)
    row = {
        "elbo": found.elbo,
        "negative_elbo": -found.elbo,
        "log_z_hat": found.log_z_hat,
        "log_z_hat_se": found.log_z_hat_se,
        "ess_fraction": found.ess_fraction,
    }
    if found.log_z is not None:
        row.update(log_z_error=found.log_z_error, kl=found.kl)
    return {**row, "validation_nfe": nfe, "eval_seconds": time.perf_counter() - started}
