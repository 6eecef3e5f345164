"""The decision function: (map, load windows, policy, recent decisions) -> a layout change or none.

Pure: same inputs, same :class:`Decision`, with reasons a person can read. Loads are in target
units (1.0 = the policy's target per shard); each window's per-slot estimate is projected onto
the *current* table, so a shard's load in an older window is what its slots carried then. One
round, in order (docs/autoshard.md has the rules with their reasons):

1. **bounds** - fewer live shards than ``min_shards``: add shards; more than ``max_shards``:
   drain the coldest.
2. **split** (not in cooldown) - a shard above ``split_above`` in each of the last
   ``split_windows`` windows is *hot*. If the other shards' headroom below the target covers the
   hot shards' excess, rebalancing is enough; otherwise the deficit (in shards) is added. Each new
   shard goes to the hot shard with the highest load per part; a hot shard's slots carrying at
   least ``hot_slot_share`` of the target alone are *isolated* on new shards first, and the rest
   of a new shard's slots are chosen by load so that the parts carry equal load.
3. **merge** (not in cooldown, no hot shard, nothing draining) - when in each of the last
   ``merge_windows`` windows the group's load would fit in k fewer shards at no more than
   ``merge_below`` each, the k coldest shards start *draining* (never below ``min_shards``).
4. **drain** - draining shards' slots move, heaviest first, to the least loaded other shards; a
   shard left empty is removed. Draining goes on in later rounds (the decision carries the set),
   and stops if a shard turns hot again.
5. **rebalance** - when the most loaded shard exceeds ``rebalance_above`` x the mean, or the
   least loaded is below mean / ``rebalance_above``, load moves from the most to the least loaded
   until all are within half that band, with whatever budget is left - unless every shard is
   below ``merge_below`` (cold shards gain nothing from moving keys between them).

Every round moves at most ``churn_budget`` of the group's slots; shards holding a single slot
cannot be split further and are left out of the hot set and of balancing.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PlanningError
from ..sharding.layout import LayoutChange
from ..sharding.shardmap import ShardMap
from .load import LoadWindow
from .plan import WorkingLayout, ceil_units
from .policy import Policy

__all__ = ["STRUCTURAL", "Decision", "Loads", "decide"]

STRUCTURAL = ("split", "isolate", "merge", "grow", "shrink")


@dataclass(frozen=True)
class Decision:
    """What one round decided for one group: ``actions`` (empty: no change), the change, why,
    and the shards still draining (the next round carries on with them)."""

    group: str
    at: float
    actions: tuple[str, ...]
    change: LayoutChange | None
    reasons: tuple[str, ...]
    draining: tuple[str, ...] = ()

    @property
    def structural(self) -> bool:
        """Whether this round started a split, isolation or merge (what cooldown counts)."""
        return any(a in STRUCTURAL for a in self.actions)

    @property
    def moved(self) -> int:
        return len(self.change.moves) if self.change else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "at": self.at,
            "actions": list(self.actions),
            "reasons": list(self.reasons),
            "draining": list(self.draining),
            "change": self.change.to_dict() if self.change else None,
        }


class Loads:
    """The windows' per-slot loads in target units, and per-shard loads on a table."""

    def __init__(self, windows: Sequence[LoadWindow], policy: Policy) -> None:
        self.per_window = [policy.utilization(*w.slot_rates()) for w in windows]

    def __len__(self) -> int:
        return len(self.per_window)

    def slot_mean(self, last: int) -> np.ndarray:
        return np.mean(self.per_window[-last:], axis=0)

    def shard_series(self, owner: np.ndarray, shards: int, last: int) -> np.ndarray:
        """(windows, shards): each shard's load in each of the last ``last`` windows."""
        return np.array(
            [np.bincount(owner, weights=u, minlength=shards) for u in self.per_window[-last:]]
        )

    def totals(self, last: int) -> list[float]:
        return [float(u.sum()) for u in self.per_window[-last:]]


def decide(
    shard_map: ShardMap,
    windows: Sequence[LoadWindow],
    policy: Policy,
    history: Sequence[Decision] = (),
    *,
    now: float,
) -> Decision:
    """One round for ``policy.group``; see the module docstring for the rules."""
    if policy.group not in shard_map.groups:
        raise PlanningError(
            f"group {policy.group!r} is not in map version {shard_map.version}",
            hint=f"groups in the map: {', '.join(shard_map.groups)}",
        )
    mine = [d for d in history if d.group == policy.group]
    if policy.mode == "off":
        return Decision(policy.group, now, (), None, ("autoshard is off for this group",))
    windows = [w for w in windows if w.group == policy.group]
    if not windows:
        return Decision(policy.group, now, (), None, ("no load window yet",))
    loads = Loads(windows, policy)
    recent = min(policy.split_windows, len(loads))
    budget = policy.budget(shard_map.slot_count)
    layout = WorkingLayout(shard_map, policy, loads.slot_mean(recent), budget)
    return _Round(layout, loads, policy, mine, now).run()


