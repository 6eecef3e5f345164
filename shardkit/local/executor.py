"""The local Lambda executor: runs deployed functions in persistent worker processes.

moto's Lambda keeps the API (functions, versions, aliases, concurrency) but, without Docker, runs
no code. This executor does, with the function's own configuration as moto reports it:

* **code** - the deployed package (its object in the artifact bucket, checked against the
  function's ``CodeSha256``), unpacked once per hash;
* **timeout** - a worker that overruns is killed and replaced; the caller gets Lambda's
  "Task timed out" error;
* **memory** - a worker whose resident memory exceeds ``MemorySize`` is killed ("Runtime exited
  with error: signal: killed", as Lambda reports an out-of-memory function);
* **reserved concurrency** - the size of the worker pool; beyond it an invoke is throttled (429);
* **environment** - the function's variables, plus the ``AWS_*`` ones Lambda sets, pointed at
  the local cloud.

A worker's stdout and stderr go to the function's log group; Powertools EMF lines become
CloudWatch metrics (``put_metric_data``), as the Lambda service does with them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import telemetry
from .routes import RoutesWatch

__all__ = ["Invocation", "LocalLambda"]

#: The worker's program, run as a file (``ps`` shows its path and the function, not its source).
WORKER = Path(__file__).with_name("worker.py")
_UNRESERVED = 10  # workers per function without reserved concurrency (0 reserved: throttled)
_CONFIG_TTL = 1.0  # seconds a function's configuration is trusted before asking moto again
_MB = 1024 * 1024


@dataclass
class Invocation:
    """The outcome of one invoke, shaped like Lambda's Invoke response."""

    status: int  # HTTP status of the Invoke call itself
    payload: Any  # the handler's result, or Lambda's error object
    function_error: str | None = None  # "Unhandled" when the function failed
    error_type: str | None = None  # x-amzn-ErrorType for a failed Invoke call
    duration_ms: float = 0.0
    version: str | None = None  # the version that ran (an alias resolved), for ExecutedVersion


@dataclass(frozen=True)
class FunctionSpec:
    region: str
    name: str
    version: str
    code_sha256: str
    handler: str
    memory_mb: int
    timeout_s: int
    concurrency: int
    env: tuple[tuple[str, str], ...]


def worker_command(spec: FunctionSpec) -> list[str]:
    """The worker's command line: the worker file, run in the function's code directory with
    ``-P`` so that the worker - not Python - puts that directory first on ``sys.path``, as
    Lambda does; the last argument only names the function and version for ``ps``."""
    return [sys.executable, "-P", str(WORKER), f"{spec.region}/{spec.name}:{spec.version}"]


class Worker:
    """One warm process of one function version."""

    def __init__(
        self,
        spec: FunctionSpec,
        code_dir: Path,
        env: dict[str, str],
        sink: Callable[[str, str], None],
    ) -> None:
        self.spec = spec
        parent_r, child_w = os.pipe()
        child_r, parent_w = os.pipe()
        env = {**env, "SHARDKIT_WORKER_FDS": f"{child_r},{child_w}"}
        self.proc = subprocess.Popen(
            worker_command(spec),
            cwd=code_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(child_r, child_w),
            start_new_session=True,
        )
        os.close(child_r)
        os.close(child_w)
        self.rfd, self.wfd = parent_r, parent_w
        self.stream = f"{time.strftime('%Y/%m/%d')}/[{spec.version}]{uuid.uuid4().hex}"
        threading.Thread(target=self._pump, args=(sink,), daemon=True).start()
        self.ready = self._read(timeout=max(10.0, spec.timeout_s))

    def _pump(self, sink: Callable[[str, str], None]) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            sink(self.stream, line.decode("utf-8", "replace").rstrip("\n"))

    def call(self, event: Any, request_id: str) -> dict[str, Any]:
        deadline = time.time() + self.spec.timeout_s
        frame = json.dumps({"event": event, "request_id": request_id, "deadline": deadline})
        try:
            os.write(self.wfd, struct.pack(">I", len(frame)) + frame.encode())
        except OSError:  # it died while idle (EPIPE): a clean function error, not a dropped call
            self.kill()
            raise ChildProcessError(
                f"Runtime exited with error: exit status {self.proc.poll()}"
            ) from None
        return self._read(timeout=self.spec.timeout_s)

    def _read(self, timeout: float) -> dict[str, Any]:
        """The next frame, watching the clock and the worker's memory while waiting."""
        deadline = time.monotonic() + timeout
        buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise TimeoutError(f"Task timed out after {timeout:.2f} seconds")
            ready, _, _ = select.select([self.rfd], [], [], min(left, 0.05))
            if self._rss_mb() > self.spec.memory_mb:
                self.kill()
                raise MemoryError(
                    f"Runtime exited with error: signal: killed (memory limit of "
                    f"{self.spec.memory_mb} MB exceeded)"
                )
            if not ready:
                continue
            chunk = os.read(self.rfd, 1 << 20)
            if not chunk:
                self.kill()
                raise ChildProcessError(
                    f"Runtime exited with error: exit status {self.proc.poll()}"
                )
            buf += chunk
            if len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                return json.loads(buf[4:])

    def _rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.rfd, self.wfd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.rfd = self.wfd = -1


