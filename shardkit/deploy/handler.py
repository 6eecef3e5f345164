"""Before anything is deployed: does the code package's handler import, as the function would?

A handler the package cannot import deploys fine and then fails every request. So a plan unpacks
the package it built into a temporary directory and, in a fresh interpreter whose import path
starts there (a Lambda function's task root), imports ``module`` and looks up ``function`` - in
a subprocess, so the project's code never runs inside shardkit, and what the import finds is
what the function would find. A package is checked once per handler: the result is kept beside
the cached package.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .._files import write_bytes_atomic
from ..errors import HandlerError

__all__ = ["check_handler"]

#: Seconds an import may take (a model loaded at import time can be slow, not unbounded).
IMPORT_TIMEOUT = 120.0

_PROBE = """
import importlib, sys
module, _, name = sys.argv[1].partition(":")
try:
    fn = getattr(importlib.import_module(module), name)
except BaseException as exc:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    raise SystemExit(1)
if not callable(fn):
    print(f"{name} is a {type(fn).__name__}, not callable", file=sys.stderr)
    raise SystemExit(1)
"""


def check_handler(package: bytes, handler: str, cache: Path | None = None) -> None:
    """Raise :class:`HandlerError` unless ``package`` imports ``handler`` (``module:function``).
    ``cache``: a file that remembers the handler last found in this package."""
    if cache is not None and cache.exists() and cache.read_text("utf-8") == handler:
        return
    problem = _import_problem(package, handler)
    if problem:
        raise HandlerError(
            f"proxy.handler = {handler!r} cannot be loaded from the code package: {problem}",
            hint="check the module path (relative to the project's code directory, "
            "[proxy] code) and the function name, and that everything it imports is installed",
        )
    if cache is not None:
        write_bytes_atomic(cache, handler.encode())


def _import_problem(package: bytes, handler: str) -> str:
    with tempfile.TemporaryDirectory(prefix="shardkit-handler-") as root:
        with zipfile.ZipFile(io.BytesIO(package)) as zf:
            zf.extractall(root)
        try:
            done = subprocess.run(
                [sys.executable, "-c", f"import sys; sys.path[0] = {root!r}\n{_PROBE}", handler],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=IMPORT_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"importing it took longer than {IMPORT_TIMEOUT:g} s"
    if done.returncode == 0:
        return ""
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f"the import exited with status {done.returncode}"
