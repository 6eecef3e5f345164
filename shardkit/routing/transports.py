"""Transports: how a request reaches a shard. One method, ``send(shard, request) -> reply``.

* :class:`MockTransport` - a function; tests and offline use.
* :class:`LambdaTransport` - Lambda ``Invoke`` of the shard's ``live`` alias through boto3. Against
  the local cloud it points at the local gateway, which speaks the same API to the local executor.
* :class:`FunctionUrlTransport` - HTTPS POST of msgpack to the shard's Function URL, SigV4-signed
  (``AWS_IAM`` auth).

A transport raises :class:`TransportError` for anything that did not produce a proxy reply
(connection refused, timeout, throttling, a function error); the client decides about retries.
``missing`` marks "this shard does not exist here" (Lambda's ResourceNotFoundException, a
Function URL's 404, no function or URL known for it): the strongest hint, with a 421, that the
caller's map is stale. A :class:`TransportError` is the transports' contract with the client,
never shown to callers: the client translates it, at one place
(:func:`shardkit.routing.decide.decide`), into a :class:`~shardkit.errors.RoutingError` that
names the key, the shard and the attempts. Anything else a transport raises is made a
:class:`TransportError` by :func:`failure` first.
Requests and replies travel in their wire form (:mod:`shardkit.protocol`): the client encodes
the request and decodes the reply, strictly; a transport only carries them.
boto3 and botocore are imported only by the transports that need them, when first used.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ShardkitError
from ..protocol import JSON, MSGPACK, THROTTLED, decode_body, encode_body, is_transient
from ..sharding.shardmap import Shard

__all__ = [
    "FunctionUrlTransport",
    "LambdaTransport",
    "MockTransport",
    "Transport",
    "TransportError",
    "failure",
]


class TransportError(Exception):
    """No reply from the shard. ``retryable`` says whether trying again may help; ``throttled``
    that the shard is healthy but busy (try it again later, do not fail over); ``missing`` that
    the shard does not exist where the transport looks (refresh the map before anything else).
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        throttled: bool = False,
        missing: bool = False,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable and not missing
        self.throttled = throttled
        self.missing = missing


def failure(shard: Shard, exc: Exception) -> TransportError | ShardkitError:
    """What a send that raised ``exc`` tells the client: a :class:`TransportError` or a
    :class:`ShardkitError` as it is; anything else (a library's own exception, a transport's
    bug) a :class:`TransportError` with ``exc`` as its cause - retried if it is an OSError
    (connection, timeout), else not."""
    if isinstance(exc, TransportError | ShardkitError):
        return exc
    error = TransportError(
        f"{shard.id}: the transport failed: {type(exc).__name__}: {exc}",
        retryable=isinstance(exc, OSError),
    )
    error.__cause__ = exc
    return error


class Transport(ABC):
    """How requests reach shards: one method, ``send``."""

    @abstractmethod
    def send(self, shard: Shard, request: dict[str, Any], timeout: float) -> Any:
        """The proxy's reply to ``request`` as received (wire form, decoded by the client), or
        :class:`TransportError` if there is none."""

    def close(self) -> None:  # noqa: B027 - optional: most transports hold nothing to release
        """Release connections."""


class MockTransport(Transport):
    """``fn(shard, request) -> reply``, both in wire form (build replies with the constructors
    of :mod:`shardkit.protocol`): offline by construction."""

    def __init__(self, fn: Callable[[Shard, dict[str, Any]], Any]) -> None:
        self.fn = fn

    def send(self, shard: Shard, request: dict[str, Any], timeout: float) -> Any:
        return self.fn(shard, request)


