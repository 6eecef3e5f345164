"""Build a shard map from a project configuration and the previous map.

The previous map is what makes a build safe: it gives shard positions (so jump hash's baseline is
stable), the slot table (so only the slots that must move, move), the epochs (bumped for every
shard whose slot set changes) and the version (the new one is always one higher).
"""

from __future__ import annotations

import time

from ..config.loader import Project
from ..config.models import GroupConfig, ProjectConfig
from ..errors import PlanningError
from ..keys import SigningKey, create_key, load_signing_key
from .codec import encode_map
from .planner import ShardSpec, plan_group
from .shardmap import Group, Shard, ShardMap

__all__ = ["build_map", "build_signed", "signing_key_for"]


def build_map(
    config: ProjectConfig, previous: ShardMap | None = None, *, now: float | None = None
) -> ShardMap:
    """Plan a new map for ``config``; with ``previous``, move as few slots as possible."""
    _check_previous(config, previous)
    created = int(time.time() if now is None else now)
    regions = {name: r.jurisdiction for name, r in config.regions.items()}
    shards: list[Shard] = []
    groups: list[Group] = []
    for name, group in sorted(config.groups.items()):
        g_shards, g = _build_group(name, group, regions, config.hashing.slot_bits, previous)
        shards.extend(g_shards)
        groups.append(g)
    version = previous.version + 1 if previous else 1
    _set_epochs(shards, groups, previous, version)
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
    if old is not None and old.jurisdiction != group.jurisdiction:
        raise PlanningError(
            f"group {name!r} moved from jurisdiction {old.jurisdiction!r} to "
            f"{group.jurisdiction!r}; keys cannot change jurisdiction in place",
            hint="create a new group for the new jurisdiction and retire the old one",
        )
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


def _slot_sets(groups: list[Group] | dict[str, Group]) -> dict[str, set[tuple[str, int]]]:
    out: dict[str, set[tuple[str, int]]] = {}
    for g in groups.values() if isinstance(groups, dict) else groups:
        for slot, shard in enumerate(g.primary):
            out.setdefault(shard.id, set()).add((g.name, slot))
    return out


def _set_epochs(
    shards: list[Shard], groups: list[Group], previous: ShardMap | None, version: int
) -> None:
    """A shard's epoch is the map version in which its slot set last changed.

    So epochs only grow, even for a shard id that is removed and later added again: a fenced
    write made under an old epoch can never match a newer owner's epoch.
    """
    new_sets = _slot_sets(groups)
    old_sets = _slot_sets(previous.groups) if previous else {}
    old_epochs = {s.id: s.epoch for s in previous.shards} if previous else {}
    for shard in shards:
        before = old_epochs.get(shard.id)
        unchanged = before is not None and old_sets.get(shard.id) == new_sets.get(shard.id)
        shard.epoch = before if unchanged else version  # type: ignore[assignment]


def signing_key_for(project: Project) -> SigningKey:
    """The project's signing key; created first when ``signing.create_if_missing`` says so."""
    key_id = project.config.signing.key_id
    if project.config.signing.create_if_missing and not (project.keys_dir / f"{key_id}.key").exists():
        create_key(key_id, project.keys_dir)
    return load_signing_key(key_id, project.keys_dir)


def build_signed(
    project: Project, previous: ShardMap | None = None, *, now: float | None = None
) -> tuple[ShardMap, bytes]:
    """Build the project's next map and sign it: ``(map, envelope bytes)``."""
    key = signing_key_for(project)
    shard_map = build_map(project.config, previous, now=now)
    return shard_map, encode_map(shard_map, key.key_id, key.sign)
