"""The deploy engine on moto, in-process: plan, apply, journal and resume, rollback, destroy.

Everything goes through the public surface (``Deployer`` on a target from ``identify``); what was
deployed is checked with plain boto3 describe calls, and what was *called* is recorded by a
botocore event handler on every client the facade makes (see conftest.py), so "no mutating call"
and "not called again" are proved independently of shardkit's own counters.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import boto3
import pytest

import shardkit
from shardkit.config import Project
from shardkit.deploy.engine import Deployer, Target
from shardkit.deploy.executor import ApplyResult
from shardkit.deploy.lock import LOCK_PK
from shardkit.deploy.plan import Plan, Step
from shardkit.errors import (
    ApplyFailedError,
    AwsAccessDeniedError,
    AwsThrottledError,
    DeployError,
    PlanFileError,
    PlanStaleError,
)

if TYPE_CHECKING:
    from conftest import Call, Recorder

Deploy = Callable[[Project], Deployer]
MakeProject = Callable[..., Project]
Rewrite = Callable[[Project, Callable[[dict[str, Any]], None]], Project]
P = "shardkit-quickstart"  # the physical-name prefix of the quickstart's resources
KEYS = [f"user-{i}" for i in range(2000)] + [f"eu:user-{i}" for i in range(2000)]


# -- helpers ---------------------------------------------------------------------------------


def deploy(d: Deployer) -> ApplyResult:
    return d.apply(d.plan())


def aws(service: str, region: str) -> Any:
    """A plain boto3 client, not recorded: what the tests use to look at the result."""
    return boto3.client(service, region_name=region)


def bucket_of(project: Project, region: str) -> str:
    return f"shardkit-{project.config.project.name}-123456789012-{region}"


def published_map(project: Project, region: str) -> tuple[bytes, shardkit.ShardMap]:
    body = (
        aws("s3", region)
        .get_object(Bucket=bucket_of(project, region), Key="registry/map.skm")["Body"]
        .read()
    )
    return body, shardkit.decode_map(body, shardkit.load_trusted_keys(project.keys_dir))


def shard_ids(project: Project) -> dict[str, str]:
    """shard id -> region, from the configuration."""
    return {s.id: s.region for name, g in project.config.groups.items() for s in g.shard_list(name)}


def lambda_sha(sha256_hex: str) -> str:
    """A code package's hash as Lambda reports it (CodeSha256: base64 of the digest)."""
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode()


def alias_version(region: str, function: str) -> str:
    return aws("lambda", region).get_alias(FunctionName=function, Name="live")["FunctionVersion"]


def step_ident(step: Step) -> tuple[str, str, str]:
    """What a step changes: (kind, region, name); uploads and publications are S3 objects."""
    kind = {"upload": "artifact", "publish": "map"}.get(step.action, step.kind)
    if step.action == "migrate":  # a phase of a migration: the slot records of its group
        return (kind, step.region, step.props["group"])
    return (kind, step.region, step.name)


_OP_KIND = {
    "create_bucket": "s3_bucket",
    "put_public_access_block": "s3_bucket",
    "put_bucket_encryption": "s3_bucket",
    "put_bucket_versioning": "s3_bucket",
    "put_bucket_ownership_controls": "s3_bucket",
    "delete_objects": "s3_bucket",
    "delete_bucket": "s3_bucket",
    "create_table": "dynamodb_table",
    "update_continuous_backups": "dynamodb_table",
    "update_time_to_live": "dynamodb_table",
    "delete_table": "dynamodb_table",
    "create_log_group": "log_group",
    "put_retention_policy": "log_group",
    "delete_log_group": "log_group",
    "create_role": "iam_role",
    "update_assume_role_policy": "iam_role",
    "update_role": "iam_role",
    "put_role_policy": "iam_role",
    "delete_role_policy": "iam_role",
    "delete_role": "iam_role",
    "create_function": "lambda_function",
    "update_function_code": "lambda_function",
    "update_function_configuration": "lambda_function",
    "delete_function": "lambda_function",
    "put_function_concurrency": "lambda_function",
    "delete_function_concurrency": "lambda_function",
    "publish_version": "lambda_alias",
    "create_alias": "lambda_alias",
    "update_alias": "lambda_alias",
    "delete_alias": "lambda_alias",
    "create_function_url_config": "function_url",
    "update_function_url_config": "function_url",
    "delete_function_url_config": "function_url",
    "put_metric_alarm": "alarm",
    "delete_alarms": "alarm",
    "put_rule": "schedule_rule",
    "delete_rule": "schedule_rule",
    "create_secret": "secret",
    "update_secret": "secret",
    "delete_secret": "secret",
}
_NAME_PARAM = {
    "s3_bucket": "Bucket",
    "dynamodb_table": "TableName",
    "log_group": "logGroupName",
    "iam_role": "RoleName",
    "lambda_function": "FunctionName",
    "function_url": "FunctionName",
    "alarm": "AlarmName",
    "schedule_rule": "Name",
}


def call_ident(call: Call) -> tuple[str, str, str]:
    """The resource a mutating call changes, as (kind, region, name). Unknown calls fail."""
    p = call.params
    if call.operation == "put_object":
        kind = "map" if p["Key"] == "registry/map.skm" else "artifact"
        return (kind, call.region, p["Key"])
    pk = _slot_partition(call)
    if pk is not None:  # slot records, written by a fence step (named after their group)
        return ("slots", call.region, pk.partition("#")[0])
    kind = _OP_KIND[call.operation]  # a KeyError here: a mutating call the test did not expect
    if kind == "lambda_alias":
        return (kind, call.region, f"{p['FunctionName']}:{p.get('Name', 'live')}")
    if call.operation == "delete_alarms":
        (name,) = p["AlarmNames"]
        return (kind, call.region, name)
    return (kind, call.region, p[_NAME_PARAM[kind]])


