"""Each kind's two views agree: what the CloudFormation renderer writes is what apply creates.

A one-shard project is deployed on moto with the shipped blueprint, which uses every kind. Then,
for every resource the template holds, each rendered property is read back from AWS with plain
boto3 describe/get calls (``OBSERVE``: one reader per CloudFormation type, in CloudFormation's
shape) and compared. A rendered property the table does not read back fails the test, as does a
kind without a reader, so neither view can change alone.

Two properties moto does not return are compared with what shardkit sent (recorded by the
botocore event handler of conftest.py, not by shardkit): a function's ``LoggingConfig`` and the
qualifier of a function URL's target. ``Tags`` are rendered and not applied (docs/blueprints.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from shardkit import kinds
from shardkit.blueprint.cloudformation import logical_ids, render
from shardkit.blueprint.model import Blueprint, Resource
from shardkit.config import Project
from shardkit.deploy.engine import Deployer, Target
from shardkit.errors import ConfigError

if TYPE_CHECKING:
    from conftest import Recorder

REGION = "eu-west-1"
SHIPPED = Path(kinds.__file__).parents[1] / "blueprints" / "stateful-inference-proxy.toml"
NOT_APPLIED = {"Tags"}  # rendered, not applied: see the module docstring


def one_shard(data: dict[str, Any]) -> dict[str, Any]:
    data["regions"] = {REGION: {"jurisdiction": "eu"}}
    data["residency"] = {"default": "eu", "rules": []}
    data["groups"] = {"eu": {**data["groups"]["eu"], "regions": [REGION], "shards": 1}}
    return data


def client(service: str) -> Any:
    return boto3.client(service, region_name=REGION)


@dataclass
class Live:
    """What is deployed, read with describe calls; resolves the template's intrinsics."""

    blueprint: Blueprint
    ids: dict[str, str]  # logical id -> resource key
    recorder: Recorder

    def resource(self, lid: str) -> Resource:
        """The blueprint resource rendered as ``lid`` (a version: its function)."""
        if lid not in self.ids and lid.startswith("Version"):
            lid = "Function" + lid.removeprefix("Version")
        if lid not in self.ids and lid.endswith("Invoke"):  # a rule's invoke permission
            lid = lid.removesuffix("Invoke")
        return self.blueprint.by_key()[self.ids[lid]]

    def ref(self, lid: str) -> Any:
        r = self.resource(lid)
        if lid.startswith("Version"):
            return f"{self.function_arn(r.name)}:{self.latest_version(r.name)}"
        if r.kind == "lambda_alias":
            function, _, alias = r.name.partition(":")
            return client("lambda").get_alias(FunctionName=function, Name=alias)["AliasArn"]
        return r.name  # Ref of the others: their name

    def get_att(self, lid: str, attribute: str) -> Any:
        r = self.resource(lid)
        if lid.startswith("Version") and attribute == "Version":
            return self.latest_version(r.name)
        if (r.kind, attribute) == ("iam_role", "Arn"):
            return client("iam").get_role(RoleName=r.name)["Role"]["Arn"]
        if (r.kind, attribute) == ("lambda_function", "Arn"):
            return self.function_arn(r.name)
        if (r.kind, attribute) == ("schedule_rule", "Arn"):
            return client("events").describe_rule(Name=r.name)["Arn"]
        raise AssertionError(f"no resolution of Fn::GetAtt {lid}.{attribute}")

    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"Ref"}:
                return self.ref(value["Ref"])
            if set(value) == {"Fn::GetAtt"}:
                return self.get_att(*value["Fn::GetAtt"])
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value

    @staticmethod
    def function_arn(name: str) -> str:
        return client("lambda").get_function_configuration(FunctionName=name)["FunctionArn"]

    @staticmethod
    def latest_version(function: str) -> str:
        """What the template's AWS::Lambda::Version stands for: the newest published version."""
        versions = client("lambda").list_versions_by_function(FunctionName=function)["Versions"]
        return str(max(int(v["Version"]) for v in versions if v["Version"] != "$LATEST"))

    def sent(self, operations: tuple[str, ...], **match: Any) -> dict[str, Any]:
        """The parameters of the last of ``operations`` that matched ``match``."""
        calls = [
            c.params
            for c in self.recorder.calls
            if c.operation in operations and all(c.params.get(k) == v for k, v in match.items())
        ]
        assert calls, f"no {operations} call with {match}"
        return calls[-1]


