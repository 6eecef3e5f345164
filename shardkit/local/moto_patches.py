"""What the local cloud changes in moto's DynamoDB and server, and why (checked against moto 5.2.5).

1. **One lock.** moto's item operations run one at a time, as each is atomic in DynamoDB; the
   item-level undo below relies on it. ``TransactGetItems``, which moto's handler runs as one
   read per item, holds the lock for all of them: its items are read at one instant. The table
   operations take the same lock: moto's ``create_table`` checks that the name is free and
   inserts the new table later, so a second create racing the first replaced the table the
   first had already written to (two first deploys racing for the deployment lock, an item in
   that table, both won it).
2. **Transactions undo single items.** moto's ``transact_write_items`` deep-copies every table it
   touches (once per item of the transaction) to roll back on a failed condition: a request's
   cost grew with the table (125 ms at 1,600 items), and a rollback undid writes other threads
   made meanwhile. Here the tables are not copied (:func:`_table_deepcopy` hands the table itself
   to moto's rollback, which then puts the same object back) and the transaction's own keys are
   saved and put back instead - O(items in the transaction).
3. **Change hooks.** Every key an operation changed is noted (``Table.put_item``,
   ``Table.delete_item`` and the backend's ``update_item``, which changes items in place); when
   the outermost operation ends, still under the lock, the keys' current states go to the sink
   (the journal) in one call - before moto's response is sent. Table-level operations go to the
   sink with their arguments.
4. **What cannot change, once.** The server answers each request after ``os.listdir`` of its own
   ~250 service folders, under a global lock, and each handler lists its class's methods with
   ``inspect.getmembers`` (~1 ms a call); neither changes while the server runs. A condition
   expression is parsed again for each item it is checked on (twice per fenced write, and every
   fence check is the same expression with the same value): parsed ones are kept, by
   expression, names and values (a parsed expression is only read when evaluated).

5. **A Query reads its partition.** moto's ``Table.query`` sorts every item of the table on each
   call; a slot migration queries slot partitions one by one (3,000 of them for one added shard
   of the quickstart). A query of the table itself (not of an index) is given a view of the
   table whose ``all_items`` is the queried partition, in sort-key order.
6. **Writes in bulk.** A first deploy writes every slot record (16,384 per group and region) by
   ``BatchWriteItem`` of 25. moto sized an item again after each attribute it set (O(n^2) per
   item): an item is sized once, against the same 400 KB limit (:func:`_item_init`). A batch
   runs under the lock as one operation, so its changes are one journal record (one write)
   instead of one per item. Each put in it is still checked and applied as before, and
   ``BatchWriteItem`` was never atomic in DynamoDB: a batch that stops half-way journals what it
   wrote, like any other operation.

:func:`install` applies all of it, once per process; ``tests/functional/test_moto_patches.py``
fails if a moto upgrade changes what these patches rely on.
"""

from __future__ import annotations

import copy
import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["LOCK", "MOTO_VERSION", "Sink", "install", "set_sink"]

#: The moto release these patches were written and tested against.
MOTO_VERSION = "5.2.5"

#: DynamoDB backend operations that read or write items: run one at a time.
ITEM_OPERATIONS = (
    "put_item",
    "update_item",
    "delete_item",
    "get_item",
    "query",
    "scan",
    "transact_write_items",
    "transact_get_items",
    "batch_write_item",
    "batch_get_item",
    "execute_statement",
    "execute_transaction",
    "batch_execute_statement",
)
#: Table-level operations whose arguments the sink records (and replays); run under the lock too.
TABLE_OPERATIONS = ("create_table", "update_table", "delete_table", "update_time_to_live")

LOCK = threading.RLock()
_local = threading.local()  # depth, changed keys, transaction undo
_sink: Sink | None = None
_installed = False

Change = tuple[
    str, str, str, dict[str, Any], dict[str, Any] | None
]  # acct, region, table, key, item


class Sink(Protocol):
    """Where changes go (the journal); called under :data:`LOCK`, before the response."""

    def items(self, changes: list[Change]) -> None: ...

    def table(self, account: str, region: str, op: str, args: dict[str, Any]) -> None: ...


def set_sink(sink: Sink | None) -> None:
    global _sink
    _sink = sink


