"""The live migration's plan steps (prepare, copy, cutover, cleanup) over in-memory tables.

One group ("g", jurisdiction eu) in two regions, 256 slots: the maps of test_migrate.py. The steps run
through :func:`shardkit.migrate.live.run_phase` exactly as the executor runs them, with a fake
clock, a fake CloudWatch (the SLO guard's reader) and the ledger in a temporary directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from test_migrate import CENTRAL, T0, V1, WEST, build, config

import shardkit
from shardkit.errors import (
    AwsThrottledError,
    AwsUnreachableError,
    MigrationAbortedError,
    MigrationError,
    PlanFileError,
)
from shardkit.migrate import initialise, plan_migration, slot_records
from shardkit.migrate.deploy import cleanup_batches, configure, slot_batches
from shardkit.migrate.guard import Budget, Guard, Reading, verdict
from shardkit.migrate.ledger import Ledger
from shardkit.migrate.live import WARM_BACKOFF_S, WARM_EVENT, LiveContext, run_phase
from shardkit.proxy.handler import WARM_EVENT as HANDLER_WARM_EVENT
from shardkit.proxy.state import ACTIVE, FENCED, MOVED, SlotNotLive, SlotRecord, StateStore
from shardkit.proxy.table import MemoryTable

GUARD = {"error_budget": 0.1, "min_requests": 10, "window_s": 60, "on_breach": "abort"}
V2 = build(config(("a", WEST), ("b", WEST), ("c", CENTRAL), ("d", WEST)), V1)  # d: both kinds


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class World:
    """Two regions' tables, stores for every shard, a ledger, a clock and metrics to inject."""

    def __init__(self, tmp_path: Path) -> None:
        self.tables = {WEST: MemoryTable(WEST, page_size=7), CENTRAL: MemoryTable(CENTRAL)}
        initialise(self.tables, V1)
        self.ledger = Ledger(tmp_path)
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.metrics: dict[str, tuple[float, float]] = {}  # shard -> (errors, requests)
        self.warmed: list[tuple[str, str, str]] = []

    def store(self, shard: str) -> StateStore:
        region = next(s.region for s in V2.shards if s.id == shard)
        return StateStore(self.tables[region], shard, cache_size=0)

    def write(self, key: str, times: int = 1, request: str | None = None) -> int:
        """Write ``key`` through its owner in V1 (the map in force); returns its seq."""
        owner, slot = V1.route(key), V1.slot(key)
        store = self.store(owner.id)
        for _ in range(times):
            before = store.load("g", slot, key)
            after = store.save("g", slot, key, before, (before.value or 0) + 1, request, "ok")
        return after.seq

    def context(self, region: str, plan_id: str = "p1") -> LiveContext:
        return LiveContext(
            table_for=lambda r, name: self.tables[r],
            region=region,
            plan_id=plan_id,
            ledger=self.ledger,
            report=self.events.append,
            invoke=self._invoke,
            read_metrics=lambda shard, region, start, end: self.metrics.get(shard, (0.0, 0.0)),
            clock=self.clock,
            sleep=self.clock.sleep,
        )

    def _invoke(self, region: str, function: str, qualifier: str) -> dict[str, Any]:
        self.warmed.append((region, function, qualifier))
        return {"warm": function, "cold": True}

    def steps(self, new: shardkit.ShardMap = V2) -> list[tuple[str, dict[str, Any]]]:
        batches = configure(
            slot_batches(V1, new),
            guard=GUARD,
            rollback_window_s=3600,
            warm={"d": ("fn-d", "live")},
        )
        tables = {WEST: "tw", CENTRAL: "tc"}
        return [(b.region, {**b.props, "tables": tables}) for b in batches]

    def run(self, new: shardkit.ShardMap = V2, plan_id: str = "p1") -> list[dict[str, Any]]:
        return [run_phase(self.context(r, plan_id), props) for r, props in self.steps(new)]


def phases(world: World) -> list[str]:
    return [e["phase"] for e in world.events]


def test_a_reshard_is_planned_as_prepare_copy_and_cutover_per_destination() -> None:
    steps = [(b.region, b.props["phase"]) for b in slot_batches(V1, V2)]
    assert steps == [(WEST, "prepare"), (WEST, "copy"), (WEST, "cutover")]
    west = build(config(("a", WEST), ("b", WEST)))
    more = build(config(("a", WEST), ("b", WEST), ("e", WEST)), west)
    assert not plan_migration(west, more).cross_region  # in place: nothing to copy
    assert [b.props["phase"] for b in slot_batches(west, more)] == ["prepare", "cutover"]
    configured = configure(
        slot_batches(V1, V2), guard=GUARD, rollback_window_s=60, warm={"d": ("fn", "live")}
    )
    assert configured[0].props["warm"] == [{"shard": "d", "function": "fn", "qualifier": "live"}]
    assert configured[2].props["guard"] == GUARD and configured[2].props["rollback_window_s"] == 60
    assert WARM_EVENT == HANDLER_WARM_EVENT  # what prepare sends is what the handler answers


