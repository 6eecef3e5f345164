"""The SLO guard: whether a migration may go on, from the proxies' own error metrics.

While slots move, the executor asks :meth:`Guard.check` before each change of slot records. It
sums the ``requests`` and ``errors`` metrics (the EMF every proxy emits, namespace ``shardkit``,
dimensions ``shard`` and ``service``) of the shards the step involves - old and new owners - over
the last ``window_s`` seconds, never before the migration began. Over ``error_budget`` (a share
of the requests, judged from ``min_requests`` up) the guard raises
:class:`~shardkit.errors.MigrationAbortedError` at once (``on_breach = "abort"``) or after
waiting up to ``pause_s`` for the rate to recover (``"pause"``); the caller then gives the slots
that have not switched back to their old owners.

The decision (:func:`verdict`) is pure; reading CloudWatch is the ``read`` callable's job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from ..errors import MigrationAbortedError

__all__ = ["Budget", "Guard", "Reading", "verdict"]

# (shard, region, start, end) -> (errors, requests), epoch seconds
ReadMetrics = Callable[[str, str, float, float], tuple[float, float]]
_POLL_S = 5.0


@dataclass(frozen=True)
class Budget:
    """The configured error budget (``[migration]`` in shardkit.toml)."""

    error_budget: float = 0.05
    min_requests: int = 20
    window_s: int = 120
    on_breach: str = "abort"
    pause_s: int = 120

    def to_dict(self) -> dict[str, Any]:
        return {
            "error_budget": self.error_budget,
            "min_requests": self.min_requests,
            "window_s": self.window_s,
            "on_breach": self.on_breach,
            "pause_s": self.pause_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Budget:
        return cls(**{k: data[k] for k in cls().to_dict() if k in data})


@dataclass(frozen=True)
class Reading:
    """Errors and requests of the involved shards over the window."""

    errors: float
    requests: float

    @property
    def rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"errors": self.errors, "requests": self.requests, "error_rate": self.rate}


def verdict(reading: Reading, budget: Budget) -> bool:
    """True when the migration may go on: too few requests to judge, or within budget."""
    return reading.requests < budget.min_requests or reading.rate <= budget.error_budget


class Guard:
    """Checks the budget for a set of shards (``{shard: region}``) since ``started``."""

    def __init__(
        self,
        budget: Budget,
        read: ReadMetrics,
        shards: Mapping[str, str],
        started: float,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        report: Callable[[dict[str, Any]], None] = lambda event: None,
    ) -> None:
        self.budget, self.read, self.shards = budget, read, dict(shards)
        self.started, self.clock, self.sleep, self.report = started, clock, sleep, report

    def reading(self) -> Reading:
        end = self.clock()
        start = max(self.started, end - self.budget.window_s)
        errors = requests = 0.0
        for shard, region in sorted(self.shards.items()):
            e, r = self.read(shard, region, start, end)
            errors, requests = errors + e, requests + r
        return Reading(errors, requests)

    def check(self, phase: str) -> Reading:
        """The reading, if within budget; else pause (if so configured) or raise."""
        reading = self.reading()
        if verdict(reading, self.budget):
            return reading
        deadline = self.clock() + (self.budget.pause_s if self.budget.on_breach == "pause" else 0)
        while self.clock() < deadline:
            self.report({"event": "paused", "phase": phase, **reading.to_dict()})
            self.sleep(min(_POLL_S, max(0.0, deadline - self.clock())))
            reading = self.reading()
            if verdict(reading, self.budget):
                self.report({"event": "resumed", "phase": phase, **reading.to_dict()})
                return reading
        raise MigrationAbortedError(
            f"the error budget was exceeded before {phase}: {reading.errors:g} errors in "
            f"{reading.requests:g} requests ({reading.rate:.1%} > "
            f"{self.budget.error_budget:.1%}) on shards {', '.join(sorted(self.shards))}",
            hint="the slots that had not switched were given back to their old owners; fix the "
            "failing shards, then deploy again (or `shardkit rollback`)",
        )


def cloudwatch_reader(
    call: Callable[..., dict[str, Any]], service: str, namespace: str = "shardkit"
) -> ReadMetrics:
    """A :data:`ReadMetrics` over CloudWatch ``GetMetricStatistics``; ``call(region, operation,
    **params)`` makes the call."""
    from datetime import datetime

    def total(region: str, shard: str, metric: str, start: float, end: float) -> float:
        answer = call(
            region,
            "get_metric_statistics",
            Namespace=namespace,
            MetricName=metric,
            Dimensions=[{"Name": "shard", "Value": shard}, {"Name": "service", "Value": service}],
            StartTime=datetime.fromtimestamp(int(start), UTC),
            EndTime=datetime.fromtimestamp(int(end) + 1, UTC),
            Period=60,
            Statistics=["Sum"],
        )
        points: Sequence[Mapping[str, Any]] = answer.get("Datapoints", [])
        return float(sum(p.get("Sum", 0.0) for p in points))

    def read(shard: str, region: str, start: float, end: float) -> tuple[float, float]:
        return (
            total(region, shard, "errors", start, end),
            total(region, shard, "requests", start, end),
        )

    return read
