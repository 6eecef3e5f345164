"""The Lambda handler of the stateful inference proxy: one per shard.

Per request (docs/architecture.md §4.3-4.4):

1. parse the event (direct invoke or Function URL, msgpack or JSON);
2. route the key with the current signed map; if this shard (in this region) does not own it - at
   the caller's map version or newer - answer 421 with the owner and the map version, and do no
   work;
3. load the key's state with its slot record, run the user's inference function, and write the
   new state fenced on the slot record (``owner = this shard AND state = active``); the answer is
   sent only after the write succeeded, and an answer too large to send is refused before
   anything is written. A read-only answer comes only from the live copy;
4. a request id seen before gets its recorded answer again: a retry is never applied twice;
5. when the slot record says this shard may not write (the slot is moving, or has moved), the
   answer is 421 to the owner a refreshed map names, or 503 ``moving`` (retry shortly) - never
   a write.

Errors are replies (``shardkit.protocol.ERRORS``), classed by whether a retry can help: only an
outage - no map yet, a slot moving, contention, the state table or registry unreachable - is
a 503 that clients retry; a bad request, a failing model, a state or answer that cannot be
encoded, or a defect of the proxy fails the same way every time (4xx/500), so it is not retried.

The user's function is named by ``SHARDKIT_HANDLER`` (``module:function``) and called as
``fn(key, payload, state) -> (answer, new_state)``; ``new_state=None`` means "nothing to write".

**Load signal** (docs/autoshard.md): with a ``load`` accumulator, every request this shard
serves is counted once (its slot and its latency, already measured for the metrics: one
``LoadAccumulator.add`` and one ``time.time()``); the request that closes a window hands that
window's record to the ``sink`` (one put in the state table per instance and window), after its
own answer is made, and a failed put never fails the request.
The Lambda entry point turns this on when ``SHARDKIT_LOAD_WINDOW_S`` is above 0 (the blueprint
sets it from the group's autoshard policy).

Logs carry the key's hash, never the key. Metrics go out as EMF per shard (requests, errors,
latency, state size, cold starts, and ``moving`` for 503s of slots a migration fenced, which are
not errors). Powertools' Tracer is off unless ``SHARDKIT_TRACING=1`` (cold starts).

Import cost: importing Powertools costs ~120-180 ms without bytecode (its top-level package loads
Logger, ``inspect`` and jmespath), three times everything else here. Logger and Metrics are
therefore made on first use (the first request), like boto3, so importing this module stays
cheap for everything that is not a request; with provisioned concurrency, where the init phase
is free of request latency, set ``SHARDKIT_POWERTOOLS_AT_IMPORT=1`` to pay it at import instead.
In an environment Lambda initialises ahead of requests (``AWS_LAMBDA_INITIALIZATION_TYPE`` is
``provisioned-concurrency``; the local executor's pre-warmed workers say so too) the whole proxy
is built at import - Powertools, the boto3 clients and the signed map - so the first request
pays none of it; a failure there is left for the first request to report.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from ..errors import MapError, RegistryUnreachableError, ResidencyError
from ..protocol import (
    MAX_PAYLOAD,
    Answer,
    Encoding,
    ErrorReply,
    ProxyError,
    Redirect,
    Reply,
    Request,
    decode_event,
    encode_reply,
    error_encoding,
    reply_size,
)
from ..sharding.hashing import hash_key
from ..sharding.holder import MapHolder, parse_trusted_keys
from .load import LoadAccumulator, LoadSink
from .state import (
    FENCED,
    READY,
    BadState,
    Conflict,
    KeyState,
    SlotNotLive,
    SlotRecord,
    StateStore,
    StateTooLarge,
)
from .table import DynamoTable, Put, Table

__all__ = ["Proxy", "handler"]

_tools: Any = None


class _Powertools:
    """The Powertools Logger and Metrics of this process, made on first use."""

    def __init__(self) -> None:
        from aws_lambda_powertools.logging import Logger
        from aws_lambda_powertools.metrics import Metrics

        self.logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "shardkit-proxy"))
        self.metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "shardkit"))


def _powertools() -> _Powertools:
    global _tools
    if _tools is None:
        _tools = _Powertools()
    return _tools


def __getattr__(name: str) -> Any:
    """``shardkit.proxy.handler.logger`` / ``.metrics``, made on first use."""
    if name in ("logger", "metrics"):
        return getattr(_powertools(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


InferFn = Callable[[str, Any, Any], tuple[Any, Any]]
_WRITE_ATTEMPTS = 4


class _Target(NamedTuple):
    """Where a request's state lives, and what its answers report."""

    group: str
    slot: int
    epoch: int  # the owner's epoch in the map
    version: int  # the map's version


