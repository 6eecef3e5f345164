"""The auto-shard controller on moto, in-process: load records in the state tables -> a decision
-> a deploy that splits (or merges) and keeps every slot record right; and a later
``shardkit deploy`` that keeps the layout the controller chose.

The records are what proxies write (:func:`shardkit.proxy.load.load_item`), made from exact
per-slot counts, so the controller reads, aggregates and decides exactly as it would on AWS.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from test_cli_simulate import cli  # the CLI in-process: (stdout, stderr), exit code checked

import shardkit
from shardkit.autoshard.controller import Controller, DecisionLog, Round
from shardkit.config import Project
from shardkit.deploy.engine import Deployer
from shardkit.errors import AutoshardError, PlanningError
from shardkit.proxy.load import load_item, summarize
from shardkit.proxy.table import DynamoTable, Put

Deploy = Callable[[Project], Deployer]
T0 = 1_800_000_000.0  # window starts are multiples of window_s
WINDOW = 10.0
POLICY = {
    "min_shards": 1,
    "max_shards": 4,
    "target_rps": 10.0,
    "split_above": 1.2,
    "split_windows": 2,
    "merge_below": 0.6,
    "merge_windows": 2,
    "window_s": WINDOW,
    "cooldown_s": 0.0,
    "churn_budget": 1.0,
}


def autoshard_config(small_config: dict[str, Any], **policy: Any) -> dict[str, Any]:
    small_config["groups"]["eu"]["autoshard"] = {**POLICY, **policy}
    return small_config


def deploy(d: Deployer) -> None:
    d.apply(d.plan())


def write_load(
    project: Project, shard_map: shardkit.ShardMap, start: float, rps: dict[str, float]
) -> None:
    """One window's load record per eu shard, as that shard's proxy would write it: ``rps``
    requests/s spread evenly over the shard's slots, 20 ms each."""
    table = DynamoTable(boto3.client("dynamodb", "eu-west-1"), "shardkit-quickstart-state")
    group = shard_map.groups["eu"]
    for shard, rate in rps.items():
        slots = [i for i, s in enumerate(group.primary) if s.id == shard]
        total = int(rate * WINDOW)
        reqs = {
            slot: total // len(slots) + (i < total % len(slots)) for i, slot in enumerate(slots)
        }
        ms = {slot: 20.0 * n for slot, n in reqs.items()}
        record = summarize(
            f"{shard}/i", start, WINDOW, shard_map.version, {(shard, "eu"): (reqs, ms)}, 32
        )
        table.write(Put(load_item("eu", record)))


def eu_shards(d: Deployer) -> list[str]:
    current = d.deployed_map()
    assert current is not None
    return [s.id for s in current.groups["eu"].shards()]


@pytest.fixture
def project(make_project: Callable[..., Project], small_config: dict[str, Any]) -> Project:
    """The small project with an autoshard policy on its eu group (not deployed yet)."""
    return make_project(autoshard_config(small_config))


def deployed(d: Deployer, load: dict[str, float]) -> shardkit.ShardMap:
    """Deploy, then write three windows of ``load`` (requests/s per eu shard)."""
    deploy(d)
    before = d.deployed_map()
    assert before is not None and eu_shards(d) == ["eu-0", "eu-1"]
    for w in range(3):
        write_load(d.project, before, T0 + w * WINDOW, load)
    return before


def tick(d: Deployer, now: float, **kw: Any) -> Round:
    (r,) = Controller(d, **kw).tick(now)
    return r


def test_a_hot_shard_splits_by_deploy_and_a_later_deploy_keeps_the_layout(
    project: Project, rewrite: Callable[..., Project], deployer: Deploy
) -> None:
    d = deployer(project)
    before = deployed(d, {"eu-0": 30.0, "eu-1": 5.0})

    r = tick(d, T0 + 4 * WINDOW)

    assert r.outcome == "applied" and "split" in r.decision.actions, r.decision.reasons
    after = d.deployed_map()
    assert after is not None and r.map_version == after.version == before.version + 1
    assert len(eu_shards(d)) > 2
    diff = shardkit.diff_maps(before, after)
    assert {m.source for m in diff.moves} == {"eu-0"}  # only the hot shard gives slots away
    assert set(diff.added) == set(eu_shards(d)) - {"eu-0", "eu-1"}
    functions = boto3.client("lambda", "eu-west-1").list_functions()["Functions"]
    assert {f"shardkit-quickstart-{s}" for s in eu_shards(d)} <= {
        f["FunctionName"] for f in functions
    }
    assert DecisionLog.of(d).entries()[-1]["outcome"] == "applied"

    # `shardkit deploy` of the unchanged project: the controller's layout stays, nothing to do
    again = deployer(rewrite(project, lambda data: None))
    assert again.plan().is_noop
    # a change elsewhere (memory) deploys without resetting the layout to `shards = 2`
    bigger = deployer(rewrite(project, lambda data: data["groups"]["eu"].update(memory_mb=1024)))
    plan = bigger.plan()
    assert plan.map_envelope is None
    # the package carries the configuration the controller acts on: a new one is uploaded
    assert {s.action for s in plan.steps} == {"upload", "update"}
    bigger.apply(plan)
    assert eu_shards(bigger) == eu_shards(d)
    # the fixed group still follows its configured count, exactly as without a policy
    more_us = deployer(rewrite(project, lambda data: data["groups"]["us"].update(shards=3)))
    deploy(more_us)
    current = more_us.deployed_map()
    assert current is not None
    assert [s.id for s in current.groups["us"].shards()] == ["us-0", "us-1", "us-2"]
    assert eu_shards(more_us) == eu_shards(d)


