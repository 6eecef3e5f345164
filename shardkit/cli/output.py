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


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def resolve_map(target: Path, keys: Path | None) -> tuple[Path, Path]:
    """(map file, key directory) for a map FILE or a PROJECT_DIR. A project's map is the newest
    of the one `shardkit map build` wrote and the ones its deploys published."""
    if target.is_dir():
        project = load_project(target)
        return newest_map(project), keys or project.keys_dir
    env = os.environ.get("SHARDKIT_KEYS_DIR")
    return target, keys or (Path(env) if env else Path(".shardkit/keys"))


def newest_map(project: Project) -> Path:
    candidates = [project.map_path, *sorted(project.state_dir.glob("deploy/*/map.skm"))]
    found = [p for p in candidates if p.is_file()]
    if not found:
        return project.map_path  # the "no map" error names the place `map build` writes

    def version(path: Path) -> int:
        try:
            return peek_envelope(path.read_bytes()).version
        except MapDecodeError:
            return -1  # a damaged file is still reported if it is the only one

    return max(found, key=version)


def open_map(target: Path, keys: Path | None, *, allow_expired: bool = False) -> ShardMap:
    """Read, verify and decode a map file (or a project's current map)."""
    path, key_dir = resolve_map(target, keys)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MapDecodeError(
            f"no map at {path}", hint="build one with `shardkit map build PROJECT_DIR`"
        ) from None
    try:
        trusted = load_trusted_keys(key_dir)
    except KeyStoreError as exc:
        raise KeyStoreError(f"cannot verify {path}: {exc.message}", hint=exc.hint) from None
    return decode_map(data, trusted, now=float("-inf") if allow_expired else None)
