"""The deployment record: what is deployed, as typed, frozen data.

A :class:`Record` is the one description of a deployment that every package reads - the local
gateway and executor, the routing client, the CLI - through its accessors (functions and URLs
per shard, buckets and tables per region, where a code package lives, the published map), never
through file paths or raw JSON. It is written as JSON with a ``format`` (``shardkit-deployment/2``);
:func:`parse_record` upgrades what older shardkit wrote (a format-less ``manifest.json`` plus
``map.skm``) and refuses a newer format with the command that fixes it.

Records are immutable: changes make new records (``model_copy``), and the executor accumulates an
apply's completed steps in a :class:`RecordBuilder`. :meth:`Record.fingerprint` - a plan's
``base`` - covers exactly what the format-less manifest covered, in the same shape, so a plan
saved before an upgrade stays valid while the deployed state is unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..blueprint.model import canonical_json
from ..errors import RecordFormatError

__all__ = [
    "RECORD_FORMAT",
    "HistoryEntry",
    "Record",
    "RecordBuilder",
    "ResourceRecord",
    "parse_history",
    "parse_record",
]

RECORD_FORMAT = "shardkit-deployment/2"
_FORMAT = re.compile(r"^shardkit-deployment/(\d+)$")
_UPGRADE_HINT = "upgrade shardkit (`pip install -U shardkit`), then run the command again"

Status = Literal["empty", "ok", "applying", "failed", "destroyed"]


class _Frozen(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )


class ResourceRecord(_Frozen):
    """One deployed resource: its kind, name and place, the props it was made with, what AWS
    returned (ARNs, URLs, versions), and whether a destroy kept it (a table holding data)."""

    kind: str
    name: str
    region: str
    shard: str | None = None
    fingerprint: str = ""
    props: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    retained: bool = False

    def legacy(self) -> dict[str, Any]:
        """The shape the format-less manifest had (the fingerprint is taken over it)."""
        body = self.model_dump(exclude={"retained"})
        return {**body, "retained": True} if self.retained else body


class Record(_Frozen):
    """What is deployed on one target of one project."""

    format: Literal["shardkit-deployment/2"] = RECORD_FORMAT
    project: str
    target: str
    account: str = ""
    home_region: str = ""
    lineage: str = ""  # one deployment's records share it; a fresh start gets a new one
    serial: int = 0  # +1 per write: the newer of two copies of one lineage wins
    status: Status = "empty"
    deployment: int = 0
    resources: dict[str, ResourceRecord] = {}
    artifacts: dict[str, tuple[str, ...]] = {}  # region -> uploaded code package keys
    map_version: int = 0
    map_version_max: int = 0  # highest version published anywhere, even by a failed apply
    map_sha256: str = ""
    map_regions: tuple[str, ...] = ()
    map_envelope: bytes | None = None  # the signed map last published
    epochs: dict[str, int] = {}  # old layout only: shard -> epoch fenced in its table
    local_instance: str = ""  # the local cloud instance the resources live on

    @classmethod
    def empty(cls, project: str, target: str, home_region: str = "") -> Record:
        return cls(project=project, target=target, home_region=home_region)

    # -- identity ---------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """The deployed state a plan is made against (status and bookkeeping excluded)."""
        body = {
            "project": self.project,
            "target": self.target,
            "account": self.account,
            "resources": {k: r.legacy() for k, r in self.resources.items()},
            "artifacts": {r: list(keys) for r, keys in self.artifacts.items()},
            "map_version": self.map_version,
            "map_version_max": self.map_version_max,
            "map_sha256": self.map_sha256,
            "map_regions": list(self.map_regions),
            "epochs": self.epochs,
            "deployment": self.deployment,
        }
        return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:24]

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=1).encode() + b"\n"

    def newer_than(self, other: Record) -> bool:
        """Whether this copy supersedes ``other`` (the cache against the remote copy)."""
        return self.lineage == other.lineage and self.serial > other.serial

    def written(self) -> Record:
        """The next copy to write: one serial higher, with a lineage from its first write."""
        return self.model_copy(
            update={"serial": self.serial + 1, "lineage": self.lineage or uuid.uuid4().hex}
        )

    # -- accessors ----------------------------------------------------------------------------

    def of_kind(self, kind: str) -> dict[str, ResourceRecord]:
        return {k: r for k, r in self.resources.items() if r.kind == kind}

    def functions(self) -> dict[str, str]:
        """shard -> function name."""
        return {r.shard: r.name for r in self.of_kind("lambda_function").values() if r.shard}

    def urls(self) -> dict[str, str]:
        """shard -> Function URL."""
        return {
            r.shard: str(r.outputs.get("url", ""))
            for r in self.of_kind("function_url").values()
            if r.shard
        }

    def url_targets(self) -> dict[str, tuple[str, str, str]]:
        """Function URL -> (region, function, qualifier) it invokes."""
        return {
            str(r.outputs["url"]): (r.region, r.props["function"], r.props["qualifier"])
            for r in self.of_kind("function_url").values()
            if r.outputs.get("url")
        }

    def buckets(self) -> dict[str, str]:
        """region -> bucket (code packages and the map registry); kept ones excluded."""
        return {r.region: r.name for r in self.of_kind("s3_bucket").values() if not r.retained}

    def tables(self) -> dict[str, str]:
        """region -> state table (including tables a destroy kept)."""
        return {r.region: r.name for r in self.of_kind("dynamodb_table").values()}

    def regions(self) -> list[str]:
        return sorted({r.region for r in self.resources.values()})

    def retained(self) -> list[str]:
        return sorted(k for k, r in self.resources.items() if r.retained)

    def code_location(self, region: str, function: str, sha256: str) -> tuple[str, str] | None:
        """(bucket, key) of the code package ``function`` in ``region`` was deployed with, if
        its hash is ``sha256`` (hex)."""
        rec = self.resources.get(f"{region}/lambda_function/{function}")
        code = rec.props.get("code", {}) if rec else {}
        if code.get("sha256") != sha256:
            return None
        return str(code["bucket"]), str(code["key"])

    def outputs(self) -> dict[str, Any]:
        """Per shard and per region what callers need (function, URL, version; bucket,
        table), as each kind summarises itself: ``outputs.json``."""
        from .. import kinds

        shards: dict[str, dict[str, Any]] = {}
        regions: dict[str, dict[str, str]] = {}
        for rec in self.resources.values():
            fields = kinds.get(rec.kind).summary(rec.name, rec.outputs)
            if rec.shard:
                shards.setdefault(rec.shard, {"region": rec.region}).update(fields)
            elif fields:
                regions.setdefault(rec.region, {}).update(fields)
        return {
            "project": self.project,
            "target": self.target,
            "map_version": self.map_version,
            "deployment": self.deployment,
            "regions": dict(sorted(regions.items())),
            "shards": dict(sorted(shards.items())),
        }

    def code_locations(self) -> dict[tuple[str, str], tuple[str, str, str]]:
        """(region, function) -> (sha256, bucket, key) of the code package it was deployed
        with."""
        return {
            (r.region, r.name): (str(c["sha256"]), str(c["bucket"]), str(c["key"]))
            for r in self.of_kind("lambda_function").values()
            if (c := r.props.get("code"))
        }

    def shards(self) -> dict[str, dict[str, Any]]:
        """shard -> region, function, alias version and URL."""
        return dict(self.outputs()["shards"])

    def has_artifact(self, region: str, key: str) -> bool:
        return key in self.artifacts.get(region, ())

    def emptied(self) -> Record:
        """The same record with nothing existing: what a restarted local cloud holds. The map
        version ceiling and the deployment number stay (versions only move forward)."""
        return self.model_copy(
            update={
                "resources": {},
                "artifacts": {},
                "map_regions": (),
                "epochs": {},
                "map_version": 0,
                "map_sha256": "",
            }
        )


class HistoryEntry(_Frozen):
    """One successful deployment, for rollback: its blueprint and the map it published."""

    format: Literal["shardkit-deployment/2"] = RECORD_FORMAT
    deployment: int
    blueprint: dict[str, Any]
    map: bytes = b""

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=1).encode() + b"\n"


class RecordBuilder:
    """A record under construction: the executor's completed steps, one at a time."""

    def __init__(self, base: Record) -> None:
        self.fields = base.model_dump()
        self.resources: dict[str, ResourceRecord] = dict(base.resources)
        self.artifacts = {r: list(keys) for r, keys in base.artifacts.items()}
        self.map_regions = list(base.map_regions)
        self.epochs = dict(base.epochs)

    def put(self, key: str, resource: ResourceRecord) -> None:
        self.resources[key] = resource

    def remove(self, key: str) -> None:
        self.resources.pop(key, None)

    def retain(self, key: str) -> None:
        self.resources[key] = self.resources[key].model_copy(update={"retained": True})

    def uploaded(self, region: str, key: str) -> None:
        keys = self.artifacts.setdefault(region, [])
        if key not in keys:
            keys.append(key)

    def published(self, region: str, version: int) -> None:
        self.fields["map_version_max"] = max(self.fields["map_version_max"], version)
        if region not in self.map_regions:
            self.map_regions.append(region)

    def unpublished(self, region: str) -> None:
        if region in self.map_regions:
            self.map_regions.remove(region)

    def set(self, **fields: Any) -> None:
        self.fields.update(fields)

    def build(self) -> Record:
        """The record, with what depends on a bucket or a function dropped when it is gone."""
        buckets = {
            r.region for r in self.resources.values() if r.kind == "s3_bucket" and not r.retained
        }
        shards = {r.shard for r in self.resources.values() if r.kind == "lambda_function"}
        return Record.model_validate(
            {
                **self.fields,
                "resources": self.resources,
                "artifacts": {r: tuple(k) for r, k in self.artifacts.items() if r in buckets},
                "map_regions": tuple(sorted(r for r in self.map_regions if r in buckets)),
                "epochs": {s: e for s, e in self.epochs.items() if s in shards},
            }
        )


