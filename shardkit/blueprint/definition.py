"""Load a blueprint definition and expand it for one project, map and account.

A definition (``shardkit/blueprints/<name>.toml``) lists resources per region and per shard with
``{placeholder}`` strings; :func:`expand` fills them in for every region that has shards and every
shard of the map. A string that is exactly one placeholder takes the placeholder's type, so
``memory_mb = "{memory_mb}"`` becomes an integer.

Expansion checks residency statically (docs/architecture.md §4.3): a shard's resources are
placed only in the shard's own region, and that region must belong to the shard's jurisdiction.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import kinds
from ..config.models import ProjectConfig
from ..errors import ConfigError, PlanningError
from ..sharding.shardmap import Shard, ShardMap
from .model import Blueprint, Resource

__all__ = ["CodeArtifact", "available", "expand", "load_definition", "region_resources"]

DEFAULT_BLUEPRINT = "stateful-inference-proxy"
_PLACEHOLDER = re.compile(r"\{([a-z_0-9]+)\}")


@dataclass(frozen=True)
class CodeArtifact:
    """The proxy code package: its object key in each region's artifact bucket, and hash."""

    key: str
    sha256: str


def available() -> list[str]:
    """Names of the blueprint definitions shipped with shardkit."""
    root = importlib.resources.files("shardkit.blueprints")
    return sorted(p.name.removesuffix(".toml") for p in root.iterdir() if p.name.endswith(".toml"))


