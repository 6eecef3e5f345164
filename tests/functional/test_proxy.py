"""The proxy handler: real Powertools, DynamoDB (and S3) emulated in-process by moto.

Every test builds its proxies over a signed map of a small two-jurisdiction project (version 1)
and, where a reshard is involved, version 2 with a fifth "us" shard (us-4, in us-east-1): us-0..us-3
lose slots to it - from their own region or from us-west-2 - and the eu shards keep theirs. Each
region has its own state table, with the slot records of version 1 written as a first deploy
does. The properties checked are the proxy's promises (docs/architecture.md §4.3-4.4): only the
owner writes, every write is fenced on the slot record, a read-only answer comes only from the
live copy, a moved key keeps its state, a retried request id is applied once, concurrent writers
lose no update, a refused request writes nothing, and logs carry the key's hash, never the key.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import msgpack
import pytest
from moto import mock_aws

import shardkit
import shardkit.proxy.handler as handler_module
from shardkit.keys import format_trusted_keys
from shardkit.local import moto_patches
from shardkit.migrate import Move, Place, catch_up, fence, initialise, plan_migration, switch
from shardkit.protocol import MAX_PAYLOAD, Answer, Redirect, decode_reply
from shardkit.proxy.handler import WARM_EVENT, Proxy
from shardkit.proxy.state import RESERVED_PREFIX, StateStore, partition
from shardkit.proxy.table import DynamoTable
from shardkit.sharding.codec import encode_map
from shardkit.sharding.hashing import hash_key
from shardkit.sharding.holder import MapHolder

REGION = "us-east-1"
TABLE = "shardkit-test-state"
MB = 1024 * 1024
MSGPACK = "application/msgpack"


# -- maps ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Maps:
    v1: shardkit.ShardMap
    v2: shardkit.ShardMap  # one more "us" shard: some us keys move to us-4
    env1: bytes
    env2: bytes

    def key(self, *, moved: bool, prefix: str = "user") -> str:
        """A us key whose owner changes (or stays, with a new epoch) from v1 to v2."""
        for i in range(10_000):
            key = f"{prefix}-{i}"
            a, b = self.v1.route(key), self.v2.route(key)
            if (a.id != b.id) == moved and (moved or a.epoch != b.epoch):
                return key
        raise AssertionError("no such key")


@pytest.fixture(scope="session")
def maps(
    quickstart_like: Callable[..., dict[str, Any]],
    config_from: Callable[[dict[str, Any]], Any],
    signing_key: Any,
) -> Maps:
    config = quickstart_like("proxytest", eu_shards=2)
    config["hashing"]["slot_bits"] = 8  # 256 slot records per group: quick to write and move
    v1 = shardkit.build_map(config_from(config))
    more = copy.deepcopy(config)
    more["groups"]["us"]["shards"] = 5
    v2 = shardkit.build_map(config_from(more), v1)
    assert (v1.version, v2.version) == (1, 2)
    return Maps(
        v1,
        v2,
        encode_map(v1, signing_key.key_id, signing_key.sign),
        encode_map(v2, signing_key.key_id, signing_key.sign),
    )


# -- the world: a table, a registry, proxies ------------------------------------------------------


class Registry:
    """What a shard's MapHolder fetches: the envelope currently published, and how often."""

    def __init__(self, envelope: bytes) -> None:
        self.envelope = envelope
        self.fetches = 0
        self.error: Exception | None = None

    def fetch(self) -> bytes:
        self.fetches += 1
        if self.error is not None:
            raise self.error
        return self.envelope


