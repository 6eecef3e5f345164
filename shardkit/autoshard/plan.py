"""One group's slot table while a decision edits it: the moves every policy is built from.

:class:`WorkingLayout` holds the table as an array (slot -> shard index), each slot's estimated
load (in target units) and what is left of the round's churn budget. Policies - shardkit's own
(:mod:`.decide`) and the baselines (:mod:`.baselines`) - only call its operations, so they all
obey the same hard rules:

* a move never exceeds the budget, and the change lists exactly the slots whose owner differs
  from the map's (a slot moved away and back is no move);
* a new shard goes only to one of the group's own regions (residency), the one with the fewest
  of the group's shards (ties: the parent's region, then the configured order), and gets an id
  from :func:`shardkit.sharding.layout.next_shard_id`;
* a new shard gets its first slot when it is made, and moves never take a shard's last slot
  except on purpose (draining), so no shard ends up empty by accident;
* slots are chosen by load: :meth:`pick` takes the heaviest slots that still fit in the amount
  of load to move (ties to the lower slot number), so few slots carry much load.
"""

from __future__ import annotations

import bisect
import heapq
import math
import weakref
from collections.abc import Sequence

import numpy as np

from ..sharding.diff import SlotMove
from ..sharding.layout import LayoutChange, NewShard, next_shard_id
from ..sharding.shardmap import ShardMap
from .policy import Policy

__all__ = ["WorkingLayout", "group_table", "owner_index"]

_EPS = 1e-12
_TABLES: weakref.WeakKeyDictionary[ShardMap, dict[str, tuple[list[str], list[str], np.ndarray]]]
_TABLES = weakref.WeakKeyDictionary()
_OWNERS: dict[int, tuple[Sequence[str], list[str], np.ndarray]] = {}


def group_table(shard_map: ShardMap, group: str) -> tuple[list[str], list[str], np.ndarray]:
    """(live shard ids sorted, their regions, slot -> index into the ids) of a map's group;
    computed once per map (maps are immutable)."""
    per_map = _TABLES.setdefault(shard_map, {})
    found = per_map.get(group)
    if found is None:
        g = shard_map.groups[group]
        live = g.shards()
        index = {s.id: i for i, s in enumerate(live)}
        owner = np.fromiter((index[s.id] for s in g.primary), np.int64, len(g.primary))
        found = per_map[group] = ([s.id for s in live], [s.region for s in live], owner)
    return found


def owner_index(owners: Sequence[str], extra: Sequence[str] = ()) -> tuple[list[str], np.ndarray]:
    """(sorted ids of ``owners`` and ``extra``, slot -> index into them) for a slot table given
    as ids; the last few tables are remembered, as windows of one map share theirs."""
    found = _OWNERS.get(id(owners))
    if found is not None and found[0] is owners and set(extra) <= set(found[1]):
        return found[1], found[2]
    ids = sorted(set(owners) | set(extra))
    index = {sid: i for i, sid in enumerate(ids)}
    owner = np.fromiter((index[s] for s in owners), np.int64, len(owners))
    if len(_OWNERS) >= 16:
        _OWNERS.pop(next(iter(_OWNERS)))
    _OWNERS[id(owners)] = (owners, ids, owner)
    return ids, owner


