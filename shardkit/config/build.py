"""Build a shard map from a project configuration and the previous map.

The previous map is what makes a build safe: it gives shard positions (so jump hash's baseline is
stable), the slot table (so only the slots that must move, move), the epochs (bumped for every
shard whose slot set changes) and the version (the new one is always one higher).

Control plane: it reads the validated configuration (pydantic) and the signing keys, and calls
the pure planner of :mod:`shardkit.sharding`. The data plane only decodes what it signs.
"""

from __future__ import annotations

import time

from ..errors import PlanningError
from ..keys import SigningKey, create_key, load_signing_key
from ..sharding.codec import encode_map
from ..sharding.layout import copy_group, set_epochs
from ..sharding.planner import ShardSpec, plan_group
from ..sharding.shardmap import Group, Shard, ShardMap
from .loader import Project
from .models import GroupConfig, ProjectConfig

__all__ = ["build_map", "build_signed", "rebase_map", "same_routing", "signing_key_for"]


def build_map(
    config: ProjectConfig,
    previous: ShardMap | None = None,
    *,
    now: float | None = None,
    min_version: int = 1,
    layout: ShardMap | None = None,
) -> ShardMap:
    """Plan a new map for ``config``; with ``previous``, move as few slots as possible.

    A group with an autoshard policy that ``previous`` already has keeps its layout from
    ``previous`` exactly: that layout is the controller's (docs/autoshard.md), and the
    configuration only sets its bounds and policy - its ``shards`` lay out a first deploy.
    ``layout`` (default ``previous``) is where those layouts come from when the controller has
    just changed them (:func:`~shardkit.sharding.layout.apply_layout` of ``previous``); epochs
    and the version still follow ``previous``.

    The version is one above ``previous`` (or 1), and at least ``min_version``: a caller that
    knows of a newer map elsewhere (a local build, say) passes its version + 1.
    """
    _check_previous(config, previous)
    created = int(time.time() if now is None else now)
    regions = {name: r.jurisdiction for name, r in config.regions.items()}
    shards: list[Shard] = []
    groups: list[Group] = []
    source = layout or previous
    for name, group in sorted(config.groups.items()):
        kept = source.groups.get(name) if source else None
        if kept is not None and group.autoshard is not None:
            g_shards, g = _keep_layout(name, group, kept)
        else:
            g_shards, g = _build_group(name, group, regions, config.hashing.slot_bits, previous)
        shards.extend(g_shards)
        groups.append(g)
    version = max(previous.version + 1 if previous else 1, min_version)
    set_epochs(shards, groups, previous, version)
    return ShardMap(
        project=config.project.name,
        version=version,
        created_at=created,
        expires_at=created + int(config.signing.map_ttl_hours * 3600),
        hash=config.hashing.algorithm,
        slot_bits=config.hashing.slot_bits,
        regions=regions,
        residency_rules=[(r.prefix, r.jurisdiction) for r in config.residency.rules],
        default_jurisdiction=config.residency.default,
        shards=shards,
        groups=groups,
    )


def _check_previous(config: ProjectConfig, previous: ShardMap | None) -> None:
    if previous is None:
        return
    if previous.project != config.project.name:
        raise PlanningError(
            f"the previous map is for project {previous.project!r}, not {config.project.name!r}",
            hint="pass the previous map of this project, or none for a first build",
        )
    if (previous.hash, previous.slot_bits) != (config.hashing.algorithm, config.hashing.slot_bits):
        raise PlanningError(
            f"hashing changed from {previous.hash}/{previous.slot_bits} bits to "
            f"{config.hashing.algorithm}/{config.hashing.slot_bits} bits: every key would move",
            hint="keep [hashing] as it is, or build a fresh map and migrate all keys",
        )


def _build_group(
    name: str,
    group: GroupConfig,
    regions: dict[str, str],
    slot_bits: int,
    previous: ShardMap | None,
) -> tuple[list[Shard], Group]:
    configs = group.shard_list(name)
    specs = [
        ShardSpec(s.id, s.weight, s.region if group.failure_domain == "region" else s.id)
        for s in configs
    ]
    old = previous.groups.get(name) if previous else None
    _check_jurisdiction(name, group, old)
    plan = plan_group(
        specs,
        slot_bits,
        group.replicas,
        previous_positions=old.positions if old else None,
        previous_primary=[s.id for s in old.primary] if old else None,
    )
    shards = {
        c.id: Shard(c.id, name, c.region, regions[c.region], float(c.weight), spec.domain, 0)
        for c, spec in zip(configs, specs, strict=True)
    }
    group_obj = Group(
        name,
        group.jurisdiction,
        plan.positions,
        [shards[sid] for sid in plan.primary],
        tuple([shards[sid] for sid in column] for column in plan.replicas),
    )
    return list(shards.values()), group_obj


