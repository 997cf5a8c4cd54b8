"""A prior's box as a truncation, not a map: the flow models theta itself, as sbi's NPE does.

The alternative, :class:`~cnfax.data.preprocess.Box`, maps the box onto R^d by a logit,
which bends a posterior that is small beside the box: on sbibm's Gaussian mixture
(box [-10, 10]^2, posterior widths 0.1 and 1) the logit's slope changes by ~27% across
one broad component, a different distortion for every x, and the flow spends its
capacity undoing it. With :class:`Truncation` the flow sees theta unbent (z-scored and
whitened after this step) and the box only restricts the support:

    q_B(theta | x) = q(theta | x) 1[theta in B] / Z(x),    Z(x) = P_q(theta in B | x).

- ``log_prob`` is log q(theta | x) inside B and -inf outside (no NaN, no error): the
  density restricted to the box. Z(x) <= 1 is the flow's mass inside the box; subtract
  log Z(x) (:meth:`cnfax.TrainedModel.support_mass`) for the normalised q_B, as sbi's
  leakage correction does. A fit whose mass stays in the prior has Z close to 1.
- ``sample`` draws from q_B exactly: draws outside B are rejected and drawn again
  (:meth:`cnfax.TrainedModel.sample`), as sbi does by default.

As a :class:`~cnfax.data.preprocess.Preprocessing` step the map is the identity with
log|det| 0 inside the box; a row outside gets log|det| = -inf and a finite stand-in
point (the box's own), so the flow never sees a NaN or an infinity.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from cnfax.data.preprocess import (
    Box,
    Chain,
    Preprocessing,
    Standardize,
    _xp,
    box_then_standardize,
    rows_inside,
)


@dataclasses.dataclass(frozen=True)
class Truncation(Preprocessing, kind="truncation"):
    """The identity on the open box prod_i (lo_i, hi_i) (None: no bound), log|det| = 0
    inside and -inf outside; draws from the flow are accepted where :meth:`contains`."""

    lower: tuple[float | None, ...]
    upper: tuple[float | None, ...]

    @classmethod
    def of(cls, box: Box) -> Truncation:
        return cls(box.lower, box.upper)

    @property
    def box(self) -> Box:
        return Box(self.lower, self.upper)  # checks the bounds as the map does

    def __post_init__(self):
        self.box  # noqa: B018 (refuses bad bounds when built, naming them)

    def contains(self, x) -> np.ndarray:
        """Whether each row lies in the open box (NaN entries do not)."""
        return self.box.contains(x)

    def to_flow(self, x, condition=None):
        xp = _xp(x)
        box = self.box
        box._check_width(x)
        lo, hi, *_, inner, _ = box._parts(xp, x.dtype)
        inside = (x > lo) & (x < hi)
        y = xp.where(inside, x, inner)  # a finite stand-in for entries outside the box
        log_det = xp.where(xp.all(inside, axis=-1), 0.0, -xp.inf)
        return y, log_det.astype(x.dtype)

    def from_flow(self, y, condition=None):
        """The identity: a draw outside the box is the sampler's to reject."""
        self.box._check_width(y)
        return y


BOUNDED_BY = ("truncation", "logit")  # how a prior's box enters (module docstring; Box)


def box_preprocessing(box: Box, train: np.ndarray, bounded_by: str) -> Preprocessing:
    """theta's preprocessing for a prior box: the box's logit map then standardisation
    fitted on the logits (:func:`~cnfax.data.preprocess.box_then_standardize`), or the
    truncation then standardisation fitted on theta itself."""
    if bounded_by == "logit":
        return box_then_standardize(box, train)
    if bounded_by != "truncation":
        raise ValueError(f"bounded_by {bounded_by!r} (choose from {list(BOUNDED_BY)})")
    return Chain((Truncation.of(box), Standardize.fit(rows_inside(box, train))))


def draw_inside(draw, contains, key, n: int, given, rounds: int = 100) -> np.ndarray:
    """n draws, each inside the support, by rejection: ``draw(key, rows)`` returns n draws
    in data units given n condition rows (``rows``: None, or (n, c)), ``contains`` says
    which lie inside. Every round draws n (one compiled shape): with one condition for all
    rows (``given`` None or all rows equal) any accepted draw fills any missing row; with
    a condition per row, the missing rows' conditions are tiled over the n draws and each
    takes its first accepted one. Raises ValueError after ``rounds`` rounds with rows
    still missing, naming the acceptance rate."""
    shared = given is None or bool(np.all(given == given[:1]))
    out, missing, accepted, tried = None, np.arange(n), 0, 0
    for round_ in range(rounds):
        owners = missing[np.arange(n) % len(missing)]
        x = draw(jax.random.fold_in(key, round_), None if given is None else given[owners])
        ok = contains(x)
        accepted, tried = accepted + int(ok.sum()), tried + n
        out = np.empty_like(x) if out is None else out
        if shared:
            take = x[ok][: len(missing)]
            filled = missing[: len(take)]
        else:
            filled, first = np.unique(owners[ok], return_index=True)
            take = x[ok][first]
        out[filled] = take
        missing = np.setdiff1d(missing, filled)
        if not len(missing):
            return out
    raise ValueError(
        f"{len(missing)} of {n} draws found no point inside the support (prior box) in "
        f"{rounds} rounds of {n} draws: only {accepted / tried:.2g} of the flow's draws fall "
        "inside it, so its mass lies outside the prior there"
    )
