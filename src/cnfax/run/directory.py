"""A run directory: what training writes and what loading a trained model reads.

    run_dir/
      config.json        the options (cnfax.run.config.Config); its model part
                         (cnfax.run.model.ModelSpec) rebuilds the flow
      data.json          the flow's dimension and the preprocessing (data units <-> flow)
      metrics.jsonl      one row per logged step (written by cnfax.train)
      checkpoints/       Orbax checkpoints (cnfax.run.checkpoint): latest N and the best

      .lock              while a process trains here: its pid and host (cnfax.run.lock)

A checkpoint is one tree: the flow's state, the optimizer's state, the PRNG key, the step
and the elapsed time. :func:`restore_flow` reads the flow's part only, so a trained model
loads without building an optimizer or importing the training loop.

The readers raise :class:`RunDirectoryError` (a ValueError with a one-line message that
says what was expected) for a missing directory, a directory without a run, a damaged
config.json or data.json, a run without a checkpoint and checkpoints that fail to restore.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cnfax.core.flow import CNF
from cnfax.data.dataset import Dataset
from cnfax.data.preprocess import Box, Chain, Identity, Preprocessing, find_step, from_dict
from cnfax.data.truncation import Truncation
from cnfax.data.whitening import ConditionalWhitening
from cnfax.run.checkpoint import Checkpointer
from cnfax.run.model import COMPATIBILITY_FIELDS, CONFIG, ModelSpec, build_flow

DATA_SPEC = "data.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
_HOLDS = "a run directory holds config.json, data.json and checkpoints/ (written by make train)"


class RunDirectoryError(ValueError):
    """The run directory cannot be read; the one-line message says what was expected."""


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _read_json(path: Path, expected: str) -> dict:
    """The JSON object in ``path``; RunDirectoryError if it is unreadable or not one."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise RunDirectoryError(
            f"{path} is damaged ({_one_line(error)}): expected {expected}"
        ) from error
    if not isinstance(raw, dict):
        raise RunDirectoryError(
            f"{path} is damaged (it holds a {type(raw).__name__}): expected {expected}"
        )
    return raw


def read_run_config(run_dir: str | Path) -> dict:
    """The options saved in ``run_dir/config.json`` as a dict; RunDirectoryError when the
    directory is missing, holds no run, or its config.json is damaged."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunDirectoryError(f"no run directory {run_dir}: {_HOLDS}")
    if not run_dir.is_dir():
        raise RunDirectoryError(f"{run_dir} is not a directory: {_HOLDS}")
    if not (run_dir / CONFIG).exists():
        raise RunDirectoryError(f"no run in {run_dir} (no {CONFIG}): {_HOLDS}")
    return _read_json(run_dir / CONFIG, "the JSON object of options that make train writes")


def read_model_spec(run_dir: str | Path) -> ModelSpec:
    """The run's model description (:class:`ModelSpec`), or RunDirectoryError."""
    raw = read_run_config(run_dir)
    try:
        return ModelSpec.from_dict(raw)
    except (TypeError, ValueError) as error:
        raise RunDirectoryError(
            f"{Path(run_dir) / CONFIG} is damaged ({_one_line(error)}): expected the "
            "options that make train writes"
        ) from error


