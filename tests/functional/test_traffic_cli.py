"""``shardkit invoke`` and ``shardkit traffic``, in-process: the commands parse their options,
run :mod:`shardkit.traffic` and print. The deployed project is stood in for by a routing client
over a MockTransport (``client_for_project`` is replaced), so no cloud is involved; the local
cloud runs them for real in tests/integration/test_end_to_end.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import shardkit
import shardkit.cli.traffic as traffic_cli
from shardkit.cli.main import main
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


def shardkit_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_traffic_json_is_the_librarys_report(
    opened: Opened, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = shardkit_cli(
        capsys, "traffic", tmp_path, "--requests", "60", "--keys", "6", "--threads", "2", "--json"
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
    opened: Opened, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = shardkit_cli(capsys, "traffic", tmp_path, "--requests", "30", "--keys", "4")
    assert code == 0
    assert out.count("30 requests, ") == 2
    assert "per shard" in out and "per region" in out and "p99 ms" in out


def test_traffic_through_the_edge(
    opened: Opened, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A module no test imports: other tests load the quickstart's `app` package in-process.
    no_hooks = ("--edge-module", "traffic_cli_without_edge_hooks")
    args = ("traffic", tmp_path, "--edge", "--requests", "50", "--reads", "0.9", *no_hooks)
    code, out, _ = shardkit_cli(capsys, *args, "--edge-region", "us-east-1", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["requests"] == 50 == sum(p["requests"] for p in report["paths"].values())
    assert report["location"] == {"region": "us-east-1", "jurisdiction": "us"}
    assert report["paths"]["shard"]["requests"] == 50  # no edge module: nothing is cached
    assert report["cache"]["bypass"] == 50
    code, out, _ = shardkit_cli(capsys, *args)  # in the map's first region by default
    first = next(iter(opened.clients[-1].holder.require().regions))
    assert code == 0 and f"requests through the edge in {first} (" in out
    assert "divergence checks: " in out
    assert opened.closed == 2


def test_an_edge_region_outside_the_map_is_a_user_error(
    opened: Opened, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = shardkit_cli(capsys, "traffic", tmp_path, "--edge", "--edge-region", "mars-1")
    assert (code, out) == (2, "")
    (line,) = err.splitlines()
    assert line.startswith("error: Invalid value for --edge-region: 'mars-1' is not a region")
    assert opened.closed == 1


def test_invoke_shows_where_each_key_went(
    opened: Opened, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = shardkit_cli(capsys, "invoke", tmp_path, "user-1", "eu:anna", "--json")
    assert code == 0
    rows = json.loads(out)
    shard_map = opened.clients[0].holder.require()
    assert [(r["key"], r["shard"], r["jurisdiction"]) for r in rows] == [
        ("user-1", shard_map.route("user-1").id, "us"),
        ("eu:anna", shard_map.route("eu:anna").id, "eu"),
    ]
    assert rows[0]["answer"] == {"echo": {"text": "the shard"}, "count": 1}
    code, _, err = shardkit_cli(capsys, "invoke", tmp_path, "user-1", "--payload", "{nope")
    assert code == 2 and "--payload" in err and "not JSON" in err
