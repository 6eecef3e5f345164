"""The project configuration (``shardkit.toml``) as frozen pydantic models.

Validated once at the boundary (:func:`shardkit.config.load_config`), trusted inside. Every model
forbids unknown fields, so a typo is an error rather than a silently ignored setting, and numbers
and booleans are strict (``replicas = true`` is refused, not read as 1). Region names must be real
AWS regions. Checks that span fields live on :class:`ProjectConfig`: a group's regions are all in
the group's jurisdiction (residency is checked statically, docs/architecture.md §4.3), every
jurisdiction a rule or the default names has a group, shard ids and rule prefixes are unique, and
replicas fit the group's failure domains. Their messages carry their own field paths (the loader
prints them as is).
"""

from __future__ import annotations

import difflib
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from ..sharding.hashing import DEFAULT_HASH, HASHES, MAX_SLOT_BITS, MIN_SLOT_BITS

__all__ = [
    "AutoshardConfig",
    "GroupConfig",
    "HashingConfig",
    "MigrationConfig",
    "ProjectConfig",
    "ProjectSection",
    "ProxyConfig",
    "RegionConfig",
    "ResidencyConfig",
    "ResidencyRule",
    "ShardConfig",
    "SigningConfig",
]

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,30}$"
SHARD_ID_PATTERN = r"^[a-z][a-z0-9-]{0,47}$"
JURISDICTION_PATTERN = r"^[a-z][a-z0-9-]{0,15}$"
KEY_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"  # = shardkit.keys.KEY_ID_PATTERN (tested)

# What each pattern allows, in words (the loader shows these instead of the regex).
PATTERN_WORDS = {
    NAME_PATTERN: "1-31 characters: lowercase letters, digits or '-', starting with a letter",
    SHARD_ID_PATTERN: "1-48 characters: lowercase letters, digits or '-', starting with a letter",
    JURISDICTION_PATTERN: "1-16 characters: lowercase letters, digits or '-', starting with a "
    "letter",
    KEY_ID_PATTERN: "1-63 characters: lowercase letters, digits, '.', '_' or '-', starting with a "
    "letter or digit",
}

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
ShardId = Annotated[str, Field(pattern=SHARD_ID_PATTERN)]
Jurisdiction = Annotated[str, Field(pattern=JURISDICTION_PATTERN)]
# TOML has real booleans and numbers: `replicas = true` is a mistake, not 1.
Int = Annotated[int, Field(strict=True)]
Float = Annotated[float, Field(strict=True)]  # strict floats still accept integers


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProjectSection(_Model):
    name: Name
    target: Literal["local", "aws"] = "local"
    # Where the deployment record and lock live (its bucket and state table); by default the
    # first region in [regions] that hosts shards. It cannot move once deployed.
    home_region: str | None = None


class HashingConfig(_Model):
    algorithm: str = DEFAULT_HASH
    slot_bits: Int = Field(default=14, ge=MIN_SLOT_BITS, le=MAX_SLOT_BITS)

    @field_validator("algorithm")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in HASHES:
            raise ValueError(f"unknown hash {v!r}; allowed: {', '.join(HASHES)}")
        return v


class SigningConfig(_Model):
    key_id: str = Field(pattern=KEY_ID_PATTERN)
    keys_dir: str = ".shardkit/keys"
    map_ttl_hours: Float = Field(default=24 * 30, gt=0, le=24 * 366)
    create_if_missing: bool = Field(default=False, strict=True)


class RegionConfig(_Model):
    jurisdiction: Jurisdiction


class ResidencyRule(_Model):
    prefix: str = Field(min_length=1, max_length=64)
    jurisdiction: Jurisdiction


class ResidencyConfig(_Model):
    default: Jurisdiction | None = None
    rules: tuple[ResidencyRule, ...] = ()


class ShardConfig(_Model):
    id: ShardId
    region: str
    weight: Float = Field(default=1.0, gt=0, le=1e6)