class Pool:
    """The workers of one function version: at most ``concurrency`` of them, reused warm."""

    def __init__(self, spec: FunctionSpec, code_dir: Path, env: dict[str, str]) -> None:
        self.spec, self.code_dir, self.env = spec, code_dir, env
        self.idle: list[Worker] = []
        self.busy = 0
        self.warming = 0  # pre-warms under way (counted in busy too)
        self.lock = threading.Lock()
        self.freed = threading.Condition(self.lock)

    def acquire(self) -> Worker | bool | None:
        """An idle worker, True when a new one may be started, None when at the limit.

        While a pre-warm is under way and no worker is idle, wait for it (at most the
        function's timeout) rather than pay a second cold start beside it."""
        with self.lock:
            deadline = time.monotonic() + self.spec.timeout_s
            while not self.idle and self.warming and time.monotonic() < deadline:
                self.freed.wait(deadline - time.monotonic())
            while self.idle:
                worker = self.idle.pop()
                if worker.alive:
                    self.busy += 1
                    return worker
                worker.kill()  # died while idle: close its pipes
            if self.busy >= self.spec.concurrency:
                return None
            self.busy += 1
            return True

    def release(self, worker: Worker | None, *, warmed: bool = False) -> None:
        with self.lock:
            self.busy -= 1
            self.warming -= warmed
            if worker is not None and worker.alive:
                self.idle.append(worker)
            self.freed.notify_all()

    def close(self) -> None:
        with self.lock:
            for worker in self.idle:
                worker.kill()
            self.idle.clear()