class World:
    """One state table per region (moto, item operations atomic as in DynamoDB), the slot
    records of map version 1, and proxies over them."""

    def __init__(
        self, maps: Maps, trusted: dict[str, bytes], make_table: Callable[[Any, str], None]
    ) -> None:
        moto_patches.install()
        self.maps = maps
        self.trusted = trusted
        self.ddb = boto3.client("dynamodb", region_name=REGION)
        self.tables = {}
        for region in maps.v1.regions:
            name = f"{TABLE}-{region}"
            make_table(self.ddb, name)
            self.tables[region] = DynamoTable(self.ddb, name)
        initialise(self.tables, maps.v1)  # what a first deploy writes

    def reshard(self) -> None:
        """What the control plane does before it publishes version 2: same-region slots switch,
        cross-region slots are fenced, copied and switched."""
        migration = plan_migration(self.maps.v1, self.maps.v2)
        fence(self.tables, migration.moves)
        catch_up(self.tables, migration.moves, 2)
        switch(self.tables, migration.moves, 2)

    def fence_slot(self, key: str) -> None:
        """The control plane starts moving ``key``'s slot to another region."""
        owner = self.maps.v1.route(key)
        elsewhere = next(r for r in self.maps.v1.regions if r != owner.region)
        move = Move(
            owner.group,
            self.maps.v1.slot(key),
            Place(owner.id, owner.region),
            Place("us-9", elsewhere),
        )
        fence(self.tables, [move])

    def proxy(
        self,
        shard: str,
        infer: Callable[..., Any],
        registry: Registry | None = None,
        table: str | None = None,
    ) -> Proxy:
        registry = registry or Registry(self.maps.env1)
        holder = MapHolder(self.trusted, registry.fetch)
        holder.refresh()
        region = (self.maps.v2 if shard == "us-4" else self.maps.v1).shard(shard).region
        store = StateStore(DynamoTable(self.ddb, table or self.tables[region].name), shard)
        return Proxy(shard=shard, region=region, holder=holder, store=store, infer=infer)

    def state_items(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every key-state item: ``{(region, key): {"seq", "state", "applied"}}``."""
        out = {}
        for region, table in self.tables.items():
            found = self.ddb.scan(
                TableName=table.name,
                ConsistentRead=True,
                FilterExpression="attribute_exists(seq)",  # not the slot records (moto is slow)
            )["Items"]
            for item in found:
                assert not item["sk"]["S"].startswith(RESERVED_PREFIX)
                data = msgpack.unpackb(item["data"]["B"], raw=False)
                out[region, item["sk"]["S"]] = {"seq": int(item["seq"]["N"]), **data}
        return out

    def item(self, key: str, shard_map: shardkit.ShardMap | None = None) -> dict[str, Any] | None:
        """The key's item in the table of its owner (in ``shard_map``, default version 1)."""
        owner = (shard_map or self.maps.v1).route(key)
        return self.state_items().get((owner.region, key))


@pytest.fixture
def world(
    aws_env: None,
    maps: Maps,
    trusted_keys: dict[str, bytes],
    pk_sk_table: Callable[..., None],
) -> Iterator[World]:
    with mock_aws():
        yield World(maps, trusted_keys, pk_sk_table)


@pytest.fixture(autouse=True)
def _fresh_handler() -> Iterator[None]:
    """The Lambda entry point caches its Proxy, and Powertools keeps unflushed metrics (only
    ``handler`` flushes them; tests call ``Proxy.handle``): no test may see another test's."""
    handler_module._proxy = None
    handler_module.metrics.clear_metrics()
    yield
    handler_module._proxy = None
    handler_module.metrics.clear_metrics()
    handler_module.metrics.clear_default_dimensions()


# -- models ---------------------------------------------------------------------------------------


class Counter:
    """A model like the quickstart's: it changes the state it is given in place, counts the
    writes and records each request's ``seq``. ``calls`` lists the states it was shown."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.lock = threading.Lock()

    def __call__(self, key: str, payload: Any, state: Any) -> tuple[Any, Any]:
        with self.lock:
            self.calls.append(copy.deepcopy(state))
        state = state if state is not None else {"count": 0, "seqs": []}
        state["count"] += 1
        state["seqs"].append(payload.get("seq") if isinstance(payload, dict) else None)
        return {"count": state["count"]}, state


def echo_model(key: str, payload: Any, state: Any) -> tuple[Any, Any]:
    """The model ``SHARDKIT_HANDLER`` names in the handler test (``module:function``)."""
    count = (state or {}).get("count", 0) + 1
    return {"echo": payload, "count": count}, {"count": count}


def url_event(
    body: bytes | str, content_type: str = MSGPACK, *, b64: bool = True
) -> dict[str, Any]:
    """A Function URL event, payload format 2.0, as the Lambda service builds it."""
    if isinstance(body, bytes) and b64:
        body = base64.b64encode(body).decode()
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": {"content-type": content_type, "host": "abc.lambda-url.us-east-1.on.aws"},
        "requestContext": {"http": {"method": "POST", "path": "/"}, "requestId": "r"},
        "body": body,
        "isBase64Encoded": b64,
    }


def url_reply(response: dict[str, Any]) -> dict[str, Any]:
    """The proxy's reply inside a Function URL response, decoded by its content type."""
    raw = (
        base64.b64decode(response["body"])
        if response["isBase64Encoded"]
        else response["body"].encode()
    )
    if response["headers"]["content-type"] == MSGPACK:
        return msgpack.unpackb(raw, raw=False)
    return json.loads(raw)


# -- the owner serves; others redirect -------------------------------------------------------------


def test_the_owner_serves_and_counts_its_writes(world: World) -> None:
    key = "user-7"
    owner = world.maps.v1.route(key)
    model = Counter()
    proxy = world.proxy(owner.id, model)
    replies = [proxy.handle({"key": key, "payload": {"seq": n}}) for n in (1, 2, 3)]
    for n, reply in enumerate(replies, 1):
        assert reply == Answer({"count": n}, owner.id, owner.epoch, 1, n).to_wire()
    stored = world.item(key)
    assert stored is not None and stored["seq"] == 3
    assert stored["state"] == {"count": 3, "seqs": [1, 2, 3]}
    assert list(world.state_items()) == [(owner.region, key)]
    (pk,) = {
        i["pk"]["S"]
        for i in world.ddb.scan(TableName=f"{TABLE}-{owner.region}")["Items"]
        if i["sk"]["S"] == key
    }
    assert pk == partition(owner.group, world.maps.v1.slot(key))  # addressed by slot


def test_a_read_on_a_warm_instance_sees_another_instances_acknowledged_write(world: World) -> None:
    """Two warm instances of one shard: a read-only request must not answer from a cached state
    that another instance's acknowledged write has replaced."""
    key = "user-7"
    owner = world.maps.v1.route(key)

    def model(key: str, payload: Any, state: Any) -> tuple[Any, Any]:
        count = (state or {}).get("count", 0)
        if payload.get("read"):
            return {"count": count}, None
        return {"count": count + 1}, {"count": count + 1}

    first, second = world.proxy(owner.id, model), world.proxy(owner.id, model)
    assert first.handle({"key": key, "payload": {}})["answer"] == {"count": 1}  # first caches
    assert second.handle({"key": key, "payload": {}})["answer"] == {"count": 2}
    read = first.handle({"key": key, "payload": {"read": True}})
    assert (read["answer"], read["seq"]) == ({"count": 2}, 2)
    assert world.item(key)["seq"] == 2  # the read wrote nothing


def test_a_non_owner_redirects_and_does_no_work(world: World) -> None:
    key = "user-7"
    owner = world.maps.v1.route(key)
    other = next(s for s in world.maps.v1.shards if s.jurisdiction == "us" and s.id != owner.id)
    model = Counter()
    reply = world.proxy(other.id, model).handle({"key": key, "payload": {"seq": 1}})
    assert reply == Redirect(owner.id, 1).to_wire()
    assert model.calls == []
    assert world.state_items() == {}


def test_a_caller_with_a_newer_map_makes_the_shard_refresh(world: World) -> None:
    maps = world.maps
    moved, stays = maps.key(moved=True), maps.key(moved=False)
    old_owner = maps.v1.route(moved)
    registry = Registry(maps.env1)
    proxy = world.proxy(old_owner.id, Counter(), registry)
    assert registry.fetches == 1
    assert proxy.handle({"key": moved, "payload": {}, "map_version": 1})["status"] == 200
    assert registry.fetches == 1  # the caller's map is not newer: no fetch

    # The caller knows version 2 but the registry still serves 1: one fetch, then served.
    reply = proxy.handle({"key": moved, "payload": {}, "map_version": 2})
    assert registry.fetches == 2
    assert (reply["status"], reply["map_version"]) == (200, 1)

    # Version 2 is published (after the slot records): the caller's newer version makes the
    # shard fetch it.
    world.reshard()
    registry.envelope = maps.env2
    before = world.state_items()
    reply = proxy.handle({"key": moved, "payload": {}, "map_version": 2})
    assert registry.fetches == 3
    assert reply == Redirect(maps.v2.route(moved).id, 2).to_wire()
    assert world.state_items() == before
    # Once refreshed, the shard serves with the new map and the new epoch, without fetching.
    same_owner = world.proxy(maps.v2.route(stays).id, Counter(), registry)
    fetches = registry.fetches
    reply = same_owner.handle({"key": stays, "payload": {}, "map_version": 2})
    assert (reply["status"], reply["map_version"], reply["epoch"]) == (
        200,
        2,
        maps.v2.route(stays).epoch,
    )
    assert registry.fetches == fetches


# -- idempotency and concurrency --------------------------------------------------------------------


def test_a_replayed_request_id_gets_its_recorded_answer_and_writes_nothing(world: World) -> None:
    key = "user-42"
    owner = world.maps.v1.route(key)
    model = Counter()
    proxy = world.proxy(owner.id, model)
    first = proxy.handle({"key": key, "payload": {"seq": 1}, "request_id": "req-1"})
    assert (first["status"], first["seq"], first["replayed"]) == (200, 1, False)

    again = proxy.handle({"key": key, "payload": {"seq": 1}, "request_id": "req-1"})
    assert decode_reply(again) == replace(decode_reply(first), replayed=True)
    # A cold proxy (another process, empty cache) replays it from the table too.
    cold = world.proxy(owner.id, model).handle(
        {"key": key, "payload": {"seq": 1}, "request_id": "req-1"}
    )
    assert decode_reply(cold) == replace(decode_reply(first), replayed=True)
    assert len(model.calls) == 1
    assert world.item(key)["seq"] == 1  # type: ignore[index]
    assert world.item(key)["state"] == {"count": 1, "seqs": [1]}  # type: ignore[index]

    other = proxy.handle({"key": key, "payload": {"seq": 2}, "request_id": "req-2"})
    assert (other["status"], other["seq"], other["replayed"]) == (200, 2, False)
    assert world.item(key)["state"] == {"count": 2, "seqs": [1, 2]}  # type: ignore[index]


def test_two_writers_interleaved_on_one_key_lose_no_update(world: World) -> None:
    """A reads the key, then B writes it while A's model runs: A's write must fail its
    condition and run again on B's state, not overwrite it."""
    key = "user-9"
    owner = world.maps.v1.route(key)
    entered, release = threading.Event(), threading.Event()
    counter = Counter()

    def model(key: str, payload: Any, state: Any) -> tuple[Any, Any]:
        if payload["seq"] == "A" and not release.is_set():
            entered.set()
            assert release.wait(10)
        return counter(key, payload, state)

    a, b = world.proxy(owner.id, model), world.proxy(owner.id, model)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(a.handle, {"key": key, "payload": {"seq": "A"}})
        assert entered.wait(10)
        fast = b.handle({"key": key, "payload": {"seq": "B"}})
        release.set()
        late = slow.result(timeout=10)
    assert (fast["status"], fast["seq"]) == (200, 1)
    assert (late["status"], late["seq"]) == (200, 2)
    assert counter.calls == [None, None, {"count": 1, "seqs": ["B"]}]  # A ran again on B's state
    stored = world.item(key)
    assert stored is not None and stored["seq"] == 2
    assert stored["state"] == {"count": 2, "seqs": ["B", "A"]}


def test_many_concurrent_writers_apply_exactly_the_acknowledged_requests(world: World) -> None:
    key = "user-3"
    owner = world.maps.v1.route(key)
    model = Counter()
    proxies = [world.proxy(owner.id, model) for _ in range(3)]

    def send(i: int) -> tuple[str, dict[str, Any]]:
        rid = f"r{i}"
        return rid, proxies[i % 3].handle({"key": key, "payload": {"seq": rid}, "request_id": rid})

    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(send, range(60)))
    acked = [rid for rid, r in replies if r["status"] == 200]
    assert {r["status"] for _, r in replies} <= {200, 503}
    assert all(r["error"] == "contended" for _, r in replies if r["status"] == 503)
    stored = world.item(key)
    assert stored is not None
    assert stored["seq"] == len(acked) == stored["state"]["count"]
    assert sorted(stored["state"]["seqs"]) == sorted(acked)  # each acknowledged once, no other
    assert sorted(r["seq"] for _, r in replies if r["status"] == 200) == list(
        range(1, len(acked) + 1)
    )


