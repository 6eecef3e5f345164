"""The edge runtime (docs/architecture.md §6), through its public API, against MockTransport
shards.

Maps are real: built with ``shardkit.build_map``, signed, and verified by a ``MapHolder``. Time is
a fake clock shared by the holder (map expiry) and the cache (TTLs), so nothing here depends on
the wall clock. Background work runs inline unless a test is about the threads themselves.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shardkit
from shardkit.edge import (
    CachePolicy,
    CacheRules,
    DivergenceMonitor,
    EdgeCache,
    EdgePolicyError,
    EdgeRequest,
    EdgeRuntime,
    Location,
    payload_field,
)
from shardkit.protocol import Answer, ErrorReply, Redirect
from shardkit.routing import MockTransport, RetryPolicy, RoutingClient, TransportError
from shardkit.sharding.holder import MapHolder

READ = {"text": "the shard", "learn": False}
US_NODE = Location("us-east-1", "us")
EU_NODE = Location("eu-west-1", "eu")
CACHE_ALL = CacheRules([CachePolicy("*", ttl_s=10, resident_only=())])


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Fleet:
    """Every shard of a map, as the proxy answers: owner, epoch, map version. ``generation``
    stands for the shards' state: change it and their answers change."""

    def __init__(self, shard_map: shardkit.ShardMap) -> None:
        self.map = shard_map
        self.generation = 0
        self.down: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.before_answer: Callable[[], None] | None = None
        self.epoch_skew = 0

    def __call__(self, shard: shardkit.Shard, request: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.calls.append((shard.id, request["key"]))
        if self.before_answer is not None:
            self.before_answer()
        if shard.id in self.down or "*" in self.down:
            raise TransportError(f"{shard.id} is down")
        owner = self.map.route(request["key"], request.get("jurisdiction"))
        answer = {"key": request["key"], "payload": request["payload"], "gen": self.generation}
        epoch = owner.epoch + self.epoch_skew if owner.id == shard.id else 0
        return Answer(answer, shard.id, epoch, self.map.version, 0).to_wire()

    def calls_for(self, key: str) -> int:
        return sum(k == key for _, k in self.calls)


@pytest.fixture
def clock(quickstart_map: shardkit.ShardMap) -> Clock:
    return Clock(quickstart_map.created_at + 100)


@pytest.fixture
def seal(signing_key: shardkit.SigningKey) -> Callable[[shardkit.ShardMap], bytes]:
    return lambda m: shardkit.encode_map(m, signing_key.key_id, signing_key.sign)


@pytest.fixture
def edge_for(
    trusted_keys: dict[str, bytes], seal: Callable[[shardkit.ShardMap], bytes], clock: Clock
) -> Callable[..., tuple[EdgeRuntime, Fleet]]:
    made: list[EdgeRuntime] = []

    def make(
        shard_map: shardkit.ShardMap,
        *,
        fetch: Callable[[], bytes] | None = None,
        cache: EdgeCache | None = None,
        inline: bool = True,
        **options: Any,
    ) -> tuple[EdgeRuntime, Fleet]:
        holder = MapHolder(trusted_keys, fetch, clock=clock)
        holder.offer(seal(shard_map))
        fleet = Fleet(shard_map)
        client = RoutingClient(
            holder,
            MockTransport(fleet),
            clock=clock,
            sleep=lambda s: None,
            retry=RetryPolicy(attempts=3),
        )
        options.setdefault("location", US_NODE)
        if inline:
            options.setdefault("background", lambda fn: fn() or True)
        cache = cache if cache is not None else EdgeCache(clock=clock)
        edge = EdgeRuntime(client, cache=cache, **options)
        made.append(edge)
        return edge, fleet

    yield make
    for edge in made:
        edge.close()


def keys(n: int, prefix: str = "user-") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


@pytest.fixture
def resharded(
    quickstart_map: shardkit.ShardMap, quickstart_dict: dict[str, Any], config_from: Any
) -> shardkit.ShardMap:
    """The quickstart with a fifth eu shard: some eu keys move, every eu epoch bumps, us stays."""
    quickstart_dict["groups"]["eu"]["shards"] = 5
    return shardkit.build_map(
        config_from(quickstart_dict), quickstart_map, now=quickstart_map.created_at + 50
    )


# -- exact invalidation ---------------------------------------------------------------------------


def test_a_reshard_invalidates_exactly_the_keys_whose_owner_or_epoch_changed(
    edge_for: Any, quickstart_map: shardkit.ShardMap, resharded: shardkit.ShardMap, seal: Any
) -> None:
    edge, fleet = edge_for(quickstart_map, rules=CACHE_ALL)
    names = keys(40) + keys(40, "eu:user-")
    for k in names:
        assert edge.infer(k, READ).cache == "miss"
    assert all(edge.infer(k, READ).cache == "hit" for k in names)

    new = resharded
    assert edge.offer(seal(new))
    fleet.map = new
    old_owner, new_owner = quickstart_map.route, new.route
    kept = {
        k
        for k in names
        if (old_owner(k).id, old_owner(k).epoch) == (new_owner(k).id, new_owner(k).epoch)
    }
    moved = {k for k in names if old_owner(k).id != new_owner(k).id}
    refenced = set(names) - kept - moved
    assert kept and moved and refenced  # the reshard exercises all three cases

    statuses = {k: edge.infer(k, READ).cache for k in names}
    assert {k for k, s in statuses.items() if s == "hit"} == kept
    assert {k for k, s in statuses.items() if s == "miss"} == moved | refenced
    # the refills carry the new owner and epoch, so the next round hits everywhere
    again = {k: edge.infer(k, READ) for k in names}
    assert all(d.cache == "hit" for d in again.values())
    assert all(
        (d.shard, d.epoch) == (new_owner(k).id, new_owner(k).epoch) for k, d in again.items()
    )


def test_a_model_version_change_invalidates_exactly_the_keys_it_covers(
    edge_for: Any, quickstart_map: shardkit.ShardMap
) -> None:
    edge, fleet = edge_for(quickstart_map, rules=CACHE_ALL)
    tenant_a, others = keys(10, "tenant-a:"), keys(10, "tenant-b:") + keys(10)
    for k in tenant_a + others:
        edge.infer(k, READ)
    fleet.generation = 1  # the new model answers differently

    edge.set_model_version("v2", "tenant-a:*")
    after = {k: edge.infer(k, READ) for k in tenant_a + others}
    assert all(after[k].cache == "miss" and after[k].answer["gen"] == 1 for k in tenant_a)
    assert all(after[k].cache == "hit" and after[k].answer["gen"] == 0 for k in others)

    edge.set_model_version("v3")  # every key
    assert all(edge.infer(k, READ).cache == "miss" for k in tenant_a + others)


def test_a_write_drops_the_keys_cached_answers_and_only_its(
    edge_for: Any, quickstart_map: shardkit.ShardMap
) -> None:
    rules = CacheRules(
        [CachePolicy("*", ttl_s=60, resident_only=(), cacheable=payload_field("learn", False))]
    )
    edge, _ = edge_for(quickstart_map, rules=rules)
    for k in ("alice", "bob"):
        for text in ("the", "the shard"):
            edge.infer(k, {"text": text, "learn": False})
    write = edge.infer("alice", {"text": "the map"})
    assert (write.path, write.cache) == ("shard", "bypass")
    assert edge.infer("alice", {"text": "the", "learn": False}).cache == "miss"
    assert edge.infer("alice", {"text": "the shard", "learn": False}).cache == "miss"
    assert edge.infer("bob", {"text": "the", "learn": False}).cache == "hit"


def test_a_read_racing_a_write_does_not_cache_the_old_answer(
    edge_for: Any, quickstart_map: shardkit.ShardMap
) -> None:
    edge, fleet = edge_for(quickstart_map, rules=CACHE_ALL)
    fleet.before_answer = lambda: edge.cache.invalidate_key("alice")  # a write lands mid-read
    assert edge.infer("alice", READ).cache == "miss"
    fleet.before_answer = None
    assert edge.infer("alice", READ).cache == "miss"  # the racing answer was not kept
    assert edge.infer("alice", READ).cache == "hit"


# -- staleness bounds -----------------------------------------------------------------------------


def test_stale_if_error_serves_within_its_bound_and_fails_beyond(
    edge_for: Any, quickstart_map: shardkit.ShardMap, clock: Clock
) -> None:
    rules = CacheRules([CachePolicy("*", ttl_s=10, stale_if_error_s=30, resident_only=())])
    edge, fleet = edge_for(quickstart_map, rules=rules)
    filled = edge.infer("alice", READ)
    fleet.down.add("*")

    clock.t += 5  # fresh: no shard call at all
    assert edge.infer("alice", READ).cache == "hit"
    clock.t += 20  # 15 s past the TTL, within stale-if-error
    calls = len(fleet.calls)
    stale = edge.infer("alice", READ)
    assert len(fleet.calls) > calls  # the shard was asked first
    assert (stale.path, stale.cache, stale.answer) == ("cache", "stale", filled.answer)
    assert stale.error and "down" in stale.error
    clock.t += 10  # 25 s past the TTL: within the bound when the request starts, but...
    fleet.before_answer = lambda: setattr(clock, "t", clock.t + 5)  # ...each failing try takes 5 s
    with pytest.raises(shardkit.RoutingError):
        edge.infer("alice", READ)  # three tries: 40 s past the TTL when the failure is known
    fleet.before_answer = None
    with pytest.raises(shardkit.RoutingError):
        edge.infer("alice", READ)  # and beyond the bound from the start
    assert edge.stats()["counters"]["stale_if_error"] == 1


def test_stale_if_error_never_answers_a_write(
    edge_for: Any, quickstart_map: shardkit.ShardMap, clock: Clock
) -> None:
    rules = CacheRules(
        [
            CachePolicy(
                "*",
                ttl_s=10,
                stale_if_error_s=300,
                resident_only=(),
                cacheable=payload_field("learn", False),
                invalidate_on_bypass=False,
            )
        ]
    )
    edge, fleet = edge_for(quickstart_map, rules=rules)
    edge.infer("alice", {"text": "the", "learn": False})
    fleet.down.add("*")
    clock.t += 20
    with pytest.raises(shardkit.RoutingError):
        edge.infer("alice", {"text": "the"})  # a write: it must reach the shard or fail
    assert edge.infer("alice", {"text": "the", "learn": False}).cache == "stale"


@pytest.mark.parametrize(
    ("status", "stale"), [(503, True), (500, True), (400, False), (422, False)]
)
def test_stale_if_error_covers_shard_failures_not_bad_requests(
    edge_for: Any, quickstart_map: shardkit.ShardMap, clock: Clock, status: int, stale: bool
) -> None:
    rules = CacheRules([CachePolicy("*", ttl_s=10, stale_if_error_s=300, resident_only=())])
    edge, _ = edge_for(quickstart_map, rules=rules)
    edge.infer("alice", READ)
    clock.t += 20
    edge.client.transport.fn = lambda shard, request: ErrorReply(status, "x", "failed").to_wire()
    if stale:
        assert edge.infer("alice", READ).cache == "stale"
    else:
        with pytest.raises(shardkit.InferenceError):
            edge.infer("alice", READ)


def test_stale_while_revalidate_is_bounded(
    edge_for: Any, quickstart_map: shardkit.ShardMap, clock: Clock
) -> None:
    rules = CacheRules([CachePolicy("*", ttl_s=10, max_stale_s=5, resident_only=())])
    edge, fleet = edge_for(quickstart_map, rules=rules)
    edge.infer("alice", READ)
    fleet.generation = 1
    clock.t += 12  # within the stale window: old answer now, refreshed behind it
    stale = edge.infer("alice", READ)
    assert (stale.cache, stale.answer["gen"]) == ("stale", 0)
    fresh = edge.infer("alice", READ)
    assert (fresh.cache, fresh.answer["gen"]) == ("hit", 1)

    fleet.generation = 2
    fleet.down.add("*")  # now the revalidation cannot succeed
    clock.t += 12
    assert edge.infer("alice", READ).cache == "stale"
    clock.t += 5  # 17 s after the refill: past ttl + max_stale, never served again
    with pytest.raises(shardkit.RoutingError):
        edge.infer("alice", READ)
    assert edge.stats()["counters"]["revalidate_errors"] == 1


# -- residency --------------------------------------------------------------------------------------


def test_eu_keys_are_never_cached_on_a_node_outside_eu(
    edge_for: Any, quickstart_map: shardkit.ShardMap
) -> None:
    rules = CacheRules([CachePolicy("*", ttl_s=60, resident_only={"eu"})])
    us_edge, us_fleet = edge_for(quickstart_map, rules=rules, location=US_NODE)
    eu_edge, _ = edge_for(quickstart_map, rules=rules, location=EU_NODE)
    for _ in range(3):
        assert us_edge.infer("eu:bob", READ).cache == "bypass"
        # a tag puts an unprefixed key in eu too: residency follows the key, not the pattern
        assert us_edge.infer("carol", READ, jurisdiction="eu").cache == "bypass"
    assert us_fleet.calls_for("eu:bob") == 3
    assert us_edge.stats()["cache"]["entries"] == 0
    assert [us_edge.infer("alice", READ).cache for _ in range(2)] == ["miss", "hit"]
    assert [eu_edge.infer("eu:bob", READ).cache for _ in range(2)] == ["miss", "hit"]


def test_by_default_a_node_caches_only_its_own_jurisdictions_keys(
    edge_for: Any, quickstart_map: shardkit.ShardMap
) -> None:
    rules = CacheRules([CachePolicy("*", ttl_s=60)])  # resident_only="all"
    us_edge, _ = edge_for(quickstart_map, rules=rules, location=US_NODE)
    nowhere, _ = edge_for(quickstart_map, rules=rules, location=Location())
    assert [us_edge.infer("eu:bob", READ).cache for _ in range(2)] == ["bypass", "bypass"]
    assert [us_edge.infer("alice", READ).cache for _ in range(2)] == ["miss", "hit"]
    assert [nowhere.infer("alice", READ).cache for _ in range(2)] == ["bypass", "bypass"]


# -- trust: maps ----------------------------------------------------------------------------------


def test_rollback_tampered_and_expired_maps_are_refused(
    edge_for: Any,
    quickstart_map: shardkit.ShardMap,
    resharded: shardkit.ShardMap,
    seal: Any,
    clock: Clock,
    quickstart_dict: dict[str, Any],
    config_from: Any,
) -> None:
    newer = resharded
    edge, _ = edge_for(newer)
    with pytest.raises(shardkit.MapRollbackError):
        edge.offer(seal(quickstart_map))
    quickstart_dict["signing"]["map_ttl_hours"] = 1
    config = config_from(quickstart_dict)
    frozen = shardkit.build_map(config, newer, now=clock.t - 7200)  # v3, expired an hour ago
    with pytest.raises(shardkit.MapExpiredError):
        edge.offer(seal(frozen))
    newest = shardkit.build_map(config, newer, now=clock.t)
    data = bytearray(seal(newest))
    data[len(data) // 2] ^= 0x01
    with pytest.raises((shardkit.MapSignatureError, shardkit.MapDecodeError)):
        edge.offer(bytes(data))
    stats = edge.stats()["map"]
    assert (stats["version"], stats["refused"]) == (newer.version, 3)
    assert edge.infer("eu:bob").map_version == newer.version  # still routing with the good map
    assert edge.offer(seal(newest)) and edge.stats()["map"]["version"] == newest.version


def test_offline_mode_routes_on_the_last_good_map_until_it_expires(
    edge_for: Any, quickstart_map: shardkit.ShardMap, clock: Clock
) -> None:
    def unreachable() -> bytes:
        raise ConnectionError("registry unreachable")

    edge, _ = edge_for(quickstart_map, fetch=unreachable)
    failed_at = clock.t  # the holder's clock, injected: not the wall clock
    assert edge.refresh() is False
    assert edge.stats()["map"]["offline"] is True
    clock.t += 600
    assert edge.refresh() is False  # unreachable since the first failure in a row
    clock.t = quickstart_map.expires_at - 1
    assert edge.infer("alice").path == "shard"
    clock.t = quickstart_map.expires_at
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(failed_at))
    with pytest.raises(
        shardkit.MapExpiredError, match=rf"unreachable since {since} \(ConnectionError"
    ):
        edge.infer("alice")
    assert edge.stats()["counters"]["errors"] == 1
    stats = edge.stats()["map"]
    assert (stats["unreachable_since"], stats["fetch_failures"], stats["refused"]) == (since, 2, 0)


@pytest.mark.parametrize("where", ["file", "url"])
def test_an_unreachable_registry_is_offline_mode_not_a_refused_map(
    edge_for: Any, quickstart_map: shardkit.ShardMap, clock: Clock, tmp_path: Path, where: str
) -> None:
    import socket

    from shardkit.routing.sources import map_source

    if where == "file":
        spec = str(tmp_path / "registry" / "map.skm")
    else:
        with socket.socket() as probe:  # a port on this machine that nothing listens on
            probe.bind(("127.0.0.1", 0))
            spec = f"http://127.0.0.1:{probe.getsockname()[1]}/map.skm"
    edge, _ = edge_for(quickstart_map, fetch=map_source(spec, timeout=2.0))
    assert edge.refresh() is False
    stats = edge.stats()["map"]
    assert (stats["offline"], stats["fetches"], stats["fetch_failures"]) == (True, 1, 1)
    assert stats["refused"] == 0 and stats["version"] == quickstart_map.version
    assert (
        stats["last_error"].startswith("cannot ") and spec.rsplit("/", 1)[-1] in stats["last_error"]
    )
    assert edge.infer("alice").path == "shard"  # the last good map is in force

    with pytest.raises(shardkit.RegistryUnreachableError) as err:  # the holder's own refresh
        edge.client.holder.refresh()
    assert not isinstance(err.value, shardkit.MapError) and err.value.hint

    clock.t = quickstart_map.expires_at  # then the map expires: that is the error, not the fetch's
    for call in (lambda: edge.infer("alice"), edge.client.holder.require):
        with pytest.raises(shardkit.MapExpiredError) as expired:
            call()
        assert f"unreachable since {stats['unreachable_since']} (cannot " in expired.value.message
        assert spec.rsplit("/", 1)[-1] in expired.value.message and "registry" in expired.value.hint


def test_an_undecodable_or_same_version_forged_map_is_refused_and_counted(
    edge_for: Any,
    quickstart_map: shardkit.ShardMap,
    seal: Any,
    key_dir: Path,
    tmp_path: Path,
) -> None:
    edge, _ = edge_for(quickstart_map)
    for junk in (b"", b"not a map at all", "a str, not bytes"):
        with pytest.raises(shardkit.MapDecodeError):
            edge.offer(junk)  # type: ignore[arg-type]
    shardkit.create_key("impostor", tmp_path)
    impostor = shardkit.load_signing_key("impostor", tmp_path)
    forged = shardkit.encode_map(quickstart_map, impostor.key_id, impostor.sign)
    with pytest.raises(shardkit.MapSignatureError):
        edge.offer(forged)  # the version held, signed by a key nobody trusts
    stats = edge.stats()["map"]
    assert (stats["refused"], stats["swaps"], stats["version"]) == (4, 1, 1)  # 1: the first
    assert stats["last_error"].startswith("MapSignatureError") and stats["offline"] is False
    assert edge.offer(seal(quickstart_map)) is False  # the genuine one: unchanged, not refused
    assert edge.stats()["map"]["refused"] == 4


def test_offline_while_a_shard_redirects_the_edge_raises_a_shardkit_error_and_counts_it(
    edge_for: Any, quickstart_map: shardkit.ShardMap
) -> None:
    def unreachable() -> bytes:
        raise ConnectionError("registry unreachable")

    edge, _ = edge_for(quickstart_map, fetch=unreachable)
    edge.client.transport.fn = lambda shard, request: Redirect("us-0", 2).to_wire()
    with pytest.raises(shardkit.RegistryUnreachableError, match="redirected key 'alice' to us-0"):
        edge.infer("alice")
    stats = edge.stats()
    assert stats["counters"]["errors"] == 1 and stats["map"]["offline"] is True
    assert (stats["client"]["redirects"], stats["client"]["refresh_failures"]) == (1, 1)


def test_a_shard_answering_at_another_epoch_is_not_cached_and_refreshes_the_map(
    edge_for: Any, quickstart_map: shardkit.ShardMap, resharded: shardkit.ShardMap, seal: Any
) -> None:
    new = resharded
    fetched: list[int] = []

    def fetch() -> bytes:
        fetched.append(1)
        return seal(new)

    edge, fleet = edge_for(quickstart_map, fetch=fetch, rules=CACHE_ALL)
    fleet.epoch_skew = 1  # the shards already run at a newer epoch than our map says
    assert edge.infer("alice", READ).cache == "miss"
    assert edge.infer("alice", READ).cache == "miss"  # not cached
    assert len(fetched) == 2 and edge.stats()["map"]["version"] == new.version
    assert edge.stats()["counters"]["epoch_mismatch"] == 2
    fleet.epoch_skew, fleet.map = 0, new
    assert [edge.infer("alice", READ).cache for _ in range(2)] == ["miss", "hit"]


def test_the_refresher_thread_swaps_in_a_new_map_off_the_request_path(
    trusted_keys: dict[str, bytes],
    quickstart_map: shardkit.ShardMap,
    resharded: shardkit.ShardMap,
    seal: Any,
    clock: Clock,
) -> None:
    published = [seal(quickstart_map)]
    holder = MapHolder(trusted_keys, lambda: published[-1], clock=clock)
    client = RoutingClient(holder, MockTransport(Fleet(quickstart_map)))
    with EdgeRuntime(client, refresh_interval_s=0.01) as edge:
        assert edge.stats()["map"]["version"] == 1
        new = resharded
        published.append(seal(new))
        deadline = time.monotonic() + 10
        while edge.stats()["map"]["version"] != new.version and time.monotonic() < deadline:
            time.sleep(0.005)
        assert edge.stats()["map"]["version"] == new.version


# -- coalescing, memory, divergence -----------------------------------------------------------------


def test_a_burst_of_identical_reads_sends_one_request(
    edge_for: Any, quickstart_map: shardkit.ShardMap
) -> None:
    n = 16
    edge, fleet = edge_for(quickstart_map, rules=CACHE_ALL)

    def hold_until_all_wait() -> None:  # the leader answers only once the others are waiting
        deadline = time.monotonic() + 10
        while edge.stats()["waiting"] < n - 1 and time.monotonic() < deadline:
            time.sleep(0.001)

    fleet.before_answer = hold_until_all_wait
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(edge.infer("alice", READ))) for _ in range(n)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(fleet.calls) == 1
    assert sorted(d.cache for d in results) == ["coalesced"] * (n - 1) + ["miss"]
    assert len({repr(d.answer) for d in results}) == 1