def _check_jurisdiction(name: str, group: GroupConfig, old: Group | None) -> None:
    if old is not None and old.jurisdiction != group.jurisdiction:
        raise PlanningError(
            f"group {name!r} moved from jurisdiction {old.jurisdiction!r} to "
            f"{group.jurisdiction!r}; keys cannot change jurisdiction in place",
            hint="create a new group for the new jurisdiction and retire the old one",
        )


def _keep_layout(name: str, group: GroupConfig, old: Group) -> tuple[list[Shard], Group]:
    """An autoshard group's deployed layout, checked against what the configuration still
    allows: its regions and its replica count (a change there is refused, never reset)."""
    _check_jurisdiction(name, group, old)
    shards, kept = copy_group(old)
    outside = sorted({s.region for s in shards.values()} - set(group.regions))
    if outside:
        raise PlanningError(
            f"group {name!r} has an autoshard policy and deployed shards in "
            f"{', '.join(outside)}, which are no longer among its regions",
            hint="keep those regions until the controller has merged their shards away, or "
            f"remove [groups.{name}.autoshard] to lay the group out from its shards again",
        )
    if len(old.replicas) != group.replicas:
        raise PlanningError(
            f"group {name!r} has an autoshard policy and {len(old.replicas)} replicas deployed, "
            f"but replicas = {group.replicas} in the configuration",
            hint=f"keep replicas = {len(old.replicas)}, or remove [groups.{name}.autoshard] to "
            "lay the group out from its shards again",
        )
    return list(shards.values()), kept


def rebase_map(
    content: ShardMap, current: ShardMap, *, ttl_s: int, now: float | None = None
) -> ShardMap:
    """``content``'s routing as a new version after ``current``: how a rollback is published.

    Maps only move forward (docs/architecture.md §4.5), so returning to old routing means publishing the old
    tables under a higher version, with epochs bumped for every shard whose slots change back.
    """
    created = int(time.time() if now is None else now)
    shards = {
        s.id: Shard(s.id, s.group, s.region, s.jurisdiction, s.weight, s.domain, 0)
        for s in content.shards
    }
    groups = [
        Group(
            g.name,
            g.jurisdiction,
            g.positions,
            [shards[s.id] for s in g.primary],
            tuple([shards[s.id] for s in column] for column in g.replicas),
        )
        for g in content.groups.values()
    ]
    version = current.version + 1
    set_epochs(list(shards.values()), groups, current, version)
    return ShardMap(
        project=content.project,
        version=version,
        created_at=created,
        expires_at=created + ttl_s,
        hash=content.hash,
        slot_bits=content.slot_bits,
        regions=content.regions,
        residency_rules=content.residency_rules,
        default_jurisdiction=content.default_jurisdiction,
        shards=list(shards.values()),
        groups=groups,
    )


def same_routing(a: ShardMap, b: ShardMap) -> bool:
    """True when two maps route every key identically (versions and times aside)."""
    skip = ("version", "created_at", "expires_at")
    da = {k: v for k, v in a.to_dict(tables=True).items() if k not in skip}
    db = {k: v for k, v in b.to_dict(tables=True).items() if k not in skip}
    return da == db


def signing_key_for(project: Project) -> SigningKey:
    """The project's signing key; created first when ``signing.create_if_missing`` says so
    (two commands doing so at once end with one key, which both use)."""
    key_id = project.config.signing.key_id
    if project.config.signing.create_if_missing:
        create_key(key_id, project.keys_dir, exist_ok=True)
    return load_signing_key(key_id, project.keys_dir)


def build_signed(
    project: Project, previous: ShardMap | None = None, *, now: float | None = None
) -> tuple[ShardMap, bytes]:
    """Build the project's next map and sign it: ``(map, envelope bytes)``."""
    key = signing_key_for(project)
    shard_map = build_map(project.config, previous, now=now)
    return shard_map, encode_map(shard_map, key.key_id, key.sign)
