"""Data parallelism: 4 CPU devices in a subprocess (gradient equality, a short sharded run,
an indivisible batch), then the 4-device checkpoint resumed here on 1 device."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jax

from cnfax.config import Config
from cnfax.run import restore_flow
from cnfax.train import train


def test_four_devices_then_resume_on_one(tmp_path):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    script = Path(__file__).with_name("multidevice.py")
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["gradient_relative_error"] <= 1e-5
    assert report["test_nlls"][-1] < report["test_nlls"][0]

    assert jax.device_count() == 1
    config = Config.load(tmp_path / "sharded")
    final = train(dataclasses.replace(config, iters=25))  # resumes the 4-device run at 20
    assert final["step"] == 25
    _, _, step = restore_flow(tmp_path / "sharded")
    assert step == 25
    rows = [json.loads(r) for r in (tmp_path / "sharded/metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == [10, 20, 25], "steps 1-20 must not be re-run after the resume"