# -- fencing and moving slots ----------------------------------------------------------------------


def test_a_write_to_a_slot_being_moved_answers_moving_and_writes_nothing(world: World) -> None:
    key = "user-5"
    owner = world.maps.v1.route(key)
    model = Counter()
    proxy = world.proxy(owner.id, model)
    assert proxy.handle({"key": key, "payload": {"seq": 1}})["status"] == 200
    before = world.state_items()

    world.fence_slot(key)  # the control plane is copying this slot to another region
    reply = proxy.handle({"key": key, "payload": {"seq": 2}})
    assert (reply["status"], reply["error"]) == (503, "moving")
    assert "is moving" in reply["message"] and "fenced" in reply["message"]
    # A cold instance reads the slot record with the state: it does not even run the model.
    cold = Counter()
    reply = world.proxy(owner.id, cold).handle({"key": key, "payload": {"seq": 3}})
    assert (reply["status"], reply["error"], cold.calls) == (503, "moving", [])
    assert world.state_items() == before


def test_a_write_to_a_slot_that_moved_redirects_and_writes_nothing(world: World) -> None:
    maps = world.maps
    key = maps.key(moved=True)
    owner, new_owner = maps.v1.route(key), maps.v2.route(key)
    registry = Registry(maps.env1)
    proxy = world.proxy(owner.id, Counter(), registry)
    assert proxy.handle({"key": key, "payload": {"seq": 1}})["status"] == 200  # now cached

    # Deploy: the slot records switch, then v2 is published. The proxy still holds v1 and the
    # caller knows only v1: the write fails its slot check, the proxy refreshes and redirects.
    world.reshard()
    registry.envelope = maps.env2
    before = world.state_items()
    reply = proxy.handle({"key": key, "payload": {"seq": 2}, "map_version": 1})
    assert reply == Redirect(new_owner.id, 2).to_wire()
    assert world.state_items() == before


