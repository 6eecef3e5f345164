"""A layout change as data, and the next map built from it: how a load-driven layout is published.

A :class:`LayoutChange` names, for one group, the shards it adds (id and region), the shards it
removes and every slot that moves (slot, from, to). :func:`apply_layout` turns the previous map
and a set of changes into the next map, deterministically:

* exactly the listed slots change owner (the planner's :func:`~.planner.assign_slots`), so a
  migration moves only those - :func:`~.diff.diff_maps` of the two maps lists exactly them;
* a new shard takes the group's next position, a removed one leaves a tombstone, so positions
  (and the ids :func:`next_shard_id` derives from them) are never reused;
* epochs bump exactly for the shards whose slot set changed (:func:`set_epochs`, the rule
  ``build_map`` uses too), the version goes up by one;
* residency fails closed (docs/architecture.md §4.3): a new shard in a region of another
  jurisdiction, or in a region the map does not know, is refused.

Pure and data-plane-safe: it imports only the planner and the map types.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import PlanningError
from .diff import SlotMove
from .planner import GroupPlan, ShardSpec, assign_slots
from .shardmap import Group, Shard, ShardMap

__all__ = [
    "LayoutChange",
    "NewShard",
    "apply_layout",
    "copy_group",
    "next_shard_id",
    "set_epochs",
]


@dataclass(frozen=True, slots=True)
class NewShard:
    """A shard a change adds: its id, its region, and its failure domain (the region, or the
    id itself when the group's replicas differ by shard)."""

    id: str
    region: str
    domain: str


@dataclass(frozen=True)
class LayoutChange:
    """One group's change: shards added and removed, and every slot that moves (the moves are
    :class:`~.diff.SlotMove` s, the form :func:`~.diff.diff_maps` lists them in)."""

    group: str
    added: tuple[NewShard, ...] = ()
    removed: tuple[str, ...] = ()
    moves: tuple[SlotMove, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.moves)

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "added": [{"id": s.id, "region": s.region, "domain": s.domain} for s in self.added],
            "removed": list(self.removed),
            "moves": [[m.slot, m.source, m.destination] for m in self.moves],
        }


def next_shard_id(group: Group, taken: Iterable[str] = (), added: int = 0) -> str:
    """The id a new shard of ``group`` gets: ``<group>-<position>``, the position it will take
    (``added``: how many shards the same change adds before this one).

    Positions are append-only (a removed shard leaves a tombstone), so this never names a shard
    that was ever made this way before. ``taken`` are ids already used elsewhere (other groups,
    shards added earlier in the same change); a clash with one of them - only possible with
    hand-picked ids - moves on to the next free suffix.
    """
    used = set(taken) | {p for p in group.positions if p is not None}
    position = len(group.positions) + added
    candidate = f"{group.name}-{position}"
    suffix = 1
    while candidate in used:
        candidate = f"{group.name}-{position}-{suffix}"
        suffix += 1
    return candidate


def apply_layout(
    previous: ShardMap,
    changes: Sequence[LayoutChange],
    *,
    ttl_s: int,
    now: float | None = None,
) -> ShardMap:
    """The map after ``changes``: version + 1, exactly the listed slots moved, epochs bumped for
    exactly the shards whose slot sets changed. Raises :class:`PlanningError` for a change that
    cannot be applied as given (and builds nothing)."""
    by_group = _by_group(previous, changes)
    created = int(time.time() if now is None else now)
    shards: dict[str, Shard] = {}
    groups: list[Group] = []
    for name, group in previous.groups.items():
        change = by_group.get(name)
        g_shards, g = _apply_group(previous, group, change) if change else copy_group(group)
        shards.update(g_shards)
        groups.append(g)
    _check_unique(shards, groups)
    version = previous.version + 1
    set_epochs(list(shards.values()), groups, previous, version)
    return ShardMap(
        project=previous.project,
        version=version,
        created_at=created,
        expires_at=created + ttl_s,
        hash=previous.hash,
        slot_bits=previous.slot_bits,
        regions=previous.regions,
        residency_rules=previous.residency_rules,
        default_jurisdiction=previous.default_jurisdiction,
        shards=list(shards.values()),
        groups=groups,
    )


def _by_group(previous: ShardMap, changes: Sequence[LayoutChange]) -> dict[str, LayoutChange]:
    out: dict[str, LayoutChange] = {}
    for change in changes:
        if change.group not in previous.groups:
            raise PlanningError(
                f"the change is for group {change.group!r}, which map version "
                f"{previous.version} does not have",
                hint=f"groups in the map: {', '.join(previous.groups)}",
            )
        if change.group in out:
            raise PlanningError(f"two changes for group {change.group!r}; merge them into one")
        out[change.group] = change
    return out


