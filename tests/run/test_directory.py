"""The run directory: parameters restore without an optimizer and without the training
loop; a run of another model is refused; training resumes over a corrupted or non-finite
latest checkpoint from the newest good one."""

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from cnfax.run.builders import build_optimizer
from cnfax.run.checkpoint import Checkpointer
from cnfax.run.directory import (
    checkpoint_tree,
    read_data_spec,
    restore_flow,
    restore_training_state,
)
from cnfax.run.model import build_flow
from cnfax.train import train
from cnfax.train.ema import EMA


def _params(flow):
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(flow, nnx.Param))]


def test_parameters_restore_without_building_an_optimizer(trained_run, monkeypatch):
    # Reference: the whole training state, restored into a flow and its optimizer.
    # The run averages its weights (the default EMA): the loaded flow is the average.
    assert trained_run.ema_decay > 0
    flow = build_flow(trained_run, 2)
    optimizer = nnx.Optimizer(flow, build_optimizer(trained_run), wrt=nnx.Param)
    ema = EMA(flow, trained_run.ema_decay)
    checkpointer = Checkpointer(trained_run.run_dir)
    template = checkpoint_tree(flow, optimizer, jax.random.key(0), 0, 0, ema)
    step, tree = checkpointer.restore(template)
    checkpointer.close()
    restore_training_state(flow, optimizer, tree, ema)

    def no_optimizer(*args, **kwargs):
        raise AssertionError("restoring parameters built an optimizer")

    monkeypatch.setattr(nnx, "Optimizer", no_optimizer)
    _, restored, restored_step = restore_flow(trained_run.run_dir)
    assert restored_step == step == 30
    for a, b in zip(_params(restored), _params(ema.flow), strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(  # and the average is not the trained weights
        not np.array_equal(a, b) for a, b in zip(_params(restored), _params(flow), strict=True)
    )
    assert read_data_spec(trained_run.run_dir)[0] == 2


def test_a_run_directory_with_another_model_is_refused(trained_run):
    other = dataclasses.replace(trained_run, hidden=(8,))
    with pytest.raises(ValueError, match="different model.*hidden"):
        train(other)


def _copy(run, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(run.run_dir, target)
    return dataclasses.replace(run, run_dir=str(target), iters=40)


def _resumed_steps(run_dir):
    rows = [json.loads(r) for r in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows]


def test_training_resumes_from_the_newest_good_checkpoint_over_a_corrupted_one(
    trained_run, tmp_path, capsys
):
    config = _copy(trained_run, tmp_path)
    for path in (Path(config.run_dir) / "checkpoints" / "latest" / "30").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])  # truncate
    with pytest.warns(UserWarning, match="step 30 .* unreadable"):
        assert train(config)["step"] == 40
    assert f"resumed {config.run_dir} at step 20" in capsys.readouterr().out
    assert _resumed_steps(config.run_dir)[-4:] == [25, 30, 35, 40]


def test_training_resumes_from_the_newest_good_checkpoint_over_a_non_finite_one(
    trained_run, tmp_path, capsys
):
    config = _copy(trained_run, tmp_path)
    checkpointer = Checkpointer(config.run_dir)
    like = checkpoint_tree(
        flow := build_flow(config, 2),
        nnx.Optimizer(flow, build_optimizer(config), wrt=nnx.Param),
        jax.random.key(0),
        0,
        0.0,
        EMA(flow, config.ema_decay),
    )
    _, tree = checkpointer.restore(like)
    poisoned = jax.tree.map(
        lambda v: v * np.nan if np.issubdtype(v.dtype, np.floating) else v,
        jax.tree.map(np.asarray, tree),
    )
    shutil.rmtree(Path(config.run_dir) / "checkpoints" / "latest" / "30")
    checkpointer.latest.reload()
    # Checkpointer.save refuses NaN, so write the poisoned step with Orbax directly.
    checkpointer.latest.save(30, args=ocp.args.StandardSave(poisoned))
    checkpointer.close()
    with pytest.warns(UserWarning, match="step 30 holds non-finite values"):
        assert train(config)["step"] == 40
    assert f"resumed {config.run_dir} at step 20" in capsys.readouterr().out


def test_a_run_directory_trained_with_another_preprocessing_is_refused(tmp_path):
    """A two-moons run saved with theta standardised (before its prior's box was part of the
    preprocessing) must not resume on box-mapped theta: same dimensions, other inputs."""
    from cnfax.data.dataset import make_dataset
    from cnfax.data.preprocess import Standardize
    from cnfax.run.directory import write_data_spec

    data = make_dataset("sbi-two-moons", seed=0, simulations=100)
    write_data_spec(tmp_path, data)
    write_data_spec(tmp_path, data)  # the same data again: accepted
    assert read_data_spec(tmp_path).preprocessing == data.preprocessing
    older = dataclasses.replace(data, preprocessing=Standardize.fit(data.raw("train")))
    with pytest.raises(ValueError, match="another preprocessing"):
        write_data_spec(tmp_path, older)


def test_a_run_trained_before_the_whitening_is_refused_naming_no_whiten(tmp_path):
    """A run saved unwhitened (--no-whiten, or before the whitening was the default) must
    not resume on whitened theta; the refusal lists both chains and names --no-whiten."""
    from cnfax.data.dataset import make_dataset
    from cnfax.run.directory import write_data_spec

    write_data_spec(tmp_path, make_dataset("sbi-two-moons", 0, simulations=100, whiten=False))
    whitened = make_dataset("sbi-two-moons", 0, simulations=100, whiten=True)
    with pytest.raises(
        ValueError, match=r"standardize\) than this data's \(truncation, then .*--no-whiten"
    ):
        write_data_spec(tmp_path, whitened)


def test_a_run_trained_with_the_logit_map_is_refused_naming_bounded_by_logit(tmp_path):
    """A run saved with the prior's box as its logit map (--bounded-by logit, or before the
    truncation was the default) must not resume on truncated theta; the refusal names
    --bounded-by logit."""
    from cnfax.data.dataset import make_dataset
    from cnfax.run.directory import write_data_spec

    write_data_spec(tmp_path, make_dataset("sbi-two-moons", 0, simulations=100, bounded_by="logit"))
    truncated = make_dataset("sbi-two-moons", 0, simulations=100)
    with pytest.raises(ValueError, match=r"\(box, then .*\(truncation, then .*--bounded-by logit"):
        write_data_spec(tmp_path, truncated)
