"""The routing client: what application code calls. ``client.infer(key, payload)``.

For each call it routes the key with the current signed map and sends the request to the owning
shard through a transport, then:

* **redirect** (421, the shard's map is newer): refresh the map and retry once on the new owner;
* **transient failure** (no reply, throttling, 503): retry with full-jitter exponential backoff,
  within a retry budget - at most ``budget_ratio`` retries per request on average, so a sick
  fleet is not hammered by its own clients;
* **failover**: a shard that keeps failing is avoided for ``avoid_s`` seconds, and requests go to
  the next shard of the key's preference list - always inside the key's jurisdiction; when none
  is left, :class:`NoEligibleShardError` (residency fails closed);
* **hedging** (optional): if the owner has not answered after ``hedge_after_s``, the same request
  (same request id, so it is applied once) is sent again and the first answer wins.

Every request carries a request id: retries and hedges of one call are applied at most once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InferenceError, RoutingError
from ..sharding.holder import MapHolder
from ..sharding.shardmap import Shard
from .transports import Transport, TransportError

__all__ = ["InferenceError", "Result", "RetryPolicy", "RoutingClient"]

_TRANSIENT = {429, 502, 503, 504}


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # per call, the first try included
    base_s: float = 0.02
    cap_s: float = 1.0
    budget_ratio: float = 0.2  # retries allowed per request, on average
    budget_floor: float = 10.0  # retries always allowed (bucket size)
    avoid_s: float = 5.0  # how long a failing shard is avoided
    failures_to_avoid: int = 2  # consecutive failures (not throttles) before it is avoided
    timeout_s: float = 30.0


@dataclass
class Result:
    """One answer and how it was obtained: the decision record of a routed request."""

    key: str
    answer: Any
    shard: str
    region: str
    jurisdiction: str
    epoch: int
    map_version: int
    seq: int
    latency_s: float
    attempts: int = 1
    redirected: bool = False
    failover: bool = False
    hedged: bool = False
    replayed: bool = False
    degraded: bool = False  # a replica answered without the key's state (failover)


class _Budget:
    """A token bucket: each request earns ``ratio`` retry tokens, each retry spends one."""

    def __init__(self, ratio: float, floor: float) -> None:
        self.ratio, self.cap, self.tokens = ratio, floor, floor
        self.lock = threading.Lock()

    def earn(self) -> None:
        with self.lock:
            self.tokens = min(self.cap, self.tokens + self.ratio)

    def spend(self) -> bool:
        with self.lock:
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False


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
        self._clock, self._sleep = clock, sleep
        self._budget = _Budget(self.retry.budget_ratio, self.retry.budget_floor)
        self._avoid: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._pool = _hedging_pool() if hedge_after_s is not None else None

    @classmethod
    def from_source(
        cls, source: str, trusted_keys: dict[str, bytes], transport: Transport, **options: Any
    ) -> RoutingClient:
        """A client whose map comes from ``source``: a file, an http(s) URL or an ``s3://``
        URI (see :func:`shardkit.routing.sources.map_source`); the map is loaded and verified
        now, and again whenever a shard says it is behind."""
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
        started = time.perf_counter()
        request_id = request_id or _new_request_id()
        self._budget.earn()
        redirected = failover = False
        attempts = 0
        last_error: Exception | None = None
        while attempts < self.retry.attempts:
            shard_map = self.holder.require()
            shard = self._pick(key, jurisdiction, shard_map)
            failover = failover or shard.id != shard_map.route(key, jurisdiction).id
            request = {
                "key": key,
                "payload": payload,
                "map_version": shard_map.version,
                "request_id": request_id,
            }
            if jurisdiction is not None:
                request["jurisdiction"] = jurisdiction
            if failover:
                request["failover"] = True
            attempts += 1
            try:
                reply, hedged = self._send(shard, request)
            except TransportError as exc:
                last_error = exc
                if not exc.throttled:  # a throttled shard is busy, not down: no failover
                    self._mark_failed(shard)
                if not exc.retryable or not self._backoff(attempts):
                    break
                continue
            self._failures.pop(shard.id, None)
            status = reply.get("status")
            if status == 200:
                return self._result(
                    key, reply, shard, started, attempts, redirected, failover, hedged
                )
            if status == 421 and not redirected:
                redirected = True
                self._refresh(reply)
                continue
            if status in _TRANSIENT and self._backoff(attempts):
                last_error = InferenceError(
                    str(reply.get("message", "")),
                    status=status,
                    code=str(reply.get("error")),
                    shard=shard.id,
                )
                continue
            raise InferenceError(
                f"shard {shard.id} answered {status} {reply.get('error')}: "
                f"{reply.get('message', reply.get('owner', ''))}",
                status=int(status or 0),
                code=str(reply.get("error")),
                shard=shard.id,
            )
        raise RoutingError(
            f"no answer for key {key!r} after {attempts} attempt(s): {last_error}",
            hint="the shard may be down; check `shardkit status`",
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.transport.close()

    # -- internals -------------------------------------------------------------------------------

    def _pick(self, key: str, jurisdiction: str | None, shard_map: Any) -> Shard:
        now = self._clock()
        avoided = {sid for sid, until in self._avoid.items() if until > now}
        if not avoided:
            return shard_map.route(key, jurisdiction)
        return shard_map.route_avoiding(key, avoided, jurisdiction)  # NoEligibleShardError

    def _mark_failed(self, shard: Shard) -> None:
        """Avoid a shard once it failed ``failures_to_avoid`` times in a row: one lost reply is
        not an outage, and every failover answer is a degraded one."""
        count = self._failures[shard.id] = self._failures.get(shard.id, 0) + 1
        if count >= self.retry.failures_to_avoid:
            self._avoid[shard.id] = self._clock() + self.retry.avoid_s

    def _backoff(self, attempts: int) -> bool:
        if attempts >= self.retry.attempts or not self._budget.spend():
            return False
        import random  # lazily: only a retry pays for it (edge import budget, DESIGN.md §3)

        ceiling = min(self.retry.cap_s, self.retry.base_s * 2 ** (attempts - 1))
        self._sleep(random.uniform(0, ceiling))  # full jitter
        return True

    def _refresh(self, reply: dict[str, Any]) -> None:
        before = self.holder.version
        self.holder.refresh()
        if self.holder.version <= before and reply.get("map_version", 0) > before:
            raise RoutingError(
                f"the shard reports map version {reply.get('map_version')}, but the registry "
                f"still serves version {before}",
                hint="the new map is not yet published everywhere; retry shortly",
            )

    def _send(self, shard: Shard, request: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        timeout = self.retry.timeout_s
        if self._pool is None:
            return self.transport.send(shard, request, timeout), False
        from concurrent.futures import FIRST_COMPLETED, wait

        first = self._pool.submit(self.transport.send, shard, request, timeout)
        done, _ = wait([first], timeout=self.hedge_after_s)
        if done:
            return first.result(), False
        second = self._pool.submit(self.transport.send, shard, request, timeout)
        done, _ = wait([first, second], return_when=FIRST_COMPLETED)
        winner = next(iter(done))
        try:
            return winner.result(), True
        except TransportError:
            other = second if winner is first else first
            return other.result(), True

    def _result(
        self,
        key: str,
        reply: dict[str, Any],
        shard: Shard,
        started: float,
        attempts: int,
        redirected: bool,
        failover: bool,
        hedged: bool,
    ) -> Result:
        if reply.get("shard") != shard.id:
            raise RoutingError(f"shard {shard.id} answered as {reply.get('shard')!r}")
        return Result(
            key=key,
            answer=reply.get("answer"),
            shard=shard.id,
            region=shard.region,
            jurisdiction=shard.jurisdiction,
            epoch=int(reply.get("epoch", 0)),
            map_version=int(reply.get("map_version", 0)),
            seq=int(reply.get("seq", 0)),
            latency_s=time.perf_counter() - started,
            attempts=attempts,
            redirected=redirected,
            failover=failover,
            hedged=hedged,
            replayed=bool(reply.get("replayed")),
            degraded=bool(reply.get("degraded")),
        )


def _new_request_id() -> str:
    import uuid  # lazily: uuid (and platform) are a measurable share of the edge import budget

    return uuid.uuid4().hex


def _hedging_pool() -> Any:
    """The hedging threads; concurrent.futures (and logging) load only when hedging is on."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=8)
