"""cnfax.load: a trained run answers in data units, its preprocessing Jacobian included,
and bits/dim of a hand-computed case."""

import logging
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import SMALL_TRAINING

import cnfax
import cnfax.data.preprocess
import cnfax.scoring
from cnfax.data.dataset import split_rows
from cnfax.data.preprocess import Identity, Logit
from cnfax.loading import TrainedModel
from cnfax.run.config import Config
from cnfax.run.model import ModelSpec
from cnfax.train import train


class ZeroField(nnx.Module):
    """f = 0: the flow is the identity and log p_flow(y) = log N(y; 0, I)."""

    def __init__(self, dim):
        self.dim = dim
        self.unused = nnx.Param(jnp.zeros(()))

    def __call__(self, t, z):
        return jnp.zeros_like(z)


def test_bits_per_dim_of_a_hand_computed_case():
    """K = 2 levels, alpha = 0, identity flow, v = 1 in every dimension: p = 1/2, y = 0,
    log N(0) = -log(2 pi)/2 and log|dy/dv| = -log 2 - log(1/2) - log(1/2) = log 2 per
    dimension, so bits/dim = (log(2 pi)/2 - log 2) / log 2 = log2(2 pi)/2 - 1."""
    flow = cnfax.CNF(ZeroField(4), t1=1.0)
    model = TrainedModel(flow, Logit(2, alpha=0.0), ModelSpec(), 0)
    v = jnp.ones((3, 4))
    expected_per_dim = -0.5 * math.log(2 * math.pi) + math.log(2)
    np.testing.assert_allclose(model.log_prob(v), 4 * expected_per_dim, rtol=1e-6)
    bits = cnfax.data.preprocess.bits_per_dim(-float(jnp.mean(model.log_prob(v))), 4)
    assert math.isclose(bits, 0.5 * math.log2(2 * math.pi) - 1, rel_tol=1e-5)
    with pytest.raises(ValueError, match=r"x\[0, 0\] = 2.5 lies outside this model's support"):
        model.log_prob(jnp.full((1, 4), 2.5))


@pytest.mark.parametrize("bad_value", [-0.5, 2.0, 2.04])
def test_points_outside_zero_to_k_are_refused_naming_the_first(bad_value):
    """The logit map is finite on (-alpha K / (1 - 2 alpha), K (1 - alpha) / (1 - 2 alpha)),
    wider than [0, K); the model's support is [0, K), so the check must not rely on the map
    returning inf (-0.5 and 2.04 give finite logits with alpha = 0.05, K = 2)."""
    model = TrainedModel(cnfax.CNF(ZeroField(4), t1=1.0), Logit(2), ModelSpec(), 0)
    v = np.full((2, 4), 1.0)
    v[1, 2] = bad_value
    with pytest.raises(ValueError, match=rf"x\[1, 2\] = {bad_value:g} lies outside"):
        model.log_prob(v)
    assert np.all(np.isfinite(model.log_prob(v[:1])))


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tabular")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)) @ np.array([[2.0, 0, 0], [1.0, 0.5, 0], [0, 0, 10]]) + [
        5,
        -3,
        100,
    ]
    np.save(root / "x.npy", x)
    config = Config(
        dataset="tabular",
        data=str(root / "x.npy"),
        iters=20,
        run_dir=str(root / "run"),
        **SMALL_TRAINING,
    )
    train(config)
    return config, x.astype(np.float32)


def test_load_answers_in_data_units_with_the_standardisation_jacobian(tabular_run):
    config, x = tabular_run
    model = cnfax.load(config.run_dir)
    assert model.dim == 3
    train_rows = split_rows(x, config.seed)["train"]
    mean, scale = train_rows.mean(0), train_rows.std(0)
    # log p(x) = log p_flow((x - mean) / scale) - sum log scale, computed by hand
    by_hand = model.flow.log_prob(jnp.asarray((x[:50] - mean) / scale)) - np.sum(np.log(scale))
    np.testing.assert_allclose(model.log_prob(x[:50]), by_hand, rtol=1e-4, atol=1e-4)
    samples = np.asarray(model.sample(jax.random.key(0), 2000))
    # samples are in data units: near the data's mean, on its scale (column 3 is ~100)
    assert np.all(np.abs(samples.mean(0) - x.mean(0)) < 0.5 * x.std(0))
    with pytest.raises(ValueError, match="last dimension 2, but the flow's dimension is 3"):
        model.log_prob(x[:5, :2])


