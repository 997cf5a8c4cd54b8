"""Evaluation: held-out NLL in data units over padded chunks of one shape, the exact-trace
evaluation flow, and `make evaluate` on a saved run (report, pictures, audit, exit codes)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import SMALL_TRAINING

from cnfax.evaluation import EvalArgs, evaluate_run
from cnfax.run.config import Config
from cnfax.train import train

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


def test_evaluate_exits_1_when_the_audit_finds_a_flow_that_does_not_invert(tmp_path):
    """At rtol = atol = 0.5 the evaluation solve of a flow trained at lr 1e-2 without
    RNODE's regularisers or an average of its weights is too coarse to invert (round trips
    miss by about 7e-3, seven times the threshold; the default recipe's smoother flows
    invert even there): the audit must fail the command (exit 1) and say so, not report a
    number as if it were sound."""
    sharp = Config(
        dataset="8gaussians",
        iters=30,
        run_dir=str(tmp_path / "sharp"),
        **dict(SMALL_TRAINING, eval_every=30, ckpt_every=30),
        kinetic_energy_weight=0.0,
        jacobian_norm_weight=0.0,
        ema_decay=0.0,
        lr_schedule="constant",
    )
    train(sharp)
    done = _evaluate_cli(
        "--run-dir",
        sharp.run_dir,
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


def test_an_sbi_report_without_a_reference_posterior_says_c2st_is_unavailable(tmp_path):
    """SLCP has no reference posterior in cnfax: KL and C2ST are marked unavailable (with
    the reason, in the report and its summary) while coverage is still computed."""
    from cnfax.data.dataset import make_dataset
    from cnfax.evaluation.baselines import ConditionalGaussian
    from cnfax.evaluation.conditional_report import sbi_report, sbi_summary

    data = make_dataset("sbi-slcp", 0, simulations=200)
    model = ConditionalGaussian.fit(data.raw("train"), data.conditions["train"])
    report = sbi_report(model, data, 0, tmp_path, pictures=False, pairs=5, draws=5)
    reason = "sbi-slcp has no reference posterior in cnfax"
    assert report["model"]["c2st"] == {"unavailable": reason}
    assert report["model"]["coverage"]["pairs"] == 5
    assert f"C2ST unavailable ({reason})" in sbi_summary(report)
