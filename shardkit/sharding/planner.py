"""The slot-table planner: which shard owns each slot of one shard group.

A group (all shards serving one jurisdiction) owns ``2**slot_bits`` slots. The planner turns the
group's shards, their weights and the previous table into a new table such that:

* **weights become quotas** - shard *i* owns exactly its largest-remainder share of the slots, so
  load follows weight as closely as a perfect hash allows;
* **only the slots that must move, move** - every surviving shard keeps
  ``min(previous count, new quota)`` of its previous slots, so adding, removing *any* shard, or
  re-weighting moves exactly ``sum(max(0, old - new))`` slots: the minimum;
* **jump hash is the baseline** - each shard has a *position* (its creation order; a removed shard
  leaves a tombstone so positions never shift) and slot *s* prefers position
  ``jump(h(s), positions)``, re-drawn along a per-slot hash chain while it lands on a tombstone.
  For equal shards the table *is* the jump assignment trimmed to exact quotas, and when a shard is
  appended the slots it takes are the ones jump hash moves to it;
* **replicas sit in distinct failure domains** - replica column *r* of slot *s* is drawn along
  another per-slot chain, weighted by shard weight, among live shards whose failure domain is not
  already used by that slot's primary or earlier replicas.

Everything is a pure function of its inputs: same inputs, same table, on every machine.

:func:`assign_slots` is the other way to make a table: from the previous one and an explicit
list of slot moves (what a load-driven layout decides, see :mod:`shardkit.autoshard`). Exactly the
listed slots change owner; new shards take fresh positions, removed ones leave tombstones, and a
replica entry is kept while it is still valid, so only the replicas that must change, change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import PlanningError
from .hashing import jump_hash, mix64

__all__ = ["GroupPlan", "ShardSpec", "assign_slots", "plan_group", "quotas"]

_CHAIN = 16  # draws along a slot's hash chain before the deterministic fallback
_REPLICA_SALT = 1 << 20


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """One shard as the planner sees it."""

    id: str
    weight: float = 1.0
    domain: str = ""


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """The planned table of one group: positions (with tombstones), primaries and replicas."""

    positions: tuple[str | None, ...]
    primary: tuple[str, ...]
    replicas: tuple[tuple[str, ...], ...]


def quotas(weights: Sequence[float], slots: int) -> list[int]:
    """Largest-remainder apportionment of ``slots`` by ``weights`` (ties go to the lower index)."""
    total = sum(weights)
    exact = [slots * w / total for w in weights]
    base = [int(x) for x in exact]
    short = slots - sum(base)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - base[i]), i))
    for i in order[:short]:
        base[i] += 1
    return base


def plan_group(
    shards: Sequence[ShardSpec],
    slot_bits: int,
    replicas: int = 0,
    previous_positions: Sequence[str | None] | None = None,
    previous_primary: Sequence[str] | None = None,
) -> GroupPlan:
    """Plan one group's slot table; see the module docstring for the guarantees."""
    _check_inputs(shards, slot_bits, replicas)
    positions = _positions(shards, previous_positions)
    by_id = {s.id: s for s in shards}
    alive = [p is not None for p in positions]
    pos_of = {sid: i for i, sid in enumerate(positions) if sid is not None}
    n_slots = 1 << slot_bits
    live = sorted(pos_of.values())
    quota_list = quotas([by_id[positions[p]].weight for p in live], n_slots)  # type: ignore[index]
    quota = dict(zip(live, quota_list, strict=True))
    for p, q in quota.items():
        if q == 0:
            raise PlanningError(
                f"shard {positions[p]!r} gets no slot: its weight is too small for {n_slots} slots",
                hint="raise its weight, or raise hashing.slot_bits",
            )
    hashes = [mix64(s, 0) for s in range(n_slots)]
    baseline = [_draw(h, positions, alive) for h in hashes]
    prev = None
    if previous_primary is not None:
        if len(previous_primary) != n_slots:
            raise PlanningError(
                f"the previous map has {len(previous_primary)} slots in this group, the new one "
                f"{n_slots}",
                hint="slot_bits cannot change in place; build a fresh map and migrate all keys",
            )
        prev = [pos_of.get(sid, -1) for sid in previous_primary]
    owner = _assign(n_slots, baseline, prev, quota, hashes, positions, alive)
    primary = tuple(positions[p] for p in owner)  # type: ignore[misc]
    columns = _replicas(owner, hashes, positions, alive, by_id, replicas)
    return GroupPlan(positions, primary, columns)  # type: ignore[arg-type]


