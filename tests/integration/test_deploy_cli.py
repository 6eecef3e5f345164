"""The deploy commands end to end: the CLI as separate processes against the local cloud, across
two regions - deploy, status, a one-shard change, rollback, destroy - and the bad inputs a user
meets on the way (a plan edited by hand, a stale plan, a stopped local cloud)."""

from __future__ import annotations

import json
import os
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
    root.mkdir()
    (root / "shardkit.toml").write_text(PROJECT)
    yield root
    shardkit("local", "down", str(root), ok=False)
    record = root / ".shardkit" / "local" / "cloud.json"
    assert not record.exists()


def resource_steps(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in plan["steps"] if s["action"] not in ("fence", "publish", "upload")]


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

    # one more shard: the plan touches only its resources (and fences, and the new map)
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
    assert status["resources"] == 2 and len(status["retained"]) == 2  # the state tables
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
