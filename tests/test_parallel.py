"""Data parallelism: 4 CPU devices in a subprocess (gradient equality, a short sharded run,
an indivisible batch), then the 4-device checkpoint resumed here on 1 device."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

import cnfax
from cnfax.run.config import Config
from cnfax.train import train

FOUR_DEVICES = dict(
    os.environ,
    XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4",
    JAX_PLATFORMS="cpu",
)


def test_sharded_gradients_and_held_out_nll_on_four_devices(tmp_path):
    script = Path(__file__).with_name("multidevice.py")
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=FOUR_DEVICES,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["gradient_relative_error"] <= 1e-5
    assert "does not divide over 4 devices" in report["indivisible"]


def test_make_train_on_four_devices_runs_to_the_end_then_resumes_and_loads_on_one(tmp_path):
    """The user's whole path: experiments/train.py on 4 devices trains, evaluates (sharded
    held-out NLL), audits and draws; the run then resumes and loads on 1 device."""
    run_dir = tmp_path / "sharded"
    script = Path(__file__).parents[1] / "experiments" / "train.py"
    flags = ["--iters", "20", "--batch-size", "64", "--hidden", "16", "16", "--lr", "1e-2"]
    flags += ["--eval-every", "10", "--ckpt-every", "10", "--eval-size", "256"]
    done = subprocess.run(
        [sys.executable, str(script), *flags, "--run-dir", str(run_dir)],
        env=FOUR_DEVICES,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "training on 4 devices (cpu), 16 points per device" in output
    evaluation = json.loads((run_dir / "evaluation_latest.json").read_text())
    assert evaluation["devices"] == 4 and np.isfinite(evaluation["test_nll"])
    assert evaluation["worst_round_trip"] <= 1e-3
    assert (run_dir / "panels.png").stat().st_size > 10_000
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    nlls = [r["validation_nll"] for r in rows if "validation_nll" in r]
    assert all(r["devices"] == 4 for r in rows) and nlls[-1] < nlls[0] - 0.1, nlls

    assert jax.device_count() == 1
    config = Config.load(run_dir)
    final = train(dataclasses.replace(config, iters=25))  # resumes the 4-device run at 20
    assert final["step"] == 25 and final["devices"] == 1
    model = cnfax.load(run_dir, which="latest")
    assert model.step == 25
    assert np.all(np.isfinite(np.asarray(model.log_prob(np.zeros((3, 2), np.float32)))))
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "validation_nll" in r]
    assert steps == [10, 20, 25], "steps 1-20 must not be re-run after the resume"