def _check_inputs(shards: Sequence[ShardSpec], slot_bits: int, replicas: int) -> None:
    if not shards:
        raise PlanningError("a shard group needs at least one shard")
    ids = [s.id for s in shards]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise PlanningError(f"shard ids must be unique; repeated: {', '.join(dup)}")
    bad = [s.id for s in shards if not s.weight > 0]
    if bad:
        raise PlanningError(f"shard weights must be > 0; not so for: {', '.join(bad)}")
    if len(shards) > (1 << slot_bits):
        raise PlanningError(f"{len(shards)} shards cannot share {1 << slot_bits} slots")
    domains = {s.domain for s in shards}
    if replicas >= len(domains):
        raise PlanningError(
            f"{replicas} replica(s) need {replicas + 1} distinct failure domains, the group has "
            f"{len(domains)} ({', '.join(sorted(domains))})",
            hint="add a region to the group, lower replicas, or use failure_domain = 'shard'",
        )


def _positions(
    shards: Sequence[ShardSpec], previous: Sequence[str | None] | None
) -> tuple[str | None, ...]:
    wanted = {s.id for s in shards}
    kept = [p if p in wanted else None for p in (previous or ())]
    seen = {p for p in kept if p is not None}
    kept.extend(s.id for s in shards if s.id not in seen)
    return tuple(kept)


def _draw(h: int, positions: Sequence[str | None], alive: Sequence[bool]) -> int:
    """The slot's baseline position: jump hash, re-drawn along the chain past tombstones."""
    n = len(positions)
    p = jump_hash(h, n)
    k = 0
    while not alive[p]:
        k += 1
        if k > _CHAIN:
            return _first_alive(h % n, alive)
        p = jump_hash(mix64(h, k), n)
    return p


def _first_alive(start: int, alive: Sequence[bool]) -> int:
    n = len(alive)
    for i in range(n):
        if alive[(start + i) % n]:
            return (start + i) % n
    raise AssertionError("a group always has a live shard")  # guarded by _check_inputs


def _assign(
    n_slots: int,
    baseline: list[int],
    prev: list[int] | None,
    quota: dict[int, int],
    hashes: list[int],
    positions: Sequence[str | None],
    alive: Sequence[bool],
) -> list[int]:
    owner = [-1] * n_slots
    count = dict.fromkeys(quota, 0)
    if prev is not None:
        _keep_previous(owner, count, baseline, prev, quota)
    for s in range(n_slots):
        p = baseline[s]
        if owner[s] < 0 and count[p] < quota[p]:
            owner[s] = p
            count[p] += 1
    _fill(owner, count, quota, hashes, positions, alive)
    return owner


def _keep_previous(
    owner: list[int],
    count: dict[int, int],
    baseline: list[int],
    prev: list[int],
    quota: dict[int, int],
) -> None:
    """Keep previous owners up to quota, so exactly ``sum(max(0, old - quota))`` slots move.

    Which slots an over-quota shard gives up decides whether the movement follows jump hash.
    It keeps first the slots that agree with the baseline, then the others in order of how full
    their baseline shard already is: the slots last in line, given up first, are the ones the
    baseline sends to the emptiest shards - on an append, the new shard's jump-hash slots.
    """
    n_slots = len(owner)
    for s in range(n_slots):
        p = prev[s]
        if p >= 0 and p == baseline[s] and count[p] < quota[p]:
            owner[s] = p
            count[p] += 1
    fullness = {p: count[p] / quota[p] for p in quota}
    rest = [s for s in range(n_slots) if owner[s] < 0 and prev[s] >= 0]
    rest.sort(key=lambda s: (-fullness[baseline[s]], s))
    for s in rest:
        p = prev[s]
        if count[p] < quota[p]:
            owner[s] = p
            count[p] += 1


def _fill(
    owner: list[int],
    count: dict[int, int],
    quota: dict[int, int],
    hashes: list[int],
    positions: Sequence[str | None],
    alive: Sequence[bool],
) -> None:
    """Give the still-free slots to shards under quota, following each slot's chain first."""
    n = len(positions)
    under = [p for p in sorted(quota) if count[p] < quota[p]]
    cursor = 0
    for s, current in enumerate(owner):
        if current >= 0:
            continue
        for k in range(1, _CHAIN + 1):
            p = jump_hash(mix64(hashes[s], k), n)
            if alive[p] and count[p] < quota[p]:
                break
        else:
            while count[under[cursor]] >= quota[under[cursor]]:
                cursor += 1
            p = under[cursor]
        owner[s] = p
        count[p] += 1


