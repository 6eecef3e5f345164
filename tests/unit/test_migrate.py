"""The migration core: the pure planner, and every step over in-memory state tables.

Maps of one group ("g", jurisdiction eu) in two regions, 256 slots. Steps are checked for what
they do, for doing nothing when run again (a replay after a crash), and for refusing - with the
slot named - to run out of order or on records they do not expect.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

import shardkit
from shardkit.errors import MigrationError, PlanFileError, PlanningError
from shardkit.migrate import (
    Move,
    Place,
    Progress,
    abort,
    bulk_copy,
    catch_up,
    cleanup,
    fence,
    format_slots,
    initialise,
    parse_slots,
    plan_migration,
    slot_records,
    switch,
)
from shardkit.migrate.deploy import run_batch, slot_batches
from shardkit.migrate.ledger import Ledger
from shardkit.migrate.live import LiveContext, run_phase
from shardkit.proxy.state import ACTIVE, FENCED, MOVED, READY, SlotRecord, partition
from shardkit.proxy.table import MemoryTable, Put

WEST, CENTRAL = "eu-west-1", "eu-central-1"
T0 = 1_700_000_000


def config(*shards: tuple[str, str], weights: dict[str, float] | None = None) -> dict[str, Any]:
    return {
        "project": {"name": "mig"},
        "hashing": {"slot_bits": 8},
        "signing": {"key_id": "k"},
        "regions": {WEST: {"jurisdiction": "eu"}, CENTRAL: {"jurisdiction": "eu"}},
        "residency": {"default": "eu"},
        "groups": {
            "g": {
                "jurisdiction": "eu",
                "regions": [WEST, CENTRAL],
                "shards": [{"id": s, "region": r} for s, r in shards],
                "weights": weights or {},
            }
        },
    }


def build(data: dict[str, Any], previous: shardkit.ShardMap | None = None) -> shardkit.ShardMap:
    return shardkit.build_map(shardkit.ProjectConfig.model_validate(data), previous, now=T0)


V1 = build(config(("a", WEST), ("b", WEST), ("c", CENTRAL)))


def tables() -> dict[str, MemoryTable]:
    return {WEST: MemoryTable(WEST, page_size=3), CENTRAL: MemoryTable(CENTRAL, page_size=3)}


def state(t: MemoryTable, slot: int, key: str, seq: int) -> None:
    t.write(Put({"pk": partition("g", slot), "sk": key, "seq": seq, "data": b"s%d" % seq}))


def items(t: MemoryTable, slot: int) -> dict[str, int]:
    pk = partition("g", slot)
    return {sk: int(i["seq"]) for (p, sk), i in t.items.items() if p == pk and "seq" in i}


# -- the planner ---------------------------------------------------------------------------------


def test_adding_a_shard_moves_only_slots_to_it_classified_by_region() -> None:
    v2 = build(config(("a", WEST), ("b", WEST), ("c", CENTRAL), ("d", WEST)), V1)
    m = plan_migration(V1, v2)
    assert m.moves and {x.destination for x in m.moves} == {Place("d", WEST)}
    assert {x.source.shard for x in m.same_region} == {"a", "b"}
    assert {x.source for x in m.cross_region} == {Place("c", CENTRAL)}
    assert len(m.moves) == sum(v2.slot_counts()[s] for s in ["d"])  # the minimum: d's share
    assert (m.old_version, m.version) == (1, 2)
    pairs = m.to_dict()["pairs"]
    assert sum(p["count"] for p in pairs) == len(m.moves)
    assert {(p["source"], p["destination"], p["cross_region"]) for p in pairs} == {
        ("a@eu-west-1", "d@eu-west-1", False),
        ("b@eu-west-1", "d@eu-west-1", False),
        ("c@eu-central-1", "d@eu-west-1", True),
    }


def test_a_shard_moved_to_another_region_moves_all_its_slots_and_only_them() -> None:
    v2 = build(config(("a", WEST), ("b", CENTRAL), ("c", CENTRAL)), V1)
    m = plan_migration(V1, v2)
    assert len(m.moves) == V1.slot_counts()["b"] == len(m.cross_region)
    assert {(x.source, x.destination) for x in m.moves} == {(Place("b", WEST), Place("b", CENTRAL))}


def test_removing_a_middle_shard_and_reweighting_move_the_minimum() -> None:
    gone = build(config(("a", WEST), ("c", CENTRAL)), V1)
    m = plan_migration(V1, gone)
    assert {x.source.shard for x in m.moves} == {"b"} and len(m.moves) == V1.slot_counts()["b"]
    heavier = build(config(("a", WEST), ("b", WEST), ("c", CENTRAL), weights={"a": 2.0}), V1)
    m = plan_migration(V1, heavier)
    assert {x.destination.shard for x in m.moves} == {"a"}
    assert len(m.moves) == heavier.slot_counts()["a"] - V1.slot_counts()["a"]


def test_the_planner_refuses_what_cannot_migrate() -> None:
    other = copy.deepcopy(config(("a", WEST)))
    other["project"]["name"] = "other"
    with pytest.raises(PlanningError, match="different projects: 'mig' and 'other'"):
        plan_migration(V1, build(other))
    bits = config(("a", WEST))
    bits["hashing"]["slot_bits"] = 9
    with pytest.raises(PlanningError, match=r"different hashing .* every key moves"):
        plan_migration(V1, build(bits))
    with pytest.raises(PlanningError, match="version 1 is not after 1"):
        plan_migration(V1, V1)


def test_slot_lists_round_trip_as_hex_ranges() -> None:
    assert format_slots([5, 0, 1, 2, 0x3F, 0x40]) == "0-2,5,3f-40"
    assert parse_slots("0-2,5,3f-40") == [0, 1, 2, 5, 0x3F, 0x40]
    assert parse_slots("") == []
    for bad, why in (("0-x", "not hex"), ("5-2", "empty or outside"), ("100", "outside 0-ff")):
        with pytest.raises(PlanningError, match=why):
            parse_slots(bad, 256)


# -- the steps -----------------------------------------------------------------------------------


def test_a_first_deploy_writes_every_record_active_in_its_owners_region() -> None:
    t = tables()
    assert initialise(t, V1) == Progress(slots=256)
    for slot, owner in enumerate(V1.groups["g"].primary):
        records = slot_records(t, "g", slot)
        assert records[owner.region] == SlotRecord(owner.id, 1, ACTIVE)
        assert all(r is None for region, r in records.items() if region != owner.region)
    assert initialise(t, V1) == Progress(slots=256)  # the same records again


def test_a_same_region_switch_is_one_conditional_update_and_a_replay_is_harmless() -> None:
    t = tables()
    initialise(t, V1)
    v2 = build(config(("a", WEST), ("b", WEST), ("c", CENTRAL), ("d", WEST)), V1)
    local = plan_migration(V1, v2).same_region
    slot = local[0].slot
    state(t[WEST], slot, "k", 4)
    calls = dict(t[WEST].calls)
    assert switch(t, local, 2) == Progress(slots=len(local))
    assert t[WEST].calls["transact"] - calls.get("transact", 0) == -(-len(local) // 100)
    assert slot_records(t, "g", slot)[WEST] == SlotRecord("d", 2, ACTIVE)
    assert items(t[WEST], slot) == {"k": 4}  # the state stays where it is: the new owner's
    assert switch(t, local, 2).slots == len(local)  # replay: the same records again


def cross_move() -> tuple[dict[str, MemoryTable], list[Move]]:
    """Shard b moves to eu-central-1; two of its slots hold keys."""
    t = tables()
    initialise(t, V1)
    v2 = build(config(("a", WEST), ("b", CENTRAL), ("c", CENTRAL)), V1)
    moves = list(plan_migration(V1, v2).moves)
    state(t[WEST], moves[0].slot, "k1", 3)
    state(t[WEST], moves[0].slot, "k2", 1)
    state(t[WEST], moves[1].slot, "k3", 9)
    return t, moves


def test_a_cross_region_move_copies_fences_catches_up_and_switches() -> None:
    t, moves = cross_move()
    s0, s1 = moves[0].slot, moves[1].slot
    copied = bulk_copy(t, moves)
    assert (copied.slots, copied.items) == (len(moves), 3)
    state(t[WEST], s0, "k1", 4)  # the old owner still serves: a write after the bulk copy
    assert fence(t, moves).slots == len(moves)
    assert slot_records(t, "g", s0) == {WEST: SlotRecord("b", 1, FENCED), CENTRAL: None}
    assert catch_up(t, moves, 2).items == 1  # only what changed since the bulk copy
    assert slot_records(t, "g", s0)[CENTRAL] == SlotRecord("b", 2, READY)
    assert switch(t, moves, 2).slots == len(moves)
    assert slot_records(t, "g", s0) == {
        WEST: SlotRecord("b", 2, MOVED),
        CENTRAL: SlotRecord("b", 2, ACTIVE),
    }
    assert items(t[CENTRAL], s0) == {"k1": 4, "k2": 1} and items(t[CENTRAL], s1) == {"k3": 9}

    # Every step again (a replay after a crash): nothing changes, live state is never touched.
    state(t[CENTRAL], s0, "k1", 5)  # the new owner serves
    snapshot = (t[WEST].snapshot(), t[CENTRAL].snapshot())
    assert bulk_copy(t, moves).skipped == 1  # the one slot whose copy would differ: skipped
    assert fence(t, moves).skipped == len(moves)
    assert catch_up(t, moves, 2).skipped == len(moves)
    switch(t, moves, 2)
    assert (t[WEST].snapshot(), t[CENTRAL].snapshot()) == snapshot


def test_cleanup_deletes_only_switched_source_copies() -> None:
    t, moves = cross_move()
    fence(t, moves[:1])
    with pytest.raises(MigrationError, match="expected moved"):
        cleanup(t, moves[:1])  # fenced, not switched: the source copy is the live state
    t, moves = cross_move()
    for step in (fence, lambda t, m: catch_up(t, m, 2), lambda t, m: switch(t, m, 2)):
        step(t, moves)
    assert cleanup(t, moves).items == 3
    assert items(t[WEST], moves[0].slot) == {} and items(t[CENTRAL], moves[0].slot) != {}
    assert slot_records(t, "g", moves[0].slot)[WEST] == SlotRecord("b", 2, MOVED)
    assert cleanup(t, moves).items == 0


def test_steps_out_of_order_are_refused_naming_the_slot() -> None:
    t, moves = cross_move()
    slot = f"slot {moves[0].slot:x} of group g"
    with pytest.raises(MigrationError, match=f"{slot} .*expected fenced: run the fence first"):
        catch_up(t, moves, 2)
    with pytest.raises(MigrationError, match=f"{slot} .*expected ready .*run catch-up"):
        switch(t, moves, 2)
    fence(t, moves)
    with pytest.raises(MigrationError, match="expected ready"):
        switch(t, moves, 2)  # fenced is not enough: the copy is not there yet
    assert slot_records(t, "g", moves[0].slot)[CENTRAL] is None


def test_a_record_nobody_expects_stops_the_step() -> None:
    t = tables()
    initialise(t, V1)
    v2 = build(config(("a", WEST), ("b", WEST), ("c", CENTRAL), ("d", WEST)), V1)
    local = plan_migration(V1, v2).same_region
    hijacked = local[5]
    t[WEST].write(Put(SlotRecord("z", 9, ACTIVE).item(partition("g", hijacked.slot))))
    with pytest.raises(MigrationError, match=f"slot {hijacked.slot:x} .* active \\(owner z"):
        switch(t, local, 2)


def test_abort_gives_unswitched_slots_back_and_reports_the_switched_ones() -> None:
    t, moves = cross_move()
    done, pending = moves[:1], moves[1:]
    fence(t, moves)
    catch_up(t, moves, 2)
    switch(t, done, 2)
    result = abort(t, moves)
    assert result.switched == tuple(done) and result.progress.slots == len(pending)
    assert slot_records(t, "g", pending[0].slot) == {
        WEST: SlotRecord("b", 1, ACTIVE),
        CENTRAL: SlotRecord("b", 2, MOVED),  # (the old owner's, in the other region)
    }
    assert slot_records(t, "g", done[0].slot)[CENTRAL] == SlotRecord("b", 2, ACTIVE)
    again = abort(t, moves)
    assert again.switched == tuple(done) and again.progress.slots == len(pending)


def test_a_switched_slot_goes_back_by_the_reverse_migration_with_its_new_state() -> None:
    t, moves = cross_move()
    for step in (fence, lambda t, m: catch_up(t, m, 2), lambda t, m: switch(t, m, 2)):
        step(t, moves)
    state(t[CENTRAL], moves[0].slot, "k1", 7)  # written after the move
    back = list(
        plan_migration(V1, build(config(("a", WEST), ("b", CENTRAL), ("c", CENTRAL)), V1))
        .reversed(3)
        .moves
    )
    fence(t, back)
    catch_up(t, back, 3)  # the old copy in eu-west-1 (k1 at seq 3) is overwritten, not revived
    switch(t, back, 3)
    assert items(t[WEST], moves[0].slot) == {"k1": 7, "k2": 1}
    assert slot_records(t, "g", moves[0].slot)[WEST] == SlotRecord("b", 3, ACTIVE)


def test_a_copy_makes_the_destination_exact_whatever_it_held_before() -> None:
    """A stale copy at the destination (an earlier residency, a restored backup) may have a
    higher seq or keys the source lacks: the catch-up overwrites and deletes them."""
    t, moves = cross_move()
    slot = moves[0].slot
    state(t[CENTRAL], slot, "k1", 99)
    state(t[CENTRAL], slot, "gone", 5)
    fence(t, moves)
    catch_up(t, moves, 2)
    assert items(t[CENTRAL], slot) == {"k1": 3, "k2": 1}


# -- the deploy's slot-record steps ----------------------------------------------------------


def live(t: dict[str, MemoryTable], region: str, root: Path) -> LiveContext:
    return LiveContext(lambda r, name: t[r], region, "plan", Ledger(root))


def test_a_first_deploy_and_a_reshard_as_deploy_steps(tmp_path: Path) -> None:
    t = tables()
    first = slot_batches(None, V1)
    assert [(b.region, b.group) for b in first] == [(CENTRAL, "g"), (WEST, "g")]
    for b in first:
        out = run_batch(lambda r, name: t[r], b.region, {**b.props, "tables": {b.region: "x"}})
        assert out["slots"] == sum(len(parse_slots(s)) for s in b.props["owners"].values())
    reference = tables()
    initialise(reference, V1)
    assert t[WEST].snapshot() == reference[WEST].snapshot()

    v2 = build(config(("a", WEST), ("b", WEST), ("c", CENTRAL), ("d", WEST)), V1)
    state(t[CENTRAL], plan_migration(V1, v2).cross_region[0].slot, "k", 2)
    batches = slot_batches(V1, v2)
    assert [(b.region, b.props["phase"]) for b in batches] == [
        (WEST, "prepare"),
        (WEST, "copy"),
        (WEST, "cutover"),
    ]
    assert "switch within eu-west-1" in batches[2].reason
    assert "move from eu-central-1 (fence, copy, switch)" in batches[2].reason
    tables_used = {WEST: "tw", CENTRAL: "tc"}
    out = [run_phase(live(t, WEST, tmp_path), {**b.props, "tables": tables_used}) for b in batches]
    assert out[1]["items"] == 1 and out[2]["caught_up_items"] == 0
    for m in plan_migration(V1, v2).moves:
        assert slot_records(t, "g", m.slot)[WEST] == SlotRecord("d", 2, ACTIVE)
    assert (
        slot_batches(v2, build(config(("a", WEST), ("b", WEST), ("c", CENTRAL), ("d", WEST)), v2))
        == []
    )


def test_slots_whose_table_is_new_start_anew_instead_of_moving() -> None:
    """A state table the deploy creates (deleted with its data, or never there) holds no
    records: its slots get records as on a first deploy, and nothing moves out of it."""
    v2 = build(config(("a", WEST), ("b", CENTRAL), ("c", CENTRAL)), V1)  # b moves to central
    moving = slot_batches(V1, v2)
    assert {b.region for b in moving} == {CENTRAL} and all("moves" in b.props for b in moving)
    batches = slot_batches(V1, v2, fresh={WEST})
    assert [(b.region, sorted(b.props)) for b in batches] == [
        (CENTRAL, ["group", "owners", "version"]),
        (WEST, ["group", "owners", "version"]),
    ]
    owners = {
        (b.region, shard): parse_slots(text)
        for b in batches
        for shard, text in b.props["owners"].items()
    }
    assert owners == {  # the slots that were in eu-west-1: a's (stay), b's (moved away)
        (s.region, s.id): [i for i, o in enumerate(v2.groups["g"].primary) if o.id == s.id]
        for s in v2.shards
        if s.id in ("a", "b")
    }
    # the same map again (nothing to publish), over a recreated table: its records only
    (again,) = slot_batches(V1, V1, fresh={CENTRAL})
    assert again.region == CENTRAL and set(again.props["owners"]) == {"c"}
    assert slot_batches(V1, V1) == []


def test_slots_whose_record_is_missing_start_anew_and_the_others_move() -> None:
    """A table that came back without some records (a restored local cloud): those slots get
    records as on a first deploy, under their owner in the new map; the rest move as usual."""
    v2 = build(config(("a", WEST), ("b", CENTRAL), ("c", CENTRAL)), V1)  # b moves to central
    moving = [m.slot for m in plan_migration(V1, v2).moves]
    lost, kept = moving[0], moving[1:]
    batches = slot_batches(V1, v2, unrecorded={("g", lost), ("g", 0)})
    started = {
        slot
        for b in batches
        for text in b.props.get("owners", {}).values()
        for slot in parse_slots(text)
    }
    moved = {
        slot for b in batches for m in b.props.get("moves", ()) for slot in parse_slots(m["slots"])
    }
    assert (started, moved) == ({0, lost}, set(kept))
    # the same map again: only the missing records, under their owners
    (again,) = slot_batches(V1, V1, unrecorded={("g", lost)})
    assert again.props["owners"] == {V1.groups["g"].primary[lost].id: format_slots([lost])}


def test_a_failed_cross_region_deploy_step_leaves_nothing_fenced(tmp_path: Path) -> None:
    t = tables()
    initialise(t, V1)
    v2 = build(config(("a", WEST), ("b", CENTRAL), ("c", CENTRAL)), V1)
    (batch,) = [b for b in slot_batches(V1, v2) if b.props["phase"] == "cutover"]
    broken = MemoryTable(CENTRAL)
    broken.write(
        Put(SlotRecord("z", 1, ACTIVE).item(partition("g", plan_migration(V1, v2).moves[3].slot)))
    )
    t[CENTRAL] = broken
    with pytest.raises(MigrationError, match="owner z"):
        run_phase(live(t, CENTRAL, tmp_path), {**batch.props, "tables": {WEST: "w", CENTRAL: "c"}})
    assert all(
        slot_records(t, "g", m.slot)[WEST] == SlotRecord("b", 1, ACTIVE)
        for m in plan_migration(V1, v2).moves
    )


def test_malformed_deploy_step_props_are_refused() -> None:
    with pytest.raises(PlanFileError, match="malformed"):
        run_batch(lambda r, name: MemoryTable(), WEST, {"group": "g"})
    with pytest.raises(PlanningError, match="not hex"):
        run_batch(
            lambda r, name: MemoryTable(),
            WEST,
            {"group": "g", "version": 1, "owners": {"a": "zz"}, "tables": {WEST: "t"}},
        )
