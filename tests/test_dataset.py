"""Datasets: fixed splits, batches that are pure functions of (seed, step), dequantised
digits in range, and held-out log-determinants that match the preprocessing."""

import numpy as np

from cnfax.data.dataset import SplitDataset, make_dataset, split_rows
from cnfax.data.preprocess import Identity


def test_splits_are_disjoint_cover_the_data_and_are_fixed_by_the_seed():
    x = np.arange(100.0)[:, None]
    splits = split_rows(x, seed=3)
    sizes = {name: len(rows) for name, rows in splits.items()}
    assert sizes == {"train": 80, "validation": 10, "test": 10}
    together = np.sort(np.concatenate(list(splits.values()))[:, 0])
    np.testing.assert_array_equal(together, x[:, 0])
    np.testing.assert_array_equal(split_rows(x, seed=3)["test"], splits["test"])
    assert not np.array_equal(split_rows(x, seed=4)["test"], splits["test"])


def test_digits_batches_are_reproducible_and_dequantised_in_range():
    digits = make_dataset("digits", seed=0)
    assert digits.dim == 64 and digits.levels == 17
    np.testing.assert_array_equal(digits.train_batch(5, 32), digits.train_batch(5, 32))
    assert not np.array_equal(digits.train_batch(5, 32), digits.train_batch(6, 32))
    v = digits.preprocessing.from_flow(digits.train_batch(0, 256).astype(np.float64))
    assert np.all((v > -1e-4) & (v < 17 + 1e-4))
    y, log_det = digits.held_out("validation")
    v = digits.preprocessing.from_flow(y.astype(np.float64))
    _, expected = digits.preprocessing.to_flow(v)
    np.testing.assert_allclose(log_det, expected, rtol=1e-3)


def test_each_epoch_visits_every_training_row_once_in_a_new_order():
    rows = np.arange(100, dtype=np.float32)[:, None]
    splits = {"train": rows, "validation": rows[:1], "test": rows[:1]}
    data = SplitDataset("rows", 1, Identity(), seed=0, splits=splits)
    first = np.concatenate([data.train_batch(k, 25) for k in range(4)])[:, 0]
    second = np.concatenate([data.train_batch(k, 25) for k in range(4, 8)])[:, 0]
    np.testing.assert_array_equal(np.sort(first), rows[:, 0])
    np.testing.assert_array_equal(np.sort(second), rows[:, 0])
    assert not np.array_equal(first, second)
    # a batch that straddles two epochs takes the end of one and the start of the next
    straddle = data.train_batch(1, 60)[:, 0]
    np.testing.assert_array_equal(straddle[:40], first[60:])
