"""The migration's steps over the state tables: each idempotent, each safe to run again after a
crash at any point.

A slot has one record in each region's table that ever held it (see :mod:`shardkit.proxy.state`);
a proxy writes only where the record says ``owner = itself, active``. The steps move records
through these states (``v`` is the new map version)::

    same region   active(old) ─────────────── switch ──────────────▶ active(new, v)
    cross region  source:      active(old) ── fence ──▶ fenced(old) ── switch ─▶ moved(new, v)
                  destination: absent|moved ── catch-up ──▶ ready(new) ── switch ─▶ active(new, v)
    abort         (slots not switched) destination ready(new) ─▶ moved(old), then source ─▶ active(old)

* **bulk copy** (cross region, optional) copies a slot's items while the old owner still
  serves; **catch-up** (after the fence: the source can no longer change) makes the destination
  an exact copy - puts what differs, deletes what the source lacks - and only then marks the
  destination ``ready``. Every copy write is one transaction with a check that the destination
  record is not ``active``, so a copy replayed after the switch can never overwrite live state.
* **switch** requires the destination ``ready`` (so it cannot run before the catch-up), turns the
  source ``moved`` (conditional on ``fenced``), then the destination ``active``. At no instant
  are two records of a slot ``active``.
* **cleanup** deletes a switched slot's items from the source table, each delete conditional on
  the source record still saying ``moved``.

Every condition also accepts the state the step leaves behind, so a replay is a no-op; a record
in any other state stops the step with :class:`~shardkit.errors.MigrationError` naming the slot.
Steps return :class:`Progress` (slots, items and bytes), pure data the caller can report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import CONDITION_FAILED, MigrationError, TableWriteError
from ..proxy.state import (
    ACTIVE,
    FENCED,
    MOVED,
    READY,
    RESERVED_PREFIX,
    SLOT_RECORD,
    SlotRecord,
    partition,
)
from ..proxy.table import (
    MAX_READ,
    MAX_TRANSACTION,
    Check,
    Cond,
    Delete,
    Item,
    Key,
    Put,
    Table,
    Update,
    all_of,
    any_of,
    eq,
    is_in,
    le,
    ne,
    query_all,
)
from ..sharding.shardmap import ShardMap
from .plan import Move, Place, placements

__all__ = [
    "Abort",
    "Progress",
    "abort",
    "bulk_copy",
    "catch_up",
    "cleanup",
    "fence",
    "initialise",
    "initialise_slots",
    "slot_records",
    "switch",
]

Tables = Mapping[str, Table]  # region -> its state table
T = TypeVar("T")

_COPY_BYTES = 3 * 1024 * 1024  # per transaction; DynamoDB allows 4 MB
_RETRIES = 6  # a write another transaction held (TransactionConflict) is tried this often


@dataclass(frozen=True)
class Progress:
    """What a step did: slots changed, slots already done (a replay), items and bytes copied or
    deleted."""

    slots: int = 0
    skipped: int = 0
    items: int = 0
    bytes: int = 0

    def __add__(self, other: Progress) -> Progress:
        return Progress(
            self.slots + other.slots,
            self.skipped + other.skipped,
            self.items + other.items,
            self.bytes + other.bytes,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "slots": self.slots,
            "skipped": self.skipped,
            "items": self.items,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class Abort:
    """What :func:`abort` did: slots given back to their old owner, and the slots that had
    already switched (they stay with the new owner; move them back with a reverse migration)."""

    progress: Progress
    switched: tuple[Move, ...]


# -- first deploy ----------------------------------------------------------------------------------


def initialise(
    tables: Tables, shard_map: ShardMap, groups: Iterable[str] | None = None
) -> Progress:
    """Write every slot record of ``groups`` (default: all) of ``shard_map``: see
    :func:`initialise_slots`."""
    slots = [
        (group, slot, place)
        for group in sorted(groups if groups is not None else shard_map.groups)
        for slot, place in enumerate(placements(shard_map, group))
    ]
    return initialise_slots(tables, shard_map.version, slots)


def initialise_slots(
    tables: Tables, version: int, slots: Iterable[tuple[str, int, Place]]
) -> Progress:
    """Write the record of each ``(group, slot, owner)``: ``active`` under the owner, in the
    owner's region, epoch ``version``.

    For slots no proxy serves yet (a first deploy, a new group): the records are written without
    conditions, so running it again writes the same records.
    """
    by_region: dict[str, list[Item]] = {}
    for group, slot, place in slots:
        record = SlotRecord(place.shard, version, ACTIVE)
        by_region.setdefault(place.region, []).append(record.item(partition(group, slot)))
    for region, items in sorted(by_region.items()):
        _table(tables, region).put_batch(items)
    return Progress(slots=sum(map(len, by_region.values())))


# -- switch of a same-region slot, fence and switch of a cross-region one -----------------------


def switch(tables: Tables, moves: Iterable[Move], version: int) -> Progress:
    """Give each slot to its new owner, as map version ``version``.

    Same region: one conditional update of the record (``active``, or ``fenced``, under the old
    owner -> ``active`` under the new). Cross region: the destination must be ``ready`` (copied
    after the fence); then the source becomes ``moved`` and the destination ``active``.
    """
    moves = list(moves)
    progress = Progress()
    for region, local in _by_region([m for m in moves if not m.cross_region], "source"):
        progress += _change(_table(tables, region), [_switch_local(m, version) for m in local])
    cross = [m for m in moves if m.cross_region]
    for region, part in _by_region(cross, "destination"):
        records = _records(_table(tables, region), part)
        for m in part:
            r = records[m.slot, m.group]
            if r is None or r.owner != m.destination.shard or r.state not in (READY, ACTIVE):
                raise _unexpected(m, region, "ready (copied after the fence): run catch-up", r)
    for region, part in _by_region(cross, "source"):
        progress += _change(_table(tables, region), [_retire_source(m, version) for m in part])
    for region, part in _by_region(cross, "destination"):
        _change(_table(tables, region), [_activate(m, version) for m in part])
    return progress


def fence(tables: Tables, moves: Iterable[Move]) -> Progress:
    """Stop writes to each cross-region slot at its source: ``active`` -> ``fenced`` (the old
    owner keeps the record; its proxies answer 503 ``moving``). Same-region moves need no fence."""
    progress = Progress()
    for region, part in _by_region([m for m in moves if m.cross_region], "source"):
        changes = [
            _Change(
                m,
                Update(
                    _key(m), {"state": FENCED}, all_of(_owned_by(m.source), _in(ACTIVE, FENCED))
                ),
                lambda r, m=m: _is(r, m.destination.shard, MOVED),  # switched since: done
                "active or fenced under the old owner",
            )
            for m in part
        ]
        progress += _change(_table(tables, region), changes)
    return progress


def _switch_local(m: Move, version: int) -> _Change:
    new = m.destination.shard
    when = any_of(
        all_of(_owned_by(m.source), _in(ACTIVE, FENCED)),
        all_of(eq("owner", new), eq("state", ACTIVE), le("epoch", version)),
    )
    return _Change(
        m,
        Update(_key(m), {"owner": new, "state": ACTIVE, "epoch": version}, when),
        lambda r: _is(r, new, ACTIVE),
        "active or fenced under the old owner",
    )


def _retire_source(m: Move, version: int) -> _Change:
    new = m.destination.shard
    when = any_of(
        all_of(_owned_by(m.source), eq("state", FENCED)),
        all_of(eq("owner", new), eq("state", MOVED)),
    )
    return _Change(
        m,
        Update(_key(m), {"owner": new, "state": MOVED, "epoch": version}, when),
        lambda r: _is(r, new, MOVED),
        "fenced under the old owner: run the fence first",
    )


def _activate(m: Move, version: int) -> _Change:
    new = m.destination.shard
    return _Change(
        m,
        Update(
            _key(m),
            {"state": ACTIVE, "epoch": version},
            all_of(eq("owner", new), _in(READY, ACTIVE)),
        ),
        lambda r: _is(r, new, ACTIVE),
        "ready under the new owner",
    )


# -- copies ----------------------------------------------------------------------------------------


def bulk_copy(tables: Tables, moves: Iterable[Move]) -> Progress:
    """Copy each cross-region slot's items to its destination while the old owner still serves
    (the catch-up after the fence then copies only what changed). A slot whose destination is
    already ``active`` (switched) is skipped."""
    progress = Progress()
    for m in (m for m in moves if m.cross_region):
        copied = _mirror(_table(tables, m.source.region), _table(tables, m.destination.region), m)
        progress += copied if copied is not None else Progress(skipped=1)
    return progress


def catch_up(tables: Tables, moves: Iterable[Move], version: int) -> Progress:
    """After the fence: make each cross-region slot's destination an exact copy of its source,
    then mark the destination record ``ready`` (what :func:`switch` requires)."""
    progress = Progress()
    for (source, destination), part in _by_pair([m for m in moves if m.cross_region]):
        src, dst = _table(tables, source), _table(tables, destination)
        at_source, at_destination = _records(src, part), _records(dst, part)
        ready = []
        for m in part:
            here, there = at_source[m.slot, m.group], at_destination[m.slot, m.group]
            if _is(there, m.destination.shard, ACTIVE):
                progress += Progress(skipped=1)  # switched already
                continue
            frozen = _is(here, m.source.shard, FENCED) or _is(here, m.destination.shard, MOVED)
            if not frozen:
                raise _unexpected(m, source, "fenced: run the fence first", here)
            copied = _mirror(src, dst, m) if not _is_active(there) else None
            if copied is None:
                raise _unexpected(m, destination, "not active", _read(dst, m))
            record = SlotRecord(m.destination.shard, version, READY).item(_key(m)[0])
            ready.append(_Change(m, Put(record, ne("state", ACTIVE)), _never, "not active"))
            progress += copied
        _change(dst, ready)
    return progress


def _mirror(src: Table, dst: Table, m: Move) -> Progress | None:
    """Make ``dst``'s copy of the slot equal ``src``'s; None if ``dst`` is live (nothing done)."""
    pk = _key(m)[0]
    source = {i["sk"]: i for i in query_all(src, pk) if not _reserved(i)}
    have = {i["sk"]: i for i in query_all(dst, pk) if not _reserved(i)}
    ops: list[Put | Delete] = [Put(i) for sk, i in source.items() if have.get(sk) != i]
    ops += [Delete((pk, str(sk))) for sk in have if sk not in source]
    guard = Check(_key(m), ne("state", ACTIVE))
    for chunk in _copy_chunks(ops):
        if not _guarded(dst, [guard, *chunk], lambda: not _is_active(_read(dst, m))):
            return None
    written = [op.item for op in ops if isinstance(op, Put)]
    return Progress(slots=1, items=len(ops), bytes=sum(len(bytes(i["data"])) for i in written))


def cleanup(tables: Tables, moves: Iterable[Move]) -> Progress:
    """Delete the items a switched cross-region slot left in its source table (after the
    rollback window). Each delete is conditional on the source record still saying ``moved``;
    a slot that has not switched is refused, one that came back since is skipped."""
    progress = Progress()
    for m in (m for m in moves if m.cross_region):
        progress += _clean(_table(tables, m.source.region), m)
    return progress


def _clean(src: Table, m: Move) -> Progress:
    record = _read(src, m)
    if record is None or record.state == ACTIVE:
        return Progress(skipped=1)  # nothing here, or the slot lives here again
    if record.state != MOVED:
        raise _unexpected(m, m.source.region, "moved (switched)", record)
    pk = _key(m)[0]
    doomed = [Delete((pk, str(i["sk"]))) for i in query_all(src, pk) if not _reserved(i)]
    guard = Check(_key(m), eq("state", MOVED))
    deleted = 0
    for chunk in _chunks(doomed, MAX_TRANSACTION - 1):
        if not _guarded(src, [guard, *chunk], lambda: _read(src, m) == record):
            break  # the slot came back meanwhile: its items are live again
        deleted += len(chunk)
    return Progress(slots=1, items=deleted)


# -- abort -----------------------------------------------------------------------------------------


def abort(tables: Tables, moves: Iterable[Move]) -> Abort:
    """Give every slot that has not switched back to its old owner: the destination's ``ready``
    record becomes ``moved`` (under the old owner) first, then the source is unfenced. A slot
    that switched stays switched (a cross-region one is completed) and is reported."""
    moves = list(moves)
    switched: list[Move] = []
    progress = Progress()
    for region, part in _by_region([m for m in moves if not m.cross_region], "source"):
        records = _records(_table(tables, region), part)
        switched += [m for m in part if _is(records[m.slot, m.group], m.destination.shard, ACTIVE)]
    for m in (m for m in moves if m.cross_region):
        if _give_back(_table(tables, m.source.region), _table(tables, m.destination.region), m):
            progress += Progress(slots=1)
        else:
            switched.append(m)
    return Abort(progress, tuple(switched))


def _give_back(src: Table, dst: Table, m: Move) -> bool:
    """Unfence a cross-region slot that has not switched (True), or complete one that has."""
    new = m.destination.shard
    at_source = _read(src, m)
    if at_source is not None and _is(at_source, new, MOVED):
        _write(dst, m, _activate(m, at_source.epoch))
        return False
    give_back = Update(
        _key(m),
        {"owner": m.source.shard, "state": MOVED},
        all_of(eq("owner", new), eq("state", READY)),
    )
    _write(dst, m, _Change(m, give_back, lambda r: not _is(r, new, READY), ""))
    unfence = Update(_key(m), {"state": ACTIVE}, all_of(_owned_by(m.source), _in(FENCED, ACTIVE)))
    _write(src, m, _Change(m, unfence, _never, "fenced under the old owner"))
    return True


# -- reading ---------------------------------------------------------------------------------------


def slot_records(tables: Tables, group: str, slot: int) -> dict[str, SlotRecord | None]:
    """The slot's record in every region's table."""
    key = (partition(group, slot), SLOT_RECORD)
    return {region: SlotRecord.from_item(t.get(key)) for region, t in sorted(tables.items())}


# -- helpers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Change:
    """A conditional write of one slot's record; ``done(record)`` tells a refusal that means
    "already done" (a replay) from one that means the table is not as expected."""

    move: Move
    op: Update | Put
    done: Callable[[SlotRecord | None], bool]
    expected: str


def _change(table: Table, changes: Sequence[_Change]) -> Progress:
    """Apply ``changes``: up to 100 per transaction; a chunk that is refused, one by one."""
    progress = Progress()
    for chunk in _chunks(changes, MAX_TRANSACTION):
        try:
            table.transact([c.op for c in chunk])
            progress += Progress(slots=len(chunk))
        except TableWriteError:  # some are done already, or unexpected: find out which
            for c in chunk:
                progress += _write(table, c.move, c)
    return progress


def _write(table: Table, m: Move, change: _Change) -> Progress:
    try:
        _retry(lambda: table.write(change.op))
        return Progress(slots=1)
    except TableWriteError:
        record = _read(table, m)
        if change.done(record):
            return Progress(skipped=1)
        raise _unexpected(m, table.name, change.expected, record) from None


def _guarded(table: Table, ops: Sequence[Any], still: Callable[[], bool]) -> bool:
    """A transaction whose first operation checks the slot record (the others have no
    condition): False if it was refused because the record changed (``still()`` is false),
    tried again if it was refused for another reason (another transaction held an item)."""
    for attempt in range(_RETRIES):
        try:
            table.transact(ops)
            return True
        except TableWriteError:
            if not still():
                return False
            if attempt == _RETRIES - 1:
                raise
            time.sleep(0.02 * 2**attempt)
    return False  # pragma: no cover - the loop returns or raises


def _retry(write: Callable[[], None]) -> None:
    """``write``, again while another transaction held an item (TransactionConflict)."""
    for attempt in range(_RETRIES):
        try:
            write()
            return
        except TableWriteError as exc:
            if not exc.reasons or CONDITION_FAILED in exc.reasons or attempt == _RETRIES - 1:
                raise
            time.sleep(0.02 * 2**attempt)


def _unexpected(m: Move, where: str, expected: str, record: SlotRecord | None) -> MigrationError:
    return MigrationError(
        f"slot {m.slot:x} of group {m.group} ({m.source} -> {m.destination}): its record in "
        f"{where} is {record or 'missing'}, expected {expected}"
    )


def _records(table: Table, moves: Sequence[Move]) -> dict[tuple[int, str], SlotRecord | None]:
    """The records of ``moves`` in ``table``, read :data:`MAX_READ` at a time."""
    out: dict[tuple[int, str], SlotRecord | None] = {}
    for chunk in _chunks(moves, MAX_READ):
        for m, item in zip(chunk, table.get_many([_key(m) for m in chunk]), strict=True):
            out[m.slot, m.group] = SlotRecord.from_item(item)
    return out


def _read(table: Table, m: Move) -> SlotRecord | None:
    return SlotRecord.from_item(table.get(_key(m)))


def _key(m: Move) -> Key:
    return (partition(m.group, m.slot), SLOT_RECORD)


def _is(record: SlotRecord | None, owner: str, state: str) -> bool:
    return record is not None and record.owner == owner and record.state == state


def _is_active(record: SlotRecord | None) -> bool:
    return record is not None and record.state == ACTIVE


def _owned_by(place: Place) -> Cond:
    return eq("owner", place.shard)


def _in(*states: str) -> Cond:
    return is_in("state", *states)


def _reserved(item: Item) -> bool:
    return str(item["sk"]).startswith(RESERVED_PREFIX)


def _table(tables: Tables, region: str) -> Table:
    try:
        return tables[region]
    except KeyError:
        raise MigrationError(
            f"no state table for region {region!r} (known: {', '.join(sorted(tables))})"
        ) from None


def _by_pair(moves: Sequence[Move]) -> Iterator[tuple[tuple[str, str], list[Move]]]:
    pairs: dict[tuple[str, str], list[Move]] = {}
    for m in sorted(moves):
        pairs.setdefault((m.source.region, m.destination.region), []).append(m)
    yield from sorted(pairs.items())


def _never(record: SlotRecord | None) -> bool:
    """For a write whose refusal is never a replay."""
    return False


def _by_region(moves: Sequence[Move], side: str) -> Iterator[tuple[str, list[Move]]]:
    groups: dict[str, list[Move]] = {}
    for m in sorted(moves):
        groups.setdefault(getattr(m, side).region, []).append(m)
    yield from sorted(groups.items())


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _copy_chunks(ops: list[Put | Delete]) -> Iterator[list[Put | Delete]]:
    """Copy writes in transactions of at most 99 operations (one more checks the record) and
    about 3 MB."""
    chunk: list[Put | Delete] = []
    size = 0
    for op in ops:
        weight = len(bytes(op.item.get("data", b""))) if isinstance(op, Put) else 0
        if chunk and (len(chunk) == MAX_TRANSACTION - 1 or size + weight > _COPY_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(op)
        size += weight
    if chunk:
        yield chunk
