#!/usr/bin/env python
"""Benchmark shardkit's shard map against uhashring and plain jump hash.

Run from the repository root (with the project's venv active)::

    python bench/bench_map.py            # full run, ~30 s
    python bench/bench_map.py --quick    # smoke run, ~10 s
    python bench/bench_map.py --profile  # also cProfile the shardkit hot paths

Everything is measured in one process, one run: single-key routing, batch routing, balance,
key movement on add/remove, and map build / encode / decode times and sizes. All timings are
medians over repeats (the minimum is shown next to some of them). The last section lists the
targets with PASS/MISS. See bench/README.md for what every column means.

This is not part of the test suite and never fails on a MISS: it only reports.
"""

from __future__ import annotations

import cProfile
import math
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jump
import numpy as np
import xxhash
from _common import (
    NOW,
    TWO_REGIONS,
    Report,
    loop_calls,
    no_gc,
    one_group_config,
    parse_args,
    print_header,
    print_table,
    quickstart_config,
    show_profile,
    signing_key,
    ver,
)
from uhashring import HashRing

import shardkit
from shardkit.sharding.codec import decode_map, encode_map, residency_problem

N = 64  # shard count of the main comparison
KiB = 1024

# uhashring has two rings, both documented as "ketama compatible": the default constructor
# (MetaRing: md5, 160 vnodes per node) and hash_fn="ketama" (KetamaRing: md5, 40 vnodes x 4
# points per node). Both are measured; ratios use the FASTER of the two, i.e. the one that is
# hardest for shardkit to beat.
UHASH_VARIANTS: dict[str, dict[str, Any]] = {
    "uhashring HashRing()": {},
    "uhashring HashRing(hash_fn='ketama')": {"hash_fn": "ketama"},
}


@dataclass(frozen=True)
class Params:
    quick: bool
    single_batch: int  # keys per timed batch of single-key calls
    single_repeats: int
    batch_keys: int
    batch_repeats: int
    balance_keys: int  # keys for the balance and movement sections
    build_repeats: int


FULL = Params(False, 10_000, 21, 100_000, 15, 1_000_000, 9)
QUICK = Params(True, 10_000, 7, 100_000, 5, 200_000, 3)


# -- output ---------------------------------------------------------------------------------------


def header(params: Params) -> None:
    header_lines = {
        "packages": f"shardkit {shardkit.__version__}, numpy {np.__version__}, xxhash "
        f"{xxhash.VERSION}, jump-consistent-hash {ver('jump-consistent-hash')} "
        f"(C ext: {jump.c_hash is not None}), uhashring {ver('uhashring')}",
        "settings": f"single-key: {params.single_repeats} x {params.single_batch:,} calls; "
        f"batch: {params.batch_repeats} x {params.batch_keys:,} keys; "
        f"balance/movement: {params.balance_keys:,} keys; builds: "
        f"{params.build_repeats}",
    }
    print_header("shardkit map benchmark", params.quick, header_lines)


# -- configs and keys -----------------------------------------------------------------------------


def plain_keys(n: int) -> list[str]:
    return [f"user:{i}" for i in range(n)]


def mixed_keys(n: int, seed: int = 7) -> list[str]:
    """Half the keys carry the "eu:" prefix (-> eu), the other half match no rule (-> us)."""
    rng = random.Random(seed)
    return [("eu:" if rng.random() < 0.5 else "") + f"user:{i}" for i in range(n)]


def shard_ids(n: int) -> list[str]:
    return [f"g-{i}" for i in range(n)]


def plain_jump_buckets(hashes: Sequence[int], n: int) -> np.ndarray:
    jh = jump.hash
    return np.fromiter((jh(h, n) for h in hashes), dtype=np.int64, count=len(hashes))


def xxh_list(keys: Sequence[str]) -> list[int]:
    return list(map(xxhash.xxh64_intdigest, map(str.encode, keys)))


# -- timing ---------------------------------------------------------------------------------------


