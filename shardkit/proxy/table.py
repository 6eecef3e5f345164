"""A small table abstraction for the state tables: items, conditions, atomic reads and writes.

Two implementations with the same semantics:

* :class:`DynamoTable` - a DynamoDB table through a boto3 client (or anything with the same
  methods); conditions become condition expressions;
* :class:`MemoryTable` - a table in this process's memory, for models and for tests of
  applications; it enforces what DynamoDB enforces on transactions (at most 100 operations, each
  on a different item).

An item is a flat dict: ``pk`` and ``sk`` strings, other attributes ``str``, ``int`` or ``bytes``.
Every read is strongly consistent. A write's condition is evaluated on the item as it was just
before the write; all of a transaction's conditions on the items as they were before it, and then
either every operation applies or none does (:class:`~shardkit.errors.TableWriteError`, with one
reason per operation). A comparison with an attribute the item lacks is false, except ``<>``,
which is true - as in DynamoDB.

Data-plane module: stdlib only; the caller brings the boto3 client.
"""

from __future__ import annotations

import copy
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import CONDITION_FAILED, TableWriteError

__all__ = [
    "MAX_READ",
    "MAX_TRANSACTION",
    "Check",
    "Cond",
    "Delete",
    "DynamoTable",
    "Item",
    "Key",
    "MemoryTable",
    "Page",
    "Put",
    "Table",
    "Update",
    "absent",
    "all_of",
    "any_of",
    "eq",
    "is_in",
    "le",
    "lt",
    "ne",
    "query_all",
]

Value = str | int | bytes
Item = dict[str, Value]
Key = tuple[str, str]  # (pk, sk)

#: DynamoDB's limits on one transaction; reads (TransactGetItems) at most MAX_READ keys - DynamoDB
#: takes 100, emulators (moto) 25.
MAX_TRANSACTION = 100
MAX_READ = 25
#: DynamoDB's limit on one BatchWriteItem, and how many of them one ``put_batch`` keeps in flight.
MAX_BATCH = 25
BATCH_WRITERS = 4
MAX_TRANSACTION_BYTES = 4 * 1024 * 1024
MAX_ITEM_BYTES = 400 * 1024
_CONFLICT = "TransactionConflict"


# -- conditions ------------------------------------------------------------------------------------


class Cond(ABC):
    """A condition on one item (None when the item does not exist)."""

    @abstractmethod
    def holds(self, item: Mapping[str, Value] | None) -> bool:
        """Whether the condition holds for ``item``."""

    @abstractmethod
    def expression(self, names: dict[str, str], values: dict[str, Value]) -> str:
        """The DynamoDB condition expression, adding its placeholders to ``names``/``values``."""


@dataclass(frozen=True)
class _Absent(Cond):
    def holds(self, item: Mapping[str, Value] | None) -> bool:
        return item is None

    def expression(self, names: dict[str, str], values: dict[str, Value]) -> str:
        return f"attribute_not_exists({_name(names, 'pk')})"


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "<>": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


@dataclass(frozen=True)
class _Compare(Cond):
    name: str
    op: str
    value: Value

    def holds(self, item: Mapping[str, Value] | None) -> bool:
        have = None if item is None else item.get(self.name)
        if have is None or type(have) is not type(self.value):
            return self.op == "<>"
        return _OPS[self.op](have, self.value)

    def expression(self, names: dict[str, str], values: dict[str, Value]) -> str:
        return f"{_name(names, self.name)} {self.op} {_value(values, self.value)}"


@dataclass(frozen=True)
class _In(Cond):
    name: str
    options: tuple[Value, ...]

    def holds(self, item: Mapping[str, Value] | None) -> bool:
        have = None if item is None else item.get(self.name)
        return have is not None and any(type(have) is type(v) and have == v for v in self.options)

    def expression(self, names: dict[str, str], values: dict[str, Value]) -> str:
        options = ", ".join(_value(values, v) for v in self.options)
        return f"{_name(names, self.name)} IN ({options})"


