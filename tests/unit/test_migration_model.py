"""The migration protocol, checked on a model: the real proxies, clients and migration steps,
interleaved one table operation at a time in every order hypothesis picks.

The world: two regions of one jurisdiction, each with an in-memory state table
(:class:`~shardkit.proxy.table.MemoryTable`, DynamoDB's semantics) and a map registry; the real
:class:`~shardkit.proxy.handler.Proxy` for every shard in every region it ever lives in (two
instances each, with their own map holder and LRU); two real
:class:`~shardkit.routing.RoutingClient` s (request ids, retries, one redirect hop), each reading
the registry of one region; and a control plane running the real steps of
:mod:`shardkit.migrate.steps`, journaled, resumable and abortable.

Every client request and the control plane run as threads of which exactly one runs at a time:
each stops before each table operation (and each registry read), and a hypothesis rule picks who
makes the next one - so every interleaving of operations is reachable, deterministically. The
control plane may also crash at any operation (the step in progress is run again from its start)
or be aborted before the new map is out. When an example ends, everything still running is run
to its end and the history is checked, per key:

* every acknowledged write is visible to every read that started after it was acknowledged, and
  every answer is a prefix of the key's final history (nothing lost, forked or resurrected);
* the stored history runs 1..n: its ``seq`` is its length, no write appears twice, and each
  acknowledged write sits where its answer said;
* between writes to a slot by two different shards, the slot's records changed (no two shards
  accepted writes for one slot in overlapping windows); at most one record of a slot is active;
* the control plane never met a record it did not expect, and the end state is the target map's.

Broken steps (switch before catch-up, a copy made without the fence, a proxy that skips the slot
check) are test parameters that must make this checker fail.
"""

from __future__ import annotations

import itertools
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import shardkit
import shardkit.proxy.handler as handler_module
from shardkit.config.build import rebase_map
from shardkit.migrate import (
    Migration,
    abort,
    bulk_copy,
    catch_up,
    cleanup,
    fence,
    initialise,
    plan_migration,
    switch,
)
from shardkit.proxy.handler import Proxy
from shardkit.proxy.state import (
    ACTIVE,
    READY,
    SLOT_RECORD,
    Conflict,
    SlotRecord,
    StateStore,
    partition,
)
from shardkit.proxy.table import (
    Check,
    Key,
    MemoryTable,
    Page,
    Put,
    Table,
    Update,
)
from shardkit.routing import MockTransport, RetryPolicy, RoutingClient
from shardkit.routing.transports import TransportError
from shardkit.sharding.codec import encode_map
from shardkit.sharding.holder import MapHolder

R1, R2 = "eu-west-1", "eu-central-1"
T0 = 1_700_000_000
CLIENTS, INSTANCES, IN_FLIGHT = 2, 2, 3


# -- maps and scenarios ---------------------------------------------------------------------------


def _signer() -> tuple[Any, dict[str, bytes]]:
    with tempfile.TemporaryDirectory() as keys:
        shardkit.create_key("model", Path(keys))
        return shardkit.load_signing_key("model", Path(keys)), shardkit.load_trusted_keys(keys)


SIGNER, TRUSTED = _signer()


def _config(shards: Sequence[tuple[str, str]], weights: dict[str, float]) -> Any:
    return shardkit.ProjectConfig.model_validate(
        {
            "project": {"name": "model"},
            "hashing": {"slot_bits": 8},
            "signing": {"key_id": "model", "map_ttl_hours": 24},
            "regions": {R1: {"jurisdiction": "eu"}, R2: {"jurisdiction": "eu"}},
            "residency": {"default": "eu"},
            "groups": {
                "g": {
                    "jurisdiction": "eu",
                    "regions": [R1, R2],
                    "shards": [{"id": s, "region": r} for s, r in shards],
                    "weights": weights,
                }
            },
        }
    )


@dataclass(frozen=True)
class Scenario:
    """Maps ``maps[0] -> maps[1] (-> maps[2])`` and the keys the model writes: two in one slot
    that moves across regions, one in a slot that moves within a region (when there is one), and
    one in a slot that stays. ``envelopes`` are the signed maps; ``initial`` the items of each
    region's table after the first deploy."""

    name: str
    maps: tuple[shardkit.ShardMap, ...]
    keys: tuple[str, ...]
    migrations: tuple[Migration, ...]
    envelopes: tuple[bytes, ...]
    initial: dict[str, dict[Key, Any]]

    @property
    def slots(self) -> list[int]:
        return sorted({self.maps[0].slot(k) for k in self.keys})