def assign_slots(
    previous: GroupPlan,
    shards: Sequence[ShardSpec],
    moves: Mapping[int, str],
    slot_bits: int,
) -> GroupPlan:
    """The previous table with exactly ``moves`` (slot -> new owner) applied.

    ``shards`` are the group's shards afterwards: every shard of ``previous`` that is not among
    them is removed (its position becomes a tombstone, and every one of its slots must be in
    ``moves``); a shard not in ``previous.positions`` is new and takes the next position, in the
    order given. Every shard must own at least one slot afterwards. Replica columns keep each
    entry that is still live and in a failure domain the slot does not use yet; only the others
    are drawn again, as :func:`plan_group` draws them.
    """
    n_slots = 1 << slot_bits
    if len(previous.primary) != n_slots:
        raise PlanningError(
            f"the previous table has {len(previous.primary)} slots, slot_bits {slot_bits} "
            f"means {n_slots}",
            hint="slot_bits cannot change in place",
        )
    _check_inputs(shards, slot_bits, len(previous.replicas))
    by_id = {s.id: s for s in shards}
    known = {p for p in previous.positions if p is not None}
    positions = tuple(p if p in by_id else None for p in previous.positions) + tuple(
        s.id for s in shards if s.id not in known
    )
    primary = list(previous.primary)
    for slot, owner in sorted(moves.items()):
        if not 0 <= slot < n_slots:
            raise PlanningError(f"slot {slot} is outside 0..{n_slots - 1}")
        if owner not in by_id:
            raise PlanningError(
                f"slot {slot} moves to {owner!r}, which is not a shard of the group after the "
                "change",
                hint="add the shard in the same change, or move the slot to a live shard",
            )
        primary[slot] = owner
    _check_owned(primary, by_id)
    alive = [p is not None for p in positions]
    pos_of = {sid: i for i, sid in enumerate(positions) if sid is not None}
    owner_pos = [pos_of[sid] for sid in primary]
    hashes = [mix64(s, 0) for s in range(n_slots)]
    kept = [[pos_of.get(sid, -1) for sid in column] for column in previous.replicas]
    columns = _replicas(owner_pos, hashes, positions, alive, by_id, len(kept), kept)
    return GroupPlan(positions, tuple(primary), columns)


def _check_owned(primary: list[str], by_id: dict[str, ShardSpec]) -> None:
    orphaned = sorted({sid for sid in primary if sid not in by_id})
    if orphaned:
        slot = next(i for i, sid in enumerate(primary) if sid == orphaned[0])
        raise PlanningError(
            f"shard {orphaned[0]!r} is removed but still owns slots (slot {slot} first)",
            hint="move every slot of a removed shard to a live shard in the same change",
        )
    idle = sorted(set(by_id) - set(primary))
    if idle:
        raise PlanningError(
            f"shard {idle[0]!r} would own no slot",
            hint="give it at least one slot, or remove it",
        )


def _replicas(
    owner: list[int],
    hashes: list[int],
    positions: Sequence[str | None],
    alive: Sequence[bool],
    by_id: dict[str, ShardSpec],
    replicas: int,
    previous: list[list[int]] | None = None,
) -> tuple[tuple[str, ...], ...]:
    """Replica columns; with ``previous`` (positions, -1 for a removed shard), an entry that is
    still live and in an unused failure domain is kept."""
    n = len(positions)
    domain = [by_id[sid].domain if sid is not None else "" for sid in positions]
    top = max(s.weight for s in by_id.values())
    # A drawn shard is accepted with probability weight/top: a weighted, stable choice.
    accept = [
        int(by_id[sid].weight / top * 0xFFFFFFFF) if sid is not None else -1 for sid in positions
    ]
    columns: list[list[int]] = []
    for r in range(1, replicas + 1):
        column = []
        old = previous[r - 1] if previous else None
        for s, p0 in enumerate(owner):
            used = {domain[p0]} | {domain[c[s]] for c in columns}
            if old is not None and old[s] >= 0 and domain[old[s]] not in used:
                column.append(old[s])
            else:
                column.append(_draw_replica(hashes[s], r, used, domain, alive, accept, n))
        columns.append(column)
    return tuple(tuple(positions[p] for p in col) for col in columns)  # type: ignore[misc]


def _draw_replica(
    h: int,
    r: int,
    used: set[str],
    domain: list[str],
    alive: Sequence[bool],
    accept: list[int],
    n: int,
) -> int:
    for k in range(4 * _CHAIN):
        x = mix64(h, _REPLICA_SALT * r + k)
        p = jump_hash(x, n)
        if alive[p] and domain[p] not in used and (x & 0xFFFFFFFF) <= accept[p]:
            return p
    for i in range(n):
        p = (h + i) % n
        if alive[p] and domain[p] not in used:
            return p
    raise AssertionError("failure domains are counted by _check_inputs")