# -- readers: CloudFormation properties, as AWS describes the resource --------------------------


def _bucket(live: Live, r: Resource, lid: str) -> dict[str, Any]:
    s3, name = client("s3"), r.name
    s3.head_bucket(Bucket=name)
    rules = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"]
    return {
        "BucketName": name,
        "BucketEncryption": {
            "ServerSideEncryptionConfiguration": [
                {"ServerSideEncryptionByDefault": rule["ApplyServerSideEncryptionByDefault"]}
                for rule in rules
            ]
        },
        "VersioningConfiguration": {"Status": s3.get_bucket_versioning(Bucket=name)["Status"]},
        "PublicAccessBlockConfiguration": s3.get_public_access_block(Bucket=name)[
            "PublicAccessBlockConfiguration"
        ],
        "OwnershipControls": s3.get_bucket_ownership_controls(Bucket=name)["OwnershipControls"],
    }


def _table(live: Live, r: Resource, lid: str) -> dict[str, Any]:
    ddb = client("dynamodb")
    table = ddb.describe_table(TableName=r.name)["Table"]
    backups = ddb.describe_continuous_backups(TableName=r.name)["ContinuousBackupsDescription"]
    pitr = backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"
    ttl = ddb.describe_time_to_live(TableName=r.name)["TimeToLiveDescription"]
    expiry = (
        {"TimeToLiveSpecification": {"AttributeName": ttl["AttributeName"], "Enabled": True}}
        if ttl.get("TimeToLiveStatus") == "ENABLED"
        else {}
    )
    return {
        **expiry,
        "TableName": table["TableName"],
        "BillingMode": table["BillingModeSummary"]["BillingMode"],
        "AttributeDefinitions": table["AttributeDefinitions"],
        "KeySchema": table["KeySchema"],
        "SSESpecification": {"SSEEnabled": table["SSEDescription"]["Status"] == "ENABLED"},
        "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": pitr},
    }


def _log_group(live: Live, r: Resource, lid: str) -> dict[str, Any]:
    groups = client("logs").describe_log_groups(logGroupNamePrefix=r.name)["logGroups"]
    (group,) = [g for g in groups if g["logGroupName"] == r.name]
    return {"LogGroupName": group["logGroupName"], "RetentionInDays": group["retentionInDays"]}


def _role(live: Live, r: Resource, lid: str) -> dict[str, Any]:
    iam = client("iam")
    role = iam.get_role(RoleName=r.name)["Role"]
    names = iam.list_role_policies(RoleName=r.name)["PolicyNames"]
    out = {
        "RoleName": role["RoleName"],
        "AssumeRolePolicyDocument": role["AssumeRolePolicyDocument"],
        "Policies": [
            {
                "PolicyName": name,
                "PolicyDocument": iam.get_role_policy(RoleName=r.name, PolicyName=name)[
                    "PolicyDocument"
                ],
            }
            for name in names
        ],
    }
    if role.get("Description"):
        out["Description"] = role["Description"]
    return out


def _function(live: Live, r: Resource, lid: str) -> dict[str, Any]:
    lam = client("lambda")
    conf = lam.get_function_configuration(FunctionName=r.name)
    out = {
        "FunctionName": conf["FunctionName"],
        "Code": _code_location(conf["CodeSha256"]),
        "Role": conf["Role"],
        "Runtime": conf["Runtime"],
        "Handler": conf["Handler"],
        "Architectures": conf["Architectures"],
        "MemorySize": conf["MemorySize"],
        "Timeout": conf["Timeout"],
        "Environment": conf["Environment"],
        # moto keeps no logging configuration: what shardkit sent
        "LoggingConfig": live.sent(
            ("create_function", "update_function_configuration"), FunctionName=r.name
        )["LoggingConfig"],
    }
    concurrency = lam.get_function_concurrency(FunctionName=r.name)
    if "ReservedConcurrentExecutions" in concurrency:
        out["ReservedConcurrentExecutions"] = concurrency["ReservedConcurrentExecutions"]
    return out


