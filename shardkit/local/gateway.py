"""The local gateway: Lambda's Invoke API and the functions' URLs, on 127.0.0.1.

moto answers the Lambda API but runs no code, and its Function URLs do not resolve. The gateway
serves the two ways callers reach a function, and hands both to the :class:`LocalLambda`
executor:

* ``POST /2015-03-31/functions/{name}/invocations?Qualifier=live`` - the Invoke API, so a boto3
  Lambda client with ``endpoint_url`` set to the gateway invokes local functions unchanged (the
  region comes from the SigV4 credential scope);
* ``/urls/{url-id}/...`` - a Function URL (``https://{url-id}.lambda-url.{region}.on.aws``) as a
  payload-format-2.0 event. ``AWS_IAM`` auth requires a SigV4 ``Authorization`` header.

It also serves DynamoDB's API (``POST /`` with ``X-Amz-Target: DynamoDB_20120810.*``) in the
server's process, for the functions' state reads and writes (:mod:`shardkit.local.dynamodb`).
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import dynamodb
from .executor import Invocation, LocalLambda
from .routes import Routes, RoutesWatch

__all__ = ["Gateway", "url_id"]

MAX_PAYLOAD = 6 * 1024 * 1024
_INVOKE = re.compile(r"^/2015-03-31/functions/(?P<fn>[^/]+)/invocations$")
_URL = re.compile(r"^/urls/(?P<id>[a-z0-9]+)(?P<path>/.*)?$")
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/(?P<region>[a-z0-9-]+)/")


def url_id(function_url: str) -> str:
    """``https://abc.lambda-url.eu-west-1.on.aws/`` -> ``abc``."""
    return urlsplit(function_url).hostname.split(".", 1)[0]  # type: ignore[union-attr]


