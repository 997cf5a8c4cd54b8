"""Toy datasets: reproducible from a seed, independent train and test streams, bad names."""

import numpy as np
import pytest

from cnfax.data import TOY_DATASETS, held_out_set, train_batch


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_each_dataset_is_reproducible_finite_and_in_the_plot_window(name):
    a, b = train_batch(name, 3, 7, 500), train_batch(name, 3, 7, 500)
    assert a.shape == (500, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(a))
    assert np.mean(np.abs(a) < 4.5) > 0.97  # FFJORD's densities live in [-4, 4]^2
    assert not np.array_equal(a, train_batch(name, 3, 8, 500)), "batches should differ"
    assert not np.array_equal(a, train_batch(name, 4, 7, 500)), "seeds should differ"


@pytest.mark.parametrize("name", ["8gaussians", "checkerboard"])
def test_held_out_points_are_not_in_any_early_training_batch(name):
    """The held-out stream is independent of the training stream: none of its points is a
    point of the first 50 training batches (any shared stream would repeat whole rows)."""
    held_out = held_out_set(name, 3, 500)
    rows = {tuple(r) for r in held_out}
    for k in range(50):
        shared = rows & {tuple(r) for r in train_batch(name, 3, k, 500)}
        assert not shared, f"held-out points appear in training batch {k}"


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match="unknown dataset 'spiral'.*8gaussians"):
        train_batch("spiral", 0, 0, 10)


def test_validation_and_test_streams_are_disjoint():
    """The toys' validation split (checkpoint selection) and test split (the reported NLL)
    are different draws: no point of one is in the other."""
    from cnfax.data.dataset import ToyStream

    stream = ToyStream("8gaussians", seed=0)
    validation, _ = stream.held_out("validation", 2000)
    test, _ = stream.held_out("test", 2000)
    shared = {tuple(p) for p in validation.tolist()} & {tuple(p) for p in test.tolist()}
    assert not shared
    assert stream.raw("test").shape == (10_000, 2) and not stream.finite
