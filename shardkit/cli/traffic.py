"""``shardkit invoke`` and ``shardkit traffic``: requests through the routing client.

``traffic --edge`` sends the workload through the edge runtime instead (docs/edge.md): a mix of
read-only requests (``"learn": false``, cacheable) and learning writes, with the project's local
model and cache rules from its ``app/edge.py``, and reports what share each path served.
The workloads, the runner and the reports are :mod:`shardkit.traffic`; this module parses the
options and prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from ..deploy.client import client_for_project
from ..errors import EdgePolicyError
from ..routing.client import Result, RoutingClient
from ..traffic import (
    EdgeTrafficReport,
    TrafficReport,
    edge_runtime_for,
    edge_workload,
    run_edge_traffic,
    run_traffic,
    workload,
)
from .deploy import local_option
from .output import console, emit_json, json_option

if TYPE_CHECKING:
    from ..edge import EdgeRuntime

_PATH = click.Path(path_type=Path)

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
    report: TrafficReport | EdgeTrafficReport
    if edge:
        runtime = _edge_runtime(client, project_dir, edge_region, edge_module)
        try:
            work = edge_workload(total, keys, seed=seed, reads=reads)
            report = run_edge_traffic(runtime, work, threads=threads)
        finally:
            runtime.close()  # and its client
    else:
        try:
            report = run_traffic(client, workload(total, keys, seed=seed), threads=threads)
        finally:
            client.close()
    if json_:
        emit_json(report.to_dict())
    elif isinstance(report, EdgeTrafficReport):
        _print_edge(report)
    else:
        _print(report)


def _edge_runtime(
    client: RoutingClient, project_dir: Path, region: str | None, module: str
) -> EdgeRuntime:
    """The edge runtime for ``--edge``; the client is closed if there is none."""
    try:
        return edge_runtime_for(client, project_dir, region=region, module=module)
    except EdgePolicyError as exc:
        client.close()
        raise click.BadParameter(exc.message, param_hint="--edge-region") from None
    except BaseException:
        client.close()
        raise


def _print(report: TrafficReport) -> None:
    for title, rows in (("per shard", report.shards), ("per region", report.regions)):
        table = Table(
            title,
            "requests",
            "p50 ms",
            "p99 ms",
            "errors",
            "redirects",
            "degraded",
            title=f"{report.requests} requests, {report.rps:.0f}/s",
        )
        for name, row in rows.items():
            table.add_row(
                name,
                str(row.requests),
                f"{row.p50_ms:.1f}",
                f"{row.p99_ms:.1f}",
                str(row.errors),
                str(row.redirects),
                str(row.degraded),
            )
        console.print(table)


def _print_edge(report: EdgeTrafficReport) -> None:
    where = f"edge in {report.location['region']} ({report.location['jurisdiction']})"
    table = Table(
        "path",
        "requests",
        "share",
        "p50 ms",
        "p99 ms",
        title=f"{report.requests} requests through the {where}, {report.rps:.0f}/s",
    )
    for name, row in report.paths.items():
        table.add_row(
            name,
            str(row.requests),
            f"{row.share:.1%}",
            f"{row.p50_ms:.2f}",
            f"{row.p99_ms:.2f}",
        )
    console.print(table)
    console.print(
        "cache (requests not answered locally): "
        + ", ".join(f"{k} {v}" for k, v in report.cache.items())
    )
    div = report.divergence or {"checks": 0, "divergent": 0, "alarms": 0}
    console.print(
        f"divergence checks: {div['checks']}, divergent {div['divergent']}, alarms {div['alarms']}"
    )
    for error in report.first_errors:
        console.print(f"error: {error}")


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
