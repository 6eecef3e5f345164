"""The configuration loader: ``shardkit.toml`` -> ProjectConfig, or one clear line per problem.

Every bad file must give a ConfigError whose text names the file, the field path, the bad value
and what is allowed; and no pydantic internals (union branches, type names, regexes) may leak.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from shardkit.config import load_config, load_project
from shardkit.config.models import KEY_ID_PATTERN as MODEL_KEY_ID_PATTERN
from shardkit.errors import ConfigError, ShardkitError
from shardkit.keys import KEY_ID_PATTERN
from shardkit.sharding.hashing import MAX_SLOT_BITS, MIN_SLOT_BITS

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "shardkit.toml"

# A small valid project; each bad case below edits exactly one spot of it.
BASE = """\
[project]
name = "demo"

[signing]
key_id = "demo-key"

[regions]
eu-west-1 = { jurisdiction = "eu" }
eu-central-1 = { jurisdiction = "eu" }
us-east-1 = { jurisdiction = "us" }

[residency]
default = "us"
rules = [{ prefix = "eu:", jurisdiction = "eu" }]

[groups.eu]
jurisdiction = "eu"
regions = ["eu-west-1", "eu-central-1"]
shards = 4
replicas = 1

[groups.us]
jurisdiction = "us"
regions = ["us-east-1"]
shards = 2
"""

# pydantic internals that must never reach the user
NOISE = (
    "tuple[",
    "ShardConfig",
    "(none)",
    "[key]",
    "Value error",
    "Input should be a valid dictionary",
    "^[",
    "count]",
    "list]",
)


def edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the test's edit target {old!r} is not unique in the config"
    return text.replace(old, new)


def write(tmp_path: Path, text: str | bytes, name: str = "shardkit.toml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def failure(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def test_base_config_is_valid(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.project.name == "demo"
    assert sorted(config.groups) == ["eu", "us"]


# (case id, edit old, edit new, pieces the one problem line must contain)
BAD = [
    (
        "unknown-top-level",
        "[project]",
        "[extras]\nx = 1\n\n[project]",
        [
            "extras: unknown field",
            "allowed here: groups, hashing, migration, project, proxy, regions, residency, signing",
        ],
    ),
    (
        "unknown-in-project",
        'name = "demo"',
        'name = "demo"\nnmae = "demo"',
        ["project.nmae: unknown field", "allowed here: home_region, name, target"],
    ),
    (
        "unknown-in-group",
        "replicas = 1",
        "replicas = 1\nreplica = 2",
        [
            "groups.eu.replica: unknown field",
            "allowed here: autoshard, concurrency, failure_domain, jurisdiction, memory_mb, regions, "
            "replicas, shards, timeout_s, weights",
        ],
    ),
    (
        "unknown-in-shard-entry",
        "shards = 4\nreplicas = 1",
        'shards = [{ id = "eu-a", region = "eu-west-1", wieght = 2.0 }]',
        ["groups.eu.shards[0].wieght: unknown field", "allowed here: id, region, weight"],
    ),
    (
        "unknown-in-region",
        'eu-west-1 = { jurisdiction = "eu" }',
        'eu-west-1 = { jurisdiction = "eu", zone = "a" }',
        ["regions.eu-west-1.zone: unknown field", "allowed here: jurisdiction"],
    ),
    (
        "unknown-in-rule",
        '{ prefix = "eu:", jurisdiction = "eu" }',
        '{ prefix = "eu:", jurisdiction = "eu", priority = 1 }',
        ["residency.rules[0].priority: unknown field", "allowed here: jurisdiction, prefix"],
    ),
    ("missing-project-name", 'name = "demo"\n', "", ["project.name: required field is missing"]),
    (
        "missing-signing-key-id",
        'key_id = "demo-key"',
        'keys_dir = "keys"',
        ["signing.key_id: required field is missing"],
    ),
    (
        "missing-groups",
        BASE[BASE.index("[groups.eu]") :],
        "",
        ["groups: required field is missing"],
    ),
    (
        "replicas-not-int",
        "replicas = 1",
        'replicas = "one"',
        ["groups.eu.replicas = 'one': ", "valid integer"],
    ),
    (
        "replicas-bool",
        "replicas = 1",
        "replicas = true",
        ["groups.eu.replicas = true: ", "valid integer"],
    ),
    (
        "slot-bits-float",
        "[signing]",
        "[hashing]\nslot_bits = 14.5\n\n[signing]",
        ["hashing.slot_bits = 14.5: ", "valid integer"],
    ),
    (
        "ttl-not-number",
        'key_id = "demo-key"',
        'key_id = "demo-key"\nmap_ttl_hours = "long"',
        ["signing.map_ttl_hours = 'long': ", "valid number"],
    ),
    (
        "create-if-missing-int",
        'key_id = "demo-key"',
        'key_id = "demo-key"\ncreate_if_missing = 1',
        ["signing.create_if_missing = 1: ", "valid boolean"],
    ),
    (
        "shards-string",
        "shards = 4",
        'shards = "four"',
        [
            "groups.eu.shards = 'four': must be a shard count (1-4096) or a list of shards like "
            '[{ id = "eu-0", region = "eu-west-1" }]'
        ],
    ),
    (
        "project-not-table",
        '[project]\nname = "demo"',
        'project = "demo"',
        ["project = 'demo': must be a table"],
    ),
    (
        "group-regions-not-array",
        'regions = ["us-east-1"]',
        'regions = "us-east-1"',
        ["groups.us.regions = 'us-east-1': must be an array"],
    ),
    (
        "target-unknown",
        'name = "demo"',
        'name = "demo"\ntarget = "gcp"',
        ["project.target = 'gcp': ", "'local' or 'aws'"],
    ),
    (
        "replicas-negative",
        "replicas = 1",
        "replicas = -1",
        ["groups.eu.replicas = -1: ", "greater than or equal to 0"],
    ),
    (
        "replicas-need-more-domains",
        "replicas = 1",
        "replicas = 2",
        [
            "groups.eu.replicas = 2: needs 3 distinct failure domains (regions) but the group has 2",
            "add regions, lower replicas, or set failure_domain = 'shard'",
        ],
    ),
    (
        "replicas-need-domains-single-region",
        "shards = 2",
        "shards = 2\nreplicas = 1",
        ["groups.us.replicas = 1: needs 2 distinct failure domains (regions) but the group has 1"],
    ),
    (
        "slot-bits-too-small",
        "[signing]",
        f"[hashing]\nslot_bits = {MIN_SLOT_BITS - 1}\n\n[signing]",
        [f"hashing.slot_bits = {MIN_SLOT_BITS - 1}: ", f"greater than or equal to {MIN_SLOT_BITS}"],
    ),
    (
        "slot-bits-too-large",
        "[signing]",
        f"[hashing]\nslot_bits = {MAX_SLOT_BITS + 1}\n\n[signing]",
        [f"hashing.slot_bits = {MAX_SLOT_BITS + 1}: ", f"less than or equal to {MAX_SLOT_BITS}"],
    ),
    (
        "hash-unknown",
        "[signing]",
        '[hashing]\nalgorithm = "md5"\n\n[signing]',
        ["hashing.algorithm = 'md5': unknown hash 'md5'; allowed: xxh64-v1"],
    ),
    (
        "aws-region-unknown",
        'eu-central-1 = { jurisdiction = "eu" }',
        'eu-westt-1 = { jurisdiction = "eu" }',
        [
            "regions: key 'eu-westt-1': unknown AWS region (did you mean 'eu-west-1'?)",
            "use a region where Lambda runs, such as eu-west-1 or us-east-1",
        ],
    ),
    (
        "group-region-undeclared",
        'regions = ["eu-west-1", "eu-central-1"]',
        'regions = ["eu-west-1", "eu-west-3"]',
        [
            "groups.eu.regions[1] = 'eu-west-3': not declared under [regions]",
            "(declared: eu-central-1, eu-west-1, us-east-1)",
        ],
    ),
    (
        "group-region-other-jurisdiction",
        'regions = ["eu-west-1", "eu-central-1"]',
        'regions = ["eu-west-1", "us-east-1"]',
        [
            "groups.eu.regions[1] = 'us-east-1': in jurisdiction 'us', not 'eu'",
            "a group may only use regions of its own jurisdiction",
        ],
    ),
    (
        "two-groups-one-jurisdiction",
        "[groups.us]",
        '[groups.eu2]\njurisdiction = "eu"\nregions = ["eu-central-1"]\nshards = 1\n\n[groups.us]',
        [
            "groups.eu2.jurisdiction = 'eu': group 'eu' already serves it",
            "one group per jurisdiction",
        ],
    ),
    (
        "default-without-group",
        'default = "us"',
        'default = "ap"',
        ["residency.default = 'ap': no group serves it; groups serve eu, us"],
    ),
    (
        "rule-without-group",
        '{ prefix = "eu:", jurisdiction = "eu" }',
        '{ prefix = "eu:", jurisdiction = "eu" }, { prefix = "ap:", jurisdiction = "ap" }',
        ["residency.rules[1].jurisdiction = 'ap': no group serves it; groups serve eu, us"],
    ),
    (
        "rule-prefix-duplicate",
        '{ prefix = "eu:", jurisdiction = "eu" }',
        '{ prefix = "eu:", jurisdiction = "eu" }, { prefix = "eu:", jurisdiction = "us" }',
        [
            "residency.rules[1].prefix = 'eu:': rules[0] already has this prefix",
            "each prefix may appear in one rule only",
        ],
    ),
    (
        "shard-id-duplicate-in-group",
        "shards = 4",
        'shards = [{ id = "eu-a", region = "eu-west-1" }, { id = "eu-a", region = "eu-central-1" }]',
        [
            "groups.eu.shards[1].id = 'eu-a': shards[0] already uses this id",
            "shard ids must be unique",
        ],
    ),
    (
        "shard-id-duplicate-across-groups",
        "shards = 2",
        'shards = [{ id = "eu-1", region = "us-east-1" }]',
        [
            "groups.us.shards[0].id = 'eu-1': group 'eu' already uses this id",
            "shard ids must be unique",
        ],
    ),
    (
        "weights-unknown-shard",
        "shards = 2",
        'shards = 2\nweights = { "us-7" = 2.0 }',
        ["groups.us.weights.us-7: 'us-7' is not a shard of this group (its shards: us-0, us-1)"],
    ),
    (
        "shard-region-outside-group",
        "shards = 4",
        'shards = [{ id = "eu-a", region = "eu-west-1" }, { id = "eu-b", region = "eu-west-2" }]',
        [
            "groups.eu.shards[1].region = 'eu-west-2': not one of the group's regions "
            "(eu-west-1, eu-central-1)"
        ],
    ),
    (
        "shard-weight-zero",
        "shards = 4",
        'shards = [{ id = "eu-a", region = "eu-west-1", weight = 0 },'
        ' { id = "eu-b", region = "eu-central-1" }]',
        ["groups.eu.shards[0].weight = 0: ", "greater than 0"],
    ),
    (
        "weights-negative",
        "shards = 2",
        'shards = 2\nweights = { "us-0" = -1.5 }',
        ["groups.us.weights.us-0 = -1.5: ", "greater than 0"],
    ),
    (
        "shard-count-zero",
        "shards = 4",
        "shards = 0",
        ["groups.eu.shards = 0: a shard count must be between 1 and 4096"],
    ),
    (
        "shard-count-too-large",
        "shards = 4",
        "shards = 5000",
        ["groups.eu.shards = 5000: a shard count must be between 1 and 4096"],
    ),
    (
        "shard-list-empty",
        "shards = 4",
        "shards = []",
        ["groups.eu.shards = []: the shard list is empty; a group needs at least one shard"],
    ),
    (
        "key-id-pattern",
        'key_id = "demo-key"',
        'key_id = "Demo Key"',
        [
            "signing.key_id = 'Demo Key': must be 1-63 characters: lowercase letters, digits, '.', "
            "'_' or '-', starting with a letter or digit"
        ],
    ),
    (
        "group-name-pattern",
        "[groups.us]",
        "[groups.US]",
        [
            "groups: key 'US': must be 1-31 characters: lowercase letters, digits or '-', starting "
            "with a letter"
        ],
    ),
    (
        "shard-id-pattern",
        "shards = 2",
        'shards = [{ id = "US_0", region = "us-east-1" }]',
        ["groups.us.shards[0].id = 'US_0': must be 1-48 characters"],
    ),
]


@pytest.mark.parametrize(("old", "new", "pieces"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_field_names_file_path_value_and_what_is_allowed(
    tmp_path: Path, old: str, new: str, pieces: list[str]
) -> None:
    path = write(tmp_path, edit(BASE, old, new))
    exc = failure(path)
    text = str(exc)
    assert exc.file == str(path)
    assert text.startswith(f"{path}: ")
    assert len(exc.problems) == 1, exc.problems  # one mistake, one line: no knock-on noise
    for piece in pieces:
        assert piece in exc.problems[0], (piece, exc.problems[0])
    for noise in NOISE:
        assert noise not in text, (noise, text)
    assert exc.hint


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = edit(
        edit(BASE, "replicas = 1", "replicas = -1"),
        "[signing]",
        "[hashing]\nslot_bits = 3\n\n[signing]",
    )
    exc = failure(write(tmp_path, text))
    assert sorted(exc.problems) == [
        "groups.eu.replicas = -1: Input should be greater than or equal to 0",
        f"hashing.slot_bits = 3: Input should be greater than or equal to {MIN_SLOT_BITS}",
    ]
    assert str(exc).count("; ") >= 1  # one line: problems joined, no newline
    assert "\n" not in str(exc)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "shardkit.toml"
    exc = failure(path)
    assert str(exc) == f"{path}: file not found"
    assert "examples/quickstart" in exc.hint
    assert isinstance(exc, ShardkitError)


def test_project_directory_missing_or_without_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such project directory") as info:
        load_project(tmp_path / "absent")
    assert str(info.value).startswith(str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="file not found") as info:
        load_project(tmp_path)
    assert info.value.file == str(tmp_path / "shardkit.toml")


def test_invalid_toml_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, edit(BASE, 'name = "demo"', 'name = "demo'))
    exc = failure(path)
    assert str(exc).startswith(f"{path}: invalid TOML: ")
    assert re.search(r"\(at line 2, column \d+\)", str(exc)), str(exc)
    assert "line and column" in exc.hint


def test_not_utf8(tmp_path: Path) -> None:
    data = BASE.encode().replace(b'"demo"', b'"d\xffmo"')
    exc = failure(write(tmp_path, data))
    offset = data.index(b"\xff")
    assert exc.problems == [f"not UTF-8 text (invalid byte 0xff at offset {offset})"]
    assert "UTF-8" in exc.hint


def test_unreadable_path_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "shardkit.toml").mkdir()  # a directory where the file should be
    exc = failure(tmp_path / "shardkit.toml")
    assert str(exc).startswith(f"{tmp_path / 'shardkit.toml'}: cannot be read: ")


# -- the good path --------------------------------------------------------------------------------


def test_quickstart_loads() -> None:
    project = load_project(QUICKSTART.parent)
    config = project.config
    assert project.root == QUICKSTART.parent
    assert project.keys_dir == QUICKSTART.parent / ".shardkit" / "keys"
    assert project.map_path == QUICKSTART.parent / ".shardkit" / "map.skm"
    assert config.project.name == "quickstart"
    assert config.project.target == "local"
    assert (config.hashing.algorithm, config.hashing.slot_bits) == ("xxh64-v1", 14)
    assert config.signing.key_id == "quickstart-dev"
    assert config.signing.map_ttl_hours == 720
    assert config.signing.create_if_missing is True
    assert {r: c.jurisdiction for r, c in config.regions.items()} == {
        "eu-west-1": "eu",
        "eu-central-1": "eu",
        "us-east-1": "us",
        "us-west-2": "us",
    }
    assert config.residency.default == "us"
    assert [(r.prefix, r.jurisdiction) for r in config.residency.rules] == [("eu:", "eu")]
    us = [(s.id, s.region, s.weight) for s in config.groups["us"].shard_list("us")]
    assert us == [
        ("us-0", "us-east-1", 2.0),
        ("us-1", "us-west-2", 1.0),
        ("us-2", "us-east-1", 1.0),
        ("us-3", "us-west-2", 1.0),
    ]


def test_load_project_accepts_the_file_itself() -> None:
    assert load_project(QUICKSTART).root == QUICKSTART.parent


def test_count_form_expands_round_robin_with_weights(tmp_path: Path) -> None:
    text = edit(
        edit(BASE, "shards = 4", 'shards = 5\nweights = { "eu-3" = 3, "eu-4" = 0.5 }'),
        'regions = ["eu-west-1", "eu-central-1"]',
        'regions = ["eu-central-1", "eu-west-1"]',
    )
    group = load_config(write(tmp_path, text)).groups["eu"]
    assert group.shards == 5
    assert [(s.id, s.region, s.weight) for s in group.shard_list("eu")] == [
        ("eu-0", "eu-central-1", 1.0),
        ("eu-1", "eu-west-1", 1.0),
        ("eu-2", "eu-central-1", 1.0),
        ("eu-3", "eu-west-1", 3.0),
        ("eu-4", "eu-central-1", 0.5),
    ]


def test_explicit_shard_list(tmp_path: Path) -> None:
    shards = (
        'shards = [{ id = "eu-b", region = "eu-central-1", weight = 2.5 },'
        ' { id = "eu-a", region = "eu-west-1" }, { id = "eu-z", region = "eu-west-1" }]\n'
        'weights = { "eu-z" = 4 }'
    )
    group = load_config(write(tmp_path, edit(BASE, "shards = 4", shards))).groups["eu"]
    # the list's order and ids are kept; `weights` overrides a listed shard's weight
    assert [(s.id, s.region, s.weight) for s in group.shard_list("eu")] == [
        ("eu-b", "eu-central-1", 2.5),
        ("eu-a", "eu-west-1", 1.0),
        ("eu-z", "eu-west-1", 4.0),
    ]


def test_failure_domain_shard_allows_replicas_in_one_region(tmp_path: Path) -> None:
    text = edit(BASE, "shards = 2", 'shards = 3\nreplicas = 2\nfailure_domain = "shard"')
    group = load_config(write(tmp_path, text)).groups["us"]
    assert (group.replicas, group.failure_domain, group.regions) == (2, "shard", ("us-east-1",))


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert (config.hashing.algorithm, config.hashing.slot_bits) == ("xxh64-v1", 14)
    assert config.project.target == "local"
    assert config.signing.keys_dir == ".shardkit/keys"
    assert config.signing.create_if_missing is False
    us = config.groups["us"]
    assert (us.replicas, us.failure_domain, us.weights, us.memory_mb, us.timeout_s) == (
        0,
        "region",
        {},
        512,
        30,
    )


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    with pytest.raises(ValidationError):
        config.project.name = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        config.groups["eu"].replicas = 3  # type: ignore[misc]


def test_key_id_pattern_matches_the_key_store() -> None:
    # The config validates signing.key_id with its own copy of the key store's pattern.
    assert MODEL_KEY_ID_PATTERN == KEY_ID_PATTERN