def scenario(
    name: str,
    before: Sequence[tuple[str, str]],
    after: Sequence[tuple[str, str]],
    weights: dict[str, float] | None = None,
    rollback: bool = False,
) -> Scenario:
    v1 = shardkit.build_map(_config(before, {}), now=T0)
    v2 = shardkit.build_map(_config(after, weights or {}), v1, now=T0)
    maps = (v1, v2, rebase_map(v1, v2, ttl_s=86400, now=T0)) if rollback else (v1, v2)
    first = plan_migration(v1, v2)
    keys = _keys(v1, first)
    slots = {v1.slot(k) for k in keys}
    migrations = tuple(
        plan_migration(a, b).only(("g", s) for s in slots) for a, b in itertools.pairwise(maps)
    )
    envelopes = tuple(encode_map(m, SIGNER.key_id, SIGNER.sign) for m in maps)
    tables = {R1: MemoryTable(R1), R2: MemoryTable(R2)}
    initialise(tables, v1)
    return Scenario(
        name, maps, keys, migrations, envelopes, {r: t.items for r, t in tables.items()}
    )


def _keys(shard_map: shardkit.ShardMap, migration: Migration) -> tuple[str, ...]:
    by_slot: dict[int, list[str]] = {}
    for k in (f"k{i}" for i in range(5000)):
        by_slot.setdefault(shard_map.slot(k), []).append(k)
    cross = next(m.slot for m in migration.cross_region if len(by_slot[m.slot]) >= 2)
    picked = by_slot[cross][:2]
    if migration.same_region:
        picked.append(by_slot[migration.same_region[0].slot][0])
    still = next(s for s in range(256) if migration.move("g", s) is None and by_slot.get(s))
    return (*picked, by_slot[still][0])


A1, B1, B2, C1 = ("a", R1), ("b", R1), ("b", R2), ("c", R1)
SCENARIOS = {
    s.name: s
    for s in (
        scenario("add-in-region", [A1, B2], [A1, B2, C1]),
        scenario("remove-middle", [A1, B2, C1], [A1, C1]),
        scenario("reweight", [A1, B2], [A1, B2], weights={"a": 3.0}),
        scenario("move-shard-across-regions", [A1, B1], [A1, B2]),
        scenario("add-then-roll-back", [A1, B2], [A1, B2, C1], rollback=True),
    )
}


# -- the scheduler: one thread runs at a time, switching at table operations ---------------------


class Crash(BaseException):
    """The control plane dies at an operation (BaseException: nothing may catch it)."""


class Actor:
    """A thread that runs ``fn`` one step at a time, as the scheduler says."""

    def __init__(self, scheduler: Scheduler, name: str, fn: Callable[[], Any]) -> None:
        self.scheduler, self.name, self.fn = scheduler, name, fn
        self.go = threading.Lock()  # held: wait; released by the scheduler: go
        self.go.acquire()
        self.done, self.crash = False, False
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True, name=name)
        self.thread.start()

    def _main(self) -> None:
        self.scheduler.local.actor = self
        self.go.acquire()
        try:
            self.result = self.fn()
        except BaseException as exc:  # reported, not raised: the scheduler looks at it
            self.error = exc
        finally:
            self.done = True
            self.scheduler.back.release()


class Scheduler:
    """Hands one baton between the main thread and the actors; counts operations (the clock)."""

    def __init__(self) -> None:
        self.back = threading.Lock()  # held: an actor runs; released by it: the main thread goes
        self.back.acquire()
        self.local = threading.local()
        self.clock = 0

    def actor(self) -> Actor | None:
        return getattr(self.local, "actor", None)

    def pause(self) -> None:
        """In an actor: wait here until scheduled (then make one operation)."""
        me = self.actor()
        if me is None:
            return
        self.back.release()
        me.go.acquire()
        if me.crash:
            raise Crash(me.name)
        self.clock += 1

    def run(self, actor: Actor) -> None:
        """Let ``actor`` make its next operation and run on to the one after (or its end)."""
        actor.go.release()
        if not self.back.acquire(timeout=30):
            raise AssertionError(f"{actor.name} did not come back: a deadlock in the model")

    def start(self, name: str, fn: Callable[[], Any]) -> Actor:
        actor = Actor(self, name, fn)
        self.run(actor)  # to its first operation
        return actor


