"""The routing client, its asyncio twin and the edge runtime against a fleet that changes under
them: deploys that remove shards, registry outages and clock jumps (docs/proxy.md, docs/edge.md).

The fleet is fake but answers as the proxy does, with the replies of :mod:`shardkit.protocol`:
on the map deployed last, the key's owner answers, a replica asked for failover answers degraded,
any other shard redirects (421) to the owner. A removed shard either keeps answering 421 (a
deployment that keeps removed shards as forwarders) or is gone: Lambda answers
ResourceNotFoundException, through the real :class:`LambdaTransport`. The registry serves the map
deployed last, or cannot be reached. One fake clock drives map expiry, the router's avoidance,
backoff and registry cool-down; nothing waits.
"""

from __future__ import annotations

import asyncio
import copy
import http.server
import io
import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import shardkit
from shardkit.edge import EdgeRuntime
from shardkit.errors import (
    DependencyError,
    MapExpiredError,
    RegistryUnreachableError,
    RoutingError,
    ShardkitError,
)
from shardkit.protocol import MSGPACK, Answer, ErrorReply, Redirect, decode_body, encode_body
from shardkit.routing import (
    AsyncRoutingClient,
    FunctionUrlTransport,
    LambdaTransport,
    MockTransport,
    Result,
    RetryPolicy,
    RoutingClient,
    Transport,
)
from shardkit.sharding.codec import encode_map
from shardkit.sharding.holder import MapHolder, iso
from shardkit.sharding.shardmap import Shard

T0 = 1_700_000_000  # the first map's build time (as tests/conftest.py's T0)
STEP_S = 1800  # between two deploys' map builds
TTL_HOURS = 2

#: The shards of each deployed version: eu-2 is replaced by eu-9, us-4 is added (keys move, no
#: shard goes), then eu-9 and us-1 go (eu-5 comes), then eu-3 goes and eu-6 comes.
DEPLOYS: list[tuple[list[str], list[str]]] = [
    (["eu-0", "eu-1", "eu-2", "eu-3"], ["us-0", "us-1", "us-2", "us-3"]),
    (["eu-0", "eu-1", "eu-9", "eu-3"], ["us-0", "us-1", "us-2", "us-3"]),
    (["eu-0", "eu-1", "eu-9", "eu-3"], ["us-0", "us-1", "us-2", "us-3", "us-4"]),
    (["eu-0", "eu-1", "eu-3", "eu-5"], ["us-0", "us-2", "us-3", "us-4"]),
    (["eu-0", "eu-1", "eu-5", "eu-6"], ["us-0", "us-2", "us-3", "us-4"]),
]


@dataclass(frozen=True)
class Chain:
    """The maps of :data:`DEPLOYS`, version 1 first, signed."""

    maps: list[shardkit.ShardMap]
    envelopes: list[bytes]
    trusted: dict[str, bytes]
    keys: list[str]  # keys whose owner is removed by some deploy, and a few others
    moved: str  # a key whose owner changes from version 2 to 3 (to us-4; none is removed)

    def owned(self, version: int, shard: str, n: int = 3) -> list[str]:
        m = self.maps[version - 1]
        return [k for k in (f"eu:k{i}" for i in range(400)) if m.route(k).id == shard][:n] or [
            k for k in (f"u{i}" for i in range(400)) if m.route(k).id == shard
        ][:n]


def _shards(group: str, ids: list[str]) -> list[dict[str, str]]:
    west, east = ("eu-west-1", "eu-central-1") if group == "eu" else ("us-east-1", "us-west-2")
    return [{"id": s, "region": west if int(s.split("-")[1]) % 2 == 0 else east} for s in ids]


