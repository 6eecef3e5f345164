"""The deployment lock: one apply at a time per project and target, across machines.

It is one DynamoDB item in the home region's state table, taken with a conditional write
(``attribute_not_exists``), so two machines racing for it cannot both win. Its key, ``pk =
_shardkit#lock``, can never be a shard's: shard ids start with a letter, and each shard's role may
only touch the slot partitions of its own group (``{group}#...``), and group names start with a
letter too. The item says who holds it (``user@host``, pid, command, and the machine and process
identity of :mod:`shardkit.deploy.process`), since when, and until when: a heartbeat thread pushes
``expires`` forward while the holder runs. It is released by a delete conditioned on its id.

A lock held by a process of this machine that has ended (killed, crashed) is taken over, with a
message naming it: that process can no longer apply anything. Any other lock whose ``expires``
has passed is not taken over silently (a paused process elsewhere may still be applying): the
error says its heartbeat stopped and how to break it, ``shardkit unlock DIR ID``, which deletes
it only if the id matches.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..aws.facade import Aws
from ..errors import AwsError, AwsNotFoundError, DeployError, StateLockedError
from . import process

__all__ = ["LOCK_PK", "DeployLock", "Lease", "LockInfo"]

LOCK_PK = "_shardkit#lock"
LOCK_SK = "deploy"
TTL_S = 120.0  # a lock whose heartbeat stopped this long ago is reported as stale
POLL_S = 1.0  # how often a waiting command asks again


@dataclass(frozen=True)
class LockInfo:
    id: str
    holder: str
    pid: int
    command: str
    started: float
    expires: float
    machine: str = ""  # where ``pid`` means this process (:func:`process.machine`)
    process: str = ""  # which process ``pid`` was there (:func:`process.identity`)

    def ended_here(self) -> bool:
        """Whether the holder is a process of this machine that is no longer running."""
        return self.machine == process.machine() and process.ended(self.pid, self.process)

    def describe(self, now: float) -> str:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started))
        text = f"{self.holder} (pid {self.pid}, `{self.command}`) since {since}, lock id {self.id}"
        if self.expires < now:
            text += f"; its heartbeat stopped {now - self.expires:.0f} s ago (the holder died?)"
        return text


class Lease:
    """A held lock. ``lost`` is set if someone broke it while held: the apply must stop."""

    def __init__(self, info: LockInfo) -> None:
        self.info = info
        self.lost = threading.Event()


class DeployLock:
    """The lock item of one state table."""

    def __init__(
        self,
        aws: Aws,
        region: str,
        table: str,
        *,
        ttl: float = TTL_S,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.aws, self.region, self.table = aws, region, table
        self.ttl, self.clock, self.sleep = ttl, clock, sleep

    # -- reading ----------------------------------------------------------------------------

    def current(self) -> LockInfo | None:
        """Who holds the lock now, if anyone (a consistent read)."""
        try:
            item = self._call("get_item", Key=_key(), ConsistentRead=True).get("Item")
        except AwsNotFoundError:
            return None  # no table yet: nobody holds anything
        return _info(item) if item else None

    # -- taking, holding, releasing -----------------------------------------------------------

    @contextlib.contextmanager
    def held(
        self,
        command: str,
        *,
        timeout: float = 0.0,
        on_wait: Callable[[LockInfo], None] | None = None,
        on_take_over: Callable[[LockInfo], None] | None = None,
    ) -> Iterator[Lease]:
        """Hold the lock for the block; wait up to ``timeout`` seconds for it."""
        lease = Lease(
            self.acquire(command, timeout=timeout, on_wait=on_wait, on_take_over=on_take_over)
        )
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(lease, stop), daemon=True)
        beat.start()
        try:
            yield lease
        finally:
            stop.set()
            beat.join()
            self.release(lease.info.id)

    def acquire(
        self,
        command: str,
        *,
        timeout: float = 0.0,
        on_wait: Callable[[LockInfo], None] | None = None,
        on_take_over: Callable[[LockInfo], None] | None = None,
    ) -> LockInfo:
        """Take the lock, waiting up to ``timeout`` seconds for its holder. ``on_wait`` hears
        once of a holder being waited for, ``on_take_over`` of each ended one taken over."""
        deadline = self.clock() + timeout
        waited = False
        while True:
            now = self.clock()
            info = LockInfo(
                uuid.uuid4().hex[:12],
                _holder(),
                os.getpid(),
                command,
                now,
                now + self.ttl,
                process.machine(),
                process.identity(),
            )
            try:
                self._call(
                    "put_item",
                    Item=_item(info),
                    ConditionExpression="attribute_not_exists(pk)",
                )
                return info
            except AwsError as exc:
                if exc.code != "ConditionalCheckFailedException":
                    raise
            holder = self.current()
            if holder is None:
                continue  # released between our write and our read: try again at once
            if holder.ended_here():
                self._take_over(holder, on_take_over)
                continue
            if self.clock() >= deadline:
                waited_text = f" after waiting {timeout:g} s" if waited else ""
                raise StateLockedError(
                    f"the deployment is locked{waited_text}: held by {holder.describe(now)}"
                )
            if on_wait is not None and not waited:
                on_wait(holder)
            waited = True
            self.sleep(min(POLL_S, max(0.0, deadline - self.clock())))

    def _take_over(self, holder: LockInfo, on_take_over: Callable[[LockInfo], None] | None) -> None:
        """Delete the lock an ended process left (only that lock: by its id)."""
        try:
            self._delete(holder.id)
        except AwsError as exc:
            if exc.code != "ConditionalCheckFailedException":
                raise
            return  # someone else took it over first; the next attempt says who holds it now
        if on_take_over is not None:
            on_take_over(holder)

    def release(self, lock_id: str) -> None:
        """Give the lock up; a lock already gone (or its table deleted by a destroy) is fine."""
        with contextlib.suppress(AwsNotFoundError):
            try:
                self._delete(lock_id)
            except AwsError as exc:
                if exc.code != "ConditionalCheckFailedException":
                    raise

    def force_unlock(self, lock_id: str) -> LockInfo:
        """Break the lock if its id is ``lock_id``; return what was broken."""
        holder = self.current()
        if holder is None:
            raise DeployError("the deployment is not locked", hint="there is nothing to unlock")
        if holder.id != lock_id:
            raise DeployError(
                f"the lock is held under id {holder.id}, not {lock_id}: held by "
                f"{holder.describe(self.clock())}",
                hint=f"check who holds it; to break it pass its id: {holder.id}",
            )
        try:
            self._delete(lock_id)
        except AwsError as exc:
            if exc.code != "ConditionalCheckFailedException":
                raise
            raise DeployError(
                f"lock {lock_id} changed hands while it was being broken",
                hint="run `shardkit unlock` again with the current id",
            ) from None
        return holder

    def _heartbeat(self, lease: Lease, stop: threading.Event) -> None:
        """Push ``expires`` forward every quarter of the TTL; note it if the lock was broken."""
        while not stop.wait(self.ttl / 4):
            try:
                self._call(
                    "update_item",
                    Key=_key(),
                    UpdateExpression="SET expires = :e",
                    ConditionExpression="lock_id = :id",
                    ExpressionAttributeValues={
                        ":e": {"N": f"{self.clock() + self.ttl:.3f}"},
                        ":id": {"S": lease.info.id},
                    },
                )
            except AwsNotFoundError:
                return  # the table is gone (destroy --delete-data): nothing left to hold
            except AwsError as exc:
                if exc.code == "ConditionalCheckFailedException":
                    lease.lost.set()
                    return
                # a failed beat is retried at the next one; the TTL allows for three misses

    def _delete(self, lock_id: str) -> None:
        self._call(
            "delete_item",
            Key=_key(),
            ConditionExpression="lock_id = :id",
            ExpressionAttributeValues={":id": {"S": lock_id}},
        )

    def _call(self, operation: str, **params: object) -> dict:
        return self.aws.call(
            "dynamodb",
            self.region,
            operation,
            resource=f"{self.table} (deployment lock)",
            TableName=self.table,
            **params,
        )


def _key() -> dict[str, dict[str, str]]:
    return {"pk": {"S": LOCK_PK}, "sk": {"S": LOCK_SK}}


def _item(info: LockInfo) -> dict[str, dict[str, str]]:
    return {
        **_key(),
        "lock_id": {"S": info.id},
        "holder": {"S": info.holder},
        "pid": {"N": str(info.pid)},
        "command": {"S": info.command},
        "started": {"N": f"{info.started:.3f}"},
        "expires": {"N": f"{info.expires:.3f}"},
        "machine": {"S": info.machine},
        "process": {"S": info.process},
    }


def _info(item: dict[str, dict[str, str]]) -> LockInfo:
    return LockInfo(
        id=item["lock_id"]["S"],
        holder=item["holder"]["S"],
        pid=int(item["pid"]["N"]),
        command=item["command"]["S"],
        started=float(item["started"]["N"]),
        expires=float(item["expires"]["N"]),
        machine=item.get("machine", {}).get("S", ""),
        process=item.get("process", {}).get("S", ""),
    )


def _holder() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"
