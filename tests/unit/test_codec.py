"""The signed map envelope (docs/architecture.md §4.5): canonical bytes, and every way decoding
refuses.

``decode_map`` promises that nothing but :class:`MapDecodeError`, :class:`MapSignatureError`,
:class:`MapRollbackError` and :class:`MapExpiredError` escapes it; the fuzz tests hold it to that.
Envelopes are rebuilt here from the documented format (``[magic, 1, key_id, version, expires_at,
body, signature]``, the signature over the msgpack array of the first six), not from codec
internals, so the format itself is pinned too.
"""

from __future__ import annotations

import copy
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shardkit
from shardkit.sharding.codec import encode_body

REFUSED = (shardkit.MapDecodeError, shardkit.MapSignatureError)
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SMALL: dict[str, Any] = {  # a quickstart-like map at 256 slots, so fuzzing stays fast
    "project": {"name": "small"},
    "hashing": {"slot_bits": 8},
    "signing": {"key_id": "test-key"},
    "regions": {
        "eu-west-1": {"jurisdiction": "eu"},
        "eu-central-1": {"jurisdiction": "eu"},
        "us-east-1": {"jurisdiction": "us"},
    },
    "residency": {"default": "us", "rules": [{"prefix": "eu:", "jurisdiction": "eu"}]},
    "groups": {
        "eu": {
            "jurisdiction": "eu",
            "regions": ["eu-west-1", "eu-central-1"],
            "shards": 3,
            "replicas": 1,
        },
        "us": {
            "jurisdiction": "us",
            "regions": ["us-east-1"],
            "shards": 2,
            "weights": {"us-0": 2.5},
        },
    },
}
T = 1_000_000  # build time of SMALL; it expires 720 hours (the default ttl) later


def unpack(envelope: bytes) -> list[Any]:
    return msgpack.unpackb(envelope, raw=False)


def pack(fields: list[Any]) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def sign(
    key: shardkit.SigningKey, key_id: str, version: int, expires_at: int, body: bytes
) -> bytes:
    """An envelope made by hand from the documented format."""
    header = ["shardkit-map", 1, key_id, version, expires_at, body]
    return pack([*header, key.sign(pack(header))])


@pytest.fixture(scope="module")
def small(config_from) -> shardkit.ShardMap:
    return shardkit.build_map(config_from(SMALL), now=T)


@pytest.fixture(scope="module")
def envelope(small, signing_key) -> bytes:
    return shardkit.encode_map(small, signing_key.key_id, signing_key.sign)


def decode(data: bytes, trusted: dict[str, bytes], **kwargs: Any) -> shardkit.ShardMap:
    kwargs.setdefault("now", T + 1)
    return shardkit.decode_map(data, trusted, **kwargs)


# -- round trip -----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["small", "quickstart"])
def test_round_trip_is_byte_identical(request, signing_key, trusted_keys, which: str) -> None:
    m = request.getfixturevalue("small" if which == "small" else "quickstart_map")
    env = shardkit.encode_map(m, signing_key.key_id, signing_key.sign)
    back = shardkit.decode_map(env, trusted_keys, now=m.created_at)
    assert shardkit.encode_map(back, signing_key.key_id, signing_key.sign) == env
    assert encode_body(back) == encode_body(m)
    assert back.to_dict(tables=True) == m.to_dict(tables=True)
    keys = [f"user-{i}" for i in range(1000)] + [f"eu:user-{i}" for i in range(1000)]
    assert [s.id for s in back.route_many(keys)] == [s.id for s in m.route_many(keys)]
    for k in keys[::50]:
        assert back.route(k) == m.route(k)
        assert back.preference_list(k) == m.preference_list(k)
    assert [(s.id, s.epoch, s.index) for s in back.shards] == [
        (s.id, s.epoch, s.index) for s in m.shards
    ]


def test_the_envelope_is_the_documented_format(small, envelope, signing_key) -> None:
    fields = unpack(envelope)
    assert fields[:5] == ["shardkit-map", 1, "test-key", small.version, small.expires_at]
    assert fields[5] == encode_body(small)
    assert sign(signing_key, "test-key", small.version, small.expires_at, fields[5]) == envelope


