"""The local cloud's background process: ``python -m shardkit.local --project DIR --instance ID``.

Started by :func:`shardkit.local.up`, never by hand. It serves moto on a free 127.0.0.1 port,
turns Lambda and Batch to moto's no-Docker backends (``POST /moto-api/config``), publishes its
record once it answers, and then holds the record as a lease. It exits when the record is removed
or names another server, on SIGTERM/SIGINT/SIGHUP, or by itself after ``--idle-timeout`` seconds
without a request or ``--max-lifetime`` seconds in all.

EventBridge schedule rules fire: :mod:`shardkit.local.schedule` invokes their Lambda targets.

DynamoDB is durable (:mod:`shardkit.local.journal`): before moto serves anyone, the journal of
the previous run is replayed into it, and every change is journaled before its response is sent.
``$SHARDKIT_LOCAL_FSYNC`` ("interval", the default, or "always") says when the journal is fsynced.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from . import compat
from .errors import LocalCloudError
from .journal import Journal
from .server import (
    CONFIG_PATH,
    HOST,
    NO_DOCKER_CONFIG,
    dynamodb_dir,
    lock,
    probe,
    read_record,
    remove_record,
    write_record,
)

POLL_S = 0.25
SELF_EXITS = ("idle", "max lifetime")


_LAMBDA_PATH = re.compile(r"^/20\d\d-\d\d-\d\d/functions(?:/(?P<fn>[^/]+)(?P<rest>/[^?]*)?)?")
_REGION = re.compile(r"Credential=[^/]+/\d{8}/(?P<region>[a-z0-9-]+)/")
PREWARM_SETTLE_S = 0.05  # one burst of alias changes (a deploy) is one pre-warm per function


class Activity:
    """What the server's front doors see: the time of the last request (for the idle timeout),
    a generation counter of Lambda's configuration, and the functions whose aliases moved.

    A write to the Lambda API (anything but GET/HEAD under ``/YYYY-MM-DD/functions``) bumps the
    generation once moto has applied it, so the executor reads a function's configuration again
    only after it changed - instead of asking moto every second."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.generation = 0
        self.moved: dict[tuple[str, str], float] = {}  # (region, function) -> when
        self._lock = threading.Lock()

    def touch(self) -> None:
        self.last = time.monotonic()

    def wrap(self, app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            self.last = time.monotonic()
            if environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
                return app(environ, start_response)
            lambda_write = _LAMBDA_PATH.match(environ.get("PATH_INFO", ""))
            try:
                return app(environ, start_response)
            finally:
                if lambda_write:
                    self._lambda_changed(lambda_write, environ.get("HTTP_AUTHORIZATION", ""))

        return wsgi

    def _lambda_changed(self, match: re.Match[str], authorization: str) -> None:
        with self._lock:
            self.generation += 1
            region = _REGION.search(authorization)
            if match["fn"] and (match["rest"] or "").startswith("/aliases") and region:
                self.moved[region["region"], unquote(match["fn"])] = time.monotonic()

    def settled_moves(self) -> list[tuple[str, str]]:
        """Functions whose aliases moved, once no alias moved for :data:`PREWARM_SETTLE_S`."""
        with self._lock:
            if not self.moved or time.monotonic() - max(self.moved.values()) < PREWARM_SETTLE_S:
                return []
            moved, self.moved = list(self.moved), {}
            return moved


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    root, instance = Path(args.project), args.instance
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request in the log
    try:
        _log(f"moto and botocore: {json.dumps(compat.check())}")
    except LocalCloudError as exc:
        _log(f"error: {exc.message} — {exc.hint}")
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())

    from moto.server import ThreadedMotoServer

    journal = Journal(dynamodb_dir(root), fsync=os.environ.get("SHARDKIT_LOCAL_FSYNC", "interval"))
    restored = journal.open()  # before anyone is served: they see the state that was acknowledged
    for note in journal.notes:
        _log(note)
    server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
    server.start()
    activity = Activity()
    wsgi_server = getattr(server, "_server", None)  # moto keeps its werkzeug server private
    if wsgi_server is not None:
        wsgi_server.app = activity.wrap(wsgi_server.app)
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    gateway = _gateway(root, endpoint, activity)
    threading.Thread(target=_prewarm_loop, args=(gateway, activity, stop), daemon=True).start()
    threading.Thread(
        target=_scheduler(root, endpoint, gateway).run, args=(stop,), daemon=True
    ).start()
    try:
        _log(f"moto config: {json.dumps(configure(endpoint))}")
        write_record(
            root,
            {
                "endpoint": endpoint,
                "gateway": gateway.endpoint,
                "dynamodb": gateway.endpoint,
                "pid": os.getpid(),
                "started_at": time.time(),
                "instance": instance,
                "restored": restored,
            },
        )
        _log(f"serving {endpoint} for {root} (instance {instance}, pid {os.getpid()})")
        reason = watch(root, instance, stop, activity, args.idle_timeout, args.max_lifetime)
        _log(f"stopping: {reason}")
        if reason in SELF_EXITS:
            _retire(root, instance)
    finally:
        gateway.stop()
        _stop(server, endpoint)
        journal.close()  # compacts: the next start replays a snapshot, not a long journal
        remove_record(root, instance)
    _log("stopped")
    return 0


