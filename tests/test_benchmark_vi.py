"""The bookkeeping of the variational-inference benchmark (experiments/benchmark_vi.py):
the clock of the ESS curve, the time to ESS 0.9, and the table's cells."""

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "experiments"))
import benchmark_vi  # noqa: E402


def _rows():
    """Launch at t = 100; evaluations at steps 10, 20, 30 taking 2 s each; in between, a
    training row (ignored)."""
    row = {"step": 5, "train_loss": 1.0, "unix_time": 104.0}
    evals = [
        {"step": s, "unix_time": t, "eval_seconds": 2.0, "elbo": e, "ess_fraction": f}
        for s, t, e, f in [(10, 110.0, -1.0, 0.5), (20, 120.0, -0.5, 0.92), (30, 130.0, 0.0, 0.95)]
    ]
    return [row, *evals]


def test_the_ess_curve_counts_from_launch_with_and_without_the_evaluations():
    curve = benchmark_vi.vi_curve(_rows(), launched=100.0)
    assert [p["step"] for p in curve] == [10, 20, 30]
    assert [p["seconds"] for p in curve] == [10.0, 20.0, 30.0]
    assert [p["seconds_less_evaluations"] for p in curve] == [8.0, 16.0, 24.0]
    reached = benchmark_vi.first_ess(curve)
    assert reached["step"] == 20 and reached["seconds"] == 20.0
    assert benchmark_vi.first_ess(curve, goal=0.99) is None


def _run(**changes):
    run = dict(
        target="u1",
        ess_fraction=0.93,
        log_z_error=0.012,
        kl=0.08,
        log_z_hat=1.87,
        log_z_hat_se=0.01,
        log_z=1.88,
        modes=None,
        modes_covered=None,
        training_seconds=41.5,
        target_evaluations=384000,
        seconds_to_ess_goal=35.2,
        seconds_to_ess_goal_less_evaluations=30.1,
    )
    return {**run, **changes}


def test_the_table_shows_log_z_hat_with_its_error_only_where_log_z_is_unknown():
    logistic = _run(target="logistic", log_z=None, log_z_error=None, kl=None, log_z_hat=-75.4)
    peer = dict(_run(), ess_fraction=0.5, modes=None, training_seconds=12.0)
    table = benchmark_vi.vi_markdown({"runs": [_run(flowjax=peer), logistic]})
    u1_line = next(line for line in table.splitlines() if line.startswith("| u1 "))
    assert "0.930 / 0.500" in u1_line and "0.0120 / 0.0120" in u1_line and "41.5 / 12.0" in u1_line
    logistic_line = next(line for line in table.splitlines() if line.startswith("| logistic "))
    assert "-75.40 +- 0.01" in logistic_line and "| - |" in logistic_line
    assert "35.2 s (30.1 s less the held-out evaluations)" in table


@pytest.mark.skipif(importlib.util.find_spec("flowjax") is not None, reason="flowjax here")
def test_without_flowjax_the_peer_column_is_left_out():
    assert benchmark_vi.flowjax_vi("u1", steps=1, batch_size=4, draws=10, seed=0) is None
