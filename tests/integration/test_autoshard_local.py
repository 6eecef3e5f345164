"""The auto-shard loop on the real local cloud, nobody driving it: `shardkit deploy --local`
enables the schedule, the local cloud fires the controller function, which reads the proxies'
load records, splits the shard a burst of writes lands on and, once the burst is over, merges
back - each change a deploy whose migration keeps every key's state.

The policy is fast on purpose (2 s windows, 6 s cooldown) so the whole test takes about a minute
or two; what is checked is the outcome, never a timing: the shard count goes up during the burst
and back to ``min_shards`` after it, and every key's stored ``seq`` equals its acknowledged
writes (none lost, none applied twice).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest

from shardkit.autoshard.controller import DecisionLog
from shardkit.config import load_project
from shardkit.deploy.client import client_for_project
from shardkit.deploy.engine import Deployer
from shardkit.deploy.state import cached_record
from shardkit.deploy.targets import open_target
from shardkit.errors import ShardkitError
from shardkit.local import server
from shardkit.routing import InferenceError, RetryPolicy

pytestmark = pytest.mark.integration

CONFIG = """\
[project]
name = "auto"
target = "local"

[hashing]
slot_bits = 8

[signing]
key_id = "auto-dev"
keys_dir = ".shardkit/keys"
create_if_missing = true

[regions]
us-east-1 = { jurisdiction = "us" }

[residency]
default = "us"

[groups.us]
jurisdiction = "us"
regions = ["us-east-1"]
shards = 2
concurrency = 4

[groups.us.autoshard]
min_shards = 2
max_shards = 4
target_rps = 1.0
split_above = 1.2
split_windows = 2
merge_below = 0.6
merge_windows = 3
window_s = 2
cooldown_s = 6
churn_budget = 1.0

[proxy]
handler = "app.count:infer"
"""

MODEL = """\
def infer(key, payload, state):
    n = (state or {}).get("n", 0) + 1
    return {"n": n}, {"n": n}
"""
RETRY = RetryPolicy(attempts=10, base_s=0.05, cap_s=0.5, budget_floor=1000.0, avoid_s=0.0)


def cli(root: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHARDKIT_LOCAL_IDLE_TIMEOUT": "600", "SHARDKIT_LOCAL_MAX_LIFETIME": "900"}
    out = subprocess.run(
        [sys.executable, "-m", "shardkit.cli.main", *args, str(root)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert out.returncode == 0, f"shardkit {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "auto"
    (root / "app").mkdir(parents=True)
    (root / "shardkit.toml").write_text(CONFIG)
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "count.py").write_text(MODEL)
    try:
        cli(root, "deploy", "--yes", "--json")
        yield root
    finally:
        subprocess.run(
            [sys.executable, "-m", "shardkit.cli.main", "local", "down", str(root)],
            capture_output=True,
            timeout=120,
            check=False,
        )


def shard_count(root: Path) -> int:
    """The deployed map's us shards, from the deployment record's local copy (cheap: polled
    often)."""
    record = cached_record(root / ".shardkit", "local")
    return 0 if record is None else sum(1 for s in record.shards() if s.startswith("us-"))


class Writer:
    """Writes to keys from threads; records every acknowledged answer and every error."""

    def __init__(self, root: Path) -> None:
        self.client = client_for_project(root, retry=RETRY)
        self.acked: dict[str, list[int]] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def write(self, key: str) -> None:
        """One write, asked again while a shard refuses it (a 421 or 503 writes nothing); an
        answer is acknowledged, anything else an error."""
        for _ in range(20):
            try:
                result = self.client.infer(key, {"op": "add"})
            except InferenceError as exc:
                if exc.status in (421, 503):
                    time.sleep(0.1)
                    continue
                self._error(f"{key}: {exc}")
            except ShardkitError as exc:
                self._error(f"{key}: {exc}")
            else:
                with self._lock:
                    self.acked.setdefault(key, []).append(result.seq)
            return
        self._error(f"{key}: still refused after 20 attempts")

    def _error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)

    def run(
        self, keys: list[str], until: Callable[[], bool], *, threads: int, pause_s: float
    ) -> None:
        """Write round-robin over ``keys`` from ``threads`` threads (each pausing ``pause_s``
        between writes) until ``until()`` holds; at most two minutes."""
        done = threading.Event()

        def loop(offset: int) -> None:
            i = offset
            while not done.is_set():
                self.write(keys[i % len(keys)])
                i += threads
                time.sleep(pause_s)

        workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        try:
            deadline = time.monotonic() + 120
            while not until():
                assert time.monotonic() < deadline, "the controller did not act in time"
                time.sleep(0.5)
        finally:
            done.set()
            for w in workers:
                w.join()


def stored(root: Path) -> dict[str, int]:
    """Every key's stored seq, from the local DynamoDB."""
    ddb = server.client("dynamodb", "us-east-1", server.require(root))
    out: dict[str, int] = {}
    pages = ddb.get_paginator("scan").paginate(
        TableName="shardkit-auto-state",
        ConsistentRead=True,
        FilterExpression="attribute_exists(seq)",
    )
    for page in pages:
        for item in page["Items"]:
            assert item["sk"]["S"] not in out, f"{item['sk']['S']} is stored twice"
            msgpack.unpackb(item["data"]["B"], raw=False)
            out[item["sk"]["S"]] = int(item["seq"]["N"])
    return out


def local_deployer(project: Path) -> Deployer:
    loaded = load_project(project)
    return Deployer(loaded, open_target(loaded, local=True))


def test_a_burst_splits_its_shard_and_the_calm_after_merges_back(project: Path) -> None:
    writer = Writer(project)
    try:
        shard_map = writer.client.holder.require()
        hot = [k for k in (f"k{i}" for i in range(400)) if shard_map.route(k).id == "us-0"][:40]
        calm = [f"c{i}" for i in range(20)]
        assert shard_count(project) == 2

        # the burst: us-0's keys as fast as 4 writers go (many times its 1 request/s target)
        writer.run(hot, lambda: shard_count(project) > 2, threads=4, pause_s=0.0)
        # the calm: a trickle (< 0.5 requests/s) over other keys until it merges back to 2
        writer.run(calm, lambda: shard_count(project) == 2, threads=1, pause_s=2.0)
    finally:
        writer.client.close()

    assert writer.errors == []
    shown = json.loads(cli(project, "status", "--json").stdout)["autoshard"]
    decisions = DecisionLog.of(local_deployer(project)).entries()  # in the home bucket
    start = decisions.index(shown[0])  # the controller may have gone on since
    assert shown == decisions[start : start + len(shown)]  # `shardkit status`: the last ones
    applied = [set(d["actions"]) for d in decisions if d["outcome"] == "applied"]
    print("\n".join(f"{d['at']:.0f} {d['outcome']}: {d['reasons'][-1]}" for d in decisions))
    assert any(a & {"split", "isolate"} for a in applied), applied
    assert any("merge" in a for a in applied), applied
    keys = stored(project)
    for key, seqs in writer.acked.items():
        assert seqs == list(range(1, len(seqs) + 1)), key  # each acknowledged once, in order
        assert keys[key] == len(seqs), key  # 0 lost, 0 applied twice
    assert set(keys) == set(writer.acked)