class _Round:
    def __init__(
        self,
        layout: WorkingLayout,
        loads: Loads,
        policy: Policy,
        history: Sequence[Decision],
        now: float,
    ) -> None:
        self.w = layout
        self.loads = loads
        self.p = policy
        self.now = now
        self.actions: list[str] = []
        self.reasons: list[str] = []
        last = history[-1] if history else None
        self.draining = {
            layout.index(s) for s in (last.draining if last else ()) if s in layout.ids
        }
        structural = [d.at for d in history if d.structural]
        self.since = now - max(structural) if structural else float("inf")

    # -- the round ------------------------------------------------------------------------------

    def run(self) -> Decision:
        start = len(self.w.ids)
        hot = self._hot()
        if not self._bounds():
            cooling = self.since < self.p.cooldown_s
            if hot and cooling:
                self._say(
                    f"cooldown: the last split or merge was {self.since:.0f} s ago "
                    f"(< cooldown_s {self.p.cooldown_s:g}); no new split yet"
                )
            elif hot:
                self._split(hot)
            elif not cooling and not self.draining:
                self._merge()
        if self.draining and hot:
            self._say(
                "merge cancelled: "
                + ", ".join(self.w.ids[i] for i in sorted(self.draining))
                + " keep their remaining slots, as "
                + ", ".join(self.w.ids[h] for h in hot)
                + " turned hot"
            )
            self.draining = set()
        self._drain()
        self._rebalance()
        return self._decision(start)

    def _decision(self, start: int) -> Decision:
        change = self.w.change()
        still = tuple(sorted(self.w.ids[i] for i in self.draining if self.w.slot_counts()[i] > 0))
        if change is not None:
            budget = self.p.budget(self.w.slots)
            after = start + len(change.added) - len(change.removed)
            self._say(
                f"{len(change.moves):,} of {self.w.slots:,} slots move "
                f"(churn budget {budget:,} = {self.p.churn_budget:.0%}); shards {start} -> "
                f"{after}"
            )
        elif not self.reasons:
            self._say(self._steady())
        return Decision(
            self.p.group, self.now, tuple(self.actions), change, tuple(self.reasons), still
        )

    def _steady(self) -> str:
        loads = self.w.shard_loads()
        mean = float(np.mean(loads))
        return (
            f"no change: {len(loads)} shards between {loads.min():.2f} and {loads.max():.2f} x "
            f"target (mean {mean:.2f}); nothing held above split_above {self.p.split_above:g} "
            f"for {self.p.split_windows} windows, nor below merge_below {self.p.merge_below:g} "
            f"for {self.p.merge_windows}"
        )

    def _say(self, text: str, action: str | None = None) -> None:
        self.reasons.append(text)
        if action and action not in self.actions:
            self.actions.append(action)

    # -- rules ----------------------------------------------------------------------------------

    def _splittable(self) -> list[int]:
        counts = self.w.slot_counts()
        return [i for i in range(len(self.w.ids)) if counts[i] > 1 and i not in self.draining]

    def _hot(self) -> list[int]:
        """Shards above split_above in each of the last split_windows windows, hottest first."""
        n = self.p.split_windows
        if len(self.loads) < n:
            self._say(f"collecting load: {len(self.loads)} of {n} windows for a split decision")
            return []
        series = self.loads.shard_series(self.w.owner, len(self.w.ids), n)
        counts = self.w.slot_counts()
        hot = [i for i in self._splittable() if (series[:, i] > self.p.split_above).all()]
        for i in np.flatnonzero((series > self.p.split_above).all(axis=0)):
            if counts[i] == 1:
                slot = int(np.flatnonzero(self.w.owner == i)[0])
                self._say(
                    f"{self.w.ids[i]} holds only slot {slot} at {series[-1, i]:.2f} x target: "
                    "a single slot cannot be split further"
                )
        loads = series.mean(axis=0)
        return sorted(hot, key=lambda i: (-loads[i], i))

    def _live(self) -> int:
        return len(self.w.ids) - len(self.draining)

    def _bounds(self) -> bool:
        live = self._live()
        if live < self.p.min_shards:
            self._grow(self.p.min_shards - live)
            return True
        if live > self.p.max_shards:
            self._shrink(live - self.p.max_shards)
            return True
        return False

    def _grow(self, k: int) -> None:
        made = []
        share = max(1, self.w.budget // k)  # each new shard its part of the budget
        for _ in range(k):
            loads = self.w.shard_loads()
            givers = self._splittable()
            if not givers:
                break
            parent = max(givers, key=lambda i: (loads[i], -i))
            own = self.w.slots_of(parent)
            amount = float(np.mean(loads)) * len(loads) / (len(loads) + 1)
            first = self.w.pick(own, amount, min(share, len(own) - 1))
            new = self.w.add_shard(parent, first if len(first) else own[-1:])
            if new is None:
                break
            made.append(self.w.ids[new])
        self._say(
            f"{self._live() - len(made)} live shards < min_shards {self.p.min_shards}: added "
            f"{', '.join(made) or 'none (no budget)'}",
            "grow",
        )

    def _shrink(self, k: int) -> None:
        victims = self._coldest(k)
        self.draining |= set(victims)
        self._say(
            f"{self._live() + k} live shards > max_shards {self.p.max_shards}: draining "
            + ", ".join(self.w.ids[v] for v in victims),
            "shrink",
        )

    def _split(self, hot: list[int]) -> None:
        loads = self.w.shard_loads()
        deficit, headroom = self._deficit(hot, loads)
        names = ", ".join(f"{self.w.ids[h]} {loads[h]:.2f}" for h in hot)
        held = (
            f"hot: {names} x target, above split_above {self.p.split_above:g} in each of the "
            f"last {self.p.split_windows} windows"
        )
        if deficit <= 0:
            self._say(
                f"{held}; the other shards have {headroom:.2f} x target of headroom, enough for "
                "the excess: rebalancing instead of splitting"
            )
            return
        room = self.p.max_shards - self._live()
        if room <= 0:
            self._say(f"{held}; at max_shards {self.p.max_shards}: rebalancing only")
            return
        want = min(ceil_units(deficit), room)
        parts = self._allocate(hot, loads, want)
        self._say(
            f"{held}; the group is short of {deficit:.2f} x target beyond the others' headroom: "
            f"adding {want} shard(s)"
            + (f" (max_shards {self.p.max_shards} caps it)" if want < ceil_units(deficit) else "")
        )
        # Every new shard is made now, each with its share of the budget; rebalancing fills
        # them in the next rounds if the budget is short. When more shards are hot than get a
        # new one, half the budget stays for levelling all of them down in this round.
        reserve = self.w.budget // 2 if len(hot) > want else 0
        share = max(1, (self.w.budget - reserve) // want)
        for h in hot:
            if parts.get(h):
                self._split_one(h, parts[h], share)

    def _deficit(self, hot: list[int], loads: np.ndarray) -> tuple[float, float]:
        """Excess of the hot shards over the target, minus the headroom below the target of the
        shards that are neither hot nor draining (target units)."""
        excess = float(sum(loads[h] - 1.0 for h in hot))
        others = [i for i in range(len(self.w.ids)) if i not in hot and i not in self.draining]
        headroom = float(sum(max(0.0, 1.0 - loads[i]) for i in others))
        return excess - headroom, headroom

    def _allocate(self, hot: list[int], loads: np.ndarray, want: int) -> dict[int, int]:
        """New shards per hot shard: each goes where the load per part is highest."""
        parts = dict.fromkeys(hot, 0)
        heap = [(-loads[h], h) for h in hot]
        heapq.heapify(heap)
        for _ in range(want):
            _, h = heapq.heappop(heap)
            parts[h] += 1
            heapq.heappush(heap, (-loads[h] / (parts[h] + 1), h))
        return parts

    def _split_one(self, h: int, new: int, share: int) -> None:
        parent = self.w.ids[h]
        own = self.w.slots_of(h)
        isolated = []
        if self.p.isolate_hot_slots:
            for slot in own[: min(new, len(own) - 1)]:
                if self.w.load[slot] < self.p.hot_slot_share:
                    break
                made = self.w.add_shard(h, np.array([slot]))
                if made is None:
                    break
                isolated.append((int(slot), self.w.ids[made]))
        for slot, sid in isolated:
            self._say(
                f"slot {slot} carries {self.w.load[slot]:.2f} x target alone (hot_slot_share "
                f"{self.p.hot_slot_share:g}): isolated from {parent} on {sid} "
                f"({self.w.regions[self.w.index(sid)]})",
                "isolate",
            )
        # What is left on h needs only as many more parts as its own load asks for.
        left = float(self.w.load[self.w.owner == h].sum())
        rest = min(new - len(isolated), ceil_units(left) - 1)
        if rest > 0:
            self._share(h, rest, share)

    def _share(self, h: int, new: int, share: int) -> None:
        """Split what is left on ``h`` into ``new + 1`` parts of equal load, by slot load; each
        new part takes at most ``share`` slots now."""
        quota = float(self.w.load[self.w.slots_of(h)].sum()) / (new + 1)
        for _ in range(new):
            own = self.w.slots_of(h)
            if len(own) < 2:
                break
            wanted = self.w.pick(own, quota, len(own) - 1, spend=False)
            if len(wanted) == 0:
                wanted = own[-1:]  # every slot is heavier than a part: take the lightest
            made = self.w.add_shard(h, wanted[: min(share, self.w.budget)])
            if made is None:
                self._say("churn budget spent: the remaining parts follow by rebalancing")
                break
            mine = self.w.owner == made
            short = len(wanted) - int(mine.sum())
            self._say(
                f"split {self.w.ids[h]} by load: {self.w.ids[made]} ({self.w.regions[made]}) "
                f"takes {int(mine.sum()):,} slots carrying {self.w.load[mine].sum():.2f} x "
                f"target (a part is {quota:.2f})"
                + (f"; {short:,} more follow by rebalancing" if short > 0 else ""),
                "split",
            )

    def _merge(self) -> None:
        n = self.p.merge_windows
        if len(self.loads) < n:
            return
        totals = self.loads.totals(n)
        live = self._live()
        k = 0
        while live - (k + 1) >= self.p.min_shards and all(
            t / (live - k - 1) <= self.p.merge_below for t in totals
        ):
            k += 1
        while k and not self._packs(self._coldest(k)):
            k -= 1  # the coldest shards' slots would not fit under the target elsewhere
        if k == 0:
            return
        victims = self._coldest(k)
        self.draining |= set(victims)
        self._say(
            f"the group's load peaked at {max(totals):.2f} x target over the last {n} windows: "
            f"it fits in {live - k} shards at <= merge_below {self.p.merge_below:g} each; "
            f"merging the {k} coldest: " + ", ".join(self.w.ids[v] for v in victims),
            "merge",
        )

    def _packs(self, victims: list[int]) -> bool:
        """Whether the victims' slots, heaviest first onto the least loaded other shard (as
        draining moves them), leave every shard at or below the target."""
        loads = self.w.shard_loads()
        heap = [
            (float(loads[i]), i)
            for i in range(len(self.w.ids))
            if i not in victims and i not in self.draining
        ]
        if not heap:
            return False
        heapq.heapify(heap)
        slots = np.concatenate([self.w.slots_of(v) for v in victims])
        for value in np.sort(self.w.load[slots])[::-1]:
            load, i = heapq.heappop(heap)
            if load + value > 1.0 + 1e-9:
                return False
            heapq.heappush(heap, (load + float(value), i))
        return True

    def _coldest(self, k: int) -> list[int]:
        loads = self.w.shard_loads()
        live = [i for i in range(len(self.w.ids)) if i not in self.draining]
        return sorted(live, key=lambda i: (loads[i], self.w.ids[i]))[:k]

    def _drain(self) -> None:
        if not self.draining:
            return
        receivers = [i for i in range(len(self.w.ids)) if i not in self.draining]
        before = self.w.slot_counts()
        moved = self.w.drain(sorted(self.draining), receivers)
        after = self.w.slot_counts()
        gone = [self.w.ids[v] for v in sorted(self.draining) if after[v] == 0]
        left = int(sum(after[v] for v in self.draining))
        if moved or gone:
            self._say(
                f"drain: {moved:,} slots from "
                + ", ".join(self.w.ids[v] for v in sorted(self.draining) if before[v])
                + (f"; removed {', '.join(gone)}" if gone else "")
                + (f"; {left:,} slots left to drain next round" if left else ""),
                "drain",
            )

    def _rebalance(self) -> None:
        """Balance the shards that can give or take: all but the draining ones and the shards
        whose single slot is a hot one (nothing can even those out)."""
        counts = self.w.slot_counts()
        loads = self.w.shard_loads()
        active = [
            i
            for i in range(len(self.w.ids))
            if i not in self.draining and not (counts[i] == 1 and loads[i] >= self.p.hot_slot_share)
        ]
        if len(active) < 2 or self.w.budget <= 0:
            return
        mean = float(np.mean(loads[active]))
        high, low = float(loads[active].max()), float(loads[active].min())
        above = self.p.rebalance_above
        if mean <= 0 or (high <= above * mean and low * above >= mean):
            return
        if high < self.p.merge_below:
            return  # every shard is cold: moving keys between them gains nothing
        moved = self.w.rebalance(active, 1 + (above - 1) / 2)
        if moved:
            after = self.w.shard_loads()[active]
            self._say(
                f"rebalance: loads {low:.2f}..{high:.2f} x target around a mean of {mean:.2f} "
                f"(outside rebalance_above {above:g}); moved {moved:,} slots by load, now "
                f"{after.min():.2f}..{after.max():.2f}",
                "rebalance",
            )
