"""The training loop: maximum likelihood with Optax, Orbax checkpoints, resume, metrics.

Every step is a pure function of (parameters, optimizer state, base key, step index): the
batch is ``train_batch(dataset, seed, step)`` and the Hutchinson key is
``fold_in(key, step)``. A run interrupted at step k and resumed from its checkpoint
therefore repeats exactly the steps an uninterrupted run takes.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from cnfax.checkpoint import Checkpointer
from cnfax.data.dataset import Dataset, make_dataset
from cnfax.data.preprocess import Identity, Preprocessing, from_dict
from cnfax.experiment import MODEL_FIELDS, Config, build_flow, build_objective, build_optimizer
from cnfax.flow import CNF
from cnfax.objectives import MaximumLikelihood
from cnfax.parallel import (
    check_divisible,
    data_mesh,
    data_parallel_loss_and_grad,
    data_parallel_nll,
    shard_batch,
)
from cnfax.stats import backward_evaluations
from cnfax.trace import Exact


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


@functools.partial(nnx.jit, static_argnames="mesh")
def mean_nll(flow: CNF, x, mesh: Mesh):
    """Mean negative log-likelihood (nats) of a sharded batch, and the solve's statistics."""
    return data_parallel_nll(flow, x, mesh)


def local_rows(batch: np.ndarray) -> np.ndarray:
    """This process's share of a global batch (every process generates the same batch)."""
    rows = len(batch) // jax.process_count()
    return batch[jax.process_index() * rows : (jax.process_index() + 1) * rows]


def evaluation_flow(flow: CNF) -> CNF:
    """The same parameters with the exact trace (reported likelihoods are never estimates)."""
    return flow.replace(trace=Exact(), count_backward=False)


def held_out_nll(
    flow: CNF, x: np.ndarray, mesh: Mesh | None = None, chunk: int = 2000
) -> tuple[float, int]:
    """Exact-trace NLL over x (nats) and the NFE of its costliest chunk's solve, in
    sharded chunks of one shape (one compilation)."""
    mesh = data_mesh() if mesh is None else mesh
    chunk -= chunk % mesh.shape["data"]
    total, nfe = 0.0, 0
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk]
        if len(part) < chunk:  # pad the last chunk to the compiled shape
            padded = np.concatenate([part, x[: chunk - len(part)]])
            logp, stats = flow.log_prob_and_stats(jnp.asarray(padded))
            total -= float(np.sum(np.asarray(logp)[: len(part)]))
            nfe = max(nfe, int(stats.nfe))
            continue
        nll, stats = mean_nll(flow, shard_batch(local_rows(part), mesh), mesh)
        total += float(nll) * len(part)
        nfe = max(nfe, int(stats.nfe))
    return total / len(x), nfe


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


def _checkpoint_tree(flow, optimizer, key, step, elapsed) -> dict:
    return {
        "flow": nnx.to_pure_dict(nnx.state(flow)),
        "optimizer": nnx.to_pure_dict(nnx.state(optimizer)),
        "key": jax.random.key_data(key),
        "step": np.asarray(step, np.int64),
        "data_index": np.asarray(step, np.int64),  # batches are indexed by step
        "elapsed": np.asarray(elapsed, np.float64),
    }


def _restore_into(flow, optimizer, tree) -> tuple[jax.Array, int, float]:
    state = nnx.state(flow)
    nnx.replace_by_pure_dict(state, tree["flow"])
    nnx.update(flow, state)
    opt_state = nnx.state(optimizer)
    nnx.replace_by_pure_dict(opt_state, tree["optimizer"])
    nnx.update(optimizer, opt_state)
    key = jax.random.wrap_key_data(jnp.asarray(tree["key"]))
    return key, int(tree["step"]), float(tree["elapsed"])


def _check_resumable(run_dir: Path, config: Config) -> None:
    saved_path = run_dir / "config.json"
    if not saved_path.exists():
        return
    saved = Config.load(run_dir)
    clashes = [
        f"{name}: saved {getattr(saved, name)!r}, now {getattr(config, name)!r}"
        for name in MODEL_FIELDS
        if getattr(saved, name) != getattr(config, name)
    ]
    if clashes:
        raise ValueError(
            f"{run_dir} holds a run with a different model ({'; '.join(clashes)}); "
            "use another --run-dir"
        )


DATA_SPEC = "data.json"  # the flow's dimension and the preprocessing, kept with the run


def write_data_spec(run_dir: Path, dataset: Dataset) -> None:
    """Record the data's dimension and preprocessing; refuse data of another dimension."""
    path = run_dir / DATA_SPEC
    if path.exists():
        saved_dim, _ = read_data_spec(run_dir)
        if saved_dim != dataset.dim:
            raise ValueError(
                f"{run_dir} holds a model of dimension {saved_dim}, but the data has "
                f"dimension {dataset.dim}; use another --run-dir"
            )
        return  # keep the preprocessing the model was trained with
    spec = {"dim": dataset.dim, "preprocessing": dataset.preprocessing.to_dict()}
    path.write_text(json.dumps(spec, indent=2))


def read_data_spec(run_dir: str | Path) -> tuple[int, Preprocessing]:
    """(dimension, preprocessing) of a run; runs from before data.json are 2-D toys."""
    path = Path(run_dir) / DATA_SPEC
    if not path.exists():
        return 2, Identity()
    spec = json.loads(path.read_text())
    return int(spec["dim"]), from_dict(spec["preprocessing"])