# -- version and expiry ---------------------------------------------------------------------------


def test_rollback_is_refused_and_an_equal_version_accepted(
    config_from, signing_key, trusted_keys
) -> None:
    v1 = shardkit.build_map(config_from(SMALL), now=T)
    v2 = shardkit.build_map(config_from(SMALL), v1, now=T)
    env = shardkit.encode_map(v2, signing_key.key_id, signing_key.sign)
    assert decode(env, trusted_keys, min_version=2).version == 2
    assert decode(env, trusted_keys, min_version=1).version == 2
    with pytest.raises(shardkit.MapRollbackError, match="older than version 3"):
        decode(env, trusted_keys, min_version=3)


def test_expiry(small, envelope, trusted_keys) -> None:
    assert small.expires_at == T + 720 * 3600
    decode(envelope, trusted_keys, now=small.expires_at - 1)
    for now in (small.expires_at, small.expires_at + 0.5, small.expires_at + 10**9):
        with pytest.raises(shardkit.MapExpiredError):
            decode(envelope, trusted_keys, now=now)
    with pytest.raises(shardkit.MapExpiredError):  # the wall clock is long past 1970
        shardkit.decode_map(envelope, trusted_keys)


def test_a_fresh_map_decodes_on_the_wall_clock(config_from, signing_key, trusted_keys) -> None:
    m = shardkit.build_map(config_from(SMALL))
    env = shardkit.encode_map(m, signing_key.key_id, signing_key.sign)
    assert shardkit.decode_map(env, trusted_keys).version == 1


def test_an_expiry_too_far_out_for_the_platform_clock_still_expires(
    config_from, signing_key, trusted_keys
) -> None:
    m = shardkit.build_map(config_from(SMALL), now=-(2**62))
    env = shardkit.encode_map(m, signing_key.key_id, signing_key.sign)
    with pytest.raises(shardkit.MapExpiredError):
        shardkit.decode_map(env, trusted_keys, now=0)


def test_checks_run_in_the_documented_order(
    config_from, envelope, signing_key, trusted_keys
) -> None:
    """shape, then signature, then version, then expiry."""
    late = T + 10**9
    with pytest.raises(shardkit.MapRollbackError):  # rolled back and expired
        decode(envelope, trusted_keys, min_version=5, now=late)
    fields = unpack(envelope)
    fields[6] = bytes(64)
    with pytest.raises(shardkit.MapSignatureError):  # bad signature, rolled back and expired
        decode(pack(fields), trusted_keys, min_version=5, now=late)
    fields[1] = 2
    with pytest.raises(shardkit.MapDecodeError, match="format 2"):
        decode(pack(fields), trusted_keys, min_version=5, now=late)


# -- signatures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "change"),
    [
        (3, lambda v: v + 1),  # version
        (4, lambda v: v + 3600),  # expiry
        (5, lambda b: b[:-1] + bytes([b[-1] ^ 1])),  # body: the last slot-table byte
        (5, lambda b: b.replace(b"us-0", b"us-1", 1)),  # body: a shard id
        (6, lambda s: bytes([s[0] ^ 0x80]) + s[1:]),  # the signature itself
    ],
)
def test_tampering_breaks_the_signature(envelope, trusted_keys, field, change) -> None:
    fields = unpack(envelope)
    fields[field] = change(fields[field])
    with pytest.raises(shardkit.MapSignatureError):
        decode(pack(fields), trusted_keys)


def test_an_untrusted_key_id_is_refused(envelope, trusted_keys) -> None:
    with pytest.raises(shardkit.MapSignatureError, match="untrusted key 'test-key'"):
        decode(envelope, {})
    with pytest.raises(shardkit.MapSignatureError, match="untrusted"):
        decode(envelope, {"other": trusted_keys["test-key"]})


