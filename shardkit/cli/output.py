"""Shared CLI plumbing: JSON or rich output, atomic file writes, map loading."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from ..config import Project, load_project
from ..errors import KeyStoreError, MapDecodeError
from ..keys import load_trusted_keys
from ..sharding.codec import decode_map, peek_envelope
from ..sharding.shardmap import ShardMap

json_option = click.option("--json", "json_", is_flag=True, help="Print JSON instead of tables.")
keys_option = click.option(
    "--keys",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory of trusted <key_id>.pub files [default: the project's keys_dir, "
    "$SHARDKIT_KEYS_DIR, or ./.shardkit/keys].",
)

# Piped output is read by scripts and grep: never wrap or truncate it to 80 columns.
_piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
console = Console(highlight=False, width=10_000 if _piped else None)
err_console = Console(stderr=True, highlight=False)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def resolve_map(target: Path, keys: Path | None) -> tuple[str, bytes | None, Path]:
    """(where, map bytes or None, key directory) for a map FILE or a PROJECT_DIR. A project's
    map is the newest of the one `shardkit map build` wrote and the ones its deploys
    published (as this machine's deployment records last saw them)."""
    if target.is_dir():
        project = load_project(target)
        where, data = newest_map(project)
        return where, data, keys or project.keys_dir
    env = os.environ.get("SHARDKIT_KEYS_DIR")
    try:
        data: bytes | None = target.read_bytes()
    except FileNotFoundError:
        data = None
    return str(target), data, keys or (Path(env) if env else Path(".shardkit/keys"))


def newest_map(project: Project) -> tuple[str, bytes | None]:
    """(where, bytes) of the project's newest map; (the `map build` path, None) if none."""
    from ..deploy.state import published_maps

    found = [(str(p), p.read_bytes()) for p in (project.map_path,) if p.is_file()]
    found += [
        (f"the map deployed to {target}", data)
        for target, data in published_maps(project.state_dir).items()
    ]
    if not found:
        return str(project.map_path), None  # the "no map" error names where `map build` writes

    def version(candidate: tuple[str, bytes]) -> int:
        try:
            return peek_envelope(candidate[1]).version
        except MapDecodeError:
            return -1  # a damaged file is still reported if it is the only one

    return max(found, key=version)


def open_map(target: Path, keys: Path | None, *, allow_expired: bool = False) -> ShardMap:
    """Read, verify and decode a map file (or a project's current map)."""
    where, data, key_dir = resolve_map(target, keys)
    if data is None:
        raise MapDecodeError(
            f"no map at {where}", hint="build one with `shardkit map build PROJECT_DIR`"
        )
    try:
        trusted = load_trusted_keys(key_dir)
    except KeyStoreError as exc:
        raise KeyStoreError(f"cannot verify {where}: {exc.message}", hint=exc.hint) from None
    return decode_map(data, trusted, now=float("-inf") if allow_expired else None)