def test_cold_shards_merge_back_and_dry_run_changes_nothing(
    project: Project, deployer: Deploy
) -> None:
    d = deployer(project)
    before = deployed(d, {"eu-0": 1.0, "eu-1": 1.0})

    dry = tick(d, T0 + 4 * WINDOW, dry_run=True)
    assert dry.outcome == "dry run" and "merge" in dry.decision.actions
    assert d.deployed_map().version == before.version  # type: ignore[union-attr]

    r = tick(d, T0 + 4 * WINDOW + 1)
    assert r.outcome == "applied", r.decision.reasons
    assert len(eu_shards(d)) == 1
    assert [e["outcome"] for e in DecisionLog.of(d).entries()] == ["dry run", "applied"]


def test_the_controller_refuses_what_it_cannot_do(
    project: Project, rewrite: Callable[..., Project], deployer: Deploy
) -> None:
    d = deployer(project)
    with pytest.raises(AutoshardError, match="not deployed yet"):
        Controller(d).tick(T0)
    deploy(d)
    # no records yet: a round that says so, and changes nothing
    r = tick(d, T0)
    assert (r.outcome, r.decision.reasons) == ("no change", ("no load window yet",))
    # a replica change on an autoshard group is refused, not silently dropped or reset
    with pytest.raises(PlanningError, match="replicas"):
        change = {"replicas": 1, "failure_domain": "shard"}
        deployer(rewrite(project, lambda data: data["groups"]["eu"].update(change))).plan()


# -- the CLI --------------------------------------------------------------------------------------


def test_the_autoshard_command_logs_each_decision_and_status_shows_them(
    project: Project, deployer: Deploy, capsys: pytest.CaptureFixture[str]
) -> None:
    d = deployer(project)
    before = deployed(d, {"eu-0": 30.0, "eu-1": 5.0})
    (line,) = cli(capsys, "autoshard", project.root, "--once", "--dry-run", "--json")[
        0
    ].splitlines()
    # those windows (at T0) are not closed on the real clock yet: a round now uses none
    assert json.loads(line)["reasons"] == ["no load window yet"]
    for w in range(3):  # the same load, in windows the real clock has just closed
        write_load(project, before, (int(time.time() / WINDOW) - 4 + w) * WINDOW, {"eu-0": 30.0})

    out, _ = cli(capsys, "autoshard", project.root, "--once", "--dry-run")
    assert "eu: split" in out and "dry run" in out and "slots move" in out
    assert d.deployed_map().version == before.version  # type: ignore[union-attr]

    out, _ = cli(capsys, "status", project.root)
    assert "auto-shard: last 2 decisions" in out and "(dry run)" in out
    status = json.loads(cli(capsys, "status", project.root, "--json")[0])
    assert [e["outcome"] for e in status["autoshard"]] == ["no change", "dry run"]


def test_the_autoshard_command_refuses_bad_use(
    make_project: Callable[..., Project], capsys: pytest.CaptureFixture[str], moto: None
) -> None:
    fixed = make_project()  # no policy
    _, err = cli(capsys, "autoshard", fixed.root, code=2)
    assert err.startswith("error: say --once (one round) or --watch")
    _, err = cli(capsys, "autoshard", fixed.root, "--once", code=2)
    assert "no group of quickstart has an autoshard policy" in err and " — " in err


# -- the scheduled function, as AWS runs it --------------------------------------------------------

CONTROL = "shardkit-quickstart-autoshard"


class LambdaContext:
    """What Lambda hands the handler: little time left, so the tick runs one round."""

    def get_remaining_time_in_millis(self) -> int:
        return 6_000


