"""Render a blueprint as CloudFormation: one JSON template per region, with no AWS calls.

The deploy engine applies a blueprint with direct API calls; this module is the reviewable,
exportable view of the same resources. Each kind maps to one CloudFormation type (a Lambda
function also gets an ``AWS::Lambda::Version``, published again whenever the function changes).

Design points:

- **One template per region.** A resource goes to the template of its own region, and a shard's
  resources all live in the shard's region, so a template never holds another jurisdiction's
  resources. IAM is global, but a role goes with its shard.
- **Logical ids are derived, not stored**: ``Function`` + the shard id in CamelCase
  (``FunctionEu0``), ``StateTable``, ``ArtifactBucket``. If two resources of a template would
  get the same id (shard ids ``eu-0`` and ``eu0``), both get a hash of their key appended, so ids
  are always unique and depend only on the blueprint.
- **References are intrinsic functions**: a property that names another resource of the
  blueprint (a function's role, log group or code bucket; an alias's function) becomes ``Ref`` or
  ``Fn::GetAtt``, which is also how CloudFormation learns the order.
- **Account-independent**: expand the definition with ``account="${AWS::AccountId}"`` and
  ``partition="${AWS::Partition}"`` (:func:`blueprint_for_render`); every property string that
  then contains ``${AWS::`` is wrapped in ``Fn::Sub``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..config.loader import Project
from ..errors import ConfigError
from ..keys import format_trusted_keys
from ..sharding.shardmap import ShardMap
from .definition import CodeArtifact, expand, load_definition
from .model import Blueprint, Resource

__all__ = [
    "ACCOUNT",
    "PARTITION",
    "blueprint_for_render",
    "logical_ids",
    "render",
    "render_region",
    "trusted_keys_value",
]

#: The account and partition a blueprint is expanded with for rendering: CloudFormation's pseudo
#: parameters, resolved when the template is deployed.
ACCOUNT = "${AWS::AccountId}"
PARTITION = "${AWS::Partition}"

_FORMAT_VERSION = "2010-09-09"
_PREFIX = {
    "s3_bucket": "ArtifactBucket",
    "dynamodb_table": "StateTable",
    "log_group": "LogGroup",
    "iam_role": "Role",
    "lambda_function": "Function",
    "lambda_alias": "Alias",
    "function_url": "FunctionUrl",
    "alarm": "Alarm",
}
_RETAIN = {"DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain"}
_NOT_AWS_VAR = re.compile(r"\$\{(?!AWS::)")  # a literal "${" inside Fn::Sub is written "${!"
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")

Rendered = Iterator[tuple[str, dict[str, Any]]]


def blueprint_for_render(
    project: Project,
    shard_map: ShardMap,
    code: CodeArtifact,
    *,
    blueprint: str | None = None,
) -> Blueprint:
    """The project's blueprint as the deploy engine expands it, but for no account in particular
    (see :func:`render`).

    ``blueprint`` is a shipped definition's name or a path to a ``.toml`` definition; by default
    the project's ``proxy.blueprint``. The shard functions trust the map signers whose ``.pub``
    files are in the project's key directory (none if it has none yet).
    """
    return expand(
        load_definition(blueprint or project.config.proxy.blueprint),
        config=project.config,
        shard_map=shard_map,
        account=ACCOUNT,
        code=code,
        partition=PARTITION,
        trusted_keys=trusted_keys_value(project),
    )


def trusted_keys_value(project: Project) -> str:
    """``id=base64,...`` of the project's public keys: what the proxy's ``SHARDKIT_TRUSTED_KEYS``
    holds (parsed by :func:`shardkit.sharding.holder.parse_trusted_keys`)."""
    return format_trusted_keys(project.keys_dir)


def render(blueprint: Blueprint) -> dict[str, dict[str, Any]]:
    """One CloudFormation template (a JSON-able dict) per region of the blueprint."""
    return {region: render_region(blueprint, region) for region in blueprint.regions}


def render_region(blueprint: Blueprint, region: str) -> dict[str, Any]:
    """The CloudFormation template of the blueprint's resources in ``region``."""
    ctx = _Context(blueprint, region)
    resources: dict[str, dict[str, Any]] = {}
    for r in ctx.resources:
        for lid, body in _RENDER[r.kind](r, ctx):
            about = {"kind": r.kind, "fingerprint": r.fingerprint}
            body["Metadata"] = {"shardkit": {**about, "shard": r.shard} if r.shard else about}
            resources[lid] = body
    shards = sorted({r.shard for r in ctx.resources if r.shard})
    return {
        "AWSTemplateFormatVersion": _FORMAT_VERSION,
        "Description": (
            f"shardkit {blueprint.project}: blueprint {blueprint.name} in {region}, "
            f"{len(shards)} shard(s)"
        ),
        "Metadata": {
            "shardkit": {
                "project": blueprint.project,
                "blueprint": blueprint.name,
                "region": region,
                "shards": shards,
            }
        },
        "Resources": resources,
        "Outputs": _outputs(ctx),
    }


