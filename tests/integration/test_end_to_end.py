"""End to end through the real local cloud: `shardkit deploy --local`, then requests through
the routing client, the local gateway and the local executor's worker processes, with state in
the local DynamoDB.

Two projects: the copy of examples/quickstart (8 shards, 4 regions, the quickstart's own model)
that shardkit's pytest plugin deploys for the session, and a one-shard-per-jurisdiction probe
project deployed by this module whose model can
sleep, allocate memory, hold until told, and report its environment, to check that the executor
honours the function's configuration. The probe's finalizer stops its local cloud and checks
that neither its server nor any of its worker processes is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from botocore.config import Config

import shardkit
from shardkit.deploy.client import client_for_project
from shardkit.errors import ShardkitError
from shardkit.local import server
from shardkit.proxy.state import partition
from shardkit.routing import InferenceError, Result, RetryPolicy

pytestmark = pytest.mark.integration

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
#: The client of these tests never fails over to a replica: a throttled or killed owner is
#: retried (same request id) instead, so every answer is the owner's and is written. With the
#: default policy one throttle (8 threads against reserved concurrency 4) makes the owner
#: "avoided" for 5 s, and a replica answers the retry degraded, writing nothing.
OWNER_ONLY = RetryPolicy(attempts=8, base_s=0.05, cap_s=0.5, budget_floor=1000.0, avoid_s=0.0)


# -- processes -----------------------------------------------------------------------------------


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``shardkit ARGS`` in a subprocess; a failure shows its output."""
    env = {
        **os.environ,
        "SHARDKIT_LOCAL_IDLE_TIMEOUT": "900",
        "SHARDKIT_LOCAL_MAX_LIFETIME": "1800",
    }  # a crashed run cannot leave a server for long
    out = subprocess.run(
        [sys.executable, "-m", "shardkit.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert out.returncode == 0, f"shardkit {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out


def _proc_info(pid: str) -> tuple[str, str, dict[str, str]] | None:
    proc = Path("/proc") / pid
    try:
        state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        cwd = os.readlink(proc / "cwd")
        env = (proc / "environ").read_bytes().decode("utf-8", "replace").split("\0")
    except OSError:
        return None
    return state, cwd, dict(item.split("=", 1) for item in env if "=" in item)


def workers(root: Path, function: str | None = None) -> set[int]:
    """Live worker processes of the project's local functions (of ``function``, if given).

    A worker runs in its function's unpacked code, under ``.shardkit/local/code``; Lambda's
    ``AWS_LAMBDA_FUNCTION_NAME`` says whose it is.
    """
    code = str(root.resolve() / ".shardkit" / "local" / "code")
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        info = _proc_info(proc.name)
        if info is None:
            continue
        state, cwd, env = info
        if (
            state != "Z"
            and cwd.startswith(code)
            and (function is None or env.get("AWS_LAMBDA_FUNCTION_NAME") == function)
        ):
            found.add(int(proc.name))
    return found


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _gone(pid: int) -> bool:
    info = _proc_info(str(pid))
    return info is None or info[0] == "Z"


def _stop(root: Path) -> None:
    """`shardkit local down`, then: the server is gone and so is every worker it started."""
    pid = server.status(root)["pid"]  # None if the deploy failed before starting it
    cli("local", "down", str(root))
    try:
        if isinstance(pid, int):
            wait_for(lambda: _gone(pid), f"server {pid} to exit", timeout=15)
        wait_for(lambda: not workers(root), "the workers to exit", timeout=15)
    finally:
        kill(workers(root))
    assert server.status(root)["state"] == "stopped"


# -- projects ------------------------------------------------------------------------------------


@dataclass
class Deployed:
    root: Path
    outputs: dict[str, Any]
    _lambdas: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return str(self.outputs["project"])

    @property
    def regions(self) -> list[str]:
        return sorted(self.outputs["regions"])

    def function(self, shard: str) -> str:
        return f"shardkit-{self.name}-{shard}"

    def endpoint(self) -> str:
        return server.require(self.root)

    def gateway_lambda(self, region: str) -> Any:
        """A boto3 Lambda client on the local gateway's Invoke API; no botocore retries."""
        with self._lock:  # making clients of one session is not thread-safe
            if region not in self._lambdas:
                kwargs = server.boto3_client_kwargs(server.status(self.root)["gateway"])
                kwargs["config"] = kwargs["config"].merge(
                    Config(retries={"max_attempts": 1, "mode": "standard"}, read_timeout=60)
                )
                self._lambdas[region] = server.session().client(
                    "lambda", region_name=region, **kwargs
                )
            return self._lambdas[region]

    def state_items(self) -> dict[str, list[tuple[str, str, int, dict[str, Any]]]]:
        """Key -> every (region, partition, seq, data) state item of it in the project's tables
        (the slot records, one per slot, are left out)."""
        found: dict[str, list[tuple[str, str, int, dict[str, Any]]]] = {}
        table = f"shardkit-{self.name}-state"
        for region in self.regions:
            ddb = server.client("dynamodb", region, self.endpoint())
            pages = ddb.get_paginator("scan").paginate(
                TableName=table, ConsistentRead=True, FilterExpression="attribute_exists(seq)"
            )
            for page in pages:
                for item in page["Items"]:
                    key, pk = item["sk"]["S"], item["pk"]["S"]
                    data = msgpack.unpackb(item["data"]["B"], raw=False)
                    found.setdefault(key, []).append((region, pk, int(item["seq"]["N"]), data))
        return found


def _deploy(root: Path) -> Deployed:
    out = cli("deploy", str(root), "--local", "--yes", "--json")
    report = json.loads(out.stdout)
    return Deployed(root, report["outputs"])


@pytest.fixture(scope="module")
def quickstart(shardkit_project: Any) -> Deployed:
    """The quickstart, deployed by shardkit's pytest plugin (shardkit.testing): the copy that the
    quickstart's own tests and docs/testing.md's example use too, stopped at the session's end."""
    return Deployed(shardkit_project.root, shardkit_project.outputs)


PROBE_CONFIG = """\
[project]
name = "probe"
target = "local"

[hashing]
slot_bits = 8

[signing]
key_id = "probe-dev"
keys_dir = ".shardkit/keys"
create_if_missing = true

[regions]
us-east-1 = { jurisdiction = "us" }
eu-west-1 = { jurisdiction = "eu" }

[residency]
default = "us"
rules = [{ prefix = "eu:", jurisdiction = "eu" }]

[groups.us]          # timeout and memory limits
jurisdiction = "us"
regions = ["us-east-1"]
shards = 1
timeout_s = 3
memory_mb = 128

[groups.eu]          # one worker at most
jurisdiction = "eu"
regions = ["eu-west-1"]
shards = 1
concurrency = 1
timeout_s = 30

[proxy]
handler = "app.probe:infer"
"""

PROBE_MODEL = '''\
"""A model that misbehaves on request, to probe the local executor."""

import os
import time
from pathlib import Path

SEEN = ("SHARDKIT_SHARD", "SHARDKIT_TABLE", "AWS_LAMBDA_FUNCTION_NAME", "AWS_REGION",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE")


def infer(key, payload, state):
    op = payload.get("op")
    if op == "sleep":
        time.sleep(payload["s"])
        return {"slept": payload["s"]}, None
    if op == "alloc":
        blob = b"\\x01" * (payload["mb"] << 20)  # touches every page: resident
        time.sleep(3)
        return {"held": len(blob)}, None
    if op == "hold":
        Path(payload["path"] + ".started").touch()  # the worker is now busy with this request
        deadline = time.monotonic() + 30
        while not Path(payload["path"]).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return {"held": Path(payload["path"]).exists(), "pid": os.getpid()}, None
    if op == "env":
        return {"pid": os.getpid(), **{name: os.environ.get(name) for name in SEEN}}, None
    n = (state or {}).get("n", 0) + 1
    return {"n": n, "pid": os.getpid()}, {"n": n}
'''


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    root = tmp_path_factory.mktemp("e2e") / "probe"
    (root / "app").mkdir(parents=True)
    (root / "shardkit.toml").write_text(PROBE_CONFIG)
    (root / "app" / "__init__.py").write_text("")
    (root / "app" / "probe.py").write_text(PROBE_MODEL)
    try:
        yield _deploy(root)
    finally:
        _stop(root)


def invoke(
    deployed: Deployed, shard: str, region: str, key: str, payload: Any
) -> tuple[dict[str, Any], Any]:
    """Invoke a shard function through the gateway's Lambda API: (response, payload)."""
    response = deployed.gateway_lambda(region).invoke(
        FunctionName=deployed.function(shard),
        Qualifier="live",
        Payload=json.dumps({"key": key, "payload": payload}).encode(),
    )
    return response, json.loads(response["Payload"].read())


# -- the quickstart --------------------------------------------------------------------------------


def test_thousands_of_requests_go_to_owners_and_no_write_is_lost_or_doubled(
    quickstart: Deployed,
) -> None:
    tag = uuid.uuid4().hex[:6]
    keys = [f"eu:{tag}-{i}" if i % 2 else f"{tag}-{i}" for i in range(40)]
    rng = random.Random(2024)
    planned = Counter(rng.choice(keys) for _ in range(2000))
    results: dict[str, list[Result]] = {}
    errors: list[str] = []
    client = client_for_project(quickstart.root, retry=OWNER_ONLY)

    def run_key(key: str) -> None:
        got = results.setdefault(key, [])
        for n in range(1, planned[key] + 1):
            try:
                got.append(client.infer(key, {"text": "the shard owns the key", "seq": n}))
            except (InferenceError, ShardkitError) as exc:
                errors.append(f"{key} #{n}: {exc}")

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(run_key, planned))
        shard_map = client.holder.current
    finally:
        client.close()
    assert errors == []
    assert shard_map is not None
    items = quickstart.state_items()
    latencies = sorted(r.latency_s for rs in results.values() for r in rs)
    print(
        f"\n{len(latencies)} requests: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, retried "
        f"{sum(r.attempts > 1 for rs in results.values() for r in rs)}"
    )
    # Note: moto 5.2.5's transact_write_items restores a snapshot of the whole table when a
    # condition fails (a stale worker cache does that), undoing writes to other keys committed
    # meanwhile. Unless the local cloud serialises DynamoDB writes, a lost write can show here.
    for key, n in planned.items():
        owner = shard_map.route(key)
        got = results[key]
        assert [r.shard for r in got] == [owner.id] * n
        assert {(r.region, r.jurisdiction) for r in got} == {(owner.region, owner.jurisdiction)}
        assert [r.seq for r in got] == list(range(1, n + 1))  # acknowledged in order, once each
        assert not any(r.failover or r.redirected for r in got)
        ((region, pk, seq, data),) = items[key]  # one item: in its owner's table, nowhere else
        assert (region, pk, seq) == (owner.region, partition(owner.group, shard_map.slot(key)), n)
        assert data["state"]["count"] == n
        assert data["state"]["seqs"] == list(range(1, n + 1))[-256:]
    assert {owner.jurisdiction for owner in map(shard_map.route, planned)} == {"eu", "us"}


def test_an_old_client_is_redirected_once_after_a_reshard(quickstart: Deployed) -> None:
    root = quickstart.root
    old = client_for_project(root, retry=OWNER_ONLY)
    try:
        before = old.holder.require()
        text = (root / "shardkit.toml").read_text()
        head, sep, tail = text.partition("[groups.us]")
        assert sep and "shards = 4" in tail
        (root / "shardkit.toml").write_text(
            head + sep + tail.replace("shards = 4", "shards = 5", 1)
        )
        predicted = shardkit.build_map(shardkit.load_project(root).config, before)
        tag = uuid.uuid4().hex[:6]
        candidates = [
            k
            for k in (f"{tag}-{i}" for i in range(400))
            if predicted.route(k).id != before.route(k).id
        ]
        within = [k for k in candidates if predicted.route(k).region == before.route(k).region]
        across = [k for k in candidates if predicted.route(k).region != before.route(k).region]
        moved = [across[0], within[0], across[1]]  # keys moving within a region and across
        for key in moved:  # the old owners hold these keys, warm, before the reshard
            assert old.infer(key, {"text": "before", "seq": 1}).shard == before.route(key).id

        after = json.loads(cli("deploy", str(root), "--yes", "--json").stdout)["outputs"]
        new_version = after["map_version"]
        assert new_version > before.version and "us-4" in after["shards"]
        quickstart.outputs = after

        assert old.holder.version == before.version  # nobody told the old client
        results = [old.infer(key, {"text": "after", "seq": 2}) for key in moved]
        # The first is redirected by its old owner (its slot record moved on) and converges in
        # one hop; the redirect refreshed the client's map, so the others go straight to the owner.
        assert [(r.redirected, r.attempts) for r in results] == [(True, 2), (False, 1), (False, 1)]
        for key, result in zip(moved, results, strict=True):
            assert result.map_version == new_version == old.holder.version
            assert result.shard == predicted.route(key).id
            assert result.seq == 2  # the new owner carries on from the old owner's state
    finally:
        old.close()
    items = quickstart.state_items()
    for key in moved:
        copies = {region: data["state"]["seqs"] for region, _, _, data in items[key]}
        new, old_region = predicted.route(key).region, before.route(key).region
        assert copies[new] == [1, 2]
        # A slot that moved to another region leaves its old copy, untouched, until cleanup.
        assert copies == ({new: [1, 2]} if new == old_region else {new: [1, 2], old_region: [1]})


def test_a_killed_worker_is_replaced_and_a_retry_is_not_applied_twice(quickstart: Deployed) -> None:
    client = client_for_project(quickstart.root, retry=OWNER_ONLY)
    try:
        key = f"kill-{uuid.uuid4().hex[:6]}"
        owner = client.holder.require().route(key)
        function = quickstart.function(owner.id)
        first = client.infer(key, {"text": "one", "seq": 1}, request_id=f"{key}-r1")
        victims = workers(quickstart.root, function)
        assert victims and first.seq == 1
        kill(victims)
        wait_for(lambda: not workers(quickstart.root, function) & victims, "the kill")

        again = client.infer(key, {"text": "one", "seq": 1}, request_id=f"{key}-r1")
        fresh = workers(quickstart.root, function)
        assert fresh and not fresh & victims  # served by a new process
        assert (again.replayed, again.seq, again.answer) == (True, 1, first.answer)
        assert client.infer(key, {"text": "two", "seq": 2}).seq == 2
    finally:
        client.close()
    ((region, _, seq, data),) = quickstart.state_items()[key]
    assert (region, seq, data["state"]["seqs"], data["state"]["count"]) == (
        owner.region,
        2,
        [1, 2],
        2,
    )


def test_workers_killed_mid_traffic_never_apply_a_request_twice(quickstart: Deployed) -> None:
    client = client_for_project(quickstart.root, retry=OWNER_ONLY)
    key = f"chaos-{uuid.uuid4().hex[:6]}"
    owner = client.holder.require().route(key)
    function = quickstart.function(owner.id)
    done = threading.Event()
    killed: set[int] = set()
    acked: list[tuple[int, Result]] = []
    failed: list[int] = []

    rounds: list[int] = []

    def killer() -> None:
        """Four times, at a random moment: kill every worker of the owner's function."""
        rng = random.Random(5)
        while not done.wait(rng.uniform(0.2, 0.8)) and len(rounds) < 4:
            victims = workers(quickstart.root, function)
            if victims:
                kill(victims)
                killed.update(victims)
                rounds.append(len(victims))

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        n = 0
        while len(rounds) < 4 and n < 250:  # the state keeps the last 256 seqs: all of these
            n += 1
            try:
                acked.append((n, client.infer(key, {"text": "chaos", "seq": n})))
            except (InferenceError, ShardkitError):
                failed.append(n)
    finally:
        done.set()
        thread.join(10)
        client.close()
    print(
        f"\nkilled {len(killed)} workers; {len(acked)} acknowledged, {len(failed)} failed, "
        f"{sum(r.attempts > 1 for _, r in acked)} retried"
    )
    assert killed
    ((region, _, seq, data),) = quickstart.state_items()[key]
    applied = data["state"]["seqs"]
    assert region == owner.region
    assert len(applied) == len(set(applied)) == seq == data["state"]["count"]  # none twice
    assert applied == sorted(applied) and set(applied) <= set(range(1, n + 1))
    assert {n for n, _ in acked} <= set(applied)  # every acknowledged write is there...
    for n, result in acked:
        assert applied[result.seq - 1] == n  # ...at the position its answer reported


def test_emf_metrics_and_logs_reach_cloudwatch(quickstart: Deployed) -> None:
    client = client_for_project(quickstart.root, retry=OWNER_ONLY)
    try:
        results = [client.infer(f"emf-{i}", {"text": "metrics"}) for i in range(6)]
    finally:
        client.close()
    result = results[0]
    endpoint = quickstart.endpoint()
    cloudwatch = server.client("cloudwatch", result.region, endpoint)

    def shard_metrics() -> set[str] | None:
        names = set()
        for page in cloudwatch.get_paginator("list_metrics").paginate(Namespace="shardkit"):
            for metric in page["Metrics"]:
                dims = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
                if dims.get("shard") == result.shard:
                    names.add(metric["MetricName"])
        return names if {"requests", "latency"} <= names else None

    wait_for(shard_metrics, f"EMF metrics 'requests' and 'latency' of shard {result.shard}")
    logs = server.client("logs", result.region, endpoint)
    group = f"/aws/lambda/{quickstart.function(result.shard)}"

    def events() -> list[str]:
        out = []
        for stream in logs.describe_log_streams(logGroupName=group)["logStreams"]:
            out += [
                e["message"]
                for e in logs.get_log_events(
                    logGroupName=group, logStreamName=stream["logStreamName"]
                )["events"]
            ]
        return out

    messages = wait_for(events, f"log events in {group}")
    assert any('"_aws"' in m and result.shard in m for m in messages)


def test_the_invoke_and_traffic_commands_work(quickstart: Deployed) -> None:
    root = str(quickstart.root)
    rows = json.loads(cli("invoke", root, "user-1", "eu:anna", "--json").stdout)
    assert [r["key"] for r in rows] == ["user-1", "eu:anna"]
    assert [r["jurisdiction"] for r in rows] == ["us", "eu"]
    assert all(r["answer"]["count"] >= 1 for r in rows)
    report = json.loads(
        cli("traffic", root, "--requests", "120", "--keys", "12", "--threads", "4", "--json").stdout
    )
    assert (report["requests"], report["errors"]) == (120, 0)
    assert sum(row["requests"] for row in report["shards"].values()) == 120
    assert {r[:2] for r in report["regions"]} <= {"eu", "us"}


def test_traffic_through_the_edge_runtime_reports_every_path(quickstart: Deployed) -> None:
    report = json.loads(
        cli(
            "traffic",
            str(quickstart.root),
            "--edge",
            "--requests",
            "300",
            "--keys",
            "10",
            "--reads",
            "0.9",
            "--threads",
            "2",
            "--edge-region",
            "us-east-1",
            "--json",
        ).stdout
    )
    paths = report["paths"]
    assert (report["requests"], report["errors"]) == (300, 0)
    assert sum(p["requests"] for p in paths.values()) == 300
    assert abs(sum(p["share"] for p in paths.values()) - 1.0) < 1e-9
    assert paths["shard"]["requests"] > 0  # writes always go to the owning shard
    assert paths["cache"]["requests"] + paths["local"]["requests"] > 0  # reads are served nearby
    assert report["location"] == {"region": "us-east-1", "jurisdiction": "us"}


# -- the executor honours the function's configuration ---------------------------------------------


def test_a_worker_sees_its_functions_environment(probe: Deployed) -> None:
    client = client_for_project(probe.root, retry=OWNER_ONLY)
    try:
        us, eu = client.infer("user-1", {"op": "env"}), client.infer("eu:anna", {"op": "env"})
    finally:
        client.close()
    assert (us.shard, eu.shard) == ("us-0", "eu-0")
    assert us.answer["SHARDKIT_SHARD"] == "us-0" and eu.answer["SHARDKIT_SHARD"] == "eu-0"
    assert us.answer["AWS_LAMBDA_FUNCTION_NAME"] == probe.function("us-0")
    assert (us.answer["AWS_REGION"], eu.answer["AWS_REGION"]) == ("us-east-1", "eu-west-1")
    assert us.answer["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "128"
    assert us.answer["SHARDKIT_TABLE"] == "shardkit-probe-state"


def test_an_invoke_names_the_version_that_ran_and_ps_names_the_worker(probe: Deployed) -> None:
    """As real Lambda: ExecutedVersion is the version the alias resolved to, never the alias;
    and a worker's command line is the worker file and its function, not the worker's source."""
    response, reply = invoke(probe, "us-0", "us-east-1", "user-9", {"op": "env"})
    alias = server.client("lambda", "us-east-1", probe.endpoint()).get_alias(
        FunctionName=probe.function("us-0"), Name="live"
    )
    assert response["ExecutedVersion"] == alias["FunctionVersion"]
    assert alias["FunctionVersion"].isdigit()
    cmdline = Path(f"/proc/{reply['answer']['pid']}/cmdline").read_bytes().decode().split("\0")
    assert cmdline[1:-1] == [
        "-P",
        str(Path(server.__file__).with_name("worker.py")),
        f"us-east-1/{probe.function('us-0')}:{alias['FunctionVersion']}",
    ]


def test_a_timed_out_worker_is_replaced(probe: Deployed) -> None:
    _, warm = invoke(probe, "us-0", "us-east-1", "user-1", {"op": "env"})
    response, error = invoke(probe, "us-0", "us-east-1", "user-1", {"op": "sleep", "s": 20})
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Sandbox.Timedout" and "timed out" in error["errorMessage"]
    assert warm["answer"]["pid"] not in workers(probe.root)  # killed, not left running
    _, after = invoke(probe, "us-0", "us-east-1", "user-1", {"op": "env"})
    assert after["status"] == 200 and after["answer"]["pid"] != warm["answer"]["pid"]


def test_a_worker_over_its_memory_is_killed(probe: Deployed) -> None:
    _, warm = invoke(probe, "us-0", "us-east-1", "user-2", {"op": "env"})
    response, error = invoke(probe, "us-0", "us-east-1", "user-2", {"op": "alloc", "mb": 300})
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "Runtime.ExitError" and "memory" in error["errorMessage"]
    assert warm["answer"]["pid"] not in workers(probe.root)
    _, after = invoke(probe, "us-0", "us-east-1", "user-2", {"n": 1})
    assert after["status"] == 200 and after["answer"]["pid"] != warm["answer"]["pid"]


def test_reserved_concurrency_throttles_the_excess(probe: Deployed, tmp_path: Path) -> None:
    release = tmp_path / "release"
    lam = probe.gateway_lambda("eu-west-1")
    throttled = []
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(
            invoke, probe, "eu-0", "eu-west-1", "eu:held", {"op": "hold", "path": str(release)}
        )
        try:
            started = Path(str(release) + ".started")
            for _ in range(1200):  # the held request must occupy the one worker first
                if started.exists() or held.done():
                    break
                time.sleep(0.05)
            for _ in range(400):
                try:
                    invoke(probe, "eu-0", "eu-west-1", "eu:other", {"op": "env"})
                except lam.exceptions.TooManyRequestsException as exc:
                    throttled.append(exc.response)
                    break
                time.sleep(0.05)
        finally:
            release.touch()
        response, reply = held.result(timeout=60)
    assert throttled, "a second concurrent invoke was never throttled"
    assert throttled[0]["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert "FunctionError" not in response and reply["answer"]["held"] is True
    _, after = invoke(probe, "eu-0", "eu-west-1", "eu:other", {"op": "env"})
    assert after["status"] == 200  # the slot is free again


# -- durability ------------------------------------------------------------------------------------


def test_acknowledged_writes_survive_kill_9_of_the_local_cloud(probe: Deployed) -> None:
    client = client_for_project(probe.root, retry=OWNER_ONLY)
    tag = uuid.uuid4().hex[:6]
    keys = [f"{tag}-{i}" if i % 2 else f"eu:{tag}-{i}" for i in range(12)]
    acked: dict[str, int] = {}
    try:
        for n in range(3):
            for key in keys:
                acked[key] = client.infer(key, {"n": n}).seq  # each one acknowledged
    finally:
        client.close()
    pid = server.status(probe.root)["pid"]
    os.kill(pid, signal.SIGKILL)  # nothing is saved on the way out
    wait_for(lambda: _gone(pid), f"server {pid} to die")

    restored = cli("deploy", str(probe.root), "--yes")  # restarts it and restores the deployment
    assert (
        "local cloud restarted: restoring deployment" in restored.stderr
    )  # a notice, beside the output
    items = probe.state_items()
    assert {key: items[key][0][2] for key in keys} == acked == dict.fromkeys(keys, 3)
    client = client_for_project(probe.root, retry=OWNER_ONLY)
    try:  # and the proxies see the same items: the next write follows the last acknowledged one
        assert client.infer(keys[0], {"n": 3}).seq == 4
    finally:
        client.close()
