"""The edge runtime: answer from a local model or the cache when it can, else from the shard.

Per request (docs/architecture.md §6):

1. **map** - the current verified map (never fetched here; see :mod:`.trust`). An expired map
   fails the request with :class:`~shardkit.errors.MapExpiredError`: without it the key's
   jurisdiction, owner and epoch are unknown, so nothing else can be trusted either;
2. **local model** - answers if it claims the request with confidence >= ``local_threshold``;
3. **cache** - if the key's policy allows the payload *and* residency allows this node, an entry
   valid for the key's current owner, epoch and model version answers (``hit``; ``stale`` within
   the stale-while-revalidate window, while one background request refreshes it);
4. **shard** - through the :class:`~shardkit.routing.client.RoutingClient` (retries, redirects,
   and failover to a replica of the key's own jurisdiction, path ``failover``). Identical
   cacheable requests in flight together are coalesced into one. An answer is cached only if it
   came from the owner at the epoch the map names; a different epoch means the map is behind,
   so it is refreshed (in the background) and the answer is not cached;
5. **stale-if-error** - if the shard fails, an entry still within its policy's stale-if-error
   window answers (``stale``, with the failure in the record); beyond it the error is raised.

Requests that may not be cached (``bypass``) are never coalesced, and by default drop the key's
cached entries: they may be writes. Every answer comes back as a :class:`.record.Decision`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from ..errors import (
    InferenceError,
    InvalidKeyError,
    MapError,
    ResidencyError,
    RoutingError,
    ShardkitError,
)
from ..protocol import check_key
from .cache import FRESH, STALE, CacheKey, EdgeCache, Entry, fingerprint
from .coalesce import Coalescer
from .divergence import DivergenceMonitor
from .local import EdgeRequest, LocalModel
from .policy import CachePolicy, CacheRules, EdgePolicyError, Location
from .record import Counters, Decision
from .trust import MapTrust
from .versions import ModelVersions
from .worker import Background

if TYPE_CHECKING:
    from ..routing.client import Result, RetryPolicy, RoutingClient
    from ..routing.transports import Transport
    from ..sharding.holder import MapHolder
    from ..sharding.shardmap import Shard, ShardMap

__all__ = ["EdgeRuntime"]

_now = time.perf_counter
Submit = Callable[[Callable[[], Any]], Any]


class EdgeRuntime:
    """The compact runtime an edge node (or device, or app server) serves requests with."""

    def __init__(
        self,
        client: RoutingClient,
        *,
        location: Location | None = None,
        local: LocalModel | None = None,
        local_threshold: float = 0.9,
        rules: CacheRules | None = None,
        cache: EdgeCache | None = None,
        versions: ModelVersions | None = None,
        divergence: DivergenceMonitor | None = None,
        refresh_interval_s: float | None = None,
        background: Submit | None = None,
    ) -> None:
        """``background(fn)`` runs deferred work (default: one daemon thread with a bounded
        queue); ``refresh_interval_s`` starts a map refresher thread."""
        if not local_threshold > 0:
            raise EdgePolicyError(f"local_threshold = {local_threshold!r} must be > 0")
        self.client = client
        self.location = location if location is not None else Location()
        self.local, self.local_threshold = local, local_threshold
        self.rules = rules if rules is not None else CacheRules()
        self.cache = cache if cache is not None else EdgeCache()  # an empty cache is falsy
        self.versions = versions if versions is not None else ModelVersions()
        self.divergence = divergence
        self.trust = MapTrust(client.holder, interval_s=refresh_interval_s)
        self.counters = Counters()
        self._worker: Background | None = None
        if background is None:
            self._worker = Background()
            background = self._worker.submit
        self._submit: Submit = background
        self._flights = Coalescer()
        self._revalidating: set[Hashable] = set()
        self._refreshing = False
        self._lock = threading.Lock()
        if client.holder.current is None:
            self.trust.safe_refresh()  # at construction, not on a request; offline is tolerated
        self.trust.start()

    @classmethod
    def create(
        cls,
        holder: MapHolder,
        transport: Transport,
        *,
        retry: RetryPolicy | None = None,
        hedge_after_s: float | None = None,
        **options: Any,
    ) -> EdgeRuntime:
        """A runtime over a new :class:`RoutingClient` for ``holder`` and ``transport``."""
        from ..routing.client import RoutingClient

        return cls(
            RoutingClient(holder, transport, retry=retry, hedge_after_s=hedge_after_s), **options
        )

    # -- the request path --------------------------------------------------------------------------

    def infer(self, key: str, payload: Any = None, *, jurisdiction: str | None = None) -> Decision:
        """Answer ``payload`` for ``key``; the :class:`Decision` says how."""
        started = _now()
        try:
            decision = self._serve(key, payload, jurisdiction)
        except Exception:  # a ShardkitError (all the runtime and the client raise), counted
            self.counters.add("errors")
            raise
        decision.latency_s = _now() - started
        self.counters.count(decision)
        return decision

    def _serve(self, key: str, payload: Any, jurisdiction: str | None) -> Decision:
        check_key(key)  # before the local model or the cache: one key rule everywhere
        shard_map = self.trust.current()
        if self.local is not None:
            done = self._local(self.local, key, payload, jurisdiction, shard_map)
            if done is not None:
                return done
        owner = shard_map.route(key, jurisdiction)
        policy = self.rules.policy_for(key)
        fp = None
        if policy.allows(payload, owner.jurisdiction, self.location):
            fp = fingerprint(payload)
        if fp is None:
            return self._bypass(key, payload, jurisdiction, policy)
        return self._cached((key, fp), payload, jurisdiction, owner, policy)

    def _local(
        self,
        model: LocalModel,
        key: str,
        payload: Any,
        jurisdiction: str | None,
        shard_map: ShardMap,
    ) -> Decision | None:
        request = EdgeRequest(key, payload, jurisdiction)
        try:
            confidence = float(model.can_serve(request))
            if not confidence >= self.local_threshold:  # also refuses a NaN confidence
                return None
            answer = model.predict(request)
        except Exception:  # the local model is an optimisation: if it fails, the shard answers
            self.counters.add("local_errors")
            return None
        return Decision(
            key,
            answer,
            "local",
            "bypass",
            shard=None,
            region=self.location.region,
            jurisdiction=shard_map.jurisdiction_of(key, jurisdiction),
            epoch=None,
            map_version=shard_map.version,
            confidence=confidence,
        )

    def _cached(
        self,
        ck: CacheKey,
        payload: Any,
        jurisdiction: str | None,
        owner: Shard,
        policy: CachePolicy,
    ) -> Decision:
        version = self.versions.for_key(ck[0])
        entry, state = self.cache.lookup(ck, owner, version)
        if entry is not None and state == FRESH:
            self._maybe_check(ck, entry, payload, jurisdiction, policy, version)
            return _from_entry(ck[0], entry, "hit")
        if entry is not None and state == STALE:
            self._revalidate(ck, payload, jurisdiction, policy, version)
            return _from_entry(ck[0], entry, "stale")
        try:
            return self._fetch(ck, payload, jurisdiction, policy, version)
        except ShardkitError as exc:
            if (
                entry is None
                or not _shard_failure(exc)
                or not entry.servable_on_error(self.cache.clock())
            ):
                raise
            self.counters.add("stale_if_error")
            return _from_entry(ck[0], entry, "stale", error=exc.message)

    def _fetch(
        self,
        ck: CacheKey,
        payload: Any,
        jurisdiction: str | None,
        policy: CachePolicy,
        version: str,
    ) -> Decision:
        """Ask the shard, coalesced with identical requests in flight; cache the answer."""
        key = ck[0]
        ticket = self.cache.ticket(key)
        result, shared = self._flights.run(
            ck, lambda: self.client.infer(key, payload, jurisdiction=jurisdiction)
        )
        if not shared:
            self._fill(ck, result, jurisdiction, policy, version, ticket)
        return _from_result(result, "coalesced" if shared else "miss")

    def _bypass(
        self, key: str, payload: Any, jurisdiction: str | None, policy: CachePolicy
    ) -> Decision:
        drop = policy.invalidate_on_bypass and policy.stores
        if drop:
            self.cache.invalidate_key(key)  # before: voids reads and checks racing the write
        try:
            result = self.client.infer(key, payload, jurisdiction=jurisdiction)
        finally:
            if drop:
                self.cache.invalidate_key(key)  # after, even on failure: it may have landed
        self._confirmed_owner(result, key, jurisdiction)
        return _from_result(result, "bypass")

    # -- filling, checking, revalidating -----------------------------------------------------------

    def _fill(
        self,
        ck: CacheKey,
        result: Result,
        jurisdiction: str | None,
        policy: CachePolicy,
        version: str,
        ticket: int,
    ) -> bool:
        owner = self._confirmed_owner(result, ck[0], jurisdiction)
        if owner is None:
            return False
        return self.cache.put(
            ck,
            result.answer,
            shard=owner,
            map_version=result.map_version,
            version=version,
            policy=policy,
            ticket=ticket,
        )

    def _confirmed_owner(self, result: Result, key: str, jurisdiction: str | None) -> Shard | None:
        """The key's owner if ``result`` is its answer at the epoch the map names, else None.
        A failover answer (a replica, without the key's state) never qualifies."""
        if result.failover:
            return None
        held = self.trust.holder.current
        if held is None:
            return None
        owner = held.route(key, jurisdiction)
        if owner.id == result.shard and owner.epoch == result.epoch:
            return owner
        self.counters.add("epoch_mismatch")
        self._refresh_soon()
        return None

    def _maybe_check(
        self,
        ck: CacheKey,
        entry: Entry,
        payload: Any,
        jurisdiction: str | None,
        policy: CachePolicy,
        version: str,
    ) -> None:
        monitor = self.divergence
        if monitor is not None and monitor.sample():
            ticket = self.cache.ticket(ck[0])  # as of the hit
            self._submit(
                lambda: self._check(ck, entry, payload, jurisdiction, policy, version, ticket)
            )

    def _check(
        self,
        ck: CacheKey,
        entry: Entry,
        payload: Any,
        jurisdiction: str | None,
        policy: CachePolicy,
        version: str,
        ticket: int,
    ) -> None:
        """Re-ask the origin for a sampled hit; a different answer is divergence (and heals).
        A write to the key through this node since the hit voids the check: the entry is gone
        and the origin has moved on for a reason the edge knows about."""
        monitor = self.divergence
        assert monitor is not None
        try:
            result = self.client.infer(ck[0], payload, jurisdiction=jurisdiction)
        except ShardkitError:
            monitor.failed()
            return
        if self.cache.ticket(ck[0]) != ticket:
            self.counters.add("checks_voided")
            return
        diverged = result.answer != entry.answer()
        if diverged:
            self.counters.add("divergent")
            self._fill(ck, result, jurisdiction, policy, version, ticket)
        monitor.record(diverged)

    def _revalidate(
        self,
        ck: CacheKey,
        payload: Any,
        jurisdiction: str | None,
        policy: CachePolicy,
        version: str,
    ) -> None:
        """One background refresh per stale entry, however many requests see it stale."""
        with self._lock:
            if ck in self._revalidating:
                return
            self._revalidating.add(ck)

        def job() -> None:
            try:
                self._fetch(ck, payload, jurisdiction, policy, version)
            except ShardkitError:
                self.counters.add("revalidate_errors")
            finally:
                with self._lock:
                    self._revalidating.discard(ck)

        if not self._submit(job):
            with self._lock:
                self._revalidating.discard(ck)

    def _refresh_soon(self) -> None:
        """A map refresh off the request path; one at a time, however many answers disagree."""
        if self.trust.interval_s is not None:
            self.trust.nudge()
            return
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True

        def job() -> None:
            try:
                self.trust.safe_refresh()
            finally:
                self._refreshing = False

        if not self._submit(job):
            self._refreshing = False

    # -- control -----------------------------------------------------------------------------------

    def offer(self, data: bytes) -> bool:
        """A signed map pushed by the control plane: verified now, swapped in if newer. Refused
        maps (undecodable, tampered, older, expired) raise a MapError, are counted in
        ``stats()["map"]["refused"]`` and change nothing."""
        return self.trust.offer(data)

    def refresh(self) -> bool:
        """Pull the map from the registry. False if unchanged or unreachable (offline mode:
        ``stats()["map"]["offline"]``); a refused map raises a MapError."""
        return self.trust.refresh()

    def set_model_version(self, version: str, pattern: str = "*") -> None:
        """Keys matching ``pattern`` are now served by model ``version``: exactly their cached
        answers stop being used."""
        self.versions.set(version, pattern)

    def stats(self) -> dict[str, Any]:
        """Counters per path and cache status, the routing client's counters, cache, map,
        divergence and background state."""
        return {
            "counters": self.counters.snapshot(),
            "client": self.client.router.stats(),
            "cache": self.cache.stats(),
            "map": self.trust.stats(),
            "divergence": self.divergence.stats() if self.divergence is not None else None,
            "waiting": self._flights.waiting(),
            "background": dict(self._worker.counts) if self._worker is not None else None,
        }

    def close(self) -> None:
        self.trust.close()
        if self._worker is not None:
            self._worker.close()
        self.client.close()

    def __enter__(self) -> EdgeRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _from_entry(key: str, entry: Entry, status: str, error: str | None = None) -> Decision:
    return Decision(
        key,
        entry.answer(),
        "cache",
        status,
        shard=entry.shard,
        region=entry.region,
        jurisdiction=entry.jurisdiction,
        epoch=entry.epoch,
        map_version=entry.map_version,
        error=error,
    )


def _from_result(result: Result, status: str) -> Decision:
    return Decision(
        result.key,
        result.answer,
        "failover" if result.failover else "shard",
        status,
        shard=result.shard,
        region=result.region,
        jurisdiction=result.jurisdiction,
        epoch=result.epoch,
        map_version=result.map_version,
    )


def _shard_failure(exc: ShardkitError) -> bool:
    """Errors a stale answer may stand in for: the shard (or all of the key's shards) failed or
    is overloaded. Not a bad map, a residency refusal or a 4xx - papering over those is wrong."""
    if isinstance(exc, MapError | ResidencyError | InvalidKeyError):
        return False
    if isinstance(exc, InferenceError):  # the shard answered, with an error status
        return exc.status >= 500 or exc.status == 429
    return isinstance(exc, RoutingError)
