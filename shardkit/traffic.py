"""Load generation: workloads, a threaded runner and its reports, through the routing client or
the edge runtime. ``shardkit traffic`` is this module plus option parsing and printing.

A workload is a list of per-key request lists: each key's requests run in order on one thread
(their ``seq`` numbers say in which), keys spread over the threads. Every request becomes one
outcome - an error too - and the report groups the outcomes (per shard and per region for the
client; per path and cache status for the edge) with one percentile function for p50 and p99.

Control plane (an operator's tool): it may import anything; the data plane never imports it.
"""

from __future__ import annotations

import importlib
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import EdgePolicyError, ShardkitError
from .routing.client import RoutingClient

if TYPE_CHECKING:
    from .edge import EdgeRuntime

__all__ = [
    "EdgeTrafficReport",
    "PathRow",
    "Row",
    "TrafficReport",
    "Workload",
    "edge_runtime_for",
    "edge_workload",
    "percentile",
    "run_edge_traffic",
    "run_traffic",
    "workload",
]

#: Per key, its requests in order: ``[[(key, payload), ...], ...]``.
Workload = list[list[tuple[str, Any]]]

WORDS = [
    "the",
    "shard",
    "owns",
    "key",
    "and",
    "map",
    "says",
    "which",
    "answers",
    "request",
    "when",
    "edge",
    "asks",
]
PATHS = ("local", "cache", "shard", "failover", "error")
CACHE_STATUSES = ("hit", "miss", "stale", "bypass", "coalesced")


# -- workloads ----------------------------------------------------------------------------------


def _key_names(keys: int) -> list[str]:
    """Half of the keys carry the ``eu:`` prefix (the quickstart's residency rule)."""
    return [f"eu:user-{i}" if i % 2 else f"user-{i}" for i in range(keys)]


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))


def workload(total: int, keys: int, *, seed: int = 0) -> Workload:
    """``total`` writes over ``keys`` keys, chosen at random (``seed``): per key, in order,
    ``{"text": ..., "seq": 1, 2, ...}``."""
    rng = random.Random(seed)
    names = _key_names(keys)
    per_key: dict[str, list[tuple[str, Any]]] = {k: [] for k in names}
    for _ in range(total):
        key = rng.choice(names)
        per_key[key].append((key, {"text": _sentence(rng), "seq": len(per_key[key]) + 1}))
    return [reqs for reqs in per_key.values() if reqs]


def edge_workload(total: int, keys: int, *, seed: int = 0, reads: float = 0.8) -> Workload:
    """As :func:`workload`, with a share ``reads`` of read-only requests ``{"text": word,
    "learn": False}`` (a few words asked most, Zipf-like, so they repeat: cacheable); the
    writes are numbered by ``seq`` per key."""
    if not 0 <= reads <= 1:
        raise ValueError(f"reads = {reads!r}: a share between 0 and 1")
    rng = random.Random(seed)
    names = _key_names(keys)
    weights = [1 / (i + 1) for i in range(len(WORDS))]
    per_key: dict[str, list[tuple[str, Any]]] = {k: [] for k in names}
    writes = dict.fromkeys(names, 0)
    for _ in range(total):
        key = rng.choice(names)
        if rng.random() < reads:
            per_key[key].append((key, {"text": rng.choices(WORDS, weights)[0], "learn": False}))
        else:
            writes[key] += 1
            per_key[key].append((key, {"text": _sentence(rng), "seq": writes[key]}))
    return [reqs for reqs in per_key.values() if reqs]


# -- statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: int) -> float:
    """The ``q``-th percentile (1-99) of ``values``, interpolated between the closest ranks
    (``statistics.quantiles``, inclusive: the 50th is the median); 0.0 for no values."""
    if not 1 <= q <= 99:
        raise ValueError(f"q = {q!r}: a percentile from 1 to 99")
    if len(values) < 2:
        return float(values[0]) if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@dataclass(frozen=True)
class Row:
    """One shard's or region's requests through the routing client."""

    requests: int
    p50_ms: float  # latency of the answered requests
    p99_ms: float
    errors: int
    redirects: int
    degraded: int


