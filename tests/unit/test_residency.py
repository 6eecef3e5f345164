"""Residency fails closed (docs/architecture.md §4.3), on random maps, keys, tags and unhealthy
sets.

The key's jurisdiction is worked out here by an independent oracle (longest matching prefix,
else the tag, else the default) and every routing method is checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import shardkit

# Real Lambda regions; jurisdictions are just names, so any region can serve any of them here.
POOL = (
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "ap-south-1",
    "ap-southeast-1",
    "ap-northeast-1",
)
JURISDICTIONS = ("eu", "us", "ap", "ca")
# Prefixes that nest ("a" < "a:" < "a:b:"), so the longest-prefix rule really gets exercised.
PREFIXES = ("a", "a:", "a:b:", "ab", "b:", "b:c", "eu:", "eu-de:", "x")
KEY_CHARS = "ab:cx-eu"

# Each example builds a map (a few ms); 60 random worlds x several keys each is plenty.
RANDOM_WORLDS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@dataclass
class World:
    config: dict[str, Any]
    rules: dict[str, str]
    default: str | None
    jurisdictions: list[str]
    map: shardkit.ShardMap


@st.composite
def worlds(draw: st.DrawFn, fewest: int = 2) -> dict[str, Any]:
    """A random project: ``fewest``-4 jurisdictions, 1-3 regions and 1-12 shards each, random
    weights, replicas up to what the regions allow, random nested prefix rules, maybe a default."""
    jurisdictions = list(JURISDICTIONS[: draw(st.integers(fewest, 4))])
    free = list(POOL)
    regions: dict[str, dict[str, str]] = {}
    groups: dict[str, Any] = {}
    for j in jurisdictions:
        mine = [free.pop(0) for _ in range(draw(st.integers(1, 3)))]
        regions.update({r: {"jurisdiction": j} for r in mine})
        n = draw(st.integers(1, 12))
        weights = draw(st.lists(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]), min_size=n, max_size=n))
        shards = [
            {"id": f"{j}-{i}", "region": mine[i % len(mine)], "weight": w}
            for i, w in enumerate(weights)
        ]
        domains = min(n, len(mine))
        groups[f"g-{j}"] = {
            "jurisdiction": j,
            "regions": mine,
            "shards": shards,
            "replicas": draw(st.integers(0, domains - 1)),
        }
    n_rules = draw(st.integers(0, 6))
    prefixes = draw(
        st.lists(st.sampled_from(PREFIXES), unique=True, min_size=n_rules, max_size=n_rules)
    )
    rules = [{"prefix": p, "jurisdiction": draw(st.sampled_from(jurisdictions))} for p in prefixes]
    default = draw(st.sampled_from([None, *jurisdictions]))
    residency: dict[str, Any] = {"rules": rules}
    if default is not None:
        residency["default"] = default
    return {
        "project": {"name": "residency"},
        "hashing": {"slot_bits": draw(st.integers(8, 10))},
        "signing": {"key_id": "k"},
        "regions": regions,
        "residency": residency,
        "groups": groups,
    }


def world(config_from, cfg: dict[str, Any]) -> World:
    m = shardkit.build_map(config_from(cfg), now=0)
    rules = {r["prefix"]: r["jurisdiction"] for r in cfg["residency"]["rules"]}
    jurisdictions = [g["jurisdiction"] for g in cfg["groups"].values()]
    return World(cfg, rules, cfg["residency"].get("default"), jurisdictions, m)


keys = st.one_of(
    st.text(KEY_CHARS, max_size=8),
    st.tuples(st.sampled_from(PREFIXES), st.text(max_size=6)).map("".join),
    st.text(max_size=10),
)
tags = st.none() | st.sampled_from((*JURISDICTIONS, "zz"))


def expected_jurisdiction(w: World, key: str, tag: str | None) -> str | None:
    """The key's jurisdiction, or None when routing must raise ResidencyError."""
    matches = [p for p in w.rules if key.startswith(p)]
    if matches:
        found = w.rules[max(matches, key=len)]
        return found if tag in (None, found) else None  # a contradicting tag is refused
    if tag is not None:
        return tag if tag in w.jurisdictions else None
    return w.default


def group_ids(w: World, jurisdiction: str) -> set[str]:
    return {s.id for s in w.map.shards if s.jurisdiction == jurisdiction}


