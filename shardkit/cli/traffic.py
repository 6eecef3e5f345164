"""``shardkit invoke`` and ``shardkit traffic``: requests through the routing client.

``traffic --edge`` sends the workload through the edge runtime instead (docs/edge.md): a mix of
read-only requests (``"learn": false``, cacheable) and learning writes, with the project's local
model and cache rules from its ``app/edge.py``, and reports what share each path served.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ..deploy.client import client_for_project
from ..errors import ShardkitError
from ..routing.client import Result, RoutingClient
from .deploy import local_option
from .output import console, emit_json, json_option

_PATH = click.Path(path_type=Path)
_WORDS = [
    "the",
    "shard",
    "owns",
    "key",
    "and",
    "map",
    "says",
    "which",
    "answers",
    "request",
    "when",
    "edge",
    "asks",
]

transport_option = click.option(
    "--transport",
    type=click.Choice(["invoke", "url"]),
    default="invoke",
    show_default=True,
    help="Lambda Invoke API, or Function URLs signed with SigV4.",
)


@click.command("invoke")
@click.argument("project_dir", type=_PATH)
@click.argument("key", nargs=-1, required=True)
@click.option(
    "--payload",
    default='{"text": "the shard"}',
    show_default=True,
    help="The request payload, as JSON.",
)
@click.option("--jurisdiction", help="Tag the keys with this jurisdiction.")
@local_option
@transport_option
@json_option
def invoke_cmd(
    project_dir: Path,
    key: tuple[str, ...],
    payload: str,
    jurisdiction: str | None,
    local: bool | None,
    transport: str,
    json_: bool,
) -> None:
    """Send one request per KEY to its shard; show where it went and the answer."""
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    client = client_for_project(project_dir, local=local, transport=transport)
    try:
        results = [client.infer(k, body, jurisdiction=jurisdiction) for k in key]
    finally:
        client.close()
    rows = [_record(r) for r in results]
    if json_:
        emit_json(rows)
        return
    table = Table("key", "jurisdiction", "region", "shard", "epoch", "map", "ms", "answer")
    for r in rows:
        table.add_row(
            r["key"],
            r["jurisdiction"],
            r["region"],
            r["shard"],
            str(r["epoch"]),
            str(r["map_version"]),
            f"{r['latency_ms']:.1f}",
            json.dumps(r["answer"], sort_keys=True),
        )
    console.print(table)


@click.command("traffic")
@click.argument("project_dir", type=_PATH)
@click.option(
    "--requests",
    "total",
    type=click.IntRange(1, 10_000_000),
    default=200,
    show_default=True,
    help="Requests to send.",
)
@click.option(
    "--keys",
    type=click.IntRange(1, 1_000_000),
    default=20,
    show_default=True,
    help="Distinct keys (half of them 'eu:' keys when the project has that rule).",
)
@click.option("--threads", type=click.IntRange(1, 256), default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--edge",
    is_flag=True,
    help="Send the workload through the edge runtime (local model, cache, shards) and "
    "report the share and latency of each path.",
)
@click.option(
    "--reads",
    type=click.FloatRange(0, 1),
    default=0.8,
    show_default=True,
    help='With --edge: the share of read-only requests ("learn": false).',
)
@click.option(
    "--edge-region",
    help="With --edge: the region the edge node is in (its jurisdiction decides what "
    "it may cache). Default: the map's first region.",
)
@click.option(
    "--edge-module",
    default="app.edge",
    show_default=True,
    help="With --edge: the project module providing local_model() and cache_rules() "
    "(both optional; without them nothing is answered locally or cached).",
)
@local_option
@transport_option
@json_option
def traffic_cmd(
    project_dir: Path,
    total: int,
    keys: int,
    threads: int,
    seed: int,
    edge: bool,
    reads: float,
    edge_region: str | None,
    edge_module: str,
    local: bool | None,
    transport: str,
    json_: bool,
) -> None:
    """Send a workload through the routing client; latency, errors and redirects per shard
    and per region. Each key's requests are sent in order, numbered by ``seq``.

    With --edge, through the edge runtime: the share of requests served by the local model,
    the cache and the shards, with latency per path."""
    client = client_for_project(project_dir, local=local, transport=transport)
    if edge:
        try:
            runtime = _edge_runtime(client, project_dir, edge_region, edge_module)
        except BaseException:
            client.close()
            raise
        _edge_traffic(runtime, _edge_workload(total, keys, seed, reads), threads, json_)
        return
    try:
        started = time.perf_counter()
        outcomes = _run(client, _workload(total, keys, seed), threads)
        elapsed = time.perf_counter() - started
    finally:
        client.close()
    report = _report(outcomes, elapsed)
    if json_:
        emit_json(report)
        return
    for title, rows in (("per shard", report["shards"]), ("per region", report["regions"])):
        table = Table(
            title,
            "requests",
            "p50 ms",
            "p99 ms",
            "errors",
            "redirects",
            "degraded",
            title=f"{report['requests']} requests, {report['rps']:.0f}/s",
        )
        for name, row in rows.items():
            table.add_row(
                name,
                str(row["requests"]),
                f"{row['p50_ms']:.1f}",
                f"{row['p99_ms']:.1f}",
                str(row["errors"]),
                str(row["redirects"]),
                str(row["degraded"]),
            )
        console.print(table)


def _record(r: Result) -> dict[str, Any]:
    return {
        "key": r.key,
        "jurisdiction": r.jurisdiction,
        "region": r.region,
        "shard": r.shard,
        "epoch": r.epoch,
        "map_version": r.map_version,
        "latency_ms": r.latency_s * 1000,
        "attempts": r.attempts,
        "redirected": r.redirected,
        "failover": r.failover,
        "degraded": r.degraded,
        "seq": r.seq,
        "answer": r.answer,
    }


def _workload(total: int, keys: int, seed: int) -> list[list[tuple[str, dict[str, Any]]]]:
    """Per key, its requests in order: ``{"text": ..., "seq": 1, 2, ...}``."""
    rng = random.Random(seed)
    names = [f"eu:user-{i}" if i % 2 else f"user-{i}" for i in range(keys)]
    per_key: dict[str, list[tuple[str, dict[str, Any]]]] = {k: [] for k in names}
    for _ in range(total):
        key = rng.choice(names)
        text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 6)))
        per_key[key].append((key, {"text": text, "seq": len(per_key[key]) + 1}))
    return [reqs for reqs in per_key.values() if reqs]


Work = list[list[tuple[str, dict[str, Any]]]]


def _in_threads(
    work: Work, threads: int, one: Callable[[str, dict[str, Any]], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each key's requests in order on one thread, keys spread over ``threads``; one outcome
    row per request from ``one(key, payload)``, with its latency."""
    outcomes: list[dict[str, Any]] = []
    lock = threading.Lock()

    def run_key(requests: list[tuple[str, dict[str, Any]]]) -> None:
        for key, payload in requests:
            t = time.perf_counter()
            row = one(key, payload)  # errors are rows too: `one` turns them into outcomes
            row.setdefault("ms", (time.perf_counter() - t) * 1000)
            with lock:
                outcomes.append(row)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(run_key, work))
    return outcomes


