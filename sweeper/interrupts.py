"""SIGINT and SIGTERM as ``KeyboardInterrupt``, raised where it is safe.

A signal handler that raises at once can land in the middle of a store write (MLflow creating the
trial's run, Optuna recording its run id) and leave that connection's SQLite write lock held, so
the cleanup's own writes wait out the busy timeout: the worker hangs instead of stopping. While a
job runs (``deferred``), the handler only records the signal; the training loop raises it at the
next step (``raise_if_requested``), where no write is in flight. Elsewhere it raises at once, so
a sweep waiting on a batch of jobs in other processes still stops on Ctrl-C.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_deferring = 0
_pending: list[str] = []


def _handler(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    if _deferring:
        _pending.append(name)
        return
    raise KeyboardInterrupt(name)


def install() -> Callable[[], None]:
    """Handle SIGINT and SIGTERM (docker stop, a scheduler's preemption) like Ctrl-C; returns the undo.
    A no-op outside the main thread, where Python cannot set handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


@contextmanager
def deferred() -> Iterator[None]:
    """Within: a signal is recorded, not raised; one still pending at the end is raised then."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring:
        raise_if_requested()


def raise_if_requested() -> None:
    """Raise the recorded signal as ``KeyboardInterrupt`` (its name as the message), if there is one."""
    if _pending:
        name = _pending[0]
        _pending.clear()
        raise KeyboardInterrupt(name)
