"""The README's install and test commands are the ones CI runs (its examples run in
tests/unit/test_docs_examples.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _sh_block_after(text: str, lead: str) -> str:
    match = re.search(
        re.escape(lead) + r"\s*(?:<!-- doc-test: [^\n]* -->\n)?```sh\n(.*?)\n```", text, re.S
    )
    assert match, f"the README has a sh block after {lead!r}"
    return match.group(1)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    command = _sh_block_after((ROOT / "README.md").read_text(), "Run the tests:")
    assert "\n" not in command
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.parametrize(
    ("lead", "extra"),
    [
        ("no AWS account and no Docker needed:", "local"),
        ("Run the tests:", "dev"),
    ],
)
def test_the_readme_commands_install_the_tested_set(lead: str, extra: str) -> None:
    command = _sh_block_after((ROOT / "README.md").read_text(), lead)
    assert command.startswith("python3 -m venv .venv && ")
    assert f".venv/bin/pip install -q -c constraints.txt -e '.[{extra}]' && " in command
