"""The state-table abstraction: MemoryTable and DynamoTable (over moto, in-process) behave the same.

Every test runs against both implementations: conditions (including an attribute the item
lacks), refused writes that change nothing, transactions that apply all or nothing with one
reason per operation, reads at one instant, partition queries in sort-key order, page by page,
and the limits DynamoDB enforces on a transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from shardkit.errors import TableWriteError
from shardkit.local import moto_patches
from shardkit.proxy.table import (
    BATCH_WRITERS,
    MAX_READ,
    MAX_TRANSACTION,
    Check,
    Delete,
    DynamoTable,
    MemoryTable,
    Put,
    Table,
    Update,
    absent,
    all_of,
    any_of,
    eq,
    is_in,
    le,
    lt,
    ne,
    query_all,
)

FAILED = "ConditionalCheckFailed"


@pytest.fixture(params=["memory", "dynamodb"])
def table(
    request: pytest.FixtureRequest, aws_env: None, pk_sk_table: Callable[..., None]
) -> Iterator[Table]:
    if request.param == "memory":
        yield MemoryTable("t", page_size=2)
        return
    moto_patches.install()
    with mock_aws():
        client = boto3.client("dynamodb", region_name="eu-west-1")
        pk_sk_table(client, "t")
        yield DynamoTable(client, "t")


def item(sk: str, **attrs: Any) -> dict[str, Any]:
    return {"pk": "p", "sk": sk, **attrs}


def test_items_round_trip_with_their_types(table: Table) -> None:
    table.write(Put(item("a", n=7, s="x", b=b"\x00\xff")))
    assert table.get(("p", "a")) == item("a", n=7, s="x", b=b"\x00\xff")
    assert table.get(("p", "nothing")) is None


@pytest.mark.parametrize(
    ("cond", "holds_on_item", "holds_on_nothing"),
    [
        (absent(), False, True),
        (eq("n", 7), True, False),
        (eq("n", "7"), False, False),  # another type is never equal
        (ne("n", 8), True, True),  # <> on a missing attribute is true
        (ne("missing", 1), True, True),
        (lt("n", 8), True, False),
        (lt("missing", 8), False, False),  # any other comparison with it is false
        (le("n", 7), True, False),
        (is_in("s", "x", "y"), True, False),
        (is_in("s", "y", "z"), False, False),
        (all_of(eq("n", 7), eq("s", "x")), True, False),
        (all_of(eq("n", 7), eq("s", "y")), False, False),
        (any_of(absent(), eq("s", "y")), False, True),
        (any_of(eq("s", "y"), eq("n", 7)), True, False),
    ],
)
def test_conditions_hold_as_in_dynamodb(
    table: Table, cond: Any, holds_on_item: bool, holds_on_nothing: bool
) -> None:
    table.write(Put(item("a", n=7, s="x")))
    for sk, holds in (("a", holds_on_item), ("b", holds_on_nothing)):
        before = table.get(("p", sk))
        if holds:
            table.write(Update(("p", sk), {"hit": 1}, cond))
            assert table.get(("p", sk)) == {**(before or item(sk)), "hit": 1}
        else:
            with pytest.raises(TableWriteError) as refused:
                table.write(Update(("p", sk), {"hit": 1}, cond))
            assert refused.value.reasons == (FAILED,) and refused.value.failed(0)
            assert table.get(("p", sk)) == before  # nothing written


def test_update_sets_attributes_and_keeps_the_others(table: Table) -> None:
    table.write(Update(("p", "a"), {"owner": "s1", "epoch": 1}))
    table.write(Update(("p", "a"), {"state": "fenced"}, eq("owner", "s1")))
    assert table.get(("p", "a")) == item("a", owner="s1", epoch=1, state="fenced")
    table.write(Delete(("p", "a"), eq("state", "fenced")))
    assert table.get(("p", "a")) is None


def test_a_transaction_applies_all_or_nothing_with_a_reason_per_operation(table: Table) -> None:
    table.write(Put(item("rec", owner="s1", state="active")))
    table.write(Put(item("k", seq=1)))
    fenced = Check(("p", "rec"), all_of(eq("owner", "s1"), eq("state", "fenced")))
    with pytest.raises(TableWriteError) as refused:
        table.transact([fenced, Put(item("k", seq=2), eq("seq", 1)), Put(item("new"))])
    assert refused.value.reasons == (FAILED, None, None)
    assert (refused.value.failed(0), refused.value.failed(1)) == (True, False)
    assert table.get(("p", "k")) == item("k", seq=1) and table.get(("p", "new")) is None

    live = Check(("p", "rec"), all_of(eq("owner", "s1"), eq("state", "active")))
    with pytest.raises(TableWriteError) as refused:
        table.transact([live, Put(item("k", seq=3), eq("seq", 2))])
    assert refused.value.reasons == (None, FAILED)

    table.transact([live, Put(item("k", seq=2), eq("seq", 1)), Put(item("new"), absent())])
    assert table.get(("p", "k")) == item("k", seq=2) and table.get(("p", "new")) == item("new")


def test_a_transaction_is_refused_before_anything_when_malformed(table: Table) -> None:
    with pytest.raises(ValueError, match="two operations on one item"):
        table.transact([Put(item("a")), Delete(("p", "a"))])
    with pytest.raises(ValueError, match=f"at most {MAX_TRANSACTION}"):
        table.transact([Put(item(f"k{i:03}")) for i in range(MAX_TRANSACTION + 1)])
    with pytest.raises(ValueError, match=f"at most {MAX_READ}"):
        table.get_many([("p", f"k{i}") for i in range(MAX_READ + 1)])
    assert list(query_all(table, "p")) == []


def test_get_many_reads_several_items_in_order(table: Table) -> None:
    table.put_batch([item("a", n=1), item("c", n=3)])
    assert table.get_many([("p", "c"), ("p", "b"), ("p", "a")]) == [
        item("c", n=3),
        None,
        item("a", n=1),
    ]


def test_a_query_lists_a_partition_in_sort_key_order_page_by_page(table: Table) -> None:
    keys = ["\x00slot", "a", "b", "z", "zz", "é"]  # UTF-8 order: the reserved prefix first
    table.put_batch([item(k, n=i) for i, k in enumerate(reversed(keys))])
    table.put_batch([{"pk": "other", "sk": "a"}])
    first = table.query("p", limit=2)
    assert [i["sk"] for i in first.items] == keys[:2] and first.last == keys[1]
    assert [i["sk"] for i in table.query("p", after=first.last, limit=2).items] == keys[2:4]
    assert [i["sk"] for i in query_all(table, "p")] == sorted(keys)
    assert table.query("nothing").items == []


def test_a_refusal_without_reasons_is_still_a_refusal() -> None:
    """The control plane's facade raises its own errors (a code, no cancellation reasons)."""

    class Refused(Exception):
        code = "TransactionCanceledException"

    class Conditional(Exception):
        code = "ConditionalCheckFailedException"

    class Client:
        def transact_write_items(self, **_: Any) -> None:
            raise Refused("cancelled")

        def put_item(self, **_: Any) -> None:
            raise Conditional("no")

        def delete_item(self, **_: Any) -> None:
            raise KeyError("something else entirely")

    table = DynamoTable(Client(), "t")
    with pytest.raises(TableWriteError) as refused:
        table.transact([Put(item("a"))])
    assert refused.value.reasons is None and refused.value.failed(0) is None
    with pytest.raises(TableWriteError) as refused:
        table.write(Put(item("a"), absent()))
    assert refused.value.reasons == (FAILED,)
    with pytest.raises(KeyError):  # not a refusal: the caller's to handle
        table.write(Delete(("p", "a")))