def _slot_partition(call: Call) -> str | None:
    """The partition a write to a state table's items is in (None: not such a write)."""
    p = call.params
    if call.operation == "batch_write_item":
        ((requests,),) = [list(p["RequestItems"].values())]
        return str(requests[0]["PutRequest"]["Item"]["pk"]["S"])
    if call.operation == "transact_write_items":
        ((_, op),) = p["TransactItems"][0].items()
        return str((op.get("Key") or op["Item"])["pk"]["S"])
    if call.operation in ("put_item", "update_item", "delete_item") and call.service == "dynamodb":
        return str((p.get("Key") or p["Item"])["pk"]["S"])
    return None


def bookkeeping(call: Call) -> bool:
    """A call on the deployment record (``shardkit-state/`` in the home bucket) or its lock
    item, rather than on a resource of the plan."""
    if call.service == "s3":
        return str(call.params.get("Key", "")).startswith("shardkit-state/")
    key = call.params.get("Item") or call.params.get("Key") or {}
    return call.service == "dynamodb" and key.get("pk", {}).get("S") == LOCK_PK


def touched(calls: Iterable[Call]) -> set[tuple[str, str, str]]:
    return {call_ident(c) for c in calls if c.mutating and not bookkeeping(c)}


def idents(steps: Iterable[Step]) -> set[tuple[str, str, str]]:
    return {step_ident(s) for s in steps if s.action != "retain"}


def keys_of(plan: Plan) -> set[tuple[str, str]]:
    return {(s.action, s.key) for s in plan.steps}


def slot_records(project: Project, shard_map: shardkit.ShardMap, step: int = 1) -> dict:
    """``{(group, slot): {region: (owner, state)}}`` for every ``step``-th slot of every group,
    read from each region's state table (what fences writes)."""
    table = f"shardkit-{project.config.project.name}-state"
    out: dict[tuple[str, int], dict[str, tuple[str, str]]] = {}
    for name in shard_map.groups:
        for slot in range(0, shard_map.slot_count, step):
            found = {}
            for region in sorted(set(shard_ids(project).values())):
                item = (
                    aws("dynamodb", region)
                    .get_item(TableName=table, Key=_record_key(name, slot))
                    .get("Item")
                )
                if item:
                    found[region] = (item["owner"]["S"], item["state"]["S"])
            out[name, slot] = found
    return out


def _record_key(group: str, slot: int) -> dict[str, Any]:
    return {"pk": {"S": f"{group}#{slot:05x}"}, "sk": {"S": "\x00slot"}}


def owners(shard_map: shardkit.ShardMap, step: int = 1) -> dict:
    """What :func:`slot_records` should find for ``shard_map``: each slot active under its
    owner, in the owner's region."""
    return {
        (name, slot): {g.primary[slot].region: (g.primary[slot].id, "active")}
        for name, g in shard_map.groups.items()
        for slot in range(0, shard_map.slot_count, step)
    }


def fingerprints(d: Deployer) -> dict[str, str]:
    return {k: r.fingerprint for k, r in d.record().resources.items()}


# -- first deploy ------------------------------------------------------------------------------


def test_first_deploy_creates_every_resource_and_publishes_the_signed_map(
    make_project: MakeProject,
    deployer: Deploy,
    recorder: Recorder,
) -> None:
    project = make_project("quickstart")
    d = deployer(project)
    plan = d.plan()
    regions = sorted(project.config.regions)
    shards = shard_ids(project)
    assert plan.summary() == {
        "create": 3 * len(regions) + 7 * len(shards),
        "upload": len(regions),
        "fence": len(regions),  # the slot records of the region's group (one group per region)
        "publish": len(regions),
    }

    mark = recorder.mark()
    result = d.apply(plan)

    assert (result.steps_done, result.steps_skipped) == (len(plan.steps), 0)
    assert touched(recorder.since(mark)) == idents(plan.steps)  # each step, and nothing else
    manifest = d.record()
    assert (manifest.status, manifest.deployment, manifest.map_version) == ("ok", 1, 1)
    assert set(manifest.resources) == {s.key for s in plan.steps if s.action == "create"}
    assert d.state.pending() == []

    sha256 = plan.artifact["sha256"] if plan.artifact else ""
    assert plan.artifact == {"key": f"artifacts/code/{sha256}.zip", "sha256": sha256}
    trusted = shardkit.load_trusted_keys(project.keys_dir)
    envelopes = set()
    for region in regions:
        _check_region(project, region, sha256)
        body, shard_map = published_map(project, region)
        envelopes.add(body)
        assert shard_map.version == 1
        assert {s.id: s.region for s in shard_map.shards} == shards
    assert envelopes == {d.record().map_envelope}  # one map, the one recorded as published
    shard_map = shardkit.decode_map(envelopes.pop(), trusted)
    assert slot_records(project, shard_map, step=509) == owners(shard_map, step=509)
    assert manifest.epochs == {}  # the old per-shard fences are gone
    assert {shard_map.route(k).region for k in KEYS if k.startswith("eu:")} <= {
        r for r, c in project.config.regions.items() if c.jurisdiction == "eu"
    }

    outputs = d.outputs()
    for shard, region in shards.items():
        _check_shard(project, shard, region, lambda_sha(sha256), outputs["shards"][shard])