def copy_group(group: Group) -> tuple[dict[str, Shard], Group]:
    """The group's layout as it is, on fresh shard objects (their epochs are set later)."""
    every = [group.primary, *group.replicas]
    shards = {s.id: _fresh(s) for column in every for s in column}
    return shards, _from_plan(group, _plan_of(group), shards)


def _apply_group(
    previous: ShardMap, group: Group, change: LayoutChange
) -> tuple[dict[str, Shard], Group]:
    old = {s.id: s for s in group.shards()}
    for sid in change.removed:
        if sid not in old:
            raise PlanningError(f"cannot remove {sid!r}: it is not a shard of group {group.name!r}")
    for new in change.added:
        _check_new(previous, group, new, old)
    kept = [_fresh(s) for s in old.values() if s.id not in change.removed]
    added = [
        Shard(n.id, group.name, n.region, group.jurisdiction, 1.0, n.domain, 0)
        for n in change.added
    ]
    specs = [ShardSpec(s.id, s.weight, s.domain) for s in [*kept, *added]]
    moves = _moves(group, change)
    plan = assign_slots(_plan_of(group), specs, moves, previous.slot_bits)
    shards = {s.id: s for s in [*kept, *added]}
    return shards, _from_plan(group, plan, shards)


def _moves(group: Group, change: LayoutChange) -> dict[int, str]:
    moves: dict[int, str] = {}
    for m in change.moves:
        if m.group != group.name or not 0 <= m.slot < len(group.primary):
            raise PlanningError(
                f"the move of slot {m.slot} of group {m.group!r} does not fit group "
                f"{group.name!r} (slots 0..{len(group.primary) - 1})"
            )
        if group.primary[m.slot].id != m.source:
            raise PlanningError(
                f"slot {m.slot} of group {group.name!r} is owned by "
                f"{group.primary[m.slot].id!r}, not {m.source!r}",
                hint="the change was made for another map version; decide again on this one",
            )
        if m.destination is None or m.slot in moves:
            raise PlanningError(
                f"slot {m.slot} of group {group.name!r} needs exactly one destination shard"
            )
        moves[m.slot] = m.destination
    return moves


def _check_new(previous: ShardMap, group: Group, new: NewShard, old: Mapping[str, Shard]) -> None:
    if new.id in old or any(new.id == s.id for s in previous.shards):
        raise PlanningError(f"cannot add {new.id!r}: the map already has a shard with this id")
    jurisdiction = previous.regions.get(new.region)
    if jurisdiction != group.jurisdiction:
        where = f"in jurisdiction {jurisdiction!r}" if jurisdiction else "not in the map"
        raise PlanningError(
            f"cannot add {new.id!r} in region {new.region!r}: the region is {where}, and group "
            f"{group.name!r} serves {group.jurisdiction!r} (residency fails closed)",
            hint="place new shards only in the group's own regions",
        )


def _plan_of(group: Group) -> GroupPlan:
    return GroupPlan(
        group.positions,
        tuple(s.id for s in group.primary),
        tuple(tuple(s.id for s in column) for column in group.replicas),
    )


def _from_plan(group: Group, plan: GroupPlan, shards: dict[str, Shard]) -> Group:
    return Group(
        group.name,
        group.jurisdiction,
        plan.positions,
        [shards[sid] for sid in plan.primary],
        tuple([shards[sid] for sid in column] for column in plan.replicas),
    )


def _fresh(s: Shard) -> Shard:
    """A copy for the new map (epochs are set on the new map's own objects)."""
    return Shard(s.id, s.group, s.region, s.jurisdiction, s.weight, s.domain, s.epoch)


def _check_unique(shards: dict[str, Shard], groups: list[Group]) -> None:
    seen: dict[str, str] = {}
    for g in groups:
        for s in g.shards():
            if seen.setdefault(s.id, g.name) != g.name:
                raise PlanningError(f"shard id {s.id!r} is used by two groups")


def _slot_sets(groups: Iterable[Group]) -> dict[str, set[tuple[str, int]]]:
    out: dict[str, set[tuple[str, int]]] = {}
    for g in groups:
        for slot, shard in enumerate(g.primary):
            out.setdefault(shard.id, set()).add((g.name, slot))
    return out


def set_epochs(
    shards: list[Shard], groups: list[Group], previous: ShardMap | None, version: int
) -> None:
    """A shard's epoch is the map version in which its slot set last changed.

    So epochs only grow, even for a shard id that is removed and later added again: a fenced
    write made under an old epoch can never match a newer owner's epoch.
    """
    new_sets = _slot_sets(groups)
    old_sets = _slot_sets(previous.groups.values()) if previous else {}
    old_epochs = {s.id: s.epoch for s in previous.shards} if previous else {}
    for shard in shards:
        before = old_epochs.get(shard.id)
        unchanged = before is not None and old_sets.get(shard.id) == new_sets.get(shard.id)
        shard.epoch = before if unchanged else version  # type: ignore[assignment]
