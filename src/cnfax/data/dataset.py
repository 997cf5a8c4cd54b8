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
from cnfax.data.preprocess import (
    Chain,
    Dequantize,
    Identity,
    Logit,
    Preprocessing,
    Standardize,
    find_step,
)
from cnfax.data.tabular import MIN_ROWS, DataError, check_columns, load_table

SPLITS = ("train", "validation", "test")
_SPLIT_STREAM = {"train": 0, "validation": 1, "test": 2}


class Dataset(abc.ABC):
    """What the training loop and evaluation draw: batches and held-out sets in the flow's
    space, each a pure function of (seed, step)."""

    name: str
    dim: int
    preprocessing: Preprocessing
    seed: int

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
    """An infinite stream of a 2-D toy density; the held-out set is its own stream."""

    name: str
    seed: int
    dim: int = 2
    preprocessing: Preprocessing = Identity()

    def train_batch(self, step, n):
        return toy.train_batch(self.name, self.seed, step, n)

    def held_out(self, split, size=None):
        points = toy.held_out_set(self.name, self.seed, size)
        return points, np.zeros(len(points), np.float32)


@dataclasses.dataclass(frozen=True)
class SplitDataset(Dataset):
    """Finite data split once into train / validation / test (raw rows, data units)."""

    name: str
    dim: int
    preprocessing: Preprocessing
    seed: int
    splits: dict[str, np.ndarray]

    def prepare(self, raw: np.ndarray, rng: np.random.Generator):
        """Raw rows in the flow's space (float32) and their log-determinants. The maps run
        in float64; only their results are cast."""
        v = self.preprocessing.randomize(np.asarray(raw, np.float64), rng)
        y, log_det = self.preprocessing.to_flow(v)
        return y.astype(np.float32), np.asarray(log_det, np.float32)

    def train_batch(self, step, n):
        rows = self.splits["train"]
        positions = step * n + np.arange(n)
        epochs, offsets = np.divmod(positions, len(rows))
        order = {
            e: np.random.default_rng([self.seed, 3, e]).permutation(len(rows))
            for e in np.unique(epochs)
        }
        batch = rows[[order[e][o] for e, o in zip(epochs, offsets, strict=True)]]
        return self.prepare(batch, np.random.default_rng([self.seed, 4, step]))[0]

    def held_out(self, split, size=None):
        """The whole split, with fixed dequantisation noise (``size`` is for streams)."""
        rng = np.random.default_rng([self.seed, 5, _SPLIT_STREAM[split]])
        return self.prepare(self.splits[split], rng)

    def raw(self, split: str) -> np.ndarray:
        return self.splits[split]


def split_rows(x: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """80 / 10 / 10 % train / validation / test by a permutation fixed by ``seed``."""
    order = np.random.default_rng([seed, 6]).permutation(len(x))
    n_test = n_val = max(1, len(x) // 10)
    test, validation, train = np.split(x[order], [n_test, n_test + n_val])
    return {"train": train, "validation": validation, "test": test}


def make_dataset(
    name: str, seed: int, path: str | None = None, dequantize: bool = False
) -> Dataset:
    """The dataset a config names: a toy density, "digits", or "tabular" with ``path``
    (``dequantize``: uniform noise on its integer-valued columns)."""
    if name in toy.TOY_DATASETS:
        return ToyStream(name, seed)
    if name == "digits":
        splits = split_rows(digits.load_digits(), seed)
        logit = Logit(digits.LEVELS)
        rng = np.random.default_rng([seed, 7])
        logits, _ = logit.to_flow(Dequantize().randomize(splits["train"], rng))
        preprocessing = Chain((Dequantize(), logit, Standardize.fit(logits)))
        return SplitDataset(name, 64, preprocessing, seed, splits)
    if name == "tabular":
        if not path:
            raise DataError("dataset 'tabular' needs a file: pass --data PATH (.npy or .csv)")
        table = load_table(path)
        discrete = check_columns(table, path, dequantize)
        splits = split_rows(table.values, seed)
        if len(splits["train"]) < MIN_ROWS - 2:
            raise DataError(f"{path}: too few rows for a training split")
        steps = (Dequantize(tuple(discrete)),) if dequantize and discrete else ()
        # Standardise with the training split's statistics only (dequantised, if it is).
        train = Chain(steps).randomize(splits["train"], np.random.default_rng([seed, 7]))
        preprocessing = Chain((*steps, Standardize.fit(train))) if steps else Standardize.fit(train)
        return SplitDataset(name, table.values.shape[1], preprocessing, seed, splits)
    raise DataError(f"unknown dataset {name!r}")
