#!/usr/bin/env python
"""Benchmark the request path: the routing client, the local executor and the proxy's cold import.

Run from the repository root (with the project's venv active)::

    python bench/bench_proxy.py            # full run, ~6 min
    python bench/bench_proxy.py --quick    # smoke run, ~2 min

1. Client overhead per request, transport excluded: ``RoutingClient.infer`` over a
   ``MockTransport`` that returns a canned reply, against the plain boto3 path of one Lambda
   ``Invoke`` without the network (botocore's ``Stubber``, and a ``before-send`` handler that
   returns a canned HTTP response), all in this process, round-robin.
2. Local executor latency: the quickstart deployed onto the local cloud, then p50/p99 of the
   gateway's Invoke API through a boto3 Lambda client and of ``RoutingClient.infer`` end to end,
   warm, 1 thread and 4 threads; the cold start (first invoke of a fresh worker) separately.
3. Cold import of ``shardkit.proxy.handler`` with no cached bytecode at all, minus the
   interpreter's start-up measured the same way, and the top imports from ``-X importtime``.
4. The autoshard load accumulator on the request path: ``LoadAccumulator.add`` per request
   (uniform and skewed slots), against a no-op call with the same arguments and one dict
   increment; and the once-per-window summary of 16,384 touched slots into a load record.

``--only client|import|executor|accumulator`` runs one section.

The last section lists the targets with PASS/MISS. See bench/README.md for what every column
means. This is not part of the test suite and never fails on a MISS: it only reports.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore
from _common import (
    PY,
    REPO,
    SHARDKIT,
    Report,
    import_stats,
    loop_calls,
    med,
    no_gc,
    package_rows,
    parse_args,
    parse_importtime,
    pct,
    print_header,
    print_table,
    proc_cpu_s,
    proc_stat,
    signing_key,
    stat_cpu_s,
    top_import_rows,
    ver,
)
from botocore.awsrequest import AWSResponse
from botocore.response import StreamingBody
from botocore.stub import Stubber

import shardkit
from shardkit.deploy.client import client_for_project
from shardkit.local import server
from shardkit.protocol import Answer
from shardkit.proxy.load import LoadAccumulator, encode_record, summarize
from shardkit.routing import LambdaTransport, MockTransport, RoutingClient
from shardkit.sharding.codec import encode_map
from shardkit.sharding.holder import MapHolder

QUICKSTART = REPO / "examples" / "quickstart"
PAYLOAD = {"text": "the shard owns the"}
NOWHERE = "http://127.0.0.1:9"  # never contacted: the canned responses stop every call before
PROXY_MODULE = "shardkit.proxy.handler"
# The handler's own data-plane imports without Powertools: what is left if Powertools went lazy.
NO_POWERTOOLS = (
    "shardkit.protocol, shardkit.proxy.state, shardkit.sharding.holder, shardkit.sharding.hashing"
)


@dataclass(frozen=True)
class Params:
    quick: bool
    batch: int  # client-overhead calls per timed batch
    repeats: int  # client-overhead batches per case
    requests: int  # local executor: requests per case per thread count
    warmup: int  # local executor: warm-up requests per thread (4 threads)
    import_runs: int  # cold imports per case (>= 7)
    importtime_runs: int


FULL = Params(False, 2_000, 15, 2_000, 120, 15, 3)
QUICK = Params(True, 1_000, 5, 600, 40, 7, 1)


# -- output ---------------------------------------------------------------------------------------


def header(params: Params) -> None:
    header_lines = {
        "packages": f"shardkit {shardkit.__version__}, boto3 {ver('boto3')}, botocore "
        f"{botocore.__version__}, moto {ver('moto')}, aws-lambda-powertools "
        f"{ver('aws-lambda-powertools')}, msgpack {ver('msgpack')}",
        "settings": f"client overhead: {params.repeats} x {params.batch:,} calls per case; "
        f"executor: {params.requests:,} requests per case and thread count "
        f"(+ {params.warmup} warm-up per thread); cold import: {params.import_runs} "
        f"runs per case, importtime: {params.importtime_runs} runs",
    }
    print_header(
        "shardkit proxy / routing-client benchmark",
        params.quick,
        header_lines,
        load_label="load average at start",
    )


def mixed_keys(n: int, tag: str = "") -> list[str]:
    """Alternately 'eu:user:...' (the eu: rule -> eu) and 'user:...' (default -> us)."""
    return [("eu:" if i % 2 else "") + f"user:{tag}{i}" for i in range(n)]


# -- 1. client overhead ---------------------------------------------------------------------------


def quickstart_holder() -> MapHolder:
    """The quickstart's map, built and signed now, in a MapHolder (as the client holds it)."""
    config = shardkit.load_config(QUICKSTART / "shardkit.toml")
    key = signing_key()
    data = encode_map(shardkit.build_map(config), key.key_id, key.sign)
    holder = MapHolder({key.key_id: key.public_bytes}, lambda: data)
    holder.refresh()
    return holder


