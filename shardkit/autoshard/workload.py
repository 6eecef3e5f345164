"""Workloads for the simulator: per-window requests and compute time of every slot of one group.

Synthetic workloads are a key distribution (``uniform`` or ``zipf`` over ``keys`` keys, hashed to
slots exactly as routing hashes them) times a rate over time, plus optional events: a hot tenant
(``hot_share`` of the traffic on ``hot_keys`` keys from ``hot_at``), a burst (rate x ``burst_x``
from ``burst_at`` for ``burst_for`` s), a diurnal wave, a square wave or a step. Each window's
counts are Poisson draws around the expected ones, from a seeded generator: same seed, same run.

Recorded workloads replay a trace: shardkit's JSONL trace, the edge runtime's decision records
(JSONL of ``Decision.to_dict()``), or load records (:mod:`shardkit.proxy.load`, concatenated
msgpack). Formats and parameters are in docs/autoshard.md.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LoadRecordError, ShardkitError, WorkloadError
from ..sharding.hashing import HASHES
from ..sharding.shardmap import ShardMap

__all__ = [
    "PRESETS",
    "TRACE_FORMATS",
    "Synthetic",
    "Trace",
    "Workload",
    "parse_workload",
    "read_trace",
]


class Workload(ABC):
    """Per-window load of one group: ``window(i, length, rng) -> (requests, compute_ms)``, two
    arrays with one entry per slot. Subclasses set ``name``, ``duration_s`` (None: endless) and
    ``keys_per_slot`` (stored keys per slot, for migration and cold-read costs)."""

    name: str
    duration_s: float | None
    keys_per_slot: float

    @abstractmethod
    def window(self, i: int, length: float, rng: np.random.Generator) -> tuple[Any, Any]:
        """Window ``i`` (``length`` s): requests and compute ms of every slot."""

    def describe(self) -> str:
        return self.name


# -- synthetic ----------------------------------------------------------------------------------

#: Parameters every synthetic workload takes, with their defaults.
DEFAULTS: dict[str, Any] = {
    "shape": "uniform",  # uniform | zipf
    "keys": 1_000_000,
    "s": 1.1,  # zipf exponent
    "rps": 2000.0,  # base requests/s over the group
    "ms": 20.0,  # compute ms per request
    "wave": "none",  # none | diurnal | square | step
    "period": 600.0,  # wave period, s
    "low": 1.0,  # square: rate multiplier of the first half period; diurnal: at the trough
    "high": 2.0,  # square: of the second half; diurnal: at the crest
    "step_at": 600.0,  # step: when the rate changes to step_x times the base
    "step_x": 1.3,
    "burst_at": -1.0,  # burst: start (s; < 0: no burst)
    "burst_for": 120.0,
    "burst_x": 3.0,
    "hot_at": -1.0,  # hot tenant: start (s; < 0: none)
    "hot_share": 0.15,  # share of all traffic the tenant sends from then on
    "hot_keys": 1,
}

#: Named workloads: a base of parameters each; ``name:k=v,...`` overrides them.
PRESETS: dict[str, dict[str, Any]] = {
    "uniform": {},
    "step": {"wave": "step"},
    "zipf": {"shape": "zipf"},
    "hot-tenant": {"shape": "zipf", "hot_at": 600.0},
    "burst": {"burst_at": 600.0},
    "diurnal": {"wave": "diurnal", "period": 3600.0, "low": 0.4, "high": 1.6},
    "square": {"wave": "square", "period": 600.0},
}


@dataclass
class Synthetic(Workload):
    name: str
    params: dict[str, Any]
    slot_bits: int
    duration_s: float | None = None
    keys_per_slot: float = 1.0
    _base: Any = field(default=None, repr=False)
    _tenant: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        p = self.params
        self.keys_per_slot = p["keys"] / (1 << self.slot_bits)
        self._base = _slot_weights(p["shape"], int(p["keys"]), float(p["s"]), self.slot_bits)
        tenant = np.zeros(1 << self.slot_bits)
        for i in range(int(p["hot_keys"])):
            tenant[_slot(f"tenant-hot:{i}", self.slot_bits)] += 1.0 / p["hot_keys"]
        self._tenant = tenant

    def rate(self, t: float) -> float:
        p = self.params
        r = p["rps"] * _wave(p, t)
        if p["burst_at"] >= 0 and p["burst_at"] <= t < p["burst_at"] + p["burst_for"]:
            r *= p["burst_x"]
        return float(r)

    def weights(self, t: float) -> Any:
        p = self.params
        if p["hot_at"] >= 0 and t >= p["hot_at"]:
            return (1 - p["hot_share"]) * self._base + p["hot_share"] * self._tenant
        return self._base

    def window(self, i: int, length: float, rng: np.random.Generator) -> tuple[Any, Any]:
        t = (i + 0.5) * length  # the rate in the middle of the window
        expected = self.rate(t) * length * self.weights(t)
        requests = rng.poisson(expected).astype(float)
        return requests, requests * self.params["ms"]

    def describe(self) -> str:
        base = {**DEFAULTS, **PRESETS[self.name]}
        changed = {k: v for k, v in self.params.items() if base[k] != v}
        return self.name + (
            ":" + ",".join(f"{k}={_fmt(v)}" for k, v in changed.items()) if changed else ""
        )


def _wave(p: Mapping[str, Any], t: float) -> float:
    kind = p["wave"]
    if kind == "square":
        return p["low"] if (t % p["period"]) < p["period"] / 2 else p["high"]
    if kind == "diurnal":
        phase = (1 - math.cos(2 * math.pi * t / p["period"])) / 2  # 0 at t=0, 1 at half period
        return p["low"] + (p["high"] - p["low"]) * phase
    if kind == "step":
        return p["step_x"] if t >= p["step_at"] else 1.0
    return 1.0


_WEIGHTS: dict[tuple[str, int, float, int], Any] = {}


def _slot_weights(shape: str, keys: int, s: float, slot_bits: int) -> Any:
    """Each slot's share of the traffic: keys ``k0``..``k<keys-1>`` hashed as routing hashes
    them, each with weight 1 (uniform) or 1/rank^s (zipf, ``k0`` the most popular)."""
    cache_key = (shape, keys, s if shape == "zipf" else 0.0, slot_bits)
    cached = _WEIGHTS.get(cache_key)
    if cached is None:
        xxh = HASHES["xxh64-v1"]
        shift = 64 - slot_bits
        slots = np.fromiter((xxh(f"k{i}") >> shift for i in range(keys)), np.int64, keys)
        w = np.arange(1, keys + 1, dtype=float) ** -s if shape == "zipf" else np.ones(keys)
        cached = np.bincount(slots, weights=w, minlength=1 << slot_bits)
        cached /= cached.sum()
        _WEIGHTS[cache_key] = cached
    return cached


def _slot(key: str, slot_bits: int) -> int:
    return HASHES["xxh64-v1"](key) >> (64 - slot_bits)


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def parse_workload(spec: str, slot_bits: int) -> Synthetic:
    """``name`` or ``name:key=value,key=value`` -> a :class:`Synthetic` workload."""
    name, _, rest = spec.strip().partition(":")
    if name not in PRESETS:
        raise WorkloadError(
            f"unknown workload {name!r}; known: {', '.join(PRESETS)}",
            hint="pass --workload NAME or NAME:key=value,... (docs/autoshard.md)",
        )
    params = {**DEFAULTS, **PRESETS[name]}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in DEFAULTS:
            raise WorkloadError(
                f"workload parameter {item!r}: expected key=value with key one of "
                f"{', '.join(DEFAULTS)}"
            )
        params[key] = _value(key, value.strip())
    _check(params)
    return Synthetic(name, params, slot_bits)


def _value(key: str, text: str) -> Any:
    default = DEFAULTS[key]
    if isinstance(default, str):
        return text
    try:
        number = float(text)
    except ValueError:
        raise WorkloadError(f"workload parameter {key} = {text!r}: must be a number") from None
    if isinstance(default, int) and not number.is_integer():
        raise WorkloadError(f"workload parameter {key} = {text!r}: must be a whole number")
    return int(number) if isinstance(default, int) else number


def _check(p: dict[str, Any]) -> None:
    rules = [
        ("shape", p["shape"] in ("uniform", "zipf"), "uniform or zipf"),
        (
            "wave",
            p["wave"] in ("none", "diurnal", "square", "step"),
            "none, diurnal, square or step",
        ),
        ("keys", 1 <= p["keys"] <= 20_000_000, "1..20000000"),
        ("s", 0 < p["s"] <= 5, "in (0, 5]"),
        ("rps", 0 <= p["rps"] <= 1e8, "0..1e8"),
        ("ms", 0 < p["ms"] <= 900_000, "in (0, 900000]"),
        ("period", p["period"] > 0, "> 0"),
        ("low", p["low"] >= 0, ">= 0"),
        ("high", p["high"] >= 0, ">= 0"),
        ("step_x", p["step_x"] >= 0, ">= 0"),
        ("burst_for", p["burst_for"] > 0, "> 0"),
        ("burst_x", p["burst_x"] >= 0, ">= 0"),
        ("hot_share", 0 <= p["hot_share"] <= 1, "0..1"),
        ("hot_keys", 1 <= p["hot_keys"] <= 100_000, "1..100000"),
    ]
    for key, ok, allowed in rules:
        if not ok:
            raise WorkloadError(f"workload parameter {key} = {_fmt(p[key])}: must be {allowed}")


# -- recorded -----------------------------------------------------------------------------------

TRACE_FORMATS = ("jsonl", "edge", "records")


@dataclass
class Trace(Workload):
    """A recorded workload: per-window (requests, compute ms) arrays, replayed as they are."""

    name: str
    windows: list[tuple[Any, Any]]
    length: float
    duration_s: float | None = None
    keys_per_slot: float = 1.0
    skipped: int = 0  # requests of other groups, or that never reached a shard

    def __post_init__(self) -> None:
        self.duration_s = len(self.windows) * self.length

    def window(self, i: int, length: float, rng: np.random.Generator) -> tuple[Any, Any]:
        if i < len(self.windows):
            return self.windows[i]
        zero = np.zeros_like(self.windows[0][0]) if self.windows else np.zeros(1)
        return zero, zero


def read_trace(
    path: Path,
    fmt: str,
    shard_map: ShardMap,
    group: str,
    length: float,
    *,
    rate: float = 100.0,
    default_ms: float = 20.0,
) -> Trace:
    """A recorded workload for ``group`` from ``path`` in format ``fmt`` (one of
    :data:`TRACE_FORMATS`); windows of ``length`` s starting at the first record."""
    if fmt not in TRACE_FORMATS:
        raise WorkloadError(f"trace format {fmt!r}: must be one of {', '.join(TRACE_FORMATS)}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WorkloadError(f"cannot read the trace {path}: {exc.strerror or exc}") from None
    if fmt == "records":
        return _from_records(path, data, shard_map, group, length)
    events = _jsonl_events(path, data, fmt, rate, default_ms)
    return _bucket(path.name, events, shard_map, group, length)


def _jsonl_events(
    path: Path, data: bytes, fmt: str, rate: float, default_ms: float
) -> Iterator[tuple[float, str, str | None, float, float]]:
    """(t, key, jurisdiction tag, requests, compute ms) per line that loaded a shard."""
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkloadError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise WorkloadError(f"{path}:{n}: each line must be a JSON object")
        event = _edge_event(obj, n, rate) if fmt == "edge" else _jsonl_event(obj, n, default_ms)
        if event is not None:
            yield event


def _jsonl_event(
    obj: dict[str, Any], n: int, default_ms: float
) -> tuple[float, str, str | None, float, float]:
    key, t = obj.get("key"), obj.get("t")
    count = obj.get("n", 1)
    if not isinstance(key, str) or not key:
        raise WorkloadError(f"line {n}: key = {key!r}: must be a non-empty string")
    if not _number(t):
        raise WorkloadError(f"line {n}: t = {t!r}: must be a number (seconds)")
    if not _number(count) or count < 0:
        raise WorkloadError(f"line {n}: n = {count!r}: must be a number >= 0")
    ms = obj.get("ms", default_ms * count)
    if not _number(ms) or ms < 0:
        raise WorkloadError(f"line {n}: ms = {ms!r}: must be a number >= 0")
    return float(t), key, _tag(obj, n), float(count), float(ms)


def _edge_event(
    obj: dict[str, Any], n: int, rate: float
) -> tuple[float, str, str | None, float, float] | None:
    """An edge decision record; only the ``shard`` and ``failover`` paths loaded a shard."""
    key, path = obj.get("key"), obj.get("path")
    if not isinstance(key, str) or path not in ("local", "cache", "shard", "failover"):
        raise WorkloadError(
            f"line {n}: not an edge decision record (needs key and path: local, cache, shard "
            "or failover)"
        )
    if path not in ("shard", "failover"):
        return None
    t = obj.get("t", obj.get("time"))
    latency = obj.get("latency_s", 0.0)
    when = float(t) if _number(t) else (n - 1) / rate
    ms = float(latency) * 1000 if _number(latency) else 0.0
    return when, key, _tag(obj, n), 1.0, ms


def _tag(obj: dict[str, Any], n: int) -> str | None:
    tag = obj.get("jurisdiction")
    if tag is not None and not isinstance(tag, str):
        raise WorkloadError(f"line {n}: jurisdiction = {tag!r}: must be a string")
    return tag


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _bucket(
    name: str,
    events: Iterator[tuple[float, str, str | None, float, float]],
    shard_map: ShardMap,
    group: str,
    length: float,
) -> Trace:
    jurisdiction = shard_map.groups[group].jurisdiction
    n_slots = shard_map.slot_count
    rows: list[tuple[int, int, float, float]] = []
    skipped = 0
    t0: float | None = None
    for t, key, tag, count, ms in events:
        t0 = t if t0 is None else min(t0, t)
        try:
            mine = shard_map.jurisdiction_of(key, tag) == jurisdiction
        except ShardkitError:
            mine = False
        if not mine:
            skipped += int(count)
            continue
        rows.append((t, shard_map.slot(key), count, ms))  # type: ignore[arg-type]
    if not rows:
        raise WorkloadError(
            f"{name}: no request of group {group!r} ({jurisdiction}) in the trace "
            f"({skipped} of other groups or not served by a shard)"
        )
    first = t0 if t0 is not None else 0.0
    index = [int((r[0] - first) // length) for r in rows]
    windows = [(np.zeros(n_slots), np.zeros(n_slots)) for _ in range(max(index) + 1)]
    for w, (_, slot, count, ms) in zip(index, rows, strict=True):
        windows[w][0][slot] += count
        windows[w][1][slot] += ms
    return Trace(name, windows, length, skipped=skipped)


def _from_records(path: Path, data: bytes, shard_map: ShardMap, group: str, length: float) -> Trace:
    from ..proxy.load import iter_records
    from .load import LoadAggregator

    agg = LoadAggregator()
    try:
        agg.add_all(iter_records(data))
    except LoadRecordError as exc:
        raise WorkloadError(f"{path}: {exc.message}", hint=exc.hint) from None
    owners = [s.id for s in shard_map.groups[group].primary]
    starts = sorted(start for g, start in agg.pending() if g == group)
    if not starts:
        raise WorkloadError(f"{path}: no load record of group {group!r}")
    closed = [agg.close(group, start, owners) for start in starts]
    step = min(w.length for w in closed if w is not None)
    zero = np.zeros(shard_map.slot_count)
    windows: list[tuple[Any, Any]] = [(zero, zero)] * (int((starts[-1] - starts[0]) // step) + 1)
    for w in closed:
        assert w is not None
        rps, ms = w.slot_rates()
        # one recorded window per simulated one: rates are scaled to the simulated length
        windows[int((w.start - starts[0]) // step)] = (rps * length, ms * length)
    return Trace(path.name, windows, length)