def test_writes_are_never_coalesced(edge_for: Any, quickstart_map: shardkit.ShardMap) -> None:
    rules = CacheRules(
        [CachePolicy("*", ttl_s=10, resident_only=(), cacheable=payload_field("learn", False))]
    )
    edge, fleet = edge_for(quickstart_map, rules=rules)
    gate = threading.Barrier(4, timeout=10)
    fleet.before_answer = gate.wait  # all four writes are at the shard together
    threads = [
        threading.Thread(target=edge.infer, args=("alice", {"text": "the"})) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert fleet.calls_for("alice") == 4


def test_the_cache_is_an_lru_bounded_by_entries_and_bytes(
    edge_for: Any, quickstart_map: shardkit.ShardMap, clock: Clock
) -> None:
    cache = EdgeCache(max_entries=5, max_bytes=100_000, clock=clock)
    edge, _ = edge_for(quickstart_map, rules=CACHE_ALL, cache=cache)
    for i in range(5):
        edge.infer("alice", {"text": f"q{i}", "learn": False})
    edge.infer("alice", {"text": "q0", "learn": False})  # q0 is now the most recent
    edge.infer("alice", {"text": "q5", "learn": False})  # evicts q1, the least recent
    assert edge.infer("alice", {"text": "q0", "learn": False}).cache == "hit"
    assert edge.infer("alice", {"text": "q1", "learn": False}).cache == "miss"
    assert cache.stats()["entries"] == 5

    small = EdgeCache(max_entries=1000, max_bytes=600, clock=clock)
    edge2, _ = edge_for(quickstart_map, rules=CACHE_ALL, cache=small)
    for i in range(50):
        edge2.infer(f"key-{i}", {"text": "x" * 20, "learn": False})
        assert small.bytes <= 600
    assert 0 < len(small) < 50 and small.stats()["evicted"] == 50 - len(small)


def test_an_answer_over_the_entry_limit_is_not_cached(
    edge_for: Any, quickstart_map: shardkit.ShardMap
) -> None:
    rules = CacheRules([CachePolicy("*", ttl_s=10, resident_only=(), max_entry_bytes=200)])
    edge, _ = edge_for(quickstart_map, rules=rules)
    big = {"text": "x" * 300, "learn": False}  # the answer echoes the payload
    assert [edge.infer("alice", big).cache for _ in range(2)] == ["miss", "miss"]
    assert [edge.infer("alice", READ).cache for _ in range(2)] == ["miss", "hit"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["get", "put", "drop"]), st.integers(0, 9), st.integers(0, 60)),
        max_size=80,
    )
)
def test_cache_matches_a_reference_lru(ops: list[tuple[str, int, int]]) -> None:
    shard = shardkit.Shard("us-0", "us", "us-east-1", "us", 1.0, "us-east-1", 1)
    policy = CachePolicy("*", ttl_s=10, resident_only=())
    cache = EdgeCache(max_entries=4, max_bytes=120, clock=lambda: 0.0)
    model: OrderedDict[tuple[str, bytes], int] = OrderedDict()  # key -> size
    for op, i, n in ops:
        ck = (f"k{i % 3}", bytes([i]))
        if op == "get":
            got, _ = cache.lookup(ck, shard, "")
            assert (got is not None) == (ck in model)
            if ck in model:
                model.move_to_end(ck)
        elif op == "put":
            answer = "x" * n
            size = len(ck[0]) + 1 + len(shardkit_pack(answer))
            kept = cache.put(
                ck,
                answer,
                shard=shard,
                map_version=1,
                version="",
                policy=policy,
                ticket=cache.ticket(ck[0]),
            )
            assert kept == (size <= 120)
            if kept:
                model.pop(ck, None)
                model[ck] = size
                while len(model) > 4 or sum(model.values()) > 120:
                    model.popitem(last=False)
        else:
            cache.invalidate_key(ck[0])
            for other in [c for c in model if c[0] == ck[0]]:
                del model[other]
        assert (len(cache), cache.bytes) == (len(model), sum(model.values()))


