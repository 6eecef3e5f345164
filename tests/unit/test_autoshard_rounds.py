"""The controller's pure parts and the local scheduler, in-process with fakes: which windows a
round uses, what history a decision log gives back, bad logs, and when a schedule fires."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from shardkit.autoshard.controller import DecisionLog, LocalFile, Round, windows_of
from shardkit.autoshard.decide import Decision
from shardkit.errors import AutoshardError
from shardkit.local.schedule import Scheduler, period_s
from shardkit.proxy.load import summarize
from shardkit.sharding.layout import LayoutChange, NewShard


def record(start: float, version: int, shard: str = "a-0", n: int = 10) -> Any:
    return summarize(f"{shard}/i", start, 10.0, version, {(shard, "a"): ({1: n}, {1: 20.0 * n})}, 4)


def test_a_round_uses_closed_windows_with_the_slot_table_they_were_counted_under() -> None:
    owners = {1: ["a-0"] * 4, 2: ["a-0", "a-0", "a-1", "a-1"]}
    records = [record(0, 1), record(10, 1), record(10, 2, "a-1"), record(20, 2)]
    windows = windows_of(records, "a", owners.__getitem__, closed_before=30)
    assert [(w.start, w.owners, dict(w.shards)) for w in windows] == [
        (0.0, owners[1], {"a-0": (10.0, 200.0)}),
        (10.0, owners[2], {"a-0": (10.0, 200.0), "a-1": (10.0, 200.0)}),  # the newer version
        (20.0, owners[2], {"a-0": (10.0, 200.0)}),
    ]
    assert [w.start for w in windows_of(records, "a", owners.__getitem__, closed_before=29)] == [
        0.0,
        10.0,
    ]  # the window [20, 30) is still open
    assert windows_of(records, "b", owners.__getitem__, closed_before=30) == []


def round_(
    at: float, actions: tuple[str, ...], outcome: str, draining: tuple[str, ...] = ()
) -> Round:
    change = (
        LayoutChange("a", added=(NewShard("a-2", "eu-west-1", "eu-west-1"),)) if actions else None
    )
    return Round(Decision("a", at, actions, change, ("why",), draining), outcome)


def test_only_applied_decisions_count_as_history(tmp_path: Path) -> None:
    log = DecisionLog(LocalFile(tmp_path / "autoshard.json"))
    assert log.entries() == [] and log.history("a") == []
    log.append(
        [
            round_(1, ("split",), "dry run", ("a-0",)),
            round_(2, ("split",), "failed"),
            round_(3, ("merge",), "applied", ("a-1",)),
            round_(4, (), "no change"),
        ]
    )
    history = log.history("a")
    assert [(d.at, d.actions, d.draining) for d in history] == [
        (1, (), ()),
        (2, (), ()),
        (3, ("merge",), ("a-1",)),
        (4, (), ()),
    ]
    assert [d.structural for d in history] == [False, False, True, False]
    (first, *_) = log.entries()
    assert first["change"] == {"added": ["a-2"], "removed": [], "moved": 0}
    assert first["outcome"] == "dry run" and first["reasons"] == ["why"]
    assert log.history("b") == []


def test_the_log_keeps_the_last_rounds_and_names_a_damaged_file(tmp_path: Path) -> None:
    log = DecisionLog(LocalFile(tmp_path / "autoshard.json"))
    log.append(round_(float(i), (), "no change") for i in range(205))
    assert [e["at"] for e in log.entries()] == [float(i) for i in range(5, 205)]
    log.store.path.write_text("{not json")
    with pytest.raises(AutoshardError, match=r"autoshard\.json cannot be read") as err:
        log.entries()
    assert "delete it" in err.value.hint


# -- the local scheduler ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "seconds"),
    [
        ("rate(1 minute)", 60),
        ("rate(5 minutes)", 300),
        ("rate(2 hours)", 7200),
        ("rate(1 day)", 86400),
    ],
)
def test_rate_periods(expression: str, seconds: int) -> None:
    assert period_s(expression) == seconds


def test_cron_and_junk_have_no_period() -> None:
    assert period_s("cron(0 * * * ? *)") is None and period_s("rate(1 fortnight)") is None


class FakeEvents:
    def __init__(self, rules: list[dict[str, Any]], targets: dict[str, list[str]]) -> None:
        self.rules, self.targets = rules, targets

    def list_rules(self) -> dict[str, Any]:
        return {"Rules": self.rules}

    def list_targets_by_rule(self, Rule: str) -> dict[str, Any]:
        return {"Targets": [{"Id": "t", "Arn": arn} for arn in self.targets.get(Rule, [])]}


def rule(name: str, state: str = "ENABLED", schedule: str = "rate(1 minute)") -> dict[str, Any]:
    arn = f"arn:aws:events:eu-west-1:123456789012:rule/{name}"
    return {"Name": name, "Arn": arn, "State": state, "ScheduleExpression": schedule}


def test_enabled_rate_rules_fire_their_lambda_targets_once_per_period(tmp_path: Path) -> None:
    fn = "arn:aws:lambda:eu-west-1:123456789012:function:ctl"
    events = FakeEvents(
        [rule("on"), rule("off", state="DISABLED"), rule("cron", schedule="cron(0 * * * ? *)")],
        {"on": [fn, "arn:aws:sqs:eu-west-1:123456789012:q"], "off": [fn], "cron": [fn]},
    )
    fired: list[tuple[str, str, dict[str, Any]]] = []
    now = [1000.0]
    lines: list[str] = []

    def invoke(region: str, function: str, event: dict[str, Any]) -> Any:
        fired.append((region, function, event))
        return type("R", (), {"status": 200, "function_error": None, "payload": None})()

    s = Scheduler(
        lambda region: events, invoke, lambda: ["eu-west-1"], log=lines.append, clock=lambda: now[0]
    )

    def tick(at: float) -> None:
        now[0] = at
        s.poll()
        deadline = time.monotonic() + 10
        while s.running and time.monotonic() < deadline:  # the firing's own thread
            time.sleep(0.01)

    tick(1000.0)  # first seen enabled: fires at once
    tick(1030.0)  # within the period: not again
    tick(1060.0)  # a period later: again
    assert [(r, f) for r, f, _ in fired] == [("eu-west-1", "ctl"), ("eu-west-1", "ctl")]
    event = fired[0][2]
    assert (event["detail-type"], event["source"], event["account"]) == (
        "Scheduled Event",
        "aws.events",
        "123456789012",
    )
    assert event["resources"] == [rule("on")["Arn"]] and s.fired == 2
    assert sum("only rate(...) schedules run locally" in line for line in lines) == 1
    events.rules = [rule("on", state="DISABLED")]
    tick(2000.0)
    assert len(fired) == 2  # disabled (by anyone): it stops firing


# -- expired load records ------------------------------------------------------------------------


def test_expired_records_are_skipped_though_the_table_still_holds_them() -> None:
    """DynamoDB's TTL deletes lazily: a record past its ``ttl`` may still be read."""
    from shardkit.autoshard.controller import read_records
    from shardkit.proxy.load import TTL_ATTRIBUTE, load_item
    from shardkit.proxy.table import MemoryTable, Put

    table = MemoryTable()
    for start in (0.0, 10.0, 20.0):
        record = summarize("a-0/i", start, 10.0, 1, {("a-0", "a"): ({1: 5}, {1: 50.0})}, 4)
        table.write(Put(load_item("a", record)))
    items = sorted(table.items.values(), key=lambda i: i["sk"])
    assert [i[TTL_ATTRIBUTE] for i in items] == [10_240, 10_250, 10_260]  # 1,024 windows on

    assert [r.start for r in read_records(table, "a", 0.0, now=10_249.0)] == [10.0, 20.0]
    assert [r.start for r in read_records(table, "a", 0.0, now=10_250.0)] == [20.0]
    assert [r.start for r in read_records(table, "a", 10.0, now=100.0)] == [10.0, 20.0]


