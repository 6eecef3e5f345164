"""Load signals of one proxy instance: a per-request accumulator and the record it emits.

The hot path (:meth:`LoadAccumulator.add`) counts every request exactly, per shard and per slot:
one dict lookup and two increments in flat per-slot arrays, no clock call (the caller passes the
time it already read). Counting exactly is cheaper per request in Python than any sketch, and the
summary is made once per window instead.

When a window ends the instance's counts become one :class:`LoadRecord` - per-shard totals plus
the ``top_k`` heaviest slots by requests and by compute time, and a **floor**: no slot left out
had more than the floor's requests or compute ms at this instance. That is a Space-Saving /
Misra-Gries summary of size ``top_k`` with its error bound (here exact for the listed slots), so
records from many instances merge with the standard mergeable-summary rule
(:mod:`shardkit.autoshard.load`) and the wire never carries 16k slots. Encoded with msgpack, a
record is a few hundred bytes; the format is in docs/autoshard.md.

Windows are aligned to multiples of ``window_s`` on the clock passed in (Unix time in
production), so records of all instances for the same window share the same ``start``.

**Where records go** (:class:`LoadSink`): one item per instance, group and window in the
group's regional state table - ``pk = "{group}#load"`` (never a slot partition, which is
``{group}#{slot:05x}``), ``sk = "{start in ms, 16 digits}#{instance}"``, ``data`` = the encoded
record, ``ttl`` = Unix seconds after which it is of no use (the table's TTL attribute). The proxy role may already write
its group's partitions, every region has the table (the local cloud too), and the controller
reads a group's last windows with one Query per region, in window order. It is written once per
window by the request that closes it: one small put per instance per window, never per request.

Data-plane module: stdlib and msgpack only.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from ..errors import LoadRecordError

__all__ = [
    "LOAD_PARTITION",
    "RECORD_FORMAT",
    "HotSlot",
    "LoadAccumulator",
    "LoadRecord",
    "LoadSink",
    "ShardTotal",
    "decode_record",
    "encode_record",
    "iter_records",
    "load_item",
    "load_sort_key",
    "record_from_obj",
    "summarize",
]

RECORD_FORMAT = 1
LOAD_PARTITION = "{group}#load"
#: How long a stored record stays of use, in windows: longer than the controller's longest look
#: back (``max(split_windows, merge_windows) + 2``, at most 1,002 windows). The state table's TTL
#: deletes it some time after that.
KEEP_WINDOWS = 1024
#: The item attribute DynamoDB's TTL deletes by (the blueprint's ``ttl_attribute``). Not the
#: deploy lock's ``expires``: a lapsed lock must stay until it is broken on purpose.
TTL_ATTRIBUTE = "ttl"
_KEYS = ("floor", "hot", "instance", "length", "map_version", "shards", "start", "v")


@dataclass(frozen=True, slots=True)
class ShardTotal:
    shard: str
    group: str
    requests: int
    compute_ms: float


@dataclass(frozen=True, slots=True)
class HotSlot:
    shard: str
    slot: int
    requests: int
    compute_ms: float


@dataclass(frozen=True)
class LoadRecord:
    """One instance's load in one window: per-shard totals, the heavy slots, and the floor."""

    instance: str
    start: float
    length: float
    map_version: int
    shards: tuple[ShardTotal, ...]
    hot: tuple[HotSlot, ...]
    floor_requests: int = 0
    floor_compute_ms: float = 0.0


def summarize(
    instance: str,
    start: float,
    length: float,
    map_version: int,
    counts: Mapping[tuple[str, str], tuple[Mapping[int, int], Mapping[int, float]]],
    top_k: int,
) -> LoadRecord:
    """The record of one window from exact per-slot counts.

    ``counts`` maps ``(shard, group)`` to ``(requests by slot, compute ms by slot)``. The hot
    list is the union of the ``top_k`` slots by requests and the ``top_k`` by compute ms (ties
    to the lower shard id and slot); the floor is the largest count among the slots left out.
    Only each shard's ``top_k + 1`` heaviest slots by either measure can be listed or set the
    floor, so only those are ranked.
    """
    totals = []
    cells: dict[tuple[str, int], tuple[int, float]] = {}
    for (shard, group), (reqs, ms) in sorted(counts.items()):
        totals.append(ShardTotal(shard, group, sum(reqs.values()), math.fsum(ms.values())))
        for slot in {*_heaviest(reqs, top_k + 1), *_heaviest(ms, top_k + 1)}:
            cells[shard, slot] = (reqs.get(slot, 0), ms.get(slot, 0.0))
    ranked = sorted(cells.items())
    by_reqs = heapq.nsmallest(top_k, ranked, key=lambda c: -c[1][0])
    by_ms = heapq.nsmallest(top_k, ranked, key=lambda c: -c[1][1])
    chosen = dict([*by_reqs, *by_ms])
    rest = [v for k, v in ranked if k not in chosen]
    return LoadRecord(
        instance=instance,
        start=start,
        length=length,
        map_version=map_version,
        shards=tuple(totals),
        hot=tuple(HotSlot(sh, slot, n, ms) for (sh, slot), (n, ms) in sorted(chosen.items())),
        floor_requests=max((v[0] for v in rest), default=0),
        floor_compute_ms=max((v[1] for v in rest), default=0.0),
    )


