"""The load generator (shardkit.traffic) as a library: workloads, the percentile, and the
threaded runner through the routing client and the edge runtime over a MockTransport."""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import shardkit
from shardkit.edge import CachePolicy, CacheRules, EdgeRuntime, Location, payload_field
from shardkit.errors import EdgePolicyError
from shardkit.protocol import Answer, ErrorReply, Redirect
from shardkit.routing import MockTransport, RetryPolicy, RoutingClient, TransportError
from shardkit.sharding.codec import encode_map
from shardkit.sharding.holder import MapHolder
from shardkit.sharding.shardmap import Shard
from shardkit.traffic import (
    EdgeTrafficReport,
    PathRow,
    TrafficReport,
    edge_runtime_for,
    edge_workload,
    percentile,
    run_edge_traffic,
    run_traffic,
    workload,
)

# -- workloads ----------------------------------------------------------------------------------


def test_a_workload_is_deterministic_and_numbers_each_keys_requests() -> None:
    assert workload(6, 3, seed=0) == [
        [
            ("eu:user-1", {"text": "the and answers which says", "seq": 1}),
            ("eu:user-1", {"text": "map request key answers owns", "seq": 2}),
            ("eu:user-1", {"text": "asks shard request", "seq": 3}),
            ("eu:user-1", {"text": "edge asks request owns and shard", "seq": 4}),
            ("eu:user-1", {"text": "shard map says map request when", "seq": 5}),
        ],
        [("user-2", {"text": "when map", "seq": 1})],
    ]
    work = workload(500, 20, seed=3)
    assert sum(map(len, work)) == 500
    assert {k for reqs in work for k, _ in reqs} <= {f"user-{i}" for i in range(0, 20, 2)} | {
        f"eu:user-{i}" for i in range(1, 20, 2)
    }
    for reqs in work:
        assert len({k for k, _ in reqs}) == 1  # one key per list, in order
        assert [p["seq"] for _, p in reqs] == list(range(1, len(reqs) + 1))
    assert workload(500, 20, seed=3) == work and workload(500, 20, seed=4) != work


def test_an_edge_workload_mixes_reads_and_numbered_writes() -> None:
    work = edge_workload(2000, 10, seed=1, reads=0.9)
    requests = [p for reqs in work for _, p in reqs]
    reads = [p for p in requests if p.get("learn") is False]
    assert len(requests) == 2000 and len(reads) == 1805  # about 0.9, exactly this for seed 1
    assert all(set(p) == {"text", "learn"} and " " not in p["text"] for p in reads)
    for reqs in work:
        seqs = [p["seq"] for _, p in reqs if "seq" in p]
        assert seqs == list(range(1, len(seqs) + 1))
    everything_read = edge_workload(50, 5, reads=1.0)
    assert all(p.get("learn") is False for reqs in everything_read for _, p in reqs)
    assert all("seq" in p for reqs in edge_workload(50, 5, reads=0.0) for _, p in reqs)
    with pytest.raises(ValueError, match=r"reads = 1\.5"):
        edge_workload(10, 2, reads=1.5)


# -- the percentile -----------------------------------------------------------------------------


def test_percentile_values() -> None:
    hundred = [float(i) for i in range(1, 101)]
    assert percentile(hundred, 50) == 50.5
    assert percentile(hundred, 99) == pytest.approx(99.01)
    assert percentile([4.0, 1.0, 3.0], 50) == 3.0  # unsorted input
    assert percentile([7.5], 99) == 7.5
    assert percentile([], 50) == 0.0
    for q in (0, 100):
        with pytest.raises(ValueError, match=f"q = {q}"):
            percentile(hundred, q)


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=200))
def test_the_50th_percentile_is_the_median_and_the_99th_within_the_range(
    values: list[float],
) -> None:
    assert percentile(values, 50) == pytest.approx(statistics.median(values))
    p99 = percentile(values, 99)  # interpolated: within the range, up to rounding
    assert min(values) <= p99 * (1 + 1e-9) and p99 <= max(values) * (1 + 1e-9)


# -- the runner, through the routing client -----------------------------------------------------


@pytest.fixture(scope="module")
def holder_factory(
    quickstart_like: Callable[..., dict[str, Any]],
    config_from: Callable[[dict[str, Any]], Any],
    signing_key: Any,
    trusted_keys: dict[str, bytes],
) -> Callable[[], MapHolder]:
    shard_map = shardkit.build_map(config_from(quickstart_like("traffictest")))
    envelope = encode_map(shard_map, signing_key.key_id, signing_key.sign)

    def make() -> MapHolder:
        holder = MapHolder(trusted_keys, lambda: envelope)
        holder.refresh()
        return holder

    return make


