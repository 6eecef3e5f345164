"""What shardkit records about a deployment, under ``PROJECT/.shardkit/deploy/<target>/``.

* ``manifest.json`` - what is deployed now: every resource's fingerprint and outputs, uploaded
  artifacts, the published map. Its fingerprint is the "deployed state" a plan is made against.
  It is replaced atomically, and only with states that are true (after an apply, or after the
  completed steps of a failed one), so it never records anything half-done.
* ``deployments/NNNNNN.json`` - each successful deployment (blueprint + map), for rollback.
* ``journal/<plan_id>.jsonl`` - one line per completed step of an apply in progress; it is what
  lets a failed apply resume, and it is removed when the apply completes.
* ``map.skm`` - the signed map that was last published.
* ``lock`` - one apply at a time per project and target.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._files import write_bytes_atomic, write_json_atomic
from ..blueprint.model import canonical_json
from ..errors import DeployError

__all__ = ["Manifest", "StateStore"]


@dataclass
class Manifest:
    """The deployed state. ``resources`` maps resource keys to their records."""

    project: str
    target: str
    account: str = ""
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifacts: dict[str, list[str]] = field(default_factory=dict)  # region -> uploaded keys
    map_version: int = 0
    map_version_max: int = 0  # highest version published anywhere, even by a failed apply
    map_sha256: str = ""
    map_regions: list[str] = field(default_factory=list)
    epochs: dict[str, int] = field(default_factory=dict)  # old layout only (per-shard fences)
    deployment: int = 0
    status: str = "empty"  # empty | ok | failed
    local_instance: str = ""

    def fingerprint(self) -> str:
        body = {k: v for k, v in self.to_dict().items() if k not in ("status", "local_instance")}
        return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:24]

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "target": self.target,
            "account": self.account,
            "resources": self.resources,
            "artifacts": self.artifacts,
            "map_version": self.map_version,
            "map_version_max": self.map_version_max,
            "map_sha256": self.map_sha256,
            "map_regions": self.map_regions,
            "epochs": self.epochs,
            "deployment": self.deployment,
            "status": self.status,
            "local_instance": self.local_instance,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        return cls(**data)

    def has_artifact(self, region: str, key: str) -> bool:
        return key in self.artifacts.get(region, [])


class StateStore:
    """Files of one project and target."""

    def __init__(self, state_dir: Path, target: str) -> None:
        self.root = state_dir / "deploy" / target
        self.target = target

    # -- manifest --------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def load_manifest(self, project: str) -> Manifest:
        if not self.manifest_path.exists():
            return Manifest(project=project, target=self.target)
        data = _read_json(self.manifest_path)
        manifest = Manifest.from_dict(data)
        if manifest.project != project:
            raise DeployError(
                f"{self.manifest_path} records project {manifest.project!r}, not {project!r}",
                hint="each project directory deploys one project; check project.name",
            )
        return manifest

    def save_manifest(self, manifest: Manifest) -> None:
        write_json_atomic(self.manifest_path, manifest.to_dict())

    # -- published map ---------------------------------------------------------------------

    @property
    def map_path(self) -> Path:
        return self.root / "map.skm"

    def load_map_bytes(self) -> bytes | None:
        return self.map_path.read_bytes() if self.map_path.exists() else None

    def save_map_bytes(self, data: bytes) -> None:
        write_bytes_atomic(self.map_path, data)

    # -- deployments (rollback history) ----------------------------------------------------

    def record_deployment(self, number: int, blueprint: dict[str, Any], map_bytes: bytes) -> None:
        write_json_atomic(
            self.root / "deployments" / f"{number:06d}.json",
            {
                "deployment": number,
                "blueprint": blueprint,
                "map": base64.b64encode(map_bytes).decode(),
            },
        )

    def deployments(self) -> list[int]:
        folder = self.root / "deployments"
        return sorted(int(p.stem) for p in folder.glob("*.json")) if folder.is_dir() else []

    def load_deployment(self, number: int) -> dict[str, Any]:
        data = _read_json(self.root / "deployments" / f"{number:06d}.json")
        data["map"] = base64.b64decode(data["map"])
        return data

    # -- journal -----------------------------------------------------------------------------

    def journal_path(self, plan_id: str) -> Path:
        return self.root / "journal" / f"{plan_id}.jsonl"

    def pending_journals(self) -> list[str]:
        folder = self.root / "journal"
        return sorted(p.stem for p in folder.glob("*.jsonl")) if folder.is_dir() else []

    def read_journal(self, plan_id: str) -> dict[int, dict[str, Any]]:
        """Completed steps of a plan: step id -> outputs. A torn last line is ignored."""
        path = self.journal_path(plan_id)
        done: dict[int, dict[str, Any]] = {}
        if not path.exists():
            return done
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a crash mid-write leaves at most one torn line: that step is redone
            done[entry["step"]] = entry.get("outputs", {})
        return done

    @contextlib.contextmanager
    def journal(self, plan_id: str) -> Iterator[Any]:
        path = self.journal_path(plan_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:

            def record(step: int, outputs: dict[str, Any]) -> None:
                f.write(json.dumps({"step": step, "outputs": outputs}) + "\n")
                f.flush()
                os.fsync(f.fileno())

            yield record

    def finish_journal(self, plan_id: str) -> None:
        self.journal_path(plan_id).unlink(missing_ok=True)

    # -- lock ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DeployError(
                    f"another shardkit command is applying changes to {self.root}",
                    hint="wait for it to finish, then run this command again",
                ) from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DeployError(
            f"{path} is unreadable: {exc}",
            hint="restore it from a backup, or remove the project's .shardkit/deploy "
            "to start over (deployed resources are then unmanaged)",
        ) from None
