"""The pytest plugin for users (shardkit.testing): docs/testing.md's example runs here, against
the quickstart (``shardkit_project`` in pyproject.toml), and a misconfigured project is refused.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
_BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
assert len(_BLOCKS) == 1, "docs/testing.md has one example test"
exec(compile(_BLOCKS[0], str(DOC), "exec"))  # defines the example's test_* functions here


def test_the_example_defines_tests() -> None:
    assert [name for name in globals() if name.startswith("test_state")]


def test_a_directory_without_a_project_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_x.py").write_text("def test_x(shardkit_project):\n    pass\n")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode != 0
    assert f"shardkit_project: {tmp_path} holds no shardkit.toml" in out.stdout + out.stderr