def check_compatible(run_dir: Path, spec: ModelSpec) -> None:
    """Refuse to resume a run directory whose saved model is another one."""
    if not (run_dir / CONFIG).exists():
        return
    saved = read_model_spec(run_dir)
    clashes = [
        f"{name}: saved {getattr(saved, name)!r}, now {getattr(spec, name)!r}"
        for name in COMPATIBILITY_FIELDS
        if getattr(saved, name) != getattr(spec, name)
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


def _kinds(preprocessing) -> str:
    """A chain's maps by kind, in order (box, then standardize, ...)."""
    steps = preprocessing.steps if isinstance(preprocessing, Chain) else (preprocessing,)
    return ", then ".join(step.kind for step in steps)


def _whitening_hint(saved, new) -> str:
    """The ways out when the conditional whitening or the prior box's form differs."""
    whitened = [find_step(p, ConditionalWhitening) is not None for p in (saved, new)]
    hint = " (or --no-whiten: this run was trained without it)" if whitened == [False, True] else ""
    logit = [find_step(p, Box) is not None for p in (saved, new)]
    truncated = find_step(new, Truncation) is not None
    if logit == [True, False] and truncated:
        hint += " (or --bounded-by logit: this run maps the prior's box by its logit)"
    return hint


def write_data_spec(run_dir: Path, dataset: Dataset) -> None:
    """Record the data's dimensions and preprocessing; refuse data of other dimensions."""
    path = run_dir / DATA_SPEC
    condition_dim = dataset.condition_dim
    if path.exists():
        saved = read_data_spec(run_dir)
        if (saved.dim, saved.condition_dim) != (dataset.dim, condition_dim):

            def shape(dim, condition_dim):
                return f"dimension {dim}" + (f" given {condition_dim}" if condition_dim else "")

            raise ValueError(
                f"{run_dir} holds a model of {shape(saved.dim, saved.condition_dim)}, but the "
                f"data has {shape(dataset.dim, condition_dim)}; use another --run-dir"
            )
        # a stream (the toys) has no condition, hence the Identity the reader fills in
        condition = getattr(dataset, "condition_preprocessing", Identity())
        if (saved.preprocessing, saved.condition_preprocessing) != (
            dataset.preprocessing,
            condition,
        ):
            # e.g. a run of an SBI task saved before its prior's box or the whitening was
            # part of its preprocessing: resuming would train on other inputs than the
            # saved model's
            raise ValueError(
                f"{run_dir} holds a model trained with another preprocessing "
                f"({_kinds(saved.preprocessing)}) than this data's "
                f"({_kinds(dataset.preprocessing)}); use another --run-dir"
                + _whitening_hint(saved.preprocessing, dataset.preprocessing)
            )
        return  # the preprocessing the model was trained with, as saved
    spec = {"dim": dataset.dim, "preprocessing": dataset.preprocessing.to_dict()}
    if condition_dim:
        spec["condition_dim"] = condition_dim
        spec["condition_preprocessing"] = dataset.condition_preprocessing.to_dict()
    path.write_text(json.dumps(spec, indent=2))


def read_data_spec(run_dir: str | Path) -> DataSpec:
    """The run's :class:`DataSpec`; runs from before data.json are 2-D toys. A damaged
    data.json raises RunDirectoryError."""
    path = Path(run_dir) / DATA_SPEC
    if not path.exists():
        return DataSpec(2, Identity())
    expected = 'the JSON object {"dim": ..., "preprocessing": ...} that make train writes'
    spec = _read_json(path, expected)
    try:
        condition = spec.get("condition_preprocessing", {"kind": "identity"})
        data = DataSpec(
            int(spec["dim"]),
            from_dict(spec["preprocessing"]),
            int(spec.get("condition_dim", 0)),
            from_dict(condition),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        reason = f"no {error}" if isinstance(error, KeyError) else _one_line(error)
        raise RunDirectoryError(f"{path} is damaged ({reason}): expected {expected}") from error
    if data.dim < 1 or data.condition_dim < 0:
        raise RunDirectoryError(f"{path} is damaged (dim {data.dim}): expected {expected}")
    return data


def checkpoint_tree(
    flow: CNF, optimizer: nnx.Optimizer, key, step: int, elapsed: float, ema=None
) -> dict:
    """The training state as one tree of plain arrays. ``"flow"`` is the flow that is
    evaluated and loaded: with an EMA of the weights (:class:`cnfax.train.ema.EMA`), the
    averaged weights, and the trained ones go under ``"training_flow"``."""
    extra = {}
    if ema is not None:
        extra = {
            "training_flow": nnx.to_pure_dict(nnx.state(flow)),
            "ema_updates": np.asarray(ema.updates, np.int64),
        }
        flow = ema.flow
    return {
        **extra,
        "flow": nnx.to_pure_dict(nnx.state(flow)),
        "optimizer": nnx.to_pure_dict(nnx.state(optimizer)),
        "key": jax.random.key_data(key),
        "step": np.asarray(step, np.int64),
        "elapsed": np.asarray(elapsed, np.float64),
    }


def restore_into(module: nnx.Module, pure: dict) -> None:
    """Write a pure-dict state (from a checkpoint) into an NNX module, in place."""
    state = nnx.state(module)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)


def restore_training_state(flow, optimizer, tree, ema=None) -> tuple[jax.Array, int, float]:
    """Put a checkpoint tree back into the flow, optimizer (and EMA); return (key, step,
    elapsed)."""
    if ema is not None:
        restore_into(flow, tree["training_flow"])
        restore_into(ema.flow, tree["flow"])
        ema.updates = int(tree["ema_updates"])
    else:
        restore_into(flow, tree["flow"])
    restore_into(optimizer, tree["optimizer"])
    key = jax.random.wrap_key_data(jnp.asarray(tree["key"]))
    return key, int(tree["step"]), float(tree["elapsed"])


def restore_flow(run_dir: str | Path, which: str = "latest") -> tuple[ModelSpec, CNF, int]:
    """Rebuild a run's flow from its model description and restore its parameters from the
    latest (or best) checkpoint; the optimizer's state stays on disk. An unreadable newest
    checkpoint falls back to an older one (with a warning); RunDirectoryError when the run
    cannot be read or no checkpoint restores."""
    run_dir = Path(run_dir)
    model = read_model_spec(run_dir)
    data = read_data_spec(run_dir)
    try:
        flow = build_flow(model, data.dim, data.condition_dim)
    except (TypeError, ValueError) as error:
        raise RunDirectoryError(
            f"{run_dir / CONFIG} describes no buildable model ({_one_line(error)}): expected "
            "the options that make train writes"
        ) from error
    if not _steps_saved(run_dir / CHECKPOINTS / which):
        if which == "best" and _steps_saved(run_dir / CHECKPOINTS / "latest"):
            raise RunDirectoryError(
                f"no best checkpoint in {run_dir} yet: the best is saved when training "
                "evaluates the validation NLL (every --eval-every steps); try --which latest"
            )
        raise RunDirectoryError(
            f"no checkpoint in {run_dir} yet: make train saves one every --ckpt-every steps "
            "and at its end; train (or resume) the run first"
        )
    try:
        checkpointer = Checkpointer(run_dir)
    except Exception as error:  # Orbax raises many types for unreadable files
        raise RunDirectoryError(
            f"the checkpoints in {run_dir / CHECKPOINTS} cannot be read "
            f"({type(error).__name__}: {_one_line(error)}): expected the Orbax checkpoints "
            "that make train writes; the files are damaged"
        ) from error
    try:
        step, pure = checkpointer.restore_part("flow", nnx.to_pure_dict(nnx.state(flow)), which)
    except FileNotFoundError as error:  # every saved step failed to restore
        raise RunDirectoryError(
            f"no {which} checkpoint in {run_dir / CHECKPOINTS / which} could be restored "
            f"(see the warnings above): expected Orbax checkpoints of the model that "
            f"{CONFIG} and {DATA_SPEC} describe; the files are damaged, or those were edited"
        ) from error
    finally:
        checkpointer.close()
    restore_into(flow, pure)
    return model, flow, step


def _steps_saved(directory: Path) -> bool:
    """Whether an Orbax manager's directory holds a finished step (a numbered folder)."""
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())
