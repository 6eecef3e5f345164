"""The routing client over a MockTransport: redirects, retries, the retry budget, failover and
hedging. No AWS: the transport is a function that plays the shards.

Maps are signed for real and held by a real MapHolder; version 2 adds a fifth "us" shard, so
some us keys move. Sleeps and the clock are injected, so backoff and avoidance are observed,
never waited for (hedging is the one place where real threads race, ordered by events).
"""

from __future__ import annotations

import copy
import io
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shardkit
from shardkit.errors import MapError, NoEligibleShardError, RegistryUnreachableError, RoutingError
from shardkit.protocol import Answer, ErrorReply, Redirect, Request
from shardkit.routing import (
    InferenceError,
    MockTransport,
    Result,
    RetryPolicy,
    RoutingClient,
    TransportError,
)
from shardkit.routing.decide import (
    Action,
    Call,
    Refresh,
    Router,
    Send,
    Sent,
    Sleep,
    decide,
)
from shardkit.sharding.codec import encode_map
from shardkit.sharding.holder import MapHolder
from shardkit.sharding.shardmap import Shard

# Failover order is what these tests are about: avoid a shard at its first failure.
NO_SLEEP_BUDGET = RetryPolicy(attempts=10, budget_floor=1000.0, avoid_s=60.0, failures_to_avoid=1)


@dataclass(frozen=True)
class Maps:
    v1: shardkit.ShardMap
    v2: shardkit.ShardMap
    env1: bytes
    env2: bytes
    trusted: dict[str, bytes]

    def moved_key(self) -> str:
        return next(
            k
            for k in (f"user-{i}" for i in range(10_000))
            if self.v1.route(k).id != self.v2.route(k).id
        )


@pytest.fixture(scope="session")
def maps(
    quickstart_like: Callable[..., dict[str, Any]],
    config_from: Callable[[dict[str, Any]], Any],
    signing_key: Any,
    trusted_keys: dict[str, bytes],
) -> Maps:
    config = quickstart_like("routingtest", eu_shards=4)
    v1 = shardkit.build_map(config_from(config))
    more = copy.deepcopy(config)
    more["groups"]["us"]["shards"] = 5
    v2 = shardkit.build_map(config_from(more), v1)
    return Maps(
        v1,
        v2,
        encode_map(v1, signing_key.key_id, signing_key.sign),
        encode_map(v2, signing_key.key_id, signing_key.sign),
        trusted_keys,
    )


class Registry:
    """Serves the given envelopes one fetch at a time (the last one from then on)."""

    def __init__(self, *envelopes: bytes) -> None:
        self.envelopes = list(envelopes)
        self.fetches = 0

    def fetch(self) -> bytes:
        self.fetches += 1
        return self.envelopes[min(self.fetches, len(self.envelopes)) - 1]


class Shards:
    """The fleet, played by ``behave(shard, request) -> reply`` (or raise); records every call."""

    def __init__(self, behave: Callable[[Shard, dict[str, Any]], dict[str, Any]]) -> None:
        self.behave = behave
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, shard: Shard, request: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.calls.append((shard.id, dict(request)))
        return self.behave(shard, request)

    @property
    def shards(self) -> list[str]:
        return [shard for shard, _ in self.calls]