def canned_replies(holder: MapHolder) -> dict[str, dict[str, Any]]:
    m = holder.require()
    answer = {"next": "key", "confidence": 0.5, "source": "prior", "count": 1}
    return {s.id: Answer(answer, s.id, s.epoch, m.version, 1).to_wire() for s in m.shards}


def function_name(shard: Any) -> str:
    return f"shardkit-quickstart-{shard.id}"


def canned_lambda_client(bodies: dict[str, bytes], region: str = "us-east-1") -> Any:
    """A boto3 Lambda client whose every Invoke is answered by a before-send handler: the whole
    botocore pipeline (validate, serialise, endpoint, sign, retry bookkeeping, parse) runs, only
    the HTTP round trip is replaced by a canned response."""
    lam = server.session().client(
        "lambda", region_name=region, **server.boto3_client_kwargs(NOWHERE)
    )
    by_url: dict[str, bytes] = {}
    name = re.compile(r"/functions/([^/]+)/invocations")

    def before_send(request: Any, **_: Any) -> AWSResponse:
        body = by_url.get(request.url)
        if body is None:
            m = name.search(request.url)
            body = by_url[request.url] = bodies[m.group(1) if m else ""]
        return AWSResponse(
            request.url,
            200,
            {
                "X-Amz-Executed-Version": "1",
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
            },
            io.BytesIO(body),
        )

    lam.meta.events.register("before-send.lambda.Invoke", before_send)
    return lam


@dataclass
class Case:
    label: str
    run: Callable[[], Any]
    prepare: Callable[[], None] = lambda: None