@dataclass(frozen=True)
class _Join(Cond):
    word: str  # "AND" | "OR"
    parts: tuple[Cond, ...]

    def holds(self, item: Mapping[str, Value] | None) -> bool:
        results = (p.holds(item) for p in self.parts)
        return all(results) if self.word == "AND" else any(results)

    def expression(self, names: dict[str, str], values: dict[str, Value]) -> str:
        return f" {self.word} ".join(f"({p.expression(names, values)})" for p in self.parts)


def absent() -> Cond:
    """The item does not exist."""
    return _Absent()


def eq(name: str, value: Value) -> Cond:
    return _Compare(name, "=", value)


def ne(name: str, value: Value) -> Cond:
    """``name <> value``: also true when the item (or the attribute) does not exist."""
    return _Compare(name, "<>", value)


def lt(name: str, value: Value) -> Cond:
    return _Compare(name, "<", value)


def le(name: str, value: Value) -> Cond:
    return _Compare(name, "<=", value)


def is_in(name: str, *options: Value) -> Cond:
    return _In(name, tuple(options))


def all_of(*parts: Cond) -> Cond:
    return parts[0] if len(parts) == 1 else _Join("AND", parts)


def any_of(*parts: Cond) -> Cond:
    return parts[0] if len(parts) == 1 else _Join("OR", parts)


def _name(names: dict[str, str], name: str) -> str:
    for placeholder, known in names.items():
        if known == name:
            return placeholder
    placeholder = f"#n{len(names)}"
    names[placeholder] = name
    return placeholder


def _value(values: dict[str, Value], value: Value) -> str:
    placeholder = f":v{len(values)}"
    values[placeholder] = value
    return placeholder


# -- operations ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Put:
    """Write the whole item (replacing any item with its key) if ``when`` holds."""

    item: Mapping[str, Value]
    when: Cond | None = None

    @property
    def key(self) -> Key:
        return (str(self.item["pk"]), str(self.item["sk"]))


@dataclass(frozen=True)
class Update:
    """Set the given attributes (creating the item if it does not exist) if ``when`` holds."""

    key: Key
    set: Mapping[str, Value]
    when: Cond | None = None


@dataclass(frozen=True)
class Delete:
    key: Key
    when: Cond | None = None


@dataclass(frozen=True)
class Check:
    """Write nothing; refuse the transaction unless ``when`` holds."""

    key: Key
    when: Cond


Op = Put | Update | Delete | Check


@dataclass(frozen=True)
class Page:
    """One page of a partition, in sort-key order; ``last`` is where the next page starts after
    (None: this was the last page)."""

    items: list[Item]
    last: str | None = None


# -- the abstraction -----------------------------------------------------------------------------


class Table(ABC):
    """One state table (one per region)."""

    name: str

    @abstractmethod
    def get(self, key: Key) -> Item | None:
        """The item, or None."""

    @abstractmethod
    def get_many(self, keys: Sequence[Key]) -> list[Item | None]:
        """Several items read at one instant (a transaction: at most :data:`MAX_READ`)."""

    @abstractmethod
    def query(self, pk: str, *, after: str | None = None, limit: int | None = None) -> Page:
        """A page of the items of partition ``pk``, sort keys after ``after``."""

    @abstractmethod
    def write(self, op: Put | Update | Delete) -> None:
        """One write; :class:`TableWriteError` if its condition does not hold."""

    @abstractmethod
    def transact(self, ops: Sequence[Op]) -> None:
        """All of ``ops`` or none; :class:`TableWriteError` (one reason per op) if refused."""

    @abstractmethod
    def put_batch(self, items: Sequence[Mapping[str, Value]]) -> None:
        """Unconditional puts, not atomic as a whole (for filling a table nobody uses yet)."""


