"""cnfax.fit end to end: arrays in, the best epoch's EMA weights out, early stopping, a
conditional fit, and bad input refused before any step."""

import logging

import jax
import numpy as np
import pytest
from flax import nnx

import cnfax
from cnfax.scoring import evaluation_flow, held_out_nll

FAST = dict(validation_size=128, eval_tol=1e-4, progress=False, batch_size=64)


def _gaussian(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)) @ np.array([[0.6, 0.0], [0.5, 0.3]]) + np.array([1.0, -1.0])


def _flow(seed=0, condition_dim=0):
    field = cnfax.ResidualField(2, 32, 2, condition_dim=condition_dim, rngs=nnx.Rngs(seed))
    return cnfax.CNF(field, t1=0.5)


def test_fit_returns_the_best_epochs_ema_weights_and_leaves_the_input_alone():
    x = _gaussian(600)
    flow = _flow()
    before = [np.array(a) for a in jax.tree.leaves(nnx.state(flow, nnx.Param))]  # copies
    trained, history = cnfax.fit(
        flow, x, key=jax.random.key(0), max_epochs=4, learning_rate=1e-2, warmup_steps=10, **FAST
    )
    assert history.epochs == len(history.validation_nll) == 4
    assert history.best_epoch == int(np.argmin(history.validation_nll))
    # The returned weights score the best epoch's validation NLL on the same rows: they
    # are the EMA weights that were evaluated then (raw weights, or the last epoch's,
    # score otherwise).
    rows = x[history.validation_index[:128]].astype(np.float32)
    nll, _ = held_out_nll(evaluation_flow(trained, tol=1e-4), rows)
    assert nll == pytest.approx(history.best_validation_nll, abs=1e-4)
    # Training moved the density well below the untrained flow's NLL (the base N(0, I),
    # about 3.6 nats on this data; the data's entropy is 1.3 nats).
    untrained, _ = held_out_nll(evaluation_flow(flow, tol=1e-4), rows)
    assert history.best_validation_nll < untrained - 1.0
    for a, b in zip(before, jax.tree.leaves(nnx.state(flow, nnx.Param)), strict=True):
        np.testing.assert_array_equal(a, b)  # fit trained a copy


def test_a_second_fit_alike_compiles_nothing(caplog):
    """A fresh flow and optimizer built alike (equal SolveOptions, the cached optax chain)
    are the same static data to every jitted function, so a second fit of the same shapes
    in one process reuses the first's compiled steps, EMA update and validation solve."""
    jax.clear_caches()
    x = _gaussian(200, seed=2)
    options = dict(FAST, max_epochs=1, objective=cnfax.MaximumLikelihood())

    def compiles():
        caplog.clear()
        with jax.log_compiles(True), caplog.at_level(logging.WARNING):
            cnfax.fit(_flow(3), x, key=jax.random.key(3), **options)
        return [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]

    first = compiles()
    assert any("train_step" in message for message in first), first
    assert compiles() == []


@pytest.mark.parametrize("validate_every, patience", [(1, 3), (2, 2)])
def test_early_stopping_ends_the_run_and_keeps_the_best(validate_every, patience):
    """A tiny sample and a large step size: the validation NLL stops improving, and the
    fit ends ``patience`` validations after its best, returning that best. With
    validate_every=2 the validation NLL is computed after epochs 1, 3, 5, ... only, and
    patience counts those validations."""
    x = _gaussian(120, seed=1)
    trained, history = cnfax.fit(
        _flow(1),
        x,
        key=jax.random.key(1),
        max_epochs=200,
        learning_rate=3e-2,
        patience=patience,
        validate_every=validate_every,
        ema_decay=0.0,
        warmup_steps=0,
        **FAST,
    )
    assert history.stopped_early and len(history.train_loss) == history.epochs < 200
    validated = list(range(validate_every - 1, history.epochs, validate_every))
    assert history.validation_epochs == validated
    assert len(history.validation_nll) == len(validated)
    best = int(np.argmin(history.validation_nll))
    assert history.best_epoch == validated[best]
    assert len(validated) - 1 - best == patience  # stopped `patience` validations after
    rows = x[history.validation_index[:128]].astype(np.float32)
    nll, _ = held_out_nll(evaluation_flow(trained, tol=1e-4), rows)
    assert nll == pytest.approx(history.best_validation_nll, abs=1e-4)


def test_a_conditional_fit_learns_p_theta_given_x():
    """theta ~ N(0, I), x = theta + 0.3 noise: the posterior is narrow, so a model of
    p(theta | x) scores far better than the prior's entropy (2.84 nats) on held-out pairs."""
    rng = np.random.default_rng(2)
    theta = rng.normal(size=(600, 2))
    x = theta + 0.3 * rng.normal(size=theta.shape)
    trained, history = cnfax.fit(
        _flow(2, condition_dim=2),
        theta,
        condition=x,
        key=jax.random.key(2),
        max_epochs=6,
        learning_rate=1e-2,
        warmup_steps=10,
        **FAST,
    )
    assert history.best_validation_nll < 2.84 - 1.0
    draws = trained.sample(jax.random.key(3), 50, condition=x[0].astype(np.float32))
    assert draws.shape == (50, 2)
    assert float(np.linalg.norm(np.mean(draws, 0) - x[0] / 1.09)) < 0.3  # posterior mean


def test_bad_input_is_refused_before_any_step():
    with pytest.raises(ValueError, match="x"):
        cnfax.fit(_flow(), np.ones((10, 3)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="condition"):
        cnfax.fit(_flow(condition_dim=2), np.ones((10, 2)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="validation_fraction"):
        cnfax.fit(_flow(), np.ones((10, 2)), key=jax.random.key(0), validation_fraction=1.0)
    with pytest.raises(ValueError, match="validate_every"):
        cnfax.fit(_flow(), np.ones((10, 2)), key=jax.random.key(0), validate_every=0)
    x = np.ones((10, 2))
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="finite|NaN"):
        cnfax.fit(_flow(), x, key=jax.random.key(0))
