"""The one place the control plane calls AWS.

Every call goes through :meth:`Aws.call`, which

* makes (and caches) one client per service and region from a factory, so the same code talks to
  real AWS and to the local cloud - only the endpoint and credentials differ
  (docs/architecture.md §4.7);
* lets botocore retry throttling (standard mode, jittered backoff), then turns what is left into one of
  shardkit's errors, naming the operation, region and resource, with what to do about it;
* counts mutating calls, so a no-op deploy can prove it made none.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..errors import (
    AwsAccessDeniedError,
    AwsConflictError,
    AwsError,
    AwsNotFoundError,
    AwsThrottledError,
    AwsUnreachableError,
)

__all__ = ["INVOKE", "READ_PREFIXES", "Aws", "ClientFactory", "boto3_factory", "is_mutating"]

ClientFactory = Callable[[str, str], Any]

#: Operations that only read. Everything else counts as mutating.
READ_PREFIXES = (
    "get_",
    "list_",
    "describe_",
    "head_",
    "lookup_",
    "batch_get_",
    "transact_get_",
    "query",
    "scan",
)

_THROTTLED = {
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "ProvisionedThroughputExceededException",
    "RequestThrottled",
}
_DENIED = {
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "ExpiredToken",
    "ExpiredTokenException",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "AuthFailure",
}
_CONFLICT = {
    "ResourceConflictException",
    "ResourceInUseException",
    "EntityAlreadyExists",
    "BucketAlreadyExists",
    "BucketAlreadyOwnedByYou",
    "OperationAbortedException",
    "ConflictException",
    "ResourceAlreadyExistsException",
    "ResourceExistsException",
    "TableAlreadyExistsException",
    "ConcurrentModificationException",
}
_NOT_FOUND = {
    "ResourceNotFoundException",
    "NoSuchEntity",
    "NoSuchBucket",
    "NoSuchKey",
    "NotFound",
    "404",
    "TableNotFoundException",
}


def is_mutating(operation: str) -> bool:
    return not operation.startswith(READ_PREFIXES)


#: Lambda's Invoke API, as a service of its own: on AWS the ``lambda`` endpoint, on the local cloud
#: its gateway (where the local executor runs functions) rather than moto.
INVOKE = "lambda.invoke"


def boto3_factory(
    endpoint: str | None = None, credentials: dict[str, str] | None = None, max_attempts: int = 8
) -> ClientFactory:
    """Clients for real AWS (``endpoint=None``, default credential chain) or an endpoint."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(**(credentials or {}))
    # "standard", not "adaptive": adaptive mode slows a client to a crawl after one throttle.
    config = Config(
        retries={"mode": "standard", "max_attempts": max_attempts},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=32,
    )

    def make(service: str, region: str) -> Any:
        name = "lambda" if service == INVOKE else service
        return session.client(name, region_name=region, endpoint_url=endpoint, config=config)

    return make


class Aws:
    """A typed-by-convention facade: ``aws.call("lambda", region, "create_function", ...)``."""

    def __init__(self, factory: ClientFactory, *, target: str = "aws") -> None:
        self._factory = factory
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self.target = target
        self.calls: Counter[str] = Counter()

    def client(self, service: str, region: str) -> Any:
        key = (service, region)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self._factory(service, region)
            return self._clients[key]

    @property
    def mutating_calls(self) -> int:
        return sum(n for op, n in self.calls.items() if is_mutating(op.split(":", 1)[1]))

    def call(
        self, service: str, region: str, operation: str, *, resource: str = "", **params: Any
    ) -> dict[str, Any]:
        """Call ``operation`` and return its response; failures become shardkit errors."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        method = getattr(self.client(service, region), operation)
        with self._lock:
            self.calls[f"{service}:{operation}"] += 1
        try:
            return method(**params)
        except ClientError as exc:
            raise translate(exc, service, region, operation, resource) from None
        except NoCredentialsError:
            raise AwsAccessDeniedError(
                f"{service}:{operation} in {region}: no AWS credentials found",
                hint="configure credentials (AWS_PROFILE, environment or SSO), or deploy to the "
                "local cloud with --local",
                operation=operation,
                region=region,
            ) from None
        except BotoCoreError as exc:
            raise AwsUnreachableError(
                f"{service}:{operation} in {region}{_on(resource)}: {exc}",
                code=type(exc).__name__,  # EndpointConnectionError: nothing answered at all
                operation=operation,
                region=region,
            ) from None

    def exists(self, service: str, region: str, operation: str, **params: Any) -> bool:
        """True if a read call succeeds, False if it says the resource is not there."""
        try:
            self.call(service, region, operation, **params)
        except AwsNotFoundError:
            return False
        return True


def translate(exc: Any, service: str, region: str, operation: str, resource: str) -> AwsError:
    """One ClientError -> the matching shardkit error, with where it happened."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    text = f"{service}:{operation} in {region}{_on(resource)} failed: {code}: {error.get('Message', '')}"
    if code in _THROTTLED:
        cls: type[AwsError] = AwsThrottledError
    elif code in _DENIED:
        cls = AwsAccessDeniedError
    elif code in _CONFLICT:
        cls = AwsConflictError
    elif code in _NOT_FOUND or "NotFound" in code or code.startswith("NoSuch"):
        cls = AwsNotFoundError
    else:
        cls = AwsError
    return cls(text.strip(), code=code, operation=operation, region=region)


def _on(resource: str) -> str:
    return f" on {resource}" if resource else ""
