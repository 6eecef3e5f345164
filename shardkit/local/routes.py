"""What the local cloud's gateway and executor need to know of a deployment, handed to them.

The deploy engine owns the deployment record; the local cloud must not read it (the control
plane's ``deploy`` package depends on ``local``, never the other way). After every write of a
local-target record the engine calls :func:`publish` with just what the local cloud serves:
which Function URL invokes which (region, function, qualifier), and where each function's code
package is. The server process reads it back with :class:`RoutesWatch`, again whenever it changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .._files import write_json_atomic

__all__ = ["Routes", "RoutesWatch", "publish", "published"]

FORMAT = "shardkit-local-routes/1"
FILE = "routes.json"


@dataclass(frozen=True)
class Routes:
    """Function URL -> (region, function, qualifier); (region, function) -> (sha256, bucket,
    key) of its code package."""

    urls: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    code: dict[tuple[str, str], tuple[str, str, str]] = field(default_factory=dict)

    def code_location(self, region: str, function: str, sha256: str) -> tuple[str, str] | None:
        found = self.code.get((region, function))
        return (found[1], found[2]) if found and found[0] == sha256 else None


def _path(project_root: str | os.PathLike[str]) -> Path:
    return Path(project_root).resolve() / ".shardkit" / "local" / FILE


def publish(project_root: str | os.PathLike[str], routes: Routes) -> None:
    """Hand the local cloud of ``project_root`` what it serves now (atomically)."""
    write_json_atomic(
        _path(project_root),
        {
            "format": FORMAT,
            "urls": {url: list(t) for url, t in routes.urls.items()},
            "code": [[r, f, *c] for (r, f), c in routes.code.items()],
        },
    )


def published(project_root: str | os.PathLike[str]) -> bool:
    return _path(project_root).exists()


class RoutesWatch:
    """The published routes of one project, read again whenever the file changes."""

    def __init__(self, project_root: str | os.PathLike[str]) -> None:
        self.path = _path(project_root)
        self._stamp: tuple[int, int] | None = None
        self._routes = Routes()
        self._lock = threading.Lock()

    def current(self) -> Routes:
        with self._lock:
            stamp = None
            with contextlib.suppress(OSError):
                # every publish replaces the file: a new inode, even within one mtime tick
                st = self.path.stat()
                stamp = (st.st_ino, st.st_mtime_ns)
            if stamp != self._stamp:
                self._routes, self._stamp = self._load(), stamp
            return self._routes

    def _load(self) -> Routes:
        try:
            data = json.loads(self.path.read_text())
            if data.get("format") != FORMAT:
                return Routes()
            return Routes(
                urls={url: (t[0], t[1], t[2]) for url, t in data["urls"].items()},
                code={(r, f): (sha, bucket, key) for r, f, sha, bucket, key in data["code"]},
            )
        except (OSError, ValueError, KeyError, TypeError):
            return Routes()  # nothing published yet (or mid-write): serve nothing
