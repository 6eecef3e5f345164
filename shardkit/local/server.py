"""The local cloud's lifecycle: one moto server per project on 127.0.0.1, shared by processes.

``up`` starts ``python -m shardkit.local`` as a detached process (its own session, output in
``.shardkit/local/server.log``). That process runs moto's ``ThreadedMotoServer`` on a free
loopback port, switches Lambda and Batch to moto's no-Docker backends through moto's own config
endpoint (``POST /moto-api/config``), checks that the server answers, and only then publishes
``.shardkit/local/cloud.json`` (tmp file + ``os.replace``). Readers therefore see no record or a
record of a server that answered.

The record is the server's lease: the server polls it and exits as soon as it is removed or names
another process. It also exits after an idle timeout or a maximum lifetime (saving table items
first), so a closed terminal or a crashed test never leaves a server behind for long.

``up`` and ``down`` serialise on an flock of ``.shardkit/local/lock``: concurrent ``up`` calls
share one server. A record whose process is dead, is not this project's server (the pid was
reused) or does not answer is *stale*; ``status`` says so and ``up`` replaces it.

DynamoDB survives restarts and crashes: the server journals every change before it answers and
replays the journal when it starts (:mod:`shardkit.local.journal`, in ``.shardkit/local/dynamodb``).
``down(save_tables=False)`` stops the server and deletes that state: the next start is empty.
``snapshot`` and ``restore_items`` export and import table items as ``tables.json``, by hand.

boto3 is imported on first use: ``require`` and ``status`` stay cheap for the CLI.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._files import write_bytes_atomic
from . import compat
from .errors import LocalCloudError

if TYPE_CHECKING:
    import boto3
    from botocore.client import BaseClient

__all__ = [
    "CREDENTIALS",
    "NO_DOCKER_CONFIG",
    "LocalCloud",
    "boto3_client_kwargs",
    "client",
    "down",
    "ensure",
    "local_dir",
    "require",
    "restore_items",
    "snapshot",
    "status",
    "up",
]

HOST = "127.0.0.1"
RECORD_FILE = "cloud.json"
LOG_FILE = "server.log"
TABLES_FILE = "tables.json"
DYNAMODB_DIR = "dynamodb"
LOCK_FILE = "lock"
CONFIG_PATH = "/moto-api/config"
TABLES_FORMAT = "shardkit-local-tables/1"

#: What the server POSTs to its own ``/moto-api/config`` before it publishes its record.
NO_DOCKER_CONFIG: dict[str, Any] = {"lambda": {"use_docker": False}, "batch": {"use_docker": False}}
#: Dummy credentials for the local endpoint; real ones are never read.
CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "aws_session_token": "testing",
}

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0  # an orderly stop compacts the DynamoDB journal: large tables take seconds
IDLE_TIMEOUT = float(os.environ.get("SHARDKIT_LOCAL_IDLE_TIMEOUT", 8 * 3600))
MAX_LIFETIME = float(os.environ.get("SHARDKIT_LOCAL_MAX_LIFETIME", 48 * 3600))


@dataclass(frozen=True)
class LocalCloud:
    """A running local cloud. ``started`` is True when this call started it."""

    project: Path
    endpoint: str
    pid: int
    started_at: float
    instance: str
    started: bool
    gateway: str = ""  # the local executor's Invoke API and Function URLs
    #: what the server restored from its last run: {"tables": n, "items": n, "records": n}
    restored: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"project": str(self.project)}


# -- paths and the record ------------------------------------------------------------------------


def local_dir(project_root: str | os.PathLike[str]) -> Path:
    """``PROJECT/.shardkit/local`` (``Project.state_dir`` / "local")."""
    return Path(project_root).resolve() / ".shardkit" / "local"


def dynamodb_dir(project_root: str | os.PathLike[str]) -> Path:
    """Where the local cloud keeps DynamoDB between runs: its snapshot and journal."""
    return local_dir(project_root) / DYNAMODB_DIR


def _root(project_root: str | os.PathLike[str]) -> Path:
    root = Path(project_root).resolve()
    if not root.is_dir():
        raise LocalCloudError(
            f"no project directory {root}", hint="pass the directory that holds shardkit.toml"
        )
    return root


def _write_json(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    write_bytes_atomic(path, json.dumps(data, indent=2).encode())


def read_record(root: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None), (None, None) when there is none, or (None, why it is unusable)."""
    path = local_dir(root) / RECORD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"{path} is unreadable ({exc})"
    if not isinstance(data, dict) or not {"endpoint", "pid", "instance"} <= data.keys():
        return None, f"{path} is not a local cloud record"
    return data, None


