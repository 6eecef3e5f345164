"""The live migration as plan steps: prepare, copy, cutover and cleanup (docs/migration.md).

A reshard's slots are planned per group and destination region (a *batch*, see
:mod:`shardkit.migrate.deploy`); each batch becomes up to three journaled ``migrate`` steps, run
in order in the destination region's thread of the executor, and a later ``cleanup`` step:

* **prepare** - record the migration's start (the ledger), then invoke each destination shard
  once with a warm-up event, so the first requests after the switch find a warm proxy, and
  report how many of those invocations were cold starts. A shard that cannot be reached yet
  (a worker still starting) is tried again with a bounded backoff; one that cannot answer
  stops the deploy here, before any slot is touched.
* **copy** (cross-region slots only) - the bulk copy, while the old owners keep serving.
* **cutover** - the SLO guard, then fence the cross-region slots, catch up, the guard again,
  switch every slot of the batch (same-region slots in place: they are never fenced), and record
  the source copies for cleanup after the rollback window. Fence, catch-up and switch are one
  journaled step on purpose: any failure in it (the guard's included) gives the slots that have
  not switched back to their old owners, so a resume must fence and catch up again - a journal
  saying "caught up" would then be a lie. A killed apply leaves the slots fenced until the
  cutover is run again (a resume, or the next deploy) or rolled back.
* **cleanup** - delete a switched batch's source copies (conditional on the source record still
  saying ``moved``) and drop its ledger entry.

Every phase reports events (``report(dict)``: phase, slots, items of the total, bytes, catch-up
lag, fenced window) that the CLI prints or emits as JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    AwsError,
    AwsThrottledError,
    AwsUnreachableError,
    MigrationError,
    PlanFileError,
)
from ..proxy.state import RESERVED_PREFIX, partition
from ..proxy.table import Table, query_all
from .guard import Budget, Guard, ReadMetrics
from .ledger import Ledger
from .plan import Move, Place, format_slots, parse_slots
from .steps import Progress, abort, bulk_copy, catch_up, cleanup, fence, switch

__all__ = ["PHASES", "WARM_BACKOFF_S", "WARM_EVENT", "LiveContext", "parse_batch", "run_phase"]

PHASES = ("prepare", "copy", "cutover", "cleanup")
WARM_EVENT = {"shardkit": "warm"}  # what the proxy's handler answers without serving a key
#: The waits between warm-up tries of a shard that cannot be reached yet (about half a minute).
WARM_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
REFUSED = "EndpointConnectionError"  # the code of an AwsUnreachableError nothing answered

Report = Callable[[dict[str, Any]], None]
# (region, function, qualifier) -> {"cold": bool}; raises if the function does not answer
Invoke = Callable[[str, str, str], Mapping[str, Any]]


@dataclass
class LiveContext:
    """What a migrate step runs with: the tables, the executor's plan and its I/O."""

    table_for: Callable[[str, str], Table]  # (region, table name) -> the table
    region: str
    plan_id: str
    ledger: Ledger
    report: Report = lambda event: None
    invoke: Invoke | None = None
    read_metrics: ReadMetrics | None = None
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    _started: float | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Batch:
    group: str
    version: int
    tables: dict[str, Table]
    moves: list[Move]

    @property
    def cross(self) -> list[Move]:
        return [m for m in self.moves if m.cross_region]

    def shards(self) -> dict[str, str]:
        """Every shard the batch involves, old and new owners: ``{shard: region}``."""
        return {p.shard: p.region for m in self.moves for p in (m.source, m.destination)}


def parse_batch(ctx: LiveContext, props: Mapping[str, Any]) -> Batch:
    """The batch a step's props describe; a clear error if they are malformed."""
    try:
        tables = {r: ctx.table_for(r, name) for r, name in props["tables"].items()}
        group = str(props["group"])
        moves = [
            Move(
                group,
                slot,
                Place(m["source"], m["source_region"]),
                Place(m["destination"], m.get("destination_region", ctx.region)),
            )
            for m in props["moves"]
            for slot in parse_slots(m["slots"])
        ]
        return Batch(group, int(props["version"]), tables, moves)
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanFileError(f"a migrate step's props are malformed: {exc!r}") from None


