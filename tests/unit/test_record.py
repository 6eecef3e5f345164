"""The deployment record: its accessors, its fingerprint across the format upgrade, and the
formats it reads and refuses. Pure data, no AWS."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from shardkit.deploy.record import (
    RECORD_FORMAT,
    Record,
    RecordBuilder,
    parse_history,
    parse_record,
)
from shardkit.deploy.state import LocalCache, published_maps
from shardkit.errors import RecordFormatError

FN = "shardkit-demo-eu-0"
URL = "https://abc123.lambda-url.eu-west-1.on.aws/"
SHA = "ab" * 32

# What shardkit wrote before the record had a format: a manifest.json like this one.
LEGACY: dict[str, Any] = {
    "project": "demo",
    "target": "local",
    "account": "123456789012",
    "resources": {
        "eu-west-1/s3_bucket/bkt": {
            "kind": "s3_bucket",
            "name": "bkt",
            "region": "eu-west-1",
            "shard": None,
            "fingerprint": "f1",
            "props": {"versioning": True},
            "outputs": {"arn": "arn:aws:s3:::bkt"},
        },
        "eu-west-1/dynamodb_table/tbl": {
            "kind": "dynamodb_table",
            "name": "tbl",
            "region": "eu-west-1",
            "shard": None,
            "fingerprint": "f2",
            "props": {},
            "outputs": {},
            "retained": True,
        },
        f"eu-west-1/lambda_function/{FN}": {
            "kind": "lambda_function",
            "name": FN,
            "region": "eu-west-1",
            "shard": "eu-0",
            "fingerprint": "f3",
            "props": {"code": {"bucket": "bkt", "key": f"artifacts/code/{SHA}.zip", "sha256": SHA}},
            "outputs": {},
        },
        f"eu-west-1/function_url/{FN}": {
            "kind": "function_url",
            "name": FN,
            "region": "eu-west-1",
            "shard": "eu-0",
            "fingerprint": "f4",
            "props": {"function": FN, "qualifier": "live"},
            "outputs": {"url": URL},
        },
    },
    "artifacts": {"eu-west-1": [f"artifacts/code/{SHA}.zip"]},
    "map_version": 3,
    "map_version_max": 4,
    "map_sha256": "cd" * 32,
    "map_regions": ["eu-west-1"],
    "epochs": {"eu-0": 2},
    "deployment": 5,
    "status": "ok",
    "local_instance": "i-1",
}
# The fingerprint shardkit computed for LEGACY before this format existed (a saved plan's base).
LEGACY_FINGERPRINT = "6f7a36d0077b42ea28a322f0"


def legacy_dir(tmp_path: Path, manifest: dict[str, Any] = LEGACY) -> Path:
    root = tmp_path / "deploy" / "local"
    root.mkdir(parents=True)
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "map.skm").write_bytes(b"signed map v3")
    return tmp_path


def test_an_old_manifest_is_upgraded_with_its_fingerprint_and_map() -> None:
    record = parse_record(LEGACY, "manifest.json", legacy_map=b"signed map v3")
    assert record.format == RECORD_FORMAT
    assert record.fingerprint() == LEGACY_FINGERPRINT  # saved plans stay valid
    assert record.map_envelope == b"signed map v3"
    assert record.resources["eu-west-1/dynamodb_table/tbl"].retained
    assert not record.resources["eu-west-1/s3_bucket/bkt"].retained


def test_accessors_read_functions_urls_buckets_tables_and_code() -> None:
    record = parse_record(LEGACY, "manifest.json")
    assert record.functions() == {"eu-0": FN}
    assert record.urls() == {"eu-0": URL}
    assert record.url_targets() == {URL: ("eu-west-1", FN, "live")}
    assert record.buckets() == {"eu-west-1": "bkt"}
    assert record.tables() == {"eu-west-1": "tbl"}
    assert record.retained() == ["eu-west-1/dynamodb_table/tbl"]
    assert record.code_location("eu-west-1", FN, SHA) == ("bkt", f"artifacts/code/{SHA}.zip")
    assert record.code_location("eu-west-1", FN, "00" * 32) is None  # another package
    assert record.code_location("us-east-1", FN, SHA) is None
    assert record.shards() == {"eu-0": {"region": "eu-west-1", "function": FN, "url": URL}}
    assert record.outputs()["regions"] == {"eu-west-1": {"bucket": "bkt", "table": "tbl"}}


def test_the_local_cache_upgrades_an_old_directory_and_writes_one_record(tmp_path: Path) -> None:
    state = legacy_dir(tmp_path)
    cache = LocalCache(state, "local")
    record = cache.load()
    assert record is not None and record.fingerprint() == LEGACY_FINGERPRINT
    assert published_maps(state) == {"local": b"signed map v3"}

    cache.save(record.written())
    assert sorted(p.name for p in cache.root.iterdir()) == ["record.json"]
    again = cache.load()
    assert again is not None
    assert (again.serial, again.fingerprint()) == (1, LEGACY_FINGERPRINT)
    assert json.loads(cache.record_path.read_text())["format"] == "shardkit-deployment/2"
    assert again.map_envelope == b"signed map v3"


def test_a_record_of_a_newer_format_is_refused_naming_the_fix(tmp_path: Path) -> None:
    newer = {**LEGACY, "format": "shardkit-deployment/3", "something_new": 1}
    with pytest.raises(RecordFormatError) as err:
        parse_record(newer, "s3://bkt/shardkit-state/record.json")
    assert str(err.value.message) == (
        "s3://bkt/shardkit-state/record.json was written by a newer shardkit (format "
        "shardkit-deployment/3); this shardkit reads shardkit-deployment/2 and older"
    )
    assert "pip install -U shardkit" in err.value.hint


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({**LEGACY, "format": "terraform/4"}, "unknown format 'terraform/4'"),
        ([1, 2], "not a shardkit deployment record"),
        ({**LEGACY, "status": "exploded"}, "status"),
        ({**LEGACY, "resources": {"k": {"kind": "s3_bucket"}}}, "resources.k.name"),
    ],
)
def test_a_bad_record_is_a_clear_error(data: Any, words: str) -> None:
    with pytest.raises(RecordFormatError) as err:
        parse_record(data, "record.json")
    assert words in err.value.message and err.value.message.startswith("record.json")


def test_old_history_entries_are_read() -> None:
    old = {"deployment": 2, "blueprint": {"resources": []}, "map": base64.b64encode(b"m").decode()}
    entry = parse_history(old, "000002.json")
    assert (entry.deployment, entry.map) == (2, b"m")
    assert parse_history(json.loads(entry.to_json()), "x") == entry


def test_the_builder_drops_what_went_with_a_bucket_or_function() -> None:
    record = parse_record(LEGACY, "manifest.json")
    builder = RecordBuilder(record)
    builder.remove("eu-west-1/s3_bucket/bkt")
    builder.remove(f"eu-west-1/lambda_function/{FN}")
    after = builder.build()
    assert (after.artifacts, after.map_regions, after.epochs) == ({}, (), {})
    assert record.artifacts  # the record it started from is untouched
    with pytest.raises(Exception, match="frozen"):
        record.status = "failed"  # type: ignore[misc]


def test_serial_and_lineage_decide_which_copy_is_newer() -> None:
    first = Record.empty("demo", "aws", "eu-west-1").written()
    second = first.written()
    assert first.lineage and first.lineage == second.lineage
    assert second.newer_than(first) and not first.newer_than(second)
    other = Record.empty("demo", "aws", "eu-west-1").written().written()
    assert not other.newer_than(first)  # another lineage: never "newer"


def test_the_lock_item_is_never_saved_with_the_tables_data() -> None:
    from shardkit.deploy.lock import LOCK_PK
    from shardkit.local.server import CONTROL_PREFIX

    assert LOCK_PK.startswith(CONTROL_PREFIX)
