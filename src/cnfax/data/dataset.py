"""A training data source with its preprocessing: a toy density, the digits, or a file.

Everything the training loop draws is a pure function of (seed, step), so resumed runs
repeat the uninterrupted run exactly:

- toy densities are infinite streams (:class:`ToyStream`, ``cnfax.data.toy``);
- finite data (:class:`SplitDataset`: digits, a user's matrix) is split once into
  train / validation / test by a seeded permutation (80 / 10 / 10 %); batch k takes the
  next rows of the training split in an order reshuffled every epoch from (seed, epoch),
  and discrete data gets its uniform dequantisation noise (the preprocessing's
  ``randomize``) from (seed, step).

Batches and held-out sets come out in the flow's space, with the log-determinant of the
preprocessing per row, so that NLLs in data units are flow NLL - mean log-determinant.
"""

from __future__ import annotations

import abc
import dataclasses

import numpy as np

from cnfax.data import digits, toy
from cnfax.data.bounds import check_inside, parse_bounds
from cnfax.data.preprocess import (
    Chain,
    Dequantize,
    Identity,
    Logit,
    Preprocessing,
    Standardize,
    box_then_standardize,
    find_step,
)
from cnfax.data.sbi import SBI_TASKS
from cnfax.data.tabular import MIN_ROWS, DataError, check_columns, load_table
from cnfax.data.truncation import box_preprocessing
from cnfax.data.whitening import ConditionalWhitening

_SPLIT_STREAM = {"train": 0, "validation": 1, "test": 2}


