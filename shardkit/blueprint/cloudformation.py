"""Render a blueprint as CloudFormation: one JSON template per region, with no AWS calls.

The deploy engine applies a blueprint with direct API calls; this module is the reviewable,
exportable view of the same resources. Each kind renders itself (:mod:`shardkit.kinds`: its
CloudFormation type, logical-id prefix, bodies and outputs, from the same typed properties apply
uses); this module lays out the templates, derives logical ids and resolves references.

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

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .. import kinds
from ..config.loader import Project
from ..errors import ConfigError
from ..keys import format_trusted_keys
from ..kinds import Props, Ref
from ..kinds._spec import camel
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
_NOT_AWS_VAR = re.compile(r"\$\{(?!AWS::)")  # a literal "${" inside Fn::Sub is written "${!"


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
        signing_key_sha256=_signing_key_sha256(project),
    )


def _signing_key_sha256(project: Project) -> str:
    """The hash of the project's signing key, if it has one yet (the secret's properties)."""
    path = project.keys_dir / f"{project.config.signing.key_id}.key"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


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
    outputs: dict[str, Any] = {}
    for r in ctx.resources:
        kind, props = kinds.get(r.kind), ctx.props[r.key]
        for lid, body in kind.render(r, props, ctx):
            about = {"kind": r.kind, "fingerprint": r.fingerprint}
            body["Properties"] = _sub(body["Properties"])
            body["Metadata"] = {"shardkit": {**about, "shard": r.shard} if r.shard else about}
            resources[lid] = body
        outputs.update(kind.outputs(r, props, ctx.id(r)))
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
        "Outputs": outputs,
    }


def logical_ids(resources: Sequence[Resource]) -> dict[str, str]:
    """Resource key -> CloudFormation logical id, for the resources of one template."""
    wanted = {}
    for r in resources:
        kind = kinds.get(r.kind)
        suffix = kind.logical_suffix(r, _typed(r, "blueprint"))
        wanted[r.key] = kind.cfn_prefix + camel(r.shard or "") + suffix
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
    """The resources of one region, their typed properties and logical ids, and lookups between
    them (what :class:`shardkit.kinds.RenderContext` promises a renderer)."""

    def __init__(self, blueprint: Blueprint, region: str) -> None:
        self.blueprint = blueprint
        self.region = region
        self.resources = blueprint.in_region(region)
        source = f"blueprint {blueprint.name}"
        self.props: dict[str, Props] = {r.key: _typed(r, source) for r in self.resources}
        self.ids = logical_ids(self.resources)
        self._by_name = {(r.kind, r.name): r for r in self.resources}

    def id(self, r: Resource) -> str:
        return self.ids[r.key]

    def find_id(self, r: Resource, prop: str) -> str | None:
        ref = _ref(r, prop)
        target = self._by_name.get((ref.kind, ref.target(r.props) or ""))
        return self.id(target) if target else None

    def ref_id(self, r: Resource, prop: str) -> str:
        found = self.find_id(r, prop)
        if found is None:
            ref = _ref(r, prop)
            raise self.error(
                r,
                f"props.{prop} = {ref.value(r.props)!r}: no {ref.kind} "
                f"{ref.target(r.props)!r} in {self.region}",
                hint="define it in the blueprint definition, "
                "in the same scope ([[shard]] or [[region]])",
            )
        return found

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


def _ref(r: Resource, prop: str) -> Ref:
    """The reference of ``r``'s kind through property ``prop``."""
    return next(ref for ref in kinds.get(r.kind).refs if ref.prop == prop)


def _typed(r: Resource, source: str) -> Props:
    return kinds.get(r.kind).typed(r.props, name=r.name, region=r.region, source=source)


# --- helpers ----------------------------------------------------------------------------------


def _short_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:8].upper()


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
