"""Per-key state addressed by slot, fenced by the slot's record (docs/architecture.md §4.4).

Layout of a regional state table (partition key ``pk``, sort key ``sk``, both strings):

* key state: ``pk = "{group}#{slot:05x}"``, ``sk =`` the key; ``seq`` (number of applied writes)
  and ``data`` (msgpack of the state and the answers of the last few request ids, so the
  idempotency records travel with the state when a slot moves);
* slot record, the fence: the same partition, ``sk = "\\x00slot"``; ``owner`` (shard id),
  ``epoch`` (the map version that last changed it) and ``state``: ``active`` (the owner serves
  and writes), ``fenced`` (moving away: nobody writes), ``ready`` (moving here, copied: nobody
  writes yet) or ``moved`` (the slot lives in another region's table; ``owner`` owns it there).

No key begins with U+0000 (the protocol refuses such keys), so a sort key beginning with it is
never a key: the slot record cannot collide with one, and a Query of the partition lists the
record first and then every key of the slot - what a migration copies.

Every write is one transaction: a condition check that the slot record says ``owner = this shard
AND state = active``, and a put conditioned on the ``seq`` that was read. A stale owner fails the
first, a concurrent writer of the same key the second; either way nothing is written. A read
returns the slot record with the item, read at one instant (a read-only answer is only given
from the live copy), and a state served from the cache is confirmed the same way before a
read-only answer.

A bounded LRU keeps recently used states across warm invocations - as the stored bytes, so every
load hands out fresh objects the user's function may change in place without touching the cache
(a request that then writes nothing leaves no trace). A failed condition drops the entry, so the
cache can make a write fail but never makes a wrong write succeed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgpack

from ..errors import TableWriteError
from ..protocol import RESERVED_PREFIX
from .table import Check, Cond, Item, Key, Put, Table, absent, all_of, eq

__all__ = [
    "ACTIVE",
    "FENCED",
    "MOVED",
    "READY",
    "RESERVED_PREFIX",
    "SLOT_RECORD",
    "BadState",
    "Conflict",
    "KeyState",
    "SlotNotLive",
    "SlotRecord",
    "StateStore",
    "live_for",
    "partition",
]

MAX_ITEM = 350 * 1024  # DynamoDB's limit is 400 KB per item, attribute names included
REMEMBERED_REQUESTS = 16

SLOT_RECORD = RESERVED_PREFIX + "slot"  # no key begins with RESERVED_PREFIX (the protocol's rule)
ACTIVE, FENCED, READY, MOVED = "active", "fenced", "ready", "moved"


def partition(group: str, slot: int) -> str:
    """The partition key of a slot: ``{group}#{slot:05x}``."""
    return f"{group}#{slot:05x}"


@dataclass(frozen=True)
class SlotRecord:
    """Who may write a slot in one region's table (see the module docstring)."""

    owner: str
    epoch: int
    state: str

    def live_for(self, shard: str) -> bool:
        return self.owner == shard and self.state == ACTIVE

    def item(self, pk: str) -> Item:
        return {
            "pk": pk,
            "sk": SLOT_RECORD,
            "owner": self.owner,
            "epoch": self.epoch,
            "state": self.state,
        }

    @classmethod
    def from_item(cls, item: Item | None) -> SlotRecord | None:
        if item is None:
            return None
        return cls(str(item["owner"]), int(item["epoch"]), str(item["state"]))

    def __str__(self) -> str:
        return f"{self.state} (owner {self.owner}, epoch {self.epoch})"


def live_for(shard: str) -> Cond:
    """The condition under which ``shard`` may write a slot: its record names it, active."""
    return all_of(eq("owner", shard), eq("state", ACTIVE))


class Conflict(Exception):
    """Another request wrote the same key first (or the cached state is no longer current)."""


class SlotNotLive(Exception):
    """This shard may not write the slot (or answer from its copy): the record says otherwise.
    ``record`` is the record as read, or None when the refusal did not show it."""

    def __init__(self, record: SlotRecord | None, *, known: bool = True) -> None:
        super().__init__(f"slot record: {record}")
        self.record = record
        self.known = known  # False: the record was not read; read it to decide


class StateTooLarge(Exception):
    pass


class BadState(Exception):
    """The new state (or the answer recorded with it) has no msgpack form: nothing is written."""


class KeyState:
    __slots__ = ("applied", "cached", "record", "seq", "size", "value")

    def __init__(
        self,
        seq: int,
        value: Any,
        applied: dict[str, Any],
        *,
        cached: bool = False,
        size: int = 0,
        record: SlotRecord | None = None,
    ) -> None:
        self.seq = seq
        self.value = value
        self.applied = applied
        self.cached = cached  # came from this instance's LRU, not from the table just now
        self.size = size  # bytes stored, when known
        self.record = record  # the slot record read with the state (None if cached or absent)


