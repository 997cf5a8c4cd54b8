# `make test` and `make train` bootstrap .venv from pyproject.toml when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test lint clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Two pytest workers, whole modules each (a module's tests share what they compile): the
# suite is compile-bound, and XLA compiles on one core, so two workers on CI's 2 cores
# take 1.26x less time than one (tests/core/test_gradients.py, test_variational.py,
# test_objectives.py, train/test_fit.py: 418 s -> 332 s). The slowest modules go first
# (tests/conftest.py), so that neither worker is left alone at the end. TEST_WORKERS=0 runs
# in-process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests experiments
	$(VENV)/bin/ruff format --check src tests experiments

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache build src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# make train ARGS="--dataset checkerboard --run-dir runs/checkerboard"
.PHONY: train evaluate
train: $(STAMP)
	$(PY) experiments/train.py $(ARGS)

evaluate: $(STAMP)
	$(PY) experiments/evaluate.py $(ARGS)

# Every `make train` / `make evaluate` command of README.md and docs/*.md, run for 3 steps
# in a temporary directory (tests/test_documented_commands.py; `make test` only parses and
# validates them). Run it before changing the docs' commands or releasing them.
.PHONY: docs-commands
docs-commands: $(STAMP)
	CNFAX_DOCS_COMMANDS=1 $(PY) -m pytest tests/test_documented_commands.py $(PYTEST_ARGS)

# make bench (quick, < 10 min on 2 CPU cores) or make bench ARGS=--full
.PHONY: bench
bench: $(STAMP)
	$(PY) experiments/benchmark.py $(ARGS)

# Time to a good density: each recipe on three toys, two seeds, in fresh processes
# (make bench-ttn; about 40 minutes on 2 CPU cores); docs/benchmark.md
.PHONY: bench-ttn bench-peers bench-vi
bench-ttn: $(STAMP)
	$(PY) experiments/benchmark.py --sections ttn $(ARGS)

# FFJORD's PyTorch/torchdiffeq model beside cnfax, in one command (installs the optional
# `peers` extra: torch's CPU build and torchdiffeq; not needed by make test)
bench-peers: $(STAMP)
	$(PY) -m pip install --quiet -e '.[peers]'
	$(PY) experiments/benchmark.py --sections peers $(ARGS)

# Variational inference (#21): make train --target on u1-u4, funnel, mixture, gaussian50
# and logistic, beside flowjax's flows fitted by ElboLoss when flowjax is importable (the
# `peers` extra); bench/vi.{json,md}
bench-vi: $(STAMP)
	$(PY) -m pip install --quiet -e '.[peers]'
	$(PY) experiments/benchmark.py --sections vi $(ARGS)
# C2ST of make train's default against sbibm's reference samples (experiments/bench_sbi.py):
# two moons and Gaussian linear at 10^3 and 10^4 simulations, sbibm observations 1-5, 10,000
# draws, each beside sbi's NPE on the same simulations (the `peers` extra; --sbi-peers npe fmpe
# adds FMPE, --sbi-peers alone runs none); sbibm's wheel
# is downloaded once into ~/.cache/cnfax/sbibm (or $CNFAX_SBIBM_CACHE)
.PHONY: bench-sbi
bench-sbi: $(STAMP)
	$(PY) -m pip install --quiet -e '.[peers]'
	$(PY) experiments/benchmark.py --sections sbi $(ARGS)

# Maximum likelihood vs + RNODE vs flow matching on three toys (about an hour on 2 CPU cores)
.PHONY: compare-objectives
compare-objectives: $(STAMP)
	$(PY) experiments/compare_objectives.py $(ARGS)

# The mutation drill, not part of `make test`: each bug in experiments/mutants.toml is
# applied alone to a temporary copy and must make every test that guards it fail
# (make mutants ARGS=field-time-s runs one; ARGS=--list lists them).
.PHONY: mutants
mutants: $(STAMP)
	$(PY) experiments/mutants.py $(ARGS)