def shardkit_pack(x: Any) -> bytes:
    import msgpack

    return msgpack.packb(x, use_bin_type=True)


def test_the_divergence_alarm_fires_when_the_origin_changes_under_cached_keys(
    edge_for: Any, quickstart_map: shardkit.ShardMap
) -> None:
    alarms: list[dict[str, Any]] = []
    monitor = DivergenceMonitor(
        sample_rate=0.5, budget=0.25, window=8, min_checks=4, on_alarm=alarms.append
    )
    edge, fleet = edge_for(quickstart_map, rules=CACHE_ALL, divergence=monitor)
    names = keys(8)
    for k in names:
        edge.infer(k, READ)
    for k in names:  # 8 hits, every second one re-checked: the origin agrees
        assert edge.infer(k, READ).cache == "hit"
    assert (monitor.counts["checks"], monitor.counts["divergent"], alarms) == (4, 0, [])

    fleet.generation = 1  # the origin changes under every cached key (writes elsewhere)
    for k in names:
        edge.infer(k, READ)
    assert monitor.counts["divergent"] == 4
    assert len(alarms) == 1 and alarms[0]["rate"] > 0.25
    stats = edge.stats()
    assert stats["divergence"]["alarms"] == 1 and stats["counters"]["divergent"] == 4
    # a divergent check heals its entry with the origin's answer
    assert edge.infer(names[1], READ).answer["gen"] == 1


