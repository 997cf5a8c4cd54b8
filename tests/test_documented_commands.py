"""Every `make train` / `make evaluate` command in README.md and docs/*.md works, so that the
documented commands cannot drift from the code.

In `make test` (cheap): every command is found, parsed by the command line it runs
(experiments/train.py's tyro parser, comma-separated lists included, or EvalArgs') and
validated; every `make evaluate` names a run that a documented `make train` writes; and
the documented trainings that share a run directory describe the same model (otherwise
the second would be refused).

In `make docs-commands` (CNFAX_DOCS_COMMANDS=1; not part of `make test`): each command
also runs, in document order, through experiments/train.py's or evaluate.py's ``main`` in
one working directory, cut to 3 steps (--iters 3 --eval-every 3 --ckpt-every 3
--no-pictures --eval-size 64, 200 simulations for sbi-* tasks) with small evaluation
sizes; the data files the docs name are written there first (a CSV with the columns the
command names). Commands with placeholders (``...``, ``RUN``) are only parsed.
"""

import dataclasses
import importlib.util
import os
import re
import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest
import tyro

from cnfax.evaluation import EvalArgs
from cnfax.run.model import COMPATIBILITY_FIELDS

ROOT = Path(__file__).parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_ALL = bool(os.environ.get("CNFAX_DOCS_COMMANDS"))
TRAIN_CAPS = ["--iters", "3", "--eval-every", "3", "--ckpt-every", "3", "--no-pictures"]
TRAIN_CAPS += ["--eval-size", "64"]
# What the documented commands' evaluations may take: a few hundred points, few SBI draws.
SMALL_EVALUATION = dict(
    test_size=500,
    audit_examples=2,
    coverage_pairs=10,
    coverage_draws=50,
    kl_samples=100,
    c2st_observations=1,
    c2st_draws=100,
)
EVALUATE_CAPS = ["--no-pictures", "--test-size", "500", "--audit-examples", "2"]
EVALUATE_CAPS += ["--coverage-pairs", "10", "--coverage-draws", "50", "--kl-samples", "100"]
EVALUATE_CAPS += ["--c2st-observations", "1", "--c2st-draws", "100"]
_COMMAND = re.compile(r"^make (train|evaluate)\b")
_INLINE = re.compile(r"`(make (?:train|evaluate)\b[^`]*)`")
_PLACEHOLDER = re.compile(r"^(\.\.\.|[A-Z][A-Z_]+)$")


@dataclasses.dataclass(frozen=True)
class Command:
    target: str  # train or evaluate
    args: tuple[str, ...]  # the ARGS, split as the shell splits them
    where: str  # file:line

    @property
    def placeholder(self) -> bool:
        return any(_PLACEHOLDER.match(arg) for arg in self.args)

    @property
    def parsable_args(self) -> list[str]:
        return [arg for arg in self.args if arg != "..."]

    def __str__(self):
        args = f' ARGS="{" ".join(self.args)}"' if self.args else ""
        return f"make {self.target}{args}"


def _parse(text: str, where: str) -> Command:
    words = shlex.split(text, comments=True)
    assert words[:1] == ["make"] and words[1] in ("train", "evaluate"), (where, text)
    args = [w[len("ARGS=") :] for w in words[2:] if w.startswith("ARGS=")]
    assert len(args) <= 1 and len(words) == 2 + len(args), f"{where}: {text}"
    return Command(words[1], tuple(shlex.split(args[0])) if args else (), where)


def documented_commands() -> list[Command]:
    """The make train / make evaluate commands of the docs, in order, each once: the
    lines of code blocks that start with one, and inline code that holds one."""
    found = []
    for document in DOCUMENTS:
        name = document.relative_to(ROOT)
        in_code = False
        for number, line in enumerate(document.read_text().splitlines(), 1):
            where = f"{name}:{number}"
            if line.lstrip().startswith("```"):
                in_code = not in_code
                continue
            if in_code:
                if _COMMAND.match(line.strip()):
                    found.append(_parse(line.strip(), where))
            else:
                found += [_parse(text, where) for text in _INLINE.findall(line)]
    unique = {}
    for command in found:
        unique.setdefault((command.target, command.args), command)
    return list(unique.values())


COMMANDS = documented_commands()
IDS = [f"{c.where} {c}"[:150] for c in COMMANDS]


def _script(name):
    path = ROOT / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"cnfax_docs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cli():
    return {"train": _script("train"), "evaluate": _script("evaluate")}


def _config(cli, command: Command):
    return cli["train"].parse_args(command.parsable_args)


