"""Importance-weight diagnostics: exact cases (q = p, handmade weights), brute force at
moderate log weights, no overflow at +-1000, and a pair of Gaussians with closed forms."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from cnfax.importance import diagnose, ess_fraction, log_normalizer_estimate


@pytest.mark.parametrize("log_z", [-1000.0, 0.0, 3.5, 1000.0])
def test_q_equal_to_p_gives_full_ess_and_the_exact_normaliser(log_z):
    """p~ = Z q: every log weight is log Z, so log Z_hat = log Z exactly, with standard
    error 0, ESS 1, ELBO = log Z and KL 0 (at +-1000, exp would overflow or vanish)."""
    log_q = np.random.default_rng(0).normal(size=500)
    d = diagnose(log_q + log_z, log_q, log_z=log_z)
    assert d.log_z_hat == pytest.approx(log_z, abs=1e-9)
    assert d.log_z_hat_se == pytest.approx(0.0, abs=1e-9)
    assert d.ess_fraction == pytest.approx(1.0, abs=1e-12)
    assert d.elbo == pytest.approx(log_z, abs=1e-9)
    assert d.kl == pytest.approx(0.0, abs=1e-9) and d.log_z_error < 1e-9


@pytest.mark.parametrize("shift", [-1000.0, 0.0, 1000.0])
def test_ess_and_log_z_hat_of_handmade_weights(shift):
    """w = (1, 1, 2, 4): ESS = 8^2 / (4 * 22) = 8/11, log Z_hat = log 2, and
    se = sd(w / 2) / 2 with sd of (0.5, 0.5, 1, 2) (ddof 1); shifting every log weight
    by +-1000 shifts log Z_hat alone."""
    log_w = np.log([1.0, 1.0, 2.0, 4.0]) + shift
    assert ess_fraction(log_w) == pytest.approx(8 / 11, rel=1e-12)
    log_z, se = log_normalizer_estimate(log_w)
    assert log_z == pytest.approx(math.log(2) + shift, rel=1e-12, abs=1e-12)
    assert se == pytest.approx(np.std([0.5, 0.5, 1, 2], ddof=1) / 2, rel=1e-12)


@settings(deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(2, 200), scale=st.floats(0.01, 5.0))
def test_log_space_diagnostics_equal_brute_force(seed, n, scale):
    log_w = scale * np.random.default_rng(seed).normal(size=n)
    w = np.exp(log_w)  # at most e^25: no overflow
    assert ess_fraction(log_w) == pytest.approx(w.sum() ** 2 / (n * np.sum(w**2)), rel=1e-9)
    log_z, se = log_normalizer_estimate(log_w)
    assert log_z == pytest.approx(math.log(w.mean()), rel=1e-9, abs=1e-12)
    assert se == pytest.approx(np.std(w, ddof=1) / math.sqrt(n) / w.mean(), rel=1e-9)


def test_a_pair_of_gaussians_gives_the_closed_form_kl_and_ess():
    """q = N(0, 1), p~ = Z N(0.3, 0.8^2) with log Z = 2. The draws are the n = 200000
    quantiles of q (a deterministic quadrature of E_q, accurate to about 1e-4 for these
    smooth, Gaussian-tailed integrands), so the tolerances (2e-3) carry no false-alarm
    risk. Closed forms: KL(q || p) = log(s) + (1 + m^2) / (2 s^2) - 1/2; the ESS
    fraction tends to 1 / E_q[(p / q)^2], the integral by adaptive quadrature."""
    m, s, log_z, n = 0.3, 0.8, 2.0, 200_000
    z = stats.norm.ppf((np.arange(n) + 0.5) / n)
    d = diagnose(stats.norm.logpdf(z, m, s) + log_z, stats.norm.logpdf(z), log_z=log_z)
    kl = math.log(s) + (1 + m**2) / (2 * s**2) - 0.5
    assert d.kl == pytest.approx(kl, abs=2e-3)
    assert d.log_z_error < 2e-3
    second_moment, _ = integrate.quad(
        lambda x: np.exp(2 * stats.norm.logpdf(x, m, s) - stats.norm.logpdf(x)), -30, 30
    )
    assert d.ess_fraction == pytest.approx(1 / second_moment, abs=2e-3)
    assert d.ess_fraction < 0.95  # the pair is not trivially close


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        diagnose(np.zeros(5), np.zeros(4))
    with pytest.raises(ValueError, match="at least 2 draws"):
        log_normalizer_estimate(np.zeros(1))
    assert diagnose(np.zeros(4), np.zeros(4)).kl is None  # no log Z given