def write_record(root: Path, record: dict[str, Any]) -> None:
    _write_json(local_dir(root) / RECORD_FILE, record)


def remove_record(root: Path, instance: str | None = None) -> None:
    """Remove the record (only if it still names ``instance``, when one is given)."""
    if instance is not None:
        record, _ = read_record(root)
        if record is None or record.get("instance") != instance:
            return
    (local_dir(root) / RECORD_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def lock(root: Path) -> Iterator[None]:
    directory = local_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# -- processes -----------------------------------------------------------------------------------

# Servers this process started: polling them reaps them, so a stopped one is not a zombie.
_children: dict[int, subprocess.Popen[bytes]] = {}


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _children.pop(pid, None)  # reaped; the pid may since belong to someone else
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _cmdline(pid: int) -> str:
    if Path("/proc/self").exists():
        with contextlib.suppress(OSError):
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        return ""
    out = subprocess.run(
        ["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True, check=False
    )
    return out.stdout


def _is_server(pid: int, instance: str) -> bool:
    """True if ``pid`` is alive and is the server of ``instance`` (not a reused pid)."""
    return _alive(pid) and f"--instance {instance}" in _cmdline(pid)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _terminate(pid: int, timeout: float = STOP_TIMEOUT) -> str:
    """SIGTERM, wait, SIGKILL. Returns "terminated", "killed" or "gone"."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        _wait_gone(pid, 0)
        return "gone"
    if _wait_gone(pid, timeout):
        return "terminated"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, 2.0):
        raise LocalCloudError(
            f"the local cloud server (pid {pid}) does not stop",
            hint=f"stop it by hand: kill -9 {pid}",
        )
    return "killed"


def probe(endpoint: str, timeout: float = 1.0) -> dict[str, Any] | None:
    """moto's config (``GET /moto-api/config``) if ``endpoint`` answers as moto, else None."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(endpoint + CONFIG_PATH, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "lambda" in data else None


# -- status, up, down ----------------------------------------------------------------------------


def status(project_root: str | os.PathLike[str]) -> dict[str, Any]:
    """``state`` is "running", "stopped" or "stale" (``reason`` says why), with the record."""
    root = _root(project_root)
    record, problem = read_record(root)
    result: dict[str, Any] = {
        "project": str(root),
        "state": "stopped",
        "endpoint": None,
        "gateway": None,
        "pid": None,
        "instance": None,
        "started_at": None,
        "uptime_s": None,
        "reason": problem,
        "log": str(local_dir(root) / LOG_FILE),
    }
    if record is None:
        result["state"] = "stale" if problem else "stopped"
        return result
    result.update(
        {k: record.get(k) for k in ("endpoint", "gateway", "pid", "instance", "started_at")}
    )
    result["reason"] = _stale_reason(record)
    result["state"] = "stale" if result["reason"] else "running"
    if result["state"] == "running" and isinstance(record.get("started_at"), int | float):
        result["uptime_s"] = round(time.time() - record["started_at"], 1)
    return result


def _stale_reason(record: dict[str, Any]) -> str | None:
    pid, instance, endpoint = record["pid"], record["instance"], record["endpoint"]
    if not isinstance(pid, int) or not _alive(pid):
        return f"process {pid} is not running"
    if not _is_server(pid, str(instance)):
        return f"process {pid} is not this project's local cloud"
    if probe(str(endpoint)) is None:
        return f"{endpoint} does not answer"
    return None


def up(
    project_root: str | os.PathLike[str],
    *,
    timeout: float = START_TIMEOUT,
    idle_timeout: float | None = None,
    max_lifetime: float | None = None,
) -> LocalCloud:
    """Start the project's local cloud, or return the one already running.

    A stale record is cleared first (its process is stopped if it is still ours). Waits at most
    ``timeout`` seconds for the server to answer. The server exits by itself after
    ``idle_timeout`` seconds without a request or ``max_lifetime`` seconds in all.
    """
    root = _root(project_root)
    with lock(root):
        current = status(root)
        if current["state"] == "running":
            return _cloud(root, current, started=False)
        if current["state"] == "stale":
            _clear(root, current)
        limits = (
            IDLE_TIMEOUT if idle_timeout is None else idle_timeout,
            MAX_LIFETIME if max_lifetime is None else max_lifetime,
        )
        return _cloud(root, _start(root, timeout, *limits), started=True)


def ensure(project_root: str | os.PathLike[str]) -> tuple[str, bool]:
    """(endpoint, started): the running local cloud, started first if needed."""
    cloud = up(project_root)
    return cloud.endpoint, cloud.started


def require(project_root: str | os.PathLike[str]) -> str:
    """The endpoint of the running local cloud; LocalCloudError if it is stopped or stale."""
    current = status(project_root)
    if current["state"] == "running":
        return str(current["endpoint"])
    if current["state"] == "stale":
        raise LocalCloudError(
            f"the local cloud of {current['project']} is stale: {current['reason']}"
        )
    raise LocalCloudError(f"the local cloud of {current['project']} is not running")


def down(
    project_root: str | os.PathLike[str],
    *,
    save_tables: bool = True,
    timeout: float = STOP_TIMEOUT,
) -> dict[str, Any]:
    """Stop the local cloud and remove its record; saying "not running" is not an error.

    DynamoDB's tables and items are kept for the next start (the server journals them as it
    goes); ``save_tables=False`` deletes them once the server has stopped.
    """
    root = _root(project_root)
    with lock(root):
        current = status(root)
        result: dict[str, Any] = {
            "project": str(root),
            "was": current["state"],
            "stopped": False,
            "pid": current["pid"],
            "endpoint": current["endpoint"],
            "reason": current["reason"],
            "stop": None,
            "dynamodb": None,
        }
        if current["state"] != "stopped":
            result["stop"] = _clear(root, current, timeout)
            result["stopped"] = result["stop"] in ("terminated", "killed")
        directory = dynamodb_dir(root)
        if directory.is_dir():
            if save_tables:
                result["dynamodb"] = {"kept": str(directory)}
            else:
                shutil.rmtree(directory)
                result["dynamodb"] = {"deleted": str(directory)}
        return result


def _cloud(root: Path, record: dict[str, Any], *, started: bool) -> LocalCloud:
    return LocalCloud(
        project=root,
        endpoint=record["endpoint"],
        pid=record["pid"],
        started_at=record.get("started_at") or 0.0,
        instance=record["instance"],
        started=started,
        gateway=record.get("gateway") or "",
        restored=record.get("restored") or {},
    )


def _clear(root: Path, current: dict[str, Any], timeout: float = STOP_TIMEOUT) -> str | None:
    """Stop the recorded process if it is still ours, then remove the record."""
    pid, instance = current["pid"], current["instance"]
    outcome = None
    if isinstance(pid, int) and instance and _is_server(pid, str(instance)):
        outcome = _terminate(pid, timeout)
    remove_record(root)
    return outcome


def _start(root: Path, timeout: float, idle_timeout: float, max_lifetime: float) -> dict[str, Any]:
    compat.check()  # fail here, naming the versions, rather than in the server's log
    instance = secrets.token_hex(8)
    directory = local_dir(root)
    log = directory / LOG_FILE
    if log.exists():
        log.replace(directory / (LOG_FILE + ".1"))
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            _command(root, instance, idle_timeout, max_lifetime),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=root,
            env=_server_env(),
        )
    _children[proc.pid] = proc
    try:
        return _wait_ready(root, proc, instance, timeout)
    except BaseException:
        if proc.poll() is None:
            _terminate(proc.pid)
        remove_record(root, instance)
        raise


def _command(root: Path, instance: str, idle_timeout: float, max_lifetime: float) -> list[str]:
    return [
        sys.executable,
        "-m",
        "shardkit.local",
        "--project",
        str(root),
        "--instance",
        instance,
        "--idle-timeout",
        str(idle_timeout),
        "--max-lifetime",
        str(max_lifetime),
    ]


def _server_env() -> dict[str, str]:
    """The caller's environment without AWS settings, with this shardkit first on the path.

    moto builds botocore sessions internally, so the user's AWS_PROFILE (or ~/.aws) could break
    it; the server needs no AWS configuration at all. The path entry makes a checkout work too.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait_ready(
    root: Path, proc: subprocess.Popen[bytes], instance: str, timeout: float
) -> dict[str, Any]:
    log = local_dir(root) / LOG_FILE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalCloudError(
                f"the local cloud server exited with code {proc.returncode} before it was "
                f"ready; {log} ends with: {_tail(log)}",
                hint=_log_hint(log),
            )
        record, _ = read_record(root)
        if record and record.get("instance") == instance and probe(record["endpoint"]):
            return record
        time.sleep(0.05)
    raise LocalCloudError(
        f"the local cloud server did not answer in time (within {timeout:g}s), so it was "
        f"stopped; {log} ends with: {_tail(log)}",
        hint=f"wait longer with `shardkit local up --timeout SECONDS` (default "
        f"{START_TIMEOUT:g}); if it never answers, read {log}",
    )


def _log_hint(log: Path) -> str:
    return (
        f"read {log}; check that the local cloud is installed for {sys.executable} "
        f"({compat.INSTALL_HINT}), then retry `shardkit local up PROJECT_DIR`"
    )


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    last = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(last) or "(empty log)"


# -- boto3 clients -------------------------------------------------------------------------------


def boto3_client_kwargs(endpoint: str) -> dict[str, Any]:
    """Keyword arguments for ``Session.client(service, region_name=..., **kwargs)``.

    Explicit dummy credentials and ``endpoint_url`` override everything in the environment and in
    ``~/.aws``; no proxy is used (``proxies={}``) even if HTTP_PROXY is set.
    """
    from botocore.config import Config

    config = Config(
        proxies={},
        s3={"addressing_style": "path"},
        connect_timeout=2,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    return {"endpoint_url": endpoint, "config": config, **CREDENTIALS}


_session_lock = threading.Lock()


@functools.cache
def session() -> boto3.session.Session:
    """A boto3 session that reads no AWS_* variable and no ~/.aws file (AWS_PROFILE included).

    Every botocore setting is pinned to its built-in default, so e.g. AWS_USE_FIPS_ENDPOINT or a
    profile named in AWS_PROFILE that does not exist cannot break or redirect a local client.
    """
    import boto3
    import botocore.session
    from botocore.configprovider import BOTOCORE_DEFAUT_SESSION_VARIABLES, ConstantProvider

    core = botocore.session.Session()
    store = core.get_component("config_store")
    pinned = {"config_file": os.devnull, "credentials_file": os.devnull, "region": "us-east-1"}
    for name, (_, _, default, _) in BOTOCORE_DEFAUT_SESSION_VARIABLES.items():
        store.set_config_provider(name, ConstantProvider(pinned.get(name, default)))
    return boto3.session.Session(botocore_session=core)


def client(service: str, region: str, endpoint: str, config: Any = None) -> BaseClient:
    """A boto3 client for ``service`` in ``region`` of the local cloud at ``endpoint``;
    ``config`` (a botocore ``Config``) is merged over the local defaults."""
    kwargs = boto3_client_kwargs(endpoint)
    if config is not None:
        kwargs["config"] = kwargs["config"].merge(config)
    with _session_lock:  # creating clients from one session is not thread-safe
        return session().client(service, region_name=region, **kwargs)


# -- table snapshots -----------------------------------------------------------------------------


def tables_path(project_root: str | os.PathLike[str]) -> Path:
    return local_dir(project_root) / TABLES_FILE


def snapshot(
    project_root: str | os.PathLike[str],
    tables: Iterable[tuple[str, str]],
    *,
    endpoint: str | None = None,
) -> Path:
    """Save every item of ``tables`` ((region, table name) pairs) to ``tables.json``.

    Items are kept in DynamoDB's typed JSON (``{"S": ...}``, numbers as strings, binary as
    base64), so a round trip is exact. The file is replaced atomically.
    """
    root = _root(project_root)
    endpoint = endpoint or require(root)
    saved = [_scan(endpoint, region, name) for region, name in tables]
    path = tables_path(root)
    _write_json(path, {"format": TABLES_FORMAT, "saved_at": time.time(), "tables": saved})
    return path


def restore_items(
    project_root: str | os.PathLike[str],
    *,
    endpoint: str | None = None,
    tables: Iterable[tuple[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Write the items of ``tables.json`` back into their tables (which must exist again).

    Returns one entry per saved table: region, table, items, and status "restored" or
    "missing" (the table does not exist on the server; nothing is written to it).
    """
    root = _root(project_root)
    endpoint = endpoint or require(root)
    wanted = None if tables is None else set(tables)
    results = []
    for entry in _load_tables(root):
        key = (entry["region"], entry["table"])
        if wanted is None or key in wanted:
            results.append(_restore_table(endpoint, *key, entry["items"]))
    return results


