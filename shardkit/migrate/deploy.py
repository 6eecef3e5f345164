"""The slot-record steps of a deploy: what ``shardkit deploy`` does to the state tables before
it publishes a map (docs/migration.md).

* A map with no map before it (a first deploy), or a group the deployed map lacks: the records of
  every slot are written, ``active`` under the slot's owner - one ``fence`` step per region and
  group.
* A reshard or a rollback: per group and destination region, the ``migrate`` steps of
  :mod:`shardkit.migrate.live` - ``prepare`` (warm the destination shards), ``copy`` (bulk copy
  of the cross-region slots while their old owners serve) and ``cutover`` (the SLO guard, fence,
  catch-up and switch). Same-region slots are switched in place, never fenced.
* Source copies of switched cross-region slots: a ``cleanup`` step once the rollback window has
  passed (:func:`cleanup_batches`, from the ledger).

A step's props say exactly which slots (hex ranges, :func:`~shardkit.migrate.plan.format_slots`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import PlanFileError
from ..proxy.table import Table
from ..sharding.shardmap import ShardMap
from .plan import Move, Place, format_slots, parse_slots, placements, plan_migration
from .steps import initialise_slots

__all__ = ["SlotBatch", "cleanup_batches", "configure", "run_batch", "slot_batches"]


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
    batches = []
    for (region, group), pairs in sorted(steps.items()):
        listed = [(s, d, slots) for (s, d), slots in sorted(pairs.items())]
        props = {
            "group": group,
            "version": version,
            "moves": [
                {
                    "source": s.shard,
                    "source_region": s.region,
                    "destination": d.shard,
                    "slots": format_slots(slots),
                }
                for s, d, slots in listed
            ],
        }
        what = _describe(group, region, listed, version)
        cross = any(s.region != region for s, _, _ in listed)
        for phase in ("prepare", "copy", "cutover") if cross else ("prepare", "cutover"):
            batches.append(SlotBatch(region, group, {**props, "phase": phase}, f"{phase}: {what}"))
    return batches


def configure(
    batches: Iterable[SlotBatch],
    *,
    guard: Mapping[str, Any],
    rollback_window_s: float,
    warm: Mapping[str, tuple[str, str]],
) -> list[SlotBatch]:
    """The batches with the deploy's settings: the SLO guard and the rollback window on each
    cutover, and on each prepare the destination shards to warm (``warm``: shard -> (function,
    qualifier))."""
    out = []
    for b in batches:
        phase = b.props.get("phase")
        extra: dict[str, Any] = {}
        if phase == "cutover":
            extra = {"guard": dict(guard), "rollback_window_s": rollback_window_s}
        elif phase == "prepare":
            shards = sorted({m["destination"] for m in b.props["moves"]} & set(warm))
            extra = {
                "warm": [
                    {"shard": s, "function": warm[s][0], "qualifier": warm[s][1]} for s in shards
                ]
            }
        out.append(SlotBatch(b.region, b.group, {**b.props, **extra}, b.reason))
    return out


def cleanup_batches(entries: Iterable[Mapping[str, Any]]) -> list[SlotBatch]:
    """A ``cleanup`` step per ledger entry (:class:`~shardkit.migrate.ledger.Ledger`)."""
    return [
        SlotBatch(
            e["region"],
            e["group"],
            {
                "group": e["group"],
                "version": e["version"],
                "moves": e["moves"],
                "phase": "cleanup",
                "cleanup_id": e["id"],
            },
            f"cleanup: delete the source copies of slots {e['slots']} of group {e['group']} "
            f"(moved to {e['region']} by map version {e['version']}; rollback window over)",
        )
        for e in entries
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
    """Write the initial slot records of one ``fence`` step that runs in ``region`` (the owners'
    region); ``table_for(region, table name)`` opens a state table. Returns the step's progress
    (slots, skipped, items, bytes). Moves are ``migrate`` steps (:func:`shardkit.migrate.live.
    run_phase`)."""
    try:
        tables = {region: table_for(region, name) for region, name in props["tables"].items()}
        group, version = str(props["group"]), int(props["version"])
        slots = [
            (group, slot, Place(shard, region))
            for shard, text in props["owners"].items()
            for slot in parse_slots(text)
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanFileError(f"a slot-record step's props are malformed: {exc!r}") from None
    return initialise_slots(tables, version, slots).to_dict()
