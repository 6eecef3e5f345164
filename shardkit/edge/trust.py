"""Trust without round trips: the edge's signed map, kept current off the request path.

A request never fetches or verifies a map. New maps arrive by :meth:`MapTrust.offer` (the control
plane pushes bytes), :meth:`MapTrust.refresh` (an explicit pull) or the refresher thread
(:meth:`MapTrust.start`), and :class:`~shardkit.sharding.holder.MapHolder` verifies each version
once - signature, then no rollback, then expiry - before one atomic swap.

**Offline mode.** When the registry cannot be reached (the holder's fetch raises
:class:`~shardkit.errors.RegistryUnreachableError`), routing continues on the last good map; the
failure is recorded - since when, by the holder's clock - not raised. Once that map expires,
every request fails with a :class:`~shardkit.errors.MapExpiredError` that says since when the
registry has been unreachable. A map the holder *refuses* (undecodable, tampered, older,
expired) is never "offline": it raises a :class:`~shardkit.errors.MapError`, is counted in
``refused``, and the current map stays in force. The counts are the holder's own, so they
include the fetches the routing client makes when a shard says the map is stale.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

from ..errors import RegistryUnreachableError, ShardkitError

if TYPE_CHECKING:  # the holder is passed in: importing shardkit.edge does not load the codec
    from ..sharding.holder import MapHolder
    from ..sharding.shardmap import ShardMap

__all__ = ["MapTrust"]


class MapTrust:
    """The current verified map, its refresh loop and the registry's reachability."""

    def __init__(self, holder: MapHolder, *, interval_s: float | None = None) -> None:
        self.holder = holder
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> ShardMap:
        """The map to route with now. Raises MapExpiredError once the last good map expired
        (saying why no newer one was had), MapError while none was ever loaded."""
        held = self.holder.current
        if held is not None:
            return held
        self.nudge()
        return self.holder.require(fetch=False)  # raises, saying why there is no map

    def offer(self, data: bytes) -> bool:
        """Verify ``data`` and swap it in if newer (True). Refused maps raise MapError."""
        return self.holder.offer(data)

    def refresh(self) -> bool:
        """Pull from the registry. True if the map changed; False if unchanged *or* the registry
        is unreachable (offline mode: recorded, not raised). A refused map raises MapError."""
        try:
            return self.holder.refresh()
        except RegistryUnreachableError:
            return False

    @property
    def offline(self) -> bool:
        return self.holder.unreachable_since is not None

    @property
    def unreachable_since(self) -> float | None:
        """The holder's clock when the registry was first found unreachable (None: reachable)."""
        return self.holder.unreachable_since

    @property
    def last_error(self) -> str | None:
        return self.holder.last_error

    # -- the refresher thread --------------------------------------------------------------------

    def start(self) -> None:
        """Refresh every ``interval_s`` (and on :meth:`nudge`) on a daemon thread."""
        if self.interval_s is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="shardkit-edge-maps", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        """Ask the refresher thread for a refresh now (no-op without the thread)."""
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.safe_refresh()
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def safe_refresh(self) -> None:
        """Refresh for background callers: a refused map is recorded by the holder (``refused``,
        ``last_error``), not raised."""
        with contextlib.suppress(ShardkitError):  # recorded by the holder
            self.refresh()

    def stats(self) -> dict[str, Any]:
        """The holder's: version, fetches, fetch_failures, refused, swaps, offline,
        unreachable_since, last_error."""
        return self.holder.stats()
