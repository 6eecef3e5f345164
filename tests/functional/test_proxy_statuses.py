"""Every status the proxy gives, against what the routing client retries.

The proxy runs as Lambda runs it - ``shardkit.proxy.handler.handler`` configured by its
environment, over S3 (the registry) and DynamoDB emulated in-process by moto - and the routing
client sends to it through a transport that calls the handler. Each scenario turns the client's
request into one bad (or unlucky) event and checks the reply's status and code, that nothing was
written, and how often the client sent it: once for a request that fails the same way every
time, again (up to its attempts) only for a transient status. Retrying anything else spends the
client's retry budget on requests that can never succeed.
"""

from __future__ import annotations

import base64
import json
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

import shardkit
import shardkit.proxy.handler as handler_module
from shardkit.errors import InferenceError
from shardkit.keys import format_trusted_keys
from shardkit.migrate import initialise
from shardkit.protocol import ERRORS, MAX_PAYLOAD, ErrorReply, decode_reply, is_transient
from shardkit.proxy.state import FENCED, SlotRecord, StateStore, partition
from shardkit.proxy.table import DynamoTable
from shardkit.routing import MockTransport, RetryPolicy, RoutingClient
from shardkit.sharding.codec import encode_map
from shardkit.sharding.holder import MapHolder

REGION = "us-east-1"
BUCKET, TABLE, SHARD = "registry", "state", "us-0"
ATTEMPTS = 3
JSON_TYPE = "application/json"

CONFIG: dict[str, Any] = {
    "project": {"name": "statuses"},
    "hashing": {"slot_bits": 8},
    "signing": {"key_id": "test-key"},
    "regions": {"eu-west-1": {"jurisdiction": "eu"}, "us-east-1": {"jurisdiction": "us"}},
    "residency": {"default": "us", "rules": [{"prefix": "eu:", "jurisdiction": "eu"}]},
    "groups": {
        "eu": {"jurisdiction": "eu", "regions": ["eu-west-1"], "shards": 1},
        "us": {"jurisdiction": "us", "regions": ["us-east-1"], "shards": 1},
    },
}

MODEL = textwrap.dedent('''
    """The inference function of these tests: payload["kind"] says how to misbehave."""
    import shardkit.proxy.handler as handler


    def infer(key, payload, state):
        kind = payload.get("kind") if isinstance(payload, dict) else None
        if kind == "raise":
            raise RuntimeError("the model failed")
        if kind == "set-answer":
            return {1, 2}, None
        if kind == "big-answer":
            return "x" * (6 * 1024 * 1024 + 1), None
        if kind == "set-state":
            return "ok", {1, 2}
        if kind == "huge-int-state":
            return "ok", 2**70
        if kind == "big-state":
            return "ok", "x" * 400_000
        if kind == "deep":
            deep = []
            for _ in range(100_000):
                deep = [deep]
            return deep, None
        if kind == "race":  # another request writes the key while this one runs: a conflict
            handler.handler({"key": key, "payload": {"kind": "count"}}, None)
        count = (state or 0) + 1
        return {"count": count}, count
''')


@dataclass
class World:
    shard_map: shardkit.ShardMap
    trusted: dict[str, bytes]
    envelope: bytes
    ddb: Any
    calls: int = 0
    env: dict[str, str] = field(default_factory=dict)

    def items(self) -> list[dict[str, Any]]:
        return sorted(
            self.ddb.scan(TableName=TABLE)["Items"], key=lambda i: json.dumps(i, sort_keys=True)
        )

    def handle(self, event: Any) -> Any:
        self.calls += 1
        return handler_module.handler(event, None)

    def client(self, to_event: Callable[[dict[str, Any]], Any]) -> RoutingClient:
        holder = MapHolder(self.trusted, lambda: self.envelope)
        holder.refresh()

        def send(shard: shardkit.Shard, request: dict[str, Any]) -> Any:
            return reply_of(self.handle(to_event(request)))

        retry = RetryPolicy(attempts=ATTEMPTS, base_s=0.0, cap_s=0.0, budget_floor=1000.0)
        return RoutingClient(holder, MockTransport(send), retry=retry, sleep=lambda s: None)