def load_run(run_dir: str | Path, which: str = "latest") -> tuple[Config, CNF, int]:
    """Rebuild a run's flow from its config and restore its latest (or best) checkpoint."""
    run_dir = Path(run_dir)
    config = Config.load(run_dir)
    flow = build_flow(config, read_data_spec(run_dir)[0])
    optimizer = nnx.Optimizer(flow, build_optimizer(config), wrt=nnx.Param)
    checkpointer = Checkpointer(run_dir, keep=config.keep)
    like = _checkpoint_tree(flow, optimizer, jax.random.key(0), 0, 0.0)
    step, tree = checkpointer.restore(like, which)
    _restore_into(flow, optimizer, tree)
    checkpointer.close()
    return config, flow, step


def train(config: Config, *, stop_at: int | None = None) -> dict:
    """Train (or resume) the run in ``config.run_dir``; returns the final metrics.

    ``stop_at`` ends the run early after that step, with a checkpoint, as an interruption
    would (used by the resume test).
    """
    config.validate()
    run_dir = Path(config.run_dir)
    _check_resumable(run_dir, config)
    dataset = make_dataset(config.dataset, config.seed, config.data)  # bad data: stop here
    run_dir.mkdir(parents=True, exist_ok=True)
    lead = jax.process_index() == 0  # one process writes config, metrics and the bar
    if lead:
        write_data_spec(run_dir, dataset)
        (run_dir / "config.json").write_text(config.to_json())

    flow = build_flow(config, dataset.dim)
    optimizer = nnx.Optimizer(flow, build_optimizer(config), wrt=nnx.Param)
    evaluator = evaluation_flow(flow)
    objective = build_objective(config)
    checkpointer = Checkpointer(run_dir, keep=config.keep)
    key = jax.random.key(config.seed)
    start, elapsed = 0, 0.0
    if checkpointer.latest_step() is not None:
        like = _checkpoint_tree(flow, optimizer, key, 0, 0.0)
        _, tree = checkpointer.restore(like)
        key, start, elapsed = _restore_into(flow, optimizer, tree)
        print(f"resumed {run_dir} at step {start}")
    mesh = data_mesh()
    check_divisible(config.batch_size, mesh)
    # Held-out NLL in data units: the flow's NLL less the preprocessing's log-determinant.
    # Finite datasets hold out their validation split (the test split is for evaluation).
    held_out, held_out_log_det = dataset.held_out("validation", config.eval_size)
    end = config.iters if stop_at is None else min(stop_at, config.iters)

    metrics_path = run_dir / "metrics.jsonl" if lead else Path(os.devnull)
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
    stop = _StopOnInterrupt()
    try:
        for step in bar:
            if stop.requested:
                raise KeyboardInterrupt
            data = dataset.train_batch(step, config.batch_size)
            # Host-side randomness of the objective (flow matching's base samples) is a
            # pure function of (seed, step) too, so resumed runs repeat it.
            batch = objective.make_batch(data, np.random.default_rng([config.seed, step, 1]))
            batch = shard_batch(local_rows(batch), mesh)
            backward_evaluations.reset()
            try:
                loss, stats, metrics = train_step(
                    flow, optimizer, batch, jax.random.fold_in(key, step), mesh, objective
                )
                loss, cause = float(loss), None
                if not bool(stats.success):
                    cause = f"forward solve reached max_steps={config.max_steps}"
                elif not math.isfinite(loss):
                    cause = f"non-finite loss {loss}"
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
            row = {
                "step": done,
                "train_loss": loss,
                "nfe_forward": int(stats.nfe),
                "nfe_backward": backward_evaluations.count,
                "rejected": int(stats.rejected),
                "t1": float(jnp.sum(flow.end_times)),
                "rejected_steps_total": rejected_total,
                **{name: float(value) for name, value in metrics.items()},
            }
            bar.set_postfix(loss=f"{loss:.3f}", nfe=f"{row['nfe_forward']}/{row['nfe_backward']}")
            evaluate_now = done % config.eval_every == 0 or done == end
            if evaluate_now:
                started = time.perf_counter()
                nll, row["test_nfe"] = held_out_nll(evaluator, held_out, mesh)
                row["test_nll"] = nll - float(np.mean(held_out_log_det))
                row["eval_seconds"] = time.perf_counter() - started
            row["wall_time"] = elapsed + time.perf_counter() - clock
            if evaluate_now or done % config.log_every == 0:
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
            if done % config.ckpt_every == 0 or done == end:
                checkpointer.save(
                    done,
                    _checkpoint_tree(flow, optimizer, key, done, row["wall_time"]),
                    test_nll=row.get("test_nll"),
                )
            last = row
    except KeyboardInterrupt:
        # Save the last completed step, so that the next run resumes where this one stopped.
        checkpointer.save(
            completed,
            _checkpoint_tree(
                flow, optimizer, key, completed, elapsed + time.perf_counter() - clock
            ),
        )
        print(f"\ninterrupted: saved a checkpoint at step {completed} in {run_dir}")
        raise
    finally:
        stop.restore()
        bar.close()
        metrics_file.close()
        checkpointer.close()
    return last
