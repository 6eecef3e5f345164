"""Where a deployment's record lives: in the target itself, with a local cache.

The record (:mod:`shardkit.deploy.record`) of a project's deployment is kept in the **home
region** (``[project] home_region``, by default the first region hosting shards) - in its registry
bucket, under ``shardkit-state/`` - as Terraform's S3 backend keeps its state:

* ``shardkit-state/record.json`` - what is deployed now (its fingerprint is a plan's ``base``);
* ``shardkit-state/deployments/NNNNNN.json`` - each successful deployment, for rollback;
* ``shardkit-state/journal/<plan_id>.jsonl`` - a checkpoint of an unfinished apply's journal.

``PROJECT/.shardkit/deploy/<target>/`` caches the same (``record.json``, ``deployments/``) and
holds the journal itself, appended and fsynced per step. Reading takes the remote copy unless
the cache holds a newer copy of the same lineage (a remote write failed) or there is no remote
copy (a restarted local cloud, whose S3 is empty; a record from before remote state). Writing
writes both. Shards cannot read any of it: their roles read ``registry/*`` only.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._files import write_bytes_atomic, write_json_atomic
from ..aws.facade import Aws
from ..errors import AwsNotFoundError, DeployError
from .lock import DeployLock, Lease, LockInfo
from .record import HistoryEntry, Record, parse_history, parse_record

__all__ = [
    "PREFIX",
    "DeploymentState",
    "Home",
    "LocalCache",
    "cached_record",
    "published_maps",
]

PREFIX = "shardkit-state/"
RECORD_KEY = PREFIX + "record.json"
HISTORY = PREFIX + "deployments/"
JOURNAL = PREFIX + "journal/"


@dataclass(frozen=True)
class Home:
    """The home region of a deployment and its bucket and state table there."""

    region: str
    bucket: str
    table: str


# -- the local cache -----------------------------------------------------------------------------


class LocalCache:
    """``PROJECT/.shardkit/deploy/<target>/``: the record, the history and the journals."""

    def __init__(self, state_dir: Path, target: str) -> None:
        self.root = state_dir / "deploy" / target
        self.target = target

    @property
    def record_path(self) -> Path:
        return self.root / "record.json"

    def stamp(self) -> float | None:
        """Changes whenever the cached record does (for readers that poll it)."""
        for path in (self.record_path, self.root / "manifest.json"):
            with contextlib.suppress(OSError):
                return path.stat().st_mtime
        return None

    def load(self) -> Record | None:
        if self.record_path.exists():
            return parse_record(_read_json(self.record_path), str(self.record_path))
        legacy = self.root / "manifest.json"  # written by shardkit before records had a format
        if legacy.exists():
            old_map = self.root / "map.skm"
            data = old_map.read_bytes() if old_map.exists() else None
            return parse_record(_read_json(legacy), str(legacy), legacy_map=data)
        return None

    def save(self, record: Record) -> None:
        write_bytes_atomic(self.record_path, record.to_json())
        for old in ("manifest.json", "map.skm"):  # upgraded: one record, in one format
            (self.root / old).unlink(missing_ok=True)

    def write_outputs(self, outputs: dict[str, Any]) -> Path:
        path = self.root / "outputs.json"
        write_json_atomic(path, outputs)
        return path

    # -- history ---------------------------------------------------------------------------

    def history_path(self, number: int) -> Path:
        return self.root / "deployments" / f"{number:06d}.json"

    def history(self) -> list[int]:
        folder = self.root / "deployments"
        return sorted(int(p.stem) for p in folder.glob("*.json")) if folder.is_dir() else []

    def load_history(self, number: int) -> HistoryEntry | None:
        path = self.history_path(number)
        return parse_history(_read_json(path), str(path)) if path.exists() else None

    def save_history(self, entry: HistoryEntry) -> None:
        write_bytes_atomic(self.history_path(entry.deployment), entry.to_json())

    # -- journal -----------------------------------------------------------------------------

    def journal_path(self, plan_id: str) -> Path:
        return self.root / "journal" / f"{plan_id}.jsonl"

    def journals(self) -> list[str]:
        folder = self.root / "journal"
        return sorted(p.stem for p in folder.glob("*.jsonl")) if folder.is_dir() else []

    @contextlib.contextmanager
    def journal(self, plan_id: str) -> Iterator[Callable[[int, dict[str, Any]], None]]:
        path = self.journal_path(plan_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:

            def record(step: int, outputs: dict[str, Any]) -> None:
                f.write(json.dumps({"step": step, "outputs": outputs}) + "\n")
                f.flush()
                os.fsync(f.fileno())

            yield record

    def journal_text(self, plan_id: str) -> str:
        path = self.journal_path(plan_id)
        return path.read_text() if path.exists() else ""

    def remove_journal(self, plan_id: str) -> None:
        self.journal_path(plan_id).unlink(missing_ok=True)


def cached_record(state_dir: Path, target: str) -> Record | None:
    """The record as this machine last saw it (no AWS call): for the local cloud's gateway and
    executor, which serve what was deployed from this project directory."""
    return LocalCache(state_dir, target).load()


# -- the remote copy in the home region ----------------------------------------------------------


class _Remote:
    """The ``shardkit-state/`` objects of the home bucket."""

    def __init__(self, aws: Aws, home: Home) -> None:
        self.aws, self.home = aws, home

    def get(self, key: str, region: str | None = None, bucket: str | None = None) -> bytes | None:
        try:
            out = self._s3(
                "get_object", region or self.home.region, Bucket=bucket or self.home.bucket, Key=key
            )
        except AwsNotFoundError:
            return None  # no bucket yet, or no such object
        return out["Body"].read()

    def put(self, key: str, body: bytes) -> None:
        self._s3(
            "put_object",
            self.home.region,
            Bucket=self.home.bucket,
            Key=key,
            Body=body,
            ContentType="application/json",
        )

    def delete(self, key: str) -> None:
        with contextlib.suppress(AwsNotFoundError):
            self._s3("delete_object", self.home.region, Bucket=self.home.bucket, Key=key)

    def keys(self, prefix: str) -> list[str]:
        try:
            out = self._s3(
                "list_objects_v2", self.home.region, Bucket=self.home.bucket, Prefix=prefix
            )
        except AwsNotFoundError:
            return []
        return sorted(o["Key"] for o in out.get("Contents", []))

    def _s3(self, operation: str, region: str, **params: Any) -> dict[str, Any]:
        return self.aws.call(
            "s3", region, operation, resource=f"{params['Bucket']}/{PREFIX}", **params
        )


# -- the two together ----------------------------------------------------------------------------


class DeploymentState:
    """The record of one project on one target: read, written, locked, journaled."""

    def __init__(
        self,
        state_dir: Path,
        target: str,
        project: str,
        aws: Aws,
        home: Home,
        *,
        elsewhere: Sequence[Home] = (),
        on_save: Callable[[Record], None] | None = None,
    ) -> None:
        """``elsewhere``: the other regions' buckets, looked at (read-only) only when no record
        is found at home, so a home region moved by a config change is refused, not forked."""
        self.cache = LocalCache(state_dir, target)
        self.remote = _Remote(aws, home)
        self.target, self.project, self.home = target, project, home
        self.aws = aws
        self.elsewhere = elsewhere
        self.on_save = on_save or (lambda record: None)  # hears of every record written
        self.remote_found = False  # whether the last load found the record at home
        self._remote_journals: set[str] = set()  # journals known to be checkpointed remotely

    # -- the record --------------------------------------------------------------------------

    def load(self) -> Record:
        """The current record (read-only calls; the cache may be refreshed)."""
        cached = self.cache.load()
        body = self.remote.get(RECORD_KEY)
        remote = parse_record(_loads(body, self._where()), self._where()) if body else None
        self.remote_found = remote is not None
        if remote is None and cached is None:
            self._refuse_moved_home()
        record = _newest(cached, remote) or Record.empty(
            self.project, self.target, self.home.region
        )
        self._check(record)
        if remote is not None and record is remote and cached != remote:
            self.cache.save(remote)
        return record

    def save(self, record: Record) -> Record:
        """Write the next copy of ``record``: the cache (fsynced) first, then the home bucket
        - unless this apply deleted the home bucket (destroy --delete-data)."""
        written = record.written()
        self.cache.save(written)
        self.on_save(written)
        if self.home_kept(written):
            self.remote.put(RECORD_KEY, written.to_json())
        return written

    def upload_history(self) -> None:
        """Put the cached history entries the home bucket lacks into it (after a restarted
        local cloud, whose S3 came back empty, was restored)."""
        remote = set(self.remote.keys(HISTORY))
        for number in self.cache.history():
            entry = self.cache.load_history(number)
            if entry is not None and _history_key(number) not in remote:
                self.remote.put(_history_key(number), entry.to_json())

    @property
    def home_key(self) -> str:
        """The resource key of the home bucket."""
        return f"{self.home.region}/s3_bucket/{self.home.bucket}"

    def home_kept(self, record: Record) -> bool:
        """Whether the home bucket is still there to hold the record (not after destroy
        --delete-data)."""
        return self.home_key in record.resources

    def _check(self, record: Record) -> None:
        if record.project != self.project:
            raise DeployError(
                f"the deployment record of target {self.target} is of project "
                f"{record.project!r}, not {self.project!r}",
                hint="each project directory deploys one project; check project.name",
            )
        if record.home_region and record.home_region != self.home.region:
            raise DeployError(
                f"the deployment's record lives in home region {record.home_region}, but the "
                f"project's home region is now {self.home.region}; moving it is not supported",
                hint=f'set home_region = "{record.home_region}" in [project] of shardkit.toml '
                "(and keep shards in that region)",
            )

    def _refuse_moved_home(self) -> None:
        for other in self.elsewhere:
            if self.remote.get(RECORD_KEY, other.region, other.bucket) is not None:
                raise DeployError(
                    f"the deployment's record lives in home region {other.region} "
                    f"(s3://{other.bucket}/{RECORD_KEY}), not in the project's home region "
                    f"{self.home.region}; moving it is not supported",
                    hint=f'set home_region = "{other.region}" in [project] of shardkit.toml',
                )

    def _where(self) -> str:
        return f"s3://{self.home.bucket}/{RECORD_KEY} ({self.home.region})"

    # -- history -----------------------------------------------------------------------------

    def history(self) -> list[int]:
        remote = {int(k.rsplit("/", 1)[1].split(".")[0]) for k in self.remote.keys(HISTORY)}
        return sorted(remote | set(self.cache.history()))

    def load_history(self, number: int) -> HistoryEntry:
        entry = self.cache.load_history(number)
        if entry is None:
            body = self.remote.get(_history_key(number))
            if body is None:
                raise DeployError(
                    f"deployment {number} is not in the history",
                    hint="`shardkit status` shows the deployment history",
                )
            entry = parse_history(_loads(body, _history_key(number)), _history_key(number))
            self.cache.save_history(entry)
        return entry

    def save_history(self, entry: HistoryEntry, *, remote: bool = True) -> None:
        self.cache.save_history(entry)
        if remote:
            self.remote.put(_history_key(entry.deployment), entry.to_json())

    # -- journal -----------------------------------------------------------------------------

    def read_journal(self, plan_id: str) -> dict[int, dict[str, Any]]:
        """Completed steps of a plan: this machine's journal and the remote checkpoint of it
        (another machine's failed apply). A torn last line is ignored."""
        remote = self.remote.get(_journal_key(plan_id))
        if remote is not None:
            self._remote_journals.add(plan_id)
        text = (remote or b"").decode() + "\n" + self.cache.journal_text(plan_id)
        return _journal_steps(text)

    def journal(self, plan_id: str) -> Any:
        return self.cache.journal(plan_id)

    def checkpoint(self, plan_id: str) -> None:
        """Copy this machine's journal of ``plan_id`` to the home bucket."""
        self.remote.put(_journal_key(plan_id), self.cache.journal_text(plan_id).encode())
        self._remote_journals.add(plan_id)

    def pending(self) -> list[str]:
        remote = {k.rsplit("/", 1)[1].removesuffix(".jsonl") for k in self.remote.keys(JOURNAL)}
        self._remote_journals |= remote
        return sorted(remote | set(self.cache.journals()))

    def finish_journal(self, plan_id: str, *, remote: bool = True) -> None:
        self.cache.remove_journal(plan_id)
        if remote and plan_id in self._remote_journals:
            self.remote.delete(_journal_key(plan_id))
            self._remote_journals.discard(plan_id)

    # -- lock --------------------------------------------------------------------------------

    def lock(self) -> DeployLock:
        return DeployLock(self.aws, self.home.region, self.home.table)

    @contextlib.contextmanager
    def locked(
        self,
        command: str,
        *,
        timeout: float = 0.0,
        on_wait: Callable[[LockInfo], None] | None = None,
        on_take_over: Callable[[LockInfo], None] | None = None,
    ) -> Iterator[Lease]:
        with self.lock().held(
            command, timeout=timeout, on_wait=on_wait, on_take_over=on_take_over
        ) as lease:
            yield lease


def _newest(cached: Record | None, remote: Record | None) -> Record | None:
    if remote is None:
        return cached
    if cached is not None and cached.newer_than(remote):
        return cached  # a remote write failed after the cache was written
    return remote


def _journal_steps(text: str) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a crash mid-write leaves at most one torn line: that step is redone
        done[entry["step"]] = entry.get("outputs", {})
    return done


def _history_key(number: int) -> str:
    return f"{HISTORY}{number:06d}.json"


def _journal_key(plan_id: str) -> str:
    return f"{JOURNAL}{plan_id}.jsonl"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DeployError(
            f"{path} is unreadable: {exc}",
            hint="restore it from a backup, or remove the project's .shardkit/deploy "
            "to start over (deployed resources are then unmanaged)",
        ) from None


def _loads(body: bytes, source: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise DeployError(
            f"{source} is not JSON: {exc}",
            hint="restore an earlier version of it (the bucket is versioned)",
        ) from None


def published_maps(state_dir: Path) -> dict[str, bytes]:
    """target -> the signed map its deployment last published, from this machine's cache."""
    folder = state_dir / "deploy"
    targets = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    maps = {}
    for target in targets:
        with contextlib.suppress(DeployError):  # a damaged record is reported by deploy commands
            record = cached_record(state_dir, target)
            if record is not None and record.map_envelope:
                maps[target] = record.map_envelope
    return maps
