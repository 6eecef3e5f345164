"""``function_url``: a shard function's HTTPS endpoint, on its alias, with AWS_IAM auth only.

Shard functions are never public: any other ``auth_type`` is refused when the blueprint is
expanded, so neither apply nor the template can make one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from ._calls import delete_quietly, upsert
from ._spec import Context, KindSpec, Probe, Props, Ref, RenderContext, Rendered

if TYPE_CHECKING:
    from ..blueprint.model import Resource


class UrlProps(Props):
    function: str = Field(min_length=1, description="the lambda_function it serves")
    qualifier: str | None = Field(
        None, description="the alias it serves (a lambda_alias of the function); none: $LATEST"
    )
    auth_type: Literal["AWS_IAM"] = Field(
        "AWS_IAM", description="callers sign requests with SigV4; the only type allowed"
    )

    @field_validator("auth_type", mode="before")
    @classmethod
    def _never_public(cls, value: Any) -> Any:
        if value != "AWS_IAM":
            raise ValueError(
                "only AWS_IAM is allowed: shard functions are never public; callers sign "
                "requests with SigV4"
            )
        return value


def _target(p: UrlProps) -> dict[str, str]:
    return {"FunctionName": p.function, **({"Qualifier": p.qualifier} if p.qualifier else {})}


class FunctionUrl(KindSpec[UrlProps]):
    name = "function_url"
    props = UrlProps
    cfn_type = "AWS::Lambda::Url"
    cfn_prefix = "FunctionUrl"
    name_limit = None  # named after its function
    refs = (
        Ref("function", "lambda_function"),
        Ref("qualifier", "lambda_alias", name="{function}:{qualifier}"),
    )

    def create(self, ctx: Context, region: str, name: str, props: UrlProps) -> dict[str, Any]:
        out = upsert(
            ctx,
            "lambda",
            region,
            "create_function_url_config",
            "update_function_url_config",
            name,
            AuthType=props.auth_type,
            **_target(props),
        )
        return {"url": out["FunctionUrl"]}

    def update(self, ctx: Context, region: str, name: str, props: UrlProps) -> dict[str, Any]:
        out = ctx.aws.call(
            "lambda",
            region,
            "update_function_url_config",
            resource=name,
            AuthType=props.auth_type,
            **_target(props),
        )
        return {"url": out["FunctionUrl"]}

    def delete(self, ctx: Context, region: str, name: str, props: UrlProps) -> None:
        delete_quietly(ctx, "lambda", region, "delete_function_url_config", name, **_target(props))

    def probe(self, name: str, props: UrlProps) -> Probe:
        return Probe("lambda", "get_function_url_config", _target(props))

    def render(self, r: Resource, props: UrlProps, ctx: RenderContext) -> Rendered:
        if props.qualifier:
            target: dict[str, Any] = {"Ref": ctx.ref_id(r, "qualifier")}  # an alias's Ref: ARN
        else:
            target = {"Fn::GetAtt": [ctx.ref_id(r, "function"), "Arn"]}
        body = {"AuthType": props.auth_type, "TargetFunctionArn": target}
        yield ctx.id(r), {"Type": self.cfn_type, "Properties": body}

    def outputs(self, r: Resource, props: UrlProps, lid: str) -> dict[str, Any]:
        return {
            "Url" + lid.removeprefix(self.cfn_prefix): {
                "Description": f"Function URL of shard {r.shard} ({props.auth_type} auth)",
                "Value": {"Fn::GetAtt": [lid, "FunctionUrl"]},
            }
        }

    def summary(self, name: str, outputs: Mapping[str, Any]) -> dict[str, str]:
        return {"url": str(outputs.get("url", ""))}
