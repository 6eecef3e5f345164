"""The edge runtime's import path stays compact (docs/architecture.md §3): the stdlib, msgpack
and the hashing extension (xxhash, jump) only - no pydantic, boto3/botocore or numpy. Checked in
a fresh interpreter, both for the bare import and for serving requests (which also loads the
routing client and, at the first map verification, cryptography)."""

from __future__ import annotations

import textwrap
from typing import Any

from test_data_plane_imports import in_fresh_python

import shardkit

HEAVY = ("pydantic", "boto3", "botocore", "numpy", "rich", "click")
ALLOWED = {"shardkit", "msgpack", "xxhash", "jump"}

_PROBE = textwrap.dedent("""
    import json, sys
    args = json.loads(sys.stdin.read())
    before = set(sys.modules)

    def loaded():  # third-party top-level names; Cython's runtime entries belong to msgpack
        fresh = {m.split(".")[0] for m in set(sys.modules) - before}
        return sorted(m for m in fresh - set(sys.stdlib_module_names)
                      if not m.startswith(("_cython_", "cython_runtime")))

    import shardkit.edge
    on_import = loaded()
    on_import_shardkit = sorted(m for m in sys.modules if m.startswith("shardkit."))

    from shardkit.edge import CachePolicy, CacheRules, EdgeRuntime
    from shardkit.protocol import Answer
    from shardkit.routing.transports import MockTransport
    from shardkit.sharding.holder import MapHolder

    def shard(s, request):
        return Answer({"echo": request["payload"]}, s.id, s.epoch, 1, 0).to_wire()

    holder = MapHolder({args["key_id"]: bytes.fromhex(args["public"])},
                       clock=lambda: args["now"])
    holder.offer(open(args["path"], "rb").read())
    rules = CacheRules([CachePolicy("*", ttl_s=60, resident_only=())])
    with EdgeRuntime.create(holder, MockTransport(shard), rules=rules) as edge:
        served = [edge.infer("alice", {"q": 1}).cache for _ in range(2)]
    print(json.dumps({"on_import": on_import, "on_import_shardkit": on_import_shardkit,
                      "serving": loaded(), "served": served}))
""")


def _probe(path: str, key: Any, now: int) -> dict[str, Any]:
    args = {"path": path, "key_id": key.key_id, "public": key.public_bytes.hex(), "now": now}
    return in_fresh_python(_PROBE, args)


def test_import_and_serving_load_only_the_stdlib_msgpack_and_the_hashing_extension(
    quickstart_map: shardkit.ShardMap, signing_key: shardkit.SigningKey, tmp_path: Any
) -> None:
    path = tmp_path / "map.skm"
    path.write_bytes(shardkit.encode_map(quickstart_map, signing_key.key_id, signing_key.sign))
    out = _probe(str(path), signing_key, quickstart_map.created_at + 60)

    assert set(out["on_import"]) <= ALLOWED, out["on_import"]
    assert "msgpack" in out["on_import"]  # the probe does see third-party imports
    assert not [
        m
        for m in out["on_import_shardkit"]
        if m.startswith(
            (
                "shardkit.config",
                "shardkit.aws",
                "shardkit.deploy",
                "shardkit.cli",
                "shardkit.proxy",
            )
        )
    ]
    # Serving adds the map holder and the routing client (with xxhash and jump) and, to verify
    # the map's signature, cryptography - still nothing heavy.
    assert out["served"] == ["miss", "hit"]
    crypto = {"cryptography", "_cffi_backend", "_openssl", "_rust"}  # its native parts
    assert set(out["serving"]) <= ALLOWED | crypto, out["serving"]
    assert {"xxhash", "jump", "cryptography"} <= set(out["serving"])
    assert not set(out["serving"]) & set(HEAVY)