@dataclass
class Log:
    """What happened, by the operation clock."""

    commits: list[tuple[int, str, str]] = field(default_factory=list)  # clock, pk, writer
    record_changes: list[tuple[int, str]] = field(default_factory=list)  # clock, pk


class ModelTable(Table):
    """A region's MemoryTable as one actor sees it: a pause before each operation, and a log of
    the state writes (by ``writer``) and record changes that succeed."""

    def __init__(self, inner: MemoryTable, scheduler: Scheduler, log: Log, writer: str) -> None:
        self.inner, self.scheduler, self.log, self.writer = inner, scheduler, log, writer
        self.name = inner.name

    def get(self, key: Key) -> Any:
        self.scheduler.pause()
        return self.inner.get(key)

    def get_many(self, keys: Sequence[Key]) -> Any:
        self.scheduler.pause()
        return self.inner.get_many(keys)

    def query(self, pk: str, *, after: str | None = None, limit: int | None = None) -> Page:
        self.scheduler.pause()
        return self.inner.query(pk, after=after, limit=limit)

    def write(self, op: Any) -> None:
        self.scheduler.pause()
        self.inner.write(op)
        self._logged([op])

    def transact(self, ops: Sequence[Any]) -> None:
        self.scheduler.pause()
        self.inner.transact(ops)
        self._logged(ops)

    def put_batch(self, items: Sequence[Any]) -> None:
        self.scheduler.pause()
        self.inner.put_batch(items)

    def _logged(self, ops: Sequence[Any]) -> None:
        for op in ops:
            if isinstance(op, Check):
                continue
            pk, sk = op.key
            if sk == SLOT_RECORD:
                self.log.record_changes.append((self.scheduler.clock, pk))
            elif isinstance(op, Put) and self.writer != "control":
                self.log.commits.append((self.scheduler.clock, pk, self.writer))


# -- broken variants (the checker must catch them) -------------------------------------------------


def switch_unchecked(tables: dict[str, Table], moves: Sequence[Any], version: int) -> None:
    """A switch that does not wait for the catch-up: the destination becomes active at once."""
    for m in moves:
        pk = partition(m.group, m.slot)
        src, dst = tables[m.source.region], tables[m.destination.region]
        if m.cross_region:
            src.write(Update((pk, SLOT_RECORD), {"owner": m.destination.shard, "state": "moved"}))
        dst.write(Put(SlotRecord(m.destination.shard, version, ACTIVE).item(pk)))


def copy_unfenced(tables: dict[str, Table], moves: Sequence[Any], version: int) -> None:
    """A catch-up that copies while the source still serves (before the fence)."""
    bulk_copy(tables, moves)
    for m in (m for m in moves if m.cross_region):
        pk = partition(m.group, m.slot)
        tables[m.destination.region].write(
            Put(SlotRecord(m.destination.shard, version, READY).item(pk))
        )


class UncheckedStore(StateStore):
    """A proxy's store that skips the slot check: it writes and answers from whatever copy it
    has, conditioned on ``seq`` alone (a cached state is still checked against the table)."""

    def __init__(self, table: Table, shard: str) -> None:
        super().__init__(_SkipChecks(table), shard)  # type: ignore[arg-type]

    def is_live(self, state: Any) -> bool:
        return True

    def confirm(self, group: str, slot: int, key: str, state: Any) -> None:
        if state.cached:
            item = self.table.get((partition(group, slot), key))
            if (int(item["seq"]) if item else 0) != state.seq:
                self._cache.pop((partition(group, slot), key), None)
                raise Conflict("the cached state is no longer current")


class _SkipChecks:
    """A table that drops the condition checks out of every transaction."""

    def __init__(self, inner: Table) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def transact(self, ops: Sequence[Any]) -> None:
        self.inner.transact([op for op in ops if not isinstance(op, Check)])


BROKEN = ("switch-before-catch-up", "copy-without-fence", "proxy-skips-slot-check")


