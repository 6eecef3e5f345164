#!/usr/bin/env python
"""Benchmark the edge runtime against a direct ``RoutingClient.infer`` over a MockTransport.

Run from the repository root (with the project's venv active)::

    python bench/bench_edge.py            # full run, ~1 min
    python bench/bench_edge.py --quick    # smoke run, ~10 s
    python bench/bench_edge.py --profile  # also cProfile the request paths and MapHolder.offer

1. Import: ``python -X importtime -c "import shardkit.edge"`` in a subprocess (the budget), the
   same with the routing client that ``EdgeRuntime.create`` loads, and the wall clock.
2. Per-request overhead, in this process, round-robin: the edge runtime's cache hit, local-model
   and shard paths against ``RoutingClient.infer`` and the bare ``MockTransport.send``, each call
   timed on its own (p50/p99). Overheads exclude what is not the runtime's: the transport on the
   shard path, the model's own ``can_serve`` + ``predict`` on the local path.
3. Map update: ``MapHolder.offer`` of a newer signed envelope of a 256-shard map (verify once,
   then swap), with a breakdown of where the time goes.

The last section lists the targets with PASS/MISS. See bench/README.md for what every column
means. This is not part of the test suite and never fails on a MISS: it only reports.
"""

from __future__ import annotations

import cProfile
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from _common import (
    NOW,
    PY,
    TWO_REGIONS,
    Report,
    no_gc,
    one_group_config,
    parse_args,
    parse_importtime,
    print_header,
    print_table,
    quickstart_config,
    show_profile,
    signing_key,
    ver,
)

import shardkit
from shardkit.edge import (
    CachePolicy,
    CacheRules,
    DivergenceMonitor,
    EdgeCache,
    EdgeRequest,
    EdgeRuntime,
    Location,
)
from shardkit.protocol import Answer, Request
from shardkit.routing import MockTransport, RoutingClient
from shardkit.sharding.codec import decode_map, encode_map, peek_envelope
from shardkit.sharding.holder import MapHolder

READ = {"text": "the shard", "learn": False}
ANSWER = {"next": "owns", "confidence": 0.2857, "source": "prior", "count": 3}


@dataclass(frozen=True)
class Params:
    quick: bool
    keys: int  # calls per timed batch (one per key)
    repeats: int  # batches per case, round-robin
    import_runs: int
    offers: int  # map versions offered per map


FULL = Params(False, 2_000, 21, 21, 21)
QUICK = Params(True, 1_000, 7, 7, 7)


# -- output ----------------------------------------------------------------------------------------


def header(p: Params) -> None:
    header_lines = {
        "packages": f"shardkit {shardkit.__version__}, msgpack {ver('msgpack')}, xxhash "
        f"{ver('xxhash')}, cryptography {ver('cryptography')}",
        "settings": f"per-request: {p.repeats} x {p.keys:,} calls per case; imports: "
        f"{p.import_runs} runs; map offers: {p.offers} versions per map",
    }
    print_header("shardkit edge benchmark", p.quick, header_lines, load_label="load average")


def pct(xs: Sequence[float], q: float) -> float:
    """Percentile at index int(q * n), not _common.pct's nearest rank: keeps p99 as reported."""
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


# -- 1. import -------------------------------------------------------------------------------------