def answer(shard: Shard, request: dict[str, Any]) -> dict[str, Any]:
    """The shard's answer; a replica's to a failover request is degraded."""
    degraded = bool(request.get("failover"))
    epoch, seq = (0, 0) if degraded else (shard.epoch, 1)
    echo = {"echo": request["payload"]}
    return Answer(echo, shard.id, epoch, request["map_version"], seq, degraded=degraded).to_wire()


def client_over(
    holder: MapHolder, fn: Callable[[Shard, dict[str, Any]], Any], **options: Any
) -> RoutingClient:
    return RoutingClient(holder, MockTransport(fn), sleep=lambda s: None, **options)


def test_run_traffic_reports_every_request_per_shard_and_region(
    holder_factory: Callable[[], MapHolder],
) -> None:
    holder = holder_factory()
    seen: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()

    def fleet(shard: Shard, request: dict[str, Any]) -> dict[str, Any]:
        with lock:
            seen.append((request["key"], request["payload"]))
        return answer(shard, request)

    work = workload(300, 12, seed=2)
    report = run_traffic(client_over(holder, fleet), work, threads=3)
    assert isinstance(report, TrafficReport)
    assert (report.requests, report.errors, report.degraded, report.first_errors) == (
        300,
        0,
        0,
        [],
    )
    assert report.seconds > 0 and report.rps == pytest.approx(300 / report.seconds)
    shard_map = holder.require()
    expected: dict[str, int] = {}
    for reqs in work:
        owner = shard_map.route(reqs[0][0]).id
        expected[owner] = expected.get(owner, 0) + len(reqs)
    assert {k: r.requests for k, r in report.shards.items()} == expected
    assert list(report.shards) == sorted(expected)
    regions: dict[str, int] = {}
    for sid, n in expected.items():
        region = shard_map.shard(sid).region
        regions[region] = regions.get(region, 0) + n
    assert {k: r.requests for k, r in report.regions.items()} == regions
    for row in (*report.shards.values(), *report.regions.values()):
        assert (row.errors, row.redirects, row.degraded) == (0, 0, 0)
        assert 0 <= row.p50_ms <= row.p99_ms
    # Each key's requests arrived in order: its seq numbers rise.
    for key in {k for k, _ in seen}:
        seqs = [p["seq"] for k, p in seen if k == key]
        assert seqs == sorted(seqs)


def test_run_traffic_counts_errors_redirects_and_degraded_answers(
    holder_factory: Callable[[], MapHolder],
) -> None:
    holder = holder_factory()
    shard_map = holder.require()
    key_of = {reqs[0][0]: reqs for reqs in workload(200, 8, seed=5)}
    broken = shard_map.route("user-0").id  # answers every request with a 500
    down = shard_map.route("eu:user-1").id  # never answers: eu:user-1 fails over
    redirected: set[str] = set()
    lock = threading.Lock()

    def fleet(shard: Shard, request: dict[str, Any]) -> dict[str, Any]:
        if shard.id == broken:
            return ErrorReply(500, "handler_error", "the model broke").to_wire()
        if shard.id == down:
            raise TransportError(f"{shard.id} is down")
        with lock:
            first = request["key"] == "user-2" and request["key"] not in redirected
            redirected.add(request["key"])
        if first:  # once: the shard holds the same map version, the client retries the owner
            return Redirect(shard.id, request["map_version"]).to_wire()
        return answer(shard, request)

    policy = RetryPolicy(failures_to_avoid=1, budget_floor=1000.0, avoid_s=600.0)
    report = run_traffic(client_over(holder, fleet, retry=policy), list(key_of.values()))
    broken_requests = sum(len(r) for k, r in key_of.items() if shard_map.route(k).id == broken)
    assert broken_requests > 0
    assert report.errors == broken_requests == report.shards[broken].errors
    assert (
        report.first_errors == [f"shard {broken} answered 500 handler_error: the model broke"] * 5
    )
    assert report.shards[broken].p50_ms == 0.0  # no answered request to measure
    failed_over = sum(len(r) for k, r in key_of.items() if shard_map.route(k).id == down)
    assert report.degraded == failed_over > 0
    assert down not in report.shards  # its requests were answered by a replica, degraded
    assert sum(r.redirects for r in report.shards.values()) == 1
    assert report.requests == 200
    assert report.to_dict()["shards"][broken] == {
        "requests": broken_requests,
        "p50_ms": 0.0,
        "p99_ms": 0.0,
        "errors": broken_requests,
        "redirects": 0,
        "degraded": 0,
    }


def test_run_traffic_needs_a_thread(holder_factory: Callable[[], MapHolder]) -> None:
    with pytest.raises(ValueError, match="threads = 0"):
        run_traffic(client_over(holder_factory(), answer), workload(1, 1), threads=0)


