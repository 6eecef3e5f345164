"""The slot-record steps: the records of a map, written before the map goes out.

A plan's ``fence`` steps carry the initial records of a first deploy; its ``migrate`` steps the
phases of a live migration (see :mod:`shardkit.migrate.live`). Once a slot's record names its
new owner, a shard still routing with the old map cannot write it (docs/architecture.md §4.4).
The state tables, the warm-up invocations and the SLO guard's CloudWatch reads go through the
facade, like every other AWS call of the control plane.

A restore must know which records a state table lacks: a table that exists is no proof that its
records do (:func:`unrecorded`). The fence steps themselves never write a record that is missing:
a move refuses it, so no slot gets an owner that nobody gave it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..aws.facade import INVOKE, Aws
from ..errors import AwsUnreachableError, MigrationError

__all__ = ["Events", "migrate_step", "slot_records", "state_table", "unrecorded"]

Events = Callable[[dict[str, Any]], None]


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


def migrate_step(
    aws: Aws,
    state_dir: Path,
    plan_id: str,
    region: str,
    props: Mapping[str, Any],
    events: Events | None = None,
) -> dict[str, Any]:
    """Run one ``migrate`` step (a phase of a live migration); returns what it did."""
    from ..migrate.guard import cloudwatch_reader
    from ..migrate.ledger import Ledger
    from ..migrate.live import LiveContext, run_phase

    service = str(props.get("guard", {}).get("service", ""))
    ctx = LiveContext(
        table_for=lambda r, name: state_table(aws, r, name),
        region=region,
        plan_id=plan_id,
        ledger=Ledger(state_dir),
        report=events or (lambda event: None),
        invoke=lambda r, function, qualifier: _warm(aws, r, function, qualifier),
        read_metrics=cloudwatch_reader(
            lambda r, op, **params: aws.call("cloudwatch", r, op, resource="metrics", **params),
            service,
        )
        if service
        else None,
    )
    return run_phase(ctx, props)


def _warm(aws: Aws, region: str, function: str, qualifier: str) -> dict[str, Any]:
    """Invoke a shard with the warm-up event; what its handler says (``cold``: it started)."""
    from ..migrate.live import WARM_EVENT

    out = aws.call(
        INVOKE,
        region,
        "invoke",
        resource=function,
        FunctionName=function,
        Qualifier=qualifier,
        Payload=json.dumps(WARM_EVENT).encode(),
    )
    answer = _answer(out, f"{function}:{qualifier}", region)
    if out.get("FunctionError") or not isinstance(answer, dict) or "warm" not in answer:
        raise MigrationError(
            f"shard function {function}:{qualifier} in {region} failed its warm-up: {answer!r}",
            hint="the new shard cannot serve; nothing was fenced. Fix it and deploy again",
        )
    return answer


def _answer(out: Mapping[str, Any], function: str, region: str) -> Any:
    """The JSON an invocation returned; a reply cut short is an unreachable shard (the warm-up
    tries again), one that is not JSON a failed warm-up."""
    from botocore.exceptions import BotoCoreError

    payload = out.get("Payload")
    try:
        body = payload.read() if hasattr(payload, "read") else payload
    except BotoCoreError as exc:
        raise AwsUnreachableError(
            f"lambda:invoke in {region} on {function}: the reply was cut short: {exc}",
            operation="invoke",
            region=region,
        ) from None
    try:
        return json.loads(body or b"null")
    except ValueError:
        raise MigrationError(
            f"shard function {function} in {region} answered its warm-up with no JSON: "
            f"{body[:200]!r}",
            hint="the new shard cannot serve; nothing was fenced. Fix it and deploy again",
        ) from None


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
