#!/usr/bin/env python
"""Benchmark the autoshard policy against three baselines on the same workloads, in one run.

Run from the repository root (with the project's venv active)::

    python bench/bench_autoshard.py            # full run: 6 workloads x 4 policies, 1 h each
    python bench/bench_autoshard.py --quick    # smoke run: 30 min of virtual time each

Every run goes through the simulator (``shardkit.autoshard.simulate``, what ``shardkit
simulate`` runs): per-slot load from a seeded workload, load records summarised as proxies will
send them, the real decision function (or a baseline), the real map builder. The policies:
shardkit's, static (today's fixed count), split-only (DynamoDB-style: split for heat, never
merge) and slicer (weighted move without hysteresis, churn-budgeted). The project is
examples/autoshard (group eu: 8 shards in 2 regions, 16,384 slots, target 250 requests/s per
shard, 20 ms per request, 8 workers per shard).

The last section lists shardkit's targets with PASS/MISS. This is not part of the test suite
and never fails on a MISS: it only reports.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from _common import REPO, Report, parse_args, print_header, print_table, ver

import shardkit
from shardkit.autoshard.baselines import POLICIES
from shardkit.autoshard.model import Model
from shardkit.autoshard.policy import policy_for
from shardkit.autoshard.simulate import SimResult, simulate
from shardkit.autoshard.workload import parse_workload

PROJECT = REPO / "examples" / "autoshard"
SEED = 7

#: (label, workload spec, what it checks)
WORKLOADS = [
    ("uniform", "uniform", "steady uniform load: nothing should move"),
    ("step", "step:step_at=600,step_x=1.3", "uniform, +30% at 10 min: one split, rebalance"),
    ("hot-tenant", "hot-tenant:hot_at=600,hot_share=0.15", "Zipf 1.1 / 1M keys + a tenant"),
    ("burst", "burst:burst_at=600,burst_for=300,burst_x=2", "2x load for 5 min at 10 min"),
    ("square", "square:period=600,low=1,high=2", "10-minute square wave, 1x <-> 2x"),
    ("diurnal", "diurnal:period=3600,low=0.4,high=1.6", "a day compressed into an hour"),
]


@dataclass(frozen=True)
class Params:
    quick: bool
    duration_s: float


FULL = Params(False, 3600.0)
QUICK = Params(True, 1800.0)


def run_all(p: Params) -> dict[tuple[str, str], SimResult]:
    config = shardkit.load_config(PROJECT / "shardkit.toml")
    shard_map = shardkit.build_map(config, now=0)
    policy = policy_for(config, "eu")
    assert policy is not None
    group = config.groups["eu"]
    model = Model(concurrency=group.concurrency, memory_mb=group.memory_mb)
    results = {}
    for label, spec, _ in WORKLOADS:
        workload = parse_workload(spec, shard_map.slot_bits)
        for name in POLICIES:
            t0 = time.process_time()
            results[label, name] = simulate(
                shard_map,
                policy,
                workload,
                duration_s=p.duration_s,
                seed=SEED,
                model=model,
                decider=name,
            )
            print(f"  {label:<11} {name:<10} {time.process_time() - t0:5.1f} s CPU", flush=True)
    return results


def table(results: dict[tuple[str, str], SimResult]) -> None:
    rows = []
    for label, _, _ in WORKLOADS:
        for name in POLICIES:
            s = results[label, name].summary()
            rows.append(
                [
                    label,
                    name,
                    f"{s['imbalance_p50']:.2f}",
                    f"{s['imbalance_p99']:.2f}",
                    f"{s['moved_per_round_mean']:,.0f}",
                    f"{100 * s['moved_share_max']:.1f}%",
                    f"{s['shards_min']}-{s['shards_max']}",
                    str(s["splits"]),
                    str(s["merges"]),
                    str(s["flaps"]),
                    str(s["cold_starts"]),
                    f"{s['cost_usd']:.2f}",
                    f"{100 * s['over_capacity']:.2f}%",
                    f"{s['p99_ms_p99']:,.0f}",
                    str(s["violations"]),
                ]
            )
    print_table(
        "Policies on the same workloads (one row per workload and policy)",
        [
            "workload",
            "policy",
            "max/mean p50",
            "p99",
            "moved/round",
            "max moved",
            "shards",
            "splits",
            "merges",
            "flaps",
            "cold starts",
            "cost $",
            "over cap.",
            "p99 ms (p99)",
            "resid. viol.",
        ],
        rows,
        notes=[
            "max/mean: the most loaded shard over the mean, per window; p50/p99 over windows",
            "moved/round: slots moved per decision round (all rounds); max moved: the largest "
            "round as a share of the group's 16,384 slots",
            "splits/merges: rounds that added / started removing shards; flaps: shard-count "
            "changes that reverse the previous one within 180 s",
            "cold starts: execution environments started by new shards (8 per shard); cost: "
            "Lambda requests + GB-s + DynamoDB on-demand reads/writes (migration included)",
            "over cap.: requests beyond what the shards' workers could serve (M/M/c model); "
            "p99 ms (p99): the p99 over windows of the worst shard's p99 (30,000 = timeout)",
        ],
    )


# -- targets --------------------------------------------------------------------------------------


def rounds_to_balance(result: SimResult, limit: float = 1.25) -> list[int]:
    """After each shard-count change: windows until max/mean <= ``limit`` (the change's own
    decision round excluded; round 1 is the first window on the new layout)."""
    out = []
    rows = result.rows
    for i in range(1, len(rows)):
        if rows[i].shards != rows[i - 1].shards:
            k = next((j - i + 1 for j in range(i, len(rows)) if rows[j].imbalance <= limit), None)
            out.append(k if k is not None else len(rows) - i + 1)
    return out


def after_isolation(result: SimResult, start_s: float) -> list[float]:
    """Max/mean of the windows from the first one (after ``start_s``) in which the busiest slot
    sits alone on its shard, to the end."""
    rows = [r for r in result.rows if r.t >= start_s]
    first = next((i for i, r in enumerate(rows) if r.hottest_alone), None)
    return [] if first is None else [r.imbalance for r in rows[first:]]


def per_period(result: SimResult, period: float, actions: Sequence[str]) -> list[int]:
    n = math.ceil(result.rows[-1].t / period) if result.rows else 0
    counts = [0] * max(n, 1)
    for d in result.decisions:
        if any(a in actions for a in d.actions):
            counts[min(int((d.at - 1e-9) // period), len(counts) - 1)] += 1
    return counts


def targets(results: dict[tuple[str, str], SimResult], rep: Report) -> None:
    ours = {label: results[label, "shardkit"] for label, _, _ in WORKLOADS}
    balance = rounds_to_balance(ours["step"])
    rep.target(
        "step: rounds to max/mean <= 1.25 after a membership change (worst)",
        max(balance, default=0),
        2,
        "d",
        "rounds",
    )
    iso = sorted(after_isolation(ours["hot-tenant"], 600.0))
    rep.target(
        "hot-tenant: max/mean p50 once the hot slot is isolated",
        iso[len(iso) // 2] if iso else math.inf,
        1.5,
        ".2f",
        "",
    )
    rep.target(
        "hot-tenant: max/mean p99 once the hot slot is isolated",
        iso[min(len(iso) - 1, round(0.99 * len(iso)) - 1)] if iso else math.inf,
        1.5,
        ".2f",
        "",
    )
    worst = max(r.summary()["moved_share_max"] for r in ours.values())
    rep.target("churn: largest round, all workloads", 100 * worst, 9.0, ".1f", "% of slots")
    splits = per_period(ours["square"], 600.0, ("split", "isolate", "grow"))
    merges = per_period(ours["square"], 600.0, ("merge", "shrink"))
    rep.target("square: split rounds per 10-min period (worst)", max(splits), 1, "d", "")
    rep.target("square: merge rounds per 10-min period (worst)", max(merges), 1, "d", "")
    first = next(
        (d.at for d in ours["burst"].decisions if "split" in d.actions and d.at > 600), math.inf
    )
    rep.target("burst: split decided after the burst began", first - 600.0, 60, ".0f", "s")
    rep.target(
        "residency violations, all workloads and policies",
        sum(r.summary()["violations"] for r in results.values()),
        0,
        "d",
        "",
    )
    flaps = ours["uniform"].summary()["flaps"] + ours["step"].summary()["flaps"]
    rep.target("flaps under constant load (uniform + step)", flaps, 0, "d", "")
    print(
        f"\nstep: rounds to balance after each shard-count change: {balance}; square: split "
        f"rounds per period {splits}, merge rounds per period {merges}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__, argv, "30 min of virtual time per run instead of 1 h")
    p = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    print_header(
        "shardkit autoshard benchmark",
        p.quick,
        {
            "packages": f"shardkit {shardkit.__version__}, numpy {ver('numpy')}",
            "settings": f"{len(WORKLOADS)} workloads x {len(POLICIES)} policies, "
            f"{p.duration_s / 60:.0f} min of virtual time each, seed {SEED}",
        },
        load_label="load average at start",
    )
    results = run_all(p)
    table(results)
    rep = Report()
    targets(results, rep)
    rep.command("this table", "python bench/bench_autoshard.py" + (" --quick" if p.quick else ""))
    rep.command(
        "one run, with its picture",
        "shardkit simulate examples/autoshard --workload square --plot square.svg",
    )
    rep.finish(t_start, "Commands:", load_at_end=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
