"""The local cloud's patches to moto's DynamoDB (shardkit/local/moto_patches.py).

These tests fail when a moto upgrade changes what the patches rely on: the rollback that copies
tables, the item storage that the undo writes back into, the module list the server scans.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import threading
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import boto3
import pytest
from moto import mock_aws

from shardkit.local import moto_patches

TABLE = "t"
WRITERS, WRITES = 3, 250
FENCE = {"pk": {"S": "fence"}, "sk": {"S": "epoch"}}


class Recorder:
    """A sink that keeps what the patches hand it."""

    def __init__(self) -> None:
        self.changes: list[list[moto_patches.Change]] = []
        self.tables: list[tuple[str, str, str, dict[str, Any]]] = []

    def items(self, changes: list[moto_patches.Change]) -> None:
        self.changes.append(changes)

    def table(self, account: str, region: str, op: str, args: dict[str, Any]) -> None:
        self.tables.append((account, region, op, args))


@pytest.fixture
def dynamodb(aws_env: None, pk_sk_table: Any) -> Iterator[Any]:
    moto_patches.install()
    with mock_aws():
        client = boto3.client("dynamodb", region_name="eu-west-1")
        pk_sk_table(client, TABLE)
        client.put_item(TableName=TABLE, Item={**FENCE, "epoch": {"N": "1"}})
        yield client
    moto_patches.set_sink(None)


def _transaction(epoch: int, *writes: dict[str, Any]) -> list[dict[str, Any]]:
    check = {
        "ConditionCheck": {
            "TableName": TABLE,
            "Key": FENCE,
            "ConditionExpression": "epoch = :e",
            "ExpressionAttributeValues": {":e": {"N": str(epoch)}},
        }
    }
    return [*writes, check]


def _put(pk: str, **attrs: Any) -> dict[str, Any]:
    return {"Put": {"TableName": TABLE, "Item": {"pk": {"S": pk}, "sk": {"S": "s"}, **attrs}}}


def _items(client: Any, table: str = TABLE) -> dict[str, dict[str, Any]]:
    return {i["pk"]["S"]: i for i in client.scan(TableName=table)["Items"]}


def test_the_patches_were_checked_against_this_moto() -> None:
    """A moto upgrade must be checked against moto_patches.py (then update MOTO_VERSION)."""
    assert version("moto") == moto_patches.MOTO_VERSION
    from moto.dynamodb.models import DynamoDBBackend

    source = inspect.getsource(inspect.unwrap(DynamoDBBackend.transact_write_items))
    # The undo relies on moto copying tables with copy.deepcopy and putting the copies back.
    assert "copy.deepcopy(" in source and "self.tables[table_name] = original" in source


def test_a_failed_transaction_undoes_its_own_writes_only(dynamodb: Any) -> None:
    client = dynamodb
    client.put_item(TableName=TABLE, Item={"pk": {"S": "old"}, "sk": {"S": "s"}, "v": {"N": "1"}})
    with pytest.raises(client.exceptions.TransactionCanceledException) as failed:
        client.transact_write_items(
            TransactItems=_transaction(2, _put("new"), _put("old", v={"N": "2"}))
        )
    codes = [r["Code"] for r in failed.value.response["CancellationReasons"]]
    assert codes == ["None", "None", "ConditionalCheckFailed"]  # both puts ran, then failed
    items = _items(client)
    assert "new" not in items and items["old"]["v"] == {"N": "1"}
    client.transact_write_items(
        TransactItems=_transaction(1, _put("new"), _put("old", v={"N": "3"}))
    )
    items = _items(client)
    assert "new" in items and items["old"]["v"] == {"N": "3"}


def test_a_transaction_copies_no_table(dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.dynamodb.models.table import Table

    copies = []
    original = copy._reconstruct  # type: ignore[attr-defined]

    def counting(x: Any, *args: Any, **kwargs: Any) -> Any:
        copies.append(type(x).__name__)
        return original(x, *args, **kwargs)

    monkeypatch.setattr(copy, "_reconstruct", counting)
    for i in range(50):
        dynamodb.put_item(TableName=TABLE, Item={"pk": {"S": f"f{i}"}, "sk": {"S": "s"}})
    dynamodb.transact_write_items(TransactItems=_transaction(1, _put("a")))
    with pytest.raises(dynamodb.exceptions.TransactionCanceledException):
        dynamodb.transact_write_items(TransactItems=_transaction(9, _put("b")))
    assert "Table" not in copies
    table = copy.deepcopy(next(iter(_backend().tables.values())))  # a backup still copies
    assert isinstance(table, Table) and "Table" in copies


def _backend() -> Any:
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends["123456789012"]["eu-west-1"]


def test_changes_reach_the_sink_once_per_operation(dynamodb: Any) -> None:
    sink = Recorder()
    moto_patches.set_sink(sink)
    client = dynamodb
    client.transact_write_items(TransactItems=_transaction(1, _put("a", v={"B": b"\x00"})))
    client.update_item(
        TableName=TABLE,
        Key={"pk": {"S": "a"}, "sk": {"S": "s"}},
        UpdateExpression="SET n = :n",
        ExpressionAttributeValues={":n": {"N": "5"}},
    )
    client.delete_item(TableName=TABLE, Key={"pk": {"S": "a"}, "sk": {"S": "s"}})
    with pytest.raises(client.exceptions.TransactionCanceledException):
        client.transact_write_items(TransactItems=_transaction(2, _put("b")))
    key = {"pk": {"S": "a"}, "sk": {"S": "s"}}
    account, region = "123456789012", "eu-west-1"
    assert sink.changes == [
        [(account, region, TABLE, key, {**key, "v": {"B": b"\x00"}})],
        [(account, region, TABLE, key, {**key, "v": {"B": b"\x00"}, "n": {"N": "5"}})],
        [(account, region, TABLE, key, None)],
        [(account, region, TABLE, {"pk": {"S": "b"}, "sk": {"S": "s"}}, None)],  # undone
    ]
    client.delete_table(TableName=TABLE)
    assert sink.tables == [(account, region, "delete_table", {"name": TABLE})]


def test_a_batch_is_one_change_and_its_items_are_sized_once(dynamodb: Any) -> None:
    sink = Recorder()
    moto_patches.set_sink(sink)
    client = dynamodb
    puts = [{"PutRequest": {"Item": {"pk": {"S": f"b{i}"}, "sk": {"S": "s"}}}} for i in range(25)]
    client.batch_write_item(RequestItems={TABLE: puts})
    account, region = "123456789012", "eu-west-1"
    assert sink.changes == [
        [(account, region, TABLE, r["PutRequest"]["Item"], r["PutRequest"]["Item"]) for r in puts]
    ]
    # the limit is moto's own, for a put alone or in a batch, and for an update that grows one
    near = moto_patches.ITEM_SIZE_LIMIT - len("pksk") - len("big") - len("s") - 2
    big = {"pk": {"S": "b0"}, "sk": {"S": "s"}, "big": {"S": "x" * near}}
    client.put_item(TableName=TABLE, Item=big)
    for write in (
        lambda item: client.put_item(TableName=TABLE, Item=item),
        lambda item: client.batch_write_item(
            RequestItems={TABLE: [{"PutRequest": {"Item": item}}]}
        ),
    ):
        with pytest.raises(client.exceptions.ClientError, match="Item size has exceeded"):
            write({**big, "pk": {"S": "b1"}, "big": {"S": "x" * (near + 1)}})
    with pytest.raises(client.exceptions.ClientError, match=r"Item size .*exceeded"):
        client.update_item(
            TableName=TABLE,
            Key={"pk": {"S": "b0"}, "sk": {"S": "s"}},
            UpdateExpression="SET n = :n",
            ExpressionAttributeValues={":n": {"N": "5"}},
        )
    assert _items(client)["b1"] == puts[1]["PutRequest"]["Item"]


def test_moto_lists_its_modules_once() -> None:
    moto_patches.install()
    from moto import backends

    assert backends.list_of_moto_modules() is backends.list_of_moto_modules()
    assert {"dynamodb", "s3", "awslambda"} <= set(backends.list_of_moto_modules())


def test_failing_transactions_do_not_undo_concurrent_writes(dynamodb: Any) -> None:
    client = dynamodb
    stop = threading.Event()
    failed = []

    def failing_transactions() -> None:
        while not stop.is_set():
            try:
                client.transact_write_items(TransactItems=_transaction(2, _put("never")))
            except client.exceptions.TransactionCanceledException:
                failed.append(1)

    def writer(n: int) -> None:
        for i in range(WRITES):
            client.put_item(TableName=TABLE, Item={"pk": {"S": f"w{n}-{i}"}, "sk": {"S": "s"}})

    spoiler = threading.Thread(target=failing_transactions)
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    spoiler.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    spoiler.join()

    written = set(_items(client)) - {"fence"}
    assert failed, "the failing transactions must have run beside the writes"
    assert written == {f"w{n}-{i}" for n in range(WRITERS) for i in range(WRITES)}


def test_moto_lists_a_handlers_methods_once() -> None:
    moto_patches.install()
    from moto.core import responses
    from moto.dynamodb.responses import DynamoHandler

    names = responses.method_names_from_class(DynamoHandler)
    assert names is responses.method_names_from_class(DynamoHandler)
    assert {"put_item", "transact_write_items"} <= set(names)


def test_a_condition_is_parsed_once_and_still_judged_per_item(dynamodb: Any) -> None:
    moto_patches._parsed.clear()
    client = dynamodb
    for epoch, ok in [(1, True), (2, False), (1, True)]:
        try:
            client.transact_write_items(TransactItems=_transaction(epoch, _put(f"p{epoch}")))
            assert ok
        except client.exceptions.TransactionCanceledException:
            assert not ok
    values = {key[2] for key in moto_patches._parsed if key[0] == "epoch = :e"}
    assert values == {((":e", (("N", str(e)),)),) for e in (1, 2)}  # once for each value
    with pytest.raises(client.exceptions.ClientError, match="ExpressionAttributeNames"):
        client.put_item(
            TableName=TABLE,
            Item={"pk": {"S": "x"}, "sk": {"S": "s"}},
            ConditionExpression="attribute_not_exists(pk)",
            ExpressionAttributeNames={"#unused": "n"},
        )


def test_a_query_reads_its_partition_only(dynamodb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.dynamodb.models.table import Table

    client = dynamodb
    for pk, sks in (("a", ["z", "\x00rec", "m"]), ("b", ["x"])):
        for sk in sks:
            client.put_item(TableName=TABLE, Item={"pk": {"S": pk}, "sk": {"S": sk}})

    def everything(self: Any) -> Any:
        raise AssertionError("the query read the whole table")

    monkeypatch.setattr(Table, "all_items", everything)

    def query(**extra: Any) -> Any:
        return client.query(
            TableName=TABLE,
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": "a"}},
            ConsistentRead=True,
            **extra,
        )

    assert [i["sk"]["S"] for i in query()["Items"]] == ["\x00rec", "m", "z"]
    first = query(Limit=2)
    assert [i["sk"]["S"] for i in first["Items"]] == ["\x00rec", "m"]
    rest = query(ExclusiveStartKey=first["LastEvaluatedKey"])
    assert [i["sk"]["S"] for i in rest["Items"]] == ["z"]


def test_a_transactional_read_holds_the_lock_for_all_its_items(dynamodb: Any) -> None:
    """Its reads are at one instant: while a writer holds the lock, the read waits for it."""
    client, key = dynamodb, {"pk": {"S": "fence"}, "sk": {"S": "epoch"}}
    read: list[Any] = []
    with moto_patches.LOCK:
        reader = threading.Thread(
            target=lambda: read.append(
                client.transact_get_items(TransactItems=[{"Get": {"TableName": TABLE, "Key": key}}])
            )
        )
        reader.start()
        reader.join(0.5)
        assert reader.is_alive() and read == []  # still waiting for the lock
    reader.join(10)
    assert read[0]["Responses"][0]["Item"]["epoch"] == {"N": "1"}


def test_racing_creates_of_one_table_make_one_table(
    dynamodb: Any, pk_sk_table: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """moto builds the new table between its "is the name free" check and the insert: each
    create waits there for the other (a bounded wait), so without the lock both would win."""
    from moto.dynamodb import models

    inside = threading.Barrier(2, timeout=1.0)

    table = models.Table

    def meeting(*args: Any, **kwargs: Any) -> Any:
        with contextlib.suppress(threading.BrokenBarrierError):
            inside.wait()
        return table(*args, **kwargs)

    monkeypatch.setattr(models, "Table", meeting)
    outcomes: list[str] = []

    def create(n: int) -> None:
        client = boto3.client("dynamodb", region_name="eu-west-1")
        try:
            pk_sk_table(client, "raced")
            client.put_item(TableName="raced", Item={"pk": {"S": f"won-{n}"}, "sk": {"S": "s"}})
            outcomes.append("won")
        except client.exceptions.ResourceInUseException:
            outcomes.append("in use")

    racers = [threading.Thread(target=create, args=(n,)) for n in range(2)]
    for t in racers:
        t.start()
    for t in racers:
        t.join()

    assert sorted(outcomes) == ["in use", "won"]
    assert len(_items(dynamodb, "raced")) == 1


@pytest.mark.parametrize("op", ["create_table", "delete_table"])
def test_table_operations_wait_for_the_lock(dynamodb: Any, pk_sk_table: Any, op: str) -> None:
    client = boto3.client("dynamodb", region_name="eu-west-1")
    call = {
        "create_table": lambda: pk_sk_table(client, "other"),
        "delete_table": lambda: client.delete_table(TableName=TABLE),
    }[op]
    with moto_patches.LOCK:
        worker = threading.Thread(target=call)
        worker.start()
        worker.join(0.3)
        assert worker.is_alive(), f"{op} ran while another operation held the lock"
    worker.join()
    assert not worker.is_alive()
