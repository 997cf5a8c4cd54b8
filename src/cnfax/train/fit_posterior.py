"""``cnfax.fit_posterior``: a posterior p(theta | x) from a user's own simulations.

    posterior, history = cnfax.fit_posterior(flow, theta, x, key=key, bounds=(lo, hi))
    posterior.sample(key, 1000, condition=x_o)    # theta in the user's units
    posterior.log_prob(theta, condition=x_o)      # log p(theta | x_o), the same units

Neural posterior estimation on (theta, x) pairs: the conditional flow models

    z = W_c(S_theta(g(theta)))  given  c = S_x(x),

with g the identity, restricted to the prior's box when ``bounds`` are given (a
truncation, :mod:`cnfax.data.truncation`: draws outside the box are rejected, as sbi
does, log p is -inf outside it and is the flow's density restricted to the box inside,
whose mass there is ``posterior.support_mass(key, x_o)``), or with
``bounded_by="logit"`` the box's map (:class:`~cnfax.data.preprocess.Box`: per column
logit((theta - lo) / (hi - lo)), log(theta - lo) or -log(hi - theta) for a side left
unbounded), and S the z-scoring fitted on the given
rows (float64 means and standard deviations; for theta, of g(theta)), and W_c the
conditional whitening (:class:`~cnfax.data.whitening.ConditionalWhitening`: less the
least-squares regression on c, times L^{-1}, L the Cholesky factor of the residuals'
covariance; ``whiten=False`` leaves it out). In the user's units

    log p(theta | x) = log p_flow(z | c) + log|det dg/dtheta| - sum_i log s_i - log|det L|,

-inf outside the box, and draws g^{-1}(S_theta^{-1}(W_c^{-1}(z))) always lie inside it
(a truncation's by rejection). The
training itself is :func:`cnfax.fit` on (z, c) (its options pass through), so the result
is a :class:`cnfax.TrainedModel`: the trained flow (exact trace) with both maps.

The z-scoring is fitted on every row given, validation rows included: it is a fixed
affine map, not a model, and fitting it on 90% of the rows instead changes nothing that
the validation NLL selects on.
"""

from __future__ import annotations

import numpy as np

from cnfax.core.checks import check_points
from cnfax.core.flow import CNF
from cnfax.data.preprocess import Box, Chain, Standardize
from cnfax.data.truncation import box_preprocessing
from cnfax.data.whitening import ConditionalWhitening
from cnfax.loading import TrainedModel
from cnfax.scoring import evaluation_flow
from cnfax.train.fit import FitHistory, fit


def _box(bounds, dim: int) -> Box:
    """The Box of ``bounds`` = (lo, hi), each a number or (dim,) values; +-inf or None for
    an unbounded side."""
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise ValueError(
            f"bounds must be a pair (lo, hi) of arrays of {dim} values, got {bounds!r}"
        ) from None
    sides = []
    for name, side in (("lo", lo), ("hi", hi)):
        values = np.array(side, dtype=object).reshape(-1)
        if len(values) == 1:
            values = np.repeat(values, dim)
        if len(values) != dim:
            raise ValueError(f"bounds {name} has {len(values)} values, theta has {dim} columns")
        sides.append(tuple(None if v is None else float(v) for v in values))
    return Box(*sides)


def fit_posterior(
    flow: CNF,
    theta,
    x,
    *,
    key,
    bounds=None,
    bounded_by: str = "truncation",
    whiten: bool = True,
    **options,
) -> tuple[TrainedModel, FitHistory]:
    """Train ``flow`` (a conditional CNF of dim d given c) on simulated pairs ``theta``
    (n, d) and ``x`` (n, c), z-scored (theta after the map of ``bounds`` = (lo, hi), the
    prior's support, when given, as a truncation or by its logit map: ``bounded_by``,
    :mod:`cnfax.data.truncation`) and whitened given x (``whiten``), with
    :func:`cnfax.fit` (``options``: its options), and return the posterior in the user's
    units with the fit's history (module docstring). Rows of theta outside the bounds
    are refused, naming the first."""
    if not flow.condition_dim:
        raise ValueError(
            "fit_posterior needs a conditional CNF (a field with condition_dim = the width "
            "of x); this one is unconditional"
        )
    theta = np.asarray(theta, np.float64)
    x = np.asarray(x, np.float64)
    check_points(theta, flow.dim, "theta")
    check_points(x, flow.condition_dim, "x", "condition width")
    if theta.ndim != 2 or x.ndim != 2 or len(theta) != len(x):
        raise ValueError(
            f"theta and x must be rows of simulated pairs, (n, {flow.dim}) and "
            f"(n, {flow.condition_dim}); got shapes {theta.shape} and {x.shape}"
        )
    if "condition" in options:
        raise ValueError("fit_posterior's condition is x; pass no condition= option")
    if bounds is None:
        preprocessing = Standardize.fit(theta)
    else:
        preprocessing = box_preprocessing(_box(bounds, flow.dim), theta, bounded_by)
    condition_preprocessing = Standardize.fit(x)
    c, _ = condition_preprocessing.to_flow(x)
    if whiten:
        steps = preprocessing.steps if isinstance(preprocessing, Chain) else (preprocessing,)
        whitening = ConditionalWhitening.fit(preprocessing.to_flow(theta)[0], c)
        preprocessing = Chain((*steps, whitening))
    z, _ = preprocessing.to_flow(theta, c)
    trained, history = fit(flow, z, key=key, condition=c, **options)
    posterior = TrainedModel(
        evaluation_flow(trained), preprocessing, None, None, condition_preprocessing
    )
    return posterior, history
