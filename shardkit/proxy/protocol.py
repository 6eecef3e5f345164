"""The proxy's wire protocol: requests and answers, msgpack or JSON, over direct invoke or a
Function URL (payload format 2.0).

Request::   {"key": str, "payload": any, "map_version"?: int, "jurisdiction"?: str,
             "request_id"?: str, "failover"?: bool}
Answer::    {"status": 200, "answer": any, "shard": str, "epoch": int, "map_version": int,
             "seq": int, "replayed": bool}
Degraded::  a failover answer from a replica: as above with "degraded": true; state is
            neither read from nor written to the owner's partition
Redirect::  {"status": 421, "error": "moved", "owner": str, "map_version": int}
Error::     {"status": 4xx|5xx, "error": code, "message": str}

A direct invoke carries the request as the event (JSON). A Function URL request carries it as the
body - ``application/msgpack`` or ``application/json``, base64 when ``isBase64Encoded`` - and gets
the answer in the same encoding, with the status as the HTTP status.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import msgpack

__all__ = ["MAX_PAYLOAD", "ProxyError", "Request", "decode_event", "encode_reply", "error_request"]

#: Lambda's limit for a synchronous request or response.
MAX_PAYLOAD = 6 * 1024 * 1024
MSGPACK = "application/msgpack"
JSON = "application/json"


class ProxyError(Exception):
    """An answer that is an error: status, code and message go back to the caller."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def reply(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.code, "message": str(self)}


class Request:
    __slots__ = (
        "content_type",
        "failover",
        "http",
        "jurisdiction",
        "key",
        "map_version",
        "payload",
        "request_id",
    )

    def __init__(
        self,
        key: str,
        payload: Any,
        map_version: int,
        jurisdiction: str | None,
        request_id: str | None,
        http: bool,
        content_type: str,
        failover: bool = False,
    ) -> None:
        self.key = key
        self.payload = payload
        self.map_version = map_version
        self.jurisdiction = jurisdiction
        self.request_id = request_id
        self.http = http
        self.content_type = content_type
        self.failover = failover


def decode_event(event: Any) -> Request:
    """Parse a direct-invoke event or a Function URL event; ProxyError(400/413) if malformed."""
    if not isinstance(event, dict):
        raise ProxyError(400, "bad_event", f"an event is a JSON object, not {type(event).__name__}")
    if _is_http(event):
        return _from_http(event)
    return _from_body(event, http=False, content_type=JSON)


def error_request(event: Any) -> Request | None:
    """How to answer an event that could not be decoded. A Function URL caller must get an HTTP
    response with the status as its status (a bare object would reach it as "200 OK"), in the
    encoding it asked for when that is one we speak."""
    if not (isinstance(event, dict) and _is_http(event)):
        return None
    ctype = MSGPACK if _content_type(event) == MSGPACK else JSON
    return Request("", None, 0, None, None, True, ctype)


def _is_http(event: dict[str, Any]) -> bool:
    return ("requestContext" in event and "body" in event) or event.get("version") == "2.0"


def _content_type(event: dict[str, Any]) -> str:
    headers = event.get("headers") if isinstance(event.get("headers"), dict) else {}
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    return lowered.get("content-type", JSON).split(";")[0].strip().lower()


def _from_http(event: dict[str, Any]) -> Request:
    ctype = _content_type(event)
    body = event.get("body") or ""
    if not isinstance(body, str):
        raise ProxyError(400, "bad_event", "the Function URL event body is not a string")
    try:
        raw = (
            base64.b64decode(body, validate=True) if event.get("isBase64Encoded") else body.encode()
        )
    except (binascii.Error, ValueError):
        raise ProxyError(
            400, "bad_body", "isBase64Encoded is set but the body is not base64"
        ) from None
    if len(raw) > MAX_PAYLOAD:
        raise ProxyError(
            413, "too_large", f"request body is {len(raw):,} bytes; the limit is {MAX_PAYLOAD:,}"
        )
    if ctype == MSGPACK:
        try:
            data = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types for bad bytes
            raise ProxyError(
                400, "bad_body", f"body is not valid msgpack: {type(exc).__name__}"
            ) from None
    elif ctype == JSON:
        try:
            data = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProxyError(400, "bad_body", f"body is not valid JSON: {exc}") from None
    else:
        raise ProxyError(
            415,
            "bad_content_type",
            f"content-type {ctype!r} is not supported; use {MSGPACK} or {JSON}",
        )
    return _from_body(data, http=True, content_type=ctype)


def _from_body(data: Any, *, http: bool, content_type: str) -> Request:
    if not isinstance(data, dict):
        raise ProxyError(400, "bad_request", "a request is an object with 'key' and 'payload'")
    unknown = sorted(
        set(data) - {"key", "payload", "map_version", "jurisdiction", "request_id", "failover"}
    )
    if unknown:
        raise ProxyError(400, "bad_request", f"unknown request field(s): {', '.join(unknown)}")
    key = data.get("key")
    if not _is_key(key):
        raise ProxyError(
            400, "bad_key", "'key' must be a non-empty UTF-8 string of at most 1024 bytes"
        )
    version = data.get("map_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ProxyError(400, "bad_request", "'map_version' must be a non-negative integer")
    jurisdiction = data.get("jurisdiction")
    request_id = data.get("request_id")
    for name, value in (("jurisdiction", jurisdiction), ("request_id", request_id)):
        if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 128):
            raise ProxyError(400, "bad_request", f"'{name}' must be a string of 1-128 characters")
    failover = data.get("failover", False)
    if not isinstance(failover, bool):
        raise ProxyError(400, "bad_request", "'failover' must be true or false")
    return Request(
        key, data.get("payload"), version, jurisdiction, request_id, http, content_type, failover
    )


def _is_key(key: Any) -> bool:
    """A non-empty UTF-8 string of at most 1024 bytes. A JSON string may hold a lone surrogate
    ("\\ud800") that no UTF-8 can carry: a bad key (400), not an encoding error escaping as a
    retryable 503."""
    if not isinstance(key, str) or not key:
        return False
    try:
        return len(key.encode()) <= 1024
    except UnicodeEncodeError:
        return False


def encode_reply(reply: dict[str, Any], request: Request | None) -> Any:
    """The handler's return value: the reply itself (direct invoke) or an HTTP response."""
    if request is None or not request.http:
        return reply
    if request.content_type == MSGPACK:
        body = base64.b64encode(msgpack.packb(reply, use_bin_type=True)).decode()
        return {
            "statusCode": reply["status"],
            "headers": {"content-type": MSGPACK},
            "body": body,
            "isBase64Encoded": True,
        }
    return {
        "statusCode": reply["status"],
        "headers": {"content-type": JSON},
        "body": json.dumps(reply),
        "isBase64Encoded": False,
    }


def reply_size(reply: dict[str, Any], request: Request | None) -> int:
    """Bytes the handler's response takes as Lambda sends it (JSON of what the handler returns),
    to refuse answers over Lambda's limit before any write. For a Function URL that is the
    base64 or the escaped JSON of the body inside the response object, not the body alone: a
    5 MB msgpack answer is 6.7 MB on the wire."""
    try:
        return len(json.dumps(encode_reply(reply, request)))
    except (
        TypeError,
        ValueError,
        OverflowError,
    ) as exc:  # not JSON/msgpack-able: the handler's bug, not a 503
        raise ProxyError(500, "bad_answer", f"the answer cannot be encoded: {exc}") from None
