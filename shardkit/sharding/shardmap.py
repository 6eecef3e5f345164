"""The shard map as the data plane holds it: immutable, and fast to route with.

``key -> jurisdiction (residency rules) -> 64-bit hash -> slot -> shard`` of that jurisdiction's
group. Each group's table holds :class:`Shard` objects directly, so a route is one hash, one shift
and two lookups. Residency fails closed (docs/architecture.md §4.3): a key is routed only to
shards of its own jurisdiction; with every such shard avoided, routing raises instead of looking
elsewhere.

This module is on the compact data-plane path: stdlib, xxhash and jump only. numpy is imported
lazily by the batch methods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any

from ..errors import NoEligibleShardError, ResidencyError
from .hashing import HASHES, mix64

__all__ = ["Group", "Shard", "ShardMap"]


class Shard:
    """One deployed shard: a proxy function and its state partition, in one region."""

    __slots__ = ("domain", "epoch", "group", "id", "index", "jurisdiction", "region", "weight")

    def __init__(
        self,
        id: str,
        group: str,
        region: str,
        jurisdiction: str,
        weight: float,
        domain: str,
        epoch: int,
        index: int = -1,
    ) -> None:
        self.id = id
        self.group = group
        self.region = region
        self.jurisdiction = jurisdiction
        self.weight = weight
        self.domain = domain
        self.epoch = epoch
        self.index = index  # position in ShardMap.shards (sorted by id)

    def _key(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.group,
            self.region,
            self.jurisdiction,
            self.weight,
            self.domain,
            self.epoch,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Shard) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Shard({self.id!r}, region={self.region!r}, epoch={self.epoch})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "group": self.group,
            "region": self.region,
            "jurisdiction": self.jurisdiction,
            "weight": self.weight,
            "domain": self.domain,
            "epoch": self.epoch,
        }


class Group:
    """The slot table of one shard group; a group serves exactly one jurisdiction."""

    __slots__ = ("jurisdiction", "name", "positions", "primary", "replicas")

    def __init__(
        self,
        name: str,
        jurisdiction: str,
        positions: tuple[str | None, ...],
        primary: list[Shard],
        replicas: tuple[list[Shard], ...],
    ) -> None:
        self.name = name
        self.jurisdiction = jurisdiction
        self.positions = positions
        self.primary = primary
        self.replicas = replicas

    def shards(self) -> list[Shard]:
        """The group's live shards, by id."""
        return sorted({s.id: s for s in self.primary}.values(), key=lambda s: s.id)


