"""The local cloud's scheduler: EventBridge rules with a schedule fire their Lambda targets.

moto keeps rules and targets but fires nothing. The local cloud's process runs
:class:`Scheduler` in a thread: every ``poll_s`` it asks EventBridge (moto, through its API, so a
rule disabled or deleted by any client stops firing) for the rules of the regions the local
deployment uses (what the deploy engine published for the local cloud), and for each ``ENABLED`` rule with a ``rate(...)`` schedule whose period has
passed it invokes each Lambda target through the local executor with the event EventBridge sends
(``detail-type: Scheduled Event``). A rule fires first as soon as it is seen enabled, then once per
period; a firing still running when the next is due is not doubled (the next one waits).
``cron(...)`` schedules are not run (logged once).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Scheduler", "period_s"]

_RATE = re.compile(r"rate\((\d+) (minute|minutes|hour|hours|day|days)\)")
_UNIT_S = {"minute": 60, "hour": 3600, "day": 86400}


def period_s(expression: str) -> float | None:
    """The period of a ``rate(...)`` expression in seconds; None for anything else."""
    m = _RATE.fullmatch(expression.strip())
    return int(m[1]) * _UNIT_S[m[2].rstrip("s")] if m else None


class Scheduler:
    """Fires the schedule rules of the local deployment (see the module docstring).

    ``events(region)`` is an EventBridge client; ``invoke(region, function, event)`` runs a
    function; ``regions()`` says where the local deployment has functions (where to look).
    """

    def __init__(
        self,
        events: Callable[[str], Any],
        invoke: Callable[[str, str, dict[str, Any]], Any],
        regions: Callable[[], Iterable[str]],
        *,
        log: Callable[[str], None] = lambda line: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.events = events
        self.invoke = invoke
        self.regions = regions
        self.log = log
        self.clock = clock
        self.next_at: dict[tuple[str, str], float] = {}  # (region, rule) -> when it fires next
        self.running: set[tuple[str, str]] = set()
        self.fired = 0
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}

    def _events(self, region: str) -> Any:
        with self._lock:
            if region not in self._clients:
                self._clients[region] = self.events(region)
            return self._clients[region]

    def run(self, stop: threading.Event, poll_s: float = 1.0) -> None:
        while not stop.wait(poll_s):
            try:
                self.poll()
            except Exception as exc:  # the server is stopping, or moto hiccupped: next poll
                self.log(f"scheduler: {type(exc).__name__}: {exc}")

    def poll(self) -> None:
        """Fire every rule that is due (each firing in its own thread)."""
        now = self.clock()
        for region in sorted(set(self.regions())):
            for rule in self._events(region).list_rules().get("Rules", []):
                self._consider(region, rule, now)

    def _consider(self, region: str, rule: dict[str, Any], now: float) -> None:
        key = (region, rule["Name"])
        period = period_s(rule.get("ScheduleExpression", ""))
        if rule.get("State") != "ENABLED" or period is None:
            self.next_at.pop(key, None)
            if (
                period is None
                and rule.get("ScheduleExpression")
                and rule["Name"] not in self._warned
            ):
                self._warned.add(rule["Name"])
                self.log(f"scheduler: {rule['Name']}: only rate(...) schedules run locally")
            return
        with self._lock:
            if key in self.running or now < self.next_at.get(key, now):
                return
            self.running.add(key)
            self.next_at[key] = now + period
        threading.Thread(target=self._fire, args=(region, rule), daemon=True).start()

    def _fire(self, region: str, rule: dict[str, Any]) -> None:
        try:
            targets = self._events(region).list_targets_by_rule(Rule=rule["Name"])["Targets"]
            for target in targets:
                function = _function_of(target["Arn"])
                if function is None:
                    continue
                event = _scheduled_event(region, rule, self.clock())
                result = self.invoke(region, function, event)
                self.fired += 1
                self.log(f"scheduler: {rule['Name']} -> {function}: {_status(result)}")
        except Exception as exc:
            self.log(f"scheduler: {rule['Name']} failed: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self.running.discard((region, rule["Name"]))


def _function_of(arn: str) -> str | None:
    """``arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`` -> ``NAME[:QUALIFIER]``."""
    parts = arn.split(":")
    return ":".join(parts[6:]) if len(parts) >= 7 and parts[2] == "lambda" else None


def _scheduled_event(region: str, rule: dict[str, Any], now: float) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": rule["Arn"].split(":")[4],
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "region": region,
        "resources": [rule["Arn"]],
        "detail": {},
    }


def _status(result: Any) -> str:
    error = getattr(result, "function_error", None)
    return f"{result.status}" + (f" ({error}: {result.payload})" if error else "")
