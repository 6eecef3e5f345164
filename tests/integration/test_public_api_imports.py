"""What ``import shardkit`` and its data-plane names load, probed in a fresh interpreter where
nothing is imported yet: the package stays light, and the errors module is stdlib only."""

from __future__ import annotations

import json
import subprocess
import sys


def _imported_after(statement: str) -> list[str]:
    """Top-level non-stdlib packages a fresh interpreter loads to run ``statement``."""
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        f"{statement}\n"
        "names = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(json.dumps(sorted(names - set(sys.stdlib_module_names))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(out.stdout)


def test_import_shardkit_is_light() -> None:
    assert _imported_after("import shardkit") == ["shardkit"]


def test_data_plane_names_do_not_import_the_control_plane() -> None:
    loaded = _imported_after(
        "import shardkit\n"
        "shardkit.decode_map, shardkit.ShardMap, shardkit.Shard, shardkit.hash_key\n"
        "shardkit.stateless_shard, shardkit.ShardkitError, shardkit.MapSignatureError"
    )
    for heavy in ("pydantic", "boto3", "botocore", "rich", "click", "numpy", "cryptography"):
        assert heavy not in loaded, loaded
    assert "msgpack" in loaded and "xxhash" in loaded  # the probe does see what is imported


def test_the_import_probe_sees_pydantic_when_it_is_imported() -> None:
    # Positive control for the tests above: the probe is not blind to pydantic.
    assert "pydantic" in _imported_after("import shardkit\nshardkit.load_config")


def test_errors_module_imports_only_the_stdlib() -> None:
    assert _imported_after("import shardkit.errors") == ["shardkit"]
