"""Baseline policies for the simulator: what shardkit's policy is compared with.

Each has the signature of :func:`.decide.decide` and edits the layout only through
:class:`.plan.WorkingLayout`, so residency and slot accounting are the same for all:

* ``static`` - the layout never changes (today's fixed shard count);
* ``split-only`` - DynamoDB-style split for heat: a shard above ``split_above`` for
  ``split_windows`` windows is split in two at its load median (by slot load), at once, with no
  churn budget and no cooldown; nothing is ever merged back;
* ``slicer`` - Slicer-style weighted move without hysteresis: every window the shard count is
  set to what the latest window's load needs (``ceil(load / target)``, within min..max, a removed
  shard's slots all move at once), then load moves from the most to the least loaded shard
  within the churn budget whenever that narrows the spread by more than a few percent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..sharding.shardmap import ShardMap
from .decide import Decision, Loads, decide
from .load import LoadWindow
from .plan import WorkingLayout, ceil_units
from .policy import Policy

__all__ = ["BASELINES", "POLICIES", "Decider"]

Decider = Callable[..., Decision]


def static(
    shard_map: ShardMap,
    windows: Sequence[LoadWindow],
    policy: Policy,
    history: Sequence[Decision] = (),
    *,
    now: float,
) -> Decision:
    return Decision(policy.group, now, (), None, ("static layout: never changes",))


def split_only(
    shard_map: ShardMap,
    windows: Sequence[LoadWindow],
    policy: Policy,
    history: Sequence[Decision] = (),
    *,
    now: float,
) -> Decision:
    loads = Loads([w for w in windows if w.group == policy.group], policy)
    n = policy.split_windows
    if len(loads) < n:
        return Decision(policy.group, now, (), None, ("collecting load",))
    layout = WorkingLayout(shard_map, policy, loads.slot_mean(n), shard_map.slot_count)
    series = loads.shard_series(layout.owner, len(layout.ids), n)
    counts = layout.slot_counts()
    reasons = []
    for i in range(len(series[0])):
        room = policy.max_shards - len(layout.ids)
        if room <= 0 or counts[i] < 2 or not (series[:, i] > policy.split_above).all():
            continue
        own = layout.slots_of(i)
        half = float(layout.load[own].sum()) / 2
        chosen = layout.pick(own, half, len(own) - 1)
        made = layout.add_shard(i, chosen if len(chosen) else own[-1:])
        if made is not None:
            reasons.append(f"split {layout.ids[i]} at its load median: {layout.ids[made]}")
    return _result(policy, now, layout, ("split",) if reasons else (), reasons)


def slicer(
    shard_map: ShardMap,
    windows: Sequence[LoadWindow],
    policy: Policy,
    history: Sequence[Decision] = (),
    *,
    now: float,
) -> Decision:
    loads = Loads([w for w in windows if w.group == policy.group], policy)
    if not len(loads):
        return Decision(policy.group, now, (), None, ("collecting load",))
    layout = WorkingLayout(
        shard_map, policy, loads.slot_mean(1), policy.budget(shard_map.slot_count)
    )
    need = min(max(ceil_units(loads.totals(1)[0]), policy.min_shards), policy.max_shards)
    actions: list[str] = []
    reasons: list[str] = []
    have = len(layout.ids)
    if need > have:
        for _ in range(need - have):
            sl = layout.shard_loads()
            parent = int(np.argmax(sl))
            own = layout.slots_of(parent)
            if len(own) < 2 or layout.add_shard(parent, own[-1:]) is None:
                break
        actions.append("split")
        reasons.append(f"load needs {need} shards: added {len(layout.ids) - have}")
    elif need < have:
        sl = layout.shard_loads()
        victims = sorted(range(have), key=lambda i: (sl[i], i))[: have - need]
        layout.budget = layout.slots  # a removed task's slices all move at once
        layout.drain(victims, [i for i in range(have) if i not in victims])
        layout.budget = policy.budget(layout.slots)
        actions.append("merge")
        reasons.append(f"load needs {need} shards: removed {have - need}")
    counts = layout.slot_counts()
    active = [i for i in range(len(layout.ids)) if counts[i] > 0]
    if layout.rebalance(active, 1.02):
        actions.append("rebalance")
    return _result(policy, now, layout, tuple(actions), reasons)


def _result(
    policy: Policy, now: float, layout: WorkingLayout, actions: tuple[str, ...], reasons: list[str]
) -> Decision:
    return Decision(policy.group, now, actions, layout.change(), tuple(reasons))


BASELINES: dict[str, Decider] = {"static": static, "split-only": split_only, "slicer": slicer}
#: Every policy the simulator can run, shardkit's own first.
POLICIES: dict[str, Decider] = {"shardkit": decide, **BASELINES}
