"""Everything a training run starts from: the checked options, the data, the run
directory's description files, the flow and optimizer (resumed from the latest
checkpoint when there is one), the device mesh and the held-out validation set."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from cnfax.core.flow import CNF
from cnfax.data.dataset import Dataset
from cnfax.parallel import check_divisible, data_mesh, replicate
from cnfax.run.builders import build_dataset, build_optimizer
from cnfax.run.checkpoint import Checkpointer
from cnfax.run.config import Config
from cnfax.run.directory import (
    CONFIG,
    check_compatible,
    checkpoint_tree,
    restore_training_state,
    write_data_spec,
)
from cnfax.run.lock import RunLock
from cnfax.run.model import build_flow
from cnfax.run.target_problem import TargetProblem, build_problem
from cnfax.scoring import evaluation_flow
from cnfax.train.ema import EMA
from cnfax.train.runtime import enable_compilation_cache
from cnfax.train.step import Steps


@dataclasses.dataclass
class TrainingRun:
    """A run ready to take its next step."""

    config: Config
    run_dir: Path
    dataset: Dataset | TargetProblem  # the data, or a --target run's target
    flow: CNF
    optimizer: nnx.Optimizer
    steps: Steps
    ema: EMA | None  # the average of the weights, evaluated and saved as "flow"
    evaluator: CNF  # the validation NLL's flow: exact trace, --eval-tol, NaN on failure
    checkpointer: Checkpointer
    mesh: Mesh
    key: jax.Array
    start: int  # the first step to take (0, or the resumed checkpoint's)
    elapsed: float  # training seconds before this process
    validation: object  # held-out rows (or conditional batch) in the flow's space, or a
    # --target run's held-out base draws
    validation_log_det: np.ndarray | None
    lead: bool  # process 0 writes files and draws the progress bar
    lock: RunLock | None = None  # the lead's lock on run_dir, released by train()

    @property
    def devices(self) -> int:
        return self.mesh.shape["data"]

    @property
    def dataset_rows(self) -> int | None:
        """The training split's rows (None for a stream or a target)."""
        splits = getattr(self.dataset, "splits", None)
        return None if splits is None else len(splits["train"])

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def checkpoint(self, step: int, elapsed: float, validation_nll: float | None = None):
        """Save the state; ``validation_nll`` is the selection criterion, lowest best (a
        --target run passes its -ELBO: :func:`cnfax.train.loop.selection_criterion`)."""
        tree = checkpoint_tree(self.flow, self.optimizer, self.key, step, elapsed, self.ema)
        self.checkpointer.save(step, tree, validation_nll=validation_nll)


def set_up(config: Config) -> TrainingRun:
    """Check the options and the data before anything is written; then write the run's
    description, build the flow and optimizer, resume from the latest checkpoint, and
    place the parameters on every device."""
    config = config.validate().resolved()
    run_dir = Path(config.run_dir)
    check_compatible(run_dir, config.model_spec())
    if config.target is None:
        dataset = build_dataset(config)  # bad data: stop here
    else:
        dataset = build_problem(config.target, config.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    lead = jax.process_index() == 0
    lock = RunLock.acquire(run_dir) if lead else None  # one trainer per run directory
    try:
        return _set_up_locked(config, run_dir, dataset, lead, lock)
    except BaseException:  # an error or Ctrl-C before train() holds the run: let go
        if lock is not None:
            lock.release()
        raise


def _set_up_locked(config, run_dir, dataset, lead, lock) -> TrainingRun:
    if lead:
        write_data_spec(run_dir, dataset)
        (run_dir / CONFIG).write_text(config.to_json())
    enable_compilation_cache(config.compilation_cache)
    flow = build_flow(config.model_spec(), dataset.dim, dataset.condition_dim)
    optimizer = nnx.Optimizer(flow, build_optimizer(config), wrt=nnx.Param)
    ema = EMA(flow, config.ema_decay) if config.ema_decay else None
    checkpointer = Checkpointer(run_dir, keep=config.keep)
    key, start, elapsed = jax.random.key(config.seed), 0, 0.0
    if checkpointer.latest_step() is not None:
        _, tree = checkpointer.restore(checkpoint_tree(flow, optimizer, key, 0, 0.0, ema))
        key, start, elapsed = restore_training_state(flow, optimizer, tree, ema)
        print(f"resumed {run_dir} at step {start}")
    mesh = data_mesh()
    check_divisible(config.batch_size, mesh)
    replicate(flow, mesh)  # parameters on every device, like the batches they meet
    replicate(optimizer, mesh)
    if ema is not None:
        replicate(ema.flow, mesh)
    # Finite datasets hold out their validation split (the test split is for evaluation);
    # a --target run holds out fixed base draws, scored by the importance diagnostics.
    validation, validation_log_det = dataset.held_out("validation", config.eval_size)
    return TrainingRun(
        config=config,
        run_dir=run_dir,
        dataset=dataset,
        flow=flow,
        optimizer=optimizer,
        steps=Steps(flow, optimizer, mesh, callbacks=config.count_backward),
        ema=ema,
        # A failed evaluation solve is a NaN in the metrics, not the end of the run.
        evaluator=evaluation_flow(
            flow if ema is None else ema.flow, tol=config.eval_tol, throw=False
        ),
        checkpointer=checkpointer,
        mesh=mesh,
        key=key,
        start=start,
        elapsed=elapsed,
        validation=validation,
        validation_log_det=validation_log_det,
        lead=lead,
        lock=lock,
    )
