"""Fuzzing the external inputs that have no fuzz test elsewhere: a proxy's events and bodies, plan
files and shardkit.toml. (Maps: tests/unit/test_codec.py; keys: tests/unit/test_key_rule.py.)

For any input the outcome is a documented one: the proxy answers with a reply whose status and
code are the protocol's (never ``internal``, a defect, nor a retryable ``unavailable``); a plan
file is a ``Plan`` or a ``PlanFileError``; a config file is a ``ProjectConfig`` or a
``ConfigError``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shardkit
from shardkit.deploy.plan import Plan
from shardkit.errors import ConfigError, PlanFileError
from shardkit.migrate import initialise
from shardkit.protocol import ERRORS, JSON, MSGPACK, OK
from shardkit.proxy.handler import Proxy
from shardkit.proxy.state import StateStore
from shardkit.proxy.table import MemoryTable
from shardkit.sharding.codec import encode_map
from shardkit.sharding.holder import MapHolder

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
ROOT = Path(__file__).resolve().parents[2]


def values(ints: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | ints | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=12,
    )


def request_objects(ints: st.SearchStrategy[int]) -> st.SearchStrategy[dict[str, Any]]:
    """Mostly the protocol's own fields with any values, now and then another field."""
    fields = st.sampled_from(
        ["key", "payload", "map_version", "request_id", "jurisdiction", "failover", "seq"]
    )
    return st.dictionaries(fields | st.text(max_size=6), values(ints), max_size=6)


json_values = values(st.integers())  # JSON carries integers of any size
requests = request_objects(st.integers())
msgpack_requests = request_objects(st.integers(-(2**63), 2**64 - 1))  # msgpack: 64 bits


def url_events() -> st.SearchStrategy[dict[str, Any]]:
    bodies = st.one_of(
        requests.map(lambda r: json.dumps(r)),
        st.text(max_size=40),
        st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
        msgpack_requests.map(lambda r: base64.b64encode(msgpack.packb(r)).decode()),
        st.none(),
    )
    return st.fixed_dictionaries(
        {
            "version": st.just("2.0"),
            "headers": st.dictionaries(
                st.sampled_from(["content-type", "accept", "x-other"]),
                st.sampled_from([JSON, MSGPACK, "text/plain", "", "application/json; x=1"]),
            ),
            "requestContext": st.fixed_dictionaries(
                {"http": st.fixed_dictionaries({"method": st.sampled_from(["POST", "GET"])})}
            ),
            "body": bodies,
            "isBase64Encoded": st.booleans() | json_values,
        }
    )


events = st.one_of(requests, url_events(), json_values)


@pytest.fixture(scope="module")
def proxy(
    quickstart_like: Callable[..., dict[str, Any]],
    config_from: Callable[[dict[str, Any]], Any],
    signing_key: Any,
    trusted_keys: dict[str, bytes],
) -> Proxy:
    """The shard that owns ``user-1``, over an in-memory table with its slot records."""
    shard_map = shardkit.build_map(config_from(quickstart_like("fuzz")))
    envelope = encode_map(shard_map, signing_key.key_id, signing_key.sign)
    holder = MapHolder(trusted_keys, lambda: envelope)
    holder.refresh()
    owner = shard_map.route("user-1")
    tables = {region: MemoryTable(region) for region in shard_map.regions}
    initialise(tables, shard_map)
    store = StateStore(tables[owner.region], owner.id)
    return Proxy(
        shard=owner.id,
        region=owner.region,
        holder=holder,
        store=store,
        infer=lambda key, payload, state: (payload, state),
    )


def _reply(response: Any) -> dict[str, Any]:
    if isinstance(response, dict) and "statusCode" in response:
        raw = response["body"]
        data = base64.b64decode(raw) if response["isBase64Encoded"] else raw.encode()
        ctype = response["headers"]["content-type"]
        reply = msgpack.unpackb(data, raw=False) if ctype == MSGPACK else json.loads(data)
        assert reply["status"] == response["statusCode"]
        return reply  # type: ignore[no-any-return]
    assert isinstance(response, dict)
    return response


@FUZZ
@given(event=events)
def test_any_event_gets_a_documented_reply(proxy: Proxy, event: Any) -> None:
    reply = _reply(proxy.handle(event))
    if reply["status"] in (OK, 421):
        return
    code = reply["error"]
    assert ERRORS.get(code) == reply["status"], reply
    assert code not in ("internal", "unavailable"), reply  # a defect, or blamed on an outage
    assert reply["message"]


# -- plan files -----------------------------------------------------------------------------------

PLAN_FIELDS = [
    "project",
    "project_root",
    "target",
    "account",
    "base",
    "blueprint",
    "steps",
    "artifact",
    "map_envelope",
    "map_version",
    "deployment",
    "kind",
]


@FUZZ
@given(text=st.text(max_size=200) | requests.map(json.dumps))
def test_any_plan_text_is_a_plan_or_a_plan_file_error(text: str) -> None:
    try:
        Plan.from_json(text, "plan.json")
    except PlanFileError as exc:
        assert exc.message.startswith("plan.json ") and exc.hint


scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
# What a field of a plan holds: a scalar, or steps (a list of objects), of any shape.
plan_values = scalars | st.lists(
    st.dictionaries(st.text(max_size=8), scalars, max_size=3), max_size=2
)


@FUZZ
@given(
    body=st.fixed_dictionaries({name: plan_values for name in PLAN_FIELDS}),
    drop=st.sets(st.sampled_from(PLAN_FIELDS), max_size=3),
)
def test_a_plan_with_any_field_values_and_a_valid_checksum_loads_or_is_refused(
    body: dict[str, Any], drop: set[str]
) -> None:
    """The checksum only proves the file was not edited: a plan made by another version (or
    by hand) with fields of the wrong shape must still be a PlanFileError, never a crash."""
    from shardkit.deploy.plan import PLAN_FORMAT, _digest

    data = {k: v for k, v in body.items() if k not in drop}
    data["format"] = PLAN_FORMAT
    data["checksum"] = _digest(data)
    try:
        Plan.from_json(json.dumps(data), "plan.json")
    except PlanFileError as exc:
        assert "plan.json" in exc.message


# -- shardkit.toml --------------------------------------------------------------------------------

QUICKSTART_TOML = (ROOT / "examples" / "quickstart" / "shardkit.toml").read_text()


@FUZZ
@given(
    cut=st.integers(0, len(QUICKSTART_TOML)),
    length=st.integers(0, 40),
    insert=st.text(max_size=20) | st.sampled_from(["= 1", "[x]", '"', "\n[groups.eu]\n", "\udcff"]),
)
def test_any_edit_of_a_config_is_a_config_or_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, cut: int, length: int, insert: str
) -> None:
    text = QUICKSTART_TOML[:cut] + insert + QUICKSTART_TOML[cut + length :]
    path = tmp_path_factory.mktemp("cfg") / "shardkit.toml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    try:
        shardkit.load_config(path)
    except ConfigError as exc:
        assert str(path) in exc.message and exc.hint
