"""``dynamodb_table``: a region's state table (per-key state and the slots' records).

The key schema comes from the properties, for apply and template alike, and so does the TTL
attribute (the shipped blueprint's ``ttl``: load records carry it; slot records, state and the
deploy lock never do). A table's keys cannot
change in place, so applying a blueprint whose keys differ from the existing table's is refused
(it holds data) instead of leaving the two silently different. ``retain``: destroy keeps it
unless asked to delete the data, and the template retains it too.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ..errors import AwsConflictError, DeployError
from ._calls import delete_quietly, wait_until
from ._spec import RETAIN, Context, KindSpec, Probe, Props, RenderContext, Rendered

if TYPE_CHECKING:
    from ..blueprint.model import Resource


class TableProps(Props):
    partition_key: str = Field(
        min_length=1, max_length=255, description="name of the HASH key (a string attribute)"
    )
    sort_key: str | None = Field(
        None, min_length=1, max_length=255, description="name of the RANGE key, if any (string)"
    )
    billing_mode: Literal["PAY_PER_REQUEST"] = Field(
        "PAY_PER_REQUEST", description="on-demand capacity, the only mode shardkit manages"
    )
    sse: bool = Field(True, description="server-side encryption with a KMS key")
    point_in_time_recovery: bool = Field(True, description="continuous backups")
    ttl_attribute: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="the number attribute (Unix seconds) after which DynamoDB deletes an item "
        "(TTL); none: items never expire",
    )


def _keys(p: TableProps) -> list[tuple[str, str]]:
    keys = [(p.partition_key, "HASH")]
    if p.sort_key:
        keys.append((p.sort_key, "RANGE"))
    return keys


def _key_schema(p: TableProps) -> dict[str, Any]:
    """``AttributeDefinitions`` and ``KeySchema``: the same shape in the API and the template."""
    return {
        "AttributeDefinitions": [{"AttributeName": k, "AttributeType": "S"} for k, _ in _keys(p)],
        "KeySchema": [{"AttributeName": k, "KeyType": t} for k, t in _keys(p)],
    }


def _pitr(p: TableProps) -> dict[str, bool]:
    return {"PointInTimeRecoveryEnabled": p.point_in_time_recovery}


def _ttl(ctx: Context, region: str, name: str, attribute: str | None) -> None:
    """Make the table's TTL ``attribute`` (or none); a call only when it differs, as DynamoDB
    refuses to set what is set already."""
    have = ctx.aws.call("dynamodb", region, "describe_time_to_live", resource=name, TableName=name)[
        "TimeToLiveDescription"
    ]
    on = have.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")
    current = have.get("AttributeName") if on else None
    if current == attribute:
        return
    spec = {"AttributeName": attribute or current, "Enabled": attribute is not None}
    ctx.aws.call(
        "dynamodb",
        region,
        "update_time_to_live",
        resource=name,
        TableName=name,
        TimeToLiveSpecification=spec,
    )


class DynamodbTable(KindSpec[TableProps]):
    name = "dynamodb_table"
    props = TableProps
    cfn_type = "AWS::DynamoDB::Table"
    cfn_prefix = "StateTable"
    name_limit = 255
    retain = True
    bootstrap = True

    def create(self, ctx: Context, region: str, name: str, props: TableProps) -> dict[str, Any]:
        # An existing table of our name is adopted: it is ours, and it may hold data.
        with contextlib.suppress(AwsConflictError):
            ctx.aws.call(
                "dynamodb",
                region,
                "create_table",
                resource=name,
                TableName=name,
                BillingMode=props.billing_mode,
                SSESpecification={"Enabled": props.sse},
                **_key_schema(props),
            )
        return self.update(ctx, region, name, props)

    def update(self, ctx: Context, region: str, name: str, props: TableProps) -> dict[str, Any]:
        table = _wait_active(ctx, region, name)
        wanted = _key_schema(props)["KeySchema"]
        if table["KeySchema"] != wanted:
            raise DeployError(
                f"table {name} in {region} has the key schema {_keys_text(table['KeySchema'])}, "
                f"the blueprint wants {_keys_text(wanted)}; a table's keys cannot change",
                hint="keep the table's keys in the blueprint definition, or delete the table "
                "and its data first (shardkit destroy --delete-data)",
            )
        ctx.aws.call(
            "dynamodb",
            region,
            "update_continuous_backups",
            resource=name,
            TableName=name,
            PointInTimeRecoverySpecification=_pitr(props),
        )
        _ttl(ctx, region, name, props.ttl_attribute)
        return {"arn": f"arn:{ctx.partition}:dynamodb:{region}:{ctx.account}:table/{name}"}

    def delete(self, ctx: Context, region: str, name: str, props: TableProps) -> None:
        delete_quietly(ctx, "dynamodb", region, "delete_table", name, TableName=name)

    def probe(self, name: str, props: TableProps) -> Probe:
        return Probe("dynamodb", "describe_table", {"TableName": name})

    def render(self, r: Resource, props: TableProps, ctx: RenderContext) -> Rendered:
        body: dict[str, Any] = {
            "TableName": r.name,
            "BillingMode": props.billing_mode,
            **_key_schema(props),
            "SSESpecification": {"SSEEnabled": props.sse},
            "PointInTimeRecoverySpecification": _pitr(props),
            "Tags": ctx.tags(r),
        }
        if props.ttl_attribute:
            body["TimeToLiveSpecification"] = {
                "AttributeName": props.ttl_attribute,
                "Enabled": True,
            }
        # shard state lives here: a stack deletion or replacement must never drop it
        yield ctx.id(r), {"Type": self.cfn_type, **RETAIN, "Properties": body}

    def outputs(self, r: Resource, props: TableProps, lid: str) -> dict[str, Any]:
        return {
            lid + "Name": {
                "Description": "DynamoDB table of the shards' state",
                "Value": {"Ref": lid},
            }
        }

    def summary(self, name: str, outputs: Any) -> dict[str, str]:
        return {"table": name}


def _wait_active(ctx: Context, region: str, name: str) -> dict[str, Any]:
    """The table's description once it is ACTIVE."""
    seen: dict[str, Any] = {}

    def state() -> str | None:
        seen.update(
            ctx.aws.call("dynamodb", region, "describe_table", resource=name, TableName=name)[
                "Table"
            ]
        )
        return None if seen["TableStatus"] == "ACTIVE" else str(seen["TableStatus"])

    wait_until(f"table {name} in {region}", state)
    return seen


def _keys_text(schema: list[dict[str, str]]) -> str:
    return ", ".join(f"{k['AttributeName']} {k['KeyType']}" for k in schema)