def _check_region(project: Project, region: str, sha256: str) -> None:
    bucket, s3 = bucket_of(project, region), aws("s3", region)
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == dict.fromkeys(
        ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"), True
    )
    code = s3.get_object(Bucket=bucket, Key=f"artifacts/code/{sha256}.zip")["Body"].read()
    assert hashlib.sha256(code).hexdigest() == sha256
    assert zipfile.ZipFile(io.BytesIO(code)).getinfo("shardkit/proxy/handler.py")

    ddb, table = aws("dynamodb", region), f"shardkit-{project.config.project.name}-state"
    desc = ddb.describe_table(TableName=table)["Table"]
    assert desc["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert desc["SSEDescription"]["Status"] == "ENABLED"
    pitr = ddb.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
    assert pitr["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"

    in_region = [s for s, r in shard_ids(project).items() if r == region]
    alarms = aws("cloudwatch", region).describe_alarms()["MetricAlarms"]
    assert sorted(a["AlarmName"] for a in alarms) == sorted(
        f"{P}-{s}-{what}" for s in in_region for what in ("errors", "throttles")
    )
    for alarm in alarms:
        shard = alarm["AlarmName"].removeprefix(f"{P}-").rsplit("-", 1)[0]
        assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": f"{P}-{shard}"}]
    groups = aws("logs", region).describe_log_groups()["logGroups"]
    assert {g["logGroupName"]: g.get("retentionInDays") for g in groups} == {
        f"/aws/lambda/{P}-{s}": 14 for s in in_region
    }


def _check_shard(
    project: Project, shard: str, region: str, code_sha: str, output: dict[str, Any]
) -> None:
    lam, name = aws("lambda", region), f"{P}-{shard}"
    conf = lam.get_function_configuration(FunctionName=name)
    assert conf["Role"] == f"arn:aws:iam::123456789012:role/{name}-{region}"
    assert (conf["Runtime"], conf["MemorySize"], conf["Timeout"]) == ("python3.12", 512, 30)
    assert conf["CodeSha256"] == code_sha
    assert conf["Environment"]["Variables"]["SHARDKIT_SHARD"] == shard
    alias = lam.get_alias(FunctionName=name, Name="live")
    versions = [v["Version"] for v in lam.list_versions_by_function(FunctionName=name)["Versions"]]
    assert alias["FunctionVersion"] != "$LATEST" and alias["FunctionVersion"] in versions
    assert output["version"] == alias["FunctionVersion"]
    url = lam.get_function_url_config(FunctionName=name, Qualifier="live")
    assert url["AuthType"] == "AWS_IAM"
    assert output["url"] == url["FunctionUrl"]


def test_deployed_functions_stay_in_their_jurisdiction(
    make_project: MakeProject,
    deployer: Deploy,
) -> None:
    project = make_project("quickstart")
    d = deployer(project)
    deploy(d)
    _, shard_map = published_map(project, "us-east-1")
    jurisdiction = {r: c.jurisdiction for r, c in project.config.regions.items()}
    seen = {}
    for region in jurisdiction:
        iam = aws("iam", region)
        for fn in aws("lambda", region).list_functions()["Functions"]:
            env = fn["Environment"]["Variables"]
            assert env["SHARDKIT_JURISDICTION"] == jurisdiction[region], fn["FunctionName"]
            shard = shard_map.shard(env["SHARDKIT_SHARD"])
            assert (shard.region, shard.jurisdiction) == (region, jurisdiction[region])
            policy = iam.get_role_policy(
                RoleName=f"{fn['FunctionName']}-{region}", PolicyName="shardkit"
            )
            (state,) = [
                s for s in policy["PolicyDocument"]["Statement"] if s["Sid"] == "OwnStateItems"
            ]
            assert state["Resource"] == f"arn:aws:dynamodb:{region}:123456789012:table/{P}-state"
            # the items of the shard's group (jurisdiction), whichever shard owns a slot now
            leading = state["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
            assert leading == [f"{shard.group}#*"]
            assert set(state["Action"]) == {
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:ConditionCheckItem",
            }
            seen[shard.id] = region
    assert seen == shard_ids(project)  # every shard deployed once, in its own region


# -- no-op -------------------------------------------------------------------------------------


def test_a_noop_deploy_makes_zero_mutating_calls(
    make_project: MakeProject,
    rewrite: Rewrite,
    deployer: Deploy,
    recorder: Recorder,
    target: Target,
) -> None:
    project = make_project()
    d = deployer(project)
    mark = recorder.mark()
    first = deploy(d)
    assert len(recorder.mutating_since(mark)) >= first.steps_done > 0  # the recorder sees writes
    before = (d.record().model_dump(), target.aws.mutating_calls)

    mark = recorder.mark()
    again = deployer(rewrite(project, lambda data: None))  # a fresh load of the same project
    plan = again.plan()
    assert plan.is_noop and plan.steps == () and plan.map_envelope is None
    result = again.apply(Plan.from_json(plan.to_json()))

    assert recorder.mutating_since(mark) == []
    assert all(
        c.operation.startswith(("get_", "list_", "describe_", "head_"))
        for c in recorder.since(mark)
    )
    assert result.mutating_calls == 0 and result.steps_done == 0
    assert (d.record().model_dump(), target.aws.mutating_calls) == before
    assert d.state.history() == [1]  # a no-op is not a deployment


# -- changes -------------------------------------------------------------------------------------


def _eu_memory(mb: int) -> Callable[[dict[str, Any]], None]:
    return lambda data: data["groups"]["eu"].update(memory_mb=mb)


def test_a_memory_change_updates_exactly_the_groups_functions_and_aliases(
    make_project: MakeProject,
    rewrite: Rewrite,
    deployer: Deploy,
    recorder: Recorder,
) -> None:
    project = make_project()
    deploy(deployer(project))
    old_map, _ = published_map(project, "eu-west-1")

    d = deployer(rewrite(project, _eu_memory(1024)))
    plan = d.plan()
    assert keys_of(plan) == {
        ("update", f"eu-west-1/lambda_function/{P}-eu-0"),
        ("update", f"eu-west-1/lambda_function/{P}-eu-1"),
        ("update", f"eu-west-1/lambda_alias/{P}-eu-0:live"),
        ("update", f"eu-west-1/lambda_alias/{P}-eu-1:live"),
    }
    assert plan.map_envelope is None
    assert all("memory_mb" in s.reason for s in plan.steps if s.kind == "lambda_function")

    mark = recorder.mark()
    d.apply(plan)

    assert touched(recorder.since(mark)) == idents(plan.steps)
    assert {s: alias_version(r, f"{P}-{s}") for s, r in shard_ids(project).items()} == {
        "eu-0": "2",
        "eu-1": "2",
        "us-0": "1",
        "us-1": "1",
    }
    lam = aws("lambda", "eu-west-1")
    for shard in ("eu-0", "eu-1"):
        live = lam.get_function_configuration(FunctionName=f"{P}-{shard}", Qualifier="live")
        assert live["MemorySize"] == 1024
    assert published_map(project, "eu-west-1")[0] == old_map  # routing unchanged: no new map
    assert deployer(d.project).plan().is_noop


def test_adding_a_shard_creates_only_its_resources_and_moves_slots_only_to_it(
    make_project: MakeProject,
    rewrite: Rewrite,
    deployer: Deploy,
    recorder: Recorder,
) -> None:
    project = make_project()
    deploy(deployer(project))
    _, old = published_map(project, "us-east-1")

    d = deployer(rewrite(project, lambda data: data["groups"]["eu"].update(shards=3)))
    plan = d.plan()
    new = f"{P}-eu-2"
    assert keys_of(plan) == {
        ("create", f"eu-west-1/log_group//aws/lambda/{new}"),
        ("create", f"eu-west-1/iam_role/{new}-eu-west-1"),
        ("create", f"eu-west-1/lambda_function/{new}"),
        ("create", f"eu-west-1/lambda_alias/{new}:live"),
        ("create", f"eu-west-1/function_url/{new}"),
        ("create", f"eu-west-1/alarm/{new}-errors"),
        ("create", f"eu-west-1/alarm/{new}-throttles"),
        ("migrate", "eu-west-1/slots/eu:prepare"),  # the eu slots that move, in place:
        ("migrate", "eu-west-1/slots/eu:cutover"),  # they switch to eu-2, never fenced
        ("publish", "eu-west-1/map/registry/map.skm"),
        ("publish", "us-east-1/map/registry/map.skm"),
    }
    last_create = max(s.id for s in plan.steps if s.action == "create")
    last_fence = max(s.id for s in plan.steps if s.action == "migrate")
    assert all(s.id > last_fence > last_create for s in plan.steps if s.action == "publish")

    mark = recorder.mark()
    d.apply(plan)
    assert touched(recorder.since(mark)) == idents(plan.steps)

    bodies = {published_map(project, r)[0] for r in ("eu-west-1", "us-east-1")}
    assert len(bodies) == 1
    current = shardkit.decode_map(
        bodies.pop(), shardkit.load_trusted_keys(project.keys_dir), min_version=old.version + 1
    )
    assert current.version == old.version + 1 == d.record().map_version
    diff = shardkit.diff_maps(old, current)
    assert diff.moves and diff.added == ("eu-2",) and diff.removed == ()
    assert {(m.group, m.destination) for m in diff.moves} == {("eu", "eu-2")}
    assert {m.source for m in diff.moves} == {"eu-0", "eu-1"}
    assert set(diff.epochs) == {"eu-0", "eu-1"}  # us shards keep their slots and epochs
    assert slot_records(d.project, current) == owners(current)
    assert {s: alias_version(r, f"{P}-{s}") for s, r in shard_ids(d.project).items()} == {
        "eu-0": "1",
        "eu-1": "1",
        "eu-2": "1",
        "us-0": "1",
        "us-1": "1",
    }


# -- refused plans ---------------------------------------------------------------------------------


def test_a_stale_plan_is_refused(
    make_project: MakeProject,
    rewrite: Rewrite,
    deployer: Deploy,
    recorder: Recorder,
    tmp_path: Any,
) -> None:
    project = make_project()
    deploy(deployer(project))
    noop = deployer(project).plan()
    plan_a = deployer(rewrite(project, _eu_memory(1024))).plan()
    saved = tmp_path / "a.json"
    saved.write_text(plan_a.to_json())

    d = deployer(rewrite(project, _eu_memory(2048)))
    d.apply(d.plan())  # someone else's change lands first
    state = d.record().model_dump()

    mark = recorder.mark()
    for stale in (Plan.load(saved), noop):
        with pytest.raises(PlanStaleError):
            d.apply(stale)
    assert recorder.mutating_since(mark) == []
    assert d.record().model_dump() == state
    live = aws("lambda", "eu-west-1").get_function_configuration(FunctionName=f"{P}-eu-0")
    assert live["MemorySize"] == 2048


def test_a_plan_of_another_project_is_refused(
    make_project: MakeProject,
    deployer: Deploy,
    recorder: Recorder,
    small_config: dict[str, Any],
) -> None:
    data = small_config
    data["project"]["name"] = "other"
    x = make_project(data, dirname="x")
    y = make_project(dirname="y")
    y_twin = make_project(dirname="y-twin")  # same name, another directory
    plan = deployer(x).plan()
    plan_y = deployer(y).plan()

    mark = recorder.mark()
    with pytest.raises(PlanFileError, match="other"):
        deployer(y).apply(plan)
    with pytest.raises(PlanFileError):
        deployer(y_twin).apply(plan_y)
    assert recorder.mutating_since(mark) == []
    assert deployer(y).record().status == "empty"
    assert deployer(y_twin).record().status == "empty"


# -- failure, journal, resume -------------------------------------------------------------------


FAULTS = {  # where -> (service, operation, which call, the step that fails)
    "alarm": (
        "cloudwatch",
        "put_metric_alarm",
        lambda c: c.params["AlarmName"] == f"{P}-us-1-errors",
        f"us-east-1/alarm/{P}-us-1-errors",
    ),
    "function": (
        "lambda",
        "create_function",
        lambda c: c.params["FunctionName"] == f"{P}-us-1",
        f"us-east-1/lambda_function/{P}-us-1",
    ),
}


@pytest.mark.parametrize("where", sorted(FAULTS))
def test_a_failed_apply_records_exactly_the_done_steps_and_resumes(
    where: str,
    make_project: MakeProject,
    deployer: Deploy,
    recorder: Recorder,
) -> None:
    project = make_project()
    d = deployer(project)
    plan = d.plan()
    service, operation, when, bad_key = FAULTS[where]
    fault = recorder.fail(service, operation, "AccessDenied", when=when, times=1)

    mark = recorder.mark()
    with pytest.raises(ApplyFailedError) as failed:
        d.apply(plan)
    first_calls = recorder.since(mark)

    assert fault.fired == 1
    assert isinstance(failed.value.__cause__, AwsAccessDeniedError)
    assert f"{P}-us-1" in failed.value.message and "us-east-1" in failed.value.message
    assert d.state.cache.journal_path(plan.plan_id).exists()
    done = d.state.read_journal(plan.plan_id)
    (bad,) = [s for s in plan.steps if s.key == bad_key]
    assert bad.id not in done
    assert 0 < len(done) < len(plan.steps)
    done_steps = [s for s in plan.steps if s.id in done]
    # nothing half-done: every resource touched is recorded as done, or is the failed one
    assert touched(first_calls) == idents(done_steps) | {step_ident(bad)}

    manifest = d.record()
    assert manifest.status == "failed" and manifest.deployment == 0
    assert set(manifest.resources) == {s.key for s in done_steps if s.action == "create"}
    assert bad.key not in manifest.resources
    assert {(r, k) for r, ks in manifest.artifacts.items() for k in ks} == {
        (s.region, s.name) for s in done_steps if s.action == "upload"
    }
    assert d.status()["missing"] == [] and d.status()["pending_applies"] == [plan.plan_id]

    fresh = d.plan()  # a new plan after the failure: only the remaining work
    remaining = [s for s in plan.steps if s.id not in done]
    map_steps = ("publish", "fence", "migrate")
    assert {k for k in keys_of(fresh) if k[0] not in map_steps} == {
        (s.action, s.key) for s in remaining if s.action not in map_steps
    }
    assert {s.region for s in remaining if s.action == "publish"} <= {
        s.region for s in fresh.steps if s.action == "publish"
    }
    # a version some region may already serve is never signed again with other content
    assert fresh.map_version > d.record().map_version_max

    mark = recorder.mark()
    result = d.apply(plan)  # the same plan again: resumes

    assert result.resumed and result.steps_skipped == len(done) > 0
    assert result.steps_done == len(remaining)
    assert touched(recorder.since(mark)) == idents(remaining)  # done steps are not called again
    manifest = d.record()
    assert (manifest.status, manifest.deployment, manifest.map_version) == ("ok", 1, 1)
    assert set(manifest.resources) == {s.key for s in plan.steps if s.action == "create"}
    assert not d.state.cache.journal_path(plan.plan_id).exists()
    assert d.status()["pending_applies"] == [] and d.status()["missing"] == []
    assert alias_version("us-east-1", f"{P}-us-1") == "1"
    assert deployer(project).plan().is_noop


def test_a_failed_plan_cannot_resume_after_another_plan_changed_the_state(
    make_project: MakeProject,
    rewrite: Rewrite,
    deployer: Deploy,
    recorder: Recorder,
) -> None:
    project = make_project()
    deploy(deployer(project))
    eu_1 = lambda c: c.params["FunctionName"] == f"{P}-eu-1"  # noqa: E731
    plan_a = deployer(rewrite(project, _eu_memory(1024))).plan()
    recorder.fail("lambda", "update_function_configuration", "AccessDenied", when=eu_1)
    with pytest.raises(ApplyFailedError):
        deployer(project).apply(plan_a)

    d = deployer(rewrite(project, _eu_memory(2048)))
    plan_b = d.plan()  # made against the state plan A's failure left: allowed
    recorder.fail("lambda", "update_function_configuration", "AccessDenied", when=eu_1)
    with pytest.raises(ApplyFailedError):
        d.apply(plan_b)
    state = d.record().model_dump()

    mark = recorder.mark()
    with pytest.raises(PlanStaleError):
        d.apply(plan_a)  # its journal is from before plan B changed things
    assert recorder.mutating_since(mark) == [] and d.record().model_dump() == state
    assert d.state.pending() == [plan_b.plan_id]
    result = d.apply(plan_b)
    assert result.resumed and d.record().status == "ok"
    lam = aws("lambda", "eu-west-1")
    assert {
        lam.get_function_configuration(FunctionName=f"{P}-{s}", Qualifier="live")["MemorySize"]
        for s in ("eu-0", "eu-1")
    } == {2048}


def test_a_persistent_throttle_fails_the_apply_with_a_named_operation(
    make_project: MakeProject,
    deployer: Deploy,
    recorder: Recorder,
) -> None:
    project = make_project()
    d = deployer(project)
    plan = d.plan()
    fault = recorder.fail(  # us-east-1: not the home region, whose table holds the lock
        "dynamodb",
        "create_table",
        "ThrottlingException",
        when=lambda c: c.region == "us-east-1",
        times=None,
    )

    with pytest.raises(ApplyFailedError) as failed:
        d.apply(plan)

    cause = failed.value.__cause__
    assert isinstance(cause, AwsThrottledError)
    assert (cause.operation, cause.region, cause.code) == (
        "create_table",
        "us-east-1",
        "ThrottlingException",
    )
    assert "create_table" in str(failed.value) and "us-east-1" in str(failed.value)
    assert fault.fired >= 1
    assert d.record().status == "failed"
    assert f"us-east-1/dynamodb_table/{P}-state" not in d.record().resources

    fault.times = fault.fired  # the throttling ends
    result = d.apply(plan)
    assert result.resumed and d.record().status == "ok"
    ddb = aws("dynamodb", "eu-west-1").describe_table(TableName=f"{P}-state")["Table"]
    assert ddb["TableStatus"] == "ACTIVE"


def test_a_passing_throttle_is_retried_below_the_facade(
    make_project: MakeProject,
    deployer: Deploy,
    recorder: Recorder,
) -> None:
    # the batch of eu's slot records that holds slot ff (written in eu-west-1)
    last = b'"eu#000ff"'
    attempts = recorder.throttle_http(
        "dynamodb", "BatchWriteItem", times=1, when=lambda request: last in request.body
    )
    d = deployer(make_project())
    mark = recorder.mark()
    d.apply(d.plan())
    fences = [
        c
        for c in recorder.since(mark)
        if c.operation == "batch_write_item" and last.decode() in json.dumps(c.params)
    ]
    assert len(fences) == 1  # one API call ...
    assert len(attempts) == 2  # ... sent twice: throttled, then retried by botocore
    _, shard_map = published_map(d.project, "eu-west-1")
    assert d.record().status == "ok"
    assert slot_records(d.project, shard_map) == owners(shard_map)


def test_a_function_that_already_exists_is_adopted_not_failed(
    make_project: MakeProject,
    deployer: Deploy,
    recorder: Recorder,
) -> None:
    project = make_project()
    name = f"{P}-us-0"
    aws("iam", "us-east-1").create_role(
        RoleName="someone-elses",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "sts:AssumeRole",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                    }
                ],
            }
        ),
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("old.py", "def handler(event, context):\n    return 1\n")
    aws("lambda", "us-east-1").create_function(
        FunctionName=name,
        Role="arn:aws:iam::123456789012:role/someone-elses",
        Runtime="python3.11",
        Handler="old.handler",
        Code={"ZipFile": buf.getvalue()},
        MemorySize=128,
    )

    d = deployer(project)
    plan = d.plan()
    mark = recorder.mark()
    d.apply(plan)

    ops = [
        c.operation
        for c in recorder.since(mark)
        if c.params.get("FunctionName") == name and c.mutating
    ]
    assert ops[:3] == [
        "create_function",
        "update_function_code",
        "update_function_configuration",
    ]  # refused as a conflict, then adopted
    conf = aws("lambda", "us-east-1").get_function_configuration(
        FunctionName=name, Qualifier="live"
    )
    assert plan.artifact and conf["CodeSha256"] == lambda_sha(plan.artifact["sha256"])
    assert (conf["MemorySize"], conf["Runtime"], conf["Handler"]) == (
        512,
        "python3.12",
        "shardkit.proxy.handler.handler",
    )
    assert conf["Role"].endswith(f"role/{name}-us-east-1")
    assert conf["Environment"]["Variables"]["SHARDKIT_SHARD"] == "us-0"
    assert d.record().status == "ok" and d.status()["missing"] == []


