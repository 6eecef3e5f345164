"""``shardkit logs`` and ``shardkit dev`` through the CLI, on a one-shard project's local cloud."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

CONFIG = """\
[project]
name = "devloop"
target = "local"

[hashing]
slot_bits = 8

[signing]
key_id = "devloop-dev"
keys_dir = ".shardkit/keys"
create_if_missing = true

[regions]
us-east-1 = { jurisdiction = "us" }

[residency]
default = "us"

[groups.us]
jurisdiction = "us"
regions = ["us-east-1"]
shards = 1

[proxy]
handler = "app.model:infer"
"""

MODEL = """\
from aws_lambda_powertools import Logger

logger = Logger(service="devloop")


def infer(key, payload, state):
    logger.info("inferring", extra={"word": payload.get("word")})
    print("plain line from", "VERSION")
    return {"version": "VERSION", "n": (state or {}).get("n", 0) + 1}, {"n": 1}
"""


def _write_model(root: Path, version: str) -> None:
    (root / "app" / "model.py").write_text(MODEL.replace("VERSION", version))


@pytest.fixture(scope="module")
def devloop(tmp_path_factory: pytest.TempPathFactory, shardkit_deploy: Any) -> Any:
    source = tmp_path_factory.mktemp("src") / "devloop"
    (source / "app").mkdir(parents=True)
    (source / "shardkit.toml").write_text(CONFIG)
    (source / "app" / "__init__.py").write_text("")
    _write_model(source, "v1")
    return shardkit_deploy(source, fresh=True)


def shardkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardkit.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def wait_for(condition: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_logs_shows_the_functions_logs_readable_and_raw(devloop: Any) -> None:
    word = uuid.uuid4().hex[:8]
    assert devloop.client().infer("k", {"word": word}).answer["version"] == "v1"
    root = str(devloop.root)

    def raw() -> list[dict[str, Any]]:
        out = shardkit("logs", root, "--json", "--since", "5m")
        assert out.returncode == 0, out.stderr
        events = [json.loads(line) for line in out.stdout.splitlines()]
        return events if any(word in e["message"] for e in events) else []

    events = wait_for(raw, "the request's log events")
    assert {e["shard"] for e in events} == {"us-0"} and {e["region"] for e in events} == {
        "us-east-1"
    }
    logged = [json.loads(e["message"]) for e in events if word in e["message"]]
    assert logged[0]["message"] == "inferring" and logged[0]["level"] == "INFO"
    assert any('"_aws"' in e["message"] for e in events)  # EMF metrics are events too

    readable = shardkit("logs", root, "--shard", "us-0", "--since", "5m").stdout.splitlines()
    line = next(x for x in readable if word in x)
    assert " us-0 " in line and "INFO" in line and "inferring" in line and f"word={word}" in line
    assert any(x.endswith("plain line from v1") for x in readable)
    assert not any('"_aws"' in x for x in readable)  # metrics are left out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--shard", "eu-9"], "error: no shard 'eu-9' is deployed — pick one of: us-0"),
        (["--since", "last week"], "error: --since 'last week' is neither a span nor a time"),
    ],
)
def test_logs_refuses_bad_input(devloop: Any, args: list[str], expected: str) -> None:
    out = shardkit("logs", str(devloop.root), *args)
    assert out.returncode == 2 and out.stderr.startswith(expected)


def test_dev_redeploys_on_save_and_prints_the_logs(devloop: Any) -> None:
    root = devloop.root
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardkit.cli.main", "dev", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    client = devloop.client()
    try:
        wait_for(lambda: any("dev: watching" in x for x in lines), "dev to watch")
        assert lines[0].startswith("dev: deployed no changes")  # deployed already
        _write_model(root, "v2")
        wait_for(lambda: client.infer("k", {}).answer["version"] == "v2", "the new code")
        wait_for(lambda: any(x.rstrip().endswith("plain line from v2") for x in lines), "its log")
        assert any("dev: app/model.py changed; deployed" in x for x in lines)

        (root / "shardkit.toml").write_text(CONFIG.replace("shards = 1", "shards = zero"))
        wait_for(lambda: any("dev: not deployed: error:" in x for x in lines), "the error")
        assert client.infer("k", {}).answer["version"] == "v2"  # the last deployment serves
        (root / "shardkit.toml").write_text(CONFIG)
        wait_for(lambda: sum("deployed" in x and "changed" in x for x in lines) >= 2, "a fix")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        reader.join(5)
    assert proc.returncode == 0
    assert "dev: stopped watching; the local cloud keeps running" in lines[-1]
