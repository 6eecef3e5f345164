"""Divergence checks: how often a cache hit differs from what its shard would answer now.

A TTL bounds how *old* an answer can be, not how *wrong*: a key written through another edge
node, or a model change nobody announced, makes cached answers diverge from the origin. A sampled
fraction of cache hits is therefore re-asked of the shard (in the background, never on the
request path) and compared. Over a sliding window of the latest checks, a divergence rate above
the budget raises an alarm: the callback fires and ``alarms`` is incremented, once per crossing
(the alarm re-arms when the rate falls back within the budget).

Sampling is a deterministic accumulator (every ``1/sample_rate``-th hit), not a random draw: the
fraction is exact, the data plane does not import ``random``, and tests need no seed.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from .policy import EdgePolicyError

__all__ = ["DivergenceMonitor"]


class DivergenceMonitor:
    """Samples cache hits, records check outcomes, raises the alarm beyond ``budget``."""

    def __init__(
        self,
        sample_rate: float = 0.01,
        budget: float = 0.02,
        *,
        window: int = 500,
        min_checks: int = 20,
        on_alarm: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not 0 <= sample_rate <= 1 or not 0 <= budget <= 1:
            raise EdgePolicyError(
                f"divergence sample_rate={sample_rate} and budget={budget} "
                "must be fractions between 0 and 1"
            )
        if window < 1 or not 1 <= min_checks <= window:
            raise EdgePolicyError(
                f"divergence window={window}, min_checks={min_checks}: "
                "need 1 <= min_checks <= window"
            )
        self.sample_rate, self.budget = sample_rate, budget
        self.min_checks = min_checks
        self.on_alarm = on_alarm
        self._acc = 0.0
        self._window: deque[bool] = deque(maxlen=window)
        self._in_window = 0
        self._lock = threading.Lock()
        self.alarming = False
        self.counts = {"sampled": 0, "checks": 0, "divergent": 0, "alarms": 0, "errors": 0}

    def sample(self) -> bool:
        """Called on every cache hit: True for the hits to re-check."""
        self._acc += self.sample_rate  # unlocked: a lost update only shifts one sample
        if self._acc < 1.0:
            return False
        self._acc -= 1.0
        self.counts["sampled"] += 1
        return True

    @property
    def rate(self) -> float:
        """Divergent checks / checks, over the window."""
        n = len(self._window)
        return self._in_window / n if n else 0.0

    def record(self, diverged: bool) -> None:
        """One check's outcome; fires the alarm when the window's rate crosses the budget."""
        with self._lock:
            if len(self._window) == self._window.maxlen and self._window[0]:
                self._in_window -= 1
            self._window.append(diverged)
            self._in_window += diverged
            self.counts["checks"] += 1
            self.counts["divergent"] += diverged
            over = len(self._window) >= self.min_checks and self.rate > self.budget
            fire = over and not self.alarming
            self.alarming = over
            if fire:
                self.counts["alarms"] += 1
            snapshot = self._stats_locked()
        if fire and self.on_alarm is not None:
            self.on_alarm(snapshot)

    def failed(self) -> None:
        """A check that got no answer: counted, but neither agreement nor divergence."""
        with self._lock:
            self.counts["errors"] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self._stats_locked()

    def _stats_locked(self) -> dict[str, Any]:
        return {
            **self.counts,
            "rate": self.rate,
            "budget": self.budget,
            "window": len(self._window),
            "alarming": self.alarming,
        }
