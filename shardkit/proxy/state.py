"""Per-key state in the regional DynamoDB table, with epoch-fenced writes
(docs/architecture.md §4.4).

Items (partition key ``pk``, sort key ``sk``):

* ``{shard}#{key}`` / ``state`` - the key's state: ``seq`` (number of applied writes) and ``data``
  (msgpack of the state and the answers of the last few request ids, for idempotent retries);
* ``{shard}#epoch`` / ``epoch`` - the shard's current epoch, written by the control plane when the
  shard's slots change (``shardkit deploy`` fences before it publishes a map).

Every write is one transaction: a condition check that the shard's epoch record still says the
epoch this shard routes with, plus a put conditioned on the ``seq`` that was read. A stale owner
(its map is older than the fence) fails the first; a concurrent writer of the same key fails the
second. Either way nothing is written.

A bounded LRU keeps recently used states across warm invocations - as the stored bytes, so every
load hands out fresh objects the user's function may change in place without touching the cache
(a request that then writes nothing leaves no trace). A failed condition drops the entry, so the
cache can make a write fail but never makes a wrong write succeed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import msgpack

__all__ = ["Conflict", "Fenced", "KeyState", "StateStore"]

MAX_ITEM = 350 * 1024  # DynamoDB's limit is 400 KB per item, attribute names included
REMEMBERED_REQUESTS = 16


class Fenced(Exception):
    """The shard's epoch moved on: this shard may no longer write with the epoch it holds."""


class Conflict(Exception):
    """Another request wrote the same key first."""


class StateTooLarge(Exception):
    pass


class KeyState:
    __slots__ = ("applied", "cached", "seq", "size", "value")

    def __init__(
        self, seq: int, value: Any, applied: dict[str, Any], cached: bool = False, size: int = 0
    ) -> None:
        self.seq = seq
        self.value = value
        self.applied = applied
        self.cached = cached  # came from this instance's LRU, not from the table just now
        self.size = size  # bytes stored, when known


class StateStore:
    def __init__(self, client: Any, table: str, shard: str, cache_size: int = 1024) -> None:
        self._client = client
        self._table = table
        self._shard = shard
        self._cache: OrderedDict[str, tuple[int, bytes]] = OrderedDict()  # key -> (seq, blob)
        self._cache_size = cache_size

    def load(self, key: str) -> KeyState:
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return _decode(*cached, cached=True)
        item = self._client.get_item(
            TableName=self._table, Key=self._key(key), ConsistentRead=True
        ).get("Item")
        if item is None:
            return KeyState(0, None, {})
        seq, blob = int(item["seq"]["N"]), item["data"]["B"]
        self._remember(key, seq, blob)
        return _decode(seq, blob)

    def is_current(self, key: str, state: KeyState) -> bool:
        """Whether ``state`` is still what the table holds. A state just read is; a cached one
        is checked with a consistent read of ``seq`` alone. Writes need no such check (their
        condition on ``seq`` is one), but a read-only answer from a stale cache would show a
        key as it was before another instance's acknowledged write."""
        if not state.cached:
            return True
        item = self._client.get_item(
            TableName=self._table,
            Key=self._key(key),
            ConsistentRead=True,
            ProjectionExpression="seq",
        ).get("Item")
        if (int(item["seq"]["N"]) if item else 0) == state.seq:
            return True
        self._cache.pop(key, None)
        return False

    def save(
        self,
        key: str,
        before: KeyState,
        value: Any,
        request_id: str | None,
        answer: Any,
        epoch: int,
    ) -> KeyState:
        applied = dict(before.applied)
        if request_id is not None:
            applied[request_id] = answer
            while len(applied) > REMEMBERED_REQUESTS:
                applied.pop(next(iter(applied)))
        blob = msgpack.packb({"state": value, "applied": applied}, use_bin_type=True)
        if len(blob) > MAX_ITEM:
            raise StateTooLarge(f"state of {len(blob):,} bytes exceeds {MAX_ITEM:,}")
        after = KeyState(before.seq + 1, value, applied, size=len(blob))
        put = {
            "TableName": self._table,
            "Item": {**self._key(key), "seq": {"N": str(after.seq)}, "data": {"B": blob}},
        }
        if before.seq == 0:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        else:
            put["ConditionExpression"] = "seq = :seq"
            put["ExpressionAttributeValues"] = {":seq": {"N": str(before.seq)}}
        self._transact(key, put, epoch)
        self._remember(key, after.seq, blob)
        return after

    def _transact(self, key: str, put: dict[str, Any], epoch: int) -> None:
        fence = {
            "TableName": self._table,
            "Key": {"pk": {"S": f"{self._shard}#epoch"}, "sk": {"S": "epoch"}},
            "ConditionExpression": "epoch = :epoch",
            "ExpressionAttributeValues": {":epoch": {"N": str(epoch)}},
        }
        try:
            self._client.transact_write_items(
                TransactItems=[{"ConditionCheck": fence}, {"Put": put}]
            )
        except self._client.exceptions.TransactionCanceledException as exc:
            self._cache.pop(key, None)
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if reasons and reasons[0] == "ConditionalCheckFailed":
                raise Fenced(f"epoch {epoch} of {self._shard} is no longer current") from None
            raise Conflict(f"a concurrent write to the key won ({reasons})") from None

    def _key(self, key: str) -> dict[str, Any]:
        return {"pk": {"S": f"{self._shard}#{key}"}, "sk": {"S": "state"}}

    def _remember(self, key: str, seq: int, blob: bytes) -> None:
        self._cache[key] = (seq, blob)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _decode(seq: int, blob: bytes, *, cached: bool = False) -> KeyState:
    data = msgpack.unpackb(blob, raw=False)
    return KeyState(seq, data["state"], data["applied"], cached=cached, size=len(blob))


def fence_item(shard: str, epoch: int) -> dict[str, Any]:
    """The epoch record the control plane writes for ``shard`` (see the module docstring)."""
    return {"pk": {"S": f"{shard}#epoch"}, "sk": {"S": "epoch"}, "epoch": {"N": str(epoch)}}