def bench_client(p: Params, rep: Report) -> None:
    holder = quickstart_holder()
    m = holder.require()
    replies = canned_replies(holder)
    bodies_by_shard = {sid: json.dumps(r).encode() for sid, r in replies.items()}
    bodies_by_function = {f"shardkit-quickstart-{sid}": b for sid, b in bodies_by_shard.items()}
    keys = mixed_keys(p.batch)

    # (a) canned reply dict: routing, request building, retry/budget bookkeeping, the Result
    rc_dict = RoutingClient(holder, MockTransport(lambda shard, req: replies[shard.id]))

    # (b) as (a), plus the JSON encode of the request and decode of the reply that
    #     LambdaTransport does around boto3
    def json_roundtrip(shard: Any, request: dict[str, Any]) -> dict[str, Any]:
        json.dumps(request).encode()
        return json.loads(bodies_by_shard[shard.id])

    rc_json = RoutingClient(holder, MockTransport(json_roundtrip))

    # (c) the whole client stack sans network: RoutingClient -> LambdaTransport -> botocore
    clients: dict[str, Any] = {}

    def client_for(region: str) -> Any:
        if region not in clients:
            clients[region] = canned_lambda_client(bodies_by_function, region)
        return clients[region]

    rc_boto = RoutingClient(holder, LambdaTransport(function_name, client_for=client_for))

    # peers: one plain boto3 Invoke, the caller encoding its request and decoding the payload
    us0 = next(s for s in m.shards if s.id == "us-0")
    lam = canned_lambda_client(bodies_by_function, us0.region)

    def boto3_invoke(key: str) -> Any:
        req = {"key": key, "payload": PAYLOAD, "request_id": uuid.uuid4().hex}
        out = lam.invoke(
            FunctionName="shardkit-quickstart-us-0",
            Qualifier="live",
            Payload=json.dumps(req).encode(),
        )
        return json.loads(out["Payload"].read())

    stub_client = server.session().client(
        "lambda", region_name=us0.region, **server.boto3_client_kwargs(NOWHERE)
    )
    stubber = Stubber(stub_client)
    stubber.activate()
    body = bodies_by_shard["us-0"]

    def stub_prepare() -> None:
        for _ in range(p.batch):
            stubber.add_response(
                "invoke",
                {
                    "StatusCode": 200,
                    "ExecutedVersion": "1",
                    "Payload": StreamingBody(io.BytesIO(body), len(body)),
                },
            )

    def stub_invoke(key: str) -> Any:
        req = {"key": key, "payload": PAYLOAD, "request_id": uuid.uuid4().hex}
        out = stub_client.invoke(
            FunctionName="shardkit-quickstart-us-0",
            Qualifier="live",
            Payload=json.dumps(req).encode(),
        )
        return json.loads(out["Payload"].read())

    # correctness first: every path gives the owner's answer
    for key in keys[:200]:
        owner = m.route(key).id
        for rc in (rc_dict, rc_json, rc_boto):
            assert rc.infer(key, PAYLOAD).shard == owner
    assert boto3_invoke(keys[0])["shard"] == "us-0"

    def loop(f: Callable[[str], Any]) -> Callable[[], None]:
        return loop_calls(f, keys)

    def infer_of(rc: RoutingClient) -> Callable[[str], Any]:
        return lambda k: rc.infer(k, PAYLOAD)

    peer_label = "boto3 lambda.invoke + before-send canned response (json in/out)"
    cases = [
        Case("RoutingClient.infer, MockTransport -> canned reply dict", loop(infer_of(rc_dict))),
        Case(
            "RoutingClient.infer, MockTransport -> json.dumps(request), json.loads(reply)",
            loop(infer_of(rc_json)),
        ),
        Case(
            "RoutingClient.infer, LambdaTransport -> boto3 + before-send canned response",
            loop(infer_of(rc_boto)),
        ),
        Case(peer_label, loop(boto3_invoke)),
        Case(
            "boto3 lambda.invoke + botocore Stubber (json in/out)", loop(stub_invoke), stub_prepare
        ),
        Case("ShardMap.route(key) alone", loop(m.route)),
        Case("uuid.uuid4().hex alone (every infer() makes one)", loop(lambda k: uuid.uuid4().hex)),
    ]
    samples: dict[str, list[float]] = {c.label: [] for c in cases}
    for c in cases:  # warm-up
        c.prepare()
        c.run()
    with no_gc():
        for _ in range(p.repeats):
            for c in cases:
                c.prepare()
                t0 = time.perf_counter_ns()
                c.run()
                samples[c.label].append((time.perf_counter_ns() - t0) / p.batch / 1000)
    stubber.deactivate()
    medians = {label: med(v) for label, v in samples.items()}
    peer = medians[peer_label]
    rows = [
        [
            c.label,
            f"{medians[c.label]:,.2f}",
            f"{min(samples[c.label]):,.2f}",
            f"{medians[c.label] / peer:.2f}x",
        ]
        for c in cases
    ]
    print_table(
        f"1. Client overhead per request, no network ({p.repeats} repeats of {p.batch:,} calls, "
        "microseconds per request)",
        ["case", "median us", "min us", "this/boto3 invoke"],
        rows,
        notes=[
            "keys alternate 'eu:user:<i>' (eu) and 'user:<i>' (us) over the quickstart map "
            "(2 jurisdictions, 8 shards); payload {'text': 'the shard owns the'}",
            "MockTransport rows: route + request dict + request id + retry budget + Result; the "
            "json row adds the encode/decode LambdaTransport does around boto3",
            "boto3 rows: the caller builds and json-encodes its request and json-decodes the "
            "payload; before-send: botocore validates, serialises, resolves the endpoint, "
            "signs (SigV4) and parses a canned HTTP response; Stubber: validates and serialises "
            "only (it answers before signing, sending and parsing)",
            "this/boto3 invoke: the row's median divided by the before-send boto3 row's",
        ],
    )
    ours = medians[cases[1].label]
    print(
        f"\nclient overhead (route + encode + decode) = {ours:,.2f} us/request = "
        f"{ours / peer:.2f}x the plain boto3 Invoke call path ({peer:,.2f} us) and "
        f"{ours / medians[cases[4].label]:.2f}x the Stubber path"
    )
    rep.command("client overhead", "in-process (this script), no subprocess")


# -- 2. local executor ----------------------------------------------------------------------------


def workers(pid: int | None) -> dict[int, float]:
    """Live local Lambda workers (children of the local cloud process) and their CPU seconds."""
    found: dict[int, float] = {}
    if pid is None:
        return found
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = proc_stat(proc.name)
            if int(fields[1]) == pid and fields[0] != "Z":
                found[int(proc.name)] = stat_cpu_s(fields)
        except (OSError, ValueError, IndexError):
            continue
    return found


def worker_count(pid: int | None) -> int:
    return len(workers(pid))