def test_a_key_id_swapped_to_another_trusted_key_is_refused(
    envelope, trusted_keys, tmp_path
) -> None:
    shardkit.create_key("second", tmp_path)
    trusted = dict(trusted_keys, **shardkit.load_trusted_keys(tmp_path))
    fields = unpack(envelope)
    fields[2] = "second"
    with pytest.raises(shardkit.MapSignatureError):
        decode(pack(fields), trusted)


def test_another_key_with_the_same_id_is_refused(small, trusted_keys, tmp_path) -> None:
    shardkit.create_key("test-key", tmp_path)  # same id, different key pair
    impostor = shardkit.load_signing_key("test-key", tmp_path)
    env = shardkit.encode_map(small, impostor.key_id, impostor.sign)
    with pytest.raises(shardkit.MapSignatureError, match="does not verify"):
        decode(env, trusted_keys)
    assert decode(env, shardkit.load_trusted_keys(tmp_path)).version == small.version


def test_a_malformed_trusted_public_key_is_a_signature_error(envelope) -> None:
    with pytest.raises(shardkit.MapSignatureError):
        decode(envelope, {"test-key": b"short"})


# -- validly signed but not a canonical or consistent body ----------------------------------------


def _resigned(small, signing_key, obj: dict[str, Any], **packing: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True, **packing)
    return sign(signing_key, "test-key", small.version, small.expires_at, body)


def test_a_non_canonical_body_is_refused(small, envelope, signing_key, trusted_keys) -> None:
    obj = msgpack.unpackb(unpack(envelope)[5], raw=False)
    assert decode(_resigned(small, signing_key, obj), trusted_keys).version == small.version
    reordered = dict(reversed(list(obj.items())))
    with pytest.raises(shardkit.MapDecodeError, match="canonical"):
        decode(_resigned(small, signing_key, reordered), trusted_keys)
    with pytest.raises(shardkit.MapDecodeError, match="canonical"):  # float32 weights
        decode(_resigned(small, signing_key, obj, use_single_float=True), trusted_keys)


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("version",), 99, "does not match"),  # the body disagrees with the signed header
        (("expires_at",), T, "does not match"),
        (("extra",), 1, "body fields"),
        (("format",), 2, "format"),
        (("hash",), "md5-v0", "hash"),
        (("slot_bits",), 7, "slot_bits"),
        (("shards", 0, 4), 1, "shards"),  # an int weight
        (("groups", "eu", "primary"), b"\x00\x00", "groups.eu"),  # a short table
        (("groups", "eu", "primary"), b"\xff\x00" * 256, "out of range"),
        (("groups", "eu", "primary"), b"\x03\x00" * 256, "another group or jurisdiction"),
    ],
)
def test_a_signed_but_invalid_body_is_a_decode_error(
    small, envelope, signing_key, trusted_keys, path, value, match
) -> None:
    obj = msgpack.unpackb(unpack(envelope)[5], raw=False)
    *parents, last = path
    target = obj
    for p in parents:
        target = target[p]
    target[last] = value
    assert small.shards[3].id == "us-0"  # the eu table above names a shard of the us group
    with pytest.raises(shardkit.MapDecodeError, match=match):
        decode(_resigned(small, signing_key, dict(sorted(obj.items()))), trusted_keys)


# -- residency: a validly signed map whose shards contradict it --------------------------------


def _eu_table_naming(index: int) -> bytes:
    """The eu group's primary column of SMALL with its first slot given to shard ``index``."""
    return bytes([index, 0]) + b"\x00\x00" * 255


def _relabel_us0_as_eu(obj: dict[str, Any]) -> None:
    obj["shards"][3][1] = obj["shards"][3][3] = "eu"  # us-0, in us-east-1, joins the eu group
    obj["groups"]["eu"]["primary"] = _eu_table_naming(3)
    obj["groups"]["us"]["primary"] = b"\x04\x00" * 256  # us-1 takes over the us slots