def _code_location(code_sha256: str) -> dict[str, str]:
    """The bucket and key of the package the function runs (found by its hash)."""
    s3 = client("s3")
    for bucket in s3.list_buckets()["Buckets"]:
        for obj in s3.list_objects_v2(Bucket=bucket["Name"]).get("Contents", []):
            body = s3.get_object(Bucket=bucket["Name"], Key=obj["Key"])["Body"].read()
            if base64.b64encode(hashlib.sha256(body).digest()).decode() == code_sha256:
                return {"S3Bucket": bucket["Name"], "S3Key": obj["Key"]}
    raise AssertionError("the function's code is in no bucket")


def _version(live: Live, r: Resource, lid: str) -> dict[str, Any]:
    conf = client("lambda").get_function_configuration(
        FunctionName=r.name, Qualifier=live.latest_version(r.name)
    )
    return {
        "FunctionName": r.name,
        "Description": conf["Description"],
        "CodeSha256": conf["CodeSha256"],
    }


def _alias(live: Live, r: Resource, lid: str) -> dict[str, Any]:
    function, _, name = r.name.partition(":")
    alias = client("lambda").get_alias(FunctionName=function, Name=name)
    out = {"FunctionName": function, "FunctionVersion": alias["FunctionVersion"], "Name": name}
    if alias.get("Description"):
        out["Description"] = alias["Description"]
    return out


def _url(live: Live, r: Resource, lid: str) -> dict[str, Any]:
    # moto answers with the function's ARN whatever the qualifier: that part is what was sent
    sent = live.sent(("create_function_url_config",), FunctionName=r.name)
    url = client("lambda").get_function_url_config(FunctionName=r.name, Qualifier=sent["Qualifier"])
    return {
        "AuthType": url["AuthType"],
        "TargetFunctionArn": f"{url['FunctionArn']}:{sent['Qualifier']}",
    }


def _alarm(live: Live, r: Resource, lid: str) -> dict[str, Any]:
    (alarm,) = client("cloudwatch").describe_alarms(AlarmNames=[r.name])["MetricAlarms"]
    fields = [
        "AlarmName",
        "AlarmDescription",
        "Namespace",
        "MetricName",
        "Dimensions",
        "Statistic",
        "Period",
        "EvaluationPeriods",
        "Threshold",
        "ComparisonOperator",
        "TreatMissingData",
    ]
    return {f: alarm[f] for f in fields}


def _rule(live: Live, r: Resource, lid: str) -> dict[str, Any]:
    rule = client("events").describe_rule(Name=r.name)
    out = {k: rule[k] for k in ("Name", "ScheduleExpression", "State")}
    if rule.get("Description"):
        out["Description"] = rule["Description"]
    targets = client("events").list_targets_by_rule(Rule=r.name)["Targets"]
    if targets:
        out["Targets"] = [{"Id": t["Id"], "Arn": t["Arn"]} for t in targets]
    return out


def _permission(live: Live, r: Resource, lid: str) -> dict[str, Any]:
    """The statement that lets the rule ``r`` invoke its target."""
    function = r.props["target"]
    policy = json.loads(client("lambda").get_policy(FunctionName=function)["Policy"])
    (statement,) = policy["Statement"]
    return {
        "Action": statement["Action"],
        "FunctionName": live.function_arn(function),
        "Principal": statement["Principal"]["Service"],
        "SourceArn": statement["Condition"]["ArnLike"]["AWS:SourceArn"],
    }


def _secret(live: Live, r: Resource, lid: str) -> dict[str, Any]:
    """Its name and description (the value is not rendered: the template cannot hold it)."""
    secret = client("secretsmanager").describe_secret(SecretId=r.name)
    return {"Name": secret["Name"], "Description": secret.get("Description", "")}


OBSERVE: dict[str, Callable[[Live, Resource, str], dict[str, Any]]] = {
    "AWS::S3::Bucket": _bucket,
    "AWS::DynamoDB::Table": _table,
    "AWS::Logs::LogGroup": _log_group,
    "AWS::IAM::Role": _role,
    "AWS::Lambda::Function": _function,
    "AWS::Lambda::Version": _version,
    "AWS::Lambda::Alias": _alias,
    "AWS::Lambda::Url": _url,
    "AWS::CloudWatch::Alarm": _alarm,
    "AWS::Events::Rule": _rule,
    "AWS::Lambda::Permission": _permission,
    "AWS::SecretsManager::Secret": _secret,
}


