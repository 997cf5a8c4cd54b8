"""make train --target: variational inference from the command line. A short run raises
its held-out ELBO and keeps the highest as best; resume is exact; a target that is NaN
somewhere has its steps rejected; a bad target spec is refused before anything is
written, with exit status 2 and a one-line error naming it."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import SMALL_TRAINING

from cnfax.run.config import Config
from cnfax.run.directory import restore_flow
from cnfax.train import TrainingFailed, train

VI_SMALL = dict(SMALL_TRAINING, log_every=5, target="u1")  # as conftest's target_run


def _rows(run_dir):
    return [json.loads(r) for r in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _params(flow):
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(flow, nnx.Param))]


def test_a_target_run_raises_its_held_out_elbo_and_keeps_the_highest(target_run):
    """The held-out ELBO is scored on the same 256 base draws at every evaluation (common
    random numbers), so its change is the weights' doing. Measured: -1.51 at step 10 to
    -0.34 at step 40 (seed 0; ESS fraction 0.30 to 0.39); the test asks for a rise of
    0.3, a quarter of that."""
    rows = _rows(target_run.run_dir)
    evals = [r for r in rows if "elbo" in r]
    assert [r["step"] for r in evals] == [10, 20, 30, 40]
    keys = {"elbo", "negative_elbo", "log_z_hat", "log_z_hat_se", "ess_fraction"}
    assert keys | {"log_z_error", "kl"} <= set(evals[-1])  # U1's log Z is known
    for r in evals:
        assert all(np.isfinite(r[k]) for k in keys), r
        assert r["negative_elbo"] == -r["elbo"]
        assert 0 < r["ess_fraction"] <= 1
        assert r["kl"] == pytest.approx(grid_log_z() - r["elbo"])
        assert r["log_z_error"] == pytest.approx(abs(r["log_z_hat"] - grid_log_z()))
        assert r["elbo"] <= r["log_z_hat"] + 1e-9  # Jensen, on the same draws
    assert evals[-1]["elbo"] > evals[0]["elbo"] + 0.3, [r["elbo"] for r in evals]
    assert "validation_nll" not in evals[-1] and "batch_elbo" in rows[-1]
    # The best checkpoint is the evaluation with the highest held-out ELBO.
    _, _, best_step = restore_flow(target_run.run_dir, "best")
    assert best_step == max(evals, key=lambda r: r["elbo"])["step"]
    data = json.loads((Path(target_run.run_dir) / "data.json").read_text())
    assert data == {"dim": 2, "preprocessing": {"kind": "identity"}}


def grid_log_z():
    from cnfax.targets import grid_log_normalizer

    return grid_log_normalizer("u1")


def test_a_resumed_target_run_equals_the_uninterrupted_one(tmp_path):
    """Each step's base draws come from the (seed, step) generator and the held-out draws
    from their own stream, so stopping half-way and resuming changes nothing (here with
    the sticking-the-landing estimator, whose step makes a second, inverse solve)."""
    whole = Config(run_dir=str(tmp_path / "whole"), iters=8, estimator="stl", **VI_SMALL)
    train(whole)
    parts = dataclasses.replace(whole, run_dir=str(tmp_path / "parts"))
    train(parts, stop_at=4)
    train(parts)
    steps = [r["step"] for r in _rows(parts.run_dir)]
    assert steps == sorted(set(steps)), steps
    _, a, step_a = restore_flow(whole.run_dir)
    _, b, step_b = restore_flow(parts.run_dir)
    assert step_a == step_b == 8
    for x, y in zip(_params(a), _params(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert _rows(whole.run_dir)[-1]["elbo"] == _rows(parts.run_dir)[-1]["elbo"]


def test_steps_on_a_target_that_is_nan_somewhere_are_rejected(tmp_path):
    """helpers.nan_where_positive is NaN on half the plane: every batch of 64 base draws
    meets it, so every step's loss is NaN, each is rejected (logged with its cause), the
    run stops after --max-failures, and no checkpoint holds a changed (or NaN) weight."""
    config = Config(
        run_dir=str(tmp_path / "nan"),
        iters=20,
        max_failures=3,
        **dict(VI_SMALL, target="helpers:nan_where_positive"),
    )
    with pytest.raises(TrainingFailed, match="3 consecutive failed steps .*non-finite loss"):
        train(config)
    rows = _rows(config.run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["rejected_step"].startswith("non-finite loss") for r in rows)


def _train_command(run_dir, *flags):
    script = Path(__file__).parents[2] / "experiments" / "train.py"
    cmd = [sys.executable, str(script), "--run-dir", str(run_dir), "--no-pictures", *flags]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--target", "nope"], "unknown target 'nope'"),
        (["--target", "math:nope"], "target 'math:nope': module 'math' has no 'nope'"),
        (["--target", "math:sqrt"], "target 'math:sqrt' has no positive integer 'dim'"),
        (["--target", "u1", "--dataset", "moons"], "--target 'u1' fits q .*: --dataset cannot"),
        (["--estimator", "stl"], "--estimator goes with --target"),
    ],
)
def test_a_bad_target_exits_2_with_a_one_line_error_naming_it(tmp_path, flags, message):
    """Refused by Config.validate before the run directory is made."""
    done = _train_command(tmp_path / "run", *flags)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid config: "), done.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "run").exists()
