"""The compute-adjacent cache: shard answers by (key, payload), bounded and exactly invalidated.

**Exact invalidation.** An entry records who made the answer and under which versions: the owning
shard's id and epoch in the map at fill time, and the model version of its key. A lookup passes
the current owner, epoch and version; any difference means the entry is gone (dropped then and
there). A reshard bumps the epochs of exactly the shards whose slot sets changed and a model
update changes exactly the versions of the keys it covers, so exactly those entries go and every
other entry stays - lazily, with no sweep over the cache.

**Bounded memory.** LRU by entry count *and* by bytes (encoded answer + key + payload
fingerprint); answers over the policy's per-entry limit are not kept. **Bounded staleness.**
Each entry carries three deadlines from its policy: fresh, stale-while-revalidate, and
stale-if-error; past the last one it is dropped.

Answers are stored msgpack-encoded: the size is known exactly, and every hit decodes a fresh
object, so a caller that mutates its answer cannot corrupt the cache.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack

from .policy import CachePolicy, EdgePolicyError

if TYPE_CHECKING:
    from ..sharding.shardmap import Shard

__all__ = ["ERROR_ONLY", "FRESH", "MISS", "STALE", "EdgeCache", "Entry", "fingerprint"]

FRESH, STALE, ERROR_ONLY, MISS = "fresh", "stale", "error_only", "miss"
_BUCKETS = 1024  # write tickets: a fixed array, so tracking writes costs no per-key memory

CacheKey = tuple[str, bytes]


def fingerprint(payload: Any) -> bytes | None:
    """The payload's cache identity, or None if it cannot have one (then it is not cached).

    msgpack keeps every distinction a transport keeps (``1`` vs ``"1"`` keys, ``1`` vs ``1.0``),
    so two payloads with one fingerprint are the same request to the shard. Dicts are not
    re-sorted: the same fields in another order only cost a miss, never a wrong answer.
    """
    return _encode(payload)


def _encode(obj: Any) -> bytes | None:
    try:
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError):
        return None


class Entry:
    """One cached answer and what it was valid for."""

    __slots__ = (
        "epoch",
        "error_until",
        "fresh_until",
        "jurisdiction",
        "map_version",
        "region",
        "shard",
        "size",
        "stale_until",
        "value",
        "version",
    )

    def __init__(
        self,
        value: bytes,
        shard: Shard,
        map_version: int,
        version: str,
        policy: CachePolicy,
        now: float,
        size: int,
    ) -> None:
        self.value = value
        self.shard, self.region, self.epoch = shard.id, shard.region, shard.epoch
        self.jurisdiction = shard.jurisdiction
        self.map_version = map_version
        self.version = version
        self.fresh_until = now + policy.ttl_s
        self.stale_until = self.fresh_until + policy.max_stale_s
        self.error_until = self.fresh_until + policy.stale_if_error_s
        self.size = size

    def answer(self) -> Any:
        return msgpack.unpackb(self.value, raw=False, strict_map_key=False)

    def servable_on_error(self, now: float) -> bool:
        return now < self.error_until


class EdgeCache:
    """A thread-safe LRU of :class:`Entry`, bounded by ``max_entries`` and ``max_bytes``."""

    def __init__(
        self,
        max_entries: int = 10_000,
        max_bytes: int = 32 * 1024 * 1024,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise EdgePolicyError(
                f"cache bounds max_entries={max_entries}, max_bytes={max_bytes} must both be >= 1"
            )
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.clock = clock
        self._entries: OrderedDict[CacheKey, Entry] = OrderedDict()
        self._by_key: dict[str, set[CacheKey]] = {}
        self._tickets = [0] * _BUCKETS
        self._bytes = 0
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(
            ("evicted", "invalidated", "expired", "rejected", "raced", "dropped_by_write"), 0
        )

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def lookup(self, ck: CacheKey, shard: Shard, version: str) -> tuple[Entry | None, str]:
        """The entry for ``ck`` if it is still valid for ``shard`` (the key's owner now: id and
        epoch) and model ``version``, with its state: FRESH, STALE, ERROR_ONLY - or MISS."""
        now = self.clock()
        with self._lock:
            e = self._entries.get(ck)
            if e is None:
                return None, MISS
            if e.shard != shard.id or e.epoch != shard.epoch or e.version != version:
                self._drop(ck, e, "invalidated")
                return None, MISS
            if now < e.stale_until:
                self._entries.move_to_end(ck)
                return e, FRESH if now < e.fresh_until else STALE
            if now < e.error_until:
                return e, ERROR_ONLY
            self._drop(ck, e, "expired")
            return None, MISS

    def ticket(self, key: str) -> int:
        """Take before asking the shard; :meth:`put` refuses the answer if the key was written
        (:meth:`invalidate_key`) in between, so a read racing a write cannot cache old data."""
        return self._tickets[hash(key) % _BUCKETS]

    def put(
        self,
        ck: CacheKey,
        answer: Any,
        *,
        shard: Shard,
        map_version: int,
        version: str,
        policy: CachePolicy,
        ticket: int,
    ) -> bool:
        """Keep ``answer`` (made by ``shard`` at its epoch). False if it was not kept."""
        value = _encode(answer)
        size = len(ck[0]) + len(ck[1]) + (len(value) if value is not None else 0)
        if value is None or size > policy.max_entry_bytes or size > self.max_bytes:
            with self._lock:
                self.counts["rejected"] += 1
            return False
        entry = Entry(value, shard, map_version, version, policy, self.clock(), size)
        with self._lock:
            if self._tickets[hash(ck[0]) % _BUCKETS] != ticket:
                self.counts["raced"] += 1
                return False
            old = self._entries.get(ck)
            if old is not None:
                self._drop(ck, old, None)
            self._entries[ck] = entry
            self._by_key.setdefault(ck[0], set()).add(ck)
            self._bytes += size
            self._evict()
        return True

    def invalidate_key(self, key: str) -> int:
        """Drop every entry of ``key`` (all payloads): the key was written. How many went."""
        with self._lock:
            self._tickets[hash(key) % _BUCKETS] += 1
            doomed = list(self._by_key.get(key, ()))
            for ck in doomed:
                self._drop(ck, self._entries[ck], "dropped_by_write")
            return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_key.clear()
            self._bytes = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "max_entries": self.max_entries,
                "max_bytes": self.max_bytes,
                **self.counts,
            }

    # -- internals (call with the lock held) ---------------------------------------------------

    def _drop(self, ck: CacheKey, e: Entry, reason: str | None) -> None:
        del self._entries[ck]
        self._bytes -= e.size
        same_key = self._by_key.get(ck[0])
        if same_key is not None:
            same_key.discard(ck)
            if not same_key:
                del self._by_key[ck[0]]
        if reason is not None:
            self.counts[reason] += 1

    def _evict(self) -> None:
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            ck, e = next(iter(self._entries.items()))
            self._drop(ck, e, "evicted")
