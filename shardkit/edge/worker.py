"""One background thread for the work that must stay off the request path.

Revalidating a stale entry, re-checking a sampled cache hit against its shard and refreshing the
map after an epoch mismatch all wait on the network; a request should not. The queue is bounded:
under a burst, extra jobs are dropped (and counted) instead of growing memory - each of them is
an optimisation or a sample, and a later request will ask again.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Background"]


class Background:
    """``submit(fn)`` runs ``fn()`` soon on a daemon thread (started on first use)."""

    def __init__(self, max_pending: int = 256, name: str = "shardkit-edge") -> None:
        self.max_pending = max_pending
        self.name = name
        self._jobs: deque[Callable[[], Any]] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False
        self.counts = {"run": 0, "dropped": 0, "failed": 0}
        self.last_error: str | None = None

    def __call__(self, fn: Callable[[], Any]) -> bool:
        return self.submit(fn)

    def submit(self, fn: Callable[[], Any]) -> bool:
        """Queue ``fn``; False (and counted) if the queue is full or the worker is closed."""
        with self._cond:
            if self._closed or len(self._jobs) >= self.max_pending:
                self.counts["dropped"] += 1
                return False
            self._jobs.append(fn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify()
            return True

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop taking jobs, finish the queued ones, and wait for the thread (up to ``timeout``)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            try:
                job()
                self.counts["run"] += 1
            except Exception as exc:  # a background job must never kill the worker
                self.counts["failed"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
