"""The proxies' logs, from CloudWatch Logs: the same calls on AWS and on the local cloud.

Each shard's function writes to ``/aws/lambda/{function}`` (on AWS, Lambda does it; on the local
cloud, the local executor). :class:`LogReader` reads the groups of a deployed project's shards
with ``FilterLogEvents`` from a start time, and ``follow`` keeps polling for new events (an event
id is never shown twice). :func:`format_event` turns one event into a line for a person:
Powertools' JSON (time, level, message, the useful keys) is shown readably, other lines as they
are, and EMF documents (metrics, not logs) are left out - ``--json`` shows every event raw.

Times: ``parse_since("10m")`` (s, m, h or d) or an ISO 8601 time.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import LogsError

__all__ = ["LogEvent", "LogReader", "ShardLogs", "format_event", "parse_since"]

_SPAN = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>[smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Powertools keys shown after the message, when present.
_SHOWN = ("key_hash", "map_version", "cold_start", "exception_name", "exception")
_HIDDEN = {"level", "message", "timestamp", "location", "service", "sampling_rate", "xray_trace_id"}


def parse_since(text: str, now: float | None = None) -> float:
    """``10m`` / ``2h`` / ``30s`` / ``1d`` ago, or an ISO 8601 time -> epoch seconds."""
    now = time.time() if now is None else now
    span = _SPAN.match(text.strip())
    if span:
        return now - float(span["n"]) * _UNITS[span["unit"]]
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise LogsError(
            f"--since {text!r} is neither a span nor a time",
            hint="use e.g. 30s, 10m, 2h, 1d, or an ISO time like 2026-01-05T09:00:00Z",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


@dataclass(frozen=True)
class ShardLogs:
    """Where one shard's function logs."""

    shard: str
    region: str
    function: str

    @property
    def group(self) -> str:
        return f"/aws/lambda/{self.function}"


@dataclass(frozen=True)
class LogEvent:
    shard: str
    region: str
    stream: str
    timestamp_ms: int
    message: str
    event_id: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "region": self.region,
            "stream": self.stream,
            "timestamp": self.timestamp_ms,
            "message": self.message,
        }


class LogReader:
    """Events of the given shards' log groups, oldest first, through ``client(service, region)``."""

    #: How far back each poll of ``follow`` looks before the newest event seen: a batch of log
    #: events can land after one with a later timestamp.
    OVERLAP_S = 5.0

    def __init__(self, shards: list[ShardLogs], client: Callable[[str, str], Any]) -> None:
        self.shards = shards
        self._client = client
        self._seen: dict[str, int] = {}  # event id -> its timestamp (ms)

    def retarget(self, shards: list[ShardLogs], client: Callable[[str, str], Any]) -> None:
        """Follow these shards from now on (a deploy added some, or the endpoint changed)."""
        self.shards, self._client = shards, client

    def read(self, since: float) -> list[LogEvent]:
        """Every event at or after ``since`` (epoch seconds) not returned before, oldest first."""
        events = [e for shard in self.shards for e in self._events(shard, since)]
        events.sort(key=lambda e: (e.timestamp_ms, e.event_id))
        fresh = [e for e in events if e.event_id not in self._seen]
        self._seen.update((e.event_id, e.timestamp_ms) for e in fresh)
        return fresh

    def follow(
        self, since: float, interval: float = 1.0, stop: Callable[[], bool] = lambda: False
    ) -> Iterator[LogEvent]:
        """New events as they arrive, until ``stop()``; polls every ``interval`` seconds."""
        start = since
        while not stop():
            yield from self.read(start)
            if self._seen:
                start = max(since, max(self._seen.values()) / 1000 - self.OVERLAP_S)
                floor = int(start * 1000)
                self._seen = {k: ts for k, ts in self._seen.items() if ts >= floor}
            time.sleep(interval)

    def _events(self, shard: ShardLogs, since: float) -> Iterator[LogEvent]:
        logs = self._client("logs", shard.region)
        params: dict[str, Any] = {"logGroupName": shard.group, "startTime": int(since * 1000)}
        while True:
            try:
                page = logs.filter_log_events(**params)
            except logs.exceptions.ResourceNotFoundException:
                return  # the function has not logged anything yet
            for event in page.get("events", []):
                yield LogEvent(
                    shard=shard.shard,
                    region=shard.region,
                    stream=event.get("logStreamName", ""),
                    timestamp_ms=int(event["timestamp"]),
                    message=event["message"].rstrip("\n"),
                    event_id=str(event.get("eventId") or (event["timestamp"], event["message"])),
                )
            token = page.get("nextToken")
            if not token or token == params.get("nextToken"):
                return
            params["nextToken"] = token


def format_event(event: LogEvent) -> str | None:
    """One readable line, or None for an EMF document (metrics: ``--json`` shows them)."""
    stamp = datetime.datetime.fromtimestamp(event.timestamp_ms / 1000, datetime.UTC)
    head = f"{stamp:%H:%M:%S}.{stamp.microsecond // 1000:03d} {event.shard:<8}"
    doc = _json(event.message)
    if doc is None:
        return f"{head} {event.message}"
    if "_aws" in doc:
        return None
    level = str(doc.get("level", "")).upper()
    message = doc.get("message", "")
    if not isinstance(message, str):
        message = json.dumps(message)
    extras = [f"{k}={_short(doc[k])}" for k in _SHOWN if k in doc and k != "exception"]
    extras += [f"{k}={_short(v)}" for k, v in doc.items() if k not in _HIDDEN and k not in _SHOWN]
    line = " ".join(part for part in (head, f"{level:<7}", message, *extras) if part)
    if "exception" in doc:
        line += "\n" + str(doc["exception"])
    return line


def _json(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