def load_definition(name_or_path: str) -> dict[str, Any]:
    """A shipped definition by name, or a definition file by path."""
    if name_or_path.endswith(".toml"):
        source, text = name_or_path, _read(Path(name_or_path))
    else:
        resource = importlib.resources.files("shardkit.blueprints") / f"{name_or_path}.toml"
        if not resource.is_file():
            raise ConfigError(
                name_or_path,
                ["no such blueprint"],
                hint=f"shipped blueprints: {', '.join(available())}",
            )
        source, text = f"blueprint {name_or_path}", resource.read_text("utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"invalid TOML: {exc}"]) from None
    _check_definition(source, data)
    return data


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot be read: {exc.strerror}"]) from None


def _check_definition(source: str, data: dict[str, Any]) -> None:
    problems = []
    for field in ("name", "names"):
        if field not in data:
            problems.append(f"{field}: required field is missing")
    names = data.get("names", {})
    for name in ("bucket", "table", "function", "role", "log_group"):
        if not isinstance(names.get(name), str):
            problems.append(f"names.{name}: required string is missing")
    known = kinds.names()
    for scope in ("region", "shard", "control"):
        for i, item in enumerate(data.get(scope, [])):
            if item.get("kind") not in known:
                problems.append(
                    f"{scope}[{i}].kind = {item.get('kind')!r}: allowed: {', '.join(known)}"
                )
            if not isinstance(item.get("name"), str):
                problems.append(f"{scope}[{i}].name: required string is missing")
    if problems:
        raise ConfigError(source, problems)


def expand(
    definition: Mapping[str, Any],
    *,
    config: ProjectConfig,
    shard_map: ShardMap,
    account: str,
    code: CodeArtifact,
    partition: str = "aws",
    trusted_keys: str = "",
    project_root: str = "",
    signing_key_sha256: str = "",
) -> Blueprint:
    """Every resource of the definition for this project, map and account.

    ``trusted_keys`` (``id=base64,...``) tells the shard functions which map signers to trust.
    ``[[control]]`` resources (the auto-shard controller) are made once, in the home region
    (:func:`home_region`), and only when a group has an autoshard policy; ``project_root`` is
    where the controller finds the project on the local cloud (on AWS it carries the project in
    its code package) and ``signing_key_sha256`` the hash of the signing key its secret holds
    (by default that of nothing: a secret no apply can write).
    """
    source = f"blueprint {definition['name']}"
    resources: list[Resource] = []
    regions = sorted({s.region for s in shard_map.shards})
    home = home_region(config, regions) if config.autoshards else None
    for region in regions:
        values = _region_values(definition, config, region, account, partition)
        values.update(_control_values(definition, values, code, project_root, region == home))
        values["signing_key_sha256"] = signing_key_sha256 or hashlib.sha256(b"").hexdigest()
        resources += [
            _resource(source, item, values, region, None) for item in definition.get("region", [])
        ]
        if region == home:
            resources += [
                _resource(source, item, values, region, None)
                for item in definition.get("control", [])
            ]
    for shard in shard_map.shards:
        _check_residency(shard, shard_map)
        values = _shard_values(definition, config, shard, account, partition, code)
        values["trusted_keys"] = trusted_keys
        resources += [
            _resource(source, item, values, shard.region, shard.id)
            for item in definition.get("shard", [])
        ]
    _check_references(source, resources)
    return Blueprint(
        config.project.name, definition["name"], account, tuple(_with_revisions(resources))
    )


def region_resources(
    definition: Mapping[str, Any],
    *,
    config: ProjectConfig,
    region: str,
    account: str,
    partition: str = "aws",
) -> list[Resource]:
    """The per-region resources of the definition (bucket, table) for one region, without a
    map: what the deploy engine needs to find or make the home region's foundation."""
    values = _region_values(definition, config, region, account, partition)
    values.update(_control_values(definition, values, CodeArtifact(key="", sha256=""), "", False))
    source = f"blueprint {definition['name']}"
    return [_resource(source, item, values, region, None) for item in definition.get("region", [])]


def _region_values(
    definition: Mapping[str, Any], config: ProjectConfig, region: str, account: str, partition: str
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "project": config.project.name,
        "account": account,
        "region": region,
        "partition": partition,
    }
    for name in ("bucket", "table"):
        values[name] = _fill(definition["names"][name], values, name)
    return values


def home_region(config: ProjectConfig, regions: list[str]) -> str:
    """Where the project's control-plane resources go: its home region (where the deployment
    record and lock live), or - if the map has no shards there - the first region of
    ``[regions]`` that has some."""
    home = config.home_region
    return home if home in regions else next(r for r in config.regions if r in regions)


def _control_values(
    definition: Mapping[str, Any],
    values: dict[str, Any],
    code: CodeArtifact,
    project_root: str,
    home: bool,
) -> dict[str, Any]:
    """The auto-shard controller's placeholders of one region: its function is the schedule's
    target, and the schedule is enabled, only in the home region of an autoshard project."""
    control = _fill(
        definition["names"].get("control", "shardkit-{project}-autoshard"), values, "control"
    )
    return {
        "control_function": control,
        "signing_secret": _fill(
            definition["names"].get("secret", "shardkit/{project}/signing-key"), values, "secret"
        ),
        "autoshard_state": "ENABLED" if home else "DISABLED",
        "autoshard_target": control if home else None,
        "project_root": project_root,
        "code_key": code.key,
        "code_sha256": code.sha256,
    }


def _shard_values(
    definition: Mapping[str, Any],
    config: ProjectConfig,
    shard: Shard,
    account: str,
    partition: str,
    code: CodeArtifact,
) -> dict[str, Any]:
    values = _region_values(definition, config, shard.region, account, partition)
    group = config.groups[shard.group]
    values.update(
        shard=shard.id,
        group=shard.group,
        epoch=shard.epoch,
        jurisdiction=shard.jurisdiction,
        memory_mb=group.memory_mb,
        timeout_s=group.timeout_s,
        concurrency=group.concurrency,
        handler=config.proxy.handler,
        state_cache=str(config.proxy.state_cache),
        load_window_s=f"{group.autoshard.window_s:g}" if group.autoshard else "0",
        code_key=code.key,
        code_sha256=code.sha256,
    )
    for name in ("function", "role", "log_group"):
        values[name] = _fill(definition["names"][name], values, name)
    return values


def _check_residency(shard: Shard, shard_map: ShardMap) -> None:
    if shard_map.regions.get(shard.region) != shard.jurisdiction:
        raise PlanningError(
            f"shard {shard.id!r} of jurisdiction {shard.jurisdiction!r} would be deployed into "
            f"region {shard.region!r} ({shard_map.regions.get(shard.region)!r})",
            hint="a shard may only live in a region of its own jurisdiction",
        )


def _resource(
    source: str, item: Mapping[str, Any], values: dict[str, Any], region: str, shard: str | None
) -> Resource:
    """One resource, its name checked against AWS's limit and its properties against its kind
    (a :class:`ConfigError` naming the blueprint, the resource and the property path)."""
    kind = kinds.get(item["kind"])
    name = _fill(item["name"], values, "name")
    if kind.name_limit and len(name) > kind.name_limit:
        raise PlanningError(
            f"{kind.name} name {name!r} is {len(name)} characters; AWS allows {kind.name_limit}",
            hint="shorten project.name or the shard ids",
        )
    props = _fill(item.get("props", {}), values, name)
    problem = kind.name_problem(name, kind.typed(props, name=name, region=region, source=source))
    if problem:
        raise ConfigError(source, [f"{kind.name} {name!r} in {region}: {problem}"])
    return Resource(kind.name, name, region, props, shard)


def _check_references(source: str, resources: list[Resource]) -> None:
    """Every resource a property names is in the blueprint, in the same region."""
    present = {(r.region, r.kind, r.name) for r in resources}
    problems = [
        f"{r.kind} {r.name!r} in {r.region}: props.{ref.prop} = {ref.value(r.props)!r}: "
        f"no {ref.kind} {target!r} in {r.region}"
        for r in resources
        for ref, target in kinds.get(r.kind).references(r.props)
        if ref.required and (r.region, ref.kind, target) not in present
    ]
    if problems:
        raise ConfigError(
            source,
            problems,
            hint="define it in the blueprint definition, in the same region "
            "([[region]], or the same [[shard]])",
        )


def _fill(template: Any, values: Mapping[str, Any], where: str) -> Any:
    if isinstance(template, dict):
        return {_fill(k, values, where): _fill(v, values, where) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, values, where) for v in template]
    if not isinstance(template, str):
        return template
    whole = _PLACEHOLDER.fullmatch(template)
    if whole:
        return _value(whole.group(1), values, where)
    return _PLACEHOLDER.sub(lambda m: str(_value(m.group(1), values, where)), template)


def _value(name: str, values: Mapping[str, Any], where: str) -> Any:
    try:
        return values[name]
    except KeyError:
        raise ConfigError(
            f"blueprint ({where})",
            [f"unknown placeholder {{{name}}}; known here: {', '.join(sorted(values))}"],
        ) from None


def _with_revisions(resources: list[Resource]) -> list[Resource]:
    """An alias follows its function: it carries the function's fingerprint, so any change to
    the function publishes a new version and moves the alias to it."""
    functions = {
        (r.region, r.name): r.fingerprint for r in resources if r.kind == "lambda_function"
    }
    out = []
    for r in resources:
        if r.kind == "lambda_alias":
            revision = functions[(r.region, r.props["function"])]
            r = Resource(
                r.kind, r.name, r.region, {**r.props, "function_revision": revision}, r.shard
            )
        out.append(r)
    return out
