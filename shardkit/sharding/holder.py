"""Hold the current verified map and swap in newer ones atomically (docs/architecture.md §4.5).

A :class:`MapHolder` is what the proxy, the routing client and the edge runtime route with.
``offer(data)`` verifies a candidate once - signature, then version (never backwards), then
expiry - and only then replaces the current map with one reference assignment, so readers on
other threads always see a whole map, old or new. The same bytes offered twice are verified once.

``refresh()`` fetches from the map's source and offers what it got. The two ways it can fail
are kept apart: the source could not be read (:class:`RegistryUnreachableError`, whatever the
fetch function raised; the holder records since when, by its own clock) or what it served was
refused (a :class:`MapError` subclass). Either way the current map stays in force until it
expires; after that, :meth:`require` raises :class:`MapExpiredError` saying why no newer map
was had.

Data-plane module: stdlib, msgpack, xxhash, jump (and cryptography at the first verify).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import (
    MapDecodeError,
    MapError,
    MapExpiredError,
    RegistryUnreachableError,
    ShardkitError,
)
from .codec import decode_envelope, peek_envelope
from .shardmap import ShardMap

__all__ = ["MapHolder", "parse_trusted_keys"]


class MapHolder:
    """The current verified map, refreshed from ``fetch`` (bytes of a signed envelope).

    ``clock`` (wall time, seconds) decides expiry and dates "unreachable since".
    """

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
        self.fetches = 0  # fetches from the source, failed ones included
        self.fetch_failures = 0  # fetches that raised: the source could not be read
        self.refused = 0  # candidates refused (undecodable, bad signature, rollback, expired)
        self.swaps = 0  # candidates that became the current map
        self.unreachable_since: float | None = None  # clock() at the first failed fetch in a row
        self.last_error: str | None = None  # the last failure, fetch or refusal, as text
        self._failure: ShardkitError | None = None  # the last refresh's or offer's failure

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
        ``fetch`` is false (a caller that did the refresh itself). Without one it raises
        :class:`MapExpiredError` (a map was held) saying why no newer one was had, else the
        error of the last failure, or :class:`MapError` if nothing was ever offered."""
        held = self.current
        if held is None and fetch:
            with contextlib.suppress(ShardkitError):  # recorded: the error below says it
                self.refresh()
            held = self.current
        if held is None:
            raise self.no_map()
        return held

    def no_map(self) -> ShardkitError:
        """The error for "no map to route with", saying why."""
        last, failure = self._current, self._failure
        if last is not None:
            hint = failure.hint if failure is not None else MapExpiredError.hint
            if self.unreachable_since is not None:
                hint = (
                    "restore access to the map registry (network, credentials, location): a "
                    "fresh map is used as soon as one is fetched; an expired one never is"
                )
            return MapExpiredError(
                f"the last good map (version {last.version}) expired at "
                f"{iso(last.expires_at)}{self._why_no_newer()}; an expired map is never used",
                hint=hint,
            )
        if failure is not None:
            return type(failure)(f"no shard map is loaded: {failure.message}", hint=failure.hint)
        return MapError(
            "no shard map is loaded",
            hint="refresh() from the map's source, or offer() signed bytes; check the map "
            "location and the trusted keys",
        )

    def _why_no_newer(self) -> str:
        if self.unreachable_since is not None:
            return (
                f", and the map registry has been unreachable since "
                f"{iso(self.unreachable_since)} ({self.last_error})"
            )
        if self._failure is not None:
            return f", and the newest map offered was refused ({self.last_error})"
        return ", and no newer map has been offered"

    def offer(self, data: bytes) -> bool:
        """Verify ``data`` and make it current if it is newer. True if the map changed.

        Raises the decode error for a bad candidate (counted in ``refused``); the current map
        stays in force. A candidate of the version held is verified too, then ignored.
        """
        if type(data) is not bytes:
            data = _as_bytes(data, self._refuse)
        digest = hashlib.sha256(data).digest()
        if digest == self._digest:
            return False
        with self._lock:
            if digest == self._digest:
                return False
            try:
                candidate = decode_envelope(
                    peek_envelope(data), self._trusted, min_version=self.version, now=self._clock()
                )
            except MapError as exc:
                self._refuse(exc)
                raise
            self._failure = None
            if self._current is not None and candidate.version == self._current.version:
                self._digest = digest  # verified: offered again, it is not verified again
                return False  # the version held (one version, one content: it is signed)
            self._current, self._digest = candidate, digest  # the atomic swap
            self.swaps += 1
            return True

    def refresh(self) -> bool:
        """Fetch and offer. True if the map changed. :class:`RegistryUnreachableError` if the
        source could not be read, a :class:`MapError` if what it served was refused."""
        if self._fetch is None:
            return False
        try:
            data = self._fetch()
        except Exception as exc:  # any fetch function's failure to read: this is "unreachable"
            error = self._unreachable(exc)
            if error is exc:
                raise
            raise error from exc
        with self._lock:
            self.fetches += 1
            self.unreachable_since, self._failure = None, None
        return self.offer(data)

    def stats(self) -> dict[str, Any]:
        """The version held and what happened to the maps fetched and offered."""
        since = self.unreachable_since
        return {
            "version": self.version,
            "fetches": self.fetches,
            "fetch_failures": self.fetch_failures,
            "refused": self.refused,
            "swaps": self.swaps,
            "offline": since is not None,
            "unreachable_since": iso(since) if since is not None else None,
            "last_error": self.last_error,
        }

    def _refuse(self, exc: MapError) -> None:
        self.refused += 1
        self.last_error = f"{type(exc).__name__}: {exc.message}"
        self._failure = exc

    def _unreachable(self, exc: Exception) -> RegistryUnreachableError:
        if isinstance(exc, RegistryUnreachableError):
            error, text = exc, exc.message
        else:
            text = f"{type(exc).__name__}: {exc}"
            hint = exc.hint if isinstance(exc, ShardkitError) and exc.hint else None
            error = RegistryUnreachableError(f"cannot fetch the shard map: {text}", hint=hint)
        with self._lock:
            self.fetches += 1
            self.fetch_failures += 1
            if self.unreachable_since is None:
                self.unreachable_since = self._clock()
            self.last_error, self._failure = text, error
        return error


def _as_bytes(data: Any, refuse: Callable[[MapError], None]) -> bytes:
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    error = MapDecodeError(f"a map is bytes, not {type(data).__name__}")
    refuse(error)
    raise error


def iso(t: float) -> str:
    """``t`` (seconds since the epoch) as an ISO 8601 UTC time."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


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
