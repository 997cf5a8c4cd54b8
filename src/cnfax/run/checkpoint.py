"""Orbax checkpoints of a training run: the last N steps, and the best by validation NLL.

A checkpoint is one pytree: the flow's state, the optimizer's state, the step, the PRNG
key and the data position, all as plain arrays (``nnx.to_pure_dict``). Two Orbax
CheckpointManagers share the run directory: ``checkpoints/latest`` keeps the last
``keep`` saves; ``checkpoints/best`` keeps the one with the lowest validation NLL
(runs saved before the rename recorded it as ``test_nll``, and still load); a variational
(--target) run records its -ELBO under that name, so its best has the highest ELBO. Orbax writes
each step to a temporary directory and renames it when complete, so a crash mid-save
leaves the previous checkpoints intact.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def _all_finite(tree) -> bool:
    return all(
        bool(np.all(np.isfinite(np.asarray(leaf))))
        for leaf in jax.tree.leaves(tree)
        if np.issubdtype(np.asarray(leaf).dtype, np.inexact)
    )


def _validation_nll(metrics: dict) -> float:
    """The best checkpoint's criterion, under its name before and after the rename."""
    return metrics["validation_nll"] if "validation_nll" in metrics else metrics["test_nll"]


class Checkpointer:
    """Save and restore training state under ``run_dir/checkpoints``."""

    def __init__(self, run_dir: str | Path, keep: int = 3):
        root = Path(run_dir).absolute() / "checkpoints"
        # The handler is named up front, so that metadata can be read before any save.
        handler = ocp.StandardCheckpointHandler
        self.latest = ocp.CheckpointManager(
            root / "latest",
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_handlers=handler(),
        )
        self.best = ocp.CheckpointManager(
            root / "best",
            item_handlers=handler(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, create=True, best_fn=_validation_nll, best_mode="min"
            ),
        )

    def save(self, step: int, tree: Any, validation_nll: float | None = None) -> None:
        """Save ``tree`` at ``step``; also as the best if ``validation_nll`` beats the best
        so far."""
        if not _all_finite(tree):
            raise ValueError(f"refusing to checkpoint non-finite values at step {step}")
        if step not in self.latest.all_steps():
            self.latest.save(step, args=ocp.args.StandardSave(tree))
        if validation_nll is not None and math.isfinite(validation_nll):
            metrics = {"validation_nll": validation_nll}
            self.best.save(step, args=ocp.args.StandardSave(tree), metrics=metrics)
        self.wait()

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore(self, like: Any, which: str = "latest") -> tuple[int, Any]:
        """Restore the latest (or ``which="best"``) checkpoint into the structure of ``like``.

        A checkpoint that cannot be read (truncated or corrupted files) or that holds
        non-finite values is skipped with a warning, and the next older one is tried.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self._restore_first_good(which, lambda manager, step: abstract, lambda t: t)

    def restore_part(self, key: str, like: Any, which: str = "latest") -> tuple[int, Any]:
        """Restore only ``tree[key]`` of a checkpoint (e.g. the flow without the
        optimizer), into the structure of ``like``; the other parts are read by their saved
        shapes onto one device and dropped. Falls back over bad checkpoints as
        :meth:`restore` does."""
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

        def abstract(manager, step):
            saved = manager.item_metadata(step).tree
            tree = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved
            )
            tree[key] = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
            return tree

        return self._restore_first_good(which, abstract, lambda tree: tree[key])

    def _restore_first_good(self, which, abstract, pick) -> tuple[int, Any]:
        manager = self.best if which == "best" else self.latest
        steps = [manager.best_step()] if which == "best" else []
        steps += sorted(manager.all_steps(), reverse=True)
        steps = list(dict.fromkeys(s for s in steps if s is not None))
        if not steps:
            raise FileNotFoundError(f"no {which} checkpoint in {manager.directory}")
        for step in steps:
            try:
                target = abstract(manager, step)
                tree = pick(manager.restore(step, args=ocp.args.StandardRestore(target)))
            except Exception as error:  # Orbax raises many types for unreadable files
                warnings.warn(
                    f"checkpoint step {step} in {manager.directory} is unreadable "
                    f"({type(error).__name__}); falling back to an older one",
                    stacklevel=3,
                )
                continue
            if not _all_finite(tree):
                warnings.warn(
                    f"checkpoint step {step} holds non-finite values; skipped", stacklevel=3
                )
                continue
            return step, tree
        raise FileNotFoundError(f"no readable {which} checkpoint in {manager.directory}")

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
