"""The slot-table planner, through build_map: quotas, minimal movement, jump baseline, balance,
replicas, epochs and determinism (docs/architecture.md §4.2 and §4.4).

Key-level numbers use 200,000 fixed keys routed with ``route_indices``; they are deterministic,
and every bound below says how far it sits from what was measured and why.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from typing import Any

import numpy as np
import pytest

import shardkit
from shardkit.sharding.codec import encode_body
from shardkit.sharding.hashing import jump_hash, mix64

REGIONS = ("eu-west-1", "eu-central-1", "eu-north-1")
KEYS = [f"key-{i}" for i in range(200_000)]
BASE = [f"s{i}" for i in range(8)]  # eight equal shards: the starting point of the moves below


def shard_list(
    ids: list[str], weights: dict[str, float] | None = None, regions: tuple[str, ...] = REGIONS[:2]
) -> list[dict[str, Any]]:
    """Explicit shards, round-robin over ``regions``; the list order is the position order."""
    weights = weights or {}
    return [
        {"id": sid, "region": regions[i % len(regions)], "weight": weights.get(sid, 1.0)}
        for i, sid in enumerate(ids)
    ]


def one_group(
    shards: Any,
    *,
    bits: int = 14,
    replicas: int = 0,
    regions: tuple[str, ...] = REGIONS[:2],
    failure_domain: str = "region",
    project: str = "planner",
) -> dict[str, Any]:
    """A one-jurisdiction project whose only group ``g`` holds ``shards`` (count or list)."""
    return {
        "project": {"name": project},
        "hashing": {"slot_bits": bits},
        "signing": {"key_id": "k"},
        "regions": {r: {"jurisdiction": "eu"} for r in REGIONS},
        "residency": {"default": "eu"},
        "groups": {
            "g": {
                "jurisdiction": "eu",
                "regions": list(regions),
                "shards": shards,
                "replicas": replicas,
                "failure_domain": failure_domain,
            }
        },
    }


def largest_remainder(weights: list[float], slots: int) -> list[int]:
    """The test's own apportionment oracle: floors, then +1 by largest remainder, ties to the
    lower index."""
    total = sum(weights)
    exact = [slots * w / total for w in weights]
    base = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (base[i] - exact[i], i))
    for i in by_remainder[: slots - sum(base)]:
        base[i] += 1
    return base


def owners(m: shardkit.ShardMap) -> np.ndarray:
    """The owning shard id of every key in KEYS."""
    return np.array([s.id for s in m.shards])[m.route_indices(KEYS)]


def primary_ids(m: shardkit.ShardMap, group: str = "g") -> list[str]:
    return [s.id for s in m.groups[group].primary]


@pytest.fixture(scope="module")
def base(config_from) -> tuple[shardkit.ShardMap, np.ndarray]:
    m = shardkit.build_map(config_from(one_group(shard_list(BASE))), now=0)
    return m, owners(m)


# -- quotas ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ([2.0, 1.0, 1.0, 1.0], [6553, 3277, 3277, 3277]),  # the quickstart's us group
        ([1.0, 1.0, 1.0], [5462, 5461, 5461]),  # equal remainders: the lower index wins
        ([3.0, 1.5, 0.5, 5.0], [4915, 2458, 819, 8192]),
        ([1.0] * 7, [2341, 2341, 2341, 2341, 2340, 2340, 2340]),
    ],
)
def test_weights_become_exact_largest_remainder_quotas(config_from, weights, expected) -> None:
    ids = [f"s{i}" for i in range(len(weights))]
    cfg = one_group(shard_list(ids, dict(zip(ids, weights, strict=True))))
    m = shardkit.build_map(config_from(cfg), now=0)
    assert [m.slot_counts()[sid] for sid in ids] == expected


def test_quickstart_slot_counts(quickstart_map) -> None:
    assert quickstart_map.slot_counts() == {
        "eu-0": 4096,
        "eu-1": 4096,
        "eu-2": 4096,
        "eu-3": 4096,
        "us-0": 6553,
        "us-1": 3277,
        "us-2": 3277,
        "us-3": 3277,
    }


def test_random_weights_match_the_apportionment_oracle(config_from) -> None:
    rng = random.Random(5)
    for _ in range(25):
        n = rng.randint(1, 12)
        ids = [f"s{i}" for i in range(n)]
        weights = [rng.choice([0.5, 1.0, 1.25, 2.0, 3.0, 7.5]) for _ in ids]
        cfg = one_group(shard_list(ids, dict(zip(ids, weights, strict=True))), bits=10)
        m = shardkit.build_map(config_from(cfg), now=0)
        assert [m.slot_counts()[sid] for sid in ids] == largest_remainder(weights, 1024)


def test_a_weight_too_small_for_any_slot_is_refused(config_from) -> None:
    cfg = one_group(shard_list(["big", "tiny"], {"big": 1e6, "tiny": 1.0}), bits=8)
    with pytest.raises(shardkit.PlanningError, match="tiny"):
        shardkit.build_map(config_from(cfg), now=0)


# -- movement -------------------------------------------------------------------------------------

# name -> (new shard list, ideal moved fraction, the one shard every move goes to or comes from)
MOVES = {
    "append": (shard_list([*BASE, "s8"]), 1 / 9, ("to", "s8")),
    "remove-middle": (shard_list([s for s in BASE if s != "s3"]), 1 / 8, ("from", "s3")),
    "remove-first": (shard_list(BASE[1:]), 1 / 8, ("from", "s0")),
    "weight-up": (shard_list(BASE, {"s2": 2.0}), 2 / 9 - 1 / 8, ("to", "s2")),
    "weight-down": (shard_list(BASE, {"s5": 0.5}), 1 / 8 - 0.5 / 7.5, ("from", "s5")),
}


@pytest.mark.parametrize("name", sorted(MOVES))
def test_only_the_slots_that_must_move_move(config_from, base, name: str) -> None:
    old, old_owner = base
    shards, ideal, (direction, who) = MOVES[name]
    new = shardkit.build_map(config_from(one_group(shards)), old, now=1)
    # New counts are the exact quotas, and the slots moved are exactly the minimum.
    quota = dict(
        zip(
            [s["id"] for s in shards],
            largest_remainder([s["weight"] for s in shards], 1 << 14),
            strict=True,
        )
    )
    assert new.slot_counts() == quota
    minimum = sum(max(0, c - quota.get(sid, 0)) for sid, c in old.slot_counts().items())
    diff = shardkit.diff_maps(old, new)
    assert len(diff.moves) == minimum
    # One shard changed, so every move goes to it (or comes from it).
    ends = {m.destination if direction == "to" else m.source for m in diff.moves}
    assert ends == {who}
    # Keys follow slots: the moved fraction is within 2% of the ideal.
    new_owner = owners(new)
    moved = old_owner != new_owner
    assert moved.mean() <= 1.02 * ideal
    assert set((new_owner if direction == "to" else old_owner)[moved]) == {who}


def test_rebuilding_an_unchanged_config_moves_nothing(
    config_from, quickstart_dict, quickstart_map
) -> None:
    again = shardkit.build_map(config_from(quickstart_dict), quickstart_map, now=5)
    diff = shardkit.diff_maps(quickstart_map, again)
    assert (diff.moves, diff.replica_changes, diff.epochs) == ((), 0, {})
    assert again.version == quickstart_map.version + 1
    for name, group in quickstart_map.groups.items():
        assert [s.id for s in again.groups[name].primary] == [s.id for s in group.primary]


# -- jump hash is the baseline --------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 8, 64])
def test_equal_shards_are_jump_hash_trimmed_to_quotas(config_from, n: int) -> None:
    """A fresh table differs from jump(h(slot), n) only where exact quotas force it."""
    m = shardkit.build_map(config_from(one_group(n)), now=0)
    jump = [f"g-{jump_hash(mix64(s, 0), n)}" for s in range(m.slot_count)]
    quota = m.slot_counts()
    forced = sum(max(0, c - quota[sid]) for sid, c in Counter(jump).items())
    assert sum(a != b for a, b in zip(primary_ids(m), jump, strict=True)) == forced
    assert forced < 0.03 * m.slot_count  # measured: 0.3% (n=3) to 2.4% (n=64)


def _append_overlap(config_from, n: int) -> tuple[int, int, int]:
    """Append a shard to n equal ones: (slots it took, of them jump-moved, most possible)."""
    ids = [f"s{i}" for i in range(n)]
    old = shardkit.build_map(config_from(one_group(shard_list(ids))), now=0)
    new = shardkit.build_map(config_from(one_group(shard_list([*ids, "new"]))), old, now=1)
    jump_moved = {s for s in range(old.slot_count) if jump_hash(mix64(s, 0), n + 1) == n}
    took = {m.slot for m in shardkit.diff_maps(old, new).moves if m.destination == "new"}
    # With minimal movement shard i gives up exactly old_i - new_i slots, so at most
    # min(that, its jump-moved slots) of what it gives can be jump-moved.
    before, after, prev = old.slot_counts(), new.slot_counts(), primary_ids(old)
    best = sum(min(before[i] - after[i], sum(prev[s] == i for s in jump_moved)) for i in ids)
    return len(took), len(took & jump_moved), best


def test_an_appended_shard_takes_the_slots_jump_hash_moves(config_from) -> None:
    """Exact quotas make exact jump movement impossible (jump gives the new shard 1892 slots of
    16,384, its quota is 1820), so this asks for the overlap: measured 1805/1820 = 0.992 for 8
    shards. 0.9 leaves room for a different but still jump-following planner."""
    took, overlap, _ = _append_overlap(config_from, 8)
    assert took == 1820
    assert overlap / took >= 0.9


@pytest.mark.parametrize("n", [8, 64])
def test_append_overlap_with_jump_is_the_most_minimal_movement_allows(config_from, n) -> None:
    """Measured overlap: 0.992 (8 shards) and 0.774 (64 shards, where each old shard gives up ~4
    slots while quota trimming shifts ~16: more is impossible without moving extra slots). The
    planner before this test reached 0.945 and 0.425: it gave up previous slots in index order."""
    _, overlap, best = _append_overlap(config_from, n)
    assert overlap == best


# -- balance --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 7, 8, 100, 1000])
def test_equal_shards_own_equal_slot_counts(config_from, n: int) -> None:
    m = shardkit.build_map(config_from(one_group(n)), now=0)
    counts = list(m.slot_counts().values())
    assert len(counts) == n
    assert sum(counts) == m.slot_count
    assert set(counts) <= {m.slot_count // n, -(-m.slot_count // n)}


def test_key_load_is_as_even_as_a_perfect_hash_allows(config_from) -> None:
    """Key counts per shard, as a coefficient of variation, against the floor of a perfect
    uniform hash: each shard's count is Binomial(K, 1/N), so CV = sqrt((N-1)/K).

    With N = 1024 shards the measured CV / floor is a chi-square(1023) / 1023 statistic (its
    square root): 1.0 +- 0.022, so 1.1 is ~4.5 standard deviations above a perfect hash, and an
    untrimmed jump table (slot counts +- 25%) would give ~3.6. Measured: 0.985.
    """
    n = 1024
    m = shardkit.build_map(config_from(one_group(n)), now=0)
    counts = np.bincount(m.route_indices(KEYS), minlength=n)
    assert counts.sum() == len(KEYS)
    cv = counts.std() / counts.mean()
    floor = ((n - 1) / len(KEYS)) ** 0.5
    assert cv <= 1.1 * floor


# -- replicas -------------------------------------------------------------------------------------


def _check_replicas(m: shardkit.ShardMap, replicas: int) -> None:
    for group in m.groups.values():
        assert len(group.replicas) == replicas
        for s, primary in enumerate(group.primary):
            column = [primary] + [c[s] for c in group.replicas]
            assert len({x.domain for x in column}) == len(column)  # distinct failure domains
            assert len({x.id for x in column}) == len(column)  # a replica is never the primary
            assert {x.jurisdiction for x in column} == {group.jurisdiction}
            assert all(m.shard(x.id) is x for x in column)


def test_replicas_sit_in_distinct_regions(config_from) -> None:
    ids = [f"s{i}" for i in range(9)]
    weights = {"s0": 3.0, "s4": 0.5, "s7": 2.0}
    cfg = one_group(shard_list(ids, weights, REGIONS), bits=12, replicas=2, regions=REGIONS)
    m = shardkit.build_map(config_from(cfg), now=0)
    _check_replicas(m, 2)
    assert all(m.shard(sid).domain == m.shard(sid).region for sid in ids)
    # Still so after a change is planned on top of the previous map.
    cfg2 = one_group(
        shard_list([*ids[:4], *ids[5:], "s9"], weights, REGIONS),
        bits=12,
        replicas=2,
        regions=REGIONS,
    )
    _check_replicas(shardkit.build_map(config_from(cfg2), m, now=1), 2)


def test_replicas_with_shard_failure_domains(config_from) -> None:
    cfg = one_group(
        shard_list([f"s{i}" for i in range(5)], regions=REGIONS[:1]),
        bits=10,
        replicas=3,
        regions=REGIONS[:1],
        failure_domain="shard",
    )
    _check_replicas(shardkit.build_map(config_from(cfg), now=0), 3)


def test_quickstart_replicas(quickstart_map) -> None:
    _check_replicas(quickstart_map, 1)


# -- epochs and versions --------------------------------------------------------------------------


def _eu_list(ids: list[str]) -> list[dict[str, Any]]:
    return [{"id": sid, "region": REGIONS[int(sid[3:]) % 2]} for sid in ids]


def _check_epochs(old: shardkit.ShardMap, new: shardkit.ShardMap) -> None:
    """A shard's epoch is the version in which its (group, slot) set last changed."""

    def slot_sets(m: shardkit.ShardMap) -> dict[str, set[tuple[str, int]]]:
        out: dict[str, set[tuple[str, int]]] = {}
        for g in m.groups.values():
            for s, shard in enumerate(g.primary):
                out.setdefault(shard.id, set()).add((g.name, s))
        return out

    before, after = slot_sets(old), slot_sets(new)
    assert new.version == old.version + 1
    for shard in new.shards:
        kept = shard.id in before and before[shard.id] == after[shard.id]
        assert shard.epoch == (old.shard(shard.id).epoch if kept else new.version)


