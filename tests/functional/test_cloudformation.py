"""The CloudFormation rendering of blueprints: cfn-lint clean, resident, deterministic, and a
reshard shows up as a blueprint diff and as added resources."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import lint
from cfnlint.config import ManualArgs
from click.testing import CliRunner
from rich.console import Console

from shardkit import kinds
from shardkit.blueprint import CodeArtifact, expand, load_definition
from shardkit.blueprint.cloudformation import (
    ACCOUNT,
    PARTITION,
    blueprint_for_render,
    logical_ids,
    render,
)
from shardkit.blueprint.model import Blueprint
from shardkit.cli import maps
from shardkit.cli.blueprint import group
from shardkit.config import Project, ProjectConfig, load_project
from shardkit.config.build import build_map
from shardkit.errors import ConfigError, ShardkitError

ROOT = Path(__file__).resolve().parents[2]
PROJECTS = {
    "quickstart": ROOT / "examples" / "quickstart",
    "solo": ROOT / "tests" / "data" / "projects" / "solo",
    "tri": ROOT / "tests" / "data" / "projects" / "tri",
}
SHA = "ab" * 32
CODE = CodeArtifact(f"artifacts/code/{SHA}.zip", SHA)
NOW = 1_800_000_000
PER_SHARD = ["LogGroup", "Role", "Function", "Version", "Alias", "FunctionUrl"]


def blueprint_of(project: Project, previous: Any = None) -> tuple[Any, Blueprint]:
    shard_map = build_map(project.config, previous, now=NOW)
    return shard_map, blueprint_for_render(project, shard_map, CODE)


@pytest.fixture(scope="module")
def rendered() -> dict[str, tuple[Any, Blueprint, dict[str, dict[str, Any]]]]:
    out = {}
    for name, path in PROJECTS.items():
        shard_map, bp = blueprint_of(load_project(path))
        out[name] = (shard_map, bp, render(bp))
    return out


def shard_ids(shard_id: str) -> set[str]:
    camel = "".join(p.capitalize() for p in shard_id.split("-"))
    return {prefix + camel for prefix in PER_SHARD} | {
        f"Alarm{camel}Errors",
        f"Alarm{camel}Throttles",
    }


def lint_template(template: dict[str, Any], region: str) -> list[Any]:
    text = json.dumps(template, indent=2, sort_keys=True)
    return lint(text, config=ManualArgs(regions=[region], include_experimental=True))


# --- cfn-lint --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROJECTS))
def test_every_template_passes_cfn_lint(rendered, name):
    _, _, templates = rendered[name]
    errors = []
    for region, template in templates.items():
        for match in lint_template(template, region):
            line = f"{name}/{region}: {match.rule.id} line {match.linenumber}: {match.message}"
            if match.rule.id.startswith("E"):
                errors.append(line)
            else:
                print("cfn-lint (allowed):", line)
    assert errors == []


def test_cfn_lint_would_catch_a_broken_template(rendered):
    """The control for the test above: the linter runs, and sees what the renderer makes."""
    template = json.loads(json.dumps(rendered["solo"][2]["eu-west-1"]))
    template["Resources"]["FunctionAlpha"]["Properties"]["Role"] = {"Ref": "NoSuchRole"}
    template["Resources"]["StateTable"]["Properties"]["BillingMode"] = "FREE"
    found = {m.rule.id for m in lint_template(template, "eu-west-1")}
    assert {"E1020", "E3030"} <= found, found


def test_colliding_shard_ids_get_distinct_valid_logical_ids():
    config = ProjectConfig.model_validate(
        {
            "project": {"name": "clash"},
            "signing": {"key_id": "clash"},
            "regions": {"eu-west-1": {"jurisdiction": "eu"}},
            "groups": {
                "eu": {
                    "jurisdiction": "eu",
                    "regions": ["eu-west-1"],
                    "shards": [
                        {"id": "a-0", "region": "eu-west-1"},
                        {"id": "a0", "region": "eu-west-1"},
                        {"id": "b", "region": "eu-west-1"},
                    ],
                }
            },
        }
    )
    bp = blueprint_for_render(Project(Path("."), config), build_map(config, now=NOW), CODE)
    ids = logical_ids(bp.resources)
    assert len(set(ids.values())) == len(ids) == len(bp.resources)
    assert ids["eu-west-1/lambda_function/shardkit-clash-b"] == "FunctionB"  # no clash: readable
    clashed = [
        ids["eu-west-1/lambda_function/shardkit-clash-a-0"],
        ids["eu-west-1/lambda_function/shardkit-clash-a0"],
    ]
    assert all(re.fullmatch(r"FunctionA0[0-9A-F]{8}", lid) for lid in clashed)
    template = render(bp)["eu-west-1"]
    assert [m for m in lint_template(template, "eu-west-1") if m.rule.id.startswith("E")] == []


# --- shape -----------------------------------------------------------------------------------


def test_quickstart_eu_west_1_has_exactly_the_expected_resources(rendered):
    _, _, templates = rendered["quickstart"]
    assert sorted(templates) == ["eu-central-1", "eu-west-1", "us-east-1", "us-west-2"]
    template = templates["eu-west-1"]
    assert set(template["Resources"]) == (
        {"ArtifactBucket", "StateTable", "ScheduleRule"} | shard_ids("eu-0") | shard_ids("eu-2")
    )
    assert set(template["Outputs"]) == {"ArtifactBucketName", "StateTableName", "UrlEu0", "UrlEu2"}
    assert template["Metadata"]["shardkit"]["shards"] == ["eu-0", "eu-2"]


def test_kinds_map_to_cloudformation_as_documented(rendered):
    res = rendered["quickstart"][2]["eu-west-1"]["Resources"]
    fn = res["FunctionEu0"]["Properties"]
    assert fn["Role"] == {"Fn::GetAtt": ["RoleEu0", "Arn"]}
    assert fn["Code"] == {"S3Bucket": {"Ref": "ArtifactBucket"}, "S3Key": CODE.key}
    # LogFormat: JSON, as apply has always set it
    assert fn["LoggingConfig"] == {"LogGroup": {"Ref": "LogGroupEu0"}, "LogFormat": "JSON"}
    # the inline policy has the name apply gives it
    assert [p["PolicyName"] for p in res["RoleEu0"]["Properties"]["Policies"]] == ["shardkit"]
    assert (fn["Runtime"], fn["Architectures"], fn["MemorySize"], fn["Timeout"]) == (
        "python3.12",
        ["arm64"],
        512,
        30,
    )
    assert fn["ReservedConcurrentExecutions"] == 4  # groups.*.concurrency, default
    assert res["VersionEu0"]["Properties"]["FunctionName"] == {"Ref": "FunctionEu0"}
    assert res["AliasEu0"]["Properties"] == {
        "FunctionName": {"Ref": "FunctionEu0"},
        "FunctionVersion": {"Fn::GetAtt": ["VersionEu0", "Version"]},
        "Name": "live",
        "Description": res["VersionEu0"]["Properties"]["Description"],
    }
    assert res["FunctionUrlEu0"]["Properties"] == {
        "AuthType": "AWS_IAM",
        "TargetFunctionArn": {"Ref": "AliasEu0"},
    }
    table = res["StateTable"]
    assert (table["DeletionPolicy"], table["UpdateReplacePolicy"]) == ("Retain", "Retain")
    assert table["Properties"]["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert table["Properties"]["BillingMode"] == "PAY_PER_REQUEST"
    bucket = res["ArtifactBucket"]["Properties"]
    assert bucket["BucketName"] == {"Fn::Sub": "shardkit-quickstart-${AWS::AccountId}-eu-west-1"}
    assert bucket["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    assert set(bucket["PublicAccessBlockConfiguration"].values()) == {True}
    alarm = res["AlarmEu0Errors"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["TreatMissingData"]) == (
        "AWS/Lambda",
        "Errors",
        "notBreaching",
    )
    assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "FunctionEu0"}}]
    rule = res["ScheduleRule"]["Properties"]  # the auto-shard tick: off until something uses it
    assert (rule["Name"], rule["ScheduleExpression"], rule["State"]) == (
        "shardkit-quickstart-autoshard",
        "rate(1 minute)",
        "DISABLED",
    )


def test_weights_and_group_settings_reach_the_functions(rendered):
    res = rendered["solo"][2]["eu-west-1"]["Resources"]
    assert {lid for lid in res if lid.startswith("Function") and "Url" not in lid} == {
        "FunctionAlpha",
        "FunctionBeta",
        "FunctionGamma",
    }
    assert {res[f]["Properties"]["MemorySize"] for f in ("FunctionAlpha", "FunctionBeta")} == {1024}
    tri = rendered["tri"][2]
    assert tri["us-east-2"]["Resources"]["FunctionUs3"]["Properties"]["MemorySize"] == 2048
    assert tri["ap-southeast-2"]["Resources"]["FunctionAu0"]["Properties"]["Timeout"] == 120


def _strings_outside_sub(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() if k != "Fn::Sub" for s in _strings_outside_sub(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings_outside_sub(v)]
    return []


@pytest.mark.parametrize("name", sorted(PROJECTS))
def test_templates_are_account_independent(rendered, name):
    for template in rendered[name][2].values():
        text = json.dumps(template)
        assert "${AWS::AccountId}" in text and "${AWS::Partition}" in text
        assert not re.search(r"[:-]\d{12}[:-]", text)  # no account id baked in
        for body in template["Resources"].values():
            leaked = [s for s in _strings_outside_sub(body["Properties"]) if "${AWS::" in s]
            assert leaked == []


# --- residency -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROJECTS))
def test_each_template_holds_only_its_own_regions_shards(rendered, name):
    shard_map, bp, templates = rendered[name]
    assert sorted(templates) == sorted({s.region for s in shard_map.shards})
    for region, template in templates.items():
        own = sorted(s.id for s in shard_map.shards if s.region == region)
        assert template["Metadata"]["shardkit"]["shards"] == own
        text = json.dumps(template)
        for body in template["Resources"].values():
            assert body["Metadata"]["shardkit"].get("shard", own[0]) in own
        for s in shard_map.shards:
            if s.region != region:  # not even a name or an ARN of another region's shard
                assert not re.search(rf"shardkit-{bp.project}-{s.id}\b", text), s.id
        jurisdiction = shard_map.regions[region]
        for lid, body in template["Resources"].items():
            if body["Type"] == "AWS::Lambda::Function":
                env = body["Properties"]["Environment"]["Variables"]
                assert env["SHARDKIT_JURISDICTION"] == jurisdiction, lid
        arn_regions = set(re.findall(r"arn:\$\{AWS::Partition\}:[a-z0-9-]+:([a-z0-9-]+):", text))
        assert arn_regions == {region}


def test_no_eu_shard_resources_in_a_us_template(rendered):
    templates = rendered["quickstart"][2]
    for region in ("us-east-1", "us-west-2"):
        text = json.dumps(templates[region])
        assert not re.search(r"\beu-\d", text)
        assert '"eu"' not in text


# --- determinism and ids ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROJECTS))
def test_rendering_is_deterministic(name):
    project = load_project(PROJECTS[name])
    first = render(blueprint_for_render(project, build_map(project.config, now=1), CODE))
    second = render(blueprint_for_render(project, build_map(project.config, now=2), CODE))
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    bp = blueprint_for_render(project, build_map(project.config), CODE)
    assert render(Blueprint.from_dict(json.loads(json.dumps(bp.to_dict())))) == render(bp)


@pytest.mark.parametrize("name", sorted(PROJECTS))
def test_logical_ids_are_unique_alphanumeric_and_cover_every_resource(rendered, name):
    _, bp, templates = rendered[name]
    for region, template in templates.items():
        ids = list(template["Resources"]) + list(template["Outputs"])
        assert len(ids) == len(set(ids))
        assert all(re.fullmatch(r"[A-Za-z0-9]{1,255}", lid) for lid in ids)
        functions = sum(r.kind == "lambda_function" for r in bp.in_region(region))
        assert len(template["Resources"]) == len(bp.in_region(region)) + functions  # + versions


# --- reshard ---------------------------------------------------------------------------------


def _with_shards(path: Path, group: str, shards: Any, **settings: Any) -> Project:
    data = tomllib.loads((path / "shardkit.toml").read_text())
    data["groups"][group].update(shards=shards, **settings)
    return Project(path, ProjectConfig.model_validate(data))


def _keys(region: str, project: str, shard: str) -> list[str]:
    fn = f"shardkit-{project}-{shard}"
    return sorted(
        [
            f"{region}/log_group//aws/lambda/{fn}",
            f"{region}/iam_role/{fn}-{region}",
            f"{region}/lambda_function/{fn}",
            f"{region}/lambda_alias/{fn}:live",
            f"{region}/function_url/{fn}",
            f"{region}/alarm/{fn}-errors",
            f"{region}/alarm/{fn}-throttles",
        ]
    )


def test_adding_a_shard_is_a_blueprint_diff_and_added_resources(rendered):
    old_map, old_bp, old_templates = rendered["quickstart"]
    project = _with_shards(PROJECTS["quickstart"], "eu", 5)  # eu-4 lands in eu-west-1
    new_map, new_bp = blueprint_of(project, old_map)
    assert new_map.version == old_map.version + 1
    assert old_bp.diff(new_bp) == {
        "added": _keys("eu-west-1", "quickstart", "eu-4"),
        "removed": [],
        "changed": [],
    }
    new_templates = render(new_bp)
    old_eu, new_eu = old_templates["eu-west-1"], new_templates["eu-west-1"]
    assert set(new_eu["Resources"]) - set(old_eu["Resources"]) == shard_ids("eu-4")
    assert set(old_eu["Resources"]) <= set(new_eu["Resources"])
    for lid, body in old_eu["Resources"].items():
        assert new_eu["Resources"][lid] == body  # nothing that existed changes
    assert set(new_eu["Outputs"]) - set(old_eu["Outputs"]) == {"UrlEu4"}
    for region in ("eu-central-1", "us-east-1", "us-west-2"):
        assert new_templates[region] == old_templates[region]


def test_removing_a_shard_is_a_blueprint_diff_and_removed_resources(rendered):
    old_map, old_bp, old_templates = rendered["solo"]
    project = _with_shards(
        PROJECTS["solo"],
        "eu",
        [{"id": "alpha", "region": "eu-west-1"}, {"id": "beta", "region": "eu-west-1"}],
        weights={},
    )
    _, new_bp = blueprint_of(project, old_map)
    assert old_bp.diff(new_bp) == {
        "added": [],
        "removed": _keys("eu-west-1", "solo", "gamma"),
        "changed": [],
    }
    gone = set(old_templates["eu-west-1"]["Resources"]) - set(
        render(new_bp)["eu-west-1"]["Resources"]
    )
    assert gone == shard_ids("gamma")


# --- CLI -------------------------------------------------------------------------------------


@pytest.fixture()
def quickstart(tmp_path: Path) -> Path:
    """A copy of the quickstart without its state (no map, no keys)."""
    project = tmp_path / "quickstart"
    project.mkdir()
    shutil.copy(PROJECTS["quickstart"] / "shardkit.toml", project / "shardkit.toml")
    return project


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Tables and notes on one line each, whatever terminal pytest runs in."""
    monkeypatch.setattr("shardkit.cli.blueprint.console", Console(highlight=False, width=10_000))


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(group, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_cli_render_writes_one_sorted_file_per_region(quickstart, tmp_path):
    out = tmp_path / "cfn"
    result = invoke("render", quickstart, "--out", out)
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        f"{r}.template.json" for r in ("eu-central-1", "eu-west-1", "us-east-1", "us-west-2")
    ]
    for path in out.iterdir():
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
        assert path.name.removesuffix(".template.json") in result.output
    assert "planned in memory" in result.output
    again = tmp_path / "again"
    invoke("render", quickstart, "--out", again)
    for name in files:  # same project, same bytes
        assert (out / name).read_bytes() == (again / name).read_bytes()