@pytest.fixture(scope="session")
def chain(
    quickstart_like: Callable[..., dict[str, Any]],
    config_from: Callable[[dict[str, Any]], Any],
    signing_key: Any,
    trusted_keys: dict[str, bytes],
) -> Chain:
    maps: list[shardkit.ShardMap] = []
    for n, (eu, us) in enumerate(DEPLOYS):
        config = copy.deepcopy(quickstart_like("outages"))
        config["signing"]["map_ttl_hours"] = TTL_HOURS
        config["groups"]["eu"]["shards"] = _shards("eu", eu)
        config["groups"]["us"]["shards"] = _shards("us", us)
        previous = maps[-1] if maps else None
        maps.append(shardkit.build_map(config_from(config), previous, now=T0 + n * STEP_S))
    envelopes = [encode_map(m, signing_key.key_id, signing_key.sign) for m in maps]
    partial = Chain(maps, envelopes, trusted_keys, [], "")
    keys: list[str] = []
    for before, after in itertools.pairwise(maps):
        for gone in {s.id for s in before.shards} - {s.id for s in after.shards}:
            keys += partial.owned(before.version, gone, 2)
    moved = next(
        k for k in (f"u{i}" for i in range(400)) if maps[1].route(k).id != maps[2].route(k).id
    )
    return Chain(maps, envelopes, trusted_keys, [*keys, moved, "eu:anna", "bob"], moved)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class World:
    """The fleet, the registry and the clock."""

    chain: Chain
    clock: Clock
    deployed: int = 1  # the version the fleet runs and the registry serves
    registry_up: bool = True
    gone: dict[str, bool] = field(default_factory=dict)  # removed shard -> still redirects
    down: set[str] = field(default_factory=set)  # shards that fail (a retryable error)
    sends: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fetches: int = 0

    @property
    def map(self) -> shardkit.ShardMap:
        return self.chain.maps[self.deployed - 1]

    def deploy(self, *, redirects: bool) -> None:
        """The next version, if any; the shards it removes keep redirecting, or are gone."""
        if self.deployed == len(self.chain.maps):
            return
        before = {s.id for s in self.map.shards}
        self.deployed += 1
        for removed in before - {s.id for s in self.map.shards}:
            self.gone[removed] = redirects

    def fetch(self) -> bytes:
        self.fetches += 1
        if not self.registry_up:
            raise ConnectionError("the registry does not answer (simulated)")
        return self.chain.envelopes[self.deployed - 1]

    def proxy(self, shard: str, request: dict[str, Any]) -> dict[str, Any]:
        """What shard ``shard`` answers to ``request``, as the proxy would."""
        self.sends.append((shard, request))
        routed_with = self.chain.maps[request["map_version"] - 1]
        assert routed_with.expires_at > self.clock(), "a request was routed with an expired map"
        if self.gone.get(shard) is False or shard in self.down:
            raise AssertionError("the transport answers for it")  # see FakeLambda
        key, tag, m = request["key"], request.get("jurisdiction"), self.map
        owner = m.route(key, tag)
        if shard in self.gone:
            return Redirect(owner.id, m.version).to_wire()
        if m.expires_at <= self.clock():
            return ErrorReply(503, "no_map", "the shard's map has expired").to_wire()
        answer = {"key": key, "payload": request["payload"]}
        if owner.id == shard:
            return Answer(answer, shard, owner.epoch, m.version, 1).to_wire()
        if request.get("failover") and shard in {s.id for s in m.preference_list(key, None, tag)}:
            return Answer(answer, shard, 0, m.version, 0, degraded=True).to_wire()
        return Redirect(owner.id, m.version).to_wire()


class FakeLambda:
    """boto3's Lambda client as :class:`LambdaTransport` uses it, invoking the fleet's proxies."""

    def __init__(self, world: World) -> None:
        self.world = world

    def invoke(self, FunctionName: str, Qualifier: str, Payload: bytes) -> dict[str, Any]:
        world, shard = self.world, FunctionName.removeprefix("fn-")
        if world.gone.get(shard) is False:
            world.sends.append((shard, json.loads(Payload)))
            raise _client_error("ResourceNotFoundException", f"Function not found: {FunctionName}")
        if shard in world.down:
            world.sends.append((shard, json.loads(Payload)))
            raise _client_error("ServiceException", "the function failed")
        reply = world.proxy(shard, json.loads(Payload))
        return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(reply).encode())}