# -- reading, upgrading ----------------------------------------------------------------------


def parse_record(data: Any, source: str, *, legacy_map: bytes | None = None) -> Record:
    """A record from its JSON. A format-less manifest (shardkit before the record had a format)
    is upgraded, with ``legacy_map`` (its ``map.skm``) as the published map."""
    _check_format(data, source)
    try:
        body = data if "format" in data else _upgrade(data, legacy_map)
        return Record.model_validate_json(json.dumps(body))
    except (ValidationError, TypeError, KeyError, AttributeError) as exc:
        raise RecordFormatError(
            f"{source} is not a valid deployment record: {_first_error(exc)}",
            hint="restore it from a backup, or remove it to start over (deployed resources "
            "are then unmanaged)",
        ) from None


def parse_history(data: Any, source: str) -> HistoryEntry:
    """A deployment history entry; format-less ones (the map in base64) are upgraded."""
    _check_format(data, source)
    try:
        if "format" in data:
            return HistoryEntry.model_validate_json(json.dumps(data))
        return HistoryEntry(
            deployment=data["deployment"],
            blueprint=data["blueprint"],
            map=base64.b64decode(data.get("map") or ""),
        )
    except (ValidationError, TypeError, KeyError, ValueError) as exc:
        raise RecordFormatError(
            f"{source} is not a valid deployment history entry: {_first_error(exc)}",
            hint="remove it; only rollback to that deployment needs it",
        ) from None


