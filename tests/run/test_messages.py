"""Validation messages name the first cause, not what follows from it: a bad --iters is
reported as iters, not as the warm-up, switch or tight step that it makes out of range."""

import importlib.util
from pathlib import Path

import pytest

from cnfax.run.config import Config

TRAIN = Path(__file__).parents[2] / "experiments" / "train.py"


@pytest.mark.parametrize("iters", [-5, 0])
@pytest.mark.parametrize(
    "others",
    [{}, {"objective": "fm-then-mle", "switch_step": 0}, {"loose_tol": 1e-3, "tight_step": 0}],
    ids=["default", "fm-then-mle", "loose-tol"],
)
def test_a_bad_iters_is_reported_as_iters_alone(iters, others):
    with pytest.raises(ValueError) as raised:
        Config(iters=iters, **others).validate()
    message = str(raised.value)
    assert message == f"invalid config: iters must be positive, got {iters}", message


def test_the_command_line_reports_iters_minus_5_as_iters(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("cnfax_cli_train_messages", TRAIN)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    assert train.main(["--iters", "-5", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err == "error: invalid config: iters must be positive, got -5\n"
    assert not (tmp_path / "run").exists()
