"""The routing hash is part of the map format: exact values, and the same in every process.

docs/architecture.md §4.1: key -> 64-bit hash -> slot -> shard gives the same answer in every
process, machine and future runtime. These tests pin literal values, so any change to the hash,
the slot rule, jump hash or the first-build planner shows up here as a failure, not as silently
moved keys.
The same routes under several hash seeds, each in its own process:
tests/integration/test_hashing_processes.py.
"""

from __future__ import annotations

import random

import pytest

import shardkit
from shardkit.sharding.hashing import slot_of

# -- the named hash -------------------------------------------------------------------------------

XXH64_V1 = {
    # The first two are the published XXH64 (seed 0) test vectors, an independent check.
    "": 0xEF46DB3751D8E999,
    "a": 0xD24EC4F1A98C6E5B,
    "alice": 8332761332120969289,
    "eu:bob": 10742839908252516588,
    "user-42": 4142921581652311169,
    "ключ": 11636507388899086748,
    "日本語": 8176744303664166369,
    "🙂": 585552020754485715,
    "a" * 100: 3985758137895276467,
}


@pytest.mark.parametrize(("key", "expected"), sorted(XXH64_V1.items()))
def test_hash_key_exact_values(key: str, expected: int) -> None:
    assert shardkit.hash_key(key) == expected
    assert shardkit.hash_key(key, "xxh64-v1") == expected


def test_hash_key_is_unsigned_64_bit_and_hashes_utf8() -> None:
    rng = random.Random(7)
    for _ in range(500):
        key = "".join(
            chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x400, 0x4FF)]))
            for _ in range(rng.randrange(0, 20))
        )
        h = shardkit.hash_key(key)
        assert isinstance(h, int)
        assert 0 <= h < 2**64
    # NFC and NFD spellings are different byte strings, so different keys: no normalisation.
    assert shardkit.hash_key("\u00e9") != shardkit.hash_key("e\u0301")


# -- slots ----------------------------------------------------------------------------------------

SLOTS = {  # key -> slot at 8, 14, 16 and 20 slot bits: the top bits of the hash
    "alice": (115, 7400, 29603, 473662),
    "eu:bob": (149, 9541, 38166, 610659),
    "user-42": (57, 3679, 14718, 235497),
    "日本語": (113, 7262, 29049, 464794),
}


@pytest.mark.parametrize("bits_index", range(3))  # a 2**20-slot build takes seconds: see below
def test_slot_of_fixed_keys(config_from, quickstart_dict, bits_index: int) -> None:
    bits = (8, 14, 16)[bits_index]
    quickstart_dict["hashing"]["slot_bits"] = bits
    m = shardkit.build_map(config_from(quickstart_dict), now=0)
    for key, slots in SLOTS.items():
        assert m.slot(key) == slots[bits_index]


def test_slot_of_fixed_keys_at_every_slot_count() -> None:
    for key, slots in SLOTS.items():
        h = shardkit.hash_key(key)
        assert [slot_of(h, bits) for bits in (8, 14, 16, 20)] == list(slots)


def test_slots_nest_across_slot_counts() -> None:
    """A slot at b bits is the top b bits of the slot at b + k bits (resharding by powers of 2)."""
    rng = random.Random(11)
    for _ in range(300):
        h = shardkit.hash_key(str(rng.random()))
        for small in range(8, 20):
            for big in range(small + 1, 21):
                assert (h >> (64 - big)) >> (big - small) == h >> (64 - small)


# -- stateless (jump) mode ------------------------------------------------------------------------

STATELESS = {  # key -> stateless_shard(key, n) for n in STATELESS_N
    "alice": [0, 1, 1, 1, 1, 31, 605, 1505183953],
    "eu:bob": [0, 1, 2, 2, 2, 66, 267, 234325095],
    "user-42": [0, 1, 1, 4, 4, 93, 93, 1443154230],
    "日本語": [0, 1, 1, 1, 1, 96, 932, 2003922837],
    "": [0, 1, 2, 7, 7, 40, 332, 730414282],
}
STATELESS_N = (1, 2, 3, 8, 10, 100, 1000, 2**31 - 1)


@pytest.mark.parametrize(("key", "expected"), sorted(STATELESS.items()))
def test_stateless_shard_exact_values(key: str, expected: list[int]) -> None:
    assert [shardkit.stateless_shard(key, n) for n in STATELESS_N] == expected


def _jump_reference(key: int, buckets: int) -> int:
    """Jump consistent hash as printed in Lamping & Veach (2014), in pure Python."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def test_stateless_shard_is_the_published_jump_hash_of_the_key_hash() -> None:
    rng = random.Random(3)
    for i in range(3000):
        key, n = f"k{i}", rng.randint(1, 5000)
        assert shardkit.stateless_shard(key, n) == _jump_reference(shardkit.hash_key(key), n)


def test_stateless_append_moves_keys_only_to_the_new_shard() -> None:
    keys = [f"user-{i}" for i in range(20_000)]
    for n in (1, 4, 9, 31):
        before = [shardkit.stateless_shard(k, n) for k in keys]
        after = [shardkit.stateless_shard(k, n + 1) for k in keys]
        moved = [b for a, b in zip(before, after, strict=True) if a != b]
        assert set(moved) == {n}
        # Jump hash moves 1/(n+1) of the keys; 5 standard deviations of slack for 20k keys.
        expected = len(keys) / (n + 1)
        assert abs(len(moved) - expected) < 5 * (expected * (1 - 1 / (n + 1))) ** 0.5


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("alice", ["us-3", "us-0", "us-1", "us-2"]),
        ("eu:bob", ["eu-0", "eu-3", "eu-2", "eu-1"]),
        ("user-42", ["us-0", "us-3", "us-1", "us-2"]),
        ("日本語", ["us-0", "us-3", "us-2", "us-1"]),
    ],
)
def test_failover_order_is_pinned(quickstart_map, key: str, expected: list[str]) -> None:
    """Every client must fail over to the same shard, so the preference order is format too."""
    assert [s.id for s in quickstart_map.preference_list(key)] == expected
    assert [s.id for s in quickstart_map.preference_list(key, 2)] == expected[:2]
