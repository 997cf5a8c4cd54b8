"""Evaluation: held-out NLL in data units over padded chunks of one shape, the exact-trace
evaluation flow, and `make evaluate` on a saved run (report, pictures, audit, exit codes)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from cnfax.evaluation import EvalArgs, evaluate_run

EVALUATE = Path(__file__).parents[2] / "experiments" / "evaluate.py"


def test_evaluate_loads_the_run_and_its_audit_passes(trained_run, capsys):
    args = EvalArgs(run_dir=trained_run.run_dir, test_size=1000, audit_examples=3)
    result = evaluate_run(args)
    assert np.isfinite(result["test_nll"]) and result["step"] == 30
    assert result["devices"] == 1 and result["test_points"] == 1000
    assert result["worst_round_trip"] <= 1e-3
    assert result["worst_log_density_mismatch"] <= 1e-2
    assert "test NLL" in capsys.readouterr().out
    assert (Path(trained_run.run_dir) / "panels.png").stat().st_size > 10_000
    assert (Path(trained_run.run_dir) / "evaluation_latest.json").exists()


def _evaluate_cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, str(EVALUATE), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_evaluate_exits_1_when_the_audit_finds_a_flow_that_does_not_invert(trained_run):
    """At rtol = atol = 0.5 the evaluation solve is too coarse to invert: the audit must
    fail the command (exit 1) and say so, not report a number as if it were sound."""
    done = _evaluate_cli(
        "--run-dir",
        trained_run.run_dir,
        "--tol",
        "0.5",
        "--test-size",
        "200",
        "--no-pictures",
        "--audit-examples",
        "3",
    )
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "AUDIT FAILED" in done.stderr