# -- destroy ---------------------------------------------------------------------------------------


def _nothing_but_tables_left(regions: Iterable[str], buckets: Iterable[str] = ()) -> None:
    for region in regions:
        assert aws("lambda", region).list_functions()["Functions"] == []
        assert aws("logs", region).describe_log_groups()["logGroups"] == []
        assert aws("cloudwatch", region).describe_alarms()["MetricAlarms"] == []
        assert aws("events", region).list_rules()["Rules"] == []
    names = [b["Name"] for b in aws("s3", "us-east-1").list_buckets()["Buckets"]]
    assert names == list(buckets)
    assert aws("iam", "us-east-1").list_roles()["Roles"] == []


def _tables(region: str) -> list[str]:
    return aws("dynamodb", region).list_tables()["TableNames"]


def test_destroy_keeps_the_state_tables_and_their_items_unless_asked(
    make_project: MakeProject,
    deployer: Deploy,
    recorder: Recorder,
) -> None:
    project = make_project()
    d = deployer(project)
    deploy(d)
    item = {"pk": {"S": "eu-0#alice"}, "sk": {"S": "session"}, "v": {"S": "warm"}}
    aws("dynamodb", "eu-west-1").put_item(TableName=f"{P}-state", Item=item)
    tables = {f"{r}/dynamodb_table/{P}-state" for r in ("eu-west-1", "us-east-1")}
    home = bucket_of(project, "eu-west-1")  # the home region's bucket: it keeps the record
    kept = tables | {f"eu-west-1/s3_bucket/{home}"}

    plan = d.plan_destroy()
    assert {s.key for s in plan.steps if s.action == "retain"} == kept
    # every registry is emptied first: none may name a shard that is deleted
    assert {s.region for s in plan.steps if s.action == "unpublish"} == {"eu-west-1", "us-east-1"}
    assert {s.action for s in plan.steps} == {"unpublish", "retain", "delete"}
    assert {s.key for s in plan.steps if s.action != "unpublish"} == set(d.record().resources)
    d.apply(plan)

    _nothing_but_tables_left(["eu-west-1", "us-east-1"], [home])
    assert d.record().status == "destroyed"
    assert deployer(make_project(dirname="other")).record().status == "destroyed"  # remotely
    assert _tables("eu-west-1") == [f"{P}-state"] == _tables("us-east-1")
    got = aws("dynamodb", "eu-west-1").get_item(
        TableName=f"{P}-state", Key={"pk": item["pk"], "sk": item["sk"]}
    )
    assert got["Item"] == item
    assert set(d.record().resources) == kept
    status = d.status()
    assert (status["retained"], status["missing"]) == (sorted(kept), [])

    mark = recorder.mark()
    again = d.plan_destroy()
    assert again.is_noop
    d.apply(again)
    assert recorder.mutating_since(mark) == []

    deploy(d)  # a new deploy adopts the kept tables, data and all
    assert (
        aws("dynamodb", "eu-west-1").get_item(
            TableName=f"{P}-state", Key={"pk": item["pk"], "sk": item["sk"]}
        )["Item"]
        == item
    )
    assert d.status()["retained"] == [] and d.status()["missing"] == []

    d.apply(d.plan_destroy())
    d.apply(d.plan_destroy(delete_data=True))  # kept tables go when asked, later too
    assert _tables("eu-west-1") == [] == _tables("us-east-1")
    _nothing_but_tables_left(["eu-west-1", "us-east-1"])
    assert d.record().resources == {} and d.record().status == "destroyed"


