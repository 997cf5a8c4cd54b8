"""Users' own tabular data: a .npy or .csv matrix whose rows are samples.

Every problem with the file is a :class:`DataError` whose message names the file and the
problem in one line (experiments/train.py prints it and exits with status 2).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

MIN_ROWS = 10  # enough for a train / validation / test split with a few rows each


class DataError(ValueError):
    """The data cannot be used; the message says why."""


def _read_csv(path: Path) -> np.ndarray:
    """A CSV of numbers, with an optional header row of column names. Errors name the
    file's line number."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if rows and not all(_is_float(cell) for cell in rows[0][1]):  # a header
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
    return np.asarray(values, np.float64).reshape(len(values), width)


def _is_float(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def load_matrix(path: str | Path) -> np.ndarray:
    """The (rows, columns) float32 matrix in ``path`` (.npy or .csv), validated."""
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
    elif suffix == ".csv":
        x = _read_csv(path)
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
    return x.astype(np.float32)
