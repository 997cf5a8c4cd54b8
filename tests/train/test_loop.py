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

import cnfax
from cnfax.data.dataset import split_rows
from cnfax.data.digits import load_digits
from cnfax.data.truncation import Truncation
from cnfax.evaluation import EvalArgs, evaluate_run
from cnfax.parallel import data_mesh
from cnfax.run.builders import build_optimizer
from cnfax.run.config import Config
from cnfax.run.directory import restore_flow
from cnfax.run.model import build_flow
from cnfax.train import TrainingFailed, train, train_step

SMALL = dict(SMALL_TRAINING, log_every=5)


def _params(flow):
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(flow, nnx.Param))]


def test_trained_run_lowers_the_validation_nll_and_writes_checkpoints(trained_run):
    run_dir = Path(trained_run.run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r["validation_nll"] for r in rows if "validation_nll" in r]
    assert len(evals) == 3 and evals[-1] < evals[0] - 0.2
    assert {
        "step",
        "train_loss",
        "nfe_forward",
        "rejected",
        "t1",
        "wall_time",
    } <= set(rows[-1])
    assert rows[-1]["nfe_forward"] > 0
    assert not any("nfe_backward" in r for r in rows)  # not counted by default (no callback)
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


RESUME_CASES = {
    # Also the backward solve's evaluations, counted by a host callback (not by default).
    "hutchinson": dict(dataset="8gaussians", trace="hutchinson", iters=8, count_backward=True),
    "flow-matching-ot": dict(
        dataset="8gaussians", objective="flow-matching", coupling="ot", iters=8
    ),
    "sbi-two-moons": dict(dataset="sbi-two-moons", simulations=500, iters=8),
    "digits": dict(
        dataset="digits",
        trace="hutchinson",
        hidden=(16,),
        batch_size=32,
        iters=6,
        eval_every=100,
        ckpt_every=100,
    ),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_resume_is_exact_with_random_traces_pairings_and_dequantisation(tmp_path, case):
    """Every random draw of a step (Hutchinson noise, flow-matching base samples and their
    OT pairing, the digits' dequantisation noise) is a pure function of (seed, step), so a
    run stopped half-way and resumed ends with the uninterrupted run's parameters."""
    options = dict(SMALL, **RESUME_CASES[case])
    whole = Config(run_dir=str(tmp_path / "whole"), **options)
    train(whole)
    parts = dataclasses.replace(whole, run_dir=str(tmp_path / "parts"))
    train(parts, stop_at=whole.iters // 2)
    train(parts)
    steps = [r["step"] for r in _rows(parts.run_dir)]
    assert steps == sorted(set(steps)), steps
    _, a, step_a = restore_flow(whole.run_dir)
    _, b, step_b = restore_flow(parts.run_dir)
    assert step_a == step_b == whole.iters
    for x, y in zip(_params(a), _params(b), strict=True):
        np.testing.assert_array_equal(x, y)
    if case == "digits":
        _check_load_of_a_digits_run(parts)
    counted = [r["nfe_backward"] for r in _rows(parts.run_dir) if "nfe_backward" in r]
    assert (len(counted) > 0) == whole.count_backward and all(n > 0 for n in counted)


def _check_load_of_a_digits_run(config):
    """cnfax.load of a digits run: log p(v) = log p_flow(g(v)) + log|det dg/dv| through the
    stored Dequantize -> Logit -> Standardize chain, computed here by hand in float64, and
    bits/dim = -mean log p(x + u) / (64 log 2) for the same uniform draws u."""
    model = cnfax.load(config.run_dir, which="latest")
    logit, standardize = model.preprocessing.steps[1:]
    images = split_rows(load_digits(), config.seed)["test"][:16].astype(np.float64)
    key = jax.random.key(5)
    v = images + np.asarray(jax.random.uniform(key, images.shape), np.float64)
    p = logit.alpha + (1 - 2 * logit.alpha) * v / 17
    y = (np.log(p) - np.log1p(-p) - np.asarray(standardize.mean)) / np.asarray(standardize.scale)
    log_det = np.sum(
        np.log(1 - 2 * logit.alpha) - np.log(17) - np.log(p) - np.log1p(-p), axis=1
    ) - np.sum(np.log(standardize.scale))
    by_hand = np.asarray(model.flow.log_prob(jnp.asarray(y, jnp.float32)), np.float64) + log_det
    np.testing.assert_allclose(np.asarray(model.log_prob(v)), by_hand, rtol=1e-5, atol=1e-3)
    bits = -np.mean(by_hand) / (64 * np.log(2))
    assert abs(model.bits_per_dim(images, key) - bits) < 1e-4
    assert model.levels == 17


def _start_trainer(run_dir, *flags, **popen):
    """experiments/train.py in a subprocess: a tiny model that would train for ever."""
    script = Path(__file__).parents[2] / "experiments" / "train.py"
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


def test_the_command_line_exits_2_for_an_invalid_config_and_1_after_max_failures(tmp_path):
    invalid = _start_trainer(
        tmp_path / "invalid", "--batch-size", "0", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = invalid.communicate(timeout=300)
    assert invalid.returncode == 2, err.decode()[-2000:]
    assert err.decode().startswith("error: invalid config: batch_size must be positive")
    assert not (tmp_path / "invalid").exists()
    failing = _start_trainer(
        tmp_path / "failing",
        "--max-steps",
        "2",
        "--max-failures",
        "2",
        "--batch-size",
        "16",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = failing.communicate(timeout=300)
    assert failing.returncode == 1, err.decode()[-2000:]
    assert "error: training stopped: 2 consecutive failed steps" in err.decode()


def test_a_short_conditional_run_trains_evaluates_and_loads(tmp_path):
    """The digits given their label: a table-free conditional run with Hutchinson traces,
    evaluated and loaded. (The sbi-* wiring of make evaluate, KL, C2ST and coverage, is
    checked on the two-moons run below.)"""
    config = Config(
        run_dir=str(tmp_path / "digits"),
        **dict(
            SMALL,
            iters=10,
            dataset="digits",
            conditional=True,
            trace="hutchinson",
            hidden=(16,),
            batch_size=32,
        ),
    )
    final = train(config)
    assert np.isfinite(final["validation_nll"])
    # Small checks at a loose tolerance: this test is about the wiring, not the numbers.
    result = evaluate_run(EvalArgs(config.run_dir, tol=1e-3, pictures=False))
    assert 0 <= result["classifier_accuracy"] <= 1
    assert result["worst_round_trip"] <= 1e-3 and np.isfinite(result["test_nll"])
    model = cnfax.load(config.run_dir, which="latest")
    assert model.condition_dim == 10
    draws = model.sample(jax.random.key(0), 4, condition=np.eye(10)[0])
    assert draws.shape == (4, model.dim) and np.all(np.isfinite(draws))
    with pytest.raises(ValueError, match="this CNF is conditional"):
        model.log_prob(draws)


def test_the_ema_weights_are_evaluated_checkpointed_and_loaded(tmp_path):
    """With --ema-decay, the checkpoint's "flow" (what load restores) is the average, the
    trained weights sit apart, and the validation NLL logged was the average's."""
    from cnfax.run.checkpoint import Checkpointer
    from cnfax.scoring import evaluation_flow, held_out_nll

    config = Config(
        dataset="8gaussians",
        iters=12,
        field="residual",
        activation="silu",
        ema_decay=0.9,
        run_dir=str(tmp_path / "ema"),
        **dict(SMALL, eval_every=12, ckpt_every=12, hidden=(16, 16)),
    )
    train(config)
    _, loaded, step = restore_flow(config.run_dir)
    assert step == 12
    trained = build_flow(config, 2)
    checkpointer = Checkpointer(config.run_dir)
    _, raw = checkpointer.restore_part("training_flow", nnx.to_pure_dict(nnx.state(trained)))
    checkpointer.close()
    from cnfax.run.directory import restore_into

    restore_into(trained, raw)
    gaps = [np.max(np.abs(a - b)) for a, b in zip(_params(loaded), _params(trained), strict=True)]
    assert max(gaps) > 1e-4  # the average is not the trained weights
    validation, log_det = cnfax.data.dataset.ToyStream("8gaussians", 0).held_out("validation", 256)
    nll, _ = held_out_nll(evaluation_flow(loaded, tol=config.eval_tol), validation, log_det)
    assert nll == pytest.approx(_rows(config.run_dir)[-1]["validation_nll"], abs=1e-4)


def test_patience_stops_a_run_whose_validation_nll_stops_improving(tmp_path, capsys, monkeypatch):
    """Validation NLLs 3.0, 2.5 (the best), 2.6, 2.7: with --patience 2 the run stops at
    the fourth evaluation (step 12), and the best checkpoint is the second's (step 6)."""
    import cnfax.train.loop as loop

    scores = iter([3.0, 2.5, 2.6, 2.7, 2.8, 2.9])
    monkeypatch.setattr(
        loop,
        "_validation",
        lambda run: {"validation_nll": next(scores), "validation_nfe": 0, "eval_seconds": 0.0},
    )
    config = Config(
        dataset="8gaussians",
        iters=200,
        patience=2,
        run_dir=str(tmp_path / "patient"),
        **dict(SMALL, eval_every=3, ckpt_every=100),
    )
    last = train(config)
    assert last["step"] == 12 and "stopped early at step 12" in capsys.readouterr().out
    assert [r["step"] for r in _rows(config.run_dir) if "validation_nll" in r] == [3, 6, 9, 12]
    assert restore_flow(config.run_dir, "best")[2] == 6
    assert restore_flow(config.run_dir, "latest")[2] == 12


def test_an_sbi_run_on_a_prior_box_loads_as_a_density_on_that_box(tmp_path, capsys):
    """Two moons' prior is U[-1, 1]^2, a truncation by default: its run models z = theta
    standardised, whitened given x (cnfax.data.whitening). The flow, rough after 8 steps,
    puts some of its draws outside the box (support_mass < 1), yet the loaded model's
    draws all lie inside it (rejected and drawn again), its log-density is -inf outside
    (no NaN, no error), and inside it is the flow's log-density of z plus the log-dets of
    the standardisation and the whitening, computed here by hand.
    make evaluate scores that bounded model: a finite grid KL, a C2ST well above 0.5 (0.97
    for such a run in a smoke test) on each of two observations, printed, and the
    conditional-Gaussian baseline's coverage beside it."""
    config = Config(
        run_dir=str(tmp_path / "moons"),
        **dict(SMALL, iters=8, dataset="sbi-two-moons", simulations=500),
    )
    train(config)
    model = cnfax.load(config.run_dir, which="latest")
    x_o = np.array([0.1, -0.2])
    draws = model.sample(jax.random.key(1), 2000, condition=x_o)
    assert np.all(np.abs(draws) < 1), np.abs(draws).max()
    assert model.support_mass(jax.random.key(2), x_o, n=2000) < 1
    outside = np.array([[1.0, 0.0], [0.3, -1.5], [-1.0, -1.0], [1e9, 0.5]])
    log_p_out = np.asarray(model.log_prob(outside, condition=x_o))
    assert np.all(log_p_out == -np.inf), log_p_out
    with pytest.raises(ValueError, match="NaN"):  # not a point at all: refused, not scored
        model.log_prob(np.array([np.nan, 0.0]), condition=x_o)
    theta = np.array([[0.2, -0.3], [-0.95, 0.99], [0.0, 0.0]])
    truncation, standardize, whitening = model.preprocessing.steps
    assert truncation == Truncation((-1.0, -1.0), (1.0, 1.0))
    mean, scale = np.asarray(standardize.mean), np.asarray(standardize.scale)
    u = (theta - mean) / scale
    condition = model.condition_preprocessing
    x_flow = (x_o - np.asarray(condition.mean)) / np.asarray(condition.scale)
    # the whitening: z = L^{-1} (u - x W - b), log-det -sum log L_ii
    tril = np.asarray(whitening.scale_tril)
    residual = u - x_flow @ np.asarray(whitening.weights) - np.asarray(whitening.bias)
    z = np.linalg.solve(tril, residual.T).T
    log_det = -np.sum(np.log(scale)) - np.sum(np.log(np.diag(tril)))
    flow_log_p = model.flow.log_prob(
        jnp.asarray(z, jnp.float32), condition=jnp.asarray(np.tile(x_flow, (3, 1)), jnp.float32)
    )
    by_hand = np.asarray(flow_log_p, np.float64) + log_det
    np.testing.assert_allclose(np.asarray(model.log_prob(theta, condition=x_o)), by_hand, rtol=1e-4)
    # make evaluate scores the same bounded model: its KL and C2ST are finite numbers,
    # reported and printed beside the conditional-Gaussian baseline's coverage
    small = EvalArgs(config.run_dir, tol=1e-3, pictures=False, coverage_pairs=10)
    small = dataclasses.replace(small, coverage_draws=10, c2st_observations=2, c2st_draws=200)
    capsys.readouterr()
    result = evaluate_run(small)
    posterior = result["posterior"]["model"]
    assert np.isfinite(posterior["kl"]["kl_mean"]) and posterior["kl"]["method"] == "grid"
    c2st = posterior["c2st"]
    assert len(c2st["c2st_per_observation"]) == 2 and c2st["draws"] == 200
    assert f"C2ST {c2st['c2st_mean']:.3f} (0.5 is indistinguishable; 2 observations x " in (
        capsys.readouterr().out
    )
    assert result["posterior"]["conditional Gaussian"]["coverage"]["pairs"] == 10
    assert result["worst_round_trip"] <= 1e-3 and np.isfinite(result["test_nll"])
    with pytest.raises(ValueError, match="this CNF is conditional"):
        model.log_prob(theta)
    assert 0.5 <= posterior["c2st"]["c2st_mean"] <= 1  # 8 steps: far from the reference