def test_ragged_input_sizes_compile_once_per_bucket(monkeypatch, caplog):
    """20 random batch sizes of one chunk, in [1, 64], with buckets 1, 2, 4, ..., 64, and 3
    of several chunks of 64 (each padded to the full chunk, the bucket of 64): at most 7
    compilations of the solve, where one per distinct size would be about 20. (Sizes
    drawn in [1, 200] let an unbucketed solve pass: most of them take the several-chunks
    path, and the few one-chunk sizes stayed under the bound.)"""
    monkeypatch.setattr(cnfax.scoring, "CHUNK", 64)
    jax.clear_caches()  # equal flows share compiled code: count this test's own
    field = cnfax.ConcatSquashMLP(2, (8,), rngs=nnx.Rngs(0))
    model = TrainedModel(cnfax.CNF(field, t1=0.5), Identity(), ModelSpec(), 0)
    one_chunk = np.random.default_rng(0).integers(1, 65, size=20)
    sizes = np.concatenate([one_chunk, [100, 150, 200]])
    x = np.random.default_rng(1).normal(size=(200, 2))
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        results = [np.asarray(model.log_prob(x[:n])) for n in sizes]
    compiles = [r for r in caplog.records if "Compiling jit(_sharded_log_prob)" in r.getMessage()]
    assert len(set(one_chunk.tolist())) >= 15
    assert 1 <= len(compiles) <= 7, len(compiles)
    # Padding never changes a row's answer: every size agrees with the largest batch.
    full = np.asarray(model.log_prob(x))
    for n, logp in zip(sizes, results, strict=True):
        np.testing.assert_allclose(logp, full[:n], rtol=1e-5, atol=1e-5)


def test_load_of_a_conditional_table_answers_log_p_of_x_given_y_in_data_units(tmp_path):
    """log p(x | y) = log p_flow(g(x) | h(y)) - sum log scale_x: the targets' Jacobian
    counts, the condition's does not (y is given, not modelled). By hand in float64."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=(300, 1)) * 50 + 1000
    x = np.hstack([2 * (y - 1000) / 50 + rng.normal(size=(300, 1)), rng.normal(size=(300, 1))])
    table = np.hstack([x[:, :1], y, x[:, 1:]])
    path = tmp_path / "t.csv"
    np.savetxt(path, table, delimiter=",", header="a,given,b", comments="", fmt="%.8f")
    config = Config(
        data=str(path),
        dataset="tabular",
        condition_columns=("given",),
        iters=5,
        run_dir=str(tmp_path / "run"),
        **SMALL_TRAINING,
    )
    train(config)
    model = cnfax.load(config.run_dir, which="latest")
    assert (model.dim, model.condition_dim) == (2, 1)
    rows = np.loadtxt(path, delimiter=",", skiprows=1)[:40]
    targets, given = rows[:, [0, 2]], rows[:, [1]]
    sx, sy = model.preprocessing, model.condition_preprocessing
    gx = (targets - np.asarray(sx.mean)) / np.asarray(sx.scale)
    hy = (given - np.asarray(sy.mean)) / np.asarray(sy.scale)
    flow_logp = model.flow.log_prob(
        jnp.asarray(gx, jnp.float32), condition=jnp.asarray(hy, jnp.float32)
    )
    by_hand = np.asarray(flow_logp, np.float64) - np.sum(np.log(sx.scale))
    np.testing.assert_allclose(model.log_prob(targets, condition=given), by_hand, atol=1e-4)
    one = model.log_prob(targets[:3], condition=given[0])  # one y for every row
    np.testing.assert_allclose(one[0], by_hand[0], atol=1e-4)


# cnfax.load imports none of the reporting stack, and leaves matplotlib's backend alone.
_REPORTING = ("hypothesis", "sklearn", "tyro", "optax", "matplotlib")
_LOAD_CODE = """
import sys
import diffrax, flax.nnx, jax, numpy, orbax.checkpoint, scipy  # cnfax's own dependencies
before = set(sys.modules)
import cnfax
model = cnfax.load(sys.argv[1], "latest")
model.log_prob(numpy.zeros((3, 2)))
new = set(sys.modules) - before
top = sorted({name.split(".")[0] for name in new})
top += [m for m in ("hypothesis", "sklearn", "tyro", "matplotlib") if m in sys.modules]
internal = sorted(n for n in new if n.startswith(("cnfax.train", "cnfax.evaluation",
                                                  "cnfax.run.config", "cnfax.run.builders")))
print(top)
print(internal)
print(model.step)
"""


def test_load_in_a_fresh_process_imports_no_reporting_library(trained_run):
    """Measured from after cnfax's own dependencies: Flax NNX (nnx.Optimizer) and Diffrax
    (through Optimistix) import optax themselves, so it is counted only if cnfax's loading
    code is what brings it in."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_CODE, trained_run.run_dir],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    top, internal, step = done.stdout.strip().splitlines()[-3:]
    assert not set(eval(top)) & set(_REPORTING), top
    assert eval(internal) == [], internal
    assert step == "30"


def test_neither_loading_nor_the_evaluation_modules_change_matplotlibs_backend(trained_run):
    code = (
        "import sys, matplotlib; matplotlib.use('svg'); import cnfax; "
        "cnfax.load(sys.argv[1], 'latest'); import cnfax.evaluation, "
        "cnfax.evaluation.plots, cnfax.evaluation.posterior_plots; "
        "print(matplotlib.get_backend())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, trained_run.run_dir],
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "svg"
