"""Trust without round trips: the edge's signed map, kept current off the request path.

A request never fetches or verifies a map. New maps arrive by :meth:`MapTrust.offer` (the control
plane pushes bytes), :meth:`MapTrust.refresh` (an explicit pull) or the refresher thread
(:meth:`MapTrust.start`), and :class:`~shardkit.sharding.holder.MapHolder` verifies each version
once - signature, then no rollback, then expiry - before one atomic swap.

**Offline mode.** When the registry cannot be reached, routing continues on the last good map;
the failure is recorded, not raised. Once that map expires, every request fails with a clear
:class:`~shardkit.errors.MapExpiredError` that says since when the registry has been unreachable.
A map the holder *refuses* (tampered, older, expired) is never "offline": it raises, is counted,
and the current map stays in force.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import MapError, MapExpiredError

if TYPE_CHECKING:  # the holder is passed in: importing shardkit.edge does not load the codec
    from ..sharding.holder import MapHolder
    from ..sharding.shardmap import ShardMap

__all__ = ["MapTrust"]


class MapTrust:
    """The current verified map, its refresh loop and the registry's reachability."""

    def __init__(self, holder: MapHolder, *, interval_s: float | None = None) -> None:
        self.holder = holder
        self.interval_s = interval_s
        self.unreachable_since: float | None = None  # wall time of the first failed fetch
        self.last_error: str | None = None
        self.counts = {"fetches": 0, "fetch_failures": 0, "swaps": 0}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> ShardMap:
        """The map to route with now. Raises MapExpiredError once the last good map expired."""
        held = self.holder.current
        if held is not None:
            return held
        self.nudge()
        if self.holder.version:
            raise MapExpiredError(
                f"the last good shard map (version {self.holder.version}) has expired"
                f"{self._offline_note()}; the edge no longer routes with it",
                hint="restore access to the map registry (or offer() a fresh signed map); "
                "an expired map is never used",
            )
        raise MapError(
            "no shard map is loaded yet" + self._offline_note(),
            hint="call refresh() or offer() with a signed map before serving requests",
        )

    def offer(self, data: bytes) -> bool:
        """Verify ``data`` and swap it in if newer (True). Refused maps raise MapError."""
        changed = self.holder.offer(data)
        self.counts["swaps"] += changed
        return changed

    def refresh(self) -> bool:
        """Pull from the registry. True if the map changed; False if unchanged *or* the registry
        is unreachable (offline mode: recorded, not raised). A refused map raises."""
        self.counts["fetches"] += 1
        try:
            changed = self.holder.refresh()
        except MapError:
            self.unreachable_since = None  # fetched, but refused: reachable, and the map is bad
            raise
        except Exception as exc:  # any transport's failure to fetch: this is what offline means
            self.counts["fetch_failures"] += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.unreachable_since is None:
                self.unreachable_since = time.time()
            return False
        self.unreachable_since = None
        self.counts["swaps"] += changed
        return changed

    @property
    def offline(self) -> bool:
        return self.unreachable_since is not None

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
        """Refresh for background callers: a refused map is counted by the holder, not raised."""
        try:
            self.refresh()
        except MapError as exc:
            self.last_error = f"{type(exc).__name__}: {exc.message}"

    def stats(self) -> dict[str, Any]:
        return {
            "version": self.holder.version,
            "refused": self.holder.refused,
            "offline": self.offline,
            "last_error": self.last_error,
            **self.counts,
        }

    def _offline_note(self) -> str:
        if self.unreachable_since is None:
            return ""
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.unreachable_since))
        return f" and the map registry has been unreachable since {since} ({self.last_error})"
