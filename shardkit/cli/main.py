"""The ``shardkit`` command: a thin layer over the library (click + rich).

Every command takes ``--json``. A user error (any :class:`ShardkitError`, a bad option, an
unreadable file) prints one line, ``error: <what> — <what to do>``, on stderr and exits with
code 2; never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import ShardkitError

#: command name -> "module:attribute" of its click command, imported only when it runs (or when
#: --help lists it): `shardkit map route` never pays for boto3 or pydantic it does not use.
COMMANDS = {
    "apply": "deploy:apply_cmd",
    "autoshard": "autoshard:autoshard_cmd",
    "blueprint": "blueprint:group",
    "bootstrap": "deploy:bootstrap_cmd",
    "deploy": "deploy:deploy_cmd",
    "destroy": "deploy:destroy_cmd",
    "dev": "dev:dev_cmd",
    "invoke": "traffic:invoke_cmd",
    "keys": "keys:group",
    "local": "local:group",
    "logs": "logs:logs_cmd",
    "map": "maps:group",
    "plan": "deploy:plan_cmd",
    "rollback": "deploy:rollback_cmd",
    "simulate": "simulate:simulate_cmd",
    "status": "deploy:status_cmd",
    "traffic": "traffic:traffic_cmd",
    "unlock": "deploy:unlock_cmd",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (click's documented pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        command: click.Command = getattr(importlib.import_module(f".{module}", __package__), attr)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="shardkit")
def cli() -> None:
    """Region-aware shards for stateful inference proxies on serverless infrastructure."""


def error_line(exc: ShardkitError) -> str:
    text = " ".join(exc.message.split())
    return f"error: {text} — {exc.hint}" if exc.hint else f"error: {text}"


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    try:
        cli.main(args=argv, prog_name="shardkit", standalone_mode=False)
    except ShardkitError as exc:
        _fail(error_line(exc))
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        sys.exit(2)
    except click.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx else "shardkit"
        _fail(f"error: {exc.format_message()} — see `{path} --help`")
    except click.ClickException as exc:
        _fail(f"error: {exc.format_message()}")
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        _fail(f"error: cannot use{where}: {exc.strerror or exc}")


def _fail(line: str) -> None:
    click.echo(line, err=True)
    sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
