"""One writer per run directory: the lock file ``run_dir/.lock`` while a process trains.

The lock is a small JSON file naming its holder (pid, host, start time, and on Linux the
process's start tick, which tells a reused pid from the holder). It is created with
``os.open(O_CREAT | O_EXCL)``, so of two processes that try at once exactly one gets it.
A second trainer is refused with :class:`RunDirectoryLocked` (a ValueError: the command
line prints one line and exits 2) naming the holder.

A lock whose holder is gone (kill -9, a crash, a reboot) is stale: when it names this host
and its pid no longer runs (or runs another program since), a one-line
:class:`StaleLockWarning` says so and the lock is taken over. A lock held on another host
cannot be checked from here, so it is never broken: the message says which host holds it
and that deleting the file is the way out once that process is known to be gone.

The lock is released (the file removed, only if it is still this holder's) on a normal
end, on an exception and on Ctrl-C; an ``atexit`` hook also releases it if the process
ends without passing there. Multi-host runs take it in the lead process only (the one
that writes the run's files).

The standard library suffices: ``filelock``'s FileLock (an OS lock) records no holder,
and its soft lock's holder records and stale-lock breaking only exist in its recent
versions, behind private modules, with no way to say that a lock was taken over.
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import socket
import time
import warnings
from pathlib import Path

LOCK = ".lock"
# A lock file that is empty or unreadable for longer than this is a dead writer's (the
# holder writes its record right after creating the file).
_UNREADABLE_GRACE_S = 10.0


class RunDirectoryLocked(ValueError):
    """Another process trains in this run directory; the message names it."""


class StaleLockWarning(UserWarning):
    """A lock left by a process that is gone was taken over."""


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of the whole line: starttime
    except (IndexError, ValueError):
        return None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].startswith("Z")


def _alive(holder: dict) -> bool:
    """Whether the holder (on this host) still runs."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    if _is_zombie(pid):
        return False
    recorded, now = holder.get("process_start"), _process_start(pid)
    return recorded is None or now is None or recorded == now


def _describe(holder: dict) -> str:
    since = f", since {holder['started']}" if holder.get("started") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')}{since}"


class RunLock:
    """The lock on one run directory, held by this process; :meth:`release` frees it."""

    def __init__(self, path: Path, record: dict):
        self.path = path
        self.record = record
        self.held = True
        atexit.register(self.release)

    @classmethod
    def acquire(cls, run_dir: str | Path) -> RunLock:
        """Take the lock on ``run_dir`` (created if missing), or raise
        :class:`RunDirectoryLocked` naming its holder. A stale lock is taken over, with a
        :class:`StaleLockWarning`."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "process_start": _process_start(os.getpid()),
        }
        for _ in range(5):  # each retry follows a stale lock that was removed
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                _break_if_stale(path, run_dir)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
            return cls(path, record)
        raise RunDirectoryLocked(f"{run_dir} is in use: could not take its lock {path}")

    def release(self) -> None:
        """Remove the lock file if it is still this holder's; idempotent."""
        if not self.held:
            return
        self.held = False
        atexit.unregister(self.release)
        if _read(self.path) == self.record:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read(path: Path) -> dict | None:
    """The holder's record, or None if the file is missing, empty or not a record."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _break_if_stale(path: Path, run_dir: Path) -> None:
    """Raise RunDirectoryLocked if the lock's holder runs (or cannot be checked); remove
    the lock with a warning if its holder is gone."""
    holder = _read(path)
    if holder is None:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile: try again
        if age < _UNREADABLE_GRACE_S:  # its holder may be writing it right now
            raise RunDirectoryLocked(
                f"{run_dir} is in use: another process is taking its lock {path} right now; "
                "use another --run-dir"
            )
        reason = f"the lock file {path} is unreadable and {age:.0f} s old"
    elif holder.get("host") != socket.gethostname():
        raise RunDirectoryLocked(
            f"{run_dir} is in use: training {_describe(holder)} holds its lock {path}; "
            "wait for it to end or use another --run-dir (if that process is gone, delete "
            f"{path})"
        )
    elif _alive(holder):
        raise RunDirectoryLocked(
            f"{run_dir} is in use: training {_describe(holder)} holds its lock {path}; "
            "wait for it to end or use another --run-dir"
        )
    else:
        reason = f"its holder, {_describe(holder)}, is gone"
    # Move the stale file aside (atomic), then check that it is the one judged stale: a
    # process that took the lock in between gets its file back.
    aside = path.with_name(f"{LOCK}.stale.{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    if holder is not None and _read(aside) != holder:
        try:
            os.link(aside, path)  # fails if yet another process holds it now
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)
        return
    aside.unlink(missing_ok=True)
    message = f"stale lock on {run_dir}: {reason}; taking the lock over"
    warnings.warn(message, StaleLockWarning, stacklevel=4)
