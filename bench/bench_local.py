#!/usr/bin/env python
"""Benchmark the local cloud: a full inference request against one bare moto PutItem, same run.

Run from the repository root (with the project's venv active)::

    python bench/bench_local.py            # full run, ~10 min on 2 busy cores
    python bench/bench_local.py --quick    # smoke run, ~3 min

    # the same script against another checkout (e.g. main, for "before" numbers):
    PYTHONPATH=/work/main python bench/bench_local.py --quick

1. **Plain moto**: ``moto.server.ThreadedMotoServer`` in its own process, one boto3 ``PutItem``
   per request: p50 with one client thread, requests/s with 4 threads, server CPU per request.
2. **shardkit's local cloud**: a one-region project with the quickstart's model deployed with
   ``shardkit deploy --local``; ``RoutingClient.infer`` end to end (route, state read, fenced
   write, answer, metrics): p50/p99 with one thread, requests/s with 1 and 4 threads, and the
   local cloud's CPU per request; the first request after the deploy; a worker's cold start
   (its processes killed, then one request).
3. **Table size**: the local cloud's CPU per request with 100, 10k and 100k other items in the
   state table (filled with ``BatchWriteItem``).
4. **Dev loop** (only where ``shardkit dev`` exists): a save of the model's source to the first
   answer from the new code, through ``shardkit dev``.

Every number is the median of several rounds; the machine is shared, so the header and the end
print the load average. It never fails on a MISS: it only reports.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    PY,
    REPO,
    Report,
    load_average,
    med,
    parse_args,
    pct,
    print_header,
    print_table,
    proc_cpu_s,
    ver,
)

import shardkit
from shardkit.local import server

try:
    from shardkit.deploy.client import client_for_project
except ImportError:  # a checkout from before it moved there
    from shardkit.routing.project import client_for_project  # type: ignore[no-redef]

CODE = Path(shardkit.__file__).resolve().parents[1]  # the checkout under test
QUICKSTART_APP = REPO / "examples" / "quickstart" / "app"
PAYLOAD = {"text": "the shard owns the"}
PROJECT = """\
[project]
name = "benchlocal"
target = "local"

[hashing]
slot_bits = 10

[signing]
key_id = "bench-dev"
keys_dir = ".shardkit/keys"
create_if_missing = true

[regions]
us-east-1 = { jurisdiction = "us" }

[residency]
default = "us"

[groups.us]
jurisdiction = "us"
regions = ["us-east-1"]
shards = 2
"""
TABLE = "shardkit-benchlocal-state"
REGION = "us-east-1"


@dataclass(frozen=True)
class Params:
    quick: bool
    rounds: int  # rounds of every latency/throughput case (median reported)
    requests: int  # requests per round, one thread
    threaded: int  # requests per round, per thread, 4 threads
    sizes: tuple[int, ...]  # other items in the table for the CPU-per-request rows
    size_requests: int  # requests per size (fewer when one costs more than a second)
    cold_rounds: int
    dev_rounds: int


FULL = Params(False, 5, 300, 100, (100, 10_000, 100_000), 200, 5, 5)
QUICK = Params(True, 3, 100, 40, (100, 10_000, 100_000), 60, 3, 3)


# -- processes and the environment ----------------------------------------------------------


def env() -> dict[str, str]:
    """This process's environment with the checkout under test first on the path."""
    path = os.pathsep.join(p for p in (str(CODE), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "SHARDKIT_LOCAL_IDLE_TIMEOUT": "900"}


def shardkit_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [PY, "-m", "shardkit.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
        check=False,
    )
    if out.returncode:
        raise SystemExit(f"shardkit {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out


@contextlib.contextmanager
def plain_moto() -> Iterator[tuple[str, int]]:
    """A bare moto server (its own process, as the local cloud's is): (endpoint, pid)."""
    code = (
        "from moto.server import ThreadedMotoServer; import time, logging\n"
        "logging.getLogger('werkzeug').setLevel(logging.WARNING)\n"
        "s = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False); s.start()\n"
        "print('http://%s:%d' % s.get_host_and_port(), flush=True)\n"
        "time.sleep(3600)\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [PY, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=clean
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip(), proc.pid
    finally:
        proc.kill()
        proc.wait()


def create_table(endpoint: str, name: str) -> Any:
    ddb = server.client("dynamodb", REGION, endpoint)
    ddb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
    )
    return ddb


def fill(endpoint: str, table: str, have: int, want: int) -> None:
    """Add items ``have..want-1`` (64 bytes of data each, never read by the bench), 4 threads."""
    blob = os.urandom(64)
    chunks = [range(i, min(i + 25, want)) for i in range(have, want, 25)]
    local = threading.local()

    def put(chunk: range) -> None:
        if not hasattr(local, "ddb"):
            local.ddb = server.client("dynamodb", REGION, endpoint)
        pending = {
            table: [
                {
                    "PutRequest": {
                        "Item": {"pk": {"S": f"fill#{i}"}, "sk": {"S": "x"}, "b": {"B": blob}}
                    }
                }
                for i in chunk
            ]
        }
        while pending:
            pending = local.ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, chunks))


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Run:
    latencies_ms: list[float]
    rps: float
    cpu_ms: float | None  # the server's CPU per request
    client_ms: float = 0.0  # this process's CPU per request (the clients)
    workers_ms: float = 0.0  # the local cloud's workers' CPU per request


