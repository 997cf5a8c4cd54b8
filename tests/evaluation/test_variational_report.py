"""make evaluate on a variational (--target) run: the importance diagnostics over many
fresh draws, mode coverage by the stated rule, the pictures, and cnfax.load of the run."""

import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SMALL_TRAINING

import cnfax
from cnfax.evaluation import EvalArgs, evaluate_run
from cnfax.evaluation.variational_report import mode_coverage
from cnfax.importance import diagnose
from cnfax.run.config import Config
from cnfax.targets import grid_log_normalizer, u1
from cnfax.train import train

KEYS = ("elbo", "log_z_hat", "log_z_hat_se", "ess_fraction", "log_z", "log_z_error", "kl")


def test_evaluate_reports_the_diagnostics_of_a_target_run(target_run, capsys, tmp_path):
    run_dir = Path(tmp_path / "u1")
    shutil.copytree(target_run.run_dir, run_dir)
    args = EvalArgs(run_dir=str(run_dir), which="best", test_size=4096, audit_examples=3)
    result = evaluate_run(args)
    assert result["target"] == "u1" and result["draws"] == 4096 and result["tol"] == 1e-6
    assert all(math.isfinite(result[k]) for k in KEYS), result
    assert result["log_z"] == pytest.approx(grid_log_normalizer("u1"))
    assert result["kl"] == pytest.approx(result["log_z"] - result["elbo"])
    assert result["log_z_error"] == pytest.approx(abs(result["log_z_hat"] - result["log_z"]))
    assert 0 < result["ess_fraction"] <= 1 and result["elbo"] <= result["log_z_hat"]
    assert result["non_finite_draws"] == 0 and "mode_coverage" not in result
    assert result["worst_round_trip"] <= 1e-3
    saved = json.loads((run_dir / "evaluation_best.json").read_text())
    assert saved == json.loads(json.dumps(result))
    for name in result["pictures"]:
        assert (run_dir / name).stat().st_size > 10_000, name
    assert set(result["pictures"]) == {"target_panels.png", "trajectory.png", "training_curves.png"}
    out = capsys.readouterr().out
    assert "u1 step" in out and "ESS fraction" in out and "log Z_hat" in out

    # cnfax.load: a density that samples and gives log q. Its draws, scored by the
    # inverse solve, estimate the same ELBO as the report's forward solve: the two means
    # of log w (4096 and 2048 independent draws) differ by less than 5 standard errors of
    # their difference (a false alarm once in about 1.7 million runs for Gaussian means).
    model = cnfax.load(run_dir, which="best")
    z = model.sample(jax.random.key(7), 2048)
    assert z.shape == (2048, 2) and np.all(np.isfinite(z))
    log_q = np.asarray(model.log_prob(z), np.float64)
    log_target = -np.asarray(u1(jnp.asarray(z, jnp.float32)), np.float64)  # p~ = exp(-U1)
    mine = diagnose(log_target, log_q, result["log_z"])
    spread = np.std(log_target - log_q)
    se = spread * math.sqrt(1 / 2048 + 1 / 4096)
    assert abs(mine.elbo - result["elbo"]) < 5 * se, (mine.elbo, result["elbo"], se)


def test_mode_coverage_counts_modes_with_at_least_one_percent_of_the_draws():
    """1000 draws: 500 at mode 0, 490 at mode 1, 10 (exactly 1 %) at mode 2, none at 3."""
    modes = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    rng = np.random.default_rng(0)
    z = np.concatenate(
        [modes[i] + rng.normal(0, 0.5, (n, 2)) for i, n in enumerate([500, 490, 10])]
    )
    found = mode_coverage(modes, z)
    assert found["draws_nearest_each"] == [500, 490, 10, 0]
    assert found["covered"] == 3 and found["modes"] == 4 and "1%" in found["rule"]
    assert mode_coverage(modes, z[:-1])["covered"] == 2  # 9 of 999 is below 1 %


def test_evaluate_on_a_mixture_run_says_how_many_modes_it_covers(tmp_path):
    """Two steps on the 10-d mixture: the report counts the draws nearest each of its 8
    modes (all of them, whatever the flow learnt) and applies the 1 % rule to the count."""
    options = dict(SMALL_TRAINING, eval_every=2, ckpt_every=2, pictures=False)
    config = Config(target="mixture", iters=2, run_dir=str(tmp_path / "mix"), **options)
    train(config)
    args = EvalArgs(run_dir=config.run_dir, test_size=1000, audit_examples=1, pictures=False)
    coverage = evaluate_run(args)["mode_coverage"]
    counts = coverage["draws_nearest_each"]
    assert coverage["modes"] == 8 and len(counts) == 8 and sum(counts) == 1000
    assert coverage["covered"] == sum(c >= 10 for c in counts)
