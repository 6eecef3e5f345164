"""``shardkit invoke`` and ``shardkit traffic``: requests through the routing client.

``traffic --edge`` sends the workload through the edge runtime instead (docs/edge.md): a mix of
read-only requests (``"learn": false``, cacheable) and learning writes, with the project's local
model and cache rules from its ``app/edge.py``, and reports what share each path served.
The workloads, the runner and the reports are :mod:`shardkit.traffic`; this module parses the
options and prints.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..deploy.client import client_for_project
from ..errors import InferenceError, ShardkitError
from ..protocol import printable_key
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
from .progress import Phases

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


class JsonPayload(click.ParamType):
    """A JSON value given inline, as ``@FILE`` (read from FILE) or as ``-`` (read from stdin):
    a payload too large for the command line (~128 KiB) still fits in a file or a pipe."""

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # the default, already parsed
        text, source = value, "the value"
        if value == "-":
            text, source = sys.stdin.read(), "stdin"
        elif value.startswith("@"):
            path = Path(value[1:])
            try:
                text, source = path.read_text("utf-8"), str(path)
            except (OSError, UnicodeDecodeError) as exc:
                why = getattr(exc, "strerror", None) or exc
                self.fail(f"cannot read {path}: {why}", param, ctx)
        try:
            return json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            self.fail(f"{source} is not JSON: {exc}", param, ctx)


@click.command("invoke")
@click.argument("project_dir", type=_PATH)
@click.argument("key", nargs=-1, required=True)
@click.option(
    "--payload",
    type=JsonPayload(),
    default='{"text": "the shard"}',
    show_default=True,
    help="The request payload as JSON, @FILE to read it from FILE, or - to read it from stdin.",
)
@click.option("--jurisdiction", help="Tag the keys with this jurisdiction.")
@local_option("Send requests to")
@transport_option
@json_option
def invoke_cmd(
    project_dir: Path,
    key: tuple[str, ...],
    payload: Any,
    jurisdiction: str | None,
    local: bool | None,
    transport: str,
    json_: bool,
) -> None:
    """Send one request per KEY to its shard; show where it went and the answer.

    Every key is sent and reported, a failed one too (with its error); the exit code is 2 if
    any failed."""
    client = client_for_project(project_dir, local=local, transport=transport)
    rows = []
    try:
        for k in key:
            try:
                rows.append(_record(client.infer(k, payload, jurisdiction=jurisdiction)))
            except ShardkitError as exc:
                rows.append(_failed(k, exc))
    finally:
        client.close()
    if json_:
        emit_json(rows)
    else:
        _print_invoked(rows)
    failed = [r for r in rows if r["error"] is not None]
    if failed:
        first = failed[0]
        raise ShardkitError(
            f"{len(failed)} of {len(rows)} key(s) failed; the first, {first['key']!r}: "
            f"{first['error']['message']}",
            hint=first["error"]["hint"] or "each key's outcome is listed above",
        )


def _print_invoked(rows: list[dict[str, Any]]) -> None:
    table = Table("key", "jurisdiction", "region", "shard", "epoch", "map", "ms", "answer")
    for r in rows:
        if r["error"] is not None:
            table.add_row(
                escape(printable_key(r["key"])),
                *["-"] * 6,
                Text(f"error: {r['error']['message']}", "red"),
            )
            continue
        table.add_row(
            escape(printable_key(r["key"])),
            r["jurisdiction"],
            r["region"],
            r["shard"],
            str(r["epoch"]),
            str(r["map_version"]),
            f"{r['latency_ms']:.1f}",
            escape(json.dumps(r["answer"], sort_keys=True)),
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
    default=None,
    help="With --edge: the project module whose local_model() and cache_rules() the edge "
    "uses. Both functions are optional: a module without them answers nothing locally and "
    "caches nothing. A module that cannot be imported is an error. [default: app.edge, if "
    "the project has it]",
)
@local_option("Send the workload to")
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
    edge_module: str | None,
    local: bool | None,
    transport: str,
    json_: bool,
) -> None:
    """Send a workload through the routing client; latency, errors and redirects per shard
    and per region. Each key's requests are sent in order, numbered by ``seq``.

    With --edge, through the edge runtime: the share of requests served by the local model,
    the cache and the shards, with latency per path."""
    phases = Phases("traffic", json_=json_)
    with phases.phase("connecting: the deployment's records and its signed map"):
        client = client_for_project(project_dir, local=local, transport=transport)
    report: TrafficReport | EdgeTrafficReport
    sending = f"sending over {keys:,} keys from {threads} threads"
    if edge:
        runtime = _edge_runtime(client, project_dir, edge_region, edge_module)
        try:
            work = edge_workload(total, keys, seed=seed, reads=reads)
            with phases.counted(f"{sending} through the edge", total, "requests") as done:
                report = run_edge_traffic(runtime, work, threads=threads, progress=done)
        finally:
            runtime.close()  # and its client
    else:
        try:
            with phases.counted(sending, total, "requests") as done:
                work = workload(total, keys, seed=seed)
                report = run_traffic(client, work, threads=threads, progress=done)
        finally:
            client.close()
    if json_:
        emit_json(report.to_dict())
    elif isinstance(report, EdgeTrafficReport):
        _print_edge(report)
    else:
        _print(report)


def _edge_runtime(
    client: RoutingClient, project_dir: Path, region: str | None, module: str | None
) -> EdgeRuntime:
    """The edge runtime for ``--edge``; the client is closed if there is none."""
    try:
        return edge_runtime_for(client, project_dir, region=region, module=module)
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


_FIELDS = (
    "jurisdiction",
    "region",
    "shard",
    "epoch",
    "map_version",
    "latency_ms",
    "attempts",
    "redirected",
    "failover",
    "degraded",
    "seq",
    "answer",
)


def _failed(key: str, exc: ShardkitError) -> dict[str, Any]:
    """An invoke row for a key that failed: every field of an answered row, empty, and the
    error (its message, hint and kind; a shard's status and code when a shard answered)."""
    error = {"message": exc.message, "hint": exc.hint, "code": type(exc).__name__}
    if isinstance(exc, InferenceError):
        error.update(status=exc.status, reply=exc.code, shard=exc.shard)
    return {"key": key, **dict.fromkeys(_FIELDS), "error": error}


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
        "error": None,
    }
