"""The project configuration (``shardkit.toml``) as frozen pydantic models.

Validated once at the boundary (:func:`shardkit.config.load_config`), trusted inside. Every model
forbids unknown fields, so a typo is an error rather than a silently ignored setting. Checks that
span fields live on :class:`ProjectConfig`: regions are real AWS regions, a group's regions are all
in the group's jurisdiction (residency is checked statically, DESIGN.md §4.3), every jurisdiction
a rule or the default names has a group, and replicas fit the group's failure domains.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..sharding.hashing import DEFAULT_HASH, HASHES, MAX_SLOT_BITS, MIN_SLOT_BITS

__all__ = [
    "GroupConfig",
    "HashingConfig",
    "ProjectConfig",
    "ProjectSection",
    "RegionConfig",
    "ResidencyConfig",
    "ResidencyRule",
    "ShardConfig",
    "SigningConfig",
]

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")]
ShardId = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,47}$")]
Jurisdiction = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,15}$")]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProjectSection(_Model):
    name: Name
    target: Literal["local", "aws"] = "local"


class HashingConfig(_Model):
    algorithm: str = DEFAULT_HASH
    slot_bits: int = Field(default=14, ge=MIN_SLOT_BITS, le=MAX_SLOT_BITS)

    @field_validator("algorithm")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in HASHES:
            raise ValueError(f"unknown hash {v!r}; allowed: {', '.join(HASHES)}")
        return v


class SigningConfig(_Model):
    key_id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    keys_dir: str = ".shardkit/keys"
    map_ttl_hours: float = Field(default=24 * 30, gt=0, le=24 * 366)
    create_if_missing: bool = False


class RegionConfig(_Model):
    jurisdiction: Jurisdiction


class ResidencyRule(_Model):
    prefix: str = Field(min_length=1, max_length=64)
    jurisdiction: Jurisdiction


class ResidencyConfig(_Model):
    default: Jurisdiction | None = None
    rules: tuple[ResidencyRule, ...] = ()

    @field_validator("rules")
    @classmethod
    def _unique_prefixes(cls, rules: tuple[ResidencyRule, ...]) -> tuple[ResidencyRule, ...]:
        prefixes = [r.prefix for r in rules]
        repeated = sorted({p for p in prefixes if prefixes.count(p) > 1})
        if repeated:
            raise ValueError(f"prefix {repeated[0]!r} appears in more than one rule")
        return rules


class ShardConfig(_Model):
    id: ShardId
    region: str
    weight: float = Field(default=1.0, gt=0, le=1e6)


class GroupConfig(_Model):
    """A shard group: the shards serving one jurisdiction.

    ``shards`` is either a count (ids ``<group>-0`` ... spread round-robin over ``regions``) or an
    explicit list, which can drop any shard. ``weights`` overrides weights by shard id.
    """

    jurisdiction: Jurisdiction
    regions: tuple[str, ...] = Field(min_length=1)
    shards: int | tuple[ShardConfig, ...]
    replicas: int = Field(default=0, ge=0, le=4)
    failure_domain: Literal["region", "shard"] = "region"
    weights: dict[str, Annotated[float, Field(gt=0, le=1e6)]] = Field(default_factory=dict)
    memory_mb: int = Field(default=512, ge=128, le=10240)
    timeout_s: int = Field(default=30, ge=1, le=900)

    @field_validator("shards")
    @classmethod
    def _shards(cls, v: int | tuple[ShardConfig, ...]) -> int | tuple[ShardConfig, ...]:
        if isinstance(v, int) and not 1 <= v <= 4096:
            raise ValueError("a shard count must be between 1 and 4096")
        if isinstance(v, tuple):
            if not v:
                raise ValueError("the shard list is empty; a group needs at least one shard")
            ids = [s.id for s in v]
            repeated = sorted({i for i in ids if ids.count(i) > 1})
            if repeated:
                raise ValueError(f"shard id {repeated[0]!r} appears more than once")
        return v

    def shard_list(self, name: str) -> tuple[ShardConfig, ...]:
        """The explicit shard list (a count expanded), with ``weights`` applied."""
        if isinstance(self.shards, int):
            base = tuple(
                ShardConfig(id=f"{name}-{i}", region=self.regions[i % len(self.regions)])
                for i in range(self.shards)
            )
        else:
            base = self.shards
        return tuple(
            s.model_copy(update={"weight": self.weights[s.id]}) if s.id in self.weights else s
            for s in base
        )


class ProjectConfig(_Model):
    project: ProjectSection
    hashing: HashingConfig = HashingConfig()
    signing: SigningConfig
    regions: dict[str, RegionConfig] = Field(min_length=1)
    residency: ResidencyConfig = ResidencyConfig()
    groups: dict[Name, GroupConfig] = Field(min_length=1)

    @field_validator("regions")
    @classmethod
    def _real_regions(cls, regions: dict[str, RegionConfig]) -> dict[str, RegionConfig]:
        known = aws_regions()
        for name in regions:
            if name not in known:
                raise ValueError(
                    f"unknown AWS region {name!r}; use a Lambda region such as eu-west-1 or "
                    f"us-east-1"
                )
        return regions

    @model_validator(mode="after")
    def _consistent(self) -> ProjectConfig:
        problems: list[str] = []
        seen: dict[str, str] = {}
        for name, group in self.groups.items():
            problems += _check_group(name, group, self.regions)
            if group.jurisdiction in seen:
                problems.append(
                    f"groups.{name}.jurisdiction = {group.jurisdiction!r}: group "
                    f"{seen[group.jurisdiction]!r} already serves it; one group per jurisdiction"
                )
            seen[group.jurisdiction] = name
        named = [("residency.default", self.residency.default)] + [
            (f"residency.rules[{i}].jurisdiction", r.jurisdiction)
            for i, r in enumerate(self.residency.rules)
        ]
        for where, jurisdiction in named:
            if jurisdiction is not None and jurisdiction not in seen:
                problems.append(
                    f"{where} = {jurisdiction!r}: no group serves it; groups serve "
                    f"{', '.join(sorted(seen))}"
                )
        ids = [s.id for n, g in self.groups.items() for s in g.shard_list(n)]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            problems.append(f"shard id {repeated[0]!r} is used by more than one group")
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _check_group(name: str, group: GroupConfig, regions: dict[str, RegionConfig]) -> list[str]:
    problems = []
    where = f"groups.{name}"
    for region in group.regions:
        if region not in regions:
            problems.append(f"{where}.regions: {region!r} is not declared under [regions]")
        elif regions[region].jurisdiction != group.jurisdiction:
            problems.append(
                f"{where}.regions: {region!r} is in jurisdiction "
                f"{regions[region].jurisdiction!r}, not {group.jurisdiction!r}; a group may only "
                f"use regions of its own jurisdiction"
            )
    shards = group.shard_list(name)
    ids = {s.id for s in shards}
    for sid in group.weights:
        if sid not in ids:
            problems.append(f"{where}.weights: {sid!r} is not a shard of this group")
    for s in shards:
        if s.region not in group.regions:
            problems.append(f"{where}.shards: shard {s.id!r} is in region {s.region!r}, which is "
                            f"not in the group's regions {list(group.regions)}")
    domains = {s.region if group.failure_domain == "region" else s.id for s in shards}
    if group.replicas >= len(domains):
        problems.append(
            f"{where}.replicas = {group.replicas}: needs {group.replicas + 1} distinct failure "
            f"domains ({group.failure_domain}s) but the group has {len(domains)}; add regions, "
            f"lower replicas, or set failure_domain = 'shard'"
        )
    return problems


@cache
def aws_regions() -> frozenset[str]:
    """Every region where Lambda runs, from the pinned botocore's endpoint data."""
    import botocore.session

    session = botocore.session.get_session()
    found: set[str] = set()
    for partition in ("aws", "aws-us-gov", "aws-cn"):
        found.update(session.get_available_regions("lambda", partition))
    return frozenset(found)
