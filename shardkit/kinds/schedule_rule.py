"""``schedule_rule``: an EventBridge rule that fires on a schedule, once per region.

It drives the auto-shard controller: with ``target`` (a ``lambda_function`` of the blueprint, in
the same region) the rule invokes that function on every tick, and EventBridge is allowed to
(a resource policy statement on the function). The shipped blueprint enables it, with the
controller as its target, in the home region of a project that has an autoshard policy; elsewhere
it stays ``DISABLED`` with no target. ``put_rule`` creates or updates it and the targets are made
to match, so ``create`` is the update too.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from ..errors import AwsConflictError
from ._calls import delete_quietly
from ._spec import Context, KindSpec, Probe, Props, Ref, RenderContext, Rendered

if TYPE_CHECKING:
    from ..blueprint.model import Resource

_RATE = re.compile(r"rate\((?:1 (?:minute|hour|day)|(?:[2-9]|[1-9]\d+) (?:minutes|hours|days))\)")
_CRON = re.compile(r"cron\(\S+( \S+){5}\)")


class RuleProps(Props):
    schedule: str = Field(
        description='an EventBridge schedule expression: "rate(1 minute)", "cron(0 * * * ? *)"'
    )
    state: Literal["ENABLED", "DISABLED"] = Field("ENABLED", description="whether it fires")
    description: str = Field("", max_length=512, description="what it is for")
    target: str | None = Field(
        None, description="the lambda_function it invokes on every tick; none: no target"
    )

    @field_validator("schedule")
    @classmethod
    def _expression(cls, value: str) -> str:
        if not (_RATE.fullmatch(value) or _CRON.fullmatch(value)):
            raise ValueError(
                'not a schedule expression: use "rate(1 minute)", "rate(5 minutes)" (singular '
                'unit for 1) or "cron(<6 fields>)"'
            )
        return value


def _settings(name: str, p: RuleProps) -> dict[str, Any]:
    settings = {"Name": name, "ScheduleExpression": p.schedule, "State": p.state}
    return {**settings, "Description": p.description} if p.description else settings


_ID = "shardkit-target"  # the one target a rule of a blueprint has


def _retarget(ctx: Context, region: str, name: str, arn: str, target: str | None) -> None:
    """Make the rule's targets exactly ``target`` (and let EventBridge invoke it)."""
    have = ctx.aws.call("events", region, "list_targets_by_rule", resource=name, Rule=name)
    stale = [t["Id"] for t in have.get("Targets", []) if not target or t["Id"] != _ID]
    if stale:
        ctx.aws.call("events", region, "remove_targets", resource=name, Rule=name, Ids=stale)
    if not target:
        return
    function = ctx.aws.call("lambda", region, "get_function", resource=target, FunctionName=target)
    function_arn = function["Configuration"]["FunctionArn"]
    with contextlib.suppress(AwsConflictError):  # allowed already, by an earlier apply
        ctx.aws.call(
            "lambda",
            region,
            "add_permission",
            resource=target,
            FunctionName=target,
            StatementId=f"{name}-invoke",
            Action="lambda:InvokeFunction",
            Principal="events.amazonaws.com",
            SourceArn=arn,
        )
    ctx.aws.call(
        "events",
        region,
        "put_targets",
        resource=name,
        Rule=name,
        Targets=[{"Id": _ID, "Arn": function_arn}],
    )


class ScheduleRule(KindSpec[RuleProps]):
    name = "schedule_rule"
    props = RuleProps
    cfn_type = "AWS::Events::Rule"
    cfn_prefix = "ScheduleRule"
    name_limit = 64
    refs = (Ref("target", "lambda_function"),)

    def create(self, ctx: Context, region: str, name: str, props: RuleProps) -> dict[str, Any]:
        out = ctx.aws.call("events", region, "put_rule", resource=name, **_settings(name, props))
        arn = out["RuleArn"]
        _retarget(ctx, region, name, arn, props.target)
        return {"arn": arn}

    def delete(self, ctx: Context, region: str, name: str, props: RuleProps) -> None:
        if props.target:
            delete_quietly(ctx, "events", region, "remove_targets", name, Rule=name, Ids=[_ID])
        delete_quietly(ctx, "events", region, "delete_rule", name, Name=name)

    def probe(self, name: str, props: RuleProps) -> Probe:
        return Probe("events", "describe_rule", {"Name": name})

    def render(self, r: Resource, props: RuleProps, ctx: RenderContext) -> Rendered:
        body: dict[str, Any] = _settings(r.name, props)
        if not props.target:
            yield ctx.id(r), {"Type": self.cfn_type, "Properties": body}
            return
        function = {"Fn::GetAtt": [ctx.ref_id(r, "target"), "Arn"]}
        body["Targets"] = [{"Id": _ID, "Arn": function}]
        yield ctx.id(r), {"Type": self.cfn_type, "Properties": body}
        permission = {
            "Action": "lambda:InvokeFunction",
            "FunctionName": function,
            "Principal": "events.amazonaws.com",
            "SourceArn": {"Fn::GetAtt": [ctx.id(r), "Arn"]},
        }
        yield ctx.id(r) + "Invoke", {"Type": "AWS::Lambda::Permission", "Properties": permission}

    def name_problem(self, name: str, props: RuleProps) -> str | None:
        if re.fullmatch(r"[.\-_A-Za-z0-9]+", name):
            return None
        return "a rule name may hold only letters, digits, '.', '-' and '_'"