def test_the_steps_carry_state_and_idempotency_records_and_report_each_phase(
    tmp_path: Path,
) -> None:
    w = World(tmp_path)
    moves = plan_migration(V1, V2).moves
    keys = [f"k{i}" for i in range(3000)]
    moving = [k for k in keys if V2.route(k).id == "d"]
    from_central = [k for k in moving if V1.route(k).region == CENTRAL]
    assert from_central and len(moving) > len(from_central)  # both kinds of move are exercised
    for k in moving:
        w.write(k, times=2, request=f"req-{k}")
    out = w.run()
    assert out[0] == {"warmed": 1, "cold_starts": 1} and w.warmed == [(WEST, "fn-d", "live")]
    assert out[1]["items"] == out[1]["items_total"] == len(from_central)
    assert out[2]["switched"] == len(moves) and out[2]["caught_up_items"] == 0
    d = w.store("d")
    for k in moving:  # the new owner sees every key's state, and its recent request ids
        state = d.load("g", V2.slot(k), k)
        assert (state.seq, state.value) == (2, 2) and f"req-{k}" in state.applied
    seen = phases(w)
    assert seen[0] == "prepare" and seen[-1] == "switch"
    assert [p for p in seen if p in ("fence", "catch-up")] == ["fence", "catch-up"]
    copy = [e for e in w.events if e["phase"] == "copy"]
    assert copy[-1]["items"] == copy[-1]["items_total"] == len(from_central)
    assert [e["before"] for e in w.events if e["phase"] == "guard"] == ["fence", "switch"]
    (entry,) = w.ledger.read()["cleanups"]
    assert entry["due_at"] == T0 + 3600 and entry["region"] == WEST
    assert {m["source_region"] for m in entry["moves"]} == {CENTRAL}


def test_writes_to_slots_that_do_not_move_are_never_blocked(tmp_path: Path) -> None:
    w = World(tmp_path)
    moving = {(m.group, m.slot) for m in plan_migration(V1, V2).moves}
    still = [f"k{i}" for i in range(400) if ("g", V1.slot(f"k{i}")) not in moving]
    cross = next(m for m in plan_migration(V1, V2).cross_region)
    blocked: list[str] = []

    def during(event: dict[str, Any]) -> None:
        w.events.append(event)
        if event["phase"] not in ("fence", "catch-up"):
            return
        for k in still:  # every non-moving slot takes writes while the moving ones are fenced
            w.write(k)
        try:  # ... and a fenced one does not
            w.store(cross.source.shard).save(
                "g", cross.slot, "x", w.store("c").load("g", cross.slot, "x"), 1, None, None
            )
        except SlotNotLive:
            blocked.append(event["phase"])

    for region, props in w.steps():
        ctx = w.context(region)
        ctx.report = during
        run_phase(ctx, props)
    assert blocked == ["fence", "catch-up"]
    for k in still:
        assert w.store(V1.route(k).id).load("g", V1.slot(k), k).seq == 2


def test_a_warm_up_is_retried_while_the_shard_is_unreachable_then_fails_clearly(
    tmp_path: Path,
) -> None:
    w = World(tmp_path)
    prepare = w.steps()[0][1]
    down = AwsUnreachableError("lambda.invoke:invoke in eu-west-1: Connection was closed")
    failures = [down, AwsThrottledError("Rate Exceeded.")]  # a worker still starting, then busy

    def flaky(region: str, function: str, qualifier: str) -> dict[str, Any]:
        if failures:
            raise failures.pop(0)
        return w._invoke(region, function, qualifier)

    ctx = w.context(WEST)
    ctx.invoke = flaky
    started = w.clock.now
    assert run_phase(ctx, prepare) == {"warmed": 1, "cold_starts": 1}
    assert w.clock.now - started == WARM_BACKOFF_S[0] + WARM_BACKOFF_S[1]

    def unreachable(region: str, function: str, qualifier: str) -> dict[str, Any]:
        raise down

    ctx.invoke, started = unreachable, w.clock.now
    tries = len(WARM_BACKOFF_S) + 1
    with pytest.raises(
        MigrationError, match=rf"fn-d:live in {WEST} did not answer .* {tries} tries"
    ):
        run_phase(ctx, prepare)
    assert w.clock.now - started == sum(WARM_BACKOFF_S)  # bounded
    down = AwsUnreachableError("Could not connect", code="EndpointConnectionError")
    ctx.invoke, started = unreachable, w.clock.now  # the endpoint itself is down: at once
    with pytest.raises(MigrationError, match=r"fn-d:live in .* cannot be warmed: Could not"):
        run_phase(ctx, prepare)
    assert w.clock.now == started
    for m in plan_migration(V1, V2).moves:  # nothing was fenced or switched
        assert slot_records(w.tables, "g", m.slot)[m.source.region].state == ACTIVE