def steps_for(
    migration: Migration, maps: Sequence[bytes], broken: str | None
) -> list[tuple[str, Callable[[Any], Any]]]:
    """The control plane's plan for one migration: (name, fn(world)) in order."""
    v = migration.version
    moves = list(migration.moves)
    fence_step = ("fence", lambda w: fence(w.control, moves))
    catch_step = ("catch-up", lambda w: catch_up(w.control, moves, v))
    switch_step = ("switch", lambda w: switch(w.control, moves, v))
    if broken == "switch-before-catch-up":
        switch_step = ("switch (unchecked)", lambda w: switch_unchecked(w.control, moves, v))
        middle = [fence_step, switch_step, catch_step]
    elif broken == "copy-without-fence":
        unfenced = ("copy (unfenced)", lambda w: copy_unfenced(w.control, moves, v))
        middle = [unfenced, fence_step, switch_step]
    else:
        middle = [fence_step, catch_step, switch_step]
    envelope = maps[v - 1]
    return [
        ("bulk copy", lambda w: bulk_copy(w.control, moves)),
        *middle,
        ("publish " + R1, lambda w: w.publish(R1, envelope)),
        ("publish " + R2, lambda w: w.publish(R2, envelope)),
        ("cleanup", lambda w: cleanup(w.control, moves)),
    ]


def abort_steps(migration: Migration) -> list[tuple[str, Callable[[Any], Any]]]:
    """Stop the migration before its map is out: give back what did not switch, then move back
    what did, by the reverse migration of those slots (the abort's result is journaled)."""
    moves = list(migration.moves)

    def back(w: Any) -> list[Any]:
        switched = {(m.group, m.slot) for m in w.outputs["abort"].switched}
        return list(migration.only(switched).reversed(migration.version + 1).moves)

    v = migration.version + 1
    return [
        ("abort", lambda w: abort(w.control, moves)),
        ("fence back", lambda w: fence(w.control, back(w))),
        ("catch up back", lambda w: catch_up(w.control, back(w), v)),
        ("switch back", lambda w: switch(w.control, back(w), v)),
    ]


# -- the model -------------------------------------------------------------------------------------


def infer(key: str, payload: Any, state: Any) -> tuple[Any, Any]:
    """A history per key: a write appends its id, a read answers the history."""
    ids = list((state or {}).get("ids", []))
    if payload["op"] == "read":
        return {"ids": ids}, None
    ids.append(payload["id"])
    return {"count": len(ids)}, {"ids": ids}


@dataclass
class Outcome:
    key: str
    op: str  # "write" | "read"
    rid: str
    start: int
    end: int = -1
    answer: Any = None  # None: not acknowledged


class _QuietTools:
    """Powertools' logger and metrics, silenced: the model makes thousands of requests."""

    class _Nothing:
        def __getattr__(self, name: str) -> Callable[..., None]:
            return lambda *a, **k: None

    logger = metrics = _Nothing()


