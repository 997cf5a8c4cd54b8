"""The mutation drill: apply each known bug to a copy of the repo and check that the tests
that guard it fail.

    python experiments/mutants.py                 # every mutant in experiments/mutants.toml
    python experiments/mutants.py field-time-s    # only the named ones
    python experiments/mutants.py --list

The mutants (id, description, file, exact `old` and `new` text, guarding tests) live in
experiments/mutants.toml. src/, tests/, experiments/ and pyproject.toml are copied to a
temporary directory; first the guarding tests must pass there unmutated (the baseline), then
each mutant is applied alone and its tests run with this repo's Python, PYTHONPATH pointing
at the copy's src/ (a pytest plugin checks that the mutated module is the one imported),
under the Hypothesis profile `ci` unless CNFAX_HYPOTHESIS_PROFILE says otherwise, without
shrinking (a failing example is enough). A mutant is caught when every one of its tests
fails. Exit code 0 when all are caught, 1 when any is not, 2
when the drill cannot run (an `old` text not found exactly once, a failing baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = Path(__file__).with_suffix(".toml")
COPIED = ("src", "tests", "experiments", "pyproject.toml")
TIMEOUT_S = 1200  # per pytest run; a hung mutant counts as an error, not as caught

# Loaded with -p by every pytest run in the copy. It refuses to run the tests unless the
# mutated module is imported from the copy (not from this repo's src/, which the editable
# install also puts on sys.path), and writes each test's outcome to MUTANT_OUTCOMES.
PLUGIN = """
import importlib, json, os
import pytest

OUTCOMES = {}

def pytest_sessionstart(session):
    module = os.environ["MUTANT_MODULE"]
    path = os.path.realpath(importlib.import_module(module).__file__)
    expected = os.path.realpath(os.environ["MUTANT_FILE"])
    if path != expected:
        raise pytest.UsageError(f"{module} was imported from {path}, not {expected}")
    # The profile conftest.py chose, without shrinking (a failing example is enough here,
    # and shrinking one re-solves and recompiles many more) and without the example
    # database, so that no mutant's run replays another mutant's failures.
    from hypothesis import Phase, settings
    phases = [p for p in settings.default.phases if p is not Phase.shrink]
    settings.register_profile("mutants", parent=settings.default, phases=phases, database=None)
    settings.load_profile("mutants")

def pytest_runtest_logreport(report):
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash else str(report.longrepr)
        OUTCOMES[report.nodeid] = "failed: " + " ".join(message.split())[:300]
    elif report.when == "call":
        OUTCOMES.setdefault(report.nodeid, "passed")

def pytest_sessionfinish(session):
    with open(os.environ["MUTANT_OUTCOMES"], "w") as f:
        json.dump(OUTCOMES, f)
"""


@dataclass(frozen=True)
class Mutant:
    id: str
    description: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]

    @property
    def module(self) -> str:
        return ".".join(Path(self.file).relative_to("src").with_suffix("").parts)


def load_mutants(path: Path = MUTANTS) -> list[Mutant]:
    """Read and check the mutants: unique ids, a file under src/, `old` exactly once."""
    with open(path, "rb") as f:
        entries = tomllib.load(f)["mutant"]
    mutants, problems = [], []
    for entry in entries:
        mutant = Mutant(**{**entry, "tests": tuple(entry["tests"])})
        source = ROOT / mutant.file
        if not mutant.file.startswith("src/") or not source.is_file():
            problems.append(f"{mutant.id}: {mutant.file} is not a file under src/")
        elif (count := source.read_text().count(mutant.old)) != 1:
            problems.append(f"{mutant.id}: `old` occurs {count} times in {mutant.file}, not once")
        if not mutant.tests:
            problems.append(f"{mutant.id}: no guarding tests")
        mutants.append(mutant)
    ids = [m.id for m in mutants]
    problems += [f"duplicate id {i}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    if problems:
        raise SystemExit("mutants.toml does not match the code:\n  " + "\n  ".join(problems))
    return mutants


def copy_repo(destination: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", "*.egg-info", "runs")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore)
        else:
            shutil.copy2(source, destination / name)
    (destination / "mutant_check.py").write_text(PLUGIN)


@dataclass
class Run:
    outcomes: dict[str, str]  # pytest node id -> "passed" or "failed: <its message>"
    code: int
    seconds: float
    output: str


def run_tests(copy: Path, tests: tuple[str, ...], mutant: Mutant | None) -> Run:
    """Run the tests in the copy and collect each one's outcome."""
    record = copy / "outcomes.json"
    record.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy / "src"), str(copy)])
    env.setdefault("CNFAX_HYPOTHESIS_PROFILE", "ci")
    env["MUTANT_MODULE"] = mutant.module if mutant else "cnfax"
    env["MUTANT_FILE"] = str(copy / (mutant.file if mutant else "src/cnfax/__init__.py"))
    env["MUTANT_OUTCOMES"] = str(record)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    command += ["-p", "mutant_check", *tests]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=copy, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as error:
        code, output = -1, f"timed out after {TIMEOUT_S} s\n{error.stdout or ''}"
    seconds = time.perf_counter() - start
    outcomes = json.loads(record.read_text()) if record.exists() else {}
    return Run(outcomes, code, seconds, output)


