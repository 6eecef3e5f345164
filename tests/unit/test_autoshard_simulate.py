"""The simulator's parts: workloads (synthetic and recorded), the queueing and cost model, and
whole runs (same seed, same result; residency and churn checked on every window)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import shardkit
from shardkit.autoshard import Policy
from shardkit.autoshard.model import Model, ShardWindow, erlang_c, mmc_p99_ms
from shardkit.autoshard.simulate import SimResult, flaps, simulate
from shardkit.autoshard.workload import parse_workload, read_trace
from shardkit.errors import WorkloadError
from shardkit.proxy.load import LoadAccumulator, encode_record

T0 = 1_700_000_000


@pytest.fixture(scope="module")
def small_map() -> shardkit.ShardMap:
    config = shardkit.ProjectConfig.model_validate(
        {
            "project": {"name": "sim"},
            "hashing": {"slot_bits": 8},
            "signing": {"key_id": "k"},
            "regions": {"eu-west-1": {"jurisdiction": "eu"}, "us-east-1": {"jurisdiction": "us"}},
            "residency": {"default": "eu", "rules": [{"prefix": "us:", "jurisdiction": "us"}]},
            "groups": {
                "eu": {"jurisdiction": "eu", "regions": ["eu-west-1"], "shards": 4},
                "us": {"jurisdiction": "us", "regions": ["us-east-1"], "shards": 1},
            },
        }
    )
    return shardkit.build_map(config, now=T0)


POLICY = Policy(group="eu", regions=("eu-west-1",), target_rps=100.0, max_shards=12)


# -- the model ------------------------------------------------------------------------------------


def test_erlang_c_and_the_mmc_p99_match_hand_computed_values() -> None:
    # c=1 is M/M/1: P(wait) = rho.
    assert erlang_c(1, 0.5) == pytest.approx(0.5)
    # c=2, a=1: C = 1/3 (textbook value).
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    # M/M/1, lambda 50/s, mu 100/s, 10 ms service: P(W > t) = 0.5 exp(-50 t) -> t99 = ln(50)/50.
    assert mmc_p99_ms(1, 50.0, 100.0, 10.0) == pytest.approx(10.0 + math.log(50) / 50 * 1000)
    # A queue that rarely waits (C <= 1%) has a p99 of its service time.
    assert mmc_p99_ms(8, 1.0, 100.0, 10.0) == 10.0


def test_a_saturated_shard_counts_the_excess_and_times_out() -> None:
    model = Model(concurrency=2, timeout_s=30)
    w = ShardWindow.of(model, 3000, 3000 * 10.0, 10.0)  # 300/s against 2 x 100/s
    assert (w.over_capacity, w.p99_ms) == (1000.0, 30_000.0)
    assert ShardWindow.of(model, 0, 0, 10.0).requests == 0


def test_costs_add_up_from_list_prices() -> None:
    model = Model(memory_mb=1024)
    # 1M requests of 100 ms at 1 GB: $0.20 + 100,000 GB-s x $0.0000166667
    assert model.lambda_cost(1e6, 1e8, 0) == pytest.approx(0.20 + 1e5 * 0.0000166667)
    # plus one cold start of 800 ms at 1 GB
    assert model.lambda_cost(0, 0, 1) == pytest.approx(0.8 * 0.0000166667)
    # 1M requests: 0.1M reads, 4M write units; 10 cold reads; 5 migrated keys (read + write)
    expected = (0.1e6 + 10 + 5) * 0.125e-6 + (4e6 + 5) * 0.625e-6
    assert model.dynamodb_cost(1e6, 10, 5) == pytest.approx(expected)


# -- workloads ------------------------------------------------------------------------------------


def test_synthetic_workloads_follow_their_parameters() -> None:
    rng = np.random.default_rng(1)
    square = parse_workload("square:rps=1000,period=100,low=1,high=3,keys=5000", 8)
    assert [square.rate(t) for t in (10, 60, 110)] == [1000.0, 3000.0, 1000.0]
    burst = parse_workload("burst:burst_at=50,burst_for=20,burst_x=4,keys=5000", 8)
    assert [burst.rate(t) for t in (49, 50, 69, 70)] == [2000.0, 8000.0, 8000.0, 2000.0]
    diurnal = parse_workload("diurnal:period=100,low=0.5,high=1.5,keys=5000", 8)
    assert diurnal.rate(0) == pytest.approx(1000.0) and diurnal.rate(50) == pytest.approx(3000.0)
    tenant = parse_workload("hot-tenant:hot_at=100,hot_share=0.5,keys=5000", 8)
    before, after = tenant.weights(50), tenant.weights(150)
    assert before.sum() == pytest.approx(1) and after.max() >= 0.5
    zipf = parse_workload("zipf:keys=10000,s=1.1", 8)
    assert zipf.weights(0).max() > 10 * (1 / 256)  # the top key alone carries ~1/8 of it
    requests, ms = square.window(0, 10.0, rng)
    assert requests.shape == (256,) and ms.sum() == pytest.approx(requests.sum() * 20.0)
    assert square.describe() == "square:keys=5000,rps=1000,period=100,high=3"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown workload 'nope'"),
        ("zipf:s", "workload parameter 's': expected key=value"),
        ("zipf:q=1", "workload parameter 'q=1': expected key=value"),
        ("zipf:s=x", "workload parameter s = 'x': must be a number"),
        ("zipf:keys=1.5", "workload parameter keys = '1.5': must be a whole number"),
        ("zipf:s=0", r"workload parameter s = 0: must be in \(0, 5\]"),
        ("uniform:shape=cube", "workload parameter shape = cube: must be uniform or zipf"),
        ("uniform:hot_share=2", "workload parameter hot_share = 2: must be 0..1"),
    ],
)
def test_a_bad_workload_spec_names_the_parameter(spec: str, message: str) -> None:
    with pytest.raises(WorkloadError, match=message):
        parse_workload(spec, 8)


def test_a_jsonl_trace_is_bucketed_by_window_and_routed_by_residency(
    tmp_path: Path, small_map: shardkit.ShardMap
) -> None:
    lines = [
        {"t": 100.0, "key": "alice"},
        {"t": 104.0, "key": "alice", "n": 3, "ms": 30.0},
        {"t": 112.0, "key": "bob", "jurisdiction": "eu"},
        {"t": 113.0, "key": "us:carol"},  # another group's key
    ]
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    trace = read_trace(path, "jsonl", small_map, "eu", 10.0)
    assert trace.duration_s == 20.0 and trace.skipped == 1
    (r0, m0), (r1, _) = trace.windows
    alice, bob = small_map.slot("alice"), small_map.slot("bob")
    assert (r0[alice], m0[alice], r0.sum()) == (4.0, 50.0, 4.0)  # 1 x 20 ms default + 30 ms
    assert (r1[bob], r1.sum()) == (1.0, 1.0)


def test_an_edge_trace_counts_only_the_requests_that_reached_a_shard(
    tmp_path: Path, small_map: shardkit.ShardMap
) -> None:
    records = [
        {"key": "a", "path": "cache", "cache": "hit", "latency_s": 0.001},
        {"key": "b", "path": "shard", "cache": "miss", "latency_s": 0.040},
        {"key": "c", "path": "failover", "cache": "bypass", "latency_s": 0.050},
        {"key": "d", "path": "local", "cache": "bypass", "latency_s": 0.0},
    ]
    path = tmp_path / "edge.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in records))
    trace = read_trace(path, "edge", small_map, "eu", 10.0, rate=1.0)  # lines 1 s apart
    ((requests, ms),) = trace.windows
    assert requests.sum() == 2 and ms.sum() == pytest.approx(90.0)


def test_a_load_record_trace_replays_its_windows(tmp_path: Path, small_map) -> None:
    acc = LoadAccumulator("i-1", window_s=10, top_k=4)
    owner = small_map.route("alice")
    slot = small_map.slot("alice")
    for k in range(50):
        acc.add(owner.id, "eu", slot, 20.0, 1000.0 + k * 0.1)
    acc.add(owner.id, "eu", slot, 20.0, 1025.0)  # the window after next
    acc.flush(1040.0)
    path = tmp_path / "loads.msgpack"
    path.write_bytes(b"".join(encode_record(r) for r in acc.take()))
    trace = read_trace(path, "records", small_map, "eu", 10.0)
    assert len(trace.windows) == 3  # 1000, (1010 empty), 1020
    assert trace.windows[0][0][slot] == pytest.approx(50.0)
    assert trace.windows[1][0].sum() == 0 and trace.windows[2][0][slot] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("fmt", "text", "message"),
    [
        ("jsonl", "{bad", "trace.x:1: not JSON"),
        ("jsonl", "[1]", "each line must be a JSON object"),
        ("jsonl", '{"t": 1}', "line 1: key = None: must be a non-empty string"),
        ("jsonl", '{"key": "a"}', "line 1: t = None: must be a number"),
        ("jsonl", '{"key": "a", "t": 0, "n": -1}', "line 1: n = -1: must be a number >= 0"),
        ("jsonl", '{"key": "us:a", "t": 0}', "no request of group 'eu'"),
        ("edge", '{"key": "a"}', "line 1: not an edge decision record"),
        ("records", "xx", "trace.x: record 0:"),
        ("yaml", "", "trace format 'yaml': must be one of jsonl, edge, records"),
    ],
)
def test_a_bad_trace_is_refused_with_its_line(tmp_path, small_map, fmt, text, message) -> None:
    path = tmp_path / "trace.x"
    path.write_text(text)
    with pytest.raises(WorkloadError, match=message):
        read_trace(path, fmt, small_map, "eu", 10.0)
    with pytest.raises(WorkloadError, match="cannot read the trace"):
        read_trace(tmp_path / "missing", "jsonl", small_map, "eu", 10.0)


# -- whole runs -----------------------------------------------------------------------------------


def run(small_map: shardkit.ShardMap, spec: str, seed: int, decider: str = "shardkit") -> SimResult:
    workload = parse_workload(spec, small_map.slot_bits)
    return simulate(small_map, POLICY, workload, duration_s=600, seed=seed, decider=decider)


def test_same_seed_same_result_and_another_seed_differs(small_map) -> None:
    spec = "burst:rps=300,burst_at=200,burst_for=200,burst_x=3,keys=20000"
    a, b = run(small_map, spec, 5), run(small_map, spec, 5)
    assert a.to_dict() == b.to_dict()
    assert run(small_map, spec, 6).to_dict()["rows"] != a.to_dict()["rows"]


def test_a_burst_is_split_within_a_minute_and_every_window_is_accounted(small_map) -> None:
    r = run(small_map, "burst:rps=300,burst_at=200,burst_for=300,burst_x=3,keys=20000", 1)
    assert len(r.rows) == 60 and r.rows[0].shards == 4
    first = next(d.at for d in r.decisions if "split" in d.actions)
    assert 200 < first <= 260
    assert max(x.shards for x in r.rows) > 4
    s = r.summary()
    assert s["violations"] == 0 and s["moved_share_max"] <= 0.09
    assert s["cold_starts"] == 4 * (max(x.shards for x in r.rows) - 4)  # 4 workers per new shard
    assert s["cost_usd"] > 0 and s["splits"] >= 1


def test_a_policy_that_places_a_shard_outside_the_regions_is_refused(small_map) -> None:
    roaming = Policy(group="eu", regions=("us-east-1",), target_rps=100.0)
    workload = parse_workload("uniform:rps=1000,keys=20000", 8)
    r = simulate(small_map, roaming, workload, duration_s=60, seed=1)
    assert r.summary()["violations"] > 0  # counted, and the change is not applied
    assert all(row.shards == 4 for row in r.rows)


def test_flaps_count_reversals_within_the_horizon() -> None:
    from shardkit.autoshard.simulate import Row

    def row(t: float, shards: int) -> Row:
        return Row(t, shards, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0.0, 0, "")

    r = SimResult("x", "w", "g", 256, 10.0)
    r.rows = [row(0, 4), row(10, 5), row(20, 4), row(400, 5), row(410, 5), row(420, 6)]
    assert flaps(r) == 1  # 5 -> 4 ten seconds after 4 -> 5; 4 -> 5 at 400 s is a new trend
