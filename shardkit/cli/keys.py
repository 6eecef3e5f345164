"""``shardkit keys create|show|list``: the ed25519 keys that sign shard maps."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ..errors import KeyStoreError
from ..keys import PublicKeyInfo, check_key_id, create_key, list_keys
from .output import console, emit_json, json_option

_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=Path(".shardkit/keys"),
    show_default=True,
    help="Key directory.",
)


@click.group("keys")
def group() -> None:
    """Create and inspect the ed25519 keys that sign shard maps."""


@group.command("create")
@click.argument("key_id")
@_dir_option
@json_option
def create(key_id: str, directory: Path, json_: bool) -> None:
    """Create KEY_ID.key (private, mode 0600) and KEY_ID.pub. Never overwrites."""
    info = create_key(key_id, directory)
    if json_:
        emit_json(info.to_dict())
        return
    console.print(
        f"created key [bold]{info.key_id}[/] in {directory} (fingerprint {info.fingerprint})"
    )
    console.print(f"public key: {info.public_key}")
    console.print(f"keep {directory / (key_id + '.key')} secret; share only the .pub file")


@group.command("show")
@click.argument("key_id")
@_dir_option
@json_option
def show(key_id: str, directory: Path, json_: bool) -> None:
    """Show a key's public half and fingerprint."""
    check_key_id(key_id)
    found = [k for k in list_keys(directory) if k.key_id == key_id]
    if not found:
        raise KeyStoreError(
            f"no key {key_id!r} in {directory}",
            hint=f"create it with `shardkit keys create {key_id} --dir {directory}`",
        )
    if json_:
        emit_json(found[0].to_dict())
        return
    _table(found)


@group.command("list")
@_dir_option
@json_option
def list_(directory: Path, json_: bool) -> None:
    """List the keys in a key directory."""
    infos = list_keys(directory)
    if json_:
        emit_json([i.to_dict() for i in infos])
        return
    if not infos:
        console.print(f"no keys in {directory}")
        return
    _table(infos)


def _table(infos: list[PublicKeyInfo]) -> None:
    table = Table("key id", "fingerprint", "private", "public key")
    for i in infos:
        table.add_row(i.key_id, i.fingerprint, "yes" if i.has_private else "no", i.public_key)
    console.print(table)
