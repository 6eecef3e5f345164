"""``schedule_rule``: an EventBridge rule that fires on a schedule, once per region.

It will drive an auto-shard controller; until one consumes it the shipped blueprint keeps it
``DISABLED`` and it has no targets. ``put_rule`` creates or updates it, so ``create`` is the
update too.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from ._calls import delete_quietly
from ._spec import Context, KindSpec, Probe, Props, RenderContext, Rendered

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


class ScheduleRule(KindSpec[RuleProps]):
    name = "schedule_rule"
    props = RuleProps
    cfn_type = "AWS::Events::Rule"
    cfn_prefix = "ScheduleRule"
    name_limit = 64

    def create(self, ctx: Context, region: str, name: str, props: RuleProps) -> dict[str, Any]:
        out = ctx.aws.call("events", region, "put_rule", resource=name, **_settings(name, props))
        return {"arn": out["RuleArn"]}

    def delete(self, ctx: Context, region: str, name: str, props: RuleProps) -> None:
        delete_quietly(ctx, "events", region, "delete_rule", name, Name=name)

    def probe(self, name: str, props: RuleProps) -> Probe:
        return Probe("events", "describe_rule", {"Name": name})

    def render(self, r: Resource, props: RuleProps, ctx: RenderContext) -> Rendered:
        yield ctx.id(r), {"Type": self.cfn_type, "Properties": _settings(r.name, props)}

    def name_problem(self, name: str, props: RuleProps) -> str | None:
        if re.fullmatch(r"[.\-_A-Za-z0-9]+", name):
            return None
        return "a rule name may hold only letters, digits, '.', '-' and '_'"
