#!/usr/bin/env python
"""Count what stale clients get when a shard disappears or the registry is away, with a peer.

Run from the repository root (with the project's venv active)::

    python bench/bench_outages.py            # full run, ~30 s
    python bench/bench_outages.py --quick    # smoke run, ~6 s

An in-process fleet answers as the proxy does (the owner answers, a replica asked for failover
answers degraded, any other shard 421s to the owner) through a MockTransport; backoffs are not
slept. Each section puts the case of the routing-client outage work next to its peer, in the
same run:

1. **Removed shard.** A deploy replaces ``eu-2`` with ``eu-9``; clients still on the previous map
   send keys of ``eu-2``. Peer: the removed shard still answers ``421`` (a deployment that keeps
   it as a forwarder). Case: it is gone - the transport says "no such function", as
   ``LambdaTransport`` does for Lambda's ``ResourceNotFoundException``. Counted: who answered
   (the owner, a replica's degraded answer), errors, sends and fetches per request, and the
   latency of the first request of a stale client (the one that refreshes) and of the others.
2. **Registry away.** The registry cannot be read: while a shard redirects (peer: the registry
   answers), and after the map expired (peer: a fresh map), for the sync client, the asyncio
   client and the edge runtime. Counted: answers, and errors by class.
3. **Maps offered to the edge.** Undecodable, tampered, older and forged maps against newer
   genuine ones (peer): offered, refused, swapped in.

The last section lists the targets with PASS/MISS. Not part of the test suite; it only reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from _common import (
    NOW,
    TWO_REGIONS,
    Report,
    one_group_config,
    parse_args,
    print_header,
    print_table,
    ver,
)
from _common import signing_key as new_signing_key

import shardkit
from shardkit.edge import EdgeRuntime
from shardkit.protocol import Answer, Redirect
from shardkit.routing import (
    AsyncRoutingClient,
    MockTransport,
    RetryPolicy,
    RoutingClient,
    TransportError,
)
from shardkit.sharding.codec import encode_map
from shardkit.sharding.holder import MapHolder

V1 = ["eu-0", "eu-1", "eu-2", "eu-3"]
V2 = ["eu-0", "eu-1", "eu-9", "eu-3"]  # eu-2 replaced
POLICY = RetryPolicy(budget_floor=1e9)  # the budget is not what is measured here


@dataclass
class Params:
    clients: int  # stale clients per deployment in section 1
    per_client: int  # requests each
    requests: int  # requests per row in section 2
    offers: int  # bad maps of each kind in section 3
    genuine: int  # newer genuine maps in section 3


FULL = Params(clients=200, per_client=10, requests=1000, offers=1000, genuine=10)
QUICK = Params(clients=40, per_client=5, requests=200, offers=100, genuine=4)


@dataclass
class Maps:
    v1: shardkit.ShardMap
    v2: shardkit.ShardMap
    env1: bytes
    env2: bytes
    trusted: dict[str, bytes]
    key: Any


def config_of(ids: list[str]) -> Any:
    """One group, one replica per key, its shards over two regions (two failure domains)."""
    shards = [{"id": s, "region": TWO_REGIONS[int(s[3:]) % 2]} for s in ids]
    return one_group_config(shards, replicas=1, regions=TWO_REGIONS)


def build_maps() -> Maps:
    key = new_signing_key()
    v1 = shardkit.build_map(config_of(V1), now=NOW)
    v2 = shardkit.build_map(config_of(V2), v1, now=NOW + 1800)
    return Maps(
        v1,
        v2,
        encode_map(v1, key.key_id, key.sign),
        encode_map(v2, key.key_id, key.sign),
        {key.key_id: key.public_bytes},
        key,
    )


class Fleet:
    """The proxies of the map deployed last; ``gone``: removed shards no transport can reach."""

    def __init__(self, deployed: shardkit.ShardMap, gone: set[str]) -> None:
        self.map, self.gone, self.sends = deployed, gone, 0

    def send(self, shard: Any, request: dict[str, Any]) -> Any:
        self.sends += 1
        if shard.id in self.gone:
            raise TransportError(f"invoke {shard.id}: ResourceNotFoundException", missing=True)
        key, m = request["key"], self.map
        owner = m.route(key)
        answer = {"key": key}
        if owner.id == shard.id:
            return Answer(answer, shard.id, owner.epoch, m.version, 1).to_wire()
        if request.get("failover") and shard.id in {s.id for s in m.preference_list(key)}:
            return Answer(answer, shard.id, 0, m.version, 0, degraded=True).to_wire()
        return Redirect(owner.id, m.version).to_wire()


class Registry:
    def __init__(self, envelope: bytes) -> None:
        self.envelope, self.up, self.fetches = envelope, True, 0

    def fetch(self) -> bytes:
        self.fetches += 1
        if not self.up:
            raise ConnectionError("the registry does not answer (simulated)")
        return self.envelope


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def client_for(maps: Maps, fleet: Fleet, registry: Registry, clock: Clock) -> RoutingClient:
    """A client holding map version 1 (stale once version 2 is deployed)."""
    holder = MapHolder(maps.trusted, registry.fetch, clock=clock)
    holder.offer(maps.env1)
    return RoutingClient(holder, MockTransport(fleet.send), retry=POLICY, sleep=lambda s: None)


# -- 1. a removed shard ---------------------------------------------------------------------------


@dataclass
class Deployment:
    """One way the removed shard behaves, and what its stale clients got."""

    fleet: Fleet
    registry: Registry
    seen: Counter[str]
    first: list[float]  # latency of each stale client's first request (the one that refreshes)
    later: list[float]

    def run_client(self, maps: Maps, keys: list[str]) -> None:
        client = client_for(maps, self.fleet, self.registry, Clock(NOW + 60))
        for n, key in enumerate(keys):
            started = time.perf_counter()
            try:
                result = client.infer(key)
            except shardkit.ShardkitError as exc:
                self.seen[type(exc).__name__] += 1
                continue
            (self.first if n == 0 else self.later).append(time.perf_counter() - started)
            owner = result.shard == maps.v2.route(key).id and not result.degraded
            self.seen["owner" if owner else "degraded" if result.degraded else "other shard"] += 1


def removed_shard(p: Params, maps: Maps, rep: Report) -> None:
    keys = [k for k in (f"k{i}" for i in range(20 * p.per_client)) if maps.v1.route(k).id == "eu-2"]
    keys = (keys * p.per_client)[: p.per_client]
    runs = {
        label: Deployment(Fleet(maps.v2, gone), Registry(maps.env2), Counter(), [], [])
        for label, gone in (("forwarder 421 (peer)", set()), ("gone: no such function", {"eu-2"}))
    }
    for _ in range(p.clients):  # round-robin: drift hits both alike
        for run in runs.values():
            run.run_client(maps, keys)
    total = p.clients * len(keys)
    rows = []
    for label, run in runs.items():
        seen = run.seen
        rows.append(
            [
                label,
                total,
                seen["owner"],
                seen["degraded"],
                total - seen["owner"] - seen["degraded"],
                f"{run.fleet.sends / total:.2f}",
                f"{run.registry.fetches / p.clients:.2f}",
                f"{statistics.median(run.first) * 1e6:.0f}" if run.first else "-",
                f"{statistics.median(run.later) * 1e6:.0f}" if run.later else "-",
            ]
        )
    print_table(
        "1. Stale clients (map version 1) after eu-2 was replaced by eu-9: keys of eu-2",
        [
            "removed shard",
            "requests",
            "owner",
            "degraded",
            "errors",
            "sends/req",
            "fetches/client",
            "1st req us",
            "others us",
        ],
        rows,
        [
            "owner: answered by the key's owner in map version 2 (eu-9), not degraded;",
            "1st req: the request that finds the map stale and refreshes it (median, in-process).",
        ],
    )
    gone = runs["gone: no such function"].seen
    rep.target("removed shard: degraded answers", gone["degraded"], 0, "d", "")
    rep.target("removed shard: answered by the owner", gone["owner"], total, "d", "", True)


# -- 2. the registry away -------------------------------------------------------------------------


def registry_away(p: Params, maps: Maps, rep: Report) -> None:
    rows, raw = [], 0
    for case in ("redirect", "expired"):
        for up in (True, False):
            for by in ("sync", "async", "edge"):
                seen = one_row(p, maps, case, up, by)
                raw += sum(n for name, n in seen.items() if name.startswith("raw "))
                label = f"{case}, registry {'up (peer)' if up else 'away'}"
                errors = ", ".join(f"{n} {name}" for name, n in sorted(seen.items()) if name)
                rows.append([label, by, p.requests, seen.pop("", 0), errors or "-"])
    print_table(
        "2. The registry away: while a shard redirects, and after the map expired",
        ["case", "caller", "requests", "answered", "errors (by class)"],
        rows,
        ["raw: an exception that is not a ShardkitError (none is expected)."],
    )
    rep.target("registry away: non-ShardkitError exceptions", raw, 0, "d", "")


def one_row(p: Params, maps: Maps, case: str, up: bool, by: str) -> Counter[str]:
    clock = Clock(maps.v1.created_at + 60)
    fleet, registry = Fleet(maps.v2, set()), Registry(maps.env2)
    client = client_for(maps, fleet, registry, clock)
    if case == "expired":
        fleet.map, registry.envelope = maps.v1, maps.env1  # no deploy: version 1 is current
        if up:  # the peer: a fresh map is served (signed again, later)
            fresh = shardkit.build_map(config_of(V1), maps.v1, now=maps.v1.expires_at)
            registry.envelope = encode_map(fresh, maps.key.key_id, maps.key.sign)
            fleet.map = fresh
        clock.t = maps.v1.expires_at + 60
    registry.up = up
    keys = [f"k{i}" for i in range(p.requests)]
    seen: Counter[str] = Counter()
    edge = EdgeRuntime(client, background=lambda fn: fn() or True) if by == "edge" else None
    for key in keys:
        try:
            if edge is not None:
                edge.trust.safe_refresh() if case == "expired" else None
                edge.infer(key)
            elif by == "async":
                asyncio.run(AsyncRoutingClient(client).infer(key))
            else:
                client.infer(key)
            seen[""] += 1
        except shardkit.ShardkitError as exc:
            seen[type(exc).__name__] += 1
        except Exception as exc:  # what the issue saw escape: counted, never expected
            seen[f"raw {type(exc).__name__}"] += 1
        clock.t += 1.5  # past refetch_after_s: each request may fetch again
    return seen


# -- 3. maps offered to the edge ------------------------------------------------------------------


def offered_maps(p: Params, maps: Maps, rep: Report) -> None:
    impostor = new_signing_key("bench")  # the same key id, another key
    tampered = bytearray(maps.env2)
    tampered[-5] ^= 0xFF
    bad = {
        "undecodable": b"not a map",
        "tampered": bytes(tampered),
        "older": maps.env1,
        "forged (same key id)": encode_map(maps.v2, impostor.key_id, impostor.sign),
    }
    genuine, newer = [], maps.v2
    for n in range(p.genuine):  # building a map takes ~0.2 s: a few, offered in turn
        newer = shardkit.build_map(config_of(V2), newer, now=NOW + 1800 + n)
        genuine.append(encode_map(newer, maps.key.key_id, maps.key.sign))
    rows, refused_bad, offered_bad = [], 0, 0
    for label, envelopes in [
        ("newer genuine (peer)", genuine),
        *[(k, [v]) for k, v in bad.items()],
    ]:
        client = client_for(maps, Fleet(maps.v2, set()), Registry(maps.env1), Clock(NOW + 60))
        edge = EdgeRuntime(client)
        edge.offer(maps.env2)
        before = edge.stats()["map"]
        offered = len(envelopes) if label not in bad else p.offers
        for n in range(offered):
            with contextlib.suppress(shardkit.MapError):  # counted by the holder
                edge.offer(envelopes[n % len(envelopes)])
        after = edge.stats()["map"]
        refused, swaps = after["refused"] - before["refused"], after["swaps"] - before["swaps"]
        if label in bad:
            refused_bad, offered_bad = refused_bad + refused, offered_bad + offered
        rows.append([label, offered, refused, swaps, after["version"]])
        edge.close()
    print_table(
        "3. Maps offered to an edge holding version 2",
        ["map offered", "offered", "refused", "swaps", "version after"],
        rows,
        ["a bad map is verified (and refused) each time it is offered: its digest is not kept."],
    )
    rep.target("bad maps offered and not counted as refused", offered_bad - refused_bad, 0, "d", "")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__, argv, "fewer clients and requests (~6 s)")
    p = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    print_header(
        "shardkit outages benchmark",
        args.quick,
        {"packages": f"shardkit {ver('shardkit')}", "settings": str(p)},
    )
    rep = Report()
    maps = build_maps()
    removed_shard(p, maps, rep)
    registry_away(p, maps, rep)
    offered_maps(p, maps, rep)
    rep.finish(t_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