def test_destroy_with_delete_data_removes_everything(
    make_project: MakeProject,
    deployer: Deploy,
) -> None:
    project = make_project()
    d = deployer(project)
    deploy(d)
    plan = d.plan_destroy(delete_data=True)
    assert {s.action for s in plan.steps} == {"unpublish", "delete"}
    d.apply(plan)
    _nothing_but_tables_left(["eu-west-1", "us-east-1"])
    assert _tables("eu-west-1") == [] == _tables("us-east-1")
    assert d.record().resources == {} and d.status()["missing"] == []
    assert d.plan_destroy(delete_data=True).is_noop


def test_a_deploy_over_recreated_state_tables_writes_their_slot_records(
    make_project: MakeProject,
    deployer: Deploy,
) -> None:
    """Tables deleted with their data come back empty: the same map needs its records again."""
    d = deployer(make_project())
    deploy(d)
    _, shard_map = published_map(d.project, "eu-west-1")
    d.apply(d.plan_destroy(delete_data=True))
    plan = d.plan()
    assert {(s.region, s.kind, s.name) for s in plan.steps if s.action == "fence"} == {
        ("eu-west-1", "slots", "eu"),
        ("us-east-1", "slots", "us"),
    }
    d.apply(plan)
    assert slot_records(d.project, shard_map) == owners(shard_map)


