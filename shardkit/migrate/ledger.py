"""The migration ledger: what a reshard leaves for later, kept beside the deployed manifest.

One JSON file (``migrations.json`` in the target's state directory) with two parts:

* ``running``: the migration an apply is carrying out - its map version, when it began (the SLO
  guard counts errors from then) and the last progress event. ``shardkit status`` shows it while
  the apply's journal is unfinished (a killed or failed apply); a finished apply makes it history.
* ``cleanups``: per switched cross-region batch, the source copies to delete once the rollback
  window has passed (``due_at``). The next ``shardkit deploy`` (or ``shardkit cleanup``) plans a
  ``cleanup`` step for each one due; the step removes its entry when done.

Writers are the executor's region threads, so every change is made under one lock and written
atomically (a crash leaves the previous file, never half of one).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._files import write_json_atomic

__all__ = ["Ledger"]

_LOCK = threading.Lock()


class Ledger:
    """The ledger file of one target's state directory."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / "migrations.json"

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"running": None, "cleanups": []}
        return {"running": data.get("running"), "cleanups": list(data.get("cleanups", []))}

    def _change(self, change: Callable[[dict[str, Any]], None]) -> None:
        with _LOCK:
            data = self.read()
            change(data)
            write_json_atomic(self.path, data)

    def begin(self, plan_id: str, version: int, now: float) -> float:
        """Record that the migration to ``version`` (plan ``plan_id``) runs; returns when it
        began (the first call's ``now``: a resumed apply keeps its start)."""
        started: list[float] = []

        def change(data: dict[str, Any]) -> None:
            running = data["running"]
            if not running or running.get("plan_id") != plan_id:
                running = {"plan_id": plan_id, "version": version, "started_at": now}
                data["running"] = running
            started.append(float(running["started_at"]))

        self._change(change)
        return started[0]

    def note(self, plan_id: str, event: dict[str, Any]) -> None:
        """The last progress event of the running migration (what status shows)."""

        def change(data: dict[str, Any]) -> None:
            if data["running"] and data["running"].get("plan_id") == plan_id:
                data["running"]["last"] = event

        self._change(change)

    def add_cleanup(self, entry: dict[str, Any]) -> None:
        """Source copies to delete at ``entry["due_at"]``; the same ``id`` again replaces it."""

        def change(data: dict[str, Any]) -> None:
            data["cleanups"] = [c for c in data["cleanups"] if c["id"] != entry["id"]] + [entry]

        self._change(change)

    def remove_cleanup(self, entry_id: str) -> None:
        def change(data: dict[str, Any]) -> None:
            data["cleanups"] = [c for c in data["cleanups"] if c["id"] != entry_id]

        self._change(change)

    def due(self, now: float, *, all_: bool = False) -> list[dict[str, Any]]:
        """The cleanups due at ``now`` (every one pending with ``all_``), oldest first."""
        return sorted(
            (c for c in self.read()["cleanups"] if all_ or c["due_at"] <= now),
            key=lambda c: (c["due_at"], c["id"]),
        )

    def status(self, now: float, pending_plans: list[str]) -> dict[str, Any]:
        """The running migration (if its apply is unfinished) and the rollback windows left."""
        data = self.read()
        running = data["running"]
        if running and running.get("plan_id") not in pending_plans:
            running = None
        return {
            "migration": running,
            "cleanups": [
                {
                    "id": c["id"],
                    "group": c["group"],
                    "version": c["version"],
                    "slots": c["slots"],
                    "sources": sorted({m["source_region"] for m in c["moves"]}),
                    "window_left_s": max(0.0, c["due_at"] - now),
                }
                for c in sorted(data["cleanups"], key=lambda c: (c["due_at"], c["id"]))
            ],
        }