@pytest.mark.parametrize("cross_region", [False, True], ids=["same-region", "cross-region"])
def test_a_moved_key_keeps_its_state_and_its_request_ids(world: World, cross_region: bool) -> None:
    maps = world.maps
    key = next(
        k
        for k in (f"user-{i}" for i in range(10_000))
        if maps.v2.route(k).id == "us-4"
        and (maps.v1.route(k).region != "us-east-1") == cross_region
    )
    owner = maps.v1.route(key)
    old = world.proxy(owner.id, Counter())
    for n in (1, 2):
        old.handle({"key": key, "payload": {"seq": n}, "request_id": f"r{n}"})

    world.reshard()
    new = world.proxy("us-4", Counter(), Registry(maps.env2))
    retry = new.handle({"key": key, "payload": {"seq": 2}, "request_id": "r2", "map_version": 2})
    assert (retry["status"], retry["replayed"], retry["answer"]) == (200, True, {"count": 2})
    reply = new.handle({"key": key, "payload": {"seq": 3}, "map_version": 2})
    assert (reply["status"], reply["shard"], reply["seq"]) == (200, "us-4", 3)
    assert world.item(key, maps.v2)["state"] == {"count": 3, "seqs": [1, 2, 3]}  # type: ignore[index]
    if cross_region:  # the old copy stays, unchanged, until it is cleaned up
        assert world.state_items()[owner.region, key]["seq"] == 2


def test_the_new_owner_answers_moving_until_the_records_switch(world: World) -> None:
    """A client may learn of the new map before the control plane has switched the slot (a map
    published in another region first): the new owner refuses to write until the record is its."""
    maps = world.maps
    key = next(k for k in (f"user-{i}" for i in range(10_000)) if maps.v2.route(k).id == "us-4")
    new = world.proxy("us-4", Counter(), Registry(maps.env2))
    reply = new.handle({"key": key, "payload": {"seq": 1}, "map_version": 2})
    assert (reply["status"], reply["error"]) == (503, "moving")
    assert world.state_items() == {}


def test_a_stale_cached_copy_never_answers_a_read_after_the_slot_moved(world: World) -> None:
    maps = world.maps
    key = maps.key(moved=True)
    owner = maps.v1.route(key)

    def model(key: str, payload: Any, state: Any) -> tuple[Any, Any]:
        count = (state or {}).get("count", 0)
        if payload.get("read"):
            return {"count": count}, None
        return {"count": count + 1}, {"count": count + 1}

    registry = Registry(maps.env1)
    old = world.proxy(owner.id, model, registry)
    assert old.handle({"key": key, "payload": {}})["answer"] == {"count": 1}  # cached here
    world.reshard()
    new = world.proxy("us-4", model, Registry(maps.env2))
    assert new.handle({"key": key, "payload": {}, "map_version": 2})["answer"] == {"count": 2}

    # The old owner, still on version 1 (not yet published), must not answer from its cache.
    read = old.handle({"key": key, "payload": {"read": True}})
    assert (read["status"], read["error"]) == (503, "moving")
    registry.envelope = maps.env2  # once it is published: a redirect
    read = old.handle({"key": key, "payload": {"read": True}})
    assert (read["status"], read["owner"]) == (421, "us-4")


