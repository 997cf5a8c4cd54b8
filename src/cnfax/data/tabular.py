"""Users' own tabular data: a .npy or .csv matrix whose rows are samples.

Every problem with the file is a :class:`DataError` whose message names the file and the
problem in one line (experiments/train.py prints it and exits with status 2). Values are
parsed and kept in float64: a column such as a timestamp (1.6e9 + 3600 N(0, 1)) has a
float32 resolution of 128, and its float32 mean is off by thousands.

Columns are checked for what breaks a continuous density: a constant column (zero
variance: the density is infinite) is refused; an integer-valued column with few distinct
values (counts, categories: the likelihood is unbounded) gets a warning that names it and
offers ``--dequantize``.
"""

from __future__ import annotations

import csv
import dataclasses
import warnings
from pathlib import Path

import numpy as np

MIN_ROWS = 10  # enough for a train / validation / test split with a few rows each
DISCRETE_MAX_LEVELS = 64  # integer-valued columns with at most this many values are discrete


class DataError(ValueError):
    """The data cannot be used; the message says why."""


class DiscreteColumnWarning(UserWarning):
    """A column looks discrete; a continuous density's likelihood is unbounded on it."""


@dataclasses.dataclass(frozen=True)
class Table:
    """A float64 matrix (rows are samples) and its column names (a CSV header) or None."""

    values: np.ndarray
    names: tuple[str, ...] | None = None

    def label(self, column: int) -> str:
        """The column's header name, or its 0-based index."""
        return self.names[column] if self.names else str(column)


def _read_csv(path: Path) -> Table:
    """A CSV of numbers, with an optional header row of column names. Errors name the
    file's line number."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    names = None
    if rows and not all(_is_float(cell) for cell in rows[0][1]):  # a header
        names = tuple(cell.strip() for cell in rows[0][1])
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path}: the file has no rows")
    width = len(rows[0][1])
    values = []
    for line, row in rows:
        if len(row) != width:
            raise DataError(f"{path}: line {line} has {len(row)} columns, expected {width}")
        bad = [cell for cell in row if not _is_float(cell)]
        if bad:
            raise DataError(
                f"{path}: non-numeric value {bad[0].strip()!r} on line {line}; "
                "every column must be a number"
            )
        values.append([float(cell) for cell in row])
    return Table(np.asarray(values, np.float64).reshape(len(values), width), names)


def _is_float(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def load_matrix(path: str | Path) -> np.ndarray:
    """The (rows, columns) float64 matrix in ``path`` (.npy or .csv), validated."""
    return load_table(path).values


def load_table(path: str | Path) -> Table:
    """The float64 matrix in ``path`` (.npy or .csv) and its column names, validated."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except ValueError as problem:
            raise DataError(f"{path}: not a readable .npy array ({problem})") from None
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise DataError(f"{path}: the array holds {x.dtype} values, not numbers")
        names = None
    elif suffix == ".csv":
        table = _read_csv(path)
        x, names = table.values, table.names
    else:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use .npy or .csv")
    if x.ndim != 2:
        raise DataError(f"{path}: expected a 2-D matrix (rows are samples), got shape {x.shape}")
    if x.shape[1] < 1:
        raise DataError(f"{path}: the matrix has no columns")
    if len(x) < MIN_ROWS:
        raise DataError(f"{path}: {len(x)} rows is too few; at least {MIN_ROWS} are needed")
    bad = ~np.isfinite(x)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise DataError(
            f"{path}: {int(bad.sum())} NaN or infinite values (first at row {row + 1}, "
            f"column {column + 1}); remove or impute them first"
        )
    return Table(x.astype(np.float64), names)


def integer_columns(x: np.ndarray) -> list[int]:
    """Columns whose values are all integers, with at most DISCRETE_MAX_LEVELS of them."""
    return [
        j
        for j in range(x.shape[1])
        if np.all(x[:, j] == np.round(x[:, j])) and len(np.unique(x[:, j])) <= DISCRETE_MAX_LEVELS
    ]


def check_columns(table: Table, path: str | Path, dequantize: bool) -> list[int]:
    """Refuse a constant column; warn about discrete ones unless ``dequantize``. Returns
    the integer-valued columns (those that ``--dequantize`` dequantises)."""
    x = table.values
    for j in range(x.shape[1]):
        if np.all(x[:, j] == x[0, j]):
            raise DataError(f"{path}: column {table.label(j)} is constant")
    discrete = integer_columns(x)
    if discrete and not dequantize:
        labels = ", ".join(table.label(j) for j in discrete)
        warnings.warn(
            f"{path}: column(s) {labels} take few integer values: a continuous density's "
            "likelihood is unbounded on them; pass --dequantize to add uniform noise "
            "U[0, 1) to integer-valued columns",
            DiscreteColumnWarning,
            stacklevel=2,
        )
    return discrete