@dataclass(frozen=True)
class TrafficReport:
    requests: int
    seconds: float
    rps: float
    errors: int
    degraded: int
    first_errors: list[str]  # the first five error messages
    shards: dict[str, Row]
    regions: dict[str, Row]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PathRow:
    """The requests one edge path served: ``local``, ``cache``, ``shard``, ``failover``, ``error``."""

    requests: int
    share: float
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class EdgeTrafficReport:
    requests: int
    seconds: float
    rps: float
    location: dict[str, str]  # region, jurisdiction
    paths: dict[str, PathRow]
    cache: dict[str, int]  # cache status -> requests not answered locally
    errors: int
    first_errors: list[str]
    divergence: dict[str, Any] | None
    map: dict[str, Any]
    cache_memory: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the runner ---------------------------------------------------------------------------------


@dataclass
class _Outcome:
    ok: bool
    ms: float = 0.0
    error: str = ""
    shard: str = "?"
    region: str = "?"
    redirected: bool = False
    degraded: bool = False
    path: str = "error"
    cache: str = "-"


#: Told of each request done (its count, 1): a progress bar's ``advance``.
Progress = Callable[[int], None]


def _in_threads(
    work: Workload,
    threads: int,
    one: Callable[[str, Any], _Outcome],
    progress: Progress | None = None,
) -> tuple[list[_Outcome], float]:
    """Each key's requests in order on one thread, keys spread over ``threads``: one outcome
    per request (``one`` turns errors into outcomes too), and the seconds it all took."""
    if threads < 1:
        raise ValueError(f"threads = {threads!r}: at least 1")
    outcomes: list[_Outcome] = []
    lock = threading.Lock()

    def run_key(requests: list[tuple[str, Any]]) -> None:
        for key, payload in requests:
            outcome = one(key, payload)
            with lock:
                outcomes.append(outcome)
                if progress is not None:
                    progress(1)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(run_key, work))
    return outcomes, time.perf_counter() - started


def run_traffic(
    client: RoutingClient,
    work: Workload,
    *,
    threads: int = 4,
    progress: Progress | None = None,
) -> TrafficReport:
    """Send ``work`` through ``client`` from ``threads`` threads; latency, errors, redirects and
    degraded answers per shard and per region. ``progress(1)`` is called per request done."""

    def one(key: str, payload: Any) -> _Outcome:
        try:
            r = client.infer(key, payload)
        except ShardkitError as exc:
            return _Outcome(False, error=exc.message, shard=getattr(exc, "shard", "") or "?")
        return _Outcome(True, r.latency_s * 1000, "", r.shard, r.region, r.redirected, r.degraded)

    outcomes, elapsed = _in_threads(work, threads, one, progress)
    return TrafficReport(
        requests=len(outcomes),
        seconds=elapsed,
        rps=_rate(len(outcomes), elapsed),
        errors=sum(not o.ok for o in outcomes),
        degraded=sum(o.degraded for o in outcomes),
        first_errors=_first_errors(outcomes),
        shards=_rows(outcomes, lambda o: o.shard),
        regions=_rows(outcomes, lambda o: o.region),
    )


def run_edge_traffic(
    runtime: EdgeRuntime,
    work: Workload,
    *,
    threads: int = 4,
    progress: Progress | None = None,
) -> EdgeTrafficReport:
    """Send ``work`` through the edge ``runtime``: the share and latency of each path, the cache
    statuses, and the runtime's own statistics at the end (it is left open). ``progress(1)`` is
    called per request done."""

    def one(key: str, payload: Any) -> _Outcome:
        t = time.perf_counter()
        try:
            d = runtime.infer(key, payload)
        except ShardkitError as exc:
            return _Outcome(False, (time.perf_counter() - t) * 1000, exc.message)
        return _Outcome(True, d.latency_s * 1000, path=d.path, cache=d.cache)

    outcomes, elapsed = _in_threads(work, threads, one, progress)
    stats = runtime.stats()
    n = len(outcomes)
    by_path: dict[str, list[float]] = {p: [] for p in PATHS}
    for o in outcomes:
        by_path[o.path].append(o.ms)
    upstream = [o.cache for o in outcomes if o.path in ("cache", "shard", "failover")]
    return EdgeTrafficReport(
        requests=n,
        seconds=elapsed,
        rps=_rate(n, elapsed),
        location={
            "region": runtime.location.region,
            "jurisdiction": runtime.location.jurisdiction,
        },
        paths={
            p: PathRow(len(ms), len(ms) / n if n else 0.0, percentile(ms, 50), percentile(ms, 99))
            for p, ms in by_path.items()
        },
        cache={s: upstream.count(s) for s in CACHE_STATUSES},
        errors=sum(not o.ok for o in outcomes),
        first_errors=_first_errors(outcomes),
        divergence=stats["divergence"],
        map=stats["map"],
        cache_memory=stats["cache"],
    )


