"""Load windows: many instances' load records merged per group and window, and slot estimates.

:class:`LoadAggregator` takes records (:mod:`shardkit.proxy.load`) from any number of instances
and merges those of one window (same ``start``) per group:

* per-shard totals are summed (exact);
* heavy slots merge by the mergeable-summary rule for Misra-Gries / Space-Saving (Agarwal et
  al., PODS 2012): a slot's estimate is the sum of the counts that listed it, and its error bound
  is the sum of the floors of the instances that did *not* list it - its true count lies in
  ``[estimate, estimate + error]``. Only the ``capacity`` heaviest slots are kept; dropping one
  raises the bound of every unlisted slot (the window's ``floor``) by what it held.

:meth:`LoadAggregator.close` returns the finished :class:`LoadWindow`, with the slot table that
was in force while it was measured. :meth:`LoadWindow.slot_rates` turns it into a per-slot
estimate (requests/s and compute ms/s for every slot): a heavy slot gets its estimate, and what
is left of each shard's total is spread evenly over that shard's other slots. The decision
function re-projects these per-slot estimates onto the *current* layout, so windows measured
before a change still say what the new shards would carry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..proxy.load import LoadRecord, decode_record

__all__ = ["LoadAggregator", "LoadWindow", "SlotLoad"]


@dataclass(frozen=True, slots=True)
class SlotLoad:
    """A heavy slot in one window: counts, and how much more it may have had (error bounds)."""

    shard: str
    requests: float
    compute_ms: float
    err_requests: float = 0.0
    err_compute_ms: float = 0.0


@dataclass(frozen=True)
class LoadWindow:
    """One group's load in one window.

    ``shards``: shard -> (requests, compute ms) in the window; ``hot``: slot -> :class:`SlotLoad`;
    ``floor``: (requests, compute ms) no unlisted slot exceeded; ``owners``: the slot table in
    force while the window was measured (slot -> shard id).
    """

    group: str
    start: float
    length: float
    shards: Mapping[str, tuple[float, float]]
    hot: Mapping[int, SlotLoad]
    owners: Sequence[str]
    floor: tuple[float, float] = (0.0, 0.0)
    instances: int = 0
    _rates: list[Any] = field(default_factory=list, repr=False, compare=False)

    @property
    def end(self) -> float:
        return self.start + self.length

    def slot_rates(self) -> tuple[Any, Any]:
        """Estimated (requests/s, compute ms/s) of every slot, as two numpy arrays."""
        if not self._rates:
            self._rates.extend(_estimate(self))
        return self._rates[0], self._rates[1]


def _estimate(w: LoadWindow) -> tuple[Any, Any]:
    import numpy as np

    from .plan import owner_index

    ids, owner = owner_index(w.owners, [*w.shards, *(h.shard for h in w.hot.values())])
    index = {sid: i for i, sid in enumerate(ids)}
    hot_slots = np.fromiter(w.hot, dtype=np.int64, count=len(w.hot))
    out = []
    for dim in (0, 1):
        total = np.zeros(len(ids))
        for sid, load in w.shards.items():
            total[index[sid]] = load[dim]
        hot_vals = np.array([(h.requests, h.compute_ms)[dim] for h in w.hot.values()])
        listed_by = np.fromiter((index[h.shard] for h in w.hot.values()), dtype=np.int64)
        hot_by_owner = np.bincount(listed_by, weights=hot_vals, minlength=len(ids))
        cold = np.ones(len(owner), dtype=bool)
        cold[hot_slots] = False
        cold_count = np.bincount(owner[cold], minlength=len(ids))
        residual = np.maximum(total - hot_by_owner, 0.0)
        per_slot = np.divide(residual, cold_count, out=np.zeros(len(ids)), where=cold_count > 0)
        rate = per_slot[owner]
        rate[hot_slots] = hot_vals
        out.append(rate / w.length)
    return out[0], out[1]


@dataclass
class _Bucket:
    length: float
    shards: dict[str, list[float]] = field(default_factory=dict)
    # slot -> [shard, requests, compute ms, floor requests of listers, floor ms of listers]
    hot: dict[int, list[Any]] = field(default_factory=dict)
    floor: list[float] = field(default_factory=lambda: [0.0, 0.0])
    instances: set[str] = field(default_factory=set)


class LoadAggregator:
    """Merges instances' load records into per-group windows (see the module docstring)."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._buckets: dict[tuple[str, float], _Bucket] = {}

    def add(self, record: LoadRecord | bytes) -> None:
        if isinstance(record, bytes | bytearray):
            record = decode_record(bytes(record))
        for group in sorted({t.group for t in record.shards}):
            self._add_group(record, group)

    def add_all(self, records: Iterable[LoadRecord | bytes]) -> None:
        for record in records:
            self.add(record)

    def pending(self) -> list[tuple[str, float]]:
        """(group, window start) of every window with records, oldest first."""
        return sorted(self._buckets, key=lambda k: (k[1], k[0]))

    def close(self, group: str, start: float, owners: Sequence[str]) -> LoadWindow | None:
        """The finished window (None if no record for it came in); ``owners`` is the group's
        slot table while it was measured. The window's records are forgotten."""
        b = self._buckets.pop((group, start), None)
        if b is None:
            return None
        hot, floor = self._top(b)
        return LoadWindow(
            group=group,
            start=start,
            length=b.length,
            shards={sid: (v[0], v[1]) for sid, v in sorted(b.shards.items())},
            hot=hot,
            owners=owners,
            floor=floor,
            instances=len(b.instances),
        )

    def _add_group(self, record: LoadRecord, group: str) -> None:
        b = self._buckets.setdefault((group, record.start), _Bucket(record.length))
        b.instances.add(record.instance)
        mine = {t.shard for t in record.shards if t.group == group}
        for t in record.shards:
            if t.group == group:
                total = b.shards.setdefault(t.shard, [0.0, 0.0])
                total[0] += t.requests
                total[1] += t.compute_ms
        b.floor[0] += record.floor_requests
        b.floor[1] += record.floor_compute_ms
        for h in record.hot:
            if h.shard in mine:
                cell = b.hot.setdefault(h.slot, [h.shard, 0.0, 0.0, 0.0, 0.0])
                cell[1] += h.requests
                cell[2] += h.compute_ms
                cell[3] += record.floor_requests
                cell[4] += record.floor_compute_ms

    def _top(self, b: _Bucket) -> tuple[dict[int, SlotLoad], tuple[float, float]]:
        """The ``capacity`` heaviest slots (by requests, ties by compute and slot) and the floor
        of every other slot: the instances' floors, plus the largest dropped estimate."""
        ranked = sorted(b.hot.items(), key=lambda kv: (-kv[1][1], -kv[1][2], kv[0]))
        kept, dropped = ranked[: self.capacity], ranked[self.capacity :]
        hot = {
            slot: SlotLoad(c[0], c[1], c[2], b.floor[0] - c[3], b.floor[1] - c[4])
            for slot, c in sorted(kept)
        }
        floor = (
            b.floor[0] + max((c[1] for _, c in dropped), default=0.0),
            b.floor[1] + max((c[2] for _, c in dropped), default=0.0),
        )
        return hot, floor
