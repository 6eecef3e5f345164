"""The engine's side of a live migration: the slot steps a plan gets, what it moves, and status.

:func:`plan_slots` is what :class:`~shardkit.deploy.engine.Deployer` plans for the state tables:
the initial records and the migration batches of :mod:`shardkit.migrate.deploy`, with the
project's ``[migration]`` settings (SLO guard, rollback window) and the destination shards to
warm, plus a ``cleanup`` step for each ledger entry whose rollback window is over and whose
slots the plan does not move.

:func:`summarize` counts what a plan's migration moves - slots, same-region and cross-region, and
the items the copy will carry - per jurisdiction and destination region, reading the source
tables (one Query per cross-region slot; nothing is written). :func:`status` is what ``shardkit
status`` shows: a migration an unfinished apply left running, and the rollback windows left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from ..blueprint.model import Blueprint
from ..config.loader import Project
from ..migrate.deploy import SlotBatch, cleanup_batches, configure, slot_batches
from ..migrate.ledger import Ledger
from ..migrate.plan import parse_slots
from ..proxy.state import RESERVED_PREFIX, partition
from ..proxy.table import Table, query_all
from ..sharding.shardmap import ShardMap
from .plan import Plan

__all__ = ["only_cleanup", "plan_slots", "status", "summarize"]


def plan_slots(
    project: Project,
    blueprint: Blueprint,
    ledger: Ledger,
    old: ShardMap | None,
    new: ShardMap,
    fresh: Iterable[str],
    unrecorded: Iterable[tuple[str, int]] = (),
    *,
    now: float | None = None,
    warm: bool = True,
) -> list[SlotBatch]:
    """The slot steps of deploying ``new`` over ``old`` (see the module docstring)."""
    settings = project.config.migration
    guard = {
        "error_budget": settings.error_budget,
        "min_requests": settings.min_requests,
        "window_s": settings.window_s,
        "on_breach": settings.on_breach,
        "pause_s": settings.pause_s,
        "service": f"shardkit-{project.config.project.name}",
    }
    batches = configure(
        slot_batches(old, new, fresh, unrecorded),
        guard=guard,
        rollback_window_s=settings.rollback_window_h * 3600,
        warm=_functions(blueprint) if warm else {},
    )
    due = ledger.due(time.time() if now is None else now)
    return batches + cleanup_batches(_not_moving(due, batches))


def _not_moving(entries: list[dict[str, Any]], batches: list[SlotBatch]) -> list[dict[str, Any]]:
    """The cleanups that touch no slot this plan moves. A source copy may be the destination of
    this very migration (a slot moving back): its catch-up writes where the cleanup would delete,
    both while the record says ``moved``. Such an entry waits for a later deploy, when its
    cleanup finds the slot live again and deletes nothing."""
    moving = {
        (b.group, slot)
        for b in batches
        for m in b.props.get("moves", ())
        for slot in parse_slots(m["slots"])
    }
    return [
        e
        for e in entries
        if not any((e["group"], s) in moving for m in e["moves"] for s in parse_slots(m["slots"]))
    ]


def only_cleanup(plan: Plan, deployment: int) -> Plan:
    """A deploy plan whose only steps are due cleanups is a cleanup: it changes no layout, so
    it is not a deployment (a rollback still goes back to the layout before the reshard)."""
    cleanup = [s for s in plan.steps if s.action == "migrate" and s.props["phase"] == "cleanup"]
    if not cleanup or len(cleanup) != len(plan.steps):
        return plan
    return replace(plan, kind="cleanup", deployment=deployment)


def _functions(blueprint: Blueprint) -> dict[str, tuple[str, str]]:
    """shard -> (function name, alias the function URL serves)."""
    aliases = {r.props["function"]: r.props["alias"] for r in blueprint.of_kind("lambda_alias")}
    return {
        str(r.shard): (r.name, aliases.get(r.name, "$LATEST"))
        for r in blueprint.of_kind("lambda_function")
        if r.shard
    }


def summarize(
    plan: Plan, jurisdiction: dict[str, str], table_for: Callable[[str, str], Table]
) -> list[dict[str, Any]]:
    """Per jurisdiction and destination region: slots that switch in place, slots copied across
    regions (and from where), and the items and bytes stored under the copied slots now."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for step in plan.steps:
        if step.action != "migrate" or step.props.get("phase") != "cutover":
            continue
        region = step.region
        row = rows.setdefault(
            (jurisdiction.get(region, "?"), region),
            {
                "jurisdiction": jurisdiction.get(region, "?"),
                "region": region,
                "groups": [],
                "in_place": 0,
                "copied": 0,
                "from": [],
                "items": 0,
                "bytes": 0,
            },
        )
        group = step.props["group"]
        if group not in row["groups"]:
            row["groups"].append(group)
        for m in step.props["moves"]:
            slots = parse_slots(m["slots"])
            if m["source_region"] == region:
                row["in_place"] += len(slots)
                continue
            row["copied"] += len(slots)
            if m["source_region"] not in row["from"]:
                row["from"].append(m["source_region"])
            table = table_for(m["source_region"], step.props["tables"][m["source_region"]])
            for slot in slots:
                for item in query_all(table, partition(group, slot)):
                    if not str(item["sk"]).startswith(RESERVED_PREFIX):
                        row["items"] += 1
                        row["bytes"] += len(bytes(item.get("data", b"")))  # type: ignore[arg-type]
    return [rows[k] for k in sorted(rows)]


def status(ledger: Ledger, pending_plans: list[str], now: float | None = None) -> dict[str, Any]:
    """The migration an unfinished apply left running, and the rollback windows left."""
    return ledger.status(time.time() if now is None else now, pending_plans)