class MigrationModel(RuleBasedStateMachine):
    scenario: Scenario = SCENARIOS["add-in-region"]
    broken: str | None = None
    stats: dict[str, int] = {}  # noqa: RUF012 - shared on purpose: counted across examples

    @initialize(abort_at=st.integers(0, 200))
    def setup(self, abort_at: int) -> None:
        """``abort_at``: abort at the control plane's op number ``abort_at`` if that comes
        before the map is published (a quarter of the examples, at most)."""
        s = self.scenario
        self.abort_at = abort_at if abort_at < 50 and self.broken is None else None
        self.control_ops, self.crashes = 0, 0
        self.windows: list[tuple[int, int]] = []  # from each fence to the end of its switch
        self.sched, self.log = Scheduler(), Log()
        self.tables = {r: MemoryTable(r, page_size=1, items=dict(s.initial[r])) for r in (R1, R2)}
        self.envelopes = list(s.envelopes)
        self.registry = dict.fromkeys((R1, R2), self.envelopes[0])
        self.control = {r: self._view(r, "control") for r in (R1, R2)}
        self.proxies = {
            (sh.id, sh.region): [self._proxy(sh.id, sh.region) for _ in range(INSTANCES)]
            for m in s.maps
            for sh in m.shards
        }
        self.clients = [self._client(region) for region in (R1, R2)]
        self.plan = [st for m in s.migrations for st in steps_for(m, self.envelopes, self.broken)]
        self.done_steps, self.aborted = 0, False
        self.outputs: dict[str, Any] = {}
        self.controller: Actor | None = None
        self.inflight: list[tuple[Actor, Outcome]] = []
        self.outcomes: list[Outcome] = []
        self.failures: list[str] = []
        self.rids = 0

    # -- the world's parts --

    def _view(self, region: str, writer: str) -> ModelTable:
        return ModelTable(self.tables[region], self.sched, self.log, writer)

    def _fetch(self, region: str) -> Callable[[], bytes]:
        def fetch() -> bytes:
            self.sched.pause()
            return self.registry[region]

        return fetch

    def _proxy(self, shard: str, region: str) -> Proxy:
        holder = MapHolder(TRUSTED, self._fetch(region), clock=lambda: T0 + 1)
        holder.offer(self.registry[region])
        store_type = UncheckedStore if self.broken == "proxy-skips-slot-check" else StateStore
        store = store_type(self._view(region, f"{shard}@{region}"), shard)
        return Proxy(shard=shard, region=region, holder=holder, store=store, infer=infer)

    def _client(self, region: str) -> RoutingClient:
        holder = MapHolder(TRUSTED, self._fetch(region), clock=lambda: T0 + 1)
        holder.offer(self.registry[region])
        policy = RetryPolicy(
            attempts=6, base_s=0, cap_s=0, budget_floor=1e9, avoid_s=0, failures_to_avoid=10**9
        )
        return RoutingClient(holder, MockTransport(self._send), retry=policy, sleep=lambda s: None)

    def _send(self, shard: Any, request: dict[str, Any]) -> dict[str, Any]:
        ask = self.sched.actor().ask  # type: ignore[union-attr]
        instances = self.proxies[(shard.id, shard.region)]
        reply = instances[ask["instance"] % len(instances)].handle(request)
        ask["instance"] += 1
        if ask["lose"] and reply.get("status") == 200:
            ask["lose"] = False
            raise TransportError("the reply was lost", retryable=True)
        return reply

    def publish(self, region: str, envelope: bytes) -> None:
        self.sched.pause()
        self.registry[region] = envelope

    # -- rules --

    @precondition(lambda self: len(self.inflight) < IN_FLIGHT)
    @rule(
        client=st.integers(0, CLIENTS - 1),
        key=st.integers(0, 3),
        write=st.booleans(),
        instance=st.integers(0, INSTANCES - 1),
        lose=st.booleans(),
        burst=st.booleans(),
    )
    def request(
        self, client: int, key: int, write: bool, instance: int, lose: bool, burst: bool
    ) -> None:
        """A client sends a request (a write or a read of one key, to one of the owner's two
        instances, its first reply lost or not); a burst runs it to its end at once."""
        k = self.scenario.keys[key % len(self.scenario.keys)]
        self.rids += 1
        rid = f"r{self.rids}"
        outcome = Outcome(k, "write" if write else "read", rid, self.sched.clock)
        payload = {"op": outcome.op, "id": rid}

        def call() -> Any:
            return self.clients[client].infer(k, payload, request_id=rid)

        actor = Actor(self.sched, rid, call)
        actor.ask = {"instance": instance, "lose": lose and write}  # type: ignore[attr-defined]
        self.sched.run(actor)
        while burst and not actor.done:
            self.sched.run(actor)
        self.inflight.append((actor, outcome))
        self._collect()

    @precondition(lambda self: bool(self.inflight))
    @rule(pick=st.integers(0, IN_FLIGHT - 1), ops=st.integers(1, 4))
    def advance(self, pick: int, ops: int) -> None:
        """One client request makes its next ``ops`` operations."""
        actor, _ = self.inflight[pick % len(self.inflight)]
        for _ in range(ops):
            if actor.done:
                break
            self.sched.run(actor)
        self._collect()

    @precondition(lambda self: self.done_steps < len(self.plan))
    @rule(ops=st.integers(1, 2))
    def control_plane(self, ops: int) -> None:
        """The control plane makes its next ``ops`` operations."""
        for _ in range(ops):
            if self.done_steps >= len(self.plan) or self.failures:
                break
            self._control_op()

    @precondition(lambda self: self.controller is not None)
    @rule(roll=st.integers(0, 1))
    def crash(self, roll: int) -> None:
        """The control plane dies at its next operation (one roll in two); the next run
        resumes from its journal, running the step it died in again."""
        if roll == 0:
            self._crash()

    def _control_op(self) -> None:
        self.control_ops += 1
        if self.control_ops == self.abort_at and self._may_abort():
            self._abort()
        elif self.controller is None:
            self.controller = self.sched.start("control", self._run_plan)
        else:
            self.sched.run(self.controller)
        self._collect()

    def _crash(self) -> None:
        assert self.controller is not None
        self.controller.crash = True
        self.crashes += 1
        self.sched.run(self.controller)
        self._collect()

    def _may_abort(self) -> bool:
        started = self.plan[: self.done_steps + 1]
        return not self.aborted and not any(name.startswith("publish") for name, _ in started)

    def _abort(self) -> None:
        """Stop before the map is out: the control plane dies, then runs the abort instead."""
        if self.controller is not None:
            self._crash()
        self.aborted = True
        self.plan, self.done_steps = abort_steps(self.scenario.migrations[0]), 0

    @invariant()
    def at_most_one_active_record_per_slot(self) -> None:
        for slot in self.scenario.slots:
            key = (partition("g", slot), SLOT_RECORD)
            active = [
                r for r, t in self.tables.items() if t.items.get(key, {}).get("state") == ACTIVE
            ]
            assert len(active) <= 1, f"slot {slot}: active in {active}"

    def _run_plan(self) -> None:
        while self.done_steps < len(self.plan):
            name, step = self.plan[self.done_steps]
            if name == "fence":
                self.windows.append((self.sched.clock, -1))
            self.outputs[name] = step(self)
            self.done_steps += 1  # the journal line (with the step's outputs), after the step
            if name.startswith("switch") and self.windows:
                self.windows[-1] = (self.windows[-1][0], self.sched.clock)

    def _collect(self) -> None:
        """Record what finished: client answers, and the control plane's end."""
        for actor, outcome in list(self.inflight):
            if actor.done:
                self.inflight.remove((actor, outcome))
                outcome.end = self.sched.clock
                if actor.error is None:
                    assert not actor.result.degraded
                    outcome.answer = actor.result.answer
                self.outcomes.append(outcome)
        if self.controller is not None and self.controller.done:
            error = self.controller.error
            if error is not None and not isinstance(error, Crash):
                self.failures.append(f"control plane: {type(error).__name__}: {error}")
            self.controller = None

    # -- the end of an example --

    def teardown(self) -> None:
        self._drain()
        self._count()
        assert not self.failures, self.failures
        final = self._final_histories()
        self._check_answers(final)
        self._check_writer_windows()
        self._check_end_state()

    def _drain(self) -> None:
        """Run everything still running to its end, round robin; then the rest of the plan."""
        for _ in range(100_000):
            if not self.inflight and (self.done_steps >= len(self.plan) or self.failures):
                return
            for actor, _ in list(self.inflight):
                self.sched.run(actor)
            if self.done_steps < len(self.plan) and not self.failures:
                self._control_op()
            self._collect()
        raise AssertionError("the model did not settle")

    def _count(self) -> None:
        stats = type(self).stats
        stats["examples"] = stats.get("examples", 0) + 1
        stats["operations"] = stats.get("operations", 0) + self.sched.clock
        stats["requests"] = stats.get("requests", 0) + len(self.outcomes)
        stats["acknowledged"] = stats.get("acknowledged", 0) + sum(
            o.answer is not None for o in self.outcomes
        )
        stats["aborted"] = stats.get("aborted", 0) + self.aborted
        stats["crashes"] = stats.get("crashes", 0) + self.crashes
        stats["during_moves"] = stats.get("during_moves", 0) + sum(
            any(o.start <= b and (o.end >= a or o.end < 0) for a, b in self.windows if b >= 0)
            for o in self.outcomes
        )
        state = repr(sorted((r, sorted(t.items.items())) for r, t in self.tables.items()))
        stats.setdefault("end_states", set()).add(hash(state))  # type: ignore[attr-defined]

    def _final_histories(self) -> dict[str, list[str]]:
        """Each key's history in its live copy: the table whose slot record is active."""
        out = {}
        for k in self.scenario.keys:
            pk = partition("g", self.scenario.maps[0].slot(k))
            live = [
                t
                for t in self.tables.values()
                if t.items.get((pk, SLOT_RECORD), {}).get("state") == ACTIVE
            ]
            assert len(live) == 1, f"{k}: {len(live)} active records at the end"
            item = live[0].items.get((pk, k))
            ids = _history(item)
            assert len(ids) == len(set(ids)), f"{k}: a write applied twice: {ids}"
            assert (int(item["seq"]) if item else 0) == len(ids), f"{k}: seq is not 1..n"
            out[k] = ids
        return out

    def _check_answers(self, final: dict[str, list[str]]) -> None:
        acked = [o for o in self.outcomes if o.answer is not None]
        for o in acked:
            history = final[o.key]
            if o.op == "write":
                n = o.answer["count"]
                assert history[n - 1 : n] == [o.rid], (
                    f"acknowledged write {o.rid} of {o.key} (#{n}) is not in its history {history}"
                )
            else:
                seen = o.answer["ids"]
                assert history[: len(seen)] == seen, (
                    f"read {o.rid} of {o.key} saw {seen}, not a prefix of {history}"
                )
                for w in acked:
                    if w.op == "write" and w.key == o.key and w.end <= o.start:
                        assert w.rid in seen, (
                            f"read {o.rid} of {o.key} (from op {o.start}) misses write {w.rid} "
                            f"acknowledged at op {w.end}: saw {seen}"
                        )

    def _check_writer_windows(self) -> None:
        changes: dict[str, list[int]] = {}
        for clock, pk in self.log.record_changes:
            changes.setdefault(pk, []).append(clock)
        last: dict[str, tuple[int, str]] = {}
        for clock, pk, writer in self.log.commits:
            before = last.get(pk)
            if before is not None and before[1] != writer:
                between = [c for c in changes.get(pk, []) if before[0] < c <= clock]
                assert between, (
                    f"{pk}: {before[1]} wrote at op {before[0]} and {writer} at op {clock} "
                    "with no change of the slot's records in between"
                )
            last[pk] = (clock, writer)

    def _check_end_state(self) -> None:
        target = self.scenario.maps[0] if self.aborted else self.scenario.maps[-1]
        published = self.envelopes[0] if self.aborted else self.envelopes[-1]
        assert set(self.registry.values()) == {published}
        for slot in self.scenario.slots:
            owner = target.groups["g"].primary[slot]
            record = self.tables[owner.region].items[(partition("g", slot), SLOT_RECORD)]
            assert (record["owner"], record["state"]) == (owner.id, ACTIVE), (slot, record)


