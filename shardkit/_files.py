"""Atomic file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["write_bytes_atomic", "write_bytes_exclusive", "write_json_atomic"]


def write_bytes_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, and rename it over."""
    with _written(path, data, mode) as tmp:
        os.replace(tmp, path)


def write_bytes_exclusive(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Like :func:`write_bytes_atomic`, but only if ``path`` does not exist yet: of two writers
    racing, one wins and the other gets ``FileExistsError`` (a hard link never replaces)."""
    with _written(path, data, mode) as tmp:
        os.link(tmp, path)
        Path(tmp).unlink()


@contextlib.contextmanager
def _written(path: Path, data: bytes, mode: int) -> Iterator[str]:
    """A complete, fsynced temporary copy of ``data`` beside ``path``; gone if the block fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp makes 0600; most of what we write is not secret
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        yield tmp
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
