"""What the routing client does, decided without I/O: one call is a generator of steps.

:func:`decide` is the pure heart: given what came back from a shard (a decoded reply or a
:class:`TransportError`) and the call's state, the next action - return the answer, follow a
redirect (refresh the map, once per call), refetch the map because the shard does not exist
(the same one hop: a stale map names removed shards), retry on the same shard, fail over (count
a failure against the shard, then retry; a shard that keeps failing is avoided and the key's
next shard gets the request), or raise. It is also the one place where a transport's
:class:`TransportError` becomes the caller's :class:`~shardkit.errors.RoutingError`.

:meth:`Router.call` runs one call around it and *yields* the I/O it needs - :class:`Send` a
request, :class:`Sleep` a backoff, :class:`Refresh` the map - to a driver that does it: the
thread-blocking :class:`~shardkit.routing.client.RoutingClient` or the asyncio
:class:`~shardkit.routing.aio.AsyncRoutingClient`. Both share one :class:`Router`, so routing,
the retry budget and the shards' health are the same whichever does the I/O.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from ..errors import InferenceError, RegistryUnreachableError, RoutingError, ShardkitError
from ..protocol import (
    Answer,
    ErrorReply,
    Redirect,
    Reply,
    check_key,
    decode_reply,
    is_transient,
    request_wire,
)
from ..sharding.holder import MapHolder
from ..sharding.shardmap import Shard, ShardMap
from .transports import TransportError

__all__ = [
    "COUNTERS",
    "Action",
    "Call",
    "Calling",
    "Decision",
    "Fetched",
    "Refresh",
    "Result",
    "RetryPolicy",
    "Router",
    "Send",
    "Sent",
    "Sleep",
    "backoff_ceiling",
    "decide",
]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # per call, the first try included
    base_s: float = 0.02
    cap_s: float = 1.0
    budget_ratio: float = 0.2  # retries allowed per request, on average
    budget_floor: float = 10.0  # retries always allowed (bucket size)
    avoid_s: float = 5.0  # how long a failing shard is avoided
    failures_to_avoid: int = 2  # consecutive failures (not throttles) before it is avoided
    timeout_s: float = 30.0
    refetch_after_s: float = 1.0  # after the registry could not be read, calls wait this long
    # before fetching again (until then they fail at once with that error, not after a timeout)


@dataclass
class Result:
    """One answer and how it was obtained: the decision record of a routed request."""

    key: str
    answer: Any
    shard: str
    region: str
    jurisdiction: str
    epoch: int
    map_version: int
    seq: int
    latency_s: float
    attempts: int = 1
    redirected: bool = False
    failover: bool = False
    hedged: bool = False
    replayed: bool = False
    degraded: bool = False  # a replica answered without the key's state (failover)


# -- the decision -------------------------------------------------------------------------------


class Action(enum.Enum):
    RETURN = "return"  # the answer is the call's result
    REDIRECT = "redirect"  # refresh the map, then send to the owner it names
    REFETCH = "refetch"  # the shard does not exist: refresh the map, then route again
    RETRY = "retry"  # back off, then the same shard again (it answered, or is only busy)
    FAIL_OVER = "fail over"  # count a failure against the shard, back off, route again
    RAISE = "raise"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    error: ShardkitError | None = None  # RAISE: the error; RETRY/FAIL_OVER: if none is left
    failed: bool = False  # the shard did not reply and is not merely busy: count it


@dataclass(slots=True)
class Call:
    """One ``infer`` call: what it sends, and how far it got."""

    key: str
    payload: Any
    jurisdiction: str | None
    request_id: str
    allowed: int  # attempts, the first included
    attempts: int = 0
    redirected: bool = False
    failover: bool = False  # a shard other than the key's owner was tried
    started: float = 0.0  # time.perf_counter() at the start

    def request(self, map_version: int) -> dict[str, Any]:
        """The request of the next attempt, in wire form."""
        return request_wire(
            self.key,
            self.payload,
            map_version,
            self.jurisdiction,
            self.request_id,
            self.failover,
        )

    def no_answer(
        self, why: object, hint: str = "the shard may be down; check `shardkit status`"
    ) -> RoutingError:
        error = RoutingError(
            f"no answer for key {self.key!r} after {self.attempts} attempt(s): {why}", hint=hint
        )
        if isinstance(why, BaseException):
            error.__cause__ = why  # a TransportError, and whatever it was made from
        return error

    def result(self, answer: Answer, shard: Shard, hedged: bool) -> Result:
        return Result(
            key=self.key,
            answer=answer.answer,
            shard=shard.id,
            region=shard.region,
            jurisdiction=shard.jurisdiction,
            epoch=answer.epoch,
            map_version=answer.map_version,
            seq=answer.seq,
            latency_s=time.perf_counter() - self.started,
            attempts=self.attempts,
            redirected=self.redirected,
            failover=self.failover,
            hedged=hedged,
            replayed=answer.replayed,
            degraded=answer.degraded,
        )


_RETURN, _REDIRECT = Decision(Action.RETURN), Decision(Action.REDIRECT)
_REFETCH = Decision(Action.REFETCH)

#: The hint of a shard that does not exist in the map the registry serves.
NOT_DEPLOYED = (
    "the shard is in the map but not deployed: compare the two with `shardkit status`, and "
    "deploy again"
)


def decide(outcome: Reply | TransportError | ShardkitError, call: Call, shard: str) -> Decision:
    """The next action after ``shard`` gave ``outcome`` to ``call`` (its ``attempts`` counting
    this one). Retries are only proposed while attempts are left; the retry budget is not
    consulted here (spending it is the router's)."""
    if isinstance(outcome, Answer):
        if outcome.shard != shard:
            return Decision(
                Action.RAISE, RoutingError(f"shard {shard} answered as {outcome.shard!r}")
            )
        return _RETURN
    left = call.attempts < call.allowed
    if isinstance(outcome, TransportError):
        if outcome.missing:  # the map may be stale: refresh it, once, before anything else
            if left and not call.redirected:
                return _REFETCH
            error = call.no_answer(outcome, NOT_DEPLOYED)
            return Decision(Action.FAIL_OVER if left else Action.RAISE, error, failed=True)
        failed = not outcome.throttled  # a throttled shard is busy, not down: no failover
        error = call.no_answer(outcome)
        if not (outcome.retryable and left):
            return Decision(Action.RAISE, error, failed)
        return Decision(Action.FAIL_OVER if failed else Action.RETRY, error, failed)
    if isinstance(outcome, ShardkitError):  # a transport raised one of ours: it says it all
        return Decision(Action.RAISE, outcome)
    if isinstance(outcome, Redirect) and not call.redirected:
        if not left:
            why = f"shard {shard} redirected to {outcome.owner} and no attempt is left"
            return Decision(Action.RAISE, call.no_answer(why))
        return _REDIRECT
    error = rejected(outcome, shard)
    if is_transient(outcome.status) and left:
        return Decision(Action.RETRY, error)
    return Decision(Action.RAISE, error)


def rejected(reply: Redirect | ErrorReply, shard: str) -> InferenceError:
    """The error for a reply that is not an answer (a second redirect is one too)."""
    if isinstance(reply, Redirect):
        detail = f"the owner is {reply.owner} in map version {reply.map_version}"
    else:
        detail = reply.message
    return InferenceError(
        f"shard {shard} answered {reply.status} {reply.code}: {detail}",
        status=reply.status,
        code=reply.code,
        shard=shard,
    )


def backoff_ceiling(attempt: int, policy: RetryPolicy) -> float:
    """The longest backoff after attempt number ``attempt``: exponential, capped."""
    return min(policy.cap_s, policy.base_s * 2 ** (attempt - 1))


# -- the steps a call asks its driver to do --------------------------------------------------------


@dataclass(slots=True)
class Send:
    """Send ``request`` (wire form) to ``shard``; the driver answers with :class:`Sent`."""

    shard: Shard
    request: dict[str, Any]


@dataclass(slots=True)
class Sent:
    outcome: Any  # the reply as received (wire form), or the failure (transports.failure)
    hedged: bool = False


@dataclass(slots=True)
class Sleep:
    seconds: float


@dataclass(slots=True)
class Fetched:
    """What a :class:`Refresh` gave: None, or why no map could be had from the source."""

    error: ShardkitError | None = None


@dataclass(slots=True)
class Refresh:
    """Fetch the map from its source; the driver runs :meth:`run` (it blocks: off the loop)."""

    def run(self, holder: MapHolder) -> Fetched:
        try:
            holder.refresh()
        except ShardkitError as exc:  # unreachable, or refused: the router decides
            return Fetched(exc)
        return Fetched()


Step = Send | Sleep | Refresh
Done = Sent | Fetched | None


class Calling:
    """One call in progress, for its driver: ``next(done)`` is the next step to do (``done``:
    what the last one gave), None once the call is over - then ``result`` is its result."""

    def __init__(self, steps: Generator[Step, Done, Result]) -> None:
        self._steps = steps
        self.result: Result | None = None

    def next(self, done: Done) -> Step | None:
        try:
            return self._steps.send(done)
        except StopIteration as finished:
            self.result = finished.value
            return None


# -- the router: one client's state, and the call loop --------------------------------------------


class _Budget:
    """A token bucket: each request earns ``ratio`` retry tokens, each retry spends one."""

    def __init__(self, ratio: float, floor: float) -> None:
        self.ratio, self.cap, self.tokens = ratio, floor, floor
        self.lock = threading.Lock()

    def earn(self) -> None:
        with self.lock:
            self.tokens = min(self.cap, self.tokens + self.ratio)

    def spend(self) -> bool:
        with self.lock:
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False


class Router:
    """Routing, the retry budget, the shards' health and the counters of one client; no I/O of
    its own."""

    def __init__(self, holder: MapHolder, policy: RetryPolicy, clock: Callable[[], float]) -> None:
        self.holder = holder
        self.policy = policy
        self._clock = clock
        self._budget = _Budget(policy.budget_ratio, policy.budget_floor)
        self._avoid: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._cooling: tuple[float, ShardkitError] | None = None  # registry failed: until, why
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._lock = threading.Lock()

    def call(self, key: str, payload: Any, jurisdiction: str | None, request_id: str) -> Calling:
        """One call, as steps to do; it ends with its :class:`Result`, or raises. A key the
        proxy would refuse is refused here, before anything is sent (:class:`InvalidKeyError`)."""
        check_key(key)
        return Calling(self._steps(key, payload, jurisdiction, request_id))

    def stats(self) -> dict[str, int]:
        """What the client did besides answering: see :data:`COUNTERS`."""
        with self._lock:
            return dict(self._counts)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _steps(
        self, key: str, payload: Any, jurisdiction: str | None, request_id: str
    ) -> Generator[Step, Any, Result]:
        call = Call(key, payload, jurisdiction, request_id, self.policy.attempts)
        call.started = time.perf_counter()
        self._budget.earn()
        try:
            while True:
                shard_map = self.holder.current
                if shard_map is None:  # first use, or the map expired
                    yield from self._refresh(self.holder.version)
                    shard_map = self.holder.require(fetch=False)  # says why there is none
                shard, away = self._pick(key, jurisdiction, shard_map)
                if away:
                    call.failover = True
                    self._count("failovers")
                call.attempts += 1
                sent: Sent = yield Send(shard, call.request(shard_map.version))
                outcome = sent.outcome
                replied = not isinstance(outcome, Exception)
                if replied:
                    outcome = decode_reply(outcome, shard.id)
                decision = decide(outcome, call, shard.id)
                self._record(shard, outcome, decision)
                if decision is _RETURN:  # outcome is an Answer
                    # A replica on a newer map: the key may have a healthy owner that ours does
                    # not know. Look once; without a newer map, the degraded answer stands.
                    if (
                        outcome.degraded
                        and outcome.map_version > shard_map.version
                        and (yield from self._newer(call, shard_map, "degraded_newer_map"))
                    ):
                        continue
                    return call.result(outcome, shard, sent.hedged)
                if decision is _REDIRECT:  # outcome is a Redirect
                    failure = yield from self._hop(call, shard_map.version, "redirects")
                    if failure is not None:
                        raise _because(
                            failure,
                            f"shard {shard.id} redirected key {key!r} to {outcome.owner} "
                            f"(map version {outcome.map_version}), but the map could not be "
                            "refreshed",
                        )
                    self._check_refreshed(shard_map.version, outcome)
                    continue
                if decision is _REFETCH:  # outcome is a missing-shard TransportError
                    failure = yield from self._hop(call, shard_map.version, "missing_shards")
                    if self.holder.version > shard_map.version:
                        continue  # the new map knows where the key lives now
                    decision = self._missing(call, shard, shard_map, outcome, failure)
                if decision.action is Action.RAISE:
                    raise decision.error  # type: ignore[misc]  # RAISE carries one
                if not self._budget.spend():
                    self._count("budget_exhausted")
                    raise decision.error  # type: ignore[misc]  # RETRY/FAIL_OVER carry one
                self._count("retries")
                yield Sleep(self._jitter(call.attempts))
        except ShardkitError:
            self._count("errors")
            raise

    def _pick(self, key: str, jurisdiction: str | None, shard_map: ShardMap) -> tuple[Shard, bool]:
        """The shard to send to, and whether it is not the key's owner (a failover)."""
        if self._avoid:
            now = self._clock()
            avoided = {sid for sid, until in self._avoid.items() if until > now}
            if avoided:
                shard = shard_map.route_avoiding(key, avoided, jurisdiction)  # NoEligibleShard
                return shard, shard.id != shard_map.route(key, jurisdiction).id
        return shard_map.route(key, jurisdiction), False

    def _record(self, shard: Shard, outcome: Any, decision: Decision) -> None:
        """A reply clears the shard's failures. It is avoided once it failed
        ``failures_to_avoid`` times in a row: one lost reply is not an outage, and every
        failover answer is a degraded one. A shard that does not exist is avoided at once."""
        if not decision.failed:
            if not isinstance(outcome, Exception):  # it replied
                self._failures.pop(shard.id, None)
            return
        count = self._failures[shard.id] = self._failures.get(shard.id, 0) + 1
        if count >= self.policy.failures_to_avoid or getattr(outcome, "missing", False):
            self._avoid[shard.id] = self._clock() + self.policy.avoid_s

    def _missing(
        self,
        call: Call,
        shard: Shard,
        shard_map: ShardMap,
        outcome: TransportError,
        failure: ShardkitError | None,
    ) -> Decision:
        """The shard does not exist and no newer map could be had. If the registry could not
        say (unreachable, refused), the map is most likely stale: fail, rather than have a
        replica answer for a key whose owner may be healthy. If it serves this very map, the
        shard is missing from the deployment: it is down - avoid it and fail over."""
        if failure is not None:
            error = _because(
                failure,
                f"shard {shard.id} of map version {shard_map.version} does not exist "
                f"({outcome}), so the map is probably stale, and no newer one could be had",
            )
            return Decision(Action.RAISE, error)
        self._avoid[shard.id] = self._clock() + self.policy.avoid_s
        return Decision(Action.FAIL_OVER, call.no_answer(outcome, NOT_DEPLOYED), failed=True)

    def _hop(self, call: Call, seen: int, event: str) -> Generator[Step, Any, ShardkitError | None]:
        """The call's one hop: a newer map than version ``seen``, if the registry has one.
        Returns why none could be had (None: fetched, or another call had fetched it)."""
        call.redirected = True
        self._count(event)
        failure = yield from self._refresh(seen)
        if self.holder.version > seen:
            call.failover = False  # routing starts over with the new map
        return failure

    def _newer(self, call: Call, shard_map: ShardMap, event: str) -> Generator[Step, Any, bool]:
        """Whether a newer map than ``shard_map`` was had (within the call's hop and attempts)."""
        if call.redirected or call.attempts >= call.allowed:
            return False
        yield from self._hop(call, shard_map.version, event)
        return self.holder.version > shard_map.version

    def _refresh(self, seen: int) -> Generator[Step, Any, ShardkitError | None]:
        """Fetch the map, unless one newer than version ``seen`` is held already (another call
        fetched it), or the registry could not be read less than ``refetch_after_s`` ago (then
        that failure, at once). Returns why no map could be had, or None."""
        if self.holder.version > seen:
            return None
        cooling = self._cooling
        if cooling is not None and self._clock() < cooling[0]:
            self._count("refreshes_skipped")
            return cooling[1]
        self._count("refreshes")
        fetched: Fetched = yield Refresh()
        failure = fetched.error
        if failure is None:
            self._cooling = None
            return None
        self._count("refresh_failures")
        if isinstance(failure, RegistryUnreachableError):
            self._cooling = (self._clock() + self.policy.refetch_after_s, failure)
        return failure

    def _jitter(self, attempt: int) -> float:
        import random  # lazily: only a retry pays for it (docs/architecture.md §3, edge imports)

        return random.uniform(0, backoff_ceiling(attempt, self.policy))  # full jitter

    def _check_refreshed(self, before: int, redirect: Redirect) -> None:
        if self.holder.version <= before and redirect.map_version > before:
            raise RoutingError(
                f"the shard reports map version {redirect.map_version}, but the registry "
                f"still serves version {before}",
                hint="the new map is not yet published everywhere; retry shortly",
            )


#: The client's counters (``RoutingClient.stats()``): redirects (421s followed),
#: missing_shards (a transport said the shard does not exist), degraded_newer_map (a replica
#: answered from a newer map than ours), refreshes / refresh_failures / refreshes_skipped
#: (map fetches the client made, those that failed, and those skipped while the registry was
#: failing), failovers (attempts sent to a shard other than the key's owner), retries (backoffs
#: slept), budget_exhausted (retries refused by the budget) and errors (calls that raised).
COUNTERS = (
    "redirects",
    "missing_shards",
    "degraded_newer_map",
    "refreshes",
    "refresh_failures",
    "refreshes_skipped",
    "failovers",
    "retries",
    "budget_exhausted",
    "errors",
)


def _because(failure: ShardkitError, context: str) -> ShardkitError:
    """``failure`` (the same class and hint) with what the call was doing when it happened."""
    error = type(failure)(f"{context}: {failure.message}", hint=failure.hint)
    error.__cause__ = failure
    return error
