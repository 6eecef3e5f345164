"""The routing client: what application code calls. ``client.infer(key, payload)``.

For each call it routes the key with the current signed map and sends the request to the owning
shard through a transport, then:

* **redirect** (421, the shard's map is newer): refresh the map and retry once on the new owner;
* **missing shard** (the transport says the shard does not exist - a removed shard of a stale
  map): the same one hop - refresh the map and route again; if the registry serves no newer map,
  the shard is missing from the deployment and the key fails over; if the registry cannot be
  read, the call fails (:class:`~shardkit.errors.RegistryUnreachableError`) rather than let a
  replica answer for a key whose owner may be healthy;
* **transient failure** (no reply, throttling, 503): retry with full-jitter exponential backoff,
  within a retry budget - at most ``budget_ratio`` retries per request on average, so a sick
  fleet is not hammered by its own clients;
* **failover**: a shard that keeps failing is avoided for ``avoid_s`` seconds, and requests go to
  the next shard of the key's preference list - always inside the key's jurisdiction; when none
  is left, :class:`NoEligibleShardError` (residency fails closed);
* **hedging** (optional): if the owner has not answered after ``hedge_after_s``, the same request
  (same request id, so it is applied once) is sent again and the first answer wins.

Every request carries a request id: retries and hedges of one call are applied at most once.
Every error a call raises is a :class:`~shardkit.errors.ShardkitError`; ``stats()`` counts
what the client did besides answering (:data:`~shardkit.routing.decide.COUNTERS`).

The decisions are made without I/O in :mod:`.decide` (shared with the asyncio client); this
module does the I/O they ask for: it sends through the transport (hedging with threads), sleeps
and refreshes the map.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..errors import InferenceError
from ..sharding.holder import MapHolder
from ..sharding.shardmap import Shard
from .decide import Fetched, Refresh, Result, RetryPolicy, Router, Send, Sent, Sleep, Step
from .transports import Transport, failure

__all__ = ["InferenceError", "Result", "RetryPolicy", "RoutingClient"]


class RoutingClient:
    def __init__(
        self,
        holder: MapHolder,
        transport: Transport,
        *,
        retry: RetryPolicy | None = None,
        hedge_after_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.holder = holder
        self.transport = transport
        self.retry = retry or RetryPolicy()
        self.hedge_after_s = hedge_after_s
        self.router = Router(holder, self.retry, clock)
        self._sleep = sleep
        self._pool = _hedging_pool() if hedge_after_s is not None else None

    @classmethod
    def from_source(
        cls, source: str, trusted_keys: dict[str, bytes], transport: Transport, **options: Any
    ) -> RoutingClient:
        """A client whose map comes from ``source``: a file path or ``file://`` URI, an
        http(s) URL or an ``s3://`` URI (see :func:`shardkit.routing.sources.map_source`). The
        map is loaded and verified now - :class:`~shardkit.errors.RegistryUnreachableError` if
        it cannot be read, a :class:`~shardkit.errors.MapError` if it is refused - and again
        whenever a shard says it is behind."""
        from .sources import map_source

        holder = MapHolder(trusted_keys, map_source(source))
        holder.refresh()
        return cls(holder, transport, **options)

    def infer(
        self,
        key: str,
        payload: Any = None,
        *,
        jurisdiction: str | None = None,
        request_id: str | None = None,
    ) -> Result:
        """Send ``payload`` for ``key`` to its shard and return the answer with its record."""
        calling = self.router.call(key, payload, jurisdiction, request_id or new_request_id())
        done: Sent | None = None
        while (step := calling.next(done)) is not None:
            done = self._do(step)
        assert calling.result is not None
        return calling.result

    def stats(self) -> dict[str, Any]:
        """``counters`` (:data:`~shardkit.routing.decide.COUNTERS`) and ``map`` (the holder's
        version, fetches, refusals and reachability: ``MapHolder.stats()``)."""
        return {"counters": self.router.stats(), "map": self.holder.stats()}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.transport.close()

    # -- the I/O ---------------------------------------------------------------------------------

    def _do(self, step: Step) -> Sent | Fetched | None:
        if isinstance(step, Send):
            try:
                return self._send(step.shard, step.request)
            except Exception as exc:  # the router decides; nothing foreign reaches the caller
                return Sent(failure(step.shard, exc))
        if isinstance(step, Sleep):
            self._sleep(step.seconds)
        elif isinstance(step, Refresh):
            return step.run(self.holder)
        return None

    def _send(self, shard: Shard, request: dict[str, Any]) -> Sent:
        timeout = self.retry.timeout_s
        if self._pool is None:
            return Sent(self.transport.send(shard, request, timeout))
        from concurrent.futures import FIRST_COMPLETED, wait

        first = self._pool.submit(self.transport.send, shard, request, timeout)
        done, _ = wait([first], timeout=self.hedge_after_s)
        if done:
            return Sent(first.result())
        second = self._pool.submit(self.transport.send, shard, request, timeout)
        done, _ = wait([first, second], return_when=FIRST_COMPLETED)
        winner = next(iter(done))
        try:
            return Sent(winner.result(), hedged=True)
        except Exception:  # the other one may still answer
            other = second if winner is first else first
            return Sent(other.result(), hedged=True)


def new_request_id() -> str:
    import uuid  # lazily: uuid (and platform) are a measurable share of the edge import budget

    return uuid.uuid4().hex


def _hedging_pool() -> Any:
    """The hedging threads; concurrent.futures (and logging) load only when hedging is on."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=8)