# -- the runner, through the edge runtime ---------------------------------------------------------

READS_CACHED = CacheRules(
    [CachePolicy("*", ttl_s=600, cacheable=payload_field("learn", False), resident_only=())]
)


def test_run_edge_traffic_reports_the_share_of_every_path(
    holder_factory: Callable[[], MapHolder],
) -> None:
    holder = holder_factory()
    client = client_over(holder, answer)
    runtime = EdgeRuntime(client, location=Location("us-east-1", "us"), rules=READS_CACHED)
    work = edge_workload(400, 6, seed=7, reads=0.9)
    try:
        report = run_edge_traffic(runtime, work, threads=2)
    finally:
        runtime.close()
    assert isinstance(report, EdgeTrafficReport)
    assert (report.requests, report.errors) == (400, 0)
    assert list(report.paths) == ["local", "cache", "shard", "failover", "error"]
    assert sum(p.requests for p in report.paths.values()) == 400
    assert sum(p.share for p in report.paths.values()) == pytest.approx(1.0)
    writes = sum("seq" in p for reqs in work for _, p in reqs)
    assert report.paths["local"] == PathRow(0, 0.0, 0.0, 0.0)
    assert report.paths["cache"].requests > 0  # repeated reads of a key are hits
    assert report.paths["shard"].requests >= writes
    assert report.cache["hit"] == report.paths["cache"].requests
    assert report.cache["bypass"] == writes
    assert sum(report.cache.values()) == 400
    assert report.location == {"region": "us-east-1", "jurisdiction": "us"}
    assert report.to_dict()["paths"]["error"] == {
        "requests": 0,
        "share": 0.0,
        "p50_ms": 0.0,
        "p99_ms": 0.0,
    }


def test_edge_errors_are_rows_too(holder_factory: Callable[[], MapHolder]) -> None:
    def down(shard: Shard, request: dict[str, Any]) -> dict[str, Any]:
        raise TransportError("unreachable", retryable=False)

    runtime = EdgeRuntime(client_over(holder_factory(), down), location=Location("us-east-1", "us"))
    try:
        report = run_edge_traffic(runtime, workload(10, 2), threads=1)
    finally:
        runtime.close()
    assert (report.errors, report.paths["error"].requests) == (10, 10)
    assert len(report.first_errors) == 5 and "unreachable" in report.first_errors[0]


# -- an edge runtime for a project ----------------------------------------------------------------


@pytest.fixture
def edge_module(tmp_path: Path) -> Iterator[str]:
    name = f"trafficedge_{time.monotonic_ns()}"
    (tmp_path / f"{name}.py").write_text(
        "from shardkit.edge import CachePolicy, CacheRules\n"
        "class Everything:\n"
        "    def can_serve(self, request):\n"
        "        return 1.0\n"
        "    def predict(self, request):\n"
        "        return 'local'\n"
        "def local_model():\n"
        "    return Everything()\n"
        "def cache_rules():\n"
        "    return CacheRules([CachePolicy('*', ttl_s=1)])\n"
    )
    yield name
    sys.modules.pop(name, None)


def test_edge_runtime_for_loads_the_projects_hooks(
    holder_factory: Callable[[], MapHolder], tmp_path: Path, edge_module: str
) -> None:
    client = client_over(holder_factory(), answer)
    runtime = edge_runtime_for(client, tmp_path, region="eu-west-1", module=edge_module)
    try:
        assert (runtime.location.region, runtime.location.jurisdiction) == ("eu-west-1", "eu")
        assert runtime.infer("user-1", {"text": "x"}).path == "local"
        assert runtime.rules.policy_for("user-1").ttl_s == 1
    finally:
        runtime.close()
    assert str(tmp_path.resolve()) not in sys.path


def test_edge_runtime_for_without_hooks_and_with_a_bad_region(
    holder_factory: Callable[[], MapHolder], tmp_path: Path
) -> None:
    (tmp_path / "edge_module_without_hooks.py").write_text('"""No hooks: both are optional."""\n')
    client = client_over(holder_factory(), answer)
    runtime = edge_runtime_for(client, tmp_path, module="edge_module_without_hooks")
    try:
        first = next(iter(holder_factory().require().regions))
        assert runtime.location.region == first  # the map's first region
        assert (runtime.local, runtime.infer("user-1", {"text": "x"}).path) == (None, "shard")
    finally:
        runtime.close()
    with pytest.raises(EdgePolicyError, match="'mars-1' is not a region of the map"):
        edge_runtime_for(client_over(holder_factory(), answer), tmp_path, region="mars-1")
    with pytest.raises(EdgePolicyError, match="edge module 'no_such_edge_module' of "):
        edge_runtime_for(
            client_over(holder_factory(), answer), tmp_path, module="no_such_edge_module"
        )
