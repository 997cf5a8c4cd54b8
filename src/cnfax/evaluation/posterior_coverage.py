"""Expected coverage of a posterior estimate's HPD regions (the model interface of
:mod:`cnfax.evaluation.posterior_checks`).

Expected coverage (:func:`expected_coverage`): for pairs (theta*, x) from the joint,
the model's alpha-HPD region {theta : q(theta | x) >= c_alpha} holds theta* iff the
q-mass of {q > q(theta*)} is at most alpha. With D draws theta_j ~ q(. | x), that mass
is estimated by the rank r = #{j : log q(theta_j | x) > log q(theta* | x)} (ties count
half) as the mid-rank level f = (r + 1/2) / (D + 1): for a calibrated model r is uniform
on {0, ..., D}, so P(f <= alpha) is alpha to within 1/(2 (D + 1)) for any D. The
coverage at alpha is the fraction of pairs with f <= alpha. With 200 pairs the curve's
binomial noise is sqrt(alpha (1 - alpha) / 200) <= 0.035 at each alpha, and the largest
deviation of a perfectly calibrated model over the 19 levels is 0.052 on average (above
0.05 in 49% of seeds; 95% quantile 0.085);
``null_max_deviation`` is that deviation's 95% quantile for the same pairs, draws and
levels, simulated from uniform ranks (what a calibrated model would show).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from cnfax.data.sbi import SBITask
from cnfax.evaluation.posterior_checks import CHUNK, sbi_task
from cnfax.scoring import batched_log_prob, batched_sample

ALPHAS = np.round(np.arange(1, 20) * 0.05, 2)  # 0.05, 0.10, ..., 0.95


@dataclasses.dataclass(frozen=True)
class CoverageResult:
    """Expected coverage: at each level alpha, the fraction of true parameters inside the
    model's alpha-HPD region. ``levels``: each pair's mid-rank HPD level f of theta*
    (module docstring); ``null_max_deviation``: the 95% quantile of the largest
    deviation a calibrated model would show with these pairs, draws and alphas."""

    alphas: np.ndarray
    coverage: np.ndarray
    levels: np.ndarray
    draws: int
    null_max_deviation: float

    @property
    def pairs(self) -> int:
        return len(self.levels)

    @property
    def deviation(self) -> np.ndarray:
        """coverage - alpha: negative where the model is overconfident."""
        return self.coverage - self.alphas

    @property
    def max_deviation(self) -> float:
        return float(np.max(np.abs(self.deviation)))

    def as_dict(self) -> dict:
        return {
            "alphas": self.alphas.tolist(),
            "coverage": self.coverage.tolist(),
            "max_deviation": self.max_deviation,
            "null_max_deviation_95": self.null_max_deviation,
            "pairs": self.pairs,
            "draws": self.draws,
        }


def coverage_curve(levels: np.ndarray, alphas=ALPHAS) -> np.ndarray:
    """Fraction of HPD levels f at most alpha, for each alpha."""
    return np.mean(np.asarray(levels)[None, :] <= np.asarray(alphas)[:, None], axis=1)


def hpd_levels(log_q_true: np.ndarray, log_q_draws: np.ndarray) -> np.ndarray:
    """Mid-rank HPD level of each true parameter: (#{draws denser than it} + #{ties} / 2
    + 1/2) / (D + 1), from log q(theta* | x_i) (n,) and log q of D draws given x_i (n, D)."""
    denser = np.sum(log_q_draws > log_q_true[:, None], axis=1)
    ties = np.sum(log_q_draws == log_q_true[:, None], axis=1)
    return (denser + 0.5 * ties + 0.5) / (log_q_draws.shape[1] + 1)


@functools.lru_cache(maxsize=32)
def null_max_deviation(
    pairs: int, draws: int, alphas: tuple = tuple(ALPHAS), quantile: float = 0.95
) -> float:
    """The ``quantile`` of the largest |coverage - alpha| of a calibrated model (ranks
    uniform on {0, ..., draws}), from 20,000 simulated curves (fixed stream)."""
    rng = np.random.default_rng(20_000 + pairs)
    deviations = []
    for _ in range(10):  # 2,000 curves at a time keeps the memory small
        ranks = rng.integers(0, draws + 1, size=(2000, pairs))
        levels = (ranks + 0.5) / (draws + 1)
        curve = np.mean(levels[:, None, :] <= np.asarray(alphas)[None, :, None], axis=2)
        deviations.append(np.max(np.abs(curve - np.asarray(alphas)), axis=1))
    return float(np.quantile(np.concatenate(deviations), quantile))


def expected_coverage(
    task: SBITask | str,
    model,
    seed: int,
    pairs: int = 200,
    draws: int = 500,
    *,
    alphas=ALPHAS,
    chunk: int = CHUNK,
) -> CoverageResult:
    """Expected coverage of the model's HPD regions over ``pairs`` (theta*, x) drawn from
    the task's joint with their own stream of (seed) (the same pairs for every model
    scored with that seed), with ``draws`` model samples per pair (module docstring).

    Cost: pairs x draws model samples and pairs x (draws + 1) log-densities."""
    task = sbi_task(task)
    if pairs < 1 or draws < 1:
        raise ValueError(f"pairs and draws must be positive, got {pairs} and {draws}")
    theta_true, x = task.joint(np.random.default_rng([seed, 13]), pairs)
    key = jax.random.fold_in(jax.random.key(seed), 13)
    conditions = np.repeat(x, draws, axis=0)
    theta_draws = batched_sample(model, key, conditions, chunk)
    log_q_draws = batched_log_prob(model, theta_draws, conditions, chunk).reshape(pairs, draws)
    log_q_true = batched_log_prob(model, theta_true, x, chunk)
    levels = hpd_levels(log_q_true, log_q_draws)
    alphas = np.asarray(alphas, np.float64)
    return CoverageResult(
        alphas=alphas,
        coverage=coverage_curve(levels, alphas),
        levels=levels,
        draws=draws,
        null_max_deviation=null_max_deviation(pairs, draws, tuple(alphas.tolist())),
    )
