"""``AsyncRoutingClient``: the routing client for asyncio applications.

The transports are blocking (boto3, urllib), so each call runs the synchronous client in a worker
thread: the event loop never blocks, concurrent calls overlap, and routing, redirects, retries,
failover and hedging behave exactly as in :class:`RoutingClient` - it is the same code.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .client import Result, RoutingClient

__all__ = ["AsyncRoutingClient"]


class AsyncRoutingClient:
    """``await client.infer(key, payload)``; use ``async with`` to close it."""

    def __init__(self, client: RoutingClient) -> None:
        self.sync = client

    async def infer(
        self,
        key: str,
        payload: Any = None,
        *,
        jurisdiction: str | None = None,
        request_id: str | None = None,
    ) -> Result:
        return await asyncio.to_thread(
            self.sync.infer, key, payload, jurisdiction=jurisdiction, request_id=request_id
        )

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncRoutingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