class Dataset(abc.ABC):
    """What the training loop and evaluation draw: batches and held-out sets in the flow's
    space, each a pure function of (seed, step)."""

    name: str
    dim: int
    preprocessing: Preprocessing
    seed: int
    finite: bool  # a finite sample split once (SplitDataset), or an infinite stream

    @property
    def condition_dim(self) -> int:
        """Width of the raw condition y of conditional data (p(x | y)); 0 otherwise."""
        return 0

    @abc.abstractmethod
    def raw(self, split: str) -> np.ndarray:
        """A split's rows in data units, before any preprocessing."""

    @abc.abstractmethod
    def train_batch(self, step: int, n: int) -> np.ndarray:
        """Training batch number ``step`` in the flow's space, shape (n, dim), float32."""

    @abc.abstractmethod
    def held_out(self, split: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(points in the flow's space, log-determinant per point) of a held-out set."""

    @property
    def levels(self) -> int | None:
        """Grey levels K of discrete data (a logit preprocessing), else None."""
        logit = find_step(self.preprocessing, Logit)
        return None if logit is None else logit.levels


@dataclasses.dataclass(frozen=True)
class ToyStream(Dataset):
    """An infinite stream of a 2-D toy density; validation and test are two more streams,
    disjoint from training's and from each other."""

    name: str
    seed: int
    dim: int = 2
    preprocessing: Preprocessing = Identity()
    finite = False
    held_out_size = 10_000  # points of raw(split)

    def raw(self, split):
        if split == "train":
            raise ValueError("a toy density's training data is a stream, not a split")
        return toy.held_out_set(self.name, self.seed, self.held_out_size, split)

    def train_batch(self, step, n):
        return toy.train_batch(self.name, self.seed, step, n)

    def held_out(self, split, size=None):
        points = toy.held_out_set(self.name, self.seed, size or self.held_out_size, split)
        return points, np.zeros(len(points), np.float32)


@dataclasses.dataclass(frozen=True)
class SplitDataset(Dataset):
    """Finite data split once into train / validation / test (raw rows, data units)."""

    name: str
    dim: int
    preprocessing: Preprocessing
    seed: int
    splits: dict[str, np.ndarray]
    # Conditional data: the raw conditions of each split's rows (row i goes with row i),
    # and their map to the flow's condition space (no log-determinant: y is given).
    conditions: dict[str, np.ndarray] | None = None
    condition_preprocessing: Preprocessing = Identity()
    finite = True

    @property
    def condition_dim(self) -> int:
        return 0 if self.conditions is None else self.conditions["train"].shape[1]

    def _condition(self, split: str, rows: np.ndarray | slice) -> np.ndarray | None:
        """The conditions of a split's rows in the flow's condition space (float64), or
        None for unconditional data."""
        if self.conditions is None:
            return None
        raw = np.asarray(self.conditions[split][rows], np.float64)
        return self.condition_preprocessing.to_flow(raw)[0]

    @staticmethod
    def _with_condition(x: np.ndarray, condition: np.ndarray | None):
        """x alone, or the conditional batch {"x": x, "condition": y}
        (:func:`cnfax.objectives.conditional_batch`)."""
        if condition is None:
            return x
        return {"x": x, "condition": condition.astype(np.float32)}

    def prepare(self, raw: np.ndarray, rng: np.random.Generator, condition=None):
        """Raw rows in the flow's space (float32) and their log-determinants, given their
        flow-space conditions for conditional data. The maps run in float64; only their
        results are cast."""
        v = self.preprocessing.randomize(np.asarray(raw, np.float64), rng)
        y, log_det = self.preprocessing.to_flow(v, condition)
        return y.astype(np.float32), np.asarray(log_det, np.float32)

    def train_batch(self, step, n):
        rows = self.splits["train"]
        positions = step * n + np.arange(n)
        epochs, offsets = np.divmod(positions, len(rows))
        order = {
            e: np.random.default_rng([self.seed, 3, e]).permutation(len(rows))
            for e in np.unique(epochs)
        }
        index = np.asarray([order[e][o] for e, o in zip(epochs, offsets, strict=True)])
        condition = self._condition("train", index)
        x = self.prepare(rows[index], np.random.default_rng([self.seed, 4, step]), condition)[0]
        return self._with_condition(x, condition)

    def held_out(self, split, size=None):
        """The whole split (with its conditions, for conditional data), with fixed
        dequantisation noise (``size`` is for streams)."""
        rng = np.random.default_rng([self.seed, 5, _SPLIT_STREAM[split]])
        condition = self._condition(split, slice(None))
        x, log_det = self.prepare(self.splits[split], rng, condition)
        return self._with_condition(x, condition), log_det

    def raw(self, split: str) -> np.ndarray:
        return self.splits[split]


def split_rows(x: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """80 / 10 / 10 % train / validation / test by a permutation fixed by ``seed``."""
    order = np.random.default_rng([seed, 6]).permutation(len(x))
    n_test = n_val = max(1, len(x) // 10)
    test, validation, train = np.split(x[order], [n_test, n_test + n_val])
    return {"train": train, "validation": validation, "test": test}


def make_dataset(
    name: str,
    seed: int,
    path: str | None = None,
    dequantize: bool = False,
    *,
    condition_columns: tuple[str, ...] = (),
    simulations: int = 10_000,
    conditional: bool = False,
    bounds: tuple[str, ...] = (),
    whiten: bool = True,
    bounded_by: str = "truncation",
) -> Dataset:
    """The dataset a config names: a toy density; "digits" (``conditional``: p(image |
    label)); "tabular" with ``path`` (``dequantize``: uniform noise on integer-valued
    columns; ``condition_columns``: model the other columns given these; ``bounds``: one
    "lo:hi" per modelled column, :mod:`cnfax.data.bounds`); or an SBI task, p(theta | x)
    from ``simulations`` simulated pairs (``whiten``: less theta's least-squares
    regression on x, :mod:`cnfax.data.whitening`; ``bounded_by``: a prior box as a
    truncation or by its logit map, :mod:`cnfax.data.truncation`)."""
    if name in toy.TOY_DATASETS:
        return ToyStream(name, seed)
    if name == "digits":
        return _digits(seed, conditional)
    if name == "tabular":
        if not path:
            raise DataError("dataset 'tabular' needs a file: pass --data PATH (.npy or .csv)")
        return _tabular(path, seed, dequantize, condition_columns, bounds)
    if bounds:
        raise DataError("--bounds goes with --data (a table's columns)")
    if name in SBI_TASKS:
        return _simulated(name, seed, simulations, whiten, bounded_by)
    raise DataError(f"unknown dataset {name!r}")


def _digits(seed: int, conditional: bool) -> SplitDataset:
    images, labels = digits.load_digits_and_labels()
    splits = split_rows(images, seed)
    logit = Logit(digits.LEVELS)
    rng = np.random.default_rng([seed, 7])
    logits, _ = logit.to_flow(Dequantize().randomize(splits["train"], rng))
    preprocessing = Chain((Dequantize(), logit, Standardize.fit(logits)))
    conditions = split_rows(labels, seed) if conditional else None  # same permutation
    return SplitDataset("digits", 64, preprocessing, seed, splits, conditions)


def _column_indices(table, path, columns: tuple[str, ...]) -> list[int]:
    """Condition columns by header name or 0-based index; a one-line DataError otherwise."""
    width = table.values.shape[1]
    indices = []
    for column in columns:
        if table.names and column in table.names:
            indices.append(table.names.index(column))
        elif column.isdigit() and int(column) < width:
            indices.append(int(column))
        else:
            known = f"columns are {', '.join(table.names)}" if table.names else f"{width} columns"
            raise DataError(f"{path}: no condition column {column!r} ({known})")
    if len(set(indices)) == width:
        raise DataError(f"{path}: the condition columns leave no column to model")
    return sorted(set(indices))


def _tabular(path, seed, dequantize, condition_columns, bounds=()) -> SplitDataset:
    table = load_table(path)
    given = _column_indices(table, path, condition_columns)
    discrete = check_columns(table, path, dequantize)
    targets = [j for j in range(table.values.shape[1]) if j not in given]
    splits = split_rows(table.values[:, targets], seed)
    if len(splits["train"]) < MIN_ROWS - 2:
        raise DataError(f"{path}: too few rows for a training split")
    discrete = [targets.index(j) for j in discrete if j in targets]
    steps = (Dequantize(tuple(discrete)),) if dequantize and discrete else ()
    # Standardise with the training split's statistics only (dequantised, if it is), after
    # the bounded columns' map to R (cnfax.data.bounds) when there are bounds.
    train = Chain(steps).randomize(splits["train"], np.random.default_rng([seed, 7]))
    if bounds:
        box = parse_bounds(bounds)
        labels = [table.label(j) for j in targets]
        check_inside(table.values[:, targets], box, labels, path, discrete if steps else ())
        preprocessing = Chain((*steps, *box_then_standardize(box, train).steps))
    else:
        standardize = Standardize.fit(train)
        preprocessing = Chain((*steps, standardize)) if steps else standardize
    if not given:
        return SplitDataset("tabular", len(targets), preprocessing, seed, splits)
    conditions = split_rows(table.values[:, given], seed)  # same permutation as the targets
    standardize = Standardize.fit(conditions["train"])
    return SplitDataset(
        "tabular", len(targets), preprocessing, seed, splits, conditions, standardize
    )


def simulated_pairs(name: str, *, seed: int, simulations: int) -> tuple[np.ndarray, np.ndarray]:
    """The (theta, x) pairs of ``--dataset name --simulations simulations --seed seed``,
    before any split (the SBI benchmark's peer trains on the same pairs). Keyword-only:
    two integers in the wrong order would silently draw another dataset."""
    return SBI_TASKS[name].joint(np.random.default_rng([seed, 12]), simulations)


def _simulated(
    name: str, seed: int, simulations: int, whiten: bool = True, bounded_by: str = "truncation"
) -> SplitDataset:
    """``simulations`` pairs theta ~ prior, x ~ simulator(theta), drawn from (seed); the
    flow models theta given x, both standardised with the training split's statistics.

    A task whose prior is a box (``prior_box``: two moons, the Gaussian mixture, SLCP)
    restricts the model to it (:func:`~cnfax.data.truncation.box_preprocessing`): by
    default as a truncation (the flow models z = (theta - m) / s; draws outside the box
    are rejected and log p(theta | x) is -inf outside it), with ``bounded_by="logit"``
    through the box's logit map (z = (logit_box(theta) - m) / s: draws mapped back lie
    inside by construction, log p adds log|det dz/dtheta|).
    With ``whiten``, z given the standardised x is then whitened by its least-squares
    regression on it (:class:`~cnfax.data.whitening.ConditionalWhitening`, fitted on the
    training split), so that an untrained flow is that conditional Gaussian."""
    if simulations < MIN_ROWS:
        raise DataError(f"{name}: {simulations} simulations is too few; at least {MIN_ROWS}")
    task = SBI_TASKS[name]
    theta, x = simulated_pairs(name, seed=seed, simulations=simulations)
    splits, conditions = split_rows(theta, seed), split_rows(x, seed)
    box = task.prior_box
    if box is None:
        preprocessing = Standardize.fit(splits["train"])
    else:
        preprocessing = box_preprocessing(box, splits["train"], bounded_by)
    standardize = Standardize.fit(conditions["train"])
    if whiten:
        u, _ = preprocessing.to_flow(splits["train"])
        c, _ = standardize.to_flow(conditions["train"])
        steps = preprocessing.steps if isinstance(preprocessing, Chain) else (preprocessing,)
        preprocessing = Chain((*steps, ConditionalWhitening.fit(u, c)))
    return SplitDataset(name, task.theta_dim, preprocessing, seed, splits, conditions, standardize)
