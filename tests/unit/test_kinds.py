"""The registry of resource kinds is complete and consistent, and bad properties are named.

* every kind module defines a kind with every part (typed props, handler, probe, renderer, ...),
  checked here part by part, so a failure names the kind and what it lacks;
* references name known kinds that come earlier in the apply order, which is a stable
  topological order of the references; the flags say what shardkit did before the registry;
* each kind's probe is one read call of its service, and its renderer makes its CloudFormation
  type (on the shipped blueprint, which uses every kind);
* a missing, mistyped or unknown property is a ConfigError naming the blueprint, the resource
  and the property path when the blueprint is expanded - before anything is applied.

Pure: no AWS, no moto.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore import xform_name
from click.testing import CliRunner
from rich.console import Console

from shardkit import kinds
from shardkit.aws.facade import is_mutating
from shardkit.blueprint import Blueprint, CodeArtifact, expand, load_definition
from shardkit.blueprint.cloudformation import logical_ids, render
from shardkit.cli.blueprint import group
from shardkit.config.build import build_map
from shardkit.errors import ConfigError
from shardkit.kinds._registry import apply_order

CLASSES = kinds.discover()  # imports the kind modules; checks nothing (the tests below do)
NAMES = sorted(str(getattr(c, "name", c.__name__)) for c in CLASSES)
SHA = "cd" * 32
CODE = CodeArtifact(f"artifacts/code/{SHA}.zip", SHA)
PARTS = {  # method -> the part of a kind it is
    "create": "apply handler (create)",
    "update": "apply handler (update)",
    "delete": "apply handler (delete)",
    "probe": "existence probe (probe)",
    "render": "CloudFormation renderer (render)",
}


def _label(cls: type) -> str:
    return str(getattr(cls, "name", cls.__name__))


@pytest.fixture(scope="module")
def blueprint(quickstart_like: Callable[..., dict[str, Any]], config_from: Any) -> Blueprint:
    """The shipped blueprint, expanded for a quickstart-shaped project with an autoshard policy
    (so its controller's resources are there too)."""
    data = quickstart_like("kinds")
    data["groups"]["eu"]["autoshard"] = {"target_rps": 10.0}
    config = config_from(data)
    return expand(
        load_definition("stateful-inference-proxy"),
        config=config,
        shard_map=build_map(config, now=1_700_000_000),
        account="123456789012",
        code=CODE,
        signing_key_sha256="ab" * 32,
    )


# -- completeness ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES, ids=_label)
def test_every_kind_has_every_part(cls: type) -> None:
    lacks = []
    module = cls.__module__.rpartition(".")[2]
    if getattr(cls, "name", None) != module:
        lacks.append(f"a name equal to its module's ({module!r})")
    props = getattr(cls, "props", None)
    if not (isinstance(props, type) and issubclass(props, kinds.Props)):
        lacks.append("typed properties (props, a Props model)")
        props = None
    else:
        if not props.model_config.get("frozen"):
            lacks.append("frozen properties")
        if props.model_config.get("extra") != "forbid":
            lacks.append("properties that forbid unknown fields")
        undocumented = sorted(f for f, info in props.model_fields.items() if not info.description)
        if undocumented:
            lacks.append(f"a description of each property (none for {', '.join(undocumented)})")
    for method, part in PARTS.items():
        implementation = getattr(cls, method, None)
        if implementation is None or getattr(implementation, "__isabstractmethod__", False):
            lacks.append(part)
    if not re.fullmatch(r"AWS::\w+::\w+", str(getattr(cls, "cfn_type", ""))):
        lacks.append("CloudFormation type (cfn_type)")
    if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", str(getattr(cls, "cfn_prefix", ""))):
        lacks.append("logical-id prefix (cfn_prefix)")
    limit = getattr(cls, "name_limit", "unset")
    if not (limit is None or (isinstance(limit, int) and limit > 0)):
        lacks.append("name length limit (name_limit: a positive int, or None)")
    for flag in ("retain", "bootstrap"):
        if not isinstance(getattr(cls, flag, None), bool):
            lacks.append(f"{flag} flag (a bool)")
    for ref in getattr(cls, "refs", ()):
        if props is not None and ref.prop.split(".")[0] not in props.model_fields:
            lacks.append(f"a property {ref.prop!r} for its reference to {ref.kind}")
    assert lacks == [], f"kind {_label(cls)} lacks: " + "; ".join(lacks)


def test_the_registry_finds_no_problem() -> None:
    assert kinds.problems() == []
    assert sorted(kinds.names()) == sorted(_label(c) for c in CLASSES)


def test_every_reference_names_a_kind_that_comes_earlier() -> None:
    order = kinds.names()
    for cls in CLASSES:
        for ref in cls.refs:
            assert ref.kind in order, f"{cls.name}: props.{ref.prop} names unknown kind {ref.kind}"
            assert order.index(ref.kind) < order.index(cls.name), (
                f"{cls.name} comes before {ref.kind}, which its props.{ref.prop} names"
            )


def test_the_apply_order_is_derived_and_stable() -> None:
    # level by level (a kind after everything it names), ties in name order
    assert kinds.names() == (
        "dynamodb_table",
        "iam_role",
        "log_group",
        "s3_bucket",
        "secret",
        "lambda_function",
        "alarm",
        "lambda_alias",
        "schedule_rule",
        "function_url",
    )
    assert apply_order(list(reversed(CLASSES))) == list(kinds.names())  # whatever the discovery
    assert [kinds.rank(k) for k in kinds.names()] == list(range(len(CLASSES)))


def test_the_flags_keep_what_shardkit_did_before() -> None:
    assert {k.name for k in kinds.specs() if k.retain} == {"dynamodb_table"}
    assert {k.name for k in kinds.specs() if k.bootstrap} == {"s3_bucket", "dynamodb_table"}


def test_an_unknown_kind_is_named_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown resource kind 'sqs_queue'; known: dynamodb_"):
        kinds.get("sqs_queue")


# -- each kind, on the shipped blueprint --------------------------------------------------------


def test_the_shipped_blueprint_uses_every_kind(blueprint: Blueprint) -> None:
    unused = sorted(set(kinds.names()) - {r.kind for r in blueprint.resources})
    assert unused == [], f"no example of {unused}: the tests below and on moto need one"


@pytest.mark.parametrize("kind", NAMES)
def test_each_probe_is_one_read_call_of_a_real_operation(kind: str, blueprint: Blueprint) -> None:
    spec = kinds.get(kind)
    models = botocore.session.get_session()
    for r in blueprint.of_kind(kind):
        probe = spec.probe(r.name, spec.typed(r.props, name=r.name, region=r.region))
        operations = {
            xform_name(op) for op in models.get_service_model(probe.service).operation_names
        }
        assert probe.operation in operations, f"{kind}: {probe.service} has no {probe.operation}"
        assert not is_mutating(probe.operation), f"{kind}: probe {probe.operation} writes"
        assert probe.params, f"{kind}: the probe names no resource"


@pytest.mark.parametrize("kind", NAMES)
def test_each_kind_renders_its_type_under_its_prefix(kind: str, blueprint: Blueprint) -> None:
    spec = kinds.get(kind)
    for region, template in render(blueprint).items():
        ids = logical_ids(blueprint.in_region(region))
        for r in blueprint.in_region(region):
            if r.kind != kind:
                continue
            body = template["Resources"][ids[r.key]]
            assert body["Type"] == spec.cfn_type and ids[r.key].startswith(spec.cfn_prefix)
            assert body["Metadata"]["shardkit"]["fingerprint"] == r.fingerprint


# -- bad properties -------------------------------------------------------------------------------


def _with(kind: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The shipped definition with ``change`` applied to the first item of ``kind``."""
    definition = copy.deepcopy(load_definition("stateful-inference-proxy"))
    items = definition.get("region", []) + definition.get("shard", [])
    change(next(item for item in items if item["kind"] == kind))
    return definition


def _props(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda item: item["props"].update(values)


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def change(item: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        table = item["props"]
        for part in parents:
            table = table[part]
        del table[last]

    return change


BAD = {
    "retention not one of CloudWatch's": (
        "log_group",
        _props(retention_days=13),
        r"log_group '/aws/lambda/shardkit-kinds-eu-0' in eu-west-1: "
        r"props\.retention_days = 13: input should be 1, 3, 5",
    ),
    "a number that is not": (
        "lambda_function",
        _props(memory_mb="lots"),
        r"lambda_function 'shardkit-kinds-eu-0' in eu-west-1: props\.memory_mb = 'lots': "
        r"input should be a valid integer",
    ),
    "a nested property missing": (
        "lambda_function",
        _drop("code.key"),
        r"lambda_function 'shardkit-kinds-eu-0' in eu-west-1: props\.code\.key: required, missing",
    ),
    "a mode shardkit does not manage": (
        "dynamodb_table",
        _props(billing_mode="PROVISIONED"),
        r"dynamodb_table 'shardkit-kinds-state' in eu-central-1: "
        r"props\.billing_mode = 'PROVISIONED': input should be 'PAY_PER_REQUEST'",
    ),
    "an unknown (misspelt) property": (
        "s3_bucket",
        _props(versioned=True),
        r"s3_bucket 'shardkit-kinds-123456789012-eu-central-1' in eu-central-1: "
        r"props\.versioned = True: extra inputs are not permitted",
    ),
    "a period CloudWatch refuses": (
        "alarm",
        _props(period_s=45),
        r"alarm 'shardkit-kinds-eu-0-errors' in eu-west-1: props\.period_s = 45: "
        r"must be 10, 30 or a positive multiple of 60",
    ),
    "a public function URL": (
        "function_url",
        _props(auth_type="NONE"),
        r"props\.auth_type = 'NONE': only AWS_IAM is allowed: shard functions are never public",
    ),
    "an alias named apart from its function": (
        "lambda_alias",
        lambda item: item.update(name="{function}-live"),
        r"lambda_alias 'shardkit-kinds-eu-0-live' in eu-west-1: "
        r"an alias resource is named 'shardkit-kinds-eu-0:live'",
    ),
    "a reference to no resource": (
        "function_url",
        _props(qualifier="beta"),
        r"function_url 'shardkit-kinds-eu-0' in eu-west-1: props\.qualifier = 'beta': "
        r"no lambda_alias 'shardkit-kinds-eu-0:beta' in eu-west-1",
    ),
    "a role without its service": (
        "iam_role",
        _drop("assume_service"),
        r"iam_role 'shardkit-kinds-eu-0-eu-west-1' in eu-west-1: props\.assume_service: required, missing",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_properties_are_named_when_the_blueprint_is_expanded(
    case: str, quickstart_like: Callable[..., dict[str, Any]], config_from: Any
) -> None:
    kind, change, message = BAD[case]
    config = config_from(quickstart_like("kinds"))
    with pytest.raises(ConfigError, match=message) as raised:
        expand(
            _with(kind, change),
            config=config,
            shard_map=build_map(config, now=1_700_000_000),
            account="123456789012",
            code=CODE,
        )
    assert raised.value.message.startswith("blueprint stateful-inference-proxy: ")
    assert raised.value.hint


def test_properties_are_checked_when_a_step_is_applied_too() -> None:
    """A plan carries raw properties; the executor reads them through the same model."""
    spec = kinds.get("log_group")
    with pytest.raises(ConfigError, match=r"plan step: log_group 'g' in eu-west-1: props\.retent"):
        spec.apply("create", None, "eu-west-1", "g", {"retention_days": 13})  # type: ignore[arg-type]


# -- the reference ----------------------------------------------------------------------------------


def test_the_docs_hold_the_reference_the_registry_makes() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "blueprints.md").read_text("utf-8")
    begin, end = "<!-- kinds:begin -->\n", "<!-- kinds:end -->"
    assert begin in text and end in text, "docs/blueprints.md lost its kinds markers"
    documented = text.split(begin, 1)[1].split(end, 1)[0]
    assert documented == kinds.markdown(), (
        "docs/blueprints.md is out of date: put the output of "
        "`shardkit blueprint kinds --markdown` between its kinds markers"
    )


def test_cli_lists_the_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    wide = Console(highlight=False, width=10_000)  # one row per kind, whatever the terminal
    monkeypatch.setattr("shardkit.cli.blueprint.console", wide)
    table = CliRunner().invoke(group, ["kinds"])
    assert table.exit_code == 0, table.output
    for kind in kinds.specs():
        assert kind.name in table.output and kind.cfn_type in table.output
    listed = json.loads(CliRunner().invoke(group, ["kinds", "--json"]).output)
    assert [e["kind"] for e in listed] == list(kinds.names())
    function = next(e for e in listed if e["kind"] == "lambda_function")
    assert {"name": "architecture", "type": 'one of `"arm64"`, `"x86_64"`', "required": False,
            "default": "arm64", "description": "instruction set"} in function["props"]  # fmt: skip
    assert CliRunner().invoke(group, ["kinds", "--markdown"]).output == kinds.markdown()


class TtlAws:
    """Plays DynamoDB's TTL calls: ``have`` is the table's TTL description."""

    def __init__(self, have: dict[str, Any]) -> None:
        self.have = have
        self.updates: list[dict[str, Any]] = []

    def call(self, service: str, region: str, operation: str, **params: Any) -> Any:
        if operation == "describe_time_to_live":
            return {"TimeToLiveDescription": self.have}
        assert operation == "update_time_to_live"
        self.updates.append(params["TimeToLiveSpecification"])
        return {}


@pytest.mark.parametrize(
    ("have", "wanted", "updates"),
    [
        ({"TimeToLiveStatus": "DISABLED"}, "ttl", [{"AttributeName": "ttl", "Enabled": True}]),
        ({"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}, "ttl", []),  # set already
        ({"TimeToLiveStatus": "DISABLED"}, None, []),
        (
            {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"},
            None,
            [{"AttributeName": "ttl", "Enabled": False}],
        ),
    ],
)
def test_a_table_ttl_is_set_only_when_it_differs(
    have: dict[str, Any], wanted: str | None, updates: list[dict[str, Any]]
) -> None:
    """DynamoDB refuses to enable TTL that is enabled: the handler asks first."""
    from shardkit.kinds.dynamodb_table import _ttl

    aws = TtlAws(have)
    _ttl(kinds.Context(aws, "123456789012", "aws"), "eu-west-1", "t", wanted)  # type: ignore[arg-type]
    assert aws.updates == updates