def _shards_form(value: Any) -> str | None:
    """Which form ``shards`` takes, so a bad value gets one error, not one per union branch."""
    if isinstance(value, int) and not isinstance(value, bool):
        return "count"
    return "list" if isinstance(value, list | tuple) else None


Shards = Annotated[
    Annotated[int, Tag("count")] | Annotated[tuple[ShardConfig, ...], Tag("list")],
    Discriminator(
        _shards_form,
        custom_error_type="shards_form",
        custom_error_message="must be a shard count (1-4096) or a list of shards like "
        '[{ id = "eu-0", region = "eu-west-1" }]',
    ),
]
SHARDS_FORMS = ("count", "list")  # the tags above; the loader drops them from field paths


class AutoshardConfig(_Model):
    """``[groups.NAME.autoshard]``: how the group's layout follows its load (docs/autoshard.md).

    Loads are in units of the target: a shard at 1.0 carries exactly ``target_rps`` requests/s
    (or ``target_compute_ms`` compute ms/s, whichever is higher).
    """

    mode: Literal["on", "dry-run", "off"] = "on"
    min_shards: Int = Field(default=1, ge=1, le=4096)
    max_shards: Int = Field(default=64, ge=1, le=4096)
    target_rps: Float | None = Field(default=None, gt=0, le=1e9)
    target_compute_ms: Float | None = Field(default=None, gt=0, le=1e12)
    split_above: Float = Field(default=1.2, gt=0, le=100)
    split_windows: Int = Field(default=3, ge=1, le=1000)
    # Below 1 (the target): a merge must leave the shards under the target, or it could merge
    # back what a split just made.
    merge_below: Float = Field(default=0.6, gt=0, lt=1)
    merge_windows: Int = Field(default=12, ge=1, le=1000)
    window_s: Float = Field(default=10.0, ge=1, le=3600)
    cooldown_s: Float = Field(default=120.0, ge=0, le=86400)
    churn_budget: Float = Field(default=0.09, gt=0, le=1)
    rebalance_above: Float = Field(default=1.25, ge=1, le=100)
    isolate_hot_slots: bool = Field(default=True, strict=True)
    hot_slot_share: Float = Field(default=0.5, gt=0, le=100)


class GroupConfig(_Model):
    """A shard group: the shards serving one jurisdiction.

    ``shards`` is either a count (ids ``<group>-0`` ... spread round-robin over ``regions``) or an
    explicit list, which can drop any shard. ``weights`` overrides weights by shard id.
    """

    jurisdiction: Jurisdiction
    regions: tuple[str, ...] = Field(min_length=1)
    shards: Shards
    replicas: Int = Field(default=0, ge=0, le=4)
    failure_domain: Literal["region", "shard"] = "region"
    weights: dict[str, Annotated[Float, Field(gt=0, le=1e6)]] = Field(default_factory=dict)
    memory_mb: Int = Field(default=512, ge=128, le=10240)
    timeout_s: Int = Field(default=30, ge=1, le=900)
    concurrency: Int = Field(default=4, ge=1, le=1000)  # reserved concurrency per shard
    # None: a fixed layout, exactly the shards above (the default).
    autoshard: AutoshardConfig | None = None

    @field_validator("shards")
    @classmethod
    def _shards(cls, v: int | tuple[ShardConfig, ...]) -> int | tuple[ShardConfig, ...]:
        if isinstance(v, int) and not 1 <= v <= 4096:
            raise ValueError("a shard count must be between 1 and 4096")
        if isinstance(v, tuple) and not v:
            raise ValueError("the shard list is empty; a group needs at least one shard")
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


def _real_region(name: str) -> str:
    if name not in aws_regions():
        close = difflib.get_close_matches(name, sorted(aws_regions()), n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown AWS region{guess}; use a region where Lambda runs, "
            f"such as eu-west-1 or us-east-1"
        )
    return name


AwsRegion = Annotated[str, AfterValidator(_real_region)]