def install() -> None:
    """Apply the patches (idempotent)."""
    global _installed
    if _installed:
        return
    from moto import backends
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.table import Table

    # Inner wrappers first: the undo and the notes must run inside the lock.
    DynamoDBBackend.transact_write_items = _undoing(DynamoDBBackend.transact_write_items)
    DynamoDBBackend.update_item = _noting_update(DynamoDBBackend.update_item)
    for name in ITEM_OPERATIONS:
        setattr(DynamoDBBackend, name, _serialised(getattr(DynamoDBBackend, name)))
    for name in TABLE_OPERATIONS:
        setattr(DynamoDBBackend, name, _recorded(name, getattr(DynamoDBBackend, name)))
    Table.put_item = _noting_put(Table.put_item)
    Table.delete_item = _noting_delete(Table.delete_item)
    Table.__deepcopy__ = _table_deepcopy
    Table.query = _partition_query(Table.query)
    from moto.dynamodb.responses import DynamoHandler

    DynamoHandler.transact_get_items = _locked(DynamoHandler.transact_get_items)
    DynamoHandler.batch_write_item = _serialised(DynamoHandler.batch_write_item)
    from moto.dynamodb.models.dynamo_type import Item

    Item.__init__ = _item_init
    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    from moto.core import responses

    responses.method_names_from_class = functools.cache(responses.method_names_from_class)
    from moto.dynamodb import comparisons, models
    from moto.dynamodb import responses as dynamodb_responses

    parsed_once = _parsed_once_factory()
    for module in (comparisons, models, dynamodb_responses):
        module.create_condition_expression_parser = parsed_once  # type: ignore[attr-defined]
    _installed = True


# -- 1 and 3: one lock, and changes flushed when the outermost operation ends -------------------


