"""--bounds for a table's columns: the lo:hi syntax, the support check, and a short run
whose bounded columns' draws respect their bounds."""

import jax
import numpy as np
import pytest

import cnfax
from cnfax.data.bounds import parse_bounds
from cnfax.data.dataset import make_dataset
from cnfax.data.preprocess import Box, Chain, Standardize
from cnfax.data.tabular import DataError
from cnfax.run.config import Config
from cnfax.train import train


def test_each_item_is_lo_colon_hi_with_an_empty_side_unbounded():
    box = parse_bounds(["0:", "-1:1", ":", ":2.5", "-inf:inf"])
    assert box == Box((0.0, -1.0, None, None, None), (None, 1.0, None, 2.5, None))


@pytest.mark.parametrize(
    "item, message",
    [
        ("0", "each --bounds item is lo:hi"),
        ("0:1:2", "each --bounds item is lo:hi"),
        ("a:1", "'a' is not a number"),
        ("1:0", "the lower bound is not below the upper one"),
        ("1:1", "the lower bound is not below the upper one"),
        ("nan:1", "a bound is NaN"),
    ],
)
def test_a_bad_item_is_named(item, message):
    with pytest.raises(DataError, match=message):
        parse_bounds(["0:", item])


def _table(tmp_path, rows=400):
    """A positive column (exponential), one in (-1, 1) (a scaled beta) and a free one."""
    rng = np.random.default_rng(3)
    x = np.stack(
        [rng.exponential(size=rows), 2 * rng.beta(2, 2, size=rows) - 1, rng.normal(size=rows)],
        1,
    )
    path = tmp_path / "bounded.csv"
    np.savetxt(path, x, delimiter=",", header="size,share,free", comments="", fmt="%.8f")
    return path, np.loadtxt(path, delimiter=",", skiprows=1)


def test_bounds_map_the_columns_before_standardisation(tmp_path):
    path, x = _table(tmp_path)
    data = make_dataset("tabular", 0, str(path), bounds=("0:", "-1:1", ":"))
    box, standardize = data.preprocessing.steps
    assert isinstance(data.preprocessing, Chain) and isinstance(standardize, Standardize)
    assert box == Box((0.0, -1.0, None), (None, 1.0, None))
    train_rows = data.raw("train")
    logits = np.stack(
        [
            np.log(train_rows[:, 0]),
            np.log1p(train_rows[:, 1]) - np.log1p(-train_rows[:, 1]),
            train_rows[:, 2],
        ],
        1,
    )
    np.testing.assert_allclose(standardize.mean, logits.mean(0), rtol=1e-9)
    np.testing.assert_allclose(standardize.scale, logits.std(0), rtol=1e-9)


def test_rows_outside_the_bounds_or_a_wrong_count_are_refused_naming_them(tmp_path):
    path, x = _table(tmp_path)
    with pytest.raises(
        DataError, match=r"column size row \d+ = .* outside its --bounds \(1, inf\)"
    ):
        make_dataset("tabular", 0, str(path), bounds=("1:", ":", ":"))
    with pytest.raises(DataError, match=r"--bounds gives 2 items but 3 columns are modelled"):
        make_dataset("tabular", 0, str(path), bounds=("0:", ":"))
    given = make_dataset("tabular", 0, str(path), bounds=("0:", ":"), condition_columns=("free",))
    assert given.dim == 2 and given.preprocessing.steps[0].dim == 2
    with pytest.raises(DataError, match="--bounds goes with --data"):
        make_dataset("sbi-two-moons", 0, bounds=("0:", ":"))
    with pytest.raises(ValueError, match="--bounds goes with --data"):
        Config(bounds=("0:",)).validate()
    with pytest.raises(ValueError, match="is not a number"):
        Config(data=str(path), dataset="tabular", bounds=("x:",)).validate()


def test_a_bounded_columns_draws_respect_its_bounds(tmp_path):
    """After 8 steps a flow on standardised columns is a rough Gaussian: about 16% of its
    draws of the exponential column are negative and 2.5% of the beta column's lie
    outside (-1, 1) (measured without --bounds). With the bounds, none of 2,000 draws is,
    and log p is -inf outside."""
    path, x = _table(tmp_path)
    run = tmp_path / "run"
    config = Config(
        data=str(path),
        dataset="tabular",
        bounds=("0:", "-1:1", ":"),
        iters=8,
        hidden=(16, 16),
        batch_size=64,
        run_dir=str(run),
        pictures=False,
    )
    train(config.validate())
    model = cnfax.load(run, which="latest")
    draws = model.sample(jax.random.key(0), 2000)
    assert np.all(draws[:, 0] > 0) and np.all(np.abs(draws[:, 1]) < 1)
    assert np.all(np.isfinite(draws))
    log_p = np.asarray(model.log_prob(np.array([[-0.1, 0.0, 0.0], [1.0, 1.0, 0.0], x[0]])))
    assert log_p[0] == log_p[1] == -np.inf and np.isfinite(log_p[2])
