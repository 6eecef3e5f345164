"""How each resource kind is created, updated and deleted with direct API calls.

One small class per kind, all with the same three methods; each returns the resource's outputs
(ARNs, URLs, versions) for the manifest. Creation is idempotent where AWS allows it - a resource
that already exists with our name (say, after a crash between the call and the journal line) is
adopted and brought up to date instead of failing the apply.
"""

from __future__ import annotations

import contextlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..aws.facade import Aws
from ..errors import AwsConflictError, AwsError, AwsNotFoundError, DeployError

__all__ = ["HANDLERS", "Context"]


@dataclass(frozen=True)
class Context:
    """What a handler needs besides the resource: the facade, account and payloads."""

    aws: Aws
    account: str
    partition: str
    artifact_data: bytes | None = None
    map_envelope: bytes | None = None


Props = Mapping[str, Any]


class Kind(ABC):
    """How one resource kind is applied. ``update`` defaults to ``create`` for kinds whose
    create call is already an upsert (put_* operations)."""

    service: ClassVar[str]

    @abstractmethod
    def create(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        """Make the resource (or adopt the one of that name) and return its outputs."""

    def update(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        return self.create(ctx, region, name, props)

    @abstractmethod
    def delete(self, ctx: Context, region: str, name: str, props: Props) -> None:
        """Remove the resource; one that is already gone is not an error."""


def _delete(
    ctx: Context, service: str, region: str, operation: str, resource: str, **params: Any
) -> None:
    """A delete call for which "not found" means done."""
    with contextlib.suppress(AwsNotFoundError):
        ctx.aws.call(service, region, operation, resource=resource, **params)


def _upsert(
    ctx: Context, service: str, region: str, create: str, update: str, resource: str, **params: Any
) -> dict[str, Any]:
    """``create``; if the name is taken (ours, from a run that crashed before recording it),
    ``update`` with the same parameters instead."""
    try:
        return ctx.aws.call(service, region, create, resource=resource, **params)
    except AwsConflictError:
        return ctx.aws.call(service, region, update, resource=resource, **params)


def _wait(what: str, ready: Callable[[], str | None], timeout: float = 300) -> None:
    """Poll ``ready()`` (None when ready, else the current state) until it is, or time out."""
    deadline = time.monotonic() + timeout
    while (state := ready()) is not None:
        if time.monotonic() > deadline:
            raise DeployError(
                f"{what} is still {state} after {timeout:.0f} s",
                hint="run the command again to resume",
            )
        time.sleep(1)


class Bucket(Kind):
    service = "s3"

    def create(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": name}
        if region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            ctx.aws.call("s3", region, "create_bucket", resource=name, **params)
        except AwsConflictError as exc:
            if exc.code != "BucketAlreadyOwnedByYou":
                raise
        return self.update(ctx, region, name, props)

    def update(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        call = ctx.aws.call
        call(
            "s3",
            region,
            "put_public_access_block",
            resource=name,
            Bucket=name,
            PublicAccessBlockConfiguration=dict.fromkeys(
                (
                    "BlockPublicAcls",
                    "IgnorePublicAcls",
                    "BlockPublicPolicy",
                    "RestrictPublicBuckets",
                ),
                bool(props.get("block_public_access", True)),
            ),
        )
        call(
            "s3",
            region,
            "put_bucket_encryption",
            resource=name,
            Bucket=name,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": {
                            "SSEAlgorithm": props.get("encryption", "AES256")
                        }
                    }
                ]
            },
        )
        status = "Enabled" if props.get("versioning", True) else "Suspended"
        call(
            "s3",
            region,
            "put_bucket_versioning",
            resource=name,
            Bucket=name,
            VersioningConfiguration={"Status": status},
        )
        return {"arn": f"arn:{ctx.partition}:s3:::{name}"}

    def delete(self, ctx: Context, region: str, name: str, props: Props) -> None:
        with contextlib.suppress(AwsNotFoundError):
            self._empty(ctx, region, name)
        _delete(ctx, "s3", region, "delete_bucket", name, Bucket=name)

    @staticmethod
    def _empty(ctx: Context, region: str, name: str) -> None:
        """Delete every object version: a versioned bucket must be empty to be deleted."""
        marker: dict[str, str] = {}
        while True:
            page = ctx.aws.call(
                "s3", region, "list_object_versions", resource=name, Bucket=name, **marker
            )
            doomed = [
                {"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
            ]
            if doomed:
                ctx.aws.call(
                    "s3",
                    region,
                    "delete_objects",
                    resource=name,
                    Bucket=name,
                    Delete={"Objects": doomed, "Quiet": True},
                )
            if not page.get("IsTruncated"):
                return
            marker = {
                "KeyMarker": page["NextKeyMarker"],
                "VersionIdMarker": page["NextVersionIdMarker"],
            }


class Table(Kind):
    service = "dynamodb"

    def create(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        keys = [(props.get("partition_key", "pk"), "HASH"), (props.get("sort_key", "sk"), "RANGE")]
        # An existing table of our name is adopted: it is ours, and it may hold data.
        with contextlib.suppress(AwsConflictError):
            ctx.aws.call(
                "dynamodb",
                region,
                "create_table",
                resource=name,
                TableName=name,
                AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k, _ in keys],
                KeySchema=[{"AttributeName": k, "KeyType": t} for k, t in keys],
                BillingMode=props.get("billing_mode", "PAY_PER_REQUEST"),
                SSESpecification={"Enabled": bool(props.get("sse", True))},
            )
        self._wait_active(ctx, region, name)
        return self.update(ctx, region, name, props)

    def update(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        ctx.aws.call(
            "dynamodb",
            region,
            "update_continuous_backups",
            resource=name,
            TableName=name,
            PointInTimeRecoverySpecification={
                "PointInTimeRecoveryEnabled": bool(props.get("point_in_time_recovery", True))
            },
        )
        return {"arn": f"arn:{ctx.partition}:dynamodb:{region}:{ctx.account}:table/{name}"}

    def delete(self, ctx: Context, region: str, name: str, props: Props) -> None:
        _delete(ctx, "dynamodb", region, "delete_table", name, TableName=name)

    @staticmethod
    def _wait_active(ctx: Context, region: str, name: str) -> None:
        def state() -> str | None:
            table = ctx.aws.call(
                "dynamodb", region, "describe_table", resource=name, TableName=name
            )["Table"]
            return None if table["TableStatus"] == "ACTIVE" else str(table["TableStatus"])

        _wait(f"table {name} in {region}", state)


class LogGroup(Kind):
    service = "logs"

    def create(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        with contextlib.suppress(AwsConflictError):
            ctx.aws.call("logs", region, "create_log_group", resource=name, logGroupName=name)
        return self.update(ctx, region, name, props)

    def update(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        ctx.aws.call(
            "logs",
            region,
            "put_retention_policy",
            resource=name,
            logGroupName=name,
            retentionInDays=int(props.get("retention_days", 14)),
        )
        return {"arn": f"arn:{ctx.partition}:logs:{region}:{ctx.account}:log-group:{name}"}

    def delete(self, ctx: Context, region: str, name: str, props: Props) -> None:
        _delete(ctx, "logs", region, "delete_log_group", name, logGroupName=name)


class Role(Kind):
    service = "iam"

    def create(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        trust = json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": props["assume_service"]},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        )
        try:
            ctx.aws.call(
                "iam",
                region,
                "create_role",
                resource=name,
                RoleName=name,
                AssumeRolePolicyDocument=trust,
                Description=props.get("description", ""),
            )
        except AwsConflictError:
            ctx.aws.call(
                "iam",
                region,
                "update_assume_role_policy",
                resource=name,
                RoleName=name,
                PolicyDocument=trust,
            )
        return self._policy(ctx, region, name, props)

    def update(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        return self._policy(ctx, region, name, props)

    def _policy(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        ctx.aws.call(
            "iam",
            region,
            "put_role_policy",
            resource=name,
            RoleName=name,
            PolicyName="shardkit",
            PolicyDocument=json.dumps(props["policy"]),
        )
        return {"arn": role_arn(ctx, name)}

    def delete(self, ctx: Context, region: str, name: str, props: Props) -> None:
        _delete(
            ctx, "iam", region, "delete_role_policy", name, RoleName=name, PolicyName="shardkit"
        )
        _delete(ctx, "iam", region, "delete_role", name, RoleName=name)


def role_arn(ctx: Context, name: str) -> str:
    return f"arn:{ctx.partition}:iam::{ctx.account}:role/{name}"


class Function(Kind):
    service = "lambda"

    def _config(self, ctx: Context, name: str, props: Props) -> dict[str, Any]:
        return {
            "FunctionName": name,
            "Role": role_arn(ctx, props["role"]),
            "Runtime": props["runtime"],
            "Handler": props["handler"],
            "MemorySize": int(props["memory_mb"]),
            "Timeout": int(props["timeout_s"]),
            "Environment": {"Variables": dict(props.get("environment", {}))},
            "LoggingConfig": {"LogGroup": props["log_group"], "LogFormat": "JSON"},
        }

    def create(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        code = {"S3Bucket": props["code"]["bucket"], "S3Key": props["code"]["key"]}
        try:
            out = ctx.aws.call(
                "lambda",
                region,
                "create_function",
                resource=name,
                Code=code,
                Architectures=[props["architecture"]],
                **self._config(ctx, name, props),
            )
        except AwsConflictError:
            return self.update(ctx, region, name, props)
        self._settle(ctx, region, name)
        self._concurrency(ctx, region, name, props)
        return {"arn": out["FunctionArn"]}

    @staticmethod
    def _concurrency(ctx: Context, region: str, name: str, props: Props) -> None:
        if props.get("reserved_concurrency") is not None:
            ctx.aws.call(
                "lambda",
                region,
                "put_function_concurrency",
                resource=name,
                FunctionName=name,
                ReservedConcurrentExecutions=int(props["reserved_concurrency"]),
            )

    def update(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        ctx.aws.call(
            "lambda",
            region,
            "update_function_code",
            resource=name,
            FunctionName=name,
            S3Bucket=props["code"]["bucket"],
            S3Key=props["code"]["key"],
            Architectures=[props["architecture"]],
        )
        self._settle(ctx, region, name)
        out = ctx.aws.call(
            "lambda",
            region,
            "update_function_configuration",
            resource=name,
            **self._config(ctx, name, props),
        )
        self._settle(ctx, region, name)
        self._concurrency(ctx, region, name, props)
        return {"arn": out["FunctionArn"]}

    @staticmethod
    def _settle(ctx: Context, region: str, name: str) -> None:
        """Wait until the function is Active and no update is in progress: AWS refuses the
        next change (or a version publication) until then."""

        def state() -> str | None:
            conf = ctx.aws.call(
                "lambda", region, "get_function_configuration", resource=name, FunctionName=name
            )
            if conf.get("State") == "Pending":
                return "pending"
            return "updating" if conf.get("LastUpdateStatus") == "InProgress" else None

        _wait(f"function {name} in {region}", state)

    def delete(self, ctx: Context, region: str, name: str, props: Props) -> None:
        _delete(ctx, "lambda", region, "delete_function", name, FunctionName=name)


class Alias(Kind):
    """Publishes a version of the function and points the alias at it (versioned alias)."""

    service = "lambda"

    def create(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        function, alias = props["function"], props["alias"]
        version = ctx.aws.call(
            "lambda", region, "publish_version", resource=function, FunctionName=function
        )["Version"]
        out = _upsert(
            ctx,
            "lambda",
            region,
            "create_alias",
            "update_alias",
            name,
            FunctionName=function,
            Name=alias,
            FunctionVersion=version,
        )
        return {"arn": out["AliasArn"], "version": version}

    def update(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        return self.create(ctx, region, name, props)

    def delete(self, ctx: Context, region: str, name: str, props: Props) -> None:
        _delete(
            ctx,
            "lambda",
            region,
            "delete_alias",
            name,
            FunctionName=props["function"],
            Name=props["alias"],
        )


class Url(Kind):
    service = "lambda"

    def create(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        out = _upsert(
            ctx,
            "lambda",
            region,
            "create_function_url_config",
            "update_function_url_config",
            name,
            **self._params(props),
        )
        return {"url": out["FunctionUrl"]}

    def update(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        out = ctx.aws.call(
            "lambda", region, "update_function_url_config", resource=name, **self._params(props)
        )
        return {"url": out["FunctionUrl"]}

    def delete(self, ctx: Context, region: str, name: str, props: Props) -> None:
        _delete(
            ctx,
            "lambda",
            region,
            "delete_function_url_config",
            name,
            FunctionName=props["function"],
            Qualifier=props["qualifier"],
        )

    @staticmethod
    def _params(props: Props) -> dict[str, Any]:
        return {
            "FunctionName": props["function"],
            "Qualifier": props["qualifier"],
            "AuthType": props["auth_type"],
        }


class Alarm(Kind):
    service = "cloudwatch"

    def create(self, ctx: Context, region: str, name: str, props: Props) -> dict[str, Any]:
        ctx.aws.call(
            "cloudwatch",
            region,
            "put_metric_alarm",
            resource=name,
            AlarmName=name,
            Namespace="AWS/Lambda",
            MetricName=props["metric"],
            Dimensions=[{"Name": "FunctionName", "Value": props["function"]}],
            Statistic=props.get("statistic", "Sum"),
            Period=int(props.get("period_s", 60)),
            EvaluationPeriods=int(props.get("evaluation_periods", 1)),
            Threshold=float(props.get("threshold", 1)),
            ComparisonOperator="GreaterThanOrEqualToThreshold",
            TreatMissingData="notBreaching",
        )
        return {"arn": f"arn:{ctx.partition}:cloudwatch:{region}:{ctx.account}:alarm:{name}"}

    def delete(self, ctx: Context, region: str, name: str, props: Props) -> None:
        ctx.aws.call("cloudwatch", region, "delete_alarms", resource=name, AlarmNames=[name])


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


HANDLERS: dict[str, Kind] = {
    "s3_bucket": Bucket(),
    "dynamodb_table": Table(),
    "log_group": LogGroup(),
    "iam_role": Role(),
    "lambda_function": Function(),
    "lambda_alias": Alias(),
    "function_url": Url(),
    "alarm": Alarm(),
}
