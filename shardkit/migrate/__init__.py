"""Live resharding of slot-addressed state: the control plane's side (docs/migration.md).

* :mod:`shardkit.migrate.plan` - the pure planner: which slots move between two maps, same-region
  or cross-region, by source and destination;
* :mod:`shardkit.migrate.steps` - the steps over the state tables (bulk copy, fence, catch-up,
  switch, abort, cleanup, first-deploy records), each idempotent and safe to replay;
* :mod:`shardkit.migrate.deploy` - the slot-record steps ``shardkit deploy`` runs before it
  publishes a map.

The tables are :class:`shardkit.proxy.table.Table` objects (DynamoDB or in memory), one per
region; the records and items are laid out as :mod:`shardkit.proxy.state` describes.
"""

from __future__ import annotations

from .plan import Migration, Move, Place, format_slots, parse_slots, placements, plan_migration
from .steps import (
    Abort,
    Progress,
    abort,
    bulk_copy,
    catch_up,
    cleanup,
    fence,
    initialise,
    initialise_slots,
    slot_records,
    switch,
)

__all__ = [
    "Abort",
    "Migration",
    "Move",
    "Place",
    "Progress",
    "abort",
    "bulk_copy",
    "catch_up",
    "cleanup",
    "fence",
    "format_slots",
    "initialise",
    "initialise_slots",
    "parse_slots",
    "placements",
    "plan_migration",
    "slot_records",
    "switch",
]
