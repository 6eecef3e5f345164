"""The test tiers stay honest: what a file under tests/unit or tests/functional may not do.

* ``tests/unit``: pure and in-process - no moto (``moto``, ``mock_aws``), no processes
  (``subprocess``, ``multiprocessing``, ``sys.executable``, ``os.system``/``fork``/``exec*``/``spawn*``);
* ``tests/functional``: moto or the CLI in-process - no processes either;
* ``tests/integration``: anything that runs separate processes.

Read from each file's syntax tree, so a docstring or comment that mentions moto is fine.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
PROCESSES = {"subprocess", "multiprocessing"}
OS_PROCESS_CALLS = ("system", "popen", "fork", "forkpty", "exec", "spawn", "posix_spawn")
FORBIDDEN = {
    "unit": {"modules": PROCESSES | {"moto"}, "names": {"mock_aws"}, "sys_executable": True},
    "functional": {"modules": PROCESSES, "names": set(), "sys_executable": False},
}


def violations(source: str, rules: dict) -> list[str]:
    """``line: what`` for every forbidden use in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [
                f"{line}: import {a.name}" for a in node.names if _top(a.name) in rules["modules"]
            ]
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and _top(node.module) in rules["modules"]
        ):
            found.append(f"{line}: from {node.module} import ...")
        elif isinstance(node, ast.ImportFrom) and any(a.name in rules["names"] for a in node.names):
            found.append(f"{line}: import of {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Name) and node.id in rules["names"]:
            found.append(f"{line}: {node.id}")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            owner, attr = node.value.id, node.attr
            if owner == "sys" and attr == "executable" and rules["sys_executable"]:
                found.append(f"{line}: sys.executable")
            elif owner == "os" and attr.startswith(OS_PROCESS_CALLS):
                found.append(f"{line}: os.{attr}")
    return sorted(set(found), key=lambda v: int(v.split(":")[0]))


def _top(module: str) -> str:
    return module.split(".")[0]


def _files(tier: str) -> list[Path]:
    return sorted((TESTS / tier).rglob("*.py"))


@pytest.mark.parametrize("tier", sorted(FORBIDDEN))
def test_no_test_file_reaches_past_its_tier(tier: str) -> None:
    files = _files(tier)
    assert files, f"tests/{tier} has test files"
    bad = {
        str(path.relative_to(TESTS.parent)): found
        for path in files
        if (found := violations(path.read_text(encoding="utf-8"), FORBIDDEN[tier]))
    }
    assert not bad, f"move these to the tier that runs them (README, Layout): {bad}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import subprocess\n", ["1: import subprocess"]),
        ("from moto import mock_aws\n", ["1: from moto import ..."]),
        ("import sys\nx = [sys.executable]\n", ["2: sys.executable"]),
        ("import os\nos.system('x')\n", ["2: os.system"]),
        ("from multiprocessing.pool import Pool\n", ["1: from multiprocessing.pool import ..."]),
        ("import moto.core\n", ["1: import moto.core"]),
        ("with mock_aws():\n    pass\n", ["1: mock_aws"]),
        ('"""moto and subprocess, in words only."""\nimport os\nos.path.join("a")\n', []),
    ],
)
def test_the_check_sees_each_kind_of_use(source: str, expected: list[str]) -> None:
    assert violations(source, FORBIDDEN["unit"]) == expected
