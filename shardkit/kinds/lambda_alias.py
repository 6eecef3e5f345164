"""``lambda_alias``: the alias callers invoke (``live``), on a published version.

Applying it publishes a version of its function and points the alias there; ``expand`` gives it
the function's fingerprint (``function_revision``), so any change of the function moves the
alias. The published version and the alias carry that fingerprint in their descriptions, as the
template's ``AWS::Lambda::Version`` and ``AWS::Lambda::Alias`` do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from ._calls import delete_quietly, upsert
from ._spec import Context, KindSpec, Probe, Props, Ref, RenderContext, Rendered
from .lambda_function import revision_description, version_id

if TYPE_CHECKING:
    from ..blueprint.model import Resource


class AliasProps(Props):
    function: str = Field(min_length=1, description="the lambda_function it belongs to")
    alias: str = Field(
        max_length=128,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="the alias's name; the resource is named `<function>:<alias>`",
    )
    function_revision: str = Field(
        "", description="set by `expand`: the function's fingerprint (do not write it)"
    )

    @field_validator("alias")
    @classmethod
    def _not_a_version(cls, value: str) -> str:
        if value.isdigit():
            raise ValueError("an alias name cannot be all digits (that is a version)")
        return value


def _description(p: AliasProps) -> dict[str, str]:
    return {"Description": revision_description(p.function_revision)} if p.function_revision else {}


class LambdaAlias(KindSpec[AliasProps]):
    name = "lambda_alias"
    props = AliasProps
    cfn_type = "AWS::Lambda::Alias"
    cfn_prefix = "Alias"
    name_limit = None  # `<function>:<alias>`: both parts are limited
    refs = (Ref("function", "lambda_function"),)

    def create(self, ctx: Context, region: str, name: str, props: AliasProps) -> dict[str, Any]:
        version = ctx.aws.call(
            "lambda",
            region,
            "publish_version",
            resource=props.function,
            FunctionName=props.function,
            **_description(props),
        )["Version"]
        out = upsert(
            ctx,
            "lambda",
            region,
            "create_alias",
            "update_alias",
            name,
            FunctionName=props.function,
            Name=props.alias,
            FunctionVersion=version,
            **_description(props),
        )
        return {"arn": out["AliasArn"], "version": version}

    def delete(self, ctx: Context, region: str, name: str, props: AliasProps) -> None:
        delete_quietly(
            ctx,
            "lambda",
            region,
            "delete_alias",
            name,
            FunctionName=props.function,
            Name=props.alias,
        )

    def probe(self, name: str, props: AliasProps) -> Probe:
        return Probe("lambda", "get_alias", {"FunctionName": props.function, "Name": props.alias})

    def render(self, r: Resource, props: AliasProps, ctx: RenderContext) -> Rendered:
        function_id = ctx.ref_id(r, "function")
        body = {
            "FunctionName": {"Ref": function_id},
            "FunctionVersion": {"Fn::GetAtt": [version_id(function_id), "Version"]},
            "Name": props.alias,
            **_description(props),
        }
        yield ctx.id(r), {"Type": self.cfn_type, "Properties": body}

    def summary(self, name: str, outputs: Mapping[str, Any]) -> dict[str, str]:
        return {"version": str(outputs.get("version", ""))}

    def name_problem(self, name: str, props: AliasProps) -> str | None:
        wanted = f"{props.function}:{props.alias}"
        return None if name == wanted else f"an alias resource is named {wanted!r}"