def test_cli_render_json_uses_the_current_map(quickstart, tmp_path):
    built = CliRunner().invoke(maps.group, ["build", str(quickstart)])
    assert built.exit_code == 0, built.output
    result = invoke("render", quickstart, "--out", tmp_path / "cfn", "--json")
    data = json.loads(result.output)
    assert data["map"] == {"version": 1, "source": str(quickstart / ".shardkit" / "map.skm")}
    assert data["project"] == "quickstart"
    assert data["blueprint"] == "stateful-inference-proxy"
    assert re.fullmatch(r"[0-9a-f]{64}", data["code"]["sha256"])
    assert [(t["region"], t["shards"], t["resources"]) for t in data["templates"]] == [
        ("eu-central-1", 2, 19),
        ("eu-west-1", 2, 19),
        ("us-east-1", 2, 19),
        ("us-west-2", 2, 19),
    ]
    assert data["stale"] == []
    written = json.loads(Path(data["templates"][1]["file"]).read_text())
    function = written["Resources"]["FunctionEu0"]["Properties"]
    assert function["Code"]["S3Key"] == data["code"]["key"]
    # the functions trust the key that signed the map, as deployed functions do
    trusted = function["Environment"]["Variables"]["SHARDKIT_TRUSTED_KEYS"]
    assert re.fullmatch(r"quickstart-dev=[A-Za-z0-9+/]{43}=", trusted)