def test_a_restore_writes_slot_records_only_into_tables_that_did_not_come_back(
    make_project: MakeProject, target: Target
) -> None:
    """A restarted local cloud brings its tables back with their items and slot records (it
    journals DynamoDB): the restore adopts them. A table that did not come back (its data was
    removed) is created again with its slot records."""
    project = make_project()
    deploy(Deployer(project, replace(target, name="local", instance="first")))
    _, shard_map = published_map(project, "eu-west-1")
    aws("dynamodb", "us-east-1").delete_table(TableName=f"{P}-state")
    restarted = Deployer(project, replace(target, name="local", instance="second"))
    assert restarted.needs_restore()
    plan = restarted.plan_restore()
    assert plan.kind == "restore"
    assert [(s.region, s.name) for s in plan.steps if s.action == "fence"] == [("us-east-1", "us")]
    restarted.apply(plan)
    assert slot_records(project, shard_map) == owners(shard_map)
    assert not restarted.needs_restore() and restarted.plan().is_noop


def test_destroy_with_nothing_deployed_is_a_noop(
    make_project: MakeProject,
    deployer: Deploy,
    recorder: Recorder,
) -> None:
    d = deployer(make_project())
    plan = d.plan_destroy(delete_data=True)
    assert plan.is_noop and plan.steps == ()
    mark = recorder.mark()
    result = d.apply(plan)
    assert recorder.mutating_since(mark) == [] and result.mutating_calls == 0
    assert d.record().status == "empty" and d.state.history() == []


