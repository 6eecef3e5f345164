"""Named, versioned key hashes and the stateless jump mode.

Routing must give the same answer in every process, machine and future runtime
(docs/architecture.md §4.1), so the hash is part of the map format: a map names its hash
(``xxh64-v1``) and a decoder refuses a name it does not know. Python's built-in ``hash()`` is
salted per process and is never used.

``xxh64-v1``: XXH64 with seed 0 over the key's UTF-8 bytes, as an unsigned 64-bit integer. A key's
slot is the top ``slot_bits`` bits of that hash, so every slot count that is a power of two nests
inside the larger ones.

Stateless mode is for callers that hold only a shard count N: ``jump(hash(key), N)``. Appending a
shard moves exactly 1/(N+1) of the keys, but removing any shard other than the last moves many
more; the slot table (see :mod:`shardkit.sharding.planner`) has no such limit.

Data-plane module: stdlib, xxhash and jump only.
"""

from __future__ import annotations

from collections.abc import Callable

import jump
import xxhash

__all__ = [
    "DEFAULT_HASH",
    "HASHES",
    "MAX_SLOT_BITS",
    "MIN_SLOT_BITS",
    "hash_key",
    "jump_hash",
    "mix64",
    "slot_of",
    "stateless_shard",
]

DEFAULT_HASH = "xxh64-v1"
MIN_SLOT_BITS = 8
MAX_SLOT_BITS = 20

_xxh64 = xxhash.xxh64_intdigest


def _xxh64_v1(key: str) -> int:
    return _xxh64(key.encode("utf-8"))


#: Every hash a map may name. A new hash gets a new name; an existing name never changes meaning.
HASHES: dict[str, Callable[[str], int]] = {"xxh64-v1": _xxh64_v1}

#: Jump consistent hash (Lamping & Veach): a 64-bit key -> bucket in [0, n).
jump_hash: Callable[[int, int], int] = jump.hash


def hash_key(key: str, algorithm: str = DEFAULT_HASH) -> int:
    """The 64-bit routing hash of ``key`` under the named, versioned hash."""
    return HASHES[algorithm](key)


def slot_of(key_hash: int, slot_bits: int) -> int:
    """The slot of a 64-bit key hash: its top ``slot_bits`` bits."""
    return key_hash >> (64 - slot_bits)


def stateless_shard(key: str, shard_count: int, algorithm: str = DEFAULT_HASH) -> int:
    """Stateless mode: the shard index in ``[0, shard_count)`` for a caller that knows only N."""
    return jump_hash(hash_key(key, algorithm), shard_count)


def mix64(value: int, salt: int) -> int:
    """A well-mixed 64-bit value derived from ``value`` and ``salt``: XXH64 of the value's 8
    little-endian bytes, seeded with ``salt``.

    The planner uses it to derive per-slot hash chains, so it is part of the map format.
    """
    return _xxh64(value.to_bytes(8, "little"), salt)
