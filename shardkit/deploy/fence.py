"""The fence step: the slot records of a map, written before the map goes out.

A plan's ``fence`` steps carry slot batches (see :mod:`shardkit.migrate.deploy`): the records of
a first deploy, or the switch of the slots a reshard moves. Once a slot's record names its new
owner, a shard still routing with the old map cannot write it (docs/architecture.md §4.4). The
state tables are reached through the facade, like every other AWS call of the control plane.

A restore must know which records a state table lacks: a table that exists is no proof that its
records do (:func:`unrecorded`). The fence steps themselves never write a record that is missing:
a move refuses it, so no slot gets an owner that nobody gave it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..aws.facade import Aws

__all__ = ["slot_records", "state_table", "unrecorded"]


def slot_records(aws: Aws, region: str, props: Mapping[str, Any]) -> dict[str, Any]:
    """Write the slot records of one ``fence`` step; returns the step's progress."""
    from ..migrate.deploy import run_batch

    return run_batch(lambda r, name: state_table(aws, r, name), region, props)


def unrecorded(
    aws: Aws, region: str, name: str, slots: Iterable[tuple[str, int]]
) -> set[tuple[str, int]]:
    """Of ``slots`` (group, slot), those without a record in the state table ``name`` of
    ``region`` (read-only: :data:`~shardkit.proxy.table.MAX_READ` records a call)."""
    from ..proxy.state import SLOT_RECORD, partition
    from ..proxy.table import MAX_READ

    table, wanted = state_table(aws, region, name), sorted(slots)
    missing = set()
    for start in range(0, len(wanted), MAX_READ):
        chunk = wanted[start : start + MAX_READ]
        items = table.get_many([(partition(g, slot), SLOT_RECORD) for g, slot in chunk])
        missing |= {pair for pair, item in zip(chunk, items, strict=True) if item is None}
    return missing


def state_table(aws: Aws, region: str, name: str) -> Any:
    """The state table ``name`` in ``region``, reached through the facade (a
    :class:`~shardkit.proxy.table.DynamoTable`)."""
    from ..proxy.table import DynamoTable

    return DynamoTable(_Dynamo(aws, region, name), name)


class _Dynamo:
    """The facade, spoken as a boto3 DynamoDB client (what :class:`DynamoTable` talks to)."""

    def __init__(self, aws: Aws, region: str, table: str) -> None:
        self._aws, self._region, self._table = aws, region, table

    def __getattr__(self, operation: str) -> Callable[..., dict[str, Any]]:
        def call(**params: Any) -> dict[str, Any]:
            return self._aws.call(
                "dynamodb", self._region, operation, resource=self._table, **params
            )

        return call
