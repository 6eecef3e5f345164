"""Canonical msgpack encoding of shard maps, and the signed envelope around it.

Body: one msgpack map with sorted keys; slot tables are little-endian ``u16``/``u32`` arrays of
indices into the shard list (sorted by id), so a 1024-shard map with 16,384 slots is ~33 KiB per
table column. Encoding is canonical: the same map always gives the same bytes, and the decoder
re-encodes what it parsed and refuses anything that differs, so there is one byte form per map.

Envelope (docs/architecture.md §4.5)::

    msgpack array ["shardkit-map", 1, key_id, version, expires_at, body, signature]

The ed25519 signature covers the msgpack array of the first six items, so neither the version nor
the expiry can be changed without breaking it. :func:`decode_map` checks, in this order: the
envelope's shape (:class:`MapDecodeError`), the key id and signature (:class:`MapSignatureError`),
the version against the one held (:class:`MapRollbackError`), the expiry
(:class:`MapExpiredError`), then the body (:class:`MapDecodeError`). No other exception escapes it.

Data-plane module: stdlib, msgpack, xxhash, jump; ``cryptography`` is imported on first verify.
"""

from __future__ import annotations

import sys
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter
from typing import Any

import msgpack

from ..errors import MapDecodeError, MapExpiredError, MapRollbackError, MapSignatureError
from .hashing import HASHES, MAX_SLOT_BITS, MIN_SLOT_BITS
from .shardmap import Group, Shard, ShardMap

__all__ = [
    "FORMAT",
    "MAGIC",
    "decode_envelope",
    "decode_map",
    "encode_body",
    "encode_map",
    "peek_envelope",
    "residency_problem",
]

MAGIC = "shardkit-map"
FORMAT = 1
_BODY_KEYS = (
    "created_at",
    "default_jurisdiction",
    "expires_at",
    "format",
    "groups",
    "hash",
    "project",
    "regions",
    "residency_rules",
    "shards",
    "slot_bits",
    "version",
)


# -- encoding ---------------------------------------------------------------------------------


def _table_bytes(column: list[Shard], wide: bool) -> bytes:
    table = array("I" if wide else "H", (s.index for s in column))
    if sys.byteorder == "big":
        table.byteswap()
    return table.tobytes()


def _body_obj(m: ShardMap) -> dict[str, Any]:
    wide = len(m.shards) > 0xFFFF
    groups = {
        g.name: {
            "jurisdiction": g.jurisdiction,
            "positions": [p if p is not None else "" for p in g.positions],
            "primary": _table_bytes(g.primary, wide),
            "replicas": [_table_bytes(c, wide) for c in g.replicas],
        }
        for g in m.groups.values()
    }
    return {
        "created_at": m.created_at,
        "default_jurisdiction": m.default_jurisdiction,
        "expires_at": m.expires_at,
        "format": FORMAT,
        "groups": groups,
        "hash": m.hash,
        "project": m.project,
        "regions": m.regions,
        "residency_rules": [list(r) for r in m.residency_rules],
        "shards": [
            [s.id, s.group, s.region, s.jurisdiction, float(s.weight), s.domain, s.epoch]
            for s in m.shards
        ],
        "slot_bits": m.slot_bits,
        "version": m.version,
    }


def encode_body(m: ShardMap) -> bytes:
    """The canonical msgpack body of ``m`` (what the signature covers, with the header)."""
    return msgpack.packb(_body_obj(m), use_bin_type=True)


def _signed_part(key_id: str, version: int, expires_at: int, body: bytes) -> bytes:
    return msgpack.packb([MAGIC, FORMAT, key_id, version, expires_at, body], use_bin_type=True)


def encode_map(m: ShardMap, key_id: str, sign: Callable[[bytes], bytes]) -> bytes:
    """The signed envelope of ``m``. ``sign`` is an ed25519 signer (see :mod:`shardkit.keys`).
    A map whose shards contradict its residency is refused (ValueError): it is never signed."""
    problem = residency_problem(
        m.shards, m.regions, {g.name: g.jurisdiction for g in m.groups.values()}
    )
    if problem is not None:
        raise ValueError(f"refusing to sign map version {m.version}: {problem}")
    body = encode_body(m)
    signature = sign(_signed_part(key_id, m.version, m.expires_at, body))
    return msgpack.packb(
        [MAGIC, FORMAT, key_id, m.version, m.expires_at, body, signature], use_bin_type=True
    )


# -- decoding ---------------------------------------------------------------------------------


class Envelope:
    """The header of an envelope, readable before (and without) verification."""

    __slots__ = ("body", "expires_at", "key_id", "signature", "version")

    def __init__(self, key_id: str, version: int, expires_at: int, body: bytes, signature: bytes):
        self.key_id = key_id
        self.version = version
        self.expires_at = expires_at
        self.body = body
        self.signature = signature


