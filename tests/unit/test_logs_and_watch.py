"""shardkit.logs (parsing, formatting, reading with a fake client) and shardkit.local.watch."""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from shardkit.errors import LogsError
from shardkit.local.watch import Watcher, project_paths
from shardkit.logs import LogEvent, LogReader, ShardLogs, format_event, parse_since

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", NOW - 30),
        ("10m", NOW - 600),
        ("1.5h", NOW - 5400),
        ("2d", NOW - 172800),
        ("2023-11-14T22:13:20Z", NOW),
        ("2023-11-14T22:13:20", NOW),  # no zone: UTC
        ("2023-11-14T23:13:20+01:00", NOW),
    ],
)
def test_parse_since(text: str, expected: float) -> None:
    assert parse_since(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "10 minutes", "-5m", ""])
def test_parse_since_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(LogsError, match="is neither a span nor a time") as err:
        parse_since(text, now=NOW)
    assert "10m" in err.value.hint


def _event(message: str, ts: int = 1_700_000_000_123) -> LogEvent:
    return LogEvent("eu-0", "eu-west-1", "s", ts, message, "id")


def test_format_event() -> None:
    powertools = {
        "level": "ERROR",
        "location": "x:1",
        "message": "request failed",
        "timestamp": "...",
        "service": "p",
        "key_hash": "00ff",
        "map_version": 3,
        "exception": "Traceback ...\nValueError: no",
        "extra": {"a": 1},
    }
    assert format_event(_event(json.dumps(powertools))) == (
        '22:13:20.123 eu-0     ERROR   request failed key_hash=00ff map_version=3 extra={"a": 1}'
        "\nTraceback ...\nValueError: no"
    )
    assert format_event(_event("print output")) == "22:13:20.123 eu-0     print output"
    assert format_event(_event('{"not": "closed"')) == '22:13:20.123 eu-0     {"not": "closed"'
    assert format_event(_event(json.dumps({"_aws": {}, "requests": [1]}))) is None  # a metric


class FakeLogs:
    """filter_log_events over a list of events, two to a page."""

    class exceptions:
        class ResourceNotFoundException(Exception):
            pass

    def __init__(self, groups: dict[str, list[dict[str, Any]]]) -> None:
        self.groups = groups

    def filter_log_events(self, logGroupName: str, startTime: int, nextToken: str = "0") -> Any:
        if logGroupName not in self.groups:
            raise self.exceptions.ResourceNotFoundException()
        events = [e for e in self.groups[logGroupName] if e["timestamp"] >= startTime]
        start = int(nextToken)
        page: dict[str, Any] = {"events": events[start : start + 2]}
        if start + 2 < len(events):
            page["nextToken"] = str(start + 2)
        return page


def _raw(i: int, ts: int) -> dict[str, Any]:
    return {"eventId": f"e{i}", "timestamp": ts, "message": f"line {i}\n", "logStreamName": "s"}


def test_reader_merges_groups_pages_and_never_repeats() -> None:
    logs = FakeLogs(
        {
            "/aws/lambda/f0": [_raw(0, 1000), _raw(2, 3000), _raw(4, 5000)],
            "/aws/lambda/f1": [_raw(1, 2000), _raw(3, 4000)],
        }
    )
    shards = [
        ShardLogs("s0", "r", "f0"),
        ShardLogs("s1", "r", "f1"),
        ShardLogs("s2", "r", "f2"),  # has not logged yet
    ]
    reader = LogReader(shards, lambda service, region: logs)
    first = reader.read(since=2.0)
    assert [(e.shard, e.message) for e in first] == [
        ("s1", "line 1"),
        ("s0", "line 2"),
        ("s1", "line 3"),
        ("s0", "line 4"),
    ]
    assert first[0].to_dict() == {
        "shard": "s1",
        "region": "r",
        "stream": "s",
        "timestamp": 2000,
        "message": "line 1",
    }
    logs.groups["/aws/lambda/f1"].append(_raw(5, 6000))
    assert [e.message for e in reader.read(since=0)] == ["line 0", "line 5"]


def test_follow_yields_new_events_until_stopped() -> None:
    logs = FakeLogs({"/aws/lambda/f0": [_raw(0, 1000)]})
    reader = LogReader([ShardLogs("s0", "r", "f0")], lambda service, region: logs)
    polls = iter(range(3))

    def stop() -> bool:
        n = next(polls, None)
        if n == 1:
            logs.groups["/aws/lambda/f0"].append(_raw(1, 2000))
        return n is None

    assert [e.message for e in reader.follow(0, interval=0, stop=stop)] == ["line 0", "line 1"]


def test_watcher_sees_changes_and_waits_for_quiet(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "model.py").write_text("a")
    (tmp_path / "shardkit.toml").write_text("x")
    (tmp_path / "app" / "__pycache__").mkdir()
    watcher = Watcher(project_paths(tmp_path, "app"), interval=0.01, settle=0.05)
    assert watcher.changed() == []
    model = tmp_path / "app" / "model.py"
    model.write_text("bb")
    (tmp_path / "app" / "__pycache__" / "m.pyc").write_bytes(b"")  # never a change
    (tmp_path / "bundles").mkdir()
    (tmp_path / "bundles" / "b.bin").write_bytes(b"1")
    assert watcher.changed() == [model, tmp_path / "bundles" / "b.bin"]
    os.utime(model, (time.time() + 5, time.time() + 5))
    (tmp_path / "shardkit.toml").unlink()
    assert watcher.wait() == [model, tmp_path / "shardkit.toml"]
    assert watcher.wait(stop=lambda: True) == []


def test_project_paths() -> None:
    root = Path("/p")
    assert project_paths(root, "src") == [root / "shardkit.toml", root / "src", root / "bundles"]


def test_event_times_are_utc() -> None:
    ts = int(datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC).timestamp() * 1000)
    assert format_event(_event("x", ts)).startswith("03:04:05.000 ")  # type: ignore[union-attr]
