"""The what-if simulator: a workload replayed on a virtual clock through a real policy.

Each window of ``policy.window_s`` virtual seconds:

1. the workload gives every slot's requests and compute ms (seeded: same seed, same run);
2. the shards of the current map serve them - :class:`.model.ShardWindow` gives latency and
   requests over capacity, :class:`.model.Model` cold starts and cost;
3. every shard reports a load record exactly as a proxy instance would
   (:func:`shardkit.proxy.load.summarize`: totals, heavy slots, floor), and
   :class:`.load.LoadAggregator` merges them into the window the policy sees - so the policy
   decides on the same summarised signal it will get in production, not on the exact truth;
4. the policy (:func:`.decide.decide` or a baseline) decides; a change whose new shard lies
   outside the group's regions is counted as a residency violation and refused, any other is
   applied with :func:`shardkit.sharding.layout.apply_layout`, as the controller will.

The result holds one :class:`Row` per window, every decision, and per-shard loads for the
picture (:mod:`.plot`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..proxy.load import summarize
from ..sharding.layout import apply_layout
from ..sharding.shardmap import ShardMap
from .baselines import POLICIES, Decider
from .decide import Decision
from .load import LoadAggregator, LoadWindow
from .model import Model, ShardWindow
from .plan import group_table
from .policy import Policy
from .workload import Workload

__all__ = ["Row", "SimResult", "simulate"]

TOP_K = 32  # heavy slots per record, as the proxy will send
FLAP_HORIZON_S = 180.0


@dataclass(frozen=True)
class Row:
    """One window: what the shards carried and what the policy did at its end."""

    t: float
    shards: int
    requests: float
    load_max: float  # target units
    load_mean: float
    imbalance: float  # max / mean shard load
    p99_ms: float  # worst shard's p99
    mean_ms: float
    over_capacity: float  # share of requests beyond the shards' capacity
    slots_moved: int
    cold_starts: int
    cold_reads: float
    cost_usd: float
    violations: int
    actions: str
    hottest_alone: bool = (
        False  # the window's busiest slot (>= 5% of requests) has a shard to itself
    )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SimResult:
    policy: str
    workload: str
    group: str
    slots: int
    window_s: float
    rows: list[Row] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    shard_loads: dict[str, list[float]] = field(default_factory=dict)  # per window, NaN if absent

    def summary(self) -> dict[str, Any]:
        return summarize_rows(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "workload": self.workload,
            "group": self.group,
            "slots": self.slots,
            "window_s": self.window_s,
            "summary": self.summary(),
            "rows": [r.to_dict() for r in self.rows],
            "decisions": [d.to_dict() for d in self.decisions if d.actions],
        }


def simulate(
    shard_map: ShardMap,
    policy: Policy,
    workload: Workload,
    *,
    duration_s: float,
    seed: int = 0,
    model: Model | None = None,
    decider: str = "shardkit",
) -> SimResult:
    """Run ``workload`` for ``duration_s`` virtual seconds through ``decider`` (``shardkit`` or a
    baseline, see :data:`.baselines.POLICIES`), starting from ``shard_map``."""
    run = _Run(shard_map, policy, workload, model or Model(), POLICIES[decider], seed)
    result = SimResult(
        decider, workload.describe(), policy.group, shard_map.slot_count, policy.window_s
    )
    for i in range(max(1, math.ceil(duration_s / policy.window_s))):
        run.step(i, result)
    return result


class _Run:
    def __init__(
        self,
        shard_map: ShardMap,
        policy: Policy,
        workload: Workload,
        model: Model,
        decide: Decider,
        seed: int,
    ) -> None:
        self.map = shard_map
        self.policy = policy
        self.workload = workload
        self.model = model
        self.decide = decide
        self.rng = np.random.default_rng(seed)
        self.windows: list[LoadWindow] = []
        self.history: list[Decision] = []
        self.keep = max(policy.split_windows, policy.merge_windows)
        self.new_shards = 0  # made by the last decision: cold starts in this window
        self.moved = np.zeros(shard_map.slot_count, dtype=bool)  # moved by the last decision
        self._table: tuple[ShardMap | None, tuple[str, ...]] = (None, ())

    def step(self, i: int, result: SimResult) -> None:
        p = self.policy
        length = p.window_s
        requests, compute = self.workload.window(i, length, self.rng)
        ids, _, owner = group_table(self.map, p.group)
        owners = self._owners()
        per_req = np.bincount(owner, weights=requests, minlength=len(ids))
        per_ms = np.bincount(owner, weights=compute, minlength=len(ids))
        util = p.utilization(per_req / length, per_ms / length)
        served = [
            ShardWindow.of(self.model, r, c, length) for r, c in zip(per_req, per_ms, strict=True)
        ]
        cold_starts = self.new_shards * self.model.concurrency
        cold_reads = float(np.minimum(requests[self.moved], self.workload.keys_per_slot).sum())
        migrated = float(self.moved.sum()) * self.workload.keys_per_slot
        total = float(requests.sum())
        cost = self.model.lambda_cost(total, float(compute.sum()), cold_starts)
        cost += self.model.dynamodb_cost(total, cold_reads, migrated)
        self._record_loads(result, i, ids, util)
        self._window(i, owners, ids, owner, requests, compute)
        decision = self.decide(self.map, self.windows, p, self.history, now=(i + 1) * length)
        violations = self._apply(decision, (i + 1) * length)
        result.decisions.append(decision)
        mean = float(util.mean()) if len(util) else 0.0
        result.rows.append(
            Row(
                t=i * length,
                shards=len(ids),
                requests=total,
                load_max=float(util.max()),
                load_mean=mean,
                imbalance=float(util.max() / mean) if mean > 0 else 1.0,
                p99_ms=max(s.p99_ms for s in served),
                mean_ms=sum(s.mean_ms * s.requests for s in served) / total if total else 0.0,
                over_capacity=sum(s.over_capacity for s in served) / total if total else 0.0,
                slots_moved=decision.moved if not violations else 0,
                cold_starts=cold_starts,
                cold_reads=cold_reads,
                cost_usd=cost,
                violations=violations + self._misplaced(),
                actions="+".join(decision.actions),
                hottest_alone=_hottest_alone(owner, requests),
            )
        )

    def _owners(self) -> tuple[str, ...]:
        """The group's table as ids, one tuple per map (windows of one map share it)."""
        if self._table[0] is not self.map:
            self._table = (
                self.map,
                tuple(s.id for s in self.map.groups[self.policy.group].primary),
            )
        return self._table[1]

    def _window(
        self,
        i: int,
        owners: tuple[str, ...],
        ids: list[str],
        owner: Any,
        requests: Any,
        compute: Any,
    ) -> None:
        """What the policy sees: one record per shard, merged as the control plane merges."""
        agg = LoadAggregator()
        start = i * self.policy.window_s
        group = self.policy.group
        busy = np.flatnonzero(requests > 0)
        by_shard = busy[np.argsort(owner[busy], kind="stable")]
        bounds = np.searchsorted(owner[by_shard], np.arange(len(ids) + 1))
        for k, sid in enumerate(ids):
            idx = by_shard[bounds[k] : bounds[k + 1]]
            reqs = dict(zip(idx.tolist(), np.rint(requests[idx]).astype(int).tolist(), strict=True))
            ms = dict(zip(idx.tolist(), compute[idx].tolist(), strict=True))
            counts = {(sid, group): (reqs, ms)}
            agg.add(summarize(sid, start, self.policy.window_s, self.map.version, counts, TOP_K))
        window = agg.close(group, start, owners)
        if window is None:  # no request at all in this window
            window = LoadWindow(group, start, self.policy.window_s, {}, {}, tuple(owners))
        self.windows = [*self.windows, window][-self.keep :]

    def _apply(self, decision: Decision, now: float) -> int:
        self.history = [*self.history, decision][-50:]
        self.new_shards = 0
        self.moved[:] = False
        change = decision.change
        if change is None:
            return 0
        jurisdiction = self.map.groups[self.policy.group].jurisdiction
        outside = [
            s
            for s in change.added
            if s.region not in self.policy.regions or self.map.regions.get(s.region) != jurisdiction
        ]
        if outside:
            return len(outside)  # refused: residency is a hard constraint
        self.map = apply_layout(self.map, [change], ttl_s=86400, now=now)
        self.new_shards = len(change.added)
        for m in change.moves:
            self.moved[m.slot] = True
        return 0

    def _misplaced(self) -> int:
        """Shards of the group outside its regions or jurisdiction (the map would refuse them;
        counted independently of the policy)."""
        jurisdiction = self.map.groups[self.policy.group].jurisdiction
        _, regions, _ = group_table(self.map, self.policy.group)
        return sum(
            r not in self.policy.regions or self.map.regions.get(r) != jurisdiction for r in regions
        )

    def _record_loads(self, result: SimResult, i: int, ids: list[str], util: Any) -> None:
        for sid, u in zip(ids, util, strict=True):
            result.shard_loads.setdefault(sid, [math.nan] * i).append(float(u))
        for series in result.shard_loads.values():
            if len(series) < i + 1:
                series.append(math.nan)


