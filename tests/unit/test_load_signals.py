"""Load signals: the per-request accumulator, the msgpack load record, and the control plane's
merge of many instances' records into load windows (with heavy-hitter error bounds)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardkit.autoshard.load import LoadAggregator
from shardkit.errors import LoadRecordError
from shardkit.proxy.load import (
    HotSlot,
    LoadAccumulator,
    LoadRecord,
    ShardTotal,
    decode_record,
    encode_record,
    iter_records,
    summarize,
)


def test_the_accumulator_closes_aligned_windows_with_exact_counts() -> None:
    acc = LoadAccumulator("i-1", window_s=10, top_k=2, map_version=7)
    for i in range(100):  # t = 1003.0 .. 1007.95: one window [1000, 1010)
        acc.add("eu-0", "eu", i % 7, 9.0 if i % 7 == 0 else 1.5, 1003.0 + i * 0.05)
    acc.add("eu-1", "eu", 3, 2.0, 1004.0)
    assert acc.take() == []  # the window is still open
    acc.add("eu-0", "eu", 5, 1.0, 1012.0)  # a request of the next window closes it
    (record,) = acc.take()
    assert record == LoadRecord(
        instance="i-1",
        start=1000.0,
        length=10.0,
        map_version=7,
        shards=(ShardTotal("eu-0", "eu", 100, 262.5), ShardTotal("eu-1", "eu", 1, 2.0)),
        # top 2 by requests: slots 0 and 1 (15 each; ties to the lower slot); by compute:
        # slot 0 (135 ms) and slot 1 (22.5 ms); everything else had <= 14 requests, 21 ms.
        hot=(HotSlot("eu-0", 0, 15, 135.0), HotSlot("eu-0", 1, 15, 22.5)),
        floor_requests=14,
        floor_compute_ms=21.0,
    )
    acc.flush(1019.9)
    assert acc.take() == []
    acc.flush(1020.0)  # an idle timer closes the window with the one request at 1012
    (late,) = acc.take()
    assert (late.start, late.shards) == (1010.0, (ShardTotal("eu-0", "eu", 1, 1.0),))


def test_bad_accumulator_settings_are_refused() -> None:
    with pytest.raises(LoadRecordError, match="window_s = 0"):
        LoadAccumulator("i", window_s=0)


def test_records_round_trip_and_are_compact() -> None:
    counts = {("eu-0", "eu"): ({s: 10 + s for s in range(4096)}, {s: 1.0 for s in range(4096)})}
    record = summarize("i-2", 20.0, 10.0, 3, counts, top_k=32)
    data = encode_record(record)
    assert decode_record(data) == record
    assert len(record.hot) == 32 + 32  # the top by requests and the top by compute time
    assert record.floor_requests == 10 + 4095 - 32
    assert len(data) < 2000  # 4,096 slots summarised in well under 2 KB
    stream = data + encode_record(summarize("i-3", 20.0, 10.0, 3, counts, top_k=1))
    assert [r.instance for r in iter_records(stream)] == ["i-2", "i-3"]


def _body(**changes: object) -> bytes:
    body = {
        "v": 1,
        "instance": "i",
        "start": 0.0,
        "length": 10.0,
        "map_version": 1,
        "shards": [["eu-0", "eu", 3, 1.0]],
        "hot": [["eu-0", 5, 3, 1.0]],
        "floor": [0, 0.0],
    }
    body.update(changes)
    return msgpack.packb({k: v for k, v in body.items() if v is not None})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xc1", "not a msgpack load record"),
        (msgpack.packb([1, 2]), "a load record is a map"),
        (_body(v=2), "v = 2: unknown load record format"),
        (_body(hot=None), "hot: missing"),
        (_body(length=0), "length = 0.0: must be > 0"),
        (_body(start="x"), "start = 'x': must be a finite number"),
        (_body(shards=[["eu-0", "eu", -1, 1.0]]), r"shards\[0\]\[2\] = -1: must be an integer"),
        (_body(hot=[["eu-0", 5, 3]]), r"hot\[0\]: must be an array of 4 items"),
        (_body(floor=[0, float("inf")]), r"floor\[1\] = inf: must be finite"),
        (_body(instance=7), "instance = 7: must be a string"),
    ],
)
def test_a_bad_record_names_its_field(data: bytes, message: str) -> None:
    with pytest.raises(LoadRecordError, match=message):
        decode_record(data)


def test_a_bad_record_in_a_stream_names_its_position() -> None:
    with pytest.raises(LoadRecordError, match="record 1: v = 9"):
        list(iter_records(_body() + _body(v=9)))


def test_windows_merge_instances_and_estimate_every_slot() -> None:
    agg = LoadAggregator(capacity=4)
    a = LoadRecord(
        "a",
        0.0,
        10.0,
        1,
        (ShardTotal("s0", "g", 100, 200.0),),
        (HotSlot("s0", 1, 60, 120.0),),
        floor_requests=5,
        floor_compute_ms=10.0,
    )
    b = LoadRecord(
        "b",
        0.0,
        10.0,
        1,
        (ShardTotal("s0", "g", 50, 100.0), ShardTotal("s1", "g", 40, 80.0)),
        (HotSlot("s1", 2, 30, 60.0),),
        floor_requests=4,
        floor_compute_ms=8.0,
    )
    agg.add(a)
    agg.add(encode_record(b))
    assert agg.pending() == [("g", 0.0)]
    owners = ("s0", "s0", "s1", "s1")
    w = agg.close("g", 0.0, owners)
    assert w is not None and agg.pending() == []
    assert w.shards == {"s0": (150.0, 300.0), "s1": (40.0, 80.0)} and w.instances == 2
    # slot 1: listed by a only, so b's floor bounds what b may have missed
    assert (w.hot[1].requests, w.hot[1].err_requests) == (60, 4)
    assert (w.hot[2].requests, w.hot[2].err_requests) == (30, 5)
    rps, ms = w.slot_rates()
    # s0: 150 requests, 60 of them on slot 1; the other 90 are spread over its other slot (0).
    # s1: 40 requests, 30 on slot 2; 10 on slot 3.
    np.testing.assert_allclose(rps, [9.0, 6.0, 3.0, 1.0])
    np.testing.assert_allclose(ms, [18.0, 12.0, 6.0, 2.0])
    assert agg.close("g", 0.0, owners) is None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.integers(0, 63), st.integers(1, 50), min_size=1, max_size=40),
        min_size=1,
        max_size=6,
    ),
    st.integers(1, 8),
    st.integers(1, 12),
)
def test_merged_estimates_bound_the_truth(instances, top_k: int, capacity: int) -> None:
    """Every listed slot's true count lies in [estimate, estimate + error]; every slot left out
    had at most the window's floor - the mergeable-summary guarantee."""
    agg = LoadAggregator(capacity=capacity)
    truth: dict[int, int] = {}
    for i, counts in enumerate(instances):
        ms = {s: float(n) for s, n in counts.items()}
        agg.add(summarize(f"i{i}", 0.0, 10.0, 1, {("s0", "g"): (counts, ms)}, top_k))
        for s, n in counts.items():
            truth[s] = truth.get(s, 0) + n
    w = agg.close("g", 0.0, ("s0",) * 64)
    assert w is not None
    for slot, est in w.hot.items():
        assert est.requests <= truth[slot] <= est.requests + est.err_requests
    for slot, n in truth.items():
        if slot not in w.hot:
            assert n <= w.floor[0]
    assert sum(w.shards["s0"][:1]) == sum(truth.values())