def _rows(outcomes: list[_Outcome], by: Callable[[_Outcome], str]) -> dict[str, Row]:
    groups: dict[str, list[_Outcome]] = {}
    for o in outcomes:
        groups.setdefault(by(o), []).append(o)
    rows = {}
    for name in sorted(groups):
        group = groups[name]
        answered = [o.ms for o in group if o.ok]
        rows[name] = Row(
            requests=len(group),
            p50_ms=percentile(answered, 50),
            p99_ms=percentile(answered, 99),
            errors=sum(not o.ok for o in group),
            redirects=sum(o.redirected for o in group),
            degraded=sum(o.degraded for o in group),
        )
    return rows


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds else 0.0


def _first_errors(outcomes: list[_Outcome]) -> list[str]:
    return [o.error for o in outcomes if not o.ok][:5]


# -- an edge runtime for a project ----------------------------------------------------------------


#: The edge module ``traffic --edge`` looks for in a project when none is named.
EDGE_MODULE = "app.edge"


def edge_runtime_for(
    client: RoutingClient,
    project_dir: str | Path,
    *,
    region: str | None = None,
    module: str | None = None,
) -> EdgeRuntime:
    """An edge runtime in ``region`` (default: the map's first) over ``client``, with the local
    model and cache rules of the project's ``module``: its ``local_model()`` and
    ``cache_rules()``, both optional (without them nothing is answered locally or cached).

    ``module=None`` uses the project's ``app.edge`` if it has one. A module named but not found,
    or one that fails to import or to build its hooks, is an :class:`EdgePolicyError`."""
    from .edge import DivergenceMonitor, EdgeRuntime, Location

    regions = client.holder.require().regions
    region = region or next(iter(regions))
    if region not in regions:
        raise EdgePolicyError(
            f"edge region {region!r} is not a region of the map ({', '.join(regions)})",
            hint="put the edge node in one of the map's regions",
        )
    model, rules = _edge_hooks(Path(project_dir), module)
    return EdgeRuntime(
        client,
        location=Location(region, regions[region]),
        local=model,
        rules=rules,
        divergence=DivergenceMonitor(sample_rate=0.05, budget=0.1),
    )


def _edge_hooks(project_dir: Path, module: str | None) -> tuple[Any, Any]:
    """``local_model()`` and ``cache_rules()`` of the project's edge module, if it has them."""
    name = module or EDGE_MODULE
    root = str(project_dir.resolve())
    sys.path.insert(0, root)
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        absent = bool(exc.name) and (name == exc.name or name.startswith(f"{exc.name}."))
        if absent and module is None:
            return None, None  # no edge module, and none was asked for: shards only
        raise _edge_error(name, project_dir, exc) from None
    except Exception as exc:  # the module's own code failed: its traceback is the user's bug
        raise _edge_error(name, project_dir, exc) from None
    finally:
        sys.path.remove(root)
    try:
        model = mod.local_model() if hasattr(mod, "local_model") else None
        rules = mod.cache_rules() if hasattr(mod, "cache_rules") else None
    except Exception as exc:
        raise _edge_error(name, project_dir, exc, during="building its hooks") from None
    return model, rules


def _edge_error(
    name: str, project_dir: Path, exc: Exception, during: str = "importing it"
) -> EdgePolicyError:
    return EdgePolicyError(
        f"edge module {name!r} of {project_dir} failed while {during}: {type(exc).__name__}: {exc}",
        hint="name a module of the project (e.g. app.edge for app/edge.py); it may define "
        "local_model() and cache_rules(), both optional",
    )
