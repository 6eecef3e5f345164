"""The deploy commands end to end: the CLI as separate processes against the local cloud, across
two regions - deploy, status, a one-shard change, rollback, destroy - and the bad inputs a user
meets on the way (a plan edited by hand, a stale plan, a stopped local cloud)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROJECT = """
[project]
name = "clitest"
target = "local"

[signing]
key_id = "clitest-dev"
create_if_missing = true

[regions]
eu-west-1 = { jurisdiction = "eu" }
us-east-1 = { jurisdiction = "us" }

[residency]
default = "us"
rules = [{ prefix = "eu:", jurisdiction = "eu" }]

[groups.eu]
jurisdiction = "eu"
regions = ["eu-west-1"]
shards = 2

[groups.us]
jurisdiction = "us"
regions = ["us-east-1"]
shards = 2
"""
QUICKSTART_APP = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "app"
PER_SHARD = {"iam_role", "log_group", "lambda_function", "lambda_alias", "function_url", "alarm"}


def shardkit(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SHARDKIT_LOCAL_IDLE_TIMEOUT": "600",
        "SHARDKIT_LOCAL_MAX_LIFETIME": "1200",
    }  # a crashed run cannot leave a server for long
    out = subprocess.run(
        [sys.executable, "-m", "shardkit.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    if ok:
        assert out.returncode == 0, f"shardkit {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out


def as_json(*args: str) -> Any:
    return json.loads(shardkit(*args, "--json").stdout)


def user_error(*args: str) -> str:
    """A user error: exit code 2, one line on stderr, no traceback."""
    out = shardkit(*args, ok=False)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr
    return lines[0]


@pytest.fixture
def project(tmp_path: Path) -> Any:
    root = tmp_path / "clitest"
    shutil.copytree(QUICKSTART_APP, root / "app")  # a plan imports the handler from it
    (root / "shardkit.toml").write_text(PROJECT)
    yield root
    shardkit("local", "down", str(root), ok=False)
    record = root / ".shardkit" / "local" / "cloud.json"
    assert not record.exists()


def resource_steps(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        s for s in plan["steps"] if s["action"] not in ("fence", "migrate", "publish", "upload")
    ]


def test_deploy_status_change_rollback_destroy(project: Path) -> None:
    root = str(project)
    first = as_json("deploy", root, "--yes")
    assert first["changed"] and first["outputs"]["map_version"] == 1
    assert sorted(first["outputs"]["regions"]) == ["eu-west-1", "us-east-1"]
    assert sorted(first["outputs"]["shards"]) == ["eu-0", "eu-1", "us-0", "us-1"]

    status = as_json("status", root)
    assert (status["status"], status["deployment"], status["missing"]) == ("ok", 1, [])
    routed = as_json("map", "route", root, "eu:x")  # a deployed project's map is the deployed one
    assert routed["version"] == 1 and routed["routes"][0]["jurisdiction"] == "eu"
    assert status["regions"] == ["eu-west-1", "us-east-1"]
    noop = as_json("deploy", root, "--yes")
    assert (noop["changed"], noop["mutating_calls"]) == (False, 0)

    # one more shard: the plan touches only its resources (and migrates slots, and the new map)
    toml = project / "shardkit.toml"
    toml.write_text(
        PROJECT.replace(
            'regions = ["eu-west-1"]\nshards = 2', 'regions = ["eu-west-1"]\nshards = 3'
        )
    )
    plan = as_json("plan", root)
    assert resource_steps(plan) and {s["shard"] for s in resource_steps(plan)} == {"eu-2"}
    assert {s["kind"] for s in resource_steps(plan)} == PER_SHARD
    assert {s["action"] for s in resource_steps(plan)} == {"create"}
    assert plan["map_version"] == 2
    second = as_json("deploy", root, "--yes")
    assert "eu-2" in second["outputs"]["shards"] and second["outputs"]["map_version"] == 2

    back = as_json("rollback", root, "--yes")
    assert back["kind"] == "rollback" and "eu-2" not in back["outputs"]["shards"]
    assert back["outputs"]["map_version"] == 3  # the old routing, as a new version
    status = as_json("status", root)
    assert (status["deployment"], status["missing"]) == (3, [])

    gone = as_json("destroy", root, "--yes")
    assert gone["kind"] == "destroy" and gone["outputs"]["shards"] == {}
    status = as_json("status", root)
    # the state tables and the home bucket, which keeps the record of the destroyed deployment
    assert status["resources"] == 3 and len(status["retained"]) == 3
    assert status["status"] == "destroyed"
    built = as_json("map", "build", root)  # a local build follows the deployed version 3
    assert built["map"]["version"] == 4


def test_bad_plans_and_a_stopped_local_cloud_are_one_line_errors(
    project: Path, tmp_path: Path
) -> None:
    root = str(project)
    saved = tmp_path / "plan.json"
    shardkit("plan", root, "--out", str(saved))
    edited = tmp_path / "edited.json"
    edited.write_text(saved.read_text().replace('"create"', '"delete"', 1))
    assert "changed after it was made" in user_error("apply", str(edited))
    (tmp_path / "junk.json").write_text("{not json")
    assert "not JSON" in user_error("apply", str(tmp_path / "junk.json"))

    as_json("deploy", root, "--yes")  # the deployed state moves on: the saved plan is stale
    assert "deployed state" in user_error("apply", str(saved))

    shardkit("local", "down", root)
    assert "not running" in user_error("status", root)
    assert "shardkit local up" in user_error("destroy", root, "--yes")
    assert "unknown AWS region" in user_error(
        "plan", str(_copy_with(project, tmp_path, "eu-west-1 =", "eu-wset-1 ="))
    )


def _copy_with(project: Path, tmp_path: Path, old: str, new: str) -> Path:
    other = tmp_path / "broken"
    other.mkdir()
    (other / "shardkit.toml").write_text(
        (project / "shardkit.toml").read_text().replace(old, new, 1)
    )
    return other


# -- the lock and the record across processes -------------------------------------------------


LOCK_KEY = {"pk": {"S": "_shardkit#lock"}, "sk": {"S": "deploy"}}
TABLE = "shardkit-clitest-state"
HOME = "eu-west-1"  # the first region declared


HELD = {  # the lock item of a CI job that died holding it
    **LOCK_KEY,
    "lock_id": {"S": "deadbeef0001"},
    "holder": {"S": "ci@runner-7"},
    "pid": {"N": "4242"},
    "command": {"S": "deploy /builds/clitest"},
    "started": {"N": "1700000000"},
    "expires": {"N": "1700000120"},
}


def ddb(root: Path) -> Any:
    from shardkit.local import server

    return server.client("dynamodb", HOME, server.require(root))


def lock_item(root: Path) -> dict[str, Any] | None:
    table = ddb(root)
    try:
        return table.get_item(TableName=TABLE, Key=LOCK_KEY, ConsistentRead=True).get("Item")
    except table.exceptions.ResourceNotFoundException:
        return None  # the first deploy has not made the home table yet


def start(*args: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "SHARDKIT_LOCAL_IDLE_TIMEOUT": "600",
        "SHARDKIT_LOCAL_MAX_LIFETIME": "1200",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "shardkit.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_two_concurrent_deploys_exactly_one_proceeds(project: Path) -> None:
    root = str(project)
    shardkit("local", "up", root)  # one local cloud for both
    racers = [start("deploy", root, "--yes", "--json") for _ in range(2)]
    outs = [(p.communicate(timeout=240), p.returncode) for p in racers]
    changed = []
    for (stdout, stderr), code in outs:
        if code == 0:
            changed.append(json.loads(stdout)["changed"])
        else:  # refused at once: one JSON error naming the holder and the way out
            assert code == 2, stderr
            (line,) = stderr.strip().splitlines()
            error = json.loads(line)
            assert error["code"] == "StateLockedError", error
            assert error["error"].startswith("the deployment is locked: held by")
            assert "lock id " in error["error"]
            assert "shardkit unlock PROJECT_DIR LOCK_ID" in error["hint"]
    assert changed.count(True) == 1  # the other failed, or found nothing left to do

    status = as_json("status", root)
    assert (status["status"], status["deployment"], status["missing"]) == ("ok", 1, [])
    assert status["history"] == [1] and status["lock"] is None
    noop = as_json("deploy", root, "--yes")
    assert (noop["changed"], noop["mutating_calls"]) == (False, 0)


def test_deploys_that_wait_for_the_lock_run_one_after_the_other(project: Path) -> None:
    """Two deploys wait for a lock someone holds; when it goes, one deploys and the other,
    getting the lock after it, finds nothing left to do."""
    root = str(project)
    shardkit("bootstrap", root, "--yes")  # the home table, for the lock held below
    ddb(project).put_item(TableName=TABLE, Item=HELD)
    waiters = [start("deploy", root, "--yes", "--lock-timeout", "200") for _ in range(2)]
    for waiter in waiters:  # bounded by the lock timeout: each says it waits, and for whom
        assert waiter.stderr is not None
        line = waiter.stderr.readline()
        assert line.startswith("waiting up to 200 s for the deployment lock held by ci@runner-7")
    ddb(project).delete_item(TableName=TABLE, Key=LOCK_KEY)
    outs = [w.communicate(timeout=240)[0] for w in waiters]
    assert [w.returncode for w in waiters] == [0, 0]
    applied = [out for out in outs if "applied deploy" in out]
    assert len(applied) == 1
    assert any("no changes" in out for out in outs if out not in applied)
    status = as_json("status", root)
    assert (status["deployment"], status["history"], status["lock"]) == (1, [1], None)


def test_a_held_lock_is_named_and_broken_only_with_its_id(project: Path) -> None:
    root = str(project)
    as_json("deploy", root, "--yes")
    ddb(project).put_item(TableName=TABLE, Item=HELD)  # a CI job that died holding it
    (project / "shardkit.toml").write_text(PROJECT.replace("shards = 2\n", "shards = 3\n", 1))

    line = user_error("deploy", root, "--yes")
    assert line.startswith(
        "error: the deployment is locked: held by ci@runner-7 (pid 4242, "
        "`deploy /builds/clitest`) since 2023-11-14T22:13:20Z, lock id deadbeef0001; "
        "its heartbeat stopped"
    )
    assert "`shardkit unlock PROJECT_DIR LOCK_ID`" in line
    assert as_json("status", root)["lock"]["holder"] == "ci@runner-7"
    assert as_json("plan", root)["mutating_calls"] == 0  # planning needs no lock

    assert "held under id deadbeef0001, not 000000000000" in user_error(
        "unlock", root, "000000000000"
    )
    assert as_json("unlock", root, "deadbeef0001")["unlocked"]["holder"] == "ci@runner-7"
    assert lock_item(project) is None
    assert as_json("deploy", root, "--yes")["changed"]


def test_plan_on_a_restarted_local_cloud_changes_nothing_and_deploy_restores(
    project: Path,
) -> None:
    from shardkit.local import server

    root = str(project)
    as_json("deploy", root, "--yes")
    item = {"pk": {"S": "eu-0#alice"}, "sk": {"S": "session"}, "v": {"S": "warm"}}
    ddb(project).put_item(TableName=TABLE, Item=item)
    shardkit("local", "down", root)

    plan = as_json("plan", root)  # starts an empty local cloud, restores nothing
    assert plan["kind"] == "restore" and plan["mutating_calls"] == 0 and plan["restores"]
    endpoint = server.require(project)
    for region in ("eu-west-1", "us-east-1"):
        lam = server.client("lambda", region, endpoint)
        assert lam.list_functions()["Functions"] == []
    assert server.client("s3", HOME, endpoint).list_buckets()["Buckets"] == []

    restored = as_json("deploy", root, "--yes")
    assert restored["changed"] and restored["kind"] == "restore"
    assert restored["outputs"]["map_version"] == 1
    got = ddb(project).get_item(TableName=TABLE, Key={"pk": item["pk"], "sk": item["sk"]})
    assert got["Item"] == item
    status = as_json("status", root)
    assert (status["deployment"], status["missing"], status["history"]) == (1, [], [1])
    s3 = server.client("s3", HOME, endpoint)  # the record is in the home bucket again
    bucket = f"shardkit-clitest-{status['account']}-{HOME}"
    keys = [
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="shardkit-state/")["Contents"]
    ]
    assert keys == ["shardkit-state/deployments/000001.json", "shardkit-state/record.json"]
    assert as_json("deploy", root, "--yes")["changed"] is False


def test_a_library_user_gets_the_restore_too(project: Path) -> None:
    """``Deployer.apply`` restores a restarted local cloud by itself: no CLI involved."""
    from shardkit.config import load_project
    from shardkit.deploy.engine import Deployer
    from shardkit.deploy.targets import open_target

    root = str(project)
    as_json("deploy", root, "--yes")
    shardkit("local", "down", root)
    (project / "shardkit.toml").write_text(PROJECT.replace("shards = 2\n", "shards = 3\n", 1))
    loaded = load_project(project)
    said: list[str] = []
    deployer = Deployer(loaded, open_target(loaded, local=True, start=True), notify=said.append)
    assert deployer.needs_restore()
    plan = deployer.plan()
    assert plan.restores == deployer.target.instance and plan.kind == "deploy"  # and a change
    result = deployer.apply(plan)
    assert said[0].startswith("local cloud restarted: restoring deployment 1")
    assert not deployer.needs_restore()
    assert sorted(result.record.functions()) == ["eu-0", "eu-1", "eu-2", "us-0", "us-1"]
    assert deployer.status()["missing"] == []