def importtime(statement: str, env: dict[str, str]) -> dict[str, tuple[int, int]]:
    """``python -X importtime -c statement`` -> {module: (self us, cumulative us)}."""
    proc = subprocess.run(
        [PY, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    )
    return {i.name: (i.self_us, i.cum_us) for i in parse_importtime(proc.stderr)}


def wall_ms(statement: str, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([PY, "-c", statement], check=True, timeout=120, env=env)
    return (time.perf_counter() - t0) * 1000


def cpu_ms(statement: str, env: dict[str, str]) -> float:
    """CPU time of the statement inside the subprocess: unlike wall-clock measures, it does not
    count the time the process waits for a CPU, so it stays put on a loaded machine."""
    code = f"import time\nt = time.process_time()\n{statement}\nprint(time.process_time() - t)"
    out = subprocess.run(
        [PY, "-c", code], check=True, timeout=120, env=env, capture_output=True, text=True
    )
    return float(out.stdout) * 1000


IMPORT_CASES = [
    ("import shardkit.edge", "import shardkit.edge"),
    (
        "import shardkit.edge + routing client and map holder (ready to serve)",
        "import shardkit.edge, shardkit.routing.client",
    ),
    ("import shardkit.routing.client (reference)", "import shardkit.routing.client"),
]


def import_modes(tmp: str) -> dict[str, dict[str, str]]:
    """As this environment runs Python, and with shardkit's bytecode cached (as installed)."""
    here = dict(os.environ)
    cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = tmp
    mode = "no bytecode" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "as is"
    return {f"environment ({mode})": here, "bytecode cached": cached}


def bench_import(p: Params, rep: Report) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        modes = import_modes(tmp)
        for env in modes.values():
            for _, stmt in IMPORT_CASES:
                importtime(stmt, env)  # warm-up; fills the bytecode cache of the cached mode
        results = {mode: import_samples(p, env) for mode, env in modes.items()}
    rows = []
    for mode, (totals, walls, _, cpus) in results.items():
        floor = statistics.median(walls["pass"])
        for label, _ in IMPORT_CASES:
            rows.append(
                [
                    label,
                    mode,
                    f"{statistics.median(totals[label]):,.1f}",
                    f"{min(totals[label]):,.1f}",
                    f"{statistics.median(cpus[label]):,.1f}",
                    f"{statistics.median(walls[label]) - floor:,.1f}",
                ]
            )
    print_table(
        f"1. Import in a fresh interpreter ({p.import_runs} runs each, round-robin), ms",
        [
            "case",
            "shardkit bytecode",
            "importtime median",
            "importtime min",
            "cpu median",
            "wall net median",
        ],
        rows,
        notes=[
            "importtime: `python -X importtime -c STATEMENT`, the self times of every module "
            "that `python -c pass` does not import, summed (the statement's import cost)",
            "cpu: time.process_time() around the statement in the subprocess (not inflated "
            "by waiting for a CPU, unlike importtime and wall on a loaded machine)",
            "wall net: wall clock of `python -c STATEMENT` minus `python -c pass`",
            "environment: as this shell runs Python (here PYTHONDONTWRITEBYTECODE=1, so "
            "shardkit is compiled from source on every import); bytecode cached: "
            "PYTHONPYCACHEPREFIX=<temp dir> filled by a warm-up run, as an installed wheel",
            "ready to serve: what EdgeRuntime.create(holder, transport) needs on top; "
            "cryptography is loaded later, at the first map verification",
        ],
    )
    first_mode = next(iter(results))
    totals, _, selfs, cpus = results[first_mode]
    top = sorted(selfs, key=lambda n: -statistics.median(selfs[n]))[:10]
    print_table(
        f"1b. `import shardkit.edge`, {first_mode}: top modules by self time (median us)",
        ["module", "self us"],
        [[n, f"{statistics.median(selfs[n]):,.0f}"] for n in top],
    )
    rep.target(
        f"import shardkit.edge (-X importtime, median, {first_mode})",
        statistics.median(totals[IMPORT_CASES[0][0]]),
        25,
        ",.1f",
        "ms",
    )
    rep.target(
        f"import shardkit.edge (cpu time, median, {first_mode})",
        statistics.median(cpus[IMPORT_CASES[0][0]]),
        25,
        ",.1f",
        "ms",
    )


def import_samples(p: Params, env: dict[str, str]) -> tuple[Any, Any, Any, Any]:
    floor_names = set(importtime("pass", env))
    totals: dict[str, list[float]] = {label: [] for label, _ in IMPORT_CASES}
    cpus: dict[str, list[float]] = {label: [] for label, _ in IMPORT_CASES}
    walls: dict[str, list[float]] = {label: [] for label, _ in [*IMPORT_CASES, ("pass", "")]}
    selfs: dict[str, list[int]] = {}
    for _ in range(p.import_runs):
        for label, stmt in IMPORT_CASES:
            mine = {n: v for n, v in importtime(stmt, env).items() if n not in floor_names}
            totals[label].append(sum(v[0] for v in mine.values()) / 1000)
            if label == IMPORT_CASES[0][0]:
                for n, v in mine.items():
                    selfs.setdefault(n, []).append(v[0])
            cpus[label].append(cpu_ms(stmt, env))
        for label, stmt in [*IMPORT_CASES, ("pass", "pass")]:
            walls[label].append(wall_ms(stmt, env))
    return totals, walls, selfs, cpus


# -- 2. per-request overhead ------------------------------------------------------------------------


class Claims:
    """A local model that claims everything, with a trivial answer: its own time is measured."""

    def can_serve(self, request: EdgeRequest) -> float:
        return 1.0

    def predict(self, request: EdgeRequest) -> Any:
        return ANSWER


def bench_requests(p: Params, rep: Report, key: Any) -> dict[str, Any]:
    m = shardkit.build_map(quickstart_config(), now=NOW)
    trusted = {key.key_id: key.public_bytes}
    holder = MapHolder(trusted, clock=lambda: NOW + 60)
    holder.offer(encode_map(m, key.key_id, key.sign))

    def shard_fn(shard: Any, request: dict[str, Any]) -> dict[str, Any]:
        return Answer(ANSWER, shard.id, shard.epoch, 1, 0).to_wire()

    transport = MockTransport(shard_fn)
    keys = [f"user:{i}" for i in range(p.keys)]
    us = Location("us-east-1", "us")
    cache_all = CacheRules([CachePolicy("*", ttl_s=1e9, resident_only=())])
    silent = DivergenceMonitor(sample_rate=0.0)  # sampling runs on every hit, never fires

    def runtime(**kw: Any) -> EdgeRuntime:
        return EdgeRuntime(RoutingClient(holder, transport), location=us, divergence=silent, **kw)

    client = RoutingClient(holder, transport)
    hit, local = runtime(rules=cache_all), runtime(local=Claims())
    bypass = runtime()
    miss = runtime(rules=cache_all, cache=EdgeCache(max_entries=4 * p.keys))
    for k in keys:
        hit.infer(k, READ)
    requests = {k: (m.route(k), Request(k, READ, 1, request_id="0" * 32).to_wire()) for k in keys}
    model, req = Claims(), EdgeRequest("user:1", READ)
    counter = iter(range(10**9))

    def unique() -> dict[str, Any]:
        return {"text": "the shard", "learn": False, "n": next(counter)}

    cases: list[tuple[str, Callable[[str], Any]]] = [
        (
            "MockTransport.send (the shard, mocked)",
            lambda k: transport.send(requests[k][0], requests[k][1], 30.0),
        ),
        ("RoutingClient.infer (direct)", lambda k: client.infer(k, READ)),
        (
            "local model alone (can_serve + predict)",
            lambda k: (model.can_serve(req), model.predict(req)),
        ),
        ("edge: cache hit", lambda k: hit.infer(k, READ)),
        ("edge: local model", lambda k: local.infer(k, READ)),
        ("edge: shard, cacheable miss + fill", lambda k: miss.infer(k, unique())),
        ("edge: shard, bypass (nothing cacheable)", lambda k: bypass.infer(k, READ)),
    ]
    samples = per_call(cases, keys, p.repeats)
    med = {n: statistics.median(v) for n, v in samples.items()}
    check_paths(hit, local, miss, bypass, keys[0])
    report_requests(p, rep, cases, samples, med)
    return {"hit": hit, "local": local, "miss": miss, "keys": keys, "unique": unique}


def per_call(
    cases: Sequence[tuple[str, Callable[[str], Any]]], keys: list[str], repeats: int
) -> dict[str, list[float]]:
    """Microseconds of every call, each timed on its own; cases round-robin per batch."""
    out: dict[str, list[float]] = {name: [] for name, _ in cases}
    clock = time.perf_counter_ns
    for _, fn in cases:
        for k in keys:
            fn(k)  # warm-up
    with no_gc():
        for _ in range(repeats):
            for name, fn in cases:
                sink = out[name]
                for k in keys:
                    t0 = clock()
                    fn(k)
                    sink.append((clock() - t0) / 1000)
    return out


def check_paths(
    hit: EdgeRuntime, local: EdgeRuntime, miss: EdgeRuntime, bypass: EdgeRuntime, key: str
) -> None:
    """The cases measure what they claim: hit/local/miss/bypass, per the decision records."""
    got = (
        hit.infer(key, READ).cache,
        local.infer(key, READ).path,
        miss.infer(key, {"fresh": time.perf_counter()}).cache,
        bypass.infer(key, READ).cache,
    )
    assert got == ("hit", "local", "miss", "bypass"), got


def report_requests(
    p: Params,
    rep: Report,
    cases: Sequence[tuple[str, Any]],
    samples: dict[str, list[float]],
    med: dict[str, float],
) -> None:
    names = [c[0] for c in cases]
    transport, client, model = med[names[0]], med[names[1]], med[names[2]]
    baseline = {
        names[3]: (0.0, "-"),
        names[4]: (model, "model"),
        names[5]: (transport, "transport"),
        names[6]: (transport, "transport"),
        names[1]: (transport, "transport"),
    }
    rows = []
    for name in names:
        base, what = baseline.get(name, (None, ""))
        over = f"{med[name] - base:,.2f}" if base is not None else ""
        vs = f"{med[name] - client:+,.2f}" if name.startswith("edge: shard") else ""
        rows.append([name, f"{med[name]:,.2f}", f"{pct(samples[name], 0.99):,.2f}", what, over, vs])
    print_table(
        f"2. Per-request time (us per call; {p.repeats} x {p.keys:,} calls per case, each call "
        "timed alone, round-robin)",
        ["case", "p50 us", "p99 us", "excluded", "overhead p50 us", "vs client p50"],
        rows,
        notes=[
            "overhead = p50 of the case minus p50 of what is not the runtime's own work: "
            "nothing (cache hit), the model's can_serve + predict (local), the transport "
            "(shard paths and the plain client)",
            "vs client: the edge shard path minus a direct RoutingClient.infer of the same "
            "request (what the edge adds on top of the client)",
            "quickstart map, keys user:0..N (us); edge in us-east-1; divergence sampling on "
            "(rate 0); miss + fill sends a new payload each call, so the cache also evicts",
        ],
    )
    rep.target("edge cache hit, overhead p50", med[names[3]], 10, ",.2f", "us")
    rep.target(
        "edge local path, overhead p50 (model excluded)", med[names[4]] - model, 15, ",.2f", "us"
    )
    rep.target(
        "edge shard path, miss + fill, overhead p50 (transport excluded)",
        med[names[5]] - transport,
        20,
        ",.2f",
        "us",
    )
    rep.target(
        "edge shard path, bypass, overhead p50 (transport excluded)",
        med[names[6]] - transport,
        20,
        ",.2f",
        "us",
    )


# -- 3. map update ---------------------------------------------------------------------------------


def versions(config: Any, n: int, key: Any) -> list[bytes]:
    """n + 1 successive signed versions of the same layout (v1 first)."""
    m = shardkit.build_map(config, now=NOW)
    out = [encode_map(m, key.key_id, key.sign)]
    for i in range(n):
        m = shardkit.build_map(config, m, now=NOW + 1 + i)
        out.append(encode_map(m, key.key_id, key.sign))
    return out


def bench_map_update(p: Params, rep: Report, key: Any, profile: bool) -> None:
    trusted = {key.key_id: key.public_bytes}
    rows = []
    for label, shards, replicas in (
        ("256 shards, replicas=0", 256, 0),
        ("256 shards, replicas=1", 256, 1),
    ):
        envs = versions(one_group_config(shards, replicas, TWO_REGIONS), p.offers, key)
        holder = MapHolder(trusted, clock=lambda: NOW + 3600)
        holder.offer(envs[0])
        offers, cpu = [], []
        with no_gc():
            for data in envs[1:]:
                t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
                assert holder.offer(data)
                cpu.append((time.thread_time_ns() - c0) / 1e6)
                offers.append((time.perf_counter_ns() - t0) / 1e6)
        parts = breakdown(envs[-1], trusted, p.offers)
        offer = statistics.median(offers)
        rows.append(
            [
                label,
                f"{len(envs[-1]) / 1024:,.1f}",
                f"{offer:,.3f}",
                f"{min(offers):,.3f}",
                f"{statistics.median(cpu):,.3f}",
                *(f"{parts[k]:,.3f}" for k in ("sha256", "peek", "verify", "unpack", "decode")),
            ]
        )
        rep.target(f"MapHolder.offer, {label}", offer, 1.0, ",.3f", "ms")
        if profile:
            profile_offers(label, envs, trusted)
    print_table(
        f"3. Map update: MapHolder.offer of a newer signed version ({p.offers} versions per map, "
        "median ms; slot_bits=14, regions eu-west-1 + eu-central-1)",
        [
            "map",
            "KiB",
            "offer ms",
            "min ms",
            "cpu ms",
            "sha256",
            "peek",
            "ed25519",
            "msgpack body",
            "decode_map",
        ],
        rows,
        notes=[
            "offer: the whole update - digest, header peek, then decode_map (verify, "
            "rollback and expiry checks, body -> ShardMap, canonical-form check) and the swap; "
            "median and min wall clock, and median thread CPU time (steady under load)",
            "sha256: the holder's same-bytes check; peek: envelope header parse; ed25519: "
            "signature verify alone; msgpack body: msgpack.unpackb of the body alone; "
            "decode_map: all of decode (includes ed25519 and the body parse)",
            "decode_map - ed25519 - msgpack body = validation, slot tables -> Shard lists, "
            "ShardMap construction and the canonical check (run with --profile for a "
            "per-function split)",
        ],
    )


def breakdown(data: bytes, trusted: dict[str, bytes], n: int) -> dict[str, float]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    env = peek_envelope(data)
    signed = msgpack.packb(
        ["shardkit-map", 1, env.key_id, env.version, env.expires_at, env.body], use_bin_type=True
    )
    public = Ed25519PublicKey.from_public_bytes(trusted[env.key_id])
    steps = {
        "sha256": lambda: hashlib.sha256(data).digest(),
        "peek": lambda: peek_envelope(data),
        "verify": lambda: public.verify(env.signature, signed),
        "unpack": lambda: msgpack.unpackb(env.body, raw=False, strict_map_key=True),
        "decode": lambda: decode_map(data, trusted, now=NOW + 3600),
    }
    out = {}
    for name, fn in steps.items():
        fn()
        times = []
        with no_gc():
            for _ in range(n):
                t0 = time.perf_counter_ns()
                fn()
                times.append((time.perf_counter_ns() - t0) / 1e6)
        out[name] = statistics.median(times)
    return out


def profile_offers(label: str, envs: list[bytes], trusted: dict[str, bytes]) -> None:
    holder = MapHolder(trusted, clock=lambda: NOW + 3600)
    prof = cProfile.Profile()
    prof.enable()
    for data in envs:
        holder.offer(data)
    prof.disable()
    show_profile(f"MapHolder.offer x {len(envs)}, {label}", prof)


def profile_requests(state: dict[str, Any]) -> None:
    keys, unique = state["keys"], state["unique"]
    for title, fn in (
        ("edge cache hit", lambda k: state["hit"].infer(k, READ)),
        ("edge local path", lambda k: state["local"].infer(k, READ)),
        ("edge shard path, miss + fill", lambda k: state["miss"].infer(k, unique())),
    ):
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(10):
            for k in keys:
                fn(k)
        prof.disable()
        show_profile(f"{title} x {10 * len(keys):,}", prof, limit=10)


# -- main -------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(
        __doc__,
        argv,
        "fewer repeats (~10 s)",
        "also print cProfile tables of the request paths and MapHolder.offer",
    )
    p = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    header(p)
    rep = Report()
    key = signing_key()

    bench_import(p, rep)
    state = bench_requests(p, rep, key)
    bench_map_update(p, rep, key, args.profile)
    if args.profile:
        profile_requests(state)

    rep.finish(t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
