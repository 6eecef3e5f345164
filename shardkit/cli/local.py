"""``shardkit local up|down|status``: the project's local cloud (moto on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.text import Text

from ..local import server
from .output import console, emit_json, iso, json_option

_project_arg = click.argument(
    "project_dir", type=click.Path(path_type=Path, file_okay=False), default=Path(".")
)


@click.group("local")
def group() -> None:
    """Run the local cloud: moto's AWS emulation on 127.0.0.1, one server per project."""


@group.command("up")
@_project_arg
@click.option(
    "--timeout",
    type=float,
    default=server.START_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the server to answer.",
)
@click.option(
    "--idle-timeout",
    type=float,
    default=None,
    help=f"Stop after this many seconds without a request [default: "
    f"{server.IDLE_TIMEOUT:g}, or $SHARDKIT_LOCAL_IDLE_TIMEOUT; 0 = never].",
)
@click.option(
    "--max-lifetime",
    type=float,
    default=None,
    help=f"Stop after this many seconds in all [default: {server.MAX_LIFETIME:g}, "
    "or $SHARDKIT_LOCAL_MAX_LIFETIME; 0 = never].",
)
@json_option
def up(
    project_dir: Path,
    timeout: float,
    idle_timeout: float | None,
    max_lifetime: float | None,
    json_: bool,
) -> None:
    """Start the local cloud of PROJECT_DIR (or find it running)."""
    cloud = server.up(
        project_dir, timeout=timeout, idle_timeout=idle_timeout, max_lifetime=max_lifetime
    )
    restored = _restore(project_dir, json_)
    if json_:
        emit_json({**cloud.to_dict(), "restored_steps": restored})
        return
    verb = "started" if cloud.started else "already running"
    _say(f"local cloud {verb} at ", (cloud.endpoint, "bold"), f" (pid {cloud.pid})")
    if cloud.started and cloud.restored.get("tables"):
        _say(
            f"restored {cloud.restored['items']} DynamoDB items of "
            f"{cloud.restored['tables']} tables from the last run"
        )
    if cloud.started:
        _say(f"log: {server.local_dir(project_dir) / server.LOG_FILE}")
        _say(f"stop it with `shardkit local down {project_dir}`")


def _restore(project_dir: Path, json_: bool) -> int | None:
    """A fresh server holds nothing: re-apply the project's recorded local deployment."""
    from ..config.loader import CONFIG_FILE
    from .deploy import restore_local

    if not (project_dir / CONFIG_FILE).is_file():
        return None
    result = restore_local(project_dir, json_)
    return result.steps_done if result else None


@group.command("down")
@_project_arg
@click.option(
    "--no-save",
    is_flag=True,
    help="Delete the DynamoDB tables and items too: the next start begins empty.",
)
@json_option
def down(project_dir: Path, no_save: bool, json_: bool) -> None:
    """Stop the local cloud of PROJECT_DIR and remove its record (DynamoDB is kept)."""
    result = server.down(project_dir, save_tables=not no_save)
    if json_:
        emit_json(result)
        return
    _print_down(result)


@group.command("status")
@_project_arg
@json_option
def status(project_dir: Path, json_: bool) -> None:
    """Say whether the local cloud of PROJECT_DIR is running, stopped or stale."""
    result = server.status(project_dir)
    if json_:
        emit_json(result)
        return
    if result["state"] == "running":
        _say(
            ("running", "green"),
            " at ",
            (result["endpoint"], "bold"),
            f" (pid {result['pid']}, up {_duration(result['uptime_s'])}, "
            f"since {iso(result['started_at'])})",
        )
    elif result["state"] == "stale":
        _say(
            ("stale", "yellow"),
            f": {result['reason']}; `shardkit local up {project_dir}` replaces it",
        )
    else:
        _say(f"stopped; start it with `shardkit local up {project_dir}`")


def _print_down(result: dict[str, Any]) -> None:
    if result["was"] == "stopped":
        _say(f"the local cloud of {result['project']} is not running")
    elif result["was"] == "stale":
        _say(f"removed a stale record ({result['reason']})")
    else:
        _say(f"stopped the local cloud at {result['endpoint']} (pid {result['pid']})")
    kept = result["dynamodb"] or {}
    if "kept" in kept:
        _say(f"DynamoDB tables and items are kept in {kept['kept']} for the next start")
    elif "deleted" in kept:
        _say(f"deleted the DynamoDB tables and items in {kept['deleted']}")


def _say(*parts: str | tuple[str, str]) -> None:
    """One line of plain text and (text, style) pieces: no markup parsing (paths may hold
    brackets) and no wrapping (a path or an endpoint must stay whole)."""
    console.print(Text.assemble(*parts), soft_wrap=True)


def _duration(seconds: float | None) -> str:
    total = int(seconds or 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
