"""One trainer per run directory (cnfax.run.lock): a second one is refused naming the
holder while the first finishes untouched; a lock left by a killed trainer is taken over
and the run resumes; the lock goes on a normal end, an error and Ctrl-C, and only the lead
process takes it."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

import cnfax.train.loop as loop
import cnfax.train.setup as setup
from cnfax.run.config import Config
from cnfax.run.lock import LOCK, RunDirectoryLocked, RunLock, StaleLockWarning
from cnfax.train import train

ROOT = Path(__file__).parents[2]
# Flow matching: its training step has no solve, so it compiles in a second; the one
# validation NLL is at the end (step 4).
TINY = dict(
    dataset="8gaussians",
    objective="flow-matching",
    hidden=(8, 8),
    batch_size=32,
    iters=4,
    eval_every=4,
    ckpt_every=2,
    eval_size=64,
    log_every=1,
    pictures=False,
)
TINY_FLAGS = "--objective flow-matching --hidden 8 8 --batch-size 32 --iters 4 --eval-every 4 "
TINY_FLAGS += "--ckpt-every 2 "
TINY_FLAGS += "--eval-size 64 --log-every 1 --no-pictures"

# A trainer (train() of the tiny config) that, after its checkpoint at step 2, announces
# itself in <gate>.waiting and waits until <gate> exists: the test decides when it goes on.
# The trainers of this module share a compilation cache: one compiles, the others load.
GATED_TRAINER = """
import sys, time, warnings
from pathlib import Path
import cnfax.train.loop as loop
from cnfax.run.config import Config
run_dir, gate, cache = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
warnings.showwarning = lambda message, *args, **kwargs: print("warning:", message, file=sys.stderr)
tiny = dict({tiny})
original = loop._one_step
def gated(run, step, log):
    if step == 2:
        Path(str(gate) + ".waiting").write_text("")
        while not gate.exists():
            time.sleep(0.05)
    return original(run, step, log)
loop._one_step = gated
config = Config(run_dir=run_dir, compilation_cache=cache, count_backward=False, **tiny)
print("finished at step", loop.train(config)["step"])
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("compilation-cache")


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu")