def run_phase(ctx: LiveContext, props: Mapping[str, Any]) -> dict[str, Any]:
    """Run one migrate step; returns what it did (the journal keeps it)."""
    phase = props.get("phase")
    if phase not in _PHASES:
        raise PlanFileError(f"a migrate step names phase {phase!r}; expected one of {PHASES}")
    batch = parse_batch(ctx, props)
    if phase != "cleanup":
        ctx._started = ctx.ledger.begin(ctx.plan_id, batch.version, ctx.clock())
    return _PHASES[phase](ctx, batch, props)


def _event(ctx: LiveContext, batch: Batch, phase: str, **fields: Any) -> None:
    event = {"phase": phase, "group": batch.group, "region": ctx.region, **fields}
    ctx.report(event)
    if phase != "cleanup":
        ctx.ledger.note(ctx.plan_id, event)


def _prepare(ctx: LiveContext, batch: Batch, props: Mapping[str, Any]) -> dict[str, Any]:
    warm = list(props.get("warm", []))
    cold = 0
    for target in warm:
        if ctx.invoke is None:
            break
        answer = _warm(ctx, target["function"], target["qualifier"])
        cold += bool(answer.get("cold"))
    warmed = len(warm) if ctx.invoke is not None else 0
    _event(ctx, batch, "prepare", shards=warmed, cold_starts=cold, slots=len(batch.moves))
    return {"warmed": warmed, "cold_starts": cold}


def _warm(ctx: LiveContext, function: str, qualifier: str) -> Mapping[str, Any]:
    """One warm-up invocation, tried again while the shard's reply is cut short or throttled (a
    worker still starting, a function still becoming active) after each wait of
    ``WARM_BACKOFF_S``; then a MigrationError - before any slot of the batch is touched. An
    endpoint that refuses the connection is down, not starting: that fails at once."""
    assert ctx.invoke is not None
    last: AwsError | None = None
    for wait in (0.0, *WARM_BACKOFF_S):
        if wait:
            ctx.sleep(wait)
        try:
            return ctx.invoke(ctx.region, function, qualifier)
        except (AwsUnreachableError, AwsThrottledError) as exc:
            if exc.code == REFUSED:
                raise MigrationError(
                    f"shard function {function}:{qualifier} in {ctx.region} cannot be warmed: "
                    f"{exc.message}",
                    hint="nothing was fenced; check that the endpoint is up (for the local "
                    "cloud: `shardkit local up PROJECT_DIR`), then deploy again (it resumes)",
                ) from None
            last = exc
    raise MigrationError(
        f"shard function {function}:{qualifier} in {ctx.region} did not answer its warm-up in "
        f"{len(WARM_BACKOFF_S) + 1} tries over {sum(WARM_BACKOFF_S):g}s: "
        f"{last.message if last else ''}",
        hint="nothing was fenced; check that the function can start (`shardkit logs`) and that "
        "its endpoint is up, then deploy again (it resumes)",
    )