def _run(client: RoutingClient, work: Work, threads: int) -> list[dict[str, Any]]:
    def one(key: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            r = client.infer(key, payload)
        except ShardkitError as exc:
            return {
                "shard": getattr(exc, "shard", "?") or "?",
                "region": "?",
                "ok": False,
                "redirected": False,
                "degraded": False,
                "error": exc.message,
            }
        return {
            "shard": r.shard,
            "region": r.region,
            "ok": True,
            "redirected": r.redirected,
            "degraded": r.degraded,
            "ms": r.latency_s * 1000,
        }

    return _in_threads(work, threads, one)


def _report(outcomes: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    by: dict[str, dict[str, list[dict[str, Any]]]] = {
        "shards": defaultdict(list),
        "regions": defaultdict(list),
    }
    for o in outcomes:
        by["shards"][o["shard"]].append(o)
        by["regions"][o["region"]].append(o)
    report: dict[str, Any] = {
        "requests": len(outcomes),
        "seconds": elapsed,
        "rps": len(outcomes) / elapsed if elapsed else 0.0,
        "errors": sum(not o["ok"] for o in outcomes),
        "degraded": sum(o["degraded"] for o in outcomes),
        "first_errors": [o["error"] for o in outcomes if not o["ok"]][:5],
    }
    for name, groups in by.items():
        report[name] = {k: _stats(v) for k, v in sorted(groups.items())}
    return report


def _stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ms = sorted(o["ms"] for o in rows if o["ok"]) or [0.0]
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    return {
        "requests": len(rows),
        "p50_ms": statistics.median(ms),
        "p99_ms": p99,
        "errors": sum(not o["ok"] for o in rows),
        "redirects": sum(o["redirected"] for o in rows),
        "degraded": sum(o["degraded"] for o in rows),
    }


# -- traffic --edge ---------------------------------------------------------------------------------


def _edge_runtime(client: RoutingClient, project_dir: Path, region: str | None, module: str) -> Any:
    from ..edge import DivergenceMonitor, EdgeRuntime, Location

    regions = client.holder.require().regions
    region = region or next(iter(regions))
    if region not in regions:
        raise click.BadParameter(
            f"{region!r} is not a region of the map ({', '.join(regions)})",
            param_hint="--edge-region",
        )
    model, rules = _edge_hooks(project_dir, module)
    return EdgeRuntime(
        client,
        location=Location(region, regions[region]),
        local=model,
        rules=rules,
        divergence=DivergenceMonitor(sample_rate=0.05, budget=0.1),
    )


def _edge_hooks(project_dir: Path, module: str) -> tuple[Any, Any]:
    """``local_model()`` and ``cache_rules()`` of the project's edge module, if it has them."""
    import importlib
    import sys

    root = str(project_dir.resolve())
    sys.path.insert(0, root)
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            return None, None  # no edge module: shards only, nothing cached
        raise
    finally:
        sys.path.remove(root)
    model = mod.local_model() if hasattr(mod, "local_model") else None
    rules = mod.cache_rules() if hasattr(mod, "cache_rules") else None
    return model, rules


def _edge_workload(
    total: int, keys: int, seed: int, reads: float
) -> list[list[tuple[str, dict[str, Any]]]]:
    """Per key, in order: reads ``{"text": word, "learn": False}`` (a few words asked most,
    Zipf-like, so they repeat) and writes ``{"text": ..., "seq": 1, 2, ...}``."""
    rng = random.Random(seed)
    names = [f"eu:user-{i}" if i % 2 else f"user-{i}" for i in range(keys)]
    weights = [1 / (i + 1) for i in range(len(_WORDS))]
    per_key: dict[str, list[tuple[str, dict[str, Any]]]] = {k: [] for k in names}
    writes = dict.fromkeys(names, 0)
    for _ in range(total):
        key = rng.choice(names)
        if rng.random() < reads:
            per_key[key].append((key, {"text": rng.choices(_WORDS, weights)[0], "learn": False}))
        else:
            writes[key] += 1
            text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 6)))
            per_key[key].append((key, {"text": text, "seq": writes[key]}))
    return [reqs for reqs in per_key.values() if reqs]