class LambdaTransport(Transport):
    """Invoke each shard's function (``function_for(shard)`` names it) via boto3. A shard
    ``function_for`` knows no function for (None, or a LookupError) is ``missing``, like a
    function Lambda does not have."""

    def __init__(
        self,
        function_for: Callable[[Shard], str | None],
        *,
        client_for: Callable[[str], Any] | None = None,
        endpoint: str | None = None,
        qualifier: str = "live",
    ) -> None:
        self.function_for = function_for
        self.qualifier = qualifier
        self._endpoint = endpoint
        self._client_for = client_for
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _client(self, region: str) -> Any:
        with self._lock:
            client = self._clients.get(region)
            if client is None:
                client = self._clients[region] = self._make(region)
            return client

    def _make(self, region: str) -> Any:
        if self._client_for is not None:
            return self._client_for(region)
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"max_attempts": 1}, read_timeout=65, connect_timeout=3, max_pool_connections=64
        )
        return boto3.client(
            "lambda", region_name=region, endpoint_url=self._endpoint, config=config
        )

    def send(self, shard: Shard, request: dict[str, Any], timeout: float) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        name = self._function(shard)
        payload = _encoded(shard, request, JSON)
        try:
            out = self._client(shard.region).invoke(
                FunctionName=name, Qualifier=self.qualifier, Payload=payload
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            retryable = code in {
                "TooManyRequestsException",
                "ServiceException",
                "ResourceNotReadyException",
                "EC2ThrottledException",
            }
            raise TransportError(
                f"invoke {shard.id} ({name}:{self.qualifier}): {code}",
                retryable=retryable,
                throttled=code == "TooManyRequestsException",
                missing=code == "ResourceNotFoundException",
            ) from None
        except BotoCoreError as exc:
            raise TransportError(f"invoke {shard.id}: {exc}") from None
        body = out["Payload"].read()
        if out.get("FunctionError"):
            raise TransportError(f"{shard.id} failed: {body[:300]!r}", retryable=True)
        try:
            return decode_body(body, JSON)
        except ValueError:
            raise TransportError(f"{shard.id} answered non-JSON: {body[:200]!r}") from None

    def _function(self, shard: Shard) -> str:
        try:
            name = self.function_for(shard)
        except LookupError:
            name = None
        if not name:
            raise TransportError(f"no function is known for shard {shard.id}", missing=True)
        return name


class FunctionUrlTransport(Transport):
    """POST msgpack to each shard's Function URL, signed with SigV4 for ``AWS_IAM`` auth.

    ``urls`` is read per request, not copied: a mapping may know shards added after it was made.
    """

    def __init__(self, urls: Mapping[str, str], *, credentials: Any = None) -> None:
        self.urls = urls
        self._credentials = credentials

    def send(self, shard: Shard, request: dict[str, Any], timeout: float) -> Any:
        import urllib.error
        import urllib.request

        url = self.urls.get(shard.id)
        if not url:
            raise TransportError(f"no Function URL is known for shard {shard.id}", missing=True)
        body = _encoded(shard, request, MSGPACK)
        headers = self._sign(url, body, shard.region)
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return _msgpack_reply(shard, resp.read())
        except urllib.error.HTTPError as exc:
            data = exc.read()
            if exc.headers.get("content-type", "").startswith(MSGPACK):
                return _msgpack_reply(shard, data)  # the proxy's error reply, as HTTP status
            raise TransportError(
                f"{shard.id}: HTTP {exc.code} from {url}",
                retryable=is_transient(exc.code),
                throttled=exc.code == THROTTLED,
                missing=exc.code == 404,  # no such Function URL (the proxy never answers 404)
            ) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise TransportError(f"{shard.id}: {exc}") from None

    def _sign(self, url: str, body: bytes, region: str) -> dict[str, str]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        credentials = self._credentials
        if credentials is None:
            import boto3

            credentials = self._credentials = boto3.Session().get_credentials()
        headers = {"content-type": MSGPACK, "accept": MSGPACK}
        request = AWSRequest(method="POST", url=url, data=body, headers=headers)
        if credentials is not None:
            SigV4Auth(credentials, "lambda", region).add_auth(request)
        return dict(request.headers.items())


def _encoded(shard: Shard, request: dict[str, Any], content_type: str) -> bytes:
    try:
        return encode_body(request, content_type)
    except (TypeError, ValueError, OverflowError) as exc:  # the payload's fault: not retried
        raise TransportError(
            f"the request for {shard.id} cannot be encoded as {content_type}: {exc}",
            retryable=False,
        ) from None


def _msgpack_reply(shard: Shard, data: bytes) -> Any:
    try:
        return decode_body(data, MSGPACK)
    except ValueError as exc:
        raise TransportError(f"{shard.id} answered {exc}") from None