def _heaviest(values: Mapping[int, float], k: int) -> list[int]:
    """The keys whose value is at least the ``k``-th largest (all ties included)."""
    if len(values) <= k:
        return list(values)
    threshold = heapq.nlargest(k, values.values())[-1]
    return [slot for slot, v in values.items() if v >= threshold]


class LoadAccumulator:
    """Counts one instance's requests per shard and slot, window by window.

    ``add(shard, group, slot, compute_ms, now)`` on every request (``slot`` in
    ``0 .. 2**slot_bits - 1``, as :meth:`ShardMap.slot` gives it); closed windows come out of
    :meth:`take` as records (or encoded, :meth:`take_encoded`). A request whose ``now`` lies in
    a later window first closes the current one; a window with no request makes no record.
    Each shard served gets two flat arrays of ``2**slot_bits`` counters, so a request is two
    list increments - no hashing, no allocation.
    """

    __slots__ = (
        "_by_shard",
        "_end",
        "_groups",
        "_start",
        "closed",
        "instance",
        "map_version",
        "slots",
        "top_k",
        "window_s",
    )

    def __init__(
        self,
        instance: str,
        *,
        window_s: float = 10.0,
        top_k: int = 32,
        map_version: int = 0,
        slot_bits: int = 14,
    ) -> None:
        if not window_s > 0 or top_k < 1 or not 1 <= slot_bits <= 24:
            raise LoadRecordError(
                f"window_s = {window_s!r}, top_k = {top_k!r}, slot_bits = {slot_bits!r}: "
                "window_s and top_k must be positive, slot_bits 1..24"
            )
        self.instance = instance
        self.window_s = float(window_s)
        self.top_k = top_k
        self.map_version = map_version
        self.slots = 1 << slot_bits
        self.closed: list[LoadRecord] = []
        self._by_shard: dict[str, tuple[list[int], list[float]]] = {}
        self._groups: dict[str, str] = {}
        self._start = -math.inf
        self._end = -math.inf

    def add(self, shard: str, group: str, slot: int, compute_ms: float, now: float) -> None:
        """Count one request (the hot path: see the class docstring)."""
        if now >= self._end:
            self._roll(now)
        cell = self._by_shard.get(shard)
        if cell is None:
            cell = self._open(shard, group)
        cell[0][slot] += 1
        cell[1][slot] += compute_ms

    def flush(self, now: float) -> None:
        """Close the current window if ``now`` is past its end (call it from a timer, so an idle
        instance still reports the window it saw traffic in)."""
        if now >= self._end:
            self._roll(now)

    def take(self) -> list[LoadRecord]:
        """The closed windows' records, oldest first; they are handed out once."""
        out, self.closed = self.closed, []
        return out

    def take_encoded(self) -> list[bytes]:
        return [encode_record(r) for r in self.take()]

    def _open(self, shard: str, group: str) -> tuple[list[int], list[float]]:
        self._groups[shard] = group
        cell = self._by_shard[shard] = ([0] * self.slots, [0.0] * self.slots)
        return cell

    def _roll(self, now: float) -> None:
        if self._by_shard:
            counts = {}
            for shard, (reqs, ms) in self._by_shard.items():
                touched = [i for i, n in enumerate(reqs) if n]
                counts[shard, self._groups[shard]] = (
                    {i: reqs[i] for i in touched},
                    {i: ms[i] for i in touched},
                )
            self.closed.append(
                summarize(
                    self.instance, self._start, self.window_s, self.map_version, counts, self.top_k
                )
            )
        self._by_shard = {}
        self._groups = {}
        self._start = math.floor(now / self.window_s) * self.window_s
        self._end = self._start + self.window_s


# -- where records go ---------------------------------------------------------------------------


def load_sort_key(start: float, instance: str = "") -> str:
    """The sort key of a record of the window starting at ``start``: sorts by window."""
    return f"{round(start * 1000):016d}#{instance}"


def load_item(group: str, record: LoadRecord) -> dict[str, Any]:
    """The state-table item of ``record``'s counts of ``group`` (see the module docstring)."""
    mine = tuple(t for t in record.shards if t.group == group)
    shards = {t.shard for t in mine}
    part = LoadRecord(
        record.instance,
        record.start,
        record.length,
        record.map_version,
        mine,
        tuple(h for h in record.hot if h.shard in shards),
        record.floor_requests,
        record.floor_compute_ms,
    )
    return {
        "pk": LOAD_PARTITION.format(group=group),
        "sk": load_sort_key(record.start, record.instance),
        "data": encode_record(part),
        TTL_ATTRIBUTE: int(record.start + record.length * KEEP_WINDOWS),
    }


