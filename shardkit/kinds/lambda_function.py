"""``lambda_function``: a shard's function (code from the region's artifact bucket).

Apply and template share one settings dict (runtime, handler, memory, timeout, environment,
logging), differing only in how they name the role, log group and code bucket (an ARN or name
for the API, ``Fn::GetAtt``/``Ref`` in the template). The template also gets an
``AWS::Lambda::Version``: its description carries the function's fingerprint, so any change
publishes a new version, as the ``lambda_alias`` kind does on apply.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from ..errors import AwsConflictError
from ._calls import delete_quietly, wait_until
from ._spec import RETAIN, Context, KindSpec, Probe, Props, Ref, RenderContext, Rendered
from .iam_role import role_arn

if TYPE_CHECKING:
    from ..blueprint.model import Resource

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


def _env_value(value: Any) -> Any:
    """Environment variables are strings; TOML may give numbers or booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int | float) else value


class Code(Props):
    bucket: str = Field(description="the bucket holding the code package")
    key: str = Field(description="the package's object key")
    sha256: str = Field("", description="hex SHA-256 of the package")


class FunctionProps(Props):
    role: str = Field(min_length=1, description="the iam_role it runs as")
    runtime: str = Field(min_length=1, description='a Lambda runtime, e.g. "python3.12"')
    handler: str = Field(min_length=1, description="module.function of the entry point")
    memory_mb: int = Field(ge=128, le=10240, description="memory, MB")
    timeout_s: int = Field(ge=1, le=900, description="timeout, seconds")
    code: Code = Field(description="where the code package is: { bucket, key, sha256 }")
    architecture: Literal["arm64", "x86_64"] = Field("arm64", description="instruction set")
    reserved_concurrency: int | None = Field(
        None, ge=0, description="reserved concurrent executions; none if unset"
    )
    log_group: str | None = Field(None, description="the log_group it logs to")
    log_format: Literal["JSON", "Text"] = Field("JSON", description="format of its log events")
    environment: dict[str, Annotated[str, BeforeValidator(_env_value)]] = Field(
        default_factory=dict, description="environment variables (a table; values as strings)"
    )


def revision_description(fingerprint: str) -> str:
    """The description of a published version (and its alias): the function's fingerprint."""
    return f"shardkit revision {fingerprint}"


def version_id(function_id: str) -> str:
    """The logical id of the version rendered with the function ``function_id``."""
    return "Version" + function_id.removeprefix(LambdaFunction.cfn_prefix)


def _settings(p: FunctionProps, log_group: Any) -> dict[str, Any]:
    """What the API and the template both call the function's settings."""
    logging: dict[str, Any] = {"LogFormat": p.log_format}
    if p.log_group is not None:
        logging["LogGroup"] = log_group
    return {
        "Runtime": p.runtime,
        "Handler": p.handler,
        "MemorySize": p.memory_mb,
        "Timeout": p.timeout_s,
        "Environment": {"Variables": dict(p.environment)},
        "LoggingConfig": logging,
    }


