"""The local cloud's DynamoDB keeps every acknowledged write under concurrent transactions.

moto restores a whole-table snapshot when a transaction's condition fails, which can undo writes
that other threads made meanwhile; the local cloud serialises item operations to prevent it
(:func:`shardkit.local.__main__.serialise_dynamodb`). This test hammers one table with plain
writes while failing transactions run beside them, and checks that no write is lost.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from shardkit.local.__main__ import serialise_dynamodb

TABLE = "t"
WRITERS, WRITES = 3, 250


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    serialise_dynamodb()
    with mock_aws():
        client = boto3.client("dynamodb", region_name="eu-west-1")
        client.create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        )
        client.put_item(TableName=TABLE, Item={"pk": {"S": "fence"}, "epoch": {"N": "1"}})
        yield client


def test_failing_transactions_do_not_undo_concurrent_writes(dynamodb: object) -> None:
    client = dynamodb
    stop = threading.Event()
    failed = []

    def failing_transactions() -> None:
        while not stop.is_set():
            try:
                client.transact_write_items(
                    TransactItems=[  # type: ignore[attr-defined]
                        {
                            "ConditionCheck": {
                                "TableName": TABLE,
                                "Key": {"pk": {"S": "fence"}},
                                "ConditionExpression": "epoch = :e",
                                "ExpressionAttributeValues": {":e": {"N": "2"}},
                            }
                        },
                        {"Put": {"TableName": TABLE, "Item": {"pk": {"S": "never"}}}},
                    ]
                )
            except client.exceptions.TransactionCanceledException:  # type: ignore[attr-defined]
                failed.append(1)

    def writer(n: int) -> None:
        for i in range(WRITES):
            client.put_item(
                TableName=TABLE,  # type: ignore[attr-defined]
                Item={"pk": {"S": f"w{n}-{i}"}},
            )

    spoiler = threading.Thread(target=failing_transactions)
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    spoiler.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    spoiler.join()

    items = client.scan(TableName=TABLE)["Items"]  # type: ignore[attr-defined]
    written = {i["pk"]["S"] for i in items} - {"fence"}
    assert failed, "the failing transactions must have run beside the writes"
    assert "never" not in written
    assert written == {f"w{n}-{i}" for n in range(WRITERS) for i in range(WRITES)}
