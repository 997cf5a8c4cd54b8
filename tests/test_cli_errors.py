"""Pointing `make evaluate`, `cnfax.load` or `make train` at a bad run directory gives one
line that says what was expected (exit 2 from the command lines, no traceback); a damaged
latest checkpoint still falls back to the previous one. Multi-valued options take the
comma form the docs show as well as the space-separated one."""

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

import cnfax
from cnfax.run.builders import build_dataset, build_optimizer
from cnfax.run.checkpoint import Checkpointer
from cnfax.run.config import Config
from cnfax.run.directory import RunDirectoryError, checkpoint_tree, write_data_spec
from cnfax.run.model import build_flow

EXPERIMENTS = Path(__file__).parents[1] / "experiments"
HOLDS = "a run directory holds config.json, data.json and checkpoints/ (written by make train)"


def _script(name):
    spec = importlib.util.spec_from_file_location(f"cnfax_cli_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def evaluate_cli():
    return _script("evaluate")


@pytest.fixture(scope="module")
def train_cli():
    return _script("train")


def _make_run(run_dir: Path, steps=(2, 4)) -> Config:
    """A run directory as make train leaves it (config.json, data.json, checkpoints of an
    untrained tiny flow at ``steps``), without training."""
    config = Config(run_dir=str(run_dir), hidden=(8, 8), pictures=False)
    run_dir.mkdir(parents=True)
    write_data_spec(run_dir, build_dataset(config))
    (run_dir / "config.json").write_text(config.to_json())
    flow = build_flow(config.model_spec(), 2)
    optimizer = nnx.Optimizer(flow, build_optimizer(config), wrt=nnx.Param)
    checkpointer = Checkpointer(run_dir)
    for step in steps:
        tree = checkpoint_tree(flow, optimizer, jax.random.key(0), step, 0.0)
        checkpointer.save(step, tree, validation_nll=float(10 - step))
    checkpointer.close()
    return config


def _truncate(path: Path) -> None:
    for file in [path] if path.is_file() else path.rglob("*"):
        if file.is_file():
            file.write_bytes(file.read_bytes()[: len(file.read_bytes()) // 3])


# Each bad run directory: how to make it from a good one, and what the message says.
def _missing(run):
    return run.parent / "nowhere"


def _empty(run):
    empty = run.parent / "empty"
    empty.mkdir()
    return empty


def _damage(name):
    def damage(run):
        _truncate(run / name)
        return run

    return damage


def _not_json_object(run):
    (run / "data.json").write_text("[2]")
    return run


def _no_checkpoint(run):
    for step in ("2", "4"):
        for which in ("latest", "best"):
            path = run / "checkpoints" / which / step
            if path.exists():
                shutil.rmtree(path)
    return run


def _latest_checkpoints_damaged(run):
    _truncate(run / "checkpoints" / "latest")
    return run


def _all_checkpoints_damaged(run):  # the best's metrics too, which Orbax reads on opening
    _truncate(run / "checkpoints")
    return run


def _another_model(run):  # config.json edited after training: the checkpoints do not fit
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "hidden": [16, 16]}))
    return run


BAD_RUNS = {
    "missing directory": (_missing, "no run directory {run}: " + HOLDS),
    "no run": (_empty, "no run in {run} (no config.json): " + HOLDS),
    "damaged config.json": (
        _damage("config.json"),
        "{run}/config.json is damaged (",
    ),
    "damaged data.json": (_damage("data.json"), "{run}/data.json is damaged ("),
    "data.json not an object": (_not_json_object, "{run}/data.json is damaged (it holds a list)"),
    "no checkpoint yet": (
        _no_checkpoint,
        "no checkpoint in {run} yet: make train saves one every --ckpt-every steps",
    ),
    "no checkpoint restores": (
        _latest_checkpoints_damaged,
        "no latest checkpoint in {run}/checkpoints/latest could be restored",
    ),
    "checkpoints unreadable": (
        _all_checkpoints_damaged,
        "the checkpoints in {run}/checkpoints cannot be read (",
    ),
    "checkpoints of another model": (
        _another_model,
        "no latest checkpoint in {run}/checkpoints/latest could be restored",
    ),
}


