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
