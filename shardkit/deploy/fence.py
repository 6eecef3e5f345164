"""The fence step: a shard's epoch record, written before a map that changes its slots goes out.

A shard still routing with the old map cannot write once its epoch record is higher than the
epoch it holds (docs/architecture.md §4.4).
"""

from __future__ import annotations

from ..aws.facade import Aws
from ..errors import AwsError

__all__ = ["fence"]


def fence(aws: Aws, region: str, shard: str, table: str, epoch: int) -> None:
    """Write ``shard``'s epoch record; never lowers it, so replaying the step is harmless."""
    from ..proxy.state import fence_item

    try:
        aws.call(
            "dynamodb",
            region,
            "put_item",
            resource=f"{table} ({shard} epoch)",
            TableName=table,
            Item=fence_item(shard, epoch),
            ConditionExpression="attribute_not_exists(pk) OR epoch < :epoch",
            ExpressionAttributeValues={":epoch": {"N": str(epoch)}},
        )
    except AwsError as exc:
        if exc.code != "ConditionalCheckFailedException":
            raise
