"""The wire protocol between the routing client and the proxy: its one definition, for both sides.

Request::   {"key": str, "payload"?: any, "map_version"?: int, "jurisdiction"?: str,
             "request_id"?: str, "failover"?: bool}
Answer::    {"status": 200, "answer": any, "shard": str, "epoch": int, "map_version": int,
             "seq": int, "replayed": bool}
Degraded::  a failover answer from a replica: an answer with "degraded": true; state is
            neither read from nor written to the owner's partition
Redirect::  {"status": 421, "error": "moved", "owner": str, "map_version": int}
Error::     {"status": 4xx|5xx, "error": code, "message": str}  (codes: :data:`ERRORS`)

A direct invoke carries the request as the event (JSON) and the reply as the handler's return
value. A Function URL request (payload format 2.0) carries it as the body - ``application/msgpack``
or ``application/json``, base64 when ``isBase64Encoded`` - and gets the reply in the same
encoding, with the reply's status as the HTTP status.

Both ends validate at the boundary: the proxy answers a malformed request with an error reply
(:class:`ProxyError`), the client turns a malformed reply into an :class:`InferenceError` with
code ``bad_reply``. Data plane: stdlib and msgpack only.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

from .errors import InferenceError, InvalidKeyError

__all__ = [
    "DIRECT",
    "ERRORS",
    "JSON",
    "MAX_KEY_BYTES",
    "MAX_PAYLOAD",
    "MOVED",
    "MSGPACK",
    "OK",
    "RESERVED_PREFIX",
    "THROTTLED",
    "TRANSIENT",
    "Answer",
    "Encoding",
    "ErrorReply",
    "ProxyError",
    "Redirect",
    "Reply",
    "Request",
    "check_key",
    "decode_body",
    "decode_event",
    "decode_reply",
    "encode_body",
    "encode_reply",
    "error_encoding",
    "is_transient",
    "key_problem",
    "printable_key",
    "reply_size",
    "request_wire",
]

#: Lambda's limit for a synchronous request or response.
MAX_PAYLOAD = 6 * 1024 * 1024
#: No key begins with this: in a state table, sort keys that do are shardkit's own records.
RESERVED_PREFIX = "\x00"
MSGPACK = "application/msgpack"
JSON = "application/json"

OK = 200
MOVED = 421
THROTTLED = 429

#: Every error code the proxy answers with, and its status.
ERRORS: dict[str, int] = {
    "bad_event": 400,  # the event is not a request object or a Function URL event
    "bad_body": 400,  # the Function URL body is not valid base64, msgpack or JSON
    "bad_request": 400,  # unknown field, or a field of the wrong type
    "bad_key": 400,  # not a valid key (check_key: UTF-8, 1..MAX_KEY_BYTES, no RESERVED_PREFIX)
    "bad_method": 405,  # a Function URL request that is not a POST
    "too_large": 413,  # the request body is over MAX_PAYLOAD
    "answer_too_large": 413,  # the answer would be over MAX_PAYLOAD: nothing was written
    "state_too_large": 413,  # the new state is over DynamoDB's item limit: nothing was written
    "bad_content_type": 415,  # neither msgpack nor JSON
    "residency": 422,  # the key's jurisdiction is unknown or contradicts its tag
    "handler_error": 500,  # the inference function raised
    "no_handler": 500,  # the inference function cannot be imported
    "bad_answer": 500,  # the inference function's answer cannot be encoded
    "bad_state": 500,  # the inference function's new state cannot be stored
    "internal": 500,  # the proxy failed on this request (a defect, not an outage)
    "no_map": 503,  # the shard has no valid map (registry unreachable, map expired)
    "moving": 503,  # the key's slot is moving to another shard or region
    "contended": 503,  # the key was written concurrently too often
    "unavailable": 503,  # the state table or the registry could not be reached
}

#: Statuses a client retries (with backoff, on the same shard): the proxy's 503s, and what the
#: Lambda service itself answers for a throttled (429) or failed/timed-out (502, 504) function.
#: Only what may succeed when sent again is here: every 4xx and 500 is the same on a retry (the
#: request, the function or the proxy is at fault), so the retry budget is kept for outages.
TRANSIENT = frozenset({THROTTLED, 502, 503, 504})


def is_transient(status: int) -> bool:
    """Whether a reply with ``status`` may succeed if the same request is sent again."""
    return status in TRANSIENT


# -- the key ------------------------------------------------------------------------------------

#: The longest key, in UTF-8 bytes. The one rule for keys - the CLI, the routing client, the edge
#: runtime and the proxy all apply :func:`check_key` - so a key one of them accepts is never
#: refused by another. (The state table stores the key inside its item key, which DynamoDB limits
#: to 1024 bytes for a sort key and 2048 for a partition key.)
MAX_KEY_BYTES = 1024
_KEY_RULE = (
    f"a key is a non-empty UTF-8 string of at most {MAX_KEY_BYTES:,} bytes, not beginning with "
    "U+0000"
)


def key_problem(key: Any) -> str | None:
    """Why ``key`` is not a valid key (``"is empty"``, ...), or None if it is one: a non-empty
    ``str`` of at most :data:`MAX_KEY_BYTES` bytes in UTF-8 that does not begin with
    :data:`RESERVED_PREFIX` (a state table's own records sort there). A string holding a lone
    surrogate - what JSON's ``"\\ud800"`` or an undecodable command-line byte becomes - has no
    UTF-8 form."""
    if (
        type(key) is str
        and 0 < len(key) <= MAX_KEY_BYTES
        and key.isascii()
        and not key.startswith(RESERVED_PREFIX)
    ):
        return None  # the common case, without encoding it
    if not isinstance(key, str):
        return f"is {type(key).__name__}, not a string"
    if not key:
        return "is empty"
    if key.startswith(RESERVED_PREFIX):
        return "begins with U+0000, which is reserved for shardkit's own records"
    try:
        size = len(key.encode())
    except UnicodeEncodeError:
        return "is not valid UTF-8 (it holds a lone surrogate or an undecodable byte)"
    if size > MAX_KEY_BYTES:
        return f"is {size:,} bytes in UTF-8, over the limit of {MAX_KEY_BYTES:,}"
    return None


def check_key(key: Any) -> str:
    """``key`` if it is a valid key (:func:`key_problem`), else :class:`InvalidKeyError`."""
    problem = key_problem(key)
    if problem is None:
        return key  # type: ignore[no-any-return]
    raise InvalidKeyError(
        f"key {_shown(key)} {problem}",
        hint=f"{_KEY_RULE}; make a longer or binary identifier into a key by hashing it "
        "(e.g. hashlib.sha256(data).hexdigest())",
    )


def _shown(key: Any) -> str:
    """A short form of a (bad) key for messages: quoted, undecodable bytes as ``\\xff``."""
    text = f"'{printable_key(key)}'" if isinstance(key, str) else repr(key)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(key):,} long)"


def printable_key(key: str) -> str:
    """``key`` as it can be printed: a byte the command line could not decode (Python holds it
    as a lone surrogate, ``"\\udcff"``) shows as the byte it was, ``\\xff``."""
    try:
        key.encode()
        return key
    except UnicodeEncodeError:
        pass
    try:
        raw = key.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte: show its code point
        return key.encode("utf-8", "backslashreplace").decode()
    return raw.decode("utf-8", "backslashreplace")


# -- the request --------------------------------------------------------------------------------

_REQUEST_FIELDS = frozenset(
    {"key", "payload", "map_version", "jurisdiction", "request_id", "failover"}
)


@dataclass(slots=True)
class Request:
    """One inference request for ``key``, routed with map ``map_version``. A ``request_id``
    makes retries and hedges of it apply once; ``failover`` lets a replica answer (degraded)."""

    key: str
    payload: Any = None
    map_version: int = 0
    jurisdiction: str | None = None
    request_id: str | None = None
    failover: bool = False

    def to_wire(self) -> dict[str, Any]:
        return request_wire(
            self.key,
            self.payload,
            self.map_version,
            self.jurisdiction,
            self.request_id,
            self.failover,
        )

    @classmethod
    def from_wire(cls, data: Any) -> Request:
        """The request in ``data``; :class:`ProxyError` (400) naming the bad field if any."""
        if not isinstance(data, dict):
            raise ProxyError("bad_request", "a request is an object with 'key' and 'payload'")
        unknown = sorted(set(data) - _REQUEST_FIELDS)
        if unknown:
            raise ProxyError("bad_request", f"unknown request field(s): {', '.join(unknown)}")
        key = data.get("key")
        problem = key_problem(key)
        if problem is not None:
            raise ProxyError("bad_key", f"'key' {problem}; {_KEY_RULE}")
        version = data.get("map_version", 0)
        if not _is_count(version):
            raise ProxyError("bad_request", "'map_version' must be a non-negative integer")
        jurisdiction = data.get("jurisdiction")
        request_id = data.get("request_id")
        for name, value in (("jurisdiction", jurisdiction), ("request_id", request_id)):
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 128):
                raise ProxyError("bad_request", f"'{name}' must be a string of 1-128 characters")
        failover = data.get("failover", False)
        if not isinstance(failover, bool):
            raise ProxyError("bad_request", "'failover' must be true or false")
        return cls(key, data.get("payload"), version, jurisdiction, request_id, failover)


def request_wire(
    key: str,
    payload: Any = None,
    map_version: int = 0,
    jurisdiction: str | None = None,
    request_id: str | None = None,
    failover: bool = False,
) -> dict[str, Any]:
    """``Request(...).to_wire()`` without the object: what the client sends, once per attempt."""
    wire: dict[str, Any] = {"key": key, "payload": payload, "map_version": map_version}
    if request_id is not None:
        wire["request_id"] = request_id
    if jurisdiction is not None:
        wire["jurisdiction"] = jurisdiction
    if failover:
        wire["failover"] = True
    return wire


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# -- the replies --------------------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    """200: the shard's answer, and the state it was made with (``seq`` applied writes, under
    ``epoch`` and map ``map_version``). ``replayed``: the recorded answer of a request id seen
    before. ``degraded``: a replica answered a failover request without the key's state."""

    answer: Any
    shard: str
    epoch: int
    map_version: int
    seq: int
    replayed: bool = False
    degraded: bool = False
    status: ClassVar[int] = OK

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "status": OK,
            "answer": self.answer,
            "shard": self.shard,
            "epoch": self.epoch,
            "map_version": self.map_version,
            "seq": self.seq,
            "replayed": self.replayed,
        }
        if self.degraded:
            wire["degraded"] = True
        return wire