def _client_error(code: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "Invoke")


POLICY = RetryPolicy(attempts=4, budget_floor=1000.0, avoid_s=60.0, failures_to_avoid=1)


def client_on(
    world: World, version: int | None = None, transport: Transport | None = None, **retry: Any
) -> RoutingClient:
    """A client holding map ``version`` (default: what the registry serves now), through the
    fleet's Lambda functions (default) or ``transport``."""
    holder = MapHolder(world.chain.trusted, world.fetch, clock=world.clock)
    if version is None:
        holder.refresh()
    else:
        holder.offer(world.chain.envelopes[version - 1])
    if transport is None:
        transport = lambda_transport(world, lambda shard: f"fn-{shard.id}")
    policy = RetryPolicy(**{**POLICY.__dict__, **retry})
    return RoutingClient(
        holder, transport, retry=policy, clock=world.clock, sleep=world.clock.advance
    )


def lambda_transport(world: World, function_for: Callable[[Shard], str | None]) -> Transport:
    return LambdaTransport(function_for, client_for=lambda region: FakeLambda(world))


def run_async(client: RoutingClient, key: str) -> Result:
    async def sleep(seconds: float) -> None:
        return None

    return asyncio.run(AsyncRoutingClient(client, sleep=sleep).infer(key, {"q": 1}))


def sync_infer(client: RoutingClient, key: str) -> Result:
    return client.infer(key, {"q": 1})


DRIVERS = [pytest.param(sync_infer, id="sync"), pytest.param(run_async, id="async")]


@pytest.fixture
def world(chain: Chain) -> World:
    return World(chain, Clock(chain.maps[0].created_at + 10))


# -- a removed shard is a stale map ---------------------------------------------------------------


@pytest.mark.parametrize("infer", DRIVERS)
def test_a_client_behind_a_removed_shard_refreshes_and_converges_in_one_hop(
    world: World, chain: Chain, infer: Callable[[RoutingClient, str], Result]
) -> None:
    client = client_on(world)
    world.deploy(redirects=False)  # eu-2 is replaced by eu-9, and gone
    keys = chain.owned(1, "eu-2")
    first = infer(client, keys[0])
    assert (first.shard, first.degraded, first.failover) == ("eu-9", False, False)
    assert (first.redirected, first.attempts, first.map_version) == (True, 2, 2)
    assert [s for s, _ in world.sends] == ["eu-2", "eu-9"]
    assert world.fetches == 2 and client.holder.version == 2  # one refresh, at the first call
    for key in keys[1:]:  # routed with version 2 from then on
        assert (infer(client, key).shard, world.sends[-1][0]) == ("eu-9", "eu-9")
    assert len(world.sends) == len(keys) + 1
    counters = client.stats()["counters"]
    assert (counters["missing_shards"], counters["refreshes"], counters["failovers"]) == (1, 1, 0)
    assert (counters["redirects"], counters["errors"]) == (0, 0)


@pytest.mark.parametrize("infer", DRIVERS)
def test_a_removed_shard_with_the_registry_unreachable_fails_rather_than_fail_over(
    world: World, chain: Chain, infer: Callable[[RoutingClient, str], Result]
) -> None:
    client = client_on(world)
    world.deploy(redirects=False)
    world.registry_up = False
    key = chain.owned(1, "eu-2")[0]
    for _ in range(3):  # it never ends with a replica's degraded answer
        world.clock.advance(5)
        with pytest.raises(RegistryUnreachableError) as err:
            infer(client, key)
        assert "shard eu-2 of map version 1 does not exist" in err.value.message
        assert "ConnectionError" in err.value.message and err.value.hint
    assert [s for s, _ in world.sends] == ["eu-2"] * 3 and world.fetches == 4

    with pytest.raises(RegistryUnreachableError):  # within refetch_after_s: no fetch, no wait
        infer(client, key)
    assert world.fetches == 4
    counters = client.stats()["counters"]
    assert (counters["refreshes"], counters["refresh_failures"]) == (3, 3)
    assert (counters["refreshes_skipped"], counters["errors"], counters["failovers"]) == (1, 4, 0)

    world.registry_up = True
    world.clock.advance(1)
    assert infer(client, key).shard == "eu-9" and world.fetches == 5


