"""The metrics log of a run: ``metrics.jsonl``, one JSON object per logged step, written
by the lead process only (the others keep no file)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax.numpy as jnp

from cnfax.core.flow import CNF
from cnfax.core.stats import backward_evaluations
from cnfax.train.step import StepOutcome


class MetricsLog:
    """Appends rows to ``run_dir/metrics.jsonl`` (on the lead process; elsewhere a no-op)."""

    def __init__(self, path: Path, *, lead: bool):
        self._file = open(path, "a") if lead else None  # noqa: SIM115 (closed by close())

    def write(self, row: dict) -> None:
        if self._file is not None:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def step_row(
    step: int, outcome: StepOutcome, flow: CNF, *, counted: bool, rejected_total: int, devices: int
) -> dict:
    """The metrics of an accepted step: loss, field evaluations (the backward solve's when
    ``counted``), rejected solver steps, the end time, the run's rejected steps so far, the
    devices, the objective's metrics, and the step's own time (which, on a first call,
    includes compiling it) with the clock (for timing from a command's start)."""
    row = {
        "step": step,
        "train_loss": outcome.loss,
        "nfe_forward": int(outcome.stats.nfe),
        **({"nfe_backward": backward_evaluations.count} if counted else {}),
        "rejected": int(outcome.stats.rejected),
        "t1": float(jnp.sum(flow.end_times)),
        "rejected_steps_total": rejected_total,
        "devices": devices,
        **outcome.metrics,
        "step_seconds": outcome.seconds,
        "unix_time": time.time(),
    }
    if outcome.first_call:
        row["first_call"] = True
        row.update(outcome.compile_seconds)
    return row