# -- rollback --------------------------------------------------------------------------------------


def test_rollback_republishes_the_earlier_routing_as_a_higher_version(
    make_project: MakeProject,
    rewrite: Rewrite,
    deployer: Deploy,
) -> None:
    project = make_project()  # v1: eu-0, eu-1, us-0, us-1
    d = deployer(project)
    deploy(d)
    v1_resources = fingerprints(d)
    _, v1 = published_map(project, "eu-west-1")

    def grow(data: dict[str, Any]) -> None:
        data["groups"]["eu"].update(shards=3, memory_mb=1024)

    d = deployer(rewrite(project, grow))  # v2: eu-2 added, eu functions bigger
    deploy(d)
    _, v2 = published_map(project, "eu-west-1")
    assert v2.version > v1.version and fingerprints(d) != v1_resources

    plan = d.plan_rollback()
    assert plan.kind == "rollback"
    d.apply(plan)

    assert fingerprints(d) == v1_resources
    assert d.record().deployment == 3
    lam = aws("lambda", "eu-west-1")
    assert [
        f["FunctionName"]
        for f in lam.list_functions()["Functions"]
        if f["FunctionName"].endswith("eu-2")
    ] == []
    for shard in ("eu-0", "eu-1"):
        conf = lam.get_function_configuration(FunctionName=f"{P}-{shard}", Qualifier="live")
        assert conf["MemorySize"] == 512
    bodies = {published_map(project, r)[0] for r in ("eu-west-1", "us-east-1")}
    assert len(bodies) == 1
    back = shardkit.decode_map(
        bodies.pop(), shardkit.load_trusted_keys(project.keys_dir), min_version=v2.version
    )  # clients holding v2 accept it
    assert back.version > v2.version
    assert [back.route(k).id for k in KEYS] == [v1.route(k).id for k in KEYS]
    epochs = {s.id: s.epoch for s in back.shards}
    v2_epochs = {s.id: s.epoch for s in v2.shards}
    assert epochs == {
        "eu-0": back.version,
        "eu-1": back.version,
        "us-0": v2_epochs["us-0"],
        "us-1": v2_epochs["us-1"],
    }
    # the slots eu-2 held went back to eu-0 and eu-1 in the tables before the map went out
    assert slot_records(project, back) == owners(back)