def test_epochs_follow_slot_set_changes(config_from, quickstart_dict) -> None:
    history = []

    def build(eu_ids: list[str]) -> shardkit.ShardMap:
        quickstart_dict["groups"]["eu"]["shards"] = _eu_list(eu_ids)
        m = shardkit.build_map(
            config_from(quickstart_dict), history[-1] if history else None, now=100 + len(history)
        )
        if history:
            _check_epochs(history[-1], m)
        history.append(m)
        return m

    v1 = build(["eu-0", "eu-1", "eu-2", "eu-3"])
    assert v1.version == 1 and {s.epoch for s in v1.shards} == {1}
    v2 = build(["eu-0", "eu-1", "eu-2", "eu-3", "eu-4"])  # eu changes, us does not
    assert {s.id: s.epoch for s in v2.shards} == {
        "eu-0": 2,
        "eu-1": 2,
        "eu-2": 2,
        "eu-3": 2,
        "eu-4": 2,
        "us-0": 1,
        "us-1": 1,
        "us-2": 1,
        "us-3": 1,
    }
    assert shardkit.diff_maps(v1, v2).epochs == {f"eu-{i}": (1, 2) for i in range(4)}
    v3 = build(["eu-0", "eu-1", "eu-3", "eu-4"])  # remove eu-2
    assert "eu-2" not in {s.id for s in v3.shards}
    v4 = build(["eu-0", "eu-1", "eu-3", "eu-4"])  # nothing changes: epochs stay
    assert {s.id: s.epoch for s in v4.shards} == {s.id: s.epoch for s in v3.shards}
    v5 = build(["eu-0", "eu-1", "eu-2", "eu-3", "eu-4"])  # eu-2 comes back
    had = [m.shard("eu-2").epoch for m in history[:2]]
    assert v5.shard("eu-2").epoch == 5 > max(had)
    assert [m.version for m in history] == [1, 2, 3, 4, 5]
    assert [m.created_at for m in history] == [100, 101, 102, 103, 104]
    assert all(m.expires_at == m.created_at + 720 * 3600 for m in history)