def test_a_slot_that_does_not_move_is_never_blocked_by_a_reshard(world: World) -> None:
    """Only moving slots are fenced: a key whose shard gains or loses other slots (a new epoch)
    is written on through the reshard, by a proxy still holding the old map."""
    maps = world.maps
    key = maps.key(moved=False)
    owner = maps.v1.route(key)
    assert maps.v2.shard(owner.id).epoch != owner.epoch
    registry = Registry(maps.env1)
    proxy = world.proxy(owner.id, Counter(), registry)
    assert proxy.handle({"key": key, "payload": {"seq": 1}})["status"] == 200
    world.reshard()
    registry.envelope = maps.env2
    reply = proxy.handle({"key": key, "payload": {"seq": 2}, "map_version": 1})
    assert (reply["status"], reply["epoch"], reply["map_version"], reply["seq"]) == (
        200,
        owner.epoch,
        1,
        2,
    )
    assert registry.fetches == 1  # no refresh was needed
    assert world.item(key)["state"] == {"count": 2, "seqs": [1, 2]}  # type: ignore[index]


def test_a_shard_moved_to_another_region_redirects_from_the_old_one(world: World) -> None:
    """Same shard id, another region: only the instance in the map's region owns its slots."""
    key = "user-7"
    owner = world.maps.v1.route(key)
    elsewhere = next(r for r in world.maps.v1.regions if r != owner.region)
    proxy = world.proxy(owner.id, Counter())
    stale = Proxy(
        shard=owner.id, region=elsewhere, holder=proxy.holder, store=proxy.store, infer=Counter()
    )
    reply = stale.handle({"key": key, "payload": {}})
    assert reply == Redirect(owner.id, 1).to_wire()
    assert world.state_items() == {}


# -- malformed and refused requests --------------------------------------------------------------


MALFORMED = [
    pytest.param(["key", "payload"], 400, "bad_event", id="not-an-object"),
    pytest.param("just a string", 400, "bad_event", id="a-string"),
    pytest.param(
        {"key": "user-1", "payload": 1, "priority": 9}, 400, "bad_request", id="unknown-field"
    ),
    pytest.param({"payload": 1}, 400, "bad_key", id="missing-key"),
    pytest.param({"key": "", "payload": 1}, 400, "bad_key", id="empty-key"),
    pytest.param({"key": 17, "payload": 1}, 400, "bad_key", id="key-not-a-string"),
    pytest.param({"key": "k" * 1025, "payload": 1}, 400, "bad_key", id="key-too-long"),
    pytest.param({"key": "é" * 513, "payload": 1}, 400, "bad_key", id="key-too-long-in-utf8"),
    pytest.param({"key": "\x00slot", "payload": 1}, 400, "bad_key", id="key-reserved-prefix"),
    pytest.param(
        json.loads('{"key": "user-\\ud800", "payload": 1}'),
        400,
        "bad_key",
        id="key-with-lone-surrogate",
    ),
    pytest.param({"key": "user-1", "map_version": "3"}, 400, "bad_request", id="version-str"),
    pytest.param({"key": "user-1", "map_version": True}, 400, "bad_request", id="version-bool"),
    pytest.param({"key": "user-1", "map_version": -1}, 400, "bad_request", id="version-neg"),
    pytest.param({"key": "user-1", "request_id": ""}, 400, "bad_request", id="empty-request-id"),
    pytest.param({"key": "user-1", "failover": "yes"}, 400, "bad_request", id="failover-str"),
]

MALFORMED_URL = [
    pytest.param(url_event("%%% not base64 %%%"), 400, "bad_body", id="bad-base64"),
    pytest.param(url_event(b"\xc1\xc1\xc1"), 400, "bad_body", id="bad-msgpack"),
    pytest.param(
        url_event("{not json", "application/json", b64=False), 400, "bad_body", id="bad-json"
    ),
    pytest.param(
        url_event(b"key=user-1", "application/x-www-form-urlencoded"),
        415,
        "bad_content_type",
        id="unsupported-content-type",
    ),
    pytest.param({**url_event(b""), "body": 123}, 400, "bad_event", id="body-not-a-string"),
    pytest.param(url_event(msgpack.packb([1, 2])), 400, "bad_request", id="body-not-a-map"),
    pytest.param(
        url_event(msgpack.packb({"key": "user-1", "x": 1})),
        400,
        "bad_request",
        id="unknown-field-in-body",
    ),
]


@pytest.mark.parametrize(("event", "status", "code"), MALFORMED)
def test_a_malformed_direct_event_is_refused_and_nothing_is_written(
    world: World, event: Any, status: int, code: str
) -> None:
    model = Counter()
    reply = world.proxy(world.maps.v1.route("user-1").id, model).handle(event)
    assert (reply["status"], reply["error"]) == (status, code)
    assert reply["message"]
    assert model.calls == [] and world.state_items() == {}


@pytest.mark.parametrize(("event", "status", "code"), MALFORMED_URL)
def test_a_malformed_url_event_gets_an_http_error_and_nothing_is_written(
    world: World, event: Any, status: int, code: str
) -> None:
    """A Function URL caller must see the status as the HTTP status: a bare reply object would
    reach it as "200 OK"."""
    model = Counter()
    response = world.proxy(world.maps.v1.route("user-1").id, model).handle(event)
    assert response["statusCode"] == status
    reply = url_reply(response)
    assert (reply["status"], reply["error"]) == (status, code)
    assert model.calls == [] and world.state_items() == {}


