"""``alarm``: a CloudWatch alarm on one metric of a shard function (``Errors``, ``Throttles``).

One settings dict (name, description, metric, dimension, statistic, period, threshold, ...) is
what apply puts and what the template holds; only the function's name is a ``Ref`` there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from ._calls import delete_quietly
from ._spec import Context, KindSpec, Probe, Props, Ref, RenderContext, Rendered, camel

if TYPE_CHECKING:
    from ..blueprint.model import Resource


class AlarmProps(Props):
    function: str = Field(min_length=1, description="the lambda_function it watches")
    metric: str = Field(min_length=1, description="a Lambda metric, e.g. `Errors`")
    threshold: float = Field(description="alarm at or above this value")
    statistic: Literal["Sum", "Average", "Minimum", "Maximum", "SampleCount"] = Field(
        "Sum", description="how the metric is aggregated per period"
    )
    period_s: int = Field(60, description="seconds per period: 10, 30 or a multiple of 60")
    evaluation_periods: int = Field(1, ge=1, description="periods over the threshold to alarm")

    @field_validator("period_s")
    @classmethod
    def _period(cls, value: int) -> int:
        if value not in (10, 30) and (value <= 0 or value % 60):
            raise ValueError("must be 10, 30 or a positive multiple of 60")
        return value


def _settings(name: str, p: AlarmProps, function: Any) -> dict[str, Any]:
    return {
        "AlarmName": name,
        "AlarmDescription": (
            f"{p.metric} ({p.statistic}) of {p.function} reached {p.threshold:g} in {p.period_s} s"
        ),
        "Namespace": "AWS/Lambda",
        "MetricName": p.metric,
        "Dimensions": [{"Name": "FunctionName", "Value": function}],
        "Statistic": p.statistic,
        "Period": p.period_s,
        "EvaluationPeriods": p.evaluation_periods,
        "Threshold": p.threshold,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",
    }


class Alarm(KindSpec[AlarmProps]):
    name = "alarm"
    props = AlarmProps
    cfn_type = "AWS::CloudWatch::Alarm"
    cfn_prefix = "Alarm"
    name_limit = 255
    refs = (Ref("function", "lambda_function"),)

    def create(self, ctx: Context, region: str, name: str, props: AlarmProps) -> dict[str, Any]:
        ctx.aws.call(
            "cloudwatch",
            region,
            "put_metric_alarm",
            resource=name,
            **_settings(name, props, props.function),
        )
        return {"arn": f"arn:{ctx.partition}:cloudwatch:{region}:{ctx.account}:alarm:{name}"}

    def delete(self, ctx: Context, region: str, name: str, props: AlarmProps) -> None:
        delete_quietly(ctx, "cloudwatch", region, "delete_alarms", name, AlarmNames=[name])

    def probe(self, name: str, props: AlarmProps) -> Probe:
        return Probe(
            "cloudwatch",
            "describe_alarms",
            {"AlarmNames": [name]},
            lambda answer: bool(answer.get("MetricAlarms")),
        )

    def render(self, r: Resource, props: AlarmProps, ctx: RenderContext) -> Rendered:
        body = _settings(r.name, props, {"Ref": ctx.ref_id(r, "function")})
        yield ctx.id(r), {"Type": self.cfn_type, "Properties": body}

    def logical_suffix(self, r: Resource, props: AlarmProps) -> str:
        """The alarm's name after its function's (``...-eu-0-errors`` -> ``Errors``)."""
        rest = r.name.removeprefix(props.function) if r.name.startswith(props.function) else r.name
        return camel(rest) or camel(props.metric)