def _history(item: Any) -> list[str]:
    """The write ids of a stored state item."""
    return [] if item is None else list(msgpack.unpackb(item["data"], raw=False)["state"]["ids"])


# -- the tests -------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def quiet_powertools(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(handler_module, "_tools", _QuietTools())
    yield


def machine(scenario: Scenario, broken: str | None = None) -> type[MigrationModel]:
    return type(
        f"Model_{scenario.name}_{broken or 'ok'}",
        (MigrationModel,),
        {"scenario": scenario, "broken": broken, "stats": {}},
    )


MODEL = settings(
    max_examples=15,
    stateful_step_count=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_protocol_keeps_every_invariant(name: str) -> None:
    model = machine(SCENARIOS[name])
    run_state_machine_as_test(model, settings=MODEL)
    stats = model.stats
    assert stats["examples"] >= MODEL.max_examples
    assert stats["acknowledged"] > 0 and stats["operations"] > 0
    assert stats["during_moves"] > 0 and stats["crashes"] > 0
    print(
        f"\n{name}: {stats['examples']} examples, {stats['operations']} operations, "
        f"{stats['requests']} requests ({stats['acknowledged']} acknowledged, "
        f"{stats['during_moves']} while slots moved), {stats['crashes']} crashes, "
        f"{stats['aborted']} aborted, {len(stats['end_states'])} distinct end states"
    )


@pytest.mark.parametrize("broken", BROKEN)
def test_the_checker_catches_a_broken_step(broken: str) -> None:
    model = machine(SCENARIOS["add-in-region"], broken)
    hunt = settings(MODEL, max_examples=200, phases=[Phase.generate], report_multiple_bugs=False)
    with pytest.raises(AssertionError) as caught:
        run_state_machine_as_test(model, settings=hunt)
    print(f"\n{broken} (found in {model.stats.get('examples', 0)} examples): {caught.value}")
    # Caught by the history checks, not by a step refusing to go on.
    assert re.search("is not in its history|misses write|no change of the slot", str(caught.value))
    for note in getattr(caught.value, "__notes__", []):
        print(note)