@dataclass(slots=True)
class Redirect:
    """421: ``owner`` owns the key in map ``map_version``; nothing was done."""

    owner: str
    map_version: int
    status: ClassVar[int] = MOVED
    code: ClassVar[str] = "moved"

    def to_wire(self) -> dict[str, Any]:
        return {
            "status": MOVED,
            "error": self.code,
            "owner": self.owner,
            "map_version": self.map_version,
        }


@dataclass(slots=True)
class ErrorReply:
    """4xx/5xx: the request failed; ``code`` says why (the proxy's codes are :data:`ERRORS`)."""

    status: int
    code: str
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.code, "message": self.message}


Reply = Answer | Redirect | ErrorReply


class ProxyError(Exception):
    """An error the proxy answers with: ``code`` (one of :data:`ERRORS`) fixes the status."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERRORS:
            raise ValueError(f"{code!r} is not a proxy error code; add it to ERRORS first")
        super().__init__(message)
        self.code = code
        self.status = ERRORS[code]

    def reply(self) -> ErrorReply:
        return ErrorReply(self.status, self.code, str(self))


def decode_reply(data: Any, shard: str = "") -> Reply:
    """The reply in ``data`` (as a transport received it from ``shard``). Anything that is not
    a well-formed reply is an :class:`InferenceError` with code ``bad_reply`` naming the field."""
    # The common case, an answer, is checked with cheap operations only (this is per request);
    # anything else - or anything unusual - goes the long way, which names the field at fault.
    if type(data) is dict:
        try:
            status, sid, epoch = data["status"], data["shard"], data["epoch"]
            version, seq, answer = data["map_version"], data["seq"], data["answer"]
        except KeyError:
            pass
        else:
            replayed, degraded = data.get("replayed", False), data.get("degraded", False)
            if (
                status == OK
                and type(status) is int
                and type(sid) is str
                and sid
                and type(epoch) is int
                and type(version) is int
                and type(seq) is int
                and epoch >= 0
                and version >= 0
                and seq >= 0
                and (replayed is False or replayed is True)
                and (degraded is False or degraded is True)
            ):
                return Answer(answer, sid, epoch, version, seq, replayed, degraded)
    return _decode_checked(data, shard)


def _decode_checked(data: Any, shard: str) -> Reply:
    if not isinstance(data, dict):
        raise _bad_reply(shard, f"a reply is an object, not {type(data).__name__}")
    status = data.get("status")
    if not _is_count(status):
        raise _bad_reply(shard, f"'status' must be an integer, not {status!r}")
    if status == OK:
        if "answer" not in data:
            raise _bad_reply(shard, "an answer (status 200) has no 'answer'", status)
        return Answer(
            data["answer"],
            _text(data, "shard", shard),
            _count(data, "epoch", shard),
            _count(data, "map_version", shard),
            _count(data, "seq", shard),
            replayed=_flag(data, "replayed", shard),
            degraded=_flag(data, "degraded", shard),
        )
    if status == MOVED:
        return Redirect(_text(data, "owner", shard), _count(data, "map_version", shard))
    if 400 <= status <= 599:
        message = _text(data, "message", shard, empty=True)
        return ErrorReply(status, _text(data, "error", shard), message)
    raise _bad_reply(shard, f"status {status} is not a reply status", status)


def _count(data: dict[str, Any], name: str, shard: str) -> int:
    value = data.get(name)
    if not _is_count(value):
        problem = f"'{name}' must be a non-negative integer, not {value!r}"
        raise _bad_reply(shard, problem, data["status"])
    return int(value)


def _text(data: dict[str, Any], name: str, shard: str, *, empty: bool = False) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not (value or empty):
        what = "a string" if empty else "a non-empty string"
        raise _bad_reply(shard, f"'{name}' must be {what}, not {value!r}", data["status"])
    return value


def _flag(data: dict[str, Any], name: str, shard: str) -> bool:
    value = data.get(name, False)  # a flag that is absent is false
    if not isinstance(value, bool):
        raise _bad_reply(shard, f"'{name}' must be true or false, not {value!r}", data["status"])
    return value


def _bad_reply(shard: str, problem: str, status: int = 0) -> InferenceError:
    who = f"shard {shard}" if shard else "the shard"
    return InferenceError(
        f"{who} sent a malformed reply: {problem}",
        status=status,
        code="bad_reply",
        shard=shard,
        hint="the shard and this client may run different shardkit versions, or something "
        "between them changed the reply (docs/proxy.md lists the protocol)",
    )


# -- bodies, events and responses ---------------------------------------------------------------


def encode_body(data: Any, content_type: str) -> bytes:
    """``data`` as msgpack or JSON bytes. TypeError/ValueError if it cannot be encoded."""
    if content_type == MSGPACK:
        return bytes(msgpack.packb(data, use_bin_type=True))
    return json.dumps(data).encode()


def decode_body(raw: bytes, content_type: str) -> Any:
    """What msgpack or JSON bytes hold (an empty JSON body is null); ValueError if they are not
    valid in their content type, or the content type is neither."""
    if content_type == MSGPACK:
        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types for bad bytes
            raise ValueError(f"not valid msgpack: {type(exc).__name__}") from None
    if content_type == JSON:
        try:
            return json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        except RecursionError:  # deeper than the interpreter can parse: never on a retry either
            raise ValueError("not valid JSON: nested too deeply") from None
    raise ValueError(f"content-type {content_type!r} is not supported; use {MSGPACK} or {JSON}")


@dataclass(frozen=True, slots=True)
class Encoding:
    """How a request arrived, so its reply goes back the same way."""

    http: bool  # a Function URL event (else a direct invoke)
    content_type: str = JSON


DIRECT = Encoding(http=False)


def decode_event(event: Any) -> tuple[Request, Encoding]:
    """Parse a direct-invoke event or a Function URL event; ProxyError(4xx) if malformed."""
    if not isinstance(event, dict):
        raise ProxyError("bad_event", f"an event is a JSON object, not {type(event).__name__}")
    if _is_http(event):
        return _from_http(event)
    return Request.from_wire(event), DIRECT


def error_encoding(event: Any) -> Encoding:
    """How to answer an event that could not be decoded. A Function URL caller must get an HTTP
    response with the status as its status (a bare object would reach it as "200 OK"), in the
    encoding it asked for when that is one we speak."""
    if not (isinstance(event, dict) and _is_http(event)):
        return DIRECT
    return Encoding(http=True, content_type=MSGPACK if _content_type(event) == MSGPACK else JSON)


def _is_http(event: dict[str, Any]) -> bool:
    return ("requestContext" in event and "body" in event) or event.get("version") == "2.0"


def _content_type(event: dict[str, Any]) -> str:
    headers = event.get("headers") if isinstance(event.get("headers"), dict) else {}
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    return lowered.get("content-type", JSON).split(";")[0].strip().lower()


def _method(event: dict[str, Any]) -> Any:
    context = event.get("requestContext")
    http = context.get("http") if isinstance(context, dict) else None
    return http.get("method") if isinstance(http, dict) else None


def _from_http(event: dict[str, Any]) -> tuple[Request, Encoding]:
    method = _method(event)
    if not isinstance(method, str):
        raise ProxyError("bad_event", "the Function URL event has no requestContext.http.method")
    if method != "POST":  # a GET or DELETE must not apply a request (a direct invoke has none)
        raise ProxyError("bad_method", f"{method[:20]!r} is not allowed; send requests with POST")
    ctype = _content_type(event)
    body = event.get("body") or ""
    if not isinstance(body, str):
        raise ProxyError("bad_event", "the Function URL event body is not a string")
    try:
        raw = (
            base64.b64decode(body, validate=True) if event.get("isBase64Encoded") else body.encode()
        )
    except (binascii.Error, ValueError):
        raise ProxyError("bad_body", "isBase64Encoded is set but the body is not base64") from None
    if len(raw) > MAX_PAYLOAD:
        raise ProxyError(
            "too_large", f"request body is {len(raw):,} bytes; the limit is {MAX_PAYLOAD:,}"
        )
    if ctype not in (MSGPACK, JSON):
        raise ProxyError(
            "bad_content_type",
            f"content-type {ctype!r} is not supported; use {MSGPACK} or {JSON}",
        )
    try:
        data = decode_body(raw, ctype)
    except ValueError as exc:
        raise ProxyError("bad_body", f"body is {exc}") from None
    return Request.from_wire(data), Encoding(http=True, content_type=ctype)


def encode_reply(reply: Reply, encoding: Encoding) -> Any:
    """The handler's return value: the reply itself (direct invoke) or an HTTP response."""
    wire = reply.to_wire()
    if not encoding.http:
        return wire
    headers = {"content-type": encoding.content_type}
    if reply.status == ERRORS["bad_method"]:
        headers["allow"] = "POST"  # what HTTP asks of a 405
    if encoding.content_type == MSGPACK:
        body = base64.b64encode(encode_body(wire, MSGPACK)).decode()
        return {
            "statusCode": reply.status,
            "headers": headers,
            "body": body,
            "isBase64Encoded": True,
        }
    return {
        "statusCode": reply.status,
        "headers": headers,
        "body": encode_body(wire, JSON).decode(),
        "isBase64Encoded": False,
    }


def reply_size(reply: Reply, encoding: Encoding) -> int:
    """Bytes the handler's response takes as Lambda sends it (JSON of what the handler returns),
    to refuse answers over Lambda's limit before any write. For a Function URL that is the
    base64 or the escaped JSON of the body inside the response object, not the body alone: a
    5 MB msgpack answer is 6.7 MB on the wire."""
    try:
        return len(json.dumps(encode_reply(reply, encoding)))
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:  # not a 503: a retry
        raise ProxyError("bad_answer", f"the answer cannot be encoded: {exc}") from None
