"""The pure planner and the plan file: hand-made blueprints and records, no AWS at all.

Decisions (create / update / delete / retain / nothing), the order of steps (dependencies first,
code uploads right after the buckets, fences and the map after every creation and before any
deletion, deletions in reverse dependency order), and the plan as a tamper-evident JSON file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shardkit import kinds
from shardkit.blueprint.model import Blueprint, Resource
from shardkit.deploy.plan import Plan, Step, make_plan
from shardkit.deploy.record import Record, ResourceRecord
from shardkit.errors import DeployError, PlanFileError
from shardkit.migrate.deploy import SlotBatch

ACCOUNT = "123456789012"
ARTIFACT = {"key": "artifacts/code/" + "ab" * 32 + ".zip", "sha256": "ab" * 32}
ENVELOPE = b"\x01signed map bytes\xff"


# -- hand-made blueprints and records ----------------------------------------------------------


def regional(region: str) -> list[Resource]:
    return [
        Resource("s3_bucket", f"bucket-{region}", region, {"versioning": True}),
        Resource("dynamodb_table", "state", region, {"billing_mode": "PAY_PER_REQUEST"}),
    ]


def shard(shard_id: str, region: str, memory_mb: int = 512) -> list[Resource]:
    fn = f"fn-{shard_id}"
    return [
        Resource("log_group", f"/aws/lambda/{fn}", region, {"retention_days": 14}, shard_id),
        Resource("iam_role", fn, region, {"policy": {"Version": "2012-10-17"}}, shard_id),
        Resource(
            "lambda_function",
            fn,
            region,
            {
                "role": fn,
                "log_group": f"/aws/lambda/{fn}",
                "memory_mb": memory_mb,
                "code": {"bucket": f"bucket-{region}", "key": ARTIFACT["key"]},
            },
            shard_id,
        ),
        Resource("lambda_alias", f"{fn}:live", region, {"function": fn, "alias": "live"}, shard_id),
        Resource("function_url", fn, region, {"function": fn, "qualifier": "live"}, shard_id),
        Resource("alarm", f"{fn}-errors", region, {"function": fn, "metric": "Errors"}, shard_id),
    ]


def blueprint(*resources: list[Resource]) -> Blueprint:
    return Blueprint("demo", "test-blueprint", ACCOUNT, tuple(r for rs in resources for r in rs))


def two_regions(memory_eu: int = 512) -> Blueprint:
    return blueprint(
        regional("eu-west-1"),
        regional("us-east-1"),
        shard("eu-0", "eu-west-1", memory_eu),
        shard("us-0", "us-east-1"),
    )


def deployed(
    bp: Blueprint,
    *,
    deployment: int = 1,
    artifacts: bool = True,
) -> Record:
    """The record an apply of ``bp`` leaves behind."""
    records = {
        r.key: ResourceRecord(
            kind=r.kind,
            name=r.name,
            region=r.region,
            shard=r.shard,
            fingerprint=r.fingerprint,
            props=dict(r.props),
        )
        for r in bp.resources
    }
    return Record(
        project="demo",
        target="aws",
        account=ACCOUNT,
        resources=records,
        artifacts={r: (ARTIFACT["key"],) for r in bp.regions} if artifacts else {},
        map_version=1,
        map_regions=tuple(bp.regions),
        deployment=deployment,
        status="ok",
    )


def empty() -> Record:
    return Record(project="demo", target="aws")


def plan_of(desired: Blueprint, manifest: Record, **kw: Any) -> Plan:
    kw.setdefault("artifact", ARTIFACT)
    kw.setdefault("map_envelope", None)
    kw.setdefault("map_version", manifest.map_version)
    return make_plan(desired, manifest, project_root="/srv/demo", **kw)


def initial(region: str, group: str, shard: str) -> SlotBatch:
    """The slot records of a first deploy of ``group`` in ``region`` (what the engine passes)."""
    props = {"group": group, "version": 1, "owners": {shard: "0-ff"}}
    return SlotBatch(region, group, props, f"slot records of group {group}")


def moving(region: str, group: str, source: str, source_region: str, to: str) -> SlotBatch:
    """Slots of ``group`` moving to ``to`` in ``region``, from ``source`` in ``source_region``."""
    move = {"source": source, "source_region": source_region, "destination": to, "slots": "0-7f"}
    return SlotBatch(region, group, {"group": group, "version": 2, "moves": [move]}, "slots move")


def actions(plan: Plan) -> dict[str, str]:
    return {s.key: s.action for s in plan.steps}


def index(plan: Plan) -> dict[tuple[str, str], int]:
    return {(s.action, s.key): s.id for s in plan.steps}


# -- decisions ---------------------------------------------------------------------------------


def test_an_empty_manifest_creates_everything_uploads_code_and_publishes_the_map() -> None:
    bp = two_regions()
    slots = [initial("eu-west-1", "eu", "eu-0"), initial("us-east-1", "us", "us-0")]
    plan = plan_of(bp, empty(), map_envelope=ENVELOPE, map_version=1, slots=slots)

    assert [s.id for s in plan.steps] == list(range(len(plan.steps)))
    creates = {s.key: s for s in plan.steps if s.action == "create"}
    assert set(creates) == set(bp.by_key())
    assert all(s.fingerprint == bp.by_key()[k].fingerprint for k, s in creates.items())
    assert {(s.region, s.name, s.props["bucket"]) for s in plan.steps if s.action == "upload"} == {
        (r, ARTIFACT["key"], f"bucket-{r}") for r in ("eu-west-1", "us-east-1")
    }
    assert {
        (s.region, s.props["bucket"], s.props["version"])
        for s in plan.steps
        if s.action == "publish"
    } == {("eu-west-1", "bucket-eu-west-1", 1), ("us-east-1", "bucket-us-east-1", 1)}
    fences = {(s.region, s.kind, s.name): s.props for s in plan.steps if s.action == "fence"}
    assert fences == {
        ("eu-west-1", "slots", "eu"): {**slots[0].props, "tables": {"eu-west-1": "state"}},
        ("us-east-1", "slots", "us"): {**slots[1].props, "tables": {"us-east-1": "state"}},
    }
    assert plan.summary() == {"create": 16, "upload": 2, "fence": 2, "publish": 2}
    assert (plan.base, plan.deployment, plan.kind) == (empty().fingerprint(), 1, "deploy")
    assert plan.blueprint == bp.to_dict() and not plan.is_noop


def test_what_is_deployed_as_desired_plans_nothing() -> None:
    bp = two_regions()
    plan = plan_of(bp, deployed(bp))
    assert plan.steps == () and plan.is_noop and plan.summary() == {}


def test_a_changed_resource_is_updated_and_nothing_else() -> None:
    manifest = deployed(two_regions())
    plan = plan_of(two_regions(memory_eu=1024), manifest)
    (step,) = plan.steps
    assert (step.action, step.key) == ("update", "eu-west-1/lambda_function/fn-eu-0")
    assert step.props["memory_mb"] == 1024 and step.reason == "changed: memory_mb"
    assert step.fingerprint != manifest.resources[step.key].fingerprint


def test_missing_artifacts_are_uploaded_only_where_missing() -> None:
    bp = two_regions()
    manifest = deployed(bp).model_copy(update={"artifacts": {"eu-west-1": (ARTIFACT["key"],)}})
    plan = plan_of(bp, manifest)
    assert [(s.action, s.region, s.name) for s in plan.steps] == [
        ("upload", "us-east-1", ARTIFACT["key"])
    ]


def test_slot_records_are_written_where_they_move_and_name_every_table_they_use() -> None:
    old = two_regions()
    new = blueprint(regional("eu-west-1"), shard("eu-0", "eu-west-1"))  # us-east-1 retired
    batch = moving("eu-west-1", "eu", "us-0", "us-east-1", "eu-0")
    plan = plan_of(new, deployed(old), slots=[batch])
    (step,) = [s for s in plan.steps if s.action == "fence"]
    assert (step.region, step.kind, step.name, step.key) == (
        "eu-west-1",
        "slots",
        "eu",
        "eu-west-1/slots/eu",
    )
    # the source table is no longer in the blueprint (retained): its name comes from the record
    assert step.props["tables"] == {"eu-west-1": "state", "us-east-1": "state"}
    assert step.reason == "slots move"


def test_slot_records_without_a_state_table_are_refused() -> None:
    bp = blueprint(regional("eu-west-1"), shard("eu-0", "eu-west-1"))
    with pytest.raises(DeployError, match="need a state table in ap-south-1"):
        plan_of(bp, empty(), slots=[moving("eu-west-1", "eu", "x-0", "ap-south-1", "eu-0")])


def test_resources_no_longer_wanted_are_deleted_but_tables_are_retained() -> None:
    old = blueprint(
        regional("eu-west-1"),
        regional("us-east-1"),
        shard("eu-0", "eu-west-1"),
        shard("us-0", "us-east-1"),
    )
    new = blueprint(regional("eu-west-1"), shard("eu-0", "eu-west-1"))  # us-east-1 retired
    gone = {k for k in old.by_key() if k.startswith("us-east-1/")}

    plan = plan_of(new, deployed(old))
    unpublish = {"us-east-1/map/registry/map.skm": "unpublish"}  # first, its registry empties
    expected = {k: "retain" if "/dynamodb_table/" in k else "delete" for k in gone}
    assert actions(plan) == {**expected, **unpublish}
    retained = [s for s in plan.steps if s.action == "retain"]
    assert [s.key for s in retained] == ["us-east-1/dynamodb_table/state"]
    assert "--delete-data" in retained[0].reason and not retained[0].mutating

    with_data = plan_of(new, deployed(old), delete_data=True)
    assert actions(with_data) == {**dict.fromkeys(gone, "delete"), **unpublish}


def test_a_plan_of_only_retained_tables_is_a_noop() -> None:
    table = [r for r in regional("eu-west-1") if r.kind == "dynamodb_table"]
    plan = plan_of(blueprint(), deployed(blueprint(table)), artifact=None)
    assert [(s.action, s.kind) for s in plan.steps] == [("retain", "dynamodb_table")]
    assert plan.is_noop
    assert not plan_of(
        blueprint(), deployed(blueprint(regional("eu-west-1"))), artifact=None
    ).is_noop  # the bucket is deleted


def test_a_table_kept_by_destroy_is_adopted_again_or_deleted_only_when_asked() -> None:
    bp = blueprint(regional("eu-west-1"))
    manifest = deployed(bp)
    key = "eu-west-1/dynamodb_table/state"
    retained = manifest.resources[key].model_copy(update={"retained": True})
    manifest = manifest.model_copy(update={"resources": {key: retained}})

    again = plan_of(bp, manifest)
    assert actions(again)[key] == "create"
    assert [s.reason for s in again.steps if s.key == key] == ["kept from an earlier destroy"]

    destroy = plan_of(blueprint(), manifest, artifact=None)
    assert destroy.steps == ()  # already kept: nothing more to do
    destroy_data = plan_of(blueprint(), manifest, artifact=None, delete_data=True)
    assert [(s.action, s.key) for s in destroy_data.steps] == [("delete", key)]


# -- order -------------------------------------------------------------------------------------


def _mixed_plan() -> tuple[Plan, Blueprint, Blueprint]:
    """Everything at once: eu-1 is added, us-0 is retired, eu-0 changes, a new map goes out."""
    old = blueprint(
        regional("eu-west-1"),
        regional("us-east-1"),
        shard("eu-0", "eu-west-1"),
        shard("us-0", "us-east-1"),
    )
    new = blueprint(
        regional("eu-west-1"),
        regional("us-east-1"),
        shard("eu-0", "eu-west-1", 2048),
        shard("eu-1", "eu-west-1"),
        shard("us-1", "us-east-1"),
    )
    manifest = deployed(old, artifacts=False)
    plan = plan_of(
        new,
        manifest,
        map_envelope=ENVELOPE,
        map_version=2,
        slots=[
            moving("eu-west-1", "eu", "eu-0", "eu-west-1", "eu-1"),
            moving("us-east-1", "us", "us-0", "us-east-1", "us-1"),
        ],
    )
    return plan, old, new


def test_a_mixed_plan_has_every_kind_of_step() -> None:
    plan, _, _ = _mixed_plan()
    assert set(plan.summary()) == {"create", "update", "upload", "fence", "publish", "delete"}


@pytest.mark.parametrize("fresh", [True, False], ids=["first-deploy", "mixed"])
def test_creations_follow_dependencies_and_uploads_come_right_after_the_buckets(
    fresh: bool,
) -> None:
    plan, new = (plan_of(two_regions(), empty()), two_regions()) if fresh else _mixed_plan()[::2]
    at = index(plan)
    for r in new.resources:
        step = at.get(("create", r.key), at.get(("update", r.key)))
        for dep in r.depends_on():
            before = at.get(("create", dep), at.get(("update", dep)))
            if step is not None and before is not None:
                assert before < step, (dep, r.key)
    seq = [s.kind if s.action != "upload" else "upload" for s in plan.steps]
    buckets = [i for i, k in enumerate(seq) if k == "s3_bucket"]
    uploads = [i for i, k in enumerate(seq) if k == "upload"]
    functions = [i for i, k in enumerate(seq) if k == "lambda_function"]
    assert len(buckets) == (2 if fresh else 0) and len(uploads) == 2 and functions
    # together, right after the buckets (kinds ordered before them may come first), and before
    # any function needs the code
    assert uploads == [uploads[0], uploads[0] + 1]
    assert all(i < uploads[0] for i in buckets) and max(uploads) < min(functions)
    made = [(s.id, kinds.rank(s.kind)) for s in plan.steps if s.action in ("create", "update")]
    bucket = kinds.rank("s3_bucket")
    assert all((i < uploads[0]) == (rank <= bucket) for i, rank in made)


def test_alias_and_url_wait_for_their_function() -> None:
    plan = plan_of(two_regions(), empty())
    at = index(plan)
    for fn in ("eu-west-1/lambda_function/fn-eu-0", "us-east-1/lambda_function/fn-us-0"):
        region, _, name = fn.split("/")
        assert at[("create", fn)] < at[("create", f"{region}/lambda_alias/{name}:live")]
        assert at[("create", fn)] < at[("create", f"{region}/function_url/{name}")]
        assert at[("create", fn)] < at[("create", f"{region}/alarm/{name}-errors")]
        assert at[("create", f"{region}/iam_role/{name}")] < at[("create", fn)]


def test_the_map_goes_out_after_every_creation_and_fence_and_before_any_deletion() -> None:
    plan, _, _ = _mixed_plan()
    ids = {a: [s.id for s in plan.steps if s.action == a] for a in plan.summary()}
    first_publish, last_publish = min(ids["publish"]), max(ids["publish"])
    assert max(ids["create"] + ids["update"] + ids["upload"]) < min(ids["fence"])
    assert max(ids["fence"]) < first_publish
    assert last_publish < min(ids["delete"])
    assert last_publish - first_publish == len(ids["publish"]) - 1


def test_deletions_run_in_reverse_dependency_order() -> None:
    plan, old, _ = _mixed_plan()
    at = index(plan)
    deleted = [r for r in old.resources if ("delete", r.key) in at]
    assert {r.shard for r in deleted} == {"us-0"}
    for r in deleted:
        for dep in r.depends_on():
            if dep.startswith("us-east-1/s3_bucket/"):  # the region's code bucket: it stays
                assert ("delete", dep) not in at
                continue
            assert at[("delete", r.key)] < at[("delete", dep)], (r.key, dep)
    kinds = [s.kind for s in plan.steps if s.action == "delete"]
    assert kinds == [  # the apply order of kinds (see shardkit.kinds), reversed
        "function_url",
        "lambda_alias",
        "alarm",
        "lambda_function",
        "log_group",
        "iam_role",
    ]


# -- the plan file -----------------------------------------------------------------------------


def test_a_plan_survives_a_json_round_trip() -> None:
    plan, _, _ = _mixed_plan()
    text = plan.to_json()
    back = Plan.from_json(text)
    assert back == plan
    assert back.plan_id == plan.plan_id and back.map_envelope == ENVELOPE
    assert back.to_json() == text
    assert json.loads(text)["plan_id"] == plan.plan_id


def test_plan_id_is_stable_and_names_the_content() -> None:
    a, _, _ = _mixed_plan()
    b, _, _ = _mixed_plan()
    assert a.plan_id == b.plan_id and a.to_json() == b.to_json()
    assert len(a.plan_id) == 16 and int(a.plan_id, 16) >= 0

    bp = two_regions()
    base = plan_of(bp, empty())
    assert (
        plan_of(bp, Record(project="demo", target="aws", deployment=7)).plan_id != base.plan_id
    )  # another deployed state
    assert plan_of(two_regions(1024), empty()).plan_id != base.plan_id  # other content


def _one_char_edits(text: str) -> list[tuple[str, str]]:
    """(old, new) substrings of ``text``: each changes exactly one character of one field."""
    edits = [
        ('"name": "fn-eu-0"', '"name": "fn-eu-9"'),
        ('"action": "delete"', '"action": "delets"'),
        ('"memory_mb": 2048', '"memory_mb": 2049'),
        ('"region": "us-east-1"', '"region": "us-east-2"'),
        ('"map_version": 2', '"map_version": 3'),
        ('"deployment": 2', '"deployment": 3'),
    ]
    for old, _ in edits:
        assert old in text, old
    return edits


def test_a_hand_edited_plan_is_refused() -> None:
    plan, _, _ = _mixed_plan()
    text = plan.to_json()
    for old, new in _one_char_edits(text):
        assert sum(a != b for a, b in zip(old, new, strict=True)) == 1
        edited = text.replace(old, new, 1)
        with pytest.raises(PlanFileError, match="changed after it was made"):
            Plan.from_json(edited, "plan.json")
    data = json.loads(text)
    data["steps"][0]["name"] = data["steps"][0]["name"][:-1] + "x"
    with pytest.raises(PlanFileError):
        Plan.from_json(json.dumps(data))
    data = json.loads(text)
    data["base"] = "0" * len(data["base"])  # a plan moved onto another deployed state
    with pytest.raises(PlanFileError):
        Plan.from_json(json.dumps(data))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[1, 2]",
        '"a string"',
        "{}",
        '{"format": "terraform-plan/1"}',
        json.dumps({"format": "shardkit-plan/1", "steps": []}),  # no checksum
    ],
)
def test_what_is_not_a_plan_is_refused(text: str) -> None:
    with pytest.raises(PlanFileError):
        Plan.from_json(text, "x.json")


def test_a_plan_with_a_valid_checksum_but_bad_fields_is_refused() -> None:
    import hashlib

    from shardkit.blueprint.model import canonical_json

    body = json.loads(plan_of(two_regions(), empty()).to_json())
    del body["checksum"], body["plan_id"]
    body["steps"][0]["colour"] = "blue"  # not a field of a step
    body["checksum"] = hashlib.sha256(canonical_json(body).encode()).hexdigest()
    with pytest.raises(PlanFileError, match="malformed"):
        Plan.from_json(json.dumps(body))


def test_loading_a_missing_plan_file_is_a_plan_file_error(tmp_path: Path) -> None:
    with pytest.raises(PlanFileError, match="cannot read"):
        Plan.load(tmp_path / "nope.json")
    path = tmp_path / "plan.json"
    plan = plan_of(two_regions(), empty())
    path.write_text(plan.to_json())
    assert Plan.load(path) == plan


def test_step_mutating_is_everything_but_retain() -> None:
    step = Step(0, "retain", "dynamodb_table", "eu-west-1", "t", "eu-west-1/dynamodb_table/t")
    assert not step.mutating
    for action in ("create", "update", "delete", "upload", "fence", "publish", "unpublish"):
        assert Step(0, action, "alarm", "r", "n", "k").mutating


def test_a_map_is_published_only_where_asked() -> None:
    bp = two_regions()
    plan = plan_of(bp, deployed(bp), map_envelope=ENVELOPE, publish_to=["us-east-1"])
    assert [(s.action, s.region) for s in plan.steps] == [("publish", "us-east-1")]
    assert plan_of(bp, deployed(bp), map_envelope=ENVELOPE, publish_to=[]).is_noop


def test_registries_left_without_shards_are_emptied_before_anything_is_deleted() -> None:
    bp = two_regions()
    plan = plan_of(blueprint(), deployed(bp), artifact=None)
    unpublished = [s for s in plan.steps if s.action == "unpublish"]
    assert {(s.region, s.name, s.props["bucket"]) for s in unpublished} == {
        ("eu-west-1", "registry/map.skm", "bucket-eu-west-1"),
        ("us-east-1", "registry/map.skm", "bucket-us-east-1"),
    }
    assert max(s.id for s in unpublished) < min(
        s.id for s in plan.steps if s.action in ("delete", "retain")
    )
    one_region = blueprint(regional("eu-west-1"), shard("eu-0", "eu-west-1"))
    shrunk = plan_of(one_region, deployed(bp), map_envelope=ENVELOPE, map_version=2)
    assert [s.region for s in shrunk.steps if s.action == "unpublish"] == ["us-east-1"]