def interleaved(
    cases: Sequence[tuple[str, Callable[[], Any]]], repeats: int
) -> dict[str, list[int]]:
    """Time every case ``repeats`` times, round-robin (so drift hits every case alike); ns."""
    samples: dict[str, list[int]] = {name: [] for name, _ in cases}
    for _, fn in cases:
        fn()  # warm-up: caches, lazy imports, branch predictors
    with no_gc():
        for _ in range(repeats):
            for name, fn in cases:
                t0 = time.perf_counter_ns()
                fn()
                samples[name].append(time.perf_counter_ns() - t0)
    return samples


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Milliseconds per call for ``repeats`` calls (after one warm-up call), and the last result."""
    out: list[float] = []
    result = fn()
    with no_gc():
        for _ in range(repeats):
            t0 = time.perf_counter_ns()
            result = fn()
            out.append((time.perf_counter_ns() - t0) / 1e6)
    return out, result


def loop_calls_n(f: Callable[[str, int], Any], keys: list[str], n: int) -> Callable[[], None]:
    def run(f: Callable[[str, int], Any] = f, keys: list[str] = keys, n: int = n) -> None:
        for k in keys:
            f(k, n)

    return run


def loop_plain_jump(keys: list[str], n: int) -> Callable[[], None]:
    def run(
        keys: list[str] = keys, xx: Any = xxhash.xxh64_intdigest, jh: Any = jump.hash, n: int = n
    ) -> None:
        for k in keys:
            jh(xx(k.encode()), n)

    return run


def loop_empty(keys: list[str]) -> Callable[[], None]:
    def run(keys: list[str] = keys) -> None:
        for _k in keys:
            pass

    return run


def fmt_ns(x: float) -> str:
    return f"{x:,.0f}"


# -- 1. single-key routing ------------------------------------------------------------------------


def bench_single(p: Params, rep: Report, m64: Any, mqs: Any) -> None:
    keys = plain_keys(p.single_batch)
    mixed = mixed_keys(p.single_batch)
    rings = {
        (name, n): HashRing(nodes=shard_ids(n), **kw)
        for name, kw in UHASH_VARIANTS.items()
        for n in (N, 8)
    }
    # (label, shards, callable loop, uhashring node count to compare with)
    cases: list[tuple[str, str, Callable[[], None], int | None]] = [
        ("shardkit route(), 64 shards, 1 jurisdiction", "64", loop_calls(m64.route, keys), N),
        (
            "shardkit route(), quickstart: 2 jurisdictions + 'eu:' rule",
            "8",
            loop_calls(mqs.route, mixed),
            8,
        ),
        (
            "shardkit stateless_shard(key, 64)",
            "64",
            loop_calls_n(shardkit.stateless_shard, keys, N),
            N,
        ),
        ("plain jump.hash(xxh64(key.encode()), 64), inlined", "64", loop_plain_jump(keys, N), N),
    ]
    for name in UHASH_VARIANTS:
        cases.append(
            (f"{name}.get_node, 64 nodes", "64", loop_calls(rings[name, N].get_node, keys), N)
        )
        cases.append(
            (
                f"{name}.get_node, 8 nodes (mixed keys)",
                "8",
                loop_calls(rings[name, 8].get_node, mixed),
                8,
            )
        )
    cases.append(("empty loop (for k in keys: pass)", "-", loop_empty(keys), None))

    samples = interleaved([(c[0], c[2]) for c in cases], p.single_repeats)
    per_call = {name: [s / p.single_batch for s in v] for name, v in samples.items()}
    med = {name: statistics.median(v) for name, v in per_call.items()}
    empty = med["empty loop (for k in keys: pass)"]
    best_uhash = {
        n: min(
            med[f"{name}.get_node, {n} nodes" + (" (mixed keys)" if n == 8 else "")]
            for name in UHASH_VARIANTS
        )
        for n in (N, 8)
    }
    rows = []
    for label, shards, _, n in cases:
        ratio = f"{best_uhash[n] / med[label]:.2f}x" if n is not None else ""
        rows.append(
            [
                label,
                shards,
                fmt_ns(med[label]),
                fmt_ns(min(per_call[label])),
                fmt_ns(med[label] - empty) if n is not None else "",
                ratio,
            ]
        )
    print_table(
        f"1. Single-key routing (ns per call; {p.single_repeats} repeats of "
        f"{p.single_batch:,} calls, Python for-loop)",
        ["case", "shards", "median ns", "min ns", "median-loop", "uhashring/this"],
        rows,
        notes=[
            "median-loop: median minus the empty-loop cost, i.e. the call alone",
            "uhashring/this: the faster uhashring variant with the same node count, divided by "
            "this row (how many times faster than uhashring)",
        ],
    )
    for label, short in ((cases[0][0], "64 shards"), (cases[1][0], "quickstart")):
        rep.target(f"route() median, {short}", med[label], 250, ",.0f", "ns")
    for label, n, short in ((cases[0][0], N, "64 shards"), (cases[1][0], 8, "quickstart")):
        rep.target(
            f"route() speed-up over uhashring, {short}",
            best_uhash[n] / med[label],
            5.0,
            ".2f",
            "x",
            higher_is_better=True,
        )


# -- 2. batch routing -----------------------------------------------------------------------------


def bench_batch(p: Params, rep: Report, m64: Any, mqs: Any) -> None:
    keys = plain_keys(p.batch_keys)
    mixed = mixed_keys(p.batch_keys)
    # Same answers as route(), key for key (also warms the cached flat tables).
    for m, ks in ((m64, keys), (mqs, mixed)):
        sample = ks[:2000]
        assert m.route_many(sample) == [m.route(k) for k in sample]
        assert [m.shards[i] for i in m.route_indices(sample).tolist()] == m.route_many(sample)
    ring = {name: HashRing(nodes=shard_ids(N), **kw) for name, kw in UHASH_VARIANTS.items()}
    xx, jh = xxhash.xxh64_intdigest, jump.hash
    cases: list[tuple[str, str, Callable[[], Any]]] = [
        (
            "shardkit route_indices(), 64 shards, 1 jurisdiction",
            "plain",
            lambda: m64.route_indices(keys),
        ),
        ("shardkit route_many(), 64 shards, 1 jurisdiction", "plain", lambda: m64.route_many(keys)),
        (
            "shardkit route_indices(), quickstart, 2 jurisdictions",
            "mixed",
            lambda: mqs.route_indices(mixed),
        ),
        (
            "shardkit route_many(), quickstart, 2 jurisdictions",
            "mixed",
            lambda: mqs.route_many(mixed),
        ),
        (
            "shardkit [route(k) for k in keys], 64 shards",
            "plain",
            lambda: [m64.route(k) for k in keys],
        ),
        (
            "plain [jump.hash(xxh64(k.encode()), 64) for k in keys]",
            "plain",
            lambda: [jh(xx(k.encode()), N) for k in keys],
        ),
    ]
    for name in UHASH_VARIANTS:
        cases.append(
            (
                f"{name}: list(map(get_node, keys)), 64 nodes",
                "plain",
                lambda r=ring[name]: list(map(r.get_node, keys)),
            )
        )
    samples = interleaved([(c[0], c[2]) for c in cases], p.batch_repeats)
    per_key = {name: [s / p.batch_keys for s in v] for name, v in samples.items()}
    med = {name: statistics.median(v) for name, v in per_key.items()}
    best_uhash = min(med[c[0]] for c in cases if c[0].startswith("uhashring"))
    rows = [
        [
            label,
            kind,
            f"{med[label] * p.batch_keys / 1e6:,.2f}",
            f"{med[label]:,.1f}",
            f"{min(per_key[label]):,.1f}",
            f"{best_uhash / med[label]:.1f}x",
        ]
        for label, kind, _ in cases
    ]
    print_table(
        f"2. Batch routing from Python str ({p.batch_keys:,} keys per call, "
        f"{p.batch_repeats} repeats)",
        ["case", "keys", "median ms", "ns/key", "min ns/key", "uhashring/this"],
        rows,
        notes=[
            "keys: plain = 'user:<i>' (one jurisdiction); mixed = half 'eu:user:<i>' (eu), "
            "half 'user:<i>' (default us)",
            "uhashring/this: the faster uhashring variant's ns/key divided by this row's",
        ],
    )
    for label, short in (
        (cases[0][0], "route_indices, 1 jurisdiction"),
        (cases[2][0], "route_indices, 2 jurisdictions"),
        (cases[1][0], "route_many, 1 jurisdiction"),
        (cases[3][0], "route_many, 2 jurisdictions"),
    ):
        rep.target(f"batch {short}", med[label], 100, ",.1f", "ns/key")


# -- 3. balance and 4. movement -------------------------------------------------------------------


def balance_row(label: str, counts: np.ndarray, k: int) -> list[str]:
    mean = k / len(counts)
    cv = float(np.std(counts) / mean)
    floor = math.sqrt((len(counts) - 1) / k)
    return [
        label,
        str(len(counts)),
        f"{k:,}",
        f"{int(counts.min()):,}",
        f"{int(counts.max()):,}",
        f"{counts.max() / mean:.4f}",
        f"{cv:.5f}",
        f"{cv / floor:.2f}",
    ]


def bench_balance_movement(p: Params, rep: Report, m64: Any) -> None:
    k = p.balance_keys
    keys = plain_keys(k)
    ids = shard_ids(N)
    hashes = xxh_list(keys)

    # shardkit: the 64-shard map, then +1 shard, and -1 middle shard (g-32), both from m64.
    mid = f"g-{N // 2}"
    one_region = [{"id": s, "region": "eu-west-1"} for s in ids]
    m_add = shardkit.build_map(one_group_config(N + 1), m64, now=NOW + 1)
    m_rm = shardkit.build_map(
        one_group_config([s for s in one_region if s["id"] != mid]), m64, now=NOW + 1
    )
    universe = {s: i for i, s in enumerate(shard_ids(N + 1))}

    def owners(m: Any) -> np.ndarray:
        code = np.array([universe[s.id] for s in m.shards], dtype=np.int64)
        return code[m.route_indices(keys)]

    sk_before, sk_add, sk_rm = owners(m64), owners(m_add), owners(m_rm)

    def slot_moves(m: Any) -> float:
        old, new = m64.groups["g"].primary, m.groups["g"].primary
        return sum(a.id != b.id for a, b in zip(old, new, strict=True)) / len(old)

    # uhashring: route every key before, after add_node, after remove_node (fresh rings).
    uh: dict[str, tuple[list[str], list[str], list[str]]] = {}
    for name, kw in UHASH_VARIANTS.items():
        ring = HashRing(nodes=ids, **kw)
        before = list(map(ring.get_node, keys))
        ring.add_node(f"g-{N}")
        after_add = list(map(ring.get_node, keys))
        ring = HashRing(nodes=ids, **kw)
        ring.remove_node(mid)
        after_rm = list(map(ring.get_node, keys))
        uh[name] = (before, after_add, after_rm)

    # plain jump: buckets are list positions; removing position 32 means renumbering.
    j64, j65, j63 = (plain_jump_buckets(hashes, n) for n in (N, N + 1, N - 1))
    j_renumber = np.where(j63 >= N // 2, j63 + 1, j63)  # new list = ids without g-32
    j_swap = np.where(j63 == N // 2, N - 1, j63)  # new list = ids with g-63 moved into g-32's place

    # sanity: shardkit's stateless mode is exactly plain jump over xxh64-v1
    assert all(
        shardkit.stateless_shard(key, N) == int(b)
        for key, b in zip(keys[:2000], j64[:2000], strict=True)
    )

    # -- 3. balance
    rows = [
        balance_row("shardkit ShardMap (16,384 slots)", np.bincount(sk_before, minlength=N), k),
        balance_row("plain jump / shardkit stateless_shard", np.bincount(j64, minlength=N), k),
    ]
    for name, (before, _, _) in uh.items():
        counter = Counter(before)
        rows.append(balance_row(name, np.array([counter[s] for s in ids]), k))
    floor = math.sqrt((N - 1) / k)
    rows.append(
        ["perfect hash floor (multinomial)", str(N), f"{k:,}", "", "", "", f"{floor:.5f}", "1.00"]
    )
    print_table(
        f"3. Balance: keys per shard, N={N}, K={k:,} keys 'user:<i>'",
        ["implementation", "N", "K", "min", "max", "max/mean", "CV", "CV/floor"],
        rows,
        notes=[
            f"CV = stdev/mean of keys per shard; floor = sqrt((N-1)/K) = {floor:.5f} is what "
            "a perfect random hash gives (sampling noise alone)",
            "shardkit slots per shard are exact (16384/64 = 256 each); its key CV is only the "
            "sampling noise",
        ],
    )

    # -- 4. movement
    ideal_add, ideal_rm = 1 / (N + 1), 1 / N
    # 2-sigma sampling noise of a key-measured fraction, expressed in units of the ideal
    noise_add = 2 * math.sqrt(ideal_add * (1 - ideal_add) / k) / ideal_add
    noise_rm = 2 * math.sqrt(ideal_rm * (1 - ideal_rm) / k) / ideal_rm

    def row(
        label: str, change: str, moved: float, ideal: float, exact: float | None = None
    ) -> list[str]:
        return [
            label,
            change,
            f"{moved:.5f}",
            f"{ideal:.5f}",
            f"{moved / ideal:.3f}x",
            f"{exact:.5f}" if exact is not None else "",
            f"{exact / ideal:.4f}x" if exact is not None else "",
        ]

    sk_add_frac = float(np.mean(sk_before != sk_add))
    sk_rm_frac = float(np.mean(sk_before != sk_rm))
    add_slots, rm_slots = slot_moves(m_add), slot_moves(m_rm)
    rows = [
        row(
            "shardkit build_map(previous=...)",
            f"add g-{N} (64->65)",
            sk_add_frac,
            ideal_add,
            add_slots,
        ),
        row(
            "shardkit build_map(previous=...)",
            f"remove {mid} (64->63)",
            sk_rm_frac,
            ideal_rm,
            rm_slots,
        ),
    ]
    for name, (before, after_add, after_rm) in uh.items():
        rows.append(
            row(
                f"{name} add_node",
                f"add g-{N} (64->65)",
                sum(a != b for a, b in zip(before, after_add, strict=True)) / k,
                ideal_add,
            )
        )
        rows.append(
            row(
                f"{name} remove_node",
                f"remove {mid} (64->63)",
                sum(a != b for a, b in zip(before, after_rm, strict=True)) / k,
                ideal_rm,
            )
        )
    rows += [
        row("plain jump", f"add g-{N} (64->65)", float(np.mean(j64 != j65)), ideal_add),
        row(
            "plain jump, renumber (list without g-32)",
            f"remove {mid} (64->63)",
            float(np.mean(j64 != j_renumber)),
            ideal_rm,
        ),
        row(
            "plain jump, move g-63 into g-32's bucket",
            f"remove {mid} (64->63)",
            float(np.mean(j64 != j_swap)),
            ideal_rm,
        ),
        row(
            "plain jump, drop the LAST bucket (g-63)",
            "remove g-63 (64->63)",
            float(np.mean(j64 != j63)),
            ideal_rm,
        ),
    ]
    print_table(
        f"4. Movement: fraction of {k:,} keys that change owner",
        ["implementation", "change", "moved", "ideal", "moved/ideal", "slots moved", "slots/ideal"],
        rows,
        notes=[
            "ideal = 1/65 for an add (the new shard's fair share), 1/64 for a remove (the "
            "removed shard's keys)",
            f"key-measured fractions carry sampling noise: +/-{noise_add:.3f}x (add) and "
            f"+/-{noise_rm:.3f}x (remove) of the ideal at 2 sigma for K={k:,}",
            "slots moved: shardkit's exact fraction of the 16,384 slots whose owner changed; "
            "with a uniform hash this is the expected key fraction, free of sampling noise",
            "plain jump can only drop its last bucket cheaply; removing a middle shard means "
            "renumbering (or, at best, moving the last shard into the hole: ~2x ideal)",
        ],
    )
    rep.target(
        "movement on add, shardkit (exact slots)", add_slots / ideal_add, 1.02, ".4f", "x ideal"
    )
    rep.target(
        "movement on remove, shardkit (exact slots)", rm_slots / ideal_rm, 1.02, ".4f", "x ideal"
    )
    rep.target(
        f"movement on add, shardkit (keys, +/-{noise_add:.3f} noise)",
        sk_add_frac / ideal_add,
        1.02,
        ".4f",
        "x ideal",
    )
    rep.target(
        f"movement on remove, shardkit (keys, +/-{noise_rm:.3f} noise)",
        sk_rm_frac / ideal_rm,
        1.02,
        ".4f",
        "x ideal",
    )


# -- 5. build, encode, decode ---------------------------------------------------------------------


def bench_build(p: Params, rep: Report, key: Any) -> None:
    trusted = {key.key_id: key.public_bytes}
    cases = [
        ("64 shards, replicas=0", one_group_config(64, 0, TWO_REGIONS), 64, 0),
        ("64 shards, replicas=1", one_group_config(64, 1, TWO_REGIONS), 64, 1),
        ("1024 shards, replicas=0", one_group_config(1024, 0, TWO_REGIONS), 1024, 0),
        ("1024 shards, replicas=1", one_group_config(1024, 1, TWO_REGIONS), 1024, 1),
        ("quickstart: 2 groups x 4 shards, replicas=1", quickstart_config(), 8, 1),
    ]
    rows = []
    for label, config, n, replicas in cases:
        builds, m = timed(lambda c=config: shardkit.build_map(c, now=NOW), p.build_repeats)
        rebuilds, _ = timed(
            lambda c=config, m=m: shardkit.build_map(c, m, now=NOW + 1), p.build_repeats
        )
        encodes, data = timed(lambda m=m: encode_map(m, key.key_id, key.sign), p.build_repeats)
        decodes, back = timed(lambda d=data: decode_map(d, trusted, now=NOW + 60), p.build_repeats)
        assert back.to_dict(tables=True) == m.to_dict(tables=True)
        groups = {g.name: g.jurisdiction for g in back.groups.values()}
        checks, _ = timed(
            lambda b=back, g=groups: residency_problem(b.shards, b.regions, g), p.build_repeats
        )
        b = statistics.median(builds)
        rows.append(
            [
                label,
                str(n),
                str(replicas),
                f"{b:,.1f}",
                f"{min(builds):,.1f}",
                f"{statistics.median(rebuilds):,.1f}",
                f"{statistics.median(encodes):,.2f}",
                f"{len(data):,}",
                f"{len(data) / KiB:,.1f}",
                f"{statistics.median(decodes):,.2f}",
                f"{statistics.median(checks):,.3f}",
            ]
        )
        if n == 1024:
            rep.target(f"build_map, 1024 shards, replicas={replicas}", b, 50, ",.1f", "ms")
            rep.target(
                f"encoded size, 1024 shards, replicas={replicas}",
                len(data) / KiB,
                256,
                ",.1f",
                "KiB",
            )
    print_table(
        f"5. Build, encode, decode+verify ({p.build_repeats} repeats, median ms; "
        "slot_bits=14; regions eu-west-1 + eu-central-1, failure_domain=region)",
        [
            "map",
            "shards",
            "replicas",
            "build ms",
            "min ms",
            "rebuild ms",
            "encode ms",
            "bytes",
            "KiB",
            "decode ms",
            "of which residency ms",
        ],
        rows,
        notes=[
            "build: build_map(config) from a validated ProjectConfig (validation not included)",
            "rebuild: build_map(config, previous=map), the incremental path of every deploy",
            "encode: encode_map (msgpack + ed25519 sign); bytes: the signed envelope",
            "decode: decode_map (ed25519 verify + msgpack + canonical re-encode check)",
            "of which residency: the check that every shard's region and jurisdiction agree "
            "with the map's regions table and its group (residency_problem), timed alone",
        ],
    )


# -- profiling ------------------------------------------------------------------------------------


def profile(label: str, fn: Callable[[], Any], limit: int = 14) -> None:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    show_profile(label, prof, limit)


def bench_profile(m64: Any, mqs: Any, key: Any) -> None:
    keys = plain_keys(100_000)
    mixed = mixed_keys(100_000)
    c1024 = one_group_config(1024, 1, TWO_REGIONS)
    m1024 = shardkit.build_map(c1024, now=NOW)
    data = encode_map(m1024, key.key_id, key.sign)
    trusted = {key.key_id: key.public_bytes}

    def routes() -> None:
        route = m64.route
        for k in keys:
            route(k)

    def routes_mixed() -> None:
        route = mqs.route
        for k in mixed:
            route(k)

    profile("100,000 x ShardMap.route (64 shards)", routes)
    profile("100,000 x ShardMap.route (quickstart, mixed keys)", routes_mixed)
    profile("ShardMap.route_many(100,000 keys), 64 shards", lambda: m64.route_many(keys))
    profile(
        "ShardMap.route_indices(100,000 mixed keys), quickstart", lambda: mqs.route_indices(mixed)
    )
    profile("build_map, 1024 shards, replicas=1", lambda: shardkit.build_map(c1024, now=NOW))
    profile("decode_map, 1024 shards, replicas=1", lambda: decode_map(data, trusted, now=NOW + 60))


# -- main -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(
        __doc__,
        argv,
        "fewer repeats and keys (~10 s)",
        "also print cProfile tables for route, route_many, build and decode",
    )
    p = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    header(p)

    rep = Report()
    m64 = shardkit.build_map(one_group_config(N), now=NOW)
    mqs = shardkit.build_map(quickstart_config(), now=NOW)
    key = signing_key()

    bench_single(p, rep, m64, mqs)
    bench_batch(p, rep, m64, mqs)
    bench_balance_movement(p, rep, m64)
    bench_build(p, rep, key)
    if args.profile:
        bench_profile(m64, mqs, key)

    rep.finish(t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