def _scan(endpoint: str, region: str, name: str) -> dict[str, Any]:
    ddb = client("dynamodb", region, endpoint)
    items = [
        _binary_map(item, _b64encode)
        for page in ddb.get_paginator("scan").paginate(TableName=name, ConsistentRead=True)
        for item in page.get("Items", [])
        if not _control_item(item)
    ]
    return {"region": region, "table": name, "items": items}


#: Keys of shardkit's own items (the deployment lock), never a shard's: shard ids start with a
#: letter. They are not saved, so a restore never brings back a lock held when the cloud stopped.
CONTROL_PREFIX = "_shardkit#"


def _control_item(item: dict[str, Any]) -> bool:
    return str(item.get("pk", {}).get("S", "")).startswith(CONTROL_PREFIX)


def _restore_table(
    endpoint: str, region: str, name: str, items: list[dict[str, Any]]
) -> dict[str, Any]:
    ddb = client("dynamodb", region, endpoint)
    try:
        ddb.describe_table(TableName=name)
    except ddb.exceptions.ResourceNotFoundException:
        return {"region": region, "table": name, "items": 0, "status": "missing"}
    for start in range(0, len(items), 25):
        chunk = [
            {"PutRequest": {"Item": _binary_map(item, base64.b64decode)}}
            for item in items[start : start + 25]
        ]
        _batch_write(ddb, name, chunk)
    return {"region": region, "table": name, "items": len(items), "status": "restored"}


