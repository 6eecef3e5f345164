"""``shardkit autoshard DIR --once | --watch [--dry-run]``: run the auto-shard controller here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..autoshard.controller import Controller, Round
from ..errors import AutoshardError
from .deploy import _deployer, local_option
from .output import console, iso, json_option
from .progress import Phases

_PATH = click.Path(path_type=Path)


@click.command("autoshard")
@click.argument("project_dir", type=_PATH, default=".")
@click.option("--once", "mode", flag_value="once", help="Run one round per group, then stop.")
@click.option("--watch", "mode", flag_value="watch", help="Run a round every --every seconds.")
@click.option("--dry-run", is_flag=True, help="Decide and log, but change nothing.")
@click.option(
    "--every",
    type=click.FloatRange(min=1),
    default=None,
    help="Seconds between rounds with --watch [default: the shortest policy window_s].",
)
@click.option("--rounds", type=click.IntRange(min=1), help="With --watch: stop after N rounds.")
@local_option("Read the load of and reshard on")
@json_option
def autoshard_cmd(
    project_dir: Path,
    mode: str | None,
    dry_run: bool,
    every: float | None,
    rounds: int | None,
    local: bool | None,
    json_: bool,
) -> None:
    """Split hot shards and merge cold ones of the deployed project, as its groups' policies
    say: read the proxies' load records, decide, and apply each change with a deploy."""
    if mode is None:
        raise click.UsageError("say --once (one round) or --watch (a round every --every s)")
    deployer = _deployer(project_dir, local, start=False, phases=Phases("autoshard", json_=json_))
    controller = Controller(deployer, dry_run=dry_run, log=_json_line if json_ else _show)
    if not controller.policies():
        raise AutoshardError(
            f"no group of {deployer.project.config.project.name} has an autoshard policy",
            hint="add [groups.NAME.autoshard] to shardkit.toml (docs/autoshard.md)",
        )
    try:
        if mode == "once":
            controller.tick()
        else:
            controller.watch(every=every, rounds=rounds)
    except KeyboardInterrupt:
        pass


def _json_line(r: Round) -> None:
    click.echo(json.dumps(r.to_dict(), sort_keys=True))


def _show(r: Round) -> None:
    d = r.decision
    what = ", ".join(d.actions) or "no change"
    colour = {"applied": "green", "failed": "red", "dry run": "yellow"}.get(r.outcome, "dim")
    tail = f" (map version {r.map_version})" if r.map_version else ""
    console.print(f"{iso(d.at)} [bold]{d.group}[/]: {what} - [{colour}]{r.outcome}[/]{tail}")
    for reason in d.reasons:
        console.print(f"  {reason}")
    if r.error:
        console.print(f"  [red]{r.error}[/]")


def show_decisions(entries: list[dict[str, Any]], limit: int = 5) -> None:
    """The last decisions (``shardkit status``)."""
    if not entries:
        return
    console.print(f"auto-shard: last {min(limit, len(entries))} decisions")
    for e in entries[-limit:]:
        what = ", ".join(e["actions"]) or "no change"
        console.print(f"  {iso(e['at'])} {e['group']}: {what} ({e['outcome']})")
        if e["reasons"]:
            console.print(f"    {e['reasons'][-1]}")