def _hottest_alone(owner: Any, requests: Any) -> bool:
    """Whether the busiest slot, if it stands out (>= 5% of the requests), is alone on its
    shard: the point from which no layout can lower its shard's load further."""
    if not requests.any():
        return False
    hottest = int(np.argmax(requests))
    if requests[hottest] < 0.05 * requests.sum():
        return False
    return int(np.count_nonzero(owner == owner[hottest])) == 1


def summarize_rows(result: SimResult) -> dict[str, Any]:
    """The run in numbers: imbalance p50/p99, churn, cold starts, cost, flaps, splits, merges."""
    rows = [r for r in result.rows if r.requests > 0]
    imb = sorted(r.imbalance for r in rows) or [1.0]
    moved = [r.slots_moved for r in result.rows if r.slots_moved]
    return {
        "windows": len(result.rows),
        "imbalance_p50": _pct(imb, 0.5),
        "imbalance_p99": _pct(imb, 0.99),
        "rounds_with_moves": len(moved),
        "slots_moved": sum(moved),
        "moved_per_round_mean": sum(moved) / len(result.rows) if result.rows else 0.0,
        "moved_per_round_max": max(moved, default=0),
        "moved_share_max": max(moved, default=0) / result.slots,
        "cold_starts": sum(r.cold_starts for r in result.rows),
        "cost_usd": sum(r.cost_usd for r in result.rows),
        "p99_ms_p99": _pct(sorted(r.p99_ms for r in rows) or [0.0], 0.99),
        "over_capacity": sum(r.over_capacity * r.requests for r in rows)
        / max(1.0, sum(r.requests for r in rows)),
        "splits": sum(
            any(a in ("split", "isolate", "grow") for a in d.actions) for d in result.decisions
        ),
        "merges": sum(any(a in ("merge", "shrink") for a in d.actions) for d in result.decisions),
        "flaps": flaps(result),
        "shards_min": min((r.shards for r in result.rows), default=0),
        "shards_max": max((r.shards for r in result.rows), default=0),
        "violations": sum(r.violations for r in result.rows),
    }


def flaps(result: SimResult, horizon_s: float = FLAP_HORIZON_S) -> int:
    """Shard-count changes that reverse the previous change within ``horizon_s``."""
    count, last = 0, None
    for prev, row in zip(result.rows, result.rows[1:], strict=False):
        if row.shards == prev.shards:
            continue
        sign = 1 if row.shards > prev.shards else -1
        if last is not None and sign != last[1] and row.t - last[0] <= horizon_s:
            count += 1
        last = (row.t, sign)
    return count


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, max(0, round(q * len(values)) - 1))]