class ProxyConfig(_Model):
    """The proxy every shard runs: the user's inference function and the state cache."""

    handler: str = Field(default="app.model:infer", pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    code: str = "app"  # the project directory shipped in the code package, beside shardkit
    state_cache: Int = Field(default=1024, ge=0, le=1_000_000)
    blueprint: str = "stateful-inference-proxy"
    # Ship the wheels of msgpack, xxhash, jump, cryptography and Powertools for the function's
    # platform in the code package (AWS target only); false if a Lambda layer provides them.
    vendor: bool = Field(default=True, strict=True)


class MigrationConfig(_Model):
    """How a reshard moves slots: the rollback window and the error budget (docs/migration.md)."""

    # Source copies of slots moved across regions are deleted this long after their switch.
    rollback_window_h: Float = Field(default=1.0, ge=0, le=24 * 30)
    # The SLO guard: the share of the involved shards' requests that may fail while slots move.
    error_budget: Float = Field(default=0.05, gt=0, le=1)
    min_requests: Int = Field(default=20, ge=1, le=1_000_000)  # fewer: too few to judge
    window_s: Int = Field(default=120, ge=10, le=3600)  # the errors counted: this recent
    on_breach: Literal["abort", "pause"] = "abort"
    pause_s: Int = Field(default=120, ge=0, le=3600)  # pause: wait this long for a recovery


class ProjectConfig(_Model):
    project: ProjectSection
    hashing: HashingConfig = HashingConfig()
    signing: SigningConfig
    regions: dict[AwsRegion, RegionConfig] = Field(min_length=1)
    residency: ResidencyConfig = ResidencyConfig()
    groups: dict[Name, GroupConfig] = Field(min_length=1)
    proxy: ProxyConfig = ProxyConfig()
    migration: MigrationConfig = MigrationConfig()

    @model_validator(mode="after")
    def _consistent(self) -> ProjectConfig:
        problems = _check_rules(self.residency.rules) + _check_shard_ids(self.groups)
        seen: dict[str, str] = {}
        for name, group in self.groups.items():
            problems += _check_group(name, group, self.regions)
            slots = 1 << self.hashing.slot_bits
            if group.autoshard and group.autoshard.max_shards > slots:
                problems.append(
                    f"groups.{name}.autoshard.max_shards = {group.autoshard.max_shards}: a group "
                    f"has {slots} slots (hashing.slot_bits); at most that many shards"
                )
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
        problems += _check_home(self)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def home_region(self) -> str:
        """The region that holds the deployment record and lock."""
        return self.project.home_region or _hosting_regions(self)[0]

    @property
    def autoshards(self) -> bool:
        """Whether a group has an autoshard policy: the project deploys the controller."""
        return any(g.autoshard is not None for g in self.groups.values())


def _hosting_regions(config: ProjectConfig) -> list[str]:
    """The regions of [regions], in declared order, that some group puts shards in."""
    used = {s.region for name, g in config.groups.items() for s in g.shard_list(name)}
    return [r for r in config.regions if r in used]


def _check_home(config: ProjectConfig) -> list[str]:
    home = config.project.home_region
    if home is None or home in _hosting_regions(config):
        return []
    return [
        f"project.home_region = {home!r}: the home region must host shards (it holds the "
        f"deployment record in its bucket); regions with shards: "
        f"{', '.join(_hosting_regions(config))}"
    ]


def _check_rules(rules: tuple[ResidencyRule, ...]) -> list[str]:
    problems, first = [], {}
    for i, rule in enumerate(rules):
        if rule.prefix in first:
            problems.append(
                f"residency.rules[{i}].prefix = {rule.prefix!r}: "
                f"rules[{first[rule.prefix]}] already has this prefix; each prefix "
                f"may appear in one rule only"
            )
        first.setdefault(rule.prefix, i)
    return problems


def _check_shard_ids(groups: dict[str, GroupConfig]) -> list[str]:
    """Shard ids are unique within a group and across groups."""
    problems: list[str] = []
    owner: dict[str, tuple[str, int]] = {}
    for name, group in groups.items():
        for i, s in enumerate(group.shard_list(name)):
            where = f"groups.{name}.shards" + ("" if isinstance(group.shards, int) else f"[{i}].id")
            if s.id in owner:
                other, j = owner[s.id]
                used = f"shards[{j}]" if other == name else f"group {other!r}"
                problems.append(
                    f"{where} = {s.id!r}: {used} already uses this id; shard ids "
                    f"must be unique across the project"
                )
            owner.setdefault(s.id, (name, i))
    return problems


def _listing(items: list[str] | tuple[str, ...], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _check_group(name: str, group: GroupConfig, regions: dict[str, RegionConfig]) -> list[str]:
    problems = []
    where = f"groups.{name}"
    for i, region in enumerate(group.regions):
        if region not in regions:
            problems.append(
                f"{where}.regions[{i}] = {region!r}: not declared under [regions] "
                f"(declared: {_listing(sorted(regions))})"
            )
        elif regions[region].jurisdiction != group.jurisdiction:
            problems.append(
                f"{where}.regions[{i}] = {region!r}: in jurisdiction "
                f"{regions[region].jurisdiction!r}, not {group.jurisdiction!r}; a group may only "
                f"use regions of its own jurisdiction"
            )
    shards = group.shard_list(name)
    ids = [s.id for s in shards]
    for sid in group.weights:
        if sid not in ids:
            problems.append(
                f"{where}.weights.{sid}: {sid!r} is not a shard of this group "
                f"(its shards: {_listing(ids)})"
            )
    for i, s in enumerate(shards):
        if s.region not in group.regions:
            problems.append(
                f"{where}.shards[{i}].region = {s.region!r}: not one of the group's "
                f"regions ({_listing(group.regions)})"
            )
    if group.autoshard is not None:
        problems += check_autoshard(where, group.autoshard, len(shards))
    domains = {s.region if group.failure_domain == "region" else s.id for s in shards}
    if group.replicas >= len(domains):
        problems.append(
            f"{where}.replicas = {group.replicas}: needs {group.replicas + 1} distinct failure "
            f"domains ({group.failure_domain}s) but the group has {len(domains)}; add regions, "
            f"lower replicas, or set failure_domain = 'shard'"
        )
    return problems


def check_autoshard(where: str, policy: AutoshardConfig, shards: int) -> list[str]:
    """The autoshard fields that only make sense together (``where``: the group's path)."""
    where = f"{where}.autoshard" if where else "autoshard"
    problems = []
    if policy.target_rps is None and policy.target_compute_ms is None:
        problems.append(
            f"{where}: neither target_rps nor target_compute_ms is set; give at least one "
            "target load per shard"
        )
    if policy.min_shards > policy.max_shards:
        problems.append(
            f"{where}.min_shards = {policy.min_shards}: above max_shards = "
            f"{policy.max_shards}; min_shards must be <= max_shards"
        )
    elif not policy.min_shards <= shards <= policy.max_shards:
        problems.append(
            f"{where}: the group starts with {shards} shard(s) (groups.NAME.shards), outside "
            f"min_shards..max_shards = {policy.min_shards}..{policy.max_shards}; start inside "
            "the range or widen it"
        )
    if policy.merge_below >= policy.split_above:
        problems.append(
            f"{where}.merge_below = {policy.merge_below:g}: must be below split_above = "
            f"{policy.split_above:g}, or a merge could be undone by the next split (the gap "
            "between them is the hysteresis band)"
        )
    return problems


@cache
def aws_regions() -> frozenset[str]:
    """Every region of the commercial, GovCloud and China partitions, from the pinned
    botocore's ``partitions.json`` (7 KB; its full endpoint table costs ~170 ms to load)."""
    import json
    from importlib.resources import files

    data = json.loads((files("botocore") / "data" / "partitions.json").read_text("utf-8"))
    return frozenset(
        region
        for partition in data["partitions"]
        if partition["id"] in ("aws", "aws-us-gov", "aws-cn")
        for region in partition["regions"]
        if not region.endswith("-global")
    )
