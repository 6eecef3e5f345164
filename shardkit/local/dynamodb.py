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

import io
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = ["TARGET_PREFIX", "handle"]

TARGET_PREFIX = "DynamoDB_20120810."
# Framing is the gateway's own (and it sends Date and Server itself).
_DROPPED = {"status", "content-length", "connection", "transfer-encoding", "date", "server"}


def handle(url: str, headers: Mapping[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
    """One DynamoDB API call: (status, headers, body) as moto answers it."""
    from moto.dynamodb.responses import DynamoHandler

    request = _request(url, headers, body)
    status, out_headers, out_body = DynamoHandler.dispatch(
        request, request.raw_url, request.headers
    )
    data = out_body.encode() if isinstance(out_body, str) else bytes(out_body or b"")
    kept = {k: str(v) for k, v in out_headers.items() if k.lower() not in _DROPPED}
    return int(status), kept, data


def _request(url: str, headers: Mapping[str, str], body: bytes) -> Any:
    """moto's request for a POST of ``body`` to ``url``: the WSGI environ a server would make
    (werkzeug's test-request builder does the same with four times the work)."""
    from moto.core.request import Request

    parts = urlsplit(url)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": parts.path or "/",
        "QUERY_STRING": parts.query,
        "SERVER_NAME": parts.hostname or "127.0.0.1",
        "SERVER_PORT": str(parts.port or 80),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": parts.scheme or "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "CONTENT_LENGTH": str(len(body)),
    }
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
        else:
            environ[f"HTTP_{key}"] = value
    environ["CONTENT_LENGTH"] = str(len(body))
    return Request(environ)
