"""The auto-shard controller: one round of the decision function per group, applied by deploying.

The same :class:`Controller` runs from a terminal (``shardkit autoshard DIR --once | --watch``),
in the scheduled control-plane function (:mod:`.function`, fired by the ``schedule_rule`` on AWS
and by the local cloud's scheduler), and in tests. One :meth:`Controller.tick`, per group with a
policy:

1. **read** the group's load records: one Query of the ``{group}#load`` partition of each of its
   regions' state tables (:mod:`shardkit.proxy.load`), from ``lookback`` windows ago;
2. **aggregate** them into windows (:class:`~.load.LoadAggregator`); a window is used once it has
   been closed for a whole window length (instances write their record with the first request
   of the next window), each with the slot table of the map its records were counted under; a
   window nobody reported, after the first that someone did, is a window of no load;
3. **decide** (:func:`~.decide.decide`, pure) with the deployed map, the windows, the policy and
   this group's recent decisions;
4. **record** the decision with its reasons (the decision log, ``shardkit-state/autoshard.json``
   in the home bucket beside the deployment record, so ``shardkit status`` on any machine shows
   the last ones, whoever ran the round) and hand it to ``log``;
5. **apply** a layout change - unless the policy's mode is ``dry-run`` or the controller runs
   with ``dry_run`` - through the deploy engine (:meth:`Deployer.plan` with the change, then
   :meth:`Deployer.apply`), so new shards are created, the migration moves exactly the changed
   slots with their state, and the map is published, as any deploy does. The engine's lock and
   the plan's base fingerprint keep a concurrent deploy from interleaving.

Pure parts (:func:`windows_of`) are separate from I/O (:class:`DecisionLog`, :func:`read_records`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._files import write_bytes_atomic
from ..errors import AutoshardError, DeployError, ShardkitError
from ..proxy.load import (
    LOAD_PARTITION,
    TTL_ATTRIBUTE,
    LoadRecord,
    decode_record,
    load_sort_key,
)
from ..sharding.shardmap import ShardMap
from .decide import Decision, decide
from .load import LoadAggregator, LoadWindow
from .policy import Policy, policy_for

__all__ = [
    "Controller",
    "DecisionLog",
    "HomeObject",
    "LocalFile",
    "Round",
    "read_records",
    "windows_of",
]

_KEEP_DECISIONS = 200  # decisions kept in the log, all groups together
DECISIONS_KEY = "shardkit-state/autoshard.json"  # beside the record, in the home bucket


@dataclass(frozen=True)
class Round:
    """One group's round: the decision, and what became of it."""

    decision: Decision
    outcome: str  # "no change" | "dry run" | "applied" | "failed"
    map_version: int | None = None  # the map version the change was published as
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The decision with its outcome; the change as shards added and removed and the number
        of slots moved (the moves themselves are in the published map)."""
        change = self.decision.change
        return {
            **self.decision.to_dict(),
            "change": {
                "added": [s.id for s in change.added],
                "removed": list(change.removed),
                "moved": len(change.moves),
            }
            if change
            else None,
            "outcome": self.outcome,
            "map_version": self.map_version,
            "error": self.error,
        }


# -- the decision log ----------------------------------------------------------------------------


class DecisionLog:
    """The last decisions of every group: what the next rounds' cooldown and draining read, and
    what ``shardkit status`` shows - from any machine, as it lives where the deployment record
    does (:meth:`of`: ``shardkit-state/autoshard.json`` in the home bucket). One JSON object,
    ``{"decisions": [...]}``, the last ``_KEEP_DECISIONS`` rounds of all groups together.

    ``store``: where the JSON is kept - anything with ``get() -> bytes | None``, ``put(bytes)``
    and a ``where`` for messages (:class:`HomeObject`, :class:`LocalFile`)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    @classmethod
    def of(cls, deployer: Any) -> DecisionLog:
        """The log of a deployer's deployment, in its home bucket."""
        return cls(HomeObject(deployer.state.remote, DECISIONS_KEY))

    def entries(self) -> list[dict[str, Any]]:
        body = self.store.get()
        if body is None:
            return []
        try:
            return list(json.loads(body)["decisions"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AutoshardError(
                f"the auto-shard decision log {self.store.where} cannot be read: {exc}",
                hint="delete it; the controller starts a new one (cooldowns restart)",
            ) from None

    def history(self, group: str) -> list[Decision]:
        return [_decision(e) for e in self.entries() if e.get("group") == group]

    def append(self, rounds: Iterable[Round]) -> None:
        added = [r.to_dict() for r in rounds]
        if added:
            kept = [*self.entries(), *added][-_KEEP_DECISIONS:]
            body = json.dumps({"decisions": kept}, indent=1, sort_keys=True).encode() + b"\n"
            self.store.put(body)


@dataclass(frozen=True)
class HomeObject:
    """An object of the home bucket's ``shardkit-state/`` (through the deployment state's
    remote copy, :class:`shardkit.deploy.state.DeploymentState`)."""

    remote: Any
    key: str

    @property
    def where(self) -> str:
        return f"s3://{self.remote.home.bucket}/{self.key}"

    def get(self) -> bytes | None:
        body: bytes | None = self.remote.get(self.key)
        return body

    def put(self, body: bytes) -> None:
        self.remote.put(self.key, body)


@dataclass(frozen=True)
class LocalFile:
    """A file (a decision log kept on this machine only: tests, tools)."""

    path: Path

    @property
    def where(self) -> str:
        return str(self.path)

    def get(self) -> bytes | None:
        return self.path.read_bytes() if self.path.exists() else None

    def put(self, body: bytes) -> None:
        write_bytes_atomic(self.path, body)


def _decision(entry: Mapping[str, Any]) -> Decision:
    """A logged decision as history: what cooldown and draining need (not the change itself).
    Only an applied decision changed anything, so only its actions and draining count."""
    applied = entry.get("outcome") == "applied"
    return Decision(
        group=str(entry["group"]),
        at=float(entry["at"]),
        actions=tuple(entry.get("actions", ())) if applied else (),
        change=None,
        reasons=tuple(entry.get("reasons", ())),
        draining=tuple(entry.get("draining", ())) if applied else (),
    )


# -- reading load --------------------------------------------------------------------------------


def read_records(table: Any, group: str, since: float, now: float) -> list[LoadRecord]:
    """The load records of ``group`` in one state table (a :class:`~shardkit.proxy.table.Table`)
    for windows starting at ``since`` or later: one Query, paged. A record whose TTL attribute
    has passed is left out: DynamoDB's TTL deletes expired items lazily (within days), so the
    table may still hold it."""
    from ..proxy.table import query_all

    pk = LOAD_PARTITION.format(group=group)
    after = load_sort_key(since)[:-1]  # the digits alone sort before every "digits#instance"
    return [
        decode_record(bytes(item["data"]))
        for item in query_all(table, pk, after)
        if float(item.get(TTL_ATTRIBUTE, math.inf)) > now
    ]


def windows_of(
    records: Iterable[LoadRecord],
    group: str,
    owners_of: Callable[[int], Sequence[str]],
    *,
    closed_before: float,
) -> list[LoadWindow]:
    """The windows of ``group`` that ended before ``closed_before``, oldest first, from the first
    one with records on; each window's slot table is that of the newest map version its records
    were counted under.

    A window without any record after the first is a window of **no load** (``instances`` 0),
    not a window skipped: an instance writes a window's record with its next request, so when
    no record came for a window that has been closed a whole window length, no instance that
    counted something then has served a request since - the load stopped. (The one window such
    an instance counted last is the residual: it is never reported; see docs/autoshard.md.)
    Skipping those windows instead would let a round read a burst that ended as the last
    windows, and split on it, and would never see the quiet that lets shards merge."""
    aggregator = LoadAggregator()
    versions: dict[float, int] = {}
    for record in records:
        if record.start + record.length <= closed_before:
            aggregator.add(record)
            versions[record.start] = max(versions.get(record.start, 0), record.map_version)
    found = []
    for g, start in aggregator.pending():
        window = aggregator.close(g, start, owners_of(versions[start])) if g == group else None
        if window is not None:
            found.append(window)
    return _with_quiet_windows(found, closed_before)


def _with_quiet_windows(found: list[LoadWindow], closed_before: float) -> list[LoadWindow]:
    """``found`` with a no-load window in every gap and after the last, for every window that
    ended before ``closed_before`` (each with the slot table of the window before it)."""
    if not found:
        return []
    out: list[LoadWindow] = []
    for window in found:
        if out:
            out += _quiet(out[-1], round((window.start - out[-1].end) / window.length))
        out.append(window)
    last = out[-1]
    return out + _quiet(last, math.floor((closed_before - last.end) / last.length + 1e-9))


def _quiet(before: LoadWindow, count: int) -> list[LoadWindow]:
    """``count`` no-load windows after ``before``."""
    return [
        LoadWindow(
            before.group, before.end + i * before.length, before.length, {}, {}, before.owners
        )
        for i in range(max(0, count))
    ]


def _history_maps(deployer: Any) -> dict[int, ShardMap]:
    """Every readable map of the deployment history, by version."""
    found = {}
    for number in deployer.state.history():
        try:
            data = deployer.state.load_history(number).map
            shard_map = deployer.decode(data) if data else None
        except DeployError:
            continue
        if shard_map is not None:
            found[shard_map.version] = shard_map
    return found


# -- the controller ------------------------------------------------------------------------------


class Controller:
    """Runs rounds for one deployed project (see the module docstring).

    ``deployer``: a :class:`~shardkit.deploy.engine.Deployer` of the project and its target;
    ``dry_run``: decide and log, never apply; ``log``: called with each round as it ends;
    ``clock``: Unix time.
    """

    def __init__(
        self,
        deployer: Any,
        *,
        dry_run: bool = False,
        log: Callable[[Round], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.deployer = deployer
        self.dry_run = dry_run
        self.log = log or (lambda r: None)
        self.clock = clock
        self.decisions = DecisionLog.of(deployer)
        self._maps: dict[int, ShardMap] = {}

    def policies(self) -> list[Policy]:
        config = self.deployer.project.config
        found = (policy_for(config, name) for name in sorted(config.groups))
        return [p for p in found if p is not None]

    def tick(self, now: float | None = None) -> list[Round]:
        """One round for every group with a policy; returns them (also logged and recorded)."""
        now = self.clock() if now is None else now
        rounds = []
        for policy in self.policies():
            current = self.deployer.deployed_map()
            if current is None or policy.group not in current.groups:
                raise AutoshardError(
                    f"group {policy.group!r} is not deployed yet: nothing to measure or change",
                    hint="deploy the project first: `shardkit deploy`",
                )
            round_ = self._round(current, policy, now)
            self.decisions.append([round_])
            self.log(round_)
            rounds.append(round_)
        return rounds

    def _round(self, current: ShardMap, policy: Policy, now: float) -> Round:
        windows = self._windows(current, policy, now)
        decision = decide(current, windows, policy, self.decisions.history(policy.group), now=now)
        if decision.change is None:
            return Round(decision, "no change")
        if self.dry_run or policy.mode == "dry-run":
            return Round(decision, "dry run")
        try:
            plan = self.deployer.plan(changes=[decision.change])
            self.deployer.apply(plan)
        except ShardkitError as exc:
            return Round(decision, "failed", error=f"{exc.message} — {exc.hint}")
        return Round(decision, "applied", plan.map_version)

    def _windows(self, current: ShardMap, policy: Policy, now: float) -> list[LoadWindow]:
        lookback = (max(policy.split_windows, policy.merge_windows) + 2) * policy.window_s
        since = math.floor((now - lookback) / policy.window_s) * policy.window_s
        records: list[LoadRecord] = []
        for table in self._tables(current, policy.group):
            records += read_records(table, policy.group, since, now)

        def owners(version: int) -> Sequence[str]:
            shard_map = self._map(version) or current
            group = shard_map.groups.get(policy.group) or current.groups[policy.group]
            return [s.id for s in group.primary]

        return windows_of(records, policy.group, owners, closed_before=now - policy.window_s)

    def _tables(self, current: ShardMap, group: str) -> list[Any]:
        """The state tables of the regions ``group``'s shards are in."""
        from ..deploy.fence import state_table

        regions = sorted({s.region for s in current.groups[group].shards()})
        names = self.deployer.outputs()["regions"]
        return [
            state_table(self.deployer.target.aws, r, names[r]["table"])
            for r in regions
            if "table" in names.get(r, {})
        ]

    def _map(self, version: int) -> ShardMap | None:
        """The deployed map of ``version`` (from the deployment history), if there is one."""
        if version not in self._maps:  # read the history again: a round may have deployed
            self._maps.update(_history_maps(self.deployer))
        return self._maps.get(version)

    def watch(
        self,
        *,
        every: float | None = None,
        rounds: int | None = None,
        until: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Tick every ``every`` seconds (default: the shortest policy window) until interrupted,
        ``rounds`` times, or until the clock reaches ``until``."""
        period = every or min((p.window_s for p in self.policies()), default=10.0)
        done = 0
        while True:
            started = self.clock()
            self.tick(started)
            done += 1
            wait = max(0.0, started + period - self.clock())
            if rounds is not None and done >= rounds:
                return
            if until is not None and self.clock() + wait >= until:
                return
            sleep(wait)
