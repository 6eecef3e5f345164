"""The shardkit CLI's command tree, for tests that check every command (and docs that list them)."""

from __future__ import annotations

import click

from shardkit.cli.main import cli


def leaf_commands(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command that runs (not a group), as its path of names: ``("map", "route")``."""
    ctx = click.Context(group)
    out = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            out += leaf_commands(command, (*prefix, name))
        elif command is not None and not command.hidden:
            out.append((*prefix, name))
    return out


def params(command: tuple[str, ...]) -> set[str]:
    """The names of the parameters of the command at ``command`` (its path of names)."""
    found: click.Command | None = cli
    for name in command:
        assert isinstance(found, click.Group), command
        found = found.get_command(click.Context(found), name)
    assert found is not None, command
    return {p.name for p in found.params if p.name}
