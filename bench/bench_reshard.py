#!/usr/bin/env python
"""Benchmark a live reshard on the local cloud: 64 shards, 100k keys holding state.

Run from the repository root (with the project's venv active)::

    python bench/bench_reshard.py            # 64 shards, 100k keys; ~10-20 min on a busy box
    python bench/bench_reshard.py --quick    # 16 shards, 10k keys

Two groups: ``us`` (32 shards, all in us-east-1: its moves are in-region) and ``eu`` (32 shards
over eu-west-1 and eu-central-1). After the first deploy, 100k keys get a state item each,
written straight into the owners' tables as the proxies write them. Then five reshards, each a
``shardkit deploy --local --yes --json`` subprocess (the last a ``shardkit rollback``), while 4
probe threads keep writing 256 probe keys through the RoutingClient:

1. in-region add: a 33rd us shard (every slot it takes moves within us-east-1);
2. cross-region move: one eu shard moves to the other eu region (all its slots are copied);
3. remove: a middle eu shard goes; 4. re-weight: one eu shard gets weight 2;
5. rollback: back to the layout before the re-weight.

Per scenario: slots moved (in place / copied), items copied, items/s over the migration's steps,
the deploy's wall time, how long writes to moving slots were blocked (each probe write that was
answered "moving" and retried: from its first attempt to its acknowledgement, p50/p99), probe
writes to non-moving slots that were blocked (must be 0), cold starts of the destination shards
after the switch (the proxies' ``cold_starts`` metric in CloudWatch), and lost or duplicated
writes (every probe key's stored history against its acknowledged writes, and every seeded key
still present at its owner: must be 0).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
from _common import PY, load_average, parse_args, pct, print_header, print_table, ver

import shardkit
from shardkit.deploy.client import client_for_project
from shardkit.errors import ShardkitError
from shardkit.local import server
from shardkit.proxy.state import partition
from shardkit.routing import InferenceError, RetryPolicy

WEST, CENTRAL, US = "eu-west-1", "eu-central-1", "us-east-1"
MODEL = """\
def infer(key, payload, state):
    seen = list((state or {}).get("seen", [])) + [payload["n"]]
    return {"n": len(seen)}, {"seen": seen}
"""
RETRY = RetryPolicy(attempts=8, base_s=0.05, cap_s=0.4, budget_floor=1000.0, avoid_s=0.0)
PROBE_KEYS = 256


def config(us: int, eu: list[tuple[str, str]], weights: str = "") -> str:
    listed = ", ".join(f'{{ id = "{s}", region = "{r}" }}' for s, r in eu)
    return f"""\
[project]
name = "bench-reshard"
target = "local"

[hashing]
slot_bits = 12

[signing]
key_id = "bench-dev"
keys_dir = ".shardkit/keys"
create_if_missing = true

[regions]
{US} = {{ jurisdiction = "us" }}
{WEST} = {{ jurisdiction = "eu" }}
{CENTRAL} = {{ jurisdiction = "eu" }}

[residency]
default = "us"
rules = [{{ prefix = "eu:", jurisdiction = "eu" }}]

[groups.us]
jurisdiction = "us"
regions = ["{US}"]
shards = {us}
concurrency = 8

[groups.eu]
jurisdiction = "eu"
regions = ["{WEST}", "{CENTRAL}"]
shards = [{listed}]
weights = {{ {weights} }}
concurrency = 8