def reply_of(response: Any) -> Any:
    """The proxy's reply in a handler's return value (a Function URL response, or itself)."""
    if isinstance(response, dict) and "statusCode" in response:
        raw = response["body"]
        data = base64.b64decode(raw) if response["isBase64Encoded"] else raw.encode()
        return json.loads(data)
    return response


def url_event(body: str, method: str = "POST", ctype: str = JSON_TYPE) -> dict[str, Any]:
    return {
        "version": "2.0",
        "headers": {"content-type": ctype},
        "requestContext": {"http": {"method": method, "path": "/"}},
        "body": body,
        "isBase64Encoded": False,
    }


def as_url(method: str = "POST") -> Callable[[dict[str, Any]], Any]:
    return lambda request: url_event(json.dumps(request), method)


@pytest.fixture
def world(
    moto: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    config_from: Callable[[dict[str, Any]], Any],
    signing_key: Any,
    trusted_keys: dict[str, bytes],
    key_dir: Path,
) -> Iterator[World]:
    shard_map = shardkit.build_map(config_from(CONFIG))
    envelope = encode_map(shard_map, signing_key.key_id, signing_key.sign)
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="registry/map.skm", Body=envelope)
    ddb = boto3.client("dynamodb", region_name=REGION)
    ddb.create_table(
        TableName=TABLE,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
    )
    initialise({REGION: DynamoTable(ddb, TABLE)}, shard_map, groups=["us"])  # a first deploy's
    (tmp_path / "statuses_model.py").write_text(MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    env = {
        "SHARDKIT_SHARD": SHARD,
        "SHARDKIT_REGISTRY": f"s3://{BUCKET}/registry/map.skm",
        "SHARDKIT_TRUSTED_KEYS": format_trusted_keys(key_dir),
        "SHARDKIT_TABLE": TABLE,
        "SHARDKIT_HANDLER": "statuses_model:infer",
        "AWS_DEFAULT_REGION": REGION,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(handler_module, "_proxy", None)
    yield World(shard_map, trusted_keys, envelope, ddb, env=env)
    sys.modules.pop("statuses_model", None)


# -- the scenarios --------------------------------------------------------------------------------


def _deep_json(request: dict[str, Any]) -> Any:
    deep = "[" * 100_000 + "]" * 100_000
    return url_event(json.dumps(request)[:-1] + f', "payload": {deep}}}')


def _with(**fields: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda request: {**request, **fields}


def _fail_store(exc: Exception) -> Callable[[World, pytest.MonkeyPatch], None]:
    def arrange(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
        def load(self: StateStore, *args: Any) -> Any:
            raise exc

        monkeypatch.setattr(StateStore, "load", load)

    return arrange


def _handler(spec: str) -> Callable[[World, pytest.MonkeyPatch], None]:
    return lambda world, monkeypatch: monkeypatch.setenv("SHARDKIT_HANDLER", spec)


def _no_table(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.ddb.delete_table(TableName=TABLE)


def _no_registry(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    boto3.client("s3", region_name=REGION).delete_object(Bucket=BUCKET, Key="registry/map.skm")


def _slot_moving(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key's slot is fenced for a move to another region: the shard may not write it."""
    slot = world.shard_map.slot("user-1")
    record = SlotRecord(SHARD, world.shard_map.version, FENCED)
    DynamoTable(world.ddb, TABLE).put_batch([record.item(partition("us", slot))])


@dataclass(frozen=True)
class Scenario:
    code: str  # the error code the proxy must answer with
    payload: Any = None
    to_event: Callable[[dict[str, Any]], Any] = lambda request: request
    arrange: Callable[[World, pytest.MonkeyPatch], None] | None = None
    key: str = "user-1"
    writes: bool = False  # the scenario itself writes (a conflicting request)


SCENARIOS = {
    "not-an-object": Scenario("bad_event", to_event=lambda r: [r]),
    "bad-json-body": Scenario("bad_body", to_event=lambda r: url_event("{not json")),
    "json-nested-100k-deep": Scenario("bad_body", to_event=_deep_json),
    "unknown-field": Scenario("bad_request", to_event=_with(priority=9)),
    "empty-key": Scenario("bad_key", to_event=_with(key="")),
    "key-over-1024-bytes": Scenario("bad_key", to_event=_with(key="k" * 2000)),
    "get-with-a-body": Scenario("bad_method", {"kind": "count"}, as_url("GET")),
    "delete-with-a-body": Scenario("bad_method", {"kind": "count"}, as_url("DELETE")),
    "body-over-6mb": Scenario(
        "too_large", to_event=lambda r: url_event(json.dumps({**r, "payload": "x" * MAX_PAYLOAD}))
    ),
    "answer-over-6mb": Scenario("answer_too_large", {"kind": "big-answer"}),
    "state-over-the-item-limit": Scenario("state_too_large", {"kind": "big-state"}),
    "form-body": Scenario(
        "bad_content_type",
        to_event=lambda r: url_event("key=1", ctype="application/x-www-form-urlencoded"),
    ),
    "tag-contradicts-prefix": Scenario(
        "residency", key="eu:anna", to_event=_with(jurisdiction="us")
    ),
    "model-raises": Scenario("handler_error", {"kind": "raise"}),
    "model-not-importable": Scenario(
        "no_handler", {"kind": "count"}, arrange=_handler("statuses_nowhere:infer")
    ),
    "answer-is-a-set": Scenario("bad_answer", {"kind": "set-answer"}),
    "answer-nested-100k-deep": Scenario("bad_answer", {"kind": "deep"}),
    "state-is-a-set": Scenario("bad_state", {"kind": "set-state"}),
    "state-int-beyond-64-bits": Scenario("bad_state", {"kind": "huge-int-state"}),
    "proxy-defect": Scenario("internal", arrange=_fail_store(ValueError("damaged state"))),
    "registry-unreachable": Scenario("no_map", arrange=_no_registry),
    "slot-moving": Scenario("moving", {"kind": "count"}, arrange=_slot_moving),
    "written-concurrently": Scenario("contended", {"kind": "race"}, writes=True),
    "table-unreachable": Scenario("unavailable", arrange=_fail_store(ConnectionError("down"))),
    "table-missing": Scenario("unavailable", {"kind": "count"}, arrange=_no_table),
}


def test_the_scenarios_cover_every_error_code() -> None:
    assert {s.code for s in SCENARIOS.values()} == set(ERRORS)


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_status_is_retried_by_the_client_exactly_when_it_is_transient(
    world: World, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    scenario = SCENARIOS[name]
    if scenario.arrange is not None:
        scenario.arrange(world, monkeypatch)
    before = world.items() if scenario.arrange is not _no_table else None
    client = world.client(scenario.to_event)
    with pytest.raises(InferenceError) as caught:
        client.infer(scenario.key, scenario.payload)
    status = ERRORS[scenario.code]
    assert (caught.value.status, caught.value.code) == (status, scenario.code), caught.value
    assert world.calls == (ATTEMPTS if is_transient(status) else 1)
    if before is not None and not scenario.writes:
        assert world.items() == before  # nothing written


def test_a_function_url_request_that_is_not_a_post_is_405_and_applies_nothing(
    world: World,
) -> None:
    body = json.dumps({"key": "user-1", "payload": {"kind": "count"}})
    before = world.items()
    for method in ("GET", "DELETE", "PUT", "HEAD"):
        response = world.handle(url_event(body, method))
        assert response["statusCode"] == 405 and response["headers"]["allow"] == "POST"
        reply = decode_reply(reply_of(response), SHARD)
        assert isinstance(reply, ErrorReply) and reply.code == "bad_method"
        assert method in reply.message
    assert world.items() == before
    applied = reply_of(world.handle(url_event(body, "POST")))
    assert (applied["status"], applied["answer"]) == (200, {"count": 1})
    without = url_event(body)
    del without["requestContext"]["http"]["method"]
    assert reply_of(world.handle(without))["error"] == "bad_event"


def test_json_nested_too_deep_is_a_bad_body_and_a_state_that_cannot_be_stored_is_bad_state(
    world: World,
) -> None:
    deep = reply_of(world.handle(_deep_json({"key": "user-1"})))
    assert (deep["status"], deep["error"]) == (400, "bad_body")
    assert deep["message"] == "body is not valid JSON: nested too deeply"
    before = world.items()
    reply = world.handle({"key": "user-1", "payload": {"kind": "set-state"}})
    assert (reply["status"], reply["error"]) == (500, "bad_state")
    assert reply["message"].startswith("the new state cannot be stored: TypeError: ")
    assert reply["message"].endswith("nothing was written")
    assert world.items() == before