class WorkingLayout:
    def __init__(
        self, shard_map: ShardMap, policy: Policy, slot_load: np.ndarray, budget: int
    ) -> None:
        ids, regions, owner = group_table(shard_map, policy.group)
        self.map = shard_map
        self.group = shard_map.groups[policy.group]
        self.policy = policy
        self.ids: list[str] = list(ids)
        self.regions: list[str] = list(regions)
        self.original = owner
        self.owner = owner.copy()
        self.load = np.asarray(slot_load, dtype=float)
        self.budget = budget
        self.added: list[NewShard] = []

    # -- views ----------------------------------------------------------------------------------

    @property
    def slots(self) -> int:
        return len(self.owner)

    def shard_loads(self) -> np.ndarray:
        return np.bincount(self.owner, weights=self.load, minlength=len(self.ids))

    def slot_counts(self) -> np.ndarray:
        return np.bincount(self.owner, minlength=len(self.ids))

    def slots_of(self, shard: int) -> np.ndarray:
        """The shard's slots, heaviest first (ties: lower slot first)."""
        idx = np.flatnonzero(self.owner == shard)
        return idx[np.lexsort((idx, -self.load[idx]))]

    def index(self, shard_id: str) -> int:
        return self.ids.index(shard_id)

    # -- operations -----------------------------------------------------------------------------

    def pick(
        self, candidates: np.ndarray, amount: float, limit: int, *, spend: bool = True
    ) -> np.ndarray:
        """Greedy by load: walk ``candidates`` (heaviest first) and take each slot that still
        fits in ``amount``, at most ``limit`` slots (and, unless ``spend=False`` asks what would
        be taken without it, no more than the budget)."""
        limit = min(limit, self.budget) if spend else limit
        if limit <= 0 or amount <= _EPS or len(candidates) == 0:
            return candidates[:0]
        vals = self.load[candidates]
        neg = (-vals).tolist()  # ascending, for bisect
        taken: list[int] = []
        left = amount
        i = bisect.bisect_left(neg, -left - _EPS)
        while i < len(neg) and len(taken) < limit:
            taken.append(i)
            left -= vals[i]
            i = bisect.bisect_left(neg, -left - _EPS, lo=i + 1)
        return candidates[np.array(taken, dtype=np.int64)]

    def move(self, slots: np.ndarray, dest: int) -> int:
        """Give ``slots`` to shard ``dest``; returns how many changed owner (budget is spent by
        that count)."""
        slots = slots[self.owner[slots] != dest][: self.budget]
        self.owner[slots] = dest
        self.budget -= len(slots)
        return len(slots)

    def add_shard(self, parent: int | None, first: np.ndarray) -> int | None:
        """A new shard that takes the slots ``first`` (at least one) now; None when the budget
        cannot pay for even one slot."""
        if self.budget <= 0 or len(first) == 0:
            return None
        region = self._region_for(parent)
        sid = next_shard_id(self.group, [s.id for s in self.map.shards], len(self.added))
        domain = region if self.policy.failure_domain == "region" else sid
        self.added.append(NewShard(sid, region, domain))
        self.ids.append(sid)
        self.regions.append(region)
        self.move(first, len(self.ids) - 1)
        return len(self.ids) - 1

    def _region_for(self, parent: int | None) -> str:
        counts = self.slot_counts()
        live = {r: 0 for r in self.policy.regions}
        for i, region in enumerate(self.regions):
            if counts[i] > 0 and region in live:
                live[region] += 1
        order = list(self.policy.regions)
        first = self.regions[parent] if parent is not None else None
        return min(order, key=lambda r: (live[r], r != first, order.index(r)))

    def rebalance(self, active: Sequence[int], settle: float) -> int:
        """Weighted move among ``active`` shards, within the budget, in two steps: the most
        loaded shards are first levelled down *together* (to the lowest level the budget
        reaches, never below ``settle`` x the mean), each slot going to the least loaded shard;
        then load moves pairwise from the most to the least loaded shard until every one is
        within ``settle`` x the mean. Levelling first spends a short budget on every hot shard,
        not all of it on the hottest."""
        active = list(active)
        if len(active) < 2:
            return 0
        return self._level(active, settle) + self._pairwise(active, settle)

    def _level(self, active: list[int], settle: float) -> int:
        loads = self.shard_loads()
        counts = self.slot_counts()
        mean = float(np.mean(loads[active]))
        givers = [i for i in active if loads[i] > settle * mean and counts[i] > 1]
        if mean <= _EPS or not givers:
            return 0
        level = self._reachable_level(givers, loads, counts, settle * mean)
        takers = [(float(loads[j]), j) for j in active if loads[j] < mean]
        heapq.heapify(takers)
        moved = 0
        for i in sorted(givers, key=lambda i: (-loads[i], i)):
            own = self.slots_of(i)
            for slot in self.pick(own, float(loads[i]) - level, len(own) - 1):
                if not takers or takers[0][0] + self.load[slot] > mean + _EPS:
                    return moved
                load, j = heapq.heappop(takers)
                moved += self.move(np.array([slot]), j)
                heapq.heappush(takers, (load + float(self.load[slot]), j))
        return moved

    def _reachable_level(
        self, givers: list[int], loads: np.ndarray, counts: np.ndarray, floor: float
    ) -> float:
        """The lowest level, not below ``floor``, to which the givers can all come down with
        the budget (slots counted at each giver's mean slot load)."""
        per_slot = {i: loads[i] / counts[i] for i in givers}

        def slots(level: float) -> float:
            return sum(max(0.0, loads[i] - level) / per_slot[i] for i in givers)

        if slots(floor) <= self.budget:
            return floor
        lo, hi = floor, float(max(loads[i] for i in givers))
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if slots(mid) > self.budget else (lo, mid)
        return hi

    def _pairwise(self, active: list[int], settle: float) -> int:
        moved = 0
        stuck: set[int] = set()
        while self.budget > 0:
            loads = self.shard_loads()
            mean = float(np.mean(loads[active]))
            givers = [i for i in active if i not in stuck]
            if mean <= _EPS or not givers:
                break
            hot = max(givers, key=lambda i: (loads[i], -i))
            cold = min(active, key=lambda i: (loads[i], i))
            if hot == cold or (loads[hot] <= settle * mean and loads[cold] * settle >= mean):
                break
            amount = min(loads[hot] - mean, mean - loads[cold])
            own = self.slots_of(hot)
            chosen = self.pick(own, amount, len(own) - 1)
            if len(chosen) == 0:
                stuck.add(hot)
                continue
            moved += self.move(chosen, cold)
        return moved

    def drain(self, victims: Sequence[int], receivers: Sequence[int]) -> int:
        """Move the victims' slots, heaviest first, each to the receiver with the least load
        (within the budget); a victim left without slots is removed by :meth:`change`."""
        if not receivers:
            return 0
        loads = self.shard_loads()
        moved = 0
        for v in sorted(victims):
            for slot in self.slots_of(v):
                if self.budget <= 0:
                    return moved
                dest = min(receivers, key=lambda i: (loads[i], i))
                moved += self.move(np.array([slot]), dest)
                loads[dest] += self.load[slot]
                loads[v] -= self.load[slot]
        return moved

    # -- result ---------------------------------------------------------------------------------

    def change(self) -> LayoutChange | None:
        """The edit as a :class:`LayoutChange` (None: nothing changed)."""
        changed = np.flatnonzero(self.owner != self.original)
        counts = self.slot_counts()
        removed = tuple(
            sorted(self.ids[i] for i in range(len(self.ids) - len(self.added)) if counts[i] == 0)
        )
        if len(changed) == 0 and not removed:
            return None
        moves = tuple(
            SlotMove(self.group.name, int(s), self.ids[self.original[s]], self.ids[self.owner[s]])
            for s in changed
        )
        return LayoutChange(self.group.name, tuple(self.added), removed, moves)

    def moved(self) -> int:
        return int(np.count_nonzero(self.owner != self.original))


def ceil_units(x: float) -> int:
    """``ceil`` that ignores float dust: 2.0000000001 -> 2."""
    return math.ceil(x - 1e-9)