def check_in(w: World, shard: shardkit.Shard, jurisdiction: str) -> None:
    assert shard.jurisdiction == jurisdiction
    assert w.map.regions[shard.region] == jurisdiction
    assert w.config["groups"][shard.group]["jurisdiction"] == jurisdiction


def check_refused(w: World, key: str, tag: str | None) -> None:
    with pytest.raises(shardkit.ResidencyError):
        w.map.route(key, tag)
    with pytest.raises(shardkit.ResidencyError):
        w.map.preference_list(key, jurisdiction=tag)
    with pytest.raises(shardkit.ResidencyError):
        w.map.route_avoiding(key, [], tag)
    with pytest.raises(shardkit.ResidencyError):
        w.map.route_many([key], tag)


@RANDOM_WORLDS
@given(cfg=worlds(), data=st.data())
def test_routing_never_leaves_the_jurisdiction(config_from, cfg, data) -> None:
    w = world(config_from, cfg)
    all_ids = sorted(s.id for s in w.map.shards)
    for _ in range(8):
        key, tag = data.draw(keys), data.draw(tags)
        j = expected_jurisdiction(w, key, tag)
        if j is None:
            check_refused(w, key, tag)
            event("refused")
            continue
        owner = w.map.route(key, tag)
        check_in(w, owner, j)
        prefs = w.map.preference_list(key, jurisdiction=tag)
        # The owner, then its replicas in column order, then the rest of the group.
        column = w.map.groups[owner.group].replicas
        head = list(dict.fromkeys([owner] + [c[w.map.slot(key)] for c in column]))
        assert prefs[: len(head)] == head
        n = data.draw(st.integers(1, len(prefs)))
        assert w.map.preference_list(key, n, tag) == prefs[:n]
        assert sorted(s.id for s in prefs) == sorted(group_ids(w, j))  # all of them, once
        for s in prefs:
            check_in(w, s, j)
        # Unhealthy sets: random ones, and ones that cover the whole jurisdiction.
        unhealthy = set(data.draw(st.lists(st.sampled_from(all_ids), max_size=len(all_ids))))
        if data.draw(st.booleans()):
            unhealthy |= group_ids(w, j)
        if group_ids(w, j) <= unhealthy:
            with pytest.raises(shardkit.NoEligibleShardError):
                w.map.route_avoiding(key, unhealthy, tag)
            event("all unhealthy")
        else:
            chosen = w.map.route_avoiding(key, unhealthy, tag)
            check_in(w, chosen, j)
            assert chosen == next(s for s in prefs if s.id not in unhealthy)
        assert w.map.route_many([key], tag) == [owner]


@RANDOM_WORLDS
@given(cfg=worlds(fewest=1), data=st.data())  # one group and no rules is the fast path
def test_route_many_equals_route_key_by_key(config_from, cfg, data) -> None:
    w = world(config_from, cfg)
    for _ in range(6):
        # Random keys plus one key per rule, shuffled: batches that mix jurisdictions.
        batch = data.draw(st.lists(keys, max_size=40)) + [f"{p}{i}" for i, p in enumerate(w.rules)]
        batch = data.draw(st.permutations(batch))
        tag = data.draw(
            st.sampled_from([None, None, None, "tag"]).flatmap(lambda t: tags if t else st.none())
        )  # mostly untagged: mixed jurisdictions
        wanted = [expected_jurisdiction(w, k, tag) for k in batch]
        if None in wanted:  # one refused key refuses the batch ...
            with pytest.raises(shardkit.ResidencyError):
                w.map.route_many(batch, tag)
            # ... and the routable keys alone go through, so every example checks a batch.
            batch = [k for k, j in zip(batch, wanted, strict=True) if j is not None]
            wanted = [j for j in wanted if j is not None]
        event(f"batch of {len(set(wanted))} jurisdiction(s)")
        routed = w.map.route_many(batch, tag)
        assert routed == [w.map.route(k, tag) for k in batch]
        assert w.map.route_indices(batch, tag).tolist() == [s.index for s in routed]
        for s, j in zip(routed, wanted, strict=True):
            check_in(w, s, j)