def test_a_divergence_check_racing_a_write_through_this_node_is_voided(
    edge_for: Any, quickstart_map: shardkit.ShardMap
) -> None:
    queued: list[Callable[[], None]] = []
    monitor = DivergenceMonitor(sample_rate=1.0, budget=0.0, window=1, min_checks=1)
    rules = CacheRules(
        [CachePolicy("*", ttl_s=60, resident_only=(), cacheable=payload_field("learn", False))]
    )
    edge, fleet = edge_for(
        quickstart_map,
        rules=rules,
        divergence=monitor,
        background=lambda fn: queued.append(fn) or True,
    )
    edge.infer("alice", READ)
    assert edge.infer("alice", READ).cache == "hit" and len(queued) == 1

    def write_lands_then_check_runs() -> None:
        fleet.before_answer = None
        fleet.generation = 1  # the write is applied at the shard...
        queued.pop()()  # ...and the sampled check's answer arrives before the write returns

    fleet.before_answer = write_lands_then_check_runs
    edge.infer("alice", {"text": "the map"})
    assert (monitor.counts["checks"], edge.stats()["counters"]["checks_voided"]) == (0, 1)


# -- split inference and the decision record -------------------------------------------------------


class Confident:
    """Claims requests whose text starts with "local"."""

    def __init__(self) -> None:
        self.predicted = 0

    def can_serve(self, request: EdgeRequest) -> float:
        return 0.95 if str(request.payload.get("text", "")).startswith("local") else 0.5

    def predict(self, request: EdgeRequest) -> Any:
        self.predicted += 1
        return {"local": request.payload["text"]}


