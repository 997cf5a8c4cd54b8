"""Evaluation: held-out NLL in data units over padded chunks of one shape, the exact-trace
evaluation flow, and `make evaluate` on a saved run (report, pictures, audit, exit codes)."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import cnfax
from cnfax.evaluation import EvalArgs, evaluate_run, evaluation_flow, held_out_nll, to_data_units

EVALUATE = Path(__file__).parents[1] / "experiments" / "evaluate.py"


def test_held_out_nll_pads_every_chunk_to_one_shape_and_converts_to_data_units(caplog):
    """300 and 179 rows in chunks of 128: one compiled shape for both, and the mean equals
    -mean(log p_flow + log_det) computed row by row."""
    flow = cnfax.CNF(cnfax.ConcatSquashMLP(2, (8,), rngs=nnx.Rngs(0)), t1=0.5)
    x = np.asarray(jax.random.normal(jax.random.key(1), (300, 2)))
    log_det = np.linspace(-2.0, 1.0, 300)
    reference = -np.mean(to_data_units(np.asarray(flow.log_prob(jnp.asarray(x))), log_det))
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        nll, nfe = held_out_nll(flow, x, log_det, chunk=128)
        nll_179, _ = held_out_nll(flow, x[:179], log_det[:179], chunk=128)
    shapes = {
        r.getMessage().split("with global shapes")[1][:200]
        for r in caplog.records
        if "Compiling jit(_sharded_log_prob)" in r.getMessage()
    }
    assert len(shapes) == 1, shapes
    assert abs(nll - reference) <= 1e-5 * (1 + abs(reference)) and nfe > 0
    reference_179 = -np.mean(
        to_data_units(np.asarray(flow.log_prob(jnp.asarray(x[:179]))), log_det[:179])
    )
    assert abs(nll_179 - reference_179) <= 1e-5 * (1 + abs(reference_179))


def test_the_evaluation_flow_uses_the_exact_trace_at_the_given_tolerance():
    field = cnfax.ConcatSquashMLP(2, (8,), rngs=nnx.Rngs(0))
    flow = cnfax.CNF(field, trace=cnfax.Hutchinson(), throw=False, count_backward=True)
    tight = evaluation_flow(flow, tol=1e-7)
    assert tight.trace == cnfax.Exact() and tight.options.throw
    assert not tight.options.count_backward
    assert tight.options.stepsize_controller.rtol == 1e-7
    assert tight.blocks[0] is flow.blocks[0]  # the same parameters


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