@dataclass
class Cpu:
    """CPU seconds spent while a block ran: the local cloud process, its workers, this process."""

    server: float = 0.0
    workers: float = 0.0
    client: float = 0.0

    @staticmethod
    def measure(pid: int, fn: Callable[[], Block]) -> tuple[Block, Cpu]:
        s0, w0, c0 = proc_cpu_s(pid) or 0.0, workers(pid), time.process_time()
        block = fn()
        s1, w1, c1 = proc_cpu_s(pid) or 0.0, workers(pid), time.process_time()
        return block, Cpu(s1 - s0, sum(v - w0.get(k, 0.0) for k, v in w1.items()), c1 - c0)


@dataclass
class Block:
    latencies_ms: list[float]
    wall_s: float
    errors: int


def run_block(
    call: Callable[[str], bool], keys_per_thread: list[list[str]], per_thread: int
) -> Block:
    """``per_thread`` calls on each thread (one thread per key list); every call timed."""
    lat: list[list[float]] = [[] for _ in keys_per_thread]
    errors = [0] * len(keys_per_thread)
    start = threading.Barrier(len(keys_per_thread) + 1)

    def worker(t: int) -> None:
        keys = keys_per_thread[t]
        out = lat[t]
        start.wait()
        for j in range(per_thread):
            t0 = time.perf_counter()
            try:
                ok = call(keys[j % len(keys)])
            except Exception:
                ok = False
            out.append((time.perf_counter() - t0) * 1000)
            if not ok:
                errors[t] += 1

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(len(keys_per_thread))]
    for th in threads:
        th.start()
    start.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    return Block([x for part in lat for x in part], wall, sum(errors))


def deploy_quickstart(tmp: Path, rep: Report) -> tuple[Path, dict[str, Any], float]:
    project = tmp / "quickstart"
    shutil.copytree(
        QUICKSTART, project, ignore=shutil.ignore_patterns(".shardkit", "__pycache__", "*.pyc")
    )
    cmd = [SHARDKIT, "deploy", str(project), "--local", "--yes", "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, timeout=300, stdin=subprocess.DEVNULL
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"`{shlex.join(cmd)}` failed: {proc.stderr.strip()[-800:]}")
    out = json.loads(proc.stdout)
    assert out["changed"] is True
    rep.command("deploy the quickstart copy", shlex.join([*cmd[:2], "<tmp>/quickstart", *cmd[3:]]))
    return project, out["outputs"], wall


