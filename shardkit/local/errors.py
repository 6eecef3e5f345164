"""The local cloud's error lives in :mod:`shardkit.errors` with every other; re-exported here."""

from ..errors import LocalCloudError

__all__ = ["LocalCloudError"]
