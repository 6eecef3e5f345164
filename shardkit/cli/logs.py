"""``shardkit logs DIR [--shard S] [--follow] [--since 10m] [--json]``: the proxies' logs.

Read from CloudWatch Logs with the deploy target's clients, so the same code reads the local
cloud and AWS (see :mod:`shardkit.logs`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from ..config import load_project
from ..config.loader import Project
from ..deploy.engine import Deployer
from ..deploy.targets import open_target
from ..errors import LogsError
from ..logs import LogEvent, LogReader, ShardLogs, format_event, parse_since
from .deploy import local_option, project_arg
from .output import json_option


def shard_logs(deployer: Deployer, shard: str | None = None) -> list[ShardLogs]:
    """Where each deployed shard logs (only ``shard``, when given)."""
    found = [
        ShardLogs(rec.shard, rec.region, rec.name)
        for rec in deployer.record().of_kind("lambda_function").values()
        if rec.shard
    ]
    if not found:
        raise LogsError(
            f"project {deployer.project.config.project.name!r} has no deployed shard on "
            f"{deployer.target.name}",
            hint="deploy it first: `shardkit deploy PROJECT_DIR`",
        )
    if shard is None:
        return sorted(found, key=lambda s: s.shard)
    chosen = [s for s in found if s.shard == shard]
    if not chosen:
        names = ", ".join(sorted(s.shard for s in found))
        raise LogsError(f"no shard {shard!r} is deployed", hint=f"pick one of: {names}")
    return chosen


def reader_for(project: Project, local: bool | None, shard: str | None = None) -> LogReader:
    target = open_target(project, local=local, start=False)
    deployer = Deployer(project, target)
    return LogReader(shard_logs(deployer, shard), target.aws.client)


def print_event(event: LogEvent, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(event.to_dict()))
        return
    line = format_event(event)
    if line is not None:
        click.echo(line)


@click.command("logs")
@project_arg
@click.option("--shard", help="Only this shard's logs (e.g. eu-0).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option(
    "--since",
    default="10m",
    show_default=True,
    help="Start this long ago (30s, 10m, 2h, 1d) or at an ISO time.",
)
@local_option("Read the logs of")
@json_option
def logs_cmd(
    project_dir: Path,
    shard: str | None,
    follow: bool,
    since: str,
    local: bool | None,
    json_: bool,
) -> None:
    """The proxies' logs from CloudWatch Logs, on the local cloud or on AWS.

    Powertools' JSON lines are shown readably (time, shard, level, message, keys) and metrics
    (EMF documents) are left out; --json prints every event raw, one JSON object a line.
    """
    start = parse_since(since)
    reader = reader_for(load_project(project_dir), local, shard)
    try:
        events: Any = reader.follow(start) if follow else reader.read(start)
        for event in events:
            print_event(event, json_)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return


def follow_quietly(reader: LogReader, stop: Any, as_json: bool = False) -> None:
    """Print new events until ``stop`` is set (for ``shardkit dev``)."""
    for event in reader.follow(time.time(), interval=0.5, stop=stop.is_set):
        print_event(event, as_json)
