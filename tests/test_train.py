"""Training: a short run lowers the loss and checkpoints; resume equals an uninterrupted run;
evaluate works on a saved run and its audit passes; bad configs are refused."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import SMALL_TRAINING

from cnfax.config import Config, build_flow, build_optimizer
from cnfax.parallel import data_mesh
from cnfax.run import restore_flow
from cnfax.train import TrainingFailed, train, train_step

SMALL = dict(SMALL_TRAINING, log_every=5)


def _params(flow):
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(flow, nnx.Param))]


def test_trained_run_lowers_the_test_nll_and_writes_checkpoints(trained_run):
    run_dir = Path(trained_run.run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r["test_nll"] for r in rows if "test_nll" in r]
    assert len(evals) == 3 and evals[-1] < evals[0] - 0.2
    assert {
        "step",
        "train_loss",
        "nfe_forward",
        "nfe_backward",
        "rejected",
        "t1",
        "wall_time",
    } <= set(rows[-1])
    assert rows[-1]["nfe_backward"] > 0 and rows[-1]["nfe_forward"] > 0
    assert json.loads((run_dir / "config.json").read_text())["iters"] == 30
    assert sorted(
        int(p.name) for p in (run_dir / "checkpoints/latest").iterdir() if p.name.isdigit()
    ) == [10, 20, 30]


def _rows(run_dir):
    return [json.loads(r) for r in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_interrupted_and_resumed_run_equals_uninterrupted_run(tmp_path, trained_run, capsys):
    """The resumed run starts at the checkpoint's step (it says so, and no step is logged
    twice) and ends with the uninterrupted run's parameters, bit for bit."""
    config = dataclasses.replace(trained_run, run_dir=str(tmp_path / "resumed"), iters=30)
    train(config, stop_at=17)  # checkpoint at 17 (end of the interrupted run)
    capsys.readouterr()
    train(config)  # resumes at 17
    assert f"resumed {config.run_dir} at step 17" in capsys.readouterr().out
    steps = [r["step"] for r in _rows(config.run_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == 30, steps
    assert [s for s in steps if s > 17][0] in (18, 20), "the resumed run starts after step 17"
    _, resumed, step = restore_flow(config.run_dir)
    _, uninterrupted, _ = restore_flow(trained_run.run_dir)
    assert step == 30
    for a, b in zip(_params(resumed), _params(uninterrupted), strict=True):
        np.testing.assert_array_equal(a, b)


def _start_trainer(run_dir, *flags, **popen):
    """experiments/train.py in a subprocess: a tiny model that would train for ever."""
    script = Path(__file__).parents[1] / "experiments" / "train.py"
    cmd = [
        sys.executable,
        str(script),
        "--iters",
        "100000",
        "--run-dir",
        str(run_dir),
        "--hidden",
        "8",
        "--eval-every",
        "100000",
        "--no-pictures",
        *flags,
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen(cmd, env=env, **popen)


def test_ctrl_c_saves_a_checkpoint_and_the_next_run_resumes(tmp_path):
    """SIGINT during training: exit code 130, a checkpoint at the last completed step."""
    run_dir = tmp_path / "interrupted"
    proc = _start_trainer(
        run_dir,
        "--batch-size",
        "32",
        "--ckpt-every",
        "100000",
        "--log-every",
        "1",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 3
    ):
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, output
    assert "interrupted: saved a checkpoint at step" in output
    saved = [int(p.name) for p in (run_dir / "checkpoints/latest").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and saved[0] >= 3
    config = dataclasses.replace(Config.load(run_dir), iters=saved[0] + 2)
    assert train(config)["step"] == saved[0] + 2
    steps = [r["step"] for r in _rows(run_dir)]
    # The resumed run starts after the saved step: no step is done (and logged) twice.
    assert steps == sorted(set(steps)) and steps[-2:] == [saved[0] + 1, saved[0] + 2], steps


def test_failed_steps_change_nothing_and_stop_the_run_with_the_cause(tmp_path):
    """max_steps=2 makes every forward solve fail: each step is rejected, parameters stay at
    their initial values, and after max_failures steps the run stops naming the cause."""
    config = Config(
        dataset="8gaussians",
        iters=50,
        run_dir=str(tmp_path / "failing"),
        max_steps=2,
        max_failures=3,
        **SMALL,
    )
    with pytest.raises(TrainingFailed, match=r"3 consecutive failed steps.*max_steps=2"):
        train(config)
    rows = [
        json.loads(line)
        for line in (tmp_path / "failing" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows if "rejected_step" in r] == [1, 2, 3]
    assert not (tmp_path / "failing" / "checkpoints" / "latest" / "1").exists()


@pytest.mark.parametrize(
    "max_steps, x",
    [
        (4096, jnp.full((8, 2), 1e30)),  # finite input whose log-density overflows
        (2, jnp.ones((8, 2))),  # a forward solve that runs out of steps
    ],
    ids=["non-finite-loss", "failed-solve"],
)
def test_a_rejected_step_leaves_parameters_and_optimizer_unchanged(max_steps, x):
    config = Config(**dict(SMALL, max_steps=max_steps))
    flow = build_flow(config, 2)
    optimizer = nnx.Optimizer(flow, build_optimizer(config), wrt=nnx.Param)
    before = _params(flow)
    opt_before = [np.asarray(v) for v in jax.tree.leaves(nnx.state(optimizer))]
    try:
        loss, stats, _ = train_step(flow, optimizer, x, jax.random.key(0), data_mesh())
        assert not (np.isfinite(float(loss)) and bool(stats.success))
    except RuntimeError as error:  # as in the loop: a solve that raised rejects the step
        assert "max_steps" in str(error) or "maximum number" in str(error), str(error)[-500:]
    for a, b in zip(_params(flow), before, strict=True):
        np.testing.assert_array_equal(a, b)
    opt_after = [np.asarray(v) for v in jax.tree.leaves(nnx.state(optimizer))]
    # at most the step and failure counters move (integers and flags); Adam's moments do not
    changed = [a for a, b in zip(opt_after, opt_before, strict=True) if not np.array_equal(a, b)]
    assert all(not np.issubdtype(a.dtype, np.floating) for a in changed)


def test_sigkill_during_a_checkpoint_save_resumes_from_the_last_complete_one(tmp_path):
    """Kill -9 the trainer the moment Orbax has a save in flight (its temporary directory
    exists); the next run must resume from the newest complete checkpoint."""
    run_dir = tmp_path / "killed"
    proc = _start_trainer(
        run_dir,
        "--batch-size",
        "16",
        "--ckpt-every",
        "1",
        "--keep",
        "2",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = run_dir / "checkpoints" / "latest"
    caught_mid_save = False
    deadline = time.time() + 240
    while time.time() < deadline and not caught_mid_save:
        if latest.exists():
            entries = [p.name for p in latest.iterdir()]
            complete = [n for n in entries if n.isdigit()]
            caught_mid_save = len(complete) >= 2 and any("tmp" in n for n in entries)
        if not caught_mid_save:
            time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert caught_mid_save, "never saw a save in flight"
    complete = sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit())
    config = Config.load(run_dir)
    _, _, step = restore_flow(run_dir)
    assert step == complete[-1]
    final = train(dataclasses.replace(config, iters=step + 2, ckpt_every=1))
    assert final["step"] == step + 2