def test_records_outlive_the_longest_look_back_a_policy_may_take() -> None:
    """A round reads ``max(split_windows, merge_windows) + 2`` windows back: records expiring
    sooner would be missing from the longest policies' rounds."""
    from shardkit.config.models import AutoshardConfig
    from shardkit.proxy.load import KEEP_WINDOWS

    def most(name: str) -> int:
        (le,) = [m.le for m in AutoshardConfig.model_fields[name].metadata if hasattr(m, "le")]
        return int(le)

    assert max(most("split_windows"), most("merge_windows")) + 2 < KEEP_WINDOWS


# -- windows nobody reported ------------------------------------------------------------------


def test_windows_without_records_after_the_first_are_windows_of_no_load() -> None:
    owners = {1: ["a-0"] * 4}
    records = [record(0, 1), record(30, 1)]
    windows = windows_of(records, "a", owners.__getitem__, closed_before=60)
    assert [(w.start, w.instances, dict(w.shards)) for w in windows] == [
        (0.0, 1, {"a-0": (10.0, 200.0)}),
        (10.0, 0, {}),  # the gap: nobody served a request then
        (20.0, 0, {}),
        (30.0, 1, {"a-0": (10.0, 200.0)}),
        (40.0, 0, {}),  # after the last record, up to the last closed window
        (50.0, 0, {}),
    ]
    assert all(w.owners == owners[1] for w in windows)
    assert [w.slot_rates()[0].sum() for w in windows[1:3]] == [0.0, 0.0]
    assert windows_of([], "a", owners.__getitem__, closed_before=60) == []  # no load yet


def test_a_burst_that_stopped_is_not_split_on_and_the_quiet_lets_shards_merge() -> None:
    """Instances that went idle after a burst report nothing more: the round must read the
    quiet since, not the burst as if it were the last windows."""
    from test_autoshard_decide import base_map, policy

    from shardkit.autoshard.decide import decide

    m = base_map(2)
    table = m.groups["eu"].primary
    mine = [i for i, s in enumerate(table) if s.id == "eu-0"]
    burst = {slot: 3 * 1000 // len(mine) for slot in mine}  # 3 x target (100/s) on eu-0
    records = [
        summarize("eu-0/i", start, 10.0, m.version, {("eu-0", "eu"): (burst, {})}, 32)
        for start in (0.0, 10.0, 20.0)
    ]
    owners = [s.id for s in table]
    p = policy(split_windows=2, merge_windows=2, cooldown_s=0.0)

    def round_at(closed_before: float) -> tuple[str, ...]:
        found = windows_of(records, "eu", lambda v: owners, closed_before=closed_before)
        return decide(m, found, p, now=closed_before + 10).actions

    assert "split" in round_at(30.0)  # the burst, while it lasts
    assert round_at(50.0)[0] == "merge"  # two windows of quiet since: no split on the burst