class LambdaFunction(KindSpec[FunctionProps]):
    name = "lambda_function"
    props = FunctionProps
    cfn_type = "AWS::Lambda::Function"
    cfn_prefix = "Function"
    name_limit = 64
    refs = (
        Ref("role", "iam_role"),
        Ref("log_group", "log_group"),
        Ref("code.bucket", "s3_bucket", required=False),
    )

    def _config(self, ctx: Context, name: str, props: FunctionProps) -> dict[str, Any]:
        return {
            "FunctionName": name,
            "Role": role_arn(ctx, props.role),
            **_settings(props, props.log_group),
        }

    def create(self, ctx: Context, region: str, name: str, props: FunctionProps) -> dict[str, Any]:
        try:
            out = ctx.aws.call(
                "lambda",
                region,
                "create_function",
                resource=name,
                Code={"S3Bucket": props.code.bucket, "S3Key": props.code.key},
                Architectures=[props.architecture],
                **self._config(ctx, name, props),
            )
        except AwsConflictError:
            return self.update(ctx, region, name, props)
        _settle(ctx, region, name)
        _concurrency(ctx, region, name, props, clear=False)
        return {"arn": out["FunctionArn"]}

    def update(self, ctx: Context, region: str, name: str, props: FunctionProps) -> dict[str, Any]:
        ctx.aws.call(
            "lambda",
            region,
            "update_function_code",
            resource=name,
            FunctionName=name,
            S3Bucket=props.code.bucket,
            S3Key=props.code.key,
            Architectures=[props.architecture],
        )
        _settle(ctx, region, name)
        out = ctx.aws.call(
            "lambda",
            region,
            "update_function_configuration",
            resource=name,
            **self._config(ctx, name, props),
        )
        _settle(ctx, region, name)
        _concurrency(ctx, region, name, props, clear=True)
        return {"arn": out["FunctionArn"]}

    def delete(self, ctx: Context, region: str, name: str, props: FunctionProps) -> None:
        delete_quietly(ctx, "lambda", region, "delete_function", name, FunctionName=name)

    def probe(self, name: str, props: FunctionProps) -> Probe:
        return Probe("lambda", "get_function_configuration", {"FunctionName": name})

    def render(self, r: Resource, props: FunctionProps, ctx: RenderContext) -> Rendered:
        bucket = ctx.find_id(r, "code.bucket")
        log_group = {"Ref": ctx.ref_id(r, "log_group")} if props.log_group is not None else None
        body: dict[str, Any] = {
            "FunctionName": r.name,
            "Code": {
                "S3Bucket": {"Ref": bucket} if bucket else props.code.bucket,
                "S3Key": props.code.key,
            },
            "Role": {"Fn::GetAtt": [ctx.ref_id(r, "role"), "Arn"]},
            "Architectures": [props.architecture],
            **_settings(props, log_group),
            "Tags": ctx.tags(r),
        }
        if not props.environment:
            del body["Environment"]  # an empty table says nothing
        if props.reserved_concurrency is not None:
            body["ReservedConcurrentExecutions"] = props.reserved_concurrency
        lid = ctx.id(r)
        yield lid, {"Type": self.cfn_type, "Properties": body}
        yield (
            version_id(lid),
            {"Type": "AWS::Lambda::Version", **RETAIN, "Properties": _version(r, props, lid)},
        )

    def summary(self, name: str, outputs: Mapping[str, Any]) -> dict[str, str]:
        return {"function": name}


def _version(r: Resource, props: FunctionProps, function_id: str) -> dict[str, Any]:
    """A version is immutable: its Description carries the function's fingerprint, so any change
    to the function replaces the version, which publishes a new one. Old versions are retained,
    for rollback and for traffic still draining off them."""
    body: dict[str, Any] = {
        "FunctionName": {"Ref": function_id},
        "Description": revision_description(r.fingerprint),
    }
    if _HEX_SHA256.fullmatch(props.code.sha256):  # Lambda's CodeSha256: base64 of the digest
        body["CodeSha256"] = base64.b64encode(bytes.fromhex(props.code.sha256)).decode()
    return body


def _concurrency(
    ctx: Context, region: str, name: str, props: FunctionProps, *, clear: bool
) -> None:
    """Reserve the concurrency asked for; with none asked, ``clear`` removes an earlier one."""
    if props.reserved_concurrency is not None:
        ctx.aws.call(
            "lambda",
            region,
            "put_function_concurrency",
            resource=name,
            FunctionName=name,
            ReservedConcurrentExecutions=props.reserved_concurrency,
        )
    elif clear:
        delete_quietly(
            ctx, "lambda", region, "delete_function_concurrency", name, FunctionName=name
        )


def _settle(ctx: Context, region: str, name: str) -> None:
    """Wait until the function is Active and no update is in progress: AWS refuses the next
    change (or a version publication) until then."""

    def state() -> str | None:
        conf = ctx.aws.call(
            "lambda", region, "get_function_configuration", resource=name, FunctionName=name
        )
        if conf.get("State") == "Pending":
            return "pending"
        return "updating" if conf.get("LastUpdateStatus") == "InProgress" else None

    wait_until(f"function {name} in {region}", state)
