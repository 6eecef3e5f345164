"""The data plane stays light (docs/architecture.md §3): decoding a map and routing a key must not
import pydantic, boto3/botocore or numpy, and no data-plane module loads the control plane when
imported. Checked in a fresh interpreter, where nothing is loaded yet. (``test_planes`` reads
every import statement, lazy ones included; this measures what really gets loaded.)"""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import shardkit

# One list of the planes: tests/unit/test_planes.py (another directory, so loaded by path).
_PLANES = runpy.run_path(str(Path(__file__).resolve().parents[1] / "unit" / "test_planes.py"))
CONTROL_PLANE, DATA_PLANE = _PLANES["CONTROL_PLANE"], _PLANES["DATA_PLANE"]

HEAVY = ("pydantic", "boto3", "botocore", "numpy")


def in_fresh_python(script: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter with ``args`` (and the module lists) on stdin."""
    args = {**args, "heavy": HEAVY, "control": CONTROL_PLANE}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(args),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


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
                    or n.startswith(tuple(args["control"])))
    batch = [s.id for s in m.route_many(args["keys"])]  # the batch path may load numpy
    print(json.dumps({"routed": routed, "prefs": prefs, "loaded": loaded, "batch": batch,
                      "numpy_after_batch": "numpy" in sys.modules}))
""")


def test_decode_and_route_import_no_heavy_modules(quickstart_map, signing_key, tmp_path) -> None:
    path = tmp_path / "map.skm"
    path.write_bytes(shardkit.encode_map(quickstart_map, signing_key.key_id, signing_key.sign))
    keys = ["alice", "eu:bob", "user-42"]
    args: dict[str, Any] = {
        "path": str(path),
        "key_id": signing_key.key_id,
        "public": signing_key.public_bytes.hex(),
        "now": quickstart_map.created_at,
        "keys": keys,
    }
    out = in_fresh_python(_SCRIPT, args)
    expected = [quickstart_map.route(k).id for k in keys]
    assert out["routed"] == expected == ["us-3", "eu-0", "us-0"]
    assert out["prefs"] == [s.id for s in quickstart_map.preference_list("alice")]
    assert out["loaded"] == []
    # The check can see a heavy module: the batch path does import numpy, lazily.
    assert out["batch"] == expected
    assert out["numpy_after_batch"] is True


_IMPORT_ALL = textwrap.dedent("""
    import importlib, json, pkgutil, sys
    args = json.loads(sys.stdin.read())
    names = []
    for top in args["packages"]:
        module = importlib.import_module(top)
        names.append(top)
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), top + "."):
            importlib.import_module(info.name)
            names.append(info.name)
    loaded = sorted(n for n in sys.modules if n.split(".")[0] in args["heavy"]
                    or n.startswith(tuple(args["control"])))
    print(json.dumps({"imported": names, "loaded": loaded}))
""")


def _import_all(packages: list[str]) -> dict[str, Any]:
    return in_fresh_python(_IMPORT_ALL, {"packages": packages})


def test_importing_every_data_plane_module_loads_no_control_plane_and_nothing_heavy() -> None:
    out = _import_all(list(DATA_PLANE))
    assert {"shardkit.proxy.handler", "shardkit.routing.transports"} <= set(out["imported"])
    assert out["loaded"] == []


def test_the_import_probe_sees_the_control_plane() -> None:
    # The positive control: importing a control-plane package is seen.
    assert "shardkit.config" in _import_all(["shardkit.config"])["loaded"]


def test_the_accumulator_is_data_plane_light() -> None:
    """The proxy imports it on the request path: stdlib and msgpack only (no numpy, pydantic)."""
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import shardkit.proxy.load as m\n"
        "m.LoadAccumulator('i').add('s', 'g', 1, 1.0, 0.0)\n"
        "names = {n.split('.')[0] for n in set(sys.modules) - before}\n"
        "print(json.dumps(sorted(n for n in names - set(sys.stdlib_module_names)"
        " if not n.startswith('_'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(out.stdout))
    assert "msgpack" in loaded  # the probe sees what is imported
    assert not loaded & {"numpy", "pydantic", "boto3", "botocore", "click", "rich", "xxhash"}
