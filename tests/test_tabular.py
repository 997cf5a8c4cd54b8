"""Users' matrices: .npy and .csv load, and each kind of bad file is a one-line error that
names the problem, from Python and from the command line (exit status 2, no traceback)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnfax.data.tabular import DataError, load_matrix

TRAIN = Path(__file__).parents[1] / "experiments" / "train.py"


def test_npy_and_csv_with_or_without_header_load_the_same_matrix(tmp_path):
    x = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "plain.csv", x, delimiter=",")
    np.savetxt(tmp_path / "header.csv", x, delimiter=",", header="a,b,c", comments="")
    for name in ("x.npy", "plain.csv", "header.csv"):
        loaded = load_matrix(tmp_path / name)
        assert loaded.dtype == np.float32
        np.testing.assert_allclose(loaded, x, rtol=1e-6)


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
    common = ["--run-dir", run, "--iters", "2", "--hidden", "8", "--batch-size", "8"]
    first = _train_cli("--data", str(tmp_path / "three.npy"), *common, "--no-pictures")
    assert first.returncode == 0, first.stderr[-2000:]
    second = _train_cli("--data", str(tmp_path / "four.npy"), *common, "--iters", "4")
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert "dimension 3, but the data has dimension 4" in second.stderr