def _differences(rendered: Any, applied: Any, path: str) -> list[str]:
    """Where the two differ, down to the first differing leaf of each branch."""
    if isinstance(rendered, dict) and isinstance(applied, dict):
        return [
            line
            for key in sorted(set(rendered) | set(applied))
            for line in _differences(
                rendered.get(key, "<absent>"), applied.get(key, "<absent>"), f"{path}.{key}"
            )
        ]
    if isinstance(rendered, list) and isinstance(applied, list) and len(rendered) == len(applied):
        return [
            line
            for i, (a, b) in enumerate(zip(rendered, applied, strict=True))
            for line in _differences(a, b, f"{path}[{i}]")
        ]
    if rendered == applied:
        return []
    return [f"{path.lstrip('.')}: rendered {rendered!r}, applied {applied!r}"]


# -- the tests ------------------------------------------------------------------------------------


def test_every_kind_has_a_reader() -> None:
    missing = sorted(k.name for k in kinds.specs() if k.cfn_type not in OBSERVE)
    assert missing == [], f"no reader in OBSERVE for the kinds {missing}"


@pytest.mark.parametrize("autoshard", [False, True], ids=["fixed", "autoshard"])
def test_what_is_rendered_is_what_is_applied(
    make_project: Callable[..., Project],
    small_config: dict[str, Any],
    deployer: Callable[[Project], Deployer],
    recorder: Recorder,
    target: Target,
    autoshard: bool,
) -> None:
    """Both ways the schedule is deployed: disabled with no target, or enabled and targeting the
    auto-shard controller (with the permission that lets EventBridge invoke it)."""
    config = one_shard(small_config)
    if autoshard:
        config["groups"]["eu"]["autoshard"] = {"target_rps": 10.0}
    d = deployer(make_project(config))
    plan = d.plan()
    d.apply(plan)
    blueprint = Blueprint.from_dict(plan.blueprint)  # the deployed one, for this account
    assert {r.kind for r in blueprint.resources} == set(kinds.names()) - (
        set() if autoshard else {"secret"}  # the controller's signing key
    )
    template = render(blueprint)[REGION]
    ids = {lid: key for key, lid in logical_ids(blueprint.in_region(REGION)).items()}
    live = Live(blueprint, ids, recorder)

    differences: dict[str, list[str]] = {}
    for lid, body in sorted(template["Resources"].items()):
        rendered = live.resolve(body["Properties"])
        r = live.resource(lid)
        observed = OBSERVE[body["Type"]](live, r, lid)
        compared = {k: v for k, v in rendered.items() if k not in NOT_APPLIED}
        problems = _differences(compared, observed, "")
        if problems:
            differences[f"{r.kind} {lid} ({body['Type']})"] = problems
    assert not differences, "rendered and applied differ:\n" + "\n".join(
        f"  {where}: {line}" for where, lines in differences.items() for line in lines
    )

    for r in blueprint.resources:  # every probe finds what was applied ...
        assert kinds.get(r.kind).exists(target.aws, r.region, r.name, r.props), r.key
    d.apply(d.plan_destroy(delete_data=True))
    for r in blueprint.resources:  # ... and nothing once it is gone
        assert not kinds.get(r.kind).exists(target.aws, r.region, r.name, r.props), r.key


def test_bad_properties_stop_a_deploy_before_any_aws_call(
    make_project: Callable[..., Project],
    small_config: dict[str, Any],
    deployer: Callable[[Project], Deployer],
    recorder: Recorder,
    tmp_path: Any,
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(SHIPPED.read_text().replace('architecture = "arm64"', 'architecture = "sparc"'))
    config = one_shard(small_config)
    config["proxy"] = {"blueprint": str(bad)}
    d = deployer(make_project(config))
    mark = recorder.mark()  # after the target's identity call
    with pytest.raises(ConfigError) as raised:
        d.plan()
    assert raised.value.message == (
        "blueprint stateful-inference-proxy: lambda_function 'shardkit-quickstart-eu-0' in "
        "eu-west-1: props.architecture = 'sparc': input should be 'arm64' or 'x86_64'"
    )
    # nothing but reading the deployment record (the plan starts from it)
    assert [(c.operation, c.params["Key"]) for c in recorder.since(mark)] == [
        ("get_object", "shardkit-state/record.json")
    ]