def test_an_oversized_url_body_is_refused_with_413(world: World) -> None:
    body = msgpack.packb({"key": "user-1", "payload": b"x" * (MAX_PAYLOAD + 1)})
    model = Counter()
    response = world.proxy(world.maps.v1.route("user-1").id, model).handle(url_event(body))
    assert response["statusCode"] == 413
    assert url_reply(response)["error"] == "too_large"
    assert model.calls == [] and world.state_items() == {}


def _big_answer(size: int, model: Counter) -> Callable[..., Any]:
    """The counter model, except that payload {"big": true} gets an answer of ``size`` bytes
    (after the model has changed the state it was given, as the quickstart's does)."""

    def infer(key: str, payload: Any, state: Any) -> tuple[Any, Any]:
        answer, new_state = model(key, payload, state)
        return ("x" * size if payload.get("big") else answer), new_state

    return infer


def test_an_answer_over_the_limit_is_refused_and_nothing_is_written(world: World) -> None:
    key = "user-11"
    owner = world.maps.v1.route(key)
    proxy = world.proxy(owner.id, _big_answer(7 * MB, Counter()))
    reply = proxy.handle({"key": key, "payload": {"seq": 1, "big": True}})
    assert (reply["status"], reply["error"]) == (413, "answer_too_large")
    assert world.state_items() == {}

    assert proxy.handle({"key": key, "payload": {"seq": 2}})["answer"] == {"count": 1}
    assert proxy.handle({"key": key, "payload": {"seq": 3, "big": True}})["status"] == 413
    # The refused requests changed the state they were given in place; none of it may leak.
    reply = proxy.handle({"key": key, "payload": {"seq": 4}})
    assert (reply["status"], reply["answer"], reply["seq"]) == (200, {"count": 2}, 2)
    assert world.item(key)["state"] == {"count": 2, "seqs": [2, 4]}  # type: ignore[index]


@pytest.mark.parametrize("content_type", [MSGPACK, "application/json"])
def test_an_answer_that_only_the_url_encoding_pushes_over_the_limit_is_refused(
    world: World, content_type: str
) -> None:
    """5 MB of answer is under 6 MB, but base64 (msgpack) or escaping (JSON, here every
    character is a quote) inside the response object is what Lambda has to send."""
    key = "user-12"
    owner = world.maps.v1.route(key)

    def infer(key: str, payload: Any, state: Any) -> tuple[Any, Any]:
        return '"' * (5 * MB if payload.get("big") else 10), {"n": 1}

    proxy = world.proxy(owner.id, infer)
    request = {"key": key, "payload": {"big": True}}
    body = msgpack.packb(request) if content_type == MSGPACK else json.dumps(request).encode()
    response = proxy.handle(url_event(body, content_type))
    assert len(json.dumps(response)) <= MAX_PAYLOAD
    assert response["statusCode"] == 413
    assert url_reply(response)["error"] == "answer_too_large"
    assert world.state_items() == {}
    # Direct invoke of the same answer is 5 MB of JSON after escaping each quote: also too big.
    assert proxy.handle(request)["status"] == 413
    assert world.state_items() == {}


def test_a_model_that_raises_gets_500_and_nothing_is_written(world: World) -> None:
    key = "user-13"
    owner = world.maps.v1.route(key)
    counter = Counter()

    def model(key: str, payload: Any, state: Any) -> tuple[Any, Any]:
        answer, new_state = counter(key, payload, state)  # changes the state, then fails
        if payload.get("fail"):
            raise RuntimeError("the model broke")
        return answer, new_state

    proxy = world.proxy(owner.id, model)
    reply = proxy.handle({"key": key, "payload": {"seq": 1, "fail": True}})
    assert (reply["status"], reply["error"]) == (500, "handler_error")
    assert "RuntimeError: the model broke" in reply["message"]
    assert world.state_items() == {}
    assert proxy.handle({"key": key, "payload": {"seq": 2}})["seq"] == 1
    assert proxy.handle({"key": key, "payload": {"seq": 3, "fail": True}})["status"] == 500
    assert proxy.handle({"key": key, "payload": {"seq": 4}})["answer"] == {"count": 2}
    assert world.item(key)["state"] == {"count": 2, "seqs": [2, 4]}  # type: ignore[index]


def test_an_answer_that_cannot_be_encoded_is_a_500_not_a_retryable_503(world: World) -> None:
    key = "user-14"
    owner = world.maps.v1.route(key)
    proxy = world.proxy(owner.id, lambda k, p, s: ({1, 2}, {"n": 1}))  # a set: no JSON
    reply = proxy.handle({"key": key, "payload": None})
    assert (reply["status"], reply["error"]) == (500, "bad_answer")
    assert world.state_items() == {}


# -- residency and failover ------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "tag"), [("eu:anna", "us"), ("user-1", "mars")])
def test_a_key_whose_tag_contradicts_residency_gets_422(world: World, key: str, tag: str) -> None:
    model = Counter()
    shard = world.maps.v1.route("user-1").id
    reply = world.proxy(shard, model).handle({"key": key, "payload": {}, "jurisdiction": tag})
    assert (reply["status"], reply["error"]) == (422, "residency")
    assert model.calls == [] and world.state_items() == {}