def peek_envelope(data: bytes) -> Envelope:
    """Parse the envelope's header without verifying anything. Raises :class:`MapDecodeError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MapDecodeError(f"a map is bytes, not {type(data).__name__}")
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad bytes
        raise MapDecodeError(f"not a shardkit map: {type(exc).__name__}: {exc}") from None
    if not (isinstance(obj, list) and len(obj) == 7 and obj[0] == MAGIC):
        raise MapDecodeError("not a shardkit map: the envelope header is missing")
    _, fmt, key_id, version, expires_at, body, signature = obj
    if not _is_int(fmt) or fmt != FORMAT:
        raise MapDecodeError(
            f"map envelope format {fmt!r} is not supported (this shardkit reads format {FORMAT})",
            hint="upgrade shardkit to read this map",
        )
    if not (
        isinstance(key_id, str)
        and _is_int(version)
        and _is_int(expires_at)
        and isinstance(body, bytes)
        and isinstance(signature, bytes)
    ):
        raise MapDecodeError("not a shardkit map: the envelope header has the wrong types")
    return Envelope(key_id, version, expires_at, body, signature)


def decode_map(
    data: bytes,
    trusted_keys: Mapping[str, bytes],
    *,
    min_version: int = 0,
    now: float | None = None,
) -> ShardMap:
    """Verify and decode a signed map.

    ``trusted_keys`` maps key ids to raw 32-byte ed25519 public keys. ``min_version`` is the
    version already held: a lower one is a rollback (equal is accepted, so a refresh that finds no
    change is not an error). ``now`` defaults to the wall clock.
    """
    return decode_envelope(peek_envelope(data), trusted_keys, min_version=min_version, now=now)


def decode_envelope(
    env: Envelope,
    trusted_keys: Mapping[str, bytes],
    *,
    min_version: int = 0,
    now: float | None = None,
) -> ShardMap:
    """:func:`decode_map` for an envelope already parsed with :func:`peek_envelope`."""
    public = trusted_keys.get(env.key_id)
    if public is None:
        known = ", ".join(sorted(trusted_keys)) or "none"
        raise MapSignatureError(f"map signed by untrusted key {env.key_id!r} (trusted: {known})")
    _verify(public, env.signature, _signed_part(env.key_id, env.version, env.expires_at, env.body))
    if env.version < min_version:
        raise MapRollbackError(
            f"map version {env.version} is older than version {min_version} already held"
        )
    current = time.time() if now is None else now
    if env.expires_at <= current:
        raise MapExpiredError(
            f"map version {env.version} expired at {_iso(env.expires_at)} (now {_iso(current)})"
        )
    m = _decode_body(env.body)
    if (m.version, m.expires_at) != (env.version, env.expires_at):
        raise MapDecodeError("the envelope header does not match the map body")
    return m


def _verify(public: bytes, signature: bytes, message: bytes) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(bytes(public)).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise MapSignatureError("the map's signature does not verify: it was altered") from None


def _decode_body(body: bytes) -> ShardMap:
    try:
        obj = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
        m = _from_obj(obj)
    except MapDecodeError:
        raise
    except Exception as exc:
        raise MapDecodeError(f"malformed map body: {type(exc).__name__}: {exc}") from None
    if not _canonical(obj, body):
        raise MapDecodeError("the map body is not in canonical form")
    return m


def _canonical(obj: dict[str, Any], body: bytes) -> bool:
    """Whether ``body`` is exactly what :func:`encode_body` makes of this map. Equivalent to
    re-encoding the map, at a fraction of the cost: the parsed object re-packs to the same bytes
    (so every integer, float and string has its canonical msgpack form), every map's keys are
    sorted, and so are the shards and the rules the encoder sorts."""
    ids = [row[0] for row in obj["shards"]]
    return (
        _keys_sorted(obj)
        and ids == sorted(set(ids))
        and obj["residency_rules"] == sorted(obj["residency_rules"])
        and msgpack.packb(obj, use_bin_type=True) == body
    )


def _keys_sorted(obj: dict[str, Any]) -> bool:
    """Every msgpack map of a body (the body, its regions, its groups) has sorted keys."""
    maps = [obj, obj["regions"], obj["groups"], *obj["groups"].values()]
    return all(list(m) == sorted(m) for m in maps)


def _from_obj(obj: Any) -> ShardMap:
    _need(isinstance(obj, dict) and tuple(sorted(obj)) == _BODY_KEYS, "body fields")
    _need(_is_int(obj["format"]) and obj["format"] == FORMAT, "format")  # True == 1 == 1.0
    _need(obj["hash"] in HASHES, f"hash {obj['hash']!r} (known: {', '.join(HASHES)})")
    bits = obj["slot_bits"]
    _need(_is_int(bits) and MIN_SLOT_BITS <= bits <= MAX_SLOT_BITS, "slot_bits")
    regions = obj["regions"]
    _need(
        isinstance(regions, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in regions.items()),
        "regions",
    )
    rules = obj["residency_rules"]
    _need(isinstance(rules, list) and all(_is_pair(r) for r in rules), "residency_rules")
    default = obj["default_jurisdiction"]
    _need(default is None or isinstance(default, str), "default_jurisdiction")
    shards = _shards(_list(obj["shards"], "shards"))
    groups_obj = obj["groups"]
    _need(isinstance(groups_obj, dict), "groups")
    groups = [_group(name, g, shards, bits) for name, g in groups_obj.items()]
    problem = residency_problem(shards, regions, {g.name: g.jurisdiction for g in groups})
    if problem is not None:
        raise MapDecodeError(f"the map's shards contradict its residency: {problem}")
    for name in ("project",):
        _need(isinstance(obj[name], str), name)
    for name in ("version", "created_at", "expires_at"):
        _need(_is_int(obj[name]), name)
    return ShardMap(
        project=obj["project"],
        version=obj["version"],
        created_at=obj["created_at"],
        expires_at=obj["expires_at"],
        hash=obj["hash"],
        slot_bits=bits,
        regions=regions,
        residency_rules=[tuple(r) for r in rules],
        default_jurisdiction=default,
        shards=shards,
        groups=groups,
    )


_ROW_TYPES = (str, str, str, str, float, str, int)  # exact types: a bool is not an epoch


def _shards(rows: list[Any]) -> list[Shard]:
    """Every shard row, its field types checked exactly, in one pass per step (no per-row
    function call: a map update re-creates every shard)."""
    for i, row in enumerate(rows):
        if type(row) is not list or tuple(map(type, row)) != _ROW_TYPES:
            _need(False, f"shards[{i}]")
    return [Shard(*row, i) for i, row in enumerate(rows)]


def _group(name: Any, g: Any, shards: list[Shard], bits: int) -> Group:
    _need(
        isinstance(name, str)
        and isinstance(g, dict)
        and sorted(g) == ["jurisdiction", "positions", "primary", "replicas"]
        and isinstance(g["jurisdiction"], str),
        f"group {name}",
    )
    positions = _list(g["positions"], f"groups.{name}.positions")
    _need(all(isinstance(p, str) for p in positions), f"groups.{name}.positions")
    columns = [g["primary"], *_list(g["replicas"], f"groups.{name}.replicas")]
    # Defence in depth for residency: a table may only name shards of its own group and
    # jurisdiction. Looking indices up in a dict of exactly those shards checks range and
    # residency in the same C-level pass that builds the table.
    allowed = {
        s.index: s for s in shards if s.group == name and s.jurisdiction == g["jurisdiction"]
    }
    try:
        tables = [
            list(map(allowed.__getitem__, _indices(c, len(shards), bits, f"groups.{name}")))
            for c in columns
        ]
    except KeyError as exc:
        problem = (
            "shard index out of range"
            if exc.args[0] >= len(shards)
            else "a shard of another group or jurisdiction"
        )
        raise MapDecodeError(f"malformed map body: bad groups.{name}: {problem}") from None
    return Group(
        name, g["jurisdiction"], tuple(p or None for p in positions), tables[0], tuple(tables[1:])
    )


def residency_problem(
    shards: Sequence[Shard], regions: Mapping[str, str], groups: Mapping[str, str]
) -> str | None:
    """What is wrong with the shards' residency, or None (docs/architecture.md §4.3, defence in
    depth): every shard's region must be one the map lists, in the jurisdiction the map's regions
    table gives it; its group must exist and serve that jurisdiction; and no two groups may
    serve one jurisdiction. A signer that is buggy or compromised must not be able to move a
    key's data out of its jurisdiction by relabelling a shard, so decoding checks this too.

    The distinct (region, jurisdiction, group) triples are few, whatever the shard count."""
    if len(set(groups.values())) != len(groups):
        return "two groups serve one jurisdiction"
    placed = set(zip(*(map(attrgetter(a), shards) for a in _PLACEMENT), strict=True))
    for region, jurisdiction, group in sorted(placed):
        if region not in regions:
            problem = f"is in region {region!r}, which the map's regions do not list"
        elif regions[region] != jurisdiction:
            problem = (
                f"is labelled {jurisdiction!r} but its region {region!r} belongs to "
                f"{regions[region]!r}"
            )
        elif groups.get(group) != jurisdiction:
            problem = (
                f"({jurisdiction!r}) is in group {group!r}, which serves {groups.get(group)!r}"
            )
        else:
            continue
        who = next(
            s.id
            for s in shards
            if (s.region, s.jurisdiction, s.group) == (region, jurisdiction, group)
        )
        return f"shard {who!r} {problem}"
    return None


_PLACEMENT = ("region", "jurisdiction", "group")


def _indices(raw: Any, shard_count: int, bits: int, where: str) -> array[int]:
    wide = shard_count > 0xFFFF
    _need(isinstance(raw, bytes) and len(raw) == (1 << bits) * (4 if wide else 2), where)
    idx = array("I" if wide else "H")
    idx.frombytes(raw)
    if sys.byteorder == "big":
        idx.byteswap()
    return idx


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise MapDecodeError(f"malformed map body: bad {what}")


def _list(x: Any, what: str) -> list[Any]:
    _need(isinstance(x, list), what)
    return x


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_pair(r: Any) -> bool:
    return isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r)


def _iso(t: float) -> str:
    """``t`` as an ISO time for messages; a time the platform cannot format stays a number, so
    an extreme (but validly signed) expiry still raises :class:`MapExpiredError`."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    except (OverflowError, OSError, ValueError):
        return f"{t} (unix time)"