def query_all(table: Table, pk: str, after: str | None = None) -> Iterator[Item]:
    """Every item of partition ``pk`` (with a sort key after ``after``), page by page."""
    while True:
        page = table.query(pk, after=after)
        yield from page.items
        if page.last is None:
            return
        after = page.last


# -- in memory -------------------------------------------------------------------------------------


@dataclass
class MemoryTable(Table):
    """A state table in memory with DynamoDB's conditional and transactional semantics.

    Thread-safe: every operation holds one lock. ``page_size`` bounds a query page (small pages
    let a model interleave other work with a long read). ``calls`` counts operations by name.
    ``items`` (key -> item) is for reading; write through the operations.
    """

    name: str = "memory"
    page_size: int = 1000
    items: dict[Key, Item] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _by_pk: dict[str, set[str]] = field(default_factory=dict, repr=False)  # pk -> sort keys

    def __post_init__(self) -> None:
        for pk, sk in self.items:
            self._by_pk.setdefault(pk, set()).add(sk)

    def get(self, key: Key) -> Item | None:
        with self._lock:
            self._count("get")
            return _copy(self.items.get(key))

    def get_many(self, keys: Sequence[Key]) -> list[Item | None]:
        _check_count(len(keys), MAX_READ)
        with self._lock:
            self._count("get_many")
            return [_copy(self.items.get(k)) for k in keys]

    def query(self, pk: str, *, after: str | None = None, limit: int | None = None) -> Page:
        size = min(self.page_size, limit) if limit else self.page_size
        with self._lock:
            self._count("query")
            partition = self._by_pk.get(pk, ())
            sks = sorted(sk for sk in partition if after is None or sk > after)
            page = [dict(self.items[(pk, sk)]) for sk in sks[:size]]
            return Page(page, sks[size - 1] if len(sks) > size else None)

    def write(self, op: Put | Update | Delete) -> None:
        with self._lock:
            self._count("write")
            key = op.key
            if op.when is not None and not op.when.holds(self.items.get(key)):
                raise TableWriteError(
                    f"{self.name}: the condition on {key} does not hold",
                    reasons=(CONDITION_FAILED,),
                )
            self._apply(op)

    def transact(self, ops: Sequence[Op]) -> None:
        keys = _check_transaction(ops)
        if sum(_size(op.item) for op in ops if isinstance(op, Put)) > MAX_TRANSACTION_BYTES:
            raise ValueError(f"a transaction may write at most {MAX_TRANSACTION_BYTES:,} bytes")
        with self._lock:
            self._count("transact")
            reasons = tuple(
                None if op.when is None or op.when.holds(self.items.get(k)) else CONDITION_FAILED
                for op, k in zip(ops, keys, strict=True)
            )
            if any(reasons):
                raise TableWriteError(f"{self.name}: transaction cancelled", reasons=reasons)
            for op in ops:
                self._apply(op)

    def put_batch(self, items: Sequence[Mapping[str, Value]]) -> None:
        for item in items:
            with self._lock:
                self._count("put_batch")
                self._apply(Put(item))

    def _apply(self, op: Op) -> None:
        key = op.key
        if isinstance(op, Put):
            _check_item(op.item)
            self.items[key] = dict(op.item)
        elif isinstance(op, Update):
            updated = {**self.items.get(key, {"pk": key[0], "sk": key[1]}), **op.set}
            _check_item(updated)
            self.items[key] = updated
        elif isinstance(op, Delete):
            self.items.pop(key, None)
            self._by_pk.get(key[0], set()).discard(key[1])
            return
        else:
            return
        self._by_pk.setdefault(key[0], set()).add(key[1])

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def snapshot(self) -> dict[Key, Item]:
        """A copy of every item (for tests and models)."""
        with self._lock:
            return copy.deepcopy(self.items)


def _copy(item: Item | None) -> Item | None:
    return None if item is None else dict(item)


