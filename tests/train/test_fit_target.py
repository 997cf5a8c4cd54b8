"""cnfax.fit(flow, target=...): variational inference end to end on a 2-d Gaussian with a
closed-form KL, selection by the held-out ELBO, and bad requests refused before a step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cnfax
from cnfax.importance import diagnose
from cnfax.scoring import evaluation_flow
from cnfax.targets import Gaussian
from cnfax.train.fit_target import held_out_diagnostics

MEAN = np.array([1.0, -0.5])
COVARIANCE = np.array([[1.0, 0.6], [0.6, 0.8]])


def _flow(seed=0):
    return cnfax.CNF(cnfax.ResidualField(2, 16, 2, rngs=nnx.Rngs(seed)), t1=0.5)


def test_fitting_a_shifted_correlated_gaussian_brings_kl_down_and_ess_up():
    """The untrained q = N(0, I) is KL = 2.51 nats from the target (closed form). 100
    steps bring KL(q || p) below 0.1 and the ESS fraction above 0.85 on 2048 fresh draws
    (measured 0.03 and 0.97 at 80 steps; the estimates' own noise is about 0.01: the
    standard error of a mean of log weights whose spread is about 0.2)."""
    target = Gaussian(MEAN, COVARIANCE)
    assert target.kl_from(np.zeros(2), np.eye(2)) > 2.5
    flow = _flow()
    trained, history = cnfax.fit(
        flow,
        target=target,
        key=jax.random.key(0),
        steps=100,
        batch_size=64,
        learning_rate=1e-2,
        warmup_steps=20,
        ema_decay=0.9,
        eval_every=50,
        validation_size=512,
        eval_tol=1e-4,
        progress=False,
    )
    assert history.step == [50, 100] and len(history.elbo) == len(history.ess_fraction) == 2
    assert history.best_index == int(np.argmax(history.elbo))
    assert history.kl[history.best_index] == pytest.approx(-history.best.elbo)  # log Z = 0
    # The returned weights are the evaluated ones: the same held-out draws score the best
    # evaluation's ELBO again.
    evaluator = evaluation_flow(trained, tol=1e-4)
    again = held_out_diagnostics(evaluator, target, jnp.asarray(history.held_out), 0.0)
    assert again.elbo == pytest.approx(history.best.elbo, abs=1e-5)
    # Fresh draws from the trained q.
    z, log_q = evaluator.sample_and_log_prob(jax.random.key(1), 2048)
    fresh = diagnose(target(z), log_q, log_z=0.0)
    assert fresh.kl < 0.1, fresh
    assert fresh.ess_fraction > 0.85, fresh
    assert fresh.log_z_error < 5 * fresh.log_z_hat_se + 0.01


def test_bad_variational_requests_are_refused_before_any_step():
    flow = _flow()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="either rows x .* or target="):
        cnfax.fit(flow, np.zeros((10, 2)), target="gaussian50", key=key)
    with pytest.raises(ValueError, match="fit needs rows x"):
        cnfax.fit(flow, key=key)
    with pytest.raises(ValueError, match="unknown target 'nope'"):
        cnfax.fit(flow, target="nope", key=key)
    with pytest.raises(ValueError, match="one value per draw"):
        cnfax.fit(flow, target=lambda z: z, key=key, steps=5)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        cnfax.fit(flow, target=lambda z: z[:, 0], key=key, steps=0)
    with pytest.raises(ValueError, match="estimator"):
        cnfax.fit(flow, target=lambda z: z[:, 0], key=key, estimator="score")