def _edge_traffic(
    runtime: Any, work: list[list[tuple[str, dict[str, Any]]]], threads: int, json_: bool
) -> None:
    try:
        started = time.perf_counter()
        outcomes = _run_edge(runtime, work, threads)
        elapsed = time.perf_counter() - started
        stats = runtime.stats()
    finally:
        runtime.close()
    report = _edge_report(outcomes, elapsed, stats, runtime.location)
    if json_:
        emit_json(report)
        return
    where = f"edge in {report['location']['region']} ({report['location']['jurisdiction']})"
    table = Table(
        "path",
        "requests",
        "share",
        "p50 ms",
        "p99 ms",
        title=f"{report['requests']} requests through the {where}, {report['rps']:.0f}/s",
    )
    for name, row in report["paths"].items():
        table.add_row(
            name,
            str(row["requests"]),
            f"{row['share']:.1%}",
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
        )
    console.print(table)
    console.print(
        "cache (requests not answered locally): "
        + ", ".join(f"{k} {v}" for k, v in report["cache"].items())
    )
    div = report["divergence"]
    console.print(
        f"divergence checks: {div['checks']}, divergent {div['divergent']}, alarms {div['alarms']}"
    )
    for error in report["first_errors"]:
        console.print(f"error: {error}")


def _run_edge(runtime: Any, work: Work, threads: int) -> list[dict[str, Any]]:
    def one(key: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            d = runtime.infer(key, payload)
        except ShardkitError as exc:
            return {"path": "error", "cache": "-", "ok": False, "error": exc.message}
        return {"path": d.path, "cache": d.cache, "ok": True, "ms": d.latency_s * 1000}

    return _in_threads(work, threads, one)


def _edge_report(
    outcomes: list[dict[str, Any]], elapsed: float, stats: dict[str, Any], location: Any
) -> dict[str, Any]:
    by_path: dict[str, list[dict[str, Any]]] = {
        p: [] for p in ("local", "cache", "shard", "failover", "error")
    }
    for o in outcomes:
        by_path[o["path"]].append(o)
    n = len(outcomes)
    paths = {}
    for name, rows in by_path.items():
        ms = sorted(o["ms"] for o in rows) or [0.0]
        paths[name] = {
            "requests": len(rows),
            "share": len(rows) / n if n else 0.0,
            "p50_ms": statistics.median(ms),
            "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
        }
    statuses = ("hit", "miss", "stale", "bypass", "coalesced")
    cache = {
        s: sum(o["cache"] == s for o in outcomes if o["path"] in ("cache", "shard", "failover"))
        for s in statuses
    }
    return {
        "requests": n,
        "seconds": elapsed,
        "rps": n / elapsed if elapsed else 0.0,
        "location": {"region": location.region, "jurisdiction": location.jurisdiction},
        "paths": paths,
        "cache": cache,
        "errors": sum(not o["ok"] for o in outcomes),
        "first_errors": [o["error"] for o in outcomes if not o["ok"]][:5],
        "divergence": stats["divergence"],
        "map": stats["map"],
        "cache_memory": stats["cache"],
    }