[proxy]
handler = "app.model:infer"
"""


def shardkit_cli(root: Path, *args: str) -> tuple[float, dict[str, Any], list[tuple[float, dict]]]:
    """Run a command with --json: (wall s, its result, its migration events with arrival time)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [PY, "-m", "shardkit.cli.main", *args, str(root), "--yes", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    events: list[tuple[float, dict[str, Any]]] = []
    lines: list[str] = []

    def read_events() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "migration":  # a step's progress, not the plan's summary
                events.append((time.monotonic(), event))

    reader = threading.Thread(target=read_events)
    reader.start()
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.wait()
    reader.join()
    if proc.returncode:
        sys.exit(f"shardkit {' '.join(args)} failed:\n{out}\n{''.join(lines)}")
    return time.monotonic() - started, json.loads(out), events


def current_map(root: Path) -> shardkit.ShardMap:
    client = client_for_project(root)
    try:
        return client.holder.require()
    finally:
        client.close()


def seed(root: Path, shard_map: shardkit.ShardMap, keys: list[str]) -> None:
    """A state item for every key, in its owner's table, as the proxy writes it."""
    endpoint = server.require(root)
    table = "shardkit-bench-reshard-state"
    data = msgpack.packb({"state": {"seen": []}, "applied": {}}, use_bin_type=True)
    by_region: dict[str, list[dict[str, Any]]] = {}
    for key in keys:
        owner = shard_map.route(key)
        item = {
            "pk": {"S": partition(owner.group, shard_map.slot(key))},
            "sk": {"S": key},
            "seq": {"N": "0"},
            "data": {"B": data},
        }
        by_region.setdefault(owner.region, []).append({"PutRequest": {"Item": item}})

    def put(region: str, chunk: list[dict[str, Any]]) -> None:
        ddb = server.client("dynamodb", region, endpoint)
        while chunk:
            left = ddb.batch_write_item(RequestItems={table: chunk}).get("UnprocessedItems", {})
            chunk = left.get(table, [])

    with ThreadPoolExecutor(4) as pool:
        for region, requests in by_region.items():
            for i in range(0, len(requests), 25):
                pool.submit(put, region, requests[i : i + 25])


def stored(root: Path, regions: Sequence[str]) -> dict[tuple[str, str, str], int]:
    """(region, partition, key) -> seq of every state item."""
    endpoint = server.require(root)
    found = {}
    for region in regions:
        ddb = server.client("dynamodb", region, endpoint)
        pages = ddb.get_paginator("scan").paginate(
            TableName="shardkit-bench-reshard-state", FilterExpression="attribute_exists(seq)"
        )
        for page in pages:
            for i in page["Items"]:
                found[region, i["pk"]["S"], i["sk"]["S"]] = int(i["seq"]["N"])
    return found


@dataclass
class Probes:
    """Threads writing the probe keys in turn; each write retried (same request id) until
    acknowledged. Records each write's (key, blocked, started, seconds): blocked when the client
    backed off at least once (a ``503 moving`` or another retryable answer) or gave up and the
    write was sent again - a redirect followed at once is not a block."""

    root: Path
    keys: list[str]
    acked: dict[str, int] = field(default_factory=dict)
    writes: list[tuple[str, bool, float, float]] = field(default_factory=list)
    failed: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, keys: list[str]) -> None:
        client = client_for_project(self.root, retry=RETRY)
        try:
            while not self.stop.is_set():
                for key in keys:
                    self.write(client, key)
        finally:
            client.close()

    def write(self, client: Any, key: str) -> None:
        n = self.acked.get(key, 0) + 1
        started = time.monotonic()
        retries = client.stats()["counters"]["retries"]
        blocked = False
        while time.monotonic() - started < 120:
            try:
                client.infer(key, {"n": n}, request_id=f"{key}#{n}")
            except (InferenceError, ShardkitError):
                blocked = True
                with contextlib.suppress(ShardkitError):
                    client.holder.refresh()
                continue
            self.acked[key] = n
            blocked = blocked or client.stats()["counters"]["retries"] > retries
            self.writes.append((key, blocked, started, time.monotonic() - started))
            return
        self.failed += 1

    def during(self, action: Callable[[], Any]) -> Any:
        self.stop.clear()
        self.writes = []
        threads = [
            threading.Thread(target=self.run, args=(self.keys[i::4],), daemon=True)
            for i in range(4)
        ]
        for t in threads:
            t.start()
        try:
            return action()
        finally:
            time.sleep(1.0)  # the first requests after the switch, at the new owners
            self.stop.set()
            for t in threads:
                t.join(150)