def test_the_slo_guard_aborts_and_gives_every_unswitched_slot_back(tmp_path: Path) -> None:
    w = World(tmp_path)
    moves = plan_migration(V1, V2).moves
    w.write("k1", times=3)
    (prepare, props_copy, cutover) = w.steps()
    run_phase(w.context(WEST), prepare[1])
    run_phase(w.context(WEST), props_copy[1])
    w.metrics["d"] = (30.0, 40.0)  # the new shard fails 75% of its requests
    with pytest.raises(MigrationAbortedError, match=r"30 errors in 40 requests \(75.0% > 10.0%\)"):
        run_phase(w.context(WEST), cutover[1])
    for m in moves:  # nothing fenced, nothing switched: every old owner serves again
        record = slot_records(w.tables, "g", m.slot)[m.source.region]
        assert record == SlotRecord(m.source.shard, 1, ACTIVE)
    assert w.events[-1]["phase"] == "aborted" and w.events[-1]["switched"] == 0
    assert w.ledger.read()["cleanups"] == []
    w.metrics["d"] = (0.0, 40.0)  # fixed: the same step runs again, from its fence
    assert run_phase(w.context(WEST), cutover[1])["switched"] == len(moves)
    assert w.store("d").load("g", V1.slot("k1"), "k1").seq == 3 or V2.route("k1").id != "d"


def test_the_guard_can_pause_for_a_recovery_before_it_aborts(tmp_path: Path) -> None:
    clock = Clock()
    readings = iter([(9.0, 10.0), (9.0, 10.0), (0.0, 50.0)])
    events: list[dict[str, Any]] = []
    budget = Budget(error_budget=0.1, min_requests=5, window_s=60, on_breach="pause", pause_s=30)
    guard = Guard(
        budget,
        lambda *a: next(readings),
        {"d": WEST},
        T0,
        clock=clock,
        sleep=clock.sleep,
        report=events.append,
    )
    assert guard.check("switch") == Reading(0.0, 50.0)
    assert [e["event"] for e in events] == ["paused", "paused", "resumed"]
    stuck = Guard(budget, lambda *a: (9.0, 10.0), {"d": WEST}, T0, clock=clock, sleep=clock.sleep)
    with pytest.raises(MigrationAbortedError, match="error budget was exceeded before fence"):
        stuck.check("fence")
    assert clock.now == T0 + 2 * 5 + 30  # two polls, then the whole pause of 30 s


def test_the_guard_judges_only_enough_requests_within_its_window() -> None:
    budget = Budget(error_budget=0.05, min_requests=20)
    assert verdict(Reading(19, 19), budget)  # too few to judge
    assert verdict(Reading(1, 20), budget) and not verdict(Reading(2, 20), budget)
    seen: list[tuple[float, float]] = []

    def read(shard: str, region: str, start: float, end: float) -> tuple[float, float]:
        seen.append((start, end))
        return 1.0, 10.0

    clock = Clock()
    guard = Guard(Budget(window_s=60), read, {"a": WEST, "d": CENTRAL}, T0 - 10, clock=clock)
    assert guard.reading() == Reading(2.0, 20.0)
    assert seen == [(T0 - 10, T0)] * 2  # never before the migration began
    clock.now += 600
    guard.reading()
    assert seen[-1] == (T0 + 540, T0 + 600)


def test_a_crash_in_the_cutover_leaves_nothing_fenced_and_a_rerun_completes(
    tmp_path: Path,
) -> None:
    w = World(tmp_path)
    w.write("k7", times=2)
    steps = w.steps()
    for region, props in steps[:2]:
        run_phase(w.context(region), props)
    real = w.tables[WEST].transact
    calls = {"n": 0}

    def failing(ops: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("the network went away")
        real(ops)

    w.tables[WEST].transact = failing  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="network"):
        run_phase(w.context(WEST), steps[2][1])
    w.tables[WEST].transact = real  # type: ignore[method-assign]
    records = [slot_records(w.tables, "g", m.slot) for m in plan_migration(V1, V2).cross_region]
    assert not any(r[CENTRAL] and r[CENTRAL].state == FENCED for r in records)
    w.write("k7")  # its old owner serves it again
    run_phase(w.context(WEST), steps[2][1])
    for m in plan_migration(V1, V2).cross_region:
        assert slot_records(w.tables, "g", m.slot)[CENTRAL] == SlotRecord("d", 2, MOVED)
    assert w.store(V2.route("k7").id).load("g", V2.slot("k7"), "k7").seq == 3


