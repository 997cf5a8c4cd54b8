"""A run directory: what training writes and what loading a trained model reads.

    run_dir/
      config.json        the Config (cnfax.config), so that the model can be rebuilt
      data.json          the flow's dimension and the preprocessing (data units <-> flow)
      metrics.jsonl      one row per logged step (written by cnfax.train)
      checkpoints/       Orbax checkpoints (cnfax.checkpoint): latest N and the best

A checkpoint is one tree: the flow's state, the optimizer's state, the PRNG key, the step
and the elapsed time. :func:`restore_flow` reads the flow's part only, so a trained model
loads without building an optimizer or importing the training loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cnfax.checkpoint import Checkpointer
from cnfax.config import MODEL_FIELDS, Config, build_flow
from cnfax.data.dataset import Dataset
from cnfax.data.preprocess import Identity, Preprocessing, from_dict
from cnfax.flow import CNF

CONFIG = "config.json"
DATA_SPEC = "data.json"
METRICS = "metrics.jsonl"


def check_compatible(run_dir: Path, config: Config) -> None:
    """Refuse to resume a run directory whose saved config describes another model."""
    if not (run_dir / CONFIG).exists():
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


class DataSpec(NamedTuple):
    """What a run's flow was trained on: the dimension and preprocessing of x, and of the
    condition y for conditional data (condition_dim 0 otherwise)."""

    dim: int
    preprocessing: Preprocessing
    condition_dim: int = 0
    condition_preprocessing: Preprocessing = Identity()


def write_data_spec(run_dir: Path, dataset: Dataset) -> None:
    """Record the data's dimensions and preprocessing; refuse data of other dimensions."""
    path = run_dir / DATA_SPEC
    condition_dim = getattr(dataset, "condition_dim", 0)
    if path.exists():
        saved = read_data_spec(run_dir)
        if (saved.dim, saved.condition_dim) != (dataset.dim, condition_dim):

            def shape(dim, condition_dim):
                return f"dimension {dim}" + (f" given {condition_dim}" if condition_dim else "")

            raise ValueError(
                f"{run_dir} holds a model of {shape(saved.dim, saved.condition_dim)}, but the "
                f"data has {shape(dataset.dim, condition_dim)}; use another --run-dir"
            )
        return  # keep the preprocessing the model was trained with
    spec = {"dim": dataset.dim, "preprocessing": dataset.preprocessing.to_dict()}
    if condition_dim:
        spec["condition_dim"] = condition_dim
        spec["condition_preprocessing"] = dataset.condition_preprocessing.to_dict()
    path.write_text(json.dumps(spec, indent=2))


def read_data_spec(run_dir: str | Path) -> DataSpec:
    """The run's :class:`DataSpec`; runs from before data.json are 2-D toys."""
    path = Path(run_dir) / DATA_SPEC
    if not path.exists():
        return DataSpec(2, Identity())
    spec = json.loads(path.read_text())
    condition = spec.get("condition_preprocessing", {"kind": "identity"})
    return DataSpec(
        int(spec["dim"]),
        from_dict(spec["preprocessing"]),
        int(spec.get("condition_dim", 0)),
        from_dict(condition),
    )


def checkpoint_tree(flow: CNF, optimizer: nnx.Optimizer, key, step: int, elapsed: float) -> dict:
    """The training state as one tree of plain arrays."""
    return {
        "flow": nnx.to_pure_dict(nnx.state(flow)),
        "optimizer": nnx.to_pure_dict(nnx.state(optimizer)),
        "key": jax.random.key_data(key),
        "step": np.asarray(step, np.int64),
        "data_index": np.asarray(step, np.int64),  # batches are indexed by step
        "elapsed": np.asarray(elapsed, np.float64),
    }


def restore_into(module: nnx.Module, pure: dict) -> None:
    """Write a pure-dict state (from a checkpoint) into an NNX module, in place."""
    state = nnx.state(module)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)


def restore_training_state(flow, optimizer, tree) -> tuple[jax.Array, int, float]:
    """Put a checkpoint tree back into the flow and optimizer; return (key, step, elapsed)."""
    restore_into(flow, tree["flow"])
    restore_into(optimizer, tree["optimizer"])
    key = jax.random.wrap_key_data(jnp.asarray(tree["key"]))
    return key, int(tree["step"]), float(tree["elapsed"])


def restore_flow(run_dir: str | Path, which: str = "latest") -> tuple[Config, CNF, int]:
    """Rebuild a run's flow from its config and restore its parameters from the latest (or
    best) checkpoint; the optimizer's state stays on disk."""
    run_dir = Path(run_dir)
    config = Config.load(run_dir)
    spec = read_data_spec(run_dir)
    flow = build_flow(config, spec.dim, spec.condition_dim)
    checkpointer = Checkpointer(run_dir, keep=config.keep)
    try:
        step, pure = checkpointer.restore_part("flow", nnx.to_pure_dict(nnx.state(flow)), which)
    finally:
        checkpointer.close()
    restore_into(flow, pure)
    return config, flow, step
