"""The local cloud's lifecycle: a real moto server in a background process, per project.

Every test that starts a server uses the ``project`` fixture, whose finalizer calls ``down`` and
then checks that no server process of the project is left (killing and failing if one is).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from shardkit.cli.local import group
from shardkit.cli.main import error_line
from shardkit.local import (
    LocalCloudError,
    boto3_client_kwargs,
    client,
    down,
    ensure,
    local_dir,
    require,
    restore_items,
    snapshot,
    status,
    up,
)
from shardkit.local import server as server_mod

pytestmark = pytest.mark.integration

CONFIG = """\
[project]
name = "localtest"

[signing]
key_id = "dev"

[regions]
eu-west-1 = { jurisdiction = "eu" }
us-east-1 = { jurisdiction = "us" }

[residency]
default = "us"

[groups.eu]
jurisdiction = "eu"
regions = ["eu-west-1"]
shards = 1

[groups.us]
jurisdiction = "us"
regions = ["us-east-1"]
shards = 1
"""


def _server_pids(root: Path) -> list[int]:
    """Live processes whose command line is a local cloud server of ``root``."""
    needle = f"--project {root.resolve()} ".encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if needle in cmdline and b"shardkit.local" in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def _gone(pid: int, timeout: float = 8.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server_mod._alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def project(tmp_path: Path):
    root = tmp_path / "proj"
    root.mkdir()
    (root / "shardkit.toml").write_text(CONFIG)
    yield root
    down(root, save_tables=False)
    leftovers = _server_pids(root)
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"server processes left behind: {leftovers}"


def _make_table(endpoint: str, region: str, name: str) -> None:
    ddb = client("dynamodb", region, endpoint)
    ddb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
        ],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
    )


def _scan(endpoint: str, region: str, name: str) -> list[dict]:
    items = client("dynamodb", region, endpoint).scan(TableName=name)["Items"]
    return sorted(items, key=lambda i: (i["pk"]["S"], int(i["sk"]["N"])))


def _zip(source: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("handler.py", source)
    return buf.getvalue()


# -- lifecycle ------------------------------------------------------------------------------------


def test_up_status_use_reuse_down(project: Path) -> None:
    cloud = up(project)
    assert cloud.started and cloud.endpoint.startswith("http://127.0.0.1:")
    record = json.loads((local_dir(project) / "cloud.json").read_text())
    assert set(record) == {
        "endpoint",
        "gateway",
        "dynamodb",
        "pid",
        "started_at",
        "instance",
        "restored",
    }
    assert (record["endpoint"], record["pid"]) == (cloud.endpoint, cloud.pid)
    assert status(project)["state"] == "running"
    assert require(project) == cloud.endpoint

    s3 = client("s3", "us-east-1", cloud.endpoint)
    s3.create_bucket(Bucket="artifacts-local")
    s3.put_object(Bucket="artifacts-local", Key="k", Body=b"hello")
    assert s3.get_object(Bucket="artifacts-local", Key="k")["Body"].read() == b"hello"
    _make_table(cloud.endpoint, "eu-west-1", "state")
    ddb = client("dynamodb", "eu-west-1", cloud.endpoint)
    ddb.put_item(TableName="state", Item={"pk": {"S": "a"}, "sk": {"N": "1"}})
    assert ddb.get_item(TableName="state", Key={"pk": {"S": "a"}, "sk": {"N": "1"}})["Item"]

    again = up(project)
    assert not again.started
    assert (again.pid, again.instance, again.endpoint) == (
        cloud.pid,
        cloud.instance,
        cloud.endpoint,
    )
    assert ensure(project) == (cloud.endpoint, False)

    result = down(project)
    assert result["was"] == "running" and result["stopped"] and result["stop"] == "terminated"
    assert not server_mod._alive(cloud.pid) and not Path(f"/proc/{cloud.pid}").exists()
    assert not (local_dir(project) / "cloud.json").exists()
    assert status(project)["state"] == "stopped"
    with pytest.raises(LocalCloudError) as err:
        require(project)
    assert "not running" in err.value.message
    assert err.value.hint == "start it with `shardkit local up PROJECT_DIR`"

    assert down(project) == result | {
        "was": "stopped",
        "stopped": False,
        "pid": None,
        "endpoint": None,
        "stop": None,
        "dynamodb": {"kept": str(local_dir(project) / "dynamodb")},
        "reason": None,
    }


def test_ensure_starts_when_needed(project: Path) -> None:
    endpoint, started = ensure(project)
    assert started and require(project) == endpoint
    assert ensure(project) == (endpoint, False)


def test_concurrent_ups_share_one_server(project: Path) -> None:
    clouds = []
    threads = [threading.Thread(target=lambda: clouds.append(up(project))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({c.pid for c in clouds}) == 1
    assert sorted(c.started for c in clouds) == [False, False, True]


def test_lambda_create_and_invoke_never_use_docker(project: Path) -> None:
    endpoint = up(project).endpoint
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(endpoint + "/moto-api/config") as resp:
        config = json.loads(resp.read())
    assert config["lambda"] == {"use_docker": False}

    role = client("iam", "us-east-1", endpoint).create_role(
        RoleName="shard-role", AssumeRolePolicyDocument="{}"
    )["Role"]["Arn"]
    lam = client("lambda", "eu-west-1", endpoint)
    lam.create_function(
        FunctionName="shard-0",
        Runtime="python3.11",
        Role=role,
        Handler="handler.handler",
        Code={"ZipFile": _zip("def handler(e, c):\n    return 1\n")},
    )
    answer = lam.invoke(FunctionName="shard-0", Payload=b'{"key": "u1"}')
    # With Docker mode, moto answers FunctionError "Handled" and "error running docker".
    assert answer["StatusCode"] == 200 and "FunctionError" not in answer
    assert answer["Payload"].read() == b'{"key": "u1"}'
    assert "docker" not in (local_dir(project) / "server.log").read_text().replace(
        '"use_docker"', ""
    )


def test_clients_ignore_the_users_aws_environment(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws_config = tmp_path / "aws-config"
    aws_config.write_text("[default]\nregion = ap-south-1\nendpoint_url = http://127.0.0.1:9\n")
    for name, value in {
        "AWS_PROFILE": "no-such-profile",
        "AWS_ACCESS_KEY_ID": "AKIAREALLOOKINGKEY",
        "AWS_SECRET_ACCESS_KEY": "real-secret",
        "AWS_SESSION_TOKEN": "real-token",
        "AWS_DEFAULT_REGION": "ap-south-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_USE_FIPS_ENDPOINT": "true",
        "AWS_CONFIG_FILE": str(aws_config),
        "HTTP_PROXY": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
    }.items():
        monkeypatch.setenv(name, value)
    server_mod.session.cache_clear()  # build the session under this environment
    try:
        endpoint = up(project).endpoint  # the server itself must not trip on AWS_PROFILE
        s3 = client("s3", "us-west-2", endpoint)
        s3.create_bucket(
            Bucket="env-proof", CreateBucketConfiguration={"LocationConstraint": "us-west-2"}
        )
        assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["env-proof"]
        assert s3.meta.region_name == "us-west-2" and s3.meta.endpoint_url == endpoint
        assert s3._request_signer._credentials.access_key == "testing"
        assert client("dynamodb", "us-east-1", endpoint).list_tables()["TableNames"] == []
    finally:
        server_mod.session.cache_clear()
    kwargs = boto3_client_kwargs(endpoint)
    assert kwargs["endpoint_url"] == endpoint and kwargs["aws_access_key_id"] == "testing"
    assert kwargs["config"].proxies == {}


# -- stale records and self-stopping --------------------------------------------------------------


def test_killed_server_is_stale_and_up_recovers(project: Path) -> None:
    first = up(project)
    os.kill(first.pid, signal.SIGKILL)
    assert _gone(first.pid)
    current = status(project)
    assert current["state"] == "stale" and "is not running" in current["reason"]
    with pytest.raises(LocalCloudError, match="stale"):
        require(project)
    second = up(project)
    assert second.started and second.pid != first.pid
    assert status(project)["state"] == "running"


def test_record_naming_a_foreign_process_is_stale_and_never_killed(project: Path) -> None:
    server_mod.write_record(
        project.resolve(),
        {
            "endpoint": "http://127.0.0.1:9",
            "pid": os.getpid(),
            "started_at": 0.0,
            "instance": "not-ours",
        },
    )
    current = status(project)
    assert current["state"] == "stale" and "not this project's local cloud" in current["reason"]
    result = down(project)
    assert (result["was"], result["stopped"], result["stop"]) == ("stale", False, None)
    assert not (local_dir(project) / "cloud.json").exists()  # and we are still alive


def test_unreadable_record_is_stale(project: Path) -> None:
    (local_dir(project)).mkdir(parents=True)
    (local_dir(project) / "cloud.json").write_text("{not json")
    assert status(project)["state"] == "stale"
    assert up(project).started
    assert status(project)["state"] == "running"


@pytest.mark.parametrize("change", ["remove", "replace"])
def test_server_stops_when_its_record_goes(project: Path, change: str) -> None:
    cloud = up(project)
    record = local_dir(project) / "cloud.json"
    if change == "remove":
        record.unlink()
    else:
        server_mod.write_record(
            project.resolve(),
            {"endpoint": cloud.endpoint, "pid": 1, "started_at": 0.0, "instance": "other"},
        )
    assert _gone(cloud.pid, timeout=5)
    if change == "replace":  # someone else's record is left alone
        assert json.loads(record.read_text())["instance"] == "other"
        record.unlink()


# Long enough for a loaded machine to make a table and write an item before the server leaves.
@pytest.mark.parametrize("limits", [{"idle_timeout": 4.0}, {"max_lifetime": 6.0}])
def test_server_exits_by_itself_and_keeps_its_tables(project: Path, limits: dict) -> None:
    cloud = up(project, **({"idle_timeout": 0, "max_lifetime": 0} | limits))
    _make_table(cloud.endpoint, "us-east-1", "state")
    client("dynamodb", "us-east-1", cloud.endpoint).put_item(
        TableName="state", Item={"pk": {"S": "k"}, "sk": {"N": "7"}}
    )
    assert _gone(cloud.pid, timeout=30)
    assert status(project)["state"] == "stopped"  # it removed its own record
    again = up(project)
    assert again.restored == {"tables": 1, "items": 1, "records": 0}  # compacted on its way out
    assert _scan(again.endpoint, "us-east-1", "state") == [{"pk": {"S": "k"}, "sk": {"N": "7"}}]


def test_failed_start_reports_the_log_tail(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        server_mod,
        "_command",
        lambda *a: [sys.executable, "-c", "import sys; print('boom: no moto here'); sys.exit(3)"],
    )
    with pytest.raises(LocalCloudError) as err:
        up(project)
    assert "exited with code 3" in err.value.message and "boom: no moto here" in err.value.message
    line = error_line(err.value)
    assert "\n" not in line and "server.log" in line
    assert status(project)["state"] == "stopped"


def test_start_timeout_kills_the_server(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        server_mod,
        "_command",
        lambda *a: [
            sys.executable,
            "-c",
            "import time; print('still starting', flush=True); time.sleep(60)",
        ],
    )
    before = set(server_mod._children)
    with pytest.raises(LocalCloudError, match=r"did not answer in time \(within 0.5s\)") as err:
        up(project, timeout=0.5)
    assert "still starting" in err.value.message  # the log's tail
    assert "--timeout" in err.value.hint and "moto" not in err.value.hint  # not an install fault
    started = set(server_mod._children) - before
    assert all(not server_mod._alive(pid) for pid in started)


# -- table snapshots ------------------------------------------------------------------------------


ITEMS = [
    {
        "pk": {"S": "user-1"},
        "sk": {"N": "1"},
        "blob": {"B": b"\x00\xffbin"},
        "blobs": {"BS": [b"a", b"\x01"]},
        "n": {"N": "12345678901234567890.5"},
        "tags": {"SS": ["x", "y"]},
        "nums": {"NS": ["1", "2"]},
        "ok": {"BOOL": True},
        "none": {"NULL": True},
        "doc": {"M": {"inner": {"B": b"\x02"}, "list": {"L": [{"S": "v"}, {"B": b"\x03"}]}}},
    },
    {"pk": {"S": "user-2"}, "sk": {"N": "2"}, "payload": {"S": "ü" * 10}},
] + [{"pk": {"S": "bulk"}, "sk": {"N": str(i)}} for i in range(30)]  # > one batch of 25


def test_tables_and_items_survive_kill_9_and_restart(project: Path) -> None:
    cloud = up(project)
    _make_table(cloud.endpoint, "eu-west-1", "state")
    ddb = client("dynamodb", "eu-west-1", cloud.endpoint)
    for item in ITEMS:
        ddb.put_item(TableName="state", Item=item)
    ddb.delete_item(TableName="state", Key={"pk": {"S": "bulk"}, "sk": {"N": "0"}})
    before = _scan(cloud.endpoint, "eu-west-1", "state")
    assert len(before) == len(ITEMS) - 1

    os.kill(cloud.pid, signal.SIGKILL)  # no chance to save anything on the way out
    assert _gone(cloud.pid)
    again = up(project)
    assert again.started and again.restored["items"] == len(before)
    assert _scan(again.endpoint, "eu-west-1", "state") == before
    log = (local_dir(project) / "server.log").read_text()
    assert f"restored {len(before)} items of 1 DynamoDB tables" in log

    down(project, save_tables=False)  # deletes them: the next start is empty
    assert not (local_dir(project) / "dynamodb").exists()
    empty = up(project)
    assert empty.restored == {"tables": 0, "items": 0, "records": 0}
    assert client("dynamodb", "eu-west-1", empty.endpoint).list_tables()["TableNames"] == []


def test_snapshot_exports_and_restore_items_imports(project: Path) -> None:
    endpoint = up(project).endpoint
    _make_table(endpoint, "eu-west-1", "state")
    ddb = client("dynamodb", "eu-west-1", endpoint)
    for item in ITEMS:
        ddb.put_item(TableName="state", Item=item)
    before = _scan(endpoint, "eu-west-1", "state")
    path = snapshot(project, [("eu-west-1", "state")])
    assert path == local_dir(project) / "tables.json"

    down(project, save_tables=False)
    endpoint = up(project).endpoint
    assert restore_items(project) == [
        {"region": "eu-west-1", "table": "state", "items": 0, "status": "missing"}
    ]
    _make_table(endpoint, "eu-west-1", "state")
    assert restore_items(project) == [
        {"region": "eu-west-1", "table": "state", "items": len(ITEMS), "status": "restored"}
    ]
    assert _scan(endpoint, "eu-west-1", "state") == before


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_up_status_down(project: Path) -> None:
    runner = CliRunner()
    started = runner.invoke(group, ["up", str(project), "--json"])
    assert started.exit_code == 0, started.output
    cloud = json.loads(started.output)
    assert cloud["started"] is True

    human = runner.invoke(group, ["up", str(project)])
    assert human.exit_code == 0 and f"already running at {cloud['endpoint']}" in human.output

    shown = runner.invoke(group, ["status", str(project), "--json"])
    assert json.loads(shown.output)["state"] == "running"
    assert runner.invoke(group, ["status", str(project)]).output.startswith("running at ")

    stopped = runner.invoke(group, ["down", str(project), "--json", "--no-save"])
    assert stopped.exit_code == 0 and json.loads(stopped.output)["stopped"] is True
    assert not server_mod._alive(cloud["pid"])

    again = runner.invoke(group, ["down", str(project)])
    assert again.exit_code == 0 and "is not running" in again.output
    assert runner.invoke(group, ["status", str(project)]).output.startswith("stopped")


def test_cli_default_project_dir_is_cwd(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    runner = CliRunner()
    assert runner.invoke(group, ["status", "--json"]).output.count('"stopped"') == 1
    up_result = runner.invoke(group, ["up"])
    assert up_result.exit_code == 0 and "local cloud started" in up_result.output
    assert status(project)["state"] == "running"


def test_cli_missing_project_is_a_user_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(group, ["status", str(tmp_path / "nope")])
    assert isinstance(result.exception, LocalCloudError)
    assert error_line(result.exception).startswith("error: no project directory")


def test_shardkit_command_runs_local_as_a_subprocess(project: Path) -> None:
    def shardkit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shardkit.cli.main", "local", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    started = shardkit("up", str(project), "--json")
    assert started.returncode == 0, started.stderr
    pid = json.loads(started.stdout)["pid"]
    assert status(project)["state"] == "running"  # the server outlives the command that started it
    assert shardkit("down", str(project)).returncode == 0
    assert _gone(pid)
    missing = shardkit("up", str(project / "nope"))
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: no project directory")
    assert missing.stderr.count("\n") == 1
