"""The slot-record steps of a deploy: what ``shardkit deploy`` does to the state tables before
it publishes a map (docs/migration.md).

* A map with no map before it (a first deploy), or a group the deployed map lacks: the records of
  every slot are written, ``active`` under the slot's owner - one step per region and group.
* A reshard or a rollback: one step per group and destination region. Its same-region slots are
  switched (one conditional update each: they keep their state and never stop serving); its
  cross-region slots are fenced, copied (catch-up) and switched, so they keep their state too but
  answer 503 ``moving`` while the step runs. The live protocol - bulk copy while the old owner
  serves, warm-up, progress, an error budget, deferred cleanup of the source copies - is not
  part of the deploy yet.

A step's props say exactly which slots (hex ranges, :func:`~shardkit.migrate.plan.format_slots`).
A cross-region step that fails gives the slots it fenced back to their old owners (abort) before
the error goes up, so nothing stays fenced; running the step again starts it over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import PlanFileError
from ..proxy.table import Table
from ..sharding.shardmap import ShardMap
from .plan import Move, Place, format_slots, parse_slots, placements, plan_migration
from .steps import Progress, abort, catch_up, fence, initialise_slots, switch

__all__ = ["SlotBatch", "run_batch", "slot_batches"]


@dataclass(frozen=True)
class SlotBatch:
    """One deploy step's worth of slot records: ``props`` without the table names."""

    region: str
    group: str
    props: dict[str, Any]
    reason: str


def slot_batches(
    old: ShardMap | None,
    new: ShardMap,
    fresh: Iterable[str] = (),
    unrecorded: Iterable[tuple[str, int]] = (),
) -> list[SlotBatch]:
    """The slot-record steps that deploying ``new`` over ``old`` (None: nothing yet) needs.

    ``fresh``: regions whose state table the deploy creates (empty: no records, no state);
    ``unrecorded``: (group, slot) pairs of ``old`` whose record its owner's table lacks. Such a
    slot starts anew under its owner in ``new``, like every slot of a first deploy or of a new
    group; the other slots whose owner changes move.
    """
    fresh, unrecorded = set(fresh), set(unrecorded)
    starting: dict[str, list[int]] = {}
    for group in sorted(new.groups):
        if old is None or group not in old.groups:
            starting[group] = list(range(new.slot_count))
        else:
            before = placements(old, group)
            starting[group] = [
                slot
                for slot, place in enumerate(before)
                if place.region in fresh or (group, slot) in unrecorded
            ]
    moves: list[Move] = []
    if old is not None and new.version > old.version:
        skip = {(g, slot) for g, slots in starting.items() for slot in slots}
        moves = [m for m in plan_migration(old, new).moves if (m.group, m.slot) not in skip]
    batches = [b for g, slots in starting.items() if slots for b in _initial(new, g, slots)]
    return batches + _moves(moves, new.version)


def _initial(shard_map: ShardMap, group: str, slots: list[int]) -> list[SlotBatch]:
    by_region: dict[str, dict[str, list[int]]] = {}
    owners = placements(shard_map, group)
    for slot in slots:
        place = owners[slot]
        by_region.setdefault(place.region, {}).setdefault(place.shard, []).append(slot)
    return [
        SlotBatch(
            region,
            group,
            {
                "group": group,
                "version": shard_map.version,
                "owners": {shard: format_slots(got) for shard, got in sorted(shards.items())},
            },
            f"slot records of group {group}: {sum(map(len, shards.values()))} slots "
            f"({', '.join(sorted(shards))}), map version {shard_map.version}",
        )
        for region, shards in sorted(by_region.items())
    ]


def _moves(moves: list[Move], version: int) -> list[SlotBatch]:
    steps: dict[tuple[str, str], dict[tuple[Place, Place], list[int]]] = {}
    for m in sorted(moves):
        pairs = steps.setdefault((m.destination.region, m.group), {})
        pairs.setdefault((m.source, m.destination), []).append(m.slot)
    return [
        SlotBatch(
            region,
            group,
            {
                "group": group,
                "version": version,
                "moves": [
                    {
                        "source": s.shard,
                        "source_region": s.region,
                        "destination": d.shard,
                        "slots": format_slots(slots),
                    }
                    for (s, d), slots in sorted(pairs.items())
                ],
            },
            _describe(
                group, region, [(s, d, slots) for (s, d), slots in sorted(pairs.items())], version
            ),
        )
        for (region, group), pairs in sorted(steps.items())
    ]


def _describe(group: str, region: str, pairs: list[tuple[Place, Place, list[int]]], v: int) -> str:
    local = sum(len(slots) for s, _, slots in pairs if s.region == region)
    away = sorted({s.region for s, _, _ in pairs if s.region != region})
    copied = sum(len(slots) for s, _, slots in pairs if s.region != region)
    parts = [f"{local} switch within {region}"] if local else []
    if copied:
        parts.append(f"{copied} move from {', '.join(away)} (fence, copy, switch)")
    return f"slots of group {group} for map version {v}: " + "; ".join(parts)


def run_batch(
    table_for: Callable[[str, str], Table], region: str, props: Mapping[str, Any]
) -> dict[str, Any]:
    """Apply the slot records of one step that runs in ``region`` (the region of the owners it
    initialises, or the destination of the slots it moves); ``table_for(region, table name)``
    opens a state table. Returns the step's progress (slots, skipped, items, bytes)."""
    try:
        tables = {region: table_for(region, name) for region, name in props["tables"].items()}
        group, version = str(props["group"]), int(props["version"])
        if "owners" in props:
            slots = [
                (group, slot, Place(shard, region))
                for shard, text in props["owners"].items()
                for slot in parse_slots(text)
            ]
            return initialise_slots(tables, version, slots).to_dict()
        moves = [
            Move(
                group, slot, Place(m["source"], m["source_region"]), Place(m["destination"], region)
            )
            for m in props["moves"]
            for slot in parse_slots(m["slots"])
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanFileError(f"a slot-record step's props are malformed: {exc!r}") from None
    return _move(tables, moves, version).to_dict()


def _move(tables: Mapping[str, Table], moves: list[Move], version: int) -> Progress:
    progress = switch(tables, [m for m in moves if not m.cross_region], version)
    cross = [m for m in moves if m.cross_region]
    if not cross:
        return progress
    try:
        progress += fence(tables, cross)
        progress += catch_up(tables, cross, version)
        return progress + switch(tables, cross, version)
    except Exception:
        abort(tables, cross)  # nothing stays fenced; the step starts over when run again
        raise
