"""A live reshard end to end on the local cloud: writers keep writing while the layout changes.

One eu group over eu-west-1 and eu-central-1. Writer threads send counted writes through the
RoutingClient (each write retried with its own request id until it is acknowledged) while
`shardkit deploy --local` adds a shard and removes a middle one, then re-weights and moves a
shard to the other region of its jurisdiction, and `shardkit rollback` goes back - with a
local-cloud worker killed once and the deploy process killed mid-migration once (after its
fence), then resumed. Two changes go in each deploy: the suite's time goes on deploys.
Afterwards every key's live state holds exactly its acknowledged writes, in order: nothing lost,
nothing applied twice, nothing older resurrected.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_end_to_end import Deployed, _deploy, _stop, cli, kill, wait_for, workers

from shardkit.deploy.client import client_for_project
from shardkit.errors import ShardkitError
from shardkit.proxy.state import partition
from shardkit.routing import InferenceError, RetryPolicy

pytestmark = pytest.mark.integration

CONFIG = """\
[project]
name = "reshard"
target = "local"

[hashing]
slot_bits = 8

[signing]
key_id = "reshard-dev"
keys_dir = ".shardkit/keys"
create_if_missing = true

[regions]
eu-west-1 = {{ jurisdiction = "eu" }}
eu-central-1 = {{ jurisdiction = "eu" }}

[residency]
default = "eu"

[groups.eu]
jurisdiction = "eu"
regions = ["eu-west-1", "eu-central-1"]
shards = [{shards}]
weights = {{ {weights} }}
concurrency = 4

[migration]
rollback_window_h = 0.0   # source copies are cleaned up by the next deploy

[proxy]
handler = "app.model:infer"
"""

MODEL = """\
def infer(key, payload, state):
    seen = list((state or {}).get("seen", [])) + [payload["n"]]
    return {"n": len(seen)}, {"seen": seen}
"""

RETRY = RetryPolicy(attempts=6, base_s=0.05, cap_s=0.4, budget_floor=1000.0, avoid_s=0.0)


def layout(root: Path, shards: list[tuple[str, str]], weights: str = "") -> None:
    listed = ", ".join(f'{{ id = "{s}", region = "{r}" }}' for s, r in shards)
    (root / "shardkit.toml").write_text(CONFIG.format(shards=listed, weights=weights))


class Writers:
    """Threads that each write their keys in turn; a write is retried (same request id, map
    refreshed) until acknowledged, so each key's acknowledged count is its exact history."""

    def __init__(self, root: Path, threads: int = 4, keys_each: int = 8) -> None:
        self.root = root
        self.keys = [[f"k{t}-{i}" for i in range(keys_each)] for t in range(threads)]
        self.acked: dict[str, int] = {k: 0 for ks in self.keys for k in ks}
        self.bad: list[str] = []
        self.retries = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(ks,)) for ks in self.keys]

    def _run(self, keys: list[str]) -> None:
        client = client_for_project(self.root, retry=RETRY)
        try:
            while not self.stop.is_set():
                for key in keys:
                    self._write(client, key)
        finally:
            client.close()

    def _write(self, client: Any, key: str) -> None:
        n = self.acked[key] + 1
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                result = client.infer(key, {"n": n}, request_id=f"{key}#{n}")
            except (InferenceError, ShardkitError):
                self.retries += 1
                time.sleep(0.1)
                with contextlib.suppress(ShardkitError):
                    client.holder.refresh()
                continue
            if (result.seq, result.answer) != (n, {"n": n}):
                self.bad.append(f"{key} #{n}: seq {result.seq}, answer {result.answer}")
            self.acked[key] = n
            return
        self.bad.append(f"{key} #{n}: not acknowledged in 90 s")

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)

    def progress(self, more: int) -> None:
        """Wait until ``more`` further writes were acknowledged."""
        target = sum(self.acked.values()) + more
        wait_for(lambda: sum(self.acked.values()) >= target, f"{more} more writes", timeout=120)


def deploy_killed_after_fence(root: Path) -> None:
    """`shardkit deploy` killed (SIGKILL) as soon as it reports a fence."""
    env = {**os.environ, "SHARDKIT_LOCAL_IDLE_TIMEOUT": "900"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardkit.cli.main", "deploy", str(root), "--yes", "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("{") and json.loads(line).get("phase") == "fence":
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)


def check(deployed: Deployed, writers: Writers, owner: Callable[[str], tuple[str, int]]) -> None:
    items = deployed.state_items()
    for key, n in writers.acked.items():
        region, slot = owner(key)
        live = [d for r, pk, seq, d in items[key] if r == region and pk == partition("eu", slot)]
        (state,) = live
        assert state["state"]["seen"] == list(range(1, n + 1)), key  # 0 lost, 0 twice, 0 stale


def test_writes_survive_every_kind_of_reshard_a_killed_worker_and_a_killed_deploy(
    tmp_path: Path,
) -> None:
    root = tmp_path / "reshard"
    (root / "app").mkdir(parents=True)
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "model.py").write_text(MODEL)
    west, central = "eu-west-1", "eu-central-1"
    layout(root, [("eu-0", west), ("eu-1", central), ("eu-2", west)])
    deployed = _deploy(root)
    try:
        with Writers(root) as writers:
            writers.progress(20)
            # add a shard and remove a middle one; a worker of eu-0 is killed while it runs
            layout(root, [("eu-0", west), ("eu-2", west), ("eu-3", central)])
            killer = threading.Timer(1.0, lambda: kill(workers(root, deployed.function("eu-0"))))
            killer.start()
            cli("deploy", str(root), "--yes", "--json")
            killer.join()
            writers.progress(20)
            # re-weight, and move eu-2 to the other region: the deploy is killed after its
            # fence, then resumed
            moved = [("eu-0", west), ("eu-2", central), ("eu-3", central)]
            layout(root, moved, '"eu-0" = 2.0')
            plan = json.loads(cli("plan", str(root), "--json").stdout)
            rows = {r["region"]: r for r in plan["migration"]}  # shown before anything is applied
            assert rows[central]["from"] == [west] and rows[central]["jurisdiction"] == "eu"
            assert rows[central]["copied"] > 0 and rows[central]["items"] > 0
            assert rows[west]["groups"] == ["eu"]  # the re-weight gives eu-0 more slots
            deploy_killed_after_fence(root)
            status = json.loads(cli("status", str(root), "--json").stdout)
            assert status["migration"] is not None and status["pending_applies"]
            cli("deploy", str(root), "--yes", "--json")
            writers.progress(20)
            # and back
            cli("rollback", str(root), "--yes", "--json")
            writers.progress(20)
        assert writers.bad == []
        client = client_for_project(root)
        try:
            final = client.holder.require()
        finally:
            client.close()
        assert {s.region for s in final.shards if s.id == "eu-2"} == {west}
        check(deployed, writers, lambda k: (final.route(k).region, final.slot(k)))
        cli("cleanup", str(root), "--now", "--yes", "--json")  # the copies the rollback left
        assert json.loads(cli("status", str(root), "--json").stdout)["cleanups"] == []
        check(deployed, writers, lambda k: (final.route(k).region, final.slot(k)))
        print(
            f"\n{sum(writers.acked.values())} writes acknowledged over "
            f"{len(writers.acked)} keys, {writers.retries} retries"
        )
    finally:
        _stop(root)