def _serialised(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run(*args: Any, **kwargs: Any) -> Any:
        with LOCK:
            depth = getattr(_local, "depth", 0)
            if depth == 0:
                _local.changed = {}
            _local.depth = depth + 1
            try:
                return original(*args, **kwargs)
            finally:
                _local.depth = depth
                if depth == 0:
                    changed, _local.changed = _local.changed, {}
                    if changed and _sink is not None:
                        _sink.items([_current(*key) for key in changed])

    return run


def _locked(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run(*args: Any, **kwargs: Any) -> Any:
        with LOCK:
            return original(*args, **kwargs)

    return run


def _note(table: Any, hash_key: Any, range_key: Any) -> None:
    changed = getattr(_local, "changed", None)
    if changed is not None:
        changed[(table, hash_key, range_key)] = None


def _current(table: Any, hash_key: Any, range_key: Any) -> Change:
    key = {table.hash_key_attr: hash_key.to_json()}
    if range_key is not None:
        key[table.range_key_attr] = range_key.to_json()
    item = table.get_item(hash_key, range_key)
    attrs = item.to_json()["Attributes"] if item is not None else None
    return table.account_id, table.region_name, table.name, key, attrs


def _noting_put(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def put_item(self: Any, *args: Any, **kwargs: Any) -> Any:
        item = original(self, *args, **kwargs)
        _note(self, item.hash_key, item.range_key)
        return item

    return put_item


def _noting_delete(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def delete_item(self: Any, hash_key: Any, range_key: Any = None) -> Any:
        try:
            return original(self, hash_key, range_key)
        finally:
            _note(self, hash_key, range_key)

    return delete_item


def _noting_update(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def update_item(self: Any, table_name: str, key: dict[str, Any], *args: Any, **kw: Any) -> Any:
        item = original(self, table_name, key, *args, **kw)
        _note(self.get_table(table_name), item.hash_key, item.range_key)
        return item

    return update_item


def _recorded(op: str, original: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        with LOCK:
            result = original(self, *args, **kwargs)
            if _sink is not None:
                bound = signature.bind(self, *args, **kwargs).arguments
                bound.pop("self")
                _sink.table(self.account_id, self.region_name, op, dict(bound))
            return result

    return run


_parsed: dict[tuple[Any, ...], tuple[Any, list[str], list[str]]] = {}
_PARSED_MAX = 4096


def _parsed_once_factory() -> Callable[..., Any]:
    """moto's ``create_condition_expression_parser``, whose ``parse`` is done once per
    (expression, names, values); callers get fresh lists of the names and values it found
    (moto's responses extend them)."""
    from moto.dynamodb.comparisons import ConditionExpressionParser

    class ParsedOnce(ConditionExpressionParser):
        def parse(self) -> Any:
            try:
                key = (
                    self.condition_expression,
                    _frozen(self.expression_attribute_names),
                    _frozen(self.expression_attribute_values),
                )
            except TypeError:
                return super().parse()
            hit = _parsed.get(key)
            if hit is None:
                hit = (super().parse(), self.expr_attr_names_found, self.expr_attr_values_found)
                if len(_parsed) >= _PARSED_MAX:
                    _parsed.clear()
                _parsed[key] = hit
            self.expr_attr_names_found, self.expr_attr_values_found = list(hit[1]), list(hit[2])
            return hit[0]

    return ParsedOnce


def _frozen(value: Any) -> Any:
    """A hashable copy of JSON-like data (dicts, lists, strings, numbers, bytes)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    hash(value)
    return value


# -- 2: transactions undo single items ----------------------------------------------------------


def _table_deepcopy(self: Any, memo: dict[int, Any]) -> Any:
    """Inside a transaction: the table itself (moto's rollback then puts back the same object).
    Elsewhere (backups): a real deep copy, as ``copy.deepcopy`` makes one."""
    if getattr(_local, "in_transaction", False):
        return self
    return copy._reconstruct(self, memo, *self.__reduce_ex__(4))  # type: ignore[attr-defined]


def _undoing(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> Any:
        saved = _save_keys(self, transact_items)
        _local.in_transaction = True
        try:
            return original(self, transact_items)
        except BaseException:
            for (table, hash_key, range_key), (item, streamed) in saved.items():
                _put_back(table, hash_key, range_key, item, streamed)
                _note(table, hash_key, range_key)
            raise
        finally:
            _local.in_transaction = False

    return transact_write_items


def _save_keys(backend: Any, transact_items: list[dict[str, Any]]) -> dict[tuple[Any, ...], Any]:
    """(table, hash, range) -> (a copy of its item or None, the stream's length) for every key
    the transaction may write. A malformed entry is skipped: moto refuses it before writing."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    saved: dict[tuple[Any, ...], Any] = {}
    for entry in transact_items:
        try:
            ((op_type, op),) = entry.items()
            if op_type == "ConditionCheck":
                continue
            table = backend.get_table(op["TableName"])
            attrs = op["Item"] if op_type == "Put" else op["Key"]
            hash_key = DynamoType(attrs[table.hash_key_attr])
            range_key = DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None
        except Exception:
            continue
        item = table.get_item(hash_key, range_key)
        streamed = len(table.stream_shard.items) if table.stream_shard is not None else 0
        saved.setdefault((table, hash_key, range_key), (copy.deepcopy(item), streamed))
    return saved


def _put_back(table: Any, hash_key: Any, range_key: Any, item: Any, streamed: int) -> None:
    if range_key is None:
        if item is None:
            table.items.pop(hash_key, None)
        else:
            table.items[hash_key] = item
    else:
        bucket = table.items[hash_key]
        if item is None:
            bucket.pop(range_key, None)
            if not bucket:
                del table.items[hash_key]
        else:
            bucket[range_key] = item
    if table.stream_shard is not None:
        del table.stream_shard.items[streamed:]


# -- 6: writes in bulk ---------------------------------------------------------------------------

#: moto's item size limit (``LimitedSizeDict``): 400 KB, measured as somewhere near 405,000 bytes.
ITEM_SIZE_LIMIT = 405_000


def _item_init(self: Any, hash_key: Any, range_key: Any, attrs: dict[str, Any]) -> None:
    """moto's ``Item.__init__``, sizing the item once instead of after every attribute (the
    last of moto's checks, the whole item against the limit, is the one that can fail)."""
    from moto.dynamodb.exceptions import ItemSizeTooLarge
    from moto.dynamodb.models.dynamo_type import DynamoType, LimitedSizeDict
    from moto.dynamodb.models.utilities import bytesize

    self.hash_key = hash_key
    self.range_key = range_key
    values = {key: DynamoType(value) for key, value in attrs.items()}
    if sum(bytesize(key) + value.size() for key, value in values.items()) > ITEM_SIZE_LIMIT:
        raise ItemSizeTooLarge
    self.attrs = LimitedSizeDict(values)  # its constructor does not check; later sets do


# -- 5: a query reads its partition -------------------------------------------------------------


def _partition_query(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Table.query``, reading only the queried partition of a table with a sort key (a query
    of an index reads the whole table, as before)."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    def query(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        index = signature.bind(self, hash_key, *args, **kwargs).arguments.get("index_name")
        if index or hash_key is None or not self.range_key_attr:
            return original(self, hash_key, *args, **kwargs)
        return original(_Partition(self, hash_key), hash_key, *args, **kwargs)

    return query


class _Partition:
    """A moto table seen through one partition: ``all_items`` is that partition's, in order."""

    def __init__(self, table: Any, hash_key: Any) -> None:
        self._table, self._hash_key = table, hash_key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    def all_items(self) -> list[Any]:
        found = self._table.items.get(self._hash_key, {})
        return sorted(found.values(), key=lambda item: item.range_key)
