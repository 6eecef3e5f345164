"""A layout change as data, applied to a map: exactly the listed slots move, epochs bump for
exactly the shards whose slot sets change, ids are never reused, residency fails closed
(docs/architecture.md §4.2-§4.4)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shardkit
from shardkit.errors import PlanningError
from shardkit.sharding.diff import SlotMove, diff_maps
from shardkit.sharding.layout import LayoutChange, NewShard, apply_layout, next_shard_id

T0 = 1_700_000_000


def project(replicas: int = 0, shards: int = 4) -> dict[str, Any]:
    return {
        "project": {"name": "lay"},
        "hashing": {"slot_bits": 8},
        "signing": {"key_id": "k"},
        "regions": {
            "eu-west-1": {"jurisdiction": "eu"},
            "eu-central-1": {"jurisdiction": "eu"},
            "us-east-1": {"jurisdiction": "us"},
        },
        "residency": {"default": "eu"},
        "groups": {
            "eu": {
                "jurisdiction": "eu",
                "regions": ["eu-west-1", "eu-central-1"],
                "shards": shards,
                "replicas": replicas,
            },
            "us": {"jurisdiction": "us", "regions": ["us-east-1"], "shards": 1},
        },
    }


@pytest.fixture
def base(config_from: Any) -> shardkit.ShardMap:
    return shardkit.build_map(config_from(project()), now=T0)


def slots_of(m: shardkit.ShardMap, shard: str) -> list[int]:
    return [i for i, s in enumerate(m.groups["eu"].primary) if s.id == shard]


def moves(m: shardkit.ShardMap, slots: list[int], dest: str) -> tuple[SlotMove, ...]:
    table = m.groups["eu"].primary
    return tuple(SlotMove("eu", s, table[s].id, dest) for s in slots)


def test_a_split_moves_exactly_the_listed_slots_and_bumps_exactly_two_epochs(base) -> None:
    taken = slots_of(base, "eu-1")[:10]
    new_id = next_shard_id(base.groups["eu"])
    assert new_id == "eu-4"  # the next position of the group
    change = LayoutChange(
        "eu",
        added=(NewShard(new_id, "eu-central-1", "eu-central-1"),),
        moves=moves(base, taken, new_id),
    )
    after = apply_layout(base, [change], ttl_s=3600, now=T0 + 10)
    d = diff_maps(base, after)
    assert sorted(m.slot for m in d.moves) == taken
    assert {(m.source, m.destination) for m in d.moves} == {("eu-1", "eu-4")}
    assert d.added == ("eu-4",) and d.removed == ()
    assert d.epochs == {"eu-1": (1, 2)}  # eu-4 is new at epoch 2; nobody else changes
    assert after.shard("eu-4").epoch == 2 and after.shard("eu-4").region == "eu-central-1"
    assert after.version == 2 and after.expires_at == T0 + 10 + 3600
    assert after.groups["eu"].positions == (*base.groups["eu"].positions, "eu-4")
    assert after.groups["us"].primary == base.groups["us"].primary  # other groups untouched


def test_a_merge_removes_the_drained_shard_and_leaves_a_tombstone(base) -> None:
    drained = slots_of(base, "eu-2")
    after = apply_layout(
        base,
        [LayoutChange("eu", removed=("eu-2",), moves=moves(base, drained, "eu-0"))],
        ttl_s=60,
        now=T0,
    )
    assert after.groups["eu"].positions == ("eu-0", "eu-1", None, "eu-3")
    assert {s.id for s in after.groups["eu"].shards()} == {"eu-0", "eu-1", "eu-3"}
    assert after.shard("eu-0").epoch == 2 and after.shard("eu-1").epoch == 1
    # The next new shard takes position 4, never the removed eu-2's id.
    assert next_shard_id(after.groups["eu"]) == "eu-4"


def test_ids_skip_a_hand_picked_clash_and_count_shards_added_in_the_same_change(base) -> None:
    group = base.groups["eu"]
    assert next_shard_id(group, added=2) == "eu-6"
    assert next_shard_id(group, taken=["eu-4"]) == "eu-4-1"


def test_replicas_stay_where_they_are_still_valid(config_from) -> None:
    m = shardkit.build_map(config_from(project(replicas=1)), now=T0)
    taken = slots_of(m, "eu-0")[:5]
    change = LayoutChange(
        "eu", added=(NewShard("eu-4", "eu-west-1", "eu-west-1"),), moves=moves(m, taken, "eu-4")
    )
    after = apply_layout(m, [change], ttl_s=60, now=T0)
    before_col, after_col = m.groups["eu"].replicas[0], after.groups["eu"].replicas[0]
    changed = [i for i in range(m.slot_count) if before_col[i].id != after_col[i].id]
    assert set(changed) <= set(taken)  # only moved slots may need another replica
    for i in range(m.slot_count):
        assert after_col[i].region != after.groups["eu"].primary[i].region


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda m: LayoutChange(
                "eu",
                added=(NewShard("eu-9", "us-east-1", "us-east-1"),),
                moves=moves(m, [0], "eu-9"),
            ),
            "region 'us-east-1': the region is in jurisdiction 'us'",
        ),
        (
            lambda m: LayoutChange(
                "eu", added=(NewShard("eu-9", "mars-1", "mars-1"),), moves=moves(m, [0], "eu-9")
            ),
            "the region is not in the map",
        ),
        (lambda m: LayoutChange("eu", removed=("eu-1",)), "'eu-1' is removed but still owns"),
        (lambda m: LayoutChange("eu", removed=("us-0",)), "not a shard of group 'eu'"),
        (
            lambda m: LayoutChange("eu", added=(NewShard("eu-9", "eu-west-1", "eu-west-1"),)),
            "'eu-9' would own no slot",
        ),
        (
            lambda m: LayoutChange("eu", moves=(SlotMove("eu", 0, "nobody", "eu-1"),)),
            "slot 0 of group 'eu' is owned by",
        ),
        (lambda m: LayoutChange("eu", moves=moves(m, [1], "ghost")), "not a shard of the group"),
        (
            lambda m: LayoutChange("eu", moves=moves(m, [1, 1], "eu-3")),
            "needs exactly one destination",
        ),
        (
            lambda m: LayoutChange("eu", moves=(SlotMove("eu", 999, "eu-0", "eu-3"),)),
            "does not fit group",
        ),
        (lambda m: LayoutChange("asia"), "group 'asia', which map version 1"),
        (
            lambda m: LayoutChange(
                "eu",
                added=(NewShard("us-0", "eu-west-1", "eu-west-1"),),
                moves=moves(m, [0], "us-0"),
            ),
            "already has a shard with this id",
        ),
    ],
)
def test_a_change_that_cannot_apply_is_refused_whole(base, change, message) -> None:
    bad = change(base)
    with pytest.raises(PlanningError, match=message):
        apply_layout(base, [bad], ttl_s=60, now=T0)


def test_two_changes_for_one_group_are_refused(base) -> None:
    with pytest.raises(PlanningError, match="two changes for group 'eu'"):
        apply_layout(base, [LayoutChange("eu"), LayoutChange("eu")], ttl_s=60, now=T0)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_random_moves_move_exactly_those_slots(config_from: Any, data: st.DataObject) -> None:
    m = shardkit.build_map(config_from(project(shards=3)), now=T0)
    table = m.groups["eu"].primary
    ids = ["eu-0", "eu-1", "eu-2", "eu-3"]
    chosen = data.draw(st.dictionaries(st.integers(0, 255), st.sampled_from(ids), max_size=60))
    # eu-3 is new: it must get a slot, and every move must really change the owner.
    chosen = {s: d for s, d in chosen.items() if d != table[s].id}
    add = "eu-3" in chosen.values()
    change = LayoutChange(
        "eu",
        added=(NewShard("eu-3", "eu-west-1", "eu-west-1"),) if add else (),
        moves=tuple(SlotMove("eu", s, table[s].id, d) for s, d in sorted(chosen.items())),
    )
    emptied = {table[s].id for s in chosen} - {t.id for i, t in enumerate(table) if i not in chosen}
    emptied -= set(chosen.values())
    if emptied:
        with pytest.raises(PlanningError, match=r"still owns|would own no slot"):
            apply_layout(m, [change], ttl_s=60, now=T0)
        return
    after = apply_layout(m, [change], ttl_s=60, now=T0)
    d = diff_maps(m, after)
    assert {(x.slot, x.destination) for x in d.moves} == set(chosen.items())
    touched = {x.source for x in d.moves} | {x.destination for x in d.moves}
    for s in after.shards:
        assert s.epoch == (2 if s.id in touched else 1), s
