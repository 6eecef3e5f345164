"""The wire protocol (shardkit.protocol), shape by shape: the one place tests spell out the wire
dicts by hand. Everything else builds them with the module's constructors."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import msgpack
import pytest

from shardkit import protocol
from shardkit.errors import InferenceError, RoutingError
from shardkit.protocol import (
    DIRECT,
    ERRORS,
    JSON,
    MSGPACK,
    Answer,
    Encoding,
    ErrorReply,
    ProxyError,
    Redirect,
    Request,
    decode_body,
    decode_event,
    decode_reply,
    encode_body,
    encode_reply,
    error_encoding,
    is_transient,
    reply_size,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "proxy.md"

# -- the shapes ---------------------------------------------------------------------------------


def test_a_request_on_the_wire_carries_only_what_is_set() -> None:
    assert Request("user-1").to_wire() == {"key": "user-1", "payload": None, "map_version": 0}
    full = Request("eu:anna", {"q": 1}, 7, "eu", "req-1", failover=True)
    assert full.to_wire() == {
        "key": "eu:anna",
        "payload": {"q": 1},
        "map_version": 7,
        "request_id": "req-1",
        "jurisdiction": "eu",
        "failover": True,
    }
    assert Request.from_wire(full.to_wire()) == full
    assert Request.from_wire({"key": "k"}) == Request("k")


def test_the_replies_on_the_wire() -> None:
    answer = Answer({"n": 1}, "us-0", 3, 2, 5)
    assert answer.to_wire() == {
        "status": 200,
        "answer": {"n": 1},
        "shard": "us-0",
        "epoch": 3,
        "map_version": 2,
        "seq": 5,
        "replayed": False,
    }
    assert Answer(None, "us-0", 3, 2, 5, replayed=True).to_wire()["replayed"] is True
    degraded = Answer("x", "us-1", 0, 2, 0, degraded=True).to_wire()
    assert degraded == {
        "status": 200,
        "answer": "x",
        "shard": "us-1",
        "epoch": 0,
        "map_version": 2,
        "seq": 0,
        "replayed": False,
        "degraded": True,
    }
    assert Redirect("eu-2", 4).to_wire() == {
        "status": 421,
        "error": "moved",
        "owner": "eu-2",
        "map_version": 4,
    }
    assert ErrorReply(503, "contended", "retry").to_wire() == {
        "status": 503,
        "error": "contended",
        "message": "retry",
    }
    error = ProxyError("bad_key", "no key")
    assert (error.status, error.code, str(error)) == (400, "bad_key", "no key")
    assert error.reply() == ErrorReply(400, "bad_key", "no key")


@pytest.mark.parametrize(
    "reply",
    [
        Answer({"n": 1}, "us-0", 3, 2, 5),
        Answer([1, "two"], "us-0", 1, 1, 1, replayed=True),
        Answer(None, "eu-1", 0, 9, 0, degraded=True),
        Redirect("eu-2", 4),
        ErrorReply(503, "contended", "retry"),
        ErrorReply(500, "handler_error", ""),
        ErrorReply(429, "throttled", "slow down"),  # a code the proxy does not use: kept
    ],
)
def test_every_reply_decodes_to_itself(reply: protocol.Reply) -> None:
    assert decode_reply(reply.to_wire(), "us-0") == reply
    for ctype in (MSGPACK, JSON):
        assert decode_reply(decode_body(encode_body(reply.to_wire(), ctype), ctype)) == reply


def test_unknown_reply_fields_are_ignored() -> None:
    wire = {**Answer(1, "us-0", 1, 1, 1).to_wire(), "region": "us-east-1"}
    assert decode_reply(wire) == Answer(1, "us-0", 1, 1, 1)


# -- a malformed reply is a clear error ---------------------------------------------------------

_GOOD = Answer({"n": 1}, "us-0", 3, 2, 5).to_wire()


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (None, "a reply is an object, not NoneType"),
        (["status", 200], "a reply is an object, not list"),
        ({"answer": 1}, "'status' must be an integer, not None"),
        ({**_GOOD, "status": "200"}, "'status' must be an integer, not '200'"),
        ({**_GOOD, "status": True}, "'status' must be an integer, not True"),
        ({**_GOOD, "status": 200.0}, "'status' must be an integer, not 200.0"),
        ({**_GOOD, "epoch": True}, "'epoch' must be a non-negative integer, not True"),
        ({**_GOOD, "shard": ""}, "'shard' must be a non-empty string, not ''"),
        ({k: v for k, v in _GOOD.items() if k != "answer"}, "has no 'answer'"),
        ({k: v for k, v in _GOOD.items() if k != "shard"}, "'shard' must be a non-empty string"),
        ({**_GOOD, "epoch": -1}, "'epoch' must be a non-negative integer, not -1"),
        ({**_GOOD, "seq": "5"}, "'seq' must be a non-negative integer, not '5'"),
        ({**_GOOD, "map_version": 1.5}, "'map_version' must be a non-negative integer"),
        ({**_GOOD, "replayed": "no"}, "'replayed' must be true or false, not 'no'"),
        ({**_GOOD, "degraded": 1}, "'degraded' must be true or false, not 1"),
        ({"status": 421, "error": "moved", "map_version": 2}, "'owner' must be a non-empty"),
        ({"status": 421, "owner": "us-1"}, "'map_version' must be a non-negative integer"),
        ({"status": 503, "message": "x"}, "'error' must be a non-empty string, not None"),
        ({"status": 503, "error": "busy"}, "'message' must be a string, not None"),
        ({"status": 302, "location": "/"}, "status 302 is not a reply status"),
    ],
)
def test_a_malformed_reply_is_an_inference_error_naming_the_field(data: Any, problem: str) -> None:
    with pytest.raises(InferenceError) as err:
        decode_reply(data, "us-0")
    assert err.value.message.startswith("shard us-0 sent a malformed reply: ")
    assert problem in err.value.message
    assert (err.value.code, err.value.shard) == ("bad_reply", "us-0")
    assert isinstance(err.value, RoutingError) and "docs/proxy.md" in err.value.hint


# -- statuses -----------------------------------------------------------------------------------


def test_transient_statuses_are_the_ones_a_client_retries() -> None:
    assert [s for s in range(100, 600) if is_transient(s)] == [429, 502, 503, 504]
    assert {ERRORS[c] for c in ("no_map", "moving", "contended", "unavailable")} == {503}


def test_a_proxy_error_must_use_a_known_code() -> None:
    with pytest.raises(ValueError, match="'nope' is not a proxy error code"):
        ProxyError("nope", "x")


def test_the_docs_list_every_status_and_code_the_proxy_answers_with() -> None:
    """docs/proxy.md's table of statuses is the protocol's, not a copy that drifts: every code
    with its status, and for every status whether the client retries it."""
    rows = re.findall(r"^\| (\d{3}) \|([^|]*)\| (\S+) \|", DOCS.read_text(), flags=re.MULTILINE)
    documented = {
        code: int(status) for status, codes, _ in rows for code in re.findall(r"`(\w+)`", codes)
    }
    assert documented == {**ERRORS, "moved": 421}
    statuses = {int(status) for status, _, _ in rows}
    assert statuses >= {200, 421, *ERRORS.values(), *protocol.TRANSIENT}
    retried = {int(status): said for status, _, said in rows}
    assert retried.pop(200) == "—" and retried.pop(421) == "redirect"
    assert retried == {s: "yes" if is_transient(s) else "no" for s in retried}


# -- direct invoke and Function URLs ------------------------------------------------------------


def url_event(body: bytes, content_type: str, *, b64: bool = True) -> dict[str, Any]:
    return {
        "version": "2.0",
        "headers": {"Content-Type": f"{content_type}; charset=utf-8"},
        "requestContext": {"http": {"method": "POST"}},
        "body": base64.b64encode(body).decode() if b64 else body.decode(),
        "isBase64Encoded": b64,
    }


def test_a_direct_event_is_the_request_and_the_reply_is_returned_as_is() -> None:
    request, encoding = decode_event({"key": "k", "payload": 1})
    assert (request, encoding) == (Request("k", 1), DIRECT)
    reply = Redirect("us-1", 2)
    assert encode_reply(reply, encoding) == reply.to_wire()


@pytest.mark.parametrize("ctype", [MSGPACK, JSON])
def test_a_url_event_is_answered_in_its_own_encoding(ctype: str) -> None:
    wire = Request("k", {"q": [1, 2]}, 3, request_id="r").to_wire()
    request, encoding = decode_event(url_event(encode_body(wire, ctype), ctype))
    assert (request, encoding) == (
        Request("k", {"q": [1, 2]}, 3, request_id="r"),
        Encoding(True, ctype),
    )
    reply = ErrorReply(503, "moving", "retry shortly")
    response = encode_reply(reply, encoding)
    assert response["statusCode"] == 503
    assert response["headers"] == {"content-type": ctype}
    raw = base64.b64decode(response["body"]) if ctype == MSGPACK else response["body"].encode()
    assert response["isBase64Encoded"] is (ctype == MSGPACK)
    assert decode_body(raw, ctype) == reply.to_wire()
    assert reply_size(reply, encoding) == len(json.dumps(response))


def test_an_undecodable_url_event_is_answered_over_http() -> None:
    event = url_event(b"\xc1", MSGPACK)
    with pytest.raises(ProxyError) as err:
        decode_event(event)
    assert (err.value.status, err.value.code) == (400, "bad_body")
    assert error_encoding(event) == Encoding(True, MSGPACK)
    assert error_encoding({"key": 1}) == DIRECT
    assert error_encoding(url_event(b"x", "text/plain")) == Encoding(True, JSON)


def test_bodies_refuse_bad_bytes_and_unknown_types() -> None:
    assert decode_body(b"", JSON) is None
    assert decode_body(msgpack.packb({"a": b"\x00"}), MSGPACK) == {"a": b"\x00"}
    with pytest.raises(ValueError, match="not valid msgpack"):
        decode_body(b"\xc1", MSGPACK)
    with pytest.raises(ValueError, match="not valid JSON"):
        decode_body(b"{", JSON)
    with pytest.raises(ValueError, match="'text/plain' is not supported"):
        decode_body(b"x", "text/plain")


def test_an_answer_that_cannot_be_encoded_is_bad_answer() -> None:
    with pytest.raises(ProxyError) as err:
        reply_size(Answer({1, 2}, "us-0", 1, 1, 1), DIRECT)
    assert (err.value.status, err.value.code) == (500, "bad_answer")