def test_cleanup_waits_for_the_rollback_window_then_deletes_the_source_copies(
    tmp_path: Path,
) -> None:
    w = World(tmp_path)
    keys = [f"k{i}" for i in range(2000)]
    away = [k for k in keys if V2.route(k).id == "d" and V1.route(k).region == CENTRAL]
    for k in away:
        w.write(k)
    w.run()
    assert w.ledger.due(T0 + 3599) == []
    (due,) = w.ledger.due(T0 + 3600)
    assert w.ledger.status(T0 + 600, [])["cleanups"][0]["window_left_s"] == 3000
    (batch,) = cleanup_batches([due])
    props = {**batch.props, "tables": {WEST: "tw", CENTRAL: "tc"}}
    out = run_phase(w.context(batch.region, "p2"), props)
    assert out["items"] == len(away)
    assert not [k for (pk, k), i in w.tables[CENTRAL].items.items() if k in away]
    assert w.ledger.read()["cleanups"] == []
    assert run_phase(w.context(batch.region, "p2"), props)["items"] == 0  # a replay


def test_status_shows_the_running_migration_only_while_its_apply_is_unfinished(
    tmp_path: Path,
) -> None:
    w = World(tmp_path)
    region, prepare = w.steps()[0]
    run_phase(w.context(region, "plan-x"), prepare)
    running = w.ledger.status(T0, ["plan-x"])["migration"]
    assert running["version"] == 2 and running["last"]["phase"] == "prepare"
    assert w.ledger.status(T0, [])["migration"] is None
    assert w.ledger.begin("plan-x", 2, T0 + 99) == T0  # a resumed apply keeps its start


def test_malformed_migrate_steps_are_refused(tmp_path: Path) -> None:
    w = World(tmp_path)
    region, props = w.steps()[2]
    with pytest.raises(PlanFileError, match="phase 'teleport'"):
        run_phase(w.context(region), {**props, "phase": "teleport"})
    with pytest.raises(PlanFileError, match="malformed"):
        run_phase(w.context(region), {"phase": "copy", "group": "g"})
    with pytest.raises(MigrationError, match="cleanup_id"):
        run_phase(w.context(region), {**props, "phase": "cleanup"})


def test_every_event_prints_as_one_line_or_one_json_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shardkit.cli.migration import event_printer

    w = World(tmp_path)
    w.run()
    w.metrics["d"] = (30.0, 40.0)
    back = build(config(("a", WEST), ("b", WEST), ("c", CENTRAL)), V2)
    steps = configure(slot_batches(V2, back), guard=GUARD, rollback_window_s=0, warm={})
    for b in steps:
        try:
            run_phase(w.context(b.region, "p2"), {**b.props, "tables": {WEST: "w", CENTRAL: "c"}})
        except MigrationAbortedError:
            break
    kinds = {e["phase"] for e in w.events}
    assert kinds == {"prepare", "copy", "guard", "fence", "catch-up", "switch", "aborted"}
    capsys.readouterr()
    show, emit = event_printer(False), event_printer(True)
    for event in w.events:
        show(event)
        emit(event)
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) >= len(w.events) and "ABORTED" in out and "slots fenced" in out
    parsed = [json.loads(line) for line in err.splitlines()]
    assert [p["phase"] for p in parsed] == [e["phase"] for e in w.events]
    assert all(p["event"] == "migration" for p in parsed)


def test_plan_and_status_show_what_moves_and_the_rollback_window_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardkit.cli.migration import show_status, show_summary
    from shardkit.cli.output import console

    monkeypatch.setattr(console, "width", 160)  # wide enough for every column, any terminal

    row = {
        "jurisdiction": "eu",
        "region": WEST,
        "groups": ["g"],
        "in_place": 40,
        "copied": 24,
        "from": [CENTRAL],
        "items": 1234,
        "bytes": 2_500_000,
    }
    show_summary([row], False)
    show_summary([row], True)
    w = World(tmp_path)
    w.run(plan_id="plan-x")
    show_status(w.ledger.status(T0 + 600, ["plan-x"]))
    captured = capsys.readouterr()
    out = " ".join(re.sub("[\u2500-\u257f]", " ", captured.out).split())  # no boxes
    assert "64 slots change owner; 1,234 items will be copied across regions" in out
    assert "eu eu-west-1 g 40 24 eu-central-1 1,234 2.50" in out
    assert "migration to map version 2 in progress (plan plan-x)" in out
    assert "in eu-central-1: 50 min of rollback window left" in out
    assert json.loads(captured.err) == {"event": "migration-plan", "rows": [row]}