def run_load(
    call: Callable[[int], Any],
    threads: int,
    per_thread: int,
    pid: int | None,
    workers: Callable[[], set[int]] = set,
) -> Run:
    """``per_thread`` calls in each of ``threads`` threads: latencies, throughput, and the CPU
    per request of the server, of this process and of the ``workers()`` processes."""
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        mine = []
        for i in range(per_thread):
            started = time.perf_counter()
            call(t * 1_000_000 + i)
            mine.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(mine)

    before = {w: proc_cpu_s(w) for w in workers()}
    cpu0, own0, t0 = proc_cpu_s(pid), time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    elapsed, cpu1, own1 = time.perf_counter() - t0, proc_cpu_s(pid), time.process_time()
    spent = sum((proc_cpu_s(w) or 0.0) - (before.get(w) or 0.0) for w in workers())
    total = threads * per_thread
    cpu = (cpu1 - cpu0) * 1000 / total if cpu0 is not None and cpu1 is not None else None
    return Run(
        sorted(latencies), total / elapsed, cpu, (own1 - own0) * 1000 / total, spent * 1000 / total
    )


def summary(runs: list[Run]) -> dict[str, float]:
    return {
        "p50": med([pct(r.latencies_ms, 0.50) for r in runs]),
        "p99": med([pct(r.latencies_ms, 0.99) for r in runs]),
        "rps": med([r.rps for r in runs]),
        "cpu": med([r.cpu_ms for r in runs if r.cpu_ms is not None] or [float("nan")]),
        "client": med([r.client_ms for r in runs]),
        "workers": med([r.workers_ms for r in runs]),
    }


def bench_moto(p: Params) -> dict[str, dict[str, float]]:
    with plain_moto() as (endpoint, pid):
        create_table(endpoint, "plain")
        local = threading.local()

        def put(i: int) -> None:
            if not hasattr(local, "ddb"):
                local.ddb = server.client("dynamodb", REGION, endpoint)
            local.ddb.put_item(
                TableName="plain",
                Item={"pk": {"S": f"k{i % 100}"}, "sk": {"S": "state"}, "seq": {"N": str(i)}},
            )

        run_load(put, 4, 20, None)  # warm-up: connections, clients
        one = [run_load(put, 1, p.requests, pid) for _ in range(p.rounds)]
        four = [run_load(put, 4, p.threaded, pid) for _ in range(p.rounds)]
    return {"1": summary(one), "4": summary(four)}


def workers_of(root: Path) -> set[int]:
    code = str(root.resolve() / ".shardkit" / "local" / "code")
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if os.readlink(proc / "cwd").startswith(code):
                found.add(int(proc.name))
    return found