def test_a_re_added_shard_gets_a_new_position(config_from) -> None:
    """Positions never shift: a removed shard leaves a tombstone, a re-added one goes last."""
    v1 = shardkit.build_map(config_from(one_group(shard_list(["a", "b", "c"]))), now=0)
    v2 = shardkit.build_map(config_from(one_group(shard_list(["a", "c"]))), v1, now=1)
    v3 = shardkit.build_map(config_from(one_group(shard_list(["a", "b", "c"]))), v2, now=2)
    assert v1.groups["g"].positions == ("a", "b", "c")
    assert v2.groups["g"].positions == ("a", None, "c")
    assert v3.groups["g"].positions == ("a", None, "c", "b")
    assert len(shardkit.diff_maps(v2, v3).moves) == v3.slot_counts()["b"]


# -- determinism and refusals ---------------------------------------------------------------------


def test_same_inputs_give_identical_bytes(config_from, quickstart_dict) -> None:
    first = shardkit.build_map(config_from(quickstart_dict), now=42)
    assert encode_body(shardkit.build_map(config_from(quickstart_dict), now=42)) == encode_body(
        first
    )
    quickstart_dict["groups"]["us"]["shards"] = 5
    a = shardkit.build_map(config_from(quickstart_dict), first, now=43)
    b = shardkit.build_map(config_from(quickstart_dict), first, now=43)
    assert encode_body(a) == encode_body(b)
    assert encode_body(a) != encode_body(first)


def test_build_refuses_a_previous_map_it_cannot_extend(config_from, quickstart_dict) -> None:
    old = shardkit.build_map(config_from(quickstart_dict), now=0)
    other = dict(quickstart_dict, project={"name": "other"})
    with pytest.raises(shardkit.PlanningError, match="project"):
        shardkit.build_map(config_from(other), old, now=1)
    rebits = dict(quickstart_dict, hashing={"slot_bits": 12})
    with pytest.raises(shardkit.PlanningError, match="hashing changed"):
        shardkit.build_map(config_from(rebits), old, now=1)
    # Swap the groups' contents: group "eu" now serves jurisdiction "us" and vice versa.
    swapped = copy.deepcopy(quickstart_dict)
    eu, us = swapped["groups"]["eu"], swapped["groups"]["us"]
    us.pop("weights")
    swapped["groups"] = {"eu": us, "us": eu}
    with pytest.raises(shardkit.PlanningError, match="jurisdiction"):
        shardkit.build_map(config_from(swapped), old, now=1)