def _start_gated(run_dir: Path, gate: Path, cache: Path) -> subprocess.Popen:
    code = GATED_TRAINER.format(tiny=repr(TINY))
    return subprocess.Popen(
        [sys.executable, "-c", code, str(run_dir), str(gate), str(cache)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_at_gate(proc: subprocess.Popen, gate: Path, timeout: float = 300) -> None:
    waiting = Path(str(gate) + ".waiting")
    deadline = time.time() + timeout
    while not waiting.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the trainer ended early: {proc.communicate()[1][-3000:]}")
        assert time.time() < deadline, "the trainer never reached step 2"
        time.sleep(0.1)


def _steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def _saved(run_dir: Path) -> list[int]:
    latest = run_dir / "checkpoints" / "latest"
    return sorted(int(p.name) for p in latest.iterdir() if p.name.isdigit())


def test_a_second_trainer_is_refused_naming_the_holder_and_the_first_finishes_untouched(
    tmp_path, cache
):
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    first = _start_gated(run_dir, gate, cache)
    try:
        _wait_at_gate(first, gate)
        holder = json.loads((run_dir / LOCK).read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        written = {name: (run_dir / name).stat().st_mtime_ns for name in ("config.json",)}
        # The second trainer's options differ (a learning rate) but are compatible: without
        # the lock it would rewrite config.json and train on.
        second = subprocess.run(
            [sys.executable, str(ROOT / "experiments" / "train.py"), "--run-dir", str(run_dir)]
            + TINY_FLAGS.split()
            + ["--lr", "0.001", "--compilation-cache", str(cache), "--no-count-backward"],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 2, second.stderr[-3000:]
        assert "Traceback" not in second.stderr
        error = second.stderr.strip().splitlines()[-1]
        assert error.startswith(f"error: {run_dir} is in use: training pid {first.pid} on host ")
        assert socket.gethostname() in error
        assert {n: (run_dir / n).stat().st_mtime_ns for n in written} == written
        assert json.loads((run_dir / "config.json").read_text())["lr"] == Config.lr
    finally:
        gate.write_text("")
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == "finished at step 4"
    assert _steps(run_dir) == [1, 2, 3, 4]  # one run's rows, each step once
    assert _saved(run_dir) == [2, 4]
    assert not (run_dir / LOCK).exists()


def test_a_lock_left_by_a_killed_trainer_is_taken_over_and_the_run_resumes(tmp_path, cache):
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    killed = _start_gated(run_dir, gate, cache)
    try:
        _wait_at_gate(killed, gate)
    finally:
        killed.kill()  # SIGKILL: no finally, no atexit
        killed.communicate(timeout=60)
    assert json.loads((run_dir / LOCK).read_text())["pid"] == killed.pid  # left behind
    assert _steps(run_dir) == [1, 2]
    gate.write_text("")  # the resumed run goes straight on
    out, err = _start_gated(run_dir, gate, cache).communicate(timeout=300)
    assert f"resumed {run_dir} at step 2" in out, err[-3000:]
    assert out.strip().splitlines()[-1] == "finished at step 4"
    stale = [line for line in err.splitlines() if "stale lock" in line]
    assert len(stale) == 1 and f"pid {killed.pid} on host" in stale[0], err[-3000:]
    assert "is gone; taking the lock over" in stale[0]
    assert _steps(run_dir) == [1, 2, 3, 4]  # the killed run's rows, then the resumed ones
    assert _saved(run_dir) == [2, 4]
    assert not (run_dir / LOCK).exists()


# The lock itself, in one process.


def test_the_lock_records_its_holder_and_refuses_a_second_taker(tmp_path):
    lock = RunLock.acquire(tmp_path / "run")
    record = json.loads((tmp_path / "run" / LOCK).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert record["started"]
    with pytest.raises(RunDirectoryLocked, match=f"in use: training pid {os.getpid()} on host"):
        RunLock.acquire(tmp_path / "run")
    lock.release()
    assert not (tmp_path / "run" / LOCK).exists()
    lock.release()  # idempotent
    with RunLock.acquire(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK).exists()
    assert not (tmp_path / "run" / LOCK).exists()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _write_lock(run_dir: Path, **record) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK).write_text(json.dumps(record))
    return run_dir / LOCK


def test_a_lock_of_a_process_that_is_gone_is_taken_over_with_a_warning(tmp_path):
    pid = _dead_pid()
    path = _write_lock(tmp_path, pid=pid, host=socket.gethostname(), started="then")
    with pytest.warns(StaleLockWarning, match=f"pid {pid} on host .* is gone"):
        lock = RunLock.acquire(tmp_path)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_reused_pid_does_not_keep_a_stale_lock(tmp_path):
    # The pid runs (it is this process), but not the process that took the lock.
    _write_lock(tmp_path, pid=os.getpid(), host=socket.gethostname(), process_start=1)
    with pytest.warns(StaleLockWarning):
        RunLock.acquire(tmp_path).release()


def test_a_lock_of_another_host_is_never_broken(tmp_path):
    path = _write_lock(tmp_path, pid=_dead_pid(), host="elsewhere.invalid")
    with pytest.raises(RunDirectoryLocked, match=f"host elsewhere.invalid.*delete {path}"):
        RunLock.acquire(tmp_path)
    assert json.loads(path.read_text())["host"] == "elsewhere.invalid"


def test_an_unreadable_lock_is_busy_while_young_and_stale_when_old(tmp_path):
    path = tmp_path / LOCK
    path.write_text("")  # a taker between creating the file and writing its record
    with pytest.raises(RunDirectoryLocked, match="right now"):
        RunLock.acquire(tmp_path)
    old = time.time() - 60
    os.utime(path, (old, old))
    with pytest.warns(StaleLockWarning, match="unreadable"):
        RunLock.acquire(tmp_path).release()


def test_release_leaves_a_lock_that_is_no_longer_this_holders(tmp_path):
    lock = RunLock.acquire(tmp_path)
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": "other"}))
    lock.release()
    assert (tmp_path / LOCK).exists()


# The lock in training: held while it trains, gone after an error or Ctrl-C, lead only.


class _ProcessIndex:
    """jax, but with another process index."""

    def __init__(self, index):
        self.index = index

    def process_index(self):
        return self.index

    def __getattr__(self, name):
        return getattr(jax, name)


@pytest.mark.parametrize("lead", [True, False], ids=["lead", "not-lead"])
@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError], ids=["ctrl-c", "error"])
def test_training_holds_the_lock_and_lets_go_on_an_error_or_ctrl_c(
    tmp_path, monkeypatch, lead, stop
):
    run_dir = tmp_path / "run"
    seen = []

    def step_then_stop(run, step, log):
        seen.append((run_dir / LOCK).exists())
        raise stop("stopped by the test")

    monkeypatch.setattr(loop, "_one_step", step_then_stop)
    # set_up's view of the process index only (Orbax must still see process 0 here).
    monkeypatch.setattr(setup, "jax", _ProcessIndex(0 if lead else 1))
    with pytest.raises(stop, match="stopped by the test"):
        train(Config(run_dir=str(run_dir), **TINY))
    assert seen == [lead]
    assert not (run_dir / LOCK).exists()


def test_an_error_in_set_up_after_the_lock_lets_go(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no flow today")

    monkeypatch.setattr(setup, "build_flow", broken)
    with pytest.raises(RuntimeError, match="no flow today"):
        train(Config(run_dir=str(tmp_path / "run"), **TINY))
    assert (tmp_path / "run" / "config.json").exists()  # set_up got past the lock
    assert not (tmp_path / "run" / LOCK).exists()