class LocalLambda:
    """Invoke functions of the local cloud at ``endpoint`` with their deployed code."""

    def __init__(
        self,
        endpoint: str,
        state_dir: Path,
        client: Callable[[str, str], Any],
        routes: RoutesWatch | None = None,
        *,
        generation: Callable[[], int] | None = None,
    ) -> None:
        """``routes``: where the deployed code packages are (published by the deploy engine).
        ``generation`` counts changes to Lambda's configuration (the server's front door
        bumps it on every write to the Lambda API): a function's configuration is read again
        only when it moved. Without it, a configuration is trusted for ``_CONFIG_TTL`` seconds.
        """
        self.endpoint = endpoint
        #: service -> endpoint the functions use instead of ``endpoint`` (AWS_ENDPOINT_URL_X)
        self.service_endpoints: dict[str, str] = {}
        self.code_root = state_dir / "local" / "code"
        self.routes = routes or RoutesWatch(state_dir.parent)
        client = _reused(client)
        self._client = client
        self._generation = generation
        self._pools: dict[tuple[str, str, str], Pool] = {}
        self._specs: dict[tuple[str, str, str], tuple[float, FunctionSpec]] = {}
        self._lock = threading.Lock()
        self._logs = LogForwarder()

    def invoke(self, region: str, name: str, qualifier: str, event: Any) -> Invocation:
        started = time.perf_counter()
        try:
            spec = self._spec(region, name, qualifier)
        except LookupError as exc:
            return Invocation(
                404, {"Type": "User", "message": str(exc)}, error_type="ResourceNotFoundException"
            )
        pool = self._pool(spec)
        got = pool.acquire()
        if got is None:
            return Invocation(
                429,
                {
                    "Type": "User",
                    "message": "Rate Exceeded.",
                    "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded",
                },
                error_type="TooManyRequestsException",
            )
        worker: Worker | None = None
        try:
            worker = got if isinstance(got, Worker) else self._start(pool)
            reply = worker.call(event, uuid.uuid4().hex)
        except (TimeoutError, MemoryError, ChildProcessError, InitError) as exc:
            worker = None
            return replace(self._failed(exc, started), version=spec.version)
        finally:
            pool.release(worker)
        duration = (time.perf_counter() - started) * 1000
        if reply.get("ok"):
            return Invocation(200, reply["result"], duration_ms=duration, version=spec.version)
        return Invocation(
            200,
            reply["error"],
            function_error="Unhandled",
            duration_ms=duration,
            version=spec.version,
        )

    def close(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()
        self._logs.close()

    # -- internals -------------------------------------------------------------------------------

    @staticmethod
    def _failed(exc: Exception, started: float) -> Invocation:
        error = {
            "errorType": "Runtime.ExitError"
            if not isinstance(exc, TimeoutError)
            else "Sandbox.Timedout",
            "errorMessage": str(exc),
        }
        if isinstance(exc, InitError):
            error = exc.error
        return Invocation(
            200,
            error,
            function_error="Unhandled",
            duration_ms=(time.perf_counter() - started) * 1000,
        )

    def _start(self, pool: Pool, init: str = "on-demand") -> Worker:
        """A new worker; ``init`` is Lambda's AWS_LAMBDA_INITIALIZATION_TYPE for it."""
        spec = pool.spec
        worker = Worker(
            spec,
            pool.code_dir,
            {**pool.env, "AWS_LAMBDA_INITIALIZATION_TYPE": init},
            lambda stream, line: self._logs.line(spec, stream, line),
        )
        if not worker.ready.get("ready"):
            worker.kill()
            raise InitError(worker.ready.get("error", {"errorMessage": "init failed"}))
        return worker

    def _spec(self, region: str, name: str, qualifier: str) -> FunctionSpec:
        key = (region, name, qualifier)
        cached = self._specs.get(key)
        stamp = self._stamp()
        if cached and (
            cached[0] == stamp if self._generation else time.monotonic() - cached[0] < _CONFIG_TTL
        ):
            return cached[1]
        lam = self._client("lambda", region)
        try:
            conf = lam.get_function_configuration(FunctionName=name, Qualifier=qualifier)
        except lam.exceptions.ResourceNotFoundException:
            raise LookupError(f"Function not found: {name}:{qualifier} in {region}") from None
        try:
            reserved = lam.get_function_concurrency(FunctionName=name).get(
                "ReservedConcurrentExecutions"
            )
        except Exception:  # a passing failure must not resize (and so replace) a warm pool
            reserved = cached[1].concurrency if cached else None
        spec = FunctionSpec(
            region=region,
            name=name,
            version=conf.get("Version", "$LATEST"),
            code_sha256=conf["CodeSha256"],
            handler=conf["Handler"],
            memory_mb=int(conf.get("MemorySize", 128)),
            timeout_s=int(conf.get("Timeout", 3)),
            concurrency=_UNRESERVED if reserved is None else int(reserved),
            env=tuple(sorted(conf.get("Environment", {}).get("Variables", {}).items())),
        )
        self._specs[key] = (stamp, spec)
        return spec

    def _stamp(self) -> float:
        """What a cached configuration is checked against: the generation, or the clock."""
        return self._generation() if self._generation else time.monotonic()

    def prewarm_aliases(self, region: str, name: str) -> list[str]:
        """Pre-warm every alias of a function, each in its own thread; returns the aliases."""
        lam = self._client("lambda", region)
        aliases = [a["Name"] for a in lam.list_aliases(FunctionName=name)["Aliases"]]
        for alias in aliases:
            threading.Thread(target=self.prewarm, args=(region, name, alias), daemon=True).start()
        return aliases

    def prewarm(self, region: str, name: str, qualifier: str) -> bool:
        """Start a worker for the function now, so that its first invoke finds one warm
        (as provisioned concurrency does). False when one is idle already, or none may start."""
        try:
            pool = self._pool(self._spec(region, name, qualifier))
        except LookupError:
            return False
        with pool.lock:
            if pool.idle or pool.busy or pool.spec.concurrency < 1:
                return False
            pool.busy += 1
            pool.warming += 1
        worker = None
        try:
            worker = self._start(pool, "provisioned-concurrency")
        except (TimeoutError, MemoryError, ChildProcessError, InitError, OSError):
            worker = None  # the first invoke reports why, as without a pre-warm
        finally:
            pool.release(worker, warmed=True)
        return worker is not None

    def _pool(self, spec: FunctionSpec) -> Pool:
        key = (spec.region, spec.name, spec.version)
        with self._lock:
            pool = self._pools.get(key)
            if pool is not None and pool.spec == spec:
                return pool
            if pool is not None:
                pool.close()  # the configuration changed under the same version ($LATEST)
            self._retire_versions(spec)
            pool = self._pools[key] = Pool(spec, self._code(spec), self._env(spec))
            return pool

    def _retire_versions(self, spec: FunctionSpec) -> None:
        """The alias moved to a new version: stop the old versions' idle workers. A pool still
        serving a request is left to finish; the next new version retires it."""
        for key in [k for k in self._pools if k[:2] == (spec.region, spec.name)]:
            if key[2] != spec.version and self._pools[key].busy == 0:
                self._pools.pop(key).close()

    def _env(self, spec: FunctionSpec) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k in ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PYTHONHASHSEED")
        }
        env.update(dict(spec.env))
        env.update(
            {
                "_HANDLER": spec.handler,
                "AWS_REGION": spec.region,
                "AWS_DEFAULT_REGION": spec.region,
                "AWS_ENDPOINT_URL": self.endpoint,
                **{
                    f"AWS_ENDPOINT_URL_{service.upper()}": url
                    for service, url in self.service_endpoints.items()
                },
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_LAMBDA_FUNCTION_NAME": spec.name,
                "AWS_LAMBDA_FUNCTION_VERSION": spec.version,
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
                "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
                "AWS_EXECUTION_ENV": "shardkit-local",
                "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def _code(self, spec: FunctionSpec) -> Path:
        """The function's package, fetched and unpacked once per code hash."""
        digest = base64.b64decode(spec.code_sha256).hex()
        target = self.code_root / digest
        if target.is_dir():
            return target
        bucket, key = self._code_location(spec, digest)
        data = self._client("s3", spec.region).get_object(Bucket=bucket, Key=key)["Body"].read()
        tmp = target.with_name(f".{digest}.{uuid.uuid4().hex}")
        tmp.mkdir(parents=True)
        with zipfile.ZipFile(_bytes_io(data)) as zf:
            zf.extractall(tmp)
        with contextlib.suppress(OSError):  # another invoke may have unpacked it first
            tmp.rename(target)
        return target

    def _code_location(self, spec: FunctionSpec, digest: str) -> tuple[str, str]:
        """Where the package with this hash lives, as the deploy engine published it."""
        found = self.routes.current().code_location(spec.region, spec.name, digest)
        if found is not None:
            return found
        raise LookupError(
            f"the code of {spec.name} ({digest[:12]}) is not a package shardkit "
            f"deployed; redeploy with `shardkit deploy`"
        )


class InitError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("errorMessage", "init failed"))
        self.error = error


def _reused(client: Callable[[str, str], Any]) -> Callable[[str, str], Any]:
    """One client per (service, region): a new boto3 client costs ~3 ms of CPU and was made
    for every EMF line and every configuration check, all under the server's one GIL."""
    made: dict[tuple[str, str], Any] = {}
    lock = threading.Lock()

    def get(service: str, region: str) -> Any:
        with lock:
            if (service, region) not in made:
                made[service, region] = client(service, region)
            return made[service, region]

    return get


def _bytes_io(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


class LogForwarder:
    """Batches worker output into CloudWatch Logs, and EMF documents into metrics.

    Both leave every ``interval`` seconds, one call per log stream and one per namespace and
    region (up to 1,000 data points each), straight into moto's backends
    (:mod:`shardkit.local.telemetry`): forwarding each EMF document on its own, through boto3,
    cost about as much of the server's CPU as the request that printed it."""

    METRICS_PER_CALL = 1000

    def __init__(self, interval: float = 0.5) -> None:
        self._pending: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self._metrics: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)
        self._thread.start()

    def line(self, spec: FunctionSpec, stream: str, text: str) -> None:
        data = _emf(text) if text.startswith("{") and '"_aws"' in text else []
        key = (spec.region, f"/aws/lambda/{spec.name}", stream)
        event = {"timestamp": int(time.time() * 1000), "message": text}
        with self._lock:
            self._pending.setdefault(key, []).append(event)
            for namespace, datum in data:
                self._metrics.setdefault((spec.region, namespace), []).append(datum)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._flush()

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            metrics, self._metrics = self._metrics, {}
        for (region, group, stream), events in pending.items():
            try:
                telemetry.put_log_events(region, group, stream, events)
            except Exception as exc:  # logging must never break an invocation
                print(f"log forwarding to {group} failed: {exc}", file=sys.stderr)
        for (region, namespace), data in metrics.items():
            for start in range(0, len(data), self.METRICS_PER_CALL):
                try:
                    telemetry.put_metric_data(
                        region, namespace, data[start : start + self.METRICS_PER_CALL]
                    )
                except Exception as exc:
                    print(f"EMF forwarding to {namespace} failed: {exc}", file=sys.stderr)


def _emf(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The (namespace, metric datum) pairs of one EMF document; none for a malformed one (it
    stays a log line)."""
    try:
        doc = json.loads(text)
        found = []
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            dims = [
                {"Name": d, "Value": str(doc[d])}
                for group in directive.get("Dimensions", [])
                for d in group
                if d in doc
            ]
            found += [
                (
                    directive["Namespace"],
                    {
                        "MetricName": m["Name"],
                        "Unit": m.get("Unit", "None"),
                        "Dimensions": dims,
                        "Values": _values(doc.get(m["Name"])),
                    },
                )
                for m in directive["Metrics"]
                if doc.get(m["Name"]) is not None
            ]
        return found
    except Exception as exc:
        print(f"EMF document not understood: {exc}", file=sys.stderr)
        return []


def _values(value: Any) -> list[float]:
    return [float(v) for v in value] if isinstance(value, list) else [float(value)]
