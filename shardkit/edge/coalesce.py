"""Request coalescing (single-flight): a burst of identical reads costs the shard one request.

When an entry is missing or expires, every edge request for it would otherwise go to the shard at
once - a thundering herd on exactly the key that is hot. :class:`Coalescer` lets the first caller
for a flight key run the call while the others wait for its outcome (answer or error). Only
requests that may be cached (read-only by policy) are coalesced; writes never are, since each one
must be applied.

Waiting uses a plain lock the leader holds for the call: cheaper to create than an Event, and a
miss pays for one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["Coalescer"]


class _Flight:
    __slots__ = ("done", "error", "value", "waiters")

    def __init__(self) -> None:
        self.done = threading.Lock()
        self.done.acquire()
        self.value: Any = None
        self.error: BaseException | None = None
        self.waiters = 0


class Coalescer:
    """``run(key, fn)``: at most one ``fn`` per key in flight; the others share its outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, _Flight] = {}

    def run(self, key: Hashable, fn: Callable[[], Any]) -> tuple[Any, bool]:
        """``(value, shared)``: ``shared`` is True for a caller that waited for another's call.
        A follower re-raises the leader's exception."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
            else:
                flight.waiters += 1
        if not leader:
            flight.done.acquire()
            flight.done.release()
            if flight.error is not None:
                raise flight.error
            return flight.value, True
        try:
            flight.value = fn()
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.release()
        return flight.value, False

    def busy(self, key: Hashable) -> bool:
        """Whether a call for ``key`` is in flight now."""
        return key in self._flights

    def waiting(self) -> int:
        """Callers currently waiting for another's call (a gauge)."""
        with self._lock:
            return sum(f.waiters for f in self._flights.values())
