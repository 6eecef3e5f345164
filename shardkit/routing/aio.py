"""``AsyncRoutingClient``: the routing client for asyncio applications.

It drives the same :class:`~shardkit.routing.decide.Router` as the :class:`RoutingClient` it
wraps - routing, redirects, retries, the retry budget, failover and the shards' health are one
state and one code path - and does the I/O the router asks for without blocking the event loop:
the transports are blocking (boto3, urllib), so each send runs in a worker thread; backoff is
``asyncio.sleep``, and a hedge is a second send raced with ``asyncio.wait``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from .client import Result, RoutingClient, new_request_id
from .decide import Fetched, Refresh, Send, Sent, Sleep, Step
from .transports import failure

__all__ = ["AsyncRoutingClient"]


class AsyncRoutingClient:
    """``await client.infer(key, payload)``; use ``async with`` to close it."""

    def __init__(
        self,
        client: RoutingClient,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.sync = client
        self._sleep = sleep

    async def infer(
        self,
        key: str,
        payload: Any = None,
        *,
        jurisdiction: str | None = None,
        request_id: str | None = None,
    ) -> Result:
        """Send ``payload`` for ``key`` to its shard and return the answer with its record."""
        calling = self.sync.router.call(key, payload, jurisdiction, request_id or new_request_id())
        done: Sent | None = None
        while (step := calling.next(done)) is not None:
            done = await self._do(step)
        assert calling.result is not None
        return calling.result

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncRoutingClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the I/O ---------------------------------------------------------------------------------

    async def _do(self, step: Step) -> Sent | Fetched | None:
        if isinstance(step, Send):
            try:
                return await self._send(step)
            except Exception as exc:  # the router decides; nothing foreign reaches the caller
                return Sent(failure(step.shard, exc))
        if isinstance(step, Sleep):
            await self._sleep(step.seconds)
        elif isinstance(step, Refresh):
            return await asyncio.to_thread(step.run, self.sync.holder)
        return None

    async def _send(self, step: Send) -> Sent:
        client = self.sync
        timeout = client.retry.timeout_s

        def send() -> Any:
            return client.transport.send(step.shard, step.request, timeout)

        first = asyncio.ensure_future(asyncio.to_thread(send))
        if client.hedge_after_s is None:
            return Sent(await first)
        done, _ = await asyncio.wait({first}, timeout=client.hedge_after_s)
        if done:
            return Sent(first.result())
        second = asyncio.ensure_future(asyncio.to_thread(send))
        done, _ = await asyncio.wait({first, second}, return_when=asyncio.FIRST_COMPLETED)
        winner = next(iter(done))
        other = second if winner is first else first
        other.add_done_callback(_retrieve)  # the loser's outcome is not needed
        try:
            return Sent(winner.result(), hedged=True)
        except Exception:  # the other one may still answer
            return Sent(await other, hedged=True)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Fetch a finished future's exception, so asyncio does not report it as never retrieved."""
    if not future.cancelled():
        future.exception()