def test_a_deployment_in_the_old_per_shard_layout_is_refused_not_mixed(
    make_project: MakeProject,
    deployer: Deploy,
    recorder: Recorder,
) -> None:
    d = deployer(make_project())
    deploy(d)
    # what a deploy of the per-shard layout recorded
    d.state.save(d.record().model_copy(update={"epochs": {"eu-0": 1}}))
    mark = recorder.mark()
    for make in (d.plan, d.plan_rollback):
        with pytest.raises(DeployError, match="old per-shard layout") as refused:
            make()
        assert "destroy --delete-data" in refused.value.hint
    assert recorder.mutating_since(mark) == []


def test_rollback_without_an_earlier_deployment_is_refused(
    make_project: MakeProject,
    deployer: Deploy,
) -> None:
    d = deployer(make_project())
    with pytest.raises(DeployError, match="no earlier"):
        d.plan_rollback()
    deploy(d)
    with pytest.raises(DeployError, match="no earlier"):
        d.plan_rollback()


# -- status ----------------------------------------------------------------------------------------


def test_status_reports_resources_deleted_behind_its_back(
    make_project: MakeProject,
    deployer: Deploy,
) -> None:
    d = deployer(make_project())
    deploy(d)
    assert d.status()["missing"] == []
    aws("lambda", "us-east-1").delete_function(FunctionName=f"{P}-us-1")
    status = d.status()
    # the function's alias and URL went with it
    assert status["missing"] == [
        f"us-east-1/function_url/{P}-us-1",
        f"us-east-1/lambda_alias/{P}-us-1:live",
        f"us-east-1/lambda_function/{P}-us-1",
    ]
    assert status["status"] == "drifted" and status["deployment"] == 1  # never "ok"
    assert any(f"{P}-us-1" in problem for problem in status["problems"])


def test_refresh_plans_to_recreate_what_was_deleted_behind_its_back(
    make_project: MakeProject,
    deployer: Deploy,
) -> None:
    d = deployer(make_project())
    deploy(d)
    aws("lambda", "us-east-1").delete_function(FunctionName=f"{P}-us-1")
    assert d.plan().is_noop  # the manifest alone does not know
    plan = d.plan(refresh=True)
    assert [(s.action, s.key) for s in plan.steps] == [
        ("create", f"us-east-1/lambda_function/{P}-us-1"),
        ("create", f"us-east-1/lambda_alias/{P}-us-1:live"),
        ("create", f"us-east-1/function_url/{P}-us-1"),
    ]
    d.apply(plan)
    assert d.status()["missing"] == []
    lam = aws("lambda", "us-east-1")
    conf = lam.get_function_configuration(FunctionName=f"{P}-us-1", Qualifier="live")
    assert conf["Environment"]["Variables"]["SHARDKIT_SHARD"] == "us-1"
    assert (
        lam.get_function_url_config(FunctionName=f"{P}-us-1", Qualifier="live")["AuthType"]
        == "AWS_IAM"
    )