def cold_starts(root: Path, shards: dict[str, str], since: float) -> int:
    """The ``cold_starts`` metric of ``shards`` ({id: region}) since ``since`` (epoch s)."""
    endpoint = server.require(root)
    total = 0.0
    for shard, region in shards.items():
        cw = server.client("cloudwatch", region, endpoint)
        points = cw.get_metric_statistics(
            Namespace="shardkit",
            MetricName="cold_starts",
            Dimensions=[
                {"Name": "shard", "Value": shard},
                {"Name": "service", "Value": "shardkit-bench-reshard"},
            ],
            StartTime=datetime.fromtimestamp(int(since), UTC),
            EndTime=datetime.fromtimestamp(int(time.time()) + 60, UTC),
            Period=60,
            Statistics=["Sum"],
        )["Datapoints"]
        total += sum(p["Sum"] for p in points)
    return int(total)


def scenario(
    name: str,
    root: Path,
    probes: Probes,
    command: str,
    text: str | None,
) -> list[Any]:
    old = current_map(root)
    if text is not None:
        (root / "shardkit.toml").write_text(text)
    since = time.time()
    wall, _, events = probes.during(lambda: shardkit_cli(root, command))
    new = current_map(root)
    moving = {
        k
        for k in probes.keys
        if (old.route(k).id, old.route(k).region) != (new.route(k).id, new.route(k).region)
    }
    phases = [e for _, e in events]
    in_place = sum(e["slots"] for e in phases if e["phase"] == "switch") - sum(
        e["slots_total"] for e in phases if e["phase"] == "fence"
    )
    copied_slots = sum(e["slots_total"] for e in phases if e["phase"] == "fence")
    items = sum(
        e["items"] for e in phases if e["phase"] in ("copy", "catch-up") and _last(e, phases)
    )
    copied, span = _copy_rate(events)
    blocked_moving = sorted(s for k, blocked, _, s in probes.writes if k in moving and blocked)
    blocked_still = sum(1 for k, blocked, _, s in probes.writes if k not in moving and blocked)
    destinations = {
        s.id: s.region for s in new.shards if any(new.route(k).id == s.id for k in moving)
    }
    cold = cold_starts(root, destinations, since) if destinations else 0
    return [
        name,
        f"{in_place}/{copied_slots}",
        f"{items:,}",
        f"{copied / span:,.0f}" if span and copied else "-",
        f"{wall:.1f}",
        f"{pct(blocked_moving, 0.5):.2f}/{pct(blocked_moving, 0.99):.2f}"
        if blocked_moving
        else "0/0",
        str(blocked_still),
        str(cold),
        str(len(probes.writes)),
    ]


def _copy_rate(events: list[tuple[float, dict[str, Any]]]) -> tuple[int, float]:
    """Items the bulk copies wrote and the seconds they took: per batch, from its prepare event
    (the step before the copy) to its last copy event."""
    items, span = 0, 0.0
    started: dict[tuple[str, str], float] = {}
    last: dict[tuple[str, str], tuple[float, int]] = {}
    for at, e in events:
        batch = (e["group"], e["region"])
        if e["phase"] == "prepare":
            started[batch] = at
        elif e["phase"] == "copy":
            last[batch] = (at, e["items"])
    for batch, (at, n) in last.items():
        items, span = items + n, span + at - started.get(batch, at)
    return items, span


def _last(event: dict[str, Any], phases: list[dict[str, Any]]) -> bool:
    """Copy events are cumulative per batch: only a batch's last one counts."""
    if event["phase"] != "copy":
        return True
    same = [
        e
        for e in phases
        if e["phase"] == "copy" and e["group"] == event["group"] and e["region"] == event["region"]
    ]
    return event is same[-1]