class StateStore:
    """One shard's view of its region's state table."""

    def __init__(self, table: Table, shard: str, cache_size: int = 1024) -> None:
        self.table = table
        self.shard = shard
        self._cache: OrderedDict[Key, tuple[int, bytes]] = OrderedDict()  # key -> (seq, blob)
        self._cache_size = cache_size

    def load(self, group: str, slot: int, key: str) -> KeyState:
        """The key's state: from the cache, or read with the slot record at one instant."""
        pk = partition(group, slot)
        cached = self._cache.get((pk, key))
        if cached is not None:
            self._cache.move_to_end((pk, key))
            return _decode(*cached, cached=True)
        record_item, item = self.table.get_many([(pk, SLOT_RECORD), (pk, key)])
        record = SlotRecord.from_item(record_item)
        if item is None:
            return KeyState(0, None, {}, record=record)
        seq, blob = int(item["seq"]), bytes(item["data"])  # type: ignore[arg-type]
        if record is not None and record.live_for(self.shard):
            self._remember((pk, key), seq, blob)  # only the live copy is worth keeping
        return _decode(seq, blob, record=record)

    def is_live(self, state: KeyState) -> bool:
        """Whether a state just read was read from the live copy (this shard's, active)."""
        return state.record is not None and state.record.live_for(self.shard)

    def confirm(self, group: str, slot: int, key: str, state: KeyState) -> None:
        """Make sure ``state`` is what the live copy holds now, before a read-only answer.

        A state read just now (with its record) is; a cached one is checked against the slot
        record and the stored ``seq``, read at one instant. Raises :class:`SlotNotLive` or
        :class:`Conflict` (another instance's acknowledged write replaced it)."""
        if not state.cached:
            if not self.is_live(state):
                raise SlotNotLive(state.record)
            return
        pk = partition(group, slot)
        record_item, item = self.table.get_many([(pk, SLOT_RECORD), (pk, key)])
        record = SlotRecord.from_item(record_item)
        if record is None or not record.live_for(self.shard):
            self._cache.pop((pk, key), None)
            raise SlotNotLive(record)
        if (int(item["seq"]) if item else 0) != state.seq:  # type: ignore[arg-type]
            self._cache.pop((pk, key), None)
            raise Conflict("the cached state is no longer current")

    def save(
        self,
        group: str,
        slot: int,
        key: str,
        before: KeyState,
        value: Any,
        request_id: str | None,
        answer: Any,
    ) -> KeyState:
        """Write the new state, fenced on the slot record; see the module docstring."""
        applied = dict(before.applied)
        if request_id is not None:
            applied[request_id] = answer
            while len(applied) > REMEMBERED_REQUESTS:
                applied.pop(next(iter(applied)))
        blob = _encode(value, applied)
        if len(blob) > MAX_ITEM:
            raise StateTooLarge(f"state of {len(blob):,} bytes exceeds {MAX_ITEM:,}")
        pk = partition(group, slot)
        after = KeyState(before.seq + 1, value, applied, size=len(blob))
        seq_read = absent() if before.seq == 0 else eq("seq", before.seq)
        item = {"pk": pk, "sk": key, "seq": after.seq, "data": blob}
        try:
            self.table.transact(
                [Check((pk, SLOT_RECORD), live_for(self.shard)), Put(item, seq_read)]
            )
        except TableWriteError as exc:
            self._cache.pop((pk, key), None)
            if exc.failed(0) is not False:  # the slot check failed, or the table did not say
                raise SlotNotLive(None, known=False) from None
            raise Conflict(f"a concurrent write to the key won ({exc.reasons})") from None
        self._remember((pk, key), after.seq, blob)
        return after

    def record(self, group: str, slot: int) -> SlotRecord | None:
        """The slot record in this region's table, read now."""
        return SlotRecord.from_item(self.table.get((partition(group, slot), SLOT_RECORD)))

    def _remember(self, key: Key, seq: int, blob: bytes) -> None:
        self._cache[key] = (seq, blob)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _encode(value: Any, applied: dict[str, Any]) -> bytes:
    try:
        return msgpack.packb({"state": value, "applied": applied}, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:  # what msgpack cannot encode
        raise BadState(f"{type(exc).__name__}: {exc}") from None


def _decode(
    seq: int, blob: bytes, *, cached: bool = False, record: SlotRecord | None = None
) -> KeyState:
    data = msgpack.unpackb(blob, raw=False)
    return KeyState(
        seq, data["state"], data["applied"], cached=cached, size=len(blob), record=record
    )
