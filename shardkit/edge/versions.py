"""Model (content) versions by key pattern: the other half of exact cache invalidation.

Every cache entry records the version that applied to its key when it was filled; a lookup whose
key now resolves to another version treats the entry as gone. Setting a version for
``"tenant-a:*"`` therefore invalidates exactly tenant A's entries, and ``"*"`` all of them.
The most recent :meth:`ModelVersions.set` whose pattern matches a key wins.

Reads are lock-free: a set replaces the whole rule tuple in one assignment.
"""

from __future__ import annotations

import threading

from .policy import EdgePolicyError, KeyPattern

__all__ = ["ModelVersions"]


class ModelVersions:
    """``key -> version``; starts with ``default`` for every key."""

    __slots__ = ("_lock", "_rules", "default")

    def __init__(self, default: str = "") -> None:
        self.default = default
        self._rules: tuple[tuple[KeyPattern, str], ...] = ()
        self._lock = threading.Lock()

    def set(self, version: str, pattern: str = "*") -> None:
        """From now on, keys matching ``pattern`` are served by model ``version``."""
        if not isinstance(version, str):
            raise EdgePolicyError(f"model version {version!r} must be a string")
        compiled = KeyPattern(pattern)
        with self._lock:
            # "*" shadows every older rule, so they can go; any other pattern replaces its own.
            kept = () if pattern == "*" else tuple(r for r in self._rules if r[0].text != pattern)
            self._rules = ((compiled, version), *kept)

    def for_key(self, key: str) -> str:
        for pattern, version in self._rules:
            if pattern.match(key):
                return version
        return self.default
