"""The plan: data that says exactly which AWS changes an apply will make, and the pure planner.

:func:`make_plan` compares the desired :class:`Blueprint` with the deployed :class:`Record` and
returns a :class:`Plan` - a list of steps, each one resource and one action. It reads nothing
and writes nothing. A plan can be printed, saved as JSON, reviewed and applied later:

* ``base`` is the fingerprint of the record it was made against; apply refuses a plan whose base
  is no longer what is deployed (Terraform's "saved plan is the approval");
* ``checksum`` covers everything else, so a plan edited by hand is refused;
* ``plan_id`` names its journal, so a failed apply resumes the same plan.

Order: creations and updates in the kinds' apply order (derived from their references, see
:mod:`shardkit.kinds`), code uploads right after the buckets, then the map publication, then
deletions in reverse order.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import kinds
from ..blueprint.model import Blueprint, Resource, canonical_json
from ..errors import DeployError, PlanFileError
from ..migrate.deploy import SlotBatch
from .record import Record, ResourceRecord

__all__ = ["PLAN_FORMAT", "REGISTRY_KEY", "Plan", "Step", "make_plan"]

PLAN_FORMAT = "shardkit-plan/1"
#: Where each region's registry bucket holds the signed map clients read.
REGISTRY_KEY = "registry/map.skm"


@dataclass(frozen=True)
class Step:
    """One change: ``action`` is create, update, delete, retain, upload, fence, migrate, publish
    or unpublish."""

    id: int
    action: str
    kind: str
    region: str
    name: str
    key: str
    props: Mapping[str, Any] = field(default_factory=dict)
    shard: str | None = None
    fingerprint: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "action": self.action,
            "kind": self.kind,
            "region": self.region,
            "name": self.name,
            "key": self.key,
            "props": self.props,
            "shard": self.shard,
            "fingerprint": self.fingerprint,
            "reason": self.reason,
        }

    @property
    def mutating(self) -> bool:
        return self.action != "retain"


@dataclass(frozen=True)
class Plan:
    project: str
    project_root: str
    target: str
    account: str
    base: str
    blueprint: dict[str, Any]
    steps: tuple[Step, ...]
    artifact: dict[str, str] | None = None  # {"key", "sha256"} of the code package
    map_envelope: bytes | None = None  # the signed map to publish, when it changed
    map_version: int = 0
    deployment: int = 0  # the deployment number this plan creates
    kind: str = "deploy"  # deploy | rollback | destroy | restore | bootstrap
    # The local cloud instance this plan re-creates the deployment on (it restarted, empty).
    restores: str = ""

    @property
    def is_noop(self) -> bool:
        return not any(s.mutating for s in self.steps)

    @property
    def plan_id(self) -> str:
        return _digest(self._body())[:16]

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.steps:
            counts[s.action] = counts.get(s.action, 0) + 1
        return counts

    def _body(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "kind": self.kind,
            "project": self.project,
            "project_root": self.project_root,
            "target": self.target,
            "account": self.account,
            "base": self.base,
            "deployment": self.deployment,
            "map_version": self.map_version,
            "map_envelope": base64.b64encode(self.map_envelope).decode()
            if self.map_envelope
            else None,
            "artifact": self.artifact,
            "blueprint": self.blueprint,
            "steps": [s.to_dict() for s in self.steps],
            # only when set, so the ids of plans saved before the field existed do not change
            **({"restores": self.restores} if self.restores else {}),
        }

    def to_json(self) -> str:
        body = self._body()
        body["plan_id"] = self.plan_id
        body["checksum"] = _digest(self._body())
        return json.dumps(body, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanFileError(f"{source} is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise PlanFileError(f"{source} is not a shardkit plan ({PLAN_FORMAT})")
        checksum = data.pop("checksum", None)
        data.pop("plan_id", None)
        if checksum != _digest(data):
            raise PlanFileError(
                f"{source} was changed after it was made (checksum mismatch)",
                hint="never edit a plan; make a new one with `shardkit plan`",
            )
        try:
            return cls._from_body(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanFileError(f"{source} is malformed: {exc}") from None

    @classmethod
    def _from_body(cls, d: dict[str, Any]) -> Plan:
        envelope = d["map_envelope"]
        return cls(
            project=d["project"],
            project_root=d["project_root"],
            target=d["target"],
            account=d["account"],
            base=d["base"],
            blueprint=d["blueprint"],
            steps=tuple(Step(**s) for s in d["steps"]),
            artifact=d["artifact"],
            map_envelope=base64.b64decode(envelope) if envelope else None,
            map_version=d["map_version"],
            deployment=d["deployment"],
            kind=d["kind"],
            restores=d.get("restores", ""),
        )

    @classmethod
    def load(cls, path: Path) -> Plan:
        try:
            text = path.read_text()
        except OSError as exc:
            raise PlanFileError(f"cannot read plan {path}: {exc.strerror}") from None
        return cls.from_json(text, str(path))


def _removal_reason(action: str, kind: str, record_holder: bool) -> str:
    """Why a deployed resource is deleted (or kept): the project is being destroyed, or the
    blueprint no longer has it; a kept one holds data or the deployment record."""
    if action == "retain":
        return _retain_reason(record_holder)
    return "destroy" if kind == "destroy" else "no longer in the blueprint"


def _digest(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def make_plan(
    desired: Blueprint,
    deployed: Record,
    *,
    project_root: str,
    artifact: dict[str, str] | None,
    map_envelope: bytes | None,
    map_version: int,
    slots: Sequence[SlotBatch] = (),
    delete_data: bool = False,
    keep: frozenset[str] = frozenset(),
    publish_to: Collection[str] | None = None,
    kind: str = "deploy",
) -> Plan:
    """The steps that turn ``deployed`` into ``desired``. Pure: reads and writes nothing.

    ``slots`` (see :func:`shardkit.migrate.deploy.slot_batches`) become ``fence`` steps (the
    initial slot records) and ``migrate`` steps (prepare, copy, cutover, cleanup of a live
    migration: :mod:`shardkit.migrate.live`): the slot records of the map being deployed are
    written to the state tables before the map is published, so a shard still routing with the
    old map cannot write a slot it lost (docs/architecture.md §4.4). ``keep``: keys of resources
    that are retained rather than deleted unless ``delete_data`` (the home region's bucket,
    which holds the deployment record). ``publish_to``: the regions whose registry needs
    ``map_envelope`` (all of the blueprint's by default). A registry the desired blueprint
    has no region for is emptied (``unpublish``) before anything is deleted, so no registry
    names a shard that is gone.
    """
    steps: list[Step] = []
    wanted = desired.by_key()
    buckets = {r.region: r.name for r in desired.of_kind("s3_bucket")}
    for region in desired.regions:
        if artifact and not deployed.has_artifact(region, artifact["key"]):
            steps.append(
                _step(
                    len(steps),
                    "upload",
                    "artifact",
                    region,
                    artifact["key"],
                    {"bucket": buckets[region], "sha256": artifact["sha256"]},
                    "code package not yet uploaded",
                )
            )
    for r in desired.resources:
        record = deployed.resources.get(r.key)
        if record is None:
            steps.append(_resource_step(len(steps), "create", r, "not deployed"))
        elif record.fingerprint != r.fingerprint:
            steps.append(_resource_step(len(steps), "update", r, _changed(record, r)))
        elif record.retained:
            steps.append(_resource_step(len(steps), "create", r, "kept from an earlier destroy"))
    steps += _fences(desired, deployed, slots)
    if map_envelope is not None:
        for region in desired.regions:
            if publish_to is not None and region not in publish_to:
                continue
            steps.append(
                _step(
                    len(steps),
                    "publish",
                    "map",
                    region,
                    REGISTRY_KEY,
                    {"bucket": buckets[region], "version": map_version},
                    f"map version {map_version}",
                )
            )
    recorded_buckets = deployed.buckets()
    for region in sorted(set(deployed.map_regions) - set(desired.regions)):
        if region in recorded_buckets:
            steps.append(
                _step(
                    len(steps),
                    "unpublish",
                    "map",
                    region,
                    REGISTRY_KEY,
                    {"bucket": recorded_buckets[region]},
                    "no shards here any more: clients must not read a map naming them",
                )
            )
    doomed = [k for k in deployed.resources if k not in wanted]
    doomed.sort(key=lambda k: (-kinds.rank(deployed.resources[k].kind), k))
    for key in doomed:
        record = deployed.resources[key]
        if record.retained and not delete_data:
            continue  # kept by an earlier destroy; only --delete-data removes it
        # a kind that holds user data, or the record's bucket, is kept unless asked otherwise
        kept = kinds.get(record.kind).retain or key in keep
        action = "retain" if kept and not delete_data else "delete"
        steps.append(
            Step(
                len(steps),
                action,
                record.kind,
                record.region,
                record.name,
                key,
                record.props,
                record.shard,
                "",
                _removal_reason(action, kind, key in keep),
            )
        )
    ordered = sorted(steps, key=_phase)
    steps = [replace(step, id=i) for i, step in enumerate(ordered)]
    return Plan(
        project=desired.project,
        project_root=project_root,
        target=deployed.target,
        account=desired.account,
        base=deployed.fingerprint(),
        blueprint=desired.to_dict(),
        steps=tuple(steps),
        artifact=artifact,
        map_envelope=map_envelope,
        map_version=map_version,
        deployment=deployed.deployment + 1,
        kind=kind,
    )


def _retain_reason(record_holder: bool) -> str:
    what = "the deployment record" if record_holder else "data"
    return f"holds {what}: kept (use --delete-data to delete)"


def _fences(desired: Blueprint, deployed: Record, slots: Sequence[SlotBatch]) -> list[Step]:
    """One step per slot batch, in the region it runs in, naming every state table it uses."""
    tables = deployed.tables()
    tables.update({r.region: r.name for r in desired.of_kind("dynamodb_table")})
    steps = []
    for batch in slots:
        regions = {batch.region} | {m["source_region"] for m in batch.props.get("moves", ())}
        missing = sorted(regions - set(tables))
        if missing:
            raise DeployError(
                f"slot records of group {batch.group} need a state table in "
                f"{', '.join(missing)}, and the blueprint has none there",
                hint="the blueprint must declare a dynamodb_table in every region with shards",
            )
        props = {**batch.props, "tables": {r: tables[r] for r in sorted(regions)}}
        phase = batch.props.get("phase")  # a live migration's step (shardkit.migrate.live)
        action, name = ("migrate", f"{batch.group}:{phase}") if phase else ("fence", batch.group)
        steps.append(_step(0, action, "slots", batch.region, name, props, batch.reason))
    return steps


def _phase(step: Step) -> tuple[int, int]:
    """Creations in dependency order (code uploads right after the buckets), then the map, so
    clients learn of new shards only once they exist, then deletions in reverse order, so old
    shards serve until the new map is out."""
    count = len(kinds.names())
    if step.action == "upload":
        return (2 * kinds.rank("s3_bucket") + 1, step.id)
    if step.action in ("fence", "migrate"):
        return (2 * count, step.id)
    if step.action in ("publish", "unpublish"):
        return (2 * count + 1, step.id)
    if step.action in ("delete", "retain"):
        return (4 * count - kinds.rank(step.kind), step.id)
    return (2 * kinds.rank(step.kind), step.id)


def _step(
    i: int, action: str, kind: str, region: str, name: str, props: dict[str, Any], reason: str
) -> Step:
    return Step(i, action, kind, region, name, f"{region}/{kind}/{name}", props, None, "", reason)


def _resource_step(i: int, action: str, r: Resource, reason: str) -> Step:
    return Step(i, action, r.kind, r.region, r.name, r.key, r.props, r.shard, r.fingerprint, reason)


def _changed(record: ResourceRecord, r: Resource) -> str:
    old, new = record.props, r.props
    fields = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "changed: " + ", ".join(fields) if fields else "changed"