def test_failover_to_a_replica_answers_degraded_and_writes_nothing(world: World) -> None:
    key = "eu:berta"
    order = world.maps.v1.preference_list(key)
    owner, replica = order[0], order[1]
    assert replica.jurisdiction == "eu" and replica.region != owner.region
    assert (
        world.proxy(owner.id, Counter()).handle({"key": key, "payload": {"seq": 1}})["status"]
        == 200
    )
    before = world.state_items()

    model = Counter()
    proxy = world.proxy(replica.id, model)
    reply = proxy.handle({"key": key, "payload": {"seq": 2}, "failover": True})
    assert reply == Answer({"count": 1}, replica.id, 0, 1, 0, degraded=True).to_wire()
    assert model.calls == [None]  # the owner's state is neither read nor written
    assert world.state_items() == before
    # Without the failover flag the replica is just a non-owner.
    assert proxy.handle({"key": key, "payload": {}})["status"] == 421


def test_failover_to_another_jurisdiction_is_refused_with_421(world: World) -> None:
    key = "eu:carla"
    owner = world.maps.v1.route(key)
    us_shard = world.maps.v1.route("user-1")
    model = Counter()
    reply = world.proxy(us_shard.id, model).handle({"key": key, "payload": {}, "failover": True})
    assert reply == Redirect(owner.id, 1).to_wire()
    assert model.calls == [] and world.state_items() == {}


# -- Function URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [MSGPACK, "application/json"])
def test_function_url_requests_round_trip_in_their_own_encoding(
    world: World, content_type: str
) -> None:
    key = "user-21"
    owner = world.maps.v1.route(key)
    proxy = world.proxy(owner.id, Counter())

    def send(request: dict[str, Any]) -> dict[str, Any]:
        if content_type == MSGPACK:
            return proxy.handle(url_event(msgpack.packb(request)))
        return proxy.handle(url_event(json.dumps(request), content_type, b64=False))

    response = send({"key": key, "payload": {"seq": 1}, "request_id": "u1"})
    assert response["statusCode"] == 200
    assert response["headers"] == {"content-type": content_type}
    assert response["isBase64Encoded"] is (content_type == MSGPACK)
    assert url_reply(response) == Answer({"count": 1}, owner.id, owner.epoch, 1, 1).to_wire()
    assert url_reply(send({"key": key, "payload": {"seq": 1}, "request_id": "u1"}))["replayed"]

    other = next(s for s in world.maps.v1.shards if s.jurisdiction == "us" and s.id != owner.id)
    moved = world.proxy(other.id, Counter()).handle(
        url_event(msgpack.packb({"key": key, "payload": {}}))
    )
    assert moved["statusCode"] == 421
    assert url_reply(moved)["owner"] == owner.id


# -- logs and metrics ------------------------------------------------------------------------------


@pytest.fixture
def proxy_logs() -> Iterator[io.StringIO]:
    """What the proxy's Powertools logger writes (JSON lines), for the duration of a test."""
    stream = io.StringIO()
    handler = handler_module.logger.registered_handler
    old = handler.setStream(stream)  # type: ignore[attr-defined]
    try:
        yield stream
    finally:
        handler.setStream(old)  # type: ignore[attr-defined]