class LoadSink:
    """Writes closed windows' records to the state table, one put per group and window.

    ``put(item)`` is the table's unconditional put. A failed put is dropped (and counted in
    ``dropped``): a load signal is worth less than the request that carried it.
    """

    def __init__(self, put: Any) -> None:
        self.put = put
        self.dropped = 0

    def emit(self, records: Iterable[LoadRecord]) -> int:
        """Write ``records``; returns how many items were written."""
        written = 0
        for record in records:
            for group in sorted({t.group for t in record.shards}):
                try:
                    self.put(load_item(group, record))
                    written += 1
                except Exception:  # the table is unreachable: the next window tries again
                    self.dropped += 1
        return written


# -- the wire format ----------------------------------------------------------------------------


def encode_record(record: LoadRecord) -> bytes:
    """The record as one msgpack map with sorted keys (see docs/autoshard.md)."""
    body = {
        "floor": [record.floor_requests, float(record.floor_compute_ms)],
        "hot": [[h.shard, h.slot, h.requests, float(h.compute_ms)] for h in record.hot],
        "instance": record.instance,
        "length": float(record.length),
        "map_version": record.map_version,
        "shards": [[t.shard, t.group, t.requests, float(t.compute_ms)] for t in record.shards],
        "start": float(record.start),
        "v": RECORD_FORMAT,
    }
    return msgpack.packb(body, use_bin_type=True)


def decode_record(data: bytes) -> LoadRecord:
    """Parse one encoded record; :class:`LoadRecordError` names the field that is wrong."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise LoadRecordError(f"not a msgpack load record: {exc}") from None
    return record_from_obj(body)


def record_from_obj(body: Any) -> LoadRecord:
    """A record from its decoded msgpack map (what a stream of records yields)."""
    if not isinstance(body, dict):
        raise LoadRecordError(f"a load record is a map, not {type(body).__name__}")
    if body.get("v") != RECORD_FORMAT:
        raise LoadRecordError(
            f"v = {body.get('v')!r}: unknown load record format (this shardkit reads "
            f"{RECORD_FORMAT})",
            hint="upgrade the control plane to a shardkit that knows this format",
        )
    missing = [k for k in _KEYS if k not in body]
    if missing:
        raise LoadRecordError(f"{', '.join(missing)}: missing from the load record")
    start, length = _num(body, "start"), _num(body, "length")
    if not length > 0:
        raise LoadRecordError(f"length = {length!r}: must be > 0")
    floor = _row(body["floor"], "floor", (_int, _float))
    return LoadRecord(
        instance=_str(body["instance"], "instance"),
        start=start,
        length=length,
        map_version=_int(body["map_version"], "map_version"),
        shards=tuple(
            ShardTotal(*_row(r, f"shards[{i}]", (_str, _str, _int, _float)))
            for i, r in enumerate(_list(body["shards"], "shards"))
        ),
        hot=tuple(
            HotSlot(*_row(r, f"hot[{i}]", (_str, _int, _int, _float)))
            for i, r in enumerate(_list(body["hot"], "hot"))
        ),
        floor_requests=floor[0],
        floor_compute_ms=floor[1],
    )


def iter_records(data: bytes) -> Iterable[LoadRecord]:
    """Records from a byte stream of concatenated msgpack records (a file of them)."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True)
    unpacker.feed(data)
    i = 0
    try:
        for body in unpacker:
            try:
                yield record_from_obj(body)
            except LoadRecordError as exc:
                raise LoadRecordError(f"record {i}: {exc.message}", hint=exc.hint) from None
            i += 1
    except (ValueError, msgpack.FormatError, msgpack.StackError) as exc:
        raise LoadRecordError(f"record {i}: not msgpack: {exc}") from None


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise LoadRecordError(f"{where}: must be an array")
    return value


def _row(value: Any, where: str, kinds: tuple[Any, ...]) -> list[Any]:
    if not isinstance(value, list) or len(value) != len(kinds):
        raise LoadRecordError(f"{where}: must be an array of {len(kinds)} items")
    return [kind(v, f"{where}[{i}]") for i, (kind, v) in enumerate(zip(kinds, value, strict=True))]


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise LoadRecordError(f"{where} = {value!r}: must be a string")
    return value


def _int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise LoadRecordError(f"{where} = {value!r}: must be an integer >= 0")
    return value


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise LoadRecordError(f"{where} = {value!r}: must be a number >= 0")
    if math.isinf(value):
        raise LoadRecordError(f"{where} = {value!r}: must be finite")
    return float(value)


def _num(body: Mapping[str, Any], key: str) -> float:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LoadRecordError(f"{key} = {value!r}: must be a finite number")
    return float(value)