class Proxy:
    """The proxy of one shard; everything it talks to is passed in (easy to test).

    ``region`` is where this instance runs: a shard that moved to another region (same id) is
    the owner only there. None: the region is not checked.
    """

    def __init__(
        self,
        *,
        shard: str,
        holder: MapHolder,
        store: StateStore,
        infer: InferFn,
        region: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
        load: LoadAccumulator | None = None,
        sink: LoadSink | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``load``/``sink``: count served requests and emit load records (module docstring);
        ``wall`` is the Unix clock their windows follow."""
        self.shard = shard
        self.region = region
        self.holder = holder
        self.store = store
        self.infer = infer
        self.clock = clock
        self.load = load
        self.sink = sink
        self.wall = wall

    def handle(self, event: Any) -> Any:
        started = self.clock()
        encoding: Encoding | None = None
        _powertools().logger.remove_keys(
            ["key_hash", "map_version"]
        )  # a warm logger still has the last key's
        reply: Reply
        served: _Target | None = None
        try:
            request, encoding = decode_event(event)
            reply, served = self._serve(request, encoding)
        except ProxyError as exc:
            reply = exc.reply()
        except Exception as exc:  # e.g. DynamoDB unreachable: a clean error, nothing half-written
            _powertools().logger.exception("request failed")
            reply = _unexpected(exc).reply()
        latency_ms = (self.clock() - started) * 1000
        _record_metrics(reply, latency_ms)
        if served is not None and self.load is not None:
            self._count(self.load, served, latency_ms)
        return encode_reply(reply, encoding or error_encoding(event))

    def _count(self, load: LoadAccumulator, at: _Target, latency_ms: float) -> None:
        """Count a served request; the request that closed a window writes its record."""
        load.map_version = at.version
        load.add(self.shard, at.group, at.slot, latency_ms, self.wall())
        if load.closed and self.sink is not None:
            self.sink.emit(load.take())

    def _serve(self, request: Request, encoding: Encoding) -> tuple[Reply, _Target | None]:
        """The reply, and where the request was served (None: redirected or degraded)."""
        shard_map = self._map(request.map_version)
        owner = self._route(shard_map, request)
        _powertools().logger.append_keys(
            key_hash=f"{hash_key(request.key):016x}", map_version=shard_map.version
        )
        if not self._is_me(owner):
            if request.failover and self._is_replica(shard_map, request):
                return self._degraded(request, encoding, shard_map.version), None
            return Redirect(owner.id, shard_map.version), None
        at = _Target(owner.group, shard_map.slot(request.key), owner.epoch, shard_map.version)
        return self._run(request, encoding, at), at

    @staticmethod
    def _route(shard_map: Any, request: Request) -> Any:
        try:
            return shard_map.route(request.key, request.jurisdiction)
        except ResidencyError as exc:
            raise ProxyError("residency", exc.message) from None

    def _is_me(self, owner: Any) -> bool:
        return owner.id == self.shard and (self.region is None or owner.region == self.region)

    def _is_replica(self, shard_map: Any, request: Request) -> bool:
        """Failover is allowed only to a shard of the key's own preference list (jurisdiction)."""
        order = shard_map.preference_list(request.key, jurisdiction=request.jurisdiction)
        return any(s.id == self.shard for s in order)

    def _degraded(self, request: Request, encoding: Encoding, version: int) -> Answer:
        """The owner is unreachable: answer without the key's state and write nothing, so no
        acknowledged write can be lost or forked."""
        answer, _ = self._infer(request, None)
        reply = Answer(answer, self.shard, 0, version, 0, degraded=True)
        _check_size(reply, encoding)
        return reply

    def _map(self, wanted: int, *, refresh: bool = False) -> Any:
        try:
            if refresh or wanted > self.holder.version:
                self.holder.refresh()  # the caller knows a newer map: so should we
            return self.holder.require()
        except MapError as exc:
            raise ProxyError("no_map", exc.message) from None
        except Exception as exc:
            # RegistryUnreachableError: the map source's own report of an unreadable registry
            if not isinstance(exc, RegistryUnreachableError) and not _is_io_error(exc):
                raise
            _powertools().logger.exception("the registry cannot be read")
            raise ProxyError(
                "no_map", f"the registry cannot be read: {type(exc).__name__}: {exc}"
            ) from None

    def _run(self, request: Request, encoding: Encoding, at: _Target) -> Reply:
        for _ in range(_WRITE_ATTEMPTS):
            state = self.store.load(at.group, at.slot, request.key)
            if request.request_id is not None and request.request_id in state.applied:
                recorded = state.applied[request.request_id]
                return Answer(recorded, self.shard, at.epoch, at.version, state.seq, replayed=True)
            try:
                return self._attempt(request, encoding, at, state)
            except Conflict:
                continue  # someone else wrote this key first: re-read and run again
            except SlotNotLive as exc:
                reply = self._not_live(request, at, exc)
                if reply is not None:
                    return reply
        raise ProxyError("contended", "the key was written concurrently too often; retry")

    def _attempt(
        self, request: Request, encoding: Encoding, at: _Target, state: KeyState
    ) -> Answer:
        """One run of the model on ``state`` and its write (or, read-only, its confirmation)."""
        if not state.cached and not self.store.is_live(state):
            raise SlotNotLive(state.record)  # not the live copy: do not even run the model
        answer, new_state = self._infer(request, state.value)
        seq = state.seq + (new_state is not None)
        reply = Answer(answer, self.shard, at.epoch, at.version, seq)
        _check_size(reply, encoding)
        if new_state is None:
            self.store.confirm(at.group, at.slot, request.key, state)  # only the live copy
            return reply
        try:
            saved = self.store.save(
                at.group, at.slot, request.key, state, new_state, request.request_id, answer
            )
        except StateTooLarge as exc:
            raise ProxyError("state_too_large", f"{exc}; nothing was written") from None
        except BadState as exc:
            raise ProxyError(
                "bad_state", f"the new state cannot be stored: {exc}; nothing was written"
            ) from None
        _powertools().metrics.add_metric(name="state_bytes", unit="Bytes", value=saved.size)
        return reply

    def _not_live(self, request: Request, at: _Target, refusal: SlotNotLive) -> Reply | None:
        """The slot record says this shard may not write the slot: redirect to the owner a
        refreshed map names, or answer 503 ``moving``; None: it may again, run once more."""
        record = refusal.record if refusal.known else self.store.record(at.group, at.slot)
        if record is not None and record.live_for(self.shard):
            return None  # a move was aborted (or the refusal was a write conflict): run again
        if record is None or record.state not in (FENCED, READY):
            self.holder.refresh()  # the slot has moved: does the published map say where?
            shard_map = self.holder.require()
            owner = self._route(shard_map, request)
            if not self._is_me(owner):
                return Redirect(owner.id, shard_map.version)
        raise ProxyError("moving", _moving_message(at.group, at.slot, record))

    def _infer(self, request: Request, state: Any) -> tuple[Any, Any]:
        try:
            result = self.infer(request.key, request.payload, state)
            answer, new_state = result
        except ProxyError:
            raise
        except Exception as exc:  # the user's code: any failure is a clean 500, nothing written
            _powertools().logger.exception("inference handler failed")
            raise ProxyError("handler_error", f"{type(exc).__name__}: {exc}") from None
        return answer, new_state


def _moving_message(group: str, slot: int, record: SlotRecord | None) -> str:
    where = f"slot {slot:x} of group {group}"
    if record is None:
        return f"{where} has no slot record in this region yet; retry shortly"
    return f"{where} is moving (its record here: {record}); retry shortly"


def _check_size(reply: Answer, encoding: Encoding) -> None:
    """Refuse an answer too large to send (or that cannot be encoded) before anything is
    written."""
    if reply_size(reply, encoding) > MAX_PAYLOAD:
        raise ProxyError(
            "answer_too_large", f"the answer exceeds {MAX_PAYLOAD:,} bytes; nothing was written"
        )


def _unexpected(exc: Exception) -> ProxyError:
    """The reply for an exception nothing else classified. A failure to reach the state table or
    the registry (a socket error, or any error of botocore) may pass: ``503 unavailable``, which
    clients retry. Anything else is a defect that the same request meets again on every retry:
    ``500 internal``, so no client spends its retry budget on it."""
    text = f"{type(exc).__name__}: {exc}"
    return ProxyError("unavailable" if _is_io_error(exc) else "internal", text)


def _is_io_error(exc: Exception) -> bool:
    """A socket error, or an error of the AWS SDK (named by module: botocore is imported on
    the first request, not here)."""
    return isinstance(exc, OSError) or any(
        cls.__module__.split(".")[0] in ("botocore", "boto3", "urllib3")
        for cls in type(exc).__mro__
    )


def _record_metrics(reply: Reply, latency_ms: float) -> None:
    metrics = _powertools().metrics
    metrics.add_metric(name="requests", unit="Count", value=1)
    metrics.add_metric(name="latency", unit="Milliseconds", value=latency_ms)
    if isinstance(reply, ErrorReply) and reply.code == "moving":
        # a slot fenced by a migration: expected, bounded and retried - not a failure of the
        # shard (the SLO guard that watches "errors" would otherwise count its own fence)
        metrics.add_metric(name="moving", unit="Count", value=1)
    elif reply.status >= 500:
        metrics.add_metric(name="errors", unit="Count", value=1)
    elif isinstance(reply, Redirect):
        metrics.add_metric(name="redirects", unit="Count", value=1)


# -- the Lambda entry point ---------------------------------------------------------------------

WARM_EVENT = {"shardkit": "warm"}  # = shardkit.migrate.live.WARM_EVENT (tested)

_proxy: Proxy | None = None


def build_from_environment(env: dict[str, str] | None = None) -> Proxy:
    """A proxy configured by the function's environment (set by the blueprint)."""
    import boto3

    env = dict(os.environ if env is None else env)
    shard = env["SHARDKIT_SHARD"]
    bucket, _, key = env["SHARDKIT_REGISTRY"].removeprefix("s3://").partition("/")
    s3 = boto3.client("s3")

    def fetch() -> bytes:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    holder = MapHolder(parse_trusted_keys(env["SHARDKIT_TRUSTED_KEYS"]), fetch)
    store = StateStore(
        DynamoTable(boto3.client("dynamodb"), env["SHARDKIT_TABLE"]),
        shard,
        int(env.get("SHARDKIT_STATE_CACHE", "1024")),
    )
    _powertools().metrics.set_default_dimensions(shard=shard)
    load, sink = _load_signal(env, shard, store.table)
    return Proxy(
        shard=shard,
        region=env.get("AWS_REGION"),
        holder=holder,
        store=store,
        infer=load_infer(env.get("SHARDKIT_HANDLER", "app.model:infer")),
        load=load,
        sink=sink,
    )


def _load_signal(
    env: dict[str, str], shard: str, table: Table
) -> tuple[LoadAccumulator | None, LoadSink | None]:
    """The accumulator and sink ``SHARDKIT_LOAD_WINDOW_S`` asks for (0 or unset: none)."""
    window = float(env.get("SHARDKIT_LOAD_WINDOW_S") or 0)
    if window <= 0:
        return None, None
    stream = env.get("AWS_LAMBDA_LOG_STREAM_NAME") or os.urandom(8).hex()
    load = LoadAccumulator(f"{shard}/{stream}", window_s=window)
    return load, LoadSink(lambda item: table.write(Put(item)))


def load_infer(spec: str) -> InferFn:
    """``module:function`` -> the function; a clear error when it cannot be found."""
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr or "infer")
    except (ImportError, AttributeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"

        def missing(key: str, payload: Any, state: Any) -> tuple[Any, Any]:
            raise ProxyError("no_handler", f"SHARDKIT_HANDLER={spec!r}: {problem}")

        return missing
    return fn


def handler(event: Any, context: Any) -> Any:
    """The Lambda handler (``shardkit.proxy.handler.handler``). Its metrics go out as one EMF
    document per invocation, as Powertools' ``log_metrics`` does; the first request a process
    serves counts a ``cold_starts``. :data:`WARM_EVENT` (what a migration's prepare step sends)
    only builds the proxy and says whether it had to."""
    global _proxy
    tools = _powertools()
    cold = _proxy is None
    if cold:
        _proxy = _build()
    if event == WARM_EVENT:  # a migration's prepare step: start, serve no key, count nothing
        return {"warm": _proxy.shard, "cold": cold}
    try:
        if cold:  # a request that paid for the start (not one a warm-up or a pre-warm took)
            tools.metrics.add_metric(name="cold_starts", unit="Count", value=1)
        return _proxy.handle(event)
    finally:
        tools.metrics.flush_metrics()


def _build() -> Proxy:
    proxy = build_from_environment()
    if os.environ.get("SHARDKIT_TRACING") == "1":
        from aws_lambda_powertools.tracing import Tracer

        Tracer().patch(["boto3", "botocore"])
    return proxy


def _init_ahead() -> None:
    """Build the proxy now (the init phase of a provisioned environment), map included."""
    global _proxy
    try:
        proxy = _build()
        proxy.holder.refresh()
        _proxy = proxy
    except Exception:  # the first request builds it again, and reports what fails
        _powertools().logger.exception("initialisation ahead of requests failed")


if os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "provisioned-concurrency":
    _init_ahead()
elif os.environ.get("SHARDKIT_POWERTOOLS_AT_IMPORT") == "1":
    _powertools()