def test_cli_render_follows_a_reshard_of_the_current_map(quickstart, tmp_path):
    assert CliRunner().invoke(maps.group, ["build", str(quickstart)]).exit_code == 0
    before = json.loads(invoke("render", quickstart, "--out", tmp_path / "a", "--json").output)
    toml = quickstart / "shardkit.toml"
    toml.write_text(
        toml.read_text().replace(
            "shards = 4                # eu-0", "shards = 5                # eu-0"
        )
    )
    assert CliRunner().invoke(maps.group, ["build", str(quickstart)]).exit_code == 0
    after = json.loads(invoke("render", quickstart, "--out", tmp_path / "b", "--json").output)
    assert after["map"]["version"] == 2
    counts = {t["region"]: t["resources"] for t in after["templates"]}
    assert counts["eu-west-1"] == before["templates"][1]["resources"] + 8
    new = json.loads((tmp_path / "b" / "eu-west-1.template.json").read_text())
    assert shard_ids("eu-4") <= set(new["Resources"])


def test_cli_render_notes_templates_of_regions_that_are_gone(quickstart, tmp_path):
    out = tmp_path / "cfn"
    (out).mkdir()
    (out / "ap-south-1.template.json").write_text("{}")
    data = json.loads(invoke("render", quickstart, "--out", out, "--json").output)
    assert data["stale"] == [str(out / "ap-south-1.template.json")]
    assert (
        "ap-south-1.template.json is from an earlier render"
        in invoke("render", quickstart, "--out", out).output
    )