def _size(item: Mapping[str, Value]) -> int:
    """An item's size as DynamoDB counts it: names plus values (numbers as their digits)."""
    return sum(
        len(k) + len(v.encode() if isinstance(v, str) else str(v) if isinstance(v, int) else v)
        for k, v in item.items()
    )


def _check_item(item: Mapping[str, Value]) -> None:
    if _size(item) > MAX_ITEM_BYTES:
        raise ValueError(f"an item may be at most {MAX_ITEM_BYTES:,} bytes")


def _check_transaction(ops: Sequence[Op]) -> list[Key]:
    """What DynamoDB refuses in any transaction (ValidationException), refused here first."""
    _check_count(len(ops))
    keys = [op.key for op in ops]
    if len(set(keys)) != len(keys):
        raise ValueError("a transaction may not have two operations on one item")
    return keys


def _check_count(n: int, limit: int = MAX_TRANSACTION) -> None:
    if n > limit:
        raise ValueError(f"a transaction has at most {limit} operations, not {n}")


# -- DynamoDB ------------------------------------------------------------------------------------


class DynamoTable(Table):
    """A DynamoDB table through ``client`` (a boto3 DynamoDB client, or an object with its
    ``get_item``, ``transact_get_items``, ``query``, ``put_item``, ``update_item``,
    ``delete_item``, ``transact_write_items`` and ``batch_write_item`` methods).

    Refusals come back as :class:`TableWriteError`: from a botocore error with its cancellation
    reasons, or from any exception with a ``code`` attribute (the control plane's facade) without
    them (``reasons`` is then None). Every other error is the caller's to handle.
    """

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name

    def get(self, key: Key) -> Item | None:
        item = self.client.get_item(TableName=self.name, Key=_marshal_key(key), ConsistentRead=True)
        return _unmarshal(item["Item"]) if "Item" in item else None

    def get_many(self, keys: Sequence[Key]) -> list[Item | None]:
        _check_count(len(keys), MAX_READ)
        out = self.client.transact_get_items(
            TransactItems=[{"Get": {"TableName": self.name, "Key": _marshal_key(k)}} for k in keys]
        )
        return [_unmarshal(r["Item"]) if r.get("Item") else None for r in out["Responses"]]

    def query(self, pk: str, *, after: str | None = None, limit: int | None = None) -> Page:
        params: dict[str, Any] = {
            "TableName": self.name,
            "KeyConditionExpression": "#pk = :pk",
            "ExpressionAttributeNames": {"#pk": "pk"},
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ConsistentRead": True,
        }
        if after is not None:
            params["ExclusiveStartKey"] = _marshal_key((pk, after))
        if limit:
            params["Limit"] = limit
        out = self.client.query(**params)
        last = out.get("LastEvaluatedKey")
        return Page([_unmarshal(i) for i in out["Items"]], last["sk"]["S"] if last else None)

    def write(self, op: Put | Update | Delete) -> None:
        kind, params = _request(self.name, op)
        call = {"Put": "put_item", "Update": "update_item", "Delete": "delete_item"}[kind]
        try:
            getattr(self.client, call)(**params)
        except Exception as exc:
            raise _refusal(exc, self.name, single=True) from None

    def transact(self, ops: Sequence[Op]) -> None:
        _check_transaction(ops)
        items = [dict([_request(self.name, op)]) for op in ops]
        try:
            self.client.transact_write_items(TransactItems=items)
        except Exception as exc:
            raise _refusal(exc, self.name, single=False) from None

    def put_batch(self, items: Sequence[Mapping[str, Value]]) -> None:
        """BatchWriteItem of :data:`MAX_BATCH`, up to :data:`BATCH_WRITERS` in flight: a first
        deploy writes thousands of slot records, and each call waits a round trip. Returns once
        every item is written; the first failure cancels the batches not yet sent."""
        chunks = [items[i : i + MAX_BATCH] for i in range(0, len(items), MAX_BATCH)]
        if len(chunks) <= 1:
            for chunk in chunks:
                self._put_chunk(chunk)
            return
        from concurrent.futures import ThreadPoolExecutor  # not on a proxy's cold start

        pool = ThreadPoolExecutor(min(BATCH_WRITERS, len(chunks)), thread_name_prefix="put_batch")
        try:
            for _ in pool.map(self._put_chunk, chunks):
                pass
        finally:
            pool.shutdown(cancel_futures=True)

    def _put_chunk(self, items: Sequence[Mapping[str, Value]]) -> None:
        requests = [{"PutRequest": {"Item": _marshal(i)}} for i in items]
        for attempt in range(8):
            out = self.client.batch_write_item(RequestItems={self.name: requests})
            requests = out.get("UnprocessedItems", {}).get(self.name, [])
            if not requests:
                return
            time.sleep(min(1.0, 0.05 * 2**attempt))  # throttled: back off, then the rest
        raise TableWriteError(
            f"{self.name}: {len(requests)} item(s) stayed unprocessed by batch_write_item",
            hint="DynamoDB is throttling the table; run the command again",
        )


