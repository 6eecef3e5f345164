"""The local cloud's DynamoDB journal (shardkit/local/journal.py), on moto in-process.

Each ``run`` is one life of a local cloud: a fresh moto, the journal replayed into it. A life
that ends without ``close`` is a crash (``kill -9``): what it wrote is only what the journal has.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from shardkit.errors import LocalCloudError
from shardkit.local import moto_patches
from shardkit.local.journal import Journal

TABLE = "state"


@pytest.fixture(autouse=True)
def _env(aws_env: None) -> Iterator[None]:
    yield
    moto_patches.set_sink(None)


@contextmanager
def run(directory: Path, *, clean_stop: bool = False, **options: Any) -> Iterator[Any]:
    """One life of the local cloud's DynamoDB: yields (client, journal)."""
    with mock_aws():
        journal = Journal(directory, **options)
        journal.restored = journal.open()
        try:
            yield boto3.client("dynamodb", region_name="eu-west-1"), journal
        finally:
            if clean_stop:
                journal.close()
            else:  # a crash: nothing more is written, the file stays as it is
                moto_patches.set_sink(None)
                journal._stop.set()
                os.close(journal._fd)


def key(pk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": "state"}}


def items(client: Any) -> dict[str, dict[str, Any]]:
    pages = client.get_paginator("scan").paginate(TableName=TABLE)
    return {i["pk"]["S"]: i for page in pages for i in page["Items"]}


def write_some(client: Any, make_table: Any) -> dict[str, dict[str, Any]]:
    make_table(client, TABLE)
    for i in range(30):
        client.put_item(TableName=TABLE, Item={**key(f"k{i}"), "n": {"N": str(i)}})
    client.put_item(TableName=TABLE, Item={**key("bin"), "b": {"B": b"\x00\xff"}})
    client.update_item(
        TableName=TABLE,
        Key=key("k1"),
        UpdateExpression="SET m = :m",
        ExpressionAttributeValues={":m": {"M": {"x": {"L": [{"S": "y"}, {"BS": [b"\x01"]}]}}}},
    )
    client.delete_item(TableName=TABLE, Key=key("k2"))
    client.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": TABLE, "Item": {**key("tx"), "n": {"N": "1"}}}},
            {"Delete": {"TableName": TABLE, "Key": key("k3")}},
        ]
    )
    return items(client)


def test_every_acknowledged_write_survives_a_crash(tmp_path: Path, pk_sk_table: Any) -> None:
    with run(tmp_path) as (client, _):
        before = write_some(client, pk_sk_table)
    assert "k2" not in before and "k3" not in before and before["bin"]["b"] == {"B": b"\x00\xff"}
    with run(tmp_path) as (client, journal):
        assert items(client) == before
        assert journal.restored == {"tables": 1, "items": len(before), "records": 35}
        client.put_item(TableName=TABLE, Item={**key("after"), "n": {"N": "9"}})
    with run(tmp_path, clean_stop=True) as (client, journal):
        assert items(client) == before | {"after": {**key("after"), "n": {"N": "9"}}}
        assert journal.restored["records"] == 1  # the last start compacted the 35 before it
    assert (tmp_path / "journal.log").read_bytes() == b""  # a clean stop compacts
    with run(tmp_path) as (client, journal):
        assert set(items(client)) == set(before) | {"after"}
        assert journal.restored["records"] == 0


def test_a_deleted_table_stays_deleted(tmp_path: Path, pk_sk_table: Any) -> None:
    with run(tmp_path) as (client, _):
        write_some(client, pk_sk_table)
        client.delete_table(TableName=TABLE)
        pk_sk_table(client, TABLE)
        client.put_item(TableName=TABLE, Item=key("only"))
    with run(tmp_path) as (client, _):
        assert list(items(client)) == ["only"]


def test_records_already_in_the_snapshot_are_not_applied_twice(
    tmp_path: Path, pk_sk_table: Any
) -> None:
    with run(tmp_path) as (client, journal):
        write_some(client, pk_sk_table)
        journal.compact()
        client.put_item(TableName=TABLE, Item=key("late"))
    log = tmp_path / "journal.log"
    late = log.read_bytes()
    # A crash between the snapshot's rename and the journal's truncation leaves both.
    with run(tmp_path) as (client, journal):
        expected = items(client)
        journal.compact()
    log.write_bytes(late)
    with run(tmp_path) as (client, journal):
        assert items(client) == expected and journal.restored["records"] == 0


def test_a_torn_last_line_is_dropped_and_said(tmp_path: Path, pk_sk_table: Any) -> None:
    with run(tmp_path) as (client, _):
        before = write_some(client, pk_sk_table)
    log = tmp_path / "journal.log"
    log.write_bytes(log.read_bytes() + b'{"s":99,"items":[["1234')
    with run(tmp_path) as (client, journal):
        assert items(client) == before
        assert any("torn last line" in note for note in journal.notes)
        client.put_item(TableName=TABLE, Item=key("next"))
    with run(tmp_path) as (client, _):
        assert "next" in items(client)


@pytest.mark.parametrize(
    "damage",
    [
        lambda lines: [lines[0], b"not json", *lines[1:]],
        lambda lines: [lines[0], *lines[2:]],  # a record is missing
    ],
)
def test_a_damaged_journal_stops_the_start(tmp_path: Path, pk_sk_table: Any, damage: Any) -> None:
    with run(tmp_path) as (client, _):
        write_some(client, pk_sk_table)
    log = tmp_path / "journal.log"
    log.write_bytes(b"\n".join(damage(log.read_bytes().split(b"\n"))))
    with pytest.raises(LocalCloudError) as err, run(tmp_path):
        pass
    assert "journal.log is damaged" in err.value.message or "is damaged" in err.value.message
    assert str(tmp_path) in err.value.hint


def test_a_damaged_snapshot_stops_the_start(tmp_path: Path, pk_sk_table: Any) -> None:
    with run(tmp_path, clean_stop=True) as (client, _):
        write_some(client, pk_sk_table)
    snapshot = tmp_path / "snapshot.jsonl"
    header = json.loads(snapshot.read_text().splitlines()[0])
    assert header == {"format": "shardkit-local-dynamodb/1", "seq": 35}
    snapshot.write_text(snapshot.read_text()[:-40])
    with pytest.raises(LocalCloudError, match=r"snapshot .* is damaged"), run(tmp_path):
        pass


def test_fsync_always_and_an_unknown_policy(tmp_path: Path, pk_sk_table: Any) -> None:
    with run(tmp_path, fsync="always") as (client, _):
        before = write_some(client, pk_sk_table)
    with run(tmp_path) as (client, _):
        assert items(client) == before
    with pytest.raises(LocalCloudError, match="unknown fsync policy 'sometimes'") as err:
        Journal(tmp_path, fsync="sometimes")
    assert "SHARDKIT_LOCAL_FSYNC" in err.value.hint
