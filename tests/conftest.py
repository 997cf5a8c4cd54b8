"""Hypothesis profiles, chosen by CNFAX_HYPOTHESIS_PROFILE (default `ci` if CI=true, else `dev`).

- ci: few examples, derandomised (reproducible on the 2-core CI machine).
- dev: a few more, random.
- accelerator: many examples, for GPU runs where each solve is cheap.
Every profile has deadline=None: the first example of a test compiles.
"""

import dataclasses
import os

import pytest
from hypothesis import HealthCheck, settings

# No persistent compilation cache in the suite, in this process or in the make train
# subprocesses it starts (they inherit the environment): tests neither read nor fill the
# user's ~/.cache/cnfax/jax, and each compiles what it runs. The tests of the cache give
# their own directory, and `isolated_compilation_cache` closes it after them.
os.environ["CNFAX_COMPILATION_CACHE"] = ""

_common = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("ci", max_examples=4, derandomize=True, **_common)
settings.register_profile("dev", max_examples=8, **_common)
settings.register_profile("accelerator", max_examples=60, **_common)

_default = "ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev"
settings.load_profile(os.environ.get("CNFAX_HYPOTHESIS_PROFILE", _default))


# About half of Linux's vm.max_map_count (65530): the memory mappings a test process may
# hold before release_compiled_code drops its compiled code (see there).
MAX_MAPPINGS = 32_000


def _memory_mappings() -> int:
    """The process's memory mappings (lines of /proc/self/maps); where there is no /proc,
    a count above MAX_MAPPINGS, so that every module releases its code."""
    try:
        with open("/proc/self/maps") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return MAX_MAPPINGS + 1


@pytest.fixture(autouse=True, scope="module")
def release_compiled_code():
    """Drop every compiled function after a test module once the process holds more than
    MAX_MAPPINGS memory mappings. XLA:CPU maps each executable's code into the process (a
    few mappings per kernel) and never unmaps it while the function is cached (7,454
    mappings after 84 s of tests/core/test_fuzz.py and tests/test_variational.py); the
    whole suite in one process crashed inside XLA near its end (SIGSEGV or SIGABRT while
    compiling or loading), at Linux's vm.max_map_count of 65530. Releasing after every
    module kept it far below that but recompiled, module after module, the flows that
    many modules build alike (a suite of 1030 s took 911 s releasing only above 30,000;
    the most a worker then held was 27,953). A module adds well under 10,000, so a process
    released above MAX_MAPPINGS stays far from the limit. Tests that count compilations
    clear the caches themselves."""
    yield
    if _memory_mappings() > MAX_MAPPINGS:
        import gc

        import jax

        jax.clear_caches()
        gc.collect()


@pytest.fixture(autouse=True)
def isolated_compilation_cache():
    """A test that opened a compilation cache (Config(compilation_cache=DIR)) closes it, so
    that the tests after it compile for themselves."""
    yield
    import jax

    if jax.config.jax_compilation_cache_dir is not None:
        from jax.experimental.compilation_cache import compilation_cache

        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One short 8gaussians run (30 steps, checkpoints and evaluations every 10), shared by
    the tests of training, the run directory, evaluation and loading. Read it, never
    train it further (copy it first)."""
    from helpers import SMALL_TRAINING

    from cnfax.run.config import Config
    from cnfax.train import train

    run_dir = tmp_path_factory.mktemp("run")
    config = Config(dataset="8gaussians", iters=30, run_dir=str(run_dir), **SMALL_TRAINING)
    config = dataclasses.replace(config, log_every=5)
    train(config)
    return config


@pytest.fixture(scope="session")
def target_run(tmp_path_factory):
    """One short variational run on U1 (``--target u1``: 40 steps, evaluations and
    checkpoints every 10), shared by the tests of make train --target and of its
    evaluation. Read it, never train it further (copy it first)."""
    from helpers import SMALL_TRAINING

    from cnfax.run.config import Config
    from cnfax.train import train

    run_dir = tmp_path_factory.mktemp("u1")
    config = Config(target="u1", iters=40, run_dir=str(run_dir), **SMALL_TRAINING)
    config = dataclasses.replace(config, log_every=5)
    train(config)
    return config


# The modules that take longest (seconds in a clean-clone CI run, summed over their tests),
# handed to the pytest workers first (`make test` passes --no-loadscope-reorder): xdist's
# default hands out modules with the most tests first, which left the few-but-slow ones,
# 4-device training (116 s in 2 tests) among them, for the end of the run, when the other
# worker has nothing left to do. Longest first keeps both workers busy to the end.
LONGEST_MODULES_FIRST = (
    "tests/train/test_loop.py",  # 418 s
    "tests/core/test_gradients.py",  # 136 s
    "tests/test_parallel.py",  # 116 s
    "tests/test_variational.py",  # 109 s
    "tests/test_loading.py",  # 93 s
    "tests/core/test_conditional.py",  # 81 s
)


def pytest_collection_modifyitems(items):
    def rank(item):
        module = item.nodeid.split("::")[0]
        if module in LONGEST_MODULES_FIRST:
            return LONGEST_MODULES_FIRST.index(module)
        return len(LONGEST_MODULES_FIRST)

    items.sort(key=rank)  # stable: each module's own order is kept
