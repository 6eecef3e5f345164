"""What changed between two maps: exactly what a migration has to do.

:func:`diff_maps` lists every slot whose owner changed (group, slot, source shard, destination
shard), shards added and removed, epoch changes, and how many replica entries changed. Moves are
also summarised per (source, destination) pair, with contiguous slot ranges for display.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..errors import PlanningError
from .shardmap import ShardMap

__all__ = ["MapDiff", "SlotMove", "check_comparable", "diff_maps", "slot_ranges"]


@dataclass(frozen=True, slots=True)
class SlotMove:
    group: str
    slot: int
    source: str | None  # None: the group is new
    destination: str | None  # None: the group was removed


@dataclass(frozen=True)
class MapDiff:
    old_version: int
    new_version: int
    slots: int
    moves: tuple[SlotMove, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    epochs: dict[str, tuple[int, int]] = field(default_factory=dict)
    replica_changes: int = 0

    def by_pair(self) -> list[tuple[str | None, str | None, int]]:
        """(source, destination, slots moved), largest first."""
        counts = Counter((m.source, m.destination) for m in self.moves)
        return sorted(
            ((s, d, n) for (s, d), n in counts.items()), key=lambda t: (-t[2], str(t[0]), str(t[1]))
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "old_version": self.old_version,
            "new_version": self.new_version,
            "moved_slots": len(self.moves),
            "added": list(self.added),
            "removed": list(self.removed),
            "epochs": {k: {"old": a, "new": b} for k, (a, b) in self.epochs.items()},
            "replica_changes": self.replica_changes,
            "by_pair": [{"source": s, "destination": d, "slots": n} for s, d, n in self.by_pair()],
            "moves": [[m.group, m.slot, m.source, m.destination] for m in self.moves],
        }


def check_comparable(old: ShardMap, new: ShardMap, doing: str) -> None:
    """Refuse to compare slots of maps of different projects or hashing (``doing``: what was
    asked, for the message: "diff", "migrate between")."""
    if old.project != new.project:
        raise PlanningError(
            f"cannot {doing} maps of different projects: {old.project!r} and {new.project!r}"
        )
    if (old.hash, old.slot_bits) != (new.hash, new.slot_bits):
        raise PlanningError(
            f"cannot {doing} maps with different hashing ({old.hash}/{old.slot_bits} bits vs "
            f"{new.hash}/{new.slot_bits} bits): every key moves",
            hint="keep [hashing] as it is, or build a fresh map",
        )


def diff_maps(old: ShardMap, new: ShardMap) -> MapDiff:
    """Every moved slot between ``old`` and ``new`` (same project and hashing)."""
    check_comparable(old, new, "diff")
    moves: list[SlotMove] = []
    replica_changes = 0
    for name in sorted(set(old.groups) | set(new.groups)):
        a, b = old.groups.get(name), new.groups.get(name)
        a_ids = [s.id for s in a.primary] if a else [None] * old.slot_count
        b_ids = [s.id for s in b.primary] if b else [None] * new.slot_count
        moves.extend(
            SlotMove(name, i, x, y)
            for i, (x, y) in enumerate(zip(a_ids, b_ids, strict=True))
            if x != y
        )
        if a and b:
            for ca, cb in zip(a.replicas, b.replicas, strict=False):
                replica_changes += sum(x.id != y.id for x, y in zip(ca, cb, strict=True))
            replica_changes += old.slot_count * abs(len(a.replicas) - len(b.replicas))
    old_ids = {s.id: s.epoch for s in old.shards}
    new_ids = {s.id: s.epoch for s in new.shards}
    return MapDiff(
        old_version=old.version,
        new_version=new.version,
        slots=old.slot_count,
        moves=tuple(moves),
        added=tuple(sorted(set(new_ids) - set(old_ids))),
        removed=tuple(sorted(set(old_ids) - set(new_ids))),
        epochs={
            k: (old_ids[k], new_ids[k])
            for k in sorted(set(old_ids) & set(new_ids))
            if old_ids[k] != new_ids[k]
        },
        replica_changes=replica_changes,
    )


def slot_ranges(slots: list[int]) -> list[tuple[int, int]]:
    """Contiguous (first, last) ranges of sorted slot numbers, for compact display."""
    ranges: list[tuple[int, int]] = []
    for s in slots:
        if ranges and ranges[-1][1] == s - 1:
            ranges[-1] = (ranges[-1][0], s)
        else:
            ranges.append((s, s))
    return ranges