def test_values_are_str_int_or_bytes() -> None:
    with pytest.raises(TypeError, match="str, int or bytes, not float"):
        DynamoTable(None, "t").write(Put(item("a", x=1.5)))


def test_a_large_batch_is_written_in_calls_of_25_a_few_at_once() -> None:
    """Every item once, in BatchWriteItem calls of at most 25, at most BATCH_WRITERS in flight;
    a call that keeps failing stops the batches not yet sent."""

    class Client:
        def __init__(self, fail_at: int | None = None) -> None:
            self.sizes: list[int] = []
            self.written: list[str] = []
            self.in_flight = self.most = 0
            self.fail_at = fail_at
            self.lock = threading.Lock()

        def batch_write_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
            ((requests,),) = [list(RequestItems.values())]
            with self.lock:
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
                failing = self.fail_at is not None and len(self.sizes) >= self.fail_at
                self.sizes.append(len(requests))
            time.sleep(0.01)
            with self.lock:
                self.in_flight -= 1
                if failing:
                    raise OSError("connection reset")
                self.written += [r["PutRequest"]["Item"]["sk"]["S"] for r in requests]
            return {}

    client = Client()
    DynamoTable(client, "t").put_batch([item(f"k{i:04}") for i in range(1001)])
    assert sorted(client.written) == [f"k{i:04}" for i in range(1001)]
    assert sorted(client.sizes) == [1] + [25] * 40
    assert 1 < client.most <= BATCH_WRITERS
    failing = Client(fail_at=2)
    with pytest.raises(OSError, match="connection reset"):
        DynamoTable(failing, "t").put_batch([item(f"k{i:04}") for i in range(1001)])
    assert len(failing.sizes) < 41  # the rest was never sent