def _request(table: str, op: Op) -> tuple[str, dict[str, Any]]:
    """The ``(operation, parameters)`` of one write, as TransactWriteItems spells them."""
    names: dict[str, str] = {}
    values: dict[str, Value] = {}
    params: dict[str, Any] = {"TableName": table}
    if isinstance(op, Put):
        kind = "Put"
        params["Item"] = _marshal(op.item)
    else:
        kind = {Update: "Update", Delete: "Delete", Check: "ConditionCheck"}[type(op)]
        params["Key"] = _marshal_key(op.key)
    if isinstance(op, Update):
        assignments = [f"{_name(names, n)} = {_value(values, v)}" for n, v in op.set.items()]
        params["UpdateExpression"] = "SET " + ", ".join(assignments)
    if op.when is not None:
        params["ConditionExpression"] = op.when.expression(names, values)
    if names:
        params["ExpressionAttributeNames"] = names
    if values:
        params["ExpressionAttributeValues"] = {k: _attribute(v) for k, v in values.items()}
    return kind, params


def _refusal(exc: Exception, table: str, *, single: bool) -> Exception:
    """A refused write as :class:`TableWriteError`; any other error as it is."""
    response = getattr(exc, "response", None)
    code = (
        response.get("Error", {}).get("Code")
        if isinstance(response, dict)
        else getattr(exc, "code", None)
    )
    if code == "ConditionalCheckFailedException":
        return TableWriteError(f"{table}: the condition does not hold", reasons=(CONDITION_FAILED,))
    if code == "TransactionConflictException":
        return TableWriteError(f"{table}: a transaction holds the item", reasons=(_CONFLICT,))
    if code == "TransactionCanceledException":
        found = response.get("CancellationReasons") if isinstance(response, dict) else None
        reasons = (
            tuple(None if r.get("Code") in (None, "", "None") else r["Code"] for r in found)
            if found
            else None
        )
        return TableWriteError(f"{table}: transaction cancelled ({reasons})", reasons=reasons)
    return exc


def _attribute(value: Value) -> dict[str, Any]:
    if isinstance(value, bool):
        raise TypeError("booleans are not state table values")
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, int):
        return {"N": str(value)}
    if isinstance(value, bytes | bytearray):
        return {"B": bytes(value)}
    raise TypeError(f"a state table value is str, int or bytes, not {type(value).__name__}")


def _marshal(item: Mapping[str, Value]) -> dict[str, Any]:
    return {k: _attribute(v) for k, v in item.items()}


def _marshal_key(key: Key) -> dict[str, Any]:
    return {"pk": {"S": key[0]}, "sk": {"S": key[1]}}


def _unmarshal(item: Mapping[str, Any]) -> Item:
    out: Item = {}
    for name, typed in item.items():
        ((kind, raw),) = typed.items()
        out[name] = int(raw) if kind == "N" else raw
    return out
