"""One key rule everywhere: ``shardkit.protocol.check_key`` decides, and the routing client, the
edge runtime and the proxy agree with it key for key - a key one of them accepts is never
refused by another, and a bad key is an :class:`InvalidKeyError` (a 400 ``bad_key`` at the
proxy), never an encoding error or an AttributeError. (The CLI's side, with undecodable bytes on
a real command line, is in tests/functional/test_cli_inputs.py.)"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shardkit
from shardkit.edge import EdgeRuntime
from shardkit.errors import InvalidKeyError, RoutingError, ShardkitError
from shardkit.protocol import MAX_KEY_BYTES, Answer, ErrorReply, check_key, decode_reply
from shardkit.proxy.handler import Proxy
from shardkit.routing import MockTransport, RoutingClient
from shardkit.sharding.codec import encode_map
from shardkit.sharding.holder import MapHolder

BOUNDED = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def valid(key: Any) -> bool:
    """The rule, written out independently of the code under test."""
    if not isinstance(key, str) or key == "" or key[0] == "\x00":
        return False
    try:
        return len(key.encode("utf-8")) <= MAX_KEY_BYTES
    except UnicodeEncodeError:
        return False


#: Keys at and around every edge of the rule: empty, the byte limit in ASCII and in multi-byte
#: UTF-8, lone surrogates (JSON's "\ud800", an undecodable command-line byte), and non-strings.
EDGES: list[Any] = [
    "",
    "a",
    "eu:bob",
    "k" * MAX_KEY_BYTES,
    "k" * (MAX_KEY_BYTES + 1),
    "é" * (MAX_KEY_BYTES // 2),
    "é" * (MAX_KEY_BYTES // 2 + 1),
    "\U0001f600" * (MAX_KEY_BYTES // 4),
    "\U0001f600" * (MAX_KEY_BYTES // 4) + "x",
    "bad\udcffkey",
    "\x00slot",  # the reserved prefix: a state table's own records
    "slot\x00",
    "\ud800",
    b"bytes-key",
    17,
    None,
    ["a"],
]

keys = (
    st.sampled_from(EDGES)
    | st.text(st.characters(codec=None), max_size=40)  # surrogates included
    | st.text(max_size=1100)
    | st.binary(max_size=20)
)


class Fleet:
    """Every shard answers; records what reached it."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def __call__(self, shard: shardkit.Shard, request: dict[str, Any]) -> dict[str, Any]:
        self.sent.append(request["key"])
        return Answer({"ok": True}, shard.id, shard.epoch, request["map_version"], 0).to_wire()


class NoStore:
    """The proxy's state store, never reached by a request it refuses."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the store was used ({name}) for a refused request")


@pytest.fixture(scope="module")
def world(
    quickstart_like: Callable[..., dict[str, Any]],
    config_from: Callable[[dict[str, Any]], Any],
    signing_key: Any,
    trusted_keys: dict[str, bytes],
) -> tuple[RoutingClient, EdgeRuntime, Proxy, Fleet]:
    shard_map = shardkit.build_map(config_from(quickstart_like("keyrule")))
    envelope = encode_map(shard_map, signing_key.key_id, signing_key.sign)

    def holder() -> MapHolder:
        held = MapHolder(trusted_keys, lambda: envelope)
        held.refresh()
        return held

    fleet = Fleet()
    client = RoutingClient(holder(), MockTransport(fleet))
    edge = EdgeRuntime(RoutingClient(holder(), MockTransport(fleet)), background=lambda fn: False)
    # A shard that owns no key here ("nobody"): a valid key is redirected, never stored.
    proxy = Proxy(shard="nobody", holder=holder(), store=NoStore(), infer=lambda k, p, s: (p, s))
    return client, edge, proxy, fleet


def outcome(call: Callable[[], Any]) -> str:
    try:
        call()
    except InvalidKeyError:
        return "invalid"
    except ShardkitError as exc:  # e.g. a key whose jurisdiction is unknown: routed, refused
        return f"other:{type(exc).__name__}"
    return "ok"


@BOUNDED
@given(key=keys)
def test_the_client_the_edge_and_the_proxy_apply_the_one_rule(world: Any, key: Any) -> None:
    client, edge, proxy, fleet = world
    expected = valid(key)
    assert (outcome(lambda: check_key(key)) == "ok") is expected

    before = len(fleet.sent)
    client_says = outcome(lambda: client.infer(key, {"q": 1}))
    edge_says = outcome(lambda: edge.infer(key, {"q": 1}))
    assert (client_says == "invalid") is not expected, client_says
    assert (edge_says == "invalid") is not expected, edge_says
    if not expected:
        assert len(fleet.sent) == before  # refused before anything was sent

    # the proxy, as a direct invoke (JSON: strings only) and as a msgpack Function URL body
    events = [{"key": key, "payload": 1}] if not isinstance(key, bytes) else []
    try:  # msgpack has no form for a lone surrogate; JSON does ("\\udcff")
        body = msgpack.packb({"key": key, "payload": 1}, use_bin_type=True)
    except UnicodeEncodeError:
        body = None
    if body is not None:
        events.append(
            {
                "version": "2.0",
                "requestContext": {"http": {"method": "POST"}},
                "headers": {"content-type": "application/msgpack"},
                "body": base64.b64encode(body).decode(),
                "isBase64Encoded": True,
            }
        )
    for event in events:
        raw = proxy.handle(event)
        if "statusCode" in raw:
            raw = msgpack.unpackb(base64.b64decode(raw["body"]), raw=False)
        reply = decode_reply(raw, "nobody")
        refused = isinstance(reply, ErrorReply) and reply.code == "bad_key"
        assert refused is not expected, reply


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "key '' is empty"),
        ("k" * 2000, "is 2,000 bytes in UTF-8, over the limit of 1,024"),
        ("é" * 513, "is 1,026 bytes in UTF-8, over the limit of 1,024"),
        ("bad\udcffkey", "key 'bad\\xffkey' is not valid UTF-8"),  # undecodable argv bytes
        ("\ud800", "key '\\ud800' is not valid UTF-8"),
        (b"bad", "key b'bad' is bytes, not a string"),
        (None, "key None is NoneType, not a string"),
    ],
)
def test_a_bad_key_is_an_invalid_key_error_saying_why(world: Any, key: Any, problem: str) -> None:
    client = world[0]
    with pytest.raises(InvalidKeyError) as caught:
        client.infer(key)
    assert problem in caught.value.message
    assert isinstance(caught.value, RoutingError)
    assert "at most 1,024 bytes" in caught.value.hint