# -- fixed examples -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nested(config_from) -> shardkit.ShardMap:
    """Rules "eu:" -> eu and "eu-de:" -> de (two prefix lengths), no default."""
    return shardkit.build_map(
        config_from(
            {
                "project": {"name": "nested"},
                "hashing": {"slot_bits": 10},
                "signing": {"key_id": "k"},
                "regions": {
                    "eu-west-1": {"jurisdiction": "eu"},
                    "eu-central-1": {"jurisdiction": "de"},
                    "us-east-1": {"jurisdiction": "us"},
                },
                "residency": {
                    "rules": [
                        {"prefix": "eu:", "jurisdiction": "eu"},
                        {"prefix": "eu-de:", "jurisdiction": "de"},
                    ]
                },
                "groups": {
                    "eu": {"jurisdiction": "eu", "regions": ["eu-west-1"], "shards": 3},
                    "de": {"jurisdiction": "de", "regions": ["eu-central-1"], "shards": 2},
                    "us": {"jurisdiction": "us", "regions": ["us-east-1"], "shards": 4},
                },
            }
        ),
        now=0,
    )


def test_longest_prefix_wins(nested) -> None:
    assert nested.route("eu:x").jurisdiction == "eu"
    assert nested.route("eu-de:x").jurisdiction == "de"
    assert nested.route("eu-de:x", "de").jurisdiction == "de"
    assert nested.route("eu-x", "us").jurisdiction == "us"  # no rule matches "eu-x"
    batch = ["eu:1", "eu-de:2", "eu:3", "eu-de:", "eu:"]
    assert [s.jurisdiction for s in nested.route_many(batch)] == ["eu", "de", "eu", "de", "eu"]
    assert nested.route_many(batch) == [nested.route(k) for k in batch]


def test_a_tag_that_contradicts_a_rule_is_refused(nested) -> None:
    with pytest.raises(shardkit.ResidencyError, match="belongs to 'de'"):
        nested.route("eu-de:x", "eu")
    with pytest.raises(shardkit.ResidencyError, match="belongs to 'eu'"):
        nested.route_many(["eu-de:a", "eu:b"], "de")
    with pytest.raises(shardkit.ResidencyError):
        nested.route_avoiding("eu:x", [], "us")


def test_no_rule_and_no_default_is_refused(nested) -> None:
    with pytest.raises(shardkit.ResidencyError, match="no default"):
        nested.route("plain")
    with pytest.raises(shardkit.ResidencyError, match="no default"):
        nested.route_many(["eu:ok", "plain"])
    with pytest.raises(shardkit.ResidencyError):
        nested.route("plain", "mars")  # a tag nobody serves
    assert nested.route("plain", "us").jurisdiction == "us"


def test_every_shard_down_fails_closed(nested) -> None:
    de = [s.id for s in nested.shards if s.jurisdiction == "de"]
    others = [s.id for s in nested.shards if s.jurisdiction != "de"]
    assert nested.route_avoiding("eu-de:k", others).jurisdiction == "de"
    assert nested.route_avoiding("eu-de:k", de[:1]).id == de[1]
    with pytest.raises(shardkit.NoEligibleShardError):
        nested.route_avoiding("eu-de:k", de)


@pytest.mark.parametrize("default", [None, "eu"])
def test_a_single_group_without_rules(config_from, default: str | None) -> None:
    cfg: dict[str, Any] = {
        "project": {"name": "single"},
        "hashing": {"slot_bits": 8},
        "signing": {"key_id": "k"},
        "regions": {"eu-west-1": {"jurisdiction": "eu"}, "eu-north-1": {"jurisdiction": "eu"}},
        "groups": {
            "g": {
                "jurisdiction": "eu",
                "regions": ["eu-west-1", "eu-north-1"],
                "shards": 5,
                "replicas": 1,
            }
        },
    }
    if default:
        cfg["residency"] = {"default": default}
    m = shardkit.build_map(config_from(cfg), now=0)
    batch = [f"k{i}" for i in range(300)]
    assert m.route_many(batch, "eu") == [m.route(k, "eu") for k in batch]
    assert m.route_many([], None) == []
    with pytest.raises(shardkit.ResidencyError):
        m.route_many(batch, "us")
    if default is None:
        with pytest.raises(shardkit.ResidencyError):
            m.route("k0")
        with pytest.raises(shardkit.ResidencyError):
            m.route_many(batch)
    else:
        assert m.route_many(batch) == [m.route(k) for k in batch]
        assert len({s.id for s in m.route_many(batch)}) == 5
