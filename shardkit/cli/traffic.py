"""``shardkit invoke`` and ``shardkit traffic``: requests through the routing client."""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ..errors import ShardkitError
from ..routing.client import InferenceError, Result, RoutingClient
from ..routing.project import client_for_project
from .deploy import local_option
from .output import console, emit_json, json_option

_PATH = click.Path(path_type=Path)
_WORDS = ["the", "shard", "owns", "key", "and", "map", "says", "which", "answers", "request",
          "when", "edge", "asks"]

transport_option = click.option("--transport", type=click.Choice(["invoke", "url"]),
                                default="invoke", show_default=True,
                                help="Lambda Invoke API, or Function URLs signed with SigV4.")


@click.command("invoke")
@click.argument("project_dir", type=_PATH)
@click.argument("key", nargs=-1, required=True)
@click.option("--payload", default='{"text": "the shard"}', show_default=True,
              help="The request payload, as JSON.")
@click.option("--jurisdiction", help="Tag the keys with this jurisdiction.")
@local_option
@transport_option
@json_option
def invoke_cmd(project_dir: Path, key: tuple[str, ...], payload: str, jurisdiction: str | None,
               local: bool | None, transport: str, json_: bool) -> None:
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
        table.add_row(r["key"], r["jurisdiction"], r["region"], r["shard"], str(r["epoch"]),
                      str(r["map_version"]), f"{r['latency_ms']:.1f}",
                      json.dumps(r["answer"], sort_keys=True))
    console.print(table)


@click.command("traffic")
@click.argument("project_dir", type=_PATH)
@click.option("--requests", "total", type=click.IntRange(1, 10_000_000), default=200,
              show_default=True, help="Requests to send.")
@click.option("--keys", type=click.IntRange(1, 1_000_000), default=20, show_default=True,
              help="Distinct keys (half of them 'eu:' keys when the project has that rule).")
@click.option("--threads", type=click.IntRange(1, 256), default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@local_option
@transport_option
@json_option
def traffic_cmd(project_dir: Path, total: int, keys: int, threads: int, seed: int,
                local: bool | None, transport: str, json_: bool) -> None:
    """Send a workload through the routing client; latency, errors and redirects per shard
    and per region. Each key's requests are sent in order, numbered by ``seq``."""
    client = client_for_project(project_dir, local=local, transport=transport)
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
        table = Table(title, "requests", "p50 ms", "p99 ms", "errors", "redirects",
                      title=f"{report['requests']} requests, {report['rps']:.0f}/s")
        for name, row in rows.items():
            table.add_row(name, str(row["requests"]), f"{row['p50_ms']:.1f}",
                          f"{row['p99_ms']:.1f}", str(row["errors"]), str(row["redirects"]))
        console.print(table)


def _record(r: Result) -> dict[str, Any]:
    return {"key": r.key, "jurisdiction": r.jurisdiction, "region": r.region, "shard": r.shard,
            "epoch": r.epoch, "map_version": r.map_version, "latency_ms": r.latency_s * 1000,
            "attempts": r.attempts, "redirected": r.redirected, "failover": r.failover,
            "seq": r.seq, "answer": r.answer}


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


def _run(client: RoutingClient, work: list[list[tuple[str, dict[str, Any]]]],
         threads: int) -> list[dict[str, Any]]:
    outcomes: list[dict[str, Any]] = []
    lock = threading.Lock()

    def run_key(requests: list[tuple[str, dict[str, Any]]]) -> None:
        for key, payload in requests:
            t = time.perf_counter()
            try:
                r = client.infer(key, payload)
                row = {"shard": r.shard, "region": r.region, "ok": True,
                       "redirected": r.redirected, "ms": r.latency_s * 1000}
            except (InferenceError, ShardkitError) as exc:
                row = {"shard": getattr(exc, "shard", "?"), "region": "?", "ok": False,
                       "redirected": False, "ms": (time.perf_counter() - t) * 1000,
                       "error": exc.message}
            with lock:
                outcomes.append(row)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(run_key, work))
    return outcomes


def _report(outcomes: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    by: dict[str, dict[str, list[dict[str, Any]]]] = {"shards": defaultdict(list),
                                                      "regions": defaultdict(list)}
    for o in outcomes:
        by["shards"][o["shard"]].append(o)
        by["regions"][o["region"]].append(o)
    report: dict[str, Any] = {"requests": len(outcomes), "seconds": elapsed,
                              "rps": len(outcomes) / elapsed if elapsed else 0.0,
                              "errors": sum(not o["ok"] for o in outcomes),
                              "first_errors": [o["error"] for o in outcomes if not o["ok"]][:5]}
    for name, groups in by.items():
        report[name] = {k: _stats(v) for k, v in sorted(groups.items())}
    return report


def _stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ms = sorted(o["ms"] for o in rows if o["ok"]) or [0.0]
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    return {"requests": len(rows), "p50_ms": statistics.median(ms), "p99_ms": p99,
            "errors": sum(not o["ok"] for o in rows),
            "redirects": sum(o["redirected"] for o in rows)}