def _batch_write(ddb: BaseClient, name: str, requests: list[dict[str, Any]]) -> None:
    pending = {name: requests}
    for attempt in range(8):
        pending = ddb.batch_write_item(RequestItems=pending).get("UnprocessedItems") or {}
        if not pending:
            return
        time.sleep(0.05 * 2**attempt)
    raise LocalCloudError(
        f"could not restore every item of {name}: the local cloud keeps "
        "returning unprocessed items",
        hint="retry the restore",
    )


def _load_tables(root: Path) -> list[dict[str, Any]]:
    path = tables_path(root)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise LocalCloudError(
            f"{path} is unreadable ({exc})", hint=f"delete {path} to start with empty tables"
        ) from None
    if not isinstance(data, dict) or data.get("format") != TABLES_FORMAT:
        raise LocalCloudError(
            f"{path} is not a shardkit table snapshot",
            hint=f"delete {path} to start with empty tables",
        )
    return list(data["tables"])


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _binary_map(item: dict[str, Any], convert: Callable[[Any], Any]) -> dict[str, Any]:
    return {name: _binary_value(value, convert) for name, value in item.items()}


def _binary_value(value: dict[str, Any], convert: Callable[[Any], Any]) -> dict[str, Any]:
    """Apply ``convert`` to the binary leaves of one typed attribute value."""
    ((tag, inner),) = value.items()
    if tag == "B":
        return {"B": convert(inner)}
    if tag == "BS":
        return {"BS": [convert(b) for b in inner]}
    if tag == "M":
        return {"M": _binary_map(inner, convert)}
    if tag == "L":
        return {"L": [_binary_value(v, convert) for v in inner]}
    return value