@pytest.fixture
def as_lambda(
    project: Project, deployer: Deploy, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[Deployer, shardkit.ShardMap, Any]:
    """The project deployed, hot load written in windows the real clock has closed, and the
    process made to look like the controller function: its configuration's environment, its
    code package unpacked as the task root, a working directory with no project in it."""
    import io
    import zipfile

    from shardkit.autoshard import carried

    d = deployer(project)
    deploy(d)
    before = d.deployed_map()
    assert before is not None
    # hot windows up to two ahead of the clock: a round a window or two later (a slow machine)
    # still reads hot windows last, not the quiet after them
    now = int(time.time() / WINDOW)
    for w in range(now - 3, now + 2):
        write_load(project, before, w * WINDOW, {"eu-0": 30.0})
    conf = boto3.client("lambda", "eu-west-1").get_function_configuration(FunctionName=CONTROL)
    _, bucket, key = d.record().code_locations()[("eu-west-1", CONTROL)]
    package = boto3.client("s3", "eu-west-1").get_object(Bucket=bucket, Key=key)["Body"].read()
    task = tmp_path / "task"
    zipfile.ZipFile(io.BytesIO(package)).extractall(task)
    for name in [k for k in os.environ if k.startswith("SHARDKIT_")]:
        monkeypatch.delenv(name)
    for name, value in {**conf["Environment"]["Variables"], "LAMBDA_TASK_ROOT": str(task)}.items():
        monkeypatch.setenv(name, value)
    assert not os.environ.get("SHARDKIT_PROJECT_ROOT")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "lambda-tmp"))
    (tmp_path / "lambda-tmp").mkdir()
    monkeypatch.setattr(carried, "_made", {})  # a cold start
    # moto in-process runs no function, so the migration the round deploys warms none (as the
    # `deployer` fixture's do); on AWS its prepare step invokes the new shards
    monkeypatch.setattr(
        Deployer, "__init__", functools.partialmethod(Deployer.__init__, warm=False)
    )
    return d, before, task


def published(d: Deployer) -> shardkit.ShardMap:
    """The map the home registry serves, verified with the project's keys."""
    from shardkit.keys import load_trusted_keys

    bucket = d.record().buckets()["eu-west-1"]
    body = boto3.client("s3", "eu-west-1").get_object(Bucket=bucket, Key="registry/map.skm")
    trusted = load_trusted_keys(d.project.keys_dir)
    return shardkit.decode_map(body["Body"].read(), trusted, now=float("-inf"))


def test_the_scheduled_function_splits_on_aws_without_the_project_directory(
    as_lambda: tuple[Deployer, shardkit.ShardMap, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from shardkit.autoshard.function import handler

    d, before, task = as_lambda
    result = handler({}, LambdaContext())
    capsys.readouterr()  # its log lines
    (key,) = (task.parent / "lambda-tmp").rglob("*.key")  # the project it made in /tmp
    assert key.stat().st_mode & 0o777 == 0o600  # the signing key: this user's only

    (r,) = result["rounds"]
    assert r["outcome"] == "applied" and "split" in r["actions"], r
    after = published(d)
    assert after.version == r["map_version"] == before.version + 1
    new = sorted(set(r["change"]["added"]))
    assert new and set(new) <= {s.id for s in after.groups["eu"].shards()}
    assert eu_shards(d) == [s.id for s in after.groups["eu"].shards()]
    # it deployed with the package it runs from: the code of the existing functions is as it was
    assert d.plan().is_noop
    # `shardkit status` from the project directory (which never ran a round) shows the decision
    assert not list(d.project.state_dir.rglob("autoshard.json"))
    status = json.loads(cli(capsys, "status", d.project.root, "--json")[0])
    (shown,) = status["autoshard"]
    assert (shown["outcome"], shown["map_version"]) == ("applied", after.version)
    out, _ = cli(capsys, "status", d.project.root)
    assert "auto-shard: last 1 decision" in out and "split" in out


def test_the_scheduled_function_refuses_a_project_it_cannot_trust(
    as_lambda: tuple[Deployer, shardkit.ShardMap, Any],
) -> None:
    from shardkit.autoshard.function import handler
    from shardkit.keys import create_key

    d, before, task = as_lambda
    secrets = boto3.client("secretsmanager", "eu-west-1")
    secret = os.environ["SHARDKIT_SIGNING_SECRET"]
    stored = secrets.get_secret_value(SecretId=secret)["SecretBinary"]

    handler_file = task / "app" / "model.py"
    original = handler_file.read_bytes()
    handler_file.write_bytes(original + b"\n# altered\n")
    with pytest.raises(AutoshardError, match=r"does not match its manifest: app/model.py") as e:
        handler({}, LambdaContext())
    assert "deploy the project again" in e.value.hint
    handler_file.write_bytes(original)

    create_key("other", d.project.root / "other-keys")
    pem = (d.project.root / "other-keys" / "other.key").read_bytes()
    secrets.put_secret_value(SecretId=secret, SecretBinary=pem)
    with pytest.raises(AutoshardError, match="holds another key than"):
        handler({}, LambdaContext())

    secrets.delete_secret(SecretId=secret, ForceDeleteWithoutRecovery=True)
    with pytest.raises(AutoshardError, match=rf"secret {secret} in eu-west-1, .* does not exist"):
        handler({}, LambdaContext())

    assert published(d).version == before.version  # nothing was applied
    assert eu_shards(d) == ["eu-0", "eu-1"]
    # a refreshing deploy stores the project's key again
    d.apply(d.plan(refresh=True))
    assert secrets.get_secret_value(SecretId=secret)["SecretBinary"] == stored
    key_id = d.project.config.signing.key_id
    assert stored == (d.project.keys_dir / f"{key_id}.key").read_bytes()