def logical_ids(resources: Sequence[Resource]) -> dict[str, str]:
    """Resource key -> CloudFormation logical id, for the resources of one template."""
    wanted = {r.key: _PREFIX[r.kind] + _camel(r.shard or "") + _suffix(r) for r in resources}
    seen: dict[str, int] = {}
    for lid in wanted.values():
        seen[lid] = seen.get(lid, 0) + 1
    ids = {key: lid if seen[lid] == 1 else lid + _short_hash(key) for key, lid in wanted.items()}
    if len(set(ids.values())) != len(ids):  # a hash clash: 32 bits, so practically never
        raise ConfigError(
            "blueprint",
            ["two resources of one region map to one logical id"],
            hint="rename one of the resources or shards",
        )
    return ids


class _Context:
    """The resources of one region, their logical ids, and lookups between them."""

    def __init__(self, blueprint: Blueprint, region: str) -> None:
        self.blueprint = blueprint
        self.region = region
        self.resources = blueprint.in_region(region)
        self.ids = logical_ids(self.resources)
        self._by_name = {(r.kind, r.name): r for r in self.resources}

    def id(self, r: Resource) -> str:
        return self.ids[r.key]

    def find(self, kind: str, name: str) -> Resource | None:
        return self._by_name.get((kind, name))

    def ref_id(self, r: Resource, prop: str, kind: str) -> str:
        """The logical id of the ``kind`` resource that ``r.props[prop]`` names."""
        target = self.find(kind, _need(r, prop))
        if target is None:
            raise self.error(
                r,
                f"props.{prop} = {r.props[prop]!r}: no {kind} of that name in {self.region}",
                hint="define it in the blueprint definition, "
                "in the same scope ([[shard]] or [[region]])",
            )
        return self.id(target)

    def tags(self, r: Resource) -> list[dict[str, str]]:
        tags = {
            "shardkit:project": self.blueprint.project,
            "shardkit:blueprint": self.blueprint.name,
        }
        if r.shard:
            tags["shardkit:shard"] = r.shard
        return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]

    def error(self, r: Resource, problem: str, *, hint: str | None = None) -> ConfigError:
        return ConfigError(
            f"blueprint {self.blueprint.name}",
            [f"{r.kind} {r.name!r} in {self.region}: {problem}"],
            hint=hint,
        )


def _need(r: Resource, prop: str) -> Any:
    """``r.props[prop]``, which CloudFormation needs."""
    if prop not in r.props:
        raise ConfigError(
            "blueprint",
            [f"{r.kind} {r.name!r} in {r.region}: props.{prop}: required to render it"],
            hint="add the property to the blueprint definition",
        )
    return r.props[prop]


# --- one function per kind: (logical id, resource body) pairs --------------------------------


def _s3_bucket(r: Resource, ctx: _Context) -> Rendered:
    p = r.props
    props: dict[str, Any] = {
        "BucketName": r.name,
        "BucketEncryption": {
            "ServerSideEncryptionConfiguration": [
                {"ServerSideEncryptionByDefault": {"SSEAlgorithm": p.get("encryption", "AES256")}}
            ]
        },
        "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
        "Tags": ctx.tags(r),
    }
    if p.get("versioning", True):
        props["VersioningConfiguration"] = {"Status": "Enabled"}
    if p.get("block_public_access", True):
        props["PublicAccessBlockConfiguration"] = {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
    # it holds the signed map registry and the code packages: never deleted with the stack
    yield ctx.id(r), {"Type": "AWS::S3::Bucket", **_RETAIN, "Properties": _sub(props)}


def _dynamodb_table(r: Resource, ctx: _Context) -> Rendered:
    p = r.props
    if p.get("billing_mode", "PAY_PER_REQUEST") != "PAY_PER_REQUEST":
        raise ctx.error(
            r, f"props.billing_mode = {p['billing_mode']!r}: only PAY_PER_REQUEST is rendered"
        )
    keys = [(_need(r, "partition_key"), "HASH")]
    if p.get("sort_key"):
        keys.append((p["sort_key"], "RANGE"))
    props = {
        "TableName": r.name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [{"AttributeName": k, "AttributeType": "S"} for k, _ in keys],
        "KeySchema": [{"AttributeName": k, "KeyType": t} for k, t in keys],
        "SSESpecification": {"SSEEnabled": bool(p.get("sse", True))},
        "PointInTimeRecoverySpecification": {
            "PointInTimeRecoveryEnabled": bool(p.get("point_in_time_recovery", True))
        },
        "Tags": ctx.tags(r),
    }
    # shard state lives here: a stack deletion or replacement must never drop it
    yield ctx.id(r), {"Type": "AWS::DynamoDB::Table", **_RETAIN, "Properties": _sub(props)}


def _log_group(r: Resource, ctx: _Context) -> Rendered:
    props = {
        "LogGroupName": r.name,
        "RetentionInDays": _need(r, "retention_days"),
        "Tags": ctx.tags(r),
    }
    # Deleted with its shard, on purpose: a retained group would block adding the shard back
    # (its name is fixed), and its events expire after RetentionInDays anyway.
    yield (
        ctx.id(r),
        {
            "Type": "AWS::Logs::LogGroup",
            "DeletionPolicy": "Delete",
            "UpdateReplacePolicy": "Delete",
            "Properties": _sub(props),
        },
    )


def _iam_role(r: Resource, ctx: _Context) -> Rendered:
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": _need(r, "assume_service")},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    props: dict[str, Any] = {
        "RoleName": r.name,
        "AssumeRolePolicyDocument": trust,
        "Tags": ctx.tags(r),
    }
    if r.props.get("description"):
        props["Description"] = r.props["description"]
    if r.props.get("policy"):
        props["Policies"] = [
            {"PolicyName": f"{r.name}-policy", "PolicyDocument": r.props["policy"]}
        ]
    yield ctx.id(r), {"Type": "AWS::IAM::Role", "Properties": _sub(props)}