def test_the_local_model_answers_what_it_claims_above_the_threshold(
    edge_for: Any, quickstart_map: shardkit.ShardMap
) -> None:
    model = Confident()
    edge, fleet = edge_for(quickstart_map, local=model, local_threshold=0.9)
    here = edge.infer("eu:bob", {"text": "local please"})
    assert (here.path, here.shard, here.region, here.confidence) == (
        "local",
        None,
        "us-east-1",
        0.95,
    )
    assert here.answer == {"local": "local please"} and here.jurisdiction == "eu"
    assert fleet.calls == []
    there = edge.infer("eu:bob", {"text": "remote"})
    assert there.path == "shard" and fleet.calls == [(there.shard, "eu:bob")]
    strict, _ = edge_for(quickstart_map, local=model, local_threshold=0.99)
    assert strict.infer("alice", {"text": "local"}).path == "shard"


def test_decisions_are_counted_by_path_and_cache_status(
    edge_for: Any, quickstart_map: shardkit.ShardMap
) -> None:
    edge, fleet = edge_for(quickstart_map, rules=CACHE_ALL, local=Confident())
    edge.infer("alice", {"text": "local"})
    edge.infer("alice", READ)
    d = edge.infer("alice", READ)
    owner = quickstart_map.route("alice")
    assert (d.path, d.cache, d.shard, d.region, d.epoch, d.map_version) == (
        "cache",
        "hit",
        owner.id,
        owner.region,
        owner.epoch,
        quickstart_map.version,
    )
    assert d.latency_s > 0 and d.to_dict()["path"] == "cache"
    fleet.down.add(owner.id)  # the owner fails: a replica of the same jurisdiction answers
    f = edge.infer("alice", {"text": "fresh", "learn": False})
    assert f.path == "failover" and f.jurisdiction == "us" and f.shard != owner.id
    assert edge.infer("alice", {"text": "fresh", "learn": False}).path == "failover"  # not cached
    assert "epoch_mismatch" not in edge.stats()["counters"]  # a failover is no sign of a stale map
    counts = edge.stats()["counters"]
    assert {k: counts[k] for k in ("path.local", "path.cache", "path.shard", "path.failover")} == {
        "path.local": 1,
        "path.cache": 1,
        "path.shard": 1,
        "path.failover": 2,
    }
    assert (counts["cache.hit"], counts["cache.miss"], counts["cache.bypass"]) == (1, 3, 1)


