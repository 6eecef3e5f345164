"""Which slots a migration moves, and how: the pure planner.

:func:`plan_migration` compares the map in force with the next one and lists, per group, every
slot whose owner changes - its shard, or its region (a shard moved to another region of its
jurisdiction keeps its id and its slots, but its state has to follow it). A move is
*same-region* when source and destination share a state table (the switch is one conditional
update of the slot record) or *cross-region* (the items are copied, then the records switched).

:func:`placements` gives each slot's owner in one map: what a first deploy writes as slot
records. Slot lists travel in plans as compact text (:func:`format_slots`, hex ranges such as
``"0-3f,80,c0-ff"``) and are read back, checked, with :func:`parse_slots`.

Pure: reads and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import PlanningError
from ..sharding.diff import check_comparable, slot_ranges
from ..sharding.shardmap import ShardMap

__all__ = [
    "Migration",
    "Move",
    "Place",
    "format_slots",
    "parse_slots",
    "placements",
    "plan_migration",
]


@dataclass(frozen=True, slots=True, order=True)
class Place:
    """Where a slot's state lives: a shard and its region (its state table)."""

    shard: str
    region: str

    def __str__(self) -> str:
        return f"{self.shard}@{self.region}"


@dataclass(frozen=True, slots=True, order=True)
class Move:
    """One slot of one group changing owner."""

    group: str
    slot: int
    source: Place
    destination: Place

    @property
    def cross_region(self) -> bool:
        return self.source.region != self.destination.region


@dataclass(frozen=True)
class Migration:
    """Every slot that moves from map version ``old_version`` to ``version``."""

    old_version: int
    version: int
    moves: tuple[Move, ...]
    added_groups: tuple[str, ...] = ()  # groups the old map lacks: their records are written anew
    removed_groups: tuple[str, ...] = ()
    _by_slot: dict[tuple[str, int], Move] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_slot", {(m.group, m.slot): m for m in self.moves})

    @property
    def same_region(self) -> tuple[Move, ...]:
        return tuple(m for m in self.moves if not m.cross_region)

    @property
    def cross_region(self) -> tuple[Move, ...]:
        return tuple(m for m in self.moves if m.cross_region)

    def move(self, group: str, slot: int) -> Move | None:
        return self._by_slot.get((group, slot))

    def only(self, slots: Iterable[tuple[str, int]]) -> Migration:
        """The same migration restricted to ``slots`` ((group, slot) pairs)."""
        wanted = set(slots)
        kept = tuple(m for m in self.moves if (m.group, m.slot) in wanted)
        return Migration(self.old_version, self.version, kept)

    def reversed(self, version: int) -> Migration:
        """The moves back, as map version ``version`` (a rollback of the slots that moved)."""
        back = tuple(Move(m.group, m.slot, m.destination, m.source) for m in self.moves)
        return Migration(self.version, version, back)

    def by_pair(self) -> list[tuple[str, Place, Place, list[int]]]:
        """``(group, source, destination, slots)`` for every pair that moves slots, sorted."""
        pairs: dict[tuple[str, Place, Place], list[int]] = {}
        for m in sorted(self.moves):
            pairs.setdefault((m.group, m.source, m.destination), []).append(m.slot)
        return [(g, s, d, slots) for (g, s, d), slots in sorted(pairs.items())]

    def to_dict(self) -> dict[str, Any]:
        return {
            "old_version": self.old_version,
            "version": self.version,
            "moved_slots": len(self.moves),
            "same_region": len(self.same_region),
            "cross_region": len(self.cross_region),
            "added_groups": list(self.added_groups),
            "removed_groups": list(self.removed_groups),
            "pairs": [
                {
                    "group": g,
                    "source": str(s),
                    "destination": str(d),
                    "cross_region": s.region != d.region,
                    "slots": format_slots(slots),
                    "count": len(slots),
                }
                for g, s, d, slots in self.by_pair()
            ],
        }


def placements(shard_map: ShardMap, group: str) -> list[Place]:
    """The owner of every slot of ``group`` in ``shard_map``, by slot."""
    try:
        table = shard_map.groups[group].primary
    except KeyError:
        raise PlanningError(
            f"map version {shard_map.version} has no group {group!r}",
            hint=f"its groups: {', '.join(shard_map.groups)}",
        ) from None
    cache: dict[str, Place] = {}
    return [cache.setdefault(s.id, Place(s.id, s.region)) for s in table]


def plan_migration(old: ShardMap, new: ShardMap) -> Migration:
    """Every slot whose owner (shard or region) differs between ``old`` and ``new``."""
    check_comparable(old, new, "migrate between")
    if new.version <= old.version:
        raise PlanningError(
            f"a migration goes to a newer map: version {new.version} is not after {old.version}",
            hint="maps only move forward; a rollback is a new, higher version",
        )
    moves: list[Move] = []
    for name in sorted(set(old.groups) & set(new.groups)):
        before, after = placements(old, name), placements(new, name)
        moves.extend(
            Move(name, slot, a, b)
            for slot, (a, b) in enumerate(zip(before, after, strict=True))
            if a != b
        )
    return Migration(
        old.version,
        new.version,
        tuple(moves),
        added_groups=tuple(sorted(set(new.groups) - set(old.groups))),
        removed_groups=tuple(sorted(set(old.groups) - set(new.groups))),
    )


def format_slots(slots: Iterable[int]) -> str:
    """Sorted slot numbers as hex ranges: ``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    return ",".join(
        f"{a:x}" if a == b else f"{a:x}-{b:x}" for a, b in slot_ranges(sorted(set(slots)))
    )


def parse_slots(text: str, slot_count: int | None = None) -> list[int]:
    """The slots of :func:`format_slots` text; a clear error naming the bad part."""
    slots: list[int] = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        try:
            a, b = int(first, 16), int(last or first, 16)
        except ValueError:
            raise PlanningError(
                f"slot range {part!r} is not hex 'first-last' or 'slot'",
                hint="slot lists look like '0-3f,80'; make a fresh plan",
            ) from None
        if a > b or a < 0 or (slot_count is not None and b >= slot_count):
            raise PlanningError(
                f"slot range {part!r} is empty or outside 0-{(slot_count or 1) - 1:x}",
                hint="slot lists look like '0-3f,80'; make a fresh plan",
            )
        slots.extend(range(a, b + 1))
    return slots
