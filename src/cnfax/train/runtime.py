"""What a training process needs around its steps: JAX's persistent compilation cache,
the time spent tracing, lowering and compiling, Equinox's runtime errors traced as NaNs
(so that the cache can keep the steps), a one-line cause for a failed step, and Ctrl-C
honoured between steps."""

from __future__ import annotations

import collections
import contextlib
import signal
import threading
from pathlib import Path

import equinox
import jax
from jax.experimental.compilation_cache import compilation_cache


def enable_compilation_cache(directory: str) -> None:
    """Keep compiled functions in JAX's persistent compilation cache under ``directory``
    (user home expanded), so that a repeated or resumed run loads them instead of compiling
    them; "" leaves JAX's own setting alone. XLA refuses to cache an executable holding a
    host callback: see :func:`errors_without_callbacks` and ``Config.count_backward``."""
    if not directory:
        return
    path = Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != str(path):
        # JAX opens its cache once per process: reopen it where this run asks.
        compilation_cache.reset_cache()
        jax.config.update("jax_compilation_cache_dir", str(path))
    # Steps compile in seconds; tiny helpers (about 0.1 s) are not worth a file each.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
    # No size limit (JAX's default): its LRU eviction fails on entries written without one.


# JAX's own timings of a jit's first call (jax._src.dispatch), by the names cnfax logs:
# tracing the Python function to a jaxpr, lowering it to StableHLO, and XLA's compile (or,
# with the persistent cache, loading the executable from it).
_COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_seconds",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_seconds",
    "/jax/core/compile/backend_compile_duration": "compile_seconds",
}


class _CompileClock(threading.local):
    """Per thread (an Orbax or user thread compiling at the same time is not this step's
    time): seconds by stage, and the spans not yet inside a reported outer one.

    Stages nest: tracing a step runs eager ops on concrete values (a dtype conversion, say)
    that lower and compile on their own, inside the trace's span. Each span is therefore
    counted exclusively, its duration less the spans it encloses, so that the stages add
    up to the wall time they took rather than counting the nested compile twice."""

    def __init__(self):
        self.totals: collections.Counter = collections.Counter()
        self.open_spans: list[tuple[float, float]] = []  # (start, end), reported, unclaimed


_clock = _CompileClock()


def _add_compile_span(event: str, start: float, end: float, **_) -> None:
    if event not in _COMPILE_EVENTS:
        return
    # An enclosing span is reported after all the spans it encloses (it ends last).
    inner = [(s, e) for s, e in _clock.open_spans if s >= start and e <= end]
    _clock.open_spans = [span for span in _clock.open_spans if span not in inner][-64:]
    _clock.open_spans.append((start, end))
    _clock.totals[_COMPILE_EVENTS[event]] += (end - start) - sum(e - s for s, e in inner)


jax.monitoring.register_event_time_span_listener(_add_compile_span)


def compile_seconds() -> dict[str, float]:
    """Seconds this thread has spent tracing, lowering and compiling (or loading compiled
    executables from the persistent cache), by stage, nested stages counted once; the
    difference of two calls is what happened between them."""
    return {name: _clock.totals[name] for name in _COMPILE_EVENTS.values()}


@contextlib.contextmanager
def errors_without_callbacks(enabled: bool):
    """Trace Equinox's runtime checks (``eqx.error_if``: a solve that ran out of steps, a
    non-finite input) as NaNs rather than as a raising host callback, which would keep the
    executable out of the compilation cache. A NaN loss or gradient rejects the step like
    the error did (``apply_if_finite``; the loop names the cause). Only tracing reads the
    mode, so entering this around every call costs nothing.

    Equinox reads this mode from its private ``_errors.EQX_ON_ERROR`` (set from the
    environment variable of that name at import); there is no public per-call switch, so
    a missing attribute (a future Equinox) leaves the checks as they are."""
    errors = getattr(equinox, "_errors", None)
    if not enabled or not hasattr(errors, "EQX_ON_ERROR"):
        yield
        return
    previous, errors.EQX_ON_ERROR = errors.EQX_ON_ERROR, "nan"
    try:
        yield
    finally:
        errors.EQX_ON_ERROR = previous


def describe_failure(error: RuntimeError, max_steps: int, tol: tuple[float, float]) -> str:
    """A one-line cause for an error raised inside a training step. Equinox's runtime
    errors reach us as XlaRuntimeError text, so the step budget is recognised by its
    message (Diffrax's "maximum number of solver steps")."""
    text = str(error)
    if "maximum number of solver steps" in text or "max_steps" in text:
        return f"a solve reached max_steps={max_steps} (rtol={tol[0]}, atol={tol[1]})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:200]


class StopOnInterrupt:
    """Turn the first Ctrl-C into a request that the loop honours between steps.

    A KeyboardInterrupt raised wherever the signal lands could fall inside a host callback
    of the compiled step, where XLA reports it as a RuntimeError (a failed step) instead of
    an interruption. A second Ctrl-C interrupts at once.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
