"""A reshard through the deploy engine on moto, in-process: the live migration's plan steps.

The eu group starts with eu-0 and eu-1 in eu-west-1; the reshard moves eu-1 to eu-central-1 (the
other region of its jurisdiction), so its slots' state is copied across regions. State is written
as the proxies write it (:class:`StateStore` over the region's table); what the tables hold is
read with plain boto3. The SLO guard reads CloudWatch, where the test puts the errors of a
failing new shard.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

import shardkit
from shardkit.config import Project
from shardkit.deploy.engine import Deployer
from shardkit.deploy.plan import Step
from shardkit.errors import ApplyFailedError, MigrationAbortedError
from shardkit.proxy.state import StateStore
from shardkit.proxy.table import DynamoTable

WEST, CENTRAL = "eu-west-1", "eu-central-1"
KEYS = [f"eu:user-{i}" for i in range(300)]


def config(small_config: dict[str, Any]) -> dict[str, Any]:
    small_config["regions"][CENTRAL] = {"jurisdiction": "eu"}
    small_config["groups"]["eu"].update(
        regions=[WEST, CENTRAL],
        shards=[{"id": "eu-0", "region": WEST}, {"id": "eu-1", "region": WEST}],
    )
    return small_config


def move_eu1(data: dict[str, Any]) -> None:
    data["groups"]["eu"]["shards"][1]["region"] = CENTRAL


class Keys:
    """Writes keys as their owner's proxy does, and reads them back."""

    def __init__(self, project: Project) -> None:
        self.table = f"shardkit-{project.config.project.name}-state"
        self.acked: dict[str, int] = {}

    def store(self, shard: shardkit.Shard) -> StateStore:
        client = boto3.client("dynamodb", region_name=shard.region)
        return StateStore(DynamoTable(client, self.table), shard.id, cache_size=0)

    def write(self, shard_map: shardkit.ShardMap, keys: list[str]) -> None:
        for key in keys:
            owner, slot = shard_map.route(key), shard_map.slot(key)
            store = self.store(owner)
            before = store.load("eu", slot, key)
            request = f"r{before.seq + 1}-{key}"
            store.save("eu", slot, key, before, before.seq + 1, request, "ok")
            self.acked[key] = self.acked.get(key, 0) + 1

    def seqs(self, shard_map: shardkit.ShardMap) -> dict[str, tuple[int, bool]]:
        """Each key's seq at its owner, and whether its last request id travelled with it."""
        out = {}
        for key in self.acked:
            state = self.store(shard_map.route(key)).load("eu", shard_map.slot(key), key)
            out[key] = (state.seq, f"r{state.seq}-{key}" in state.applied)
        return out

    def items(self, region: str) -> set[str]:
        client = boto3.client("dynamodb", region_name=region)
        pages = client.get_paginator("scan").paginate(TableName=self.table)
        return {i["sk"]["S"] for p in pages for i in p["Items"] if i["sk"]["S"] in self.acked}


def published(project: Project) -> shardkit.ShardMap:
    body = (
        boto3.client("s3", region_name=WEST)
        .get_object(
            Bucket=f"shardkit-{project.config.project.name}-123456789012-{WEST}",
            Key="registry/map.skm",
        )["Body"]
        .read()
    )
    return shardkit.decode_map(body, shardkit.load_trusted_keys(project.keys_dir))


def deployed_with_state(
    project: Project, deployer: Callable[[Project], Deployer]
) -> tuple[Project, shardkit.ShardMap, Keys]:
    """The project deployed, and every key of :data:`KEYS` written once."""
    d = deployer(project)
    d.apply(d.plan())
    v1 = published(project)
    keys = Keys(project)
    keys.write(v1, KEYS)
    return project, v1, keys


