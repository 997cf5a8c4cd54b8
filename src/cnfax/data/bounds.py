"""Bounded columns of a user's table: ``--bounds lo:hi ...``, one item per modelled column.

Each item is ``lo:hi`` with either side empty for no bound: ``0:1`` (a proportion),
``0:`` (a positive quantity), ``:0`` (a negative one), ``:`` (unbounded). The bounds
become a :class:`~cnfax.data.preprocess.Box` applied before standardisation, so the flow
models z = (g(x) - m) / s with g the box's per-column logit (or log) map; the model's
draws then always lie inside the bounds and its log-density is -inf outside them.

The support is the open box: every row of the table must lie strictly inside it. A
dequantised column (``--dequantize``) is modelled as v = x + u, u ~ U[0, 1), so its
integer values x must satisfy lo <= x and x + 1 <= hi (v lies in [x, x + 1)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cnfax.data.preprocess import Box
from cnfax.data.tabular import DataError

_SYNTAX = "each --bounds item is lo:hi with either side empty for no bound (0:1, 0:, :5, :)"


def _side(text: str, item: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"--bounds {item!r}: {text!r} is not a number; {_SYNTAX}") from None
    if math.isnan(value):
        raise DataError(f"--bounds {item!r}: a bound is NaN; {_SYNTAX}")
    return None if math.isinf(value) else value


def parse_bounds(items: Sequence[str]) -> Box:
    """The box of ``--bounds`` items (module docstring); DataError naming a bad item."""
    lower, upper = [], []
    for item in items:
        if item.count(":") != 1:
            raise DataError(f"--bounds {item!r}: {_SYNTAX}")
        lo, hi = (_side(side, item) for side in item.split(":"))
        if lo is not None and hi is not None and not lo < hi:
            raise DataError(f"--bounds {item!r}: the lower bound is not below the upper one")
        lower.append(lo)
        upper.append(hi)
    if not lower:
        raise DataError(f"--bounds needs one item per modelled column; {_SYNTAX}")
    return Box(tuple(lower), tuple(upper))


def check_inside(
    values: np.ndarray, box: Box, labels: Sequence[str], path, dequantized: Sequence[int] = ()
) -> None:
    """Refuse a table whose rows leave the open box (a dequantised column: lo <= x and
    x + 1 <= hi), naming the first offending column, row and value."""
    if values.shape[1] != box.dim:
        raise DataError(
            f"{path}: --bounds gives {box.dim} items but {values.shape[1]} columns are "
            f"modelled ({', '.join(labels)}); give one lo:hi per modelled column (: for none)"
        )
    lo, hi = box.bounds()
    steps = np.isin(np.arange(box.dim), list(dequantized))
    above = np.where(steps, values >= lo, values > lo)
    below = np.where(steps, values + 1 <= hi, values < hi)
    bad = np.argwhere(~(above & below))
    if len(bad):
        row, column = (int(i) for i in bad[0])
        edge = "[x, x + 1) of a dequantised value" if steps[column] else "the open interval"
        raise DataError(
            f"{path}: column {labels[column]} row {row + 1} = {values[row, column]:g} lies "
            f"outside its --bounds ({lo[column]:g}, {hi[column]:g}) ({edge} must fit inside)"
        )