class ShardMap:
    """An immutable, verified shard map. Build one with :func:`shardkit.build_map`, or decode
    one with :func:`shardkit.decode_map`."""

    def __init__(
        self,
        *,
        project: str,
        version: int,
        created_at: int,
        expires_at: int,
        hash: str,
        slot_bits: int,
        regions: Mapping[str, str],
        residency_rules: Sequence[tuple[str, str]],
        default_jurisdiction: str | None,
        shards: Sequence[Shard],
        groups: Sequence[Group],
    ) -> None:
        self.project = project
        self.version = version
        self.created_at = created_at
        self.expires_at = expires_at
        self.hash = hash
        self.slot_bits = slot_bits
        self.regions = dict(sorted(regions.items()))
        self.residency_rules = tuple(sorted(residency_rules))
        self.default_jurisdiction = default_jurisdiction
        self.shards = tuple(sorted(shards, key=lambda s: s.id))
        for i, shard in enumerate(self.shards):
            shard.index = i
        self.groups = {g.name: g for g in sorted(groups, key=lambda g: g.name)}
        self._by_id = {s.id: s for s in self.shards}
        self._by_jurisdiction = {g.jurisdiction: g for g in self.groups.values()}
        self._tables = {j: g.primary for j, g in self._by_jurisdiction.items()}
        self._hash = HASHES[hash]
        self._shift = 64 - slot_bits
        lengths: dict[int, dict[str, str]] = {}
        for prefix, jurisdiction in self.residency_rules:
            lengths.setdefault(len(prefix), {})[prefix] = jurisdiction
        # Longest prefix wins, so "eu-de:" can refine "eu:".
        self._rules = tuple(sorted(lengths.items(), reverse=True))
        self.route = _router(self)  # type: ignore[method-assign]

    # -- identity -------------------------------------------------------------------------------

    @property
    def slot_count(self) -> int:
        return 1 << self.slot_bits

    @property
    def jurisdictions(self) -> list[str]:
        return sorted(self._by_jurisdiction)

    def shard(self, shard_id: str) -> Shard:
        try:
            return self._by_id[shard_id]
        except KeyError:
            raise ResidencyError(
                f"no shard {shard_id!r} in map version {self.version}",
                hint=f"known shards: {', '.join(s.id for s in self.shards[:8])}...",
            ) from None

    def group_for(self, jurisdiction: str) -> Group:
        try:
            return self._by_jurisdiction[jurisdiction]
        except KeyError:
            raise ResidencyError(
                f"jurisdiction {jurisdiction!r} has no shards in map version {self.version}",
                hint=f"jurisdictions with shards: {', '.join(self.jurisdictions)}",
            ) from None

    # -- single-key routing ---------------------------------------------------------------------

    def jurisdiction_of(self, key: str, jurisdiction: str | None = None) -> str:
        """The key's jurisdiction: a matching residency rule, else the caller's tag, else the
        map's default. A tag that contradicts a matching rule is refused (fails closed)."""
        for length, rules in self._rules:
            found = rules.get(key[:length])
            if found is not None:
                if jurisdiction is not None and jurisdiction != found:
                    raise ResidencyError(
                        f"key {key!r} is tagged {jurisdiction!r} but its prefix "
                        f"{key[:length]!r} belongs to {found!r}",
                        hint="fix the tag or the key; a key never changes jurisdiction",
                    )
                return found
        if jurisdiction is not None:
            if jurisdiction not in self._by_jurisdiction:
                self.group_for(jurisdiction)
            return jurisdiction
        if self.default_jurisdiction is None:
            raise ResidencyError(
                f"key {key!r} matches no residency rule and the map has no default jurisdiction",
                hint="tag the key with jurisdiction=..., or add a rule or a default to "
                "[residency] in shardkit.toml",
            )
        return self.default_jurisdiction

    def slot(self, key: str) -> int:
        """The key's slot (the top ``slot_bits`` bits of its hash)."""
        return self._hash(key) >> self._shift

    def route(self, key: str, jurisdiction: str | None = None) -> Shard:
        """The shard that owns ``key``: always one of the key's own jurisdiction.

        (Each map replaces this method with a closure specialised for its rules, see
        :func:`_router`; this is the general path it falls back to.)
        """
        table = self._tables.get(self.jurisdiction_of(key, jurisdiction))
        if table is None:
            self.group_for(self.jurisdiction_of(key, jurisdiction))
        return table[self._hash(key) >> self._shift]  # type: ignore[index]

    def preference_list(
        self, key: str, n: int | None = None, jurisdiction: str | None = None
    ) -> list[Shard]:
        """Failover order for ``key``: its owner, its replicas, then the other shards of its
        jurisdiction in a per-slot order. Never a shard of another jurisdiction."""
        group = self.group_for(self.jurisdiction_of(key, jurisdiction))
        s = self._hash(key) >> self._shift
        order = [group.primary[s]]
        for column in group.replicas:
            if column[s] not in order:
                order.append(column[s])
        if n is not None and len(order) >= n:
            return order[:n]
        h = mix64(s, 1)
        rest = sorted(
            (x for x in group.shards() if x not in order),
            key=lambda x: (mix64(h ^ _id_hash(x.id), 2), x.id),
        )
        order.extend(rest)
        return order if n is None else order[:n]

    def route_avoiding(
        self, key: str, unhealthy: Iterable[str], jurisdiction: str | None = None
    ) -> Shard:
        """The first shard in the key's preference list whose id is not in ``unhealthy``.

        Raises :class:`NoEligibleShardError` when every shard of the key's jurisdiction is
        unhealthy: the key is never sent to another jurisdiction.
        """
        bad = set(unhealthy)
        candidates = self.preference_list(key, jurisdiction=jurisdiction)
        for shard in candidates:
            if shard.id not in bad:
                return shard
        raise NoEligibleShardError(
            f"no healthy shard for key {key!r} in jurisdiction {candidates[0].jurisdiction!r} "
            f"({len(candidates)} shard(s), all unhealthy)"
        )

    # -- batch routing --------------------------------------------------------------------------

    def route_indices(self, keys: Sequence[str], jurisdiction: str | None = None) -> Any:
        """Route many keys at once: a numpy array of indices into :attr:`shards`.

        Same answers as :meth:`route`, key for key.
        """
        import numpy as np

        n = len(keys)
        big, offsets = self._flat_tables(np)
        encoded = map(str.encode, keys)
        hashes = np.fromiter(map(_xxh64_bytes(self.hash), encoded), dtype=np.uint64, count=n)
        slots = (hashes >> np.uint64(self._shift)).astype(np.int64)
        if not self._rules and len(offsets) == 1:
            # No rules: every key has the caller's tag or the default, so one check covers all.
            only = jurisdiction if jurisdiction is not None else self.default_jurisdiction
            if n and only not in offsets:
                self.group_for(self.jurisdiction_of(keys[0], jurisdiction))
            return big[slots]
        if jurisdiction is None and len(self._rules) == 1:
            base = self._batch_offsets(np, keys, offsets)
        else:
            jurs = self._batch_jurisdictions(keys, jurisdiction)
            try:
                base = np.fromiter(map(offsets.__getitem__, jurs), dtype=np.int64, count=n)
            except KeyError:
                bad = next(j for j in jurs if j not in offsets)
                self.group_for(bad)
                raise
        return big[base + slots]

    def _batch_offsets(self, np: Any, keys: Sequence[str], offsets: dict[str, int]) -> Any:
        """Table offsets for untagged keys under one prefix length, all in C-level loops:
        prefix -> offset, with -1 where a key's jurisdiction has no table (or no default)."""
        ((length, rules),) = self._rules
        by_prefix = {p: offsets.get(j, -1) for p, j in rules.items()}
        default = offsets.get(self.default_jurisdiction, -1) if self.default_jurisdiction else -1
        if len(by_prefix) == 1:  # one rule: a C-level startswith per key, then arithmetic
            ((prefix, ruled),) = by_prefix.items()
            hit = np.fromiter(
                map(str.startswith, keys, repeat(prefix)), dtype=bool, count=len(keys)
            )
            base = np.where(hit, ruled, default).astype(np.int64)
        else:
            prefixes = map(itemgetter(slice(None, length)), keys)
            base = np.fromiter(
                map(by_prefix.get, prefixes, repeat(default)), dtype=np.int64, count=len(keys)
            )
        if (base < 0).any():
            self.route(keys[int(np.argmax(base < 0))])  # raises the residency error for it
        return base

    def route_many(self, keys: Sequence[str], jurisdiction: str | None = None) -> list[Shard]:
        """Route many keys at once: one :class:`Shard` per key, identical to :meth:`route`."""
        import numpy as np

        objects = getattr(self, "_objects", None)
        if objects is None:
            objects = self._objects = np.empty(len(self.shards), dtype=object)
            objects[:] = self.shards
        return objects[self.route_indices(keys, jurisdiction)].tolist()  # type: ignore[no-any-return]

    def _flat_tables(self, np: Any) -> tuple[Any, dict[str, int]]:
        cached = getattr(self, "_flat", None)
        if cached is None:
            offsets = {}
            parts = []
            for i, (j, table) in enumerate(sorted(self._tables.items())):
                offsets[j] = i * self.slot_count
                parts.append(np.fromiter((s.index for s in table), dtype=np.int32))
            cached = self._flat = (np.concatenate(parts), offsets)
        return cached

    def _batch_jurisdictions(self, keys: Sequence[str], tag: str | None) -> list[str]:
        found: list[str | None] = [None] * len(keys)
        for length, rules in self._rules:
            hits = map(rules.get, map(itemgetter(slice(None, length)), keys))
            found = [a if a is not None else b for a, b in zip(found, hits, strict=True)]
        fallback = tag if tag is not None else self.default_jurisdiction
        if tag is not None and any(f is not None and f != tag for f in found):
            i = next(i for i, f in enumerate(found) if f is not None and f != tag)
            self.jurisdiction_of(keys[i], tag)  # raises the conflict error for that key
        if fallback is None and None in found:
            self.jurisdiction_of(keys[found.index(None)])  # raises the no-rule error
        return list(map(_or, found, repeat(fallback)))  # type: ignore[arg-type]

    # -- views ----------------------------------------------------------------------------------

    def slot_counts(self) -> dict[str, int]:
        """Primary slots owned by each shard id."""
        counts = dict.fromkeys((s.id for s in self.shards), 0)
        for group in self.groups.values():
            for shard in group.primary:
                counts[shard.id] += 1
        return counts

    def to_dict(self, *, tables: bool = False) -> dict[str, Any]:
        """A JSON-friendly view; ``tables=True`` adds every slot's owner and replicas."""
        counts = self.slot_counts()
        out: dict[str, Any] = {
            "project": self.project,
            "version": self.version,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "hash": self.hash,
            "slots": self.slot_count,
            "regions": self.regions,
            "residency": {
                "rules": [{"prefix": p, "jurisdiction": j} for p, j in self.residency_rules],
                "default": self.default_jurisdiction,
            },
            "groups": {
                g.name: {"jurisdiction": g.jurisdiction, "replicas": len(g.replicas)}
                for g in self.groups.values()
            },
            "shards": [dict(s.to_dict(), slots=counts[s.id]) for s in self.shards],
        }
        if tables:
            for g in self.groups.values():
                out["groups"][g.name]["primary"] = [s.id for s in g.primary]
                out["groups"][g.name]["replica_columns"] = [[s.id for s in c] for c in g.replicas]
        return out

    def __repr__(self) -> str:
        return (
            f"ShardMap(project={self.project!r}, version={self.version}, "
            f"shards={len(self.shards)}, slots={self.slot_count})"
        )


