"""The routing client and its transports."""

from .client import InferenceError, Result, RetryPolicy, RoutingClient
from .transports import (
    FunctionUrlTransport,
    LambdaTransport,
    MockTransport,
    Transport,
    TransportError,
)

__all__ = [
    "AsyncRoutingClient",
    "FunctionUrlTransport",
    "InferenceError",
    "LambdaTransport",
    "MockTransport",
    "Result",
    "RetryPolicy",
    "RoutingClient",
    "Transport",
    "TransportError",
]


def __getattr__(name: str) -> object:
    # asyncio is imported only by those who ask for the async client (the edge import budget).
    if name == "AsyncRoutingClient":
        from .aio import AsyncRoutingClient

        return AsyncRoutingClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
