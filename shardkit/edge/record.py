"""The decision record of an edge request, and the counters they add up to.

Every answer the edge runtime returns says how it was obtained: the **path** (``local`` model,
``cache``, owning ``shard``, or a ``failover`` replica of the key's jurisdiction), the shard and
region that made the answer, the epoch and map version it was made under, the **cache status**
(``hit``, ``miss``, ``stale``, ``bypass``, ``coalesced``) and the latency. A cache answer carries
the shard, region and epoch of the entry's fill; a local answer has no shard and the edge's own
region. The runtime counts every record by path and by cache status.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["CACHE_STATUSES", "PATHS", "Counters", "Decision"]

PATHS = ("local", "cache", "shard", "failover")
CACHE_STATUSES = ("hit", "miss", "stale", "bypass", "coalesced")


class Decision:
    """One answer and how it was obtained."""

    __slots__ = (
        "answer",
        "cache",
        "confidence",
        "epoch",
        "error",
        "jurisdiction",
        "key",
        "latency_s",
        "map_version",
        "path",
        "region",
        "shard",
    )

    def __init__(
        self,
        key: str,
        answer: Any,
        path: str,
        cache: str,
        *,
        shard: str | None,
        region: str | None,
        jurisdiction: str,
        epoch: int | None,
        map_version: int,
        confidence: float | None = None,
        error: str | None = None,
    ) -> None:
        self.key = key
        self.answer = answer
        self.path = path
        self.cache = cache
        self.shard = shard
        self.region = region
        self.jurisdiction = jurisdiction
        self.epoch = epoch
        self.map_version = map_version
        self.confidence = confidence  # the local model's claim, on the local path
        self.error = error  # the shard failure a stale answer stood in for
        self.latency_s = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return (
            f"Decision({self.key!r}, path={self.path!r}, cache={self.cache!r}, "
            f"shard={self.shard!r}, epoch={self.epoch}, "
            f"latency_ms={self.latency_s * 1000:.3f})"
        )


class Counters:
    """Thread-safe named counters: ``path.<path>``, ``cache.<status>`` and the runtime's own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(
            [f"path.{p}" for p in PATHS] + [f"cache.{s}" for s in CACHE_STATUSES], 0
        )

    def count(self, decision: Decision) -> None:
        with self._lock:
            self._counts["path." + decision.path] += 1
            self._counts["cache." + decision.cache] += 1

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
