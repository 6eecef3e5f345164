"""The data plane stays light (DESIGN.md §3): decoding a map and routing a key must not import
pydantic, boto3/botocore or numpy. Checked in a fresh interpreter, where nothing is loaded yet."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import shardkit

HEAVY = ("pydantic", "boto3", "botocore", "numpy")

_SCRIPT = textwrap.dedent("""
    import json, sys
    import shardkit.sharding.codec, shardkit.sharding.shardmap
    args = json.loads(sys.stdin.read())
    envelope = open(args["path"], "rb").read()
    trusted = {args["key_id"]: bytes.fromhex(args["public"])}
    m = shardkit.sharding.codec.decode_map(envelope, trusted, now=args["now"])
    routed = [m.route(k).id for k in args["keys"]]
    prefs = [s.id for s in m.preference_list(args["keys"][0])]
    loaded = sorted(n for n in sys.modules if n.split(".")[0] in args["heavy"]
                    or n.startswith("shardkit.config"))
    batch = [s.id for s in m.route_many(args["keys"])]  # the batch path may load numpy
    print(json.dumps({"routed": routed, "prefs": prefs, "loaded": loaded, "batch": batch,
                      "numpy_after_batch": "numpy" in sys.modules}))
""")


def test_decode_and_route_import_no_heavy_modules(quickstart_map, signing_key, tmp_path) -> None:
    path = tmp_path / "map.skm"
    path.write_bytes(shardkit.encode_map(quickstart_map, signing_key.key_id, signing_key.sign))
    keys = ["alice", "eu:bob", "user-42"]
    args = {
        "path": str(path),
        "key_id": signing_key.key_id,
        "public": signing_key.public_bytes.hex(),
        "now": quickstart_map.created_at,
        "keys": keys,
        "heavy": HEAVY,
    }
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        input=json.dumps(args),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    expected = [quickstart_map.route(k).id for k in keys]
    assert out["routed"] == expected == ["us-3", "eu-0", "us-0"]
    assert out["prefs"] == [s.id for s in quickstart_map.preference_list("alice")]
    assert out["loaded"] == []
    # The check can see a heavy module: the batch path does import numpy, lazily.
    assert out["batch"] == expected
    assert out["numpy_after_batch"] is True
