"""``[groups.NAME.autoshard]``: strict like every table, cross-field checks name their fields,
overrides (``--policy``) are checked the same way, and a group without it is unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

import shardkit
from shardkit.autoshard import Policy, policy_for
from shardkit.config import load_config
from shardkit.errors import ConfigError

BASE = """\
[project]
name = "auto"

[signing]
key_id = "k"

[regions]
eu-west-1 = { jurisdiction = "eu" }
eu-central-1 = { jurisdiction = "eu" }

[residency]
default = "eu"

[groups.eu]
jurisdiction = "eu"
regions = ["eu-west-1", "eu-central-1"]
shards = 4
failure_domain = "shard"
"""

POLICY = """
[groups.eu.autoshard]
min_shards = 2
max_shards = 8
target_rps = 200.0
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shardkit.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value.message


def test_a_policy_is_read_with_its_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE + POLICY))
    p = policy_for(config, "eu")
    assert p == Policy(
        group="eu",
        regions=("eu-west-1", "eu-central-1"),
        failure_domain="shard",
        min_shards=2,
        max_shards=8,
        target_rps=200.0,
    )
    assert (p.split_above, p.split_windows, p.merge_below, p.merge_windows) == (1.2, 3, 0.6, 12)
    assert (p.window_s, p.cooldown_s, p.churn_budget, p.rebalance_above) == (
        10.0,
        120.0,
        0.09,
        1.25,
    )
    assert (p.mode, p.isolate_hot_slots, p.hot_slot_share) == ("on", True, 0.5)
    assert p.budget(16_384) == 1474  # 9% of the slots, rounded down


def test_a_group_without_a_policy_builds_the_same_map(tmp_path: Path) -> None:
    plain = load_config(write(tmp_path, BASE))
    with_policy = load_config(write(tmp_path, BASE + POLICY))
    assert policy_for(plain, "eu") is None
    a, b = shardkit.build_map(plain, now=0), shardkit.build_map(with_policy, now=0)
    assert a.to_dict(tables=True)["groups"] == b.to_dict(tables=True)["groups"]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("split_windowz = 3", "groups.eu.autoshard.split_windowz: unknown field; allowed here:"),
        ("split_windows = true", "groups.eu.autoshard.split_windows = true: Input should be"),
        (
            "churn_budget = 0",
            "groups.eu.autoshard.churn_budget = 0: Input should be greater than 0",
        ),
        ("churn_budget = 1.5", "groups.eu.autoshard.churn_budget = 1.5: Input should be less than"),
        ("mode = 'auto'", "groups.eu.autoshard.mode = 'auto': Input should be 'on', 'dry-run'"),
        ("merge_below = 1.0", "groups.eu.autoshard.merge_below = 1.0: Input should be less than 1"),
        ("window_s = 0.5", "groups.eu.autoshard.window_s = 0.5: Input should be greater than or"),
        ("isolate_hot_slots = 1", "groups.eu.autoshard.isolate_hot_slots = 1: Input should be"),
    ],
)
def test_a_bad_field_is_named(tmp_path: Path, edit: str, expected: str) -> None:
    assert expected in problems(tmp_path, BASE + POLICY + edit + "\n")


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            "min_shards = 1\n",
            "groups.eu.autoshard: neither target_rps nor target_compute_ms is set",
        ),
        (
            "target_rps = 1.0\nmin_shards = 9\nmax_shards = 3\n",
            "groups.eu.autoshard.min_shards = 9: above max_shards = 3",
        ),
        (
            "target_rps = 1.0\nmin_shards = 5\n",
            "groups.eu.autoshard: the group starts with 4 shard(s) (groups.NAME.shards), outside "
            "min_shards..max_shards = 5..64",
        ),
        (
            "target_compute_ms = 5.0\nsplit_above = 0.5\nmerge_below = 0.5\n",
            "groups.eu.autoshard.merge_below = 0.5: must be below split_above = 0.5",
        ),
        (
            "target_rps = 1.0\nmax_shards = 300\n",
            "groups.eu.autoshard.max_shards = 300: a group has 256 slots",
        ),
    ],
)
def test_fields_that_only_make_sense_together(tmp_path: Path, table: str, expected: str) -> None:
    text = BASE.replace('name = "auto"', 'name = "auto"\n\n[hashing]\nslot_bits = 8', 1)
    assert expected in problems(tmp_path, text + "\n[groups.eu.autoshard]\n" + table)


def test_overrides_are_checked_like_the_file(tmp_path: Path) -> None:
    p = policy_for(load_config(write(tmp_path, BASE + POLICY)), "eu")
    assert p is not None
    assert p.replace({"split_above": 2.0, "mode": "dry-run"}).split_above == 2.0
    for bad, expected in [
        ({"split_abov": 1.0}, "--policy: split_abov: unknown policy field; allowed: churn_budget"),
        ({"split_above": "x"}, "--policy: autoshard.split_above = 'x': Input should be a valid"),
        ({"min_shards": 9}, "--policy: autoshard.min_shards = 9: above max_shards = 8"),
    ]:
        with pytest.raises(ConfigError) as info:
            p.replace(bad)
        assert info.value.message.startswith(expected), info.value.message


def test_utilization_is_the_higher_of_the_two_targets() -> None:
    p = Policy(group="g", regions=("eu-west-1",), target_rps=100.0, target_compute_ms=1000.0)
    assert p.utilization(50.0, 2000.0) == 2.0
    assert p.utilization(300.0, 10.0) == 3.0


def test_every_policy_field_is_documented() -> None:
    from shardkit.config.models import AutoshardConfig

    docs = Path(__file__).resolve().parents[2] / "docs"
    table = (docs / "config.md").read_text().split("## `[groups.NAME.autoshard]`")[1]
    for name in AutoshardConfig.model_fields:
        assert f"| `{name}` |" in table, name
    assert (docs / "img" / "autoshard-square.png").is_file()  # the picture autoshard.md shows
