"""The README's Python example runs as written (in a copy of the quickstart)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "the README has a Python example"
    shutil.copytree(
        ROOT / "examples" / "quickstart",
        tmp_path / "examples" / "quickstart",
        ignore=shutil.ignore_patterns(".shardkit", "__pycache__"),
    )
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert (
        tmp_path / "examples" / "quickstart" / ".shardkit" / "keys" / "quickstart-dev.pub"
    ).exists()