def test_a_shard_the_deployment_no_longer_names_is_a_stale_map_too(
    world: World, chain: Chain
) -> None:
    """As ``client_for_project`` sends: the function of a shard comes from the deployment's
    manifest, which no longer names a removed shard - nothing is invoked for it."""
    deployed = {s.id for s in world.map.shards}
    transport = lambda_transport(world, lambda s: f"fn-{s.id}" if s.id in deployed else None)
    client = client_on(world, transport=transport)
    world.deploy(redirects=False)
    deployed = {s.id for s in world.map.shards}  # eu-2 is no longer in the manifest
    result = client.infer(chain.owned(1, "eu-2")[0])
    assert (result.shard, result.redirected, result.degraded) == ("eu-9", True, False)
    assert [s for s, _ in world.sends] == ["eu-9"] and world.fetches == 2
    assert client.stats()["counters"]["missing_shards"] == 1


@pytest.fixture
def function_urls(world: World) -> Any:
    """The fleet behind Function URLs on 127.0.0.1: a gone shard's URL answers 404 (text, as
    Lambda does for a deleted Function URL), the others the proxy's msgpack replies."""

    class Serve(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            shard = self.path.strip("/")
            body = self.rfile.read(int(self.headers["content-length"]))
            if world.gone.get(shard) is False:
                world.sends.append((shard, decode_body(body, MSGPACK)))
                self._reply(404, "text/plain", b"Not Found")
            else:
                reply = world.proxy(shard, decode_body(body, MSGPACK))
                self._reply(reply["status"], MSGPACK, encode_body(reply, MSGPACK))

        def _reply(self, status: int, content_type: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    shards = {s.id for m in world.chain.maps for s in m.shards}
    yield {shard: f"{base}/{shard}" for shard in shards}
    server.shutdown()
    server.server_close()


def test_a_function_url_that_answers_404_is_a_removed_shard(
    world: World, chain: Chain, function_urls: dict[str, str]
) -> None:
    credentials = Credentials("AKIDEXAMPLE", "secret")  # signed, never checked here
    client = client_on(
        world, transport=FunctionUrlTransport(function_urls, credentials=credentials)
    )
    world.deploy(redirects=False)
    result = client.infer(chain.owned(1, "eu-2")[0])
    assert (result.shard, result.redirected, result.attempts) == ("eu-9", True, 2)
    assert [s for s, _ in world.sends] == ["eu-2", "eu-9"] and world.fetches == 2

    world.registry_up = False  # the next deploy removes eu-9 too; no newer map can be had
    world.deploy(redirects=False)
    world.deploy(redirects=False)
    with pytest.raises(RegistryUnreachableError, match=r"shard eu-9 .* HTTP 404 from http://"):
        client.infer(chain.owned(2, "eu-9")[0])
    assert client.stats()["counters"]["missing_shards"] == 2


def test_a_shard_missing_from_the_map_the_registry_serves_is_failed_over_at_once(
    world: World, chain: Chain
) -> None:
    """No newer map: the shard is missing from the deployment, not from our map. It is down:
    avoided from the first miss, and its keys fail over inside their jurisdiction."""
    client = client_on(world)
    world.gone["eu-2"] = False  # deleted behind the map's back
    first, second = chain.owned(1, "eu-2", 2)
    replica = chain.maps[0].preference_list(first)[1].id
    result = client.infer(first)
    assert (result.shard, result.failover, result.degraded) == (replica, True, True)
    assert [s for s, _ in world.sends] == ["eu-2", replica] and world.fetches == 2
    again = client.infer(second)
    assert again.failover and world.sends[-1][0] != "eu-2" and world.fetches == 2
    assert client.stats()["counters"]["missing_shards"] == 1


def test_a_degraded_answer_from_a_newer_map_sends_the_call_to_the_owner(
    world: World, chain: Chain
) -> None:
    world.deployed = 2
    client = client_on(world)
    world.deploy(redirects=True)  # version 3: us-4 takes keys, nothing goes
    key = chain.moved
    old, new = chain.maps[1].route(key).id, chain.maps[2].route(key).id
    replica = chain.maps[1].preference_list(key)[1].id
    world.down.add(old)  # the old owner fails: a replica answers, from map version 3
    result = client.infer(key)
    assert (result.shard, result.degraded, result.map_version) == (new, False, 3)
    assert [s for s, _ in world.sends] == [old, replica, new]
    assert client.stats()["counters"]["degraded_newer_map"] == 1


# -- outages: every error is a ShardkitError, and says what ---------------------------------------


@pytest.mark.parametrize("infer", DRIVERS)
def test_offline_while_a_shard_redirects_is_a_registry_error_not_a_raw_one(
    world: World, chain: Chain, infer: Callable[[RoutingClient, str], Result]
) -> None:
    world.deployed = 2
    client = client_on(world)
    world.deploy(redirects=True)
    world.registry_up = False
    key = chain.moved
    with pytest.raises(RegistryUnreachableError) as err:
        infer(client, key)
    old, new = chain.maps[1].route(key).id, chain.maps[2].route(key).id
    assert f"shard {old} redirected key {key!r} to {new} (map version 3)" in err.value.message
    assert "cannot fetch the shard map: ConnectionError" in err.value.message
    assert isinstance(err.value.__cause__, RegistryUnreachableError)
    assert client.stats()["counters"]["errors"] == 1


@pytest.mark.parametrize("infer", DRIVERS)
def test_after_expiry_with_the_registry_down_the_error_says_since_when(
    world: World, chain: Chain, infer: Callable[[RoutingClient, str], Result]
) -> None:
    client = client_on(world)
    world.registry_up = False
    world.clock.advance(60)
    failed_at = world.clock()
    with pytest.raises(RegistryUnreachableError):
        client.holder.refresh()
    world.clock.t = chain.maps[0].expires_at + 3600  # the map expired an hour ago
    since = f"unreachable since {iso(failed_at)}"
    for _ in range(3):
        world.clock.advance(2)
        with pytest.raises(MapExpiredError, match=since) as err:
            infer(client, "bob")
        assert "version 1" in err.value.message and "registry" in err.value.hint
        with pytest.raises(MapExpiredError, match=since):
            client.holder.require()
    assert world.sends == []  # nothing routed with the expired map
    assert client.holder.stats()["unreachable_since"] == iso(failed_at)


@pytest.mark.parametrize("infer", DRIVERS)
def test_anything_a_transport_raises_reaches_the_caller_as_a_shardkit_error(
    infer: Callable[[RoutingClient, str], Result], chain: Chain
) -> None:
    def client_raising(exc: Exception) -> RoutingClient:
        def transport(shard: Any, request: dict[str, Any]) -> Any:
            raise exc

        holder = MapHolder(chain.trusted, clock=lambda: chain.maps[0].created_at + 1)
        holder.offer(chain.envelopes[0])
        return RoutingClient(
            holder, MockTransport(transport), retry=POLICY, clock=lambda: 0.0, sleep=lambda s: None
        )

    client = client_raising(ValueError("a bug in a custom transport"))  # not retried
    with pytest.raises(RoutingError, match="the transport failed: ValueError") as err:
        infer(client, "bob")
    assert isinstance(err.value.__cause__.__cause__, ValueError)  # type: ignore[union-attr]
    assert client.stats()["counters"]["retries"] == 0
    client = client_raising(ConnectionResetError("reset by peer"))  # an OSError: retried
    with pytest.raises(RoutingError, match="ConnectionResetError"):
        infer(client, "eu:anna")
    assert client.stats()["counters"]["retries"] == 3
    client = client_raising(DependencyError("boto3 is not installed"))  # one of ours: as it is
    with pytest.raises(DependencyError, match="boto3"):
        infer(client, "eu:anna")
    assert client.stats()["counters"]["errors"] == 1


# -- the property ---------------------------------------------------------------------------------

REQUEST = st.tuples(st.just("request"), st.sampled_from(["sync", "async", "edge"]), st.integers())
EVENTS = st.one_of(
    REQUEST,
    st.tuples(st.just("deploy"), st.booleans()),
    REQUEST,
    st.tuples(st.just("registry"), st.booleans()),
    REQUEST,
    st.tuples(st.just("jump"), st.sampled_from([30, 900, 3600, 3 * 3600])),
    st.tuples(st.just("refresh"), st.sampled_from(["client", "edge"])),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=st.lists(EVENTS, min_size=10, max_size=40))
def test_clients_converge_and_fail_only_with_shardkit_errors(
    chain: Chain, events: list[tuple[Any, ...]]
) -> None:
    world = World(chain, Clock(chain.maps[0].created_at + 10))
    client = client_on(world)
    edge = EdgeRuntime(client_on(world), background=lambda fn: fn() or True)
    callers = {"sync": client, "async": client, "edge": edge.client}
    try:
        for event in events:
            if event[0] == "deploy":
                world.deploy(redirects=event[1])
            elif event[0] == "registry":
                world.registry_up = event[1]
            elif event[0] == "jump":
                world.clock.advance(event[1])
            elif event[0] == "refresh":
                check_refresh(world, client if event[1] == "client" else edge)
            else:
                world.clock.advance(1)  # requests take time
                by, key = event[1], chain.keys[event[2] % len(chain.keys)]
                check_request(world, by, callers[by], edge, key)
    finally:
        edge.close()


def check_request(world: World, by: str, client: RoutingClient, edge: Any, key: str) -> None:
    held = client.holder.current  # None: expired
    fresh = world.registry_up and world.map.expires_at > world.clock()  # the registry serves it
    sends = len(world.sends)
    try:
        if by == "edge":
            decision = edge.infer(key, {"q": 1})
            shard, degraded = decision.shard, decision.path == "failover"
        else:
            result = sync_infer(client, key) if by == "sync" else run_async(client, key)
            shard, degraded = result.shard, result.degraded
    except Exception as exc:
        event(f"raised {type(exc).__name__}")  # --hypothesis-show-statistics shows the mix
        assert isinstance(exc, ShardkitError), f"{by}: {exc!r} is not a ShardkitError"
        if held is None and (by == "edge" or not fresh):
            assert isinstance(exc, MapExpiredError), f"{by}, after expiry: {exc!r}"
        assert not (fresh and (held is not None or by != "edge")), f"{by}, registry fresh: {exc!r}"
        return
    finally:
        hops = len(world.sends) - sends - 1
        assert not (fresh and hops > 1), f"{by}: {hops} hops with the registry serving the map"
    event(f"answered after {len(world.sends) - sends - 1} hop(s)")
    assert held is not None or by != "edge", "the edge answered with an expired map"
    owner = world.map.route(key).id
    assert (shard, degraded) == (owner, False), f"{by}: {key} answered by {shard}, not {owner}"


def check_refresh(world: World, caller: Any) -> None:
    """refresh() pulls: True/False while the registry is down (offline mode, never raised); a
    refused map (here: the registry's map expired too) raises a MapError and is counted."""
    holder = caller.holder if isinstance(caller, RoutingClient) else caller.trust.holder
    refused = holder.refused
    try:
        changed = caller.refresh() if not isinstance(caller, RoutingClient) else holder.refresh()
    except RegistryUnreachableError:
        assert isinstance(caller, RoutingClient) and not world.registry_up
        return
    except MapExpiredError:
        assert world.registry_up and world.map.expires_at <= world.clock()
        assert holder.refused == refused + 1
        return
    assert isinstance(changed, bool)
    assert world.registry_up or not changed
    if world.registry_up:
        assert holder.version == world.deployed
    stats = holder.stats()
    assert stats["offline"] is (not world.registry_up)
