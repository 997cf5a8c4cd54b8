"""The training recipe: its schedules (training tolerance, objective, learning rate) are pure
functions of the step; fm-then-mle switches objective at its step and a run resumed across
the switch equals an uninterrupted one; the compilation cache is set and holds the
training step; the ffjord recipe is today's FFJORD set-up."""

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from helpers import SMALL_TRAINING
from hypothesis import given
from hypothesis import strategies as st

from cnfax.objectives import FlowMatching, MaximumLikelihood
from cnfax.run.builders import build_objective, learning_rate, training_tolerance
from cnfax.run.config import Config, recipe
from cnfax.run.directory import restore_flow
from cnfax.train import train


def _rows(run_dir):
    return [json.loads(r) for r in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _params(flow):
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(flow, nnx.Param))]


@given(
    step=st.integers(0, 3000),
    switch=st.integers(0, 2999),
    tight=st.integers(0, 3000),
    loose=st.sampled_from([1e-3, 1e-4]),
)
def test_tolerance_and_objective_are_pure_functions_of_the_step(step, switch, tight, loose):
    config = Config(
        iters=3000,
        objective="fm-then-mle",
        switch_step=switch,
        loose_tol=loose,
        tight_step=tight,
    ).validate()
    expected = (loose, loose) if step < tight else (config.rtol, config.atol)
    assert training_tolerance(config, step) == expected
    objective = build_objective(config, step)
    assert isinstance(objective, FlowMatching if step < switch else MaximumLikelihood)
    # Equal values for equal steps: the loop reuses one compiled step per phase.
    assert objective == build_objective(dataclasses.replace(config), step)


def test_learning_rate_warms_up_then_decays_to_zero_at_the_last_step():
    lr = learning_rate(Config(lr=1e-2, lr_schedule="cosine", warmup_steps=10, iters=110))
    assert float(lr(0)) == 0.0
    assert float(lr(10)) == pytest.approx(1e-2)
    assert float(lr(60)) == pytest.approx(5e-3, rel=1e-4)
    assert float(lr(110)) == pytest.approx(0.0, abs=1e-9)
    assert [float(lr(k)) for k in range(110)] == [float(lr(k)) for k in range(110)]
    constant = Config(lr=3e-3, lr_schedule="constant")
    assert learning_rate(constant) == 3e-3  # a float: the optimizer state of older runs


def test_fm_then_mle_switches_at_its_step_and_resumes_exactly_across_the_switch(tmp_path):
    """Flow matching for steps 1-6, maximum likelihood at the loose tolerance for 7-12 and
    at the tight one for 13-16: one compiled step each, all of them in the compilation
    cache (no host callback), and a run interrupted before the switch ends equal."""
    # Earlier tests may have compiled the same steps in this process; in-memory hits would
    # never reach the persistent cache, so start from empty in-memory caches.
    jax.clear_caches()
    cache = tmp_path / "cache"
    config = Config(
        **dict(SMALL_TRAINING, eval_every=8, ckpt_every=8, log_every=1),
        dataset="8gaussians",
        iters=16,
        objective="fm-then-mle",
        switch_step=6,
        loose_tol=1e-3,
        tight_step=12,
        rtol=1e-5,  # the tight tolerance: another compiled step
        atol=1e-5,
        lr_schedule="cosine",
        warmup_steps=2,
        count_backward=False,
        compilation_cache=str(cache),
        run_dir=str(tmp_path / "straight"),
    )
    train(config)
    rows = [r for r in _rows(config.run_dir) if "train_loss" in r]
    assert [r["step"] for r in rows if "flow_matching" in r] == list(range(1, 7))
    assert [r["step"] for r in rows if "nll" in r] == list(range(7, 17))
    assert [r["step"] for r in rows if r.get("first_call")] == [1, 7, 13]
    # Each first call logs its own tracing, lowering and compiling, within its step time.
    for row in rows:
        stages = [row.get(f"{s}_seconds") for s in ("trace", "lower", "compile")]
        if not row.get("first_call"):
            assert stages == [None] * 3
            continue
        assert stages[0] > 0 and stages[2] > 0, row
        assert sum(stages) <= row["step_seconds"], row
    assert all("nfe_backward" not in r for r in rows)
    assert jax.config.jax_compilation_cache_dir == str(cache)
    names = [p.name for p in cache.iterdir() if p.name.endswith("-cache")]
    assert sum(name.startswith("jit_train_step") for name in names) == 3, names
    assert any("log_prob" in name for name in names), names

    resumed = dataclasses.replace(config, run_dir=str(tmp_path / "resumed"))
    train(resumed, stop_at=4)  # a checkpoint at step 4, before the switch
    train(resumed)
    assert [r["step"] for r in _rows(resumed.run_dir) if r.get("first_call")] == [1, 5, 7, 13]
    _, straight, _ = restore_flow(config.run_dir)
    _, again, step = restore_flow(resumed.run_dir)
    assert step == 16
    for a, b in zip(_params(again), _params(straight), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_ffjord_recipe_is_maximum_likelihood_at_one_tolerance_without_a_cache(monkeypatch):
    monkeypatch.delenv("CNFAX_COMPILATION_CACHE")  # the suite's own "" (tests/conftest.py)
    old = recipe("ffjord", dataset="pinwheel").validate()
    assert old.dataset == "pinwheel" and old.objective == "mle" and old.lr_schedule == "constant"
    assert (old.lr, old.batch_size, old.iters, old.rtol, old.atol) == (3e-3, 256, 1500, 1e-5, 1e-5)
    assert old.loose_tol is None and old.count_backward and not old.compilation_cache
    assert old.ema_decay == 0 and build_objective(old).kinetic_energy_weight == 0
    assert recipe("default") == recipe("fast") == Config()
    # The default: the measured recipe (docs/benchmark.md), RNODE at 0.01 when not given.
    new = Config()
    assert (new.objective, new.lr, new.lr_schedule, new.rtol, new.eval_tol) == (
        "mle",
        1e-2,
        "cosine",
        1e-3,
        1e-5,
    )
    assert new.ema_decay == 0.995 and not new.count_backward
    assert new.compilation_cache == "~/.cache/cnfax/jax"
    monkeypatch.setenv("CNFAX_COMPILATION_CACHE", "/elsewhere")
    assert Config().compilation_cache == "/elsewhere"
    regularised = build_objective(new)
    assert (regularised.kinetic_energy_weight, regularised.jacobian_norm_weight) == (0.01, 0.01)
    assert build_objective(Config(kinetic_energy_weight=0.0)).kinetic_energy_weight == 0
    Config(objective="flow-matching").validate()  # the RNODE default is not "given"
    with pytest.raises(ValueError, match="recipe 'fastest'"):
        recipe("fastest")
