"""The ``shardkit`` command: a thin layer over the library (click + rich).

Every command takes ``--json``. A user error (any :class:`ShardkitError`, a bad option, an
unreadable file) prints one line, ``error: <what> — <what to do>``, on stderr and exits with
code 2; never a traceback. With ``--json`` that line is a JSON object instead, ``{"error": what,
"hint": what to do, "code": the error's class}``, so scripts read errors as they read results.
"""

from __future__ import annotations

import importlib
import json
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
    "cleanup": "deploy:cleanup_cmd",
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
    """Console entry point. Errors go to stderr as one line - or, when ``--json`` was asked
    for, as one JSON object ``{"error", "hint", "code"}`` - with the same exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    as_json = wants_json(args)
    try:
        cli.main(args=args, prog_name="shardkit", standalone_mode=False)
    except ShardkitError as exc:
        _fail(as_json, exc.message, exc.hint, type(exc).__name__)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        sys.exit(2)
    except click.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx else "shardkit"
        _fail(as_json, exc.format_message(), f"see `{path} --help`", "UsageError")
    except click.ClickException as exc:
        _fail(as_json, exc.format_message(), "", "ClickException")
    except click.Abort:
        _fail(as_json, "aborted", "", "Aborted", code=1)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        _fail(as_json, f"cannot use{where}: {exc.strerror or exc}", "", "OSError")


def wants_json(args: list[str]) -> bool:
    """Whether the command line asks for JSON: ``--json`` before any ``--``. Read from the
    arguments themselves, so an error raised while they are parsed is JSON too."""
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def _fail(as_json: bool, message: str, hint: str, kind: str, code: int = 2) -> None:
    text = " ".join(message.split())
    if as_json:
        click.echo(json.dumps({"error": text, "hint": hint, "code": kind}), err=True)
    else:
        click.echo(f"error: {text} — {hint}" if hint else f"error: {text}", err=True)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