def _gateway(root: Path, endpoint: str, activity: Activity) -> Any:
    """The Lambda executor and its gateway (Invoke API, Function URLs, DynamoDB) on 127.0.0.1."""
    from .executor import LocalLambda
    from .gateway import Gateway
    from .routes import RoutesWatch
    from .server import client

    state = root / ".shardkit"
    routes = RoutesWatch(root)
    executor = LocalLambda(
        endpoint,
        state,
        lambda service, region: client(service, region, endpoint),
        routes,
        generation=lambda: activity.generation,
    )
    gateway = Gateway(executor, routes, HOST)
    gateway.on_request = activity.touch
    executor.service_endpoints["dynamodb"] = gateway.endpoint  # state calls skip moto's server
    return gateway.start()


def _scheduler(root: Path, endpoint: str, gateway: Any) -> Any:
    """EventBridge schedule rules fire their Lambda targets (:mod:`shardkit.local.schedule`)."""
    from .schedule import Scheduler
    from .server import client

    def invoke(region: str, function: str, event: dict[str, Any]) -> Any:
        name, _, qualifier = function.partition(":")
        return gateway.executor.invoke(region, name, qualifier or "$LATEST", event)

    return Scheduler(
        lambda region: client("events", region, endpoint),
        invoke,
        lambda: {region for region, _ in gateway.executor.routes.current().code},
        log=_log,
    )


def _prewarm_loop(gateway: Any, activity: Activity, stop: threading.Event) -> None:
    """After a deploy moved aliases: one warm worker per alias, so the first request after a
    deploy does not pay a cold start (the way provisioned concurrency works on Lambda)."""
    while not stop.wait(POLL_S):
        for region, function in activity.settled_moves():
            try:
                gateway.executor.prewarm_aliases(region, function)
            except Exception as exc:  # deleted meanwhile, or the server is stopping
                _log(f"pre-warm of {function} in {region} skipped: {exc}")


def configure(endpoint: str) -> dict[str, Any]:
    """Switch Lambda and Batch to moto's no-Docker backends; return moto's config after."""
    request = urllib.request.Request(
        endpoint + CONFIG_PATH,
        data=json.dumps(NO_DOCKER_CONFIG).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=5) as resp:
        config = json.loads(resp.read())
    for service, wanted in NO_DOCKER_CONFIG.items():
        if config.get(service) != wanted:
            raise RuntimeError(f"moto did not take the {service} config: {config}")
    return config


def watch(
    root: Path,
    instance: str,
    stop: threading.Event,
    activity: Activity,
    idle_timeout: float,
    max_lifetime: float,
) -> str:
    """Block until the server should stop; return why."""
    born = time.monotonic()
    while not stop.wait(POLL_S):
        record, _ = read_record(root)
        if record is None:
            return "record removed"
        if record.get("instance") != instance or record.get("pid") != os.getpid():
            return "record names another server"
        now = time.monotonic()
        if idle_timeout > 0 and now - activity.last > idle_timeout:
            return "idle"
        if max_lifetime > 0 and now - born > max_lifetime:
            return "max lifetime"
    return "signal"


def _retire(root: Path, instance: str) -> None:
    """Leave on our own: give up the record first, so new `up`s start afresh."""
    record, _ = read_record(root)
    if record is None or record.get("instance") != instance:
        return  # not ours any more (and taking the lock could re-create a deleted directory)
    with lock(root):
        remove_record(root, instance)


def _stop(server: Any, endpoint: str) -> None:
    """Stop serving without waiting out werkzeug's 0.5 s poll: a request wakes its loop."""
    stopper = threading.Thread(target=server.stop, daemon=True)
    stopper.start()
    while stopper.is_alive():
        probe(endpoint, timeout=0.1)
        stopper.join(0.02)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m shardkit.local", description="shardkit's local cloud server (internal)"
    )
    parser.add_argument("--project", required=True)
    parser.add_argument("--instance", required=True)
    parser.add_argument("--idle-timeout", type=float, default=0.0)
    parser.add_argument("--max-lifetime", type=float, default=0.0)
    return parser.parse_args(argv)


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{stamp} {message}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
