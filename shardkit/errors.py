"""Every error shardkit raises on purpose, in one hierarchy.

    ShardkitError                 root: catch this to catch anything shardkit means to raise
    ├── ConfigError               a project file is invalid (file, field path, value, what is allowed)
    ├── KeyStoreError             a signing key is missing, unreadable or already exists
    ├── PlanningError             a shard map cannot be planned as asked (weights, failure domains)
    ├── MapError                  a shard map could not be accepted
    │   ├── MapDecodeError        the bytes are not a well-formed shardkit map
    │   ├── MapSignatureError     the signature is wrong or the signing key is not trusted
    │   ├── MapRollbackError      the map is older than the one already held
    │   └── MapExpiredError       the map is past its expiry (a freeze attack or a stale cache)
    └── RoutingError              a key cannot be routed
        ├── ResidencyError        the key's jurisdiction is unknown, ambiguous or has no shards
        └── NoEligibleShardError  every shard allowed for the key is unhealthy

Each error carries a ``hint``: one sentence that says what to do about it. The CLI prints
``error: <message>`` and the hint on one line each and exits with code 2.

This module is on the data-plane import path: it imports nothing but the stdlib.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "KeyStoreError",
    "MapDecodeError",
    "MapError",
    "MapExpiredError",
    "MapRollbackError",
    "MapSignatureError",
    "NoEligibleShardError",
    "PlanningError",
    "ResidencyError",
    "RoutingError",
    "ShardkitError",
]


class ShardkitError(Exception):
    """Root of every error shardkit raises on purpose."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(ShardkitError):
    """A project file is invalid.

    ``file`` is the file, ``problems`` one line per bad field: ``path = value: what is allowed``.
    """

    def __init__(self, file: str, problems: list[str], *, hint: str | None = None) -> None:
        self.file = file
        self.problems = list(problems)
        lines = "; ".join(self.problems)
        super().__init__(f"{file}: {lines}", hint=hint or "fix the field named above and retry")


class KeyStoreError(ShardkitError):
    """A signing key is missing, unreadable or would be overwritten."""


class PlanningError(ShardkitError):
    """The shard map cannot be planned as the configuration asks."""


class MapError(ShardkitError):
    """A shard map could not be accepted."""


class MapDecodeError(MapError):
    """The bytes are not a well-formed shardkit map."""

    hint = "the file is damaged or not a shardkit map; rebuild it with `shardkit map build`"


class MapSignatureError(MapError):
    """The signature does not verify, or the key that made it is not trusted."""

    hint = "do not use this map; fetch it again from the registry or check the trusted keys"


class MapRollbackError(MapError):
    """The map's version is lower than the version already held."""

    hint = "a map never moves backwards; to undo a change publish a new, higher version"


class MapExpiredError(MapError):
    """The map is past its expiry time."""

    hint = "publish a fresh map (`shardkit map build`), or raise signing.map_ttl"


class RoutingError(ShardkitError):
    """A key cannot be routed."""


class ResidencyError(RoutingError):
    """The key's jurisdiction is unknown, ambiguous, or has no shards in this map."""


class NoEligibleShardError(RoutingError):
    """Every shard allowed for the key (its jurisdiction's) is unhealthy; residency fails closed."""

    hint = "wait for a shard of the key's jurisdiction to recover; keys never leave it"
