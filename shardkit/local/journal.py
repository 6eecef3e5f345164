"""The local cloud's DynamoDB on disk: a write-ahead journal, replayed on start, compacted.

moto keeps everything in memory. The local cloud's server therefore writes every change of
DynamoDB to ``.shardkit/local/dynamodb/journal.log`` *before* moto's response is sent (the
:mod:`moto_patches` sink is called under moto's item lock): one JSON line per operation, holding
the new state of every key it changed (or ``null`` for a deleted key) - so a transaction is one
line, all or nothing - and one line per table-level operation, with its arguments. Records carry
a sequence number.

On start, before the server answers anyone, ``snapshot.jsonl`` (tables and items as of sequence
S) and then every journal record after S are applied to moto's backends. A compaction writes a
new snapshot (temporary file, fsync, rename) and empties the journal; it runs after a replay,
when the journal passes :data:`COMPACT_BYTES`, and when the server stops.

What survives what (docs/local-cloud.md):

* a crash or ``kill -9`` of the server: every acknowledged write - the record is in the kernel's
  page cache before the response leaves;
* an OS crash or power loss: writes acknowledged more than ``fsync_interval`` seconds before it
  (default 1 s); with ``fsync="always"`` every acknowledged write (each record is fsynced first).

A damaged record in the middle of the journal stops the start with an error naming it; only a
torn last line (a record whose write never completed, so it was never acknowledged) is dropped,
and the server's log says so.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import LocalCloudError
from . import moto_patches

__all__ = ["COMPACT_BYTES", "FSYNC_POLICIES", "Journal"]

SNAPSHOT_FORMAT = "shardkit-local-dynamodb/1"
JOURNAL_FILE = "journal.log"
SNAPSHOT_FILE = "snapshot.jsonl"
COMPACT_BYTES = 64 * 1024 * 1024
FSYNC_POLICIES = ("interval", "always")

_BYTES = "__b64__"

TableId = tuple[str, str, str]  # account, region, table name


class Journal:
    """The write-ahead journal and snapshot of one local cloud (a :class:`moto_patches.Sink`)."""

    def __init__(
        self, directory: Path, *, fsync: str = "interval", fsync_interval: float = 1.0
    ) -> None:
        if fsync not in FSYNC_POLICIES:
            raise LocalCloudError(
                f"unknown fsync policy {fsync!r}",
                hint=f"use one of {', '.join(FSYNC_POLICIES)} (SHARDKIT_LOCAL_FSYNC)",
            )
        self.directory = directory
        self.log_path = directory / JOURNAL_FILE
        self.snapshot_path = directory / SNAPSHOT_FILE
        self.fsync = fsync
        self.seq = 0
        self.notes: list[str] = []  # what replay found worth saying (the server logs it)
        self._definitions: dict[TableId, dict[str, Any]] = {}
        self._fd = -1
        self._unsynced = False
        self._compacting = False
        self._stop = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, args=(fsync_interval,), daemon=True)

    # -- start and stop ------------------------------------------------------------------------

    def open(self) -> dict[str, int]:
        """Replay the snapshot and the journal into moto, compact, and start recording.

        Returns what was restored: ``{"tables": n, "items": n, "records": n}``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        moto_patches.install()
        with moto_patches.LOCK:
            restored = self._replay()
            self._fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if restored["records"]:
                self._compact()
            moto_patches.set_sink(self)
        self._syncer.start()
        return restored

    def close(self) -> None:
        """Stop recording, compact, and close the journal."""
        self._stop.set()
        with moto_patches.LOCK:
            moto_patches.set_sink(None)
            if self._fd >= 0:
                self._compact()
                os.close(self._fd)
                self._fd = -1

    # -- the sink ------------------------------------------------------------------------------

    def items(self, changes: list[moto_patches.Change]) -> None:
        self._append({"items": [list(change) for change in changes]})

    def table(self, account: str, region: str, op: str, args: dict[str, Any]) -> None:
        name = args.get("name") or args.get("table_name")
        table_id = (account, region, str(name))
        self._define(table_id, op, args)
        self._append({"table": list(table_id), "op": op, "args": args})

    def _append(self, record: dict[str, Any]) -> None:
        self.seq += 1
        line = _dumps({"s": self.seq, **record}) + "\n"
        os.write(self._fd, line.encode())
        if self.fsync == "always":
            os.fsync(self._fd)
        else:
            self._unsynced = True
        if not self._compacting and os.fstat(self._fd).st_size > COMPACT_BYTES:
            self._compacting = True
            threading.Thread(target=self.compact, daemon=True).start()

    def _sync_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            if self._unsynced and self._fd >= 0:
                self._unsynced = False
                try:
                    os.fsync(self._fd)
                except OSError:  # closed meanwhile
                    return

    # -- compaction ----------------------------------------------------------------------------

    def compact(self) -> None:
        with moto_patches.LOCK:
            if self._fd >= 0:
                self._compact()

    def _compact(self) -> None:
        tmp = self.snapshot_path.with_name(f".{SNAPSHOT_FILE}.{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(_dumps({"format": SNAPSHOT_FORMAT, "seq": self.seq}) + "\n")
            for line in self._snapshot_lines():
                out.write(line + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.snapshot_path)
        _fsync_dir(self.directory)
        os.ftruncate(self._fd, 0)  # records up to self.seq are in the snapshot now
        os.fsync(self._fd)
        self._unsynced = False
        self._compacting = False

    def _snapshot_lines(self) -> Iterator[str]:
        from moto.dynamodb.models import dynamodb_backends

        for table_id, definition in sorted(self._definitions.items()):
            account, region, name = table_id
            table = dynamodb_backends[account][region].tables.get(name)
            if table is None:
                continue
            yield _dumps({"table": list(table_id), "definition": definition})
            for item in table.all_items():
                yield _dumps({"item": list(table_id), "v": item.to_json()["Attributes"]})

    # -- replay --------------------------------------------------------------------------------

    def _replay(self) -> dict[str, int]:
        snapshot_seq = self._load_snapshot()
        records = 0
        for number, record in self._journal_records():
            if record["s"] <= snapshot_seq:
                continue  # compacted into the snapshot already (a crash before the truncate)
            if record["s"] != self.seq + 1:
                raise self._damaged(number, f"record {record['s']} follows record {self.seq}")
            self._apply(record, number)
            self.seq = record["s"]
            records += 1
        tables = len(self._definitions)
        items = sum(len(self._table(t).all_items()) for t in self._definitions)
        if snapshot_seq or records:
            self.notes.append(
                f"restored {items} items of {tables} DynamoDB tables from "
                f"{self.snapshot_path.name} (up to record {snapshot_seq}) and {records} journal "
                "records after it"
            )
        return {"tables": tables, "items": items, "records": records}

    def _load_snapshot(self) -> int:
        try:
            lines = self.snapshot_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return 0
        try:
            header = _loads(lines[0])
            if header.get("format") != SNAPSHOT_FORMAT:
                raise ValueError(f"format {header.get('format')!r}")
            for line in lines[1:]:
                entry = _loads(line)
                if "definition" in entry:
                    table_id = tuple(entry["table"])
                    self._definitions[table_id] = entry["definition"]  # type: ignore[index]
                    for op, args in _definition_ops(entry["definition"]):
                        self._apply_table(table_id, op, args)  # type: ignore[arg-type]
                else:
                    self._put(tuple(entry["item"]), entry["v"])  # type: ignore[arg-type]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LocalCloudError(
                f"the local cloud's DynamoDB snapshot {self.snapshot_path} is damaged ({exc})",
                hint=f"move {self.directory} aside to start with empty tables",
            ) from None
        self.seq = int(header["seq"])
        return self.seq

    def _journal_records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the journal ends with a complete line
        for number, line in enumerate(lines, 1):
            try:
                record = _loads(line)
                record["s"] = int(record["s"])
            except (ValueError, KeyError, TypeError) as exc:
                raise self._damaged(number, str(exc)) from None
            yield number, record
        if torn:
            self.notes.append(
                f"dropped the torn last line of {self.log_path.name} ({len(torn)} bytes): its "
                "write never completed, so it was never acknowledged"
            )
            with open(self.log_path, "r+b") as f:
                f.truncate(len(data) - len(torn))

    def _damaged(self, number: int, why: str) -> LocalCloudError:
        return LocalCloudError(
            f"record {number} of the local cloud's DynamoDB journal {self.log_path} is damaged "
            f"({why})",
            hint=f"keep a copy of {self.directory}, then move it aside to start with empty "
            "tables (the writes it holds are not restored)",
        )

    def _apply(self, record: dict[str, Any], number: int) -> None:
        try:
            if "items" in record:
                for account, region, name, key, attrs in record["items"]:
                    table_id = (account, region, name)
                    if attrs is None:
                        self._delete(table_id, key)
                    else:
                        self._put(table_id, attrs)
            else:
                table_id = tuple(record["table"])
                self._define(table_id, record["op"], record["args"])  # type: ignore[arg-type]
                self._apply_table(table_id, record["op"], record["args"])  # type: ignore[arg-type]
        except Exception as exc:
            raise self._damaged(number, f"{type(exc).__name__}: {exc}") from None

    # -- moto's backends -----------------------------------------------------------------------

    def _define(self, table_id: TableId, op: str, args: dict[str, Any]) -> None:
        """Keep each table's definition: its create_table arguments, then what changed it."""
        if op == "create_table":
            self._definitions[table_id] = {"create": args, "changes": []}
        elif op == "delete_table":
            self._definitions.pop(table_id, None)
        elif table_id in self._definitions:
            self._definitions[table_id]["changes"].append([op, args])

    @staticmethod
    def _backend(table_id: TableId) -> Any:
        from moto.dynamodb.models import dynamodb_backends

        return dynamodb_backends[table_id[0]][table_id[1]]

    def _apply_table(self, table_id: TableId, op: str, args: dict[str, Any]) -> None:
        getattr(self._backend(table_id), op)(**args)

    def _table(self, table_id: TableId) -> Any:
        return self._backend(table_id).get_table(table_id[2])

    def _put(self, table_id: TableId, attrs: dict[str, Any]) -> None:
        self._table(table_id).put_item(attrs)

    def _delete(self, table_id: TableId, key: dict[str, Any]) -> None:
        backend = self._backend(table_id)
        table = backend.get_table(table_id[2])
        table.delete_item(*backend.get_keys_value(table, key))


def _dumps(data: Any) -> str:
    """Compact JSON; moto holds binary attribute values as bytes: ``{"__b64__": base64}``."""
    return json.dumps(data, separators=(",", ":"), default=_encode_bytes)


def _encode_bytes(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {_BYTES: base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _loads(text: str | bytes) -> Any:
    return json.loads(text, object_hook=_decode_bytes)


def _decode_bytes(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and isinstance(obj.get(_BYTES), str):
        return base64.b64decode(obj[_BYTES])
    return obj


def _definition_ops(definition: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("create_table", definition["create"]), *map(tuple, definition["changes"])]


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
