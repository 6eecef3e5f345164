"""Every example in README.md and docs/*.md runs as written, or at least parses: docs cannot
drift from the code.

A code block's class comes from its fence and an optional marker on the line before it:

* ```` ```python ```` - run here, in a copy of the repository's examples (cwd = the copy);
* ```` ```sh ```` / ```` ```console ```` - run by tests/integration/test_docs_shell_examples.py
  against a deployed copy of the quickstart (a console block's commands are its ``$`` lines);
  here every ``shardkit`` command in them must parse (command, options, option values);
* ``<!-- doc-test: local-cloud -->`` - a Python block that needs the deployed quickstart: run by
  the integration test; here it must compile;
* ``<!-- doc-test: parse-only (why) -->`` - never run (it needs AWS, the network, runs until
  Ctrl-C, ...): it must compile (Python) or parse (shell, as above);
* ``<!-- doc-test: file PATH -->`` - the block is a file of an example project: written to PATH
  (in the copy) before the document's later blocks run.

TOML blocks must be valid TOML. Blocks without a language are diagrams and output: not code.
"""

from __future__ import annotations

import io
import itertools
import re
import shutil
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from cli_tree import leaf_commands, params
from doc_examples import (
    ALL,
    DOCS,
    ROOT,
    SHELL,
    Example,
    examples,
    is_install_step,
    shardkit_args,
    shell_commands,
)

from shardkit.cli.main import cli


def parse_cli(args: list[str]) -> None:
    """Parse ``shardkit ARGS`` as the CLI would, without running it: the command must exist and
    take these options, and their values must convert."""
    command: click.Command = cli
    path, rest = ["shardkit"], list(args)
    while isinstance(command, click.Group):
        assert rest, f"`{' '.join(path)}` needs a command"
        name = rest.pop(0)
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f"`{' '.join(path)}` has no command {name!r}"
        command, path = sub, [*path, name]
    try:
        command.make_context(" ".join(path), rest)
    except click.UsageError as exc:
        raise AssertionError(f"`{' '.join([*path, *rest])}`: {exc.format_message()}") from None


@pytest.mark.parametrize("example", [e for e in ALL if e.lang in SHELL], ids=lambda e: e.where)
def test_every_shell_example_parses(example: Example, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("{}"))  # for `--payload -`
    commands = shell_commands(example)
    assert commands, f"{example.where}: no command"
    for command in commands:
        args = shardkit_args(command)
        if args is not None:
            parse_cli(args)
    if example.kind != "parse-only":
        runnable = [c for c in commands if not is_install_step(c)]
        assert runnable, f"{example.where}: nothing to run; mark it parse-only"


# -- Python and TOML ------------------------------------------------------------------------------


def test_every_marker_is_known_and_every_example_has_a_language() -> None:
    for e in ALL:
        assert e.lang or not e.mark, f"{e.where}: a marked block needs a language"
        assert e.lang or not e.body.startswith("$ "), f"{e.where}: tag a console example"
        if e.kind == "local-cloud":
            assert e.lang in ("python", *SHELL), e.where
    assert {e.kind for e in ALL} == {"run", "local-cloud", "parse-only", "file"}


@pytest.mark.parametrize("example", [e for e in ALL if e.lang == "toml"], ids=lambda e: e.where)
def test_every_toml_example_is_valid_toml(example: Example) -> None:
    tomllib.loads(example.body)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the repository's examples as the current directory; ``app`` packages loaded
    by an example are forgotten afterwards (every project names its code ``app``)."""
    for name in ("quickstart", "autoshard"):
        shutil.copytree(
            ROOT / "examples" / name,
            tmp_path / "examples" / name,
            ignore=shutil.ignore_patterns(".shardkit", "__pycache__"),
        )
    monkeypatch.chdir(tmp_path)
    path = list(sys.path)
    yield tmp_path
    sys.path[:] = path
    for name in [m for m in sys.modules if m == "app" or m.startswith("app.")]:
        del sys.modules[name]


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.name)
def test_the_python_examples_of_each_document_run(doc: Path, workdir: Path) -> None:
    """In document order, so an example may build on a file an earlier block wrote."""
    for e in examples(doc):
        if e.kind == "file":
            target = workdir / e.mark.split(" ", 1)[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(e.body)
            if target.suffix == ".py":
                compile(e.body, e.where, "exec")
        elif e.lang == "python":
            code = compile(e.body, e.where, "exec")
            if e.kind == "run":
                exec(code, {"__name__": f"docs_example_{e.line}"})


# -- the README's command table -------------------------------------------------------------------


def test_the_readme_command_table_lists_every_command() -> None:
    """A command added to the CLI is added to the README's table too."""
    text = (ROOT / "README.md").read_text("utf-8")
    table = text.split("| command | what it does |", 1)[1].split("\n\n", 1)[0]
    cells = [row.split(" | ", 1)[0] for row in table.splitlines() if row.startswith("| `")]
    words = [set(re.findall(r"[\w-]+", cell)) for cell in cells]
    missing = [" ".join(path) for path in leaf_commands() if not any(set(path) <= w for w in words)]
    assert not missing, f"README.md's command table lacks {missing}"


def _command_of(row: str) -> tuple[str, ...]:
    """The command a table row names: ``| `shardkit apply plan.json` |`` -> ``("apply",)``."""
    words = row.split("`")[1].split()[1:]
    return tuple(itertools.takewhile(lambda w: w.isalpha() and w.islower(), words))


def test_deploy_md_says_which_of_its_commands_take_local_and_aws() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text("utf-8")
    table = text.split("| command | what it does |", 1)[1].split("\n\n", 1)[0]
    commands = [_command_of(row) for row in table.splitlines() if row.startswith("| `shardkit ")]
    assert ("deploy",) in commands and ("apply",) in commands
    said = re.search(r"All but (.+?) take `--local`/`--aws`", " ".join(text.split()))
    assert said, "deploy.md says which commands take --local/--aws"
    exceptions = set(re.findall(r"`([a-z ]+)`", said.group(1)))
    assert exceptions == {" ".join(c) for c in commands if "local" not in params(c)}
