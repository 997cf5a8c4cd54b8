"""sbibm's reference posterior samples, fetched at run time (not used by `make test`).

    python experiments/sbibm_reference.py sbi-two-moons 1     # summary of observation 1
    python experiments/sbibm_reference.py sbi-two-moons 1 --c2st
        # also C2ST of cnfax's own reference sampler against sbibm's (about 0.5 if agree)

sbibm 1.1.0's wheel (MIT licence) holds, for each task and num_observation 1..10,
observation.csv, true_parameters.csv and reference_posterior_samples.csv.bz2 (10,000
draws). The wheel is obtained once with `pip download --no-deps sbibm==1.1.0` into the
cache directory (~/.cache/cnfax/sbibm, or $CNFAX_SBIBM_CACHE), and only the needed files
are read from it (zipfile, bz2 and csv: no pandas, no torch, no sbibm import).

- :func:`reference_samples` (task, i) -> (10000, theta_dim) float64
- :func:`observation` (task, i) -> (x_dim,) float64
- :func:`true_parameters` (task, i) -> (theta_dim,) float64

``task`` is a cnfax dataset name ("sbi-two-moons", ...) or sbibm's ("two_moons", ...).
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

VERSION = "1.1.0"
WHEEL = f"sbibm-{VERSION}-py2.py3-none-any.whl"
TASKS = {  # cnfax dataset name -> sbibm task name
    "sbi-two-moons": "two_moons",
    "sbi-gaussian-linear": "gaussian_linear",
    "sbi-gaussian-mixture": "gaussian_mixture",
    "sbi-slcp": "slcp",
}


def cache_dir() -> Path:
    return Path(os.environ.get("CNFAX_SBIBM_CACHE", Path.home() / ".cache" / "cnfax" / "sbibm"))


def wheel() -> Path:
    """The cached wheel, downloaded with pip on first use."""
    path = cache_dir() / WHEEL
    if not path.is_file():
        cache_dir().mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", f"sbibm=={VERSION}"]
        subprocess.run([*command, "-d", str(cache_dir())], check=True)
        if not path.is_file():
            raise FileNotFoundError(f"pip download did not produce {path}")
    return path


def sbibm_name(task: str) -> str:
    if task in TASKS:
        return TASKS[task]
    if task in TASKS.values():
        return task
    raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)} or {sorted(TASKS.values())}")


def _read(task: str, num_observation: int, name: str) -> np.ndarray:
    """Rows of one CSV (header skipped) of sbibm/tasks/<task>/files/num_observation_<i>/."""
    if not 1 <= int(num_observation) <= 10:
        raise ValueError(f"num_observation must be 1..10, got {num_observation}")
    member = f"sbibm/tasks/{sbibm_name(task)}/files/num_observation_{int(num_observation)}/{name}"
    with zipfile.ZipFile(wheel()) as archive:
        raw = archive.read(member)
    if name.endswith(".bz2"):
        raw = bz2.decompress(raw)
    rows = list(csv.reader(io.StringIO(raw.decode())))
    return np.array([[float(v) for v in row] for row in rows[1:] if row], np.float64)


def reference_samples(task: str, num_observation: int) -> np.ndarray:
    """sbibm's 10,000 reference posterior draws for observation i, (10000, theta_dim)."""
    return _read(task, num_observation, "reference_posterior_samples.csv.bz2")


def observation(task: str, num_observation: int) -> np.ndarray:
    """sbibm's observation i, (x_dim,)."""
    return _read(task, num_observation, "observation.csv")[0]


def true_parameters(task: str, num_observation: int) -> np.ndarray:
    """The parameters sbibm simulated observation i from, (theta_dim,)."""
    return _read(task, num_observation, "true_parameters.csv")[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task")
    parser.add_argument("num_observation", type=int)
    parser.add_argument("--c2st", action="store_true", help="C2ST of cnfax's reference")
    args = parser.parse_args()
    samples = reference_samples(args.task, args.num_observation)
    x = observation(args.task, args.num_observation)
    print(f"{sbibm_name(args.task)} observation {args.num_observation}: x = {x.tolist()}")
    print(f"true parameters {true_parameters(args.task, args.num_observation).tolist()}")
    print(f"reference samples {samples.shape}: mean {samples.mean(0).round(4).tolist()}")
    if args.c2st:
        from cnfax.data.sbi import SBI_TASKS
        from cnfax.evaluation.c2st import c2st

        name = next(k for k, v in TASKS.items() if v == sbibm_name(args.task))
        task = SBI_TASKS[name]
        task.require_reference()
        ours = task.reference_samples(x, np.random.default_rng(0), len(samples))
        print(f"C2ST(sbibm's reference, cnfax's reference) = {c2st(samples, ours):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
