"""The shell examples of README.md and docs/*.md, and the Python examples marked
``<!-- doc-test: local-cloud -->``, run as written against a deployed copy of the quickstart.

The copy is deployed once (``shardkit.testing``'s ``shardkit_deploy``, its own local cloud) and
appears as ``examples/quickstart`` in a working directory that also holds ``examples/autoshard``
and, for the README's quickstart line, ``.venv/bin/shardkit`` and ``.venv/bin/python`` (this
interpreter); ``shardkit`` is on the PATH. The README's install steps need the network: their
syntax is checked (``bash -n``), they are not run. Examples that use the quickstart run in
document order in one test, so it is deployed once however the tests are spread over processes;
every failing example is reported. A shell example that names no quickstart (the simulator's)
runs as a test of its own in a working directory without it, so another process can take it. Before each, ``shardkit local up`` restores the local cloud if an example
stopped it. tests/unit/test_docs_examples.py says how blocks are classified and runs the offline
ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from doc_examples import ALL, ROOT, SHELL, Example, runnable_script

from shardkit.local import server

pytestmark = pytest.mark.integration

RUN = [e for e in ALL if (e.lang in SHELL and e.kind != "parse-only") or e.kind == "local-cloud"]
OFFLINE = [e for e in RUN if e.kind == "run" and "quickstart" not in e.body]
DEPLOYED = [e for e in RUN if e not in OFFLINE]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, shardkit_deploy: Callable[..., Any]) -> Path:
    deployed = shardkit_deploy(ROOT / "examples" / "quickstart", fresh=True)
    work = _workdir(tmp_path_factory.mktemp("docs"))
    (work / "examples" / "quickstart").symlink_to(deployed.root, target_is_directory=True)
    return work


def _workdir(work: Path) -> Path:
    """``work`` with ``examples/autoshard``, ``docs/img`` and the ``.venv/bin`` shims."""
    (work / "examples").mkdir()
    _copy(ROOT / "examples" / "autoshard", work / "examples" / "autoshard")
    (work / "docs" / "img").mkdir(parents=True)
    bin_dir = work / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    shim = bin_dir / "shardkit"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m shardkit.cli.main "$@"\n')
    shim.chmod(0o755)
    return work


def _copy(source: Path, target: Path) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".shardkit", "__pycache__"))


def _env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{work / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "SHARDKIT_LOCAL_IDLE_TIMEOUT": "900",  # a crashed run cannot leave a server for long
        "SHARDKIT_LOCAL_MAX_LIFETIME": "1800",
    }


def _bash(script: str, work: Path, *, check_only: bool = False) -> str | None:
    """None if the script succeeds, else what it printed."""
    flags = ["-n"] if check_only else ["-e", "-o", "pipefail"]
    done = subprocess.run(
        ["bash", *flags, "-c", script],
        cwd=work,
        env=_env(work),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return None if done.returncode == 0 else f"{script}\n{done.stdout}\n{done.stderr}"


def _run(example: Example, work: Path) -> str | None:
    """None if the example runs as written, else why not."""
    if example.lang in SHELL:
        syntax = _bash(example.body, work, check_only=True) if example.lang == "sh" else None
        return syntax or _bash(runnable_script(example), work)
    cwd = Path.cwd()
    os.chdir(work)
    try:
        exec(compile(example.body, example.where, "exec"), {"__name__": f"docs_{example.line}"})
    except Exception as exc:  # reported with the example it came from
        return f"{type(exc).__name__}: {exc}"
    finally:
        os.chdir(cwd)
    return None


def test_the_examples_run_as_written(workdir: Path) -> None:
    assert DEPLOYED, "the docs have examples to run"
    failed = {}
    for example in DEPLOYED:
        if server.status(workdir / "examples" / "quickstart")["state"] != "running":
            up = _bash("shardkit local up examples/quickstart --timeout 120", workdir)
            assert up is None, up
        problem = _run(example, workdir)
        if problem is not None:
            failed[example.where] = problem
    assert not failed, "\n\n".join(f"{where}:\n{why}" for where, why in failed.items())


@pytest.mark.parametrize("example", OFFLINE, ids=lambda e: e.where)
def test_an_example_without_the_quickstart_runs_as_written(
    example: Example, tmp_path: Path
) -> None:
    problem = _run(example, _workdir(tmp_path))
    assert problem is None, f"{example.where}:\n{problem}"


def test_every_example_runs_in_one_of_the_tests() -> None:
    assert OFFLINE, "the simulator's examples run without the quickstart"
    assert sorted(OFFLINE + DEPLOYED, key=lambda e: e.where) == sorted(RUN, key=lambda e: e.where)