# -- policies -------------------------------------------------------------------------------------


def test_policies_first_match_wins_with_a_default_that_caches_nothing() -> None:
    short = CachePolicy("tenant-a:*", ttl_s=1)
    glob = CachePolicy("*:session-[0-9]*", ttl_s=2)
    rules = CacheRules([short, glob, CachePolicy("*", ttl_s=3)])
    assert rules.policy_for("tenant-a:session-1") is short
    assert rules.policy_for("b:session-7x") is glob
    assert rules.policy_for("b:session-x").ttl_s == 3
    assert not CacheRules().policy_for("anything").stores
    assert not CacheRules().policy_for("x").allows({}, "us", US_NODE)


def test_payload_field_matches_type_and_value() -> None:
    read_only = payload_field("learn", False)
    assert read_only({"learn": False})
    assert not read_only({"learn": 0}) and not read_only({}) and not read_only(["learn"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl_s": -1},
        {"max_stale_s": float("nan")},
        {"max_entry_bytes": "big"},
        {"resident_only": "eu"},
    ],
)
def test_bad_policies_raise_a_shardkit_error_with_a_hint(kwargs: dict[str, Any]) -> None:
    with pytest.raises(EdgePolicyError) as info:
        CachePolicy("*", **kwargs)
    assert isinstance(info.value, shardkit.ShardkitError) and info.value.hint