def guard_outcome(run: Run, test: str) -> str:
    """ "failed" if the test (or any of its parametrised cases) failed, "passed" if it ran
    and passed, "not run" if pytest ran no such test."""
    cases = [o for node, o in run.outcomes.items() if node == test or node.startswith(test + "[")]
    if not cases:
        return "not run"
    return "failed" if any(o.startswith("failed") for o in cases) else "passed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="mutant ids to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument(
        "--skip-baseline",
        action="store_true",
        help="do not first check that the guarding tests pass unmutated",
    )
    args = parser.parse_args()

    mutants = load_mutants()
    if args.list:
        for m in mutants:
            print(f"{m.id:32} {m.file:28} {m.description}")
        return 0
    unknown = set(args.ids) - {m.id for m in mutants}
    if unknown:
        raise SystemExit(f"unknown mutant ids: {sorted(unknown)}")
    chosen = [m for m in mutants if not args.ids or m.id in args.ids]

    start = time.perf_counter()
    copy = Path(tempfile.mkdtemp(prefix="cnfax-mutants-"))
    try:
        copy_repo(copy)
        guards = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        if not args.skip_baseline:
            print(f"baseline: {len(guards)} guarding tests, unmutated ...", flush=True)
            base = run_tests(copy, guards, None)
            if base.code != 0:
                print(base.output[-6000:])
                print(f"baseline failed (pytest exit {base.code}): fix the tests or code first")
                return 2
            print(f"baseline: all pass ({base.seconds:.0f} s)\n", flush=True)

        missed = []
        for m in chosen:
            target = copy / m.file
            original = target.read_text()
            target.write_text(original.replace(m.old, m.new, 1))
            try:
                run = run_tests(copy, m.tests, m)
            finally:
                target.write_text(original)
            outcomes = {test: guard_outcome(run, test) for test in m.tests}
            if run.code not in (0, 1) or "not run" in outcomes.values():
                status = f"ERROR (pytest exit {run.code})"
                print(run.output[-4000:])
            elif all(o == "failed" for o in outcomes.values()):
                status = "caught"
            elif any(o == "failed" for o in outcomes.values()):
                status = "PARTLY caught"
            else:
                status = "MISSED"
            print(f"{status:14} {m.id:30} {run.seconds:5.0f} s  {m.description}", flush=True)
            for test, outcome in outcomes.items():
                print(f"{'':16}{outcome:8} {test}")
            for node, outcome in run.outcomes.items():  # why each failed
                if outcome.startswith("failed"):
                    print(f"{'':16}{node}\n{'':18}{outcome[8:]}")
            if status != "caught":
                missed.append(m.id)
        total = time.perf_counter() - start
        caught = len(chosen) - len(missed)
        print(f"\n{caught} of {len(chosen)} mutants caught, {len(missed)} not ({total:.0f} s)")
        if missed:
            print("not caught: " + ", ".join(missed))
        return 1 if missed else 0
    finally:
        if args.keep:
            print(f"copy kept at {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
