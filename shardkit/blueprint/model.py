"""The blueprint: an inert model of every resource a deployment consists of.

A :class:`Resource` is data: a kind from the registry of kinds shardkit implements
(:mod:`shardkit.kinds`: the deploy engine applies it with API calls, the CloudFormation renderer
turns it into a template), a physical name, a region and canonical JSON properties. Its ``fingerprint`` is the hash of all of
that, so "is what is deployed current?" is one string comparison.

Nothing here talks to AWS: the planner compares two blueprints (or a blueprint and the deployed
manifest), the executor applies the difference.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import kinds

__all__ = ["Blueprint", "Resource", "canonical_json"]


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Resource:
    """One resource of a deployment."""

    kind: str
    name: str
    region: str
    props: Mapping[str, Any]
    shard: str | None = None  # the shard it belongs to; None for regional resources

    def __post_init__(self) -> None:
        kinds.get(self.kind)  # a ValueError naming the known kinds if it is not one

    @property
    def key(self) -> str:
        """Unique within a blueprint: ``region/kind/name``."""
        return f"{self.region}/{self.kind}/{self.name}"

    @property
    def fingerprint(self) -> str:
        body = canonical_json([self.kind, self.name, self.region, self.shard, self.props])
        return hashlib.sha256(body.encode()).hexdigest()[:20]

    def depends_on(self) -> list[str]:
        """Keys of the resources this one needs to exist first (that its properties name)."""
        return [
            f"{self.region}/{ref.kind}/{name}"
            for ref, name in kinds.get(self.kind).references(self.props)
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "region": self.region,
            "shard": self.shard,
            "props": json.loads(canonical_json(self.props)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Resource:
        return cls(data["kind"], data["name"], data["region"], data["props"], data.get("shard"))


@dataclass(frozen=True)
class Blueprint:
    """Every resource of one deployment of one project, sorted by apply order."""

    project: str
    name: str
    account: str
    resources: tuple[Resource, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.resources, key=_order))
        keys = [r.key for r in ordered]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise ValueError(f"blueprint {self.name!r} defines {dup[0]!r} twice")
        object.__setattr__(self, "resources", ordered)

    @property
    def regions(self) -> list[str]:
        return sorted({r.region for r in self.resources})

    def by_key(self) -> dict[str, Resource]:
        return {r.key: r for r in self.resources}

    def in_region(self, region: str) -> list[Resource]:
        return [r for r in self.resources if r.region == region]

    def of_kind(self, kind: str) -> list[Resource]:
        return [r for r in self.resources if r.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "name": self.name,
            "account": self.account,
            "resources": [r.to_dict() for r in self.resources],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Blueprint:
        return cls(
            data["project"],
            data["name"],
            data["account"],
            tuple(Resource.from_dict(r) for r in data["resources"]),
        )

    def diff(self, other: Blueprint) -> dict[str, list[str]]:
        """Keys added, removed and changed going from ``self`` to ``other``."""
        a, b = self.by_key(), other.by_key()
        return {
            "added": sorted(set(b) - set(a)),
            "removed": sorted(set(a) - set(b)),
            "changed": sorted(k for k in set(a) & set(b) if a[k].fingerprint != b[k].fingerprint),
        }


def _order(r: Resource) -> tuple[int, str, str]:
    return (kinds.rank(r.kind), r.region, r.name)