def _lambda_function(r: Resource, ctx: _Context) -> Rendered:
    p = r.props
    code = _need(r, "code")
    if not isinstance(code, Mapping) or not {"bucket", "key"} <= code.keys():
        raise ctx.error(r, "props.code: must be a table with bucket and key (and sha256)")
    bucket = ctx.find("s3_bucket", code["bucket"])
    props: dict[str, Any] = {
        "FunctionName": r.name,
        "Code": {
            "S3Bucket": {"Ref": ctx.id(bucket)} if bucket else code["bucket"],
            "S3Key": code["key"],
        },
        "Role": {"Fn::GetAtt": [ctx.ref_id(r, "role", "iam_role"), "Arn"]},
        "Runtime": _need(r, "runtime"),
        "Handler": _need(r, "handler"),
        "Architectures": [p.get("architecture", "arm64")],
        "MemorySize": _need(r, "memory_mb"),
        "Timeout": _need(r, "timeout_s"),
        "Tags": ctx.tags(r),
    }
    if p.get("reserved_concurrency") is not None:
        props["ReservedConcurrentExecutions"] = p["reserved_concurrency"]
    if p.get("environment"):
        props["Environment"] = {
            "Variables": {k: _env_value(v) for k, v in p["environment"].items()}
        }
    if "log_group" in p:
        props["LoggingConfig"] = {"LogGroup": {"Ref": ctx.ref_id(r, "log_group", "log_group")}}
    lid = ctx.id(r)
    yield lid, {"Type": "AWS::Lambda::Function", "Properties": _sub(props)}
    yield (
        _version_id(lid),
        {"Type": "AWS::Lambda::Version", **_RETAIN, "Properties": _version_props(r, lid)},
    )


def _version_props(r: Resource, function_id: str) -> dict[str, Any]:
    """A version is immutable: its Description carries the function's fingerprint, so any change
    to the function replaces the version, which publishes a new one. Old versions are retained,
    for rollback and for traffic still draining off them."""
    props: dict[str, Any] = {
        "FunctionName": {"Ref": function_id},
        "Description": f"shardkit revision {r.fingerprint}",
    }
    sha = str(r.props["code"].get("sha256", ""))
    if _HEX_SHA256.fullmatch(sha):  # Lambda's CodeSha256 is the base64 of the zip's digest
        props["CodeSha256"] = base64.b64encode(bytes.fromhex(sha)).decode()
    return props


def _lambda_alias(r: Resource, ctx: _Context) -> Rendered:
    function_id = ctx.ref_id(r, "function", "lambda_function")
    props: dict[str, Any] = {
        "FunctionName": {"Ref": function_id},
        "FunctionVersion": {"Fn::GetAtt": [_version_id(function_id), "Version"]},
        "Name": r.props.get("alias", r.name.rpartition(":")[2]),
    }
    if r.props.get("function_revision"):
        props["Description"] = f"shardkit revision {r.props['function_revision']}"
    yield ctx.id(r), {"Type": "AWS::Lambda::Alias", "Properties": props}