def main(argv: Sequence[str] | None = None) -> None:
    p = parse_args(__doc__, argv, "16 shards and 10k keys")
    half = 8 if p.quick else 32
    n_keys = 10_000 if p.quick else 100_000
    eu = [(f"eu-{i}", (WEST, CENTRAL)[i % 2]) for i in range(half)]
    print_header(
        "shardkit reshard benchmark",
        p.quick,
        {
            "packages": f"moto {ver('moto')}, boto3 {ver('boto3')}",
            "settings": f"{2 * half} shards (us: {half} in {US}; eu: {half} over {WEST} and "
            f"{CENTRAL}), slot_bits 12, {n_keys:,} keys with state, {PROBE_KEYS} probe keys "
            "written by 4 threads during each reshard",
        },
        load_label="load",
    )
    with tempfile.TemporaryDirectory(prefix="bench-reshard-") as tmp:
        root = Path(tmp) / "proj"
        (root / "app").mkdir(parents=True)
        (root / "app" / "__init__.py").write_text("")
        (root / "app" / "model.py").write_text(MODEL)
        (root / "shardkit.toml").write_text(config(half, eu))
        try:
            wall, _, _ = shardkit_cli(root, "deploy")
            print(f"\nfirst deploy: {wall:.1f} s")
            keys = [f"eu:s{i}" if i % 2 else f"s{i}" for i in range(n_keys)]
            started = time.monotonic()
            seed(root, current_map(root), keys)
            print(f"seeded {n_keys:,} keys in {time.monotonic() - started:.1f} s")
            probe_keys = [f"eu:p{i}" if i % 2 else f"p{i}" for i in range(PROBE_KEYS)]
            probes = Probes(root, probe_keys)
            moved = [(s, CENTRAL if s == "eu-0" else r) for s, r in eu]  # eu-0 leaves eu-west-1
            removed = [x for x in moved if x[0] != f"eu-{half // 2}"]
            steps = [
                ("in-region add", "deploy", config(half + 1, eu)),
                ("cross-region move", "deploy", config(half + 1, moved)),
                ("remove", "deploy", config(half + 1, removed)),
                ("re-weight", "deploy", config(half + 1, removed, '"eu-2" = 2.0')),
                ("rollback", "rollback", None),
            ]
            rows = [scenario(name, root, probes, cmd, text) for name, cmd, text in steps]
            final = current_map(root)
            items = stored(root, [US, WEST, CENTRAL])
            lost = sum(
                1
                for k in keys
                if (final.route(k).region, partition(final.route(k).group, final.slot(k)), k)
                not in items
            )
            wrong = sum(
                1
                for k, n in probes.acked.items()
                if items.get(
                    (final.route(k).region, partition(final.route(k).group, final.slot(k)), k)
                )
                != n
            )
        finally:
            subprocess.run([PY, "-m", "shardkit.cli.main", "local", "down", str(root)], check=False)
    print_table(
        "reshard scenarios (probe writes during each deploy)",
        [
            "scenario",
            "slots in place/copied",
            "items copied",
            "items/s",
            "wall s",
            "blocked moving p50/p99 s",
            "blocked non-moving",
            "cold starts",
            "probe writes",
        ],
        rows,
        notes=[
            f"seeded keys missing at their owner afterwards: {lost}; probe keys whose stored seq "
            f"differs from their acknowledged writes (lost or duplicated): {wrong}; probe writes "
            f"never acknowledged: {probes.failed}",
            "items copied: bulk copy + catch-up; items/s: the bulk copy's items over its time "
            "(per batch, from its prepare event to its last copy event); blocked: a write the client "
            "backed off for ('503 moving' or another retryable answer), first attempt to "
            "acknowledgement (a redirect followed at once is not a block)",
            f"load average at the end: {load_average()} (a shared machine: timings are noisy)",
        ],
    )


if __name__ == "__main__":
    main()