def test_cli_list_shows_the_shipped_blueprints():
    assert "stateful-inference-proxy" in invoke("list").output
    listed = json.loads(invoke("list", "--json").output)
    assert [b["name"] for b in listed] == ["stateful-inference-proxy"]
    assert listed[0]["description"]


# --- bad input -------------------------------------------------------------------------------


def test_missing_project_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such project directory"):
        invoke("render", tmp_path / "nope", "--out", tmp_path / "cfn")


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    from shardkit.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["blueprint", "render", str(tmp_path / "nope"), "--out", str(tmp_path / "cfn")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no such project directory" in err[0]


def test_out_that_is_a_file_is_refused(quickstart, tmp_path):
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(group, ["render", str(quickstart), "--out", str(tmp_path / "file")])
    assert result.exit_code == 1 and "it is a file" in result.output


def test_unknown_blueprint_name():
    with pytest.raises(ConfigError, match="no such blueprint") as exc:
        load_definition("no-such-blueprint")
    assert "stateful-inference-proxy" in exc.value.hint


def _definition(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "custom.toml"
    shipped = (ROOT / "shardkit" / "blueprints" / "stateful-inference-proxy.toml").read_text()
    path.write_text(shipped + text)
    return path


def _expand(definition: dict[str, Any], project: str = "solo") -> Blueprint:
    config = load_project(PROJECTS[project]).config
    return expand(
        definition,
        config=config,
        shard_map=build_map(config, now=NOW),
        account=ACCOUNT,
        partition=PARTITION,
        code=CODE,
    )


def test_definition_with_an_unknown_kind(tmp_path):
    path = _definition(tmp_path, '\n[[shard]]\nkind = "lambda_layer"\nname = "{function}-deps"\n')
    allowed = ", ".join(kinds.names())  # every kind of the registry, in apply order
    with pytest.raises(ConfigError, match=rf"kind = 'lambda_layer': allowed: {allowed}$"):
        load_definition(str(path))


def test_definition_with_an_unknown_placeholder(tmp_path):
    path = _definition(
        tmp_path,
        '\n[[shard]]\nkind = "log_group"\nname = "/x/{shrad}"\nprops = { retention_days = 7 }\n',
    )
    with pytest.raises(ConfigError, match=r"unknown placeholder \{shrad\}; known here: .*shard"):
        _expand(load_definition(str(path)))


def test_cli_render_with_a_bad_definition_file(quickstart, tmp_path):
    path = _definition(tmp_path, '\n[[region]]\nkind = "sqs_queue"\nname = "q"\n')
    with pytest.raises(ShardkitError, match="sqs_queue"):
        invoke("render", quickstart, "--out", tmp_path / "cfn", "--blueprint", str(path))


def test_a_public_function_url_is_refused(tmp_path):
    shipped = (ROOT / "shardkit" / "blueprints" / "stateful-inference-proxy.toml").read_text()
    path = tmp_path / "public.toml"
    path.write_text(shipped.replace('auth_type = "AWS_IAM"', 'auth_type = "NONE"'))
    with pytest.raises(ConfigError, match="auth_type = 'NONE': only AWS_IAM is allowed"):
        render(_expand(load_definition(str(path))))


def test_a_reference_to_an_undefined_resource_is_refused(tmp_path):
    shipped = (ROOT / "shardkit" / "blueprints" / "stateful-inference-proxy.toml").read_text()
    path = tmp_path / "dangling.toml"
    path.write_text(shipped.replace('role = "{role}"', 'role = "someone-elses-role"'))
    with pytest.raises(ConfigError, match=r"props\.role = 'someone-elses-role': no iam_role"):
        render(_expand(load_definition(str(path))))


def test_a_missing_required_property_is_named(tmp_path):
    shipped = (ROOT / "shardkit" / "blueprints" / "stateful-inference-proxy.toml").read_text()
    path = tmp_path / "no-runtime.toml"
    path.write_text(shipped.replace('runtime = "python3.12"\n', ""))
    with pytest.raises(  # when the blueprint is expanded: before rendering or applying it
        ConfigError,
        match=r"^blueprint stateful-inference-proxy: lambda_function 'shardkit-solo-alpha' in "
        r"eu-west-1: props\.runtime: required, missing$",
    ):
        _expand(load_definition(str(path)))
