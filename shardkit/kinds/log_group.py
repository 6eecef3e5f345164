"""``log_group``: a shard function's CloudWatch log group, with a retention period.

Deleted with its shard, in the template too: a retained group would block adding the shard back
(its name is fixed), and its events expire after the retention period anyway.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from ..errors import AwsConflictError
from ._calls import delete_quietly
from ._spec import Context, KindSpec, Probe, Props, RenderContext, Rendered

if TYPE_CHECKING:
    from ..blueprint.model import Resource

#: The retention periods CloudWatch Logs accepts, in days.
Retention = Literal[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
]  # fmt: skip


class LogGroupProps(Props):
    retention_days: Retention = Field(
        description="days its events are kept (the values CloudWatch Logs accepts)"
    )


class LogGroup(KindSpec[LogGroupProps]):
    name = "log_group"
    props = LogGroupProps
    cfn_type = "AWS::Logs::LogGroup"
    cfn_prefix = "LogGroup"
    name_limit = 512

    def create(self, ctx: Context, region: str, name: str, props: LogGroupProps) -> dict[str, Any]:
        with contextlib.suppress(AwsConflictError):
            ctx.aws.call("logs", region, "create_log_group", resource=name, logGroupName=name)
        return self.update(ctx, region, name, props)

    def update(self, ctx: Context, region: str, name: str, props: LogGroupProps) -> dict[str, Any]:
        ctx.aws.call(
            "logs",
            region,
            "put_retention_policy",
            resource=name,
            logGroupName=name,
            retentionInDays=props.retention_days,
        )
        return {"arn": f"arn:{ctx.partition}:logs:{region}:{ctx.account}:log-group:{name}"}

    def delete(self, ctx: Context, region: str, name: str, props: LogGroupProps) -> None:
        delete_quietly(ctx, "logs", region, "delete_log_group", name, logGroupName=name)

    def probe(self, name: str, props: LogGroupProps) -> Probe:
        return Probe(
            "logs",
            "describe_log_groups",
            {"logGroupNamePrefix": name},
            lambda answer: any(g["logGroupName"] == name for g in answer.get("logGroups", [])),
        )

    def render(self, r: Resource, props: LogGroupProps, ctx: RenderContext) -> Rendered:
        body = {
            "LogGroupName": r.name,
            "RetentionInDays": props.retention_days,
            "Tags": ctx.tags(r),
        }
        yield (
            ctx.id(r),
            {
                "Type": self.cfn_type,
                "DeletionPolicy": "Delete",
                "UpdateReplacePolicy": "Delete",
                "Properties": body,
            },
        )