def _check_format(data: Any, source: str) -> None:
    if not isinstance(data, Mapping):
        raise RecordFormatError(f"{source} is not a shardkit deployment record (not an object)")
    fmt = data.get("format")
    if fmt is None or fmt == RECORD_FORMAT:
        return
    found = _FORMAT.match(str(fmt))
    if found and int(found.group(1)) > 2:
        raise RecordFormatError(
            f"{source} was written by a newer shardkit (format {fmt}); this shardkit reads "
            f"{RECORD_FORMAT} and older",
            hint=_UPGRADE_HINT,
        )
    raise RecordFormatError(f"{source} has an unknown format {fmt!r}", hint=_UPGRADE_HINT)


def _upgrade(data: Mapping[str, Any], legacy_map: bytes | None) -> dict[str, Any]:
    """Format-less manifest -> format 2: resources gain a typed ``retained`` flag, the map
    bytes move in, the status "empty" of a record with a deployment stays as it was."""
    body = dict(data)
    body["format"] = RECORD_FORMAT
    body["resources"] = {k: dict(r) for k, r in data.get("resources", {}).items()}
    body["map_envelope"] = base64.b64encode(legacy_map).decode() if legacy_map else None
    return body


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return f"{where}: {err['msg']}" if where else str(err["msg"])
    return f"{type(exc).__name__}: {exc}"