def test_a_shard_moved_across_regions_takes_its_state_and_a_rollback_brings_it_back(
    make_project: Callable[..., Project],
    small_config: dict[str, Any],
    rewrite: Callable[..., Project],
    deployer: Callable[[Project], Deployer],
) -> None:
    project, v1, keys = deployed_with_state(make_project(config(small_config)), deployer)
    moving = [k for k in KEYS if v1.route(k).id == "eu-1"]
    staying = [k for k in KEYS if v1.route(k).id == "eu-0"]

    events: list[dict[str, Any]] = []
    d = deployer(rewrite(project, move_eu1))
    d.events = events.append
    plan = d.plan()
    migrate = [(s.region, s.name) for s in plan.steps if s.action == "migrate"]
    assert migrate == [(CENTRAL, "eu:prepare"), (CENTRAL, "eu:copy"), (CENTRAL, "eu:cutover")]
    (row,) = d.migration_summary(plan)
    slots = sum(1 for s in v1.groups["eu"].primary if s.id == "eu-1")
    assert (row["jurisdiction"], row["region"], row["from"]) == ("eu", CENTRAL, [WEST])
    assert (row["in_place"], row["copied"], row["items"]) == (0, slots, len(moving))
    d.apply(plan)
    v2 = published(project)
    assert {v2.route(k).region for k in moving} == {CENTRAL}

    assert keys.seqs(v2) == {k: (1, True) for k in KEYS}  # state and request ids travelled
    phases = [e["phase"] for e in events]
    assert phases[:2] == ["prepare", "copy"] and phases[-1] == "switch"
    assert [e["items"] for e in events if e["phase"] == "copy"][-1] == len(moving)
    fenced = [e for e in events if e["phase"] == "fence"]
    assert fenced == [
        {"phase": "fence", "group": "eu", "region": CENTRAL, "slots": slots, "slots_total": slots}
    ]
    status = d.status()
    (pending,) = status["cleanups"]
    assert status["migration"] is None and 3500 < pending["window_left_s"] <= 3600
    assert not any(s.action == "migrate" for s in d.plan().steps)  # not due: nothing to clean

    keys.write(v2, moving[:40] + staying[:10])  # acknowledged after the reshard
    rollback = d.plan_rollback()
    assert [s.name for s in rollback.steps if s.action == "migrate"] == [
        "eu:prepare",
        "eu:copy",
        "eu:cutover",
    ]
    d.apply(rollback)
    v3 = published(project)
    assert {v3.route(k).region for k in moving} == {WEST}
    seqs = keys.seqs(v3)
    assert seqs == {k: (keys.acked[k], True) for k in KEYS}  # nothing older came back
    assert {k for k, (seq, _) in seqs.items() if seq == 2} == set(moving[:40] + staying[:10])

    # the copies left in eu-central-1 by the rollback wait for their window; --now deletes them
    # (and the west copies the first move left are live again: their cleanup deletes nothing)
    cleanup = d.plan_cleanup(now=True)
    assert [s.name for s in cleanup.steps] == ["eu:cleanup", "eu:cleanup"]
    assert keys.items(CENTRAL) == set(moving)
    d.apply(cleanup)
    assert keys.items(CENTRAL) == set() and keys.items(WEST) == set(KEYS)
    assert d.status()["cleanups"] == [] and d.record().deployment == 3
    assert keys.seqs(v3) == seqs


def test_the_slo_guard_aborts_a_migration_whose_new_shards_fail(
    make_project: Callable[..., Project],
    small_config: dict[str, Any],
    rewrite: Callable[..., Project],
    deployer: Callable[[Project], Deployer],
) -> None:
    project, v1, keys = deployed_with_state(make_project(config(small_config)), deployer)
    moving = [k for k in KEYS if v1.route(k).id == "eu-1"]

    def fail_new_shard(step: Step, event: str) -> None:
        """eu-1 in eu-central-1 answers errors as soon as the cutover begins."""
        if step.action == "migrate" and step.name == "eu:cutover" and event == "start":
            boto3.client("cloudwatch", region_name=CENTRAL).put_metric_data(
                Namespace="shardkit",
                MetricData=[
                    {
                        "MetricName": name,
                        "Dimensions": [
                            {"Name": "shard", "Value": "eu-1"},
                            {"Name": "service", "Value": f"shardkit-{project.config.project.name}"},
                        ],
                        "Timestamp": datetime.now(UTC),
                        "Value": value,
                        "Unit": "Count",
                    }
                    for name, value in (("requests", 50.0), ("errors", 30.0))
                ],
            )

    events: list[dict[str, Any]] = []
    d = deployer(rewrite(project, move_eu1))
    d.progress, d.events = fail_new_shard, events.append
    plan = d.plan()
    with pytest.raises(ApplyFailedError, match="error budget was exceeded before fence") as failed:
        d.apply(plan)
    assert isinstance(failed.value.__cause__, MigrationAbortedError)
    assert not [e for e in events if e.get("event") == "paused"]  # "abort" does not pause
    aborted = events[-1]
    assert aborted["phase"] == "aborted" and aborted["switched"] == 0
    assert published(project).version == v1.version  # the new map never went out
    keys.write(v1, moving)  # the old owner serves every moving slot again
    assert keys.seqs(v1) == {k: (keys.acked[k], True) for k in KEYS}
    assert d.record().status == "failed" and d.status()["migration"]["version"] > v1.version
