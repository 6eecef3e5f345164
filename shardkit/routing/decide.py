"""What the routing client does, decided without I/O: one call is a generator of steps.

:func:`decide` is the pure heart: given what came back from a shard (a decoded reply or a
:class:`TransportError`) and the call's state, the next action - return the answer, follow a
redirect (refresh the map, once per call), retry on the same shard, fail over (count a failure
against the shard, then retry; a shard that keeps failing is avoided and the key's next shard
gets the request), or raise.

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

from ..errors import InferenceError, RoutingError, ShardkitError
from ..protocol import Answer, ErrorReply, Redirect, Reply, decode_reply, is_transient, request_wire
from ..sharding.holder import MapHolder
from ..sharding.shardmap import Shard, ShardMap
from .transports import TransportError

__all__ = [
    "Action",
    "Call",
    "Calling",
    "Decision",
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

    def no_answer(self, why: object) -> RoutingError:
        return RoutingError(
            f"no answer for key {self.key!r} after {self.attempts} attempt(s): {why}",
            hint="the shard may be down; check `shardkit status`",
        )

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


def decide(outcome: Reply | TransportError, call: Call, shard: str) -> Decision:
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
        failed = not outcome.throttled  # a throttled shard is busy, not down: no failover
        error = call.no_answer(outcome)
        if not (outcome.retryable and left):
            return Decision(Action.RAISE, error, failed)
        return Decision(Action.FAIL_OVER if failed else Action.RETRY, error, failed)
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
    outcome: Any  # the reply as received (wire form), or the TransportError
    hedged: bool = False


@dataclass(slots=True)
class Sleep:
    seconds: float


@dataclass(slots=True)
class Refresh:
    """Fetch the map from its source (``MapHolder.refresh``)."""


Step = Send | Sleep | Refresh


class Calling:
    """One call in progress, for its driver: ``next(done)`` is the next step to do (``done``:
    what the last one gave), None once the call is over - then ``result`` is its result."""

    def __init__(self, steps: Generator[Step, Sent | None, Result]) -> None:
        self._steps = steps
        self.result: Result | None = None

    def next(self, done: Sent | None) -> Step | None:
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
    """Routing, the retry budget and the shards' health of one client; no I/O of its own."""

    def __init__(self, holder: MapHolder, policy: RetryPolicy, clock: Callable[[], float]) -> None:
        self.holder = holder
        self.policy = policy
        self._clock = clock
        self._budget = _Budget(policy.budget_ratio, policy.budget_floor)
        self._avoid: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    def call(self, key: str, payload: Any, jurisdiction: str | None, request_id: str) -> Calling:
        """One call, as steps to do; it ends with its :class:`Result`, or raises."""
        return Calling(self._steps(key, payload, jurisdiction, request_id))

    def _steps(
        self, key: str, payload: Any, jurisdiction: str | None, request_id: str
    ) -> Generator[Step, Sent | None, Result]:
        call = Call(key, payload, jurisdiction, request_id, self.policy.attempts)
        call.started = time.perf_counter()
        self._budget.earn()
        while True:
            shard_map = self.holder.current
            if shard_map is None:  # first use, or the map expired
                yield Refresh()
                shard_map = self.holder.require(fetch=False)
            shard = self._pick(key, jurisdiction, shard_map)
            call.failover = call.failover or shard.id != shard_map.route(key, jurisdiction).id
            call.attempts += 1
            sent: Sent = yield Send(shard, call.request(shard_map.version))
            outcome = sent.outcome
            replied = not isinstance(outcome, TransportError)
            if replied:
                outcome = decode_reply(outcome, shard.id)
            decision = decide(outcome, call, shard.id)
            self._record(shard, replied, decision)
            if decision is _RETURN:  # outcome is an Answer
                return call.result(outcome, shard, sent.hedged)
            if decision is _REDIRECT:  # outcome is a Redirect
                call.redirected = True
                before = self.holder.version
                yield Refresh()
                self._check_refreshed(before, outcome)
                continue
            if decision.action is Action.RAISE or not self._budget.spend():
                raise decision.error  # type: ignore[misc]  # RAISE/RETRY/FAIL_OVER carry one
            yield Sleep(self._jitter(call.attempts))

    def _pick(self, key: str, jurisdiction: str | None, shard_map: ShardMap) -> Shard:
        now = self._clock()
        avoided = {sid for sid, until in self._avoid.items() if until > now}
        if not avoided:
            return shard_map.route(key, jurisdiction)
        return shard_map.route_avoiding(key, avoided, jurisdiction)  # NoEligibleShardError

    def _record(self, shard: Shard, replied: bool, decision: Decision) -> None:
        """A reply clears the shard's failures. It is avoided once it failed
        ``failures_to_avoid`` times in a row: one lost reply is not an outage, and every
        failover answer is a degraded one."""
        if replied:
            self._failures.pop(shard.id, None)
        elif decision.failed:
            count = self._failures[shard.id] = self._failures.get(shard.id, 0) + 1
            if count >= self.policy.failures_to_avoid:
                self._avoid[shard.id] = self._clock() + self.policy.avoid_s

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
