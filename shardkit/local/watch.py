"""What changed in a project since the last look: the files ``shardkit dev`` redeploys for.

Polling, standard library only: every file under the watched paths is known by its (mtime, size)
and a look compares the current set with the last one. A save is often several writes (an editor
writes a temporary file and renames it), so :meth:`Watcher.wait` returns only once a change has
been quiet for ``settle`` seconds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["Watcher", "project_paths"]

_SKIP_DIRS = {"__pycache__", ".shardkit", ".git", ".venv", ".pytest_cache", ".mypy_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".swp", "~")

Stamps = dict[Path, tuple[int, int]]


def project_paths(root: Path, code: str) -> list[Path]:
    """What a deploy is built from: shardkit.toml, the code directory, and ``bundles/``."""
    return [root / "shardkit.toml", root / code, root / "bundles"]


class Watcher:
    def __init__(self, paths: Iterable[Path], interval: float = 0.1, settle: float = 0.1) -> None:
        self.paths = [Path(p) for p in paths]
        self.interval, self.settle = interval, settle
        self._last = self._stamps()

    def changed(self) -> list[Path]:
        """Files added, removed or modified since the last call (or since the start)."""
        now = self._stamps()
        diff = sorted(p for p in now.keys() | self._last.keys() if now.get(p) != self._last.get(p))
        self._last = now
        return diff

    def wait(self, stop: Callable[[], bool] = lambda: False) -> list[Path]:
        """Block until something changed and then stayed quiet; [] if ``stop()`` first."""
        changed: set[Path] = set()
        quiet_since = None
        while not stop():
            found = self.changed()
            if found:
                changed.update(found)
                quiet_since = time.monotonic()
            elif (
                changed
                and quiet_since is not None
                and time.monotonic() - quiet_since >= self.settle
            ):
                return sorted(changed)
            time.sleep(self.interval)
        return []

    def _stamps(self) -> Stamps:
        stamps: Stamps = {}
        for path in self.paths:
            if path.is_file():
                stamps[path] = _stamp(path)
                continue
            for directory, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
                for name in files:
                    if not name.endswith(_SKIP_SUFFIXES):
                        file = Path(directory) / name
                        stamp = _stamp(file)
                        if stamp is not None:
                            stamps[file] = stamp
        return {p: s for p, s in stamps.items() if s is not None}


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:  # removed between the listing and the look
        return None
    return st.st_mtime_ns, st.st_size