def bench_shardkit(p: Params, root: Path, moto: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Deploy ``root`` and measure it; each table is printed as soon as it is measured."""
    shardkit_cli("deploy", str(root), "--local", "--yes")
    time.sleep(3.0)  # a local cloud that pre-warms does it now; one that does not, never
    pid = server.status(root)["pid"]
    client = client_for_project(root)
    results: dict[str, Any] = {}
    try:
        owners = {}
        for i in range(200):  # a first key for each shard
            owners.setdefault(client.holder.require().route(f"first-{i}").id, f"first-{i}")
        first = []
        for key in owners.values():
            started = time.perf_counter()
            client.infer(key, PAYLOAD)
            first.append((time.perf_counter() - started) * 1000)
        results["first"] = med(first)

        def infer(i: int) -> None:
            client.infer(f"key-{i % 97}-{i // 1_000_000}", PAYLOAD)

        run_load(infer, 4, 30, None)  # warm-up: a worker per thread and shard
        mine = functools.partial(workers_of, root)
        one = [run_load(infer, 1, p.requests, pid, mine) for _ in range(p.rounds)]
        four = [run_load(infer, 4, p.threaded, pid, mine) for _ in range(p.rounds)]
        results["1"], results["4"] = summary(one), summary(four)
        print_requests(moto, results)

        cold = []
        for _ in range(p.cold_rounds):
            victims = workers_of(root)
            for worker in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker, signal.SIGKILL)
            while workers_of(root) & victims:
                time.sleep(0.05)
            key = f"cold-{uuid.uuid4().hex[:6]}"
            started = time.perf_counter()
            client.infer(key, PAYLOAD)
            cold.append((time.perf_counter() - started) * 1000)
        results["cold"] = med(cold)
        print_table(
            "Cold and first requests",
            ["case", "ms"],
            [
                ["first request to each shard after the deploy", f"{results['first']:.1f}"],
                ["worker cold start (workers killed, next request)", f"{results['cold']:.1f}"],
            ],
        )

        endpoint = server.require(root)
        sizes: dict[int, float] = {}
        have = 0
        for size in p.sizes:
            fill(endpoint, TABLE, have, size)
            have = size
            run_load(infer, 1, 3, None)
            probe = run_load(infer, 1, 3, pid)
            slow = pct(probe.latencies_ms, 0.5) > 1000  # seconds a request: a few say enough
            count, rounds = (3, 1) if slow else (p.size_requests, 3)
            sizes[size] = med([run_load(infer, 1, count, pid).cpu_ms or 0.0 for _ in range(rounds)])
            print(f"  server CPU per request with {size:,} other items: {sizes[size]:.2f} ms")
            sys.stdout.flush()
        results["sizes"] = sizes
        print_table(
            "Server CPU per request by table size",
            ["other items in the table", "server CPU ms/req", "vs 100 items"],
            [[f"{n:,}", f"{ms:.2f}", f"{ms / sizes[p.sizes[0]]:.2f}x"] for n, ms in sizes.items()],
        )
    finally:
        client.close()
    return results


def print_requests(moto: dict[str, dict[str, float]], local: dict[str, Any]) -> None:
    def row(label: str, s: dict[str, float]) -> list[str]:
        return [
            label,
            f"{s['p50']:.1f}",
            f"{s['p99']:.1f}",
            f"{s['rps']:.0f}",
            f"{s['cpu']:.2f}",
            f"{s['workers']:.2f}",
            f"{s['client']:.2f}",
        ]

    print_table(
        "Requests (medians of rounds)",
        ["case", "p50 ms", "p99 ms", "req/s", "server CPU", "workers CPU", "client CPU"],
        [
            row("plain moto PutItem, 1 thread", moto["1"]),
            row("plain moto PutItem, 4 threads", moto["4"]),
            row("shardkit infer, 1 thread", local["1"]),
            row("shardkit infer, 4 threads", local["4"]),
        ],
        notes=[
            "shardkit infer: RoutingClient -> gateway -> worker (proxy: route, state, fenced "
            "write, answer, EMF) -> DynamoDB",
            "CPU columns: ms of CPU per request in the local cloud's (or moto's) process, in its "
            "worker processes, and in this process (the client threads)",
        ],
    )


def stop_cloud(root: Path) -> None:
    """`shardkit local down --no-save`; a server too busy to stop in time is killed."""
    pid = server.status(root).get("pid")
    out = subprocess.run(
        [PY, "-m", "shardkit.cli.main", "local", "down", str(root), "--no-save"],
        capture_output=True,
        text=True,
        env=env(),
        check=False,
    )
    if out.returncode and isinstance(pid, int):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def bench_dev(p: Params, tmp: Path) -> list[float] | None:
    """Save -> first answer from the new code, through `shardkit dev` (None where there is none)."""
    helped = subprocess.run(
        [PY, "-m", "shardkit.cli.main", "dev", "--help"], capture_output=True, env=env()
    )
    if helped.returncode:
        return None
    root = tmp / "dev"
    shutil.copytree(tmp / "proj", root, ignore=shutil.ignore_patterns(".shardkit"))
    proc = subprocess.Popen(
        [PY, "-m", "shardkit.cli.main", "dev", str(root), "--no-logs"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "watching" in line:
                break
        client = client_for_project(root)
        model = root / "app" / "model.py"
        original = model.read_text()
        times = []
        for n in range(p.dev_rounds):
            marker = f"dev-{n}-{uuid.uuid4().hex[:6]}"
            model.write_text(
                original.replace(
                    '    answer["count"] = state["count"]\n    return answer, state',
                    f'    answer["count"] = state["count"]\n    answer["v"] = "{marker}"\n'
                    "    return answer, state",
                )
            )
            saved = time.perf_counter()
            deadline = saved + 60
            while time.perf_counter() < deadline:
                with contextlib.suppress(Exception):
                    if client.infer(f"dev-{n}", PAYLOAD).answer.get("v") == marker:
                        break
                time.sleep(0.02)
            times.append((time.perf_counter() - saved) * 1000)
        client.close()
        return times
    finally:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
        stop_cloud(root)


# -- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__, argv, "a smoke run: fewer rounds and requests")
    p = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    print_header(
        "shardkit local cloud benchmark",
        p.quick,
        {
            "code": f"{CODE} (shardkit {shardkit.__version__})",
            "packages": f"moto {ver('moto')}, boto3 {ver('boto3')}, aws-lambda-powertools "
            f"{ver('aws-lambda-powertools')}",
            "settings": f"{p.rounds} rounds; {p.requests} requests a round with 1 thread, "
            f"{p.threaded} per thread with 4; table sizes {', '.join(map(str, p.sizes))}",
        },
        load_label="load average at start",
    )
    rep = Report()
    moto = bench_moto(p)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        root = tmp / "proj"
        root.mkdir()
        (root / "shardkit.toml").write_text(PROJECT)
        shutil.copytree(QUICKSTART_APP, root / "app", ignore=shutil.ignore_patterns("__pycache__"))
        try:
            local = bench_shardkit(p, root, moto)
        finally:
            stop_cloud(root)
        dev = bench_dev(p, tmp)
    sizes = local["sizes"]
    if dev is not None:
        print_table(
            "Dev loop: save -> first answer from the new code",
            ["rounds", "median ms", "max ms"],
            [[str(len(dev)), f"{med(dev):.0f}", f"{max(dev):.0f}"]],
        )
    rep.target("warm invoke p50, 1 thread", local["1"]["p50"], 5.0, ".1f", "ms")
    rep.target(
        "4-thread req/s vs plain moto PutItem",
        local["4"]["rps"] / moto["4"]["rps"],
        1.0,
        ".2f",
        "x",
        higher_is_better=True,
    )
    biggest = p.sizes[-1]
    rep.target(
        f"server CPU/req at {biggest:,} vs {p.sizes[0]} items",
        sizes[biggest] / sizes[p.sizes[0]],
        1.2,
        ".2f",
        "x",
    )
    if dev is not None:
        rep.target("dev loop save -> new answer, median", med(dev), 2000, ".0f", "ms")
    rep.finish(t_start, load_at_end=True)
    print(f"load average now {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