def _router(m: ShardMap) -> Any:
    """``m.route`` specialised for the map's residency rules: the common calls (untagged keys,
    at most one prefix length) cost one slice, one dict lookup, one hash and one index. Anything
    else - a tag, a key without a jurisdiction - takes the general path, which also raises."""
    general = ShardMap.route.__get__(m)
    if m.hash != "xxh64-v1" or len(m._rules) > 1:
        return general
    import xxhash

    xxh, shift, tables = xxhash.xxh64_intdigest, m._shift, m._tables
    default = tables.get(m.default_jurisdiction) if m.default_jurisdiction else None
    if not m._rules:
        if default is None:
            return general

        def route_default(key: str, jurisdiction: str | None = None) -> Shard:
            if jurisdiction is None:
                return default[xxh(key.encode()) >> shift]
            return general(key, jurisdiction)

        return route_default
    ((length, rules),) = m._rules
    # A rule whose jurisdiction has no table maps to None: the general path raises for it.
    by_prefix = {p: tables.get(j) for p, j in rules.items()}
    if len(by_prefix) == 1:
        ((prefix, ruled),) = by_prefix.items()

        def route_one_rule(key: str, jurisdiction: str | None = None) -> Shard:
            if jurisdiction is None:
                table = ruled if key[:length] == prefix else default
                if table is not None:
                    return table[xxh(key.encode()) >> shift]
            return general(key, jurisdiction)

        return route_one_rule

    def route_prefix(key: str, jurisdiction: str | None = None) -> Shard:
        if jurisdiction is None:
            table = by_prefix.get(key[:length], default)
            if table is not None:
                return table[xxh(key.encode()) >> shift]
        return general(key, jurisdiction)

    return route_prefix


def _or(a: str | None, b: str) -> str:
    return a if a is not None else b


_ID_HASHES: dict[str, int] = {}


def _id_hash(shard_id: str) -> int:
    h = _ID_HASHES.get(shard_id)
    if h is None:
        h = _ID_HASHES[shard_id] = HASHES["xxh64-v1"](shard_id)
    return h


def _xxh64_bytes(name: str) -> Any:
    # Batch hashing goes through the C function on pre-encoded bytes; only xxh64-v1 exists.
    import xxhash

    assert name == "xxh64-v1", name
    return xxhash.xxh64_intdigest
