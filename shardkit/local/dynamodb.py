"""DynamoDB served by the gateway: moto's own handler, without moto's HTTP server in between.

The proxies read and write their state on every request. Through moto's server each call paid
for a werkzeug request, Flask routing, moto's service detection and often a new connection
(~4 ms of the server's CPU). The gateway's HTTP/1.1 server keeps connections alive and hands a
DynamoDB request (``POST /`` with ``X-Amz-Target: DynamoDB_20120810.*``) straight to moto's
``DynamoHandler`` - the same handler, backends and item lock as moto's own endpoint, so both
endpoints see one set of tables and items. The local executor points the functions' boto3 at
it with ``AWS_ENDPOINT_URL_DYNAMODB``: the proxy's code does not change.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["TARGET_PREFIX", "handle"]

TARGET_PREFIX = "DynamoDB_20120810."
# Framing is the gateway's own (and it sends Date and Server itself).
_DROPPED = {"status", "content-length", "connection", "transfer-encoding", "date", "server"}


def handle(url: str, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
    """One DynamoDB API call: (status, headers, body) as moto answers it."""
    from moto.core.request import Request
    from moto.dynamodb.responses import DynamoHandler

    request = Request.from_primitives("POST", url, dict(headers), body)
    status, out_headers, out_body = DynamoHandler.dispatch(
        request, request.raw_url, request.headers
    )
    data = out_body.encode() if isinstance(out_body, str) else bytes(out_body or b"")
    kept = {k: str(v) for k, v in out_headers.items() if k.lower() not in _DROPPED}
    return int(status), kept, data