def _copy(ctx: LiveContext, batch: Batch, props: Mapping[str, Any]) -> dict[str, Any]:
    cross = batch.cross
    total = sum(_items(batch.tables[m.source.region], m) for m in cross)
    done = Progress()
    every = max(1, len(cross) // 20)
    for i, m in enumerate(cross, 1):
        done += bulk_copy(batch.tables, [m])
        if i % every == 0 or i == len(cross):
            _event(
                ctx,
                batch,
                "copy",
                slots=i,
                slots_total=len(cross),
                items=done.items,
                items_total=total,
                bytes=done.bytes,
            )
    return {**done.to_dict(), "items_total": total}


def _cutover(ctx: LiveContext, batch: Batch, props: Mapping[str, Any]) -> dict[str, Any]:
    guard = _guard(ctx, batch, props)
    cross = batch.cross
    fenced_at = None
    try:
        guard("fence")
        fenced = fence(batch.tables, cross)
        fenced_at = ctx.clock()
        _event(ctx, batch, "fence", slots=fenced.slots + fenced.skipped, slots_total=len(cross))
        caught = catch_up(batch.tables, cross, batch.version)
        _event(
            ctx,
            batch,
            "catch-up",
            slots=caught.slots + caught.skipped,
            items=caught.items,
            bytes=caught.bytes,
            lag_s=round(ctx.clock() - fenced_at, 3),
        )
        guard("switch")
        switched = switch(batch.tables, batch.moves, batch.version)
    except Exception as exc:
        given = abort(batch.tables, batch.moves)
        _event(
            ctx,
            batch,
            "aborted",
            given_back=given.progress.slots,
            switched=len(given.switched),
            reason=getattr(exc, "message", str(exc)),
        )
        raise
    window = None if fenced_at is None else round(ctx.clock() - fenced_at, 3)
    _event(ctx, batch, "switch", slots=switched.slots + switched.skipped, fenced_s=window)
    if cross:
        _remember_cleanup(ctx, batch, props)
    return {
        "switched": switched.slots + switched.skipped,
        "fenced": len(cross),
        "caught_up_items": caught.items,
        "fenced_s": window,
    }


def _guard(ctx: LiveContext, batch: Batch, props: Mapping[str, Any]) -> Callable[[str], None]:
    """``check(phase)``: the SLO guard over the batch's shards (a no-op without metrics)."""
    if ctx.read_metrics is None or "guard" not in props:
        return lambda phase: None
    guard = Guard(
        Budget.from_dict(props["guard"]),
        ctx.read_metrics,
        batch.shards(),
        ctx._started or ctx.clock(),
        clock=ctx.clock,
        sleep=ctx.sleep,
        report=lambda event: _event(ctx, batch, "guard", **event),
    )

    def check(phase: str) -> None:
        reading = guard.check(phase)
        _event(ctx, batch, "guard", before=phase, **reading.to_dict())

    return check


def _remember_cleanup(ctx: LiveContext, batch: Batch, props: Mapping[str, Any]) -> None:
    now = ctx.clock()
    moves = [m for m in props["moves"] if m["source_region"] != ctx.region]
    ctx.ledger.add_cleanup(
        {
            "id": f"v{batch.version}:{batch.group}:{ctx.region}",
            "group": batch.group,
            "version": batch.version,
            "region": ctx.region,
            "moves": moves,
            "slots": format_slots(m.slot for m in batch.cross),
            "tables": dict(props["tables"]),
            "switched_at": now,
            "due_at": now + float(props.get("rollback_window_s", 3600)),
        }
    )


def _cleanup(ctx: LiveContext, batch: Batch, props: Mapping[str, Any]) -> dict[str, Any]:
    done = cleanup(batch.tables, batch.cross)
    if "cleanup_id" not in props:
        raise MigrationError("a cleanup step names no ledger entry (cleanup_id)")
    ctx.ledger.remove_cleanup(str(props["cleanup_id"]))
    _event(ctx, batch, "cleanup", slots=done.slots, skipped=done.skipped, items=done.items)
    return done.to_dict()


def _items(table: Table, m: Move) -> int:
    """The items of a slot in ``table`` (its record not counted)."""
    items = query_all(table, partition(m.group, m.slot))
    return sum(1 for i in items if not str(i["sk"]).startswith(RESERVED_PREFIX))


_PHASES: dict[str, Callable[[LiveContext, Batch, Mapping[str, Any]], dict[str, Any]]] = {
    "prepare": _prepare,
    "copy": _copy,
    "cutover": _cutover,
    "cleanup": _cleanup,
}