def bench_executor(p: Params, rep: Report, tmp: Path, live: list[Path]) -> None:
    project, outputs, deploy_s = deploy_quickstart(tmp, rep)
    live.append(project)
    status = server.status(project)
    gateway, pid = status["gateway"], status["pid"]
    functions = {sid: info["function"] for sid, info in outputs["shards"].items()}
    regions = sorted({info["region"] for info in outputs["shards"].values()})
    raw_clients = {
        r: server.session().client("lambda", region_name=r, **server.boto3_client_kwargs(gateway))
        for r in regions
    }
    rc = client_for_project(project)
    m = rc.holder.require()
    print(
        f"\nquickstart deployed onto the local cloud in {deploy_s:.1f} s (cold: includes the "
        f"cloud start); gateway {gateway}, map version {m.version}, {len(m.shards)} shards"
    )

    def raw_invoke(key: str) -> bool:
        shard = m.route(key)
        req = {
            "key": key,
            "payload": PAYLOAD,
            "map_version": m.version,
            "request_id": uuid.uuid4().hex,
        }
        out = raw_clients[shard.region].invoke(
            FunctionName=functions[shard.id], Qualifier="live", Payload=json.dumps(req).encode()
        )
        body = json.loads(out["Payload"].read())
        return not out.get("FunctionError") and body.get("status") == 200

    def client_infer(key: str) -> bool:
        return rc.infer(key, PAYLOAD).answer is not None

    # -- cold start: the first invoke of each shard starts its first worker
    owner_key: dict[str, str] = {}
    for key in mixed_keys(10_000, "cold-"):
        owner_key.setdefault(m.route(key).id, key)
        if len(owner_key) == len(m.shards):
            break
    cold_rows, firsts, seconds = [], [], []
    for i, shard in enumerate(m.shards):
        key = owner_key[shard.id]
        t0 = time.perf_counter()
        ok1 = raw_invoke(key)
        first = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        ok2 = raw_invoke(key)
        second = (time.perf_counter() - t0) * 1000
        firsts.append(first)
        seconds.append(second)
        cold_rows.append(
            [
                shard.id,
                shard.region,
                f"{first:,.0f}",
                f"{second:,.1f}",
                "ok" if ok1 and ok2 else "ERROR",
                "includes fetching + unpacking the code package" if i == 0 else "",
            ]
        )
    cold_rows.append(["median", "", f"{med(firsts):,.0f}", f"{med(seconds):,.1f}", "", ""])
    print_table(
        "2a. Cold start: first invoke of each shard's first worker (gateway Invoke API, boto3)",
        ["shard", "region", "first invoke ms", "second invoke ms", "result", "note"],
        cold_rows,
        notes=[
            "first invoke: a new worker process starts, imports the handler "
            "(shardkit.proxy.handler + the app), builds the proxy from its environment (boto3 "
            "clients, map fetch + verify from S3) and serves the request; second: the same "
            "key again, on the now warm worker"
        ],
    )

    # -- pre-spawn: `threads` concurrent invokes per shard start as many workers as the 4-thread
    #    runs can use (a shard's pool grows while all its workers are busy, up to its reserved
    #    concurrency), so no cold start lands inside the measurement
    threads = 4
    spawn_keys: dict[str, list[str]] = {s.id: [] for s in m.shards}
    for key in mixed_keys(50_000, "spawn-"):
        owned = spawn_keys[m.route(key).id]
        if len(owned) < threads:
            owned.append(key)
    t0 = time.perf_counter()
    for shard in m.shards:
        run_block(raw_invoke, [[k] for k in spawn_keys[shard.id]], 2)
    spawn_s = time.perf_counter() - t0
    workers_spawned = worker_count(pid)

    # -- warm-up with 4 threads, both paths
    per_thread_keys = {n: [mixed_keys(256, f"t{t}-") for t in range(n)] for n in (1, threads)}
    for call in (raw_invoke, client_infer):
        run_block(call, per_thread_keys[threads], p.warmup)
    workers_before = worker_count(pid)

    # -- measured: blocks alternate the two paths, so drift hits both alike
    cases = [
        ("gateway Invoke API via boto3 lambda client", raw_invoke),
        ("RoutingClient.infer (client_for_project), end to end", client_infer),
    ]
    blocks = 4
    results: dict[tuple[str, int], list[Block]] = {}
    cpu: dict[tuple[str, int], list[Cpu]] = {}
    for n in (1, threads):
        per_block = max(1, p.requests // blocks // n)
        for _ in range(blocks):
            for label, call in cases:
                block, used = Cpu.measure(
                    pid,
                    lambda call=call, n=n, per_block=per_block: run_block(
                        call, per_thread_keys[n], per_block
                    ),
                )
                results.setdefault((label, n), []).append(block)
                cpu.setdefault((label, n), []).append(used)
    workers_after = worker_count(pid)

    rows = []
    p50: dict[tuple[str, int], float] = {}
    for n in (1, threads):
        for label, _ in cases:
            bl = results[label, n]
            lat = sorted(x for b in bl for x in b.latencies_ms)
            p50[label, n] = pct(lat, 0.50)
            rate = len(lat) / sum(b.wall_s for b in bl)
            used = cpu[label, n]

            def per_req(total: float, count: int = len(lat)) -> str:
                return f"{1000 * total / count:,.1f}"

            rows.append(
                [
                    label,
                    str(n),
                    f"{len(lat):,}",
                    f"{pct(lat, 0.50):,.2f}",
                    f"{pct(lat, 0.90):,.2f}",
                    f"{pct(lat, 0.99):,.2f}",
                    f"{lat[-1]:,.1f}",
                    f"{statistics.fmean(lat):,.2f}",
                    f"{rate:,.0f}",
                    str(sum(b.errors for b in bl)),
                    f"{p50[label, n] / p50[cases[0][0], n]:.2f}x",
                    per_req(sum(u.server for u in used)),
                    per_req(sum(u.workers for u in used)),
                    per_req(sum(u.client for u in used)),
                ]
            )
    print_table(
        f"2b. Local executor, warm: latency per request (ms) and throughput, "
        f"{p.requests:,} requests per row",
        [
            "case",
            "threads",
            "requests",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "mean ms",
            "req/s",
            "errors",
            "p50/boto3",
            "server CPU ms/req",
            "workers CPU ms/req",
            "client CPU ms/req",
        ],
        rows,
        notes=[
            "every request: gateway (HTTP on 127.0.0.1) -> local executor -> warm worker -> "
            "proxy handler: route, DynamoDB state read (LRU-cached) and fenced write "
            "(TransactWriteItems on moto), the quickstart model, EMF metrics; a 200 answer",
            "boto3 row: the caller routes with the same map and invokes the owner's 'live' "
            "alias itself; RoutingClient row: client_for_project(DIR).infer(key, payload), its "
            "LambdaTransport on the same gateway",
            f"keys: 256 per thread, distinct per thread, half 'eu:' (no two threads write "
            f"the same key); 4 blocks per row, alternating the two cases; "
            f"{threads}-thread warm-up of {p.warmup} requests per thread and case before",
            f"workers (children of the local cloud): {workers_spawned} after starting "
            f"{threads} per shard ({spawn_s:.1f} s), {workers_before} after the warm-up, "
            f"{workers_after} at the end (a change means cold starts inside the measurement)",
            "p50/boto3: this row's p50 divided by the boto3 row's with the same thread count",
            "CPU ms/req: user+sys per request of the local cloud process (moto, gateway, "
            "executor, log forwarding: one Python process, one GIL), of all its workers, and "
            "of this process (the caller); server CPU ms/req x req/s close to 1000 means the "
            "local cloud process is saturated and more threads only queue",
        ],
    )
    rep.command(
        "executor latency",
        "in-process: boto3 client from shardkit.local.server."
        "session() on the gateway, and shardkit.deploy.client.client_for_project(DIR)",
    )


# -- 3. cold import -------------------------------------------------------------------------------


def wall(cmd: Sequence[str], env: dict[str, str], cwd: Path) -> tuple[float, str, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        list(cmd),
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"`{shlex.join(cmd)}` failed: {proc.stderr.strip()[-800:]}")
    return elapsed, proc.stdout, proc.stderr


def bench_import(p: Params, rep: Report, tmp: Path) -> None:
    src = tmp / "src"
    shutil.copytree(
        REPO / "shardkit", src / "shardkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    empty = tmp / "empty-pycache"
    empty.mkdir()
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONPYCACHEPREFIX")}
    no_bytecode = {**base, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(empty)}
    site_pyc = {**base, "PYTHONDONTWRITEBYTECODE": "1"}

    # where the import comes from, and what it pulls in
    probe = (
        "import json, sys; import shardkit.proxy.handler as h; print(json.dumps([h.__file__, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', "
        "'s3transfer'))]))"
    )
    _, out, _ = wall([PY, "-c", probe], no_bytecode, src)
    file, boto_modules = json.loads(out)
    assert file.startswith(str(src)), f"imported {file}, not the copy in {src}"
    boto3_modules = [m for m in boto_modules if m.split(".")[0] == "boto3"]

    cases = [
        ("python -c pass", "none", "pass", no_bytecode),
        (f"import {PROXY_MODULE}", "none", f"import {PROXY_MODULE}", no_bytecode),
        (
            "import aws_lambda_powertools.logging, .metrics",
            "none",
            "import aws_lambda_powertools.logging, aws_lambda_powertools.metrics",
            no_bytecode,
        ),
        (
            "import shardkit.proxy.{protocol,state}, shardkit.sharding.{holder,hashing}",
            "none",
            f"import {NO_POWERTOOLS}",
            no_bytecode,
        ),
        ("python -c pass", "3rd-party", "pass", site_pyc),
        (f"import {PROXY_MODULE}", "3rd-party", f"import {PROXY_MODULE}", site_pyc),
    ]
    samples: dict[int, list[float]] = {i: [] for i in range(len(cases))}
    for _, _, code, env in cases:
        wall([PY, "-c", code], env, src)  # warm-up: the file system cache, not bytecode
    for _ in range(p.import_runs):
        for i, (_, _, code, env) in enumerate(cases):
            samples[i].append(wall([PY, "-c", code], env, src)[0] * 1000)
    leftovers = sum(1 for _ in empty.rglob("*"))
    assert leftovers == 0, f"{leftovers} files appeared in the empty pycache prefix"
    floors = {"none": med(samples[0]), "3rd-party": med(samples[4])}
    rows = []
    for i, (label, cache, _, _) in enumerate(cases):
        raw = med(samples[i])
        net = raw - floors[cache] if "pass" not in label else None
        net_min = min(samples[i]) - min(samples[0 if cache == "none" else 4])
        rows.append(
            [
                label,
                cache,
                str(len(samples[i])),
                f"{raw:,.0f}",
                f"{min(samples[i]):,.0f}",
                f"{net:,.0f}" if net is not None else "(floor)",
                f"{net_min:,.0f}" if net is not None else "(floor)",
            ]
        )
    print_table(
        f"3. Cold import, wall clock of `python -c ...` in a subprocess ({p.import_runs} runs "
        "per case, round-robin), ms",
        ["case", "bytecode", "runs", "median raw ms", "min raw ms", "net ms", "net of mins ms"],
        rows,
        notes=[
            "shardkit is a copy without __pycache__ in a temp dir (the working directory, so "
            "it is the one imported); PYTHONDONTWRITEBYTECODE=1 always",
            "bytecode none: PYTHONPYCACHEPREFIX points to an empty dir that stays empty, so no "
            "module at all (stdlib, site-packages, shardkit) uses cached bytecode; "
            "3rd-party: no prefix, so the installed packages' .pyc are used and only shardkit "
            "is compiled (as in a Lambda package that ships dependencies with .pyc)",
            "net = median raw minus the median of `python -c pass` with the same bytecode "
            "setting (the target uses it); net of mins = fastest run minus fastest floor, "
            "steadier on a busy machine; the protocol/state/holder/hashing row is the handler's own data plane "
            "without Powertools (what the import would cost if Powertools were imported "
            "lazily)",
            f"after `import {PROXY_MODULE}`: boto3 modules loaded: {len(boto3_modules)}; "
            f"botocore modules loaded: "
            f"{', '.join(m for m in boto_modules if m not in boto3_modules) or 'none'}",
        ],
    )
    handler_net = med(samples[1]) - floors["none"]
    rep.target(
        f"cold import {PROXY_MODULE}, no bytecode, net of `python -c pass`",
        handler_net,
        150,
        ",.0f",
        "ms",
    )
    rep.target(f"boto3 modules imported by `import {PROXY_MODULE}`", len(boto3_modules), 0, "d", "")
    env_text = f"cd <tmp>/src && PYTHONDONTWRITEBYTECODE=1 PYTHONPYCACHEPREFIX=<empty dir> {PY}"
    rep.command("cold import", f"{env_text} -c 'import {PROXY_MODULE}'   (floor: -c pass)")

    # -- importtime
    runs, floor = [], []
    for _ in range(p.importtime_runs):
        runs.append(
            parse_importtime(
                wall([PY, "-X", "importtime", "-c", f"import {PROXY_MODULE}"], no_bytecode, src)[2]
            )
        )
        floor.append(
            parse_importtime(wall([PY, "-X", "importtime", "-c", "pass"], no_bytecode, src)[2])
        )
    st = import_stats(runs, floor)
    print_table(
        f"3b. -X importtime of `import {PROXY_MODULE}`, no bytecode: top 10 imports by "
        f"cumulative time (median of {len(runs)} runs)",
        ["module (indent = import depth)", "imported by", "self ms", "cumulative ms", "% of total"],
        top_import_rows(st, 10, st.total),
        notes=[
            f"{len(st.mine)} modules beyond the interpreter's start-up; their self times add "
            f"up to {st.total:,.0f} ms (importtime's own overhead included; the modules of "
            "`python -c pass` are left out)",
            "% of total: cumulative time relative to that sum; -X importtime adds its own "
            "overhead, so compare shares here and absolute times in section 3",
        ],
    )
    print_table(
        f"3c. -X importtime of `import {PROXY_MODULE}`, no bytecode: self time by top-level "
        "package",
        ["package", "modules", "self ms", "share"],
        package_rows(st),
    )
    rep.command("importtime", f"{env_text} -X importtime -c 'import {PROXY_MODULE}'")


# -- 4. load accumulator --------------------------------------------------------------------------


def bench_accumulator(p: Params, rep: Report) -> None:
    slot_bits = 14
    n = p.batch * 10
    rng = random.Random(11)
    uniform = [rng.randrange(1 << slot_bits) for _ in range(n)]
    # Zipf-like: a few slots take most requests (the dicts stay small, the common case of a
    # shard that owns 1/N of the slots sees fewer distinct slots still)
    skewed = [min(int(rng.paretovariate(1.1)) - 1, (1 << slot_bits) - 1) for _ in range(n)]
    times = [1_700_000_000.0 + i * 1e-4 for i in range(n)]  # all in one 10 s window
    ms = [20.0] * n

    def run_add(slots: list[int]) -> Callable[[], None]:
        def run() -> None:
            acc = LoadAccumulator("bench", window_s=10.0)
            add = acc.add
            for slot, t, c in zip(slots, times, ms, strict=True):
                add("eu-0", "eu", slot, c, t)

        return run

    def noop(shard: str, group: str, slot: int, compute_ms: float, now: float) -> None:
        pass

    def run_noop() -> None:
        for slot, t, c in zip(uniform, times, ms, strict=True):
            noop("eu-0", "eu", slot, c, t)

    def run_dict() -> None:
        d: dict[int, int] = {}
        for slot in uniform:
            d[slot] = d.get(slot, 0) + 1

    def run_proxy_path() -> None:
        """What Proxy.handle adds per served request (it measured the latency anyway): the
        map version, one time.time() for the window, add, and the check for a closed window."""
        acc = LoadAccumulator("bench", window_s=10.0)
        add, wall = acc.add, time.time
        for slot, c in zip(uniform, ms, strict=True):
            acc.map_version = 1
            add("eu-0", "eu", slot, c, wall())
            if acc.closed:
                acc.take()

    cases = [
        ("LoadAccumulator.add, uniform over 16,384 slots", run_add(uniform)),
        ("in the proxy: add + time.time() + closed-window check", run_proxy_path),
        ("LoadAccumulator.add, skewed (Pareto 1.1) slots", run_add(skewed)),
        ("peer: a no-op function with the same 5 arguments", run_noop),
        ("peer: one dict increment per request (d[s] = d.get(s, 0) + 1)", run_dict),
    ]
    samples: dict[str, list[float]] = {label: [] for label, _ in cases}
    for _, fn in cases:
        fn()
    with no_gc():
        for _ in range(p.repeats):
            for label, fn in cases:
                t0 = time.perf_counter_ns()
                fn()
                samples[label].append((time.perf_counter_ns() - t0) / n / 1000)
    # the once-per-window cost: every slot of a 16,384-slot group touched, one record
    counts = {
        ("eu-0", "eu"): (
            {s: 1 + s % 97 for s in range(1 << slot_bits)},
            {s: 20.0 * (1 + s % 97) for s in range(1 << slot_bits)},
        )
    }
    summary_ms = []
    for _ in range(max(3, p.repeats // 3)):
        t0 = time.perf_counter_ns()
        record = summarize("bench", 0.0, 10.0, 1, counts, 32)
        summary_ms.append((time.perf_counter_ns() - t0) / 1e6)
    size = len(encode_record(record))
    rows = [[label, f"{med(v):.3f}", f"{min(v):.3f}"] for label, v in samples.items()]
    rows.append(
        [
            f"summarize 16,384 touched slots into one record ({size:,} bytes)",
            f"{med(summary_ms) * 1000:,.0f}",
            f"{min(summary_ms) * 1000:,.0f}",
        ]
    )
    print_table(
        f"4. Load accumulator on the request path ({p.repeats} repeats of {n:,} requests, "
        "microseconds per request; the last row is per window)",
        ["case", "median us", "min us"],
        rows,
        notes=[
            "add(shard, group, slot, compute_ms, now): window check, one dict lookup, two list "
            "increments; the caller passes the time it already read, so there is no clock call",
            "the no-op row is the floor of any Python call with these arguments",
            "summarize: once per window per instance, off the request path (a timer or the "
            "first request of the next window)",
        ],
    )
    add_us = med(samples[cases[0][0]])
    rep.target("LoadAccumulator.add per request (uniform slots)", add_us, 1.0, ".3f", "us")
    path_us = med(samples[cases[1][0]])
    rep.target("load signal per request in the proxy (add + time.time)", path_us, 1.0, ".3f", "us")
    rep.command("load accumulator", "python bench/bench_proxy.py --only accumulator")


# -- main -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(
        __doc__,
        argv,
        "fewer repeats and requests (~2 min)",
        sections=("client", "import", "executor", "accumulator"),
    )
    p = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    header(p)
    rep = Report()
    tmp = Path(tempfile.mkdtemp(prefix="shardkit-bench-proxy-"))
    live: list[Path] = []  # projects whose local cloud may be up: always brought down
    only = args.only
    try:
        if only in (None, "client"):
            bench_client(p, rep)
        if only in (None, "accumulator"):
            bench_accumulator(p, rep)
        if only in (None, "import"):
            bench_import(p, rep, tmp)
        if only in (None, "executor"):
            bench_executor(p, rep, tmp, live)
    finally:
        for project in live:
            subprocess.run(
                [SHARDKIT, "local", "down", str(project), "--no-save"],
                capture_output=True,
                check=False,
                timeout=120,
            )
        shutil.rmtree(tmp, ignore_errors=True)

    rep.finish(t_start, "Commands:", load_at_end=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
