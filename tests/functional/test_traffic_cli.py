"""``shardkit invoke`` and ``shardkit traffic``, in-process: the commands parse their options,
run :mod:`shardkit.traffic` and print. The deployed project is stood in for by a routing client
over a MockTransport (``client_for_project`` is replaced), so no cloud is involved; the local
cloud runs them for real in tests/integration/test_end_to_end.py."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import shardkit
import shardkit.cli.traffic as traffic_cli
from shardkit.protocol import Answer
from shardkit.routing import MockTransport, RoutingClient
from shardkit.sharding.codec import encode_map
from shardkit.sharding.holder import MapHolder
from shardkit.sharding.shardmap import Shard


def answer(shard: Shard, request: dict[str, Any]) -> dict[str, Any]:
    echo = {"echo": request["payload"], "count": 1}
    return Answer(echo, shard.id, shard.epoch, request["map_version"], 1).to_wire()


class Opened:
    """The clients the commands asked for, to check they were closed."""

    def __init__(self) -> None:
        self.clients: list[RoutingClient] = []
        self.closed = 0


@pytest.fixture
def opened(
    monkeypatch: pytest.MonkeyPatch,
    quickstart_like: Callable[..., dict[str, Any]],
    config_from: Callable[[dict[str, Any]], Any],
    signing_key: Any,
    trusted_keys: dict[str, bytes],
) -> Opened:
    shard_map = shardkit.build_map(config_from(quickstart_like("clitraffic")))
    envelope = encode_map(shard_map, signing_key.key_id, signing_key.sign)
    record = Opened()

    def client_for_project(project_dir: Any, *, local: Any, transport: str) -> RoutingClient:
        assert transport == "invoke"
        holder = MapHolder(trusted_keys, lambda: envelope)
        holder.refresh()
        client = RoutingClient(holder, MockTransport(answer))
        close = client.close

        def counted() -> None:
            record.closed += 1
            close()

        client.close = counted  # type: ignore[method-assign]
        record.clients.append(client)
        return client

    monkeypatch.setattr(traffic_cli, "client_for_project", client_for_project)
    return record


CLI = Callable[..., tuple[int, str, str]]


def test_traffic_json_is_the_librarys_report(
    opened: Opened, tmp_path: Path, shardkit_cli: CLI
) -> None:
    code, out, err = shardkit_cli(
        "traffic", tmp_path, "--requests", "60", "--keys", "6", "--threads", "2", "--json"
    )
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert (report["requests"], report["errors"], report["first_errors"]) == (60, 0, [])
    assert sum(row["requests"] for row in report["shards"].values()) == 60
    assert set(report["regions"]) <= {"eu-west-1", "eu-central-1", "us-east-1", "us-west-2"}
    assert set(next(iter(report["shards"].values()))) == {
        "requests",
        "p50_ms",
        "p99_ms",
        "errors",
        "redirects",
        "degraded",
    }
    assert opened.closed == 1


def test_traffic_prints_tables_per_shard_and_region(
    opened: Opened, tmp_path: Path, shardkit_cli: CLI
) -> None:
    code, out, _ = shardkit_cli("traffic", tmp_path, "--requests", "30", "--keys", "4")
    assert code == 0
    assert out.count("30 requests, ") == 2
    assert "per shard" in out and "per region" in out and "p99 ms" in out


def test_traffic_through_the_edge(opened: Opened, tmp_path: Path, shardkit_cli: CLI) -> None:
    # A module of the project without the optional hooks, named so no other test imports it
    # (other tests load the quickstart's `app` package in-process).
    (tmp_path / "traffic_cli_without_edge_hooks.py").write_text('"""No hooks."""\n')
    no_hooks = ("--edge-module", "traffic_cli_without_edge_hooks")
    args = ("traffic", tmp_path, "--edge", "--requests", "50", "--reads", "0.9", *no_hooks)
    code, out, _ = shardkit_cli(*args, "--edge-region", "us-east-1", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["requests"] == 50 == sum(p["requests"] for p in report["paths"].values())
    assert report["location"] == {"region": "us-east-1", "jurisdiction": "us"}
    assert report["paths"]["shard"]["requests"] == 50  # no edge module: nothing is cached
    assert report["cache"]["bypass"] == 50
    code, out, _ = shardkit_cli(*args)  # in the map's first region by default
    first = next(iter(opened.clients[-1].holder.require().regions))
    assert code == 0 and f"requests through the edge in {first} (" in out
    assert "divergence checks: " in out
    assert opened.closed == 2


def test_an_edge_region_outside_the_map_is_a_user_error(
    opened: Opened, tmp_path: Path, shardkit_cli: CLI
) -> None:
    code, out, err = shardkit_cli("traffic", tmp_path, "--edge", "--edge-region", "mars-1")
    assert code == 2
    assert out == "traffic: connecting: the deployment's records and its signed map ...\n"
    (line,) = err.splitlines()
    assert line.startswith("error: edge region 'mars-1' is not a region of the map (")
    assert opened.closed == 1


def test_invoke_shows_where_each_key_went(
    opened: Opened, tmp_path: Path, shardkit_cli: CLI
) -> None:
    code, out, _ = shardkit_cli("invoke", tmp_path, "user-1", "eu:anna", "--json")
    assert code == 0
    rows = json.loads(out)
    shard_map = opened.clients[0].holder.require()
    assert [(r["key"], r["shard"], r["jurisdiction"]) for r in rows] == [
        ("user-1", shard_map.route("user-1").id, "us"),
        ("eu:anna", shard_map.route("eu:anna").id, "eu"),
    ]
    assert rows[0]["answer"] == {"echo": {"text": "the shard"}, "count": 1}
    code, _, err = shardkit_cli("invoke", tmp_path, "user-1", "--payload", "{nope")
    assert code == 2 and "--payload" in err and "not JSON" in err


# -- invoke: every key reported, payloads from a file or stdin --------------------------------------


def test_invoke_reports_every_key_and_fails_if_any_failed(
    opened: Opened, tmp_path: Path, shardkit_cli: CLI
) -> None:
    """One bad key among several: the others are still sent and shown, the bad one has an
    error row, and the exit code says something failed (JSON too)."""
    keys = ("user-1", "", "bad\udcffkey", "eu:anna")  # "bad\xff" as the shell passes it
    code, out, err = shardkit_cli("invoke", tmp_path, *keys, "--json")
    assert code == 2
    rows = json.loads(out)
    assert [r["key"] for r in rows] == list(keys)
    assert [r["error"] is None for r in rows] == [True, False, False, True]
    assert rows[0]["shard"] == opened.clients[0].holder.require().route("user-1").id
    assert rows[1]["error"]["code"] == "InvalidKeyError" and rows[1]["shard"] is None
    assert rows[2]["error"]["message"] == (
        "key 'bad\\xffkey' is not valid UTF-8 (it holds a lone surrogate or an undecodable byte)"
    )
    assert set(rows[1]) == set(rows[0])  # one shape for every row
    error = json.loads(err)
    assert error["code"] == "ShardkitError"
    assert error["error"].startswith("2 of 4 key(s) failed; the first, '': key '' is empty")

    code, out, err = shardkit_cli("invoke", tmp_path, *keys)
    assert code == 2
    assert err.startswith("error: 2 of 4 key(s) failed") and len(err.splitlines()) == 1
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == 4 and "error: key 'bad\\xffkey' is not valid UTF-8" in out
    assert opened.closed == 2


def test_invoke_reads_a_large_payload_from_a_file_or_stdin(
    opened: Opened,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    shardkit_cli: CLI,
) -> None:
    big = {"text": "w " * 100_000}  # 200 KB: over what one command-line argument may hold
    (tmp_path / "payload.json").write_text(json.dumps(big))
    code, out, err = shardkit_cli(
        "invoke", tmp_path, "user-1", "--payload", f"@{tmp_path / 'payload.json'}", "--json"
    )
    assert (code, err) == (0, "")
    assert json.loads(out)[0]["answer"]["echo"] == big

    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"from": "stdin"})))
    code, out, _ = shardkit_cli("invoke", tmp_path, "user-1", "--payload", "-", "--json")
    assert code == 0 and json.loads(out)[0]["answer"]["echo"] == {"from": "stdin"}

    code, _, err = shardkit_cli("invoke", tmp_path, "k", "--payload", "@nowhere.json")
    assert code == 2
    assert err.startswith("error: Invalid value for '--payload': cannot read nowhere.json: ")
    (tmp_path / "bad.json").write_text("{not json")
    code, _, err = shardkit_cli("invoke", tmp_path, "k", "--payload", f"@{tmp_path / 'bad.json'}")
    assert code == 2 and f"{tmp_path / 'bad.json'} is not JSON: " in err


# -- traffic --edge: the edge module ------------------------------------------------------------


def test_an_edge_module_that_is_not_there_or_does_not_import_is_an_error(
    opened: Opened, tmp_path: Path, shardkit_cli: CLI
) -> None:
    code, _, err = shardkit_cli(
        "traffic", tmp_path, "--edge", "--edge-module", "app.nothere", "--requests", "5"
    )
    assert code == 2
    (line,) = err.splitlines()
    assert line.startswith(
        f"error: edge module 'app.nothere' of {tmp_path} failed while importing it: "
        "ModuleNotFoundError: No module named 'app"  # 'app', or 'app.nothere' if app is loaded
    )
    (tmp_path / "traffic_cli_broken_edge.py").write_text("import no_such_dependency\n")
    code, _, err = shardkit_cli(
        "traffic", tmp_path, "--edge", "--edge-module", "traffic_cli_broken_edge"
    )
    assert code == 2 and "No module named 'no_such_dependency'" in err
    assert opened.closed == 2  # the clients of the failed runs were closed


def test_traffic_shows_its_phases_unless_json(
    opened: Opened, tmp_path: Path, shardkit_cli: CLI
) -> None:
    code, out, _ = shardkit_cli("traffic", tmp_path, "--requests", "30", "--keys", "3")
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("traffic: ")]
    assert lines[:2] == [
        "traffic: connecting: the deployment's records and its signed map ...",
        "traffic: sending over 3 keys from 4 threads: 30 requests ...",
    ]
    assert lines[2].startswith("traffic: sending over 3 keys from 4 threads: 30 of 30 requests")
    code, out, _ = shardkit_cli("traffic", tmp_path, "--requests", "30", "--json")
    assert code == 0 and json.loads(out)["requests"] == 30  # nothing but the JSON