def _bad_run(tmp_path: Path, case: str) -> Path:
    if case not in ("missing directory", "no run"):
        _make_run(tmp_path / "run")
    return BAD_RUNS[case][0](tmp_path / "run")


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_make_evaluate_on_a_bad_run_directory_exits_2_with_one_line(
    tmp_path, case, evaluate_cli, capsys
):
    run = _bad_run(tmp_path, case)
    message = BAD_RUNS[case][1]
    code = evaluate_cli.main(["--run-dir", str(run), "--which", "latest", "--no-pictures"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert errors == [errors[0]] and errors[0].startswith("error: "), err
    assert errors[0].startswith("error: " + message.format(run=run)), err


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_cnfax_load_of_a_bad_run_directory_says_what_was_expected(tmp_path, case):
    run = _bad_run(tmp_path, case)
    message = BAD_RUNS[case][1]
    falls_back = "restored" in message  # each step tried warns
    with pytest.warns(UserWarning) if falls_back else contextlib.nullcontext():
        with pytest.raises(RunDirectoryError) as raised:
            cnfax.load(run, "latest")
    assert isinstance(raised.value, ValueError)
    assert str(raised.value).startswith(message.format(run=run))
    assert "\n" not in str(raised.value)


def test_the_best_checkpoint_missing_points_to_the_latest(tmp_path):
    run = tmp_path / "run"
    _make_run(run)
    shutil.rmtree(run / "checkpoints" / "best")
    with pytest.raises(RunDirectoryError, match="no best checkpoint in .* try --which latest"):
        cnfax.load(run, "best")


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    run = tmp_path / "run"
    _make_run(run)
    _truncate(run / "checkpoints" / "latest" / "4")
    with pytest.warns(UserWarning, match="step 4 .* unreadable"):
        assert cnfax.load(run, "latest").step == 2


def test_make_evaluate_of_a_missing_run_in_a_fresh_process_exits_2_without_a_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXPERIMENTS / "evaluate.py"), "--run-dir", str(tmp_path / "no")],
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr == f"error: no run directory {tmp_path / 'no'}: {HOLDS}\n"
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("name", ["config.json", "data.json"])
def test_make_train_on_a_damaged_run_directory_exits_2_with_one_line(
    tmp_path, name, train_cli, capsys
):
    run = tmp_path / "run"
    _make_run(run)
    _truncate(run / name)
    before = (run / name).read_bytes()
    code = train_cli.main(["--run-dir", str(run), "--hidden", "8", "8", "--no-pictures"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith(f"error: {run / name} is damaged (") and err.count("\n") == 1, err
    assert (run / name).read_bytes() == before
    assert not (run / ".lock").exists()


# Multi-valued options: the comma form of the docs and the space-separated form.


@pytest.mark.parametrize(
    "flags",
    [
        ["--condition-columns", "c,d", "--hidden", "8,8"],
        ["--condition-columns", "c", "d", "--hidden", "8", "8"],
        ["--condition-columns=c,d", "--hidden=8,8"],
        ["--condition_columns", "c,d", "--hidden", "8", "8"],
    ],
    ids=["commas", "spaces", "equals", "underscores"],
)
def test_multi_valued_options_take_commas_or_spaces(tmp_path, train_cli, flags):
    table = tmp_path / "table.csv"
    rows = np.random.default_rng(0).normal(size=(40, 4))
    table.write_text("a,b,c,d\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in rows))
    config = train_cli.parse_args(["--data", str(table), *flags])
    assert config.condition_columns == ("c", "d") and config.hidden == (8, 8)
    dataset = build_dataset(config.validate())  # was: no condition column 'c,d'
    assert (dataset.dim, dataset.condition_dim) == (2, 2)


@pytest.mark.parametrize("value", ["c,,d", "c,", ",", ""])
def test_an_empty_item_of_a_multi_valued_option_is_one_line_and_exit_2(
    tmp_path, value, train_cli, capsys
):
    argv = ["--data", "t.csv", "--condition-columns", value, "--run-dir", str(tmp_path / "r")]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: --condition-columns {value!r}: an empty item; give the values separated by "
        "spaces or commas (e.g. --condition-columns a b, or --condition-columns a,b)\n"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "flags",
    [["--bounds", "0:", "-1:1", ":"], ["--bounds", "0:,-1:1,:"], ["--bounds=0:,-1:1", ":"]],
    ids=["spaces", "commas", "equals"],
)
def test_bounds_take_negative_lower_bounds_with_commas_or_spaces(train_cli, flags):
    """-1:1 starts with a minus sign, like a flag: it is read as a value of --bounds."""
    config = train_cli.parse_args(["--data", "t.csv", *flags, "--hidden", "8"])
    assert config.bounds == ("0:", "-1:1", ":") and config.hidden == (8,)