class Gateway:
    """An HTTP server on 127.0.0.1 (a free port) in front of the executor."""

    def __init__(self, executor: LocalLambda, routes: RoutesWatch, host: str = "127.0.0.1"):
        self.executor = executor
        self.urls = UrlTable(routes)
        self.on_request: Callable[[], None] = lambda: None  # e.g. the server's idle clock
        handler = type("Handler", (_Handler,), {"gateway": self})
        self.server = ThreadingHTTPServer((host, 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Gateway:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.executor.close()


class UrlTable:
    """Function URL ids -> (region, function, qualifier), as the deploy engine published them."""

    def __init__(self, routes: RoutesWatch) -> None:
        self.routes = routes
        self._seen: Routes | None = None
        self._table: dict[str, tuple[str, str, str]] = {}

    def get(self, uid: str) -> tuple[str, str, str] | None:
        routes = self.routes.current()
        if routes is not self._seen:
            self._table = {url_id(url): target for url, target in routes.urls.items()}
            self._seen = routes
        return self._table.get(uid)


def _limit_response(result: Invocation) -> Invocation:
    """Lambda refuses a synchronous response over 6 MB, after the function ran."""
    if result.status != 200 or len(json.dumps(result.payload)) <= MAX_PAYLOAD:
        return result
    return Invocation(
        200,
        {
            "errorType": "Function.ResponseSizeTooLarge",
            "errorMessage": f"Response payload size exceeded maximum allowed "
            f"payload size ({MAX_PAYLOAD} bytes).",
        },
        function_error="Unhandled",
        duration_ms=result.duration_ms,
        version=result.version,
    )


class _Handler(BaseHTTPRequestHandler):
    gateway: Gateway
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, a keep-alive client's delayed ACK
    # holds the body back ~40 ms per request (measured: a 404 took 44 ms, an invoke 60 ms).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per request is noise
        return

    def do_POST(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self.gateway.on_request()
        parts = urlsplit(self.path)
        body = self._body()
        if body is None:
            return
        if self.headers.get("x-amz-target", "").startswith(dynamodb.TARGET_PREFIX):
            host = self.headers.get("host", "127.0.0.1")
            status, headers, data = dynamodb.handle(f"http://{host}{self.path}", self.headers, body)
            self._raw(status, data, headers)
            return
        invoke = _INVOKE.match(parts.path)
        if invoke and self.command == "POST":
            self._invoke(unquote(invoke.group("fn")), parse_qs(parts.query), body)
            return
        url = _URL.match(parts.path)
        if url:
            self._function_url(url.group("id"), url.group("path") or "/", parts.query, body)
            return
        self._send(
            404,
            {"message": f"no route for {self.command} {parts.path}"},
            {"x-amzn-ErrorType": "ResourceNotFoundException"},
        )

    def _body(self) -> bytes | None:
        size = int(self.headers.get("content-length") or 0)
        if size > MAX_PAYLOAD:
            self.rfile.read(size)
            self._send(
                413,
                {
                    "message": f"Request must be smaller than {MAX_PAYLOAD} bytes for "
                    "the InvokeFunction operation"
                },
                {"x-amzn-ErrorType": "RequestTooLargeException"},
            )
            return None
        return self.rfile.read(size) if size else b""

    def _invoke(self, fn: str, query: dict[str, list[str]], body: bytes) -> None:
        name, _, qualifier = fn.rpartition(":function:")[2].partition(":")
        qualifier = query.get("Qualifier", [qualifier or "$LATEST"])[0]
        scope = _SCOPE.search(self.headers.get("authorization", ""))
        region = scope.group("region") if scope else "us-east-1"
        try:
            event = json.loads(body or b"{}")
        except ValueError:
            self._send(
                400,
                {"message": "Could not parse request body into json"},
                {"x-amzn-ErrorType": "InvalidRequestContentException"},
            )
            return
        result = _limit_response(self.gateway.executor.invoke(region, name, qualifier, event))
        # Lambda names the version that ran: what the alias resolved to, never the alias.
        headers = {"X-Amz-Executed-Version": result.version or qualifier}
        if result.error_type:
            headers["x-amzn-ErrorType"] = result.error_type
        if result.function_error:
            headers["X-Amz-Function-Error"] = result.function_error
        self._send(result.status, result.payload, headers)

    def _function_url(self, uid: str, path: str, query: str, body: bytes) -> None:
        target = self.gateway.urls.get(uid)
        if target is None:
            self._send(404, {"Message": f"no function URL {uid}"})
            return
        if not self.headers.get("authorization", "").startswith("AWS4-HMAC-SHA256"):
            self._send(
                403,
                {
                    "Message": "Forbidden: this Function URL uses AWS_IAM auth; sign "
                    "the request with SigV4"
                },
            )
            return
        region, function, qualifier = target
        result = self.gateway.executor.invoke(
            region, function, qualifier, self._url_event(uid, path, query, body)
        )
        self._url_reply(result)

    def _url_event(self, uid: str, path: str, query: str, body: bytes) -> dict[str, Any]:
        headers = {k.lower(): v for k, v in self.headers.items()}
        text = headers.get("content-type", "").startswith(("text/", "application/json"))
        return {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": query,
            "headers": headers,
            "requestContext": {
                "domainName": headers.get("host", ""),
                "domainPrefix": uid,
                "http": {
                    "method": self.command,
                    "path": path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": "127.0.0.1",
                },
                "requestId": f"{time.time_ns():x}",
                "timeEpoch": int(time.time() * 1000),
            },
            "body": body.decode() if text else base64.b64encode(body).decode(),
            "isBase64Encoded": not text,
        }

    def _url_reply(self, result: Invocation) -> None:
        if result.function_error or result.status != 200:
            self._send(502 if result.status == 200 else result.status, result.payload)
            return
        out = result.payload
        if not (isinstance(out, dict) and "statusCode" in out):
            self._send(200, out)
            return
        body = out.get("body") or ""
        data = base64.b64decode(body) if out.get("isBase64Encoded") else str(body).encode()
        self._raw(int(out["statusCode"]), data, out.get("headers") or {})

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self._raw(status, data, {"content-type": "application/json", **(headers or {})})

    def _raw(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
