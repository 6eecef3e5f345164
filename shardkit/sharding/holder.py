"""Hold the current verified map and swap in newer ones atomically (docs/architecture.md §4.5).

A :class:`MapHolder` is what the proxy, the routing client and the edge runtime route with.
``offer(data)`` verifies a candidate once - signature, then version (never backwards), then
expiry - and only then replaces the current map with one reference assignment, so readers on
other threads always see a whole map, old or new. The same bytes offered twice are verified once.

Data-plane module: stdlib, msgpack, xxhash, jump (and cryptography at the first verify).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping

from ..errors import MapError, MapExpiredError
from .codec import decode_envelope, peek_envelope
from .shardmap import ShardMap

__all__ = ["MapHolder", "parse_trusted_keys"]


class MapHolder:
    """The current verified map, refreshed from ``fetch`` (bytes of a signed envelope)."""

    def __init__(
        self,
        trusted_keys: Mapping[str, bytes],
        fetch: Callable[[], bytes] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._trusted = dict(trusted_keys)
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._current: ShardMap | None = None
        self._digest = b""
        self.refused = 0  # candidates refused (bad signature, rollback, expired)

    @property
    def current(self) -> ShardMap | None:
        """The map in force, or None before the first successful offer."""
        held = self._current
        if held is not None and held.expires_at <= self._clock():
            return None  # frozen: an expired map is never routed with
        return held

    @property
    def version(self) -> int:
        held = self._current
        return held.version if held is not None else 0

    def require(self, *, fetch: bool = True) -> ShardMap:
        """The map in force; refreshes once if there is none (first use, or expired) - unless
        ``fetch`` is false (a caller that did the refresh itself)."""
        held = self.current
        if held is None and fetch:
            self.refresh()
            held = self.current
        if held is None:
            last = self._current
            if last is not None:
                raise MapExpiredError(
                    f"the last good map (version {last.version}) has expired "
                    "and no newer one could be fetched"
                )
            raise MapError("no shard map is loaded", hint="check the registry location and keys")
        return held

    def offer(self, data: bytes) -> bool:
        """Verify ``data`` and make it current if it is newer. True if the map changed.

        Raises the decode error for a bad candidate; the current map stays in force.
        """
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            return False
        with self._lock:
            if digest == self._digest:
                return False
            header = peek_envelope(data)
            if self._current is not None and header.version == self._current.version:
                return False  # the version held (one version, one content: it is signed)
            try:
                candidate = decode_envelope(
                    header, self._trusted, min_version=self.version, now=self._clock()
                )
            except MapError:
                self.refused += 1
                raise
            self._current, self._digest = candidate, digest  # the atomic swap
            return True

    def refresh(self) -> bool:
        """Fetch and offer. True if the map changed."""
        if self._fetch is None:
            return False
        return self.offer(self._fetch())


def parse_trusted_keys(text: str) -> dict[str, bytes]:
    """``"id=BASE64,id2=BASE64"`` (as in ``SHARDKIT_TRUSTED_KEYS``) -> ``{id: raw key}``."""
    import base64
    import binascii

    out: dict[str, bytes] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key_id, sep, value = item.partition("=")
        try:
            raw = base64.b64decode(value, validate=True) if sep else b""
        except binascii.Error:
            raw = b""
        if len(raw) != 32:
            raise MapError(
                f"trusted key {key_id!r} is not id=<base64 of a 32-byte ed25519 key>",
                hint="copy the value from `shardkit keys show KEY_ID --json`",
            )
        out[key_id] = raw
    return out
