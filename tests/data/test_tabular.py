"""Users' matrices: .npy and .csv load, and each kind of bad file is a one-line error that
names the problem, from Python and from the command line (exit status 2, no traceback)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnfax
from cnfax.data.dataset import make_dataset, split_rows
from cnfax.data.preprocess import Chain, Dequantize, Standardize
from cnfax.data.tabular import DataError, DiscreteColumnWarning, load_matrix, load_table
from cnfax.run.config import Config
from cnfax.run.directory import read_data_spec
from cnfax.train import train

TRAIN = Path(__file__).parents[2] / "experiments" / "train.py"


def test_npy_and_csv_with_or_without_header_load_the_same_matrix(tmp_path):
    x = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "plain.csv", x, delimiter=",")
    np.savetxt(tmp_path / "header.csv", x, delimiter=",", header="a,b,c", comments="")
    for name in ("x.npy", "plain.csv", "header.csv"):
        loaded = load_matrix(tmp_path / name)
        assert loaded.dtype == np.float64
        np.testing.assert_allclose(loaded, x, rtol=1e-6)
    assert load_table(tmp_path / "header.csv").names == ("a", "b", "c")


def _write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content)
    else:
        path.write_text(content)
    return path


GOOD_ROWS = "".join(f"{i},{i * 2}\n" for i in range(12))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("ragged.csv", GOOD_ROWS + "1,2,3\n", "line 13 has 3 columns, expected 2"),
        ("words.csv", "a,b\n" + GOOD_ROWS + "1,red\n", "non-numeric value 'red' on line 14"),
        ("nan.csv", GOOD_ROWS + "1,nan\n", "NaN or infinite values .first at row 13, column 2"),
        ("few.csv", "1,2\n3,4\n", "2 rows is too few; at least 10"),
        ("empty.csv", "", "no rows"),
        ("x.txt", GOOD_ROWS, "unsupported file type '.txt'"),
        ("vector.npy", np.arange(20.0), "expected a 2-D matrix"),
        ("strings.npy", np.array([["a", "b"]] * 12), "holds <U1 values, not numbers"),
        ("inf.npy", np.array([[1.0, np.inf]] * 12), "NaN or infinite"),
    ],
)
def test_each_bad_file_is_named_in_the_error(tmp_path, name, content, message):
    with pytest.raises(DataError, match=message):
        load_matrix(_write(tmp_path, name, content))


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_matrix(tmp_path / "absent.csv")


def _train_cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, str(TRAIN), *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_the_command_line_reports_bad_data_in_one_line_and_exits_2(tmp_path):
    path = _write(tmp_path, "nan.csv", GOOD_ROWS + "1,nan\n")
    done = _train_cli("--data", str(path), "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "NaN" in lines[0]
    assert not (tmp_path / "run").exists()  # nothing written for unusable data


def test_data_of_another_dimension_than_the_checkpoint_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "three.npy", rng.normal(size=(40, 3)))
    np.save(tmp_path / "four.npy", rng.normal(size=(40, 4)))
    run = str(tmp_path / "run")
    # The first run trains in this process (one subprocess less); only the refusal needs
    # the command line, for its exit code and its message.
    train(
        Config(
            data=str(tmp_path / "three.npy"),
            dataset="tabular",
            run_dir=run,
            iters=2,
            hidden=(8,),
            batch_size=8,
            pictures=False,
        ).validate()
    )
    common = ["--run-dir", run, "--hidden", "8", "--batch-size", "8", "--iters", "4"]
    second = _train_cli("--data", str(tmp_path / "four.npy"), *common)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert "dimension 3, but the data has dimension 4" in second.stderr


def _timestamps(tmp_path, rows=200):
    """A timestamp-like column 1.6e9 + 3600 N(0, 1) beside a standard normal one."""
    rng = np.random.default_rng(1)
    x = np.stack([1.6e9 + 3600 * rng.normal(size=rows), rng.normal(size=rows)], 1)
    path = tmp_path / "stamps.csv"
    np.savetxt(path, x, delimiter=",", header="time,value", comments="", fmt="%.6f")
    return path, load_matrix(path)


def test_a_large_offset_column_is_standardised_in_float64(tmp_path):
    """float32 holds 1.6e9 to within 128: a float32 fit is off by thousands in the mean and
    by ~25% in the scale. The float64 fit matches NumPy's float64 statistics."""
    path, _ = _timestamps(tmp_path)
    standardize = make_dataset("tabular", 0, str(path)).preprocessing
    reference = np.loadtxt(path, delimiter=",", skiprows=1)  # parsed independently, float64
    train_rows = split_rows(reference, 0)["train"]
    np.testing.assert_allclose(standardize.mean, train_rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(standardize.scale, train_rows.std(0), rtol=1e-9)


def test_load_applies_the_stored_float64_standardisation_before_the_flow(tmp_path):
    path, x = _timestamps(tmp_path)
    run = tmp_path / "run"
    train(
        Config(
            data=str(path),
            dataset="tabular",
            iters=2,
            hidden=(8,),
            batch_size=16,
            run_dir=str(run),
            pictures=False,
        )
    )
    stored = read_data_spec(run).preprocessing
    assert stored == make_dataset("tabular", 0, str(path)).preprocessing  # float64 round trip
    model = cnfax.load(run, which="latest")
    mean, scale = np.asarray(stored.mean), np.asarray(stored.scale)
    y = ((x[:20] - mean) / scale).astype(np.float32)  # standardised in float64, then cast
    by_hand = np.asarray(model.flow.log_prob(y), np.float64) - np.sum(np.log(scale))
    np.testing.assert_allclose(np.asarray(model.log_prob(x[:20])), by_hand, rtol=0, atol=1e-4)


def test_a_constant_column_is_refused_naming_it_and_nothing_is_written(tmp_path):
    rows = "".join(f"{i * 0.37:.3f},5,{i % 3 * 1.5}\n" for i in range(20))
    path = _write(tmp_path, "constant.csv", "a,b,c\n" + rows)
    done = _train_cli("--data", str(path), "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == f"error: {path}: column b is constant"
    assert not (tmp_path / "run").exists()
    missing = _train_cli(
        "--data", str(path), "--condition-columns", "z", "--run-dir", str(tmp_path / "run")
    )
    assert missing.returncode == 2 and not (tmp_path / "run").exists()
    assert missing.stderr.strip() == (
        f"error: {path}: no condition column 'z' (columns are a, b, c)"
    )


def test_integer_columns_are_named_in_a_warning_and_dequantized_on_request(tmp_path):
    rng = np.random.default_rng(2)
    x = np.stack([rng.normal(size=100), rng.integers(0, 4, 100), rng.normal(size=100)], 1)
    path = tmp_path / "counts.npy"
    np.save(path, x)
    with pytest.warns(DiscreteColumnWarning, match=r"column\(s\) 1 take few integer values"):
        plain = make_dataset("tabular", 0, str(path))
    assert isinstance(plain.preprocessing, Standardize)
    data = make_dataset("tabular", 0, str(path), dequantize=True)
    assert isinstance(data.preprocessing, Chain)
    assert data.preprocessing.steps[0] == Dequantize((1,))
    # Column 1 gets U[0, 1) noise (no longer integer); the others are untouched.
    standardize = data.preprocessing.steps[1]
    batch = standardize.from_flow(data.train_batch(0, 64).astype(np.float64))
    assert not np.allclose(batch[:, 1], np.round(batch[:, 1]))
    train_rows = split_rows(x, 0)["train"]
    assert np.all(np.isin(np.round(batch[:, 0], 4), np.round(train_rows[:, 0], 4)))
    # The model is a density of v = x + u: the log-determinant is the standardisation's.
    _, log_det = data.held_out("test")
    np.testing.assert_allclose(log_det, -np.sum(np.log(standardize.scale)), rtol=1e-6)