def _second_eu_group(obj: dict[str, Any]) -> None:
    obj["regions"]["us-east-1"] = "eu"
    obj["groups"]["us"]["jurisdiction"] = "eu"
    for row in obj["shards"][3:]:
        row[3] = "eu"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        pytest.param(
            lambda obj: obj["shards"][0].__setitem__(2, "us-east-1"),
            "shard 'eu-0' is labelled 'eu' but its region 'us-east-1' belongs to 'us'",
            id="an-eu-shard-placed-in-us-east-1",
        ),
        pytest.param(
            lambda obj: obj["shards"][0].__setitem__(2, "ap-south-1"),
            "shard 'eu-0' is in region 'ap-south-1', which the map's regions do not list",
            id="a-shard-in-a-region-the-map-does-not-list",
        ),
        pytest.param(
            _relabel_us0_as_eu,
            "shard 'us-0' is labelled 'eu' but its region 'us-east-1' belongs to 'us'",
            id="a-us-east-1-shard-relabelled-eu",
        ),
        pytest.param(
            lambda obj: obj["shards"][4].__setitem__(1, "eu"),
            "another group or jurisdiction",  # the group's table check sees it first
            id="a-us-shard-in-the-eu-group",
        ),
        pytest.param(_second_eu_group, "two groups serve one jurisdiction", id="two-groups-for-eu"),
    ],
)
def test_a_signed_map_whose_shards_contradict_its_residency_is_refused(
    small, envelope, signing_key, trusted_keys, change, problem
) -> None:
    """Defence in depth (docs/architecture.md §4.3): a buggy or compromised signer cannot move
    an eu key's data out of eu by relabelling a shard; decoding checks every shard's region and
    jurisdiction against the map's own regions table and its group."""
    obj = copy.deepcopy(msgpack.unpackb(unpack(envelope)[5], raw=False))
    change(obj)
    with pytest.raises(shardkit.MapDecodeError) as caught:
        decode(_resigned(small, signing_key, obj), trusted_keys)
    assert problem in caught.value.message


def test_such_a_map_would_route_an_eu_key_out_of_eu_and_is_never_signed(small) -> None:
    moved = [copy.copy(s) for s in small.shards]
    moved[0].region = "us-east-1"  # eu-0, still labelled eu
    bad = shardkit.ShardMap(
        project=small.project,
        version=small.version,
        created_at=small.created_at,
        expires_at=small.expires_at,
        hash=small.hash,
        slot_bits=small.slot_bits,
        regions=small.regions,
        residency_rules=small.residency_rules,
        default_jurisdiction=small.default_jurisdiction,
        shards=moved,
        groups=[
            shardkit.Group(
                g.name,
                g.jurisdiction,
                g.positions,
                [moved[s.index] for s in g.primary],
                tuple([moved[s.index] for s in c] for c in g.replicas),
            )
            for g in small.groups.values()
        ],
    )
    key = next(k for k in (f"eu:user-{i}" for i in range(1000)) if bad.route(k).id == "eu-0")
    assert bad.regions[bad.route(key).region] == "us"  # what accepting it would do
    with pytest.raises(ValueError, match="refusing to sign map version 1: shard 'eu-0'"):
        shardkit.encode_map(bad, "test-key", lambda data: b"\x00" * 64)


# -- fuzzing --------------------------------------------------------------------------------------


def test_every_truncation_is_a_decode_error(envelope, trusted_keys) -> None:
    for n in range(len(envelope)):
        with pytest.raises(shardkit.MapDecodeError):
            decode(envelope[:n], trusted_keys)


def _flip(data: bytes, bits: list[int]) -> bytes:
    out = bytearray(data)
    for b in bits:
        out[b // 8] ^= 1 << (b % 8)
    return bytes(out)


def test_every_bit_flip_in_header_and_signature_is_refused(small, envelope, trusted_keys) -> None:
    """Exhaustive where the structure is (all of the header, the signature and its prefix);
    the body in between is sampled by the next test, since every flip there costs a verify."""
    start = envelope.index(encode_body(small))
    for byte in [*range(start), *range(len(envelope) - 66, len(envelope))]:
        for bit in range(8):
            with pytest.raises(REFUSED):
                decode(_flip(envelope, [byte * 8 + bit]), trusted_keys)


@FUZZ
@given(data=st.data())
def test_bit_flips_anywhere_are_refused(envelope, trusted_keys, data) -> None:
    bits = data.draw(
        st.lists(st.integers(0, len(envelope) * 8 - 1), min_size=1, max_size=4, unique=True)
    )
    with pytest.raises(REFUSED):
        decode(_flip(envelope, bits), trusted_keys)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=8) | st.dictionaries(st.text(max_size=8), inner, max_size=8)
    ),
    max_leaves=10,
)