def _function_url(r: Resource, ctx: _Context) -> Rendered:
    auth = r.props.get("auth_type", "AWS_IAM")
    if auth != "AWS_IAM":
        raise ctx.error(
            r,
            f"props.auth_type = {auth!r}: only AWS_IAM is allowed",
            hint="shard functions are never public; callers sign requests with SigV4",
        )
    function_id = ctx.ref_id(r, "function", "lambda_function")
    qualifier = r.props.get("qualifier")
    if qualifier:
        target: dict[str, Any] = {"Ref": _alias_id(r, ctx, qualifier)}  # Ref of an alias: its ARN
    else:
        target = {"Fn::GetAtt": [function_id, "Arn"]}
    yield (
        ctx.id(r),
        {"Type": "AWS::Lambda::Url", "Properties": {"AuthType": auth, "TargetFunctionArn": target}},
    )


def _alias_id(r: Resource, ctx: _Context, qualifier: str) -> str:
    for other in ctx.resources:
        if (
            other.kind == "lambda_alias"
            and other.props.get("function") == r.props["function"]
            and other.props.get("alias") == qualifier
        ):
            return ctx.id(other)
    raise ctx.error(
        r,
        f"props.qualifier = {qualifier!r}: no lambda_alias {qualifier!r} of "
        f"function {r.props['function']!r} in {ctx.region}",
        hint="define the alias in the blueprint definition, or drop the qualifier",
    )


def _alarm(r: Resource, ctx: _Context) -> Rendered:
    p = r.props
    function_id = ctx.ref_id(r, "function", "lambda_function")
    metric, statistic = _need(r, "metric"), p.get("statistic", "Sum")
    threshold, period = _need(r, "threshold"), p.get("period_s", 60)
    props = {
        "AlarmName": r.name,
        "AlarmDescription": (
            f"{metric} ({statistic}) of {p['function']} reached {threshold} in {period} s"
        ),
        "Namespace": "AWS/Lambda",
        "MetricName": metric,
        "Dimensions": [{"Name": "FunctionName", "Value": {"Ref": function_id}}],
        "Statistic": statistic,
        "Period": period,
        "EvaluationPeriods": p.get("evaluation_periods", 1),
        "Threshold": threshold,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "notBreaching",
    }
    yield ctx.id(r), {"Type": "AWS::CloudWatch::Alarm", "Properties": _sub(props)}


_RENDER: dict[str, Callable[[Resource, _Context], Rendered]] = {
    "s3_bucket": _s3_bucket,
    "dynamodb_table": _dynamodb_table,
    "log_group": _log_group,
    "iam_role": _iam_role,
    "lambda_function": _lambda_function,
    "lambda_alias": _lambda_alias,
    "function_url": _function_url,
    "alarm": _alarm,
}


def _outputs(ctx: _Context) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in ctx.resources:
        lid = ctx.id(r)
        if r.kind == "function_url":
            out["Url" + lid.removeprefix(_PREFIX["function_url"])] = {
                "Description": f"Function URL of shard {r.shard} (AWS_IAM auth)",
                "Value": {"Fn::GetAtt": [lid, "FunctionUrl"]},
            }
        elif r.kind == "dynamodb_table":
            out[lid + "Name"] = {
                "Description": "DynamoDB table of the shards' state",
                "Value": {"Ref": lid},
            }
        elif r.kind == "s3_bucket":
            out[lid + "Name"] = {
                "Description": "S3 bucket of the map registry and code packages",
                "Value": {"Ref": lid},
            }
    return out


# --- helpers ----------------------------------------------------------------------------------


def _camel(text: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[^A-Za-z0-9]+", text) if p)


def _suffix(r: Resource) -> str:
    """What tells apart several resources of one kind of one shard: an alarm's name after its
    function's name (``...-eu-0-errors`` -> ``Errors``)."""
    if r.kind != "alarm":
        return ""
    function = str(r.props.get("function", ""))
    rest = r.name.removeprefix(function) if function and r.name.startswith(function) else r.name
    return _camel(rest) or _camel(str(r.props.get("metric", "")))


def _short_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8].upper()


def _version_id(function_id: str) -> str:
    return "Version" + function_id.removeprefix(_PREFIX["lambda_function"])


def _env_value(value: Any) -> str:
    """Environment variables are strings; TOML may give numbers or booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _sub(value: Any) -> Any:
    """``value`` with every string that names a pseudo parameter wrapped in ``Fn::Sub``."""
    if isinstance(value, str):
        return {"Fn::Sub": _NOT_AWS_VAR.sub("${!", value)} if "${AWS::" in value else value
    if isinstance(value, Mapping):
        if len(value) == 1 and next(iter(value)) in ("Ref", "Fn::GetAtt", "Fn::Sub"):
            return dict(value)  # already an intrinsic function
        return {k: _sub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sub(v) for v in value]
    return value