def test_the_docs_hold_the_commands_this_test_expects():
    """The parser finds the commands (a change of the docs' format must not make this
    module test nothing)."""
    assert len(COMMANDS) >= 20, [str(c) for c in COMMANDS]
    texts = {str(c) for c in COMMANDS}
    assert "make train" in texts
    assert any("--condition-columns age,income" in t for t in texts), texts
    assert any(c.target == "evaluate" for c in COMMANDS)
    assert all(c.args[:1] != ("make",) for c in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_each_documented_command_parses_and_validates(command, cli, capsys):
    args = command.parsable_args
    if args == ["--help"]:
        with pytest.raises(SystemExit) as done:
            _config(cli, command)
        assert done.value.code == 0
        assert "--condition-columns" in capsys.readouterr().out
    elif command.target == "train":
        _config(cli, command).validate()
    else:
        tyro.cli(EvalArgs, args=args)


def _run_dir(cli, command: Command) -> str:
    if command.target == "train":
        return _config(cli, command).run_dir
    return tyro.cli(EvalArgs, args=command.parsable_args).run_dir


def test_each_documented_evaluation_names_a_documented_run(cli):
    trained = {_run_dir(cli, c) for c in COMMANDS if c.target == "train" and c.args != ("--help",)}
    for command in COMMANDS:
        if command.target == "evaluate" and not command.placeholder:
            assert _run_dir(cli, command) in trained, f"{command.where}: {command}"


def test_documented_trainings_that_share_a_run_directory_describe_one_model(cli):
    models = {}
    for command in COMMANDS:
        if command.target != "train" or command.placeholder or command.args == ("--help",):
            continue
        config = _config(cli, command)
        model = {name: getattr(config, name) for name in COMPATIBILITY_FIELDS}
        where, first = models.setdefault(config.run_dir, (command.where, model))
        assert model == first, f"{command.where} and {where} train other models in {config.run_dir}"


def _write_data(path: Path, columns: tuple[str, ...]) -> None:
    """A small continuous table with the named (condition) columns and two others."""
    rng = np.random.default_rng(0)
    names = [c for c in columns if not c.isdigit()] + ["v0", "v1"]
    values = rng.normal(size=(300, len(names))) * np.arange(1, len(names) + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, values)
    else:
        rows = [",".join(names)] + [",".join(f"{v:.6f}" for v in row) for row in values]
        path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The working directory of the documented commands: relative run directories and
    data files land here."""
    return tmp_path_factory.mktemp("documented")


@pytest.mark.skipif(not RUN_ALL, reason="make docs-commands runs them (CNFAX_DOCS_COMMANDS=1)")
@pytest.mark.parametrize("command", COMMANDS, ids=IDS)
def test_each_documented_command_runs_for_a_few_steps(command, cli, workspace, monkeypatch):
    if command.placeholder:
        pytest.skip(f"{command.where}: a placeholder ({command}); parsed only")
    monkeypatch.chdir(workspace)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() sets it
    train = cli["train"]
    # train.py evaluates after training with EvalArgs' defaults: cut those sizes too.
    monkeypatch.setattr(
        train, "EvalArgs", lambda *a, **k: EvalArgs(*a, **{**SMALL_EVALUATION, **k})
    )
    if command.args == ("--help",):
        with pytest.raises(SystemExit) as done:
            train.main(list(command.args))
        assert done.value.code == 0
        return
    if command.target == "evaluate":
        run_dir = Path(_run_dir(cli, command))
        if not (run_dir / "config.json").exists():  # selected alone: train its run first
            (trainer,) = [
                c
                for c in COMMANDS
                if c.target == "train" and not c.placeholder and _run_dir(cli, c) == str(run_dir)
            ][:1]
            _run_training(cli, trainer)
        code = cli["evaluate"].main([*command.args, *EVALUATE_CAPS])
        assert code == 0, f"{command.where}: {command} exited {code}"
        return
    _run_training(cli, command)


def _run_training(cli, command: Command) -> None:
    config = _config(cli, command)
    if config.data:
        _write_data(Path(config.data), config.condition_columns)
    caps = list(TRAIN_CAPS)
    if config.dataset.startswith("sbi-"):
        caps += ["--simulations", "200"]
    for name, flag in (("warmup_steps", "--warmup-steps"), ("switch_step", "--switch-step")):
        if getattr(config, name) >= 3:
            caps += [flag, "1"]
    if config.tight_step > 3:
        caps += ["--tight-step", "1"]
    code = cli["train"].main([*command.args, *caps])
    assert code == 0, f"{command.where}: {command} exited {code}"