@FUZZ
@given(blob=st.binary(max_size=400) | msgpack_values.map(pack))
def test_random_bytes_are_refused(trusted_keys, blob: bytes) -> None:
    with pytest.raises(REFUSED):
        decode(blob, trusted_keys)


@FUZZ
@given(
    fields=st.tuples(
        st.just("shardkit-map") | msgpack_values,
        st.just(1) | msgpack_values,
        st.just("test-key") | msgpack_values,
        msgpack_values,
        msgpack_values,
        st.binary(max_size=100) | msgpack_values,
        st.binary(min_size=64, max_size=64) | msgpack_values,
    )
)
def test_random_envelope_shaped_values_are_refused(trusted_keys, fields) -> None:
    with pytest.raises(REFUSED):
        decode(pack(list(fields)), trusted_keys)


def _signed_outcome(small, signing_key, trusted_keys, body: bytes) -> None:
    """A signed body decodes to exactly itself, or is a MapDecodeError; nothing else."""
    env = sign(signing_key, "test-key", small.version, small.expires_at, body)
    try:
        m = decode(env, trusted_keys)
    except shardkit.MapDecodeError:
        return
    assert encode_body(m) == body
    for group in m.groups.values():
        for column in (group.primary, *group.replicas):
            assert {s.jurisdiction for s in column} == {group.jurisdiction}
    for shard in m.shards:  # every shard where the map's own regions table says it may be
        assert m.regions[shard.region] == shard.jurisdiction
        assert m.groups[shard.group].jurisdiction == shard.jurisdiction


@FUZZ
@given(data=st.data())
def test_signed_damaged_bodies_decode_exactly_or_are_decode_errors(
    small, signing_key, trusted_keys, data
) -> None:
    """Past the signature: a trusted signer's damaged body must not crash the decoder."""
    body = encode_body(small)
    how = data.draw(st.sampled_from(["flip", "truncate", "splice"]))
    if how == "flip":
        bits = st.lists(st.integers(0, len(body) * 8 - 1), min_size=1, max_size=3)
        body = _flip(body, data.draw(bits))
    elif how == "truncate":
        body = body[: data.draw(st.integers(0, len(body) - 1))]
    else:
        at = data.draw(st.integers(0, len(body)))
        body = body[:at] + data.draw(st.binary(min_size=1, max_size=8)) + body[at:]
    _signed_outcome(small, signing_key, trusted_keys, body)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@pytest.mark.parametrize("fmt", [True, 1.0])
def test_a_format_equal_to_one_but_not_the_integer_one_is_refused(
    small, signing_key, trusted_keys, fmt
) -> None:
    """msgpack keeps True and 1.0 apart from 1; a decoder that compared with == accepted them and
    then re-encoded a different body than the one signed."""
    obj = msgpack.unpackb(encode_body(small), raw=False)
    obj["format"] = fmt
    env = sign(signing_key, "test-key", small.version, small.expires_at, pack(obj))
    with pytest.raises(shardkit.MapDecodeError, match="format"):
        decode(env, trusted_keys)


@FUZZ
@given(data=st.data())
def test_signed_bodies_with_a_field_replaced_are_decode_errors_or_exact(
    small, signing_key, trusted_keys, data
) -> None:
    obj = msgpack.unpackb(encode_body(small), raw=False)
    obj = copy.deepcopy(obj)
    *parents, last = data.draw(st.sampled_from(_paths(obj)))
    target = obj
    for p in parents:
        target = target[p]
    target[last] = data.draw(msgpack_values)
    _signed_outcome(small, signing_key, trusted_keys, pack(obj))