# -- the quickstart's edge side ---------------------------------------------------------------------


@pytest.fixture
def quickstart_app(monkeypatch: pytest.MonkeyPatch) -> Any:
    root = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
    for name in ("app", "app.model", "app.edge"):  # whatever "app" was imported before
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(root))
    import app.edge
    import app.model

    assert Path(app.edge.__file__).parent == root / "app"
    return app


def test_the_quickstart_model_has_a_read_only_mode(quickstart_app: Any) -> None:
    model = quickstart_app.model
    state = None
    for seq, text in enumerate(["the map says", "the map moves"], 1):
        _, state = model.infer("k", {"text": text, "seq": seq}, state)
    snapshot = repr(state)
    answer, new_state = model.infer("k", {"text": "the map", "learn": False}, state)
    assert new_state is None and repr(state) == snapshot
    assert answer["count"] == 2 and answer["source"] == "key"
    with pytest.raises(ValueError, match="learn"):
        model.infer("k", {"text": "x", "learn": "no"}, state)


def test_the_quickstart_edge_model_claims_confident_reads_only(quickstart_app: Any) -> None:
    local = quickstart_app.edge.local_model()
    says = EdgeRequest("alice", {"text": "the map says", "learn": False})
    assert local.can_serve(says) == 1.0
    assert local.predict(says)["next"] == "which"
    assert local.can_serve(EdgeRequest("alice", {"text": "the map says"})) == 0.0  # a write
    assert local.can_serve(EdgeRequest("alice", {"text": "the", "learn": False})) < 0.5
    assert local.can_serve(EdgeRequest("alice", {"text": "zebra", "learn": False})) == 0.0
    policy = quickstart_app.edge.cache_rules().policy_for("eu:bob")
    assert policy.allows({"text": "the", "learn": False}, "us", US_NODE)
    assert not policy.allows({"text": "the", "learn": False}, "eu", US_NODE)
    assert not policy.allows({"text": "the"}, "us", US_NODE)
