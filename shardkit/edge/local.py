"""Split inference: the interface of a model that runs on the edge node itself.

A local model is small and has no per-key state, so it can answer only some requests well. It
says how well with ``can_serve(request) -> confidence`` (0..1); the runtime answers locally when
the confidence reaches its threshold, and sends everything else on (cache, then shard). A local
model must claim only requests it can answer *completely*: a request that writes per-key state
(a "learn" request) answered locally would never reach the shard, and its write would be lost.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["EdgeRequest", "LocalModel"]


class EdgeRequest:
    """What a local model sees: the key, the payload and the caller's jurisdiction tag."""

    __slots__ = ("jurisdiction", "key", "payload")

    def __init__(self, key: str, payload: Any, jurisdiction: str | None = None) -> None:
        self.key = key
        self.payload = payload
        self.jurisdiction = jurisdiction

    def __repr__(self) -> str:
        return f"EdgeRequest({self.key!r}, {self.payload!r})"


@runtime_checkable
class LocalModel(Protocol):
    """A model the edge runtime may answer with, instead of a shard."""

    def can_serve(self, request: EdgeRequest) -> float:
        """Confidence (0..1) that :meth:`predict` answers ``request`` as well as the shard."""
        ...

    def predict(self, request: EdgeRequest) -> Any:
        """The answer; called only after ``can_serve`` reached the runtime's threshold."""
        ...