def served(on: Shard, request: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A proxy's 200 answer (degraded when the request is a failover), with ``fields`` changed."""
    answer = Answer({"echo": request["payload"]}, on.id, on.epoch, request["map_version"], 1)
    if request.get("failover"):
        answer = replace(answer, epoch=0, seq=0, degraded=True)
    return replace(answer, **fields).to_wire()


def make_client(
    maps: Maps,
    shards: Shards,
    *envelopes: bytes,
    retry: RetryPolicy | None = None,
    sleeps: list[float] | None = None,
    clock: Callable[[], float] = lambda: 0.0,
    hedge_after_s: float | None = None,
) -> tuple[RoutingClient, Registry]:
    registry = Registry(*(envelopes or (maps.env1,)))
    holder = MapHolder(maps.trusted, registry.fetch)
    holder.refresh()
    sleep = sleeps.append if sleeps is not None else lambda s: None
    client = RoutingClient(
        holder,
        MockTransport(shards),
        retry=retry or NO_SLEEP_BUDGET,
        clock=clock,
        sleep=sleep,
        hedge_after_s=hedge_after_s,
    )
    return client, registry


# -- the decision record ------------------------------------------------------------------------


def test_a_result_records_where_and_how_the_answer_came(maps: Maps) -> None:
    key = "eu:anna"
    owner = maps.v1.route(key)
    fleet = Shards(lambda s, r: served(s, r, epoch=7, seq=3, replayed=True))
    client, _ = make_client(maps, fleet)
    result = client.infer(key, {"text": "hi"}, request_id="req-1")
    assert isinstance(result, Result)
    assert (result.key, result.answer, result.shard, result.region, result.jurisdiction) == (
        key,
        {"echo": {"text": "hi"}},
        owner.id,
        owner.region,
        "eu",
    )
    assert (result.epoch, result.map_version, result.seq, result.replayed) == (7, 1, 3, True)
    assert (result.attempts, result.redirected, result.failover, result.hedged) == (
        1,
        False,
        False,
        False,
    )
    assert result.latency_s >= 0
    assert fleet.calls == [
        (owner.id, Request(key, {"text": "hi"}, 1, request_id="req-1").to_wire())
    ]

    tagged = client.infer("user-1", None, jurisdiction="eu")
    assert tagged.jurisdiction == "eu" and tagged.shard == maps.v1.route("user-1", "eu").id
    assert fleet.calls[-1][1]["jurisdiction"] == "eu"
    fresh = fleet.calls[-1][1]["request_id"]
    assert isinstance(fresh, str) and len(fresh) >= 16 and fresh != "req-1"  # a new id per call
    assert client.infer("user-1").seq == 3 and fleet.calls[-1][1]["request_id"] != fresh


def test_an_answer_from_the_wrong_shard_is_refused(maps: Maps) -> None:
    fleet = Shards(lambda s, r: served(s, r, shard="someone-else"))
    client, _ = make_client(maps, fleet)
    with pytest.raises(RoutingError, match="answered as 'someone-else'"):
        client.infer("user-1")


# -- redirects ----------------------------------------------------------------------------------


def _v2_fleet(maps: Maps) -> Shards:
    """Shards that all hold version 2: a non-owner answers 421 with the owner."""

    def behave(shard: Shard, request: dict[str, Any]) -> dict[str, Any]:
        owner = maps.v2.route(request["key"])
        if owner.id != shard.id:
            return Redirect(owner.id, 2).to_wire()
        return served(maps.v2.shard(shard.id), request)

    return Shards(behave)


def test_a_redirect_refreshes_the_map_and_converges_in_one_hop(maps: Maps) -> None:
    key = maps.moved_key()
    old, new = maps.v1.route(key), maps.v2.route(key)
    fleet = _v2_fleet(maps)
    client, registry = make_client(maps, fleet, maps.env1, maps.env2)
    result = client.infer(key, {"seq": 1})
    assert (result.shard, result.map_version, result.redirected, result.attempts) == (
        new.id,
        2,
        True,
        2,
    )
    assert fleet.shards == [old.id, new.id]
    assert [r["map_version"] for _, r in fleet.calls] == [1, 2]
    assert len({r["request_id"] for _, r in fleet.calls}) == 1  # one request, applied once
    assert registry.fetches == 2 and client.holder.version == 2

    again = client.infer(key, {"seq": 2})  # the client now routes with version 2 directly
    assert (again.shard, again.redirected, again.attempts) == (new.id, False, 1)
    assert registry.fetches == 2


def test_a_second_redirect_in_one_call_is_an_error(maps: Maps) -> None:
    key = maps.moved_key()
    fleet = Shards(lambda s, r: Redirect("us-0", 2).to_wire())
    client, registry = make_client(maps, fleet, maps.env1, maps.env2)
    with pytest.raises(InferenceError) as err:
        client.infer(key)
    assert (err.value.status, err.value.code) == (421, "moved")
    assert len(fleet.calls) == 2 and registry.fetches == 2


def test_a_redirect_to_a_map_the_registry_does_not_have_yet_is_an_error(maps: Maps) -> None:
    fleet = Shards(lambda s, r: Redirect("us-0", 5).to_wire())
    client, registry = make_client(maps, fleet, maps.env1)
    with pytest.raises(RoutingError, match="still serves version 1"):
        client.infer("user-1")
    assert len(fleet.calls) == 1 and registry.fetches == 2


# -- retries, backoff and the budget ------------------------------------------------------------


def _flaky(failures: int, status: int = 503) -> Shards:
    count = {"n": 0}

    def behave(shard: Shard, request: dict[str, Any]) -> dict[str, Any]:
        count["n"] += 1
        if count["n"] <= failures:
            return ErrorReply(status, "busy", "try again").to_wire()
        return served(shard, request)

    return Shards(behave)


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_a_transient_answer_is_retried_on_the_same_shard(maps: Maps, status: int) -> None:
    fleet = _flaky(1, status)
    sleeps: list[float] = []
    client, _ = make_client(maps, fleet, sleeps=sleeps)
    result = client.infer("user-1")
    assert result.attempts == 2 and len(sleeps) == 1
    assert fleet.shards == [maps.v1.route("user-1").id] * 2  # an answer is no reason to fail over
    assert len({r["request_id"] for _, r in fleet.calls}) == 1


def test_a_non_transient_error_answer_is_raised_at_once(maps: Maps) -> None:
    fleet = _flaky(1, 500)
    sleeps: list[float] = []
    client, _ = make_client(maps, fleet, sleeps=sleeps)
    with pytest.raises(InferenceError) as err:
        client.infer("user-1")
    assert (err.value.status, err.value.code, err.value.shard) == (
        500,
        "busy",
        maps.v1.route("user-1").id,
    )
    assert len(fleet.calls) == 1 and sleeps == []


def test_backoff_ceilings_double_up_to_the_cap(maps: Maps, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[tuple[float, float]] = []

    def uniform(a: float, b: float) -> float:
        drawn.append((a, b))
        return b  # the top of the jitter range, to see the ceiling itself

    monkeypatch.setattr(random, "uniform", uniform)  # the client imports random lazily
    policy = RetryPolicy(attempts=6, base_s=0.1, cap_s=0.5, budget_floor=100.0)
    sleeps: list[float] = []
    client, _ = make_client(maps, _flaky(5), retry=policy, sleeps=sleeps)
    assert client.infer("user-1").attempts == 6
    assert drawn == [(0, c) for c in (0.1, 0.2, 0.4, 0.5, 0.5)]
    assert sleeps == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_backoff_is_full_jitter_within_the_ceiling(maps: Maps) -> None:
    policy = RetryPolicy(attempts=5, base_s=0.02, cap_s=0.05, budget_floor=1000.0)
    by_retry: dict[int, list[float]] = {1: [], 2: [], 3: [], 4: []}
    for _ in range(40):
        sleeps: list[float] = []
        client, _ = make_client(maps, _flaky(4), retry=policy, sleeps=sleeps)
        client.infer("user-1")
        assert len(sleeps) == 4
        for n, s in enumerate(sleeps, 1):
            by_retry[n].append(s)
    for n, values in by_retry.items():
        ceiling = min(policy.cap_s, policy.base_s * 2 ** (n - 1))
        assert all(0 <= v <= ceiling for v in values)
        assert len(set(values)) > 1  # jittered, not a fixed delay


def test_the_retry_budget_stops_retries_when_everything_fails(maps: Maps) -> None:
    policy = RetryPolicy(attempts=4, budget_ratio=0.2, budget_floor=10.0)
    fleet = Shards(lambda s, r: ErrorReply(503, "unavailable", "down").to_wire())
    sleeps: list[float] = []
    client, _ = make_client(maps, fleet, retry=policy, sleeps=sleeps)
    for i in range(100):
        with pytest.raises(InferenceError):
            client.infer(f"user-{i}")
    retries = len(fleet.calls) - 100
    assert retries == len(sleeps)
    # Unbudgeted it would be 300 retries; the bucket allows its 10, plus 0.2 per request.
    assert 10 <= retries <= 10 + 0.2 * 100 + 1
    before = len(fleet.calls)
    for i in range(50):
        with pytest.raises(InferenceError):
            client.infer(f"late-{i}")
    assert len(fleet.calls) - before <= 50 + 0.2 * 50 + 1  # mostly one try each


def test_transport_failures_spend_the_same_budget(maps: Maps) -> None:
    policy = RetryPolicy(attempts=4, budget_ratio=0.1, budget_floor=3.0, avoid_s=0.0)

    def down(shard: Shard, request: dict[str, Any]) -> dict[str, Any]:
        raise TransportError("connection refused")

    fleet = Shards(down)
    client, _ = make_client(maps, fleet, retry=policy)
    for i in range(40):
        with pytest.raises(RoutingError):
            client.infer(f"user-{i}")
    assert len(fleet.calls) - 40 <= 3 + 0.1 * 40 + 1


def test_a_non_retryable_transport_error_is_not_retried(maps: Maps) -> None:
    def denied(shard: Shard, request: dict[str, Any]) -> dict[str, Any]:
        raise TransportError("AccessDeniedException", retryable=False)

    fleet = Shards(denied)
    sleeps: list[float] = []
    client, _ = make_client(maps, fleet, sleeps=sleeps)
    with pytest.raises(RoutingError, match="AccessDeniedException"):
        client.infer("user-1")
    assert len(fleet.calls) == 1 and sleeps == []


# -- failover -----------------------------------------------------------------------------------


def _failing(down: set[str]) -> Shards:
    def behave(shard: Shard, request: dict[str, Any]) -> dict[str, Any]:
        if shard.id in down:
            raise TransportError(f"{shard.id} is down")
        return served(shard, request)

    return Shards(behave)


FAILOVER_KEYS = ["user-1", "user-2", "eu:anna", "eu:bert", "tenant-77"]
ALL_SHARDS = [f"eu-{i}" for i in range(4)] + [f"us-{i}" for i in range(4)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(FAILOVER_KEYS), down=st.sets(st.sampled_from(ALL_SHARDS)))
def test_failover_walks_the_preference_list_inside_the_jurisdiction(
    maps: Maps, key: str, down: set[str]
) -> None:
    order = [s.id for s in maps.v1.preference_list(key)]
    jurisdiction = maps.v1.route(key).jurisdiction
    fleet = _failing(down)
    client, _ = make_client(maps, fleet)
    healthy = [s for s in order if s not in down]
    if not healthy:
        with pytest.raises(NoEligibleShardError):
            client.infer(key)
        assert fleet.shards == order  # each shard of the jurisdiction once, nothing else
    else:
        result = client.infer(key)
        tried = order[: order.index(healthy[0]) + 1]
        assert fleet.shards == tried
        assert result.shard == healthy[0] and result.jurisdiction == jurisdiction
        assert result.failover is (healthy[0] != order[0])
        assert [r.get("failover", False) for _, r in fleet.calls] == [s != order[0] for s in tried]
    assert all(maps.v1.shard(s).jurisdiction == jurisdiction for s in fleet.shards)
    assert len({r["request_id"] for _, r in fleet.calls}) == 1


def test_all_shards_of_the_jurisdiction_down_is_an_error_never_another_region(maps: Maps) -> None:
    eu = {s.id for s in maps.v1.shards if s.jurisdiction == "eu"}
    fleet = _failing(eu)
    client, _ = make_client(maps, fleet)
    with pytest.raises(NoEligibleShardError, match="jurisdiction 'eu'"):
        client.infer("eu:anna")
    assert set(fleet.shards) == eu and len(fleet.shards) == len(eu)
    # With the default four attempts the call gives up first: still never outside eu.
    fleet = _failing(eu)
    client, _ = make_client(maps, fleet, retry=RetryPolicy(budget_floor=100.0))
    with pytest.raises(RoutingError):
        client.infer("eu:anna")
    assert set(fleet.shards) <= eu


def test_a_failed_shard_is_avoided_for_avoid_s_then_tried_again(maps: Maps) -> None:
    key = "user-1"
    owner, replica = (s.id for s in maps.v1.preference_list(key)[:2])
    now = {"t": 0.0}
    down = {owner}
    fleet = _failing(down)
    client, _ = make_client(
        maps,
        fleet,
        clock=lambda: now["t"],
        retry=RetryPolicy(avoid_s=5.0, budget_floor=100.0, failures_to_avoid=1),
    )
    assert client.infer(key).shard == replica
    assert fleet.shards == [owner, replica]

    down.clear()
    now["t"] = 4.0  # still avoided: straight to the replica
    assert client.infer(key).failover
    assert fleet.shards[2:] == [replica]
    now["t"] = 5.5  # the owner gets its traffic back
    result = client.infer(key)
    assert (result.shard, result.failover) == (owner, False)


def test_one_lost_reply_is_retried_on_the_owner_two_in_a_row_fail_over(maps: Maps) -> None:
    key = "user-1"
    owner, replica = (s.id for s in maps.v1.preference_list(key)[:2])
    lost = {"n": 1}

    def flaky(shard: Shard, request: dict[str, Any]) -> dict[str, Any]:
        if shard.id == owner and lost["n"] > 0:
            lost["n"] -= 1
            raise TransportError(f"{shard.id}: connection reset")
        return served(shard, request)

    fleet = Shards(flaky)
    policy = RetryPolicy(attempts=6, budget_floor=100.0, avoid_s=60.0)  # default threshold: 2
    client, _ = make_client(maps, fleet, retry=policy)
    result = client.infer(key)
    assert fleet.shards == [owner, owner] and (result.shard, result.degraded) == (owner, False)

    lost["n"] = 2
    result = client.infer(key)
    assert fleet.shards[2:] == [owner, owner, replica]
    assert (result.shard, result.failover, result.degraded) == (replica, True, True)


def test_a_throttled_owner_is_retried_never_failed_over(maps: Maps) -> None:
    key = "user-1"
    owner = maps.v1.route(key).id
    throttles = {"n": 4}

    def busy(shard: Shard, request: dict[str, Any]) -> dict[str, Any]:
        if throttles["n"] > 0:
            throttles["n"] -= 1
            raise TransportError(f"invoke {shard.id}: TooManyRequestsException", throttled=True)
        return served(shard, request)

    fleet = Shards(busy)
    client, _ = make_client(
        maps, fleet, retry=RetryPolicy(attempts=6, budget_floor=100.0, failures_to_avoid=1)
    )
    result = client.infer(key)
    assert fleet.shards == [owner] * 5 and (result.shard, result.failover) == (owner, False)


# -- hedging ------------------------------------------------------------------------------------


def slow_first(release: threading.Event) -> Shards:
    """Shards whose first call hangs until ``release`` is set; each answers ``{"call": n}``."""
    count = {"n": 0}

    def behave(shard: Shard, request: dict[str, Any]) -> dict[str, Any]:
        with fleet.lock:
            count["n"] += 1
            n = count["n"]
        if n == 1:
            assert release.wait(10)
        return served(shard, request, answer={"call": n})

    fleet = Shards(behave)
    return fleet


def test_a_slow_owner_is_hedged_with_the_same_request_id(maps: Maps) -> None:
    release = threading.Event()  # the first call hangs until the test is done
    fleet = slow_first(release)
    client, _ = make_client(maps, fleet, hedge_after_s=0.05)
    try:
        result = client.infer("user-1", {"seq": 1})
    finally:
        release.set()
        client.close()
    assert result.hedged and result.answer == {"call": 2}
    owner = maps.v1.route("user-1").id
    assert fleet.shards == [owner, owner]
    first, second = (request for _, request in fleet.calls)
    assert first == second  # the very same request: same request id, so applied once


def test_a_hedge_answers_when_the_first_call_fails(maps: Maps) -> None:
    hedged, first_failed = threading.Event(), threading.Event()
    count = {"n": 0}

    def behave(shard: Shard, request: dict[str, Any]) -> dict[str, Any]:
        with fleet.lock:
            count["n"] += 1
            n = count["n"]
        if n == 1:
            assert hedged.wait(10)
            first_failed.set()
            raise TransportError("connection reset")
        hedged.set()
        assert first_failed.wait(10)
        return served(shard, request, answer={"call": n})

    fleet = Shards(behave)
    client, _ = make_client(maps, fleet, hedge_after_s=0.01)
    try:
        result = client.infer("user-1")
    finally:
        client.close()
    assert result.hedged and result.answer == {"call": 2} and result.attempts == 1


def test_a_fast_owner_is_not_hedged(maps: Maps) -> None:
    fleet = Shards(served)
    client, _ = make_client(maps, fleet, hedge_after_s=5.0)
    try:
        result = client.infer("user-1")
    finally:
        client.close()
    assert not result.hedged and len(fleet.calls) == 1


# -- the decisions, as values ---------------------------------------------------------------------


def at(attempts: int, *, allowed: int = 4, redirected: bool = False) -> Call:
    return Call("user-1", None, None, "req-1", allowed, attempts, redirected)


DECISIONS = [
    pytest.param(Answer(1, "us-0", 1, 1, 1), at(1), Action.RETURN, False, None, id="answer"),
    pytest.param(
        Answer(1, "us-1", 1, 1, 1), at(1), Action.RAISE, False, "answered as 'us-1'", id="imposter"
    ),
    pytest.param(Redirect("us-1", 2), at(1), Action.REDIRECT, False, None, id="redirect"),
    pytest.param(
        Redirect("us-1", 2),
        at(2, redirected=True),
        Action.RAISE,
        False,
        "answered 421 moved: the owner is us-1 in map version 2",
        id="second-redirect",
    ),
    pytest.param(
        Redirect("us-1", 2),
        at(4),
        Action.RAISE,
        False,
        "redirected to us-1 and no attempt is left",
        id="redirect-on-the-last-attempt",
    ),
    pytest.param(
        ErrorReply(503, "contended", "x"), at(1), Action.RETRY, False, "503 contended", id="503"
    ),
    pytest.param(ErrorReply(429, "slow", "x"), at(3), Action.RETRY, False, "429 slow", id="429"),
    pytest.param(
        ErrorReply(503, "contended", "x"), at(4), Action.RAISE, False, "503", id="503-last"
    ),
    pytest.param(
        ErrorReply(500, "handler_error", "boom"), at(1), Action.RAISE, False, "500", id="500"
    ),
    pytest.param(ErrorReply(422, "residency", "no"), at(1), Action.RAISE, False, "422", id="422"),
    pytest.param(
        TransportError("reset"), at(1), Action.FAIL_OVER, True, "no answer", id="lost-reply"
    ),
    pytest.param(
        TransportError("busy", throttled=True), at(1), Action.RETRY, False, "busy", id="throttled"
    ),
    pytest.param(
        TransportError("denied", retryable=False),
        at(1),
        Action.RAISE,
        True,
        "after 1 attempt(s): denied",
        id="not-retryable",
    ),
    pytest.param(TransportError("reset"), at(4), Action.RAISE, True, "reset", id="lost-last"),
]


@pytest.mark.parametrize(("outcome", "call", "action", "failed", "error"), DECISIONS)
def test_decide_maps_each_outcome_to_the_next_action(
    outcome: Any, call: Call, action: Action, failed: bool, error: str | None
) -> None:
    decision = decide(outcome, call, "us-0")
    assert (decision.action, decision.failed) == (action, failed)
    if error is None:
        assert decision.error is None
    else:
        assert decision.error is not None and error in decision.error.message
        inference = isinstance(outcome, ErrorReply) or "421" in error
        assert isinstance(decision.error, InferenceError) is inference


def test_a_call_is_a_sequence_of_steps_driven_with_values(maps: Maps) -> None:
    """The router does no I/O: it asks for it, and is told what came back."""
    holder = MapHolder(maps.trusted, Registry(maps.env1).fetch)
    router = Router(holder, RetryPolicy(base_s=0.5, cap_s=0.5), clock=lambda: 0.0)
    calling = router.call("user-1", {"q": 1}, None, "req-1")
    refresh = calling.next(None)
    assert refresh == Refresh()  # no map yet: fetch it
    owner = maps.v1.route("user-1")
    send = calling.next(refresh.run(holder))  # what the driver does
    wire = Request("user-1", {"q": 1}, 1, request_id="req-1").to_wire()
    assert send == Send(owner, wire)
    sleep = calling.next(Sent(ErrorReply(503, "contended", "again").to_wire()))
    assert isinstance(sleep, Sleep) and 0 <= sleep.seconds <= 0.5
    assert calling.next(None) == send  # the same request, to the same shard
    assert calling.next(Sent(served(owner, wire), hedged=True)) is None
    result = calling.result
    assert result is not None
    assert (result.shard, result.attempts, result.hedged, result.answer) == (
        owner.id,
        2,
        True,
        {"echo": {"q": 1}},
    )


def test_a_malformed_reply_is_an_inference_error_and_is_not_retried(maps: Maps) -> None:
    fleet = Shards(lambda s, r: {"status": 200, "answer": 1, "shard": s.id, "epoch": 1})
    client, _ = make_client(maps, fleet)
    with pytest.raises(InferenceError, match="'map_version' must be a non-negative integer") as err:
        client.infer("user-1")
    assert (err.value.code, err.value.shard) == ("bad_reply", maps.v1.route("user-1").id)
    assert len(fleet.calls) == 1
    garbage = Shards(lambda s, r: "OK")
    client, _ = make_client(maps, garbage)
    with pytest.raises(InferenceError, match="a reply is an object, not str"):
        client.infer("user-1")


def test_a_redirect_on_the_last_attempt_says_so(maps: Maps) -> None:
    key = maps.moved_key()
    client, _ = make_client(
        maps, _v2_fleet(maps), maps.env1, maps.env2, retry=RetryPolicy(attempts=1)
    )
    with pytest.raises(RoutingError, match=r"redirected to .* and no attempt is left"):
        client.infer(key)


# -- the async client ---------------------------------------------------------------------------


def test_the_async_client_overlaps_calls_and_gives_the_same_answers(maps: Maps) -> None:
    import asyncio

    from shardkit.routing import AsyncRoutingClient

    both_in = threading.Barrier(2, timeout=10)

    def behave(shard: Shard, request: dict[str, Any]) -> dict[str, Any]:
        both_in.wait()  # only returns once two calls are in flight together
        return served(shard, request)

    fleet = Shards(behave)
    client, _ = make_client(maps, fleet)

    async def main() -> list[Any]:
        async with AsyncRoutingClient(client) as aclient:
            return list(
                await asyncio.gather(
                    aclient.infer("user-1", {"n": 1}), aclient.infer("eu:anna", {"n": 2})
                )
            )

    first, second = asyncio.run(main())
    assert (first.shard, second.shard) == (maps.v1.route("user-1").id, maps.v1.route("eu:anna").id)
    assert (first.answer, second.answer) == ({"echo": {"n": 1}}, {"echo": {"n": 2}})


def run_async(
    client: RoutingClient, key: str, *, then: threading.Event | None = None, **options: Any
) -> tuple[Result, list[float]]:
    """``key`` through an AsyncRoutingClient on ``client``, and the backoffs it slept; ``then``
    is set when the call is over, before the event loop waits for its worker threads."""
    import asyncio

    from shardkit.routing import AsyncRoutingClient

    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def main() -> Result:
        try:
            return await AsyncRoutingClient(client, sleep=sleep).infer(key, **options)
        finally:
            if then is not None:
                then.set()

    return asyncio.run(main()), sleeps


def test_the_async_client_follows_redirects_retries_and_fails_over_as_the_sync_one(
    maps: Maps,
) -> None:
    key = maps.moved_key()
    client, registry = make_client(maps, _v2_fleet(maps), maps.env1, maps.env2)
    result, _ = run_async(client, key, payload={"seq": 1})
    assert (result.shard, result.redirected, result.attempts) == (maps.v2.route(key).id, True, 2)
    assert registry.fetches == 2

    flaky = _flaky(2)
    client, _ = make_client(maps, flaky)
    result, sleeps = run_async(client, "user-1")
    assert (result.attempts, len(sleeps)) == (3, 2)
    assert len({r["request_id"] for _, r in flaky.calls}) == 1

    owner, replica = (s.id for s in maps.v1.preference_list("user-1")[:2])
    down = _failing({owner})
    client, _ = make_client(maps, down)
    result, _ = run_async(client, "user-1")
    assert down.shards == [owner, replica]
    assert (result.shard, result.failover, result.degraded) == (replica, True, True)
    # One router: the sync client sees the owner avoided by the async call.
    assert client.infer("user-1").shard == replica and down.shards[-1] == replica

    client, _ = make_client(
        maps, Shards(lambda s, r: ErrorReply(500, "handler_error", "boom").to_wire())
    )
    with pytest.raises(InferenceError, match="500 handler_error: boom"):
        run_async(client, "user-1")


def test_the_async_client_hedges_a_slow_owner(maps: Maps) -> None:
    release = threading.Event()
    fleet = slow_first(release)
    client, _ = make_client(maps, fleet, hedge_after_s=0.05)
    try:
        result, _ = run_async(client, "user-1", then=release)
    finally:
        release.set()
        client.close()
    assert result.hedged and result.answer == {"call": 2}
    first, second = (request for _, request in fleet.calls)
    assert first == second


# -- map sources ----------------------------------------------------------------------------------


def test_a_client_loads_its_map_from_a_file_or_a_url(maps: Maps, tmp_path: Path) -> None:
    import http.server

    path = tmp_path / "map.skm"
    path.write_bytes(maps.env1)

    class Serve(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", str(len(maps.env1)))
            self.end_headers()
            self.wfile.write(maps.env1)

        def log_message(self, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/map.skm"
        for source in (str(path), url):
            fleet = Shards(served)
            client = RoutingClient.from_source(source, maps.trusted, MockTransport(fleet))
            assert client.holder.version == 1
            assert client.infer("eu:anna").shard == maps.v1.route("eu:anna").id
    finally:
        server.shutdown()
        server.server_close()


def test_a_map_source_that_cannot_be_read_is_unreachable_a_bad_one_a_map_error(
    maps: Maps, tmp_path: Path
) -> None:
    with pytest.raises(RegistryUnreachableError, match="cannot read the map") as err:
        RoutingClient.from_source(
            str(tmp_path / "none.skm"), maps.trusted, MockTransport(Shards(served))
        )
    assert not isinstance(err.value, MapError) and "check the path" in err.value.hint
    with pytest.raises(MapError, match="not s3://BUCKET/KEY"):
        RoutingClient.from_source("s3://bucket-only", maps.trusted, MockTransport(Shards(served)))
    tampered = tmp_path / "tampered.skm"
    tampered.write_bytes(maps.env1[:-3] + b"xyz")
    with pytest.raises(MapError):
        RoutingClient.from_source(str(tampered), maps.trusted, MockTransport(Shards(served)))


def test_a_file_uri_is_read_as_its_path(maps: Maps, tmp_path: Path) -> None:
    """A source is read by its scheme: ``file:///path`` is that path (never a file named
    ``file:/path``), and a scheme shardkit does not read is named in the error."""
    folder = tmp_path / "a map dir"  # a space: %20 in the URI
    folder.mkdir()
    path = folder / "map.skm"
    path.write_bytes(maps.env1)
    for source in (path.as_uri(), f"file://localhost{path.as_uri().removeprefix('file://')}"):
        assert "%20" in source
        client = RoutingClient.from_source(source, maps.trusted, MockTransport(Shards(served)))
        assert client.holder.version == 1
        assert client.infer("eu:anna").shard == maps.v1.route("eu:anna").id
    missing = (tmp_path / "none.skm").as_uri()
    with pytest.raises(RegistryUnreachableError, match=f"cannot read the map at {tmp_path}/none"):
        RoutingClient.from_source(missing, maps.trusted, MockTransport(Shards(served)))
    for bad, problem in [
        ("file://elsewhere/map.skm", "not a local file URI"),
        ("ftp://host/map.skm", "the scheme 'ftp' is not supported"),
    ]:
        with pytest.raises(MapError, match=problem) as err:
            RoutingClient.from_source(bad, maps.trusted, MockTransport(Shards(served)))
        assert "file://" in err.value.hint


def test_an_s3_source_reports_what_s3_said_as_unreachable(maps: Maps) -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    from shardkit.routing.sources import map_source

    class S3:
        def __init__(self, error: Exception | None) -> None:
            self.error = error

        def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
            if self.error is not None:
                raise self.error
            return {"Body": io.BytesIO(maps.env1)}

    uri = "s3://registry-bucket/registry/map.skm"
    assert map_source(uri, s3_client=S3(None))() == maps.env1
    cases = [
        (ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject"), "NoSuchKey", "published"),
        (ClientError({"Error": {"Code": "AccessDenied"}}, "GetObject"), "AccessDenied", "s3:Get"),
        (EndpointConnectionError(endpoint_url="https://s3"), "EndpointConnectionError", "network"),
    ]
    for error, problem, hint in cases:
        with pytest.raises(RegistryUnreachableError, match=problem) as err:
            map_source(uri, s3_client=S3(error))()
        assert uri in err.value.message and hint in err.value.hint
        assert not isinstance(err.value, MapError)