def test_logs_carry_the_key_hash_and_never_the_key(world: World, proxy_logs: io.StringIO) -> None:
    key = "user-SECRET-4711"
    owner = world.maps.v1.route(key)

    def model(key: str, payload: Any, state: Any) -> tuple[Any, Any]:
        raise ValueError("no good")

    assert world.proxy(owner.id, model).handle({"key": key, "payload": {}})["status"] == 500
    # A failure in the table (here: a table that does not exist) is logged as well.
    broken = world.proxy(owner.id, Counter(), table="no-such-table")
    assert broken.handle({"key": key, "payload": {}})["status"] == 503

    lines = [json.loads(line) for line in proxy_logs.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["inference handler failed", "request failed"]
    assert all(line["key_hash"] == f"{hash_key(key):016x}" for line in lines)
    assert key not in proxy_logs.getvalue()
    assert "no good" in lines[0]["exception"]


def test_a_log_line_never_carries_the_previous_requests_key_hash(
    world: World, proxy_logs: io.StringIO
) -> None:
    key = "user-15"
    owner = world.maps.v1.route(key)
    registry = Registry(world.maps.env1)
    proxy = world.proxy(owner.id, lambda k, p, s: 1 / 0, registry)
    assert proxy.handle({"key": key, "payload": {}})["status"] == 500
    registry.error = ConnectionError("the registry is unreachable")
    reply = proxy.handle({"key": "user-16", "payload": {}, "map_version": 9})
    assert reply["status"] == 503

    first, second = (json.loads(line) for line in proxy_logs.getvalue().splitlines())
    assert first["key_hash"] == f"{hash_key(key):016x}"
    assert second["message"] == "the registry cannot be read" and "key_hash" not in second


def test_the_lambda_handler_prints_emf_metrics_per_shard(
    world: World,
    maps: Maps,
    key_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="registry-bucket")
    s3.put_object(Bucket="registry-bucket", Key="registry/map.skm", Body=maps.env1)
    key = "user-31"
    owner = maps.v1.route(key)
    monkeypatch.setenv("SHARDKIT_SHARD", owner.id)
    monkeypatch.setenv("SHARDKIT_REGISTRY", "s3://registry-bucket/registry/map.skm")
    monkeypatch.setenv("SHARDKIT_TRUSTED_KEYS", format_trusted_keys(key_dir))
    monkeypatch.setenv("SHARDKIT_TABLE", world.tables[maps.v1.route(key).region].name)
    monkeypatch.setenv("SHARDKIT_HANDLER", f"{__name__}:echo_model")
    capsys.readouterr()

    reply = handler_module.handler({"key": key, "payload": {"n": 1}}, None)
    assert reply["status"] == 200 and reply["answer"] == {"echo": {"n": 1}, "count": 1}
    assert handler_module.handler({"key": key, "payload": {"n": 2}}, None)["seq"] == 2

    docs = [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("{") and '"_aws"' in line
    ]
    assert len(docs) == 2  # one EMF document per invocation
    for doc in docs:
        (directive,) = doc["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "shardkit"
        assert any("shard" in dims for dims in directive["Dimensions"])
        assert {"requests", "latency"} <= {m["Name"] for m in directive["Metrics"]}
        assert doc["shard"] == owner.id
        assert doc["requests"] in (1, [1])  # this invocation's request, and only it
    assert world.item(key)["state"] == {"count": 2}  # type: ignore[index]
    assert [doc.get("cold_starts") for doc in docs] == [[1.0], None]  # only the first paid a start

    # a migration's warm-up: the proxy is there already (not cold), nothing served or counted
    assert handler_module.handler(WARM_EVENT, None) == {"warm": owner.id, "cold": False}
    assert '"_aws"' not in capsys.readouterr().out
    # a slot a migration has fenced answers 503 moving: counted as "moving", never as errors
    world.fence_slot(key)
    assert handler_module.handler({"key": key, "payload": {"n": 3}}, None)["error"] == "moving"
    (doc,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"_aws"' in x]
    assert doc["moving"] in (1, [1]) and "errors" not in doc


def test_the_lambda_handler_reports_a_missing_model_cleanly(
    world: World, maps: Maps, key_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="registry-bucket")
    s3.put_object(Bucket="registry-bucket", Key="registry/map.skm", Body=maps.env1)
    key = "user-32"
    monkeypatch.setenv("SHARDKIT_SHARD", maps.v1.route(key).id)
    monkeypatch.setenv("SHARDKIT_REGISTRY", "s3://registry-bucket/registry/map.skm")
    monkeypatch.setenv("SHARDKIT_TRUSTED_KEYS", format_trusted_keys(key_dir))
    monkeypatch.setenv("SHARDKIT_TABLE", world.tables[maps.v1.route(key).region].name)
    monkeypatch.setenv("SHARDKIT_HANDLER", "no_such_module_here:infer")
    reply = handler_module.handler({"key": key, "payload": {}}, None)
    assert (reply["status"], reply["error"]) == (500, "no_handler")
    assert "no_such_module_here" in reply["message"]
    assert world.state_items() == {}


# -- the load signal ------------------------------------------------------------------------------


def test_served_requests_become_one_load_item_per_window(world: World) -> None:
    """Every request the shard serves is counted once (redirects are not); the request that
    closes a window writes that window's record to the state table, one item, and nothing else
    is written per request."""
    from shardkit.proxy.load import LoadAccumulator, LoadSink, decode_record, load_sort_key
    from shardkit.proxy.table import Put, query_all

    key = "user-7"
    owner = world.maps.v1.route(key)
    other = next(s for s in world.maps.v1.shards if s.id != owner.id and s.group == owner.group)
    now = [1_700_000_003.0]
    table = world.tables[owner.region]
    load = LoadAccumulator("i-1", window_s=10.0)
    proxy = world.proxy(owner.id, Counter())
    proxy.load, proxy.sink = load, LoadSink(lambda i: table.write(Put(i)))
    proxy.wall = lambda: now[0]
    for _ in range(3):
        proxy.handle({"key": key, "payload": {}})
    redirected = world.proxy(other.id, Counter())
    redirected.load = LoadAccumulator("i-2", window_s=10.0)
    assert redirected.handle({"key": key, "payload": {}})["status"] == 421
    assert not list(query_all(table, f"{owner.group}#load"))  # the window is still open
    now[0] = 1_700_000_011.0
    proxy.handle({"key": key, "payload": {}})  # the first request of the next window
    (item,) = list(query_all(table, f"{owner.group}#load"))
    assert item["sk"] == load_sort_key(1_700_000_000.0, "i-1")
    record = decode_record(bytes(item["data"]))  # type: ignore[arg-type]
    assert (record.start, record.length, record.map_version) == (1_700_000_000.0, 10.0, 1)
    (total,) = record.shards
    assert (total.shard, total.group, total.requests) == (owner.id, owner.group, 3)
    (hot,) = record.hot
    assert (hot.slot, hot.requests) == (world.maps.v1.slot(key), 3)
    assert redirected.load.take() == [] and redirected.load.closed == []


def test_a_failed_load_write_never_fails_the_request(world: World) -> None:
    from shardkit.proxy.load import LoadAccumulator, LoadSink

    def broken(item: Any) -> None:
        raise ConnectionError("table unreachable")

    key = "user-7"
    owner = world.maps.v1.route(key)
    now = [1_700_000_003.0]
    sink = LoadSink(broken)
    proxy = world.proxy(owner.id, Counter())
    proxy.load, proxy.sink = LoadAccumulator("i-1", window_s=10.0), sink
    proxy.wall = lambda: now[0]
    proxy.handle({"key": key, "payload": {}})
    now[0] += 10
    reply = proxy.handle({"key": key, "payload": {}})
    assert reply["status"] == 200 and reply["seq"] == 2
    assert sink.dropped == 1
